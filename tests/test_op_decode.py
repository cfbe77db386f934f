"""``decode`` and its gradient, the Triton and CUDA C kernels against the reference on every
device (conftest.py: KERNEL_PAIRS): random maps of odd and tiny shapes for every method, k and
window, every map dtype, and the stride-0 incoming gradient of ``.sum().backward()``; on every
(backend, device) pair, the reference's too: ties and flat maps (the lower flat index wins),
peaks on borders and corners (the local window clipped), NaN and +-inf ranked as torch ranks
them.

On the CPU the Triton backend runs in its interpreter (about a millisecond per operation of
each program): shapes stay small. Real shapes are in test_gpu_ops.py; opcheck, gradcheck,
empty and non-contiguous inputs in test_ops.py; the rule for non-finite maps in
test_kernels_faults.py; Triton's chunked streaming of large maps in test_triton_internals.py.
"""
import pytest
import torch

import h3r_kernels
from conftest import DECODE_GRAD, KERNEL_PAIRS, assert_close, assert_decode_matches_reference, decode_grad_floor

pytestmark = pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")  # the interpreter's numpy

SHAPES = [(1, 2, 1, 1), (2, 1, 3, 5), (1, 2, 17, 13), (1, 1, 16, 16), (1, 1, 40, 24), (3, 7, 4, 5)]  # (B, K, H, W); 21 maps: a partial last program
# (method, k, window): every method, k in {1, 4, 9, 25}, window in {1, 3, 5}.
SELECTIONS = [("topk", 1, 3), ("topk", 4, 3), ("topk", 9, 3), ("topk", 25, 3), ("local", 9, 1), ("local", 9, 3), ("local", 9, 5), ("argmax", 9, 3)]


def make_maps(shape, weights, device, dtype=torch.float32, kind="random"):
    """Test maps: ``random`` (softmax: logits; linear: values around 0, some negative),
    ``ties`` (values quantised to a few levels) or ``flat`` (every cell equal)."""
    if kind == "flat":
        maps = torch.full(shape, 0.25)
    else:
        maps = torch.randn(shape) * 2 if weights == "softmax" else torch.rand(shape) - 0.2
        if kind == "ties":
            maps = (maps * 2).round() / 2
    return maps.to(dtype).to(device)


@pytest.mark.parametrize("backend,device", KERNEL_PAIRS)
@pytest.mark.parametrize(
    "shape,method,k,window",
    [(shape, *selection) for shape in SHAPES for selection in SELECTIONS if selection[0] != "topk" or selection[1] <= shape[2] * shape[3]],
    ids=str,
)
@pytest.mark.parametrize("weights", ["softmax", "linear"])
def test_random_maps_match_reference(backend, device, shape, method, k, weights, window):
    assert_decode_matches_reference(make_maps(shape, weights, device), backend, method, k, weights, window)


@pytest.mark.parametrize("backend,device", KERNEL_PAIRS)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("method,k,window", [("topk", 9, 3), ("local", 9, 3), ("argmax", 1, 1)])
@pytest.mark.parametrize("weights", ["softmax", "linear"])
def test_every_map_dtype_matches_reference(backend, device, dtype, method, k, weights, window):
    coords, scores, _, grad = assert_decode_matches_reference(
        make_maps((2, 1, 7, 6), weights, device, dtype), backend, method, k, weights, window
    )
    acc = torch.float64 if dtype == torch.float64 else torch.float32
    assert coords.dtype == acc and scores.dtype == acc and grad.dtype == dtype


@pytest.mark.parametrize("kind", ["ties", "flat"])
@pytest.mark.parametrize("method,k,window", [("topk", 4, 3), ("topk", 25, 3), ("local", 9, 5), ("argmax", 1, 3)])
@pytest.mark.parametrize("weights", ["softmax", "linear"])
def test_ties_go_to_the_lower_flat_index(backend, device, kind, method, k, weights, window):
    maps = make_maps((2, 1, 9, 7), weights, device, kind=kind)
    _, _, indices, _ = assert_decode_matches_reference(maps, backend, method, k, weights, window)
    if kind == "flat":
        if method == "topk":
            assert indices[0, 0].tolist() == list(range(k))
        else:
            assert indices[0, 0, indices.shape[-1] // 2] == 0  # the peak is the first cell


@pytest.mark.parametrize("row,col", [(0, 0), (0, 6), (8, 0), (8, 6), (0, 3), (4, 0), (8, 2), (3, 6), (1, 1)])
@pytest.mark.parametrize("method,k,window", [("topk", 9, 3), ("local", 9, 3), ("local", 9, 5), ("argmax", 1, 3)])
def test_peaks_on_borders_and_corners(backend, device, row, col, method, k, window):
    """A single peak at every border, corner and next to a corner; the local window's cells off
    the map are the -1 indices."""
    maps = torch.rand(1, 2, 9, 7) * 0.5
    maps[..., row, col] = 3.0
    maps = maps.to(device)
    _, _, indices, _ = assert_decode_matches_reference(maps, backend, method, k, "softmax", window)
    assert_decode_matches_reference(maps.sigmoid(), backend, method, k, "linear", window)
    if method == "local":
        offsets = range(-(window // 2), window // 2 + 1)
        off_map = sum(not (0 <= row + dy < 9 and 0 <= col + dx < 7) for dy in offsets for dx in offsets)
        assert int((indices[0, 0] == -1).sum()) == off_map


@pytest.mark.parametrize("method,k,window", [("topk", 4, 3), ("local", 9, 3), ("argmax", 1, 3)])
@pytest.mark.parametrize("weights", ["softmax", "linear"])
def test_nan_ranks_above_inf_as_in_torch(backend, device, method, k, weights, window):
    """NaN ranks above +inf (as in torch.sort/argmax/amax): the score is NaN and the NaN cell is the peak."""
    maps = make_maps((1, 3, 5, 6), weights, "cpu")
    maps[0, 0, 2, 3] = float("inf")
    maps[0, 1, 1, 4] = float("nan")
    maps[0, 1, 3, 1] = float("inf")
    maps[0, 2, 0, 0] = float("-inf")
    maps = maps.to(device)
    got = torch.ops.h3r.decode(maps, method, k, weights, window, backend)
    want = torch.ops.h3r.decode(maps, method, k, weights, window, "reference")
    assert torch.equal(got[2], want[2])
    torch.testing.assert_close(got[0], want[0], equal_nan=True)
    torch.testing.assert_close(got[1], want[1], rtol=0, atol=0, equal_nan=True)  # the maximum, exactly
    assert torch.isnan(got[1][0, 1]) and got[2][0, 1, got[2].shape[-1] // 2 if method == "local" else 0] == 1 * 6 + 4


@pytest.mark.parametrize("backend,device", KERNEL_PAIRS)
@pytest.mark.parametrize("method,weights", [("topk", "softmax"), ("local", "linear"), ("argmax", "softmax")])
def test_expanded_incoming_gradient(backend, device, method, weights):
    """``.sum().backward()`` hands the backward stride-0 gradients."""
    maps = make_maps((2, 2, 6, 5), weights, device)
    grads = []
    for name in (backend, "reference"):
        leaf = maps.clone().requires_grad_()
        coords, scores = h3r_kernels.decode(leaf, method=method, k=9, weights=weights, backend=name)
        (coords.sum() + scores.sum()).backward()
        grads.append(leaf.grad)
    assert_close(grads[0], grads[1], (DECODE_GRAD, maps.dtype), atol_floor=decode_grad_floor(maps.dtype, 6, 5))
