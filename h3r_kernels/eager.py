"""The eager fast path: the ops' bodies (:mod:`h3r_kernels.dispatch`) without ``torch.library``.

A registered op is what ``torch.compile``, ``torch.export``, ``opcheck``, FakeTensor and
functorch need, but each call through ``torch.library``'s Python dispatch, and each backward
through ``register_autograd``, costs CPU time that a plain eager call does not need: measured
on the CPU (``h3r bench --host-overhead``), ~0.2 ms of a ``heatmap_loss`` forward+backward and
~0.08 ms of a ``decode``, more than the GPU work of a low-resolution batch.

So the public functions (:mod:`h3r_kernels.api`) call the same bodies directly, with a
``torch.autograd.Function`` where a gradient is needed, whenever :func:`takes_fast_path` says
the call is a plain eager one; anything else goes through ``torch.ops.h3r``. Both ways run
the same backend function on the same tensors: same values and gradients, bit for bit. While
a profiler records, the fast path is named after the op (``h3r::heatmap_loss``, ...).
"""
from __future__ import annotations

import contextlib

import torch
from torch.overrides import has_torch_function

from .dispatch import (
    decode_output_grads, run_decode, run_decode_backward, run_encode, run_heatmap_loss, run_heatmap_loss_backward,
    run_scale_grad_, scales_in_place,
)
from .transforms import first_order

_PLAIN_TYPES = (torch.Tensor, torch.nn.Parameter)
_enabled = [True]


@contextlib.contextmanager
def fast_path(enabled: bool):
    """Within the block, the public functions take the fast path where they can (``True``, the
    default) or always call the registered op (``False``: e.g. to compare the two, or to see
    every call as a ``torch.library`` op)."""
    previous = _enabled[0]
    _enabled[0] = bool(enabled)
    try:
        yield
    finally:
        _enabled[0] = previous


def takes_fast_path(*tensors) -> bool:
    """Whether a call on ``tensors`` (None allowed) can skip ``torch.library``: plain tensors, in
    eager mode. Not while ``torch.compile``/``torch.export`` trace, under functorch transforms
    (``vmap``, ``grad``), torch function modes, dispatch modes (FakeTensorMode, FlopCounterMode,
    ...), or for tensor subclasses: those see the registered op. Nor inside ``fast_path(False)``."""
    if not _enabled[0] or torch.compiler.is_compiling() or torch._C._functorch.peek_interpreter_stack() is not None:
        return False
    if torch._C._len_torch_dispatch_stack() or torch._C._is_torch_function_mode_enabled():
        return False
    present = tuple(t for t in tensors if t is not None)
    return all(type(t) in _PLAIN_TYPES for t in present) and not has_torch_function(present)


def _named(op: str):
    """``record_function(op)`` while a profiler records, so traces name the op as the registered one would."""
    return torch.profiler.record_function(op) if torch.autograd._profiler_enabled() else contextlib.nullcontext()


def encode(keypoints, visible, height, width, sigma, rounding, seed, expected, dtype, backend) -> torch.Tensor:
    with _named("h3r::encode"):
        return run_encode(keypoints, visible, height, width, sigma, rounding, seed, expected, dtype, backend)


class _HeatmapLoss(torch.autograd.Function):
    """``heatmap_loss`` with ``compute_grad``: the forward computes the gradient, the backward scales it.

    The saved gradient is also an output (the caller drops it), as in the registered op: so a
    backward with ``create_graph=True`` gives a result connected to this node, and differentiating
    it raises (:func:`~h3r_kernels.transforms.first_order`) instead of giving 0 (``hessian``)."""

    @staticmethod
    def forward(ctx, logits, keypoints, visible, weight, sigma, rounding, seed, loss, reduction, backend):
        value, grad = run_heatmap_loss(logits, keypoints, visible, sigma, rounding, seed, loss, reduction, True, backend, weight)
        ctx.reduction, ctx.backend, ctx.dtype = reduction, backend, logits.dtype
        ctx.save_for_backward(grad)
        return value, grad

    @staticmethod
    def backward(ctx, grad_value, _):
        (grad,) = ctx.saved_tensors
        with _named("h3r::heatmap_loss_backward"):
            if torch.is_grad_enabled():  # create_graph=True: the result is first-order only
                grad = first_order("h3r::heatmap_loss_backward", run_heatmap_loss_backward, grad, grad_value,
                                   ctx.reduction, ctx.backend, ctx.dtype)
            elif scales_in_place(grad, ctx.dtype):
                run_scale_grad_(grad, grad_value, ctx.reduction, ctx.backend)
            else:
                grad = run_heatmap_loss_backward(grad, grad_value, ctx.reduction, ctx.backend, ctx.dtype)
        return grad, *(None,) * 9


def heatmap_loss(logits, keypoints, visible, sigma, rounding, seed, loss, reduction, compute_grad, backend, weight):
    """The loss value; differentiable wrt ``logits`` when ``compute_grad``."""
    with _named("h3r::heatmap_loss"):
        if compute_grad:
            return _HeatmapLoss.apply(logits, keypoints, visible, weight, sigma, rounding, seed, loss, reduction, backend)[0]
        value, _ = run_heatmap_loss(logits, keypoints, visible, sigma, rounding, seed, loss, reduction, False, backend, weight)
        return value


class _Decode(torch.autograd.Function):
    @staticmethod
    def forward(ctx, heatmaps, method, k, weights, window, backend):
        coords, scores, indices = run_decode(heatmaps, method, k, weights, window, backend)
        ctx.method, ctx.weights, ctx.backend = method, weights, backend
        ctx.save_for_backward(heatmaps, indices)
        return coords, scores

    @staticmethod
    def backward(ctx, grad_coords, grad_scores):
        heatmaps, indices = ctx.saved_tensors
        grad_coords, grad_scores = decode_output_grads(heatmaps, grad_coords, grad_scores)
        arguments = (heatmaps, indices, grad_coords, grad_scores, ctx.method, ctx.weights, ctx.backend)
        with _named("h3r::decode_backward"):
            if torch.is_grad_enabled():  # create_graph=True: the result is first-order only (connected to the maps)
                grad = first_order("h3r::decode_backward", run_decode_backward, *arguments)
            else:
                grad = run_decode_backward(*arguments)
        return grad, *(None,) * 5


def decode(heatmaps, method, k, weights, window, backend) -> tuple[torch.Tensor, torch.Tensor]:
    """Coordinates and scores; differentiable wrt ``heatmaps`` when it requires a gradient."""
    with _named("h3r::decode"):
        if torch.is_grad_enabled() and heatmaps.requires_grad:
            return _Decode.apply(heatmaps, method, k, weights, window, backend)
        coords, scores, _ = run_decode(heatmaps, method, k, weights, window, backend)
        return coords, scores
