"""The batched bilinear warp of :func:`h3r.augment.warp_bilinear` as one Triton kernel.

Same sampling as the PyTorch path (:func:`h3r.augment._warp_chunk`, the spec, itself Pillow's),
bit for bit: each output pixel computes its source position, clamps its 4 neighbours, gathers
them and interpolates in the same operation order, in float64 (``exact``) or float32. Floating
point contraction is off (``enable_fp_fusion=False``: no fused multiply-add, in LLVM and in
``ptxas``), so every product and sum is rounded as in Pillow and in PyTorch's one-op-at-a-time
arithmetic.

Why a kernel: the PyTorch path issues about 60 operations per batch and keeps float64
temporaries of ``(B, S, S, 3)`` (about 20 passes over them); the kernel is one launch that
reads the gathered bytes and writes the ``(B, 3, S, S)`` uint8 crops once. It can also read an
image cache in place (``rows``: item ``b`` warps image ``rows[b]``), without gathering the
batch's images into a new tensor first.
"""
from __future__ import annotations

import contextlib
import math
from typing import Optional

import torch
import triton
import triton.language as tl

BLOCK_PIXELS = 256  # output pixels per program
NUM_WARPS = 4


@triton.jit
def _warp_kernel(pixels_ptr, rows_ptr, pillow_ptr, image_size_ptr, origin_ptr, region_size_ptr, out_ptr,
                 padded_height, padded_width, size,
                 HAS_ROWS: tl.constexpr, EXACT: tl.constexpr, BLOCK: tl.constexpr):
    """Program (p, b): output pixels ``p * BLOCK ...`` (row-major in ``S x S``) of item ``b``."""
    item = tl.program_id(1)
    pixel = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    live = pixel < size * size
    column = pixel % size
    row = pixel // size
    compute = tl.float64 if EXACT else tl.float32

    # Per item: Pillow's coefficients (float64, rounded to float32 when not exact), the image's
    # size, and where the item's region starts in the image and how large it is.
    a0 = tl.load(pillow_ptr + item * 6 + 0).to(compute)
    a1 = tl.load(pillow_ptr + item * 6 + 1).to(compute)
    a2 = tl.load(pillow_ptr + item * 6 + 2).to(compute)
    a3 = tl.load(pillow_ptr + item * 6 + 3).to(compute)
    a4 = tl.load(pillow_ptr + item * 6 + 4).to(compute)
    a5 = tl.load(pillow_ptr + item * 6 + 5).to(compute)
    image_width = tl.load(image_size_ptr + item * 2 + 0).to(tl.int32)
    image_height = tl.load(image_size_ptr + item * 2 + 1).to(tl.int32)
    origin_x = tl.load(origin_ptr + item * 2 + 0).to(tl.int32)
    origin_y = tl.load(origin_ptr + item * 2 + 1).to(tl.int32)
    # (never past the padded batch, whatever region_size says: no read leaves the item's pixels)
    region_width = tl.minimum(tl.load(region_size_ptr + item * 2 + 0).to(tl.int32), padded_width)
    region_height = tl.minimum(tl.load(region_size_ptr + item * 2 + 1).to(tl.int32), padded_height)
    if HAS_ROWS:
        source = tl.load(rows_ptr + item)
    else:
        source = item
    # 64-bit offsets of the item's image and crops; 32-bit ones within them (the launcher checks the sizes)
    image_ptr = pixels_ptr + source.to(tl.int64) * padded_height * padded_width * 3
    out_ptr = out_ptr + item.to(tl.int64) * 3 * size * size

    # Pillow's affine_transform at the pixel's centre, then the bilinear filter's neighbours.
    u = column.to(compute) + 0.5
    v = row.to(compute) + 0.5
    xin = (a0 * u + a1 * v) + a2
    yin = (a3 * u + a4 * v) + a5
    inside = (xin >= 0) & (xin < image_width.to(compute)) & (yin >= 0) & (yin < image_height.to(compute))
    xin = xin - 0.5
    yin = yin - 0.5
    x_floor = tl.floor(xin)
    y_floor = tl.floor(yin)
    dx = xin - x_floor
    dy = yin - y_floor
    x_low = tl.minimum(tl.maximum(x_floor, -2.0), 1073741824.0).to(tl.int32)
    y_low = tl.minimum(tl.maximum(y_floor, -2.0), 1073741824.0).to(tl.int32)
    # Clamped to the image (Pillow), then into the region that holds those pixels.
    x0 = tl.minimum(tl.maximum(tl.minimum(tl.maximum(x_low, 0), image_width - 1) - origin_x, 0), region_width - 1)
    x1 = tl.minimum(tl.maximum(tl.minimum(tl.maximum(x_low + 1, 0), image_width - 1) - origin_x, 0), region_width - 1)
    y0 = tl.minimum(tl.maximum(tl.minimum(tl.maximum(y_low, 0), image_height - 1) - origin_y, 0), region_height - 1)
    y1 = tl.minimum(tl.maximum(tl.minimum(tl.maximum(y_low + 1, 0), image_height - 1) - origin_y, 0),
                    region_height - 1)

    p00 = (y0 * padded_width + x0) * 3
    p01 = (y0 * padded_width + x1) * 3
    p10 = (y1 * padded_width + x0) * 3
    p11 = (y1 * padded_width + x1) * 3
    for channel in tl.static_range(3):
        v00 = tl.load(image_ptr + p00 + channel, mask=live, other=0).to(compute)
        v01 = tl.load(image_ptr + p01 + channel, mask=live, other=0).to(compute)
        v10 = tl.load(image_ptr + p10 + channel, mask=live, other=0).to(compute)
        v11 = tl.load(image_ptr + p11 + channel, mask=live, other=0).to(compute)
        top = v00 + (v01 - v00) * dx
        bottom = v10 + (v11 - v10) * dx
        value = top + (bottom - top) * dy
        value = tl.where(inside, tl.minimum(tl.maximum(value, 0.0), 255.0), 0.0)
        tl.store(out_ptr + channel * size * size + pixel, value.to(tl.uint8), mask=live)


