"""Write face samples in the real on-disk formats the readers expect.

These are the readers' inverses: tests generate files with them, and a user can see exactly
what a reader wants. Every writer takes :class:`~h3r.data.base.Sample` objects (keypoints
0-based image pixels; ``box`` x1, y1, x2, y2; ``image()`` RGB ``uint8``, or ``(H, W)`` for a grey
image) and converts them to the format's own conventions (1-based ``.pts`` and MATLAB files,
AFLW's ``[x1, x2, y1, y2]`` box order, ...). ``meta["image_path"]``, when present, names the
image file (so several faces can share one image); otherwise a name is made up.
"""
from __future__ import annotations

import csv
import os
import time
from typing import Sequence

import h5py
import numpy as np
import scipy.io

from h3r.data.aflw import AFLW_CSV, AFLW_MAT, AFLW_NUM_KEYPOINTS
from h3r.data.base import Sample
from h3r.data.cofw import COFW_FILES, COFW_NUM_KEYPOINTS, COFW_VARIABLES
from h3r.data.images import write_image
from h3r.data.pts import W300_NUM_KEYPOINTS, W300_SPLITS, write_pts
from h3r.data.wflw import IMAGE_DIR, SUBSET_DIR, WFLW_ATTRIBUTES, WFLW_NUM_KEYPOINTS, list_path, subset_path


def _check_keypoints(samples: Sequence[Sample], count: int, format_name: str) -> None:
    for index, sample in enumerate(samples):
        if np.shape(sample.keypoints) != (count, 2):
            raise ValueError(f"samples[{index}]: {format_name} needs ({count}, 2) keypoints, got {np.shape(sample.keypoints)}")


def _write_images(image_root: str, names: Sequence[str], samples: Sequence[Sample]) -> None:
    """Write each distinct image once (faces sharing ``image_path`` share the file)."""
    written = set()
    for name, sample in zip(names, samples):
        if name not in written:
            write_image(os.path.join(image_root, name), sample.image())
            written.add(name)


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:.6f}"


def write_wflw(root: str, split: str, samples: Sequence[Sample]) -> str:
    """Write ``WFLW_annotations/list_98pt_rect_attr_<split>.txt`` and the images under ``WFLW_images/``;
    for ``split="test"`` also ``list_98pt_test/list_98pt_test.txt`` and one list per attribute subset.

    A line of the main list has 207 fields: 98 × (x, y), the rectangle from ``sample.box``, the
    six flags from ``meta["attributes"]`` (a dict by name, or a sequence in file order; default
    all 0), the image path. A line of the ``list_98pt_test/`` files has 197 fields, as the
    official ones: the same 196 coordinates and the image path (a subset file holds the faces
    whose flag is 1). Returns the main list's path.
    """
    if split not in ("train", "test"):
        raise ValueError(f"split: expected 'train' or 'test', got {split!r}")
    _check_keypoints(samples, WFLW_NUM_KEYPOINTS, "WFLW")
    names, lines, subset_lines, flags = [], [], [], []
    for index, sample in enumerate(samples):
        name = sample.meta.get("image_path", f"0--Generated/{split}_{index:05d}.jpg")
        attributes = sample.meta.get("attributes", {})
        if isinstance(attributes, dict):
            attributes = [attributes.get(attribute, 0) for attribute in WFLW_ATTRIBUTES]
        coordinates = [f"{value:.6f}" for value in np.asarray(sample.keypoints, dtype=np.float64).reshape(-1)]
        fields = coordinates + [_number(value) for value in np.asarray(sample.box, dtype=np.float64)]
        fields += [str(int(flag)) for flag in attributes]
        fields.append(name)
        names.append(name)
        lines.append(" ".join(fields) + "\n")
        subset_lines.append(" ".join(coordinates + [name]) + "\n")
        flags.append([int(flag) for flag in attributes])
    path = list_path(root, split)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as file:
        file.writelines(lines)
    if split == "test":
        os.makedirs(os.path.join(root, SUBSET_DIR), exist_ok=True)
        with open(os.path.join(root, SUBSET_DIR, "list_98pt_test.txt"), "w") as file:
            file.writelines(subset_lines)
        for column, attribute in enumerate(WFLW_ATTRIBUTES):
            with open(subset_path(root, attribute), "w") as file:
                file.writelines(line for line, line_flags in zip(subset_lines, flags) if line_flags[column])
    _write_images(os.path.join(root, IMAGE_DIR), names, samples)
    return path


