"""The ``cuda`` backend (csrc/ through CuPy).

Without a GPU: the loader's source lookup, cache-folder setting and error messages. With a
GPU and CuPy (``gpu`` marker): parity with the reference for every op, dtype and option
(targets and selected cells bit-identical, values and gradients within a per-dtype
tolerance), parity with the triton backend, CUDA-graph capture and replay, torch's current
stream, ``torch.library.opcheck`` and the on-disk compile cache.
"""
import importlib
import os
import shutil
import subprocess
import sys
import types
from pathlib import Path

import pytest
import torch

import h3r_kernels
from h3r_kernels import reference
from h3r_kernels.cuda import _module, availability
from h3r_kernels.cuda import decode as cuda_decode
from h3r_kernels.cuda import encode as cuda_encode
from h3r_kernels.cuda import loss as cuda_loss

REPO = Path(__file__).resolve().parent.parent
backend_selection = importlib.import_module("h3r_kernels.backends")  # the module; h3r_kernels.backends is a function
CUDA_READY, CUDA_REASON = availability()


def gpu_test(function):
    """Marks a test ``gpu`` and skips it unless the cuda backend can run here."""
    skip = pytest.mark.skipif(not CUDA_READY, reason=f"cuda backend unavailable: {CUDA_REASON}")
    return pytest.mark.gpu(skip(function))


@pytest.fixture
def fresh_probe():
    """Re-probe backend availability in this test, and again afterwards (it is cached)."""
    backend_selection._probe.cache_clear()
    yield
    backend_selection._probe.cache_clear()


# --------------------------------------------------------------------------- loader, no GPU needed


def test_source_lookup_finds_the_checkout_sources():
    folder = _module.find_source_dir()
    assert folder in _module.SOURCE_DIRS
    assert {path.name for path in folder.iterdir()} >= {_module.HEADER, *_module.SOURCES}


def test_source_lookup_prefers_the_packaged_copy(tmp_path):
    packaged, checkout, partial = tmp_path / "_csrc", tmp_path / "csrc", tmp_path / "partial"
    for folder in (packaged, checkout, partial):
        folder.mkdir()
    for name in (_module.HEADER, *_module.SOURCES):
        shutil.copy(REPO / "csrc" / name, packaged / name)
        shutil.copy(REPO / "csrc" / name, checkout / name)
    shutil.copy(REPO / "csrc" / "encode.cu", partial / "encode.cu")
    assert _module.find_source_dir((partial, packaged, checkout)) == packaged
    assert _module.find_source_dir((partial, checkout)) == checkout


def test_source_lookup_names_the_folders_it_searched(tmp_path):
    with pytest.raises(RuntimeError, match=r"CUDA sources .*not found; looked in: .*nowhere"):
        _module.find_source_dir((tmp_path / "nowhere",))


def test_missing_cupy_is_reported_through_the_public_api(monkeypatch, fresh_probe):
    monkeypatch.setitem(sys.modules, "cupy", None)  # makes `import cupy` raise ImportError
    info = h3r_kernels.backends()["cuda"]
    assert info["available"] is False
    assert "CuPy is not importable" in info["reason"]
    keypoints = torch.rand(2, 3, 2) * 8
    with pytest.raises(RuntimeError, match=r"backend='cuda' is not available here: CuPy is not importable"):
        h3r_kernels.encode(keypoints, (8, 8), seed=1, backend="cuda")
    with pytest.raises(RuntimeError, match="CuPy is not importable"):
        _module.import_cupy()


def test_cache_dir_variable_becomes_cupy_cache_dir(monkeypatch, tmp_path):
    monkeypatch.setenv(_module.CACHE_DIR_ENV, str(tmp_path))
    monkeypatch.delenv("CUPY_CACHE_DIR", raising=False)
    monkeypatch.setitem(sys.modules, "cupy", None)
    with pytest.raises(RuntimeError, match="CuPy is not importable"):
        _module.import_cupy()
    assert os.environ["CUPY_CACHE_DIR"] == str(tmp_path)