def fits(pixels: torch.Tensor, size: int) -> bool:
    """Whether each image of ``pixels`` and each ``(3, size, size)`` crop hold under 2**31 bytes (32-bit offsets)."""
    return math.prod(pixels.shape[1:]) < 2**31 and 3 * size * size < 2**31


def warp(pixels: torch.Tensor, pillow: torch.Tensor, size: int, image_size: torch.Tensor, origin: torch.Tensor,
         region_size: torch.Tensor, exact: bool, rows: Optional[torch.Tensor] = None) -> torch.Tensor:
    """``(B, 3, S, S)`` uint8 crops: item ``b`` warps ``pixels[rows[b]]`` (``rows`` None: ``pixels[b]``).

    ``pixels`` ``(N, Hp, Wp, 3)`` uint8 (contiguous), ``pillow`` ``(B, 6)``, ``image_size``,
    ``origin`` and ``region_size`` ``(B, 2)`` (integers), all on one device; see
    :func:`h3r.augment.warp_bilinear` for their meaning.
    """
    batch = pillow.shape[0]
    device = pixels.device
    if not fits(pixels, size):
        raise ValueError(f"the Triton warp takes images and crops of under 2**31 bytes each, got "
                         f"{tuple(pixels.shape[1:])} and size {size}; use backend='torch'")
    out = torch.empty((batch, 3, size, size), dtype=torch.uint8, device=device)
    if batch == 0:
        return out

    def per_item(value, dtype):
        return value.to(device=device, dtype=dtype).contiguous()

    grid = (triton.cdiv(size * size, BLOCK_PIXELS), batch)
    with torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext():
        _warp_kernel[grid](
            pixels.contiguous(), per_item(rows, torch.int64) if rows is not None else pixels,
            per_item(pillow, torch.float64), per_item(image_size, torch.int64), per_item(origin, torch.int64),
            per_item(region_size, torch.int64), out, pixels.shape[1], pixels.shape[2], size,
            HAS_ROWS=rows is not None, EXACT=exact, BLOCK=BLOCK_PIXELS, num_warps=NUM_WARPS,
            enable_fp_fusion=False)
    return out

