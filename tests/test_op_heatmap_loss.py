"""The fused ``heatmap_loss`` and its backward ops. The Triton and CUDA C kernels against the
reference on every device (conftest.py: KERNEL_PAIRS): value and gradient for every loss,
reduction, shape and logit dtype, full precision of bce at large logits, the other roundings,
per-map and expanded incoming gradients. On every (backend, device) pair, the reference's too:
the fused target is encode's bit for bit, the value without a gradient is the value with it, a
mean over nothing is 0, and the out-of-place and in-place gradient scaling ops give the
reference function's bits.

On the CPU the Triton backend runs in its interpreter: shapes stay small; real shapes are in
test_gpu_ops.py, the specification (the fused loss is BCE/MSE on encode's target) in
test_reference.py, masks and weights in test_kernels_inputs.py, Triton's block sizes in
test_triton_internals.py.
"""
import itertools

import pytest
import torch

import h3r_kernels
from conftest import KERNEL_PAIRS, assert_close, loss_keys, make_keypoints
from h3r_kernels import reference

# NaN/inf keypoints: the interpreter's numpy warns on inf - inf, the kernels mask them.
pytestmark = pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")

DTYPES = [torch.float32, torch.float16, torch.bfloat16, torch.float64]
SHAPES = [(1, 1), (5, 7), (17, 13), (16, 16)]


def shape_dtype_cases():
    """Every shape in float32, every other dtype at one odd shape."""
    return [(shape, torch.float32) for shape in SHAPES] + [((5, 7), dtype) for dtype in DTYPES[1:]]


def loss_and_grad(logits, keypoints, visible, backend, incoming=None, **args):
    """``(value, d(sum of value * incoming)/d logits)`` through the public API and autograd
    (``incoming`` None: ``value.sum()``, an expanded incoming gradient)."""
    logits = logits.detach().clone().requires_grad_()
    value = h3r_kernels.heatmap_loss(logits, keypoints, visible, backend=backend, **args)
    (value.sum() if incoming is None else (value * incoming).sum()).backward()
    return value.detach(), logits.grad


@pytest.mark.parametrize("backend,device", KERNEL_PAIRS)
@pytest.mark.parametrize("loss", ["bce", "mse"])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_heatmap_loss_matches_reference(backend, device, loss, reduction):
    for ((height, width), dtype), sigma in itertools.product(shape_dtype_cases(), [0.0, 1.5]):
        keypoints, visible = make_keypoints(2, 6, height, width, seed=height, device=device)
        vis = None if width == 13 else visible
        logits = (torch.randn(2, 6, height, width) * 3).to(dtype).to(device)
        args = dict(sigma=sigma, rounding="random", seed=11, loss=loss, reduction=reduction)
        value, grad = loss_and_grad(logits, keypoints, vis, backend, **args)
        want_value, want_grad = loss_and_grad(logits, keypoints, vis, "reference", **args)
        assert value.dtype == want_value.dtype and value.shape == want_value.shape
        assert grad.dtype == dtype
        value_key, grad_key = loss_keys(dtype, sigma)
        assert_close(value, want_value, value_key)
        assert_close(grad, want_grad, grad_key)


@pytest.mark.parametrize("backend,device", KERNEL_PAIRS)
@pytest.mark.parametrize("dtype,rtol", [(torch.float32, 1e-6), (torch.float64, 1e-13)])
def test_bce_is_accurate_for_large_logits(backend, device, dtype, rtol):
    """``log(1 + exp(-|z|))`` keeps full relative precision where ``exp(-|z|)`` is tiny: the
    claim under test is this rtol (a few ULPs), tighter than the table's."""
    logits = torch.linspace(-40, 40, 2 * 3 * 9 * 11, dtype=dtype, device=device).reshape(2, 3, 9, 11)
    keypoints = (torch.rand(2, 3, 2) * 8).to(device)
    args = dict(seed=1, loss="bce", reduction="none")
    value = h3r_kernels.heatmap_loss(logits, keypoints, backend=backend, **args)
    want = h3r_kernels.heatmap_loss(logits, keypoints, backend="reference", **args)
    torch.testing.assert_close(value, want, rtol=rtol, atol=0)


