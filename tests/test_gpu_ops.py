"""GPU-only checks of the whole op layer, for every GPU backend present: parity with the
reference at real shapes, the in-place loss backward, CUDA graphs, streams and opcheck."""
import pytest
import torch

import h3r_kernels
from conftest import available_backends

pytestmark = pytest.mark.gpu
GPU_BACKENDS = [b for b in available_backends("cuda") if b != "reference"] if torch.cuda.is_available() else []
DTYPES = [torch.float32, torch.float16, torch.bfloat16]
SHAPES = [(4, 17, 64, 48), (2, 5, 256, 256), (8, 98, 16, 16), (3, 4, 1, 1), (2, 3, 17, 13)]


def _inputs(shape, dtype, device="cuda"):
    batch, num, height, width = shape
    keypoints = torch.rand(batch, num, 2, device=device) * torch.tensor([width + 1.0, height + 1.0], device=device) - 1
    visible = torch.rand(batch, num, device=device) > 0.1
    logits = (torch.randn(shape, device=device) * 3).to(dtype)
    return keypoints, visible, logits


@pytest.mark.parametrize("backend", GPU_BACKENDS)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("sigma,rounding,expected", [(0.0, "random", False), (0.0, "random", True), (2.0, "nearest", False), (1.5, "none", False)])
def test_encode_parity(backend, shape, sigma, rounding, expected):
    keypoints, visible, _ = _inputs(shape, torch.float32)
    args = dict(sigma=sigma, rounding=rounding, seed=1234, expected=expected)
    got = h3r_kernels.encode(keypoints, shape[2:], visible, backend=backend, **args)
    want = h3r_kernels.encode(keypoints, shape[2:], visible, backend="reference", **args)
    if sigma == 0 and not expected:
        assert torch.equal(got, want)
    else:
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("backend", GPU_BACKENDS)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("loss,sigma,reduction", [("bce", 0.0, "mean"), ("mse", 2.0, "sum"), ("bce", 0.0, "none")])
def test_loss_parity_and_inplace_backward(backend, shape, dtype, loss, sigma, reduction):
    keypoints, visible, logits = _inputs(shape, dtype)
    results = []
    for name in (backend, "reference"):
        z = logits.clone().requires_grad_()
        value = h3r_kernels.heatmap_loss(z, keypoints, visible, sigma=sigma, seed=77, loss=loss, reduction=reduction, backend=name)
        (value * 3.0).sum().backward()  # an incoming gradient other than 1
        results.append((value, z.grad))
    (value, grad), (want_value, want_grad) = results
    tol = dict(rtol=1e-4, atol=1e-5) if dtype == torch.float32 else dict(rtol=2e-2, atol=1e-3)
    torch.testing.assert_close(value, want_value, **tol)
    torch.testing.assert_close(grad.float(), want_grad.float(), rtol=tol["rtol"], atol=tol["atol"] * float(grad.abs().max().clamp(min=1e-12)))


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
    tol = dict(rtol=1e-4, atol=1e-5) if dtype == torch.float32 else dict(rtol=2e-2, atol=1e-3)
    torch.testing.assert_close(value, want_value, **tol)
    torch.testing.assert_close(grad.float(), want_grad.float(), rtol=tol["rtol"], atol=tol["atol"] * float(want_grad.abs().max().clamp(min=1e-12)))


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
    for got, want in zip(*results):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4, equal_nan=True)
    assert torch.equal(torch.isnan(results[0][0]).all(-1), special > 0.8)


@pytest.mark.parametrize("backend", GPU_BACKENDS)
def test_second_backward_through_inplace_gradient_raises(backend):
    keypoints, visible, logits = _inputs((2, 3, 8, 8), torch.float32)
    logits.requires_grad_()
    value = h3r_kernels.heatmap_loss(logits, keypoints, visible, seed=1, backend=backend)
    value.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        value.backward()


@pytest.mark.parametrize("backend", GPU_BACKENDS)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("method,k,weights", [("topk", 9, "softmax"), ("topk", 25, "linear"), ("local", 1, "softmax"), ("argmax", 1, "softmax")])
def test_decode_parity(backend, shape, dtype, method, k, weights):
    if k > shape[2] * shape[3]:
        pytest.skip("k > H*W")
    maps = torch.randn(shape, device="cuda").to(dtype)
    if weights == "linear":
        maps = maps.float().sigmoid().to(dtype)
    results = []
    for name in (backend, "reference"):
        m = maps.clone().requires_grad_()
        coords, scores = h3r_kernels.decode(m, method=method, k=k, weights=weights, backend=name)
        (coords.sum() + scores.sum()).backward()
        results.append((coords, scores, m.grad))
    (coords, scores, grad), (want_coords, want_scores, want_grad) = results
    torch.testing.assert_close(scores, want_scores)
    tol = dict(rtol=1e-4, atol=1e-4) if dtype == torch.float32 else dict(rtol=2e-2, atol=2e-2)
    torch.testing.assert_close(coords, want_coords, **tol)
    torch.testing.assert_close(grad.float(), want_grad.float(), **tol)


