"""Property-based tests: the Triton backend (the interpreter on the CPU, compiled on a GPU)
against the reference over random small shapes, dtypes, masks (bool/int/float), weights,
seeds and options.

The budget is fixed and small (``max_examples`` per property, ``derandomize=True``), so the
examples are the same on every run and the file stays under a minute on one core.
"""
import pytest
import torch

import h3r_kernels
from conftest import DEVICE, assert_close, assert_decoded_close, decode_with_grads, loss_keys, target_key

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

if not h3r_kernels.backends()["triton"]["available"]:
    pytest.skip("triton backend unavailable", allow_module_level=True)

pytestmark = [
    pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning"),  # the interpreter's numpy
    pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning"),
]
SETTINGS = settings(
    max_examples=30,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
MAP_DTYPES = [torch.float32, torch.float16, torch.bfloat16, torch.float64]


@st.composite
def problems(draw):
    """(keypoints, visible, weight, (H, W)) on DEVICE with some points on the border and off the map."""
    batch, num = draw(st.integers(1, 2)), draw(st.integers(1, 3))
    height, width = draw(st.integers(1, 9)), draw(st.integers(1, 9))
    gen = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))
    keypoints = torch.rand(batch, num, 2, generator=gen) * torch.tensor([width + 1.0, height + 1.0]) - 1.0
    if draw(st.booleans()):
        keypoints = keypoints.round()  # exact cells, borders included
    mask_kind = draw(st.sampled_from(["none", "bool", "int", "float"]))
    seen = torch.rand(batch, num, generator=gen) > 0.3
    visible = {
        "none": None,
        "bool": seen,
        "int": seen.to(torch.int32) * 2,
        "float": torch.where(seen, torch.rand(batch, num, generator=gen) + 0.1, torch.tensor(float("nan"))),
    }[mask_kind]
    weight = None
    if draw(st.booleans()):
        weight = torch.randn(batch, num, generator=gen) * 2
        weight[torch.rand(batch, num, generator=gen) < 0.3] = 0.0
        weight = weight.to(draw(st.sampled_from([torch.float32, torch.float16, torch.float64])))
    move = lambda t: None if t is None else t.to(DEVICE)  # noqa: E731
    return keypoints.to(DEVICE), move(visible), move(weight), (height, width)


@st.composite
def target_options(draw):
    rounding = draw(st.sampled_from(["random", "nearest", "floor", "none"]))
    sigma = draw(st.sampled_from([0.0, 0.7, 1.5])) if rounding != "none" else draw(st.sampled_from([0.7, 1.5]))
    return dict(sigma=sigma, rounding=rounding, seed=draw(st.integers(0, 2**32 - 1)))


@SETTINGS
@given(problem=problems(), options=target_options(), expected=st.booleans(), dtype=st.sampled_from(MAP_DTYPES))
def test_encode_matches_reference(problem, options, expected, dtype):
    keypoints, visible, _, size = problem
    got = h3r_kernels.encode(keypoints, size, visible, expected=expected, dtype=dtype, backend="triton", **options)
    want = h3r_kernels.encode(keypoints, size, visible, expected=expected, dtype=dtype, backend="reference", **options)
    if options["sigma"] == 0 and not expected:
        assert torch.equal(got, want)  # binary targets: bit-exact
    else:
        assert_close(got, want, target_key(dtype))


@SETTINGS
@given(
    problem=problems(),
    options=target_options(),
    dtype=st.sampled_from(MAP_DTYPES),
    loss=st.sampled_from(["bce", "mse"]),
    reduction=st.sampled_from(["mean", "sum", "none"]),
)
def test_heatmap_loss_matches_reference(problem, options, dtype, loss, reduction):
    keypoints, visible, weight, (height, width) = problem
    gen = torch.Generator().manual_seed(options["seed"] % 1000)
    logits = (torch.randn(keypoints.shape[0], keypoints.shape[1], height, width, generator=gen) * 3).to(dtype)
    results = []
    for backend in ("triton", "reference"):
        z = logits.to(DEVICE).requires_grad_()
        value = h3r_kernels.heatmap_loss(z, keypoints, visible, weight=weight, loss=loss, reduction=reduction,
                                         backend=backend, **options)
        (grad,) = torch.autograd.grad(value.sum(), z)
        results.append((value, grad))
    (value, grad), (want_value, want_grad) = results
    value_key, grad_key = loss_keys(dtype, options["sigma"])
    assert_close(value, want_value, value_key)
    assert_close(grad, want_grad, grad_key)


@st.composite
def decode_maps(draw):
    batch, num = draw(st.integers(1, 2)), draw(st.integers(1, 3))
    height, width = draw(st.integers(1, 8)), draw(st.integers(1, 8))
    gen = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))
    kind = draw(st.sampled_from(["logits", "probabilities", "ties", "non-finite"]))
    maps = torch.randn(batch, num, height, width, generator=gen) * 2
    if kind == "probabilities":
        maps = maps.sigmoid()
    elif kind == "ties":
        maps = (maps * 2).round() / 2
    elif kind == "non-finite":
        special = torch.rand(maps.shape, generator=gen)
        maps[special < 0.08] = float("inf")
        maps[(special >= 0.08) & (special < 0.2)] = float("-inf")
        maps[special > 0.97] = float("nan")
    return maps.to(draw(st.sampled_from(MAP_DTYPES))).to(DEVICE)


@SETTINGS
@given(
    maps=decode_maps(),
    method=st.sampled_from(["topk", "local", "argmax"]),
    k=st.integers(1, 12),
    weights=st.sampled_from(["softmax", "linear"]),
    window=st.sampled_from([1, 3, 5]),
)
def test_decode_matches_reference(maps, method, k, weights, window):
    k = min(k, maps.shape[2] * maps.shape[3])
    acc = torch.float64 if maps.dtype == torch.float64 else torch.float32
    gen = torch.Generator().manual_seed(k * 7 + window)
    grad_coords = torch.randn(*maps.shape[:2], 2, generator=gen).to(acc).to(DEVICE)
    grad_scores = torch.randn(*maps.shape[:2], generator=gen).to(acc).to(DEVICE)
    got = decode_with_grads(maps, "triton", method, k, weights, window, grad_coords, grad_scores)
    want = decode_with_grads(maps, "reference", method, k, weights, window, grad_coords, grad_scores)
    assert torch.equal(torch.isnan(got[0]), torch.isnan(want[0]))
    assert_decoded_close(got, want)  # the same cells in the same order, the maximum exactly
    # The rule for non-finite maps: NaN coordinates (both) exactly when the map holds a NaN.
    has_nan = torch.isnan(maps.float()).flatten(-2).any(-1)
    for coords in (got[0], want[0]):
        assert torch.equal(torch.isnan(coords).all(-1), has_nan) and torch.equal(torch.isnan(coords).any(-1), has_nan)
