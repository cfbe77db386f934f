"""Input checks shared by the public functions, the real ops and their fake (meta) kernels.

Every error names the argument, what was expected and what was given.
"""
from __future__ import annotations

import math
import numbers
from typing import Optional

import torch

from . import spec

# The strings of each option, from the spec (h3r_kernels/spec.py), in the order of their codes.
ROUNDINGS = spec.names(spec.Rounding)
LOSSES = spec.names(spec.Loss)
REDUCTIONS = spec.names(spec.Reduction)
METHODS = spec.names(spec.Method)
WEIGHTINGS = spec.names(spec.Weighting)
BACKENDS = ("auto", "reference", "triton", "cuda")
KEYPOINT_DTYPES = (torch.float32, torch.float64)
MAP_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)
MAX_K = spec.MAX_K
# Masks: bool (the fast path), integer or floating; non-zero is visible (NaN is invisible).
VISIBLE_DTYPES = (
    torch.bool, torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64,
    torch.float16, torch.bfloat16, torch.float32, torch.float64,
)
WEIGHT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
# The smallest sigma > 0 whose Gaussian exponent factor -1/(2 sigma^2) is finite in float32
# (below it the factor overflows to -inf and the peak becomes exp(0 * -inf) = NaN).
FLOAT32_MAX = 3.4028234663852886e38
MIN_SIGMA = math.sqrt(0.5 / FLOAT32_MAX)  # 3.8332e-20
MAX_MAP_CELLS = 2**31 - 1  # H * W of one map: the kernels index its cells in int32


def _shape(t: torch.Tensor) -> tuple:
    return tuple(t.shape)


def _type_name(value) -> str:
    """How an error names the type of ``value``: ``bool``, ``str``, ``numpy.bool``, ``a 1-d torch.float32 tensor``."""
    if isinstance(value, torch.Tensor):
        return f"a {value.dim()}-d {value.dtype} tensor"
    kind = type(value)
    return kind.__name__ if kind.__module__ == "builtins" else f"{kind.__module__.split('.')[0]}.{kind.__name__}"


def _scalar(value, integral: bool):
    """``value`` as a Python int (``integral``) or float if it is a real number of a numeric type.

    Numeric types: Python ``int``/``float``, NumPy integer/floating scalars (and 0-d arrays),
    0-d integer/floating torch tensors (``.item()``: a CUDA tensor costs a device sync). Booleans
    (``True``, ``numpy.bool_``, bool tensors) are not numbers here. Returns None when the type
    is not accepted (the caller names it); integral callers also get None for floating types.
    Symbolic numbers (``torch.SymInt``/``SymFloat``, while ``torch.compile`` traces with a
    dynamic seed) are returned as they are: the real op checks the concrete value at run time.
    """
    if isinstance(value, bool):
        return None
    if isinstance(value, torch.Tensor):
        if value.dim() != 0 or value.dtype == torch.bool or value.is_complex() or value.is_meta:
            return None  # a meta tensor has no value to read
        if integral and value.is_floating_point():
            return None
        value = value.item()  # a SymInt/SymFloat while torch.export traces a 0-d tensor
    if isinstance(value, (torch.SymInt, torch.SymFloat)):
        return value if isinstance(value, torch.SymInt) or not integral else None
    elif type(value).__module__ == "numpy":
        if getattr(value, "shape", ()) != () or not hasattr(value, "item"):
            return None
        kind = getattr(getattr(value, "dtype", None), "kind", "")
        if kind not in ("i", "u", "f") or (integral and kind == "f"):
            return None
        value = value.item()
    if isinstance(value, bool):
        return None
    if integral:
        return int(value) if isinstance(value, numbers.Integral) else None
    if not isinstance(value, numbers.Real):
        return None
    try:
        return float(value)
    except OverflowError:  # an int beyond float's range: as large as a float gets
        return math.inf if value > 0 else -math.inf


def as_sigma(sigma) -> float:
    """``sigma`` as a Python float: a real number, 0 (binary target) or in [MIN_SIGMA, inf)."""
    value = _scalar(sigma, integral=False)
    if value is None:
        raise TypeError(
            f"sigma: expected a finite number >= 0 (int, float, a NumPy number or a 0-d tensor), "
            f"got {_type_name(sigma)} {sigma!r}"
        )
    if isinstance(value, (torch.SymInt, torch.SymFloat)):
        return value
    if not value >= 0 or value == float("inf"):
        raise ValueError(f"sigma: expected a finite number >= 0, got {value!r}")
    if 0 < value < MIN_SIGMA:
        raise ValueError(
            f"sigma: expected 0 or a number >= {MIN_SIGMA:.4e} = sqrt(0.5 / float32 max), the smallest sigma whose "
            f"Gaussian exponent -1/(2 sigma^2) is representable in float32; got {value!r}"
        )
    return value


