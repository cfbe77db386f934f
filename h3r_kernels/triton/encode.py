"""Triton ``encode``: one write-only pass over the ``(B, K, H, W)`` target maps.

Each program renders a ``(BLOCK_M, BLOCK_H, BLOCK_W)`` tile: ``BLOCK_M`` consecutive maps
(several when maps are small), ``BLOCK_H`` rows of each, all columns (see
:func:`h3r_kernels.triton._common.map_tiling`). Each keypoint's cell (or, with ``expected``,
its two bilinear neighbours per axis) is computed in registers from the keypoint, its
visibility and the seed, exactly as :func:`h3r_kernels.reference.target_profiles` does; a map
is the outer product of a row profile and a column profile. :func:`keypoint_cells`,
:func:`cells_target` and :func:`map_tile` are shared with the fused loss in
:mod:`h3r_kernels.triton.loss`.
"""
from __future__ import annotations

from typing import Optional

import torch
import triton
import triton.language as tl

from .. import spec
from ..spec import gaussian_scale
from . import _rng
from ._common import (
    ROUNDING_FLOOR, ROUNDING_NEAREST, ROUNDING_NONE, ROUNDING_RANDOM, as_mask, device_guard, map_tiling,
)


@triton.jit
def _profile(distance, gauss_scale, BINARY: tl.constexpr):
    """1-D unit-peak profile at ``distance`` cells: a Kronecker delta, or ``exp(d^2 * gauss_scale)``."""
    if BINARY:
        return (distance == 0).to(tl.float32)
    else:
        return tl.exp(distance * distance * gauss_scale)


@triton.jit
def _expected_profile(coord, grid, size, gauss_scale, BINARY: tl.constexpr):
    """Bilinear mixture over the cells ``floor(coord)`` and ``floor(coord) + 1``, off-map components dropped."""
    low = tl.floor(coord)
    frac = coord - low
    high = low + 1.0
    low_part = (1.0 - frac) * _profile(grid - low, gauss_scale, BINARY)
    high_part = frac * _profile(grid - high, gauss_scale, BINARY)
    return tl.where((low >= 0) & (low <= size - 1.0), low_part, 0.0) + tl.where(
        (high >= 0) & (high <= size - 1.0), high_part, 0.0
    )


@triton.jit
def _expected_live(coord, size):
    """Whether the bilinear mixture of ``coord`` puts any weight on the map (False for NaN/inf)."""
    low = tl.floor(coord)
    frac = coord - low
    high = low + 1.0
    low_live = (low >= 0) & (low <= size - 1.0) & (1.0 - frac > 0)
    high_live = (high >= 0) & (high <= size - 1.0) & (frac > 0)
    return low_live | high_live


@triton.jit
def _rounded(coord, key, b, k, AXIS: tl.constexpr, ROUNDING: tl.constexpr):
    """The activation cell of one coordinate (float32 integer); ``none`` decides on-map by the nearest cell."""
    if ROUNDING == ROUNDING_RANDOM:
        low = tl.floor(coord)
        return low + (_rng.uniform(key, b, k, AXIS) < coord - low).to(tl.float32)
    elif ROUNDING == ROUNDING_FLOOR:
        return tl.floor(coord)
    else:
        tl.static_assert((ROUNDING == ROUNDING_NEAREST) or (ROUNDING == ROUNDING_NONE))
        return tl.floor(coord + 0.5)


@triton.jit
def _target_cells(x, y, b, k, seed, height, width, ROUNDING: tl.constexpr):
    """The rounded cells ``(cell_x, cell_y)`` of a keypoint and whether both lie on the map."""
    key = _rng.seed_key(seed)
    cell_x = _rounded(x, key, b, k, 0, ROUNDING)
    cell_y = _rounded(y, key, b, k, 1, ROUNDING)
    on_map = (cell_x >= 0) & (cell_x <= width - 1.0) & (cell_y >= 0) & (cell_y <= height - 1.0)
    return cell_x, cell_y, on_map


