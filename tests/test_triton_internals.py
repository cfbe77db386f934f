"""What is internal to the ``triton`` backend: results that must not depend on its launch
geometry (encode's and the fused loss's rows and maps per program, decode's maps per program
and groups per map), and decode's one compiled kernel for every map size. Behaviour shared
with the other backends is tested per op in test_op_*.py, test_ops.py and test_gpu_ops.py.

Without a GPU the kernels run in Triton's CPU interpreter (conftest.py sets TRITON_INTERPRET=1).
"""
import functools

import pytest
import torch
import triton
import triton.language as tl

import h3r_kernels
from conftest import DEVICE, assert_decode_matches_reference, make_keypoints
from h3r_kernels import reference
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


# decode's tiles (maps per program, groups per map): one map of 4 groups (16 chunks), partial
# programs of 4 maps of 64 groups (more groups than cells) and the heuristic's 8 maps (15 maps).
DECODE_TILES = [(1, 4), (4, 64), None]


def decode_test_maps(kind, weights, shape=(3, 5, 9, 7)):
    """``random``, ``ties``, ``flat``, ``clustered`` (the 8 largest values in two strided groups
    of 16, cells 0, 16, 32, 48 and 5, 21, 37, 53, where group maxima alone would miss them) or
    ``nonfinite`` (NaN, +-inf and -0.0 sprinkled over some maps, a map all -inf, one all NaN)."""
    if kind == "flat":
        return torch.full(shape, 0.25)
    maps = torch.randn(shape) * 2 if weights == "softmax" else torch.rand(shape) - 0.2
    flat = maps.view(-1, shape[-2] * shape[-1])
    if kind == "ties":
        maps = (maps * 2).round() / 2
    elif kind == "clustered":
        maps = maps * 0.1
        flat = maps.view(-1, shape[-2] * shape[-1])
        for chunk in range(4):
            flat[:, [chunk * 16, 5 + chunk * 16]] = torch.tensor([2.0 + chunk, 2.5 + chunk])
    elif kind == "nonfinite":
        flat[0, [3, 40]] = float("inf")
        flat[1, [7, 20, 50]] = torch.tensor([float("nan"), float("inf"), float("nan")])
        flat[2] = float("-inf")
        flat[3, 10:] = float("-inf")
        flat[4] = float("nan")
        flat[5, [0, 62]] = torch.tensor([-0.0, float("inf")])
        flat[6, ::2] = 0.0
        flat[6, 1::2] = -0.0
        flat[-1, 62] = float("nan")
    return maps


F32, F64, BF16, F16 = torch.float32, torch.float64, torch.bfloat16, torch.float16
TOPK9, TOPK12, LOCAL, ARGMAX = ("topk", 9, 3), ("topk", 12, 3), ("local", 9, 3), ("argmax", 1, 3)
TILE_CASES = [  # (kind, dtype, (method, k, window), weights)
    ("random", F32, TOPK9, "softmax"), ("random", F32, TOPK12, "linear"), ("random", F32, LOCAL, "linear"),
    ("random", F32, ARGMAX, "softmax"), ("ties", F32, TOPK9, "softmax"), ("ties", F32, LOCAL, "softmax"),
    ("flat", F32, TOPK12, "softmax"), ("flat", F32, ARGMAX, "linear"), ("clustered", F32, TOPK9, "linear"),
    ("clustered", F32, TOPK12, "softmax"), ("nonfinite", F32, TOPK9, "softmax"), ("nonfinite", F32, TOPK12, "linear"),
    ("nonfinite", F32, LOCAL, "linear"), ("nonfinite", F32, ARGMAX, "softmax"), ("nonfinite", F64, TOPK9, "linear"),
    ("nonfinite", F64, LOCAL, "softmax"), ("nonfinite", BF16, TOPK9, "softmax"), ("ties", F64, TOPK12, "softmax"),
    ("ties", BF16, ARGMAX, "linear"), ("ties", BF16, TOPK9, "linear"), ("nonfinite", F16, TOPK12, "linear"),
    ("ties", F16, TOPK9, "softmax"), ("nonfinite", BF16, LOCAL, "softmax"), ("clustered", BF16, TOPK12, "softmax"),
]


@pytest.mark.parametrize("kind,dtype,selection,weights", TILE_CASES, ids=str)
def test_decode_does_not_depend_on_tile(monkeypatch, kind, dtype, selection, weights):
    """Several maps per program (the last program partial: 15 maps), or one; few groups (many
    chunks per group, rescanned for top-k) or more groups than cells: the same cells and
    scores, bit for bit, and the reference's results (forward and backward, the backward
    clearing the maps in blocks of 16 cells here)."""
    method, k, window = selection
    monkeypatch.setattr(triton_decode, "BACKWARD_BLOCK", 16)
    maps = decode_test_maps(kind, weights).to(dtype).to(DEVICE)
    results = []
    for tile in DECODE_TILES:
        if tile is not None:
            monkeypatch.setattr(triton_decode, "decode_tile", lambda n_cells, tile=tile: tile)
        else:
            monkeypatch.undo()
            monkeypatch.setattr(triton_decode, "BACKWARD_BLOCK", 16)
        results.append(assert_decode_matches_reference(maps, "triton", method, k, weights, window))
    for coords, scores, indices, _ in results[1:]:
        assert torch.equal(indices, results[0][2])
        torch.testing.assert_close(scores, results[0][1], rtol=0, atol=0, equal_nan=True)
        torch.testing.assert_close(coords, results[0][0], equal_nan=True)


