"""HRNet's face-landmark csv files (HRNet-Facial-Landmark-Detection ``data/<dataset>/``), shared by
the WFLW, 300W and AFLW readers.

A file is a header row, then one row per face: ``image_name`` (relative to ``images/``), a few
numeric columns (300W and WFLW: ``scale, center_w, center_h``; AFLW: ``scale, box_size,
center_w, center_h``), then the landmarks ``x0, y0, x1, y1, ...``. ``scale`` is the side of the
face's square box over 200 (HRNet's convention: for 300W and WFLW the box is the tight landmark
box, rounded outwards to whole pixels, its larger side), centred on ``(center_w, center_h)``.
Coordinates are used as written, as HRNet's loaders use them.
"""
from __future__ import annotations

import csv
import io
import os
from typing import Callable, Sequence

import numpy as np

from h3r import metrics
from h3r.data.checks import find_image, read_text, require_finite
from h3r.data.images import image_loader

HRNET_SCALE_PIXELS = 200.0  # HRNet's box side = scale * 200
HRNET_COLUMNS = ("scale", "center_w", "center_h")  # between the image name and the landmarks (300W, WFLW)


def read_hrnet_csv(path: str, num_keypoints: int, columns: tuple[str, ...], what: str) -> dict:
    """The rows of an HRNet csv: ``names`` (image paths), one float64 ``(N,)`` array per name in
    ``columns`` (the numeric columns between the image name and the landmarks), ``keypoints``
    ``(N, num_keypoints, 2)`` float32 and ``lines`` (the rows' line numbers). Errors name ``path:line``."""
    width = 1 + len(columns) + 2 * num_keypoints
    names, rows, line_numbers = [], [], []
    reader = csv.reader(io.StringIO(read_text(path, what), newline=""))
    header = next(reader, None)
    if header is None or len(header) != width:
        raise ValueError(f"{path}:1: expected a header of {width} columns "
                         f"(image_name, {', '.join(columns)}, {num_keypoints} × (x, y))")
    for row in reader:
        if not row:
            continue
        if len(row) != width:
            raise ValueError(f"{path}:{reader.line_num}: expected {width} columns, got {len(row)}")
        try:
            values = np.array(row[1:], dtype=np.float64)
        except ValueError as error:
            raise ValueError(f"{path}:{reader.line_num}: non-numeric value: {error}") from None
        require_finite(values, f"{path}:{reader.line_num}", "values", names=header[1:])
        rows.append(values)
        names.append(row[0])
        line_numbers.append(reader.line_num)
    if not rows:
        raise ValueError(f"{path}: no rows after the header")
    values = np.stack(rows)
    table = {name: values[:, position] for position, name in enumerate(columns)}
    for name in ("scale", "box_size"):
        if name in table:
            bad = np.flatnonzero(~(table[name] > 0))
            if bad.size:
                raise ValueError(f"{path}:{line_numbers[bad[0]]}: {name} must be positive, got {table[name][bad[0]]}")
    table.update(names=names, lines=line_numbers,
                 keypoints=values[:, len(columns):].reshape(-1, num_keypoints, 2).astype(np.float32))
    return table


def square_boxes(centre: np.ndarray, side: np.ndarray) -> np.ndarray:
    """``(N, 4)`` ``x1, y1, x2, y2`` of squares of ``side`` ``(N,)`` centred on ``centre`` ``(N, 2)``."""
    half = np.asarray(side, dtype=np.float64)[:, None] / 2.0
    return np.concatenate([centre - half, centre + half], axis=1)


def hrnet_face_items(path: str, num_keypoints: int, image_dir: str, what: str, inter_ocular: tuple,
                     pupils: tuple, aliases: Callable[[str], Sequence[str]] = lambda name: ()) -> tuple[dict, dict]:
    """The rows of a 300W or WFLW csv (:func:`read_hrnet_csv`, its images checked to exist under
    ``image_dir``: :func:`~h3r.data.checks.find_image`, with the other names ``aliases(csv name)`` an image may have)
    and the :class:`~h3r.data.faces.FaceDataset` arguments for them: HRNet's square boxes, the
    inter-ocular normaliser and inter-pupil distance of the landmark pairs given. ``meta["image_path"]``
    is the name as the csv writes it."""
    table = read_hrnet_csv(path, num_keypoints, HRNET_COLUMNS, what)
    origins = [f"{path}:{number}" for number in table["lines"]]
    files = [find_image(image_dir, name, aliases(name), origin) for name, origin in zip(table["names"], origins)]
    keypoints = table["keypoints"]
    return table, {
        "loaders": [image_loader(file) for file in files],
        "keypoints": keypoints,
        "boxes": square_boxes(np.stack([table["center_w"], table["center_h"]], axis=1),
                              HRNET_SCALE_PIXELS * table["scale"]),
        "normalisers": metrics.inter_ocular(keypoints, *inter_ocular),
        "inter_pupil": metrics.inter_ocular(keypoints, *pupils),
        "metas": [{"image_path": name, "annotation": origin} for name, origin in zip(table["names"], origins)],
    }


def pick_source(dataset: str, split: str, source: str | None, official: str, official_files: str, found: bool,
                csv_file: str) -> str:
    """``source`` checked (``official`` or ``"csv"``), or chosen when None: ``official`` where its
    files (``official_files``, a description) are ``found``, else HRNet's csv where ``csv_file``
    exists, else ``FileNotFoundError`` naming both."""
    if source is None:
        if found:
            return official
        if os.path.isfile(csv_file):
            return "csv"
        raise FileNotFoundError(f"{dataset} {split}: neither {official_files} nor HRNet's {csv_file} exists")
    if source not in (official, "csv"):
        raise ValueError(f"{dataset} source: expected {official!r} (the official files) or 'csv' (HRNet's), "
                         f"got {source!r}")
    return source
