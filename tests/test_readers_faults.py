"""Fault probes: every bad annotation or image file names itself (file, and line or record)
and fails when the dataset is opened (or in ``verify_readable``), before training starts.

Each class below failed on the earlier readers: a raw ``OSError``/``ValueError`` naming no
file, a file accepted that crashed later (pycocotools' ``KeyError: 'iscrowd'``, a missing
image mid-epoch), or a ``nan`` that trained silently.
"""
import json
import os
import re

import h5py
import numpy as np
import pytest
import scipy.io

from h3r.data import open_dataset, verify_readable
from h3r.data.base import Sample
from h3r.data.checks import require_finite
from h3r.data.images import write_image
from h3r.data.writers_face import write_aflw_csv, write_aflw_mat, write_cofw, write_pts_images, write_wflw
from h3r.data.writers_pose import write_coco, write_coco_detections, write_mpii


def faces(count, num_keypoints, seed=0, meta=None):
    rng = np.random.default_rng(seed)
    samples = []
    for index in range(count):
        image = rng.integers(0, 256, size=(20, 24, 3), dtype=np.uint8)
        box = np.array([2.0, 3.0, 20.0, 18.0], dtype=np.float32)
        keypoints = rng.uniform(box[:2] + 1, box[2:] - 1, size=(num_keypoints, 2)).astype(np.float32)
        samples.append(Sample(load_image=lambda image=image: image, keypoints=keypoints,
                              visible=np.ones(num_keypoints, bool), box=box, box_p1=box,
                              meta=dict(meta[index]) if meta else {}))
    return samples


def people(count, num_keypoints, seed=0, **meta):
    rng = np.random.default_rng(seed)
    samples = []
    for index in range(count):
        image = np.full((32, 40, 3), 40 * index, dtype=np.uint8)
        keypoints = rng.uniform(4, 28, size=(num_keypoints, 2)).astype(np.float32)
        box = np.array([*keypoints.min(0) - 2, *keypoints.max(0) + 2], dtype=np.float32)
        extra = {key: value[index] for key, value in meta.items()}
        samples.append(Sample(load_image=lambda image=image: image, keypoints=keypoints,
                              visible=np.ones(num_keypoints, bool), box=box, box_p1=box, meta=extra))
    return samples


def replace_token(path, line, position, token):
    with open(path) as file:
        lines = file.readlines()
    fields = lines[line - 1].split()
    fields[position] = token
    lines[line - 1] = " ".join(fields) + "\n"
    with open(path, "w") as file:
        file.writelines(lines)


# ------------------------------------------------------------------ non-finite values (one rule)


@pytest.mark.parametrize("token", ["nan", "inf", "-inf", "NaN"])
@pytest.mark.parametrize("position, what", [(5, "landmark coordinates"), (198, "rectangle: x_max")])
def test_wflw_non_finite_token_is_rejected(tmp_path, token, position, what):
    path = write_wflw(str(tmp_path), "train", faces(3, 98))
    replace_token(path, 2, position, token)
    with pytest.raises(ValueError, match=rf"list_98pt_rect_attr_train.txt:2: {what}.* is -?(nan|inf); non-finite"):
        open_dataset("wflw", str(tmp_path), "train")


def test_wflw_subset_non_finite_is_rejected(tmp_path):
    write_wflw(str(tmp_path), "test", faces(2, 98, meta=[{"attributes": {"blur": 1}}] * 2))
    replace_token(str(tmp_path / "WFLW_annotations/list_98pt_test/list_98pt_test_blur.txt"), 1, 0, "nan")
    with pytest.raises(ValueError, match=r"list_98pt_test_blur.txt:1: landmark coordinates: value 1 is nan"):
        open_dataset("wflw", str(tmp_path), "test", subset="blur")


def test_pts_non_finite_is_rejected(tmp_path):
    (path,) = write_pts_images(str(tmp_path), faces(1, 68))
    replace_token(path, 6, 1, "nan")
    with pytest.raises(ValueError, match=r"image_0000.pts:6: point 3: y is nan"):
        open_dataset("pts", str(tmp_path))


