"""Property-based round trips: every reader against its writer on random records (landmark
values, boxes, attribute flags, occlusion / visibility flags, shared images, crowd
annotations ...). A fixed budget per reader (``derandomize=True``: the same examples on
every run), a few seconds each on one core.
"""
import json
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from h3r.data import open_dataset
from h3r.data.base import Sample
from h3r.data.wflw import WFLW_ATTRIBUTES
from h3r.data.writers_face import write_300w, write_aflw_csv, write_aflw_mat, write_cofw, write_pts_images, write_wflw
from h3r.data.writers_pose import write_coco, write_coco_detections, write_mpii

BUDGET = settings(max_examples=20, deadline=None, derandomize=True, database=None,
                  suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

coordinate = st.floats(min_value=-50.0, max_value=2000.0, allow_nan=False, allow_infinity=False, width=32)


def points(count):
    return st.lists(st.tuples(coordinate, coordinate), min_size=count, max_size=count).map(
        lambda values: np.array(values, dtype=np.float32))


@st.composite
def boxes(draw):
    x1 = draw(st.floats(-20.0, 1500.0, width=32))
    y1 = draw(st.floats(-20.0, 1500.0, width=32))
    w = draw(st.floats(1.0, 400.0, width=32))
    h = draw(st.floats(1.0, 400.0, width=32))
    return np.array([x1, y1, x1 + w, y1 + h], dtype=np.float32)


def tiny_image(seed, grey=False):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, size=(6, 8) if grey else (6, 8, 3), dtype=np.uint8)


def sample(keypoints, box, pixels, visible=None, **meta):
    visible = np.ones(len(keypoints), bool) if visible is None else np.asarray(visible, bool)
    return Sample(load_image=lambda: pixels, keypoints=keypoints, visible=visible, box=box, box_p1=box, meta=meta)


def close(actual, expected, atol=3e-4):
    np.testing.assert_allclose(actual, expected, atol=atol, rtol=2e-6)


# ------------------------------------------------------------------------------------- WFLW


@st.composite
def wflw_faces(draw):
    count = draw(st.integers(1, 4))
    faces = []
    for index in range(count):
        flags = draw(st.lists(st.integers(0, 1), min_size=6, max_size=6))
        shared = draw(st.booleans()) and index > 0  # several faces on one image
        name = "0--Parade/shared.jpg" if shared else f"{index}--Event/face_{index}.jpg"
        faces.append(sample(draw(points(98)), draw(boxes()), tiny_image(index if not shared else 0),
                            image_path=name, attributes=dict(zip(WFLW_ATTRIBUTES, flags))))
    if any(face.meta["image_path"] == "0--Parade/shared.jpg" for face in faces):
        faces[0].meta["image_path"] = "0--Parade/shared.jpg"
    return faces


@BUDGET
@given(train=wflw_faces(), test=wflw_faces())
def test_wflw_round_trip(train, test):
    with tempfile.TemporaryDirectory() as root:
        write_wflw(root, "train", train)
        write_wflw(root, "test", test)
        for split, faces in (("train", train), ("test", test)):
            dataset = open_dataset("wflw", root, split)
            assert len(dataset) == len(faces)
            for index, face in enumerate(faces):
                item = dataset[index]
                close(item.keypoints, face.keypoints)
                close(item.box, face.box)
                assert item.meta["attributes"] == face.meta["attributes"]
                assert item.meta["image_path"] == face.meta["image_path"]
        for attribute in WFLW_ATTRIBUTES:
            members = [face for face in test if face.meta["attributes"][attribute]]
            if not members:
                continue
            subset = open_dataset("wflw", root, "test", subset=attribute)
            assert len(subset) == len(members)
            for item, face in zip((subset[i] for i in range(len(subset))), members):
                close(item.keypoints, face.keypoints)
                close(item.box, face.box)  # the rectangle comes from the matching test line
                assert item.meta["attributes"] == face.meta["attributes"]


# -------------------------------------------------------------------------------- 300W / .pts


@BUDGET
@given(st.data())
def test_300w_round_trip(data):
    folders = ("helen/testset", "lfpw/testset", "ibug")  # the "full" split, in its order
    written = {}
    with tempfile.TemporaryDirectory() as root:
        for folder in folders:
            count = data.draw(st.integers(1, 2))
            written[folder] = [sample(data.draw(points(68)), np.zeros(4, np.float32), tiny_image(i),
                                      image_path=f"img_{i}") for i in range(count)]
            write_300w(root, folder, written[folder])
        dataset = open_dataset("300w", root, "full")
        expected = [(folder, face) for folder in folders for face in written[folder]]
        assert len(dataset) == len(expected)
        for index, (folder, face) in enumerate(expected):
            close(dataset[index].keypoints, face.keypoints)
            assert dataset[index].meta["folder"] == folder
        assert dataset.subsets["challenging"].sum() == len(written["ibug"])


