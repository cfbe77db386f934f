"""Small helpers shared by the Triton launchers: device guard, accumulator choice, map tiling."""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Optional

import torch
import triton

from ..backends import interpreting

# Elements per program over a (B, K, H, W) map. On the GPU ~4096 keeps each program's reads
# and writes large (16 KiB of float32) while leaving thousands of programs in flight; the
# interpreter pays per program, so there a whole map (up to 256 x 256) is one program.
GPU_TILE_ELEMENTS = 4096
INTERPRETER_TILE_ELEMENTS = 1 << 16


def device_guard(tensor: torch.Tensor):
    """``torch.cuda.device(tensor.device)`` for CUDA tensors (launch on the right GPU), else a no-op."""
    return torch.cuda.device(tensor.device) if tensor.is_cuda else contextlib.nullcontext()


def accumulates_in_fp64(dtype: torch.dtype) -> bool:
    """float64 maps accumulate in float64 (for gradcheck); every other dtype in float32."""
    return dtype == torch.float64


@dataclass(frozen=True)
class MapTiling:
    """How a ``(H, W)`` map is cut into programs: ``block_h`` rows x ``block_w`` columns each.

    ``block_w`` covers a whole row (the next power of two >= W); a map takes
    ``tiles_per_map`` programs, the last one masked past row H.
    """

    block_h: int
    block_w: int
    tiles_per_map: int
    num_warps: int


def map_tiling(height: int, width: int, block_rows: Optional[int] = None) -> MapTiling:
    """The tiling of a ``(height, width)`` map; ``block_rows`` (a power of two) overrides the rows per program."""
    block_w = triton.next_power_of_2(width)
    if block_rows is None:
        target = INTERPRETER_TILE_ELEMENTS if interpreting() else GPU_TILE_ELEMENTS
        block_h = min(triton.next_power_of_2(height), max(1, target // block_w))
    else:
        if block_rows < 1 or block_rows & (block_rows - 1):
            raise ValueError(f"block_rows: expected a power of two >= 1, got {block_rows}")
        block_h = block_rows
    elements = block_h * block_w
    num_warps = 1 if interpreting() else max(1, min(8, elements // 512))
    return MapTiling(block_h, block_w, triton.cdiv(height, block_h), num_warps)
