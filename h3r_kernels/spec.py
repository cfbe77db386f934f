"""The one statement of the ops' options and shared constants, read by every backend.

* The string options of the ops are :class:`enum.IntEnum` classes here: a member's *name*
  (lower case) is the string users pass, its *value* the integer code the kernels receive.
  ``checks.py`` validates against :func:`names`; the Triton kernels receive the codes as
  ``tl.constexpr`` arguments (and compare them with ``tl.constexpr`` globals made from these
  enums, :mod:`h3r_kernels.triton._common`); the CUDA C sources get them as ``-D`` defines
  (:func:`c_defines`, passed by the CuPy loader and by the ``nvcc`` compile test) and refuse
  to compile without them.
* The slot rules of ``decode`` (how many cells each method selects, which slot holds the
  peak), the Gaussian exponent factor, the compute dtype, and the block constants of the
  CUDA C kernels.

Adding an option: one member here, then its implementation in ``reference.py`` and in each
backend (``tests/test_kernels_spec.py`` fails while a backend lacks it).
"""
from __future__ import annotations

import enum

import torch


class Rounding(enum.IntEnum):
    """``rounding`` of ``encode`` and ``heatmap_loss``: how a keypoint picks its target cell."""

    RANDOM = 0   # H3R: floor(x) + [u < frac(x)]
    NEAREST = 1  # floor(x + 0.5)
    FLOOR = 2    # floor(x)
    NONE = 3     # the continuous centre (needs sigma > 0); on the map when its nearest cell is


class Loss(enum.IntEnum):
    """``loss`` of ``heatmap_loss``: the per-pixel loss."""

    BCE = 0  # binary cross-entropy with logits
    MSE = 1  # squared error


class Reduction(enum.IntEnum):
    """``reduction`` of ``heatmap_loss`` (applied by the launchers, not inside the kernels)."""

    MEAN = 0
    SUM = 1
    NONE = 2


class Method(enum.IntEnum):
    """``method`` of ``decode``: which cells are weighed."""

    TOPK = 0    # the k largest values
    LOCAL = 1   # the window x window neighbourhood of the arg-max
    ARGMAX = 2  # the arg-max alone


class Weighting(enum.IntEnum):
    """``weights`` of ``decode``: how the selected cells are weighed."""

    SOFTMAX = 0  # exp(v - max), normalised
    LINEAR = 1   # max(v, 0), normalised (the peak when the sum is not > 0)


# The enum of each string argument of the ops, by argument name.
OPTIONS: dict[str, type[enum.IntEnum]] = {
    "rounding": Rounding,
    "loss": Loss,
    "reduction": Reduction,
    "method": Method,
    "weights": Weighting,
}


def names(option: type[enum.IntEnum]) -> tuple[str, ...]:
    """The strings users pass for ``option``, in the order of its codes (used in error messages)."""
    return tuple(member.name.lower() for member in option)


def code(option: type[enum.IntEnum], name: str) -> int:
    """The integer code of ``name`` (a valid string of ``option``) for the kernels."""
    return int(option[name.upper()])


# --------------------------------------------------------------------------- decode

MAX_K = 32  # the most cells "topk" selects
MAX_WINDOW_CELLS = 1024  # the most cells of a "local" window (window * window)


def slots(method: str, k: int, window: int) -> int:
    """Cells each map selects (the last dimension of decode's ``indices``)."""
    method = Method[method.upper()]
    if method == Method.TOPK:
        return k
    if method == Method.LOCAL:
        return window * window
    return 1


def peak_slot(method: str, n_slots: int) -> int:
    """The slot of the map's arg-max: the window centre for ``local``, else slot 0."""
    return n_slots // 2 if Method[method.upper()] == Method.LOCAL else 0


# --------------------------------------------------------------------------- targets and dtypes


def gaussian_scale(sigma: float) -> float:
    """``-1 / (2 sigma^2)``, the exponent factor of the Gaussian profile (0 for the binary target).

    A Python float (double); every backend rounds it to float32 once, as torch does when it
    multiplies a float32 tensor by it.
    """
    return -0.5 / (sigma * sigma) if sigma > 0 else 0.0


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """Reduced-precision maps are computed in float32; float64 stays float64 (for gradcheck)."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def saved_grad_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype of the gradient ``heatmap_loss`` computes in its forward for ``dtype`` logits: theirs,
    but float32 for float16. Divided by ``count * H * W`` ("mean") before the incoming gradient (a
    GradScaler's scale) multiplies it, a float16 gradient would fall below float16's smallest
    subnormal (6e-8) almost everywhere; bfloat16 has float32's range."""
    return torch.float32 if dtype == torch.float16 else dtype


# --------------------------------------------------------------------------- CUDA C constants

BLOCK = 256  # threads per block of every CUDA C kernel
MAX_MAPS_PER_BLOCK = 256  # the most maps one encode block renders at once
REDUCE_CHUNK = 16 * BLOCK  # values one block of loss_reduce_kernel adds
LOADS_IN_FLIGHT = 4  # 16-byte packs each thread loads before using any


def c_defines() -> dict[str, int]:
    """Every ``H3R_*`` macro the CUDA C sources take from this module, name -> value.

    ``H3R_<OPTION>_<NAME>`` for each enum member (``H3R_ROUNDING_RANDOM``, ``H3R_METHOD_TOPK``,
    ``H3R_WEIGHTING_LINEAR`` ...) and the block constants.
    """
    defines = {
        "H3R_BLOCK": BLOCK,
        "H3R_MAX_MAPS_PER_BLOCK": MAX_MAPS_PER_BLOCK,
        "H3R_REDUCE_CHUNK": REDUCE_CHUNK,
        "H3R_LOADS_IN_FLIGHT": LOADS_IN_FLIGHT,
    }
    for option in OPTIONS.values():
        prefix = option.__name__.upper()
        defines.update({f"H3R_{prefix}_{member.name}": int(member) for member in option})
    return defines


def c_define_options() -> tuple[str, ...]:
    """:func:`c_defines` as compiler options, ``-DNAME=VALUE`` (NVRTC and nvcc alike)."""
    return tuple(f"-D{name}={value}" for name, value in sorted(c_defines().items()))
