"""Landmark and pose metrics: NME / FR / AUC (faces), PCKh (MPII), OKS AP (COCO).

Conventions shared by every function:

- Coordinates are ``(x, y)`` pixels of the *original image*; predictions and ground truth
  must be in the same frame (both 0-based here; a shift applied to both cancels).
- Arrays are ``(N, K, 2)`` for N images (or person instances) of K landmarks.
- Face metrics return fractions (0.0346 means 3.46 %); PCKh returns percent, as MPII tables do.
  Callers format.
- A NaN or infinite prediction is a failure everywhere: its image's NME is NaN / inf (so is
  the mean), FR counts it above every threshold, AUC never reaches it, PCKh scores it
  incorrect and COCO AP never matches it. Landmarks that are not ``visible`` are ignored,
  whatever was predicted for them.

The face protocol follows HRNet-Facial / PIPNet / STAR (datasets.md §1.3): the NME of one
image is the mean over its landmarks of ``‖pred − gt‖₂ / d``; a benchmark reports the mean
over images. FR and AUC are computed from those per-image NMEs.
"""
from __future__ import annotations

import contextlib
import copy
import io
from typing import Sequence

import numpy as np
from scipy.integrate import simpson

# MPII joint order (datasets.md §5.1): 0 r_ankle, 1 r_knee, 2 r_hip, 3 l_hip, 4 l_knee, 5 l_ankle,
# 6 pelvis, 7 thorax, 8 upper_neck, 9 head_top, 10 r_wrist, 11 r_elbow, 12 r_shoulder,
# 13 l_shoulder, 14 l_elbow, 15 l_wrist.
MPII_NUM_JOINTS = 16
MPII_JOINT_GROUPS = {
    "Head": (9,),
    "Shoulder": (13, 12),
    "Elbow": (14, 11),
    "Wrist": (15, 10),
    "Hip": (3, 2),
    "Knee": (4, 1),
    "Ankle": (5, 0),
}
MPII_EXCLUDED_FROM_MEAN = (6, 7)  # pelvis and thorax, as in HRNet / mmpose
MPII_HEAD_SIZE_FACTOR = 0.6  # official SC_BIAS: head size = 0.6 × head-box diagonal

COCO_STAT_NAMES = ("AP", "AP50", "AP75", "APm", "APl", "AR", "AR50", "AR75", "ARm", "ARl")

AUC_STEP = 1e-4  # CED sampling step of PIPNet / STAR
FAR_AWAY = 1e7  # where a non-finite detected keypoint is moved for COCOeval: its OKS term is exactly 0


def _check_points(name: str, points: np.ndarray) -> np.ndarray:
    points = np.asarray(points, dtype=np.float64)
    if points.ndim != 3 or points.shape[-1] != 2:
        raise ValueError(f"{name}: expected an (N, K, 2) array of (x, y) points, got shape {points.shape}")
    return points


