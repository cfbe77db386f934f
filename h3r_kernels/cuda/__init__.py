"""The ``cuda`` backend: CUDA C kernels from ``csrc/`` compiled at run time through CuPy."""
from __future__ import annotations


def availability() -> tuple[bool, str]:
    """``(available, reason)`` for the CuPy backend."""
    import torch

    try:
        import cupy
    except Exception as error:
        return False, f"CuPy is not importable ({error}); pip install 'h3r[cuda12]' or 'h3r[cuda13]'"
    if not torch.cuda.is_available():
        return False, "no CUDA device visible to torch"
    return True, f"cupy {cupy.__version__}"
