"""The study's codecs: DARK (both halves, border guards), integral regression, UDP's offsets, sigma defaults,
ideal outputs."""
import math

import pytest
import torch

from h3r.codecs import (CODEC_NAMES, GaussianCodec, H3RCodec, IntegralCodec, OffsetCodec, build_codec,
                        dark_blur_radius, default_gaussian_sigma, opencv_blur, opencv_gaussian_kernel, soft_argmax)


def grid_of_keypoints(side: int, per_cell: int = 8) -> torch.Tensor:
    """(1, M, 2) keypoints covering the map's cell-centre square [0, side - 1]² at 1/per_cell steps."""
    axis = torch.linspace(0, side - 1, per_cell * (side - 1) + 1)
    return torch.stack(torch.meshgrid(axis, axis, indexing="ij"), dim=-1).reshape(1, -1, 2)


@pytest.mark.parametrize("side, per_cell", [(5, 8), (8, 8), (16, 6), (32, 3)])
@pytest.mark.parametrize("sigma", [0.25, 0.5, 1.0, 1.5, 2.0, 3.0])
def test_dark_is_never_worse_than_argmax_on_unbiased_gaussians(side, per_cell, sigma):
    """Everywhere on the map, and within 0.05 cells where the Taylor step applies (σ >= 0.5)."""
    keypoints = grid_of_keypoints(side, per_cell)
    dark = GaussianCodec(stride=1, sigma=sigma, refine="dark", rounding="none")
    argmax = GaussianCodec(stride=1, sigma=sigma, refine="none", rounding="none")
    for chunk in keypoints.split(2048, dim=1):
        maps = dark.targets(chunk, (side, side))
        dark_error = (dark.decode(maps)[0] - chunk).norm(dim=-1)
        argmax_error = (argmax.decode(maps)[0] - chunk).norm(dim=-1)
        assert (dark_error <= argmax_error + 1e-5).all(), float((dark_error - argmax_error).max())
        interior = ((chunk > 1.5) & (chunk < side - 2.5)).all(dim=-1)  # the peak has its ±2 neighbours
        if sigma >= 0.5 and interior.any():
            assert dark_error[interior].max() < 0.05


def test_dark_keeps_the_argmax_at_the_border():
    """The example of the bug report: a Gaussian at x = 1.3 decoded to 0.0 with replicate padding."""
    codec = build_codec("dark", stride=1, sigma=2.0)
    maps = codec.targets(torch.tensor([[[1.3, 7.0], [7.4, 7.7]]]), (16, 16))
    coords, _ = codec.decode(maps)
    assert coords[0, 0].tolist() == [1.0, 7.0]  # no ±2 neighbour on the left: the arg-max stands
    torch.testing.assert_close(coords[0, 1], torch.tensor([7.4, 7.7]), atol=0.01, rtol=0)


def test_dark_blur_kernel_follows_the_opencv_rule():
    assert dark_blur_radius(2.0) == 5 and dark_blur_radius(3.0) == 8  # kernel 11 for σ = 2, 17 for σ = 3
    assert dark_blur_radius(0.25) == 1


