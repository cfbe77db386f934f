"""GPU-only checks of the whole op layer, for every GPU backend (``triton``, ``cuda``; collected
and skipped without a GPU): parity with the reference at real shapes (many small maps, odd and
large ones), the in-place loss backward, CUDA-graph capture (the one test of it) and torch's
current stream (the one test). The same behaviours at small shapes, on every backend and
device, are in test_op_encode.py, test_op_heatmap_loss.py and test_op_decode.py; opcheck,
torch.compile, empty and non-contiguous inputs run on CUDA tensors in test_ops.py."""
import itertools

import pytest
import torch

import h3r_kernels
from conftest import (
    DECODE_GRAD, NONNEGATIVE_SUM, assert_close, assert_decoded_close, decode_grad_floor, decode_with_grads,
    gpu_backends, loss_keys, make_keypoints, target_key,
)
from h3r_kernels import spec

pytestmark = pytest.mark.gpu
GPU_BACKENDS = gpu_backends()
DTYPES = [torch.float32, torch.float16, torch.bfloat16]
SHAPES = [(4, 17, 64, 48), (2, 5, 256, 256), (8, 98, 16, 16), (3, 4, 1, 1), (2, 3, 17, 13)]


def _inputs(shape, dtype, device="cuda"):
    batch, num, height, width = shape
    keypoints = torch.rand(batch, num, 2, device=device) * torch.tensor([width + 1.0, height + 1.0], device=device) - 1
    visible = torch.rand(batch, num, device=device) > 0.1
    logits = (torch.randn(shape, device=device) * 3).to(dtype)
    return keypoints, visible, logits


# --------------------------------------------------------------------------- parity at real shapes

SEED = 0xDEADBEEF  # above 2**31: the seed is an unsigned 32-bit integer
# (H, W) of encode and the loss: one cell, a small square, odd sizes, real sizes.
PARITY_SHAPES = [(1, 1), (16, 16), (17, 13), (64, 48), (64, 64), (100, 37), (256, 256)]
# (H, W) of decode: one cell, one odd size (Triton: 8 maps per program up to 32x32), real sizes (2 maps per
# program, the second tile), non-square, large.
DECODE_SHAPES = [(1, 1), (17, 13), (64, 48), (64, 64), (128, 96), (256, 256)]
MAP_DTYPES = [torch.float32, torch.float16, torch.bfloat16, torch.float64]


def batch_for(height, width):
    """(B, K): many maps when they are small (784 maps: many programs), fewer when they are large."""
    size = height * width
    return (8, 98) if size <= 256 else (4, 17) if size <= 10_000 else (2, 5)


# Every (rounding, sigma, expected) the API accepts with sigma 0 and 1.5, and wider Gaussians.
TARGETS = [
    (sigma, rounding, expected)
    for rounding, sigma, expected in itertools.product(spec.names(spec.Rounding), (0.0, 1.5), (False, True))
    if not (rounding == "none" and sigma == 0)
] + [(2.0, "random", False), (2.0, "none", False), (3.0, "nearest", False)]


@pytest.mark.parametrize("backend", GPU_BACKENDS)
@pytest.mark.parametrize("sigma,rounding,expected", TARGETS)
@pytest.mark.parametrize("dtype", MAP_DTYPES)
@pytest.mark.parametrize("shape", PARITY_SHAPES)
def test_encode_parity(backend, shape, dtype, sigma, rounding, expected):
    height, width = shape
    batch, num = batch_for(height, width)
    keypoints, visible = make_keypoints(batch, num, height, width, device="cuda")
    for mask in (None, visible):  # None: the non-finite keypoints are visible
        args = dict(sigma=sigma, rounding=rounding, seed=SEED, expected=expected, dtype=dtype)
        got = h3r_kernels.encode(keypoints, shape, mask, backend=backend, **args)
        want = h3r_kernels.encode(keypoints, shape, mask, backend="reference", **args)
        assert got.shape == want.shape and got.dtype == want.dtype
        if sigma == 0:
            assert torch.equal(got, want)  # binary and bilinear targets: bit-identical
        else:
            assert_close(got, want, target_key(dtype))


LOSSES = [
    ("bce", 0.0, "random"), ("mse", 0.0, "random"), ("bce", 2.0, "nearest"), ("mse", 2.0, "random"),
    ("bce", 1.5, "none"), ("bce", 1.0, "random"),
]


