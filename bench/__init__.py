"""Benchmarks of the h3r_kernels ops.

* ``python -m bench.report`` — the throughput report: op x implementation x shape x dtype
  -> median time, effective GB/s, % of the copy bandwidth measured in the same run, and the
  speed-ups over the reference backend, the naive PyTorch baselines and CPU encoding in
  DataLoader workers. Writes ``report.json`` and ``report.md`` (``--out``, default
  ``bench/out``). ``h3r bench`` forwards here.
* ``python -m pytest bench/ --benchmark-only`` — the same cases as a pytest-benchmark suite
  (not part of the test command, which collects ``tests/`` only).

Modules: :mod:`bench.report` (the cases, the timer, the report), :mod:`bench.baselines`
(naive PyTorch implementations), :mod:`bench.cpu_encoding` (per-sample NumPy targets in
DataLoader workers).
"""
