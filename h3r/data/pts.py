"""iBUG ``.pts`` landmark files: the 300W benchmark (68 landmarks, datasets.md §2) and any
folder tree of images with ``.pts`` files beside them.

A ``.pts`` file reads::

    version: 1
    n_points:  68
    {
    1283.598566 276.387616
    ...                       (n_points lines "x y")
    }

Its coordinates are **1-based** (MATLAB convention, as menpo and H3R's 300W script assume);
:func:`read_pts` returns them 0-based (one subtracted), :func:`write_pts` adds it back.
"""
from __future__ import annotations

import os

import numpy as np

from h3r import metrics
from h3r.data.base import landmark_box
from h3r.data.cofw import COFW_FLIP_PAIRS, COFW_INTER_OCULAR, COFW_NUM_KEYPOINTS, COFW_PUPILS
from h3r.data.faces import FaceDataset
from h3r.data.checks import read_lines, require_finite
from h3r.data.hrnet_csv import hrnet_face_items, pick_source
from h3r.data.images import IMAGE_EXTENSIONS, image_loader
from h3r.data.wflw import WFLW_FLIP_PAIRS, WFLW_INTER_OCULAR, WFLW_NUM_KEYPOINTS, WFLW_PUPILS

W300_NUM_KEYPOINTS = 68
W300_FLIP_PAIRS = (
    (0, 16), (1, 15), (2, 14), (3, 13), (4, 12), (5, 11), (6, 10), (7, 9), (17, 26), (18, 25), (19, 24),
    (20, 23), (21, 22), (31, 35), (32, 34), (36, 45), (37, 44), (38, 43), (39, 42), (40, 47), (41, 46),
    (48, 54), (49, 53), (50, 52), (55, 59), (56, 58), (60, 64), (61, 63), (65, 67),
)
W300_INTER_OCULAR = (36, 45)  # outer eye corners
W300_PUPILS = (tuple(range(36, 42)), tuple(range(42, 48)))  # eye centres = means of the eye contours

# The standard splits as folders of the iBUG download (SAN / PIPNet; sizes 3148 / 554 / 135 / 689 / 600).
W300_SPLITS = {
    "train": ("afw", "helen/trainset", "lfpw/trainset"),
    "common": ("helen/testset", "lfpw/testset"),
    "challenging": ("ibug",),
    "full": ("helen/testset", "lfpw/testset", "ibug"),
    "test": ("300W/01_Indoor", "300W/02_Outdoor"),  # the 600-image private test set
}
W300_SUBSETS = {
    "full": {"common": ("helen/testset", "lfpw/testset"), "challenging": ("ibug",)},
    "test": {"indoor": ("300W/01_Indoor",), "outdoor": ("300W/02_Outdoor",)},
}
# HRNet's csv of each split (HRNet-Facial-Landmark-Detection data/300w/; images under images/),
# and the folder its image paths start with for each subset (its private test set is under Test/).
W300_CSV = {"train": "face_landmarks_300w_train.csv", "common": "face_landmarks_300w_valid_common.csv",
            "challenging": "face_landmarks_300w_valid_challenge.csv", "full": "face_landmarks_300w_valid.csv",
            "test": "face_landmarks_300w_test.csv"}
W300_CSV_SUBSETS = {
    "full": {"common": ("helen/testset", "lfpw/testset"), "challenging": ("ibug",)},
    "test": {"indoor": ("Test/01_Indoor", "300W/01_Indoor"), "outdoor": ("Test/02_Outdoor", "300W/02_Outdoor")},
}


# HRNet's 300W csv files name two kinds of image otherwise than the iBUG download does: one ibug
# image whose file name has a space (FaRL's ibug300w.py maps it too), and the private test set,
# under Test/ where the download has 300W/. The name as written is tried first.
W300_CSV_RENAMED = {"ibug/image_092_01.jpg": "ibug/image_092 _01.jpg"}
W300_CSV_TEST_PREFIX = ("Test/", "300W/")


