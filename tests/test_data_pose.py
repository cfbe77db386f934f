"""MPII and COCO readers on files written in the real formats by h3r.data.writers_pose."""
import json
import shutil

import numpy as np
import pytest

from h3r.data.base import Sample
from h3r.data.coco import COCO_FLIP_PAIRS, COCODataset, oks_nms
from h3r.data.mpii import MPII_FLIP_PAIRS, MPIIDataset, box_from_center_scale
from h3r.data.synthetic import SyntheticPeople
from h3r.data.writers_pose import write_coco, write_coco_detections, write_mpii
from h3r.metrics import mpii_head_size

HEIGHT, WIDTH = 48, 64


def image_of(seed: int) -> np.ndarray:
    """A smooth image, so that JPEG round trips stay close."""
    rng = np.random.default_rng(seed)
    ys, xs = np.mgrid[0:HEIGHT, 0:WIDTH]
    colour = rng.uniform(40, 200, 3)
    return np.clip(colour + 0.5 * xs[..., None] + 0.3 * ys[..., None], 0, 255).astype(np.uint8)


def make_sample(seed: int, count: int, image_seed: int, visible=None, **meta) -> Sample:
    """A person with ``count`` random keypoints on image ``image_seed`` (shared by people of one image)."""
    rng = np.random.default_rng(seed)
    keypoints = rng.uniform([5, 5], [WIDTH - 5, HEIGHT - 5], (count, 2)).astype(np.float32)
    visible = np.ones(count, dtype=bool) if visible is None else np.asarray(visible)
    image = image_of(image_seed)
    box = np.array([*keypoints.min(axis=0) - 2, *keypoints.max(axis=0) + 2], dtype=np.float32)
    return Sample(load_image=lambda: image, keypoints=keypoints, visible=visible, box=box, box_p1=box.copy(), meta=meta)


# ----------------------------------------------------------------------------------- MPII

def mpii_people():
    missing_knee = np.ones(16, dtype=bool)
    missing_knee[[1, 4]] = False
    return [
        make_sample(0, 16, 1, image="000000001.jpg", head_box=np.array([10.0, 4.0, 22.0, 18.0])),
        make_sample(1, 16, 1, visible=missing_knee, image="000000001.jpg", head_box=np.array([30.5, 6.0, 41.0, 19.5])),
        make_sample(2, 16, 2, image="000000002.jpg", head_box=np.array([20.0, 2.0, 28.0, 11.0])),
    ]


@pytest.fixture
def mpii_root(tmp_path):
    people = mpii_people()
    for split in ("train", "valid", "test"):
        write_mpii(tmp_path, split, people)
    return tmp_path


@pytest.mark.parametrize("split", ["train", "valid"])
def test_mpii_round_trip(mpii_root, split):
    people = mpii_people()
    dataset = MPIIDataset(mpii_root, split)
    assert len(dataset) == 3 and dataset.num_keypoints == 16 and dataset.flip_pairs == MPII_FLIP_PAIRS
    for person, sample in zip(people, (dataset[i] for i in range(3))):
        np.testing.assert_array_equal(sample.visible, person.visible)
        np.testing.assert_allclose(sample.keypoints[person.visible], person.keypoints[person.visible], atol=1e-5)
        side = max(person.box[2] - person.box[0], person.box[3] - person.box[1])
        centre = (person.box[:2] + person.box[2:]) / 2
        np.testing.assert_allclose(sample.box, [*(centre - side / 2), *(centre + side / 2)], atol=1e-4)
        assert sample.meta["image"] == person.meta["image"]
        image = sample.image()
        assert image.shape == (HEIGHT, WIDTH, 3) and image.dtype == np.uint8
        assert np.abs(image.astype(int) - person.image()).mean() < 3  # JPEG
        if split == "valid":
            np.testing.assert_allclose(sample.meta["head_box"], person.meta["head_box"], atol=1e-5)
            x1, y1, x2, y2 = person.meta["head_box"]
            assert sample.meta["head_size"] == pytest.approx(0.6 * np.hypot(x2 - x1, y2 - y1))
        else:
            assert "head_box" not in sample.meta


def test_mpii_files_are_one_based(mpii_root):
    records = json.loads((mpii_root / "annot" / "train.json").read_text())
    people = mpii_people()
    np.testing.assert_allclose(records[0]["joints"], people[0].keypoints + 1, atol=1e-5)
    assert records[1]["joints"][1] == [-1.0, -1.0] and records[1]["joints_vis"][1] == 0
    dataset = MPIIDataset(mpii_root, "train")
    np.testing.assert_allclose(dataset[0].meta["center"], np.array(records[0]["center"]) - 1)