def test_codec_names_and_their_parts():
    assert CODEC_NAMES == ("h3r", "h3r-gaussian", "gaussian", "dark", "integral", "udp")
    vanilla, dark = build_codec("gaussian", 8, input_size=64), build_codec("dark", 8, input_size=64)
    assert (vanilla.rounding, vanilla.refine, vanilla.name) == ("nearest", "quarter", "gaussian")
    assert (dark.rounding, dark.refine, dark.name) == ("none", "dark", "dark")
    assert build_codec("gaussian", 8, input_size=64, refine="none").refine == "none"
    assert isinstance(build_codec("integral", 8), IntegralCodec)
    with pytest.raises(ValueError, match="rounding: expected one of nearest, none"):
        GaussianCodec(rounding="random")
    binary, smooth = build_codec("h3r", 8, input_size=64), build_codec("h3r-gaussian", 8, input_size=64)
    assert (binary.name, binary.sigma, smooth.name, smooth.sigma) == ("h3r", 0.0, "h3r-gaussian", vanilla.sigma)
    assert [H3RCodec(sigma=sigma).window for sigma in (0.25, 0.5, 1.0, 2.0)] == [5, 7, 9, 15]
    assert build_codec("h3r-gaussian", 4, sigma=1.5, weights="linear").weights == "linear"
    with pytest.raises(ValueError, match=r"sigma: at most 4.667 cells for h3r-gaussian \(its decoder's window"):
        H3RCodec(sigma=4.668)
    with pytest.raises(ValueError, match=r"sigma: expected a positive number of heatmap cells for h3r-gaussian"):
        build_codec("h3r-gaussian", 4, sigma=0.0)
    assert repr(H3RCodec(sigma=1.0)) == "H3RCodec(stride=4, sigma=1.0, window=9, weights='softmax')"
    assert repr(H3RCodec(window=3)) == "H3RCodec(stride=4, window=3, weights='softmax')"
    assert build_codec("h3r-gaussian", 4, sigma=1.0, window=5).window == 5 and build_codec("h3r", 4).window is None
    with pytest.raises(ValueError, match="window: expected an odd integer >= 1, got 4"):
        H3RCodec(window=4)
    with pytest.raises(ValueError, match="sigma: expected a finite number >= 0"):
        H3RCodec(sigma=-1.0)
    with pytest.raises(ValueError, match="sigma: give sigma, or input_size"):
        build_codec("h3r-gaussian", 4)


def test_default_sigma_covers_the_same_input_area_at_every_stride():
    for task, reference in (("face", 1.5), ("pose", 2.0)):
        pixels = [default_gaussian_sigma(256, stride, task) * stride for stride in (4, 8, 16, 32)]
        assert pixels == [4 * reference] * 4
    assert default_gaussian_sigma(64, 4) == 1.0 and default_gaussian_sigma(64, 16) == 0.25  # at least 1 cell at 4
    with pytest.raises(ValueError, match="task: expected one of face, pose"):
        default_gaussian_sigma(64, 4, task="hand")


def test_soft_argmax_and_the_integral_codec():
    logits = torch.full((1, 2, 4, 6), -30.0)
    logits[0, 0, 1, 2] = 30.0  # all mass on cell (x=2, y=1)
    logits[0, 1, 3, 4] = logits[0, 1, 3, 5] = 30.0  # half on (4, 3), half on (5, 3)
    torch.testing.assert_close(soft_argmax(logits), torch.tensor([[[2.0, 1.0], [4.5, 3.0]]]))
    codec = IntegralCodec(stride=8)
    coords, scores = codec.decode(logits)
    torch.testing.assert_close(coords, torch.tensor([[[16.0, 8.0], [36.0, 24.0]]]))
    torch.testing.assert_close(scores, torch.ones(1, 2))  # as mmpose's integral regression: no heatmap-scale confidence
    keypoints = torch.tensor([[[16.0, 8.0], [36.0, 24.0]]])
    assert codec.loss(logits, keypoints).item() < 1e-6
    uniform = torch.zeros(1, 2, 4, 6, requires_grad=True)
    loss = codec.loss(uniform, keypoints, torch.tensor([[True, False]]))  # centre (2.5, 1.5) vs (2, 1)
    assert math.isclose(loss.item(), (0.5 / 6 + 0.5 / 4) / 2, rel_tol=1e-5)
    loss.backward()
    assert uniform.grad[0, 1].abs().sum() == 0 and uniform.grad[0, 0].abs().sum() > 0
    assert codec.loss(uniform, keypoints, torch.tensor([[False, False]])).item() == 0.0