def w300_csv_aliases(name: str) -> tuple[str, ...]:
    """The names the image of HRNet's 300W csv name ``name`` may have in the iBUG download."""
    name = name.replace("\\", "/")
    if name in W300_CSV_RENAMED:
        return (W300_CSV_RENAMED[name],)
    written, official = W300_CSV_TEST_PREFIX
    return (official + name[len(written):],) if name.startswith(written) else ()


def read_pts(path: str) -> np.ndarray:
    """Landmarks ``(n_points, 2)`` float32 of a ``.pts`` file, converted to 0-based pixels.

    Raises ``ValueError`` naming ``path:line`` for a malformed file, including a non-finite
    coordinate (``nan``, ``inf``).
    """
    lines = [line.strip() for line in read_lines(path, ".pts file")]
    while lines and not lines[-1]:
        lines.pop()
    if len(lines) < 3 or not lines[0].startswith("version:") or not lines[1].startswith("n_points:") or lines[2] != "{":
        raise ValueError(f"{path}:1: expected the header 'version: 1', 'n_points: N', '{{' on lines 1-3")
    try:
        count = int(lines[1].split(":", 1)[1])
    except ValueError:
        raise ValueError(f"{path}:2: n_points is not an integer: {lines[1]!r}") from None
    if count < 1:
        raise ValueError(f"{path}:2: n_points must be positive, got {count}")
    if len(lines) != count + 4 or lines[-1] != "}":
        raise ValueError(f"{path}:{len(lines)}: expected {count} point lines between '{{' and '}}' (n_points: {count}), "
                         f"got {len(lines) - 4} lines and last line {lines[-1]!r}")
    points = np.empty((count, 2), dtype=np.float64)
    for offset, line in enumerate(lines[3:-1]):
        fields = line.split()
        try:
            if len(fields) != 2:
                raise ValueError(f"expected 2 values 'x y', got {len(fields)}")
            points[offset] = [float(fields[0]), float(fields[1])]
        except ValueError as error:
            raise ValueError(f"{path}:{offset + 4}: {error}") from None
        require_finite(points[offset], f"{path}:{offset + 4}", f"point {offset + 1}", names=("x", "y"))
    return (points - 1.0).astype(np.float32)


def write_pts(path: str, keypoints: np.ndarray) -> None:
    """Write 0-based ``(K, 2)`` landmarks as a 1-based ``.pts`` file (6 decimals)."""
    keypoints = np.asarray(keypoints, dtype=np.float64)
    if keypoints.ndim != 2 or keypoints.shape[1] != 2:
        raise ValueError(f"keypoints: expected (K, 2), got {keypoints.shape}")
    lines = ["version: 1", f"n_points:  {len(keypoints)}", "{"]
    lines += [f"{x:.6f} {y:.6f}" for x, y in keypoints + 1.0]
    lines.append("}")
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with open(path, "w") as file:
        file.write("\n".join(lines) + "\n")


# What archives made on macOS add: a folder of resource files, and a "._name" file beside each file.
MACOS_METADATA_FOLDER = "__MACOSX"
MACOS_METADATA_PREFIX = "._"


def find_annotated_images(folder: str, recursive: bool = False) -> list[tuple[str, str]]:
    """``(image path, .pts path)`` pairs, sorted, for every ``.pts`` under ``folder``.

    The image beside a ``.pts`` has the same stem and any extension of a format Pillow reads
    (``IMAGE_EXTENSIONS``: .jpg, .png, .bmp, .ppm, .pgm, .tif/.tiff, .gif, .webp, ..., in any
    case, e.g. ``.JPG``). Images without a ``.pts`` (e.g. the ``*_mirror.jpg`` of some 300W
    copies) are skipped, and so is macOS metadata (``__MACOSX/`` folders and ``._name`` files,
    which archives made on a Mac hold beside each file); a ``.pts`` without an image beside it, or
    with two (``a.jpg`` and ``a.png``), is an error naming it.
    """
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"folder of images and .pts files not found: {folder}")
    walk = os.walk(folder) if recursive else [(folder, [], os.listdir(folder))]
    pairs = []
    for directory, subdirectories, files in walk:
        subdirectories[:] = sorted(name for name in subdirectories if name != MACOS_METADATA_FOLDER)
        files = [name for name in files if not name.startswith(MACOS_METADATA_PREFIX)]
        images: dict[str, list[str]] = {}
        for file in sorted(files):
            stem, extension = os.path.splitext(file)
            if extension.lower() in IMAGE_EXTENSIONS and os.path.isfile(os.path.join(directory, file)):
                images.setdefault(stem, []).append(file)
        for file in sorted(files):
            stem, extension = os.path.splitext(file)
            if extension.lower() != ".pts":
                continue
            candidates = images.get(stem, [])
            if not candidates:
                raise FileNotFoundError(f"{os.path.join(directory, file)}: no image {stem}.<ext> beside it "
                                        "(any format Pillow reads: .jpg, .png, .bmp, .ppm, .pgm, .tif, .gif, .webp, ... in any case)")
            if len(candidates) > 1:
                raise ValueError(f"{os.path.join(directory, file)}: several images share its stem: "
                                 f"{', '.join(candidates)}; keep one")
            pairs.append((os.path.join(directory, candidates[0]), os.path.join(directory, file)))
    return pairs