@pytest.mark.parametrize("row, value, message", [
    (3, np.nan, r"'phisTr' record 2: landmarks: x of point 4 is nan"),
    (29 + 6, np.inf, r"'phisTr' record 2: landmarks: y of point 7 is inf"),
])
def test_cofw_non_finite_landmark_is_rejected(tmp_path, row, value, message):
    path = write_cofw(str(tmp_path), "train", faces(3, 29))
    with h5py.File(path, "r+") as file:
        file["phisTr"][row, 1] = value
    with pytest.raises(ValueError, match=r"COFW_train_color.mat: " + message):
        open_dataset("cofw", str(tmp_path), "train")


def test_cofw_non_finite_box_is_rejected(tmp_path):
    path = write_cofw(str(tmp_path), "train", faces(2, 29))
    with h5py.File(path, "r+") as file:
        file["bboxesTr"][2, 0] = np.nan
    with pytest.raises(ValueError, match=r"'bboxesTr' record 1: box: w is nan"):
        open_dataset("cofw", str(tmp_path), "train")


def test_aflw_csv_non_finite_is_rejected(tmp_path):
    path = write_aflw_csv(str(tmp_path), "train", faces(2, 19))
    with open(path) as file:
        lines = file.readlines()
    cells = lines[2].split(",")
    cells[7] = "nan"
    lines[2] = ",".join(cells)
    with open(path, "w") as file:
        file.writelines(lines)
    with pytest.raises(ValueError, match=r"face_landmarks_aflw_train.csv:3: values: original_1_x is nan"):
        open_dataset("aflw", str(tmp_path), "train")


@pytest.mark.parametrize("field, index, message", [
    ("data", (0, 20), r"'data' row 1: landmarks: y of point 2 is nan"),
    ("bbox", (1, 3), r"'bbox' row 2: box: y2 is nan"),
    ("mask_new", (0, 5), r"'mask_new' row 1: visibility of point 6 is nan"),
])
def test_aflw_mat_non_finite_is_rejected(tmp_path, field, index, message):
    path = write_aflw_mat(str(tmp_path), faces(2, 19), faces(1, 19, seed=1))
    mat = {key: value for key, value in scipy.io.loadmat(path).items() if not key.startswith("__")}
    mat[field] = mat[field].astype(np.float64)
    mat[field][index] = np.nan
    scipy.io.savemat(path, mat)
    with pytest.raises(ValueError, match="AFLWinfo_release.mat: " + message):
        open_dataset("aflw", str(tmp_path), "train", train_size=2)


@pytest.fixture
def mpii_root(tmp_path):
    head_boxes = [np.array([4.0, 4.0, 14.0, 16.0])] * 3
    write_mpii(tmp_path, "train", people(3, 16, image=["a.jpg", "a.jpg", "b.jpg"], head_box=head_boxes))
    write_mpii(tmp_path, "valid", people(3, 16, image=["a.jpg", "a.jpg", "b.jpg"], head_box=head_boxes))
    return tmp_path


def edit_records(path, edit):
    records = json.loads(path.read_text())
    edit(records)
    path.write_text(json.dumps(records))


def test_mpii_non_finite_labelled_joint_is_rejected(mpii_root):
    edit_records(mpii_root / "annot" / "train.json", lambda r: r[2]["joints"][4].__setitem__(0, float("nan")))
    with pytest.raises(ValueError, match=r"train.json: record 2 \(image b.jpg\): joints\[4\] \(l_knee, joints_vis 1\): "
                                         r"x is nan"):
        open_dataset("mpii", str(mpii_root), "train")


def test_mpii_unlabelled_joint_is_not_read(mpii_root):
    """joints_vis 0 is MPII's "not annotated": its coordinates are not used, whatever they are."""
    def edit(records):
        records[1]["joints"][4] = [float("nan"), float("nan")]
        records[1]["joints_vis"][4] = 0
    edit_records(mpii_root / "annot" / "train.json", edit)
    item = open_dataset("mpii", str(mpii_root), "train")[1]
    assert not item.visible[4] and np.isfinite(item.keypoints).all()