@pytest.mark.parametrize("backend,device", KERNEL_PAIRS)
@pytest.mark.parametrize("rounding,sigma", [("nearest", 0.0), ("floor", 2.0), ("none", 1.5)])
def test_other_roundings_match_reference(backend, device, rounding, sigma):
    keypoints, visible = make_keypoints(3, 4, 5, 7, device=device)
    logits = torch.randn(3, 4, 5, 7).to(device)
    args = dict(sigma=sigma, rounding=rounding, seed=3, loss="mse", reduction="mean")
    value, grad = loss_and_grad(logits, keypoints, visible, backend, **args)
    want_value, want_grad = loss_and_grad(logits, keypoints, visible, "reference", **args)
    assert_close(value, want_value, torch.float32)
    assert_close(grad, want_grad, torch.float32)


def test_fused_target_is_the_encode_target(backend, device):
    """With mse and zero logits the gradient is -2 t / (n H W): the fused target equals ``encode``'s bit for bit."""
    keypoints, visible = make_keypoints(2, 5, 6, 9, device=device)
    logits = torch.zeros(2, 5, 6, 9, device=device, requires_grad=True)
    value = h3r_kernels.heatmap_loss(logits, keypoints, visible, seed=21, loss="mse", reduction="sum", backend=backend)
    value.backward()
    target = h3r_kernels.encode(keypoints, (6, 9), visible, seed=21, backend=backend)
    assert torch.equal(logits.grad, -2 * target)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_value_without_grad_is_the_value_with_grad(backend, device, reduction):
    keypoints, visible = make_keypoints(2, 3, 5, 7, device=device)
    logits = torch.randn(2, 3, 5, 7).to(device)
    args = (keypoints, visible, 1.0, "random", 4, "bce", reduction)
    value, grad = torch.ops.h3r.heatmap_loss(logits, *args, False, backend)
    value_with, grad_with = torch.ops.h3r.heatmap_loss(logits, *args, True, backend)
    assert grad.numel() == 0 and grad_with.shape == logits.shape
    assert torch.equal(value, value_with)


@pytest.mark.parametrize(
    "logits_shape,off_map", [((2, 3, 4, 5), -5.0), ((1, 2, 4, 4), 50.0)], ids=["before-the-map", "past-the-map"]
)
def test_mean_with_nothing_contributing_is_zero(backend, device, logits_shape, off_map):
    keypoints = torch.full((*logits_shape[:2], 2), off_map, device=device)
    value, grad = loss_and_grad(torch.randn(logits_shape).to(device), keypoints, None, backend, seed=0)
    assert value.item() == 0 and torch.equal(grad, torch.zeros_like(grad))


@pytest.mark.parametrize("backend,device", KERNEL_PAIRS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_per_map_and_expanded_incoming_gradients(backend, device, dtype):
    """A (B, K) incoming gradient on the ``none`` reduction, and the expanded one of ``value.sum().backward()``."""
    keypoints, visible = make_keypoints(2, 4, 5, 6, device=device)
    logits = torch.randn(2, 4, 5, 6).to(dtype).to(device)
    per_map = torch.rand(2, 4).to(device)
    for incoming in (per_map, None):
        args = dict(seed=8, loss="bce", reduction="none", incoming=incoming)
        _, grad = loss_and_grad(logits, keypoints, visible, backend, **args)
        _, want = loss_and_grad(logits, keypoints, visible, "reference", **args)
        assert_close(grad, want, dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.float64])
def test_gradient_scaling_ops_match_reference(backend, device, dtype):
    """The backward's two forms, ``heatmap_loss_backward`` (out of place) and
    ``heatmap_loss_scale_grad_`` (in place), give the reference's bits for a per-map, a unit
    and a negative incoming gradient."""
    grad = torch.randn(2, 3, 5, 7).to(dtype).to(device)
    acc = torch.float64 if dtype == torch.float64 else torch.float32
    per_map = torch.tensor([[1.0, 2.5, -0.5], [1.0, 0.0, 3.0]], device=device, dtype=acc)
    for grad_output, reduction in ((per_map, "none"), (torch.tensor(1.0, dtype=acc, device=device), "mean"),
                                   (torch.tensor(-1.5, dtype=acc, device=device), "sum")):
        want = reference.heatmap_loss_backward(grad, grad_output, reduction)
        assert torch.equal(torch.ops.h3r.heatmap_loss_backward(grad, grad_output, reduction, backend, dtype), want)
        scaled = grad.clone()
        torch.ops.h3r.heatmap_loss_scale_grad_(scaled, grad_output, reduction, backend)
        assert torch.equal(scaled, want)