@pytest.mark.parametrize("backend", GPU_BACKENDS)
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("loss,sigma,rounding", LOSSES)
@pytest.mark.parametrize("dtype", MAP_DTYPES)
@pytest.mark.parametrize("shape", PARITY_SHAPES)
def test_loss_parity_and_inplace_backward(backend, shape, dtype, loss, sigma, rounding, reduction):
    """Value and gradient through autograd with the incoming gradient of ``value.sum()`` (1,
    expanded for ``none``) and of ``(3 * value).sum()`` (the in-place scaling of the saved
    gradient), and the same value without a gradient."""
    height, width = shape
    batch, num = batch_for(height, width)
    keypoints, visible = make_keypoints(batch, num, height, width, device="cuda")
    generator = torch.Generator().manual_seed(2)
    logits = (torch.randn(batch, num, height, width, generator=generator) * 3).to(dtype).cuda()
    args = dict(sigma=sigma, rounding=rounding, seed=SEED, loss=loss, reduction=reduction)
    value_key, grad_key = loss_keys(dtype, sigma)
    for scale in (None, 3.0):
        results = []
        for name in (backend, "reference"):
            z = logits.clone().requires_grad_()
            value = h3r_kernels.heatmap_loss(z, keypoints, visible, backend=name, **args)
            (value.sum() if scale is None else (value * scale).sum()).backward()
            results.append((value.detach(), z.grad))
        (value, grad), (want_value, want_grad) = results
        assert value.dtype == want_value.dtype and value.shape == want_value.shape
        assert grad.dtype == dtype and grad.shape == logits.shape
        assert_close(value, want_value, value_key)
        assert_close(grad, want_grad, grad_key)
    value_only = h3r_kernels.heatmap_loss(logits, keypoints, visible, backend=backend, **args)
    assert torch.equal(value_only, value)  # the same fixed-order sums without the gradient


