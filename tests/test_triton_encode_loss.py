"""The Triton ``encode`` and fused ``heatmap_loss`` against the reference, through the public API.

On a machine without CUDA the kernels run in Triton's CPU interpreter (``tests/conftest.py``
sets ``TRITON_INTERPRET=1``), which costs about a millisecond per program: shapes stay tiny.
The ``gpu`` tests repeat the checks at real shapes and add CUDA graphs and streams.
"""
import itertools

import pytest
import torch

import h3r_kernels
from conftest import DEVICE, assert_close, loss_keys, make_keypoints, target_key
from h3r_kernels import reference, spec
from h3r_kernels.backends import interpreting

pytestmark = [
    pytest.mark.skipif(not h3r_kernels.backends()["triton"]["available"], reason="triton backend unavailable"),
    # NaN/inf keypoints: the interpreter's numpy warns on inf - inf, the kernels mask them.
    pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning"),
]

DTYPES = [torch.float32, torch.float16, torch.bfloat16, torch.float64]
SHAPES = [(1, 1), (5, 7), (17, 13), (16, 16)]
ROUNDINGS = list(spec.names(spec.Rounding))


def shape_dtype_cases():
    """Every shape in float32, every other dtype at one odd shape (the dtype only changes the final cast)."""
    return [(shape, torch.float32) for shape in SHAPES] + [((5, 7), dtype) for dtype in DTYPES[1:]]


def target_cases():
    for rounding, sigma, expected in itertools.product(ROUNDINGS, [0.0, 1.5], [False, True]):
        if rounding == "none" and sigma == 0:
            continue  # rejected by the API: the continuous centre needs a Gaussian
        yield rounding, sigma, expected


# --------------------------------------------------------------------------- encode


@pytest.mark.parametrize("rounding,sigma,expected", list(target_cases()))
def test_encode_matches_reference(rounding, sigma, expected):
    keypoints, visible = make_keypoints(2, 7, 17, 13)
    seeds = [5, 2**32 - 1] if rounding == "random" else [5]
    for ((height, width), dtype), seed in itertools.product(shape_dtype_cases(), seeds):
        vis = None if height == 1 else visible
        args = dict(sigma=sigma, rounding=rounding, seed=seed, expected=expected, dtype=dtype)
        got = h3r_kernels.encode(keypoints, (height, width), vis, backend="triton", **args)
        want = h3r_kernels.encode(keypoints, (height, width), vis, backend="reference", **args)
        assert got.dtype == dtype and got.shape == (2, 7, height, width)
        mixture = expected and rounding == "random"
        exact = sigma == 0 and not (mixture and dtype == torch.bfloat16 and interpreting())
        if exact:
            assert torch.equal(got, want), f"{height}x{width} {dtype} seed={seed}"
        else:
            assert_close(got, want, target_key(dtype))


@pytest.mark.parametrize("seed", [0, 7, 2**31, 2**32 - 1])
def test_encode_random_rounding_draws_the_reference_cells(seed):
    keypoints = torch.rand(3, 11, 2, device=DEVICE) * 6 - 0.5
    got = h3r_kernels.encode(keypoints, (6, 6), seed=seed, backend="triton")
    want = h3r_kernels.encode(keypoints, (6, 6), seed=seed, backend="reference")
    assert torch.equal(got, want)


def test_encode_invisible_and_off_map_keypoints_give_zero_maps():
    keypoints = torch.tensor([[[2.0, 1.0], [float("nan"), 0.0], [8.0, 1.0], [-1.0, 2.0]]], device=DEVICE)
    visible = torch.tensor([[False, False, True, True]], device=DEVICE)
    for sigma, expected in ((0.0, False), (0.0, True), (1.5, False), (1.5, True)):
        maps = h3r_kernels.encode(
            keypoints, (4, 8), visible, sigma=sigma, rounding="nearest" if not expected else "random",
            seed=1, expected=expected, backend="triton",
        )
        assert torch.equal(maps, torch.zeros_like(maps)), (sigma, expected)


# (rows, maps) per program for the block-size tests: one row of one map, part of several maps, the heuristic.
BLOCKS = [(1, 1), (4, 2), (32, 8), (None, None)]


@pytest.mark.parametrize(
    "rounding,sigma,expected", [("random", 0.0, False), ("random", 1.5, True), ("none", 2.0, False)]
)
def test_encode_does_not_depend_on_block_size(rounding, sigma, expected):
    from h3r_kernels.triton.encode import launch_encode

    keypoints, visible = make_keypoints(2, 3, 9, 13)
    args = (keypoints, visible, 9, 13, sigma, rounding, 9, expected, torch.float32)
    maps = [launch_encode(*args, block_rows=rows, block_maps=num) for rows, num in BLOCKS]
    for other in maps[1:]:
        assert torch.equal(other, maps[0])


