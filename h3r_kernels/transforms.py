"""The ops' derivatives under functorch transforms and forward-mode AD: ``torch.func.grad``,
``vjp``, ``jacrev``, ``jvp``, ``jacfwd``, ``vmap`` of those, and ``torch.autograd.forward_ad``.

torch runs a custom op's ``register_autograd`` formula through an ``autograd.Function`` without
``setup_context``, which functorch refuses, and a custom op has no forward-mode formula (its
tangent silently comes out as 0). So, while a derivative may be taken this way, the public
functions wrap the registered ops (``torch.ops.h3r.*``: the same bodies and bits) in the
``autograd.Function``\\s below, which have ``setup_context`` and ``jvp``; ``vmap`` of them is
torch's per-sample loop over the ops (``generate_vmap_rule``). The derivatives are first-order,
as everywhere: differentiating them again (``hessian``, ``grad`` of ``grad``) raises; so does
differentiating a tangent, even with respect to the tangent (``grad`` of ``jvp``).
"""
from __future__ import annotations

import torch
from torch._C._functorch import TransformType, get_interpreter_stack
from torch.autograd import forward_ad

from . import ops
from .dispatch import decode_output_grads
from .spec import compute_dtype


def differentiating(needs_grad: bool) -> bool:
    """Whether a call must take this module's path: a forward-AD level or a ``jvp`` transform is
    active, or a ``grad`` transform is and the call ``needs_grad`` (its input requires a gradient,
    in grad mode). Never while ``torch.compile`` traces (it cannot trace this check): there the
    registered ops are used, so ``torch.compile(torch.func.grad(f))`` is refused."""
    if torch.compiler.is_compiling():
        return False
    if getattr(forward_ad, "_current_level", -1) >= 0:  # torch's own flag of an open dual_level()
        return True
    stack = get_interpreter_stack()
    return bool(stack) and any(i.key() == TransformType.Jvp or needs_grad and i.key() == TransformType.Grad
                               for i in stack)


class _FirstOrder(torch.autograd.Function):
    """``op(*args)`` for a derivative's computation: differentiating its result raises this
    package's error (not functorch's refusal of ``register_autograd``, nor a silent 0)."""

    generate_vmap_rule = True

    @staticmethod
    def forward(name, op, *args):
        return op(*args)

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.name = inputs[0]

    @staticmethod
    def backward(ctx, *_):
        raise RuntimeError(f"{ctx.name}: the derivatives of h3r_kernels' ops are first-order only; they cannot be "
                           f"differentiated again (hessian, grad of grad; torch.autograd.functional.jvp and hvp "
                           f"differentiate a gradient too: use torch.func.jvp)")

    jvp = backward


def first_order(name: str, op, *args):
    """``op(*args)``, the computation of a derivative of the op ``name``: its result may be used
    but not differentiated (that raises, naming ``name``)."""
    return _FirstOrder.apply(name, op, *args)


def _scaled_grad(logits, grad, grad_value, reduction: str, backend: str, dtype: torch.dtype):
    """The backward op on the saved gradient (``logits``: not read, there for :class:`_FirstOrder`)."""
    return ops.heatmap_loss_backward(grad, grad_value, reduction, backend, dtype)


def _loss_tangent(logits, grad, tangent, reduction: str):
    """The loss value's tangent: the saved gradient dotted with the logits' tangent (per map for
    ``"none"``); ``logits``: their dtype, and there for :class:`_FirstOrder`."""
    dtype = compute_dtype(logits.dtype)
    product = grad.to(dtype) * tangent.to(dtype)
    return product.sum((-2, -1)) if reduction == "none" else product.sum()


