"""AFLW, 19-landmark benchmark protocol (datasets.md §4), from either source users have:

``source="mat"``: ``root/AFLWinfo_release.mat`` (Zhu et al., CVPR'16; read with
``scipy.io.loadmat``, or with h5py if the copy is MATLAB v7.3 / HDF5, as PIPNet's
``hdf5storage.loadmat`` would: :func:`~h3r.data.matfiles.load_mat`) and the AFLW images
under ``root/flickr/`` (``image_dir``). Fields:
``bbox`` N×4 ``[x1, x2, y1, y2]`` (note the order), ``data`` N×38 (19 x then 19 y),
``mask_new`` N×19 (1 = visible), ``nameList`` N×1 cell of paths relative to ``flickr/``
(read as written; where that file is missing, the same stem with ``.jpg``, as SAN's converted
copies are named: :func:`aflw_image`), ``ra`` a 1-based permutation of the N
faces: the first 20,000 are the training set, the remaining 4,386 the test set (AFLW-Full).
AFLW-Frontal (1,165) is the test faces whose 19 landmarks are all visible and strictly
inside the box (SAN's rule). NME normaliser: √(w·h) of the box (SAN), w = x2 − x1, h = y2 − y1.

``source="csv"``: HRNet's ``root/face_landmarks_aflw_{train,test,test_frontal}.csv`` (a header
row, then ``image_name, scale, box_size, center_w, center_h, x0, y0, …, x18, y18``) with
images under ``root/images/`` (``image_dir``). The box is the square of side ``box_size``
centred on ``(center_w, center_h)``; NME normaliser: ``box_size`` (HRNet, mmpose).

Coordinates are used as the files give them (SAN, PIPNet and HRNet do the same). Every one
of the 19 points is annotated and scored; ``meta["occluded"]`` holds ``mask_new == 0`` for the
mat source. ``Sample.box`` is the AFLW face box (P2). Splits: ``train``, ``test`` (AFLW-Full)
and ``frontal`` (AFLW-Frontal); evaluating ``test`` from the mat also reports ``frontal/…``.
"""
from __future__ import annotations

import os

import numpy as np

from h3r.data.checks import find_image, matlab_string, require_file, require_finite, require_images
from h3r.data.faces import FaceDataset
from h3r.data.hrnet_csv import read_hrnet_csv, square_boxes
from h3r.data.images import image_loader
from h3r.data.matfiles import load_mat

AFLW_NUM_KEYPOINTS = 19
AFLW_FLIP_PAIRS = ((0, 5), (1, 4), (2, 3), (6, 11), (7, 10), (8, 9), (12, 14), (15, 17))  # 18 (chin) unpaired
AFLW_MAT = "AFLWinfo_release.mat"
AFLW_TRAIN_SIZE = 20000  # first entries of ``ra`` that form the training set
AFLW_CSV = {"train": "face_landmarks_aflw_train.csv", "test": "face_landmarks_aflw_test.csv",
            "frontal": "face_landmarks_aflw_test_frontal.csv"}
AFLW_IMAGE_DIRS = {"mat": "flickr", "csv": "images"}