def test_mpii_gt_valid_non_finite_is_rejected_unless_missing(mpii_root):
    path = mpii_root / "annot" / "gt_valid.mat"
    mat = {key: value for key, value in scipy.io.loadmat(path).items() if not key.startswith("__")}
    mat["pos_gt_src"] = mat["pos_gt_src"].astype(np.float64)
    mat["pos_gt_src"][3, 0, 1] = np.nan
    mat["jnt_missing"][3, 1] = 1  # flagged missing: allowed
    scipy.io.savemat(path, mat)
    dataset = open_dataset("mpii", str(mpii_root), "valid")
    assert np.isfinite(dataset.ground_truth["joints"]).all()
    mat["jnt_missing"][3, 1] = 0
    scipy.io.savemat(path, mat)
    with pytest.raises(ValueError, match=r"gt_valid.mat: 'pos_gt_src' person 2: joints not flagged in jnt_missing"):
        open_dataset("mpii", str(mpii_root), "valid")
    mat["pos_gt_src"][3, 0, 1] = 1.0
    mat["headboxes_src"] = mat["headboxes_src"].astype(np.float64)
    mat["headboxes_src"][1, 1, 2] = np.inf
    scipy.io.savemat(path, mat)
    with pytest.raises(ValueError, match=r"gt_valid.mat: 'headboxes_src' person 3: head box: y2 is inf"):
        open_dataset("mpii", str(mpii_root), "valid")


def test_mpii_gt_valid_non_finite_names_the_joint_past_a_missing_one(mpii_root):
    """The entry index is the joint's (3), not its position among the joints not flagged missing (2)."""
    path = mpii_root / "annot" / "gt_valid.mat"
    mat = {key: value for key, value in scipy.io.loadmat(path).items() if not key.startswith("__")}
    mat["pos_gt_src"] = mat["pos_gt_src"].astype(np.float64)
    mat["jnt_missing"][0, 1] = 1
    mat["pos_gt_src"][3, 0, 1] = np.nan
    scipy.io.savemat(path, mat)
    with pytest.raises(ValueError, match=r"gt_valid.mat: 'pos_gt_src' person 2: joints not flagged in jnt_missing: "
                                         r"entry \[3, 0\] is nan"):
        open_dataset("mpii", str(mpii_root), "valid")


# ------------------------------------------------------------------ MPII: types and lengths


@pytest.mark.parametrize("edit, message", [
    (lambda r: r[1]["joints"].__setitem__(3, ["abc", 3]), r"record 1 \(image a.jpg\): joints must be .* "
                                                           r"joints\[3\]\[0\] is 'abc' \(str\), not a number"),
    (lambda r: r[1].__setitem__("scale", "big"), r"record 1 \(image a.jpg\): 'scale' must be a number .* got 'big'"),
    (lambda r: r[1].__setitem__("scale", True), r"record 1 \(image a.jpg\): 'scale' must be a number"),
    (lambda r: r[1].__setitem__("center", ["1", 2]), r"record 1 \(image a.jpg\): center must be .* center\[0\] is '1'"),
    (lambda r: r[1].__setitem__("center", 5), r"record 1 \(image a.jpg\): center must be .* center is 5, not a list"),
    (lambda r: r[1].__setitem__("joints", [[1, 2, 3]] * 16), r"record 1 .*joints\[0\] has 3 entries, expected 2"),
    (lambda r: r[1].__setitem__("joints_vis", ["yes"] * 16), r"record 1 .*joints_vis\[0\] is 'yes'"),
    (lambda r: r[1].__setitem__("joints_vis", [2] * 16), r"record 1 .*'joints_vis' must hold 0 or 1"),
    (lambda r: r[1].__setitem__("image", 7), r"record 1: 'image' must be a file name, got 7"),
    (lambda r: r[1].__setitem__("scale", float("inf")), r"record 1 .*scale must be positive and finite, got inf"),
    (lambda r: r.__setitem__(1, ["not", "an", "object"]), r"record 1: expected an object, got list"),
])
def test_mpii_bad_field_names_the_record(mpii_root, edit, message):
    edit_records(mpii_root / "annot" / "train.json", edit)
    with pytest.raises(ValueError, match=r"annot/train.json: " + message):
        open_dataset("mpii", str(mpii_root), "train")


