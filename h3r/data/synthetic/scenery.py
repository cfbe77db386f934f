"""What faces and people share: the split's random streams, geometry helpers, the filled
:class:`Shape` (scenery, occluders, body parts), random clutter, the supersampled canvas and
the photometric :class:`Finish` (lighting ramp, blur, noise, grey scale).

Coordinates are image pixels, 0-based, ``(x, y)`` with x the column; pixel centres are at
integers. Shapes are drawn on a 4x canvas and box-filtered down (antialiasing), placed so
that their rendered centres are unbiased (see ``_canvas``); Pillow's inclusive edges widen
filled shapes by ~1/8 px per side.
"""
from __future__ import annotations

import functools
import math
import multiprocessing
import os
import sys
import warnings
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from typing import Any, Callable, Optional, Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from h3r.data.cache import SharedImages, shared_memory_allows

SPLIT_STREAMS = {"train": 0, "test": 1}  # the split selects an independent random stream
DEFAULT_SIZES = {"train": 4000, "test": 500}
SUPERSAMPLE = 4
PARALLEL_SCENES = 400  # sets of at least this many items draw their scenes in several processes


def _item_rng(seed: int, split: str, index: int) -> np.random.Generator:
    return np.random.default_rng([seed, SPLIT_STREAMS[split], index])


def _draw_range(draw: Callable[[np.random.Generator], Any], seed: int, split: str, start: int, stop: int) -> list:
    return [draw(_item_rng(seed, split, index)) for index in range(start, stop)]


