"""Write samples in the real pose formats (MPII HRNet JSON + ``gt_valid.mat``, COCO person
keypoints JSON + person detections), so readers can be tested end to end and synthetic
sets exported. Inputs are :class:`~h3r.data.base.Sample` objects (0-based image pixels).
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Sequence

import numpy as np
import scipy.io

from h3r.data.base import Sample
from h3r.data.coco import COCO_KEYPOINT_NAMES, COCO_NUM_KEYPOINTS, COCO_SKELETON, PERSON_CATEGORY_ID
from h3r.data.images import write_image
from h3r.data.mpii import MPII_MAT_JOINT_NAMES, MPII_NUM_JOINTS, center_scale_from_box


def _write_json(path: Path, content) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(content), encoding="utf-8")
    return path


def _check_keypoints(sample: Sample, count: int, what: str) -> None:
    if np.shape(sample.keypoints) != (count, 2) or np.shape(sample.visible) != (count,):
        raise ValueError(f"{what}: expected {count} keypoints (x, y) and {count} visibility flags, "
                         f"got {np.shape(sample.keypoints)} and {np.shape(sample.visible)}")


def write_mpii(root: str | os.PathLike, split: str, samples: Sequence[Sample]) -> Path:
    """Write ``root/annot/{split}.json`` (HRNet layout) and the images under ``root/images/``;
    for ``split == "valid"`` also ``root/annot/gt_valid.mat``. Returns the JSON path.

    Per sample: joints are written 1-based, unlabelled (not visible) joints as ``[-1, -1]``
    with ``joints_vis`` 0; ``center``/``scale`` come from ``box`` (inverse of the reader's
    box); the image name is ``meta["image"]`` (default ``{index:09d}.jpg``; samples sharing a
    name share one image, written once). ``valid`` needs ``meta["head_box"]`` (x1, y1, x2, y2,
    0-based). ``test.json`` carries no joints, as HRNet's.
    """
    if split not in ("train", "valid", "test"):
        raise ValueError(f"split: expected 'train', 'valid' or 'test', got {split!r}")
    root = Path(root)
    records, written, head_boxes = [], set(), []
    for index, sample in enumerate(samples):
        _check_keypoints(sample, MPII_NUM_JOINTS, f"samples[{index}]")
        name = sample.meta.get("image", f"{index:09d}.jpg")
        if name not in written:
            write_image(root / "images" / name, sample.image())
            written.add(name)
        center, scale = center_scale_from_box(sample.box)
        record = {"image": name, "center": [float(v) for v in center + 1], "scale": float(scale)}
        if split != "test":
            visible = np.asarray(sample.visible, dtype=bool)
            joints = np.where(visible[:, None], np.asarray(sample.keypoints, dtype=np.float64) + 1, -1.0)
            record["joints"] = joints.tolist()
            record["joints_vis"] = visible.astype(int).tolist()
        records.append(record)
        if split == "valid":
            if "head_box" not in sample.meta:
                raise ValueError(f"samples[{index}]: the valid split needs meta['head_box'] for gt_valid.mat")
            head_boxes.append(np.asarray(sample.meta["head_box"], dtype=np.float64))
    path = _write_json(root / "annot" / f"{split}.json", records)
    if split == "valid":
        joints = np.array([record["joints"] for record in records], dtype=np.float64)  # (N, 16, 2), 1-based
        missing = np.array([[v == 0 for v in record["joints_vis"]] for record in records], dtype=np.uint8)
        names = np.empty((1, MPII_NUM_JOINTS), dtype=object)
        names[0, :] = list(MPII_MAT_JOINT_NAMES)
        scipy.io.savemat(root / "annot" / "gt_valid.mat", {
            "dataset_joints": names,
            "jnt_missing": missing.T,
            "pos_gt_src": joints.transpose(1, 2, 0),
            "headboxes_src": (np.array(head_boxes).reshape(-1, 2, 2) + 1).transpose(1, 2, 0),
        })
    return path


def write_coco(root: str | os.PathLike, split: str, samples: Sequence[Sample]) -> Path:
    """Write ``root/annotations/person_keypoints_{split}2017.json`` and the images under
    ``root/{split}2017/%012d.jpg``. Returns the JSON path.

    Per sample (one person annotation): ``meta["image_id"]`` groups people into images
    (default: one image per sample, ids 1, 2, ...), ``meta["ann_id"]`` (default running),
    ``meta["area"]`` (default box area), ``meta["iscrowd"]`` (default 0),
    ``meta["keypoint_flags"]`` COCO ``v`` (default 2 where visible, else 0; ``v = 0`` keypoints
    are written as ``0, 0, 0``). ``bbox`` = ``box`` as ``[x, y, w, h]``.
    """
    if split not in ("train", "val"):
        raise ValueError(f"split: expected 'train' or 'val', got {split!r}")
    root = Path(root)
    images, annotations = {}, []
    for index, sample in enumerate(samples):
        _check_keypoints(sample, COCO_NUM_KEYPOINTS, f"samples[{index}]")
        image_id = int(sample.meta.get("image_id", index + 1))
        if image_id not in images:
            pixels = sample.image()
            file_name = f"{image_id:012d}.jpg"
            write_image(root / f"{split}2017" / file_name, pixels)
            images[image_id] = {"id": image_id, "file_name": file_name, "height": int(pixels.shape[0]),
                                "width": int(pixels.shape[1])}
        flags = np.asarray(sample.meta.get("keypoint_flags", np.where(sample.visible, 2, 0)), dtype=int)
        keypoints = np.where(flags[:, None] > 0, np.asarray(sample.keypoints, dtype=np.float64), 0.0)
        x1, y1, x2, y2 = (float(v) for v in sample.box)
        annotations.append({
            "id": int(sample.meta.get("ann_id") or len(annotations) + 1), "image_id": image_id,
            "category_id": PERSON_CATEGORY_ID, "iscrowd": int(sample.meta.get("iscrowd", 0)),
            "area": float(sample.meta.get("area") or (x2 - x1) * (y2 - y1)), "bbox": [x1, y1, x2 - x1, y2 - y1],
            "num_keypoints": int((flags > 0).sum()), "segmentation": [],
            "keypoints": [float(v) for v in np.concatenate([keypoints, flags[:, None]], axis=1).ravel()],
        })
    category = {"supercategory": "person", "id": PERSON_CATEGORY_ID, "name": "person",
                "keypoints": list(COCO_KEYPOINT_NAMES), "skeleton": [list(pair) for pair in COCO_SKELETON]}
    content = {"info": {"description": "written by h3r.data.writers_pose"}, "licenses": [],
               "images": list(images.values()), "annotations": annotations, "categories": [category]}
    return _write_json(root / "annotations" / f"person_keypoints_{split}2017.json", content)


def write_coco_detections(path: str | os.PathLike, image_ids: Sequence[int], boxes: np.ndarray,
                          scores: Sequence[float]) -> Path:
    """Write a COCO person-detection results file: ``boxes`` ``(N, 4)`` as ``x1, y1, x2, y2``
    pixels become ``{"image_id", "category_id": 1, "bbox": [x, y, w, h], "score"}``."""
    boxes = np.asarray(boxes, dtype=np.float64)
    if boxes.ndim != 2 or boxes.shape[1] != 4 or len(image_ids) != len(boxes) or len(scores) != len(boxes):
        raise ValueError(f"expected N image_ids, (N, 4) boxes and N scores, got {len(image_ids)}, "
                         f"{boxes.shape} and {len(scores)}")
    detections = [{"image_id": int(image_id), "category_id": PERSON_CATEGORY_ID,
                   "bbox": [box[0], box[1], box[2] - box[0], box[3] - box[1]], "score": float(score)}
                  for image_id, box, score in zip(image_ids, boxes.tolist(), scores)]
    return _write_json(Path(path), detections)
