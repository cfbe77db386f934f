"""What the face readers (WFLW, 300W/.pts, COFW, AFLW) share: an in-memory table of
annotations with lazily decoded images, and the face evaluation (NME / FR / AUC).

Every face landmark in these datasets is annotated (occluded points carry an estimated
position), so ``Sample.visible`` is all True; occlusion flags, where a dataset has them,
are in ``meta["occluded"]``.
"""
from __future__ import annotations

from typing import Callable, Sequence

import numpy as np

from h3r import metrics
from h3r.data.base import LandmarkDataset, Sample, landmark_box


class FaceDataset(LandmarkDataset):
    """Face annotations held as arrays; subclasses parse a format and call ``__init__``.

    Class attributes set by subclasses: ``name``, ``num_keypoints``, ``flip_pairs``, and
    ``thresholds`` (the FR/AUC thresholds the benchmark reports).
    """

    thresholds: tuple[float, ...] = (0.1,)

    def __init__(
        self,
        *,
        split: str,
        loaders: Sequence[Callable[[], np.ndarray]],
        keypoints: np.ndarray,
        boxes: np.ndarray,
        normalisers: np.ndarray,
        metas: Sequence[dict],
        inter_pupil: np.ndarray | None = None,
        subsets: dict[str, np.ndarray] | None = None,
    ):
        """
        Args:
            loaders: one zero-argument image decoder per item.
            keypoints: ``(N, K, 2)`` image pixels, 0-based, x before y.
            boxes: ``(N, 4)`` ``x1, y1, x2, y2``: the crop box (P2 where the dataset has one, else P1).
            normalisers: ``(N,)`` the distance the dataset's NME divides by, in pixels.
            metas: one dict per item, copied into ``Sample.meta``.
            inter_pupil: ``(N,)`` the inter-pupil distance where the dataset documents one
                (reported as ``nme_ip``).
            subsets: named boolean masks ``(N,)``; ``evaluate`` also reports the metrics of
                each subset as ``"<subset>/<metric>"``.
        """
        self.split = split
        self._loaders = list(loaders)
        count = len(self._loaders)
        self.keypoints = np.asarray(keypoints, dtype=np.float32).reshape(count, self.num_keypoints, 2)
        self.boxes = np.asarray(boxes, dtype=np.float32).reshape(count, 4)
        self.normalisers = np.asarray(normalisers, dtype=np.float64).reshape(count)
        self.inter_pupil = None if inter_pupil is None else np.asarray(inter_pupil, dtype=np.float64).reshape(count)
        self.metas = list(metas)
        if len(self.metas) != count:
            raise ValueError(f"{self.name}: {len(self.metas)} meta dicts for {count} items")
        self.subsets = {name: np.asarray(mask, dtype=bool).reshape(count) for name, mask in (subsets or {}).items()}

    def __len__(self) -> int:
        return len(self._loaders)

    def __getitem__(self, index: int) -> Sample:
        if not -len(self) <= index < len(self):
            raise IndexError(f"{self.name} {self.split}: index {index} out of range for {len(self)} items")
        keypoints = self.keypoints[index].copy()
        return Sample(
            load_image=self._loaders[index],
            keypoints=keypoints,
            visible=np.ones(self.num_keypoints, dtype=bool),
            box=self.boxes[index].copy(),
            box_p1=landmark_box(keypoints),
            meta={**self.metas[index], "normaliser": float(self.normalisers[index])},
        )

    def evaluate(self, predictions: np.ndarray, indices: Sequence[int] | None = None) -> dict[str, float]:
        """``nme`` (mean per-image NME), ``nme_pooled``, ``fr@t`` and ``auc@t`` for each
        threshold t of the dataset, ``nme_ip`` where an inter-pupil distance is defined, and
        the same table per subset (``"<subset>/nme"``, ...). Fractions, not percent.

        ``predictions``: ``(N, K, 2)`` image pixels, 0-based, for the items ``indices``
        (default: all items in order).
        """
        indices = np.arange(len(self)) if indices is None else np.asarray(indices, dtype=np.int64)
        predictions = np.asarray(predictions, dtype=np.float64)
        expected = (len(indices), self.num_keypoints, 2)
        if predictions.shape != expected:
            raise ValueError(f"predictions: expected shape {expected} for {self.name} {self.split}, got {predictions.shape}")
        truth = self.keypoints[indices]
        normalisers = self.normalisers[indices]
        results = metrics.face_metrics(predictions, truth, normalisers, thresholds=self.thresholds)
        if self.inter_pupil is not None:
            results["nme_ip"] = float(metrics.nme_per_image(predictions, truth, self.inter_pupil[indices]).mean())
        for name, mask in self.subsets.items():
            chosen = mask[indices]
            if chosen.any():
                subset = metrics.face_metrics(predictions[chosen], truth[chosen], normalisers[chosen], thresholds=self.thresholds)
                results.update({f"{name}/{key}": value for key, value in subset.items()})
        return results


