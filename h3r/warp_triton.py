"""The image half of :class:`h3r.augment.DeviceAugment` as two Triton kernels (on CUDA, by default).

* :func:`warp`: the batched bilinear warp of :func:`h3r.augment.warp_bilinear`. Same sampling as
  the PyTorch path (:func:`h3r.augment._warp_chunk`, the spec, itself Pillow's), bit for bit: each
  output pixel computes its source position, clamps its 4 neighbours, gathers them and
  interpolates in the same operation order, in float64 (``exact``) or float32. It can read an
  image cache in place (``rows``: item ``b`` warps image ``rows[b]``).
* :func:`finish`: uint8 crops to normalised float32 inputs, with the colour jitter of
  :func:`h3r.augment.jitter_colours`: one program per crop, a first pass for the jitter's mean
  grey, a second for the pixels. Elementwise the same bits as the PyTorch operations; the mean
  grey is summed in another order (within float32 rounding).

Floating-point contraction is off (``enable_fp_fusion=False``: no fused multiply-add, in LLVM and
in ``ptxas``) and divisions are IEEE ones (``div_rn``; Triton's ``/`` is approximate), so every
product, sum and quotient is rounded as in Pillow and in PyTorch's one-op-at-a-time arithmetic.

Why kernels: for a batch of the main job the PyTorch path dispatches 94 operations that are not
views, nearly all of them GPU kernels, and keeps float64 temporaries of ``(B, S, S, 3)``; with these
two kernels it is 4 (the kernels and their two outputs' allocations), which read the gathered
bytes once and write the inputs once.
"""
from __future__ import annotations

import math
from typing import Optional

import torch
import triton
import triton.language as tl

from h3r.transforms import GREY_WEIGHTS
from h3r_kernels.triton._common import device_guard

BLOCK_PIXELS = 256  # output pixels per program
NUM_WARPS = 4
FINISH_BLOCK = 1024  # pixels per step of a finishing program (one program per crop)


@triton.jit
def _in_region(position, image_extent, origin, region_extent):
    """A neighbour's image coordinate clamped to the image (Pillow), then into the region that holds it."""
    return tl.minimum(tl.maximum(tl.minimum(tl.maximum(position, 0), image_extent - 1) - origin, 0), region_extent - 1)


@triton.jit
def _warp_kernel(pixels_ptr, rows_ptr, pillow_ptr, image_size_ptr, origin_ptr, region_size_ptr, out_ptr,
                 padded_height, padded_width, size,
                 HAS_ROWS: tl.constexpr, HAS_IMAGE_SIZE: tl.constexpr, HAS_ORIGIN: tl.constexpr,
                 HAS_REGION: tl.constexpr, EXACT: tl.constexpr, BLOCK: tl.constexpr):
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
    # (the region never past the padded batch, whatever region_size says: no read leaves the item's pixels)
    if HAS_REGION:
        region_width = tl.minimum(tl.load(region_size_ptr + item * 2 + 0).to(tl.int32), padded_width)
        region_height = tl.minimum(tl.load(region_size_ptr + item * 2 + 1).to(tl.int32), padded_height)
    else:
        region_width = padded_width
        region_height = padded_height
    if HAS_ORIGIN:
        origin_x = tl.load(origin_ptr + item * 2 + 0).to(tl.int32)
        origin_y = tl.load(origin_ptr + item * 2 + 1).to(tl.int32)
    else:
        origin_x = 0
        origin_y = 0
    if HAS_IMAGE_SIZE:
        image_width = tl.load(image_size_ptr + item * 2 + 0).to(tl.int32)
        image_height = tl.load(image_size_ptr + item * 2 + 1).to(tl.int32)
    else:
        image_width = region_width
        image_height = region_height
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
    x0 = _in_region(x_low, image_width, origin_x, region_width)
    x1 = _in_region(x_low + 1, image_width, origin_x, region_width)
    y0 = _in_region(y_low, image_height, origin_y, region_height)
    y1 = _in_region(y_low + 1, image_height, origin_y, region_height)

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


def warp(pixels: torch.Tensor, pillow: torch.Tensor, size: int, image_size: Optional[torch.Tensor] = None,
         origin: Optional[torch.Tensor] = None, region_size: Optional[torch.Tensor] = None, exact: bool = True,
         rows: Optional[torch.Tensor] = None) -> torch.Tensor:
    """``(B, 3, S, S)`` uint8 crops: item ``b`` warps ``pixels[rows[b]]`` (``rows`` None: ``pixels[b]``).

    ``pixels`` ``(N, Hp, Wp, 3)`` uint8, ``pillow`` ``(B, 6)``; ``image_size``, ``origin`` and
    ``region_size`` ``(B, 2)`` integers or None (the defaults of :func:`h3r.augment.warp_bilinear`,
    which says what they mean), all on one device.
    """
    batch = pillow.shape[0]
    device = pixels.device
    if not fits(pixels, size):
        raise ValueError(f"the Triton warp takes images and crops of under 2**31 bytes each, got "
                         f"{tuple(pixels.shape[1:])} and size {size}; use backend='torch'")
    out = torch.empty((batch, 3, size, size), dtype=torch.uint8, device=device)
    if batch == 0:
        return out

    def per_item(value, dtype):  # None: not read by the kernel (any pointer)
        return pixels if value is None else value.to(device=device, dtype=dtype).contiguous()

    grid = (triton.cdiv(size * size, BLOCK_PIXELS), batch)
    with device_guard(pixels):
        _warp_kernel[grid](
            pixels.contiguous(), per_item(rows, torch.int64), per_item(pillow, torch.float64),
            per_item(image_size, torch.int64), per_item(origin, torch.int64), per_item(region_size, torch.int64), out,
            pixels.shape[1], pixels.shape[2], size, HAS_ROWS=rows is not None, HAS_IMAGE_SIZE=image_size is not None,
            HAS_ORIGIN=origin is not None, HAS_REGION=region_size is not None, EXACT=exact, BLOCK=BLOCK_PIXELS,
            num_warps=NUM_WARPS, enable_fp_fusion=False)
    return out