def read_aflw_mat(path: str) -> dict[str, np.ndarray | list]:
    """All faces of ``AFLWinfo_release.mat`` in file order: ``keypoints (N, 19, 2)``,
    ``boxes (N, 4)`` as x1, y1, x2, y2, ``visible (N, 19)`` bool, ``names`` (N paths, as
    ``nameList`` writes them: see :func:`aflw_image`), ``order`` (the 0-based permutation ``ra − 1``),
    and ``frontal (N,)``: :func:`is_frontal` on the file's float64 values."""
    require_file(path, "AFLW annotation file")
    mat = load_mat(path)
    for field in ("bbox", "data", "mask_new", "nameList", "ra"):
        if field not in mat:
            raise ValueError(f"{path}: field '{field}' missing (AFLWinfo_release.mat has bbox, data, mask_new, nameList, ra)")
    arrays = {}
    for field in ("data", "bbox", "mask_new", "ra"):
        if np.asarray(mat[field]).dtype.kind not in "fiub":
            raise ValueError(f"{path}: '{field}' must be a numeric matrix, got {np.asarray(mat[field]).dtype}")
        arrays[field] = np.asarray(mat[field], dtype=np.float64)
    data = arrays["data"]
    count = len(data)
    expected = {"data": (count, 2 * AFLW_NUM_KEYPOINTS), "bbox": (count, 4), "mask_new": (count, AFLW_NUM_KEYPOINTS)}
    for field, shape in expected.items():
        if np.shape(mat[field]) != shape:
            raise ValueError(f"{path}: '{field}' has shape {np.shape(mat[field])}, expected {shape}")
    point_names = [f"{axis} of point {point + 1}" for axis in "xy" for point in range(AFLW_NUM_KEYPOINTS)]
    for face in range(count):
        require_finite(data[face], f"{path}: 'data' row {face + 1}", "landmarks", names=point_names)
        require_finite(arrays["bbox"][face], f"{path}: 'bbox' row {face + 1}", "box", names=("x1", "x2", "y1", "y2"))
    bad = np.argwhere(~np.isin(arrays["mask_new"], (0, 1)))
    if bad.size:
        face, point = bad[0]
        raise ValueError(f"{path}: 'mask_new' row {face + 1}: visibility of point {point + 1} is "
                         f"{arrays['mask_new'][face, point]}, expected 0 or 1")
    name_cell = np.asarray(mat["nameList"]).reshape(-1)
    order = arrays["ra"].reshape(-1)
    if len(name_cell) != count:
        raise ValueError(f"{path}: 'nameList' has {len(name_cell)} entries for {count} faces")
    if sorted(order.tolist()) != list(range(1, count + 1)):
        raise ValueError(f"{path}: 'ra' must be a permutation of 1..{count} (1-based face indices)")
    names = []
    for index, entry in enumerate(name_cell):
        text = matlab_string(entry)
        if not text:
            raise ValueError(f"{path}: nameList{{{index + 1}}} is not a file name: {entry!r}")
        names.append(text)
    x1, x2, y1, y2 = arrays["bbox"].T
    keypoints = np.stack([data[:, :AFLW_NUM_KEYPOINTS], data[:, AFLW_NUM_KEYPOINTS:]], axis=-1)
    boxes = np.stack([x1, y1, x2, y2], axis=1)
    visible = arrays["mask_new"] != 0
    return {
        "keypoints": keypoints.astype(np.float32),
        "boxes": boxes.astype(np.float32),
        "visible": visible,
        "names": names,
        "order": np.rint(order).astype(np.int64) - 1,
        "frontal": is_frontal(keypoints, visible, boxes),  # in float64, as SAN's check_front
    }


def aflw_image(image_root: str, name: str, where: str) -> str:
    """The image file of ``nameList`` entry ``name`` under ``image_root``: the name as written,
    else the same stem with ``.jpg`` (SAN's converted copies; some listed extensions are wrong,
    as SRT's ``GEN_aflw.py`` notes); ``FileNotFoundError`` naming both when neither exists."""
    return find_image(image_root, name, (os.path.splitext(name)[0] + ".jpg",), where)


