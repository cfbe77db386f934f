"""Naive PyTorch implementations that the fused ops are compared against.

Each function is plain eager PyTorch: every step materialises a full tensor, which is
exactly what a fused kernel avoids. Keypoints are ``(B, K, 2)`` float ``(x, y)`` in heatmap
pixels, the cell at row ``r``, column ``c`` has its centre at ``(x=c, y=r)``; maps are
``(B, K, H, W)``. A keypoint whose target cell lies off the map gets an all-zero map, as
in :func:`h3r_kernels.encode`.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F


def _grids(keypoints: torch.Tensor, height: int, width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Column and row indices as float32 ``(W,)`` and ``(H,)`` on the keypoints' device."""
    cols = torch.arange(width, dtype=torch.float32, device=keypoints.device)
    rows = torch.arange(height, dtype=torch.float32, device=keypoints.device)
    return cols, rows


def _on_map(cells: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Whether each integer cell ``(x, y)`` of ``(B, K, 2)`` lies on the map, ``(B, K)``."""
    x, y = cells.unbind(-1)
    return (x >= 0) & (x <= width - 1) & (y >= 0) & (y <= height - 1)


def random_rounding_one_hot(
    keypoints: torch.Tensor,
    height: int,
    width: int,
    dtype: torch.dtype = torch.float32,
    generator: Optional[torch.Generator] = None,
) -> torch.Tensor:
    """H3R's sampled target: ``floor(x) + Bernoulli(frac(x))`` per axis, then ``scatter_`` a 1 into zeros.

    ``torch.rand`` draws the Bernoulli variables (not the counter-based generator of
    :mod:`h3r_kernels.rng`): same distribution, different samples.
    """
    batch, num = keypoints.shape[:2]
    points = keypoints.to(torch.float32)
    floor = torch.floor(points)
    u = torch.rand(points.shape, generator=generator, device=points.device)
    cells = floor + (u < points - floor).to(torch.float32)
    on_map = _on_map(cells, height, width)
    x = cells[..., 0].clamp(0, width - 1)
    y = cells[..., 1].clamp(0, height - 1)
    index = (y * width + x).to(torch.int64).unsqueeze(-1)
    maps = torch.zeros(batch, num, height * width, dtype=dtype, device=points.device)
    maps.scatter_(-1, index, on_map.unsqueeze(-1).to(dtype))
    return maps.view(batch, num, height, width)


def dense_bilinear_expected(
    keypoints: torch.Tensor, height: int, width: int, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """The expectation of the randomized-rounding target over the full grid.

    Separable triangle weights ``max(0, 1 - |c - x|)`` and ``max(0, 1 - |r - y|)``, outer
    product (the bilinear weights of the 4 neighbouring cells; off-map neighbours drop out).
    """
    points = keypoints.to(torch.float32)
    cols, rows = _grids(points, height, width)
    col_weights = torch.clamp(1 - (cols - points[..., 0:1]).abs(), min=0)
    row_weights = torch.clamp(1 - (rows - points[..., 1:2]).abs(), min=0)
    return (row_weights.unsqueeze(-1) * col_weights.unsqueeze(-2)).to(dtype)


def dense_gaussian(
    keypoints: torch.Tensor, height: int, width: int, sigma: float, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """Vanilla Gaussian target: ``exp(-d^2 / 2 sigma^2)`` (peak 1) at the nearest cell, full grid.

    Separable: one Gaussian profile per axis, outer product; maps of keypoints whose nearest
    cell is off the map are zeroed.
    """
    points = keypoints.to(torch.float32)
    centres = torch.floor(points + 0.5)
    cols, rows = _grids(points, height, width)
    scale = -0.5 / (sigma * sigma)
    col_profile = torch.exp((cols - centres[..., 0:1]) ** 2 * scale)
    row_profile = torch.exp((rows - centres[..., 1:2]) ** 2 * scale)
    row_profile = row_profile * _on_map(centres, height, width).unsqueeze(-1).to(torch.float32)
    return (row_profile.unsqueeze(-1) * col_profile.unsqueeze(-2)).to(dtype)


def one_hot_bce_loss(logits: torch.Tensor, keypoints: torch.Tensor) -> torch.Tensor:
    """BCE-with-logits against a materialised randomized-rounding one-hot target (mean over all pixels)."""
    height, width = logits.shape[-2:]
    target = random_rounding_one_hot(keypoints, height, width, dtype=logits.dtype)
    return F.binary_cross_entropy_with_logits(logits, target)


def topk_decode(heatmaps: torch.Tensor, k: int = 9) -> tuple[torch.Tensor, torch.Tensor]:
    """The decoder the H3R authors released: top-k of each map -> softmax of the values -> weighted mean index.

    Returns ``coords (B, K, 2)`` as ``(x, y)`` in heatmap pixels (the index ``i`` gives
    ``x = i mod W``, ``y = i div W``, no half-pixel offset) and ``scores (B, K)``, the top
    value. Computed in the maps' dtype, as released.
    """
    width = heatmaps.shape[-1]
    values, index = heatmaps.flatten(2).topk(k, dim=-1)
    weights = torch.softmax(values, dim=-1)
    x = (index % width).to(weights.dtype)
    y = torch.div(index, width, rounding_mode="floor").to(weights.dtype)
    coords = torch.stack([(weights * x).sum(-1), (weights * y).sum(-1)], dim=-1)
    return coords, values[..., 0]
