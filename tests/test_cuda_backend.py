"""What is internal to the ``cuda`` backend (csrc/ through CuPy): the loader's source lookup,
cache-folder setting and error messages (no GPU needed), the launch geometry, the chunked
fixed-order sum, the in-place scaling that skips unit factors, the scalar path for
misaligned inputs, the compile cache. Behaviour shared with the other backends (parity with
the reference, opcheck, compile, graphs, streams, empty and non-contiguous inputs) is tested
per op in test_ops.py and test_gpu_ops.py. Internal functions are called with keywords.
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
from conftest import assert_close, make_keypoints, why_not
from h3r_kernels import reference
from h3r_kernels.cuda import _module, availability
from h3r_kernels.cuda import decode as cuda_decode
from h3r_kernels.cuda import encode as cuda_encode
from h3r_kernels.cuda import loss as cuda_loss

REPO = Path(__file__).resolve().parent.parent
backend_selection = importlib.import_module("h3r_kernels.backends")  # the module; h3r_kernels.backends is a function
SEED = 0xDEADBEEF  # above 2**31: the seed is an unsigned 32-bit integer
# The cuda backend on CUDA tensors: marked gpu (skipped without a GPU), and skipped with the
# reason when CuPy, NVRTC or the sources are missing on a GPU machine.
cuda_backend = [pytest.mark.gpu, pytest.mark.skipif(why_not("cuda", "cuda") is not None,
                                                     reason=str(why_not("cuda", "cuda")))]


def gpu_test(function):
    for mark in cuda_backend:
        function = mark(function)
    return function


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
        lambda kp, maps: cuda_encode.encode(
            keypoints=kp, visible=None, height=8, width=8, sigma=0.0, rounding="random", seed=1, expected=False,
            dtype=torch.float32,
        ),
        lambda kp, maps: cuda_loss.heatmap_loss(
            logits=maps, keypoints=kp, visible=None, sigma=0.0, rounding="random", seed=1, loss="bce",
            reduction="mean", compute_grad=True,
        ),
        lambda kp, maps: cuda_loss.heatmap_loss_backward(grad=maps, grad_output=torch.tensor(1.0), reduction="mean"),
        lambda kp, maps: cuda_loss.scale_grad_(grad=maps, grad_output=torch.tensor(1.0), reduction="mean"),
        lambda kp, maps: cuda_decode.decode(heatmaps=maps, method="topk", k=9, weights="softmax", window=3),
        lambda kp, maps: cuda_decode.decode_backward(
            heatmaps=maps, indices=torch.zeros(2, 3, 9, dtype=torch.int64), grad_coords=torch.zeros(2, 3, 2),
            grad_scores=torch.zeros(2, 3), method="topk", weights="softmax",
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


# --------------------------------------------------------------------------- GPU: internals


@gpu_test
@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_loss_adds_many_maps_in_chunks(reduction):
    batch, num, height, width = 80, 130, 2, 3  # 10400 maps: the per-map sums are added in three chunks
    keypoints, visible = make_keypoints(batch, num, height, width, device="cuda")
    logits = torch.randn(batch, num, height, width, device="cuda")
    args = dict(logits=logits, keypoints=keypoints, visible=visible, sigma=0.0, rounding="random", seed=SEED,
                loss="bce", reduction=reduction, compute_grad=True)
    value, grad = cuda_loss.heatmap_loss(**args)
    want_value, want_grad = reference.heatmap_loss(**args)
    assert_close(value, want_value, torch.float32)
    assert_close(grad, want_grad, torch.float32)


@gpu_test
@pytest.mark.parametrize("reduction", ["mean", "none"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.float64])
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
    want = reference.heatmap_loss_backward(grad=grad, grad_output=grad_output, reduction=reduction)
    assert torch.equal(cuda_loss.heatmap_loss_backward(grad=grad, grad_output=grad_output, reduction=reduction), want)
    in_place = grad.clone()
    cuda_loss.scale_grad_(grad=in_place, grad_output=grad_output, reduction=reduction)
    assert torch.equal(in_place, want)
    unchanged = grad.clone()
    cuda_loss.scale_grad_(grad=unchanged, grad_output=torch.ones((), device="cuda", dtype=accumulate), reduction="mean")
    assert torch.equal(unchanged, grad)


@gpu_test
def test_misaligned_inputs_take_the_scalar_path():
    # A view starting 4 bytes into its storage: no 16-byte loads, same results.
    storage = torch.randn(3 * 5 * 64 * 48 + 1, device="cuda")
    maps = storage[1:].view(3, 5, 64, 48)
    keypoints, _ = make_keypoints(3, 5, 64, 48, device="cuda")
    assert not _module.aligned(maps)
    args = dict(logits=maps, keypoints=keypoints, visible=None, sigma=0.0, rounding="random", seed=SEED, loss="bce",
                reduction="none", compute_grad=True)
    value, grad = cuda_loss.heatmap_loss(**args)
    want_value, want_grad = reference.heatmap_loss(**args)
    assert_close(value, want_value, torch.float32)
    assert_close(grad, want_grad, torch.float32)
    options = dict(heatmaps=maps, method="topk", k=9, weights="softmax", window=3)
    assert torch.equal(cuda_decode.decode(**options)[2], reference.decode(**options)[2])


@gpu_test
def test_compiled_once_whatever_the_shape():
    def run(height, width):
        keypoints, _ = make_keypoints(2, 3, height, width, device="cuda")
        cuda_encode.encode(keypoints=keypoints, visible=None, height=height, width=width, sigma=0.0, rounding="random",
                           seed=1, expected=False, dtype=torch.float32)

    run(8, 8)
    modules, functions = _module._module.cache_info().misses, _module._function.cache_info().misses
    for height, width in ((5, 7), (64, 48), (33, 2)):
        run(height, width)
    assert _module._module.cache_info().misses == modules
    assert _module._function.cache_info().misses == functions


# --------------------------------------------------------------------------- GPU: against the other GPU backend


TRITON_READY = why_not("triton", "cuda") is None


@gpu_test
@pytest.mark.skipif(not TRITON_READY, reason="triton backend unavailable")
@pytest.mark.parametrize("shape", [(64, 48), (17, 13)])
def test_matches_the_triton_backend(shape):
    height, width = shape
    batch, num = 4, 17
    keypoints, visible = make_keypoints(batch, num, height, width, device="cuda")
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