@BUDGET
@given(st.data())
def test_pts_folder_round_trip(data):
    num_keypoints = data.draw(st.sampled_from([1, 5, 29, 68]))
    count = data.draw(st.integers(1, 3))
    extension = data.draw(st.sampled_from([".jpg", ".png", ".ppm", ".bmp", ".tif", ".JPG", ".gif"]))
    faces = [sample(data.draw(points(num_keypoints)), np.zeros(4, np.float32), tiny_image(i)) for i in range(count)]
    with tempfile.TemporaryDirectory() as root:
        write_pts_images(root, faces, extension)
        dataset = open_dataset("pts", root)
        assert len(dataset) == count and dataset.num_keypoints == num_keypoints
        for index, face in enumerate(faces):
            close(dataset[index].keypoints, face.keypoints)
            assert dataset[index].meta["image_path"].endswith(extension)


# ------------------------------------------------------------------------------------- COFW


@BUDGET
@given(st.data())
def test_cofw_round_trip(data):
    count = data.draw(st.integers(1, 4))
    faces = []
    for index in range(count):
        occluded = np.array(data.draw(st.lists(st.booleans(), min_size=29, max_size=29)))
        grey = data.draw(st.booleans())
        faces.append(sample(data.draw(points(29)), data.draw(boxes()), tiny_image(index, grey), occluded=occluded))
    with tempfile.TemporaryDirectory() as root:
        write_cofw(root, "test", faces)
        dataset = open_dataset("cofw", root, "test")
        assert len(dataset) == count
        for index, face in enumerate(faces):
            item = dataset[index]
            close(item.keypoints, face.keypoints)
            close(item.box, face.box)
            np.testing.assert_array_equal(item.meta["occluded"], face.meta["occluded"])
            expected = face.image() if face.image().ndim == 3 else np.repeat(face.image()[:, :, None], 3, axis=2)
            np.testing.assert_array_equal(item.image(), expected)


# ------------------------------------------------------------------------------------- AFLW


@st.composite
def aflw_faces(draw, count, square=False):
    faces = []
    for index in range(count):
        box = draw(boxes())
        if square:
            side = max(box[2] - box[0], box[3] - box[1])
            box = np.array([box[0], box[1], box[0] + side, box[1] + side], dtype=np.float32)
        occluded = np.array(draw(st.lists(st.booleans(), min_size=19, max_size=19)))
        faces.append(sample(draw(points(19)), box, tiny_image(index), occluded=occluded,
                            image_path=f"{index % 3}/image{index:05d}.jpg"))
    return faces


@BUDGET
@given(st.data())
def test_aflw_mat_round_trip(data):
    train_count, test_count = data.draw(st.integers(1, 3)), data.draw(st.integers(1, 3))
    faces = data.draw(aflw_faces(train_count + test_count))
    train, test = faces[:train_count], faces[train_count:]
    with tempfile.TemporaryDirectory() as root:
        write_aflw_mat(root, train, test, seed=data.draw(st.integers(0, 100)))
        for split, expected in (("train", train), ("test", test)):
            dataset = open_dataset("aflw", root, split, train_size=train_count)
            assert len(dataset) == len(expected)
            for index, face in enumerate(expected):
                item = dataset[index]
                close(item.keypoints, face.keypoints, atol=1e-6)
                close(item.box, face.box, atol=1e-6)
                np.testing.assert_array_equal(item.meta["occluded"], face.meta["occluded"])
                assert item.meta["image_path"] == face.meta["image_path"]


@BUDGET
@given(st.data())
def test_aflw_csv_round_trip(data):
    faces = data.draw(aflw_faces(data.draw(st.integers(1, 4)), square=True))
    with tempfile.TemporaryDirectory() as root:
        write_aflw_csv(root, "test", faces)
        dataset = open_dataset("aflw", root, "test", source="csv")
        assert len(dataset) == len(faces)
        for index, face in enumerate(faces):
            close(dataset[index].keypoints, face.keypoints)
            close(dataset[index].box, face.box, atol=5e-4)
            assert dataset[index].meta["normaliser"] == pytest.approx(face.box[2] - face.box[0], abs=5e-4)