def _check_pair(pred: np.ndarray, gt: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    pred, gt = _check_points("pred", pred), _check_points("gt", gt)
    if pred.shape != gt.shape:
        raise ValueError(f"pred and gt must have the same shape, got {pred.shape} and {gt.shape}")
    return pred, gt


def _check_visible(visible: np.ndarray | None, shape: tuple[int, int]) -> np.ndarray:
    if visible is None:
        return np.ones(shape, dtype=bool)
    visible = np.asarray(visible)
    if visible.shape != shape:
        raise ValueError(f"visible: expected shape {shape} (N, K), got {visible.shape}")
    return visible.astype(bool)


def _check_per_image(name: str, values: np.ndarray | float, count: int) -> np.ndarray:
    values = np.asarray(values, dtype=np.float64)
    if values.ndim == 0:
        values = np.full(count, float(values))
    if values.shape != (count,):
        raise ValueError(f"{name}: expected one value per image, shape ({count},), got {values.shape}")
    bad = np.flatnonzero(~(values > 0) | ~np.isfinite(values))
    if bad.size:
        raise ValueError(f"{name}: must be positive and finite; image {bad[0]} has {values[bad[0]]}")
    return values


def _normalised_errors(pred, gt, normaliser, visible):
    """(errors (N, K) divided by each image's normaliser, visible (N, K))."""
    pred, gt = _check_pair(pred, gt)
    count = pred.shape[0]
    normaliser = _check_per_image("normaliser", normaliser, count)
    visible = _check_visible(visible, pred.shape[:2])
    empty = np.flatnonzero(~visible.any(axis=1))
    if empty.size:
        raise ValueError(f"visible: image {empty[0]} has no visible landmark to score")
    errors = np.linalg.norm(pred - gt, axis=-1) / normaliser[:, None]
    return errors, visible


def inter_ocular(gt: np.ndarray, left: int | Sequence[int], right: int | Sequence[int]) -> np.ndarray:
    """Per-image distance between landmark ``left`` and landmark ``right`` → ``(N,)``.

    ``left``/``right`` may also be sequences of indices: the distance is then between the
    centroids of the two groups (e.g. 300W inter-pupil = centroids of 36–41 and 42–47).
    """
    gt = _check_points("gt", gt)
    num_points = gt.shape[1]
    for name, index in (("left", left), ("right", right)):
        indices = np.atleast_1d(index)
        if indices.size == 0 or indices.min() < -num_points or indices.max() >= num_points:
            raise ValueError(f"{name}: landmark index {index} out of range for {num_points} landmarks")
    left_point = gt[:, np.atleast_1d(left)].mean(axis=1)
    right_point = gt[:, np.atleast_1d(right)].mean(axis=1)
    return np.linalg.norm(left_point - right_point, axis=-1)


def nme_per_image(pred: np.ndarray, gt: np.ndarray, normaliser: np.ndarray | float,
                  visible: np.ndarray | None = None) -> np.ndarray:
    """Per-image NME ``(N,)``: mean over the (visible) landmarks of ‖pred − gt‖ / normaliser.

    ``normaliser`` is one positive distance per image (or one for all), in pixels.
    """
    errors, visible = _normalised_errors(pred, gt, normaliser, visible)
    return np.where(visible, errors, 0.0).sum(axis=1) / visible.sum(axis=1)  # NaN * 0 would still be NaN


def nme_pooled(pred: np.ndarray, gt: np.ndarray, normaliser: np.ndarray | float,
               visible: np.ndarray | None = None) -> float:
    """Pooled NME: the sum of normalised errors over all (visible) landmarks of all images,
    divided by their count (mmpose ``keypoint_nme``). Equals the mean per-image NME when every
    image scores the same number of landmarks."""
    errors, visible = _normalised_errors(pred, gt, normaliser, visible)
    return float(errors[visible].sum() / visible.sum())


def _check_nmes(nmes: np.ndarray, threshold: float) -> np.ndarray:
    nmes = np.asarray(nmes, dtype=np.float64)
    if nmes.ndim != 1 or nmes.size == 0:
        raise ValueError(f"nmes: expected a non-empty 1-D array of per-image NMEs, got shape {nmes.shape}")
    if not threshold > 0:
        raise ValueError(f"threshold: must be positive, got {threshold}")
    return nmes


def failure_rate(nmes: np.ndarray, threshold: float = 0.1) -> float:
    """Fraction of images whose NME is above ``threshold`` (FR@threshold); a non-finite NME is a failure."""
    nmes = _check_nmes(nmes, threshold)
    return float(np.mean(~(np.isfinite(nmes) & (nmes <= threshold))))


def auc(nmes: np.ndarray, threshold: float = 0.1) -> float:
    """Area under the cumulative error distribution from 0 to ``threshold``, divided by
    ``threshold`` (so 1.0 = every image perfect).

    As PIPNet / STAR: the CED ``fraction of images with NME ≤ x`` is sampled every 1e-4 from
    0 to ``threshold`` and integrated with Simpson's rule (``scipy.integrate.simpson``).
    """
    nmes = _check_nmes(nmes, threshold)
    nmes = np.sort(np.where(np.isfinite(nmes), nmes, np.inf))  # a non-finite NME never counts as reached
    xs = np.linspace(0.0, threshold, int(round(threshold / AUC_STEP)) + 1)
    ced = np.searchsorted(nmes, xs, side="right") / nmes.size
    return float(simpson(ced, x=xs) / threshold)


def face_metrics(pred: np.ndarray, gt: np.ndarray, normaliser: np.ndarray | float,
                 visible: np.ndarray | None = None, thresholds: Sequence[float] = (0.1,)) -> dict[str, float]:
    """The standard face-alignment table as fractions:
    ``{"nme": mean per-image NME, "nme_pooled": ..., "fr@t": ..., "auc@t": ...}`` for each t."""
    nmes = nme_per_image(pred, gt, normaliser, visible)
    results = {"nme": float(nmes.mean()), "nme_pooled": nme_pooled(pred, gt, normaliser, visible)}
    for threshold in thresholds:
        results[f"fr@{threshold:g}"] = failure_rate(nmes, threshold)
        results[f"auc@{threshold:g}"] = auc(nmes, threshold)
    return results


def mpii_head_size(head_boxes: np.ndarray) -> np.ndarray:
    """MPII head size ``(N,)`` = 0.6 × the diagonal of the head rectangle.

    ``head_boxes``: ``(N, 4)`` as ``x1, y1, x2, y2`` or ``(N, 2, 2)`` as ``[[x1, y1], [x2, y2]]``
    (the layout of ``headboxes_src`` in ``gt_valid.mat`` after moving N first).
    """
    boxes = np.asarray(head_boxes, dtype=np.float64)
    if boxes.ndim == 3 and boxes.shape[1:] == (2, 2):
        boxes = boxes.reshape(-1, 4)
    if boxes.ndim != 2 or boxes.shape[1] != 4:
        raise ValueError(f"head_boxes: expected (N, 4) or (N, 2, 2), got shape {np.shape(head_boxes)}")
    return MPII_HEAD_SIZE_FACTOR * np.linalg.norm(boxes[:, 2:] - boxes[:, :2], axis=1)


def pckh(pred: np.ndarray, gt: np.ndarray, visible: np.ndarray, head_size: np.ndarray,
         threshold: float = 0.5) -> dict[str, float]:
    """MPII PCKh in percent, per joint group plus ``Mean`` and ``Mean@0.1``.

    A joint counts as correct when ‖pred − gt‖ ≤ ``threshold`` × ``head_size`` (head size =
    0.6 × head-box diagonal, see :func:`mpii_head_size`). Joints that are not ``visible``
    (MPII: missing in the annotation) are ignored.

    Conventions (datasets.md §5.3):
    - Joint order is MPII's (see ``MPII_JOINT_GROUPS``); each limb group is the unweighted
      mean of its left and right joint (HRNet's table).
    - ``Mean`` pools all joints except pelvis (6) and thorax (7): correct / counted, which is
      HRNet's count-weighted mean.
    - ``Mean@0.1`` uses threshold 0.10 as mmpose does; HRNet prints ``pckAll[11]`` of a
      0:0.01:0.5 sweep, i.e. 0.11.
    - HRNet and mmpose add 1 to predictions only because they compare against the 1-based
      ``gt_valid.mat``; here both arrays are in the same (0-based) frame, so no shift.
    """
    pred, gt = _check_pair(pred, gt)
    if pred.shape[1] != MPII_NUM_JOINTS:
        raise ValueError(f"pred: expected {MPII_NUM_JOINTS} MPII joints, got {pred.shape[1]}")
    visible = _check_visible(visible, pred.shape[:2])
    head_size = _check_per_image("head_size", head_size, pred.shape[0])
    distance = np.linalg.norm(pred - gt, axis=-1) / head_size[:, None]
    counted = visible.sum(axis=0)

    def correct_at(level: float) -> np.ndarray:
        return ((distance <= level) & visible).sum(axis=0)

    correct = correct_at(threshold)
    with np.errstate(invalid="ignore", divide="ignore"):
        per_joint = 100.0 * correct / counted  # NaN for a joint never annotated
    results = {name: float(np.mean(per_joint[list(joints)])) for name, joints in MPII_JOINT_GROUPS.items()}
    in_mean = np.ones(MPII_NUM_JOINTS, dtype=bool)
    in_mean[list(MPII_EXCLUDED_FROM_MEAN)] = False
    if counted[in_mean].sum() == 0:
        raise ValueError("visible: no annotated joint to score")
    results["Mean"] = float(100.0 * correct[in_mean].sum() / counted[in_mean].sum())
    results["Mean@0.1"] = float(100.0 * correct_at(0.1)[in_mean].sum() / counted[in_mean].sum())
    return results


def coco_keypoint_ap(coco_gt: dict, detections: list[dict]) -> dict[str, float]:
    """COCO keypoint AP / AR through ``pycocotools.cocoeval.COCOeval`` (OKS, ``maxDets=20``).

    ``coco_gt``: a COCO keypoint ground truth as loaded from ``person_keypoints_*.json``
    (``images``, ``annotations`` with ``keypoints``/``area``/``iscrowd``/``num_keypoints``,
    ``categories``). ``detections``: COCO results, one dict per person:
    ``{"image_id", "category_id": 1, "keypoints": [x, y, score] * 17, "score"}``.

    Returns the ten COCOeval stats named ``AP, AP50, AP75, APm, APl, AR, AR50, AR75, ARm, ARl``
    (fractions; None where COCOeval had no ground truth to score, its -1: e.g. ``APl`` and ``ARl``
    when no person is large). COCOeval's console output is swallowed.
    """
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    for key in ("images", "annotations", "categories"):
        if key not in coco_gt:
            raise ValueError(f"coco_gt: missing the '{key}' list of a COCO ground truth")
    if not detections:
        raise ValueError("detections: empty list; COCOeval needs at least one result")
    image_ids = {image["id"] for image in coco_gt["images"]}
    for index, detection in enumerate(detections):
        missing = {"image_id", "category_id", "keypoints", "score"} - detection.keys()
        if missing:
            raise ValueError(f"detections[{index}]: missing {sorted(missing)}")
        if detection["image_id"] not in image_ids:
            raise ValueError(f"detections[{index}]: image_id {detection['image_id']} is not in coco_gt['images']")
    detections, areas = _finite_detections(detections)
    with contextlib.redirect_stdout(io.StringIO()):
        ground_truth = COCO()
        ground_truth.dataset = copy.deepcopy(coco_gt)
        ground_truth.createIndex()
        results = ground_truth.loadRes(detections)  # loadRes edits its input (a copy here)
        for index, area in areas.items():  # loadRes numbers the results from 1 in order
            results.anns[index + 1]["area"] = area
        evaluator = COCOeval(ground_truth, results, "keypoints")
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return {name: None if value == -1 else float(value) for name, value in zip(COCO_STAT_NAMES, evaluator.stats)}


def _finite_detections(detections: list[dict]) -> tuple[list[dict], dict[int, float]]:
    """A copy of ``detections`` that COCOeval scores as failures where they are not finite.

    COCOeval matches a NaN OKS (``nan < threshold`` is False), so a NaN keypoint would count
    as correct: non-finite coordinates move :data:`FAR_AWAY` (OKS term 0) and non-finite
    scores become 0. Returns the copy and, for the detections changed, their area from the
    finite keypoints (what ``loadRes`` would otherwise compute from the far-away ones).
    """
    cleaned, areas = [], {}
    for index, detection in enumerate(detections):
        detection = copy.deepcopy(detection)
        triplets = np.asarray(detection["keypoints"], dtype=np.float64).reshape(-1, 3)
        finite = np.isfinite(triplets[:, :2]).all(axis=1)
        if not finite.all() or not np.isfinite(triplets[:, 2]).all():
            kept = triplets[finite, :2]
            areas[index] = float(np.prod(kept.max(axis=0) - kept.min(axis=0))) if len(kept) else 0.0
            triplets[~finite, :2] = FAR_AWAY
            triplets[~np.isfinite(triplets[:, 2]), 2] = 0.0
            detection["keypoints"] = triplets.ravel().tolist()
        if not np.isfinite(detection["score"]):
            detection["score"] = 0.0
        cleaned.append(detection)
    return cleaned, areas