@triton.jit
def keypoint_cells(x, y, b, k, seed, height, width, ROUNDING: tl.constexpr):
    """``(cell_x, cell_y, contributes)`` of keypoints (visibility not included; scalars or blocks):
    the rounded cell of each (with ``none`` the keypoint itself), 0 where it is off the map."""
    cell_x, cell_y, contributes = _target_cells(x, y, b, k, seed, height, width, ROUNDING)
    if ROUNDING == ROUNDING_NONE:
        cell_x = x
        cell_y = y
    return tl.where(contributes, cell_x, 0.0), tl.where(contributes, cell_y, 0.0), contributes


@triton.jit
def cells_target(cell_x, cell_y, contributes, row_start, gauss_scale, BINARY: tl.constexpr,
                 BLOCK_H: tl.constexpr, BLOCK_W: tl.constexpr):
    """Target ``(BLOCK_M, BLOCK_H, BLOCK_W)`` float32 of maps whose activation points are
    ``(cell_x, cell_y)`` (``(BLOCK_M,)`` blocks), rows ``[row_start, row_start + BLOCK_H)``,
    columns ``[0, BLOCK_W)``: the outer product of a row and a column profile; all zero where
    ``contributes`` is False (whose cells must be finite)."""
    gauss_scale = tl.cast(gauss_scale, tl.float32)
    cols = tl.arange(0, BLOCK_W).to(tl.float32)[None, :]
    rows = (row_start + tl.arange(0, BLOCK_H)).to(tl.float32)[None, :]
    col_profile = _profile(cols - cell_x[:, None], gauss_scale, BINARY)
    row_profile = _profile(rows - cell_y[:, None], gauss_scale, BINARY)
    # Zeroing the row profile zeroes the map (the column profile is finite): cheaper than per cell.
    row_profile = tl.where(contributes[:, None], row_profile, 0.0)
    return row_profile[:, :, None] * col_profile[:, None, :]


@triton.jit
def tile_target(
    keypoints_ptr, visible_ptr, bk, num_maps, num_keypoints, seed, height, width, row_start, gauss_scale,
    ROUNDING: tl.constexpr, BINARY: tl.constexpr, EXPECTED: tl.constexpr, HAS_VISIBLE: tl.constexpr,
    BLOCK_H: tl.constexpr, BLOCK_W: tl.constexpr,
):
    """Target of maps ``bk = b*K + k`` (a block), rows ``[row_start, row_start + BLOCK_H)``, columns ``[0, BLOCK_W)``.

    Returns ``(target (BLOCK_M, BLOCK_H, BLOCK_W) float32, contributes (BLOCK_M,))``. Maps past
    ``num_maps`` do not contribute; cells past the map must be masked by the caller; a map that
    does not contribute is all zero. ``EXPECTED`` is only set with random rounding (the
    reference ignores it otherwise).
    """
    valid = bk < num_maps
    b = bk // num_keypoints
    k = bk - b * num_keypoints
    x = tl.load(keypoints_ptr + 2 * bk, mask=valid, other=float("nan"))
    y = tl.load(keypoints_ptr + 2 * bk + 1, mask=valid, other=float("nan"))
    if EXPECTED:
        gauss_scale = tl.cast(gauss_scale, tl.float32)
        cols = tl.arange(0, BLOCK_W).to(tl.float32)[None, :]
        rows = (row_start + tl.arange(0, BLOCK_H)).to(tl.float32)[None, :]
        contributes = _expected_live(x, width) & _expected_live(y, height)
        if HAS_VISIBLE:
            contributes = contributes & (tl.load(visible_ptr + bk, mask=valid, other=0) != 0)
        contributes = as_mask(contributes)
        col_profile = _expected_profile(x[:, None], cols, width, gauss_scale, BINARY)
        row_profile = _expected_profile(y[:, None], rows, height, gauss_scale, BINARY)
        row_profile = tl.where(contributes[:, None], row_profile, 0.0)
        target = row_profile[:, :, None] * col_profile[:, None, :]
    else:
        cell_x, cell_y, contributes = keypoint_cells(x, y, b, k, seed, height, width, ROUNDING)
        if HAS_VISIBLE:
            contributes = contributes & (tl.load(visible_ptr + bk, mask=valid, other=0) != 0)
        contributes = as_mask(contributes)
        target = cells_target(cell_x, cell_y, contributes, row_start, gauss_scale, BINARY, BLOCK_H, BLOCK_W)
    return target, contributes


