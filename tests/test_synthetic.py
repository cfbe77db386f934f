"""The procedural datasets: determinism, layout (WFLW faces, COCO people), protocol, speed."""
import dataclasses
import pickle
import time
from concurrent.futures import ProcessPoolExecutor

import numpy as np
import pytest

import h3r.data.synthetic.scenery as scenery
from h3r.data.coco import COCO_FLIP_PAIRS
from h3r.data.synthetic import (FacePose, Finish, PersonScene, Shape, SyntheticFaces, SyntheticPeople, face_landmarks,
                                random_body, random_face_shape, render_face, render_person)
from h3r.data.wflw import WFLW_FLIP_PAIRS

DATASETS = {"faces": SyntheticFaces, "people": SyntheticPeople}
IMAGE_SIZE = 96


def swap_pairs(points: np.ndarray, pairs) -> np.ndarray:
    swapped = points.copy()
    for a, b in pairs:
        swapped[[a, b]] = points[[b, a]]
    return swapped


def make(kind: str, **options):
    options.setdefault("size", 4)
    options.setdefault("image_size", IMAGE_SIZE)
    return DATASETS[kind](**options)


@pytest.mark.parametrize("kind", DATASETS)
def test_same_seed_same_items(kind):
    first, second = make(kind, seed=3), make(kind, seed=3)
    for index in range(len(first)):
        a, b = first[index], second[index]
        np.testing.assert_array_equal(a.keypoints, b.keypoints)
        np.testing.assert_array_equal(a.box, b.box)
        np.testing.assert_array_equal(a.visible, b.visible)
        np.testing.assert_array_equal(a.image(), b.image())


@pytest.mark.parametrize("kind", DATASETS)
def test_item_depends_only_on_seed_split_and_index(kind):
    small, large = make(kind, size=2), make(kind, size=6)
    np.testing.assert_array_equal(small[1].keypoints, large[1].keypoints)
    np.testing.assert_array_equal(small[1].box, large[1].box)
    np.testing.assert_array_equal(small[1].image(), large[1].image())


@pytest.mark.parametrize("kind", DATASETS)
@pytest.mark.parametrize("other", [{"seed": 1}, {"split": "test"}])
def test_seeds_and_splits_give_different_items(kind, other):
    base, changed = make(kind), make(kind, **other)
    for index in range(len(base)):
        assert not np.allclose(base[index].keypoints, changed[index].keypoints)
        assert not np.array_equal(base[index].image(), changed[index].image())


@pytest.mark.parametrize("kind", DATASETS)
def test_sample_follows_the_protocol(kind):
    dataset = make(kind)
    assert len(dataset) == 4 and dataset.split == "train"
    assert dataset.num_keypoints == {"faces": 98, "people": 17}[kind]
    for sample in (dataset[i] for i in range(len(dataset))):
        image = sample.image()
        assert image.shape == (IMAGE_SIZE, IMAGE_SIZE, 3) and image.dtype == np.uint8
        assert sample.keypoints.shape == (dataset.num_keypoints, 2) and sample.keypoints.dtype == np.float32
        assert sample.visible.shape == (dataset.num_keypoints,) and sample.visible.dtype == bool
        assert sample.box.shape == (4,) and sample.box.dtype == np.float32
        assert sample.box[2] > sample.box[0] and sample.box[3] > sample.box[1]


@pytest.mark.parametrize("kind", DATASETS)
def test_default_sizes(kind):
    assert len(DATASETS[kind](split="test", image_size=32)) == 500


@pytest.mark.parametrize("kind", DATASETS)
def test_keep_inside(kind):
    inside = make(kind, size=40, image_size=64)
    points = np.stack([inside[i].keypoints for i in range(len(inside))])
    assert points.min() >= 0 and points.max() <= 63
    overhanging = make(kind, size=40, image_size=64, keep_inside=False)
    points = np.stack([overhanging[i].keypoints for i in range(len(overhanging))])
    outside = (points < -0.5) | (points > 63.5)
    assert outside.any()
    if kind == "people":  # joints outside the image are unlabelled (COCO v = 0)
        visible = np.stack([overhanging[i].visible for i in range(len(overhanging))])
        assert not (visible & outside.any(axis=-1)).any()


