"""COCO person keypoints (17 joints): ``person_keypoints_{train,val}2017.json`` + images.

Layout under ``root`` (datasets.md §6.1)::

    annotations/person_keypoints_{train,val}2017.json
    {train,val}2017/000000000009.jpg          (mmpose layout; HRNet's images/{train,val}2017/ also found)
    person_detection_results/COCO_val2017_detections_AP_H_56_person.json   (optional, pass as detections=)

Items are person instances (HRNet / mmpose top-down convention):

- with ground-truth boxes (``detections=None``): one item per annotation that is not a
  crowd, has ``num_keypoints > 0`` and a box of positive size. COCO keypoints are 0-based
  pixels already; ``visible`` = labelled (``v > 0``: ``v = 1`` occluded and ``v = 2`` visible
  are both training targets); the raw flags are kept in ``meta["keypoint_flags"]``.
- with person detections (a COCO results json, or the list it holds): one item per person
  detection, keypoints unknown (zeros, nothing visible); ``meta["detection_score"]`` holds
  its score.

``box`` is the annotation / detection ``bbox`` ``(x, y, w, h)`` as ``(x, y, x + w, y + h)``.

Validation when the dataset is opened (errors name the file and ``images[i]``,
``annotations[i] (id …)`` or detection ``entry i``): the ``images``, ``annotations`` and
``categories`` lists exist, ``categories`` holds the person category (id 1); every image has an int ``id`` (unique), a ``file_name`` string and
positive ``width``/``height``; every annotation has the fields pycocotools' ``COCOeval`` reads
(``id`` unique, ``image_id`` of a listed image, ``category_id``, ``iscrowd`` 0/1,
``num_keypoints``, ``area``, ``bbox`` of 4 finite numbers with ``w, h >= 0``, ``keypoints`` of
51 numbers with ``v`` in {0, 1, 2} and finite ``x, y`` where ``v > 0``), crowd annotations
included, so evaluation cannot fail later on a missing key; every detection has an int
``image_id`` of a listed image, a ``bbox`` of 4 finite numbers and a finite ``score``; and the
image file of every item exists (a ``stat``, no decoding).
"""
from __future__ import annotations

import itertools
import json
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from h3r.data.base import LandmarkDataset, Sample, landmark_box
from h3r.data.checks import is_number, number_array, read_text, require_finite, require_images
from h3r.data.images import image_loader
from h3r.metrics import coco_keypoint_ap

COCO_KEYPOINT_NAMES = (
    "nose", "left_eye", "right_eye", "left_ear", "right_ear", "left_shoulder", "right_shoulder",
    "left_elbow", "right_elbow", "left_wrist", "right_wrist", "left_hip", "right_hip",
    "left_knee", "right_knee", "left_ankle", "right_ankle",
)
COCO_NUM_KEYPOINTS = 17
COCO_FLIP_PAIRS = ((1, 2), (3, 4), (5, 6), (7, 8), (9, 10), (11, 12), (13, 14), (15, 16))
COCO_SKELETON = (  # 1-based, as in the category record of person_keypoints_*.json
    (16, 14), (14, 12), (17, 15), (15, 13), (12, 13), (6, 12), (7, 13), (6, 7), (6, 8), (7, 9),
    (8, 10), (9, 11), (2, 3), (1, 2), (1, 3), (2, 4), (3, 5), (4, 6), (5, 7),
)
COCO_OKS_SIGMAS = np.array(
    [0.26, 0.25, 0.25, 0.35, 0.35, 0.79, 0.79, 0.72, 0.72, 0.62, 0.62, 1.07, 1.07, 0.87, 0.87, 0.89, 0.89]
) / 10.0
PERSON_CATEGORY_ID = 1
# Fields of an annotation that pycocotools reads (COCO.createIndex, COCOeval._prepare / computeOks / evaluateImg).
COCOEVAL_ANNOTATION_FIELDS = ("id", "image_id", "category_id", "iscrowd", "num_keypoints", "area", "bbox", "keypoints")