def test_mpii_missing_image_fails_when_opened(mpii_root):
    os.remove(mpii_root / "images" / "b.jpg")
    with pytest.raises(FileNotFoundError, match=r"train.json: record 2 \(image b.jpg\): image .*images/b.jpg not found"):
        open_dataset("mpii", str(mpii_root), "train")


# ------------------------------------------------------------------ COCO: types, lengths, COCOeval fields


@pytest.fixture
def coco_root(tmp_path):
    flags = np.full(17, 2)
    flags[[3, 4]] = 0
    samples = people(3, 17, image_id=[7, 7, 9], keypoint_flags=[flags, np.full(17, 2), np.full(17, 2)])
    write_coco(tmp_path, "val", samples)
    return tmp_path


def edit_coco(root, edit):
    path = root / "annotations" / "person_keypoints_val2017.json"
    content = json.loads(path.read_text())
    edit(content)
    path.write_text(json.dumps(content))


def set_annotation(field, value, index=1):
    return lambda content: content["annotations"][index].__setitem__(field, value)


def drop_annotation_field(field, index=1):
    return lambda content: content["annotations"][index].pop(field)


@pytest.mark.parametrize("edit, message", [
    (set_annotation("bbox", [1.0, 2.0, 3.0]), r"bbox must be \[x, y, w, h\], four numbers; bbox has 3 entries"),
    (set_annotation("bbox", [1.0, "2", 3.0, 4.0]), r"bbox\[1\] is '2' \(str\), not a number"),
    (set_annotation("bbox", [1.0, 2.0, float("nan"), 4.0]), r"bbox: w is nan"),
    (set_annotation("bbox", [1.0, 2.0, -3.0, 4.0]), r"has a negative size"),
    (set_annotation("keypoints", [1.0, "x", 2] + [0.0] * 48), r"keypoints\[1\] is 'x' \(str\), not a number"),
    (set_annotation("keypoints", [0.0] * 50), r"keypoints has 50 entries, expected 51"),
    (set_annotation("keypoints", [1.0, 2.0, 3] + [0.0] * 48), r"keypoint flags v must be 0, 1 or 2"),
    (set_annotation("keypoints", [float("nan"), 2.0, 2] + [0.0] * 48), r"keypoint 0 \(nose, v = 2\): x is nan"),
    (set_annotation("area", "big"), r"area must be a finite number >= 0, got 'big'"),
    (set_annotation("iscrowd", 2), r"iscrowd must be 0 or 1, got 2"),
    (set_annotation("image_id", "7"), r"image_id must be an integer, got '7'"),
    (set_annotation("id", 1), r"duplicate annotation id"),
    (drop_annotation_field("iscrowd"), r"lacks \['iscrowd'\]; pycocotools' COCOeval reads"),
    (drop_annotation_field("num_keypoints"), r"lacks \['num_keypoints'\]"),
    (drop_annotation_field("category_id"), r"lacks \['category_id'\]"),
])
def test_coco_bad_annotation_names_the_record(coco_root, edit, message):
    edit_coco(coco_root, edit)
    with pytest.raises(ValueError, match=r"person_keypoints_val2017.json: annotations\[1\] \(id \d+\).*" + message):
        open_dataset("coco", str(coco_root), "val")


def test_coco_crowd_annotation_without_iscrowd_fields_is_rejected(coco_root):
    """Crowd annotations are not items, but COCOeval reads them: they are validated too."""
    def edit(content):
        content["annotations"][2]["iscrowd"] = 1
        content["annotations"][2].pop("num_keypoints")
    edit_coco(coco_root, edit)
    with pytest.raises(ValueError, match=r"annotations\[2\] \(id 3\) lacks \['num_keypoints'\]"):
        open_dataset("coco", str(coco_root), "val")


