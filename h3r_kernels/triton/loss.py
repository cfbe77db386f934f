"""Triton fused ``heatmap_loss``: one pass over the logits gives the loss and its gradient.

Each program takes a ``(BLOCK_M maps, BLOCK_H rows, all columns)`` tile as ``encode`` does (of
the loss's own size: ``GPU_TILES`` in ``_common.py``), renders the target in registers
(:func:`h3r_kernels.triton.encode.cells_target`, so it is exactly the target of ``encode``),
reads the logits once, writes the gradient once (unless ``compute_grad`` is False) and stores
each map's partial loss sum in a ``(B*K, tiles_per_map)`` buffer that torch then sums in a fixed
order: no float atomics, the value is reproducible run to run. Maps whose keypoint does not
contribute (invisible, target off the map, or weight 0) read nothing and get a zero gradient,
so nothing in their logits (NaN, inf) can leak out. With a per-keypoint ``weight`` a map's
partial sums are multiplied by its weight and its gradient by ``weight * scale``.

A small kernel first computes each keypoint's activation cell (the rounding draw, visibility,
weight) once, into a ``(B*K, 2)`` buffer the main kernel's programs read instead of each thread
redoing that work; for ``reduction="mean"`` it also counts the contributing keypoints into a
device integer (exact integer atomics), which the main kernel turns into the gradient scale
``1 / max(count * H * W, 1)``: no host synchronisation anywhere.
"""
from __future__ import annotations

from typing import Optional

import torch
import triton
import triton.language as tl

from .. import spec
from ..spec import gaussian_scale
from . import _rng
from ._common import LOSS_BCE, LOSS_MSE, accumulates_in_fp64, as_mask, device_guard, map_tiling
from .encode import cells_target, keypoint_cells, map_tile

# Keypoints per program of the cells kernel.
CELLS_BLOCK = 1024


# log(1 + e) / e on [0, 1] as a degree-8 polynomial in e (a relative minimax fit, float32
# coefficients): float32 Horner evaluation is within 4 ulp of log1p everywhere on [0, 1], the
# accuracy of the float32 atanh series, with no division.
_LOG1P_COEFFICIENTS = (
    1.0, -0.49999553, 0.33320343, -0.24852945, 0.19145116, -0.1374662, 0.07921072, -0.030110953, 0.0053840587,
)
LOG1P_C0 = tl.constexpr(_LOG1P_COEFFICIENTS[0])
LOG1P_C1 = tl.constexpr(_LOG1P_COEFFICIENTS[1])
LOG1P_C2 = tl.constexpr(_LOG1P_COEFFICIENTS[2])
LOG1P_C3 = tl.constexpr(_LOG1P_COEFFICIENTS[3])
LOG1P_C4 = tl.constexpr(_LOG1P_COEFFICIENTS[4])
LOG1P_C5 = tl.constexpr(_LOG1P_COEFFICIENTS[5])
LOG1P_C6 = tl.constexpr(_LOG1P_COEFFICIENTS[6])
LOG1P_C7 = tl.constexpr(_LOG1P_COEFFICIENTS[7])
LOG1P_C8 = tl.constexpr(_LOG1P_COEFFICIENTS[8])


@triton.jit
def _log1p_unit(e, IS_F64: tl.constexpr):
    """``log(1 + e)`` for ``e`` in [0, 1], to full relative precision also for tiny ``e``.

    float32: ``e * P(e)`` with the degree-8 polynomial above (8 FMAs and a multiply).
    float64: ``log(1 + e) = 2 atanh(s)`` with ``s = e / (2 + e) <= 1/3``, the first 16 terms of
    ``2 (s + s^3/3 + s^5/5 + ...)`` (relative error below ``9**-16 / 33``). Both are a fraction of
    ``tl.log``'s instructions, which would make the loss compute-bound; libdevice is off limits
    (interpreter).
    """
    if IS_F64:
        s = e / (2.0 + e)
        s2 = s * s
        poly = 1.0 / 31
        for n in tl.static_range(15, 0, -1):
            poly = poly * s2 + 1.0 / (2 * n - 1)
        result = 2.0 * s * poly
    else:
        poly = LOG1P_C8 * e + LOG1P_C7
        poly = poly * e + LOG1P_C6
        poly = poly * e + LOG1P_C5
        poly = poly * e + LOG1P_C4
        poly = poly * e + LOG1P_C3
        poly = poly * e + LOG1P_C2
        poly = poly * e + LOG1P_C1
        poly = poly * e + LOG1P_C0
        result = e * poly
    return result


