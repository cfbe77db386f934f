"""Datasets: one reader per on-disk format, the synthetic sets, and :func:`open_dataset`.

Every dataset follows :class:`~h3r.data.base.LandmarkDataset` and returns
:class:`~h3r.data.base.Sample` items (keypoints in 0-based image pixels, x before y).
Readers are imported when first opened, so a missing optional dependency of one format
does not break the others.
"""
from __future__ import annotations

import os

from h3r.data.base import LandmarkDataset, Sample, landmark_box
from h3r.data.checks import verify_readable

DATASET_NAMES = ("wflw", "300w", "pts", "cofw", "aflw", "mpii", "coco", "synthetic-face", "synthetic-pose")

# What ``root`` must hold, shown when it is missing.
EXPECTED_LAYOUT = {
    "wflw": "the WFLW folder with WFLW_annotations/ and WFLW_images/",
    "300w": "the iBUG 300W download with afw/, helen/, lfpw/, ibug/ and 300W/ (folders of images + .pts)",
    "pts": "a folder tree of images with a .pts file beside each",
    "cofw": "COFW_train_color.mat and COFW_test_color.mat",
    "aflw": "AFLWinfo_release.mat + flickr/, or HRNet's face_landmarks_aflw_*.csv + images/",
    "mpii": "annot/{train,valid,test}.json, annot/gt_valid.mat and images/",
    "coco": "annotations/person_keypoints_{train,val}2017.json and {train,val}2017/",
}


def open_dataset(name: str, root: str | None = None, split: str = "train", **options) -> LandmarkDataset:
    """Open dataset ``name`` (one of ``DATASET_NAMES``) from ``root`` for ``split``.

    ``options`` go to the reader, e.g. ``subset="largepose"`` for WFLW, ``source="csv"`` for
    AFLW, ``detections=...`` for COCO, ``size=``/``seed=`` for the synthetic sets (which take
    no ``root``).
    """
    if name not in DATASET_NAMES:
        raise ValueError(f"dataset name: expected one of {DATASET_NAMES}, got {name!r}")
    if name.startswith("synthetic-"):
        if root is not None:
            raise ValueError(f"{name} is generated in memory and takes no root (got root={root!r})")
        if name == "synthetic-face":
            from h3r.data.synthetic import SyntheticFaces

            return SyntheticFaces(split=split, **options)
        from h3r.data.synthetic import SyntheticPeople

        return SyntheticPeople(split=split, **options)
    if root is None:
        raise ValueError(f"{name}: root is required: the folder holding {EXPECTED_LAYOUT[name]}")
    if not os.path.isdir(root):
        raise FileNotFoundError(f"{name}: data root {root} is not a folder; expected the folder holding {EXPECTED_LAYOUT[name]}")
    if name == "wflw":
        from h3r.data.wflw import WFLW

        return WFLW(root, split, **options)
    if name == "300w":
        from h3r.data.pts import W300

        return W300(root, split, **options)
    if name == "pts":
        from h3r.data.pts import PtsFolder

        return PtsFolder(root, split, **options)
    if name == "cofw":
        from h3r.data.cofw import COFW

        return COFW(root, split, **options)
    if name == "aflw":
        from h3r.data.aflw import AFLW

        return AFLW(root, split, **options)
    if name == "mpii":
        from h3r.data.mpii import MPIIDataset

        return MPIIDataset(root, split, **options)
    from h3r.data.coco import COCODataset

    return COCODataset(root, split, **options)


__all__ = ["DATASET_NAMES", "LandmarkDataset", "Sample", "landmark_box", "open_dataset", "verify_readable"]