def test_cache_dir_variable_set_after_cupy_was_imported_warns(monkeypatch, tmp_path):
    fake = types.ModuleType("cupy")
    monkeypatch.setitem(sys.modules, "cupy", fake)
    monkeypatch.setenv("CUPY_CACHE_DIR", str(tmp_path / "cupy"))
    monkeypatch.setenv(_module.CACHE_DIR_ENV, str(tmp_path / "h3r"))
    with pytest.warns(RuntimeWarning, match="H3R_CUPY_CACHE_DIR=.* is ignored: cupy was imported before"):
        assert _module.import_cupy() is fake
    assert os.environ["CUPY_CACHE_DIR"] == str(tmp_path / "cupy")


@pytest.mark.parametrize(
    "call",
    [
        lambda kp, maps: cuda_encode.encode(kp, None, 8, 8, 0.0, "random", 1, False, torch.float32),
        lambda kp, maps: cuda_loss.heatmap_loss(maps, kp, None, 0.0, "random", 1, "bce", "mean", True),
        lambda kp, maps: cuda_loss.heatmap_loss_backward(maps, torch.tensor(1.0), "mean"),
        lambda kp, maps: cuda_loss.scale_grad_(maps, torch.tensor(1.0), "mean"),
        lambda kp, maps: cuda_decode.decode(maps, "topk", 9, "softmax", 3),
        lambda kp, maps: cuda_decode.decode_backward(
            maps, torch.zeros(2, 3, 9, dtype=torch.int64), torch.zeros(2, 3, 2), torch.zeros(2, 3), "topk", "softmax"
        ),
    ],
    ids=["encode", "heatmap_loss", "heatmap_loss_backward", "scale_grad_", "decode", "decode_backward"],
)
def test_cpu_tensors_are_refused(call):
    with pytest.raises(RuntimeError, match=r"backend='cuda' needs CUDA tensors, got \w+ on cpu"):
        call(torch.rand(2, 3, 2) * 8, torch.randn(2, 3, 8, 8))


def test_cpu_tensors_are_refused_through_the_public_api():
    # Without CuPy or a GPU the backend is unavailable; with them, CPU tensors are refused.
    with pytest.raises(RuntimeError, match=r"needs CUDA tensors|is not available here"):
        h3r_kernels.decode(torch.randn(2, 3, 8, 8), backend="cuda")


def test_availability_gives_a_reason():
    available, reason = availability()
    assert isinstance(available, bool) and reason


@pytest.mark.parametrize("map_size,threads", [(1, 32), (256, 32), (3072, 64), (4096, 64), (16384, 256), (65536, 256)])
def test_threads_per_map(map_size, threads):
    assert _module.threads_per_map(map_size) == threads


# --------------------------------------------------------------------------- GPU parity

SEED = 0xDEADBEEF  # above 2**31: the seed is an unsigned 32-bit integer
SHAPES = [(1, 1), (17, 13), (64, 48), (64, 64), (256, 256)]
DTYPES = [torch.float32, torch.float16, torch.bfloat16, torch.float64]
# dtype -> (rtol, atol as a fraction of the largest expected magnitude)
TOLERANCES = {
    torch.float32: (1e-5, 1e-6),
    torch.float64: (1e-10, 1e-12),
    torch.float16: (2e-3, 1e-3),
    torch.bfloat16: (1.6e-2, 8e-3),
}


def assert_close(actual, expected, dtype, atol_floor=0.0):
    rtol, atol = TOLERANCES[dtype]
    scale = float(expected.abs().nan_to_num(posinf=0.0, neginf=0.0).max()) if expected.numel() else 0.0
    atol = max(atol * scale, atol_floor, 1e-30)
    torch.testing.assert_close(actual, expected, rtol=rtol, atol=atol, equal_nan=True)