class W300(FaceDataset):
    """300W from the iBUG download (``root`` holds ``afw/``, ``helen/``, ``lfpw/``, ``ibug/``, ``300W/``).

    Splits: ``train`` (afw + helen/trainset + lfpw/trainset, 3,148), ``common`` (helen/testset +
    lfpw/testset, 554), ``challenging`` (ibug, 135), ``full`` (common + challenging, 689; also
    reports ``common/…`` and ``challenging/…``), ``test`` (the private 300W set
    ``300W/{01_Indoor,02_Outdoor}``, 600; also reports ``indoor/…`` and ``outdoor/…``).

    NME normaliser: inter-ocular, outer eye corners 36 and 45; ``nme_ip`` uses the inter-pupil
    distance between the centroids of the eye contours (36–41, 42–47). FR/AUC are reported at
    0.05 (STAR), 0.08 (the 300W challenge) and 0.1. The ``.pts`` files give no face box, so
    ``Sample.box`` is the landmark box (P1, as H3R's 300W script).

    ``source="csv"``: HRNet's files instead (``root`` = HRNet's ``data/300w``):
    ``face_landmarks_300w_{train,valid_common,valid_challenge,valid,test}.csv`` for the splits
    above, images under ``images/`` (:mod:`h3r.data.hrnet_csv`; coordinates as written, as HRNet
    reads them; ``Sample.box`` is HRNet's square box of side ``200 * scale``); an image missing
    under its csv name is looked for under the iBUG download's (:func:`w300_csv_aliases`), so
    ``images/`` may hold the download as it is. Default: the iBUG folders where ``root`` has the
    split's, else the csv.
    """

    name = "300w"
    num_keypoints = W300_NUM_KEYPOINTS
    flip_pairs = W300_FLIP_PAIRS
    thresholds = (0.05, 0.08, 0.1)

    def __init__(self, root: str, split: str = "train", source: str | None = None):
        if split not in W300_SPLITS:
            raise ValueError(f"300W split: expected one of {tuple(W300_SPLITS)}, got {split!r}")
        self.root = os.fspath(root)
        folders = [os.path.join(self.root, folder) for folder in W300_SPLITS[split]]
        self.source = source = pick_source("300W", split, source, "pts", f"the iBUG folders {folders}",
                                           any(os.path.isdir(folder) for folder in folders),
                                           os.path.join(self.root, W300_CSV[split]))
        if source == "csv":
            self._init_from_csv(split)
            return
        images, keypoints, folders = [], [], []
        for folder in W300_SPLITS[split]:
            for image, pts in find_annotated_images(os.path.join(self.root, folder)):
                points = read_pts(pts)
                if len(points) != W300_NUM_KEYPOINTS:
                    raise ValueError(f"{pts}: expected {W300_NUM_KEYPOINTS} points for 300W, got {len(points)}")
                images.append(image)
                keypoints.append(points)
                folders.append(folder)
        if not images:
            raise FileNotFoundError(f"300W {split}: no .pts files in {[os.path.join(self.root, f) for f in W300_SPLITS[split]]}")
        keypoints = np.stack(keypoints)
        folders = np.array(folders)
        subsets = {name: np.isin(folders, members) for name, members in W300_SUBSETS.get(split, {}).items()}
        super().__init__(
            split=split,
            loaders=[image_loader(path) for path in images],
            keypoints=keypoints,
            boxes=np.stack([landmark_box(points) for points in keypoints]),
            normalisers=metrics.inter_ocular(keypoints, *W300_INTER_OCULAR),
            inter_pupil=metrics.inter_ocular(keypoints, *W300_PUPILS),
            metas=[{"image_path": os.path.relpath(path, self.root), "folder": folder} for path, folder in zip(images, folders)],
            subsets=subsets,
        )

    def _init_from_csv(self, split: str) -> None:
        table, items = hrnet_face_items(os.path.join(self.root, W300_CSV[split]), W300_NUM_KEYPOINTS,
                                        os.path.join(self.root, "images"), "300W csv", W300_INTER_OCULAR, W300_PUPILS,
                                        aliases=w300_csv_aliases)
        names = [name.replace("\\", "/") for name in table["names"]]
        subsets = {subset: np.array([any(name.startswith(folder + "/") for folder in folders) for name in names])
                   for subset, folders in W300_CSV_SUBSETS.get(split, {}).items()}
        super().__init__(split=split, subsets=subsets, **items)