def test_mpii_box_follows_hrnet(tmp_path):
    record = {"image": "a.jpg", "center": [101.0, 81.0], "scale": 1.5, "joints": [[-1, -1]] * 16,
              "joints_vis": [0] * 16}
    (tmp_path / "annot").mkdir()
    (tmp_path / "annot" / "train.json").write_text(json.dumps([record]))
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "a.jpg").write_bytes(b"")  # opening checks that it exists, without decoding it
    box = MPIIDataset(tmp_path, "train")[0].box
    # 0-based centre (100, 80) moved down by 15 * 1.5; side 200 * 1.5
    np.testing.assert_allclose(box, [100 - 150, 80 + 22.5 - 150, 100 + 150, 80 + 22.5 + 150])
    np.testing.assert_allclose(box_from_center_scale([100, 80], 1.5), box)


def test_mpii_pckh_of_perfect_predictions(mpii_root):
    dataset = MPIIDataset(mpii_root, "valid")
    truth = np.stack([dataset[i].keypoints for i in range(len(dataset))])
    results = dataset.evaluate(truth)
    for name in ("Head", "Shoulder", "Elbow", "Wrist", "Hip", "Knee", "Ankle", "Mean", "Mean@0.1"):
        assert results[name] == pytest.approx(100.0)
    assert dataset.evaluate(truth[[0, 2]], indices=[0, 2])["Mean"] == pytest.approx(100.0)


def test_mpii_mean_at_0_1_uses_threshold_0_10(mpii_root):
    """Errors of 0.105 head sizes count at PCKh@0.5 but not at 0.1 (HRNet's 0.11 would count them)."""
    dataset = MPIIDataset(mpii_root, "valid")
    truth = np.stack([dataset[i].keypoints for i in range(len(dataset))]).astype(np.float64)
    head_size = mpii_head_size(np.stack([dataset[i].meta["head_box"] for i in range(len(dataset))]))
    shifted = truth + 0.105 * head_size[:, None, None] * np.array([0.6, 0.8])
    results = dataset.evaluate(shifted)
    assert results["Mean"] == pytest.approx(100.0)
    assert results["Mean@0.1"] == 0.0


def test_mpii_test_split_has_no_joints_and_no_evaluation(mpii_root):
    dataset = MPIIDataset(mpii_root, "test")
    assert len(dataset) == 3 and not dataset[0].visible.any()
    with pytest.raises(ValueError, match="only 'valid' can be evaluated"):
        dataset.evaluate(np.zeros((3, 16, 2)))


def test_mpii_mmpose_layout(mpii_root, tmp_path_factory):
    other = tmp_path_factory.mktemp("mmpose")
    (other / "annotations").mkdir()
    shutil.copy(mpii_root / "annot" / "valid.json", other / "annotations" / "mpii_val.json")
    shutil.copy(mpii_root / "annot" / "gt_valid.mat", other / "annotations" / "mpii_gt_val.mat")
    shutil.copytree(mpii_root / "images", other / "images")
    dataset = MPIIDataset(other, "valid")
    assert len(dataset) == 3 and dataset[2].image().shape == (HEIGHT, WIDTH, 3)


@pytest.mark.parametrize("content, message", [
    ("", "is empty"),
    ('[{"image": "000000001.jpg", "center": [1, 2], ', "not valid JSON"),
    ('{"image": "a.jpg"}', "expected a JSON list"),
])
def test_mpii_broken_json(mpii_root, content, message):
    (mpii_root / "annot" / "train.json").write_text(content)
    with pytest.raises(ValueError, match=f"train.json.*{message}|{message}.*train.json"):
        MPIIDataset(mpii_root, "train")


@pytest.mark.parametrize("field, value, message", [
    ("joints", [[1.0, 2.0]] * 15, "record 1 .*16 joints"),
    ("joints_vis", [1] * 17, "record 1 .*16 joints"),
    ("scale", -1.0, "record 1 .*scale must be positive"),
    ("center", [3.0], r"record 1 .*center must be \[x, y\]"),
])
def test_mpii_bad_record(mpii_root, field, value, message):
    path = mpii_root / "annot" / "train.json"
    records = json.loads(path.read_text())
    records[1][field] = value
    path.write_text(json.dumps(records))
    with pytest.raises(ValueError, match=message):
        MPIIDataset(mpii_root, "train")