def batch_for(height, width):
    """(B, K): several maps, fewer when they are large."""
    return (2, 3) if height * width > 10_000 else (3, 7)


def make_keypoints(batch, num, height, width, generator_seed=0):
    """``(B, K, 2)`` keypoints on and around a (height, width) map, with edge cases first.

    Uniform in [-2, W + 1) x [-2, H + 1), then: integers, half-integers (rounding ties), the
    last cell, a tiny negative x whose fraction rounds to 1 in float32, NaN and infinity.
    """
    generator = torch.Generator().manual_seed(generator_seed)
    points = torch.rand(batch, num, 2, generator=generator) * torch.tensor([width + 3.0, height + 3.0]) - 2
    special = torch.tensor(
        [
            [0.0, 0.0],
            [width - 1.0, height - 1.0],
            [width / 2 + 0.5, height / 2 - 0.5],
            [-1e-9, 0.25],
            [width - 0.5, height - 0.5],
            [float("nan"), 1.0],
            [1.0, float("inf")],
            [-0.5, -0.5],
        ]
    )
    flat = points.view(-1, 2)
    count = min(len(special), flat.shape[0])
    flat[:count] = special[:count]
    return points.cuda()


def make_visible(batch, num, generator_seed=1):
    generator = torch.Generator().manual_seed(generator_seed)
    return (torch.rand(batch, num, generator=generator) > 0.2).cuda()


TARGETS = [
    (0.0, "random", False),
    (0.0, "random", True),
    (0.0, "nearest", False),
    (0.0, "floor", False),
    (2.0, "random", False),
    (1.5, "random", True),
    (2.0, "none", False),
    (3.0, "nearest", False),
]