def write_pts_images(folder: str, samples: Sequence[Sample], extension: str = ".jpg") -> list[str]:
    """Write each sample as ``<stem><extension>`` + ``<stem>.pts`` in ``folder``; the stem comes
    from ``meta["image_path"]`` or is ``image_<index>``. Returns the ``.pts`` paths."""
    paths = []
    for index, sample in enumerate(samples):
        stem = os.path.splitext(os.path.basename(sample.meta.get("image_path", f"image_{index:04d}")))[0]
        write_image(os.path.join(folder, stem + extension), sample.image())
        paths.append(os.path.join(folder, stem + ".pts"))
        write_pts(paths[-1], sample.keypoints)
    return paths


def write_300w(root: str, folder: str, samples: Sequence[Sample]) -> list[str]:
    """Write 68-point samples into one folder of the 300W layout (``"afw"``, ``"helen/trainset"``,
    ``"lfpw/testset"``, ``"ibug"``, ``"300W/01_Indoor"``, ...): PNG for lfpw and 300W, JPEG
    elsewhere, as in the iBUG download. Returns the ``.pts`` paths."""
    known = sorted({member for members in W300_SPLITS.values() for member in members})
    if folder not in known:
        raise ValueError(f"folder: expected one of the 300W folders {known}, got {folder!r}")
    _check_keypoints(samples, W300_NUM_KEYPOINTS, "300W")
    extension = ".png" if folder.startswith(("lfpw", "300W")) else ".jpg"
    return write_pts_images(os.path.join(root, folder), samples, extension)


def _write_mat73_header(path: str) -> None:
    """The 128-byte MATLAB header in the 512-byte HDF5 user block of a v7.3 file."""
    text = (f"MATLAB 7.3 MAT-file, Platform: GLNXA64, Created on: {time.strftime('%a %b %d %H:%M:%S %Y')} "
            "HDF5 schema 1.00 .").encode("ascii")
    header = text.ljust(116, b" ") + b" " * 8 + b"\x00\x02" + b"IM"
    with open(path, "r+b") as file:
        file.write(header)


def _matlab_double(file: h5py.File, name: str, matrix: np.ndarray) -> None:
    """Store a MATLAB N×M double as MATLAB does: h5py shape (M, N)."""
    dataset = file.create_dataset(name, data=np.asarray(matrix, dtype=np.float64).T)
    dataset.attrs["MATLAB_class"] = np.bytes_("double")


def write_cofw(root: str, split: str, samples: Sequence[Sample], mat_format: str = "7.3",
               file_name: str | None = None) -> str:
    """Write ``COFW_<split>_color.mat`` (or ``file_name``, e.g. the grayscale release's
    ``COFW_<split>.mat``) in the MATLAB layout: ``IsTr``/``IsT`` an N×1 cell of uint8 images,
    ``phisTr``/``phisT`` N×87 ``[x (1-based), y (1-based), occlusion]``, ``bboxesTr``/``bboxesT``
    N×4 ``[x, y, w, h]``. Occlusion flags come from ``meta["occluded"]`` (default none).

    ``mat_format``: ``"7.3"`` HDF5 with the MATLAB header (h5py, as MATLAB's ``save -v7.3``),
    ``"7"`` or ``"5"`` the pre-HDF5 format, compressed or not (``scipy.io.savemat``, as MATLAB's
    ``save -v7`` / ``-v6``). Returns the file's path."""
    if split not in COFW_FILES:
        raise ValueError(f"split: expected 'train' or 'test', got {split!r}")
    if mat_format not in ("7.3", "7", "5"):
        raise ValueError(f"mat_format: expected '7.3', '7' or '5', got {mat_format!r}")
    _check_keypoints(samples, COFW_NUM_KEYPOINTS, "COFW")
    images_name, shapes_name, boxes_name = COFW_VARIABLES[split]
    phis, boxes, images = [], [], []
    for index, sample in enumerate(samples):
        points = np.asarray(sample.keypoints, dtype=np.float64) + 1.0
        occluded = np.asarray(sample.meta.get("occluded", np.zeros(COFW_NUM_KEYPOINTS)), dtype=np.float64)
        phis.append(np.concatenate([points[:, 0], points[:, 1], occluded]))
        x1, y1, x2, y2 = np.asarray(sample.box, dtype=np.float64)
        boxes.append([x1 + 1.0, y1 + 1.0, x2 - x1, y2 - y1])
        image = np.asarray(sample.image())
        if image.dtype != np.uint8 or image.ndim not in (2, 3):
            raise ValueError(f"samples[{index}]: expected a uint8 (H, W) or (H, W, 3) image, got {image.dtype} {image.shape}")
        images.append(image)
    phis = np.array(phis).reshape(len(samples), 3 * COFW_NUM_KEYPOINTS)
    boxes = np.array(boxes).reshape(len(samples), 4)
    path = os.path.join(root, COFW_FILES[split] if file_name is None else file_name)
    os.makedirs(root, exist_ok=True)
    if mat_format != "7.3":
        cell = np.empty((len(images), 1), dtype=object)  # filled one by one: equal shapes must not stack
        for index, image in enumerate(images):
            cell[index, 0] = image
        scipy.io.savemat(path, {images_name: cell, shapes_name: phis, boxes_name: boxes}, format="5",
                         do_compression=mat_format == "7")
        return path
    with h5py.File(path, "w", userblock_size=512) as file:
        references = file.create_group("#refs#")
        cell = file.create_dataset(images_name, (1, len(images)), dtype=h5py.ref_dtype)
        cell.attrs["MATLAB_class"] = np.bytes_("cell")
        for index, image in enumerate(images):
            stored = references.create_dataset(f"image{index}", data=image.T)  # (H, W, 3) → MATLAB's (3, W, H)
            stored.attrs["MATLAB_class"] = np.bytes_("uint8")
            cell[0, index] = stored.ref
        _matlab_double(file, shapes_name, phis)
        _matlab_double(file, boxes_name, boxes)
    _write_mat73_header(path)
    return path