@pytest.mark.parametrize("edit, message", [
    (lambda c: c["images"][0].__setitem__("file_name", 12), r"images\[0\] \(id 7\): file_name must be a file name"),
    (lambda c: c["images"][0].__setitem__("width", "wide"), r"images\[0\] \(id 7\): width must be a positive number"),
    (lambda c: c["images"][1].__setitem__("id", 7), r"images\[1\] \(id 7\): duplicate image id"),
    (lambda c: c["images"][0].pop("height"), r"images\[0\] lacks \['height'\]"),
    (lambda c: c.pop("categories"), r"missing the 'categories' list needed by COCOeval"),
    (lambda c: c["categories"][0].pop("id"), r"categories\[0\] must be an object with an integer 'id'"),
    (lambda c: c["categories"][0].__setitem__("id", 2), r"'categories' has no person category \(id 1\); found ids \[2\]"),
])
def test_coco_bad_image_record(coco_root, edit, message):
    edit_coco(coco_root, edit)
    with pytest.raises(ValueError, match=r"person_keypoints_val2017.json: " + message):
        open_dataset("coco", str(coco_root), "val")


@pytest.mark.parametrize("entry, message", [
    ({"image_id": 7, "bbox": [1, 2, 3], "score": 0.9}, r"entry 0: bbox must be .* bbox has 3 entries"),
    ({"image_id": 7, "bbox": [1, 2, 3, 4], "score": "high"}, r"entry 0: score must be a finite number"),
    ({"image_id": 7, "bbox": [1, 2, float("nan"), 4], "score": 0.9}, r"entry 0: bbox: w is nan"),
    ({"image_id": "7", "bbox": [1, 2, 3, 4], "score": 0.9}, r"entry 0: image_id must be an integer"),
    ("box", r"entry 0: expected an object, got str"),
])
def test_coco_bad_detection_names_the_entry(coco_root, entry, message):
    path = coco_root / "detections.json"
    path.write_text(json.dumps([entry]))
    with pytest.raises(ValueError, match=r"person detection file .*detections.json: " + message):
        open_dataset("coco", str(coco_root), "val", detections=str(path))


def test_coco_missing_image_fails_when_opened(coco_root):
    os.remove(coco_root / "val2017" / "000000000009.jpg")
    with pytest.raises(FileNotFoundError, match=r"person_keypoints_val2017.json: image id 9: image .*000000000009.jpg "
                                                r"not found"):
        open_dataset("coco", str(coco_root), "val")
    write_coco_detections(coco_root / "detections.json", [9], np.array([[1.0, 1.0, 9.0, 9.0]]), [0.9])
    with pytest.raises(FileNotFoundError, match=r"image id 9: image .*000000000009.jpg not found"):
        open_dataset("coco", str(coco_root), "val", detections=str(coco_root / "detections.json"))


def test_coco_evaluation_after_validation_has_what_cocoeval_needs(coco_root):
    dataset = open_dataset("coco", str(coco_root), "val")
    truth = np.stack([dataset[i].keypoints for i in range(len(dataset))]).astype(np.float64)
    assert dataset.evaluate(truth)["AP"] == pytest.approx(1.0)


# ------------------------------------------------------------------ COFW: truncated or damaged .mat


@pytest.mark.parametrize("fraction", [0.5, 0.9, 0.999])
def test_cofw_truncated_mat_names_the_file(tmp_path, fraction):
    path = write_cofw(str(tmp_path), "train", faces(3, 29))
    with open(path, "rb") as file:
        content = file.read()
    with open(path, "wb") as file:
        file.write(content[:int(len(content) * fraction)])
    with pytest.raises(ValueError, match=r"COFW_train_color.mat: cannot open as a MATLAB v7.3 \(HDF5\) file "
                                         r"\(truncated or damaged\?\)"):
        open_dataset("cofw", str(tmp_path), "train")


