import numpy as np
import pytest
import torch

from h3r.data.base import Sample
from h3r.transforms import (
    CropConfig,
    TopDownTransform,
    apply_affine,
    crop_affine,
    flip_keypoints,
    flip_permutation,
    invert_affine,
)

AUGMENTED = CropConfig(input_size=96, box_scale=1.5, rotation=45, scale_jitter=0.25, translate=0.05, flip_prob=0.5)


def make_sample(image, keypoints, box, visible=None):
    keypoints = np.asarray(keypoints, dtype=np.float32)
    visible = np.ones(len(keypoints), bool) if visible is None else np.asarray(visible, bool)
    box = np.asarray(box, dtype=np.float32)
    return Sample(load_image=lambda: image, keypoints=keypoints, visible=visible, box=box, box_p1=box)


def dot_sample(sigma=2.0):
    """Three Gaussian dots at sub-pixel positions, keypoint c drawn in colour channel c."""
    keypoints = np.array([[120.3, 90.7], [161.8, 104.2], [140.5, 131.6]])
    rows, cols = np.mgrid[0:240, 0:300]
    image = np.zeros((240, 300, 3), np.uint8)
    for channel, (x, y) in enumerate(keypoints):
        blob = np.exp(-((cols - x) ** 2 + (rows - y) ** 2) / (2 * sigma**2))
        image[..., channel] = np.round(255 * blob).astype(np.uint8)
    return make_sample(image, keypoints, box=(100, 75, 180, 145))


def unnormalise(image, config):
    mean = torch.tensor(config.mean).view(3, 1, 1)
    std = torch.tensor(config.std).view(3, 1, 1)
    return (image * std + mean).numpy()


@pytest.mark.parametrize("seed", range(8))
def test_dots_land_on_their_transformed_keypoints(seed):
    transform = TopDownTransform(AUGMENTED, flip_pairs=[(0, 1)])
    out = transform(dot_sample(), np.random.default_rng(seed))
    image = unnormalise(out["image"], AUGMENTED)
    # after a flip, output keypoint 0 is the original keypoint 1 (drawn in channel 1) and vice versa
    source_of = [1, 0, 2] if out["flipped"] else [0, 1, 2]
    rows, cols = np.mgrid[0 : image.shape[1], 0 : image.shape[2]]
    for index, channel in enumerate(source_of):
        x, y = out["keypoints"][index].tolist()
        plane = image[channel]
        brightest_row, brightest_col = np.unravel_index(plane.argmax(), plane.shape)
        assert abs(brightest_col - x) <= 1 and abs(brightest_row - y) <= 1
        weights = np.clip(plane - 0.01, 0, None)
        centroid = ((weights * cols).sum() / weights.sum(), (weights * rows).sum() / weights.sum())
        np.testing.assert_allclose(centroid, (x, y), atol=0.15)
    assert out["visible"].all()


def test_some_seeds_flip_and_some_do_not():
    transform = TopDownTransform(AUGMENTED, flip_pairs=[(0, 1)])
    flips = {transform(dot_sample(), np.random.default_rng(seed))["flipped"] for seed in range(8)}
    assert flips == {True, False}


def test_integer_aligned_crop_copies_pixels_exactly():
    size = 32
    image = np.random.default_rng(0).integers(0, 256, (60, 70, 3), dtype=np.uint8)
    # box edges at pixel edges: the crop covers columns 10..41 and rows 20..51
    sample = make_sample(image, [[10.0, 20.0], [41.0, 51.0]], box=(9.5, 19.5, 9.5 + size, 19.5 + size))
    config = CropConfig(input_size=size, box_scale=1.0)
    out = TopDownTransform(config)(sample, None)
    crop = np.round(unnormalise(out["image"], config) * 255).transpose(1, 2, 0)
    np.testing.assert_array_equal(crop, image[20 : 20 + size, 10 : 10 + size])
    np.testing.assert_allclose(out["keypoints"].numpy(), [[0, 0], [size - 1, size - 1]], atol=1e-5)