def test_mpii_missing_files(mpii_root):
    image = mpii_root / "images" / "000000002.jpg"
    content = image.read_bytes()
    image.unlink()
    with pytest.raises(FileNotFoundError, match=r"train.json: record 2 \(image 000000002.jpg\): image .*000000002.jpg not found"):
        MPIIDataset(mpii_root, "train")  # when the dataset is opened, not mid-epoch
    image.write_bytes(content)
    (mpii_root / "annot" / "gt_valid.mat").unlink()
    with pytest.raises(FileNotFoundError, match="gt_valid.mat"):
        MPIIDataset(mpii_root, "valid")
    with pytest.raises(FileNotFoundError, match="train.json"):
        MPIIDataset(mpii_root / "nowhere", "train")


def test_mpii_unreadable_or_mismatched_mat(mpii_root):
    mat = mpii_root / "annot" / "gt_valid.mat"
    good = mat.read_bytes()
    mat.write_bytes(b"MATLAB 5.0 MAT-file" + b"\0" * 40)
    with pytest.raises(ValueError, match="gt_valid.mat"):
        MPIIDataset(mpii_root, "valid")
    mat.write_bytes(good)
    write_mpii(mpii_root, "valid", mpii_people()[:2])  # json now 2 people; rewrite .mat with 2 ...
    path = mpii_root / "annot" / "valid.json"
    path.write_text(json.dumps(json.loads(path.read_text()) + json.loads(path.read_text())[:1]))  # ... json 3
    with pytest.raises(ValueError, match="gt_valid.mat has 2 people but .*valid.json has 3"):
        MPIIDataset(mpii_root, "valid")


# ----------------------------------------------------------------------------------- COCO

def coco_people():
    """2 images, 3 people with keypoints, one crowd, one without labelled keypoints."""
    flags = np.full(17, 2)
    flags[[3, 4]] = 0
    flags[9] = 1
    return [
        make_sample(10, 17, 7, visible=flags > 0, image_id=7, ann_id=101, area=900.0, keypoint_flags=flags),
        make_sample(11, 17, 7, image_id=7, ann_id=102, area=700.0),
        make_sample(12, 17, 9, image_id=9, ann_id=103, area=1200.0),
        make_sample(13, 17, 9, image_id=9, ann_id=104, area=2000.0, iscrowd=1),
        make_sample(14, 17, 9, visible=np.zeros(17, dtype=bool), image_id=9, ann_id=105, area=400.0),
    ]


@pytest.fixture
def coco_root(tmp_path):
    write_coco(tmp_path, "val", coco_people())
    return tmp_path


def test_coco_round_trip(coco_root):
    people = coco_people()
    dataset = COCODataset(coco_root, "val")
    assert len(dataset) == 3  # crowd and keypoint-less annotations are not items
    assert dataset.num_keypoints == 17 and dataset.flip_pairs == COCO_FLIP_PAIRS
    for person, sample in zip(people, (dataset[i] for i in range(3))):
        np.testing.assert_array_equal(sample.visible, person.visible)
        np.testing.assert_allclose(sample.keypoints[person.visible], person.keypoints[person.visible], atol=1e-5)
        np.testing.assert_allclose(sample.box, person.box, atol=1e-5)
        for key in ("image_id", "ann_id", "area"):
            assert sample.meta[key] == person.meta[key]
        assert np.abs(sample.image().astype(int) - person.image()).mean() < 3
    np.testing.assert_array_equal(dataset[0].meta["keypoint_flags"], people[0].meta["keypoint_flags"])
    assert dataset[0].meta["file_name"] == "000000000007.jpg"


def test_coco_file_content(coco_root):
    content = json.loads((coco_root / "annotations" / "person_keypoints_val2017.json").read_text())
    assert set(content) >= {"images", "annotations", "categories"}
    first = content["annotations"][0]
    assert first["keypoints"][9:12] == [0.0, 0.0, 0.0]  # v = 0 is written as 0, 0, 0
    assert first["keypoints"][29] == 1 and first["num_keypoints"] == 15
    assert content["annotations"][4]["num_keypoints"] == 0 and content["annotations"][3]["iscrowd"] == 1
    x1, y1, x2, y2 = coco_people()[0].box
    np.testing.assert_allclose(first["bbox"], [x1, y1, x2 - x1, y2 - y1], atol=1e-5)


