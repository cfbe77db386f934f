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

    A key is a position, augmented for the ``epoch`` attribute, or an ``(epoch, position)``
    pair (what :class:`h3r.loading.EpochBatches` gives a loader: data-loader workers that
    persist across epochs hold their own copy of the dataset, so the epoch travels with the key).
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

    def resolve(self, key: int | tuple[int, int]) -> tuple[int, Optional[np.random.Generator]]:
        """The dataset index of ``key`` (a position, or ``(epoch, position)``) and its augmentation draws."""
        epoch, position = key if isinstance(key, tuple) else (self.epoch, key)
        index = int(self.indices[position])
        return index, None if self.seed is None else np.random.default_rng([self.seed, epoch, index])

    def __getitem__(self, key: int | tuple[int, int]) -> dict[str, Any]:
        index, generator = self.resolve(key)
        item = self.transform(self.dataset[index], generator)
        item["index"] = index
        return item


def eval_crop(config: TrainConfig) -> CropConfig:
    """The un-augmented crop of ``config`` (what evaluation sees)."""
    return dataclasses.replace(config.crop, rotation=0.0, scale_jitter=0.0, translate=0.0, flip_prob=0.0,
                               colour_jitter=0.0)