def as_seed(seed) -> Optional[int]:
    """``seed`` as a Python int in [0, 2**32) (or None): an integer of any integer type."""
    if seed is None:
        return None
    value = _scalar(seed, integral=True)
    if value is None:
        raise TypeError(f"seed: expected None or an integer in [0, 2**32), got {_type_name(seed)} {seed!r}")
    if isinstance(value, torch.SymInt):
        return value
    if not 0 <= value < 2**32:
        raise ValueError(f"seed: expected None or an integer in [0, 2**32), got {value!r}")
    return value


def device_seed(seed, keypoints) -> Optional[torch.Tensor]:
    """``seed`` when it is a 0-d integer tensor on the keypoints' device, else None.

    Such a seed's draws are made on that device from the tensor (:func:`h3r_kernels.rng.uniforms`):
    no host sync, and a CUDA graph that captured the call re-draws when the tensor changes
    between replays. A CPU tensor's value is checked as an int's; a CUDA tensor is not read
    on the host: its low 32 bits are the seed. Other tensors are left to :func:`as_seed`.
    """
    if not (isinstance(seed, torch.Tensor) and isinstance(keypoints, torch.Tensor)) or seed.device != keypoints.device:
        return None
    if seed.dim() != 0 or seed.dtype == torch.bool or seed.is_floating_point() or seed.is_complex():
        return None
    if seed.device.type == "cpu":
        as_seed(seed)
    return seed


def as_int(name: str, value, requirement: str) -> int:
    """An integer option (``k``, ``window``) as a Python int; ``requirement`` is said when rejecting."""
    result = _scalar(value, integral=True)
    if result is None:
        raise TypeError(f"{name}: expected {requirement}, got {_type_name(value)} {value!r}")
    return result


def as_flag(name: str, value) -> bool:
    """A yes/no option (``expected``) as a Python bool: a bool or a NumPy bool, nothing that merely has a truth value."""
    if isinstance(value, bool) or type(value).__module__ == "numpy" and getattr(value, "dtype", None) == bool \
            and getattr(value, "shape", None) == ():
        return bool(value)
    raise TypeError(f"{name}: expected True or False, got {_type_name(value)} {value!r}")


def check_choice(name: str, value: str, choices: tuple) -> None:
    if value not in choices:
        raise ValueError(f"{name}: expected one of {', '.join(map(repr, choices))}, got {value!r}")