# Layouts a generic .pts folder is recognised by: K → (flip pairs, inter-ocular pair, inter-pupil pair).
KNOWN_LAYOUTS = {
    W300_NUM_KEYPOINTS: (W300_FLIP_PAIRS, W300_INTER_OCULAR, W300_PUPILS),
    COFW_NUM_KEYPOINTS: (COFW_FLIP_PAIRS, COFW_INTER_OCULAR, COFW_PUPILS),
    WFLW_NUM_KEYPOINTS: (WFLW_FLIP_PAIRS, WFLW_INTER_OCULAR, WFLW_PUPILS),
}


class PtsFolder(FaceDataset):
    """Every image with a ``.pts`` beside it anywhere under ``root`` (sorted paths).

    All files must have the same number of points K. For K = 68 (300W), 98 (WFLW) and
    29 (COFW) the dataset's flip pairs and inter-ocular / inter-pupil normalisers apply;
    for any other K the flip pairs are unknown (``mirror_known`` False: no flip test) and
    the NME divides by √(w·h) of the landmark box (the box-size normaliser of H3R's
    AFLW2000 script). ``split`` is only a label.
    ``Sample.box`` is the landmark box (P1).
    """

    name = "pts"

    def __init__(self, root: str, split: str = "all"):
        self.root = os.fspath(root)
        pairs = find_annotated_images(self.root, recursive=True)
        if not pairs:
            raise FileNotFoundError(f"no .pts files under {self.root}")
        keypoints = [read_pts(pts) for _, pts in pairs]
        self.num_keypoints = len(keypoints[0])
        for (_, pts), points in zip(pairs, keypoints):
            if len(points) != self.num_keypoints:
                raise ValueError(f"{pts}: {len(points)} points, but {pairs[0][1]} has {self.num_keypoints}")
        keypoints = np.stack(keypoints)
        boxes = np.stack([landmark_box(points) for points in keypoints])
        layout = KNOWN_LAYOUTS.get(self.num_keypoints)
        if layout is None:
            self.flip_pairs, self.mirror_known = (), False
            normalisers = np.sqrt((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]))
            inter_pupil = None
        else:
            self.flip_pairs, ocular, pupils = layout
            normalisers = metrics.inter_ocular(keypoints, *ocular)
            inter_pupil = metrics.inter_ocular(keypoints, *pupils)
        super().__init__(
            split=split,
            loaders=[image_loader(image) for image, _ in pairs],
            keypoints=keypoints,
            boxes=boxes,
            normalisers=normalisers,
            inter_pupil=inter_pupil,
            metas=[{"image_path": os.path.relpath(image, self.root)} for image, _ in pairs],
        )
