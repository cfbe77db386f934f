"""CPU encoding: the usual way targets are made, per sample with NumPy in DataLoader workers.

:class:`NumpyTargetDataset` renders the K target maps of one sample in ``__getitem__``
(what a data pipeline's "generate target" step does after the crop), a
:class:`torch.utils.data.DataLoader` with one worker per core collates them into batches,
and :func:`time_cpu_encoding` measures the batches per second that reach the device,
host-to-device copy included when the device is CUDA.

Keypoints are ``(K, 2)`` float32 ``(x, y)`` in heatmap pixels (the cell at row ``r``,
column ``c`` has its centre at ``(x=c, y=r)``); maps are ``(K, H, W)`` float32.
"""
from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

TARGETS = ("random_rounding", "gaussian")


def random_rounding_one_hot(keypoints: np.ndarray, height: int, width: int, rng: np.random.Generator) -> np.ndarray:
    """H3R's sampled target: a 1 at ``floor(x) + [u < frac(x)]`` per axis (u uniform), zeros elsewhere."""
    maps = np.zeros((keypoints.shape[0], height, width), dtype=np.float32)
    floor = np.floor(keypoints)
    cells = (floor + (rng.random(keypoints.shape, dtype=np.float32) < keypoints - floor)).astype(np.int64)
    x, y = cells[:, 0], cells[:, 1]
    on_map = np.nonzero((x >= 0) & (x < width) & (y >= 0) & (y < height))[0]
    maps[on_map, y[on_map], x[on_map]] = 1.0
    return maps


def gaussian_patch(sigma: float) -> np.ndarray:
    """The ``(2r+1, 2r+1)`` patch ``exp(-d^2 / 2 sigma^2)`` (peak 1) with ``r = int(3 sigma)``, as in HRNet."""
    radius = int(3 * sigma)
    offsets = np.arange(-radius, radius + 1, dtype=np.float32)
    return np.exp(-(offsets[:, None] ** 2 + offsets[None, :] ** 2) / np.float32(2 * sigma * sigma))


def gaussian_patch_paste(keypoints: np.ndarray, height: int, width: int, patch: np.ndarray) -> np.ndarray:
    """HRNet-style Gaussian targets: paste ``patch`` centred on each keypoint's nearest cell, clipped to the map.

    A loop over the keypoints, as in HRNet's ``generate_target``; a patch entirely off the
    map leaves the map at zero. The patch is computed once (HRNet recomputes it per keypoint).
    """
    radius = patch.shape[0] // 2
    maps = np.zeros((keypoints.shape[0], height, width), dtype=np.float32)
    for k, (x, y) in enumerate(keypoints):
        cx, cy = math.floor(x + 0.5), math.floor(y + 0.5)
        left, top, right, bottom = cx - radius, cy - radius, cx + radius + 1, cy + radius + 1
        if left >= width or top >= height or right <= 0 or bottom <= 0:
            continue
        x0, x1 = max(left, 0), min(right, width)
        y0, y1 = max(top, 0), min(bottom, height)
        maps[k, y0:y1, x0:x1] = patch[y0 - top : y1 - top, x0 - left : x1 - left]
    return maps


class NumpyTargetDataset(Dataset):
    """Sample ``i`` = the ``(K, H, W)`` float32 target maps of one image, rendered with NumPy.

    The keypoints of sample ``i`` are uniform on the map, drawn from a generator seeded with
    ``(seed, i)``; ``target`` is ``"random_rounding"`` (H3R's one-hot) or ``"gaussian"``
    (HRNet's 3-sigma patch at the nearest cell).
    """

    def __init__(self, num_samples: int, num_keypoints: int, height: int, width: int,
                 target: str = "random_rounding", sigma: float = 2.0, seed: int = 0):
        if target not in TARGETS:
            raise ValueError(f"target: expected one of {', '.join(map(repr, TARGETS))}, got {target!r}")
        if target == "gaussian" and not sigma > 0:
            raise ValueError(f"sigma: expected > 0 for the Gaussian target, got {sigma!r}")
        if min(num_samples, num_keypoints, height, width) < 1:
            raise ValueError(
                f"num_samples, num_keypoints, height, width: expected all >= 1, "
                f"got {(num_samples, num_keypoints, height, width)}"
            )
        self.num_samples, self.num_keypoints = num_samples, num_keypoints
        self.height, self.width = height, width
        self.target, self.seed = target, seed
        self.patch = gaussian_patch(sigma) if target == "gaussian" else None

    def __len__(self) -> int:
        return self.num_samples

    def __getitem__(self, index: int) -> np.ndarray:
        rng = np.random.default_rng((self.seed, index))
        limits = np.array([self.width - 1, self.height - 1], dtype=np.float32)
        keypoints = rng.random((self.num_keypoints, 2), dtype=np.float32) * limits
        if self.target == "random_rounding":
            return random_rounding_one_hot(keypoints, self.height, self.width, rng)
        return gaussian_patch_paste(keypoints, self.height, self.width, self.patch)


@dataclass
class CpuEncodingTiming:
    """Steady-state throughput of CPU encoding: ``batch_ms`` per batch of ``batch_size`` samples."""

    batch_ms: float
    samples_per_s: float
    batch_size: int
    batches: int
    timed_batches: int
    workers: int
    includes_copy_to_device: bool


def time_cpu_encoding(
    shape: tuple[int, int, int, int],
    target: str,
    device: torch.device,
    workers: Optional[int] = None,
    rounds: int = 2,
    sigma: float = 2.0,
) -> CpuEncodingTiming:
    """Time ``rounds * workers`` batches of ``shape = (B, K, H, W)`` through a DataLoader.

    ``workers`` defaults to ``os.cpu_count()`` (every core of the machine). Each worker builds
    whole batches, so batch ``j`` comes from worker ``j mod workers``. The first round pays the
    workers' start-up; the time is measured from the arrival of the first round's last batch
    to that of the last batch (``(rounds - 1) * workers`` batches in steady state). On CUDA
    each batch is pinned (``pin_memory=True``), copied with ``non_blocking=True`` and the
    stream synchronised before the batch counts as arrived.
    """
    if workers is None:
        workers = os.cpu_count() or 1
    if workers < 1:
        raise ValueError(f"workers: expected >= 1, got {workers}")
    if rounds < 2:
        raise ValueError(f"rounds: expected >= 2 (the first round only starts the workers), got {rounds}")
    batch, num, height, width = shape
    batches = rounds * workers
    dataset = NumpyTargetDataset(batches * batch, num, height, width, target, sigma)
    to_device = device.type == "cuda"
    loader = DataLoader(dataset, batch_size=batch, num_workers=workers, pin_memory=to_device)
    arrivals = []
    for maps in loader:
        if to_device:
            maps = maps.to(device, non_blocking=True)
            torch.cuda.current_stream(device).synchronize()
        arrivals.append(time.perf_counter())
    timed = batches - workers
    batch_ms = (arrivals[-1] - arrivals[workers - 1]) * 1e3 / timed
    return CpuEncodingTiming(
        batch_ms=batch_ms,
        samples_per_s=batch * 1e3 / batch_ms,
        batch_size=batch,
        batches=batches,
        timed_batches=timed,
        workers=workers,
        includes_copy_to_device=to_device,
    )
