"""The item every dataset returns, and the small protocol every dataset follows.

Coordinates are in **image pixels, 0-based**, ``(x, y)`` with ``x`` the column:
the centre of the top-left pixel is ``(0, 0)``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Optional, Sequence

import numpy as np

if TYPE_CHECKING:
    from h3r.data.cache import SharedImages


@dataclass
class Sample:
    """One annotated instance (a face, or a person for the pose datasets).

    ``load_image`` decodes lazily: nothing is read from disk until :meth:`image` is called.
    """

    load_image: Callable[[], np.ndarray]  # -> (H, W, 3) uint8, RGB
    keypoints: np.ndarray  # (K, 2) float32, image pixels, 0-based, x before y
    visible: np.ndarray  # (K,) bool: annotated and usable for training
    box: np.ndarray  # (4,) float32 x1, y1, x2, y2: the box the crop is taken from (P2 where the dataset gives one, else P1)
    box_p1: np.ndarray  # (4,) float32 tight box of the annotated landmarks
    meta: dict[str, Any] = field(default_factory=dict)  # what the metric needs: normaliser, head box, area, image id ...

    def image(self) -> np.ndarray:
        return self.load_image()


def landmark_box(keypoints: np.ndarray, visible: np.ndarray | None = None) -> np.ndarray:
    """The P1 box: the tight ``(x1, y1, x2, y2)`` box of the (visible) landmarks."""
    points = keypoints if visible is None or not visible.any() else keypoints[visible]
    return np.array([*points.min(axis=0), *points.max(axis=0)], dtype=np.float32)


class LandmarkDataset:
    """What every dataset in :mod:`h3r.data` provides (real readers and synthetic sets alike).

    Attributes:
        name: e.g. ``"wflw"``.
        num_keypoints: K.
        flip_pairs: 0-based index pairs swapped by a horizontal flip.
        mirror_known: False where the landmark layout, hence ``flip_pairs``, is unknown (a
            ``.pts`` folder of an unrecognised K): a flip test or flip augmentation would
            average or mix left and right landmarks, so both are refused.
        split: the split this object holds.
        image_cache: where the dataset keeps its decoded images for every process, row ``i``
            holding item ``i``'s (the synthetic sets), or None.
    Methods:
        ``__len__``, ``__getitem__(i) -> Sample``,
        ``evaluate(predictions, indices=None) -> dict[str, float]``: the dataset's standard
        metrics for predictions ``(N, K, 2)`` in image pixels (0-based), one per item
        (``indices`` selects which items they belong to; default all, in order).
    """

    name: str
    num_keypoints: int
    flip_pairs: Sequence[tuple[int, int]]
    mirror_known: bool = True
    split: str
    image_cache: Optional[SharedImages] = None

    def __len__(self) -> int:  # pragma: no cover - protocol
        raise NotImplementedError

    def __getitem__(self, index: int) -> Sample:  # pragma: no cover - protocol
        raise NotImplementedError

    def evaluate(self, predictions: np.ndarray, indices: Sequence[int] | None = None) -> dict[str, float]:  # pragma: no cover
        raise NotImplementedError