@pytest.mark.parametrize("bad", [{"split": "val"}, {"size": 0}, {"image_size": 8}])
@pytest.mark.parametrize("kind", DATASETS)
def test_bad_arguments(kind, bad):
    with pytest.raises(ValueError, match="split|size"):
        make(kind, **bad)


# ------------------------------------------------------------------------------ faces

@pytest.mark.parametrize("seed", range(4))
def test_frontal_face_is_mirror_symmetric_under_the_wflw_flip_pairs(seed):
    rng = np.random.default_rng(seed)
    shape = dataclasses.replace(random_face_shape(rng), gaze=(0.0, 0.0))
    pose = FacePose(pitch=np.radians(rng.uniform(-12, 12)), scale=40.0, center=((IMAGE_SIZE - 1) / 2, 40.0))
    points = face_landmarks(shape, pose)
    flipped = points.copy()
    flipped[:, 0] = IMAGE_SIZE - 1 - flipped[:, 0]  # horizontal image flip
    inter_ocular = np.linalg.norm(points[60] - points[72])
    np.testing.assert_allclose(swap_pairs(flipped, WFLW_FLIP_PAIRS), points, atol=1e-9)
    assert np.abs(flipped - points).max() > 0.5 * inter_ocular  # the swap is what makes them match


def test_dataset_faces_without_pose_are_symmetric():
    dataset = SyntheticFaces(size=6, image_size=IMAGE_SIZE, max_rotation=0, max_yaw=0, max_pitch=0)
    for index in range(len(dataset)):
        points = dataset[index].keypoints.astype(np.float64)
        without_pupils = np.arange(96)  # gaze moves both pupils the same way
        flipped = points.copy()
        flipped[:, 0] = 2 * points[without_pupils, 0].mean() - points[:, 0]
        error = np.abs(swap_pairs(flipped, WFLW_FLIP_PAIRS) - points)[without_pupils]
        assert error.max() < 1e-3


def test_face_layout_is_wflw():
    shape, pose = random_face_shape(np.random.default_rng(7)), FacePose(scale=40.0)
    p = face_landmarks(dataclasses.replace(shape, gaze=(0.0, 0.0)), pose)
    x, y = p[:, 0], p[:, 1]
    assert np.argmax(y[:33]) == 16  # chin is the lowest jaw point
    assert x[0] < x[16] < x[32]
    assert x[60] < x[64] < x[68] < x[72]  # outer, inner, inner, outer eye corners
    assert (y[[61, 62, 63]] < y[[67, 66, 65]]).all()  # upper lid above lower lid
    assert y[33:51].max() < y[60:76].min()  # brows above eyes
    assert x[33] < x[37] < x[42] < x[46]  # brows: outer to inner, inner to outer
    assert y[51] < y[52] < y[53] < y[54] < y[57] < y[76:96].min()  # nose bridge down to its base, then mouth
    assert abs(y[51] - y[[60, 64, 68, 72]].mean()) < 0.1 * (x[72] - x[60]) < y[53] - y[60:76].max()
    assert x[76] < x[79] < x[82] and y[79] < y[90] <= y[94] < y[85]  # lips top to bottom
    assert x[60] < x[96] < x[64] and x[68] < x[97] < x[72]  # pupils inside the eyes


def test_landmarks_lie_on_image_structure():
    """Without noise, blur, lighting and occluders, nearly every landmark sits on an edge or
    corner (contrast in its 3x3 neighbourhood), far more often than random pixels do."""
    dataset = SyntheticFaces(size=10, image_size=IMAGE_SIZE, cache_images=False)
    rng = np.random.default_rng(0)
    plain = Finish(gain=1.0, slope=0.0, direction=0.0, blur=0.0, noise=0.0, grey=False, noise_seed=0)
    at_landmarks, at_random = [], []
    for index in range(len(dataset)):
        scene = dataclasses.replace(dataset[index].load_image.args[0], occluders=[], finish=plain)
        grey = render_face(scene).astype(np.float64).mean(axis=2)
        for points, contrast in ((scene.landmarks, at_landmarks), (rng.uniform(0, IMAGE_SIZE - 1, (98, 2)), at_random)):
            for x, y in np.rint(points).astype(int):
                patch = grey[max(y - 1, 0):y + 2, max(x - 1, 0):x + 2]
                contrast.append(patch.max() - patch.min())
    assert np.mean(np.array(at_landmarks) > 8) > 0.9
    assert np.mean(np.array(at_random) > 8) < 0.5


