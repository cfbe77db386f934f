"""Input checks shared by the public functions, the real ops and their fake (meta) kernels.

Every error names the argument, what was expected and what was given.
"""
from __future__ import annotations

from typing import Optional

import torch

ROUNDINGS = ("random", "nearest", "floor", "none")
LOSSES = ("bce", "mse")
REDUCTIONS = ("mean", "sum", "none")
METHODS = ("topk", "local", "argmax")
WEIGHTINGS = ("softmax", "linear")
BACKENDS = ("auto", "reference", "triton", "cuda")
KEYPOINT_DTYPES = (torch.float32, torch.float64)
MAP_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)
MAX_K = 32


def _shape(t: torch.Tensor) -> tuple:
    return tuple(t.shape)


def check_choice(name: str, value: str, choices: tuple) -> None:
    if value not in choices:
        raise ValueError(f"{name}: expected one of {', '.join(map(repr, choices))}, got {value!r}")


def check_keypoints(keypoints: torch.Tensor, visible: Optional[torch.Tensor]) -> None:
    if not isinstance(keypoints, torch.Tensor):
        raise TypeError(f"keypoints: expected a torch.Tensor, got {type(keypoints).__name__}")
    if keypoints.dim() != 3 or keypoints.shape[2] != 2:
        raise ValueError(f"keypoints: expected a (B, K, 2) tensor of (x, y), got shape {_shape(keypoints)}")
    if keypoints.dtype not in KEYPOINT_DTYPES:
        raise TypeError(f"keypoints: expected dtype float32 or float64, got {keypoints.dtype}")
    if visible is not None:
        if not isinstance(visible, torch.Tensor):
            raise TypeError(f"visible: expected a torch.Tensor or None, got {type(visible).__name__}")
        if _shape(visible) != _shape(keypoints)[:2]:
            raise ValueError(
                f"visible: expected shape (B, K) = {_shape(keypoints)[:2]} to match keypoints, got {_shape(visible)}"
            )
        if visible.dtype != torch.bool:
            raise TypeError(f"visible: expected dtype torch.bool, got {visible.dtype}")
        if visible.device != keypoints.device:
            raise ValueError(f"visible: expected device {keypoints.device} (that of keypoints), got {visible.device}")


def check_target_options(sigma: float, rounding: str, seed: Optional[int]) -> None:
    check_choice("rounding", rounding, ROUNDINGS)
    if not isinstance(sigma, (int, float)) or not sigma >= 0 or sigma == float("inf"):
        raise ValueError(f"sigma: expected a finite number >= 0, got {sigma!r}")
    if rounding == "none" and sigma == 0:
        raise ValueError("rounding: 'none' keeps the continuous centre and needs sigma > 0, got sigma=0")
    if seed is not None and (not isinstance(seed, int) or isinstance(seed, bool) or not 0 <= seed < 2**32):
        raise ValueError(f"seed: expected None or an integer in [0, 2**32), got {seed!r}")


def check_heatmap_size(heatmap_size) -> tuple[int, int]:
    try:
        height, width = (int(v) for v in heatmap_size)
        ok = all(isinstance(v, int) or float(v).is_integer() for v in heatmap_size)
    except (TypeError, ValueError):
        ok = False
    if not ok or height < 1 or width < 1:
        raise ValueError(f"heatmap_size: expected (H, W) with H, W >= 1, got {heatmap_size!r}")
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


def check_encode(keypoints, heatmap_size, visible, sigma, rounding, seed, dtype) -> tuple[int, int]:
    check_keypoints(keypoints, visible)
    check_target_options(sigma, rounding, seed)
    if dtype not in MAP_DTYPES:
        raise TypeError(f"dtype: expected torch.float32, float16, bfloat16 or float64, got {dtype}")
    return check_heatmap_size(heatmap_size)


def check_heatmap_loss(logits, keypoints, visible, sigma, rounding, seed, loss, reduction) -> None:
    check_maps("logits", logits)
    check_keypoints(keypoints, visible)
    check_target_options(sigma, rounding, seed)
    check_choice("loss", loss, LOSSES)
    check_choice("reduction", reduction, REDUCTIONS)
    if _shape(keypoints)[:2] != _shape(logits)[:2]:
        raise ValueError(
            f"keypoints: expected (B, K) = {_shape(logits)[:2]} to match logits, got shape {_shape(keypoints)}"
        )
    if keypoints.device != logits.device:
        raise ValueError(f"keypoints: expected device {logits.device} (that of logits), got {keypoints.device}")


def check_decode(heatmaps, method, k, weights, window) -> None:
    check_maps("heatmaps", heatmaps)
    check_choice("method", method, METHODS)
    check_choice("weights", weights, WEIGHTINGS)
    if not isinstance(k, int) or isinstance(k, bool) or not 1 <= k <= MAX_K:
        raise ValueError(f"k: expected an integer in [1, {MAX_K}], got {k!r}")
    if method == "topk" and k > heatmaps.shape[2] * heatmaps.shape[3]:
        raise ValueError(f"k: expected 1 <= k <= H*W = {heatmaps.shape[2] * heatmaps.shape[3]}, got {k}")
    if not isinstance(window, int) or isinstance(window, bool) or window < 1 or window % 2 == 0:
        raise ValueError(f"window: expected an odd integer >= 1, got {window!r}")
    if window * window > 1024:
        raise ValueError(f"window: expected window*window <= 1024, got window={window}")


def check_backend(backend: str) -> None:
    check_choice("backend", backend, BACKENDS)
