"""COFW (29 landmarks + occlusion flags) from ``COFW_{train,test}_color.mat`` (datasets.md §3).

The files (from ``COFW_color.zip``) are MATLAB v7.3, i.e. HDF5, read with h5py. MATLAB
stores arrays column-major, so h5py sees every matrix transposed:

- ``IsTr`` (MATLAB N×1 cell; h5py ``(1, N)`` object references): uint8 images, H×W×3
  (h5py ``(3, W, H)``) or H×W grey (h5py ``(W, H)``): some "color" images are grey;
- ``phisTr`` (MATLAB N×87 double; h5py ``(87, N)``): ``x1..x29, y1..y29, occ1..occ29``
  (occ 1 = occluded, 0 = visible);
- ``bboxesTr`` (MATLAB N×4 double; h5py ``(4, N)``): face box ``x, y, w, h``.

The test file names them ``IsT``, ``phisT``, ``bboxesT``.

Conventions: MATLAB coordinates are 1-based; one is subtracted from landmarks and box origin
(as mmpose does). Occluded points keep their annotated position and are scored, as in
HRNet / mmpose; the flags are in ``meta["occluded"]``. NME normaliser: inter-ocular ‖p8 − p9‖
(HRNet, mmpose, PIPNet); ``nme_ip`` is the inter-pupil ‖p16 − p17‖ of the original RCPR code.
``Sample.box`` is the file's face box (P2).

Validation when the dataset is opened: the file must open as HDF5 (a truncated or damaged file
is a ``ValueError`` naming it, not a raw h5py ``OSError``); every variable must have the
layout above; every coordinate and box value must be finite (COFW has no "not annotated"
marker: occluded points are annotated too), the occlusion flags 0 or 1, the boxes of positive
size; and every image reference must resolve to a uint8 ``(3, W, H)`` or ``(W, H)`` dataset
(checked without reading the pixels).
"""
from __future__ import annotations

import functools
import os

import h5py
import numpy as np

from h3r import metrics
from h3r.data.checks import require_finite
from h3r.data.faces import FaceDataset, require_file
from h3r.data.images import as_rgb

COFW_NUM_KEYPOINTS = 29
COFW_FLIP_PAIRS = ((0, 1), (2, 3), (4, 6), (5, 7), (8, 9), (10, 11), (12, 14), (13, 15), (16, 17), (18, 19), (22, 23))
COFW_INTER_OCULAR = (8, 9)
COFW_PUPILS = (16, 17)
COFW_FILES = {"train": "COFW_train_color.mat", "test": "COFW_test_color.mat"}
# split → (images, shapes, boxes) variable names
COFW_VARIABLES = {"train": ("IsTr", "phisTr", "bboxesTr"), "test": ("IsT", "phisT", "bboxesT")}


def _open_mat(path: str) -> h5py.File:
    require_file(path, "COFW .mat file")
    if not h5py.is_hdf5(path):
        raise ValueError(f"{path}: not a MATLAB v7.3 (HDF5) .mat file; expected COFW_*_color.mat from COFW_color.zip")
    try:
        return h5py.File(path, "r")
    except OSError as error:
        raise ValueError(f"{path}: cannot open as a MATLAB v7.3 (HDF5) file (truncated or damaged?): {error}") from None


def _matrix(file: h5py.File, path: str, variable: str, rows: int) -> np.ndarray:
    """MATLAB N×rows matrix → numpy (N, rows)."""
    if variable not in file:
        raise ValueError(f"{path}: variable '{variable}' missing (found {sorted(file.keys())})")
    item = file[variable]
    if not isinstance(item, h5py.Dataset) or item.dtype.kind not in "fiu":
        raise ValueError(f"{path}: '{variable}' should be a numeric matrix (MATLAB N×{rows} double), "
                         f"got {getattr(item, 'dtype', type(item).__name__)}")
    try:
        values = np.asarray(item, dtype=np.float64)
    except OSError as error:
        raise ValueError(f"{path}: cannot read '{variable}' (truncated or damaged file?): {error}") from None
    if values.ndim != 2 or values.shape[0] != rows:
        raise ValueError(f"{path}: '{variable}' has h5py shape {values.shape}, expected ({rows}, N) (MATLAB N×{rows})")
    return values.T


def _image_references(file: h5py.File, path: str, variable: str) -> h5py.Dataset:
    if variable not in file:
        raise ValueError(f"{path}: variable '{variable}' missing (found {sorted(file.keys())})")
    cell = file[variable]
    if not isinstance(cell, h5py.Dataset) or cell.dtype != h5py.ref_dtype or cell.ndim != 2 or 1 not in cell.shape:
        raise ValueError(f"{path}: '{variable}' should be an N×1 cell of images (h5py (1, N) object references), "
                         f"got {getattr(cell, 'dtype', type(cell).__name__)} {getattr(cell, 'shape', '')}")
    return cell


