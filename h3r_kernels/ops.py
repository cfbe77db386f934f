"""The one place that registers the ops with ``torch.library`` (namespace ``h3r``).

Each op is a ``custom_op`` whose body is the call of :mod:`h3r_kernels.dispatch` (backend
selection, layouts, the backend's function), with a fake kernel that runs the same input
checks, and, where differentiable, a backward that is an op of its own. Public, documented
wrappers live in :mod:`h3r_kernels.api`; in plain eager calls they take the fast path of
:mod:`h3r_kernels.eager` to the same bodies.
"""
from __future__ import annotations

from typing import Optional

import torch

from . import checks, spec
from .dispatch import (
    decode_output_grads, run_decode, run_decode_backward, run_encode, run_heatmap_loss, run_heatmap_loss_backward,
    run_scale_grad_, scales_in_place,
)
from .spec import compute_dtype

# --------------------------------------------------------------------------- encode


@torch.library.custom_op("h3r::encode", mutates_args=())
def encode(
    keypoints: torch.Tensor,
    visible: Optional[torch.Tensor],
    height: int,
    width: int,
    sigma: float,
    rounding: str,
    seed: int,
    expected: bool,
    dtype: torch.dtype,
    backend: str,
) -> torch.Tensor:
    checks.check_encode(keypoints, (height, width), visible, sigma, rounding, seed, dtype)
    return run_encode(keypoints, visible, height, width, sigma, rounding, seed, expected, dtype, backend)


@encode.register_fake
def _(keypoints, visible, height, width, sigma, rounding, seed, expected, dtype, backend):
    checks.check_encode(keypoints, (height, width), visible, sigma, rounding, seed, dtype)
    return keypoints.new_empty((keypoints.shape[0], keypoints.shape[1], height, width), dtype=dtype)


# --------------------------------------------------------------------------- heatmap_loss