class _HeatmapLoss(torch.autograd.Function):
    """``heatmap_loss`` with ``compute_grad``: outputs ``(value, saved gradient)``, the second not differentiable."""

    generate_vmap_rule = True

    @staticmethod
    def forward(logits, keypoints, visible, weight, sigma, rounding, seed, loss, reduction, backend):
        return ops.heatmap_loss(logits, keypoints, visible, sigma, rounding, seed, loss, reduction, True, backend, weight)

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.dtype, ctx.reduction, ctx.backend = inputs[0].dtype, inputs[8], inputs[9]
        ctx.mark_non_differentiable(output[1])
        ctx.save_for_backward(inputs[0], output[1])
        ctx.save_for_forward(inputs[0], output[1])

    @staticmethod
    def backward(ctx, grad_value, _):
        logits, grad = ctx.saved_tensors  # the logits: so that differentiating again reaches _FirstOrder
        grad = first_order("h3r::heatmap_loss_backward", _scaled_grad, logits, grad, grad_value, ctx.reduction,
                           ctx.backend, ctx.dtype)
        return grad, *(None,) * 9

    @staticmethod
    def jvp(ctx, logits_tangent, *_):
        logits, grad = ctx.saved_tensors
        value = first_order("h3r::heatmap_loss (jvp)", _loss_tangent, logits, grad, logits_tangent, ctx.reduction)
        return value, None


def heatmap_loss(logits, keypoints, visible, sigma, rounding, seed, loss, reduction, backend, weight) -> torch.Tensor:
    """The loss value, with its derivatives wrt ``logits``."""
    value, _ = _HeatmapLoss.apply(logits, keypoints, visible, weight, sigma, rounding, seed, loss, reduction, backend)
    return value


def _decode_tangent(heatmaps, indices, tangent, method: str, weights: str, backend: str):
    """The tangents of decode's ``(coords, scores)``: each output's row of the Jacobian (the backward
    for a unit incoming gradient, so the same rules as the backward) dotted with the maps' tangent."""
    batch, num = heatmaps.shape[:2]
    dtype = compute_dtype(heatmaps.dtype)
    tangent = tangent.to(dtype)
    outputs = []
    for column in range(3):  # x, y, score
        grad_coords = heatmaps.new_zeros((batch, num, 2), dtype=dtype)
        grad_scores = heatmaps.new_zeros((batch, num), dtype=dtype)
        (grad_coords[..., column] if column < 2 else grad_scores).fill_(1)
        row = ops.decode_backward(heatmaps, indices, grad_coords, grad_scores, method, weights, backend)
        outputs.append((row.to(dtype) * tangent).sum((-2, -1)))
    return torch.stack(outputs[:2], -1), outputs[2]


class _Decode(torch.autograd.Function):
    """``decode``: outputs ``(coords, scores, indices)``, the indices not differentiable."""

    generate_vmap_rule = True

    @staticmethod
    def forward(heatmaps, method, k, weights, window, backend):
        return ops.decode(heatmaps, method, k, weights, window, backend)

    @staticmethod
    def setup_context(ctx, inputs, output):
        heatmaps, method, _, weights, _, backend = inputs
        ctx.method, ctx.weights, ctx.backend = method, weights, backend
        ctx.mark_non_differentiable(output[2])
        ctx.save_for_backward(heatmaps, output[2])
        ctx.save_for_forward(heatmaps, output[2])

    @staticmethod
    def backward(ctx, grad_coords, grad_scores, _):
        heatmaps, indices = ctx.saved_tensors
        grad_coords, grad_scores = decode_output_grads(heatmaps, grad_coords, grad_scores)
        grad = first_order("h3r::decode_backward", ops.decode_backward, heatmaps, indices, grad_coords, grad_scores,
                           ctx.method, ctx.weights, ctx.backend)
        return grad, *(None,) * 5

    @staticmethod
    def jvp(ctx, heatmaps_tangent, *_):
        heatmaps, indices = ctx.saved_tensors
        coords, scores = first_order("h3r::decode (jvp)", _decode_tangent, heatmaps, indices, heatmaps_tangent,
                                     ctx.method, ctx.weights, ctx.backend)
        return coords, scores, None


def decode(heatmaps, method, k, weights, window, backend) -> tuple[torch.Tensor, torch.Tensor]:
    """Coordinates and scores, with their derivatives wrt ``heatmaps``."""
    coords, scores, _ = _Decode.apply(heatmaps, method, k, weights, window, backend)
    return coords, scores
