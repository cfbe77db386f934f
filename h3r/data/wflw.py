"""WFLW (98 landmarks) from the official annotation lists (datasets.md §1).

Expected layout (``root`` = the ``WFLW`` folder)::

    WFLW_annotations/list_98pt_rect_attr_train_test/list_98pt_rect_attr_{train,test}.txt
    WFLW_annotations/list_98pt_test/list_98pt_test_{largepose,expression,...}.txt   (test subsets)
    WFLW_images/<event>/<file>.jpg

Each line holds 207 space-separated fields: 98 × (x, y) (196), the detection rectangle
``x_min y_min x_max y_max`` (4), six 0/1 attribute flags ``pose expression illumination
make-up occlusion blur`` (6), and the image path relative to ``WFLW_images/`` (1). The subset
files repeat the test lines that carry the attribute. One image may appear on several lines
(one per face).

Conventions: coordinates are used as written (0-based pixel centres, as HRNet, mmpose and
H3R read them); ``Sample.box`` is the official rectangle (H3R's P2), ``Sample.box_p1`` the
tight landmark box (P1); the NME normaliser is the inter-ocular distance between the outer
eye corners 60 and 72, and ``nme_ip`` uses the pupils 96 and 97.
"""
from __future__ import annotations

import os

import numpy as np

from h3r import metrics
from h3r.data.faces import FaceDataset, require_file
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

LIST_DIR = os.path.join("WFLW_annotations", "list_98pt_rect_attr_train_test")
SUBSET_DIR = os.path.join("WFLW_annotations", "list_98pt_test")
IMAGE_DIR = "WFLW_images"


def list_path(root: str, split: str) -> str:
    """The annotation list of ``split`` (``"train"`` or ``"test"``)."""
    return os.path.join(root, LIST_DIR, f"list_98pt_rect_attr_{split}.txt")


def subset_path(root: str, subset: str) -> str:
    """The official list of one test subset (e.g. ``"largepose"``)."""
    return os.path.join(root, SUBSET_DIR, f"list_98pt_test_{subset}.txt")


def read_wflw_list(path: str) -> dict[str, np.ndarray | list]:
    """Parse one WFLW list file.

    Returns ``keypoints (N, 98, 2)``, ``rects (N, 4)`` (x_min, y_min, x_max, y_max),
    ``attributes (N, 6)`` int8 and ``image_names`` (list of N paths relative to ``WFLW_images/``),
    ``lines`` (1-based line numbers). Raises ``ValueError`` naming ``path:line`` for a malformed line.
    """
    keypoints, rects, attributes, names, line_numbers = [], [], [], [], []
    with open(require_file(path, "WFLW annotation list")) as file:
        for number, line in enumerate(file, start=1):
            fields = line.split()
            if not fields:
                continue
            if len(fields) != WFLW_FIELDS:
                raise ValueError(
                    f"{path}:{number}: expected {WFLW_FIELDS} space-separated fields (196 coordinates, 4 rectangle "
                    f"values, 6 attribute flags, image name), got {len(fields)}"
                )
            try:
                values = np.array(fields[:-1], dtype=np.float64)
            except ValueError as error:
                raise ValueError(f"{path}:{number}: non-numeric coordinate, rectangle or attribute: {error}") from None
            flags = values[200:206]
            if not np.isin(flags, (0, 1)).all():
                raise ValueError(f"{path}:{number}: attribute flags must be 0 or 1, got {flags.astype(int).tolist()}")
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


class WFLW(FaceDataset):
    """WFLW ``split="train"`` (7,500 faces) or ``"test"`` (2,500), or one test ``subset``
    (``"largepose" | "expression" | "illumination" | "makeup" | "occlusion" | "blur"``) read
    from its official list. Evaluating the full test split also reports each attribute subset
    (``"largepose/nme"``, ...), selected by the attribute flags the subsets are built from.
    """

    name = "wflw"
    num_keypoints = WFLW_NUM_KEYPOINTS
    flip_pairs = WFLW_FLIP_PAIRS

    def __init__(self, root: str, split: str = "train", subset: str | None = None):
        if split not in ("train", "test"):
            raise ValueError(f"WFLW split: expected 'train' or 'test', got {split!r}")
        if subset is not None and (split != "test" or subset not in WFLW_ATTRIBUTES):
            raise ValueError(f"WFLW subset: expected one of {WFLW_ATTRIBUTES} with split='test', "
                             f"got {subset!r} with split={split!r}")
        self.root = os.fspath(root)
        self.subset = subset
        path = list_path(self.root, split) if subset is None else subset_path(self.root, subset)
        table = read_wflw_list(path)
        image_dir = os.path.join(self.root, IMAGE_DIR)
        for name, number in zip(table["image_names"], table["lines"]):
            if not os.path.isfile(os.path.join(image_dir, name)):
                raise FileNotFoundError(f"{path}:{number}: image {os.path.join(image_dir, name)} not found")
        keypoints = table["keypoints"]
        metas = [
            {"image_path": name, "attributes": dict(zip(WFLW_ATTRIBUTES, flags.tolist())), "annotation": f"{path}:{number}"}
            for name, flags, number in zip(table["image_names"], table["attributes"], table["lines"])
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