def test_cofw_image_cell_pointing_at_a_non_image(tmp_path):
    path = write_cofw(str(tmp_path), "train", faces(2, 29))
    with h5py.File(path, "r+") as file:
        file["#refs#"].create_dataset("text", data=np.zeros((4, 5), dtype=np.float64))
        file["IsTr"][0, 1] = file["#refs#/text"].ref
    with pytest.raises(ValueError, match=r"COFW_train_color.mat: IsTr\{2\} is not a uint8 image"):
        open_dataset("cofw", str(tmp_path), "train")


def test_cofw_string_matrix_is_rejected(tmp_path):
    path = write_cofw(str(tmp_path), "train", faces(2, 29))
    with h5py.File(path, "r+") as file:
        del file["bboxesTr"]
        file.create_dataset("bboxesTr", data=np.array([[b"a", b"b"]] * 4))
    with pytest.raises(ValueError, match=r"COFW_train_color.mat: 'bboxesTr' should be a numeric matrix"):
        open_dataset("cofw", str(tmp_path), "train")


# ------------------------------------------------------------------ COFW: MATLAB v5/v7 (pre-HDF5) .mat


def rewrite_mat5(path, edit):
    mat = {key: value for key, value in scipy.io.loadmat(path).items() if not key.startswith("__")}
    edit(mat)
    scipy.io.savemat(path, mat)


def set_cell(mat, index, image):
    mat["IsTr"][index, 0] = image


@pytest.mark.parametrize("edit, message", [
    pytest.param(lambda mat: mat.pop("phisTr"), r"variable 'phisTr' missing \(found \['IsTr', 'bboxesTr'\]\)",
                 id="missing"),
    pytest.param(lambda mat: mat.__setitem__("phisTr", mat["phisTr"].T),
                 r"'phisTr' has shape \(87, 3\), expected \(N, 87\) \(MATLAB N×87\)", id="transposed"),
    pytest.param(lambda mat: mat.__setitem__("bboxesTr", np.array(["abcd"] * 3)),
                 r"'bboxesTr' should be a numeric matrix \(MATLAB N×4 double\)", id="string"),
    pytest.param(lambda mat: mat.__setitem__("IsTr", np.zeros((3, 1))),
                 r"'IsTr' should be an N×1 cell of images \(scipy \(N, 1\) object array\), got float64 \(3, 1\)",
                 id="not-a-cell"),
    pytest.param(lambda mat: set_cell(mat, 1, mat["IsTr"][1, 0].astype(np.float64)),
                 r"IsTr\{2\} is not a uint8 image .*got float64 \(20, 24, 3\)", id="double-image"),
    pytest.param(lambda mat: set_cell(mat, 2, mat["IsTr"][2, 0][:, :, :2]),
                 r"IsTr\{3\} is not a uint8 image .*got uint8 \(20, 24, 2\)", id="two-channels"),
    pytest.param(lambda mat: set_cell(mat, 0, np.zeros((0, 24), np.uint8)), r"IsTr\{1\} is not a uint8 image",
                 id="empty-image"),
    pytest.param(lambda mat: mat.__setitem__("bboxesTr", mat["bboxesTr"][:2]),
                 r"3 images in 'IsTr', 3 shapes in 'phisTr', 2 boxes in 'bboxesTr'", id="counts"),
    pytest.param(lambda mat: mat["phisTr"].__setitem__((1, 3), np.nan),
                 r"'phisTr' record 2: landmarks: x of point 4 is nan", id="nan-landmark"),
    pytest.param(lambda mat: mat["bboxesTr"].__setitem__((0, 2), np.inf), r"'bboxesTr' record 1: box: w is inf",
                 id="inf-box"),
    pytest.param(lambda mat: mat["phisTr"].__setitem__((1, 60), 3.0),
                 r"'phisTr' record 2: occlusion flag of point 3 is 3.0, expected 0 or 1", id="occlusion-flag"),
    pytest.param(lambda mat: mat["bboxesTr"].__setitem__((2, 3), 0.0),
                 r"'bboxesTr' record 3: box \[x, y, w, h\] = \[3.0, 4.0, 18.0, 0.0\] has no area", id="no-area"),
])
def test_cofw_pre_hdf5_mat_faults_name_file_and_variable(tmp_path, edit, message):
    path = write_cofw(str(tmp_path), "train", faces(3, 29), mat_format="5")
    open_dataset("cofw", str(tmp_path), "train")  # valid before the edit
    rewrite_mat5(path, edit)
    with pytest.raises(ValueError, match=r"COFW_train_color.mat: " + message):
        open_dataset("cofw", str(tmp_path), "train")