def is_frontal(keypoints: np.ndarray, visible: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """SAN's AFLW-Frontal rule per face: all 19 landmarks visible and strictly inside the box."""
    x, y = keypoints[..., 0], keypoints[..., 1]
    inside = (x > boxes[:, None, 0]) & (x < boxes[:, None, 2]) & (y > boxes[:, None, 1]) & (y < boxes[:, None, 3])
    return (inside & visible).all(axis=1)


def read_aflw_csv(path: str) -> dict[str, np.ndarray | list]:
    """An HRNet AFLW csv: ``names``, ``keypoints (N, 19, 2)``, ``box_size (N,)``, ``centre (N, 2)``, ``lines``."""
    table = read_hrnet_csv(path, AFLW_NUM_KEYPOINTS, ("scale", "box_size", "center_w", "center_h"), "AFLW csv")
    return {"names": table["names"], "box_size": table["box_size"],
            "centre": np.stack([table["center_w"], table["center_h"]], axis=1), "keypoints": table["keypoints"],
            "lines": table["lines"]}


class AFLW(FaceDataset):
    """AFLW-19 ``split="train" | "test" | "frontal"`` from ``source="mat" | "csv"`` (default:
    the mat file if ``root`` has it, else the csv). ``train_size`` is the protocol's 20,000;
    change it only for small generated files."""

    name = "aflw"
    num_keypoints = AFLW_NUM_KEYPOINTS
    flip_pairs = AFLW_FLIP_PAIRS

    def __init__(self, root: str, split: str = "train", source: str | None = None,
                 image_dir: str | None = None, train_size: int = AFLW_TRAIN_SIZE):
        if split not in AFLW_CSV:
            raise ValueError(f"AFLW split: expected one of {tuple(AFLW_CSV)}, got {split!r}")
        self.root = os.fspath(root)
        if source is None:
            if os.path.isfile(os.path.join(self.root, AFLW_MAT)):
                source = "mat"
            elif os.path.isfile(os.path.join(self.root, AFLW_CSV[split])):
                source = "csv"
            else:
                raise FileNotFoundError(f"AFLW: neither {os.path.join(self.root, AFLW_MAT)} nor "
                                        f"{os.path.join(self.root, AFLW_CSV[split])} exists")
        if source not in AFLW_IMAGE_DIRS:
            raise ValueError(f"AFLW source: expected 'mat' or 'csv', got {source!r}")
        self.source = source
        image_root = os.path.join(self.root, AFLW_IMAGE_DIRS[source] if image_dir is None else image_dir)
        if source == "mat":
            self._init_from_mat(split, image_root, train_size)
        else:
            self._init_from_csv(split, image_root)

    def _init_from_mat(self, split: str, image_root: str, train_size: int) -> None:
        path = os.path.join(self.root, AFLW_MAT)
        table = read_aflw_mat(path)
        if not 0 < train_size < len(table["order"]):
            raise ValueError(f"AFLW train_size: {train_size} does not split the {len(table['order'])} faces of {path}")
        chosen = table["order"][:train_size] if split == "train" else table["order"][train_size:]
        if split == "frontal":
            chosen = chosen[table["frontal"][chosen]]
        keypoints, boxes, visible = table["keypoints"][chosen], table["boxes"][chosen], table["visible"][chosen]
        files = [aflw_image(image_root, table["names"][index], f"{path}: nameList{{{index + 1}}}") for index in chosen]
        width, height = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
        bad = np.flatnonzero(~((width > 0) & (height > 0)))
        if bad.size:
            raise ValueError(f"{path}: bbox of face {chosen[bad[0]] + 1} has no area: {boxes[bad[0]].tolist()} (x1, y1, x2, y2)")
        super().__init__(
            split=split,
            loaders=[image_loader(file) for file in files],
            keypoints=keypoints,
            boxes=boxes,
            normalisers=np.sqrt(width.astype(np.float64) * height),
            metas=[{"image_path": os.path.relpath(file, image_root), "face": int(index) + 1, "occluded": ~seen}
                   for file, index, seen in zip(files, chosen, visible)],
            subsets={"frontal": table["frontal"][chosen]} if split == "test" else None,
        )

    def _init_from_csv(self, split: str, image_root: str) -> None:
        path = os.path.join(self.root, AFLW_CSV[split])
        table = read_aflw_csv(path)
        require_images((os.path.join(image_root, name), f"{path}:{number}")
                       for name, number in zip(table["names"], table["lines"]))
        super().__init__(
            split=split,
            loaders=[image_loader(os.path.join(image_root, name)) for name in table["names"]],
            keypoints=table["keypoints"],
            boxes=square_boxes(table["centre"], table["box_size"]),
            normalisers=table["box_size"],
            metas=[{"image_path": name, "annotation": f"{path}:{number}"}
                   for name, number in zip(table["names"], table["lines"])],
        )