# --------------------------------------------------------------------------- heatmap_loss


def loss_and_grad(logits, keypoints, visible, backend, weights=None, **args):
    """``(value, d(weighted sum of value)/d logits)`` through the public API and autograd."""
    logits = logits.detach().clone().requires_grad_()
    value = h3r_kernels.heatmap_loss(logits, keypoints, visible, backend=backend, **args)
    (value.sum() if weights is None else (value * weights).sum()).backward()
    return value.detach(), logits.grad


@pytest.mark.parametrize("loss", ["bce", "mse"])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_heatmap_loss_matches_reference(loss, reduction):
    for ((height, width), dtype), sigma in itertools.product(shape_dtype_cases(), [0.0, 1.5]):
        keypoints, visible = make_keypoints(2, 6, height, width, seed=height)
        vis = None if width == 13 else visible
        logits = (torch.randn(2, 6, height, width, device=DEVICE) * 3).to(dtype)
        args = dict(sigma=sigma, rounding="random", seed=11, loss=loss, reduction=reduction)
        value, grad = loss_and_grad(logits, keypoints, vis, "triton", **args)
        want_value, want_grad = loss_and_grad(logits, keypoints, vis, "reference", **args)
        assert value.dtype == want_value.dtype and value.shape == want_value.shape
        assert grad.dtype == dtype
        value_key, grad_key = loss_keys(dtype, sigma)
        assert_close(value, want_value, value_key)
        assert_close(grad, want_grad, grad_key)


@pytest.mark.parametrize("dtype,rtol", [(torch.float32, 1e-6), (torch.float64, 1e-13)])
def test_bce_is_accurate_for_large_logits(dtype, rtol):
    """``log(1 + exp(-|z|))`` keeps full relative precision where ``exp(-|z|)`` is tiny."""
    logits = torch.linspace(-40, 40, 2 * 3 * 9 * 11, dtype=dtype, device=DEVICE).reshape(2, 3, 9, 11)
    keypoints = torch.rand(2, 3, 2, device=DEVICE) * 8
    args = dict(seed=1, loss="bce", reduction="none")
    value = h3r_kernels.heatmap_loss(logits, keypoints, backend="triton", **args)
    want = h3r_kernels.heatmap_loss(logits, keypoints, backend="reference", **args)
    torch.testing.assert_close(value, want, rtol=rtol, atol=0)


@pytest.mark.parametrize("rounding,sigma", [("nearest", 0.0), ("floor", 2.0), ("none", 1.5)])
def test_heatmap_loss_other_roundings(rounding, sigma):
    keypoints, visible = make_keypoints(3, 4, 5, 7)
    logits = torch.randn(3, 4, 5, 7, device=DEVICE)
    args = dict(sigma=sigma, rounding=rounding, seed=3, loss="mse", reduction="mean")
    value, grad = loss_and_grad(logits, keypoints, visible, "triton", **args)
    want_value, want_grad = loss_and_grad(logits, keypoints, visible, "reference", **args)
    assert_close(value, want_value, torch.float32)
    assert_close(grad, want_grad, torch.float32)


def test_heatmap_loss_target_is_the_encode_target():
    """With mse and zero logits the gradient is -2 t / (n H W): the fused target equals ``encode``'s bit for bit."""
    keypoints, visible = make_keypoints(2, 5, 6, 9)
    logits = torch.zeros(2, 5, 6, 9, device=DEVICE, requires_grad=True)
    value = h3r_kernels.heatmap_loss(logits, keypoints, visible, seed=21, loss="mse", reduction="sum", backend="triton")
    value.backward()
    target = h3r_kernels.encode(keypoints, (6, 9), visible, seed=21, backend="triton")
    assert torch.equal(logits.grad, -2 * target)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_heatmap_loss_without_grad_gives_the_same_value(reduction):
    keypoints, visible = make_keypoints(2, 3, 5, 7)
    logits = torch.randn(2, 3, 5, 7, device=DEVICE)
    args = (keypoints, visible, 1.0, "random", 4, "bce", reduction)
    value, grad = torch.ops.h3r.heatmap_loss(logits, *args, False, "triton")
    value_with, grad_with = torch.ops.h3r.heatmap_loss(logits, *args, True, "triton")
    assert grad.numel() == 0 and grad_with.shape == logits.shape
    assert torch.equal(value, value_with)