def test_ideal_outputs_measure_each_codecs_own_error():
    """Decoding the Bayes-optimal output: lossless for H3R with probability weights, 0.383 s for vanilla."""
    keypoints = torch.rand(1, 4000, 2, generator=torch.Generator().manual_seed(0)) * 15 * 4  # 16-cell map, stride 4
    for linear in (H3RCodec(stride=4, weights="linear"), H3RCodec(stride=4, weights="linear", window=3)):
        coords, _ = linear.decode(linear.ideal_output(keypoints, (16, 16)))
        assert (coords - keypoints).abs().max() < 1e-3  # top 9 or the 3x3 window: the 4 cells of the rounding
    vanilla = build_codec("gaussian", 4, input_size=64, refine="none")
    coords, _ = vanilla.decode(vanilla.ideal_output(keypoints, (16, 16)))
    mean_error = (coords - keypoints).norm(dim=-1).mean().item()
    closed_form = 4 * (math.sqrt(2) + math.log(1 + math.sqrt(2))) / 6
    assert abs(mean_error / closed_form - 1) < 0.03


@pytest.mark.parametrize("sigma", [0.25, 0.5, 1.0, 2.0])
def test_h3r_gaussian_codec(sigma):
    """The Gaussian H3R target: the loss is BCE against the rendered target of the same draw, and the
    expected target decodes to the keypoint in the interior."""
    codec = H3RCodec(stride=4, weights="linear", sigma=sigma)
    side, margin = 32, codec.window // 2 + 1  # keypoints whose window and Gaussian lie on the map
    generator = torch.Generator().manual_seed(1)
    keypoints = (margin + torch.rand(2, 300, 2, generator=generator) * (side - 1 - 2 * margin)) * 4
    logits = torch.randn(2, 300, side, side, generator=generator)
    target = codec.targets(keypoints, (side, side), seed=5)
    assert torch.equal(target.amax(dim=(2, 3)), torch.ones(2, 300))  # peak 1 on the drawn cell
    torch.testing.assert_close(codec.loss(logits, keypoints, seed=5),
                               torch.nn.functional.binary_cross_entropy_with_logits(logits, target))
    coords, _ = codec.decode(codec.ideal_output(keypoints, (side, side)))
    assert (coords - keypoints).norm(dim=-1).max() < 0.05  # input pixels; 0.004 px at sigma = 2, below 2e-4 under 1
    softmax = H3RCodec(stride=4, sigma=sigma)  # the authors' weighting on the same window: p/(1-p), not p
    coords, _ = softmax.decode(softmax.ideal_output(keypoints, (side, side)))
    assert 0.05 < (coords - keypoints).norm(dim=-1).mean() < 0.4  # 0.36 px at sigma 0.25, 0.09 at 2


@pytest.mark.parametrize("side, sigma", [(2, 1.0), (4, 1.0), (8, 0.25), (8, 4.0), (16, 0.5), (32, 1.0), (2, 4.6)])
def test_h3r_gaussian_initial_logit_is_the_targets_prior(side, sigma):
    """The mean of the target over the map, the drawn cell anywhere on it (edges cut the Gaussian)."""
    codec = H3RCodec(stride=1, sigma=sigma)
    cells = grid_of_keypoints(side, per_cell=1)  # every cell centre: rounding keeps them where they are
    prior = torch.sigmoid(torch.tensor(codec.initial_logit((side, side)), dtype=torch.float64))
    torch.testing.assert_close(prior, codec.targets(cells, (side, side), seed=0).double().mean(), rtol=1e-5, atol=0)



