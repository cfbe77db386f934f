"""The Triton ``decode`` kernels against the reference, through the public op and its autograd.

Without a GPU the kernels run in Triton's CPU interpreter (``TRITON_INTERPRET=1``, set by
``conftest.py``), which costs about a millisecond per operation of each program: shapes and
batches stay tiny. The ``gpu`` test at the end uses real shapes. opcheck, gradcheck, empty and
non-contiguous inputs are in test_ops.py; CUDA graphs and streams in test_gpu_ops.py (every backend).
"""
import pytest
import torch

import h3r_kernels
from h3r_kernels.backends import interpreting
from h3r_kernels.triton import decode as triton_decode

if not h3r_kernels.backends()["triton"]["available"]:
    pytest.skip(f"triton backend unavailable: {h3r_kernels.backends()['triton']['reason']}", allow_module_level=True)

DEVICE = "cpu" if interpreting() else "cuda"
SHAPES = [(1, 2, 1, 1), (2, 1, 3, 5), (1, 2, 17, 13), (1, 1, 16, 16), (1, 1, 40, 24)]  # (B, K, H, W)
# (method, k, window): every method, k in {1, 4, 9, 25}, window in {1, 3, 5}.
SELECTIONS = [("topk", 1, 3), ("topk", 4, 3), ("topk", 9, 3), ("topk", 25, 3), ("local", 9, 1), ("local", 9, 3), ("local", 9, 5), ("argmax", 9, 3)]

# Coordinates and scores are float32 (float64 for float64 maps), computed from the same
# upcast values by both backends: they differ only by summation order. A gradient holds
# (x_j - x) terms up to the map size, so its absolute error grows with max(H, W): the
# gradient atol below is per cell of that size. Gradients are stored in the maps' dtype:
# float16 and bfloat16 round once more, and the interpreter rounds float32 -> bfloat16
# toward zero, the reference to nearest (rtol >= 1 ULP).
VALUE_TOLERANCE = {
    torch.float32: dict(rtol=1e-5, atol=1e-5),
    torch.float16: dict(rtol=1e-5, atol=1e-5),
    torch.bfloat16: dict(rtol=1e-5, atol=1e-5),
    torch.float64: dict(rtol=1e-12, atol=1e-12),
}
GRAD_TOLERANCE = {  # atol: per cell of max(H, W)
    torch.float32: dict(rtol=1e-5, atol=1e-6),
    torch.float16: dict(rtol=1e-3, atol=1e-6),
    torch.bfloat16: dict(rtol=1.6e-2, atol=1e-6),
    torch.float64: dict(rtol=1e-12, atol=1e-13),
}


def _grad_tolerance(maps):
    tolerance = GRAD_TOLERANCE[maps.dtype]
    return dict(rtol=tolerance["rtol"], atol=tolerance["atol"] * max(maps.shape[-2:]))


def _maps(shape, weights, dtype=torch.float32, kind="random"):
    """Test maps: ``random`` (softmax: logits; linear: values around 0, some negative),
    ``ties`` (values quantised to a few levels) or ``flat`` (every cell equal)."""
    if kind == "flat":
        maps = torch.full(shape, 0.25)
    else:
        maps = torch.randn(shape) * 2 if weights == "softmax" else torch.rand(shape) - 0.2
        if kind == "ties":
            maps = (maps * 2).round() / 2
    return maps.to(dtype).to(DEVICE)


def _decode_with_grads(maps, backend, method, k, weights, window, grad_coords, grad_scores):
    """``(coords, scores, indices, d(coords . grad_coords + scores . grad_scores)/d maps)``."""
    maps = maps.detach().clone().requires_grad_()
    coords, scores, indices = torch.ops.h3r.decode(maps, method, k, weights, window, backend)
    (grad,) = torch.autograd.grad((coords, scores), maps, (grad_coords, grad_scores))
    return coords, scores, indices, grad