def test_box_edges_map_to_input_edges():
    affine = crop_affine((10, 20, 50, 40), input_size=64, box_scale=1.0)
    # side = max(40, 20) = 40, centred on (30, 30): x from 10 to 50, y from 10 to 50
    corners = apply_affine(np.array([[10.0, 10.0], [50.0, 50.0], [30.0, 30.0]]), affine)
    np.testing.assert_allclose(corners, [[-0.5, -0.5], [63.5, 63.5], [31.5, 31.5]], atol=1e-12)


def test_flip_in_the_affine_mirrors_the_image_and_swaps_pairs():
    pairs = [(0, 1)]
    base = CropConfig(input_size=64)
    flipped_config = CropConfig(input_size=64, flip_prob=1.0)
    sample = dot_sample()
    plain = TopDownTransform(base, pairs)(sample, np.random.default_rng(0))
    flipped = TopDownTransform(flipped_config, pairs)(sample, np.random.default_rng(0))
    assert flipped["flipped"] and not plain["flipped"]
    torch.testing.assert_close(flipped["image"], torch.flip(plain["image"], dims=[-1]), atol=0.02, rtol=0)
    expected = flip_keypoints(plain["keypoints"], 64, pairs)
    torch.testing.assert_close(flipped["keypoints"], expected, atol=1e-4, rtol=0)


@pytest.mark.parametrize("use_torch", [False, True])
@pytest.mark.parametrize("batch_shape", [(), (4,)])
def test_affine_round_trip(use_torch, batch_shape):
    rng = np.random.default_rng(1)
    affines = np.stack(
        [
            crop_affine(rng.uniform(0, 100, 2).tolist() + rng.uniform(150, 300, 2).tolist(), 128, 1.25,
                        rotation=rng.uniform(-90, 90), scale=rng.uniform(0.7, 1.3), flip=bool(i % 2))
            for i in range(4)
        ]
    )[: (4 if batch_shape else 1)].reshape(*batch_shape, 2, 3)
    points = rng.uniform(-50, 400, (*batch_shape, 7, 2))
    if use_torch:
        affines, points = torch.from_numpy(affines), torch.from_numpy(points)
    back = apply_affine(apply_affine(points, affines), invert_affine(affines))
    assert type(back) is type(points)
    np.testing.assert_allclose(np.asarray(back), np.asarray(points), atol=1e-9)


def test_apply_affine_keeps_float32():
    points = torch.rand(2, 5, 2)
    assert apply_affine(points, np.eye(2, 3)).dtype == torch.float32
    assert apply_affine(points.numpy(), np.eye(2, 3)).dtype == np.float32


@pytest.mark.parametrize("use_torch", [False, True])
def test_flip_keypoints(use_torch):
    keypoints = np.array([[[1.0, 2.0], [5.5, 3.0], [7.0, 8.0]]])
    pairs = [(0, 2)]
    if use_torch:
        keypoints = torch.from_numpy(keypoints)
    flipped = flip_keypoints(keypoints, 10, pairs)
    np.testing.assert_allclose(np.asarray(flipped), [[[2.0, 8.0], [3.5, 3.0], [8.0, 2.0]]])
    np.testing.assert_allclose(np.asarray(flip_keypoints(flipped, 10, pairs)), np.asarray(keypoints))


def test_flip_permutation_swaps_pairs():
    np.testing.assert_array_equal(flip_permutation(5, [(0, 4), (1, 2)]), [4, 2, 1, 3, 0])


@pytest.mark.parametrize(
    ("pairs", "message"),
    [([(0, 5)], "outside"), ([(0, 1), (1, 2)], "more than once"), ([(0, 1, 2)], "two indices")],
)
def test_flip_permutation_rejects_bad_pairs(pairs, message):
    with pytest.raises(ValueError, match=message):
        flip_permutation(5, pairs)


