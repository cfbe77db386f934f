"""The ``cuda`` backend: CUDA C kernels from ``csrc/`` compiled at run time through CuPy.

One module per op (``encode``, ``loss``, ``decode``) with the reference's function names and
signatures; :mod:`._module` finds the sources, compiles them once per (device, file) and
launches on torch's current stream. ``H3R_CUPY_CACHE_DIR`` sets CuPy's compile cache folder
(``CUPY_CACHE_DIR``); it must be set before CuPy is first imported.
"""
from __future__ import annotations


def availability() -> tuple[bool, str]:
    """``(available, reason)``: whether CuPy, a GPU, the CUDA runtime, NVRTC and the sources are all here."""
    import torch

    from . import _module

    try:
        cupy = _module.import_cupy()
    except RuntimeError as error:
        return False, str(error)
    if not torch.cuda.is_available():
        return False, f"cupy {cupy.__version__} is installed, but torch sees no CUDA device"
    try:
        runtime = cupy.cuda.runtime.runtimeGetVersion()
        driver = cupy.cuda.runtime.driverGetVersion()
    except Exception as error:  # CuPy's CUDA runtime library missing or unusable
        return False, f"cupy {cupy.__version__} cannot use the CUDA runtime ({type(error).__name__}: {error})"
    # CUDA's minor-version compatibility lets a 13.2 runtime run on a 13.0 driver (CuPy compiles
    # straight to cubin, so no PTX has to be JIT-compiled by the older driver); majors must match.
    if driver // 1000 < runtime // 1000:
        return False, (
            f"cupy {cupy.__version__} is built for CUDA {_version(runtime)}, but the NVIDIA driver supports only "
            f"CUDA {_version(driver)}; install the cupy-cuda{driver // 1000}x wheel or a newer driver"
        )
    try:
        nvrtc = cupy.cuda.nvrtc.getVersion()
    except Exception as error:  # libnvrtc missing: the kernels cannot be compiled
        return False, (
            f"cupy {cupy.__version__} cannot load NVRTC, the run-time compiler of CUDA {_version(runtime)} "
            f"({type(error).__name__}: {error}); install it, e.g. pip install nvidia-cuda-nvrtc"
        )
    try:
        sources = _module.find_source_dir()
    except RuntimeError as error:
        return False, str(error)
    return True, (
        f"cupy {cupy.__version__}, CUDA runtime {_version(runtime)}, NVRTC {nvrtc[0]}.{nvrtc[1]}, sources in {sources}"
    )


def _version(code: int) -> str:
    """CUDA's integer version (e.g. 12040) as ``12.4``."""
    return f"{code // 1000}.{code % 1000 // 10}"
