"""pytest-benchmark suite over the ops: ``python -m pytest bench/ --benchmark-only``.

The same cases as the report, :mod:`h3r.benchmark.cases` (op x implementation x dtype x
shape): the real shapes on CUDA, small ones on the CPU (where only ``reference`` and ``naive`` run, and the timings
check the harness rather than claim speed). On CUDA each round ends with
``torch.cuda.synchronize()``, so a round is the wall time of one call, launch included.
CPU encoding in DataLoader workers is timed by the report only.

Not part of the test command (``pytest.ini`` collects ``tests/`` only); ``bench/conftest.py``
skips these unless ``--benchmark-only`` or ``--benchmark-enable`` is given.
"""
import pytest
import torch

import h3r_kernels
from h3r.benchmark import cases

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
ON_CUDA = DEVICE.type == "cuda"
SHAPES = cases.CUDA_SHAPES if ON_CUDA else cases.CPU_SHAPES
AVAILABLE = h3r_kernels.backends()
IMPLS = [name for name in cases.KERNEL_BACKENDS if AVAILABLE[name]["available"]] if ON_CUDA else ["reference"]
IMPLS.append(cases.NAIVE)
ROUNDS = 20 if ON_CUDA else 5


@pytest.mark.parametrize("shape", SHAPES, ids=cases.shape_text)
@pytest.mark.parametrize("dtype", cases.DEFAULT_DTYPES)
@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("op", list(cases.OPS))
def test_op(benchmark, op, impl, dtype, shape):
    call = cases.make_call(op, impl, shape, cases.DTYPES[dtype], DEVICE)

    def one_round():
        call()
        if ON_CUDA:
            torch.cuda.synchronize(DEVICE)

    spec = cases.OPS[op]
    map_bytes = torch.Size(shape).numel() * cases.DTYPES[dtype].itemsize
    benchmark.group = f"{op} {cases.shape_text(shape)} {dtype}"
    benchmark.extra_info.update(
        device=torch.cuda.get_device_name(DEVICE) if ON_CUDA else "cpu",
        bytes=spec.counted_passes * map_bytes,
        op_bytes=spec.op_passes * map_bytes,
        performance_claim=ON_CUDA,
    )
    benchmark.pedantic(one_round, rounds=ROUNDS, warmup_rounds=3, iterations=1)