# cv2.getGaussianKernel(size, 0), rounded to 6 places (OpenCV 4.10.0 and 5.1.0 agree): binomial tables up to 9 taps.
OPENCV_KERNELS = {
    3: [0.25, 0.5, 0.25],
    7: [0.03125, 0.109375, 0.21875, 0.28125, 0.21875, 0.109375, 0.03125],
    9: [0.015625, 0.050781, 0.117188, 0.199219, 0.234375, 0.199219, 0.117188, 0.050781, 0.015625],
    11: [0.008812, 0.027144, 0.065114, 0.121649, 0.176998, 0.200565, 0.176998, 0.121649, 0.065114, 0.027144,
         0.008812],
}
# mmpose's UDPHeatmap(heatmap_type="combined") decoding its own target (generate_offset_heatmap, then
# cv2.GaussianBlur of the disk maps with 2 * b + 1 taps and the offset maps with b, arg-max, + offsets * r),
# run with numpy and OpenCV 4.10.0 and 5.1.0 (same values): (map side, r, b, keypoint, decoded, score).
MMPOSE_UDP_DECODED = [
    (64, 3.5, 11, (20.3, 31.7), (20.146437406539917, 31.853562608361244), 0.3354327082633972),
    (64, 3.5, 11, (5.55, 60.1), (5.236878275871277, 61.93235719203949), 0.5213335156440735),
    (64, 3.5, 11, (40.0, 40.0), (40.00000001344998, 40.0), 0.3369784951210022),
    (64, 3.5, 11, (0.9, 2.2), (-0.5184328556060791, 0.6357886791229248), 0.6179403066635132),
    (16, 1.0, 3, (7.3, 8.6), (6.981250107288361, 8.150000214576721), 0.25),
    (16, 1.0, 3, (1.4, 13.4), (0.09999999403953552, 14.849999904632568), 0.4306640625),
    (16, 1.0, 3, (14.3, 0.1), (14.975000143051147, -0.17499999701976776), 0.3935546875),
    (16, 1.0, 3, (3.25, 9.75), (3.0, 10.0), 0.2021484375),
]


@pytest.mark.parametrize("size", sorted(OPENCV_KERNELS))
def test_opencv_gaussian_kernel_is_cv2s(size):
    torch.testing.assert_close(opencv_gaussian_kernel(size), torch.tensor(OPENCV_KERNELS[size], dtype=torch.float64),
                               atol=6e-7, rtol=0)  # the table is rounded to 6 places
    with pytest.raises(ValueError, match="size: expected an odd number of taps"):
        opencv_gaussian_kernel(4)


# cv2.GaussianBlur(map, (2 h + 1, 2 h + 1), 0) of float32 maps with kernels wider than the map (OpenCV 4.10.0 and
# 5.1.0 agree to 2e-8): (h, map, blurred).
OPENCV_WIDE_BLURS = [
    (7, [[0.001, 0.299, -0.274, -0.891, -0.455], [-0.992, 0.06, 1.34, -0.492, -0.62]],
     [[-0.08333204686641693, -0.09641200304031372, -0.1250421404838562, -0.1501583606004715, -0.16194114089012146],
      [-0.08385161310434341, -0.0969606339931488, -0.12566138803958893, -0.15086255967617035, -0.16268105804920197]]),
    (4, [[0.49, 0.357, 0.105], [-0.93, -0.029, 0.695], [-1.344, -0.458, -1.901]],
     [[-0.20256544649600983, -0.1935078203678131, -0.1844502091407776],
      [-0.22389063239097595, -0.2148750126361847, -0.20585939288139343],
      [-0.24521584808826447, -0.23624220490455627, -0.22726856172084808]]),
]


def test_opencv_blur_reflects_about_the_edge_cell():
    """BORDER_REFLECT_101: the cell beyond the edge is the edge's neighbour; a linear ramp stays one inside;
    a kernel wider than the map reflects again and again, as OpenCV's."""
    ramp = torch.arange(6.0).repeat(6, 1)
    blurred = opencv_blur(ramp, 1)
    torch.testing.assert_close(blurred[:, 1:-1], ramp[:, 1:-1])
    torch.testing.assert_close(blurred[:, 0], torch.full((6,), 0.5))  # 0.25 * 1 + 0.5 * 0 + 0.25 * 1
    assert torch.equal(opencv_blur(ramp, 0), ramp)
    for half_width, maps, expected in OPENCV_WIDE_BLURS:
        torch.testing.assert_close(opencv_blur(torch.tensor(maps), half_width), torch.tensor(expected),
                                   atol=1e-7, rtol=0)


