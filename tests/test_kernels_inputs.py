"""What the ops accept: masks of any bool/integer/floating dtype, per-keypoint loss weights,
numbers of any numeric type, and the lower bound on sigma. Every backend available here
(the Triton interpreter on the CPU; CUDA C too on a GPU machine)."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

import h3r_kernels
from conftest import available_backends
from h3r_kernels import checks, reference

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
BACKENDS = available_backends(DEVICE)
pytestmark = [
    pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning"),  # the interpreter's numpy
    pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning"),
]


def _keypoints(batch=2, num=4, height=6, width=7):
    return (torch.rand(batch, num, 2) * torch.tensor([width - 1.0, height - 1.0])).to(DEVICE)


# --------------------------------------------------------------------------- masks


def _masks():
    """The same visibility in every accepted dtype; the floating masks hold NaN (invisible)
    and values other than 0/1 (visible)."""
    pattern = torch.tensor([[2.0, 0.0, -1.0, float("nan")], [0.5, 1.0, 0.0, 1e-30]])
    want = torch.tensor([[True, False, True, False], [True, True, False, True]])
    masks = {str(dtype): pattern.to(dtype) for dtype in (torch.float32, torch.float64)}
    masks["float16"] = torch.tensor([[2.0, 0.0, -1.0, float("nan")], [0.5, 1.0, 0.0, 1e-4]], dtype=torch.float16)
    masks["bfloat16"] = pattern.to(torch.bfloat16)
    for dtype in (torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64):
        masks[str(dtype)] = want.to(dtype) * (3 if dtype != torch.int8 else -2)
    return want, masks


@pytest.mark.parametrize("backend", BACKENDS)
def test_every_mask_dtype_means_non_zero_visible_and_nan_invisible(backend):
    want, masks = _masks()
    keypoints = _keypoints()
    logits = torch.randn(2, 4, 6, 7, device=DEVICE)
    target = h3r_kernels.encode(keypoints, (6, 7), want.to(DEVICE), seed=3, backend=backend)
    loss = h3r_kernels.heatmap_loss(logits, keypoints, want.to(DEVICE), seed=3, reduction="none", backend=backend)
    for name, mask in masks.items():
        mask = mask.to(DEVICE)
        assert torch.equal(h3r_kernels.encode(keypoints, (6, 7), mask, seed=3, backend=backend), target), name
        got = h3r_kernels.heatmap_loss(logits, keypoints, mask, seed=3, reduction="none", backend=backend)
        assert torch.equal(got, loss), name


def test_bool_masks_are_used_as_they_are():
    mask = torch.rand(2, 3) > 0.5
    assert reference.visible_as_bool(mask) is mask
    assert reference.visible_as_bool(None) is None
    assert torch.equal(reference.visible_as_bool(torch.tensor([[float("nan"), -0.0, 0.1]])), torch.tensor([[False, False, True]]))


@pytest.mark.parametrize(
    "mask,match",
    [
        (torch.ones(2, 4, dtype=torch.complex64), "visible: expected dtype bool, an integer or a floating dtype"),
        (torch.ones(2, 5, dtype=torch.bool), r"visible: expected shape \(B, K\) = \(2, 4\)"),
        ([[True] * 4] * 2, "visible: expected a torch.Tensor or None, got list"),
    ],
)
def test_bad_masks_are_named(mask, match):
    with pytest.raises((TypeError, ValueError), match=match):
        h3r_kernels.encode(_keypoints(), (6, 7), mask)
    with pytest.raises((TypeError, ValueError), match=match):
        h3r_kernels.heatmap_loss(torch.zeros(2, 4, 6, 7, device=DEVICE), _keypoints(), mask)


# --------------------------------------------------------------------------- weights


def _unfused(logits, keypoints, visible, weight, loss, sigma=0.0, seed=5):
    """The weighted loss from the encode target with plain torch ops: (per-keypoint sums, pixel losses)."""
    target = h3r_kernels.encode(keypoints, logits.shape[-2:], visible, sigma=sigma, seed=seed, backend="reference")
    z = logits.double()
    if loss == "bce":
        pixel = F.binary_cross_entropy_with_logits(z, target.double(), reduction="none")
    else:
        pixel = (z - target.double()) ** 2
    return pixel.sum((-2, -1)) * weight.double()


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("loss", ["bce", "mse"])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_weights_scale_each_keypoint_and_mean_divides_by_the_contributing_pixels(backend, loss, reduction):
    keypoints = _keypoints(2, 4, 6, 7)
    keypoints[1, 3] = torch.tensor([40.0, 2.0])  # off the map
    visible = torch.tensor([[True, True, False, True], [True, True, True, True]], device=DEVICE)
    weight = torch.tensor([[0.5, 0.0, 3.0, 2.0], [1.0, -1.5, 0.25, 7.0]], device=DEVICE)
    logits = (torch.randn(2, 4, 6, 7, device=DEVICE) * 2).requires_grad_()
    value = h3r_kernels.heatmap_loss(logits, keypoints, visible, weight=weight, seed=5, loss=loss,
                                     reduction=reduction, backend=backend)
    contributing = visible & (weight != 0) & torch.tensor([[True] * 4, [True, True, True, False]], device=DEVICE)
    per_keypoint = torch.where(contributing, _unfused(logits.detach(), keypoints, visible, weight, loss), 0.0)
    want = {"none": per_keypoint, "sum": per_keypoint.sum(), "mean": per_keypoint.sum() / (5 * 6 * 7)}[reduction]
    torch.testing.assert_close(value.double(), want, rtol=1e-5, atol=1e-5)

    # The gradient is the weighted gradient of the same loss (autograd through the unfused form).
    value.sum().backward()
    z = logits.detach().double().requires_grad_()
    per_keypoint = torch.where(contributing, _unfused(z, keypoints, visible, weight, loss), 0.0)
    divisor = 5 * 6 * 7 if reduction == "mean" else 1
    (per_keypoint.sum() / divisor).backward()
    torch.testing.assert_close(logits.grad.double(), z.grad, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_weight_one_everywhere_gives_the_unweighted_bits(backend, reduction, dtype):
    keypoints = _keypoints(2, 3, 5, 8)
    visible = torch.tensor([[True, False, True], [True, True, True]], device=DEVICE)
    logits = torch.randn(2, 3, 5, 8, device=DEVICE).to(dtype).requires_grad_()
    results = []
    for weight in (None, torch.ones(2, 3, device=DEVICE, dtype=torch.float16)):
        value = h3r_kernels.heatmap_loss(logits, keypoints, visible, weight=weight, seed=9, reduction=reduction,
                                         backend=backend)
        (grad,) = torch.autograd.grad(value.sum(), logits)
        results.append((value, grad))
    assert torch.equal(results[0][0], results[1][0]) and torch.equal(results[0][1], results[1][1])


@pytest.mark.parametrize("backend", BACKENDS)
def test_non_finite_and_negative_weights_are_used_as_given(backend):
    """Negative weights negate, NaN/inf weights show in the loss; on a keypoint that does not
    contribute (invisible here) a NaN or inf weight changes nothing."""
    keypoints = _keypoints(1, 4, 5, 6)
    visible = torch.tensor([[True, True, True, False]], device=DEVICE)
    logits = torch.randn(1, 4, 5, 6, device=DEVICE)
    base = h3r_kernels.heatmap_loss(logits, keypoints, visible, seed=1, reduction="none", backend=backend)
    weight = torch.tensor([[-2.0, float("nan"), float("inf"), float("nan")]], device=DEVICE)
    got = h3r_kernels.heatmap_loss(logits, keypoints, visible, weight=weight, seed=1, reduction="none", backend=backend)
    torch.testing.assert_close(got[0, 0], -2 * base[0, 0])
    assert torch.isnan(got[0, 1]) and got[0, 2] == float("inf") and got[0, 3] == 0
    assert torch.isnan(h3r_kernels.heatmap_loss(logits, keypoints, visible, weight=weight, seed=1, backend=backend))
    weight[0, 1] = weight[0, 2] = 1.0
    finite = h3r_kernels.heatmap_loss(logits, keypoints, visible, weight=weight, seed=1, backend=backend)
    assert torch.isfinite(finite)


def test_no_gradient_flows_to_the_weight():
    logits = torch.randn(1, 2, 4, 4, requires_grad=True)
    weight = torch.tensor([[1.0, 2.0]], requires_grad=True)
    h3r_kernels.heatmap_loss(logits, _keypoints(1, 2, 4, 4).cpu(), weight=weight, seed=0).backward()
    assert logits.grad is not None and weight.grad is None


def test_mmpose_keypoint_mse_loss_with_target_weight():
    """mmpose 1.x KeypointMSELoss(use_target_weight=True): mean over B*K*H*W of w * (z - t)^2."""
    keypoints = _keypoints(2, 3, 12, 10).cpu()
    weight = torch.tensor([[1.0, 0.0, 0.5], [1.0, 1.0, 0.0]])
    heatmaps = torch.rand(2, 3, 12, 10)
    target = h3r_kernels.encode(keypoints, (12, 10), sigma=2.0, rounding="nearest")
    mmpose = (F.mse_loss(heatmaps, target, reduction="none") * weight[..., None, None]).mean()
    ours = h3r_kernels.heatmap_loss(heatmaps, keypoints, weight=weight, loss="mse", sigma=2.0, rounding="nearest",
                                    reduction="sum") / heatmaps.numel()
    torch.testing.assert_close(ours, mmpose)


@pytest.mark.parametrize(
    "weight,match",
    [
        (torch.ones(2, 4, dtype=torch.int64), "weight: expected dtype float32, float64, float16 or bfloat16, got torch.int64"),
        (torch.ones(2, 4, dtype=torch.bool), "weight: expected dtype float32, float64, float16 or bfloat16"),
        (torch.ones(2, 4, 1), r"weight: expected shape \(B, K\) = \(2, 4\) to match keypoints, got \(2, 4, 1\)"),
        (torch.ones(4), r"weight: expected shape \(B, K\)"),
        (np.ones((2, 4), dtype=np.float32), "weight: expected a torch.Tensor or None, got numpy.ndarray"),
    ],
)
def test_bad_weights_are_named(weight, match):
    logits = torch.zeros(2, 4, 6, 7)
    with pytest.raises((TypeError, ValueError), match=match):
        h3r_kernels.heatmap_loss(logits, _keypoints().cpu(), weight=weight)
    if not isinstance(weight, torch.Tensor):
        return  # the op's schema itself refuses it
    # The fake (meta) kernel runs the same check.
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode(), pytest.raises((TypeError, ValueError), match=match):
        fake_weight = torch.ones(weight.shape, dtype=weight.dtype)
        torch.ops.h3r.heatmap_loss(torch.zeros(2, 4, 6, 7), torch.zeros(2, 4, 2), None, 0.0, "random", 1, "bce",
                                   "mean", False, "reference", fake_weight)


@pytest.mark.gpu
def test_weight_on_another_device_is_named():
    with pytest.raises(ValueError, match="weight: expected device cuda"):
        h3r_kernels.heatmap_loss(torch.zeros(2, 4, 6, 7, device="cuda"), _keypoints(), weight=torch.ones(2, 4))


@pytest.mark.parametrize("backend", BACKENDS)
def test_opcheck_with_weight_and_integer_mask(backend):
    logits = torch.randn(2, 3, 5, 6, device=DEVICE, requires_grad=True)
    keypoints = _keypoints(2, 3, 5, 6)
    visible = torch.tensor([[1, 0, 2], [1, 1, 0]], device=DEVICE, dtype=torch.int32)
    weight = torch.tensor([[0.5, 1.0, 0.0], [2.0, 1.0, 1.0]], device=DEVICE)
    args = (logits, keypoints, visible, 0.0, "random", 3, "bce", "mean", True, backend, weight)
    torch.library.opcheck(torch.ops.h3r.heatmap_loss.default, args)
    encode_args = (keypoints, visible.float(), 5, 6, 1.5, "nearest", 3, False, torch.float32, backend)
    torch.library.opcheck(torch.ops.h3r.encode.default, encode_args)


# --------------------------------------------------------------------------- numbers


@pytest.mark.parametrize(
    "seed", [np.int64(3), np.uint32(3), np.int8(3), torch.tensor(3), torch.tensor(3, dtype=torch.uint8)], ids=repr
)
def test_seeds_of_any_integer_type(seed):
    keypoints = _keypoints()
    want = h3r_kernels.encode(keypoints, (6, 7), seed=3)
    assert torch.equal(h3r_kernels.encode(keypoints, (6, 7), seed=seed), want)
    logits = torch.randn(2, 4, 6, 7, device=DEVICE)
    assert torch.equal(h3r_kernels.heatmap_loss(logits, keypoints, seed=seed), h3r_kernels.heatmap_loss(logits, keypoints, seed=3))


@pytest.mark.parametrize(
    "sigma", [np.float32(1.5), np.float64(1.5), torch.tensor(1.5), torch.tensor(1.5, dtype=torch.float64)], ids=repr
)
def test_sigmas_of_any_real_type(sigma):
    keypoints = _keypoints()
    want = h3r_kernels.encode(keypoints, (6, 7), sigma=1.5, seed=2)
    assert torch.equal(h3r_kernels.encode(keypoints, (6, 7), sigma=sigma, seed=2), want)
    assert torch.equal(h3r_kernels.encode(keypoints, (6, 7), sigma=np.int64(2), seed=2),
                       h3r_kernels.encode(keypoints, (6, 7), sigma=2.0, seed=2))


def test_decode_options_of_any_integer_type():
    maps = torch.randn(2, 3, 5, 6, device=DEVICE)
    want = h3r_kernels.decode(maps, method="local", k=4, window=3)
    assert all(torch.equal(a, b) for a, b in zip(h3r_kernels.decode(maps, method="local", k=np.int64(4), window=np.int32(3)), want))
    assert torch.equal(h3r_kernels.decode(maps, k=torch.tensor(4))[0], h3r_kernels.decode(maps, k=4)[0])


KP = torch.zeros(2, 3, 2)
MAPS = torch.zeros(2, 3, 4, 5)


@pytest.mark.parametrize(
    "call,error,match",
    [
        (lambda: h3r_kernels.encode(KP, (4, 4), sigma=True), TypeError, "sigma: expected a finite number >= 0 .*got bool True"),
        (lambda: h3r_kernels.encode(KP, (4, 4), sigma=np.bool_(True)), TypeError, "sigma: .*got numpy.bool"),
        (lambda: h3r_kernels.encode(KP, (4, 4), sigma=torch.tensor(True)), TypeError, "sigma: .*got a 0-d torch.bool tensor"),
        (lambda: h3r_kernels.encode(KP, (4, 4), sigma="1.0"), TypeError, "sigma: .*got str '1.0'"),
        (lambda: h3r_kernels.encode(KP, (4, 4), sigma=1 + 0j), TypeError, "sigma: .*got complex"),
        (lambda: h3r_kernels.encode(KP, (4, 4), sigma=torch.ones(1)), TypeError, "sigma: .*got a 1-d torch.float32 tensor"),
        (lambda: h3r_kernels.encode(KP, (4, 4), sigma=np.float32("nan")), ValueError, "sigma: expected a finite number >= 0, got nan"),
        (lambda: h3r_kernels.encode(KP, (4, 4), sigma=torch.tensor(-1.0)), ValueError, "sigma: expected a finite number >= 0, got -1.0"),
        (lambda: h3r_kernels.heatmap_loss(MAPS, KP, sigma=False), TypeError, "sigma: .*got bool False"),
        (lambda: h3r_kernels.encode(KP, (4, 4), seed=True), TypeError, r"seed: expected None or an integer in \[0, 2\*\*32\), got bool True"),
        (lambda: h3r_kernels.encode(KP, (4, 4), seed=np.float64(3.0)), TypeError, "seed: .*got numpy.float64"),
        (lambda: h3r_kernels.encode(KP, (4, 4), seed=3.0), TypeError, "seed: .*got float 3.0"),
        (lambda: h3r_kernels.encode(KP, (4, 4), seed=torch.tensor(3.0)), TypeError, "seed: .*got a 0-d torch.float32 tensor"),
        (lambda: h3r_kernels.encode(KP, (4, 4), seed=np.int64(-1)), ValueError, r"seed: expected None or an integer in \[0, 2\*\*32\), got -1"),
        (lambda: h3r_kernels.heatmap_loss(MAPS, KP, seed=np.uint64(2**32)), ValueError, r"seed: .*got 4294967296"),
        (lambda: h3r_kernels.encode(KP, (True, 4)), ValueError, r"heatmap_size: expected \(H, W\)"),
        (lambda: h3r_kernels.decode(MAPS, k=True), TypeError, r"k: expected an integer in \[1, 32\], got bool True"),
        (lambda: h3r_kernels.decode(MAPS, k=4.0), TypeError, "k: .*got float 4.0"),
        (lambda: h3r_kernels.decode(MAPS, method="local", window=np.float32(3)), TypeError, "window: .*got numpy.float32"),
        (lambda: h3r_kernels.encode(KP, (4, 4), sigma=10**400), ValueError, "sigma: expected a finite number >= 0, got inf"),
        (lambda: h3r_kernels.encode(KP, (10**30, 5)), ValueError, r"heatmap_size: expected at most 2\*\*31 - 1 cells"),
        (lambda: h3r_kernels.encode(KP, (2**62, 2)), ValueError, r"heatmap_size: expected at most 2\*\*31 - 1 cells"),
        (lambda: h3r_kernels.encode(KP, (4, 4), expected="no"), TypeError, "expected: expected True or False, got str 'no'"),
        (lambda: h3r_kernels.encode(KP, (4, 4), expected=torch.tensor([True, False])), TypeError,
         "expected: expected True or False, got a 1-d torch.bool tensor"),
        (lambda: h3r_kernels.HeatmapEncoder((4, 4), expected=1), TypeError, "expected: expected True or False, got int 1"),
        (lambda: h3r_kernels.encode(KP, (4, 4), seed=torch.tensor(3, device="meta")), TypeError,
         "seed: .*got a 0-d torch.int64 tensor"),
    ],
)
def test_bad_numbers_are_named_with_their_type(call, error, match):
    with pytest.raises(error, match=match):
        call()


# --------------------------------------------------------------------------- sigma bound


@pytest.mark.parametrize("sigma", [3e-20, 1e-30, 1e-300, 5e-324])
def test_sigma_too_small_for_float32_is_rejected_with_the_bound(sigma):
    match = r"sigma: expected 0 or a number >= 3\.8332e-20 = sqrt\(0\.5 / float32 max\)"
    with pytest.raises(ValueError, match=match):
        h3r_kernels.encode(KP, (4, 4), sigma=sigma)
    with pytest.raises(ValueError, match=match):
        h3r_kernels.heatmap_loss(MAPS, KP, sigma=sigma)
    with pytest.raises(ValueError, match=match):
        h3r_kernels.HeatmapLoss(sigma=sigma)


@pytest.mark.parametrize("backend", BACKENDS)
def test_smallest_sigma_gives_finite_unit_peaks(backend):
    assert np.isfinite(np.float32(-0.5 / (checks.MIN_SIGMA * checks.MIN_SIGMA)))
    keypoints = torch.tensor([[[1.0, 2.0], [3.0, 0.0]]], device=DEVICE)
    maps = h3r_kernels.encode(keypoints, (4, 5), sigma=checks.MIN_SIGMA, rounding="nearest", backend=backend)
    assert torch.equal(maps, h3r_kernels.encode(keypoints, (4, 5), rounding="nearest", backend=backend))
    logits = torch.randn(1, 2, 4, 5, device=DEVICE, requires_grad=True)
    value = h3r_kernels.heatmap_loss(logits, keypoints, sigma=checks.MIN_SIGMA, rounding="nearest", backend=backend)
    value.backward()
    assert torch.isfinite(value) and torch.isfinite(logits.grad).all()


def test_a_backend_forced_by_the_environment_is_named(monkeypatch):
    """H3R_BACKEND=cuda without CuPy/GPU: the error says the environment variable chose it."""
    monkeypatch.setenv("H3R_BACKEND", "cuda")
    with pytest.raises(RuntimeError, match=r"backend='cuda' \(from the environment variable H3R_BACKEND\) "
                                           r"(is not available here|needs CUDA tensors)"):
        h3r_kernels.encode(KP, (4, 4), seed=0)


def test_export_with_a_zero_d_seed_tensor():
    """torch.export traces a 0-d CPU seed tensor (its value is symbolic there), and the exported
    program draws what the eager call draws."""
    class Encode(torch.nn.Module):
        def forward(self, keypoints, seed):
            return h3r_kernels.encode(keypoints, (6, 7), seed=seed)

    keypoints = torch.rand(2, 3, 2) * 5
    seed = torch.tensor(11)
    exported = torch.export.export(Encode(), (keypoints, seed))
    assert torch.equal(exported.module()(keypoints, seed), h3r_kernels.encode(keypoints, (6, 7), seed=11))
    assert torch.equal(exported.module()(keypoints, torch.tensor(12)), h3r_kernels.encode(keypoints, (6, 7), seed=12))