SIZES = [(1, 1), (1, 2), (3, 5), (8, 8), (17, 13), (16, 16), (13, 17), (32, 32), (40, 24), (64, 48), (48, 64),
         (100, 37), (64, 64), (1, 4096), (4096, 1)]


@pytest.mark.parametrize("method,k,window,weights", [("topk", 9, 3, "softmax"), ("local", 9, 5, "linear"),
                                                     ("argmax", 1, 1, "softmax"), ("topk", 1, 3, "linear")])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
def test_decode_compiles_one_kernel_for_every_map_size(method, k, window, weights, dtype):
    """Map sizes are runtime arguments: every size up to 32x32 cells launches the kernel with the
    same constexprs and warps (one compiled kernel; the sizes are not specialised, see
    ``do_not_specialize``), every larger size with the other tile's, and the plan covers every
    map in whole chunks."""
    plans = {size: triton_decode.decode_plan(7, *size, method, k, weights, window, dtype) for size in SIZES}
    buckets = {}
    for (height, width), plan in plans.items():
        bucket = buckets.setdefault(height * width <= triton_decode.SMALL_CELLS, plan)
        assert plan.constexprs == bucket.constexprs and plan.num_warps == bucket.num_warps, (height, width)
        assert set(plan.sizes) == set(triton_decode.RUNTIME_SIZES)
        assert plan.sizes["chunks"] * plan.constexprs["GROUPS"] >= height * width
        assert plan.grid == (-(-7 // plan.constexprs["MAPS"]),)
    assert len(buckets) == 2 and buckets[True].constexprs != buckets[False].constexprs
    assert triton_decode.decode_plan(7, 128, 128, method, k, weights, window, dtype).constexprs == \
        buckets[False].constexprs


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
def test_decode_packs_ranks_for_bfloat16_maps_that_fit(dtype):
    """bfloat16 maps of up to 65536 cells select on packed ranks (the order key, whose low 16 bits
    are 0 for a bfloat16 value, plus the cell); larger ones, and other dtypes, on keys and cells."""
    plan = functools.partial(triton_decode.decode_plan, 7, method="topk", k=9, weights="softmax", window=3, dtype=dtype)
    assert plan(height=256, width=256).constexprs["PACKED"] == (dtype == torch.bfloat16)
    assert plan(height=16, width=16).constexprs["PACKED"] == (dtype == torch.bfloat16)
    assert not plan(height=257, width=256).constexprs["PACKED"]


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_decode_packed_ranks_order_every_16_bit_value(dtype):
    """Every 16-bit pattern in one 256x256 map, shuffled (every finite value, both infinities, both
    zeros, NaNs of every payload and sign): top-32 takes the reference's cells (NaNs first, tied,
    by cell); with the NaNs made -inf, its cells and scores (+inf first, then the largest)."""
    bits = torch.arange(-(2**15), 2**15, dtype=torch.int32).to(torch.int16)
    values = bits.view(dtype)
    order = torch.randperm(values.numel(), generator=torch.Generator().manual_seed(0))
    maps = values[order].reshape(1, 1, 256, 256).to(DEVICE)
    coords, scores, indices = triton_decode.decode(maps, "topk", 32, "linear", 3)
    _, reference_scores, reference_indices = reference.decode(maps.cpu(), "topk", 32, "linear", 3)
    assert torch.equal(indices.cpu(), reference_indices)
    assert scores.isnan().all() and reference_scores.isnan().all()
    top = maps.flatten()[reference_indices.flatten().to(maps.device)].cpu()
    assert top.isnan().all()  # hundreds of NaN patterns: all of top-32
    finite = maps.clone()
    finite[finite.isnan()] = float("-inf")
    _, finite_scores, finite_indices = triton_decode.decode(finite, "topk", 32, "linear", 3)
    _, reference_scores, reference_indices = reference.decode(finite.cpu(), "topk", 32, "linear", 3)
    assert torch.equal(finite_indices.cpu(), reference_indices) and torch.equal(finite_scores.cpu(), reference_scores)


def test_decode_rejects_a_bad_tile():
    with pytest.raises(ValueError, match="groups: expected a power of two"):
        triton_decode.decode_plan(1, 4, 4, "topk", 4, "softmax", 3, torch.float32, groups=12)


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