@pytest.mark.parametrize("mat_format", ["7.3", "5"])
def test_cofw_two_channel_cell_is_rejected_in_both_kinds(tmp_path, mat_format):
    samples = faces(2, 29)
    two_channels = samples[1].image()[:, :, :2]
    samples[1] = Sample(load_image=lambda: two_channels, keypoints=samples[1].keypoints, visible=samples[1].visible,
                        box=samples[1].box, box_p1=samples[1].box_p1)
    write_cofw(str(tmp_path), "train", samples, mat_format=mat_format)
    with pytest.raises(ValueError, match=r"COFW_train_color.mat: IsTr\{2\} is not a uint8 image"):
        open_dataset("cofw", str(tmp_path), "train")


@pytest.mark.parametrize("mat_format", ["5", "7"])
@pytest.mark.parametrize("fraction", [0.5, 0.999])
def test_cofw_truncated_pre_hdf5_mat_names_the_file(tmp_path, mat_format, fraction):
    path = write_cofw(str(tmp_path), "train", faces(3, 29), mat_format=mat_format)
    with open(path, "rb") as file:
        content = file.read()
    with open(path, "wb") as file:
        file.write(content[:int(len(content) * fraction)])
    with pytest.raises(ValueError, match=r"COFW_train_color.mat: cannot read as a MATLAB .mat file"):
        open_dataset("cofw", str(tmp_path), "train")
    os.symlink(tmp_path, tmp_path.parent / f"{tmp_path.name}-link")  # the error names the path as given
    with pytest.raises(ValueError, match=rf"{tmp_path.name}-link/COFW_train_color.mat: cannot read"):
        open_dataset("cofw", str(tmp_path.parent / f"{tmp_path.name}-link"), "train")


# ------------------------------------------------------------------ verify_readable


def test_verify_readable_names_an_undecodable_image(tmp_path):
    write_pts_images(str(tmp_path), faces(3, 68))
    dataset = open_dataset("pts", str(tmp_path))
    verify_readable(dataset, count=3)
    with open(tmp_path / "image_0001.jpg", "r+b") as file:
        file.truncate(40)  # a truncated JPEG: exists (the stat passes) but does not decode
    verify_readable(dataset, count=1)  # only the first item is decoded
    with pytest.raises(ValueError, match=r"pts train: item 1: cannot read image .*image_0001.jpg: cannot decode"):
        verify_readable(dataset, count=2)
    with pytest.raises(ValueError, match=r"item 1: .*image_0001.jpg"):
        verify_readable(dataset, count=None)
    os.remove(tmp_path / "image_0000.jpg")
    with pytest.raises(ValueError, match=r"item 0: cannot read image .*image_0000.jpg: image not found"):
        verify_readable(dataset)
    with pytest.raises(ValueError, match=r"count: expected a non-negative int or None"):
        verify_readable(dataset, count=-1)


def test_verify_readable_on_a_cofw_image(tmp_path):
    path = write_cofw(str(tmp_path), "train", faces(2, 29))
    dataset = open_dataset("cofw", str(tmp_path), "train")
    with h5py.File(path, "r+") as file:  # damaged after opening: the pixels are not uint8 any more
        del file["#refs#/image0"]
        file["#refs#"].create_dataset("image0", data=np.zeros((3, 24, 20), dtype=np.float32))
        file["IsTr"][0, 0] = file["#refs#/image0"].ref
    with pytest.raises(ValueError, match=r"cofw train: item 0: cannot read image .*COFW_train_color.mat, IsTr, 0"):
        verify_readable(dataset)