def test_face_metadata_and_boxes():
    dataset = SyntheticFaces(size=30, image_size=IMAGE_SIZE)
    assert dataset.flip_pairs == WFLW_FLIP_PAIRS and dataset.name == "synthetic-face"
    assert (dataset.normalisers > 5).all()  # inter-ocular distance, px
    for index in range(len(dataset)):
        sample = dataset[index]
        assert sample.visible.all()
        assert sample.meta["occluded"].shape == (98,)
        assert abs(sample.meta["yaw"]) <= 30 and abs(sample.meta["roll"]) <= 30
        tight = sample.box_p1
        size = tight[2:] - tight[:2]
        np.testing.assert_array_less(np.abs(sample.box - tight), 0.05 * np.tile(size, 2) + 1e-4)


def test_face_evaluate():
    dataset = SyntheticFaces(size=5, image_size=IMAGE_SIZE)
    truth = np.stack([dataset[i].keypoints for i in range(len(dataset))])
    perfect = dataset.evaluate(truth)
    assert perfect["nme"] == 0 and perfect["fr@0.1"] == 0 and perfect["auc@0.1"] == pytest.approx(1.0)
    shift = 0.05 * dataset.normalisers[:, None, None] * np.array([1.0, 0.0])
    assert dataset.evaluate(truth + shift)["nme"] == pytest.approx(0.05)
    assert dataset.evaluate(truth[[2, 4]], indices=[2, 4])["nme"] == 0


# ----------------------------------------------------------------------------- people

def test_person_left_and_right_follow_coco():
    """Facing the viewer, each left joint of the head and torso lies on the image right of its
    right partner, so a horizontal flip plus the COCO pair swap yields a valid person again."""
    rng = np.random.default_rng(0)
    for _ in range(30):
        points = random_body(rng).keypoints
        for left, right in [(1, 2), (3, 4), (5, 6), (11, 12)]:
            assert points[left, 0] > points[right, 0]
        mirrored = swap_pairs(points * [-1, 1], COCO_FLIP_PAIRS)
        for left, right in [(1, 2), (3, 4), (5, 6), (11, 12)]:
            assert mirrored[left, 0] > mirrored[right, 0]
    assert SyntheticPeople.flip_pairs == COCO_FLIP_PAIRS


def test_person_metadata():
    dataset = SyntheticPeople(size=40, image_size=IMAGE_SIZE)
    flags = np.stack([dataset[i].meta["keypoint_flags"] for i in range(len(dataset))])
    assert set(np.unique(flags)) <= {1, 2} and (flags == 1).any()  # occluded joints present, none outside
    for index in range(len(dataset)):
        sample = dataset[index]
        assert sample.meta["image_id"] == index + 1
        box_area = np.prod(sample.box[2:] - sample.box[:2])
        assert 0 < sample.meta["area"] <= box_area + 1
        points = sample.keypoints[sample.visible]
        assert (points >= sample.box[:2] - 1).all() and (points <= sample.box[2:] + 1).all()
        np.testing.assert_array_equal(sample.visible, sample.meta["keypoint_flags"] > 0)


def test_person_evaluate():
    dataset = SyntheticPeople(size=6, image_size=IMAGE_SIZE)
    truth = np.stack([dataset[i].keypoints for i in range(len(dataset))])
    assert dataset.evaluate(truth)["AP"] == pytest.approx(1.0)
    assert dataset.evaluate(truth[[1, 3]], indices=[1, 3])["AP"] == pytest.approx(1.0)
    rng = np.random.default_rng(0)
    assert dataset.evaluate(truth + rng.normal(0, 6, truth.shape))["AP"] < 0.9
    with pytest.raises(ValueError, match="predictions"):
        dataset.evaluate(truth[:2])