@pytest.mark.parametrize("backend", GPU_BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_loss_autograd_with_per_map_incoming_gradient(backend, dtype):
    batch, num, height, width = 4, 17, 64, 48
    keypoints, _ = make_keypoints(batch, num, height, width, device="cuda")
    logits = torch.randn(batch, num, height, width, device="cuda").to(dtype)
    weights = torch.rand(batch, num, device="cuda")
    grads = []
    for name in (backend, "reference"):
        z = logits.clone().requires_grad_()
        value = h3r_kernels.heatmap_loss(z, keypoints, seed=SEED, reduction="none", backend=name)
        (value * weights).sum().backward()
        grads.append(z.grad)
    assert_close(grads[0], grads[1], dtype)


@pytest.mark.parametrize("backend", GPU_BACKENDS)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_weighted_loss_with_float_mask_and_poisoned_masked_maps(backend, shape, dtype, reduction):
    """Weights, a floating mask (NaN: invisible) and NaN/inf logits in every masked map, at real
    shapes (the vectorised paths): parity with the reference, finite, and blind to the poison."""
    keypoints, visible, logits = _inputs(shape, dtype)
    batch, num = shape[:2]
    weight = torch.rand(batch, num, device="cuda") * 2
    weight[torch.rand(batch, num, device="cuda") < 0.2] = 0.0
    mask = torch.where(visible, torch.rand(batch, num, device="cuda") + 0.5, torch.tensor(float("nan"), device="cuda"))
    masked = ~visible | (weight == 0)
    poisoned = logits.clone()
    poisoned[masked] = float("nan")
    poisoned[..., 0, 0][masked] = float("inf")
    results = []
    for name, z in ((backend, poisoned), ("reference", logits)):
        z = z.clone().requires_grad_()
        value = h3r_kernels.heatmap_loss(z, keypoints, mask, weight=weight, seed=5, reduction=reduction, backend=name)
        (value * 2.0).sum().backward()
        results.append((value, z.grad))
    (value, grad), (want_value, want_grad) = results
    assert torch.isfinite(value).all() and torch.isfinite(grad.float()).all() and (grad[masked] == 0).all()
    # Weights >= 0: every value, however small next to the largest, to its own precision.
    assert_close(value, want_value, (NONNEGATIVE_SUM, torch.float32))
    assert_close(grad, want_grad, loss_keys(dtype, 0.0)[1])


@pytest.mark.parametrize("backend", GPU_BACKENDS)
@pytest.mark.parametrize("shape", [(4, 17, 64, 48), (8, 98, 16, 16)])
@pytest.mark.parametrize("method,k,weights", [("topk", 9, "softmax"), ("topk", 9, "linear"), ("local", 1, "linear"), ("argmax", 1, "softmax")])
def test_decode_non_finite_maps_parity(backend, shape, method, k, weights):
    maps = torch.rand(shape, device="cuda")
    special = torch.rand(shape[:2], device="cuda")
    maps[special < 0.2] = float("-inf")
    maps[..., 3, 5][special > 0.8] = float("nan")
    maps[..., 7, 2][(special > 0.5) & (special <= 0.8)] = float("inf")
    maps[..., 7, 3][(special > 0.6) & (special <= 0.8)] = float("inf")
    results = []
    for name in (backend, "reference"):
        m = maps.clone().requires_grad_()
        coords, scores = h3r_kernels.decode(m, method=method, k=k, weights=weights, backend=name)
        (grad,) = torch.autograd.grad((coords, scores), m, (torch.ones_like(coords), torch.ones_like(scores)))
        results.append((coords, scores, grad))
    (coords, scores, grad), (want_coords, want_scores, want_grad) = results
    assert_close(coords, want_coords, (NONNEGATIVE_SUM, torch.float32))
    torch.testing.assert_close(scores, want_scores, rtol=0, atol=0, equal_nan=True)  # the maximum, exactly
    assert_close(grad, want_grad, (DECODE_GRAD, torch.float32), atol_floor=decode_grad_floor(torch.float32, *shape[-2:]))
    assert torch.equal(torch.isnan(coords).all(-1), special > 0.8)


@pytest.mark.parametrize("backend", GPU_BACKENDS)
def test_second_backward_through_inplace_gradient_raises(backend):
    keypoints, visible, logits = _inputs((2, 3, 8, 8), torch.float32)
    logits.requires_grad_()
    value = h3r_kernels.heatmap_loss(logits, keypoints, visible, seed=1, backend=backend)
    value.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        value.backward()


DECODES = [
    ("topk", 1, "softmax", 3),
    ("topk", 9, "softmax", 3),
    ("topk", 9, "linear", 3),
    ("topk", 32, "softmax", 3),
    ("topk", 32, "linear", 3),
    ("topk", 17, "linear", 3),
    ("topk", 25, "linear", 3),
    ("local", 9, "softmax", 3),
    ("local", 9, "linear", 5),
    ("local", 9, "softmax", 1),
    ("local", 9, "softmax", 5),
    ("argmax", 9, "softmax", 3),
    ("argmax", 9, "linear", 3),
    ("argmax", 1, "linear", 3),
]
KINDS = ["random", "ties", "negative", "signed", "signed-ties"]
SIGNED = ("signed", "signed-ties")  # cells <= 0 among positive ones: they matter to linear weights alone


def make_heatmaps(kind, batch, num, height, width, dtype, linear):
    """``random`` (probabilities for linear weights), ``ties`` (four levels), ``negative`` (all < 0),
    ``signed`` (uniform over [-0.2, 0.8): the cells <= 0 take no linear weight), ``signed-ties``
    (those rounded to halves: 0, 0.5 and 1, zeros taking no linear weight)."""
    generator = torch.Generator().manual_seed(3)
    shape = (batch, num, height, width)
    if kind == "random":
        maps = torch.randn(shape, generator=generator) * 2
        maps = maps.sigmoid() if linear else maps
    elif kind == "ties":
        maps = torch.randint(0, 4, shape, generator=generator) / 4
    elif kind == "negative":
        maps = -(torch.randint(1, 5, shape, generator=generator) / 4)
    else:
        maps = torch.rand(shape, generator=generator) - 0.2
        maps = (maps * 2).round() / 2 if kind == "signed-ties" else maps
    return maps.to(dtype).cuda()


@pytest.mark.parametrize("backend", GPU_BACKENDS)
@pytest.mark.parametrize(
    "method,k,weights,window,kind",
    [(*decoding, kind) for decoding in DECODES for kind in KINDS if decoding[2] == "linear" or kind not in SIGNED],
)
@pytest.mark.parametrize("dtype", MAP_DTYPES)
@pytest.mark.parametrize("shape", DECODE_SHAPES)
def test_decode_parity(backend, shape, dtype, method, k, weights, window, kind):
    height, width = shape
    if method == "topk" and k > height * width:
        pytest.skip("k > H*W")
    batch, num = batch_for(height, width)
    heatmaps = make_heatmaps(kind, batch, num, height, width, dtype, weights == "linear")
    accumulate = torch.float64 if dtype == torch.float64 else torch.float32
    generator = torch.Generator().manual_seed(4)
    grad_coords = torch.randn(batch, num, 2, generator=generator).to(accumulate).cuda()
    grad_scores = torch.randn(batch, num, generator=generator).to(accumulate).cuda()
    got = decode_with_grads(heatmaps, backend, method, k, weights, window, grad_coords, grad_scores)
    want = decode_with_grads(heatmaps, "reference", method, k, weights, window, grad_coords, grad_scores)
    coords, scores, _, grad = got
    assert coords.dtype == accumulate and scores.dtype == accumulate and grad.dtype == dtype
    assert_decoded_close(got, want)


def _training_step(keypoints, visible, logits, grad_output, backend):
    """One call of every op and backward, as a training step makes them."""
    height, width = logits.shape[-2:]
    target = h3r_kernels.encode(keypoints, (height, width), visible, seed=9, dtype=torch.bfloat16, backend=backend)
    z = logits.detach().requires_grad_()
    value = h3r_kernels.heatmap_loss(z, keypoints, visible, seed=9, backend=backend)
    (grad,) = torch.autograd.grad(value, z, grad_output)  # the loss backward, scaled by grad_output
    maps = logits.detach().requires_grad_()
    coords, scores = h3r_kernels.decode(maps, method="topk", k=9, weights="softmax", backend=backend)
    (decode_grad,) = torch.autograd.grad((coords, scores), maps, (torch.ones_like(coords), torch.ones_like(scores)))
    local, _ = h3r_kernels.decode(logits.sigmoid(), method="local", weights="linear", backend=backend)
    return target, value.detach(), grad, coords.detach(), scores.detach(), decode_grad, local


@pytest.mark.parametrize("backend", gpu_backends())
def test_cuda_graph_capture_and_replay(backend):
    """Every op and backward captured in one graph: replays with new keypoints, mask and logits
    give the bits of eager calls (deterministic kernels) and the reference's values."""
    shape = (4, 17, 64, 48)
    keypoints, visible, logits = _inputs(shape, torch.float32)
    grad_output = torch.tensor(0.5, device="cuda")
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm-up: compile and load the kernels outside the capture
        for _ in range(2):
            _training_step(keypoints, visible, logits, grad_output, backend)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        captured = _training_step(keypoints, visible, logits, grad_output, backend)
    for step in range(2):
        new_keypoints, new_visible = make_keypoints(*shape, seed=10 + step, device="cuda")
        keypoints.copy_(new_keypoints)
        visible.copy_(new_visible)
        logits.copy_(torch.randn(shape, device="cuda") * 3)
        graph.replay()
        torch.cuda.synchronize()
        eager = _training_step(keypoints, visible, logits, grad_output, backend)
        for replayed, direct in zip(captured, eager):
            assert torch.equal(replayed, direct)
        want = _training_step(keypoints, visible, logits, grad_output, "reference")
        assert torch.equal(captured[0], want[0])  # binary targets: bit-identical
        for got, expected in zip(captured[1:3], want[1:3]):
            assert_close(got, expected, torch.float32)
        assert torch.equal(captured[4], want[4])  # scores: the maximum, exactly
        assert_close(captured[3], want[3], (NONNEGATIVE_SUM, torch.float32))
        assert_close(captured[5], want[5], (DECODE_GRAD, torch.float32), atol_floor=decode_grad_floor(torch.float32, 64, 48))
        assert_close(captured[6], want[6], (NONNEGATIVE_SUM, torch.float32))


def test_seed_none_inside_capture_is_refused():
    keypoints, visible, _ = _inputs((2, 3, 8, 8), torch.float32)
    graph = torch.cuda.CUDAGraph()
    with pytest.raises(RuntimeError, match="seed=None cannot draw a seed inside CUDA-graph capture"):
        with torch.cuda.graph(graph):
            h3r_kernels.encode(keypoints, (8, 8), visible)


@pytest.mark.parametrize("backend", gpu_backends())
def test_kernels_run_on_torch_current_stream(backend):
    """Inputs produced late on a busy side stream, every op (and backward) launched there: a
    launch on another stream would read stale inputs."""
    shape = (16, 98, 64, 64)
    keypoints = torch.zeros(shape[0], shape[1], 2, device="cuda")
    visible = torch.zeros(shape[:2], dtype=torch.bool, device="cuda")
    logits = torch.zeros(shape, device="cuda")
    new_keypoints, new_visible, new_logits = _inputs(shape, torch.float32)
    grad_output = torch.tensor(0.5, device="cuda")
    torch.cuda.synchronize()
    side = torch.cuda.Stream()
    with torch.cuda.stream(side):
        torch.cuda._sleep(50_000_000)
        keypoints.copy_(new_keypoints)
        visible.copy_(new_visible)
        logits.copy_(new_logits)
        got = _training_step(keypoints, visible, logits, grad_output, backend)
    side.synchronize()
    want = _training_step(new_keypoints, new_visible, new_logits, grad_output, "reference")
    assert torch.equal(got[0], want[0])
    for a, b in zip(got[1:3], want[1:3]):
        assert_close(a, b, torch.float32)
    assert torch.equal(got[4], want[4])
    assert_close(got[3], want[3], (NONNEGATIVE_SUM, torch.float32))
    assert_close(got[5], want[5], (DECODE_GRAD, torch.float32), atol_floor=decode_grad_floor(torch.float32, 64, 64))