def check_mask(name: str, mask, keypoints: torch.Tensor, dtypes: tuple, dtype_words: str) -> None:
    """A ``(B, K)`` tensor on the keypoints' device, of one of ``dtypes``."""
    if not isinstance(mask, torch.Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor or None, got {_type_name(mask)}")
    if _shape(mask) != _shape(keypoints)[:2]:
        raise ValueError(f"{name}: expected shape (B, K) = {_shape(keypoints)[:2]} to match keypoints, got {_shape(mask)}")
    if mask.dtype not in dtypes:
        raise TypeError(f"{name}: expected dtype {dtype_words}, got {mask.dtype}")
    if mask.device != keypoints.device:
        raise ValueError(f"{name}: expected device {keypoints.device} (that of keypoints), got {mask.device}")


def check_keypoints(keypoints: torch.Tensor, visible: Optional[torch.Tensor]) -> None:
    if not isinstance(keypoints, torch.Tensor):
        raise TypeError(f"keypoints: expected a torch.Tensor, got {_type_name(keypoints)}")
    if keypoints.dim() != 3 or keypoints.shape[2] != 2:
        raise ValueError(f"keypoints: expected a (B, K, 2) tensor of (x, y), got shape {_shape(keypoints)}")
    if keypoints.dtype not in KEYPOINT_DTYPES:
        raise TypeError(f"keypoints: expected dtype float32 or float64, got {keypoints.dtype}")
    if visible is not None:
        check_mask("visible", visible, keypoints, VISIBLE_DTYPES, "bool, an integer or a floating dtype (non-zero: visible)")


def check_weight(weight: Optional[torch.Tensor], keypoints: torch.Tensor) -> None:
    """``weight``: None or a ``(B, K)`` floating tensor on the keypoints' device (any values: see heatmap_loss)."""
    if weight is not None:
        check_mask("weight", weight, keypoints, WEIGHT_DTYPES, "float32, float64, float16 or bfloat16")


def check_target_options(sigma, rounding: str, seed) -> tuple[float, Optional[int]]:
    """``sigma`` and ``seed`` of any numeric type (see :func:`as_sigma`, :func:`as_seed`); ``rounding``.

    Returns ``(sigma, seed)`` as :func:`as_sigma` and :func:`as_seed` give them.
    """
    check_choice("rounding", rounding, ROUNDINGS)
    sigma = as_sigma(sigma)
    if rounding == "none" and sigma == 0:
        raise ValueError("rounding: 'none' keeps the continuous centre and needs sigma > 0, got sigma=0")
    return sigma, as_seed(seed)


def _size_ok(value) -> bool:
    """An integral number of a numeric type (not a bool), or a symbolic size while tracing."""
    if isinstance(value, torch.SymInt):
        return True
    number = _scalar(value, integral=False)
    return number is not None and number.is_integer()


def check_heatmap_size(heatmap_size) -> tuple[int, int]:
    try:
        height, width = (int(v) for v in heatmap_size)
        ok = all(_size_ok(v) for v in heatmap_size)
    except (TypeError, ValueError, OverflowError):
        ok = False
    if not ok or height < 1 or width < 1:
        raise ValueError(f"heatmap_size: expected (H, W) with H, W >= 1, got {heatmap_size!r}")
    if height * width > MAX_MAP_CELLS:
        raise ValueError(f"heatmap_size: expected at most 2**31 - 1 cells per map (the kernels index a map's cells "
                         f"in 32 bits), got {height} x {width}")
    return height, width


def check_maps(name: str, maps: torch.Tensor) -> None:
    if not isinstance(maps, torch.Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, got {type(maps).__name__}")
    if maps.dim() != 4:
        raise ValueError(f"{name}: expected a (B, K, H, W) tensor, got shape {_shape(maps)}")
    if maps.dtype not in MAP_DTYPES:
        raise TypeError(f"{name}: expected dtype float32, float16 or bfloat16 (float64 for gradcheck), got {maps.dtype}")
    if maps.shape[2] < 1 or maps.shape[3] < 1:
        raise ValueError(f"{name}: expected H, W >= 1, got shape {_shape(maps)}")


def check_dtype(dtype) -> None:
    """``dtype``: the dtype of encode's maps."""
    if dtype not in MAP_DTYPES:
        raise TypeError(f"dtype: expected torch.float32, float16, bfloat16 or float64, got {dtype}")


def check_encode(keypoints, heatmap_size, visible, sigma, rounding, seed, dtype) -> tuple[int, int, float, Optional[int]]:
    """Checks encode's arguments; returns ``(height, width, sigma, seed)`` converted (see :func:`check_target_options`)."""
    check_keypoints(keypoints, visible)
    sigma, seed = check_target_options(sigma, rounding, seed)
    check_dtype(dtype)
    return (*check_heatmap_size(heatmap_size), sigma, seed)


def check_heatmap_loss(
    logits, keypoints, visible, sigma, rounding, seed, loss, reduction, weight=None
) -> tuple[float, Optional[int]]:
    """Checks heatmap_loss's arguments; returns ``(sigma, seed)`` converted (see :func:`check_target_options`)."""
    check_maps("logits", logits)
    check_keypoints(keypoints, visible)
    check_weight(weight, keypoints)
    sigma, seed = check_target_options(sigma, rounding, seed)
    check_choice("loss", loss, LOSSES)
    check_choice("reduction", reduction, REDUCTIONS)
    if _shape(keypoints)[:2] != _shape(logits)[:2]:
        raise ValueError(
            f"keypoints: expected (B, K) = {_shape(logits)[:2]} to match logits, got shape {_shape(keypoints)}"
        )
    if keypoints.device != logits.device:
        raise ValueError(f"keypoints: expected device {logits.device} (that of logits), got {keypoints.device}")
    return sigma, seed


def check_decode_options(method, k, weights, window, cells: Optional[int] = None) -> tuple[int, int]:
    """decode's options; ``cells``: H*W of the maps when known (``topk`` needs ``k <= H*W``).

    Returns ``(k, window)`` as Python ints.
    """
    check_choice("method", method, METHODS)
    check_choice("weights", weights, WEIGHTINGS)
    k = as_int("k", k, f"an integer in [1, {MAX_K}]")
    if not 1 <= k <= MAX_K:
        raise ValueError(f"k: expected an integer in [1, {MAX_K}], got {k!r}")
    if method == "topk" and cells is not None and k > cells:
        raise ValueError(f"k: expected 1 <= k <= H*W = {cells}, got {k}")
    window = as_int("window", window, "an odd integer >= 1")
    if window < 1 or window % 2 == 0:
        raise ValueError(f"window: expected an odd integer >= 1, got {window!r}")
    if window * window > spec.MAX_WINDOW_CELLS:
        raise ValueError(f"window: expected window*window <= {spec.MAX_WINDOW_CELLS}, got window={window}")
    return k, window


def check_decode(heatmaps, method, k, weights, window) -> tuple[int, int]:
    """Checks decode's arguments; returns ``(k, window)`` as Python ints."""
    check_maps("heatmaps", heatmaps)
    return check_decode_options(method, k, weights, window, heatmaps.shape[2] * heatmaps.shape[3])


def check_backend(backend: str) -> None:
    check_choice("backend", backend, BACKENDS)