@pytest.mark.parametrize("backend", GPU_BACKENDS)
def test_cuda_graph_capture_and_replay(backend):
    shape = (8, 17, 64, 48)
    keypoints, visible, logits = _inputs(shape, torch.float32)
    static_logits = logits.clone().requires_grad_()

    def step():
        static_logits.grad = None
        value = h3r_kernels.heatmap_loss(static_logits, keypoints, visible, seed=9, backend=backend)
        value.backward()
        target = h3r_kernels.encode(keypoints, shape[2:], visible, seed=9, backend=backend)
        coords, scores = h3r_kernels.decode(static_logits.detach(), backend=backend)
        return value.detach(), static_logits.grad, target, coords, scores

    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(2):
            step()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    static_logits.grad = None
    with torch.cuda.graph(graph):
        static_value = h3r_kernels.heatmap_loss(static_logits, keypoints, visible, seed=9, backend=backend)
        static_value.backward()
        static_target = h3r_kernels.encode(keypoints, shape[2:], visible, seed=9, backend=backend)
        static_coords, static_scores = h3r_kernels.decode(static_logits.detach(), backend=backend)
    for _ in range(2):
        with torch.no_grad():
            static_logits.copy_(torch.randn(shape, device="cuda") * 3)
        graph.replay()
        torch.cuda.synchronize()
        z = static_logits.detach().clone().requires_grad_()
        want = h3r_kernels.heatmap_loss(z, keypoints, visible, seed=9, backend="reference")
        want.backward()
        torch.testing.assert_close(static_value, want, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(static_logits.grad, z.grad, rtol=1e-4, atol=1e-9)
        assert torch.equal(static_target, h3r_kernels.encode(keypoints, shape[2:], visible, seed=9, backend="reference"))
        want_coords, want_scores = h3r_kernels.decode(z.detach(), backend="reference")
        torch.testing.assert_close(static_coords, want_coords, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(static_scores, want_scores)


def test_seed_none_inside_capture_is_refused():
    keypoints, visible, _ = _inputs((2, 3, 8, 8), torch.float32)
    graph = torch.cuda.CUDAGraph()
    with pytest.raises(RuntimeError, match="seed=None cannot draw a seed inside CUDA-graph capture"):
        with torch.cuda.graph(graph):
            h3r_kernels.encode(keypoints, (8, 8), visible)


@pytest.mark.parametrize("backend", GPU_BACKENDS)
def test_non_default_stream(backend):
    shape = (16, 98, 64, 64)
    keypoints, visible, logits = _inputs(shape, torch.bfloat16)
    want_target = h3r_kernels.encode(keypoints, shape[2:], visible, seed=3, backend="reference")
    want_coords, _ = h3r_kernels.decode(logits, backend="reference")
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        torch.cuda._sleep(10_000_000)  # keep the side stream busy: a launch on the wrong stream races
        target = h3r_kernels.encode(keypoints, shape[2:], visible, seed=3, backend=backend)
        coords, _ = h3r_kernels.decode(logits, backend=backend)
    torch.cuda.current_stream().wait_stream(stream)
    assert torch.equal(target, want_target)
    torch.testing.assert_close(coords, want_coords, rtol=2e-2, atol=2e-2)


@pytest.mark.parametrize("backend", GPU_BACKENDS)
def test_opcheck_on_cuda(backend):
    keypoints, visible, logits = _inputs((2, 3, 6, 7), torch.float32)
    torch.library.opcheck(torch.ops.h3r.encode.default, (keypoints, visible, 6, 7, 0.0, "random", 3, False, torch.float32, backend))
    torch.library.opcheck(
        torch.ops.h3r.heatmap_loss.default,
        (logits.requires_grad_(), keypoints, visible, 0.0, "random", 3, "bce", "mean", True, backend),
    )
    torch.library.opcheck(torch.ops.h3r.heatmap_loss_scale_grad_.default, (torch.randn(2, 3, 6, 7, device="cuda"), torch.tensor(2.0, device="cuda"), "mean", backend))
    maps = torch.randn(2, 3, 6, 7, device="cuda", requires_grad=True)
    torch.library.opcheck(torch.ops.h3r.decode.default, (maps, "topk", 9, "softmax", 3, backend))


@pytest.mark.parametrize("backend", GPU_BACKENDS)
def test_compile_on_cuda(backend):
    keypoints, visible, logits = _inputs((4, 17, 32, 24), torch.float32)
    logits.requires_grad_()

    def step(z):
        value = h3r_kernels.heatmap_loss(z, keypoints, visible, seed=2, backend=backend)
        coords, _ = h3r_kernels.decode(z.detach(), backend=backend)
        return value, coords

    value, coords = torch.compile(step, fullgraph=True)(logits)
    value.backward()
    want_value, want_coords = step(logits.detach().clone().requires_grad_())
    torch.testing.assert_close(value, want_value)
    torch.testing.assert_close(coords, want_coords)
