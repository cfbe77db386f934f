"""MPII Human Pose (16 joints) in the HRNet / mmpose JSON conversion.

Layout under ``root`` (datasets.md §5.2)::

    annot/{train,valid,test}.json   annot/gt_valid.mat   images/*.jpg          (HRNet)
    annotations/mpii_{train,val,test}.json   annotations/mpii_gt_val.mat   images/*.jpg   (mmpose)

A JSON file is a list of people ``{"image", "center": [x, y], "scale", "joints": [[x, y] * 16],
"joints_vis": [0/1 * 16]}`` in MATLAB's **1-based** pixels; ``scale`` is the person size in
units of 200 px; unlabelled joints are ``[-1, -1]`` with ``joints_vis`` 0; ``test.json`` has
no joints. The reader subtracts 1 from joints and centre (0-based pixels) and builds the crop
box as HRNet / mmpose do before their 1.25 enlargement (which belongs to the crop transform):
the centre moves down by ``15 * scale`` px, the box is the square of side ``200 * scale``.

``gt_valid.mat`` (valid split only) holds the evaluation ground truth, one column per person of
``valid.json`` in the same order: ``pos_gt_src`` (16, 2, N) 1-based joints, ``jnt_missing``
(16, N), ``headboxes_src`` (2, 2, N) head rectangles ``[[x1, y1], [x2, y2]]`` and
``dataset_joints`` (the joint names). :meth:`MPIIDataset.evaluate` is PCKh@0.5 against it
(:func:`h3r.metrics.pckh`, head size = 0.6 × head-box diagonal, ``Mean@0.1`` at 0.10).

Validation when the dataset is opened (errors name the file and the 0-based record index):
``image`` a string naming an existing file under ``images/`` (a ``stat``, no decoding);
``center`` two finite numbers; ``scale`` a finite positive number; ``joints`` 16 pairs of
numbers; ``joints_vis`` 16 flags 0 or 1. A labelled joint (``joints_vis`` 1) must be finite;
an unlabelled one (``joints_vis`` 0) is not read (its coordinates become 0, not visible).
In ``gt_valid.mat`` every head box and every joint not flagged in ``jnt_missing`` must be finite.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np
import scipy.io

from h3r.data.base import LandmarkDataset, Sample, landmark_box
from h3r.data.checks import is_number, matlab_string, number_array, require_finite, require_images
from h3r.data.coco import read_json
from h3r.data.images import image_loader
from h3r.metrics import mpii_head_size, pckh

MPII_JOINT_NAMES = (
    "r_ankle", "r_knee", "r_hip", "l_hip", "l_knee", "l_ankle", "pelvis", "thorax",
    "upper_neck", "head_top", "r_wrist", "r_elbow", "r_shoulder", "l_shoulder", "l_elbow", "l_wrist",
)
MPII_NUM_JOINTS = 16
MPII_FLIP_PAIRS = ((0, 5), (1, 4), (2, 3), (10, 15), (11, 14), (12, 13))
# The short names of gt_valid.mat's dataset_joints in joint order; HRNet looks up all but
# pelv, thor and neck by name.
MPII_MAT_JOINT_NAMES = ("rank", "rkne", "rhip", "lhip", "lkne", "lank", "pelv", "thor",
                        "neck", "head", "rwri", "relb", "rsho", "lsho", "lelb", "lwri")
MPII_CHECKED_MAT_NAMES = {"head", "lsho", "lelb", "lwri", "lhip", "lkne", "lank",
                          "rsho", "relb", "rwri", "rkne", "rank", "rhip"}
PIXEL_STD = 200.0  # MPII scale unit, px
CENTER_SHIFT = 15.0  # HRNet / mmpose move the centre down by 15 * scale px
LAYOUTS = {  # split -> (HRNet json, mmpose json)
    "train": ("annot/train.json", "annotations/mpii_train.json"),
    "valid": ("annot/valid.json", "annotations/mpii_val.json"),
    "test": ("annot/test.json", "annotations/mpii_test.json"),
}
GT_FILES = ("annot/gt_valid.mat", "annotations/mpii_gt_val.mat")


def box_from_center_scale(center: Sequence[float], scale: float) -> np.ndarray:
    """HRNet's crop box (before its 1.25 enlargement), ``center`` 0-based: the square of side
    ``200 * scale`` around ``center`` moved down by ``15 * scale``."""
    cx, cy = float(center[0]), float(center[1]) + CENTER_SHIFT * scale
    half = PIXEL_STD * scale / 2
    return np.array([cx - half, cy - half, cx + half, cy + half], dtype=np.float32)


def center_scale_from_box(box: Sequence[float]) -> tuple[np.ndarray, float]:
    """Inverse of :func:`box_from_center_scale` (0-based centre); a non-square box gives the
    square on its longer side."""
    x1, y1, x2, y2 = (float(v) for v in box)
    scale = max(x2 - x1, y2 - y1) / PIXEL_STD
    return np.array([(x1 + x2) / 2, (y1 + y2) / 2 - CENTER_SHIFT * scale]), scale


def read_gt_valid(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Load ``gt_valid.mat`` → ``joints`` (N, 16, 2) and ``head_boxes`` (N, 4) ``x1, y1, x2, y2``,
    both 0-based, and ``missing`` (N, 16) bool."""
    try:
        mat = scipy.io.loadmat(path)
    except FileNotFoundError:
        raise FileNotFoundError(f"MPII evaluation file not found: {path}") from None
    except Exception as error:  # scipy raises ValueError, TypeError, MatReadError ... on damaged files
        raise ValueError(f"cannot read MPII evaluation file {path}: {error}") from error
    missing_keys = {"jnt_missing", "pos_gt_src", "headboxes_src"} - set(mat)
    if missing_keys:
        raise ValueError(f"{path}: missing {sorted(missing_keys)}")
    joints, missing, boxes = mat["pos_gt_src"], mat["jnt_missing"], mat["headboxes_src"]
    for key, value in (("pos_gt_src", joints), ("jnt_missing", missing), ("headboxes_src", boxes)):
        if np.asarray(value).dtype.kind not in "fiub":
            raise ValueError(f"{path}: '{key}' must be numeric, got {np.asarray(value).dtype}")
    count = missing.shape[-1] if missing.ndim == 2 else -1
    if missing.shape != (MPII_NUM_JOINTS, count) or joints.shape != (MPII_NUM_JOINTS, 2, count) \
            or boxes.shape != (2, 2, count):
        raise ValueError(f"{path}: expected jnt_missing (16, N), pos_gt_src (16, 2, N), headboxes_src (2, 2, N); "
                         f"got {missing.shape}, {joints.shape}, {boxes.shape}")
    if "dataset_joints" in mat:
        names = [matlab_string(name) for name in np.ravel(mat["dataset_joints"])]
        wrong = [i for i, name in enumerate(names)
                 if name in MPII_CHECKED_MAT_NAMES and name != MPII_MAT_JOINT_NAMES[i]]
        if len(names) != MPII_NUM_JOINTS or wrong:
            raise ValueError(f"{path}: dataset_joints {names} is not MPII's joint order {list(MPII_MAT_JOINT_NAMES)}")
    if not np.isin(missing, (0, 1)).all():
        raise ValueError(f"{path}: 'jnt_missing' must hold 0 or 1 (1 = joint not annotated)")
    joints = joints.transpose(2, 0, 1).astype(np.float64)
    missing = missing.T.astype(bool)
    boxes = boxes.transpose(2, 0, 1).reshape(count, 4).astype(np.float64)
    joints = np.where(missing[:, :, None], 1.0, joints)  # unlabelled joints are never read: 0 after the shift
    for person in range(count):
        require_finite(boxes[person], f"{path}: 'headboxes_src' person {person + 1}", "head box",
                       names=("x1", "y1", "x2", "y2"))
        require_finite(joints[person], f"{path}: 'pos_gt_src' person {person + 1}",
                       "joints not flagged in jnt_missing")  # entry [joint, axis]
    return {"joints": joints - 1, "missing": missing, "head_boxes": boxes - 1}


