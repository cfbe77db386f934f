"""WFLW (98 landmarks) from the official annotation lists (datasets.md §1).

Expected layout (``root`` = the ``WFLW`` folder)::

    WFLW_annotations/list_98pt_rect_attr_train_test/list_98pt_rect_attr_{train,test}.txt
    WFLW_annotations/list_98pt_test/list_98pt_test.txt, list_98pt_test_{largepose,expression,...}.txt
    WFLW_images/<event>/<file>.jpg

A line of ``list_98pt_rect_attr_{train,test}.txt`` holds **207** space-separated fields: 98 ×
(x, y) (196), the detection rectangle ``x_min y_min x_max y_max`` (4), six 0/1 attribute flags
``pose expression illumination make-up occlusion blur`` (6), and the image path relative to
``WFLW_images/`` (1). One image may appear on several lines (one per face).

A line of the files in ``list_98pt_test/`` (``list_98pt_test.txt`` and the six
``list_98pt_test_<attribute>.txt``) holds **197** fields: the 196 coordinates and the image
path only; no rectangle, no flags (the README of that folder says so). A subset is read from
its own file and each of its lines is matched to the line of ``list_98pt_rect_attr_test.txt``
with the same image path and the same landmarks, which gives the rectangle (P2) and the
attribute flags; a subset line without such a match is an error naming it.

Conventions: coordinates are used as written (0-based pixel centres, as HRNet, mmpose and
H3R read them); ``Sample.box`` is the official rectangle (H3R's P2), ``Sample.box_p1`` the
tight landmark box (P1); the NME normaliser is the inter-ocular distance between the outer
eye corners 60 and 72, and ``nme_ip`` uses the pupils 96 and 97. Every value must be finite
(a ``nan`` or ``inf`` token is an error naming ``file:line``) and the rectangle must have a
positive width and height.

``source="csv"``: HRNet's files instead (``root`` = HRNet's ``data/wflw``):
``face_landmarks_wflw_{train,test}.csv`` and ``face_landmarks_wflw_test_<attribute>.csv`` (a header,
then ``image_name, scale, center_w, center_h, x0, y0, ..., x97, y97``; :mod:`h3r.data.hrnet_csv`)
with the images under ``images/``. ``Sample.box`` is HRNet's square box (side ``200 * scale``
around the centre: the tight landmark box's larger side), so P1 and P2 coincide up to its
rounding. The attribute subsets of the full test split are the faces of the subset files that
are present (matched to the test rows by image and landmarks); there are no attribute flags.
"""
from __future__ import annotations

import os

import numpy as np

from h3r import metrics
from h3r.data.checks import read_lines, require_finite, require_images
from h3r.data.faces import FaceDataset
from h3r.data.hrnet_csv import HRNET_COLUMNS, hrnet_face_items, pick_source, read_hrnet_csv
from h3r.data.images import image_loader

WFLW_NUM_KEYPOINTS = 98
WFLW_FLIP_PAIRS = (
    (0, 32), (1, 31), (2, 30), (3, 29), (4, 28), (5, 27), (6, 26), (7, 25), (8, 24), (9, 23), (10, 22),
    (11, 21), (12, 20), (13, 19), (14, 18), (15, 17), (33, 46), (34, 45), (35, 44), (36, 43), (37, 42),
    (38, 50), (39, 49), (40, 48), (41, 47), (55, 59), (56, 58), (60, 72), (61, 71), (62, 70), (63, 69),
    (64, 68), (65, 75), (66, 74), (67, 73), (76, 82), (77, 81), (78, 80), (83, 87), (84, 86), (88, 92),
    (89, 91), (93, 95), (96, 97),
)
WFLW_INTER_OCULAR = (60, 72)  # outer eye corners
WFLW_PUPILS = (96, 97)
# Attribute flags in file order; the names are those of the subset files.
WFLW_ATTRIBUTES = ("largepose", "expression", "illumination", "makeup", "occlusion", "blur")
WFLW_FIELDS = 2 * WFLW_NUM_KEYPOINTS + 4 + len(WFLW_ATTRIBUTES) + 1  # 207
WFLW_SUBSET_FIELDS = 2 * WFLW_NUM_KEYPOINTS + 1  # 197: the list_98pt_test/ files
# A subset line matches a test line with the same image whose landmarks differ by at most this (px).
WFLW_MATCH_TOLERANCE = 1e-3

