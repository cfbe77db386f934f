"""The repository's benchmark suite (not installed: ``pip install`` ships only ``h3r`` and
``h3r_kernels``).

* ``python -m pytest bench/ --benchmark-only`` — the ops as a pytest-benchmark suite, the
  same cases as the report (not part of the test command, which collects ``tests/`` only).
* ``python -m h3r.benchmark`` (or ``h3r bench``) — the throughput report itself, shipped in
  the package as :mod:`h3r.benchmark`; it writes ``bench/out/`` by default.
* ``bench/RESULTS.md`` and ``bench/results/`` — reports recorded on GPUs.
"""