class MPIIDataset(LandmarkDataset):
    """MPII people from the HRNet/mmpose JSON files; keypoints 0-based image pixels.

    Args:
        root: folder with ``annot/`` (or ``annotations/``) and ``images/``.
        split: ``"train"``, ``"valid"`` or ``"test"`` (no joints; cannot be evaluated here).

    ``meta`` per item: ``image`` (file name), ``center`` (0-based, as in the file minus 1),
    ``scale``; for ``valid`` also ``head_box`` (x1, y1, x2, y2, 0-based) and ``head_size``
    (0.6 × its diagonal) from ``gt_valid.mat``.
    """

    name = "mpii"
    num_keypoints = MPII_NUM_JOINTS
    flip_pairs = MPII_FLIP_PAIRS

    def __init__(self, root: str | os.PathLike, split: str = "train"):
        if split not in LAYOUTS:
            raise ValueError(f"split: expected one of {sorted(LAYOUTS)}, got {split!r}")
        self.root = Path(root)
        self.split = split
        self.annotation_file = self._first_existing(LAYOUTS[split])
        self.image_dir = self.root / "images"
        records = read_json(self.annotation_file, "MPII annotation file")
        if not isinstance(records, list):
            raise ValueError(f"{self.annotation_file}: expected a JSON list of people, got {type(records).__name__}")
        self._people = [self._parse(index, record) for index, record in enumerate(records)]
        require_images((self.image_dir / person["image"], person["where"]) for person in self._people)
        self.ground_truth = None
        if split == "valid":
            self.gt_file = self._first_existing(GT_FILES)
            self.ground_truth = read_gt_valid(self.gt_file)
            if len(self.ground_truth["missing"]) != len(self._people):
                raise ValueError(f"{self.gt_file} has {len(self.ground_truth['missing'])} people but "
                                 f"{self.annotation_file} has {len(self._people)}; they must match one to one")

    def _first_existing(self, candidates: Sequence[str]) -> Path:
        for candidate in candidates:
            if (self.root / candidate).is_file():
                return self.root / candidate
        raise FileNotFoundError(f"MPII {self.split}: none of {[str(self.root / c) for c in candidates]} exists")

    def _parse(self, index: int, record: dict) -> dict:
        where = f"{self.annotation_file}: record {index}"
        if not isinstance(record, dict):
            raise ValueError(f"{where}: expected an object, got {type(record).__name__}")
        required = {"image", "center", "scale"} | ({"joints", "joints_vis"} if self.split != "test" else set())
        missing = required - set(record)
        if missing:
            raise ValueError(f"{where} (image {record.get('image')}) lacks {sorted(missing)}")
        if not isinstance(record["image"], str) or not record["image"]:
            raise ValueError(f"{where}: 'image' must be a file name, got {record['image']!r}")
        where = f"{where} (image {record['image']})"
        center = number_array(record["center"], (2,), where, "center", "[x, y], two numbers")
        require_finite(center, where, "center", names=("x", "y"))
        scale = record["scale"]
        if not is_number(scale):
            raise ValueError(f"{where}: 'scale' must be a number (person size / 200 px), got {scale!r}")
        scale = float(scale)
        if not (np.isfinite(scale) and scale > 0):
            raise ValueError(f"{where}: scale must be positive and finite, got {scale}")
        joints = np.zeros((MPII_NUM_JOINTS, 2))
        visible = np.zeros(MPII_NUM_JOINTS, dtype=bool)
        if "joints" in record:
            joints = number_array(record["joints"], (MPII_NUM_JOINTS, 2), where, "joints",
                                  f"{MPII_NUM_JOINTS} joints [x, y] of numbers")
            flags = number_array(record["joints_vis"], (MPII_NUM_JOINTS,), where, "joints_vis",
                                 f"{MPII_NUM_JOINTS} joints_vis flags 0 or 1")
            if not ((flags == 0) | (flags == 1)).all():
                raise ValueError(f"{where}: 'joints_vis' must hold 0 or 1, got {record['joints_vis']}")
            visible = flags > 0
            if not np.isfinite(joints[visible]).all():
                for joint in np.flatnonzero(visible):
                    require_finite(joints[joint], where, f"joints[{joint}] ({MPII_JOINT_NAMES[joint]}, joints_vis 1)",
                                   names=("x", "y"))
            joints = np.where(visible[:, None], joints - 1, 0.0)
        return {"image": record["image"], "center": center - 1, "scale": scale,
                "joints": joints, "visible": visible, "where": where}

    def __len__(self) -> int:
        return len(self._people)

    def __getitem__(self, index: int) -> Sample:
        person = self._people[index]
        keypoints = person["joints"].astype(np.float32)
        box = box_from_center_scale(person["center"], person["scale"])
        meta = {"image": person["image"], "center": person["center"].copy(), "scale": person["scale"]}
        if self.ground_truth is not None:
            head_box = self.ground_truth["head_boxes"][index]
            meta["head_box"] = head_box.astype(np.float32)
            meta["head_size"] = float(mpii_head_size(head_box[None])[0])
        return Sample(load_image=image_loader(self.image_dir / person["image"]), keypoints=keypoints,
                      visible=person["visible"].copy(), box=box,
                      box_p1=landmark_box(keypoints, person["visible"]) if person["visible"].any() else box.copy(),
                      meta=meta)

    def evaluate(self, predictions: np.ndarray, indices: Sequence[int] | None = None) -> dict[str, float]:
        """PCKh (percent) of predictions ``(N, 16, 2)`` (0-based image pixels) against
        ``gt_valid.mat``: Head, Shoulder, Elbow, Wrist, Hip, Knee, Ankle, Mean (pelvis and
        thorax excluded), Mean@0.1 (threshold 0.10)."""
        if self.ground_truth is None:
            raise ValueError(f"MPII {self.split} split has no evaluation ground truth; only 'valid' can be evaluated "
                             "here (the test set is scored by the MPII server)")
        indices = np.arange(len(self)) if indices is None else np.asarray(indices, dtype=int)
        predictions = np.asarray(predictions, dtype=np.float64)
        if predictions.shape != (len(indices), MPII_NUM_JOINTS, 2):
            raise ValueError(f"predictions: expected shape ({len(indices)}, {MPII_NUM_JOINTS}, 2), "
                             f"got {predictions.shape}")
        truth = self.ground_truth
        return pckh(predictions, truth["joints"][indices], ~truth["missing"][indices],
                    mpii_head_size(truth["head_boxes"][indices]))