@pytest.mark.parametrize("mat_format", ["7.3", "5"])
def test_cofw_file_rewritten_with_fewer_images_after_opening(tmp_path, mat_format):
    path = write_cofw(str(tmp_path), "train", faces(3, 29), mat_format=mat_format)
    dataset = open_dataset("cofw", str(tmp_path), "train")
    verify_readable(dataset)
    write_cofw(str(tmp_path), "train", faces(2, 29), mat_format=mat_format)
    status = os.stat(path)
    os.utime(path, ns=(status.st_atime_ns, status.st_mtime_ns + 10**9))  # a new mtime even on a coarse clock
    verify_readable(dataset, count=2)
    with pytest.raises(ValueError, match=r"cofw train: item 2: cannot read image .*COFW_train_color.mat, IsTr, 2: "
                                         r".*IsTr\{3\} asked for, but 'IsTr' holds 2 images \(was the file rewritten"):
        verify_readable(dataset, count=None)


def test_verify_readable_on_a_pre_hdf5_cofw_file_damaged_after_opening(tmp_path):
    path = write_cofw(str(tmp_path), "train", faces(2, 29), mat_format="5")
    dataset = open_dataset("cofw", str(tmp_path), "train")
    verify_readable(dataset)
    with open(path, "r+b") as file:
        file.truncate(os.path.getsize(path) // 2)
    with pytest.raises(ValueError, match=r"cofw train: item 0: cannot read image .*COFW_train_color.mat, IsTr, 0: "
                                         r".*cannot read as a MATLAB .mat file"):
        verify_readable(dataset)


def test_require_finite_message():
    require_finite(np.array([1.0, 2.0]), "f:3", "pair")
    with pytest.raises(ValueError, match=r"f:3: pair: b is inf; non-finite annotation values are rejected"):
        require_finite(np.array([1.0, np.inf]), "f:3", "pair", names=("a", "b"))


def test_training_decodes_one_image_per_split_before_the_first_step(tmp_path, capsys):
    """An image that exists but cannot be decoded stops 'h3r train' before any step, naming the file."""
    from h3r.cli import main

    root = tmp_path / "data"
    write_wflw(str(root), "train", faces(3, 98))
    write_wflw(str(root), "test", faces(2, 98))
    first = sorted((root / "WFLW_images").rglob("train_*.jpg"))[0]
    with open(first, "r+b") as file:
        file.truncate(40)
    code = main(["train", "--dataset", "wflw", "--data-root", str(root), "--epochs", "1",
                 "--out", str(tmp_path / "run"), "--workers", "0"])
    assert code == 2
    assert f"{first.name}: cannot decode" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("dataset, name, text", [
    ("300w", "ibug/image_006.pts", "version: 1\nn_points: 68\n{\n1 2 \xb0\n"),
    ("300w", "ibug/image_006.pts", "version: 1\rn_points: 68\r{\r1 2 \xb0\r"),  # old Mac line ends
    ("wflw", "WFLW_annotations/list_98pt_rect_attr_train_test/list_98pt_rect_attr_train.txt", "1 2\n3 \xb0 4\n"),
    ("coco", "annotations/person_keypoints_val2017.json", '{"images": [],\n"info": "\xb0"}'),
])
def test_text_that_is_not_utf8_names_the_file_and_line(tmp_path, dataset, name, text):
    """e.g. a Latin-1 file: the error names file:line, not a bare UnicodeDecodeError."""
    path = tmp_path / name
    os.makedirs(path.parent, exist_ok=True)
    path.write_bytes(text.encode("latin-1"))
    if dataset == "300w":
        write_image(str(tmp_path / "ibug" / "image_006.jpg"), np.zeros((4, 4, 3), np.uint8))
    line = len(re.split("\r|\n", text[:text.index("\xb0")]))
    with pytest.raises(ValueError, match=rf"{re.escape(name)}:{line}: not UTF-8 text \(byte 0xb0 at offset"):
        open_dataset(dataset, str(tmp_path), {"300w": "challenging", "wflw": "train", "coco": "val"}[dataset])