LIST_DIR = os.path.join("WFLW_annotations", "list_98pt_rect_attr_train_test")
SUBSET_DIR = os.path.join("WFLW_annotations", "list_98pt_test")
IMAGE_DIR = "WFLW_images"
CSV_IMAGE_DIR = "images"  # HRNet's data/wflw/images/


def csv_path(root: str, split: str, subset: str | None = None) -> str:
    """HRNet's csv of ``split``, or of the test ``subset``."""
    return os.path.join(root, f"face_landmarks_wflw_{split}{'' if subset is None else '_' + subset}.csv")


def list_path(root: str, split: str) -> str:
    """The annotation list of ``split`` (``"train"`` or ``"test"``)."""
    return os.path.join(root, LIST_DIR, f"list_98pt_rect_attr_{split}.txt")


def subset_path(root: str, subset: str) -> str:
    """The official list of one test subset (e.g. ``"largepose"``)."""
    return os.path.join(root, SUBSET_DIR, f"list_98pt_test_{subset}.txt")


def _coordinates(fields: list[str], path: str, number: int, what: str) -> np.ndarray:
    try:
        values = np.array(fields, dtype=np.float64)
    except ValueError as error:
        raise ValueError(f"{path}:{number}: non-numeric {what}: {error}") from None
    return values


def read_wflw_list(path: str) -> dict[str, np.ndarray | list]:
    """Parse one 207-field WFLW list (``list_98pt_rect_attr_{train,test}.txt``).

    Returns ``keypoints (N, 98, 2)``, ``rects (N, 4)`` (x_min, y_min, x_max, y_max),
    ``attributes (N, 6)`` int8 and ``image_names`` (list of N paths relative to ``WFLW_images/``),
    ``lines`` (1-based line numbers). Raises ``ValueError`` naming ``path:line`` for a malformed line.
    """
    keypoints, rects, attributes, names, line_numbers = [], [], [], [], []
    for number, line in enumerate(read_lines(path, "WFLW annotation list"), start=1):
        fields = line.split()
        if not fields:
            continue
        if len(fields) != WFLW_FIELDS:
            hint = (" (197 fields is the layout of the list_98pt_test/ files: coordinates + image name)"
                    if len(fields) == WFLW_SUBSET_FIELDS else "")
            raise ValueError(
                f"{path}:{number}: expected {WFLW_FIELDS} space-separated fields (196 coordinates, 4 rectangle "
                f"values, 6 attribute flags, image name), got {len(fields)}{hint}"
            )
        values = _coordinates(fields[:-1], path, number, "coordinate, rectangle or attribute")
        flags = values[200:206]
        if not np.isin(flags, (0, 1)).all():
            raise ValueError(f"{path}:{number}: attribute flags must be 0 or 1, got {fields[200:206]}")
        require_finite(values[:196], f"{path}:{number}", "landmark coordinates")
        require_finite(values[196:200], f"{path}:{number}", "rectangle",
                       names=("x_min", "y_min", "x_max", "y_max"))
        x_min, y_min, x_max, y_max = values[196:200]
        if not (x_max > x_min and y_max > y_min):
            raise ValueError(f"{path}:{number}: rectangle {fields[196:200]} (x_min y_min x_max y_max) "
                             f"has no area")
        keypoints.append(values[:196].reshape(WFLW_NUM_KEYPOINTS, 2))
        rects.append(values[196:200])
        attributes.append(flags)
        names.append(fields[-1])
        line_numbers.append(number)
    if not names:
        raise ValueError(f"{path}: no annotation lines")
    return {
        "keypoints": np.stack(keypoints).astype(np.float32),
        "rects": np.stack(rects).astype(np.float32),
        "attributes": np.stack(attributes).astype(np.int8),
        "image_names": names,
        "lines": line_numbers,
    }