@triton.jit
def _grey(red, green, blue, W0: tl.constexpr, W1: tl.constexpr, W2: tl.constexpr):
    """ITU-R 601 luma, summed in :func:`h3r.augment.jitter_colours`' order."""
    return (red * W0 + green * W1) + blue * W2


@triton.jit
def _unit_rgb(crop, pixels, pixel, live):
    """The three channels of ``pixel`` of a ``(3, S, S)`` uint8 crop, in [0, 1] (``x * (1/255)``, as PyTorch's ``mul_``)."""
    red = tl.load(crop + pixel, mask=live, other=0).to(tl.float32) * (1 / 255)
    green = tl.load(crop + pixels + pixel, mask=live, other=0).to(tl.float32) * (1 / 255)
    blue = tl.load(crop + 2 * pixels + pixel, mask=live, other=0).to(tl.float32) * (1 / 255)
    return red, green, blue


@triton.jit
def _finish_kernel(crops_ptr, factors_ptr, jittered_ptr, mean_ptr, std_ptr, out_ptr, pixels,
                   W0: tl.constexpr, W1: tl.constexpr, W2: tl.constexpr, BLOCK: tl.constexpr):
    """Program b: item ``b``'s crop, uint8 -> [0, 1] -> colour jitter (when the item has one) -> normalised."""
    item = tl.program_id(0)
    crop = crops_ptr + item.to(tl.int64) * 3 * pixels
    out = out_ptr + item.to(tl.int64) * 3 * pixels
    jittered = tl.load(jittered_ptr + item) != 0
    brightness = tl.load(factors_ptr + item * 3 + 0)
    contrast = tl.load(factors_ptr + item * 3 + 1)
    saturation = tl.load(factors_ptr + item * 3 + 2)
    mean_red, mean_green, mean_blue = tl.load(mean_ptr + 0), tl.load(mean_ptr + 1), tl.load(mean_ptr + 2)
    std_red, std_green, std_blue = tl.load(std_ptr + 0), tl.load(std_ptr + 1), tl.load(std_ptr + 2)
    offsets = tl.arange(0, BLOCK)
    mean_grey = 0.0
    if jittered:  # the mean grey of the brightened crop: one pass first
        total = tl.zeros((BLOCK,), dtype=tl.float32)
        start = 0
        while start < pixels:  # runtime loops are `while` loops: the interpreter cannot range() over an argument
            pixel = start + offsets
            live = pixel < pixels
            red, green, blue = _unit_rgb(crop, pixels, pixel, live)
            grey = _grey(red * brightness, green * brightness, blue * brightness, W0, W1, W2)
            total += tl.where(live, grey, 0.0)
            start += BLOCK
        mean_grey = tl.math.div_rn(tl.sum(total, axis=0), pixels.to(tl.float32))
    start = 0
    while start < pixels:
        pixel = start + offsets
        live = pixel < pixels
        red, green, blue = _unit_rgb(crop, pixels, pixel, live)
        if jittered:
            red = (red * brightness - mean_grey) * contrast + mean_grey
            green = (green * brightness - mean_grey) * contrast + mean_grey
            blue = (blue * brightness - mean_grey) * contrast + mean_grey
            luma = _grey(red, green, blue, W0, W1, W2)
            red = tl.minimum(tl.maximum((red - luma) * saturation + luma, 0.0), 1.0)
            green = tl.minimum(tl.maximum((green - luma) * saturation + luma, 0.0), 1.0)
            blue = tl.minimum(tl.maximum((blue - luma) * saturation + luma, 0.0), 1.0)
        # IEEE division (div_rn), as PyTorch's: Triton's `/` is the approximate div.full.f32
        tl.store(out + pixel, tl.math.div_rn(red - mean_red, std_red), mask=live)
        tl.store(out + pixels + pixel, tl.math.div_rn(green - mean_green, std_green), mask=live)
        tl.store(out + 2 * pixels + pixel, tl.math.div_rn(blue - mean_blue, std_blue), mask=live)
        start += BLOCK


def finish(crops: torch.Tensor, factors: torch.Tensor, jittered: torch.Tensor, mean: torch.Tensor,
           std: torch.Tensor) -> torch.Tensor:
    """``(B, 3, S, S)`` float32 network inputs from the uint8 ``crops``: in [0, 1], the colour jitter of
    :func:`h3r.augment.jitter_colours` for items with ``jittered`` (``factors`` ``(B, 3)``: brightness,
    contrast, saturation), then ``(x - mean) / std`` per channel. Elementwise the same bits as the
    PyTorch path; the jitter's mean grey is summed in another order (float32 rounding)."""
    batch, _, height, width = crops.shape
    device = crops.device
    out = torch.empty(crops.shape, dtype=torch.float32, device=device)
    if batch == 0:
        return out

    def values(tensor, dtype):
        return tensor.to(device=device, dtype=dtype).contiguous()

    with device_guard(crops):
        _finish_kernel[(batch,)](
            crops.contiguous(), values(factors, torch.float32), values(jittered, torch.bool),
            values(mean.reshape(3), torch.float32), values(std.reshape(3), torch.float32), out, height * width,
            W0=GREY_WEIGHTS[0], W1=GREY_WEIGHTS[1], W2=GREY_WEIGHTS[2], BLOCK=FINISH_BLOCK, num_warps=NUM_WARPS,
            enable_fp_fusion=False)
    return out
