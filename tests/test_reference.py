"""The specification itself: randomized rounding is unbiased, the expected target is lossless,
vanilla rounding has its textbook error, and the fused loss is BCE/MSE on encode's target."""
import math

import pytest
import torch
import torch.nn.functional as F

import h3r_kernels
from h3r_kernels import reference, rng


def _lowbias32(x: int) -> int:
    x ^= x >> 16
    x = (x * 0x7FEB352D) & 0xFFFFFFFF
    x ^= x >> 15
    x = (x * 0x846CA68B) & 0xFFFFFFFF
    return x ^ (x >> 16)


def _uniform(seed: int, b: int, k: int, axis: int) -> float:
    h = _lowbias32(_lowbias32(_lowbias32(seed ^ 0x9E3779B9) ^ b) ^ (2 * k + axis))
    return (h >> 8) / 2**24


@pytest.mark.parametrize("seed", [0, 1, 12345, 2**32 - 1])
def test_generator_matches_plain_python_integers(seed):
    u = rng.uniforms(seed, 3, 5)
    expected = torch.tensor(
        [[[_uniform(seed, b, k, a) for a in range(2)] for k in range(5)] for b in range(3)], dtype=torch.float32
    )
    assert torch.equal(u, expected)
    assert u.min() >= 0 and u.max() < 1


def test_generator_golden_values():
    """Frozen: changing the generator silently changes every user's targets."""
    u = rng.uniforms(42, 2, 3)  # (b, k, axis) in row-major order
    assert (u.flatten() * 2**24).long().tolist() == [
        11508089, 1521782, 10846213, 302540, 4221643, 3444633,
        4204466, 7883714, 3019070, 1020168, 4301071, 3516072,
    ]


def _loop_encode(keypoints, visible, height, width, sigma, rounding, seed, expected):
    """An explicit, loop-based statement of encode, written independently of reference.py."""
    batch, num = keypoints.shape[:2]
    out = torch.zeros(batch, num, height, width, dtype=torch.float64)
    for b in range(batch):
        for k in range(num):
            if visible is not None and not visible[b, k]:
                continue
            x, y = (float(torch.tensor(v, dtype=torch.float32)) for v in keypoints[b, k].tolist())
            if not (math.isfinite(x) and math.isfinite(y)):
                continue
            if expected and rounding == "random":
                comps = []
                for ax, wx in ((math.floor(x), 1 - (x - math.floor(x))), (math.floor(x) + 1, x - math.floor(x))):
                    for ay, wy in ((math.floor(y), 1 - (y - math.floor(y))), (math.floor(y) + 1, y - math.floor(y))):
                        if 0 <= ax < width and 0 <= ay < height:
                            comps.append((ax, ay, wx * wy))
                for ax, ay, w in comps:
                    for r in range(height):
                        for c in range(width):
                            d2 = (c - ax) ** 2 + (r - ay) ** 2
                            out[b, k, r, c] += w * (float(d2 == 0) if sigma == 0 else math.exp(-d2 / (2 * sigma**2)))
                continue
            if rounding == "random":
                cx = math.floor(x) + (_uniform(seed, b, k, 0) < x - math.floor(x))
                cy = math.floor(y) + (_uniform(seed, b, k, 1) < y - math.floor(y))
            elif rounding == "floor":
                cx, cy = math.floor(x), math.floor(y)
            else:
                cx, cy = math.floor(x + 0.5), math.floor(y + 0.5)
            if not (0 <= cx < width and 0 <= cy < height):
                continue
            mx, my = (x, y) if rounding == "none" else (cx, cy)
            for r in range(height):
                for c in range(width):
                    d2 = (c - mx) ** 2 + (r - my) ** 2
                    out[b, k, r, c] = float(d2 == 0) if sigma == 0 else math.exp(-d2 / (2 * sigma**2))
    return out


@pytest.mark.parametrize("rounding", ["random", "nearest", "floor", "none"])
@pytest.mark.parametrize("sigma", [0.0, 1.3])
@pytest.mark.parametrize("expected", [False, True])
def test_encode_matches_explicit_loops(rounding, sigma, expected):
    if rounding == "none" and sigma == 0:
        pytest.skip("rounding='none' needs sigma > 0")
    keypoints = torch.rand(2, 7, 2) * torch.tensor([8.0, 6.0]) - 1.0  # some just off the map
    keypoints[0, 0] = torch.tensor([0.0, 0.0])
    keypoints[0, 1] = torch.tensor([6.99, 4.99])
    keypoints[1, 2] = torch.tensor([float("nan"), 1.0])
    visible = torch.ones(2, 7, dtype=torch.bool)
    visible[1, 3] = False
    got = h3r_kernels.encode(keypoints, (5, 7), visible, sigma=sigma, rounding=rounding, seed=99, expected=expected)
    want = _loop_encode(keypoints, visible, 5, 7, sigma, rounding, 99, expected)
    assert got.dtype == torch.float32
    if sigma == 0 and not (expected and rounding == "random"):
        assert torch.equal(got.double(), want)
    else:
        torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-6)


