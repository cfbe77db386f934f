"""``python -m h3r.benchmark``: the throughput report (see :mod:`h3r.benchmark.cli`)."""
from h3r.benchmark.cli import main

main()