def test_coco_ground_truth_as_prediction_scores_ap_1(coco_root):
    dataset = COCODataset(coco_root, "val")
    truth = np.stack([dataset[i].keypoints for i in range(len(dataset))])
    results = dataset.evaluate(truth)
    assert results["AP"] == pytest.approx(1.0) and results["AR"] == pytest.approx(1.0)
    assert dataset.evaluate(truth[[2]], indices=[2])["AP"] == pytest.approx(1.0)  # image 9 only
    rng = np.random.default_rng(0)
    assert dataset.evaluate(truth + rng.normal(0, 8, truth.shape))["AP"] < 0.9


def test_coco_detections(coco_root):
    people = coco_people()
    detections = coco_root / "detections.json"
    boxes = [people[0].box, people[1].box, people[2].box, people[2].box + 1, people[1].box]
    write_coco_detections(detections, [7, 7, 9, 9, 7], np.array(boxes), [0.9, 0.8, 0.95, 0.3, 0.01])
    raw = json.loads(detections.read_text())
    raw[4]["category_id"] = 2  # not a person
    detections.write_text(json.dumps(raw))
    dataset = COCODataset(coco_root, "val", detections=detections, detection_threshold=0.05)
    assert len(dataset) == 4
    sample = dataset[1]
    assert not sample.visible.any() and sample.meta["detection_score"] == pytest.approx(0.8)
    np.testing.assert_allclose(sample.box, people[1].box, atol=1e-5)
    truth = np.stack([people[i].keypoints for i in (0, 1, 2, 2)])  # the 4th duplicates the 3rd person
    results = dataset.results(truth)
    assert len(results) == 3  # the duplicate is removed by OKS-NMS
    assert [r["score"] for r in results] == pytest.approx([0.9, 0.8, 0.95])
    assert dataset.evaluate(truth)["AP"] == pytest.approx(1.0)


def test_coco_instance_score():
    """Box score times the mean of the keypoint scores above 0.2 (0 when none is)."""
    dataset = COCODataset.__new__(COCODataset)
    dataset._items = [{"image_id": 1, "detection_score": None}, {"image_id": 2, "detection_score": None}]
    scores = np.full((2, 17), 0.1)
    scores[0, :4] = [0.5, 0.7, 0.9, 0.3]
    results = dataset.results(np.zeros((2, 17, 2)), keypoint_scores=scores)
    assert results[0]["score"] == pytest.approx(0.6) and results[1]["score"] == 0.0
    assert results[0]["keypoints"][2] == pytest.approx(0.5)


def test_oks_nms():
    base = np.random.default_rng(0).uniform(0, 100, (17, 2))
    keypoints = np.stack([base, base + 0.5, base + 40.0])
    kept = oks_nms(keypoints, np.array([0.5, 0.9, 0.7]), np.full(3, 100.0 * 100.0))
    assert kept == [1, 2]


def test_oks_nms_counts_a_non_finite_keypoint_as_far_away():
    """A NaN prediction overlaps nothing: it must not suppress the others (a NaN OKS would drop them all)."""
    base = np.random.default_rng(1).uniform(0, 100, (17, 2))
    nan = np.full((17, 2), np.nan)
    assert oks_nms(np.stack([nan, base, base + 0.5]), np.array([0.99, 0.9, 0.8]), np.full(3, 1e4)) == [0, 1]
    one_nan = base.copy()
    one_nan[3] = np.nan  # 16 of 17 keypoints coincide: OKS 16/17 > 0.9, still a duplicate
    assert oks_nms(np.stack([one_nan, base]), np.array([0.99, 0.9]), np.full(2, 1e4)) == [0]


def _scored_items(boxes, image_ids):
    dataset = COCODataset.__new__(COCODataset)
    dataset._items = [{"image_id": image_id, "detection_score": None, "box": np.asarray(box, dtype=np.float32)}
                      for box, image_id in zip(boxes, image_ids)]
    return dataset


def test_coco_results_remove_duplicates_with_ground_truth_boxes_as_hrnet():
    """OKS-NMS per image with ground-truth boxes too, the area that of the square crop (1.25 max(w, h))²:
    a tall box (100 x 300) whose duplicate is 8 px off has OKS 0.95 with that area (0.86 with 1.25² w h)."""
    tall = [0, 0, 100, 300]
    dataset = _scored_items([tall, tall, tall], [1, 1, 2])
    base = np.random.default_rng(2).uniform(0, 1, (17, 2)) * [100, 300]
    predictions = np.stack([base, base + 8, base])
    scores = np.ones((3, 17))
    scores[1] = 0.9
    results = dataset.results(predictions, keypoint_scores=scores)
    assert [(r["image_id"], r["score"]) for r in results] == [(1, 1.0), (2, 1.0)]
    far = np.stack([base, base + 60, base])  # another person: both kept
    assert [r["image_id"] for r in dataset.results(far, keypoint_scores=scores)] == [1, 1, 2]


