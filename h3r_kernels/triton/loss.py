"""Triton fused ``heatmap_loss``: one pass over the logits gives the loss and its gradient.

Each program takes ``BLOCK_H`` whole rows of one ``(b, k)`` map, renders the target in
registers (:func:`h3r_kernels.triton.encode.tile_target`, so it is exactly the target of
``encode``), reads the logits once, writes the gradient once (unless ``compute_grad`` is
False) and stores its partial loss sum in a ``(B*K, tiles_per_map)`` buffer that torch then
sums in a fixed order: no atomics, the value is reproducible run to run. Maps whose keypoint
does not contribute read nothing and write a zero gradient.

For ``reduction="mean"`` a one-program kernel first counts the contributing keypoints and
writes the scale ``1 / max(count * H * W, 1)`` to a device scalar that the main kernel reads:
no host synchronisation anywhere.
"""
from __future__ import annotations

from typing import Optional

import torch
import triton
import triton.language as tl

from . import _rng
from ._common import accumulates_in_fp64, device_guard, map_tiling
from .encode import ROUNDING_CODES, gaussian_scale, map_offsets, tile_target

# Keypoints per iteration of the one-program counting kernel.
COUNT_BLOCK = 1024


@triton.jit
def _log1p(e):
    """``log(1 + e)`` for ``e`` in [0, 1], accurate for tiny ``e`` (Goldberg's trick; no libdevice)."""
    u = 1.0 + e
    return tl.where(u == 1.0, e, tl.log(u) * (e / (u - 1.0)))


@triton.jit(do_not_specialize=["seed"])
def _count_kernel(
    scale_ptr, keypoints_ptr, visible_ptr, seed, num_maps, num_keypoints, height, width,
    ROUNDING: tl.constexpr, EXPECTED: tl.constexpr, HAS_VISIBLE: tl.constexpr, ACC_FP64: tl.constexpr,
    BLOCK: tl.constexpr,
):
    """One program: ``scale = 1 / max(count * H * W, 1)`` over the contributing keypoints."""
    acc_dtype = tl.float64 if ACC_FP64 else tl.float32
    count = tl.zeros([BLOCK], dtype=tl.int32)
    for start in range(0, num_maps, BLOCK):
        bk = start + tl.arange(0, BLOCK)
        # A 1 x 1 tile: the profiles are not needed, only whether the keypoint contributes.
        _, contributes = tile_target(
            keypoints_ptr, visible_ptr, bk, num_keypoints, seed, height, width, 0, 0.0,
            ROUNDING, True, EXPECTED, HAS_VISIBLE, 1, 1, bk < num_maps,
        )
        count += (contributes & (bk < num_maps)).to(tl.int32)
    total = tl.sum(count, axis=0).to(acc_dtype) * (height * width).to(acc_dtype)
    tl.store(scale_ptr, 1.0 / tl.maximum(total, 1.0))
