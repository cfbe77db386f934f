"""``heatmap_loss`` and its backward on the CUDA C kernels of csrc/loss.cu; signatures as the reference."""
from __future__ import annotations

from typing import Optional

import numpy as np
import torch

from .. import spec
from ..spec import compute_dtype
from . import _module
from .encode import gauss_scale

REDUCE_CHUNK = spec.REDUCE_CHUNK  # values one block of loss_reduce_kernel adds (H3R_REDUCE_CHUNK)


def heatmap_loss(logits, keypoints, visible, sigma, rounding, seed, loss, reduction, compute_grad, weight=None):
    """``(value, grad)`` as :func:`h3r_kernels.reference.heatmap_loss`; ``weight``: None or ``(B, K)``
    in the accumulation dtype. A weight of 0 is folded into ``visible`` (one tiny elementwise op),
    so the kernels' "contributes" (and the "mean" count) includes it."""
    _module.require_cuda("logits", logits)
    if compute_grad and spec.saved_grad_dtype(logits.dtype) != logits.dtype:
        # The kernel writes the gradient in the logits' type: float16 logits are read as a float32 copy
        # (the values the kernel computes with), so the gradient is float32 (spec.saved_grad_dtype).
        logits = logits.to(spec.saved_grad_dtype(logits.dtype))
    batch, num, height, width = logits.shape
    device = logits.device
    acc = compute_dtype(logits.dtype)
    acc_type = _module.STORAGE_TYPES[acc]
    grad = torch.empty_like(logits, memory_format=torch.contiguous_format) if compute_grad else logits.new_empty(0)
    num_maps = batch * num
    if num_maps == 0:
        shape = (batch, num) if reduction == "none" else ()
        return torch.zeros(shape, dtype=acc, device=device), grad
    logits = logits.contiguous()
    keypoints = keypoints.to(torch.float32).contiguous()
    if weight is not None:
        weight = weight.to(acc).contiguous()
        nonzero = weight != 0
        visible = nonzero if visible is None else visible & nonzero
    visible = None if visible is None else visible.contiguous()
    rounding_code = np.int32(spec.code(spec.Rounding, rounding))

    value = torch.empty((batch, num) if reduction == "none" else (), dtype=acc, device=device)
    per_map = value if reduction == "none" else torch.empty(num_maps, dtype=acc, device=device)
    count = None  # contributing keypoints, for the "mean" scale
    if reduction == "mean":
        count = torch.zeros((), dtype=torch.int64, device=device)
        _module.launch(
            device,
            "loss.cu",
            "loss_count_kernel",
            _module.grid(-(-num_maps // _module.BLOCK), device),
            (
                _module.pointer(count),
                _module.pointer(keypoints),
                _module.pointer(visible),
                np.int64(num_maps),
                np.int32(num),
                np.int32(height),
                np.int32(width),
                rounding_code,
                np.uint32(seed),
            ),
        )

    map_size = height * width
    threads = _module.threads_per_map(map_size)
    maps_per_block = _module.BLOCK // threads
    vectorised = (map_size * logits.element_size()) % 16 == 0 and _module.aligned(
        logits, *((grad,) if compute_grad else ())
    )
    _module.launch(
        device,
        "loss.cu",
        f"loss_kernel<{_module.STORAGE_TYPES[logits.dtype]}>",
        _module.grid(-(-num_maps // maps_per_block), device),
        (
            _module.pointer(logits),
            _module.pointer(grad if compute_grad else None),
            _module.pointer(per_map),
            _module.pointer(count),
            _module.pointer(keypoints),
            _module.pointer(visible),
            _module.pointer(weight),
            np.int64(num_maps),
            np.int32(num),
            np.int32(height),
            np.int32(width),
            rounding_code,
            np.uint32(seed),
            np.int32(sigma > 0),
            gauss_scale(sigma),
            np.int32(spec.code(spec.Loss, loss)),
            np.int32(threads),
            np.int32(vectorised),
        ),
        shared_memory=maps_per_block * (height + width) * 4,
    )
    if reduction != "none":
        _sum_in_fixed_order(value, per_map, count, map_size, acc_type)
    return value, grad


def _sum_in_fixed_order(value, per_map, count, map_size, acc_type) -> None:
    """value = sum(per_map) (times the "mean" scale when ``count`` is given), chunk by chunk."""
    partial = per_map
    while True:
        blocks = -(-partial.numel() // REDUCE_CHUNK)
        out = value if blocks == 1 else torch.empty(blocks, dtype=partial.dtype, device=partial.device)
        _module.launch(
            partial.device,
            "loss.cu",
            f"loss_reduce_kernel<{acc_type}>",
            blocks,
            (
                _module.pointer(out),
                _module.pointer(partial),
                np.int64(partial.numel()),
                _module.pointer(count if blocks == 1 else None),
                np.int32(map_size),
            ),
        )
        if blocks == 1:
            return
        partial = out


def _scale(out: torch.Tensor, grad: torch.Tensor, grad_output: torch.Tensor, reduction: str) -> None:
    """out = grad * grad_output (per map for "none"); in place when ``out is grad``."""
    _module.require_cuda("grad", grad)
    batch, num, height, width = grad.shape
    num_maps = batch * num
    if num_maps == 0:
        return
    grad_output = grad_output.to(compute_dtype(grad.dtype)).contiguous()
    map_size = height * width
    threads = _module.threads_per_map(map_size)
    vectorised = (map_size * grad.element_size()) % 16 == 0 and _module.aligned(out, grad)
    _module.launch(
        grad.device,
        "loss.cu",
        f"loss_backward_kernel<{_module.STORAGE_TYPES[grad.dtype]}>",
        _module.grid(-(-num_maps // (_module.BLOCK // threads)), grad.device),
        (
            _module.pointer(out),
            _module.pointer(grad),
            _module.pointer(grad_output),
            np.int64(num_maps),
            np.int32(map_size),
            np.int32(reduction == "none"),
            np.int32(threads),
            np.int32(vectorised),
        ),
    )


def heatmap_loss_backward(grad: torch.Tensor, grad_output: torch.Tensor, reduction: str,
                          dtype: Optional[torch.dtype] = None) -> torch.Tensor:
    """The saved gradient times the incoming one (a scalar, or ``(B, K)`` for "none"), as a new tensor
    of ``dtype`` (the logits'; default the gradient's: the kernel writes that type, then it is cast)."""
    grad = grad.contiguous()
    out = torch.empty_like(grad)
    _scale(out, grad, grad_output, reduction)
    return out if dtype is None else out.to(dtype)


def scale_grad_(grad: torch.Tensor, grad_output: torch.Tensor, reduction: str) -> None:
    """:func:`heatmap_loss_backward` in place (``grad`` is contiguous); maps whose factor is exactly 1
    are not touched, so the usual ``loss.backward()`` makes no pass over the gradient."""
    if not grad.is_contiguous():
        raise ValueError("grad: scale_grad_ needs a contiguous gradient (the one heatmap_loss saved)")
    _scale(grad, grad, grad_output, reduction)