# Top-down rescoring and duplicate removal of HRNet / mmpose (datasets.md §6.1).
KEYPOINT_SCORE_THRESHOLD = 0.2  # keypoint scores above this are averaged into the instance score
OKS_NMS_THRESHOLD = 0.9  # detections overlapping a better one by OKS > this are dropped
NMS_AREA_PADDING = 1.25  # OKS area of a prediction = (1.25 max(w, h))², the square crop of its box (HRNet: the crop's area)


def read_json(path: str | os.PathLike, what: str) -> Any:
    """Parse a JSON file; a missing, empty or truncated file raises an error naming it."""
    text = read_text(path, what)
    if not text.strip():
        raise ValueError(f"{what} {path} is empty; expected JSON")
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        raise ValueError(f"{what} {path} is not valid JSON (line {error.lineno}, column {error.colno}: "
                         f"{error.msg}); truncated?") from None


def _is_int(value: Any) -> bool:
    """A JSON integer (``int``, or a float with an integral value; not ``bool``)."""
    if isinstance(value, bool) or not is_number(value):
        return False
    return float(value).is_integer()


def xywh_to_xyxy(box: Sequence[float]) -> np.ndarray:
    x, y, w, h = (float(v) for v in box)
    return np.array([x, y, x + w, y + h], dtype=np.float32)


def mean_confident_score(keypoint_scores: np.ndarray) -> np.ndarray:
    """Per instance ``(N,)``: the mean of its keypoint scores ``(N, 17)`` above 0.2, or 0 when
    none is (the keypoint part of HRNet's / mmpose's instance rescoring)."""
    confident = keypoint_scores > KEYPOINT_SCORE_THRESHOLD  # False for NaN: a NaN score counts as none
    return np.where(confident, keypoint_scores, 0.0).sum(axis=1) / np.maximum(confident.sum(axis=1), 1)


def oks_nms(keypoints: np.ndarray, scores: np.ndarray, areas: np.ndarray,
            threshold: float = OKS_NMS_THRESHOLD) -> list[int]:
    """Greedy non-maximum suppression by object keypoint similarity (one image's predictions).

    ``keypoints`` ``(N, 17, 2)`` pixels, ``scores`` ``(N,)``, ``areas`` ``(N,)`` pixels².
    Returns the kept indices, best first. OKS as COCOeval computes it, all keypoints counted; a
    keypoint that is not finite (in either prediction) adds 0, as if far away (as
    :func:`h3r.metrics.coco_keypoint_ap` scores it), so it suppresses nothing.
    """
    order = list(np.argsort(-np.asarray(scores), kind="stable"))
    variances = (2 * COCO_OKS_SIGMAS) ** 2
    kept = []
    while order:
        best, rest = order[0], np.array(order[1:], dtype=int)
        kept.append(int(best))
        if rest.size == 0:
            break
        squared = ((keypoints[rest] - keypoints[best]) ** 2).sum(axis=-1)
        area = (areas[best] + areas[rest]) / 2 + np.spacing(1)
        with np.errstate(invalid="ignore"):
            terms = np.exp(-squared / variances / area[:, None] / 2)
        oks = np.where(np.isfinite(terms), terms, 0.0).mean(axis=1)
        order = list(rest[oks <= threshold])
    return kept