def _image_dataset(file: h5py.File, path: str, variable: str, references: np.ndarray, index: int) -> h5py.Dataset:
    """The dataset cell ``index`` refers to, checked to be a uint8 image (no pixels read)."""
    where = f"{path}: {variable}{{{index + 1}}}"
    try:
        target = file[references[index]]
    except (ValueError, OSError, KeyError) as error:
        raise ValueError(f"{where}: the cell's reference does not resolve (damaged file?): {error}") from None
    if not isinstance(target, h5py.Dataset) or target.ndim not in (2, 3) or target.dtype != np.uint8 \
            or (target.ndim == 3 and target.shape[0] not in (1, 3, 4)) or 0 in target.shape:
        raise ValueError(f"{where} is not a uint8 image (MATLAB H×W×3 or H×W; h5py (3, W, H) or (W, H)), "
                         f"got {getattr(target, 'dtype', type(target).__name__)} {getattr(target, 'shape', '')}")
    return target


def read_cofw_image(path: str, variable: str, index: int) -> np.ndarray:
    """Image ``index`` (0-based) of the cell ``variable`` as RGB ``uint8`` ``(H, W, 3)``."""
    with _open_mat(path) as file:
        references = np.asarray(_image_references(file, path, variable)).reshape(-1)
        try:
            pixels = np.asarray(_image_dataset(file, path, variable, references, index))
        except OSError as error:
            raise ValueError(f"{path}: cannot read {variable}{{{index + 1}}} (truncated or damaged file?): "
                             f"{error}") from None
    return as_rgb(pixels.T, source=f"{path}: {variable}{{{index + 1}}}")  # (3, W, H) → (H, W, 3)


def read_cofw_annotations(path: str, split: str) -> dict[str, np.ndarray]:
    """``keypoints (N, 29, 2)`` 0-based, ``occluded (N, 29)`` bool, ``boxes (N, 4)`` x1, y1, x2, y2 0-based."""
    images, shapes, boxes = COFW_VARIABLES[split]
    with _open_mat(path) as file:
        phis = _matrix(file, path, shapes, 3 * COFW_NUM_KEYPOINTS)
        xywh = _matrix(file, path, boxes, 4)
        cell = _image_references(file, path, images)
        try:
            references = np.asarray(cell).reshape(-1)
        except OSError as error:
            raise ValueError(f"{path}: cannot read '{images}' (truncated or damaged file?): {error}") from None
        count = references.size
        if not len(phis) == len(xywh) == count:
            raise ValueError(f"{path}: {count} images in '{images}', {len(phis)} shapes in '{shapes}', "
                             f"{len(xywh)} boxes in '{boxes}'")
        for index in range(count):
            _image_dataset(file, path, images, references, index)
    point_names = [f"{axis} of point {point + 1}" for axis in "xy" for point in range(COFW_NUM_KEYPOINTS)]
    for record in range(count):
        where = f"{path}: '{shapes}' record {record + 1}"
        require_finite(phis[record, :2 * COFW_NUM_KEYPOINTS], where, "landmarks", names=point_names)
        require_finite(xywh[record], f"{path}: '{boxes}' record {record + 1}", "box", names=("x", "y", "w", "h"))
        if not (xywh[record, 2] > 0 and xywh[record, 3] > 0):
            raise ValueError(f"{path}: '{boxes}' record {record + 1}: box [x, y, w, h] = {xywh[record].tolist()} "
                             f"has no area")
    occlusion = phis[:, 2 * COFW_NUM_KEYPOINTS:]
    bad = np.argwhere(~np.isin(occlusion, (0, 1)))
    if bad.size:
        record, point = bad[0]
        raise ValueError(f"{path}: '{shapes}' record {record + 1}: occlusion flag of point {point + 1} "
                         f"is {occlusion[record, point]}, expected 0 or 1")
    keypoints = np.stack([phis[:, :COFW_NUM_KEYPOINTS], phis[:, COFW_NUM_KEYPOINTS:2 * COFW_NUM_KEYPOINTS]], axis=-1) - 1.0
    origin = xywh[:, :2] - 1.0
    return {
        "keypoints": keypoints.astype(np.float32),
        "occluded": occlusion == 1,
        "boxes": np.concatenate([origin, origin + xywh[:, 2:]], axis=1).astype(np.float32),
    }


class COFW(FaceDataset):
    """COFW ``split="train"`` (1,345 faces) or ``"test"`` (507) from ``root/COFW_{split}_color.mat``."""

    name = "cofw"
    num_keypoints = COFW_NUM_KEYPOINTS
    flip_pairs = COFW_FLIP_PAIRS

    def __init__(self, root: str, split: str = "train"):
        if split not in COFW_FILES:
            raise ValueError(f"COFW split: expected 'train' or 'test', got {split!r}")
        self.root = os.fspath(root)
        path = os.path.join(self.root, COFW_FILES[split])
        table = read_cofw_annotations(path, split)
        keypoints = table["keypoints"]
        images = COFW_VARIABLES[split][0]
        super().__init__(
            split=split,
            loaders=[functools.partial(read_cofw_image, path, images, index) for index in range(len(keypoints))],
            keypoints=keypoints,
            boxes=table["boxes"],
            normalisers=metrics.inter_ocular(keypoints, *COFW_INTER_OCULAR),
            inter_pupil=metrics.inter_ocular(keypoints, *COFW_PUPILS),
            metas=[{"record": index + 1, "occluded": occluded} for index, occluded in enumerate(table["occluded"])],
        )