def read_wflw_subset_list(path: str) -> dict[str, np.ndarray | list]:
    """Parse one 197-field file of ``list_98pt_test/`` (196 coordinates + image name).

    Returns ``keypoints (N, 98, 2)`` float64 (as written), ``image_names`` and ``lines``.
    Raises ``ValueError`` naming ``path:line`` for a malformed line.
    """
    keypoints, names, line_numbers = [], [], []
    for number, line in enumerate(read_lines(path, "WFLW test subset list"), start=1):
        fields = line.split()
        if not fields:
            continue
        if len(fields) != WFLW_SUBSET_FIELDS:
            raise ValueError(f"{path}:{number}: expected {WFLW_SUBSET_FIELDS} space-separated fields "
                             f"(196 coordinates, image name), as the official list_98pt_test files have; "
                             f"got {len(fields)}")
        values = _coordinates(fields[:-1], path, number, "coordinate")
        require_finite(values, f"{path}:{number}", "landmark coordinates")
        keypoints.append(values.reshape(WFLW_NUM_KEYPOINTS, 2))
        names.append(fields[-1])
        line_numbers.append(number)
    if not names:
        raise ValueError(f"{path}: no annotation lines")
    return {"keypoints": np.stack(keypoints), "image_names": names, "lines": line_numbers}


def match_subset(subset: dict, subset_file: str, test: dict, test_file: str, column: int | None = None) -> np.ndarray:
    """For each line of a 197-field subset list, the index of the line of the 207-field test
    list with the same image and the same landmarks (within ``WFLW_MATCH_TOLERANCE`` px).
    Among equal candidates (one face annotated twice), a line not matched yet whose attribute
    flag ``column`` is 1 is preferred. ``ValueError`` naming ``subset_file:line`` when there is none."""
    by_name: dict[str, list[int]] = {}
    for index, name in enumerate(test["image_names"]):
        by_name.setdefault(name, []).append(index)
    test_points = test["keypoints"].astype(np.float64)
    used: set[int] = set()
    matches = []
    for points, name, number in zip(subset["keypoints"], subset["image_names"], subset["lines"]):
        candidates = by_name.get(name)
        if not candidates:
            raise ValueError(f"{subset_file}:{number}: image {name} is not in {test_file}; a subset line must "
                             f"repeat a face of the test list")
        differences = np.abs(test_points[candidates] - points).reshape(len(candidates), -1).max(axis=1)
        # float32 storage of the test list: allow its rounding on top of the tolerance
        allowed = WFLW_MATCH_TOLERANCE + 1e-6 * float(np.abs(points).max())
        close = [position for position in range(len(candidates)) if differences[position] <= allowed]
        if not close:
            best = int(np.argmin(differences))
            raise ValueError(f"{subset_file}:{number}: no face of {test_file} on image {name} has these landmarks "
                             f"(the closest, line {test['lines'][candidates[best]]}, differs by "
                             f"{differences[best]:.4g} px)")

        def preference(position: int) -> tuple:
            index = candidates[position]
            flagged = column is not None and test["attributes"][index, column] == 1
            return (index in used, not flagged, differences[position])

        chosen = candidates[min(close, key=preference)]
        used.add(chosen)
        matches.append(chosen)
    return np.array(matches, dtype=np.int64)