@triton.jit(do_not_specialize=["seed"])
def _cells_kernel(
    cells_ptr, count_ptr, keypoints_ptr, visible_ptr, weight_ptr, seed, num_maps, num_keypoints, height, width,
    ROUNDING: tl.constexpr, HAS_VISIBLE: tl.constexpr, HAS_WEIGHT: tl.constexpr, MEAN: tl.constexpr,
    BLOCK: tl.constexpr,
):
    """The activation cell ``(x, y)`` of ``BLOCK`` keypoints into ``cells_ptr`` (float32 ``(B*K, 2)``),
    NaN for a keypoint that does not contribute, and with ``MEAN`` the number of contributing
    ones added to ``count_ptr`` (int32; integer atomics are exact, so the count does not depend
    on the order of the programs).
    """
    bk = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    valid = bk < num_maps
    b = bk // num_keypoints
    k = bk - b * num_keypoints
    x = tl.load(keypoints_ptr + 2 * bk, mask=valid, other=float("nan"))
    y = tl.load(keypoints_ptr + 2 * bk + 1, mask=valid, other=float("nan"))
    cell_x, cell_y, contributes = keypoint_cells(x, y, b, k, seed, height, width, ROUNDING)
    contributes = contributes & valid
    if HAS_VISIBLE:
        contributes = contributes & (tl.load(visible_ptr + bk, mask=valid, other=0) != 0)
    if HAS_WEIGHT:
        contributes = as_mask(contributes & as_mask(tl.load(weight_ptr + bk, mask=valid, other=0.0) != 0))
    tl.store(cells_ptr + 2 * bk, tl.where(contributes, cell_x, float("nan")), mask=valid)
    tl.store(cells_ptr + 2 * bk + 1, cell_y, mask=valid)
    if MEAN:
        tl.atomic_add(count_ptr, tl.sum(contributes.to(tl.int32), axis=0))


@triton.jit
def _loss_kernel(
    logits_ptr, grad_ptr, partial_ptr, count_ptr, scale_ptr, cells_ptr, weight_ptr,
    num_maps, height, width, tiles_per_map, gauss_scale,
    BINARY: tl.constexpr, HAS_WEIGHT: tl.constexpr,
    LOSS: tl.constexpr, MEAN: tl.constexpr, WRITE_GRAD: tl.constexpr, ACC_FP64: tl.constexpr, EVEN: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_W: tl.constexpr,
):
    """Each map's loss over one tile into ``partial_ptr[bk, tile]`` and, if ``WRITE_GRAD``, the gradient.

    The target comes from the cells ``_cells_kernel`` wrote (NaN: the map does not contribute),
    so the keypoint work (loads, hashing) is done once per keypoint, not once per thread.
    Per pixel, as the reference: ``bce = max(z, 0) - z t + log(1 + exp(-|z|))`` with gradient
    ``sigmoid(z) - t``; ``mse = (z - t)^2`` with gradient ``2 (z - t)``. With ``MEAN`` the
    gradient is multiplied by ``scale = 1 / max(count * H * W, 1)`` from the contributing
    keypoint count at ``count_ptr``, which program 0 also stores at ``scale_ptr``. With
    ``HAS_WEIGHT`` a keypoint of weight 0 does not contribute, and the others' partial sums
    are multiplied by their weight and their gradient by ``weight`` (times ``scale``). ``EVEN``:
    the tiles hold no lane past the map (``W == BLOCK_W`` and ``BLOCK_H`` divides ``H``).
    """
    acc_dtype = tl.float64 if ACC_FP64 else tl.float32
    pid = tl.program_id(0)
    bk, row_start, offsets, inside = map_tile(pid, num_maps, height, width, tiles_per_map, BLOCK_M, BLOCK_H, BLOCK_W)
    cell_x = tl.load(cells_ptr + 2 * bk, mask=bk < num_maps, other=float("nan"))
    cell_y = tl.load(cells_ptr + 2 * bk + 1, mask=bk < num_maps, other=0.0)
    contributes = as_mask(cell_x == cell_x)
    target = cells_target(tl.where(contributes, cell_x, 0.0), cell_y, contributes, row_start, gauss_scale, BINARY,
                          BLOCK_H, BLOCK_W)
    if HAS_WEIGHT:  # a weight of 0 made the cell NaN
        weight = tl.load(weight_ptr + bk, mask=bk < num_maps, other=0.0).to(acc_dtype)
    live = inside & contributes[:, None, None]
    z = tl.load(logits_ptr + offsets, mask=live, other=0.0).to(acc_dtype)
    t = target.to(acc_dtype)
    if LOSS == LOSS_MSE:
        diff = z - t
        pixel_loss = diff * diff
        pixel_grad = 2.0 * diff
    else:
        tl.static_assert(LOSS == LOSS_BCE)
        if ACC_FP64:
            e = tl.exp(-tl.abs(z))
        else:
            # exp(-|z|) as tl.exp computes it on the GPU (a multiply by log2(e), then ex2.approx), with
            # the sign and |.| folded into the multiply and results below 2**-126 flushed to zero (.ftz)
            e = tl.exp2(tl.abs(z) * -1.4426950408889634)
        pixel_loss = tl.maximum(z, 0.0) - z * t + _log1p_unit(e, ACC_FP64)
        if ACC_FP64:
            inverse = 1.0 / (1.0 + e)
        else:
            inverse = tl.math.rsqrt(e * (e + 2.0) + 1.0)
        pixel_grad = tl.where(z >= 0, inverse, e * inverse) - t  # sigmoid(z) - t
    if not EVEN:  # lanes past the map's last row or column (their z is 0, their loss is not)
        pixel_loss = tl.where(inside, pixel_loss, 0.0)
    per_map = tl.sum(tl.sum(pixel_loss, axis=2), axis=1)
    per_map = tl.where(contributes, per_map * weight if HAS_WEIGHT else per_map, 0.0)
    tile = pid % tiles_per_map
    tl.store(partial_ptr + bk * tiles_per_map + tile, per_map, mask=bk < num_maps)
    # The gradient's factor per map, 0 for a map that does not contribute (its logits were not
    # read: z = 0, a finite gradient times 0), so no per-pixel select is needed.
    factor = weight if HAS_WEIGHT else 1.0
    if MEAN:
        count = tl.load(count_ptr).to(acc_dtype) * tl.cast(height * width, acc_dtype)
        scale = 1.0 / tl.maximum(count, 1.0)
        tl.store(scale_ptr, scale, mask=pid == 0)
        factor = factor * scale
    if WRITE_GRAD:
        factor = tl.where(contributes, factor, 0.0)
        tl.store(grad_ptr + offsets, (pixel_grad * factor[:, None, None]).to(grad_ptr.dtype.element_ty), mask=inside)