def test_keypoints_outside_the_crop_become_invisible():
    image = np.zeros((200, 200, 3), np.uint8)
    keypoints = [[100, 100], [5, 100], [100, 195], [110, 90]]
    sample = make_sample(image, keypoints, box=(80, 80, 120, 120), visible=[True, True, True, False])
    out = TopDownTransform(CropConfig(input_size=64))(sample, None)
    assert out["visible"].tolist() == [True, False, False, False]
    x, y = out["keypoints"][1].tolist()
    assert x < 0  # still moved by the affine, only marked invisible


def test_same_seed_same_output_and_other_seed_differs():
    config = CropConfig(input_size=64, rotation=30, scale_jitter=0.2, translate=0.1, flip_prob=0.5, colour_jitter=0.4)
    transform = TopDownTransform(config, flip_pairs=[(0, 1)])
    first = transform(dot_sample(), np.random.default_rng(7))
    second = transform(dot_sample(), np.random.default_rng(7))
    other = transform(dot_sample(), np.random.default_rng(8))
    for key in ("image", "keypoints", "visible", "affine"):
        torch.testing.assert_close(first[key], second[key], rtol=0, atol=0)
    assert not torch.equal(first["affine"], other["affine"])


def test_no_rng_means_no_augmentation():
    sample = dot_sample()
    augmented = TopDownTransform(AUGMENTED, flip_pairs=[(0, 1)])(sample, None)
    plain = TopDownTransform(CropConfig(input_size=96, box_scale=1.5))(sample, None)
    torch.testing.assert_close(augmented["image"], plain["image"], rtol=0, atol=0)
    torch.testing.assert_close(augmented["affine"], plain["affine"], rtol=0, atol=0)
    assert not augmented["flipped"]


def test_colour_jitter_changes_pixels_not_geometry():
    config = CropConfig(input_size=64, colour_jitter=0.5)
    sample = dot_sample()
    jittered = TopDownTransform(config)(sample, np.random.default_rng(3))
    plain = TopDownTransform(config)(sample, None)
    assert not torch.allclose(jittered["image"], plain["image"])
    torch.testing.assert_close(jittered["keypoints"], plain["keypoints"])
    pixels = unnormalise(jittered["image"], config)
    assert pixels.min() >= -1e-6 and pixels.max() <= 1 + 1e-6


def test_output_types_and_shapes():
    out = TopDownTransform(CropConfig(input_size=48))(dot_sample(), None)
    assert out["image"].shape == (3, 48, 48) and out["image"].dtype == torch.float32 and out["image"].is_contiguous()
    assert out["keypoints"].shape == (3, 2) and out["keypoints"].dtype == torch.float32
    assert out["visible"].dtype == torch.bool
    assert out["affine"].shape == (2, 3) and out["affine"].dtype == torch.float64
    assert out["flipped"] is False


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"input_size": 0}, "input_size"),
        ({"box_scale": 0}, "box_scale"),
        ({"rotation": -1}, "rotation"),
        ({"scale_jitter": 1.0}, "scale_jitter"),
        ({"flip_prob": 1.5}, "flip_prob"),
        ({"std": (0.2, 0.0, 0.2)}, "std"),
    ],
)
def test_crop_config_rejects_bad_values(options, message):
    with pytest.raises(ValueError, match=message):
        CropConfig(**options)


def test_bad_samples_raise_clear_errors():
    transform = TopDownTransform(CropConfig(input_size=32))
    grey = make_sample(np.zeros((50, 50), np.uint8), [[10, 10]], box=(0, 0, 40, 40))
    with pytest.raises(ValueError, match=r"\(H, W, 3\) uint8"):
        transform(grey, None)
    empty_box = make_sample(np.zeros((50, 50, 3), np.uint8), [[10, 10]], box=(5, 5, 5, 5))
    with pytest.raises(ValueError, match="box"):
        transform(empty_box, None)
    with pytest.raises(ValueError, match=r"\(\.\.\., 2, 3\)"):
        invert_affine(np.eye(3))
