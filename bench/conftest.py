"""The benchmarks run only when asked for: ``python -m pytest bench/ --benchmark-only``.

Without ``--benchmark-only`` or ``--benchmark-enable`` (e.g. a bare ``pytest bench/``) the
benchmark items are skipped, so no test command runs them by accident.
"""
from pathlib import Path

import pytest

BENCH_DIR = Path(__file__).resolve().parent


def pytest_collection_modifyitems(config, items):
    if config.getoption("benchmark_only", False) or config.getoption("benchmark_enable", False):
        return
    skip = pytest.mark.skip(reason="benchmarks run with: python -m pytest bench/ --benchmark-only")
    for item in items:
        if BENCH_DIR in Path(str(item.path)).resolve().parents:
            item.add_marker(skip)
