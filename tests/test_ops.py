"""The op contract, on every backend and device (``backend``, ``device``: conftest.py; the CUDA
pairs are collected and skipped without a GPU): registration (opcheck), gradients (gradcheck),
torch.compile, layouts, empty batches; then backend selection and the error for each bad input."""
import pytest
import torch

import h3r_kernels


def _keypoints(batch=2, num=3, height=6, width=7, device="cpu"):
    return (torch.rand(batch, num, 2) * torch.tensor([width - 1.0, height - 1.0])).to(device)


def _separated_maps(batch, num, height, width, dtype=torch.float64, device="cpu"):
    """Maps whose values are 0.37 apart, all > 0: a finite-difference step changes neither the
    selection nor a ``max(v, 0)``."""
    perm = torch.stack([torch.randperm(height * width) for _ in range(batch * num)])
    return (perm.to(dtype) * 0.37 + 0.1).reshape(batch, num, height, width).to(device)


def test_opcheck_encode(backend, device):
    kp = _keypoints(device=device)
    visible = (torch.rand(2, 3) > 0.3).to(device)
    for sigma, rounding, expected in ((0.0, "random", False), (1.5, "nearest", True), (2.0, "none", False)):
        args = (kp, visible, 6, 7, sigma, rounding, 3, expected, torch.float32, backend)
        torch.library.opcheck(torch.ops.h3r.encode.default, args)


