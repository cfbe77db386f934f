"""``decode`` and its backward on the CUDA C kernels of csrc/decode.cu; signatures as the reference."""
from __future__ import annotations

import numpy as np
import torch

from .. import spec
from ..spec import compute_dtype
from . import _module


def decode(heatmaps, method, k, weights, window):
    _module.require_cuda("heatmaps", heatmaps)
    batch, num, height, width = heatmaps.shape
    device = heatmaps.device
    acc = compute_dtype(heatmaps.dtype)
    slots = spec.slots(method, k, window)
    coords = torch.empty((batch, num, 2), dtype=acc, device=device)
    scores = torch.empty((batch, num), dtype=acc, device=device)
    indices = torch.empty((batch, num, slots), dtype=torch.int64, device=device)
    num_maps = batch * num
    if num_maps == 0:
        return coords, scores, indices
    heatmaps = heatmaps.contiguous()
    map_size = height * width
    threads = _module.threads_per_map(map_size)
    vectorised = (map_size * heatmaps.element_size()) % 16 == 0 and _module.aligned(heatmaps)
    _module.launch(
        device,
        "decode.cu",
        f"decode_kernel<{_module.STORAGE_TYPES[heatmaps.dtype]}>",
        _module.grid(-(-num_maps // (_module.BLOCK // threads)), device),
        (
            _module.pointer(heatmaps),
            _module.pointer(coords),
            _module.pointer(scores),
            _module.pointer(indices),
            np.int64(num_maps),
            np.int32(height),
            np.int32(width),
            np.int32(spec.code(spec.Method, method)),
            np.int32(k),
            np.int32(spec.code(spec.Weighting, weights)),
            np.int32(window),
            np.int32(threads),
            np.int32(vectorised),
        ),
    )
    return coords, scores, indices


def decode_backward(heatmaps, indices, grad_coords, grad_scores, method, weights):
    _module.require_cuda("heatmaps", heatmaps)
    batch, num, height, width = heatmaps.shape
    grad = torch.zeros_like(heatmaps, memory_format=torch.contiguous_format)
    num_maps = batch * num
    if num_maps == 0:
        return grad
    acc = compute_dtype(heatmaps.dtype)
    heatmaps = heatmaps.contiguous()
    indices = indices.to(torch.int64).contiguous()
    grad_coords = grad_coords.to(acc).contiguous()
    grad_scores = grad_scores.to(acc).contiguous()
    warps_per_block = _module.BLOCK // 32
    _module.launch(
        heatmaps.device,
        "decode.cu",
        f"decode_backward_kernel<{_module.STORAGE_TYPES[heatmaps.dtype]}>",
        _module.grid(-(-num_maps // warps_per_block), heatmaps.device),
        (
            _module.pointer(grad),
            _module.pointer(heatmaps),
            _module.pointer(indices),
            _module.pointer(grad_coords),
            _module.pointer(grad_scores),
            np.int64(num_maps),
            np.int32(height),
            np.int32(width),
            np.int32(indices.shape[-1]),
            np.int32(spec.code(spec.Method, method)),
            np.int32(spec.code(spec.Weighting, weights)),
        ),
    )
    return grad
