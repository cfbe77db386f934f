"""The throughput report of the h3r_kernels ops: ``python -m h3r.benchmark [--device cuda|cpu]
[--shapes ...] [--dtypes ...] [--ops ...] [--backends ...] [--out DIR] [--repeats N]
[--host-overhead [--skip-throughput]]``, also run by ``h3r bench``.

For every op x implementation x shape x dtype it measures the median time of one call and
derives the effective bandwidth (bytes the op must move / time), its share of the device's
copy bandwidth measured in the same run, and the speed-ups over the reference backend, the
naive PyTorch baselines and CPU encoding in DataLoader workers. It prints the table and
writes it to ``DIR/report.json`` and ``DIR/report.md`` (default ``bench/out`` under the
current folder).

Implementations (``--backends``): ``reference``, ``triton``, ``cuda`` (the h3r_kernels
backends), ``naive`` (eager PyTorch baselines) and ``cpu_workers`` (NumPy targets in
DataLoader workers, encode ops only). Shapes are ``(B, K, H, W)``; keypoints are uniform
on the map, in heatmap pixels.

Timing: on CUDA, CUDA events around each call, a 256 MiB L2 flush before it, every call
queued behind a GPU spin kernel so that launch gaps are excluded (the host's time to issue a
call is reported beside it), the median of ``--repeats`` calls after ``--warmup`` calls; on
the CPU, ``time.perf_counter``. CPU timings (and anything run by the Triton interpreter) are
not performance claims.

Modules, one concern each:

* :mod:`~h3r.benchmark.cases`: the ops, implementations, shapes, dtypes and ``make_call``;
* :mod:`~h3r.benchmark.baselines`: the naive PyTorch implementations compared against;
* :mod:`~h3r.benchmark.cpu_encoding`: per-sample NumPy targets in DataLoader workers;
* :mod:`~h3r.benchmark.timing`: the timer and the copy bandwidth;
* :mod:`~h3r.benchmark.host_overhead`: ``--host-overhead``, the CPU time to issue one
  ``heatmap_loss`` forward+backward and one ``decode`` on tiny inputs against plain BCE, and
  the profile of where it goes (checks, ``torch.library``, autograd, backend selection);
* :mod:`~h3r.benchmark.measure`: the rows and their derived columns;
* :mod:`~h3r.benchmark.facts`: device, versions, commit, date;
* :mod:`~h3r.benchmark.markdown`: the Markdown table and page;
* :mod:`~h3r.benchmark.report`: one run, assembled and written as JSON and Markdown;
* :mod:`~h3r.benchmark.cli`: the arguments and ``main``.

The repository's ``bench/`` folder (not installed) holds the same cases as a
pytest-benchmark suite (``python -m pytest bench --benchmark-only``) and the recorded results.
"""