@pytest.mark.parametrize("side, radius, half_width, keypoint, decoded, score", MMPOSE_UDP_DECODED)
def test_udp_decodes_its_target_as_mmpose(side, radius, half_width, keypoint, decoded, score):
    codec = OffsetCodec(stride=1)
    assert codec.radius_on((side, side)) == radius and codec.blur_half_widths((side, side)) == (half_width, half_width // 2)
    coords, scores = codec.decode(codec.targets(torch.tensor([[keypoint]]), (side, side)))
    torch.testing.assert_close(coords[0, 0], torch.tensor(decoded), atol=2e-6, rtol=0)  # float32 rounding
    torch.testing.assert_close(scores[0, 0], torch.tensor(score), atol=1e-6, rtol=0)


def test_udp_target_radius_and_loss():
    codec = build_codec("udp", stride=2)
    assert [codec.radius_on((side, side)) for side in (64, 32, 16, 8, 4)] == [3.5, 1.75, 1.0, 1.0, 1.0]
    assert build_codec("udp", 4, radius=2.5).radius_on((8, 8)) == 2.5
    target = OffsetCodec(stride=1).targets(torch.tensor([[[5.3, 7.6]]]), (16, 16)).view(3, 16, 16)
    assert target[0].nonzero().tolist() == [[7, 5], [7, 6], [8, 5], [8, 6]]  # (y, x): the 4 cells within 1 cell
    torch.testing.assert_close(target[1:, 8, 5], torch.tensor([0.3, -0.4]))  # (keypoint - cell) / r
    assert target[1:][:, target[0] == 0].abs().sum() == 0

    generator = torch.Generator().manual_seed(3)
    keypoints = torch.rand(2, 3, 2, generator=generator) * 30
    keypoints[1, 2] = float("nan")
    visible = torch.tensor([[True, False, True], [True, True, True]])
    logits = torch.randn(2, 9, 16, 16, generator=generator, requires_grad=True)
    loss = codec.loss(logits, keypoints, visible)
    # mmpose's CombinedTargetMSELoss(use_target_weight=True), written out: per keypoint 0.5 MSE of the
    # weighted disk maps and of the disk-masked offsets, summed, over K
    target = codec.targets(keypoints, (16, 16), visible).view(2, 3, 3, 16, 16)
    weight = (visible & torch.isfinite(keypoints).all(-1)).float()[..., None, None]
    expected = sum(0.5 * torch.nn.functional.mse_loss(logits.view(2, 3, 3, 16, 16)[:, k, 0] * weight[:, k],
                                                      target[:, k, 0] * weight[:, k])
                   + sum(0.5 * torch.nn.functional.mse_loss(target[:, k, 0] * logits.view(2, 3, 3, 16, 16)[:, k, axis],
                                                            target[:, k, 0] * target[:, k, axis]) for axis in (1, 2))
                   for k in range(3)) / 3
    torch.testing.assert_close(loss, expected)
    loss.backward()
    assert logits.grad[0, 3:6].abs().sum() == 0 and logits.grad[1, 6:9].abs().sum() == 0  # invisible, NaN
    ideal = codec.ideal_output(keypoints, (16, 16), visible)
    assert codec.loss(ideal, keypoints, visible).item() == 0.0
    with pytest.raises(ValueError, match=r"logits: the udp codec reads \(B, 3 x 3 keypoints = 9, H, W\)"):
        codec.loss(logits[:, :8], keypoints)
    with pytest.raises(ValueError, match=r"logits: the udp codec reads \(B, 3 K, H, W\).*got shape \(2, 0, 16, 16\)"):
        codec.decode(logits[:, :0])
    far = torch.tensor([[[1e30, 5.0]]])  # finite, far off the map: no disk, and no 0 * inf in the offsets' term
    assert torch.isfinite(codec.loss(torch.zeros(1, 3, 8, 8), far))
    with pytest.raises(ValueError, match="radius: expected at least √2/2"):
        OffsetCodec(radius=0.0)


@pytest.mark.parametrize("name, expected", [("udp", (0.3736017644405365, 0.5968934297561646)),
                                            ("integral", (0.2812269330024719, 0.16724763810634613))])
def test_pytorch_losses_keep_their_values(name, expected):
    """The udp and integral losses and gradients on fixed inputs, as every commit since e0f6c2d computes them
    (the study's networks were trained with them): a change of summation order shows in the last bits."""
    generator = torch.Generator().manual_seed(14)
    codec = build_codec(name, stride=4)
    keypoints = torch.rand(4, 17, 2, generator=generator) * 70 - 4
    visible = torch.rand(4, 17, generator=generator) > 0.2
    logits = torch.randn(4, 17 * codec.maps_per_keypoint, 16, 16, generator=generator, requires_grad=True)
    loss = codec.loss(logits, keypoints, visible)
    loss.backward()
    assert (loss.item(), logits.grad.abs().sum().item()) == expected


def test_radius_is_refused_where_no_disk_could_work():
    with pytest.raises(TypeError, match="radius: expected a number of heatmap cells, got bool"):
        OffsetCodec(radius=True)
    with pytest.raises(ValueError, match=r"radius: expected at least √2/2 ≈ 0.70710678 heatmap cells .*got 0.7071$"):
        OffsetCodec(radius=0.7071)
    assert OffsetCodec(radius=math.sqrt(0.5)).radius_on((2, 2)) == math.sqrt(0.5)
    codec = OffsetCodec(radius=30.0)  # fits 32x32 maps (diagonal 45.3), not 16x16 ones (22.6)
    assert codec.radius_on((32, 32)) == 30.0
    with pytest.raises(ValueError, match=r"radius: 30.0 cells is wider than the 16x16 heatmap .*22.63 cells"):
        codec.loss(torch.zeros(1, 3, 16, 16), torch.full((1, 1, 2), 20.0))
    with pytest.raises(ValueError, match="wider than the 16x16 heatmap"):
        codec.decode(torch.zeros(1, 3, 16, 16))


@pytest.mark.parametrize("name", ["udp", "integral"])
def test_pytorch_losses_follow_the_ops_rules(name):
    """The losses written in PyTorch (udp, integral) keep the kernels' promises (docs/RELIABILITY.md):
    a masked keypoint's NaN/inf logits change nothing, NaN in a float mask is invisible, keypoints are
    constants, shapes are checked and named, an empty batch has loss 0."""
    codec = build_codec(name, stride=2)
    maps = codec.maps_per_keypoint
    generator = torch.Generator().manual_seed(5)
    keypoints = torch.rand(2, 3, 2, generator=generator) * 14
    visible = torch.tensor([[1.0, 0.0, 1.0], [1.0, 1.0, float("nan")]])  # NaN: invisible, as for the ops
    logits = torch.randn(2, 3 * maps, 8, 8, generator=generator)

    def loss_and_grad(values, mask, points=keypoints):
        values = values.clone().requires_grad_()
        loss = codec.loss(values, points, mask)
        loss.backward()
        return loss.detach(), values.grad

    clean_loss, clean_grad = loss_and_grad(logits, visible)
    bool_loss, bool_grad = loss_and_grad(logits, visible.nan_to_num(0.0) != 0)
    assert torch.equal(clean_loss, bool_loss) and torch.equal(clean_grad, bool_grad)
    poisoned = logits.clone()
    poisoned[0, maps:2 * maps] = float("nan")  # keypoint 1 of image 0: invisible
    poisoned[1, 2 * maps:, :4] = float("inf")  # keypoint 2 of image 1: NaN in the mask
    poisoned_loss, poisoned_grad = loss_and_grad(poisoned, visible)
    assert torch.equal(poisoned_loss, clean_loss) and torch.equal(poisoned_grad, clean_grad)
    assert poisoned_grad[0, maps:2 * maps].abs().sum() == 0 and poisoned_grad[1, 2 * maps:].abs().sum() == 0

    constant = keypoints.clone().requires_grad_()
    codec.loss(logits.clone().requires_grad_(), constant, visible).backward()
    assert constant.grad is None
    with pytest.raises(ValueError, match=r"visible: expected shape \(B, K\) = \(2, 3\)"):
        codec.loss(logits, keypoints, visible[0, :2])  # (2,): broadcast as a per-keypoint mask before
    with pytest.raises(ValueError, match=r"keypoints: expected a \(B, K, 2\) tensor"):
        codec.loss(logits, torch.cat([keypoints, keypoints[..., :1]], dim=-1))
    assert codec.loss(logits[:0], keypoints[:0]).item() == 0.0
    coords, scores = codec.decode(logits[:0])
    assert coords.shape == (0, 3, 2) and scores.shape == (0, 3)


@pytest.mark.parametrize("name", CODEC_NAMES)
def test_every_codec_reads_nan_in_a_float_mask_as_invisible(name):
    codec = build_codec(name, stride=1, sigma=1.0)
    logits = torch.randn(1, 2 * codec.maps_per_keypoint, 8, 8, generator=torch.Generator().manual_seed(2))
    keypoints = torch.tensor([[[2.3, 4.6], [5.5, 1.2]]])
    float_mask, bool_mask = torch.tensor([[1.0, float("nan")]]), torch.tensor([[True, False]])
    assert torch.equal(codec.loss(logits, keypoints, float_mask, seed=3), codec.loss(logits, keypoints, bool_mask, seed=3))


def test_udp_decodes_an_infinite_peak_at_its_cell():
    """The blur spreads a +inf over its kernel; the decode op's rule (an inf is a limit) reads the raw peak."""
    codec = OffsetCodec(stride=1)
    maps = torch.zeros(1, 6, 16, 16)
    maps[0, 0, 5, 5] = float("inf")
    maps[0, 3, 9, 2] = float("nan")
    coords, scores = codec.decode(maps)
    assert coords[0, 0].tolist() == [5.0, 5.0] and scores[0, 0].item() == float("inf")
    assert coords[0, 1].isnan().all() and scores[0, 1].isnan()


def test_udp_ideal_output_is_lossless_where_the_blur_does_not_reflect():
    """The offsets continued off the disk (free under the loss) survive the decoder's symmetric blur; the
    target's zeros there do not: mmpose's decoder misses its own target by 0.2-0.4 cells in the interior."""
    codec = OffsetCodec(stride=4)
    assert [codec.blur_half_widths((side, side)) for side in (64, 32, 16, 8, 4, 2)] == [
        (11, 5), (6, 2), (3, 1), (1, 1), (1, 0), (0, 0)]
    for side in (64, 32, 16, 8):
        keypoints = torch.rand(1, 3000, 2, generator=torch.Generator().manual_seed(side)) * (side - 1) * 4
        coords, _ = codec.decode(codec.ideal_output(keypoints, (side, side)))
        reach = codec.blur_half_widths((side, side))[0] + 1
        interior = ((keypoints[0] / 4 >= reach) & (keypoints[0] / 4 <= side - 1 - reach)).all(-1)
        assert interior.sum() > 500
        assert (coords[0, interior] - keypoints[0, interior]).norm(dim=-1).max() < 1e-3
        on_target, _ = codec.decode(codec.targets(keypoints, (side, side)))
        assert 0.15 < (on_target[0, interior] - keypoints[0, interior]).norm(dim=-1).mean() / 4 < 0.45  # cells
    unblurred = OffsetCodec(stride=4, offset_blur=False)  # udp-noblur: the target's own offsets, read as they are
    for side in (64, 16, 8):
        keypoints = torch.rand(1, 3000, 2, generator=torch.Generator().manual_seed(side)) * (side - 1) * 4
        coords, _ = unblurred.decode(unblurred.targets(keypoints, (side, side)))
        reach = codec.blur_half_widths((side, side))[0] + 1
        interior = ((keypoints[0] / 4 >= reach) & (keypoints[0] / 4 <= side - 1 - reach)).all(-1)
        assert (coords[0, interior] - keypoints[0, interior]).norm(dim=-1).max() < 1e-3
    with pytest.raises(TypeError, match="offset_blur: expected True or False"):
        OffsetCodec(offset_blur="no")
    for side in (4, 2):  # no offset blur: exact everywhere
        keypoints = torch.rand(1, 500, 2, generator=torch.Generator().manual_seed(side)) * (side - 1) * 4
        coords, _ = codec.decode(codec.ideal_output(keypoints, (side, side)))
        assert (coords - keypoints).norm(dim=-1).max() < 1e-4
