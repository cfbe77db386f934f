"""The network inputs: a :class:`LandmarkDataset` item cropped around its box, augmented or plain.

Shared by training (augmented crops, seeded per item) and evaluation (the plain crop); the
crop itself, one affine from image pixels to input pixels, is :mod:`h3r.transforms`.
"""
from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any, Optional, Sequence

import numpy as np
from torch.utils.data import Dataset

from h3r.data.base import LandmarkDataset
from h3r.transforms import CropConfig, TopDownTransform

if TYPE_CHECKING:  # annotations only: no import of the configuration (and the codecs behind it)
    from h3r.configs import TrainConfig

__all__ = ["CropDataset", "eval_crop"]


class CropDataset(Dataset):
    """The network inputs of a :class:`LandmarkDataset`: each item is cropped around its box.

    With ``seed`` set, item ``i`` is augmented with a generator seeded by
    ``(seed, epoch, i)``: the augmentation depends on neither the worker that loads it nor
    the order, so runs (and resumed runs) are reproducible. ``seed=None`` gives the plain
    crop (evaluation). Items are dicts: ``image``, ``keypoints`` (input pixels),
    ``visible``, ``affine`` (image -> input), ``flipped`` and ``index`` (into ``dataset``).
    """

    def __init__(self, dataset: LandmarkDataset, crop: CropConfig, seed: Optional[int] = None,
                 indices: Optional[Sequence[int]] = None):
        self.dataset = dataset
        self.transform = TopDownTransform(crop, dataset.flip_pairs)
        self.seed = seed
        self.indices = np.arange(len(dataset)) if indices is None else np.asarray(indices, dtype=np.int64)
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.indices)

    def generator(self, index: int) -> Optional[np.random.Generator]:
        """The augmentation draws of dataset item ``index`` in the current epoch (None: the plain crop)."""
        return None if self.seed is None else np.random.default_rng([self.seed, self.epoch, index])

    def __getitem__(self, position: int) -> dict[str, Any]:
        index = int(self.indices[position])
        item = self.transform(self.dataset[index], self.generator(index))
        item["index"] = index
        return item


def eval_crop(config: TrainConfig) -> CropConfig:
    """The un-augmented crop of ``config`` (what evaluation sees)."""
    return dataclasses.replace(config.crop, rotation=0.0, scale_jitter=0.0, translate=0.0, flip_prob=0.0,
                               colour_jitter=0.0)
