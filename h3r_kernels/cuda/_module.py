"""Compiling ``csrc/`` with CuPy (NVRTC) and launching its kernels on torch's current stream.

* Sources: the first folder of :data:`SOURCE_DIRS` that holds every file of :data:`SOURCES` and
  ``h3r_common.cuh``: ``h3r_kernels/_csrc/`` in an installed wheel (setup.py copies ``csrc/``
  there), else ``<repo>/csrc/`` in a source checkout.
* Compilation: one ``cupy.RawModule`` per (device, source file), built lazily on first use
  (``functools.lru_cache``) with ``name_expressions`` for the template instantiations and the
  ``-D`` defines of :func:`h3r_kernels.spec.c_defines` (option codes, block constants); shapes
  are kernel arguments, so nothing is recompiled per shape. CuPy keeps compiled kernels on
  disk: set ``H3R_CUPY_CACHE_DIR`` to choose the folder (it becomes ``CUPY_CACHE_DIR``, which
  CuPy reads once, when it is first imported).
* Launches: under ``torch.cuda.device(device)`` on ``torch.cuda.current_stream(device)``;
  torch allocates every tensor and kernels get ``data_ptr()`` values; scalars are typed
  NumPy scalars matching the kernels' C parameters (CuPy does not check them).
"""
from __future__ import annotations

import functools
import hashlib
import os
import sys
import warnings
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from .. import spec

CACHE_DIR_ENV = "H3R_CUPY_CACHE_DIR"
HEADER = "h3r_common.cuh"
PACKAGE_DIR = Path(__file__).resolve().parent.parent  # h3r_kernels/
SOURCE_DIRS = (PACKAGE_DIR / "_csrc", PACKAGE_DIR.parent / "csrc")

# C++ type of each map dtype (csrc/h3r_common.cuh), and of its accumulation type.
STORAGE_TYPES = {
    torch.float32: "float",
    torch.float64: "double",
    torch.float16: "h3r::Half",
    torch.bfloat16: "h3r::BFloat16",
}
ACCUMULATE_TYPES = ("float", "double")

# source file -> (kernel, the types its template is instantiated for; None: not a template)
SOURCES = {
    "encode.cu": (("encode_kernel", tuple(STORAGE_TYPES.values())),),
    "loss.cu": (
        ("loss_kernel", tuple(STORAGE_TYPES.values())),
        ("loss_backward_kernel", tuple(STORAGE_TYPES.values())),
        ("loss_count_kernel", None),
        ("loss_reduce_kernel", ACCUMULATE_TYPES),
    ),
    "decode.cu": (
        ("decode_kernel", tuple(STORAGE_TYPES.values())),
        ("decode_backward_kernel", tuple(STORAGE_TYPES.values())),
    ),
}

# Kernel-side constants, from the spec (the sources get them as -D defines: compile_options()).
BLOCK = spec.BLOCK
MAX_MAPS_PER_BLOCK = spec.MAX_MAPS_PER_BLOCK
MAX_DYNAMIC_SHARED_MEMORY = 32 * 1024  # of the 48 KiB a block may use without opting in (the rest: static arrays)


def compile_options(folder: Path) -> tuple[str, ...]:
    """NVRTC options: C++17, the header folder, and every define of :func:`h3r_kernels.spec.c_defines`."""
    return ("-std=c++17", f"-I{folder}", *spec.c_define_options())


def name_expressions(source: str) -> tuple[str, ...]:
    """The kernels of ``source`` as CuPy's ``name_expressions``: ``kernel<type>``, or ``kernel``."""
    names = []
    for kernel, ctypes in SOURCES[source]:
        names.extend([kernel] if ctypes is None else [f"{kernel}<{ctype}>" for ctype in ctypes])
    return tuple(names)


def find_source_dir(candidates: Sequence[Path] = SOURCE_DIRS) -> Path:
    """The first folder in ``candidates`` holding the header and every ``.cu`` file."""
    needed = (HEADER, *SOURCES)
    for folder in candidates:
        if all((folder / name).is_file() for name in needed):
            return folder
    looked = ", ".join(str(folder) for folder in candidates)
    raise RuntimeError(
        f"the CUDA sources of the cuda backend ({', '.join(needed)}) were not found; looked in: {looked}"
    )


