"""``encode`` on the CUDA C kernel ``encode_kernel`` (csrc/encode.cu); signature as reference.encode."""
from __future__ import annotations

import numpy as np
import torch

from .. import spec
from . import _module

# Cells one block renders per group of maps (small maps are grouped, up to MAX_MAPS_PER_BLOCK).
CELLS_PER_BLOCK = 8192


def gauss_scale(sigma: float) -> np.float32:
    """:func:`h3r_kernels.spec.gaussian_scale` as the kernels' float32, rounded once from double as the reference does."""
    return np.float32(spec.gaussian_scale(sigma))


def encode(keypoints, visible, height, width, sigma, rounding, seed, expected, dtype) -> torch.Tensor:
    _module.require_cuda("keypoints", keypoints)
    batch, num = keypoints.shape[:2]
    out = torch.empty((batch, num, height, width), dtype=dtype, device=keypoints.device)
    num_maps = batch * num
    if num_maps == 0:
        return out
    keypoints = keypoints.to(torch.float32).contiguous()
    visible = None if visible is None else visible.contiguous()
    maps_per_block = max(1, min(_module.MAX_MAPS_PER_BLOCK, CELLS_PER_BLOCK // (height * width)))
    groups = -(-num_maps // maps_per_block)
    args = (
        _module.pointer(out),
        _module.pointer(keypoints),
        _module.pointer(visible),
        np.int64(num_maps),
        np.int32(num),
        np.int32(height),
        np.int32(width),
        np.int32(spec.code(spec.Rounding, rounding)),
        np.int32(bool(expected)),
        np.uint32(seed),
        np.int32(sigma > 0),
        gauss_scale(sigma),
        np.int32(maps_per_block),
    )
    _module.launch(
        keypoints.device,
        "encode.cu",
        f"encode_kernel<{_module.STORAGE_TYPES[dtype]}>",
        _module.grid(groups, keypoints.device),
        args,
        shared_memory=maps_per_block * (height + width) * 4,
    )
    return out