class WFLW(FaceDataset):
    """WFLW ``split="train"`` (7,500 faces) or ``"test"`` (2,500), or one test ``subset``
    (``"largepose" | "expression" | "illumination" | "makeup" | "occlusion" | "blur"``) read
    from its official 197-field list and matched to the test list for its rectangle and flags.
    Evaluating the full test split also reports each attribute subset (``"largepose/nme"``,
    ...), selected by the attribute flags the subsets are built from. ``source``: ``"lists"``
    (the official annotations) or ``"csv"`` (HRNet's files); default: the lists where ``root``
    has them, else the csv.
    """

    name = "wflw"
    num_keypoints = WFLW_NUM_KEYPOINTS
    flip_pairs = WFLW_FLIP_PAIRS

    def __init__(self, root: str, split: str = "train", subset: str | None = None, source: str | None = None):
        if split not in ("train", "test"):
            raise ValueError(f"WFLW split: expected 'train' or 'test', got {split!r}")
        if subset is not None and (split != "test" or subset not in WFLW_ATTRIBUTES):
            raise ValueError(f"WFLW subset: expected one of {WFLW_ATTRIBUTES} with split='test', "
                             f"got {subset!r} with split={split!r}")
        self.root = os.fspath(root)
        self.subset = subset
        path = list_path(self.root, split)
        self.source = source = pick_source("WFLW", split, source, "lists", f"the official list {path}",
                                           os.path.isfile(path), csv_path(self.root, split, subset))
        if source == "csv":
            self._init_from_csv(split, subset)
            return
        table = read_wflw_list(path)
        annotations = [f"{path}:{number}" for number in table["lines"]]
        origins = annotations  # the file:line that names each face's image
        keypoints = table["keypoints"]
        if subset is not None:
            subset_file = subset_path(self.root, subset)
            members = read_wflw_subset_list(subset_file)
            chosen = match_subset(members, subset_file, table, path, WFLW_ATTRIBUTES.index(subset))
            keypoints = members["keypoints"].astype(np.float32)
            table = {"rects": table["rects"][chosen], "attributes": table["attributes"][chosen],
                     "image_names": members["image_names"]}
            origins = [f"{subset_file}:{number}" for number in members["lines"]]
            annotations = [f"{origin} (= {annotations[index]})" for origin, index in zip(origins, chosen)]
        image_dir = os.path.join(self.root, IMAGE_DIR)
        require_images((os.path.join(image_dir, name), origin) for name, origin in zip(table["image_names"], origins))
        metas = [
            {"image_path": name, "attributes": dict(zip(WFLW_ATTRIBUTES, flags.tolist())), "annotation": where}
            for name, flags, where in zip(table["image_names"], table["attributes"], annotations)
        ]
        subsets = {}
        if split == "test" and subset is None:
            subsets = {attribute: table["attributes"][:, column] == 1 for column, attribute in enumerate(WFLW_ATTRIBUTES)}
        super().__init__(
            split=split,
            loaders=[image_loader(os.path.join(image_dir, name)) for name in table["image_names"]],
            keypoints=keypoints,
            boxes=table["rects"],
            normalisers=metrics.inter_ocular(keypoints, *WFLW_INTER_OCULAR),
            inter_pupil=metrics.inter_ocular(keypoints, *WFLW_PUPILS),
            metas=metas,
            subsets=subsets,
        )

    def _init_from_csv(self, split: str, subset: str | None) -> None:
        path = csv_path(self.root, split, subset)
        table, items = hrnet_face_items(path, WFLW_NUM_KEYPOINTS, os.path.join(self.root, CSV_IMAGE_DIR), "WFLW csv",
                                        WFLW_INTER_OCULAR, WFLW_PUPILS)
        def as_list(rows: dict) -> dict:  # the fields match_subset reads, named as the official lists' readers do
            return {"image_names": rows["names"], "keypoints": rows["keypoints"], "lines": rows["lines"]}

        subsets = {}
        if split == "test" and subset is None:  # the subset files present, matched to these rows
            for attribute in WFLW_ATTRIBUTES:
                subset_file = csv_path(self.root, "test", attribute)
                if os.path.isfile(subset_file):
                    members = read_hrnet_csv(subset_file, WFLW_NUM_KEYPOINTS, HRNET_COLUMNS, "WFLW csv")
                    subsets[attribute] = np.zeros(len(table["lines"]), dtype=bool)
                    subsets[attribute][match_subset(as_list(members), subset_file, as_list(table), path)] = True
        super().__init__(split=split, subsets=subsets, **items)
