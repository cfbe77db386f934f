"""Datasets: one reader per on-disk format, the synthetic sets, and :func:`open_dataset`.

Every dataset follows :class:`~h3r.data.base.LandmarkDataset` and returns
:class:`~h3r.data.base.Sample` items (keypoints in 0-based image pixels, x before y).
Readers are imported when first opened, so a missing optional dependency of one format
does not break the others.
"""
from __future__ import annotations

import importlib
import inspect
import numbers
import os
from typing import Any

import numpy as np

from h3r.data.base import LandmarkDataset, Sample, landmark_box
from h3r.data.checks import require_items, require_mirror, verify_readable


# What ``root`` must hold, shown when it is missing.
EXPECTED_LAYOUT = {
    "wflw": "the WFLW folder with WFLW_annotations/ and WFLW_images/, or HRNet's face_landmarks_wflw_*.csv + images/",
    "300w": ("the iBUG 300W download with afw/, helen/, lfpw/, ibug/ and 300W/ (folders of images + .pts), "
             "or HRNet's face_landmarks_300w_*.csv + images/"),
    "pts": "a folder tree of images with a .pts file beside each",
    "cofw": "COFW_train_color.mat and COFW_test_color.mat (or the grayscale COFW_train.mat and COFW_test.mat)",
    "aflw": "AFLWinfo_release.mat + flickr/, or HRNet's face_landmarks_aflw_*.csv + images/",
    "mpii": "annot/{train,valid,test}.json, annot/gt_valid.mat and images/",
    "coco": "annotations/person_keypoints_{train,val}2017.json and {train,val}2017/",
}


# The reader class behind each dataset name (imported when first used: some need h5py or pycocotools).
READERS = {"wflw": ("h3r.data.wflw", "WFLW"), "300w": ("h3r.data.pts", "W300"), "pts": ("h3r.data.pts", "PtsFolder"),
           "cofw": ("h3r.data.cofw", "COFW"), "aflw": ("h3r.data.aflw", "AFLW"),
           "mpii": ("h3r.data.mpii", "MPIIDataset"), "coco": ("h3r.data.coco", "COCODataset"),
           "synthetic-face": ("h3r.data.synthetic", "SyntheticFaces"),
           "synthetic-pose": ("h3r.data.synthetic", "SyntheticPeople")}
DATASET_NAMES = tuple(READERS)


def reader_class(name: str) -> type:
    """The class that reads dataset ``name`` (one of ``DATASET_NAMES``)."""
    module, class_name = READERS[name]
    return getattr(importlib.import_module(module), class_name)


def open_dataset(name: str, root: str | None = None, split: str = "train", **options) -> LandmarkDataset:
    """Open dataset ``name`` (one of ``DATASET_NAMES``) from ``root`` for ``split``.

    ``options`` go to the reader, e.g. ``subset="largepose"`` for WFLW, ``source="csv"`` for
    WFLW, 300W or AFLW (HRNet's files), ``detections=...`` for COCO, ``size=``/``seed=`` for the synthetic sets (which take
    no ``root``).
    """
    if name not in DATASET_NAMES:
        raise ValueError(f"dataset name: expected one of {DATASET_NAMES}, got {name!r}")
    if name.startswith("synthetic-"):
        if root is not None:
            raise ValueError(f"{name} is generated in memory and takes no root (got root={root!r})")
        return reader_class(name)(split=split, **options)
    if root is None:
        raise ValueError(f"{name}: root is required: the folder holding {EXPECTED_LAYOUT[name]}")
    if not os.path.isdir(root):
        raise FileNotFoundError(f"{name}: data root {root} is not a folder; expected the folder holding {EXPECTED_LAYOUT[name]}")
    return reader_class(name)(root, split, **options)


def check_reader_options(dataset: str, options: dict[str, Any], what: str = "options") -> None:
    """Refuse ``options`` that the reader of ``dataset`` does not take, listing the ones it does.

    Called before anything is written (``h3r train``, ``h3r eval``), so a typo in
    ``--train-option`` is one sentence rather than a ``TypeError`` from the reader.
    """
    if not options or dataset not in READERS:
        return
    try:
        reader = reader_class(dataset)
    except (ImportError, AttributeError):  # opening the dataset reports a missing dependency itself
        return
    parameters = inspect.signature(reader).parameters.values()
    if any(parameter.kind is inspect.Parameter.VAR_KEYWORD for parameter in parameters):
        return
    accepted = [parameter.name for parameter in parameters if parameter.name not in ("self", "root", "split")
                and parameter.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)]
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise ValueError(f"{what}: the {dataset} reader ({reader.__name__}) takes no option "
                         f"{', '.join(map(repr, unknown))}; its options: {', '.join(accepted) or 'none'}"
                         f"{' (root and split have their own settings)' if {'root', 'split'} & set(unknown) else ''}")
    annotations = {parameter.name: parameter.annotation for parameter in parameters}
    for name, value in options.items():
        if not _has_annotated_type(value, annotations[name]):
            raise ValueError(f"{what}: the {dataset} reader's option {name} expects {annotations[name]}, "
                             f"got {type(value).__name__} {value!r}")


# The types a reader's option annotation names (they are strings: the readers use postponed annotations).
_OPTION_TYPES = {"int": (numbers.Integral,), "float": (numbers.Real,), "bool": (bool, np.bool_), "str": (str,),
                 "None": (type(None),), "os.PathLike": (os.PathLike,), "list[dict]": (list,)}


def _has_annotated_type(value: Any, annotation: Any) -> bool:
    """Whether ``value`` has one of the types of the annotation ``"int | None"`` (True where an annotation is
    not one of :data:`_OPTION_TYPES`' unions: not checked). A bool is not taken for an int or a float."""
    if not isinstance(annotation, str):
        return True
    names = [name.strip() for name in annotation.split("|")]
    if not all(name in _OPTION_TYPES for name in names):
        return True
    allowed = tuple(kind for name in names for kind in _OPTION_TYPES[name])
    if isinstance(value, (bool, np.bool_)):
        return bool in allowed
    return isinstance(value, allowed)


__all__ = ["DATASET_NAMES", "READERS", "LandmarkDataset", "Sample", "check_reader_options", "landmark_box",
           "open_dataset", "reader_class", "require_items", "require_mirror", "verify_readable"]
