"""pytest-benchmark suite over the ops: ``python -m pytest bench/ --benchmark-only``.

The same cases as :mod:`bench.report` (op x implementation x dtype x shape): the real shapes
on CUDA, small ones on the CPU (where only ``reference`` and ``naive`` run, and the timings
check the harness rather than claim speed). On CUDA each round ends with
``torch.cuda.synchronize()``, so a round is the wall time of one call, launch included.
CPU encoding in DataLoader workers is timed by the report only.

Not part of the test command (``pytest.ini`` collects ``tests/`` only); ``bench/conftest.py``
skips these unless ``--benchmark-only`` or ``--benchmark-enable`` is given.
"""
import pytest
import torch

import h3r_kernels
from bench import report

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
ON_CUDA = DEVICE.type == "cuda"
SHAPES = report.CUDA_SHAPES if ON_CUDA else report.CPU_SHAPES
AVAILABLE = h3r_kernels.backends()
IMPLS = [name for name in report.KERNEL_BACKENDS if AVAILABLE[name]["available"]] if ON_CUDA else ["reference"]
IMPLS.append(report.NAIVE)
ROUNDS = 20 if ON_CUDA else 5


@pytest.mark.parametrize("shape", SHAPES, ids=report.shape_text)
@pytest.mark.parametrize("dtype", report.DEFAULT_DTYPES)
@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("op", list(report.OPS))
def test_op(benchmark, op, impl, dtype, shape):
    call = report.make_call(op, impl, shape, report.DTYPES[dtype], DEVICE)

    def one_round():
        call()
        if ON_CUDA:
            torch.cuda.synchronize(DEVICE)

    spec = report.OPS[op]
    map_bytes = torch.Size(shape).numel() * report.DTYPES[dtype].itemsize
    benchmark.group = f"{op} {report.shape_text(shape)} {dtype}"
    benchmark.extra_info.update(
        device=torch.cuda.get_device_name(DEVICE) if ON_CUDA else "cpu",
        bytes=spec.counted_passes * map_bytes,
        op_bytes=spec.op_passes * map_bytes,
        performance_claim=ON_CUDA,
    )
    benchmark.pedantic(one_round, rounds=ROUNDS, warmup_rounds=3, iterations=1)