def _draw_scenes(draw: Callable[[np.random.Generator], Any], seed: int, split: str, size: int) -> list:
    """``[draw(_item_rng(seed, split, i)) for i in range(size)]``: a scene depends on its index
    alone, so on Linux sets of :data:`PARALLEL_SCENES` items or more are drawn by forked
    processes, one per core (at most 16), with the same result."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    processes = min(cores, 16, size // (PARALLEL_SCENES // 2))
    if (processes < 2 or not sys.platform.startswith("linux")  # fork is safe on Linux only
            or multiprocessing.current_process().daemon):  # a data-loader worker may not have children
        return _draw_range(draw, seed, split, 0, size)
    bounds = np.linspace(0, size, 4 * processes + 1).astype(int).tolist()
    count = len(bounds) - 1
    with ProcessPoolExecutor(processes, mp_context=multiprocessing.get_context("fork")) as pool:
        parts = pool.map(_draw_range, [draw] * count, [seed] * count, [split] * count, bounds[:-1], bounds[1:])
        return [scene for part in parts for scene in part]


def _image_loaders(renders: Sequence[Callable[[], np.ndarray]], image_size: int,
                   cache_images: bool) -> tuple[list[Callable[[], np.ndarray]], Optional[SharedImages]]:
    """Each item's ``load_image`` and the cache they read through: its render, read through one
    :class:`SharedImages` with ``cache_images`` (each image rendered once per run, not once per
    epoch) where shared memory allows; else the renders themselves and None."""
    nbytes = len(renders) * image_size * image_size * 3
    if cache_images and not shared_memory_allows(nbytes):
        warnings.warn(f"cache_images: {nbytes / 2 ** 20:.0f} MiB of rendered images would take more than a quarter "
                      f"of the free shared memory (/dev/shm); rendering every image on each use instead",
                      UserWarning, stacklevel=3)
        cache_images = False
    if not cache_images:
        return list(renders), None
    cache = SharedImages(len(renders), image_size, image_size)
    return [cache.loader(index, render) for index, render in enumerate(renders)], cache


def _check_split(split: str) -> None:
    if split not in SPLIT_STREAMS:
        raise ValueError(f"split: expected one of {sorted(SPLIT_STREAMS)}, got {split!r}")


def _rotation(angle: float) -> np.ndarray:
    c, s = math.cos(angle), math.sin(angle)
    return np.array([[c, -s], [s, c]])


@functools.lru_cache(maxsize=None)
def _unit_circle(count: int) -> np.ndarray:
    t = np.linspace(0, 2 * np.pi, count, endpoint=False)
    return np.stack([np.cos(t), np.sin(t)], axis=1)


def _ellipse_points(center: Sequence[float], radii: Sequence[float], count: int = 24) -> np.ndarray:
    return np.asarray(center, dtype=np.float64) + _unit_circle(count) * np.asarray(radii, dtype=np.float64)


def _colour(rgb) -> tuple[int, int, int]:
    red, green, blue = np.clip(np.rint(np.asarray(rgb, dtype=np.float64)), 0, 255).tolist()
    return int(red), int(green), int(blue)


@dataclass
class Shape:
    """A filled shape in image pixels: ``kind`` is ``"polygon"`` (``points`` its vertices),
    ``"ellipse"`` (``points`` = [[cx, cy], [rx, ry]], axis-aligned) or ``"bar"`` (``points``
    = the two ends, ``width`` its thickness)."""

    kind: str
    points: np.ndarray
    colour: tuple[int, int, int]
    width: float = 0.0

    def contains(self, xy: np.ndarray) -> np.ndarray:
        """Which of the points ``(N, 2)`` the shape covers."""
        xy = np.asarray(xy, dtype=np.float64)
        if self.kind == "ellipse":
            (cx, cy), (rx, ry) = self.points
            return ((xy[:, 0] - cx) / rx) ** 2 + ((xy[:, 1] - cy) / ry) ** 2 <= 1
        if self.kind == "bar":
            start, end = self.points
            direction = end - start
            t = np.clip(((xy - start) @ direction) / max(direction @ direction, 1e-12), 0, 1)
            return np.linalg.norm(xy - (start + t[:, None] * direction), axis=1) <= self.width / 2
        inside = np.zeros(len(xy), dtype=bool)  # even-odd ray casting
        vertices = self.points
        for (x1, y1), (x2, y2) in zip(vertices, np.roll(vertices, -1, axis=0)):
            crosses = (y1 > xy[:, 1]) != (y2 > xy[:, 1])
            with np.errstate(divide="ignore", invalid="ignore"):
                x_cross = x1 + (xy[:, 1] - y1) * (x2 - x1) / (y2 - y1)
            inside ^= crosses & (xy[:, 0] < x_cross)
        return inside

    def draw(self, draw: ImageDraw.ImageDraw) -> None:
        if self.kind == "ellipse":
            (cx, cy), (rx, ry) = _canvas(self.points[0]), SUPERSAMPLE * self.points[1]
            draw.ellipse([cx - rx, cy - ry, cx + rx, cy + ry], fill=self.colour)
        elif self.kind == "bar":
            draw.line(_canvas(self.points, stroke=True).ravel().tolist(), fill=self.colour,
                      width=max(1, round(SUPERSAMPLE * self.width)))
        else:
            draw.polygon(_canvas(self.points).ravel().tolist(), fill=self.colour)


def _canvas(points: np.ndarray, stroke: bool = False) -> np.ndarray:
    """Image px → canvas px. Measured on Pillow: fills (polygons, ellipses) land unbiased at
    ``S (p + 1/2)``, strokes (lines) need ``3/8`` canvas px less."""
    return SUPERSAMPLE * (np.asarray(points, dtype=np.float64) + 0.5) - (0.375 if stroke else 0.0)


def _random_colour(rng: np.random.Generator) -> tuple[int, int, int]:
    return _colour(rng.uniform(0, 255, 3))


def _skin_colour(rng: np.random.Generator) -> np.ndarray:
    light, dark = np.array([240, 205, 180]), np.array([90, 58, 40])
    return light + rng.uniform(0, 1) * (dark - light) + rng.uniform(-12, 12, 3)


def _random_shape(rng: np.random.Generator, center: np.ndarray, size: float, colour) -> Shape:
    kind = rng.choice(["polygon", "ellipse", "bar", "rectangle"])
    if kind == "ellipse":
        return Shape("ellipse", np.array([center, rng.uniform(0.3, 1.0, 2) * size / 2]), colour)
    if kind == "bar":
        angle = rng.uniform(0, np.pi)
        half = size / 2 * np.array([math.cos(angle), math.sin(angle)])
        return Shape("bar", np.array([center - half, center + half]), colour, width=rng.uniform(0.1, 0.3) * size)
    if kind == "rectangle":
        half = rng.uniform(0.2, 0.5, 2) * size
        corners = np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]]) * half
        return Shape("polygon", center + corners @ _rotation(rng.uniform(0, np.pi)).T, colour)
    count = int(rng.integers(3, 7))
    angles = np.sort(rng.uniform(0, 2 * np.pi, count))
    radii = rng.uniform(0.25, 0.5, count) * size
    return Shape("polygon", center + np.stack([radii * np.cos(angles), radii * np.sin(angles)], 1), colour)


def _random_clutter(rng: np.random.Generator, image_size: int, count_range=(4, 14)) -> list[Shape]:
    shapes = []
    for _ in range(int(rng.integers(*count_range))):
        center = rng.uniform(-0.1, 1.1, 2) * image_size
        shapes.append(_random_shape(rng, center, rng.uniform(0.1, 0.7) * image_size, _random_colour(rng)))
    return shapes


@dataclass
class Finish:
    """Photometric finish applied after drawing: a linear lighting ramp (``gain`` ± ``slope``
    across the image along ``direction`` radians), Gaussian ``blur`` radius (px), Gaussian
    ``noise`` standard deviation (grey levels), and a grey-scale switch."""

    gain: float
    slope: float
    direction: float
    blur: float
    noise: float
    grey: bool
    noise_seed: int


def _random_finish(rng: np.random.Generator) -> Finish:
    return Finish(gain=rng.uniform(0.7, 1.2), slope=rng.uniform(-0.5, 0.5), direction=rng.uniform(0, 2 * np.pi),
                  blur=rng.uniform(0.3, 1.3) if rng.random() < 0.35 else 0.0,
                  noise=rng.uniform(0, 10) if rng.random() < 0.7 else 0.0, grey=bool(rng.random() < 0.1),
                  noise_seed=int(rng.integers(2 ** 31)))


@functools.lru_cache(maxsize=8)
def _ramp_grid(image_size: int) -> tuple[np.ndarray, np.ndarray]:
    coordinates = (np.arange(image_size, dtype=np.float32) - (image_size - 1) / 2) / image_size
    return coordinates[None, :], coordinates[:, None]


def _finish(canvas: Image.Image, image_size: int, finish: Finish) -> np.ndarray:
    image = canvas.reduce(SUPERSAMPLE)
    if finish.grey:
        image = image.convert("L").convert("RGB")
    if finish.blur > 0:
        image = image.filter(ImageFilter.GaussianBlur(finish.blur))
    pixels = np.asarray(image, dtype=np.float32)
    xs, ys = _ramp_grid(image_size)
    light = finish.gain + finish.slope * (xs * math.cos(finish.direction) + ys * math.sin(finish.direction))
    pixels = pixels * light[:, :, None]
    if finish.noise > 0:
        noise = np.random.default_rng(finish.noise_seed).standard_normal(pixels.shape[:2], dtype=np.float32)
        pixels += finish.noise * noise[:, :, None]
    return np.clip(pixels, 0, 255).astype(np.uint8)


def _new_canvas(image_size: int, background) -> tuple[Image.Image, ImageDraw.ImageDraw]:
    canvas = Image.new("RGB", (SUPERSAMPLE * image_size,) * 2, background)
    return canvas, ImageDraw.Draw(canvas)


def _placement_shift(rng: np.random.Generator, points: np.ndarray, image_size: int, keep_inside: bool,
                     margin: float) -> np.ndarray:
    """A translation for ``points`` (already scaled and rotated around 0): inside the image
    with ``margin`` px to spare when ``keep_inside``, else overhanging by up to 20 % of the extent."""
    low, high = points.min(axis=0), points.max(axis=0)
    slack = 0.0 if keep_inside else 0.2 * (high - low)
    first = margin - low - slack
    last = image_size - 1 - margin - high + slack
    return np.where(last > first, rng.uniform(0, 1, 2) * (last - first) + first, (first + last) / 2)
