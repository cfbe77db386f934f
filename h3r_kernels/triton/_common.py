"""Small helpers shared by the Triton kernels and launchers: device guard, accumulator choice, map tiling."""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Optional

import torch
import triton
import triton.language as tl

from .. import spec
from ..backends import interpreting

# The option codes of h3r_kernels.spec as constexpr globals the kernels compare their
# constexpr arguments with (ROUNDING == ROUNDING_RANDOM ...).
ROUNDING_RANDOM = tl.constexpr(int(spec.Rounding.RANDOM))
ROUNDING_NEAREST = tl.constexpr(int(spec.Rounding.NEAREST))
ROUNDING_FLOOR = tl.constexpr(int(spec.Rounding.FLOOR))
ROUNDING_NONE = tl.constexpr(int(spec.Rounding.NONE))
LOSS_BCE = tl.constexpr(int(spec.Loss.BCE))
LOSS_MSE = tl.constexpr(int(spec.Loss.MSE))
METHOD_TOPK = tl.constexpr(int(spec.Method.TOPK))
METHOD_LOCAL = tl.constexpr(int(spec.Method.LOCAL))
METHOD_ARGMAX = tl.constexpr(int(spec.Method.ARGMAX))
WEIGHTING_SOFTMAX = tl.constexpr(int(spec.Weighting.SOFTMAX))
WEIGHTING_LINEAR = tl.constexpr(int(spec.Weighting.LINEAR))

# GPU tile of each map-tiled op: (elements per program, elements per thread) over (B, K, H, W)
# maps. More elements per thread amortise each thread's fixed work (keypoint loads, hashing,
# indexing); fewer need fewer registers, so more warps stay resident to hide memory latency.
# encode: 8192/32 (32 registers, 64 warps per SM on sm_90). heatmap_loss: 4096/16, 59-64
# registers and 32 warps per SM, where 8192/32 needs 96-116 and leaves 16 (``python -m
# h3r.benchmark.sass``; bench/RESULTS.md "Static profile"). The interpreter pays per program,
# so there a program takes up to 65536 elements.
GPU_TILES = {"encode": (8192, 32), "heatmap_loss": (4096, 16)}
INTERPRETER_TILE_ELEMENTS = 1 << 16


@triton.jit
def as_mask(flag):
    """``flag`` re-made as a plain boolean; a no-op when compiled.

    The interpreter (triton 3.6) gives the result of a float comparison the float's type, so
    broadcasting such a scalar into a block mask yields floats and ``block_mask & flag`` fails.
    """
    return tl.where(flag, True, False)


def device_guard(tensor: torch.Tensor):
    """``torch.cuda.device(tensor.device)`` for CUDA tensors (launch on the right GPU), else a no-op."""
    return torch.cuda.device(tensor.device) if tensor.is_cuda else contextlib.nullcontext()


def accumulates_in_fp64(dtype: torch.dtype) -> bool:
    """Whether maps of ``dtype`` are computed in float64 (:func:`h3r_kernels.spec.compute_dtype`)."""
    return spec.compute_dtype(dtype) == torch.float64


@dataclass(frozen=True)
class MapTiling:
    """How ``num_maps`` maps of ``(H, W)`` are cut into programs.

    A program covers a ``(block_m, block_h, block_w)`` tile: ``block_m`` consecutive maps
    (several small maps per program), ``block_h`` rows, every column (``block_w`` is the next
    power of two >= W). A map whose rows do not fit takes ``tiles_per_map`` programs
    (``block_m`` is then 1). ``grid`` is the number of programs.
    """

    block_m: int
    block_h: int
    block_w: int
    tiles_per_map: int
    grid: int
    num_warps: int


def _power_of_two(name: str, value: int) -> int:
    if value < 1 or value & (value - 1):
        raise ValueError(f"{name}: expected a power of two >= 1, got {value}")
    return value


def map_tiling(
    op: str, num_maps: int, height: int, width: int, block_rows: Optional[int] = None, block_maps: Optional[int] = None
) -> MapTiling:
    """The tiling of ``num_maps`` (>= 1) maps of ``(height, width)`` for ``op`` (a key of :data:`GPU_TILES`).

    ``block_rows`` and ``block_maps`` (powers of two) override the heuristic; results must not
    depend on them (the tests check this).
    """
    tile_elements, elements_per_thread = GPU_TILES[op]
    target = INTERPRETER_TILE_ELEMENTS if interpreting() else tile_elements
    block_w = triton.next_power_of_2(width)
    if block_rows is None:
        block_h = min(triton.next_power_of_2(height), max(1, target // block_w))
    else:
        block_h = _power_of_two("block_rows", block_rows)
    tiles_per_map = triton.cdiv(height, block_h)
    if block_maps is None:
        block_m = 1 if tiles_per_map > 1 else max(1, target // (block_h * block_w))
        block_m = min(block_m, triton.next_power_of_2(num_maps))
    else:
        block_m = _power_of_two("block_maps", block_maps)
    elements = block_m * block_h * block_w
    num_warps = 1 if interpreting() else max(1, min(8, elements // (32 * elements_per_thread)))
    grid = triton.cdiv(num_maps, block_m) * tiles_per_map
    return MapTiling(block_m, block_h, block_w, tiles_per_map, grid, num_warps)