@pytest.mark.parametrize("reduction", ["mean", "none"])
@pytest.mark.parametrize("loss,sigma", [("bce", 0.0), ("mse", 1.0)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_opcheck_heatmap_loss(backend, device, reduction, loss, sigma, dtype):
    """float16 logits save a float32 gradient (spec.saved_grad_dtype); the backward returns float16."""
    logits = torch.randn(2, 3, 6, 7, device=device).to(dtype).requires_grad_()
    args = (logits, _keypoints(device=device), None, sigma, "random", 3, loss, reduction, True, backend)
    torch.library.opcheck(torch.ops.h3r.heatmap_loss.default, args)
    grad = torch.randn(2, 3, 6, 7, device=device)
    grad_output = torch.randn(2, 3, device=device) if reduction == "none" else torch.tensor(1.7, device=device)
    torch.library.opcheck(torch.ops.h3r.heatmap_loss_backward.default, (grad, grad_output, reduction, backend, dtype))
    torch.library.opcheck(torch.ops.h3r.heatmap_loss_scale_grad_.default, (grad, grad_output, reduction, backend))


@pytest.mark.parametrize(
    "method,weights,window", [("topk", "softmax", 3), ("topk", "linear", 3), ("local", "softmax", 3), ("local", "linear", 5), ("argmax", "linear", 3)]
)
def test_opcheck_decode(backend, device, method, weights, window):
    maps = _separated_maps(2, 3, 5, 6, torch.float32, device=device).requires_grad_()
    torch.library.opcheck(torch.ops.h3r.decode.default, (maps, method, 4, weights, window, backend))
    indices = torch.ops.h3r.decode.default(maps.detach(), method, 4, weights, window, backend)[2]
    grads = (torch.randn(2, 3, 2, device=device), torch.randn(2, 3, device=device))
    torch.library.opcheck(torch.ops.h3r.decode_backward.default, (maps.detach(), indices, *grads, method, weights, backend))


@pytest.mark.parametrize("loss,sigma,reduction", [("bce", 0.0, "mean"), ("mse", 1.5, "sum"), ("bce", 0.0, "none")])
def test_gradcheck_heatmap_loss(backend, device, loss, sigma, reduction):
    logits = torch.randn(2, 2, 4, 5, dtype=torch.float64, device=device, requires_grad=True)
    kp = _keypoints(2, 2, 4, 5, device=device)
    fn = lambda z: h3r_kernels.heatmap_loss(z, kp, sigma=sigma, seed=4, loss=loss, reduction=reduction, backend=backend)
    assert torch.autograd.gradcheck(fn, (logits,))


@pytest.mark.parametrize(
    "method,weights", [("topk", "softmax"), ("topk", "linear"), ("local", "softmax"), ("local", "linear"), ("argmax", "softmax")]
)
def test_gradcheck_decode(backend, device, method, weights):
    maps = _separated_maps(1, 2, 4, 5, device=device).requires_grad_()  # 40 inputs: the interpreter pays per call
    fn = lambda m: h3r_kernels.decode(m / 10, method=method, k=5, weights=weights, backend=backend)
    assert torch.autograd.gradcheck(fn, (maps,))


def test_decode_argmax_gradient_reaches_only_the_peak_through_scores():
    maps = _separated_maps(1, 2, 4, 4).requires_grad_()
    coords, scores = h3r_kernels.decode(maps, method="argmax")
    (coords.sum() + scores.sum()).backward()
    flat = maps.grad.flatten(-2)
    assert (flat.sum(-1) == 1).all() and ((flat != 0).sum(-1) == 1).all()


def test_compile_fullgraph(backend, device):
    def step(logits, keypoints):
        loss = h3r_kernels.heatmap_loss(logits, keypoints, seed=5, backend=backend)
        target = h3r_kernels.encode(keypoints, (6, 7), seed=5, backend=backend)
        coords, _ = h3r_kernels.decode(logits.sigmoid(), weights="linear", backend=backend)
        return loss, target, coords

    logits = torch.randn(2, 3, 6, 7, device=device, requires_grad=True)
    kp = _keypoints(device=device)
    # On the CPU aot_eager (the ops' registration: fakes, autograd) spares Inductor's C++ build.
    compiled = torch.compile(step, fullgraph=True, backend="inductor" if device == "cuda" else "aot_eager")
    got = compiled(logits, kp)
    want = step(logits, kp)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b)
    got[0].backward()
    assert logits.grad is not None and torch.isfinite(logits.grad).all()


@pytest.mark.parametrize("layout", ["permuted", "sliced"])
def test_non_contiguous_inputs(backend, device, layout):
    base = torch.randn(2, 3, 7, 6) if layout == "permuted" else torch.randn(2, 3, 6, 14)
    base = base.to(device)
    logits = base.transpose(-1, -2) if layout == "permuted" else base[..., ::2]
    kp_base = (torch.rand(3, 2, 2) * 5).to(device)
    kp = kp_base.transpose(0, 1)
    assert not logits.is_contiguous() and not kp.is_contiguous()
    logits.requires_grad_()
    value = h3r_kernels.heatmap_loss(logits, kp, seed=2, reduction="none", backend=backend)
    value.sum().backward()  # an expanded incoming gradient
    contiguous = logits.detach().contiguous().requires_grad_()
    want = h3r_kernels.heatmap_loss(contiguous, kp.contiguous(), seed=2, reduction="none", backend="reference")
    want.sum().backward()
    torch.testing.assert_close(value, want)
    torch.testing.assert_close(logits.grad, contiguous.grad)
    torch.testing.assert_close(
        h3r_kernels.decode(logits.detach(), backend=backend), h3r_kernels.decode(contiguous.detach(), backend="reference")
    )


@pytest.mark.parametrize("batch,num", [(0, 3), (2, 0), (0, 0)])
def test_empty_batches(backend, device, batch, num):
    kp = torch.zeros(batch, num, 2, device=device)
    for dtype in (torch.float32, torch.float16):
        maps = h3r_kernels.encode(kp, (4, 5), sigma=1.0, seed=0, dtype=dtype, backend=backend)
        assert maps.shape == (batch, num, 4, 5) and maps.dtype == dtype
    for reduction, shape in (("mean", ()), ("sum", ()), ("none", (batch, num))):
        logits = torch.zeros(batch, num, 4, 5, device=device, requires_grad=True)
        value = h3r_kernels.heatmap_loss(logits, kp, seed=0, reduction=reduction, backend=backend)
        value.sum().backward()
        assert value.shape == shape and torch.equal(value, torch.zeros(shape, device=device))
        assert logits.grad.shape == logits.shape
    for method, slots in (("topk", 4), ("local", 9), ("argmax", 1)):
        maps = torch.zeros(batch, num, 4, 5, device=device, requires_grad=True)
        coords, scores, indices = torch.ops.h3r.decode(maps, method, 4, "softmax", 3, backend)
        assert coords.shape == (batch, num, 2) and scores.shape == (batch, num) and indices.shape == (batch, num, slots)
        (coords.sum() + scores.sum()).backward()
        assert maps.grad.shape == maps.shape


def test_backends_report():
    info = h3r_kernels.backends()
    assert set(info) == {"reference", "triton", "cuda"}
    assert info["reference"]["available"]
    for entry in info.values():
        assert isinstance(entry["reason"], str) and entry["reason"]
    if not torch.cuda.is_available():
        assert not info["cuda"]["available"]


def test_backend_environment_variable(monkeypatch):
    monkeypatch.setenv("H3R_BACKEND", "nonsense")
    with pytest.raises(ValueError, match="H3R_BACKEND: expected"):
        h3r_kernels.encode(_keypoints(), (6, 7))
    monkeypatch.setenv("H3R_BACKEND", "reference")
    assert h3r_kernels.encode(_keypoints(), (6, 7), seed=1).shape == (2, 3, 6, 7)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only error")
def test_forcing_cuda_backend_on_cpu_says_why():
    with pytest.raises(RuntimeError, match="backend='cuda' is not available here"):
        h3r_kernels.encode(_keypoints(), (6, 7), backend="cuda")


# --------------------------------------------------------------------------- bad input

KP = torch.zeros(2, 3, 2)
MAPS = torch.zeros(2, 3, 4, 5)


@pytest.mark.parametrize(
    "call,match",
    [
        (lambda: h3r_kernels.encode([[0.0, 0.0]], (4, 4)), "keypoints: expected a torch.Tensor"),
        (lambda: h3r_kernels.encode(torch.zeros(2, 3), (4, 4)), r"keypoints: expected a \(B, K, 2\)"),
        (lambda: h3r_kernels.encode(torch.zeros(2, 3, 3), (4, 4)), r"keypoints: expected a \(B, K, 2\)"),
        (lambda: h3r_kernels.encode(KP.half(), (4, 4)), "keypoints: expected dtype float32 or float64"),
        (lambda: h3r_kernels.encode(KP, (4,)), r"heatmap_size: expected \(H, W\)"),
        (lambda: h3r_kernels.encode(KP, (0, 4)), r"heatmap_size: expected \(H, W\) with H, W >= 1"),
        (lambda: h3r_kernels.encode(KP, (4, 4), torch.ones(2, 4, dtype=torch.bool)), r"visible: expected shape \(B, K\)"),
        (lambda: h3r_kernels.encode(KP, (4, 4), torch.ones(2, 3, dtype=torch.complex64)), "visible: expected dtype bool, an integer or a floating"),
        (lambda: h3r_kernels.encode(KP, (4, 4), sigma=-1.0), "sigma: expected a finite number >= 0"),
        (lambda: h3r_kernels.encode(KP, (4, 4), sigma=float("nan")), "sigma: expected a finite number >= 0"),
        (lambda: h3r_kernels.encode(KP, (4, 4), rounding="ceil"), "rounding: expected one of"),
        (lambda: h3r_kernels.encode(KP, (4, 4), rounding="none"), "rounding: 'none' .* needs sigma > 0"),
        (lambda: h3r_kernels.encode(KP, (4, 4), seed=-1), r"seed: expected None or an integer in \[0, 2\*\*32\)"),
        (lambda: h3r_kernels.encode(KP, (4, 4), seed=2**32), r"seed: expected None or an integer"),
        (lambda: h3r_kernels.encode(KP, (4, 4), seed=1.5), r"seed: expected None or an integer"),
        (lambda: h3r_kernels.encode(KP, (4, 4), dtype=torch.int32), "dtype: expected torch.float32"),
        (lambda: h3r_kernels.encode(KP, (4, 4), backend="gpu"), "backend: expected one of"),
        (lambda: h3r_kernels.heatmap_loss(MAPS.long(), KP), "logits: expected dtype float32, float16 or bfloat16"),
        (lambda: h3r_kernels.heatmap_loss(MAPS[0], KP), r"logits: expected a \(B, K, H, W\)"),
        (lambda: h3r_kernels.heatmap_loss(MAPS, KP[:, :2]), r"keypoints: expected \(B, K\) = \(2, 3\) to match logits"),
        (lambda: h3r_kernels.heatmap_loss(MAPS, KP, loss="l1"), "loss: expected one of 'bce', 'mse'"),
        (lambda: h3r_kernels.heatmap_loss(MAPS, KP, reduction="max"), "reduction: expected one of"),
        (lambda: h3r_kernels.heatmap_loss(MAPS, KP, sigma=-2.0), "sigma: expected a finite number >= 0"),
        (lambda: h3r_kernels.decode(MAPS.int()), "heatmaps: expected dtype float32"),
        (lambda: h3r_kernels.decode(MAPS[0]), r"heatmaps: expected a \(B, K, H, W\)"),
        (lambda: h3r_kernels.decode(MAPS, k=0), r"k: expected an integer in \[1, 32\]"),
        (lambda: h3r_kernels.decode(MAPS, k=33), r"k: expected an integer in \[1, 32\]"),
        (lambda: h3r_kernels.decode(MAPS, k=21), r"k: expected 1 <= k <= H\*W = 20"),
        (lambda: h3r_kernels.decode(MAPS, method="mean"), "method: expected one of 'topk', 'local', 'argmax'"),
        (lambda: h3r_kernels.decode(MAPS, weights="uniform"), "weights: expected one of 'softmax', 'linear'"),
        (lambda: h3r_kernels.decode(MAPS, method="local", window=4), "window: expected an odd integer >= 1"),
        (lambda: h3r_kernels.decode(MAPS, method="local", window=0), "window: expected an odd integer >= 1"),
    ],
)
def test_bad_input_is_named(call, match):
    with pytest.raises((ValueError, TypeError), match=match):
        call()


@pytest.mark.gpu
def test_mixed_devices_are_named():
    with pytest.raises(ValueError, match="keypoints: expected device"):
        h3r_kernels.heatmap_loss(MAPS.cuda(), KP)


def test_auto_rule_for_gpu_tensors():
    from h3r_kernels.backends import gpu_preference

    assert gpu_preference("encode", torch.float32, 64 * 64) == ("triton", "cuda")
    assert gpu_preference("decode", torch.float32, 64 * 64) == ("triton", "cuda")
    assert gpu_preference("heatmap_loss", torch.float32, 64 * 64) == ("cuda", "triton")
    assert gpu_preference("heatmap_loss", torch.float32, 16 * 16) == ("triton", "cuda")
    assert gpu_preference("heatmap_loss", torch.bfloat16, 128 * 128) == ("triton", "cuda")