def _assert_matches_reference(maps, method, k, weights, window):
    dtype = maps.dtype
    acc = torch.float64 if dtype == torch.float64 else torch.float32
    batch, num = maps.shape[:2]
    grad_coords = torch.randn(batch, num, 2, dtype=acc, device=maps.device)
    grad_scores = torch.randn(batch, num, dtype=acc, device=maps.device)
    got = _decode_with_grads(maps, "triton", method, k, weights, window, grad_coords, grad_scores)
    want = _decode_with_grads(maps, "reference", method, k, weights, window, grad_coords, grad_scores)
    assert torch.equal(got[2], want[2]), f"indices differ:\n{got[2]}\nvs reference\n{want[2]}"
    torch.testing.assert_close(got[0], want[0], **VALUE_TOLERANCE[dtype])
    torch.testing.assert_close(got[1], want[1], **VALUE_TOLERANCE[dtype])
    torch.testing.assert_close(got[3], want[3], **_grad_tolerance(maps))


@pytest.mark.parametrize(
    "shape,method,k,window",
    [(shape, *selection) for shape in SHAPES for selection in SELECTIONS if selection[0] != "topk" or selection[1] <= shape[2] * shape[3]],
    ids=str,
)
@pytest.mark.parametrize("weights", ["softmax", "linear"])
def test_random_maps_match_reference(shape, method, k, weights, window):
    _assert_matches_reference(_maps(shape, weights), method, k, weights, window)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("method,k,window", [("topk", 9, 3), ("local", 9, 3), ("argmax", 1, 1)])
@pytest.mark.parametrize("weights", ["softmax", "linear"])
def test_dtypes_match_reference(dtype, method, k, weights, window):
    _assert_matches_reference(_maps((2, 1, 7, 6), weights, dtype), method, k, weights, window)