@pytest.mark.parametrize("kind", ["polygon", "ellipse", "bar"])
def test_rendered_shapes_are_centred_on_their_coordinates(kind):
    """Antialiased drawing puts a shape's intensity centroid where its coordinates say (pixel
    centres at integers), so landmarks and image agree to a small fraction of a pixel."""
    rng = np.random.default_rng(0)
    plain = Finish(gain=1.0, slope=0.0, direction=0.0, blur=0.0, noise=0.0, grey=False, noise_seed=0)
    ys, xs = np.mgrid[0:64, 0:64]
    errors = []
    for _ in range(40):
        centre, radii = rng.uniform(20, 44, 2), rng.uniform(4, 12, 2)
        corners = centre + radii * np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]])
        points = {"polygon": corners,
                  "ellipse": np.array([centre, radii]), "bar": np.array([centre - radii, centre + radii])}[kind]
        shape = Shape(kind, points, (255, 255, 255), width=3.0)
        scene = PersonScene(image_size=64, keypoints=np.zeros((17, 2)), flags=np.zeros(17, dtype=int), parts=[shape],
                            background=(0, 0, 0), clutter=[], occluders=[], finish=plain, box=np.zeros(4), area=0.0)
        weight = render_person(scene)[:, :, 0].astype(np.float64)
        errors.append([(weight * xs).sum() / weight.sum(), (weight * ys).sum() / weight.sum()] - centre)
    errors = np.array(errors)
    assert np.abs(errors.mean(axis=0)).max() < 0.05
    assert np.abs(errors).max() < 0.2


# ------------------------------------------------------------------------------ speed

@pytest.mark.parametrize("kind", DATASETS)
def test_rendering_is_fast(kind):
    """The budget is ~2 ms per 128 px sample on one core; allow slack for a busy machine."""
    dataset = make(kind, size=20, image_size=128)
    start = time.perf_counter()
    for index in range(len(dataset)):
        dataset[index].image()
    assert (time.perf_counter() - start) / len(dataset) < 0.01


@pytest.mark.parametrize("kind", [SyntheticFaces, SyntheticPeople])
def test_large_sets_draw_the_same_scenes_in_parallel(kind, monkeypatch):
    """Sets of PARALLEL_SCENES items or more draw their scenes in forked processes: the same scenes."""
    monkeypatch.setattr(scenery, "PARALLEL_SCENES", 8)
    monkeypatch.setattr(scenery.os, "sched_getaffinity", lambda pid: set(range(3)), raising=False)
    calls = []
    monkeypatch.setattr(scenery, "ProcessPoolExecutor",
                        lambda *args, **kwargs: calls.append(args) or ProcessPoolExecutor(*args, **kwargs))
    parallel = kind("train", size=24, image_size=40, cache_images=False)
    assert calls == [(3,)]
    monkeypatch.setattr(scenery, "PARALLEL_SCENES", 10 ** 9)
    serial = kind("train", size=24, image_size=40, cache_images=False)
    assert len(calls) == 1
    for index in range(24):
        ours, theirs = parallel[index], serial[index]
        assert np.array_equal(ours.keypoints, theirs.keypoints) and np.array_equal(ours.box, theirs.box)
        assert same_values(ours.load_image.args[0], theirs.load_image.args[0])
        assert np.array_equal(ours.image(), theirs.image())


def same_values(a, b) -> bool:
    """Equal, field by field and element by element (bit for bit for floats and arrays)."""
    if type(a) is not type(b):
        return False
    if dataclasses.is_dataclass(a):
        return all(same_values(getattr(a, field.name), getattr(b, field.name)) for field in dataclasses.fields(a))
    if isinstance(a, np.ndarray):
        return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(same_values(x, y) for x, y in zip(a, b))
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same_values(a[key], b[key]) for key in a)
    if isinstance(a, float):
        return pickle.dumps(a) == pickle.dumps(b)
    return a == b
