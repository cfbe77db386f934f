"""Test set-up: Triton runs in its CPU interpreter when there is no GPU.

``TRITON_INTERPRET`` is read when a kernel is defined, so it is set here, before any test
module imports ``h3r_kernels``.
"""
import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import h3r_kernels  # noqa: E402  (after TRITON_INTERPRET)

HAS_CUDA = torch.cuda.is_available()


def available_backends(device: str = "cpu") -> list[str]:
    """Backends that can run on ``device`` here (the Triton interpreter counts on the CPU)."""
    names = ["reference"]
    info = h3r_kernels.backends()
    if info["triton"]["available"]:
        names.append("triton")
    if device == "cuda" and info["cuda"]["available"]:
        names.append("cuda")
    return names


def pytest_collection_modifyitems(config, items):
    if HAS_CUDA:
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
