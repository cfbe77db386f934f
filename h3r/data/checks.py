"""Checks the readers share: files that must exist, text that must be UTF-8
(:func:`read_text`), numbers that must be finite, images that must exist, and
:func:`verify_readable`, which decodes the first images of a dataset before training starts.

The rule for non-finite annotation values (``nan``, ``inf``, as text tokens, as JSON
``NaN``/``Infinity`` or stored in a ``.mat``) is the same in every reader: they are rejected
with a ``ValueError`` that names the file and the line, record or variable. A value is only
exempt where the format itself marks it as not annotated, because the reader then does not
use it (MPII ``joints_vis`` 0, MPII ``gt_valid.mat`` ``jnt_missing`` 1, COCO ``v = 0``); such a
point is "not visible" and its coordinates are set to 0. No format uses ``nan`` as its
not-annotated marker, and none of the face formats (WFLW, ``.pts``, COFW, AFLW) has such a
marker: every face landmark is annotated, so a non-finite one is an error.
"""
from __future__ import annotations

import functools
import numbers
import os
import re
from typing import Any, Iterable, Sequence

import numpy as np

from h3r.data.cache import CachedImage


def require_file(path: str | os.PathLike, what: str) -> str:
    """``path`` as a string if it is a file, else ``FileNotFoundError`` saying what it should be."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{what} not found: {path}")
    return path


def read_text(path: str | os.PathLike, what: str) -> str:
    """The text of the file ``path`` (a ``what``: named in errors), decoded as UTF-8; a leading
    byte-order mark (as Windows editors write one) is dropped. Bytes that are not UTF-8 are a
    ``ValueError`` naming ``path:line`` (e.g. a macOS ``._name`` resource file)."""
    with open(require_file(path, what), "rb") as file:
        data = file.read()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        line = len(re.split(rb"\r\n|\r|\n", data[:error.start]))  # the line ends read_lines splits at
        raise ValueError(f"{os.fspath(path)}:{line}: not UTF-8 text (byte 0x{data[error.start]:02x} at offset "
                         f"{error.start}); expected a {what}") from None


def read_lines(path: str | os.PathLike, what: str) -> list[str]:
    """The lines of :func:`read_text`, without their ends (``\\n``, ``\\r\\n`` or ``\\r``); element
    ``i`` is line ``i + 1``. A final line end starts no extra line."""
    lines = re.split(r"\r\n|\r|\n", read_text(path, what))
    if lines[-1] == "":
        lines.pop()
    return lines


def first_non_finite(values: np.ndarray) -> tuple[int, ...] | None:
    """The index of the first non-finite entry of ``values``, or ``None``."""
    bad = np.argwhere(~np.isfinite(np.asarray(values, dtype=np.float64)))
    return None if bad.size == 0 else tuple(int(i) for i in bad[0])


def require_finite(values: np.ndarray, where: str, what: str, names: Sequence[str] | None = None) -> None:
    """``ValueError`` ``"<where>: <what> <item> is <value> (non-finite ...)"`` if any entry of
    ``values`` is nan or ±inf. ``names`` labels the entries of a 1-D ``values``."""
    values = np.asarray(values, dtype=np.float64)
    if np.isfinite(values).all():
        return
    index = first_non_finite(values)
    if names is not None and len(index) == 1:
        item = names[index[0]]
    else:
        item = f"value {index[0] + 1}" if len(index) == 1 else f"entry {list(index)}"
    raise ValueError(f"{where}: {what}: {item} is {values[index]}; non-finite annotation values are rejected "
                     f"(docs/TRAINING.md, 'Non-finite values')")


def is_number(value: Any) -> bool:
    """A JSON number: ``int`` or ``float`` (not ``bool``, not a string)."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def number_array(value: Any, shape: tuple[int, ...], where: str, field: str, describe: str) -> np.ndarray:
    """``value`` (nested JSON lists) as a float64 array of ``shape``, every leaf a number;
    otherwise ``ValueError`` naming ``where`` and ``field`` (finiteness is checked by the caller)."""
    def plain(item: Any, depth: int) -> bool:  # the common case, checked fast
        if type(item) is not list or len(item) != shape[depth]:
            return False
        if depth == len(shape) - 1:
            return all(type(leaf) is float or type(leaf) is int for leaf in item)
        return all(plain(child, depth + 1) for child in item)

    if shape and plain(value, 0):
        return np.array(value, dtype=np.float64)

    def fail(detail: str) -> None:
        raise ValueError(f"{where}: {field} must be {describe}; {detail}")

    def walk(item: Any, depth: int, path: str) -> None:
        if depth == len(shape):
            if not is_number(item):
                fail(f"{field}{path} is {item!r} ({type(item).__name__}), not a number")
            return
        if not isinstance(item, (list, tuple)):
            fail(f"{field}{path} is {item!r}, not a list")
        if len(item) != shape[depth]:
            fail(f"{field}{path} has {len(item)} entries, expected {shape[depth]}")
        for position, child in enumerate(item):
            walk(child, depth + 1, f"{path}[{position}]")

    walk(value, 0, "")
    return np.asarray(value, dtype=np.float64).reshape(shape)


