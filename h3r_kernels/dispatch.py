"""What one call of an op runs once its arguments are checked: the backend, the layouts, the call.

Shared by the two ways in: the registered ``torch.ops.h3r`` ops (:mod:`h3r_kernels.ops`,
whose bodies are these functions) and the eager fast path (:mod:`h3r_kernels.eager`), so
both run the same backend function on the same tensors and give the same bits.
"""
from __future__ import annotations

from typing import Optional

import torch

from .backends import select
from .reference import visible_as_bool
from .spec import compute_dtype


def _mask(visible: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
    return None if visible is None else visible_as_bool(visible).contiguous()


def _points(keypoints: torch.Tensor) -> torch.Tensor:
    return keypoints.to(torch.float32).contiguous()


def run_encode(keypoints, visible, height, width, sigma, rounding, seed, expected, dtype, backend) -> torch.Tensor:
    module = select("encode", keypoints.device, backend)
    return module.encode(_points(keypoints), _mask(visible), height, width, sigma, rounding, seed, expected, dtype)


def run_heatmap_loss(
    logits, keypoints, visible, sigma, rounding, seed, loss, reduction, compute_grad, backend, weight=None
) -> tuple[torch.Tensor, torch.Tensor]:
    module = select("heatmap_loss", logits.device, backend, logits.dtype, logits.shape[2] * logits.shape[3])
    if weight is not None:
        weight = weight.to(compute_dtype(logits.dtype)).contiguous()
    return module.heatmap_loss(
        logits.contiguous(), _points(keypoints), _mask(visible), sigma, rounding, seed, loss, reduction, compute_grad, weight
    )


def _loss_module_for(grad: torch.Tensor, backend: str):
    """The backend of the forward that saved ``grad`` (same device, dtype and map size)."""
    return select("heatmap_loss", grad.device, backend, grad.dtype, grad.shape[-2] * grad.shape[-1] if grad.dim() == 4 else 0)


def run_heatmap_loss_backward(grad: torch.Tensor, grad_output: torch.Tensor, reduction: str, backend: str,
                              dtype: torch.dtype) -> torch.Tensor:
    """The logits' gradient, of ``dtype`` (theirs): the saved ``grad`` times ``grad_output``."""
    return _loss_module_for(grad, backend).heatmap_loss_backward(grad, grad_output.contiguous(), reduction, dtype)


def run_scale_grad_(grad: torch.Tensor, grad_output: torch.Tensor, reduction: str, backend: str) -> None:
    _loss_module_for(grad, backend).scale_grad_(grad, grad_output.contiguous(), reduction)


def scales_in_place(grad: torch.Tensor, dtype: torch.dtype) -> bool:
    """Whether the loss backward scales the saved gradient in place: plain CUDA tensors in eager
    mode, saved in the logits' ``dtype`` (no pass over the gradient when the incoming one is 1).
    On the CPU and while tracing a new tensor is made, so ``retain_graph`` and ``gradcheck`` work
    there; so it is for float16 logits, whose gradient is saved in float32 (``spec.saved_grad_dtype``)."""
    return grad.is_cuda and type(grad) is torch.Tensor and grad.dtype == dtype


def run_decode(heatmaps, method, k, weights, window, backend) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return select("decode", heatmaps.device, backend).decode(heatmaps.contiguous(), method, k, weights, window)


def run_decode_backward(heatmaps, indices, grad_coords, grad_scores, method, weights, backend) -> torch.Tensor:
    module = select("decode", heatmaps.device, backend)
    return module.decode_backward(
        heatmaps.contiguous(), indices.contiguous(), grad_coords.contiguous(), grad_scores.contiguous(), method, weights
    )


def decode_output_grads(heatmaps: torch.Tensor, grad_coords, grad_scores) -> tuple[torch.Tensor, torch.Tensor]:
    """The incoming gradients of decode's coordinates and scores, zeros for the one autograd left out."""
    batch, num = heatmaps.shape[:2]
    dtype = compute_dtype(heatmaps.dtype)
    if grad_coords is None:
        grad_coords = heatmaps.new_zeros((batch, num, 2), dtype=dtype)
    if grad_scores is None:
        grad_scores = heatmaps.new_zeros((batch, num), dtype=dtype)
    return grad_coords, grad_scores