def _aflw_name(sample: Sample, index: int) -> str:
    return sample.meta.get("image_path", f"0/image{index:05d}.jpg")


def write_aflw_mat(root: str, train: Sequence[Sample], test: Sequence[Sample], seed: int = 0) -> str:
    """Write ``AFLWinfo_release.mat`` (``scipy.io.savemat``) and the images under ``flickr/``.

    The faces are stored in a shuffled order (``seed``) and ``ra`` (1-based) lists the training
    faces first, then the test faces, so reading with ``train_size=len(train)`` returns both
    lists in the given order. ``mask_new`` is ``1 − meta["occluded"]`` (default all visible).
    Returns the file's path.
    """
    samples = list(train) + list(test)
    _check_keypoints(samples, AFLW_NUM_KEYPOINTS, "AFLW")
    storage = np.random.default_rng(seed).permutation(len(samples))  # storage[j] = row of face j
    data = np.zeros((len(samples), 2 * AFLW_NUM_KEYPOINTS))
    bbox = np.zeros((len(samples), 4))
    mask = np.ones((len(samples), AFLW_NUM_KEYPOINTS))
    names = np.empty((len(samples), 1), dtype=object)
    for face, (row, sample) in enumerate(zip(storage, samples)):
        points = np.asarray(sample.keypoints, dtype=np.float64)
        data[row] = np.concatenate([points[:, 0], points[:, 1]])
        x1, y1, x2, y2 = np.asarray(sample.box, dtype=np.float64)
        bbox[row] = [x1, x2, y1, y2]
        mask[row] = 1.0 - np.asarray(sample.meta.get("occluded", np.zeros(AFLW_NUM_KEYPOINTS)), dtype=np.float64)
        names[row, 0] = _aflw_name(sample, face)
    path = os.path.join(root, AFLW_MAT)
    os.makedirs(root, exist_ok=True)
    scipy.io.savemat(path, {"bbox": bbox, "data": data, "mask_new": mask, "nameList": names,
                            "ra": (storage + 1.0)[None, :]})
    _write_images(os.path.join(root, "flickr"), [_aflw_name(s, i) for i, s in enumerate(samples)], samples)
    return path


def write_aflw_csv(root: str, split: str, samples: Sequence[Sample]) -> str:
    """Write HRNet's ``face_landmarks_aflw_<split>.csv`` (``split`` = ``train``, ``test`` or
    ``frontal``) and the images under ``images/``. The box is written as its centre and
    ``box_size = max(w, h)``, ``scale = box_size / 200``. Returns the csv's path."""
    if split not in AFLW_CSV:
        raise ValueError(f"split: expected one of {tuple(AFLW_CSV)}, got {split!r}")
    _check_keypoints(samples, AFLW_NUM_KEYPOINTS, "AFLW")
    header = ["image_name", "scale", "box_size", "center_w", "center_h"]
    header += [f"original_{index}_{axis}" for index in range(AFLW_NUM_KEYPOINTS) for axis in "xy"]
    path = os.path.join(root, AFLW_CSV[split])
    os.makedirs(root, exist_ok=True)
    names = [_aflw_name(sample, index) for index, sample in enumerate(samples)]
    with open(path, "w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(header)
        for name, sample in zip(names, samples):
            x1, y1, x2, y2 = np.asarray(sample.box, dtype=np.float64)
            box_size = max(x2 - x1, y2 - y1)
            row = [name, f"{box_size / 200:.6f}", f"{box_size:.6f}", f"{(x1 + x2) / 2:.6f}", f"{(y1 + y2) / 2:.6f}"]
            row += [f"{value:.6f}" for value in np.asarray(sample.keypoints, dtype=np.float64).reshape(-1)]
            writer.writerow(row)
    _write_images(os.path.join(root, "images"), names, samples)
    return path