# ------------------------------------------------------------------------------------- MPII


@BUDGET
@given(st.data())
def test_mpii_round_trip(data):
    count = data.draw(st.integers(1, 4))
    people = []
    for index in range(count):
        visible = np.array(data.draw(st.lists(st.booleans(), min_size=16, max_size=16)))
        box = data.draw(boxes())
        side = max(box[2] - box[0], box[3] - box[1])
        box = np.array([box[0], box[1], box[0] + side, box[1] + side], dtype=np.float32)  # MPII boxes are squares
        image = f"{data.draw(st.integers(0, 2)):09d}.jpg"
        people.append(sample(data.draw(points(16)), box, tiny_image(0), visible=visible, image=image,
                             head_box=np.array(data.draw(boxes()), dtype=np.float64)))
    with tempfile.TemporaryDirectory() as root:
        for split in ("train", "valid"):
            write_mpii(root, split, people)
            dataset = open_dataset("mpii", root, split)
            assert len(dataset) == count
            for index, person in enumerate(people):
                item = dataset[index]
                np.testing.assert_array_equal(item.visible, person.visible)
                close(item.keypoints[person.visible], person.keypoints[person.visible])
                assert (item.keypoints[~person.visible] == 0).all()
                close(item.box, person.box, atol=2e-3)
                if split == "valid":
                    close(item.meta["head_box"], person.meta["head_box"], atol=2e-3)


# ------------------------------------------------------------------------------------- COCO


@st.composite
def coco_people(draw):
    count = draw(st.integers(1, 5))
    people = []
    for index in range(count):
        flags = np.array(draw(st.lists(st.sampled_from([0, 1, 2]), min_size=17, max_size=17)))
        box = draw(boxes())
        people.append(sample(draw(points(17)), box, tiny_image(0), visible=flags > 0,
                             image_id=draw(st.integers(1, 3)), ann_id=index + 1, keypoint_flags=flags,
                             iscrowd=int(draw(st.integers(0, 5)) == 0),
                             area=float(draw(st.floats(1.0, 1e5)))))
    return people


@BUDGET
@given(people=coco_people(), scores=st.lists(st.floats(0.0, 1.0), min_size=5, max_size=5))
def test_coco_round_trip(people, scores):
    with tempfile.TemporaryDirectory() as root:
        write_coco(root, "val", people)
        dataset = open_dataset("coco", root, "val")
        expected = [person for person in people if not person.meta["iscrowd"] and person.visible.any()]
        assert len(dataset) == len(expected)
        for index, person in enumerate(expected):
            item = dataset[index]
            flags = person.meta["keypoint_flags"]
            np.testing.assert_array_equal(item.meta["keypoint_flags"], flags)
            close(item.keypoints[flags > 0], person.keypoints[flags > 0])
            close(item.box, person.box)
            assert item.meta["ann_id"] == person.meta["ann_id"]
            assert item.meta["area"] == pytest.approx(person.meta["area"])
        content = json.loads((Path(root) / "annotations" / "person_keypoints_val2017.json").read_text())
        image_ids = [image["id"] for image in content["images"]]
        chosen = [people[i % len(people)] for i in range(len(scores))]
        write_coco_detections(Path(root) / "detections.json", [p.meta["image_id"] for p in chosen],
                              np.stack([p.box for p in chosen]), scores)
        detected = open_dataset("coco", root, "val", detections=str(Path(root) / "detections.json"),
                                detection_threshold=0.5)
        assert len(detected) == sum(score >= 0.5 for score in scores)
        assert all(detected[i].meta["image_id"] in image_ids for i in range(len(detected)))


def test_wflw_subset_prefers_the_flagged_unused_twin(tmp_path):
    """One face annotated twice on one image (same landmarks): each subset line takes its own test line."""
    keypoints = np.random.default_rng(0).uniform(0, 50, (98, 2)).astype(np.float32)
    box = np.array([0, 0, 60, 60], np.float32)
    faces = [sample(keypoints, box, tiny_image(0), image_path="0--A/a.jpg", attributes={"blur": 0}),
             sample(keypoints, box + 1, tiny_image(0), image_path="0--A/a.jpg", attributes={"blur": 1}),
             sample(keypoints, box + 2, tiny_image(0), image_path="0--A/a.jpg", attributes={"blur": 1})]
    write_wflw(str(tmp_path), "test", faces)
    subset = open_dataset("wflw", str(tmp_path), "test", subset="blur")
    assert [subset[i].box[0] for i in range(2)] == [1, 2]