@triton.jit
def _scale_grad_kernel(
    out_ptr, grad_ptr, grad_output_ptr, num_maps, height, width, tiles_per_map,
    PER_MAP: tl.constexpr, SKIP_UNIT: tl.constexpr, ACC_FP64: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_W: tl.constexpr,
):
    """``out = grad * factor`` with ``factor`` the incoming gradient (one scalar, or one per map
    when ``PER_MAP``), computed in the accumulator dtype. ``SKIP_UNIT`` (in place, ``out`` is
    ``grad``) touches no memory of a map whose factor is exactly 1."""
    acc_dtype = tl.float64 if ACC_FP64 else tl.float32
    bk, _, offsets, inside = map_tile(
        tl.program_id(0), num_maps, height, width, tiles_per_map, BLOCK_M, BLOCK_H, BLOCK_W
    )
    if PER_MAP:
        factor = tl.load(grad_output_ptr + bk, mask=bk < num_maps, other=1.0).to(acc_dtype)[:, None, None]
    else:
        factor = tl.load(grad_output_ptr).to(acc_dtype)
    if SKIP_UNIT:
        inside = inside & as_mask(factor != 1.0)
    grad = tl.load(grad_ptr + offsets, mask=inside, other=0.0).to(acc_dtype)
    tl.store(out_ptr + offsets, (grad * factor).to(out_ptr.dtype.element_ty), mask=inside)