def test_randomized_rounding_is_unbiased():
    """Mean sampled cell -> true coordinate, within 6 standard errors (sqrt(f(1-f)/N))."""
    draws, num = 2000, 12
    keypoints = (torch.rand(1, num, 2) * 10 + 1).expand(draws, num, 2).contiguous()
    cells = reference.rounded_cells(keypoints, "random", seed=7)
    frac = keypoints[0] - keypoints[0].floor()
    bound = 6 * torch.sqrt(frac * (1 - frac) / draws) + 1e-6
    assert ((cells.mean(0) - keypoints[0]).abs() <= bound).all()
    # Across seeds, through the public op: the arg-max of each map is the sampled cell.
    seeds = 300
    maps = torch.stack([h3r_kernels.encode(keypoints[:1], (13, 13), seed=s) for s in range(seeds)])
    flat = maps.flatten(-2).argmax(-1)[:, 0]  # (seeds, K)
    mean_cell = torch.stack([flat % 13, flat // 13], -1).double().mean(0)
    bound = 6 * torch.sqrt(frac * (1 - frac) / seeds) + 1e-6
    assert ((mean_cell - keypoints[0].double()).abs() <= bound).all()


def test_randomized_rounding_axes_are_independent():
    """The 4 neighbours are hit with the bilinear probabilities (each within 6 binomial sigmas)."""
    draws = 20000
    point = torch.tensor([3.3, 5.6])
    cells = reference.rounded_cells(point.expand(draws, 1, 2).contiguous(), "random", seed=3)[:, 0]
    offsets = cells - point.floor()
    fx, fy = 0.3, 0.6
    for (ax, ay), p in {(0, 0): (1 - fx) * (1 - fy), (1, 0): fx * (1 - fy), (0, 1): (1 - fx) * fy, (1, 1): fx * fy}.items():
        freq = ((offsets[:, 0] == ax) & (offsets[:, 1] == ay)).double().mean().item()
        assert abs(freq - p) <= 6 * math.sqrt(p * (1 - p) / draws)


def test_expected_target_is_the_mean_of_sampled_targets():
    keypoints = torch.rand(1, 3, 2) * 6
    keypoints[0, 2] = torch.tensor([5.5, -0.5])  # half of its mass off the map
    expected = h3r_kernels.encode(keypoints, (6, 6), expected=True).double()
    draws = 4000
    mean = h3r_kernels.encode(keypoints.expand(draws, 3, 2).contiguous(), (6, 6), seed=5).double().mean(0, keepdim=True)
    assert (mean - expected).abs().max() <= 6 * math.sqrt(0.25 / draws)


@pytest.mark.parametrize("method,extra", [("topk", {"k": 4}), ("local", {"window": 3})])
def test_expected_target_is_lossless(method, extra):
    keypoints = torch.rand(4, 16, 2) * torch.tensor([22.0, 14.0]) + 0.5  # interior of a 16x24 map
    maps = h3r_kernels.encode(keypoints, (16, 24), expected=True, dtype=torch.float64)
    coords, scores = h3r_kernels.decode(maps, method=method, weights="linear", **extra)
    assert (coords - keypoints.double()).abs().max() < 1e-4
    assert torch.allclose(scores, maps.flatten(-2).amax(-1))


def test_vanilla_rounding_error_matches_closed_form():
    n = 20000
    keypoints = torch.rand(1, n, 2, dtype=torch.float64) * 14 + 1
    maps = h3r_kernels.encode(keypoints, (17, 17), rounding="nearest")
    coords, _ = h3r_kernels.decode(maps, method="argmax")
    err = coords - keypoints
    assert err.abs().max() <= 0.5 + 1e-6
    dist = err.norm(dim=-1)
    closed_form = (math.sqrt(2) + math.log(1 + math.sqrt(2))) / 6
    assert closed_form == pytest.approx(0.3826, abs=1e-4)
    assert abs(dist.mean().item() - closed_form) <= 6 * dist.std().item() / math.sqrt(n)


def test_floor_rounding_is_biased_by_half_a_cell():
    keypoints = torch.rand(1, 5000, 2) * 10 + 1
    coords, _ = h3r_kernels.decode(h3r_kernels.encode(keypoints, (13, 13), rounding="floor"), method="argmax")
    assert (coords - keypoints).mean().item() == pytest.approx(-0.5, abs=0.03)


DTYPES = [torch.float32, torch.float16, torch.bfloat16, torch.float64]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("loss,sigma,rounding", [("bce", 0.0, "random"), ("mse", 1.5, "nearest"), ("mse", 2.0, "random")])
def test_fused_loss_equals_unfused_loss_on_encode(dtype, loss, sigma, rounding):
    keypoints = torch.rand(3, 5, 2) * 9
    logits = (torch.randn(3, 5, 9, 11) * 3).to(dtype).requires_grad_()
    value = h3r_kernels.heatmap_loss(logits, keypoints, sigma=sigma, rounding=rounding, seed=11, loss=loss)
    (grad,) = torch.autograd.grad(value, logits)
    target = h3r_kernels.encode(keypoints, (9, 11), sigma=sigma, rounding=rounding, seed=11, dtype=torch.float64)
    z = logits.detach().double().requires_grad_()
    fn = F.binary_cross_entropy_with_logits if loss == "bce" else F.mse_loss
    want = fn(z, target)
    (want_grad,) = torch.autograd.grad(want, z)
    tol = {torch.float64: 1e-10, torch.float32: 1e-5}.get(dtype, 1e-3)
    assert value.item() == pytest.approx(want.item(), rel=tol, abs=tol)
    torch.testing.assert_close(grad.double(), want_grad, rtol=2e-2 if dtype in (torch.float16, torch.bfloat16) else 1e-5, atol=1e-7)
    assert grad.dtype == dtype


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_masked_keypoints_contribute_nothing(reduction):
    keypoints = torch.rand(2, 4, 2) * 7
    keypoints[0, 1] = torch.tensor([30.0, 2.0])  # off the map
    keypoints[1, 3] = torch.tensor([float("nan"), float("inf")])  # invisible and not finite
    visible = torch.ones(2, 4, dtype=torch.bool)
    visible[1, 3] = False
    logits = torch.randn(2, 4, 8, 8, requires_grad=True)
    value = h3r_kernels.heatmap_loss(logits, keypoints, visible, seed=1, reduction=reduction)
    (grad,) = torch.autograd.grad(value.sum(), logits)
    assert torch.isfinite(value).all() and torch.isfinite(grad).all()
    assert (grad[0, 1] == 0).all() and (grad[1, 3] == 0).all()
    keep = torch.ones(2, 4, dtype=torch.bool)
    keep[0, 1] = keep[1, 3] = False
    target = h3r_kernels.encode(keypoints, (8, 8), visible, seed=1)
    pixel = F.binary_cross_entropy_with_logits(logits.detach(), target, reduction="none")[keep]
    want = {"mean": pixel.mean(), "sum": pixel.sum()}.get(reduction)
    if reduction == "none":
        assert (value[~keep] == 0).all()
        torch.testing.assert_close(value[keep], pixel.sum((-2, -1)))
    else:
        torch.testing.assert_close(value, want)


def test_seed_none_follows_torch_manual_seed():
    keypoints = torch.rand(2, 30, 2) * 8
    torch.manual_seed(123)
    first = h3r_kernels.encode(keypoints, (10, 10))
    torch.manual_seed(123)
    assert torch.equal(first, h3r_kernels.encode(keypoints, (10, 10)))
    assert not torch.equal(first, h3r_kernels.encode(keypoints, (10, 10)))


def test_draws_do_not_depend_on_batch_or_keypoint_count():
    keypoints = torch.rand(4, 6, 2) * 8
    whole = h3r_kernels.encode(keypoints, (9, 9), seed=5)
    assert torch.equal(whole[:2, :3], h3r_kernels.encode(keypoints[:2, :3], (9, 9), seed=5))


@pytest.mark.parametrize("weights", ["softmax", "linear"])
def test_decode_topk_is_the_released_decoder(weights):
    maps = torch.rand(2, 3, 7, 9)
    coords, scores = h3r_kernels.decode(maps, k=9, weights=weights)
    flat = maps.flatten(-2)
    values, index = flat.topk(9, dim=-1)
    w = values.softmax(-1) if weights == "softmax" else values / values.sum(-1, keepdim=True)
    want = torch.stack([(w * (index % 9)).sum(-1), (w * (index // 9)).sum(-1)], -1)
    torch.testing.assert_close(coords, want)
    torch.testing.assert_close(scores, flat.amax(-1))


def test_decode_ties_go_to_the_lower_flat_index():
    maps = torch.zeros(1, 1, 4, 5)
    maps[0, 0, 1, 3] = maps[0, 0, 2, 0] = maps[0, 0, 3, 4] = 1.0
    coords, _ = h3r_kernels.decode(maps, k=2, weights="linear")
    assert coords[0, 0].tolist() == [1.5, 1.5]  # (3, 1) and (0, 2), not (4, 3)
    coords, _ = h3r_kernels.decode(maps, method="argmax")
    assert coords[0, 0].tolist() == [3.0, 1.0]


def test_decode_local_window_is_clipped_at_the_border():
    maps = torch.zeros(1, 1, 5, 5)
    maps[0, 0, 0, 0] = 4.0
    maps[0, 0, 0, 1] = 2.0
    maps[0, 0, 1, 0] = 2.0
    maps[0, 0, 4, 4] = 3.9  # outside the window: ignored
    coords, _ = h3r_kernels.decode(maps, method="local", window=3, weights="linear")
    torch.testing.assert_close(coords[0, 0], torch.tensor([0.25, 0.25]))


def test_decode_linear_falls_back_to_the_peak_on_non_positive_maps():
    maps = -torch.rand(1, 2, 6, 6)
    coords, scores = h3r_kernels.decode(maps, weights="linear")
    peak = maps.flatten(-2).argmax(-1)
    assert torch.equal(coords, torch.stack([peak % 6, peak // 6], -1).float())