@pytest.mark.parametrize("kind", ["ties", "flat"])
@pytest.mark.parametrize("method,k,window", [("topk", 4, 3), ("topk", 25, 3), ("local", 9, 5), ("argmax", 1, 3)])
@pytest.mark.parametrize("weights", ["softmax", "linear"])
def test_ties_go_to_the_lower_flat_index(kind, method, k, weights, window):
    maps = _maps((2, 1, 9, 7), weights, kind=kind)
    _assert_matches_reference(maps, method, k, weights, window)
    if kind == "flat":
        _, _, indices = torch.ops.h3r.decode(maps, method, k, weights, window, "triton")
        if method == "topk":
            assert indices[0, 0].tolist() == list(range(k))
        else:
            assert indices[0, 0, indices.shape[-1] // 2] == 0  # the peak is the first cell


@pytest.mark.parametrize("row,col", [(0, 0), (0, 6), (8, 0), (8, 6), (0, 3), (4, 0), (8, 2), (3, 6), (1, 1)])
@pytest.mark.parametrize("method,k,window", [("topk", 9, 3), ("local", 9, 3), ("local", 9, 5), ("argmax", 1, 3)])
def test_peaks_on_borders_and_corners(row, col, method, k, window):
    maps = torch.rand(1, 2, 9, 7) * 0.5
    maps[..., row, col] = 3.0
    maps = maps.to(DEVICE)
    _assert_matches_reference(maps, method, k, "softmax", window)
    _assert_matches_reference(maps.sigmoid(), method, k, "linear", window)
    if method == "local":
        _, _, indices = torch.ops.h3r.decode(maps, method, k, "softmax", window, "triton")
        offsets = range(-(window // 2), window // 2 + 1)
        off_map = sum(not (0 <= row + dy < 9 and 0 <= col + dx < 7) for dy in offsets for dx in offsets)
        assert int((indices[0, 0] == -1).sum()) == off_map


@pytest.mark.parametrize("method,k,window", [("topk", 9, 3), ("topk", 25, 3), ("local", 9, 3), ("argmax", 1, 3)])
@pytest.mark.parametrize("kind", ["random", "ties", "flat", "clustered"])
def test_maps_streamed_in_several_chunks(monkeypatch, method, k, window, kind):
    """Larger maps are read in chunks (maxima of strided groups of cells, then the cells of
    the best groups reloaded), and the backward clears them chunk by chunk: forced here on
    9x7 maps with 4 chunks of 16 cells. ``clustered`` puts the 8 largest values in two
    groups (cells 0, 16, 32, 48 and 5, 21, 37, 53), where the group maxima alone would miss them."""
    monkeypatch.setattr(triton_decode, "MIN_GROUPS", 4)
    monkeypatch.setattr(triton_decode, "MAX_CHUNKS", 4)
    monkeypatch.setattr(triton_decode, "MAX_BLOCK", 16)
    assert triton_decode._plan(9 * 7)[:2] == (16, 4)
    for weights in ("softmax", "linear"):
        if kind == "clustered":
            maps = _maps((1, 2, 9, 7), weights).cpu() * 0.1
            for chunk in range(4):
                maps.view(2, 63)[:, [chunk * 16, 5 + chunk * 16]] = torch.tensor([2.0 + chunk, 2.5 + chunk])
            maps = maps.to(DEVICE)
        else:
            maps = _maps((1, 2, 9, 7), weights, kind=kind)
        _assert_matches_reference(maps, method, k, weights, window)


@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")  # the interpreter's numpy on NaN
@pytest.mark.parametrize("method,k,window", [("topk", 4, 3), ("local", 9, 3), ("argmax", 1, 3)])
@pytest.mark.parametrize("weights", ["softmax", "linear"])
def test_nan_and_inf_follow_torch(method, k, weights, window):
    """NaN ranks above +inf (as in torch.sort/argmax/amax): the score is NaN and the NaN cell is the peak."""
    maps = _maps((1, 3, 5, 6), weights).cpu()
    maps[0, 0, 2, 3] = float("inf")
    maps[0, 1, 1, 4] = float("nan")
    maps[0, 1, 3, 1] = float("inf")
    maps[0, 2, 0, 0] = float("-inf")
    maps = maps.to(DEVICE)
    got = torch.ops.h3r.decode(maps, method, k, weights, window, "triton")
    want = torch.ops.h3r.decode(maps, method, k, weights, window, "reference")
    assert torch.equal(got[2], want[2])
    torch.testing.assert_close(got[0], want[0], equal_nan=True)
    torch.testing.assert_close(got[1], want[1], equal_nan=True)
    assert torch.isnan(got[1][0, 1]) and got[2][0, 1, got[2].shape[-1] // 2 if method == "local" else 0] == 1 * 6 + 4


@pytest.mark.parametrize("method,weights", [("topk", "softmax"), ("local", "linear"), ("argmax", "softmax")])
def test_expanded_incoming_gradient(method, weights):
    """``.sum().backward()`` hands the backward stride-0 gradients."""
    maps = _maps((2, 2, 6, 5), weights)
    grads = []
    for backend in ("triton", "reference"):
        leaf = maps.clone().requires_grad_()
        coords, scores = h3r_kernels.decode(leaf, method=method, k=9, weights=weights, backend=backend)
        (coords.sum() + scores.sum()).backward()
        grads.append(leaf.grad)
    torch.testing.assert_close(grads[0], grads[1], **_grad_tolerance(maps))


# --------------------------------------------------------------------------- GPU only

@pytest.mark.gpu
@pytest.mark.parametrize("shape", [(4, 17, 64, 64), (2, 3, 256, 256), (3, 5, 64, 48), (2, 4, 128, 96)], ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("method,k,weights,window", [("topk", 9, "softmax", 3), ("topk", 32, "linear", 3), ("local", 9, "softmax", 5), ("argmax", 1, "linear", 3)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_gpu_large_maps_match_reference(shape, method, k, weights, window, dtype):
    _assert_matches_reference(_maps(shape, weights, dtype), method, k, weights, window)
    _assert_matches_reference(_maps(shape, weights, dtype, kind="ties"), method, k, weights, window)