def test_coco_results_keep_a_finite_prediction_beside_a_nan_one():
    dataset = _scored_items([[0, 0, 100, 100], [1, 1, 101, 101]], [1, 1])
    base = np.random.default_rng(3).uniform(0, 100, (17, 2))
    scores = np.stack([np.full(17, 0.99), np.full(17, 0.9)])
    results = dataset.results(np.stack([np.full((17, 2), np.nan), base]), keypoint_scores=scores)
    assert len(results) == 2 and results[1]["keypoints"][:2] == pytest.approx(base[0].tolist())
    nan_scores = scores.copy()
    nan_scores[0] = np.nan  # a NaN keypoint score counts as none above 0.2: instance score 0
    assert sorted(r["score"] for r in dataset.results(np.stack([base + 50, base]), keypoint_scores=nan_scores)) == [0.0, 0.9]


def test_coco_hrnet_image_layout(coco_root):
    (coco_root / "images").mkdir()
    shutil.move(coco_root / "val2017", coco_root / "images" / "val2017")
    assert COCODataset(coco_root, "val")[0].image().shape == (HEIGHT, WIDTH, 3)


def test_synthetic_people_through_the_coco_files(tmp_path):
    people = SyntheticPeople(size=3, image_size=64)
    write_coco(tmp_path, "train", [people[i] for i in range(3)])
    dataset = COCODataset(tmp_path, "train")
    assert len(dataset) == 3
    for index in range(3):
        np.testing.assert_allclose(dataset[index].keypoints[dataset[index].visible],
                                   people[index].keypoints[people[index].visible], atol=1e-4)
        assert dataset[index].meta["area"] == pytest.approx(people[index].meta["area"])
    truth = np.stack([dataset[i].keypoints for i in range(3)])
    assert dataset.evaluate(truth)["AP"] == pytest.approx(1.0)


@pytest.mark.parametrize("edit, error, message", [
    (lambda text: "", ValueError, "is empty"),
    (lambda text: text[: len(text) // 2], ValueError, "not valid JSON"),
    (lambda text: json.dumps({"images": []}), ValueError, "missing the 'annotations' list"),
])
def test_coco_broken_json(coco_root, edit, error, message):
    path = coco_root / "annotations" / "person_keypoints_val2017.json"
    path.write_text(edit(path.read_text()))
    with pytest.raises(error, match=message):
        COCODataset(coco_root, "val")


@pytest.mark.parametrize("field, value, message", [
    ("keypoints", [0.0] * 50, r"annotations\[1\] \(id 102\).*51 keypoint values"),
    ("image_id", 12345, r"annotations\[1\] \(id 102\).*image_id 12345"),
])
def test_coco_bad_annotation(coco_root, field, value, message):
    path = coco_root / "annotations" / "person_keypoints_val2017.json"
    content = json.loads(path.read_text())
    content["annotations"][1][field] = value
    path.write_text(json.dumps(content))
    with pytest.raises(ValueError, match=message):
        COCODataset(coco_root, "val")


def test_coco_missing_files(coco_root):
    image = coco_root / "val2017" / "000000000009.jpg"
    content = image.read_bytes()
    image.unlink()
    with pytest.raises(FileNotFoundError, match="image id 9: image .*000000000009.jpg not found"):
        COCODataset(coco_root, "val")  # when the dataset is opened, not mid-epoch
    image.write_bytes(content)
    with pytest.raises(FileNotFoundError, match="person_keypoints_train2017.json"):
        COCODataset(coco_root, "train")
    with pytest.raises(FileNotFoundError, match="missing.json"):
        COCODataset(coco_root, "val", detections=coco_root / "missing.json")
    with pytest.raises(ValueError, match="entry 0 has image_id 3"):
        COCODataset(coco_root, "val", detections=[{"image_id": 3, "bbox": [0, 0, 5, 5], "score": 1.0}])


@pytest.mark.parametrize("reader, split", [(MPIIDataset, "val"), (COCODataset, "valid")])
def test_bad_split(tmp_path, reader, split):
    with pytest.raises(ValueError, match="split"):
        reader(tmp_path, split)