def test_heatmap_loss_mean_with_nothing_contributing_is_zero():
    keypoints = torch.full((2, 3, 2), -5.0, device=DEVICE)
    value, grad = loss_and_grad(torch.randn(2, 3, 4, 5, device=DEVICE), keypoints, None, "triton", seed=0)
    assert value.item() == 0 and torch.equal(grad, torch.zeros_like(grad))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_heatmap_loss_weighted_none_reduction(dtype):
    """A (B, K) incoming gradient, and the expanded one of ``value.sum().backward()``."""
    keypoints, visible = make_keypoints(2, 4, 5, 6)
    logits = torch.randn(2, 4, 5, 6, device=DEVICE).to(dtype)
    weights = torch.rand(2, 4, device=DEVICE)
    for w in (weights, None):
        args = dict(seed=8, loss="bce", reduction="none", weights=w)
        _, grad = loss_and_grad(logits, keypoints, visible, "triton", **args)
        _, want = loss_and_grad(logits, keypoints, visible, "reference", **args)
        assert_close(grad, want, dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.float64])
def test_scale_grad_in_place_and_out_of_place_match_reference(dtype):
    from h3r_kernels.triton.loss import heatmap_loss_backward, scale_grad_

    grad = torch.randn(2, 3, 5, 7, device=DEVICE).to(dtype)
    acc = torch.float64 if dtype == torch.float64 else torch.float32
    per_map = torch.tensor([[1.0, 2.5, -0.5], [1.0, 0.0, 3.0]], device=DEVICE, dtype=acc)
    for grad_output, reduction in ((per_map, "none"), (torch.tensor(1.0, dtype=acc, device=DEVICE), "mean"),
                                   (torch.tensor(-1.5, dtype=acc, device=DEVICE), "sum")):
        want = reference.heatmap_loss_backward(grad, grad_output, reduction)
        assert torch.equal(heatmap_loss_backward(grad, grad_output, reduction), want)
        scaled = grad.clone()
        scale_grad_(scaled, grad_output, reduction)
        assert torch.equal(scaled, want)


@pytest.mark.parametrize("loss,sigma,reduction", [("bce", 0.0, "mean"), ("mse", 1.5, "none")])
def test_heatmap_loss_does_not_depend_on_block_size(loss, sigma, reduction):
    from h3r_kernels.triton.loss import launch_heatmap_loss

    keypoints, visible = make_keypoints(2, 3, 9, 13)
    logits = torch.randn(2, 3, 9, 13, device=DEVICE)
    args = (logits, keypoints, visible, sigma, "random", 6, loss, reduction, True)
    results = [launch_heatmap_loss(*args, block_rows=rows, block_maps=num) for rows, num in BLOCKS]
    for value, grad in results[1:]:
        assert torch.equal(grad, results[0][1])
        torch.testing.assert_close(value, results[0][0], rtol=1e-6, atol=0)


# --------------------------------------------------------------------------- GPU only

GPU_SHAPES = [(4, 17, 64, 48), (2, 5, 256, 256), (8, 98, 16, 16), (3, 4, 1, 1), (2, 3, 100, 37)]


@pytest.mark.gpu
@pytest.mark.parametrize("shape", GPU_SHAPES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_gpu_encode_and_loss_at_real_shapes(shape, dtype):
    batch, num, height, width = shape
    keypoints, visible = make_keypoints(batch, num, height, width, device="cuda")
    for rounding, sigma, expected in target_cases():
        args = dict(sigma=sigma, rounding=rounding, seed=77, expected=expected, dtype=dtype)
        got = h3r_kernels.encode(keypoints, (height, width), visible, backend="triton", **args)
        want = h3r_kernels.encode(keypoints, (height, width), visible, backend="reference", **args)
        if sigma == 0:
            assert torch.equal(got, want), (rounding, expected)
        else:
            assert_close(got, want, target_key(dtype))
    logits = (torch.randn(shape, device="cuda") * 3).to(dtype)
    for loss, sigma, reduction in (("bce", 0.0, "mean"), ("mse", 2.0, "sum"), ("bce", 1.0, "none")):
        args = dict(sigma=sigma, seed=5, loss=loss, reduction=reduction)
        value, grad = loss_and_grad(logits, keypoints, visible, "triton", **args)
        want_value, want_grad = loss_and_grad(logits, keypoints, visible, "reference", **args)
        value_key, grad_key = loss_keys(dtype, sigma)
        assert_close(value, want_value, value_key)
        assert_close(grad, want_grad, grad_key)