@triton.jit
def map_tile(pid, num_maps, height, width, tiles_per_map, BLOCK_M: tl.constexpr, BLOCK_H: tl.constexpr,
             BLOCK_W: tl.constexpr):
    """The tile of program ``pid``: ``(bk (BLOCK_M,), row_start, offsets (int64), inside)``.

    ``offsets`` are flat element offsets of the ``(BLOCK_M, BLOCK_H, BLOCK_W)`` tile in the
    contiguous ``(B*K, H, W)`` maps, ``inside`` masks the maps, rows and columns past the end.
    """
    group = pid // tiles_per_map
    row_start = (pid - group * tiles_per_map) * BLOCK_H
    bk = group * BLOCK_M + tl.arange(0, BLOCK_M)
    rows = row_start + tl.arange(0, BLOCK_H)
    cols = tl.arange(0, BLOCK_W)
    inside = (bk < num_maps)[:, None, None] & (rows < height)[None, :, None] & (cols < width)[None, None, :]
    offsets = bk.to(tl.int64)[:, None, None] * (height * width) + (rows * width)[None, :, None] + cols[None, None, :]
    return bk, row_start, offsets, inside


@triton.jit(do_not_specialize=["seed"])
def _encode_kernel(
    out_ptr, keypoints_ptr, visible_ptr, seed, num_maps, num_keypoints, height, width, tiles_per_map, gauss_scale,
    ROUNDING: tl.constexpr, BINARY: tl.constexpr, EXPECTED: tl.constexpr, HAS_VISIBLE: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_W: tl.constexpr,
):
    bk, row_start, offsets, inside = map_tile(
        tl.program_id(0), num_maps, height, width, tiles_per_map, BLOCK_M, BLOCK_H, BLOCK_W
    )
    target, _ = tile_target(
        keypoints_ptr, visible_ptr, bk, num_maps, num_keypoints, seed, height, width, row_start, gauss_scale,
        ROUNDING, BINARY, EXPECTED, HAS_VISIBLE, BLOCK_H, BLOCK_W,
    )
    tl.store(out_ptr + offsets, target.to(out_ptr.dtype.element_ty), mask=inside)


def launch_encode(
    keypoints: torch.Tensor,
    visible: Optional[torch.Tensor],
    height: int,
    width: int,
    sigma: float,
    rounding: str,
    seed: int,
    expected: bool,
    dtype: torch.dtype,
    block_rows: Optional[int] = None,
    block_maps: Optional[int] = None,
) -> torch.Tensor:
    """:func:`encode` with optional overrides of the tile (rows and maps per program; for tests)."""
    batch, num = keypoints.shape[:2]
    out = torch.empty((batch, num, height, width), dtype=dtype, device=keypoints.device)
    if out.numel() == 0:
        return out
    tiling = map_tiling("encode", batch * num, height, width, block_rows, block_maps)
    visible_arg = keypoints if visible is None else visible.view(torch.uint8)
    with device_guard(keypoints):
        _encode_kernel[(tiling.grid,)](
            out, keypoints, visible_arg, _rng.seed_as_int32(seed), batch * num, num, height, width,
            tiling.tiles_per_map, gaussian_scale(sigma),
            ROUNDING=spec.code(spec.Rounding, rounding), BINARY=sigma == 0,
            EXPECTED=bool(expected and rounding == "random"),
            HAS_VISIBLE=visible is not None, BLOCK_M=tiling.block_m, BLOCK_H=tiling.block_h, BLOCK_W=tiling.block_w,
            num_warps=tiling.num_warps,
        )
    return out


def encode(keypoints, visible, height, width, sigma, rounding, seed, expected, dtype) -> torch.Tensor:
    """Target maps ``(B, K, H, W)`` of ``dtype``; same contract as :func:`h3r_kernels.reference.encode`.

    ``keypoints``: contiguous float32 ``(B, K, 2)`` in heatmap pixels; ``visible``: contiguous
    bool ``(B, K)`` or None. Binary targets are bit-identical to the reference for the same seed.
    """
    return launch_encode(keypoints, visible, height, width, sigma, rounding, seed, expected, dtype)