def launch_heatmap_loss(
    logits: torch.Tensor,
    keypoints: torch.Tensor,
    visible: Optional[torch.Tensor],
    sigma: float,
    rounding: str,
    seed: int,
    loss: str,
    reduction: str,
    compute_grad: bool,
    block_rows: Optional[int] = None,
    block_maps: Optional[int] = None,
    weight: Optional[torch.Tensor] = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`heatmap_loss` with optional overrides of the tile (rows and maps per program; for tests).

    ``weight``: None or a contiguous ``(B, K)`` tensor in the accumulation dtype.
    """
    batch, num, height, width = logits.shape
    fp64 = accumulates_in_fp64(logits.dtype)
    acc_dtype = torch.float64 if fp64 else torch.float32
    grad = torch.empty_like(logits, dtype=spec.saved_grad_dtype(logits.dtype)) if compute_grad else logits.new_empty(0)
    if batch * num == 0:
        per_keypoint = logits.new_zeros((batch, num), dtype=acc_dtype)
        return (per_keypoint if reduction == "none" else per_keypoint.sum()), grad

    tiling = map_tiling("heatmap_loss", batch * num, height, width, block_rows, block_maps)
    visible_arg = keypoints if visible is None else visible.view(torch.uint8)
    weight_arg = keypoints if weight is None else weight
    seed_arg = _rng.seed_as_int32(seed)
    code = spec.code(spec.Rounding, rounding)
    partials = torch.empty((batch, num, tiling.tiles_per_map), dtype=acc_dtype, device=logits.device)
    cells = torch.empty((batch, num, 2), dtype=torch.float32, device=logits.device)
    mean = reduction == "mean"
    count = torch.zeros((), dtype=torch.int32, device=logits.device) if mean else partials
    scale = torch.empty((), dtype=acc_dtype, device=logits.device) if mean else partials
    with device_guard(logits):
        _cells_kernel[(triton.cdiv(batch * num, CELLS_BLOCK),)](
            cells, count, keypoints, visible_arg, weight_arg, seed_arg, batch * num, num, height, width,
            ROUNDING=code, HAS_VISIBLE=visible is not None, HAS_WEIGHT=weight is not None, MEAN=mean,
            BLOCK=CELLS_BLOCK,
        )
        _loss_kernel[(tiling.grid,)](
            logits, grad if compute_grad else logits, partials, count, scale, cells, weight_arg,
            batch * num, height, width, tiling.tiles_per_map, gaussian_scale(sigma),
            BINARY=sigma == 0, HAS_WEIGHT=weight is not None, LOSS=spec.code(spec.Loss, loss),
            MEAN=mean, WRITE_GRAD=compute_grad, ACC_FP64=fp64,
            EVEN=width == tiling.block_w and height % tiling.block_h == 0,
            BLOCK_M=tiling.block_m, BLOCK_H=tiling.block_h, BLOCK_W=tiling.block_w, num_warps=tiling.num_warps,
        )
    per_keypoint = partials[..., 0] if tiling.tiles_per_map == 1 else partials.sum(-1)
    if reduction == "none":
        return per_keypoint, grad
    if reduction == "sum":
        return per_keypoint.sum(), grad
    return per_keypoint.sum() * scale, grad


def heatmap_loss(logits, keypoints, visible, sigma, rounding, seed, loss, reduction, compute_grad, weight=None):
    """``(value, grad)``; same contract as :func:`h3r_kernels.reference.heatmap_loss`.

    ``value``: float32 (float64 for float64 logits), a scalar or ``(B, K)`` for "none";
    ``grad``: d value / d logits in :func:`~h3r_kernels.spec.saved_grad_dtype` (the logits dtype,
    float32 for float16), or an empty tensor without ``compute_grad``.
    """
    return launch_heatmap_loss(
        logits, keypoints, visible, sigma, rounding, seed, loss, reduction, compute_grad, weight=weight
    )


def _launch_scale_grad(out: torch.Tensor, grad: torch.Tensor, grad_output: torch.Tensor, reduction: str) -> None:
    if grad.numel() == 0:
        return
    batch, num, height, width = grad.shape
    tiling = map_tiling("heatmap_loss", batch * num, height, width)
    with device_guard(grad):
        _scale_grad_kernel[(tiling.grid,)](
            out, grad, grad_output, batch * num, height, width, tiling.tiles_per_map,
            PER_MAP=reduction == "none", SKIP_UNIT=out is grad, ACC_FP64=accumulates_in_fp64(grad.dtype),
            BLOCK_M=tiling.block_m, BLOCK_H=tiling.block_h, BLOCK_W=tiling.block_w, num_warps=tiling.num_warps,
        )


def heatmap_loss_backward(grad: torch.Tensor, grad_output: torch.Tensor, reduction: str,
                          dtype: Optional[torch.dtype] = None) -> torch.Tensor:
    """The saved gradient times the incoming one (a scalar, or ``(B, K)`` for "none"), as a new tensor
    of ``dtype`` (the logits'; default the gradient's).

    One bandwidth-bound pass (read ``grad``, write the result) in float32 (float64) arithmetic
    for every dtype; a torch multiply would need extra cast passes for float16/bfloat16 and
    for the ``(B, K)`` case.
    """
    out = torch.empty_like(grad, dtype=grad.dtype if dtype is None else dtype)
    _launch_scale_grad(out, grad, grad_output, reduction)
    return out


def scale_grad_(grad: torch.Tensor, grad_output: torch.Tensor, reduction: str) -> None:
    """:func:`heatmap_loss_backward` in place. Maps whose incoming gradient is exactly 1 are not
    touched: the usual ``loss.backward()`` costs one launch whose programs read only that scalar."""
    _launch_scale_grad(grad, grad, grad_output, reduction)