def import_cupy():
    """``import cupy``, after pointing ``CUPY_CACHE_DIR`` at ``H3R_CUPY_CACHE_DIR`` when it is set.

    Raises RuntimeError saying what is missing when CuPy cannot be imported.
    """
    cache_dir = os.environ.get(CACHE_DIR_ENV)
    if cache_dir:
        if sys.modules.get("cupy") is not None and os.environ.get("CUPY_CACHE_DIR") != cache_dir:
            warnings.warn(
                f"{CACHE_DIR_ENV}={cache_dir!r} is ignored: cupy was imported before h3r_kernels used it and keeps "
                f"CUPY_CACHE_DIR={os.environ.get('CUPY_CACHE_DIR')!r}; set {CACHE_DIR_ENV} (or CUPY_CACHE_DIR) "
                "before anything imports cupy",
                RuntimeWarning,
                stacklevel=2,
            )
        else:
            os.environ["CUPY_CACHE_DIR"] = cache_dir
    try:
        import cupy
    except Exception as error:  # ImportError, or CuPy failing to load its CUDA libraries
        raise RuntimeError(
            f"CuPy is not importable ({type(error).__name__}: {error}); install the wheel matching your CUDA, "
            "e.g. pip install 'h3r[cuda12]' (cupy-cuda12x) or 'h3r[cuda13]' (cupy-cuda13x)"
        ) from error
    return cupy


def require_cuda(name: str, tensor: torch.Tensor) -> None:
    if tensor.device.type != "cuda":
        raise RuntimeError(f"backend='cuda' needs CUDA tensors, got {name} on {tensor.device}")


def _source_text(folder: Path, source: str) -> str:
    # CuPy's on-disk cache is keyed by the source text; the header's hash makes it see header edits.
    header_hash = hashlib.sha256((folder / HEADER).read_bytes()).hexdigest()
    return f"// {HEADER} sha256 {header_hash}\n" + (folder / source).read_text()


@functools.lru_cache(maxsize=None)
def _module(device_index: int, source: str):
    """The compiled ``RawModule`` of ``source`` for one device (call under that device)."""
    cupy = import_cupy()
    folder = find_source_dir()
    return cupy.RawModule(
        code=_source_text(folder, source),
        options=compile_options(folder),
        name_expressions=name_expressions(source),
    )


@functools.lru_cache(maxsize=None)
def _function(device_index: int, source: str, name: str):
    return _module(device_index, source).get_function(name)


@functools.lru_cache(maxsize=None)
def multiprocessors(device_index: int) -> int:
    return torch.cuda.get_device_properties(device_index).multi_processor_count


def _cupy_stream(cupy, stream: torch.cuda.Stream, device_index: int):
    """CuPy's view of a torch stream (a context manager making it CuPy's current stream)."""
    if hasattr(cupy.cuda.Stream, "from_external") and hasattr(stream, "__cuda_stream__"):  # cupy >= 14
        return cupy.cuda.Stream.from_external(stream)
    return cupy.cuda.ExternalStream(stream.cuda_stream, device_index)


def pointer(tensor: torch.Tensor | None) -> np.uint64:
    """A kernel pointer argument: the tensor's ``data_ptr()``, or 0 (null) for None."""
    return np.uint64(0 if tensor is None else tensor.data_ptr())


def aligned(*tensors: torch.Tensor) -> bool:
    """Whether every tensor's data starts on a 16-byte boundary (for the kernels' 16-byte accesses)."""
    return all(t.data_ptr() % 16 == 0 for t in tensors)


def launch(device: torch.device, source: str, name: str, blocks: int, args: tuple, shared_memory: int = 0) -> None:
    """Launch kernel ``name`` of ``source`` with ``blocks`` x :data:`BLOCK` threads on torch's current stream."""
    if shared_memory > MAX_DYNAMIC_SHARED_MEMORY:
        raise RuntimeError(
            f"backend='cuda': {name} would need {shared_memory} bytes of shared memory for its target profiles, "
            f"more than {MAX_DYNAMIC_SHARED_MEMORY}; H + W is too large for it, use backend='triton' or 'reference'"
        )
    cupy = import_cupy()
    index = device.index if device.index is not None else torch.cuda.current_device()
    with torch.cuda.device(index):
        function = _function(index, source, name)
        with _cupy_stream(cupy, torch.cuda.current_stream(index), index):
            function((int(blocks),), (BLOCK,), args, shared_mem=int(shared_memory))


def grid(work_items: int, device: torch.device, blocks_per_multiprocessor: int = 16) -> int:
    """Blocks for a grid-stride loop over ``work_items`` block-sized pieces: at most a few waves."""
    index = device.index if device.index is not None else torch.cuda.current_device()
    return max(1, min(work_items, multiprocessors(index) * blocks_per_multiprocessor))


def threads_per_map(map_size: int) -> int:
    """Threads that share one map in the loss and decode kernels: about 64 cells each, 1 to 8 warps."""
    threads = 32
    while threads < BLOCK and threads * 64 < map_size:
        threads *= 2
    return threads