def matlab_string(value: Any) -> str | None:
    """The text of a MATLAB char array or of a cell holding one (at any nesting: scipy loads a
    cell of strings as object arrays of 1-element arrays), or ``None`` if it is not text."""
    while True:
        if isinstance(value, str):
            return value
        if isinstance(value, bytes):
            return value.decode("utf-8", errors="replace")
        array = np.asarray(value)
        if array.dtype.kind == "U" and array.size == 1:
            return str(array.reshape(-1)[0])
        if array.dtype != object or array.size != 1:
            return None
        value = array.reshape(-1)[0]


def find_image(folder: str, name: str, aliases: Sequence[str], where: str) -> str:
    """``folder/name``, else the first ``folder/alias`` that exists (other names the file may have
    in some copies of a dataset); ``FileNotFoundError`` ``"<where>: image <path> not found"``
    naming every path tried."""
    candidates = list(dict.fromkeys(os.path.join(folder, candidate) for candidate in (name, *aliases)))
    for candidate in candidates:
        if os.path.isfile(candidate):
            return candidate
    tried = f" (nor {', '.join(candidates[1:])})" if len(candidates) > 1 else ""
    raise FileNotFoundError(f"{where}: image {candidates[0]} not found{tried}")


def require_images(entries: Iterable[tuple[str | os.PathLike, str]]) -> None:
    """Every ``(image path, where)`` must be an existing file (a ``stat``, no decoding);
    otherwise ``FileNotFoundError`` ``"<where>: image <path> not found"``."""
    for path, where in entries:
        if not os.path.isfile(path):
            raise FileNotFoundError(f"{where}: image {os.fspath(path)} not found")


def _describe_loader(loader: Any) -> str:
    if isinstance(loader, CachedImage):
        loader = loader.decode
    if isinstance(loader, functools.partial):
        return ", ".join(str(argument) for argument in loader.args)
    return repr(loader)


def require_items(dataset, root: str | None = None) -> None:
    """Refuse a dataset with no items (an annotation file without a usable record, detections all below
    the threshold ...): training and evaluation would fail later, far from the cause."""
    if len(dataset) == 0:
        label = f"{getattr(dataset, 'name', type(dataset).__name__)} {getattr(dataset, 'split', '')}".strip()
        raise ValueError(f"{label}{f' ({root})' if root else ''}: the split has no items (no annotated record "
                         f"the reader could use)")


def require_mirror(dataset, option: str, consequence: str) -> None:
    """Refuse ``option`` (a flip test, flip augmentation) on a dataset whose left/right landmark pairs
    are unknown (``mirror_known`` False): ``consequence`` says what would go wrong and how to avoid it."""
    if not dataset.mirror_known:
        raise ValueError(f"{option}: the left/right pairs of {dataset.name}'s {dataset.num_keypoints} landmarks are "
                         f"unknown, so {consequence}")


def verify_readable(dataset, count: int | None = 1) -> None:
    """Decode the images of the first ``count`` items of ``dataset`` (all items for ``None``).

    Raises ``ValueError`` naming the dataset, the item and the image file (or ``.mat`` variable)
    when one is missing, cannot be decoded, or does not decode to an ``(H, W, 3)`` ``uint8``
    image. Call it for each split before the first training step: the readers check that
    images exist when a dataset is opened, but only a decode shows that a file is readable.
    """
    if count is not None and (isinstance(count, bool) or not isinstance(count, int) or count < 0):
        raise ValueError(f"count: expected a non-negative int or None, got {count!r}")
    total = len(dataset) if count is None else min(count, len(dataset))
    label = f"{getattr(dataset, 'name', type(dataset).__name__)} {getattr(dataset, 'split', '')}".strip()
    for index in range(total):
        sample = dataset[index]
        source = _describe_loader(sample.load_image)
        try:
            image = sample.image()
        except (OSError, ValueError) as error:
            raise ValueError(f"{label}: item {index}: cannot read image {source}: {error}") from error
        image = np.asarray(image)
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3 or 0 in image.shape:
            raise ValueError(f"{label}: item {index}: image {source} decoded to {image.dtype} {image.shape}, "
                             f"expected (H, W, 3) uint8")
