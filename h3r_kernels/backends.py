"""Which backends exist here, and which one runs a given call.

* ``reference``: plain PyTorch (:mod:`h3r_kernels.reference`), any device; the default on the CPU.
* ``triton``: the kernels in :mod:`h3r_kernels.triton`; CUDA tensors, or CPU tensors when
  ``TRITON_INTERPRET=1`` was set before ``import h3r_kernels`` (how CI tests them).
* ``cuda``: the CUDA C kernels of ``csrc/`` compiled at run time through CuPy; CUDA tensors.

``backend="auto"`` (the default, or the ``H3R_BACKEND`` environment variable when it is set)
picks the reference for CPU tensors and, for CUDA tensors, the GPU backend that
:func:`gpu_preference` ranks first for that op, dtype and map size (a fixed rule read off the
measurements in ``bench/RESULTS.md``; nothing is timed at import), falling back to the other
GPU backend, then to the reference.
"""
from __future__ import annotations

import functools
import importlib
import os
from types import ModuleType
from typing import Optional

import torch

from .checks import check_backend

# heatmap_loss on float32/float64 maps of at least this many cells runs faster in the CUDA C kernel.
LOSS_CUDA_MIN_CELLS = 32 * 32


def gpu_preference(op: str, dtype: Optional[torch.dtype] = None, map_cells: int = 0) -> tuple[str, str]:
    """GPU backends in order of preference, as measured on an NVIDIA H200 (bench/RESULTS.md).

    Triton is faster for ``encode`` and ``decode`` at every benchmark shape and dtype, and for
    ``heatmap_loss`` on bfloat16/float16 maps and on small float32 maps (16x16); the CUDA C
    loss is faster on float32 maps of 32x32 cells and more (1.7x at 64x64).
    """
    if op == "heatmap_loss" and dtype in (torch.float32, torch.float64) and map_cells >= LOSS_CUDA_MIN_CELLS:
        return ("cuda", "triton")
    return ("triton", "cuda")


def interpreting() -> bool:
    """Whether Triton runs in its CPU interpreter (``TRITON_INTERPRET=1``)."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


@functools.lru_cache(maxsize=None)
def _probe(name: str) -> tuple[bool, str]:
    if name == "reference":
        return True, "plain PyTorch, always available"
    if name == "triton":
        try:
            import triton  # noqa: F401
        except Exception as error:  # ImportError, or a broken install
            return False, f"triton is not importable ({error}); pip install 'h3r[triton]'"
        if not torch.cuda.is_available() and not interpreting():
            return False, "no CUDA device, and TRITON_INTERPRET=1 is not set (the CPU interpreter)"
        where = "CUDA" if torch.cuda.is_available() else "the CPU interpreter (TRITON_INTERPRET=1)"
        return True, f"triton {triton.__version__} on {where}"
    if name == "cuda":
        from .cuda import availability

        return availability()
    raise ValueError(name)


def backends() -> dict[str, dict[str, object]]:
    """``{name: {"available": bool, "reason": str}}`` for ``reference``, ``triton`` and ``cuda``."""
    return {name: dict(zip(("available", "reason"), _probe(name))) for name in ("reference", "triton", "cuda")}


# op -> the file that implements it inside h3r_kernels/triton/ and h3r_kernels/cuda/
_OP_FILES = {"encode": "encode", "heatmap_loss": "loss", "decode": "decode"}


@functools.lru_cache(maxsize=None)
def _module(name: str, op: str) -> ModuleType:
    """The module of backend ``name`` that implements ``op`` (cached: it runs on every call)."""
    if name == "reference":
        return importlib.import_module(".reference", __package__)
    return importlib.import_module(f".{name}.{_OP_FILES[op]}", __package__)


def select(
    op: str, device: torch.device, backend: str, dtype: Optional[torch.dtype] = None, map_cells: int = 0
) -> ModuleType:
    """The module whose functions run this call of ``op`` (raises if a forced backend cannot).

    ``op`` is ``encode``, ``heatmap_loss`` or ``decode``; the module also holds the op's backward.
    ``dtype`` and ``map_cells`` (H * W) describe the maps, for the ``auto`` rule.
    """
    check_backend(backend)
    source = f"backend={backend!r}"
    if backend == "auto":
        backend = os.environ.get("H3R_BACKEND", "auto") or "auto"
        if backend not in ("auto", "reference", "triton", "cuda"):
            raise ValueError(f"H3R_BACKEND: expected auto, reference, triton or cuda, got {backend!r}")
        source = f"backend={backend!r} (from the environment variable H3R_BACKEND)"
    if backend == "auto":
        if device.type != "cuda":
            return _module("reference", op)
        for name in gpu_preference(op, dtype, map_cells):
            if _probe(name)[0]:
                return _module(name, op)
        return _module("reference", op)
    available, reason = _probe(backend)
    if not available:
        raise RuntimeError(f"{source} is not available here: {reason}")
    if backend == "cuda" and device.type != "cuda":
        raise RuntimeError(f"{source} needs CUDA tensors, got tensors on {device}")
    if backend == "triton" and device.type != "cuda" and not interpreting():
        raise RuntimeError(
            f"{source} got tensors on {device}: that needs TRITON_INTERPRET=1 set before importing h3r_kernels"
        )
    return _module(backend, op)