@torch.library.custom_op("h3r::heatmap_loss", mutates_args=())
def heatmap_loss(
    logits: torch.Tensor,
    keypoints: torch.Tensor,
    visible: Optional[torch.Tensor],
    sigma: float,
    rounding: str,
    seed: int,
    loss: str,
    reduction: str,
    compute_grad: bool,
    backend: str,
    weight: Optional[torch.Tensor] = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    checks.check_heatmap_loss(logits, keypoints, visible, sigma, rounding, seed, loss, reduction, weight)
    return run_heatmap_loss(logits, keypoints, visible, sigma, rounding, seed, loss, reduction, compute_grad, backend, weight)


def _loss_value_like(logits: torch.Tensor, reduction: str) -> torch.Tensor:
    dtype = compute_dtype(logits.dtype)
    shape = (logits.shape[0], logits.shape[1]) if reduction == "none" else ()
    return logits.new_empty(shape, dtype=dtype)


@heatmap_loss.register_fake
def _(logits, keypoints, visible, sigma, rounding, seed, loss, reduction, compute_grad, backend, weight=None):
    checks.check_heatmap_loss(logits, keypoints, visible, sigma, rounding, seed, loss, reduction, weight)
    grad = (torch.empty_like(logits, dtype=spec.saved_grad_dtype(logits.dtype), memory_format=torch.contiguous_format)
            if compute_grad else logits.new_empty(0))
    return _loss_value_like(logits, reduction), grad


@torch.library.custom_op("h3r::heatmap_loss_backward", mutates_args=())
def heatmap_loss_backward(grad: torch.Tensor, grad_output: torch.Tensor, reduction: str, backend: str,
                          dtype: torch.dtype) -> torch.Tensor:
    """The backward of ``heatmap_loss``: the gradient saved by the forward times the incoming one, as
    the logits' ``dtype``."""
    return run_heatmap_loss_backward(grad, grad_output, reduction, backend, dtype)


@heatmap_loss_backward.register_fake
def _(grad, grad_output, reduction, backend, dtype):
    return torch.empty_like(grad, dtype=dtype)


@torch.library.custom_op("h3r::heatmap_loss_scale_grad_", mutates_args=("grad",))
def heatmap_loss_scale_grad_(grad: torch.Tensor, grad_output: torch.Tensor, reduction: str, backend: str) -> None:
    """:func:`heatmap_loss_backward` in place: no pass over the gradient when the incoming one is 1."""
    run_scale_grad_(grad, grad_output, reduction, backend)


@heatmap_loss_scale_grad_.register_fake
def _(grad, grad_output, reduction, backend):
    return None


def _loss_setup_context(ctx, inputs, output):
    ctx.dtype = inputs[0].dtype
    ctx.reduction = inputs[7]
    ctx.compute_grad = inputs[8]
    ctx.backend = inputs[9]
    ctx.save_for_backward(output[1])


def _loss_backward(ctx, grad_value, grad_grad):
    """Scales the gradient that the forward computed (Liger-Kernel's fused-loss pattern).

    On CUDA tensors in eager mode the saved gradient is scaled in place and returned, which
    costs no pass over it when the incoming gradient is 1 (the usual ``loss.backward()``).
    A second backward through the same graph then fails in autograd's own check ("modified
    by an inplace operation"). On the CPU and while tracing (``torch.compile``) a new tensor
    is returned, so ``retain_graph`` and ``gradcheck`` work there.

    ``weight`` is treated as a constant (like mmpose's target weights, which are data): no
    gradient flows to it, even when it requires one.
    """
    if not ctx.compute_grad:
        raise RuntimeError("heatmap_loss: backward needs the op to be called with compute_grad=True")
    (grad,) = ctx.saved_tensors
    if not scales_in_place(grad, ctx.dtype):
        return heatmap_loss_backward(grad, grad_value, ctx.reduction, ctx.backend, ctx.dtype), *(None,) * 10
    heatmap_loss_scale_grad_(grad, grad_value, ctx.reduction, ctx.backend)
    return grad, *(None,) * 10


heatmap_loss.register_autograd(_loss_backward, setup_context=_loss_setup_context)


# --------------------------------------------------------------------------- decode


@torch.library.custom_op("h3r::decode", mutates_args=())
def decode(
    heatmaps: torch.Tensor, method: str, k: int, weights: str, window: int, backend: str
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    checks.check_decode(heatmaps, method, k, weights, window)
    return run_decode(heatmaps, method, k, weights, window, backend)


@decode.register_fake
def _(heatmaps, method, k, weights, window, backend):
    checks.check_decode(heatmaps, method, k, weights, window)
    batch, num = heatmaps.shape[:2]
    dtype = compute_dtype(heatmaps.dtype)
    coords = heatmaps.new_empty((batch, num, 2), dtype=dtype)
    scores = heatmaps.new_empty((batch, num), dtype=dtype)
    indices = heatmaps.new_empty((batch, num, spec.slots(method, k, window)), dtype=torch.int64)
    return coords, scores, indices


@torch.library.custom_op("h3r::decode_backward", mutates_args=())
def decode_backward(
    heatmaps: torch.Tensor,
    indices: torch.Tensor,
    grad_coords: torch.Tensor,
    grad_scores: torch.Tensor,
    method: str,
    weights: str,
    backend: str,
) -> torch.Tensor:
    return run_decode_backward(heatmaps, indices, grad_coords, grad_scores, method, weights, backend)


@decode_backward.register_fake
def _(heatmaps, indices, grad_coords, grad_scores, method, weights, backend):
    return torch.empty_like(heatmaps, memory_format=torch.contiguous_format)


def _decode_setup_context(ctx, inputs, output):
    heatmaps, method, _, weights, _, backend = inputs
    ctx.method, ctx.weights, ctx.backend = method, weights, backend
    ctx.save_for_backward(heatmaps, output[2])


def _decode_backward(ctx, grad_coords, grad_scores, grad_indices):
    heatmaps, indices = ctx.saved_tensors
    grad_coords, grad_scores = decode_output_grads(heatmaps, grad_coords, grad_scores)
    grad = decode_backward(heatmaps, indices, grad_coords, grad_scores, ctx.method, ctx.weights, ctx.backend)
    return grad, *(None,) * 5


decode.register_autograd(_decode_backward, setup_context=_decode_setup_context)