class COCODataset(LandmarkDataset):
    """COCO 2017 person keypoints, top-down: one item per person instance or detection.

    Args:
        root: folder holding ``annotations/`` and ``{train,val}2017/`` (or ``images/{split}2017/``).
        split: ``"train"`` or ``"val"``.
        detections: person detections for top-down evaluation: a COCO results json path or
            its list of ``{"image_id", "category_id", "bbox": [x, y, w, h], "score"}``; only
            category 1 with ``score >= detection_threshold`` is used. ``None``: ground-truth boxes.
        detection_threshold: minimum detection score (HRNet's ``IMAGE_THRE``, 0.0).
    """

    name = "coco"
    num_keypoints = COCO_NUM_KEYPOINTS
    flip_pairs = COCO_FLIP_PAIRS

    def __init__(self, root: str | os.PathLike, split: str = "train",
                 detections: str | os.PathLike | list[dict] | None = None, detection_threshold: float = 0.0):
        if split not in ("train", "val"):
            raise ValueError(f"split: expected 'train' or 'val', got {split!r}")
        self.root = Path(root)
        self.split = split
        self.annotation_file = self.root / "annotations" / f"person_keypoints_{split}2017.json"
        self.ground_truth = read_json(self.annotation_file, "COCO annotation file")
        self.image_dir = self._find_image_dir()
        self.images = self._index_images()
        self._check_annotations()
        if detections is None:
            self._items = self._ground_truth_items()
        else:
            self._items = self._detection_items(detections, detection_threshold)
        used = dict.fromkeys(item["image_id"] for item in self._items)
        require_images((self.image_dir / self.images[image_id]["file_name"],
                        f"{self.annotation_file}: image id {image_id}") for image_id in used)

    def _find_image_dir(self) -> Path:
        for candidate in (self.root / f"{self.split}2017", self.root / "images" / f"{self.split}2017"):
            if candidate.is_dir():
                return candidate
        return self.root / f"{self.split}2017"  # missing images then fail when the dataset is opened, naming the path

    def _index_images(self) -> dict[int, dict]:
        if not isinstance(self.ground_truth, dict):
            raise ValueError(f"{self.annotation_file}: expected a JSON object with 'images' and 'annotations'")
        for key in ("images", "annotations", "categories"):
            if not isinstance(self.ground_truth.get(key), list):
                raise ValueError(f"{self.annotation_file}: missing the '{key}' list"
                                 + (" needed by COCOeval" if key == "categories" else ""))
        images = {}
        for index, image in enumerate(self.ground_truth["images"]):
            where = f"{self.annotation_file}: images[{index}]"
            if not isinstance(image, dict):
                raise ValueError(f"{where}: expected an object, got {type(image).__name__}")
            missing = {"id", "file_name", "width", "height"} - set(image)
            if missing:
                raise ValueError(f"{where} lacks {sorted(missing)}")
            if not _is_int(image["id"]):
                raise ValueError(f"{where}: id must be an integer, got {image['id']!r}")
            where = f"{where} (id {image['id']})"
            if image["id"] in images:
                raise ValueError(f"{where}: duplicate image id")
            if not isinstance(image["file_name"], str) or not image["file_name"]:
                raise ValueError(f"{where}: file_name must be a file name, got {image['file_name']!r}")
            for key in ("width", "height"):
                if not is_number(image[key]) or not image[key] > 0 or not np.isfinite(image[key]):
                    raise ValueError(f"{where}: {key} must be a positive number, got {image[key]!r}")
            images[image["id"]] = image
        categories = set()
        for index, category in enumerate(self.ground_truth["categories"]):
            if not isinstance(category, dict) or not _is_int(category.get("id")):
                raise ValueError(f"{self.annotation_file}: categories[{index}] must be an object with an integer "
                                 f"'id' (COCOeval indexes categories by id), got {category!r}"[:300])
            categories.add(category["id"])
        if PERSON_CATEGORY_ID not in categories:
            raise ValueError(f"{self.annotation_file}: 'categories' has no person category (id {PERSON_CATEGORY_ID}); "
                             f"found ids {sorted(categories)}")
        return images

    def _check_annotations(self) -> None:
        """Every annotation, crowd or not, has what pycocotools reads (see the module docstring).

        A vectorised pass accepts a well-formed file quickly (COCO train has 150k annotations);
        if it finds anything wrong, the per-record checks run to name the first bad record.
        Leaves ``self._keypoint_table`` ``(N, 17, 3)`` for :meth:`_ground_truth_items`.
        """
        annotations = self.ground_truth["annotations"]
        table = self._fast_annotation_table(annotations)
        if table is None:
            self._check_annotation_records()  # raises, naming the record, for every fault the fast pass rejects
            table = np.array([annotation["keypoints"] for annotation in annotations], dtype=np.float64)
            table = table.reshape(len(annotations), COCO_NUM_KEYPOINTS, 3)
        self._keypoint_table = table

    def _fast_annotation_table(self, annotations: list) -> np.ndarray | None:
        """The keypoints ``(N, 17, 3)`` if every annotation passes every check, else ``None``."""
        count = len(annotations)
        if not all(type(annotation) is dict for annotation in annotations):
            return None
        if not all(key in annotation for key in COCOEVAL_ANNOTATION_FIELDS for annotation in annotations):
            return None
        columns = {key: [annotation[key] for annotation in annotations]
                   for key in ("id", "image_id", "category_id", "num_keypoints", "iscrowd", "area")}
        for key in ("id", "image_id", "category_id", "num_keypoints", "iscrowd"):
            if not set(map(type, columns[key])) <= {int}:
                return None
        if len(set(columns["id"])) != count or not set(columns["image_id"]) <= self.images.keys():
            return None
        if not set(columns["iscrowd"]) <= {0, 1} or min(columns["num_keypoints"], default=0) < 0:
            return None
        if not set(map(type, columns["area"])) <= {int, float}:
            return None
        areas = np.array(columns["area"], dtype=np.float64)
        if not (np.isfinite(areas).all() and (areas >= 0).all()):
            return None
        boxes = [annotation["bbox"] for annotation in annotations]
        keypoints = [annotation["keypoints"] for annotation in annotations]
        for rows, width in ((boxes, 4), (keypoints, 3 * COCO_NUM_KEYPOINTS)):
            if not all(type(row) is list and len(row) == width for row in rows):
                return None
            if not set(map(type, itertools.chain.from_iterable(rows))) <= {int, float}:
                return None
        boxes = np.array(boxes, dtype=np.float64).reshape(count, 4)
        if not (np.isfinite(boxes).all() and (boxes[:, 2:] >= 0).all()):
            return None
        table = np.array(keypoints, dtype=np.float64).reshape(count, COCO_NUM_KEYPOINTS, 3)
        flags = table[:, :, 2]
        if not ((flags == 0) | (flags == 1) | (flags == 2)).all():
            return None
        if not np.isfinite(table[:, :, :2][flags > 0]).all():
            return None
        return table

    def _check_annotation_records(self) -> None:
        """The per-record checks: slow, but they name the first bad annotation and field."""
        seen = set()
        for index, annotation in enumerate(self.ground_truth["annotations"]):
            where = f"{self.annotation_file}: annotations[{index}]"
            if not isinstance(annotation, dict):
                raise ValueError(f"{where}: expected an object, got {type(annotation).__name__}")
            where = f"{where} (id {annotation.get('id')})"
            missing = [key for key in COCOEVAL_ANNOTATION_FIELDS if key not in annotation]
            if missing:
                raise ValueError(f"{where} lacks {missing}; pycocotools' COCOeval reads "
                                 f"{', '.join(COCOEVAL_ANNOTATION_FIELDS)} of every annotation")
            for key in ("id", "image_id", "category_id", "num_keypoints"):
                if not _is_int(annotation[key]):
                    raise ValueError(f"{where}: {key} must be an integer, got {annotation[key]!r}")
            if annotation["id"] in seen:
                raise ValueError(f"{where}: duplicate annotation id")
            seen.add(annotation["id"])
            if annotation["image_id"] not in self.images:
                raise ValueError(f"{where}: image_id {annotation['image_id']} is not in 'images'")
            if annotation["iscrowd"] not in (0, 1) or not _is_int(annotation["iscrowd"]):
                raise ValueError(f"{where}: iscrowd must be 0 or 1, got {annotation['iscrowd']!r}")
            if annotation["num_keypoints"] < 0:
                raise ValueError(f"{where}: num_keypoints must be >= 0, got {annotation['num_keypoints']}")
            if not is_number(annotation["area"]) or not np.isfinite(annotation["area"]) or annotation["area"] < 0:
                raise ValueError(f"{where}: area must be a finite number >= 0, got {annotation['area']!r}")
            bbox = number_array(annotation["bbox"], (4,), where, "bbox", "[x, y, w, h], four numbers")
            require_finite(bbox, where, "bbox", names=("x", "y", "w", "h"))
            if bbox[2] < 0 or bbox[3] < 0:
                raise ValueError(f"{where}: bbox [x, y, w, h] = {annotation['bbox']} has a negative size")
            values = number_array(annotation["keypoints"], (3 * COCO_NUM_KEYPOINTS,), where, "keypoints",
                                  f"{3 * COCO_NUM_KEYPOINTS} keypoint values (x, y, v) * 17")
            triplets = values.reshape(COCO_NUM_KEYPOINTS, 3)
            if not np.isin(triplets[:, 2], (0, 1, 2)).all():
                raise ValueError(f"{where}: keypoint flags v must be 0, 1 or 2, got {triplets[:, 2].tolist()}")
            labelled = triplets[:, 2] > 0
            if not np.isfinite(triplets[labelled, :2]).all():
                for joint in np.flatnonzero(labelled):
                    require_finite(triplets[joint, :2], where,
                                   f"keypoint {joint} ({COCO_KEYPOINT_NAMES[joint]}, v = {int(triplets[joint, 2])})",
                                   names=("x", "y"))

    def _ground_truth_items(self) -> list[dict]:
        items = []
        for annotation, triplets in zip(self.ground_truth["annotations"], self._keypoint_table):  # validated
            if annotation["category_id"] != PERSON_CATEGORY_ID or annotation["iscrowd"]:
                continue
            flags = triplets[:, 2].astype(np.int64)
            box = xywh_to_xyxy(annotation["bbox"])
            if not (flags > 0).any() or box[2] <= box[0] or box[3] <= box[1]:
                continue
            items.append({"image_id": annotation["image_id"], "box": box,
                          "keypoints": np.where(flags[:, None] > 0, triplets[:, :2], 0.0),
                          "flags": flags, "area": float(annotation["area"]),
                          "ann_id": annotation["id"], "detection_score": None})
        return items

    def _detection_items(self, detections, threshold: float) -> list[dict]:
        source = "person detections"
        if not isinstance(detections, list):
            source = f"person detection file {detections}"
            detections = read_json(detections, "person detection file")
        if not isinstance(detections, list):
            raise ValueError(f"{source}: expected a JSON list of COCO detection results")
        items = []
        for index, detection in enumerate(detections):
            where = f"{source}: entry {index}"
            if not isinstance(detection, dict):
                raise ValueError(f"{where}: expected an object, got {type(detection).__name__}")
            missing = {"image_id", "bbox", "score"} - set(detection)
            if missing:
                raise ValueError(f"{where} lacks {sorted(missing)}")
            if not _is_int(detection["image_id"]):
                raise ValueError(f"{where}: image_id must be an integer, got {detection['image_id']!r}")
            if "category_id" in detection and not _is_int(detection["category_id"]):
                raise ValueError(f"{where}: category_id must be an integer, got {detection['category_id']!r}")
            if not is_number(detection["score"]) or not np.isfinite(detection["score"]):
                raise ValueError(f"{where}: score must be a finite number, got {detection['score']!r}")
            bbox = number_array(detection["bbox"], (4,), where, "bbox", "[x, y, w, h], four numbers")
            require_finite(bbox, where, "bbox", names=("x", "y", "w", "h"))
            if detection.get("category_id", PERSON_CATEGORY_ID) != PERSON_CATEGORY_ID or detection["score"] < threshold:
                continue
            if detection["image_id"] not in self.images:
                raise ValueError(f"{source}: entry {index} has image_id {detection['image_id']}, "
                                 f"not an image of {self.annotation_file}")
            box = xywh_to_xyxy(bbox)
            if box[2] <= box[0] or box[3] <= box[1]:
                continue
            items.append({"image_id": detection["image_id"], "box": box,
                          "keypoints": np.zeros((COCO_NUM_KEYPOINTS, 2)),
                          "flags": np.zeros(COCO_NUM_KEYPOINTS, dtype=np.int64), "area": None, "ann_id": None,
                          "detection_score": float(detection["score"])})
        return items

    def __len__(self) -> int:
        return len(self._items)

    def __getitem__(self, index: int) -> Sample:
        item = self._items[index]
        image = self.images[item["image_id"]]
        keypoints = item["keypoints"].astype(np.float32)
        visible = item["flags"] > 0
        meta = {"image_id": item["image_id"], "ann_id": item["ann_id"], "area": item["area"],
                "keypoint_flags": item["flags"].copy(), "detection_score": item["detection_score"],
                "file_name": image["file_name"], "image_size": (int(image["width"]), int(image["height"]))}
        return Sample(load_image=image_loader(self.image_dir / image["file_name"]), keypoints=keypoints,
                      visible=visible, box=item["box"].copy(),
                      box_p1=landmark_box(keypoints, visible) if visible.any() else item["box"].copy(), meta=meta)

    def results(self, predictions: np.ndarray, indices: Sequence[int] | None = None,
                keypoint_scores: np.ndarray | None = None) -> list[dict]:
        """COCO keypoint results for predictions ``(N, 17, 2)`` (image pixels) of the items ``indices``.

        Scoring as HRNet / mmpose top-down: instance score = box score × mean of the
        keypoint scores above 0.2 (0 when none is), the box score being the detection score
        (1 for ground-truth boxes); ``keypoint_scores`` ``(N, 17)`` default to 1. Duplicates are
        then removed per image by OKS-NMS at 0.9, with ground-truth boxes too (as HRNet's and
        mmpose's evaluation: two people whose predictions nearly coincide keep one), the area of
        a prediction being that of its square crop, ``(1.25 max(w, h))²``.
        """
        indices = np.arange(len(self)) if indices is None else np.asarray(indices, dtype=int)
        predictions = np.asarray(predictions, dtype=np.float64)
        if predictions.shape != (len(indices), COCO_NUM_KEYPOINTS, 2):
            raise ValueError(f"predictions: expected shape ({len(indices)}, {COCO_NUM_KEYPOINTS}, 2), "
                             f"got {predictions.shape}")
        if keypoint_scores is None:
            keypoint_scores = np.ones(predictions.shape[:2])
        keypoint_scores = np.asarray(keypoint_scores, dtype=np.float64)
        if keypoint_scores.shape != predictions.shape[:2]:
            raise ValueError(f"keypoint_scores: expected shape {predictions.shape[:2]}, got {keypoint_scores.shape}")
        mean_confident = mean_confident_score(keypoint_scores)
        by_image: dict[int, list[int]] = {}
        for row, index in enumerate(indices):
            by_image.setdefault(self._items[index]["image_id"], []).append(row)
        results = []
        for image_id, rows in by_image.items():
            rows = np.array(rows)
            items = [self._items[indices[row]] for row in rows]
            box_scores = np.array([1.0 if item["detection_score"] is None else item["detection_score"]
                                   for item in items])
            scores = box_scores * mean_confident[rows]
            kept = range(len(rows))
            if len(rows) > 1:
                sizes = np.array([item["box"][2:] - item["box"][:2] for item in items], dtype=np.float64)
                areas = (NMS_AREA_PADDING * sizes.max(axis=1)) ** 2
                kept = oks_nms(predictions[rows], scores, areas)
            for position in kept:
                row = rows[position]
                triplets = np.concatenate([predictions[row], keypoint_scores[row][:, None]], axis=1)
                results.append({"image_id": image_id, "category_id": PERSON_CATEGORY_ID,
                                "keypoints": [float(v) for v in triplets.ravel()], "score": float(scores[position])})
        return results

    def evaluate(self, predictions: np.ndarray, indices: Sequence[int] | None = None,
                 keypoint_scores: np.ndarray | None = None) -> dict[str, float]:
        """COCO keypoint AP/AR (``h3r.metrics.coco_keypoint_ap``) of predictions ``(N, 17, 2)``.

        With ``indices`` the ground truth is restricted to the images those items come from.
        See :meth:`results` for the scoring.
        """
        results = self.results(predictions, indices, keypoint_scores)
        ground_truth = self.ground_truth
        if indices is not None:
            image_ids = {self._items[index]["image_id"] for index in indices}
            ground_truth = {**ground_truth,
                            "images": [image for image in ground_truth["images"] if image["id"] in image_ids],
                            "annotations": [a for a in ground_truth["annotations"] if a["image_id"] in image_ids]}
        if "categories" not in ground_truth:
            raise ValueError(f"{self.annotation_file}: missing the 'categories' list needed by COCOeval")
        return coco_keypoint_ap(ground_truth, results)
