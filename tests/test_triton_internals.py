"""What is internal to the ``triton`` backend: results that must not depend on its launch
geometry (encode's and the fused loss's rows and maps per program), and decode's streaming
of large maps in chunks (forced on small maps by lowering the chunk size). Behaviour shared
with the other backends is tested per op in test_op_*.py, test_ops.py and test_gpu_ops.py.

Without a GPU the kernels run in Triton's CPU interpreter (conftest.py sets TRITON_INTERPRET=1).
"""
import pytest
import torch
import triton
import triton.language as tl

import h3r_kernels
from conftest import DEVICE, assert_decode_matches_reference, make_keypoints
from h3r_kernels.triton import decode as triton_decode
from h3r_kernels.triton.encode import launch_encode
from h3r_kernels.triton.loss import _log1p_unit, launch_heatmap_loss

if not h3r_kernels.backends()["triton"]["available"]:
    pytest.skip(f"triton backend unavailable: {h3r_kernels.backends()['triton']['reason']}", allow_module_level=True)

# NaN/inf keypoints: the interpreter's numpy warns on inf - inf, the kernels mask them.
pytestmark = pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")

# (rows, maps) per program: one row of one map, part of several maps, the heuristic.
BLOCKS = [(1, 1), (4, 2), (32, 8), (None, None)]


@pytest.mark.parametrize(
    "rounding,sigma,expected", [("random", 0.0, False), ("random", 1.5, True), ("none", 2.0, False)]
)
def test_encode_does_not_depend_on_block_size(rounding, sigma, expected):
    keypoints, visible = make_keypoints(2, 3, 9, 13)
    args = (keypoints, visible, 9, 13, sigma, rounding, 9, expected, torch.float32)
    maps = [launch_encode(*args, block_rows=rows, block_maps=num) for rows, num in BLOCKS]
    for other in maps[1:]:
        assert torch.equal(other, maps[0])


@pytest.mark.parametrize("loss,sigma,reduction", [("bce", 0.0, "mean"), ("mse", 1.5, "none")])
def test_heatmap_loss_does_not_depend_on_block_size(loss, sigma, reduction):
    """The gradient bit for bit; the value up to the order of the per-block partial sums."""
    keypoints, visible = make_keypoints(2, 3, 9, 13)
    logits = torch.randn(2, 3, 9, 13, device=DEVICE)
    args = (logits, keypoints, visible, sigma, "random", 6, loss, reduction, True)
    results = [launch_heatmap_loss(*args, block_rows=rows, block_maps=num) for rows, num in BLOCKS]
    for value, grad in results[1:]:
        assert torch.equal(grad, results[0][1])
        torch.testing.assert_close(value, results[0][0], rtol=1e-6, atol=0)


@pytest.mark.parametrize("method,k,window", [("topk", 9, 3), ("topk", 25, 3), ("local", 9, 3), ("argmax", 1, 3)])
@pytest.mark.parametrize("kind", ["random", "ties", "flat", "clustered"])
def test_decode_streams_maps_in_several_chunks(monkeypatch, method, k, window, kind):
    """Larger maps are read in chunks (maxima of strided groups of cells, then the cells of
    the best groups reloaded), and the backward clears them chunk by chunk: forced here on
    9x7 maps with 4 chunks of 16 cells. ``clustered`` puts the 8 largest values in two
    groups (cells 0, 16, 32, 48 and 5, 21, 37, 53), where the group maxima alone would miss them."""
    monkeypatch.setattr(triton_decode, "MIN_GROUPS", 4)
    monkeypatch.setattr(triton_decode, "MAX_CHUNKS", 4)
    monkeypatch.setattr(triton_decode, "MAX_BLOCK", 16)
    assert triton_decode._plan(9 * 7)[:2] == (16, 4)
    for weights in ("softmax", "linear"):
        if kind == "flat":
            maps = torch.full((1, 2, 9, 7), 0.25)
        else:
            maps = torch.randn(1, 2, 9, 7) * 2 if weights == "softmax" else torch.rand(1, 2, 9, 7) - 0.2
            if kind == "ties":
                maps = (maps * 2).round() / 2
            elif kind == "clustered":
                maps = maps * 0.1
                for chunk in range(4):
                    maps.view(2, 63)[:, [chunk * 16, 5 + chunk * 16]] = torch.tensor([2.0 + chunk, 2.5 + chunk])
        assert_decode_matches_reference(maps.to(DEVICE), "triton", method, k, weights, window)


@triton.jit
def _log1p_kernel(e_ptr, out_ptr, n, IS_F64: tl.constexpr, BLOCK: tl.constexpr):
    offsets = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    e = tl.load(e_ptr + offsets, mask=offsets < n, other=0.0)
    tl.store(out_ptr + offsets, _log1p_unit(e, IS_F64), mask=offsets < n)


@pytest.mark.parametrize("dtype,ulps", [(torch.float32, 4), (torch.float64, 8)])
def test_log1p_of_the_fused_loss_keeps_relative_precision(dtype, ulps):
    """The loss's ``log(1 + e)`` for ``e = exp(-|z|)`` in [0, 1] (float32: a polynomial, float64:
    the atanh series) is within a few ULPs of log1p everywhere, tiny ``e`` included."""
    e = torch.cat([torch.linspace(0, 1, 200_001, dtype=torch.float64), torch.logspace(-37, 0, 20_001, dtype=torch.float64)])
    e = e.to(dtype)
    out = torch.empty_like(e)
    _log1p_kernel[(triton.cdiv(e.numel(), 1 << 16),)](e, out, e.numel(), IS_F64=dtype == torch.float64, BLOCK=1 << 16)
    want = torch.log1p(e.double())
    relative = ((out.double() - want).abs() / want.clamp_min(1e-300))[e > 0]
    assert float(relative.max()) <= ulps * torch.finfo(dtype).eps / 2
    assert out[e == 0].eq(0).all()