@gpu_test
@pytest.mark.parametrize("sigma,rounding,expected", TARGETS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
def test_encode_matches_reference(shape, dtype, sigma, rounding, expected):
    height, width = shape
    batch, num = batch_for(height, width)
    keypoints = make_keypoints(batch, num, height, width)
    for visible in (None, make_visible(batch, num)):
        args = (keypoints, visible, height, width, sigma, rounding, SEED, expected, dtype)
        got = cuda_encode.encode(*args)
        want = reference.encode(*args)
        assert got.shape == want.shape and got.dtype == want.dtype
        if sigma == 0:
            assert torch.equal(got, want)  # binary and bilinear targets: bit-identical
        else:
            assert_close(got, want, torch.float32 if dtype == torch.float64 else dtype)


LOSSES = [("bce", 0.0, "random"), ("mse", 0.0, "random"), ("bce", 2.0, "nearest"), ("mse", 2.0, "random"), ("bce", 1.5, "none")]


@gpu_test
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("loss,sigma,rounding", LOSSES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
def test_loss_matches_reference(shape, dtype, loss, sigma, rounding, reduction):
    height, width = shape
    batch, num = batch_for(height, width)
    keypoints = make_keypoints(batch, num, height, width)
    visible = make_visible(batch, num)
    generator = torch.Generator().manual_seed(2)
    logits = (torch.randn(batch, num, height, width, generator=generator) * 3).to(dtype).cuda()
    args = (logits, keypoints, visible, sigma, rounding, SEED, loss, reduction)
    value, grad = cuda_loss.heatmap_loss(*args, True)
    want_value, want_grad = reference.heatmap_loss(*args, True)
    assert value.dtype == want_value.dtype and value.shape == want_value.shape
    assert grad.dtype == dtype and grad.shape == logits.shape
    # Gaussian targets are float32 (exp may differ by an ulp between implementations) for every dtype.
    accumulate = torch.float64 if dtype == torch.float64 and sigma == 0 else torch.float32
    assert_close(value, want_value, accumulate)
    assert_close(grad, want_grad, accumulate if dtype == torch.float64 else dtype)
    value_only, no_grad = cuda_loss.heatmap_loss(*args, False)
    assert no_grad.numel() == 0
    assert torch.equal(value_only, value)  # the same fixed-order sums


@gpu_test
@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_loss_adds_many_maps_in_chunks(reduction):
    batch, num, height, width = 80, 130, 2, 3  # 10400 maps: the per-map sums are added in three chunks
    keypoints = make_keypoints(batch, num, height, width)
    visible = make_visible(batch, num)
    logits = torch.randn(batch, num, height, width, device="cuda")
    args = (logits, keypoints, visible, 0.0, "random", SEED, "bce", reduction, True)
    value, grad = cuda_loss.heatmap_loss(*args)
    want_value, want_grad = reference.heatmap_loss(*args)
    assert_close(value, want_value, torch.float32)
    assert_close(grad, want_grad, torch.float32)


@gpu_test
@pytest.mark.parametrize("reduction", ["mean", "none"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(17, 13), (64, 48), (1, 1)])
def test_loss_backward_and_in_place_scaling_match_reference(shape, dtype, reduction):
    batch, num = 3, 5
    grad = torch.randn(batch, num, *shape, device="cuda").to(dtype)
    accumulate = torch.float64 if dtype == torch.float64 else torch.float32
    if reduction == "none":
        grad_output = torch.randn(batch, num, device="cuda", dtype=accumulate)
        grad_output[0, :2] = 1.0  # maps the in-place form may skip
    else:
        grad_output = torch.tensor(-2.5, device="cuda", dtype=accumulate)
    want = reference.heatmap_loss_backward(grad, grad_output, reduction)
    assert torch.equal(cuda_loss.heatmap_loss_backward(grad, grad_output, reduction), want)
    in_place = grad.clone()
    cuda_loss.scale_grad_(in_place, grad_output, reduction)
    assert torch.equal(in_place, want)
    unchanged = grad.clone()
    cuda_loss.scale_grad_(unchanged, torch.ones((), device="cuda", dtype=accumulate), "mean")
    assert torch.equal(unchanged, grad)


@gpu_test
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_loss_autograd_through_the_op(dtype):
    batch, num, height, width = 4, 17, 64, 48
    keypoints = make_keypoints(batch, num, height, width)
    logits = torch.randn(batch, num, height, width, device="cuda").to(dtype)
    weights = torch.rand(batch, num, device="cuda")
    grads = []
    for backend in ("cuda", "reference"):
        z = logits.clone().requires_grad_()
        value = h3r_kernels.heatmap_loss(z, keypoints, seed=SEED, reduction="none", backend=backend)
        (value * weights).sum().backward()
        grads.append(z.grad)
    assert_close(grads[0], grads[1], dtype)


DECODES = [
    ("topk", 1, "softmax", 3),
    ("topk", 9, "softmax", 3),
    ("topk", 9, "linear", 3),
    ("topk", 32, "softmax", 3),
    ("topk", 17, "linear", 3),
    ("local", 9, "softmax", 3),
    ("local", 9, "linear", 5),
    ("local", 9, "softmax", 1),
    ("argmax", 9, "softmax", 3),
    ("argmax", 9, "linear", 3),
]


def make_heatmaps(kind, batch, num, height, width, dtype, linear):
    """``random`` (probabilities for linear weights), ``ties`` (four levels), ``negative`` (all < 0)."""
    generator = torch.Generator().manual_seed(3)
    shape = (batch, num, height, width)
    if kind == "random":
        maps = torch.randn(shape, generator=generator) * 2
        maps = maps.sigmoid() if linear else maps
    elif kind == "ties":
        maps = torch.randint(0, 4, shape, generator=generator) / 4
    else:
        maps = -(torch.randint(1, 5, shape, generator=generator) / 4)
    return maps.to(dtype).cuda()


@gpu_test
@pytest.mark.parametrize("kind", ["random", "ties", "negative"])
@pytest.mark.parametrize("method,k,weights,window", DECODES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
def test_decode_and_backward_match_reference(shape, dtype, method, k, weights, window, kind):
    height, width = shape
    if method == "topk" and k > height * width:
        pytest.skip("k > H*W")
    batch, num = batch_for(height, width)
    heatmaps = make_heatmaps(kind, batch, num, height, width, dtype, weights == "linear")
    coords, scores, indices = cuda_decode.decode(heatmaps, method, k, weights, window)
    want_coords, want_scores, want_indices = reference.decode(heatmaps, method, k, weights, window)
    assert torch.equal(indices, want_indices)
    assert torch.equal(scores, want_scores)
    accumulate = torch.float64 if dtype == torch.float64 else torch.float32
    assert coords.dtype == accumulate and scores.dtype == accumulate
    assert_close(coords, want_coords, accumulate)

    generator = torch.Generator().manual_seed(4)
    grad_coords = torch.randn(batch, num, 2, generator=generator).to(accumulate).cuda()
    grad_scores = torch.randn(batch, num, generator=generator).to(accumulate).cuda()
    grad = cuda_decode.decode_backward(heatmaps, indices, grad_coords, grad_scores, method, weights)
    want_grad = reference.decode_backward(heatmaps, want_indices, grad_coords, grad_scores, method, weights)
    assert grad.dtype == dtype
    # The gradient holds (x_j - x) with x the decoded coordinate: the coordinate's rounding
    # (an ulp of max(H, W), summed in another order) shows up absolutely, not relatively.
    cancellation = torch.finfo(accumulate).eps * max(height, width) * 8 * float(grad_coords.abs().max())
    assert_close(grad, want_grad, dtype, atol_floor=cancellation)


@gpu_test
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_decode_autograd_through_the_op(dtype):
    heatmaps = torch.randn(3, 5, 17, 13, device="cuda", dtype=dtype)
    grads = []
    for backend in ("cuda", "reference"):
        maps = heatmaps.clone().requires_grad_()
        coords, scores = h3r_kernels.decode(maps, method="topk", k=9, backend=backend)
        (coords[..., 0] * 2 - coords[..., 1] + scores).sum().backward()
        grads.append(maps.grad)
    assert_close(grads[0], grads[1], dtype, atol_floor=torch.finfo(dtype).eps * 17 * 8 * 2)


@gpu_test
@pytest.mark.parametrize("batch,num", [(0, 3), (2, 0)])
def test_empty_batch_or_keypoints(batch, num):
    keypoints = torch.zeros(batch, num, 2, device="cuda")
    maps = torch.zeros(batch, num, 5, 7, device="cuda")
    assert cuda_encode.encode(keypoints, None, 5, 7, 0.0, "random", 1, False, torch.float16).shape == (batch, num, 5, 7)
    for reduction, shape in (("mean", ()), ("sum", ()), ("none", (batch, num))):
        value, grad = cuda_loss.heatmap_loss(maps, keypoints, None, 0.0, "random", 1, "bce", reduction, True)
        assert value.shape == shape and grad.shape == maps.shape
        assert torch.equal(value, torch.zeros(shape, device="cuda"))
    assert cuda_loss.heatmap_loss_backward(maps, torch.ones((), device="cuda"), "mean").shape == maps.shape
    coords, scores, indices = cuda_decode.decode(maps, "local", 9, "softmax", 3)
    assert coords.shape == (batch, num, 2) and scores.shape == (batch, num) and indices.shape == (batch, num, 9)
    grad = cuda_decode.decode_backward(maps, indices, coords, scores, "local", "softmax")
    assert grad.shape == maps.shape


@gpu_test
def test_misaligned_inputs_take_the_scalar_path():
    # A view starting 4 bytes into its storage: no 16-byte loads, same results.
    storage = torch.randn(3 * 5 * 64 * 48 + 1, device="cuda")
    maps = storage[1:].view(3, 5, 64, 48)
    keypoints = make_keypoints(3, 5, 64, 48)
    assert not _module.aligned(maps)
    value, grad = cuda_loss.heatmap_loss(maps, keypoints, None, 0.0, "random", SEED, "bce", "none", True)
    want_value, want_grad = reference.heatmap_loss(maps, keypoints, None, 0.0, "random", SEED, "bce", "none", True)
    assert_close(value, want_value, torch.float32)
    assert_close(grad, want_grad, torch.float32)
    _, _, indices = cuda_decode.decode(maps, "topk", 9, "softmax", 3)
    assert torch.equal(indices, reference.decode(maps, "topk", 9, "softmax", 3)[2])


@gpu_test
def test_compiled_once_whatever_the_shape():
    def run(height, width):
        keypoints = make_keypoints(2, 3, height, width)
        cuda_encode.encode(keypoints, None, height, width, 0.0, "random", 1, False, torch.float32)

    run(8, 8)
    modules, functions = _module._module.cache_info().misses, _module._function.cache_info().misses
    for height, width in ((5, 7), (64, 48), (33, 2)):
        run(height, width)
    assert _module._module.cache_info().misses == modules
    assert _module._function.cache_info().misses == functions


# --------------------------------------------------------------------------- GPU: other backends, graphs, streams


TRITON_READY = CUDA_READY and h3r_kernels.backends()["triton"]["available"]


@gpu_test
@pytest.mark.skipif(not TRITON_READY, reason="triton backend unavailable")
@pytest.mark.parametrize("shape", [(64, 48), (17, 13)])
def test_matches_the_triton_backend(shape):
    height, width = shape
    batch, num = 4, 17
    keypoints = make_keypoints(batch, num, height, width)
    visible = make_visible(batch, num)
    for expected in (False, True):
        targets = [
            h3r_kernels.encode(keypoints, shape, visible, seed=SEED, expected=expected, backend=backend)
            for backend in ("cuda", "triton")
        ]
        assert torch.equal(*targets)
    logits = torch.randn(batch, num, height, width, device="cuda") * 3
    values = [
        h3r_kernels.heatmap_loss(logits, keypoints, visible, seed=SEED, reduction="none", backend=backend)
        for backend in ("cuda", "triton")
    ]
    assert_close(values[0], values[1], torch.float32)
    decoded = [h3r_kernels.decode(logits, method="topk", k=9, backend=backend) for backend in ("cuda", "triton")]
    assert_close(decoded[0][0], decoded[1][0], torch.float32)
    assert torch.equal(decoded[0][1], decoded[1][1])


def _all_ops(keypoints, visible, logits, grad_output):
    """One call of every kernel, as a training step would make them."""
    height, width = logits.shape[-2:]
    target = cuda_encode.encode(keypoints, visible, height, width, 0.0, "random", SEED, False, torch.bfloat16)
    value, grad = cuda_loss.heatmap_loss(logits, keypoints, visible, 0.0, "random", SEED, "bce", "mean", True)
    scaled = cuda_loss.heatmap_loss_backward(grad, grad_output, "mean")
    coords, scores, indices = cuda_decode.decode(logits, "topk", 9, "softmax", 3)
    decode_grad = cuda_decode.decode_backward(logits, indices, coords, scores, "topk", "softmax")
    return target, value, grad, scaled, coords, scores, indices, decode_grad


@gpu_test
def test_cuda_graph_capture_and_replay():
    batch, num, height, width = 4, 17, 64, 48
    keypoints = make_keypoints(batch, num, height, width)
    visible = make_visible(batch, num)
    logits = torch.randn(batch, num, height, width, device="cuda")
    grad_output = torch.tensor(0.5, device="cuda")
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm-up: compile and load the kernels outside the capture
        _all_ops(keypoints, visible, logits, grad_output)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        captured = _all_ops(keypoints, visible, logits, grad_output)
    for step in range(2):
        keypoints.copy_(make_keypoints(batch, num, height, width, generator_seed=10 + step))
        logits.copy_(torch.randn(batch, num, height, width, device="cuda"))
        graph.replay()
        eager = _all_ops(keypoints, visible, logits, grad_output)
        for replayed, direct in zip(captured, eager):
            assert torch.equal(replayed, direct)  # deterministic kernels: bit-identical


@gpu_test
def test_kernels_run_on_torch_current_stream():
    batch, num, height, width = 8, 17, 64, 48
    keypoints = torch.zeros(batch, num, 2, device="cuda")
    logits = torch.zeros(batch, num, height, width, device="cuda")
    new_keypoints = make_keypoints(batch, num, height, width)
    new_logits = torch.randn(batch, num, height, width, device="cuda")
    torch.cuda.synchronize()
    side = torch.cuda.Stream()
    with torch.cuda.stream(side):
        torch.cuda._sleep(50_000_000)  # the inputs change late on this stream: a launch elsewhere reads stale data
        keypoints.copy_(new_keypoints)
        logits.copy_(new_logits)
        target = cuda_encode.encode(keypoints, None, height, width, 0.0, "random", SEED, False, torch.float32)
        value, _ = cuda_loss.heatmap_loss(logits, keypoints, None, 0.0, "random", SEED, "bce", "none", False)
        _, _, indices = cuda_decode.decode(logits, "topk", 9, "softmax", 3)
    side.synchronize()
    assert torch.equal(target, reference.encode(new_keypoints, None, height, width, 0.0, "random", SEED, False, torch.float32))
    want_value, _ = reference.heatmap_loss(new_logits, new_keypoints, None, 0.0, "random", SEED, "bce", "none", False)
    assert_close(value, want_value, torch.float32)
    assert torch.equal(indices, reference.decode(new_logits, "topk", 9, "softmax", 3)[2])


@gpu_test
def test_opcheck_on_cuda_tensors():
    keypoints = make_keypoints(2, 3, 6, 7)
    visible = make_visible(2, 3)
    logits = torch.randn(2, 3, 6, 7, device="cuda", requires_grad=True)
    ops = torch.ops.h3r
    torch.library.opcheck(ops.encode.default, (keypoints, visible, 6, 7, 0.0, "random", 3, False, torch.float32, "cuda"))
    torch.library.opcheck(
        ops.heatmap_loss.default, (logits, keypoints, visible, 0.0, "random", 3, "bce", "mean", True, "cuda")
    )
    grad = torch.randn(2, 3, 6, 7, device="cuda")
    torch.library.opcheck(ops.heatmap_loss_backward.default, (grad, torch.randn(2, 3, device="cuda"), "none", "cuda"))
    torch.library.opcheck(ops.heatmap_loss_scale_grad_.default, (grad.clone(), torch.tensor(2.0, device="cuda"), "mean", "cuda"))
    for method in ("topk", "local", "argmax"):
        torch.library.opcheck(ops.decode.default, (logits, method, 5, "softmax", 3, "cuda"))
    indices = ops.decode.default(logits.detach(), "topk", 5, "linear", 3, "cuda")[2]
    torch.library.opcheck(
        ops.decode_backward.default,
        (logits.detach(), indices, torch.randn(2, 3, 2, device="cuda"), torch.randn(2, 3, device="cuda"), "topk", "linear", "cuda"),
    )


@gpu_test
def test_compile_cache_folder_from_the_environment(tmp_path):
    script = (
        "import torch, h3r_kernels\n"
        "h3r_kernels.encode(torch.ones(1, 1, 2, device='cuda'), (4, 4), seed=1, backend='cuda')\n"
        "torch.cuda.synchronize()\n"
    )
    path = os.pathsep.join(filter(None, (str(REPO), os.environ.get("PYTHONPATH"))))
    env = dict(os.environ, H3R_CUPY_CACHE_DIR=str(tmp_path), PYTHONPATH=path)
    env.pop("CUPY_CACHE_DIR", None)
    run = subprocess.run([sys.executable, "-c", script], env=env, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    assert any(tmp_path.iterdir()), "CuPy wrote no compiled kernel into H3R_CUPY_CACHE_DIR"
