"""Procedural landmark datasets that need no download: faces in the WFLW layout and people
with the 17 COCO joints, rendered with Pillow, deterministic from ``(seed, split, index)``.

Both draw every structure from its landmarks (a face's outline *is* its jaw contour, a lip
polygon *is* its mouth points, a forearm ends at its wrist), so the landmarks sit on image
edges and corners a CNN can find, while rotation, out-of-plane pose, expressions, lighting,
noise, blur, clutter and occluders keep the task from saturating.

Coordinates are image pixels, 0-based, ``(x, y)`` with x the column; pixel centres are at
integers. Shapes are drawn on a 4x canvas and box-filtered down (antialiasing), placed so
that their rendered centres are unbiased (see ``_canvas``); Pillow's inclusive edges widen
filled shapes by ~1/8 px per side.

A dataset builds every item's *scene* (geometry, colours, clutter) when constructed, which
takes ~1 ms per item; ``Sample.load_image`` renders it on demand (~1-2 ms at 128 px) and is
picklable, so data-loader workers can render in parallel.
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass, replace
from typing import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from h3r import metrics
from h3r.data.base import LandmarkDataset, Sample, landmark_box
from h3r.data.coco import (COCO_FLIP_PAIRS, COCO_KEYPOINT_NAMES, COCO_NUM_KEYPOINTS, COCO_SKELETON,
                           PERSON_CATEGORY_ID, mean_confident_score)
from h3r.data.faces import FaceDataset
from h3r.data.wflw import WFLW_FLIP_PAIRS, WFLW_INTER_OCULAR, WFLW_NUM_KEYPOINTS, WFLW_PUPILS

SPLIT_STREAMS = {"train": 0, "test": 1}  # the split selects an independent random stream
DEFAULT_SIZES = {"train": 4000, "test": 500}
SUPERSAMPLE = 4


def _item_rng(seed: int, split: str, index: int) -> np.random.Generator:
    return np.random.default_rng([seed, SPLIT_STREAMS[split], index])


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


# --------------------------------------------------------------------------- shared scenery

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


# --------------------------------------------------------------------------------- faces

@dataclass(frozen=True)
class FaceShape:
    """A frontal face in face units (jaw width = 1): x right, y down, eye line at y = 0.

    Left/right features are built mirror-symmetric; only ``gaze`` (pupil offset as a fraction
    of the eye's half width / half opening, both eyes alike) breaks the symmetry.
    """

    jaw_top: float = 0.05  # y of contour ends 0 and 32
    chin: float = 1.05  # y of contour point 16
    jaw_power: float = 1.0  # contour y ∝ sin(φ)^p: < 1 square jaw, > 1 pointed
    forehead: float = 0.8  # forehead height above jaw_top
    eye_spacing: float = 0.21  # |x| of the eye centres
    eye_width: float = 0.18  # corner to corner
    eye_open: float = 0.045  # upper lid height above the corner line
    eye_tilt: float = 0.01  # outer corners raised by this much
    brow_gap: float = 0.1  # eye line to brow centre line
    brow_length: float = 0.25
    brow_arch: float = 0.03
    brow_thickness: float = 0.035
    brow_frown: float = 0.0  # inner brow ends lowered by this much
    nose_length: float = 0.36  # eye line to the nostril base
    nose_width: float = 0.085  # half width of the nostril base
    mouth_y: float = 0.64
    mouth_width: float = 0.38
    upper_lip: float = 0.045
    lower_lip: float = 0.06
    mouth_open: float = 0.0
    smile: float = 0.0  # corners raised by 0.05 * smile
    gaze: tuple[float, float] = (0.0, 0.0)


def random_face_shape(rng: np.random.Generator) -> FaceShape:
    """A random identity and expression (mouth open / smile / frown, brows, eye opening)."""
    eye_open = rng.uniform(0.008, 0.02) if rng.random() < 0.1 else rng.uniform(0.025, 0.06)
    return FaceShape(
        jaw_top=rng.uniform(0.0, 0.1), chin=rng.uniform(0.95, 1.15), jaw_power=rng.uniform(0.6, 1.5),
        forehead=rng.uniform(0.7, 0.9), eye_spacing=rng.uniform(0.19, 0.235), eye_width=rng.uniform(0.15, 0.2),
        eye_open=eye_open, eye_tilt=rng.uniform(-0.015, 0.03), brow_gap=rng.uniform(0.08, 0.16),
        brow_length=rng.uniform(0.2, 0.28), brow_arch=rng.uniform(0.0, 0.05),
        brow_thickness=rng.uniform(0.02, 0.05), brow_frown=rng.uniform(-0.02, 0.04),
        nose_length=rng.uniform(0.32, 0.42), nose_width=rng.uniform(0.07, 0.11),
        mouth_y=rng.uniform(0.6, 0.72), mouth_width=rng.uniform(0.3, 0.44), upper_lip=rng.uniform(0.025, 0.06),
        lower_lip=rng.uniform(0.035, 0.075), mouth_open=rng.uniform(0.02, 0.14) if rng.random() < 0.35 else 0.0,
        smile=rng.uniform(-0.4, 1.0), gaze=tuple(rng.uniform(-0.5, 0.5, 2)),
    )


HEAD_DEPTH = 0.45  # face-front depth in face units (the head axis is at z = 0)
SILHOUETTE_DEPTH_RATIO = 1.1  # the head's cross-section is 1.1x as deep as wide


def _surface_depth(x: np.ndarray) -> np.ndarray:
    return HEAD_DEPTH * np.sqrt(np.clip(1 - (np.asarray(x) / 0.58) ** 2, 0, None))


def _resample_by_length(points: np.ndarray, parameter: np.ndarray, count: int) -> tuple[np.ndarray, np.ndarray]:
    length = np.concatenate([[0], np.cumsum(np.linalg.norm(np.diff(points, axis=0), axis=1))])
    targets = np.linspace(0, length[-1], count)
    resampled = np.stack([np.interp(targets, length, points[:, 0]), np.interp(targets, length, points[:, 1])], 1)
    return resampled, np.interp(targets, length, parameter)


def _mirror_into(points: np.ndarray, pairs: Sequence[tuple[int, int]]) -> None:
    for source, target in pairs:
        points[target] = points[source] * np.array([-1.0, 1.0, 1.0])


def face_landmarks_3d(shape: FaceShape) -> tuple[np.ndarray, np.ndarray]:
    """The 98 WFLW landmarks of ``shape`` as ``(x, y, z)`` face units (z toward the viewer)
    and each point's silhouette weight (1: on the side outline, 0: rigid surface point)."""
    points = np.zeros((WFLW_NUM_KEYPOINTS, 3))
    weights = np.zeros(WFLW_NUM_KEYPOINTS)
    # jaw 0-32: image-left end (x = -0.5) down to the chin and up to the right end, equal arc length
    phi = np.linspace(0, np.pi, 401)
    jaw_y = shape.jaw_top + (shape.chin - shape.jaw_top) * np.sin(phi) ** shape.jaw_power
    dense = np.stack([-0.5 * np.cos(phi), jaw_y], 1)
    contour, phi = _resample_by_length(dense, phi, 33)
    points[:33, :2] = contour
    points[:33, 2] = 0.42 * np.sin(phi)
    weights[:33] = np.abs(np.cos(phi))
    # image-left brow: 33 outer tip, 34-37 upper edge to the inner end, 38-41 lower edge back out
    inner_x = -shape.eye_spacing + shape.eye_width / 2 + 0.02
    s_upper, s_lower = np.linspace(0, 1, 5), np.array([1.0, 0.75, 0.5, 0.25])
    for rows, s, sign in ((slice(33, 38), s_upper, -1), (slice(38, 42), s_lower, 1)):
        x = inner_x - shape.brow_length * (1 - s)
        centre = -shape.brow_gap - shape.brow_arch * np.sin(np.pi * s) + shape.brow_frown * s ** 2
        points[rows, 0] = x
        points[rows, 1] = centre + sign * shape.brow_thickness / 2 * np.sqrt(s)
        points[rows, 2] = _surface_depth(x)
    # image-left eye: 60 outer corner, 61-63 upper lid, 64 inner corner, 65-67 lower lid back out
    outer = np.array([-shape.eye_spacing - shape.eye_width / 2, -shape.eye_tilt])
    inner = np.array([-shape.eye_spacing + shape.eye_width / 2, 0.0])
    corner_to_corner = [(0, 0), (.25, -1), (.5, -1), (.75, -1), (1, 0), (.75, 1), (.5, 1), (.25, 1)]  # (t, lid side)
    for index, (t, lid) in zip(range(60, 68), corner_to_corner):
        opening = shape.eye_open if lid < 0 else 0.65 * shape.eye_open
        points[index, :2] = outer + t * (inner - outer) + [0, lid * opening * np.sin(np.pi * t) ** 0.8]
    points[60:68, 2] = _surface_depth(points[60:68, 0]) - 0.05
    points[96, :2] = [-shape.eye_spacing, -0.15 * shape.eye_open - shape.eye_tilt / 2]
    points[96, 2] = _surface_depth(points[96, 0]) - 0.03
    _mirror_into(points, [(a, b) for a, b in WFLW_FLIP_PAIRS if 33 <= a <= 41 or 60 <= a <= 67 or a == 96])
    # nose: bridge 51-54 from the eye line to the tip; base 55-59 left to right
    points[51:55, 1] = np.linspace(0.0, shape.nose_length - 0.05, 4)
    points[51:55, 2] = HEAD_DEPTH + np.array([0.03, 0.07, 0.11, 0.16])
    s = np.linspace(0, 1, 5)
    points[55:60, 0] = (2 * s - 1) * shape.nose_width
    points[55:60, 1] = shape.nose_length + 0.015 * (1 - (2 * s - 1) ** 2) - 0.01
    points[55:60, 2] = HEAD_DEPTH + 0.05 + 0.04 * (1 - (2 * s - 1) ** 2)
    # mouth: outer lip 76 left corner, 77-81 upper, 82 right corner, 83-87 lower (right to left);
    # inner lip 88 left corner, 89-91 upper, 92 right corner, 93-95 lower (right to left)
    half, gap = shape.mouth_width / 2, shape.mouth_open / 2

    def lip_curve(s, offset):  # y on the lips at s in [0, 1] (left to right), raised corners when smiling
        return shape.mouth_y + offset - 0.05 * shape.smile * (2 * s - 1) ** 2

    bow = lambda s: np.sin(np.pi * s) * (1 - 0.3 * np.exp(-((s - 0.5) / 0.08) ** 2))  # noqa: E731 cupid's bow
    s_upper, s_lower = np.arange(1, 6) / 6, np.arange(5, 0, -1) / 6
    points[76, :2] = [-half, lip_curve(0.0, 0.0)]
    points[82, :2] = [half, lip_curve(1.0, 0.0)]
    points[77:82, 0] = (2 * s_upper - 1) * half
    points[77:82, 1] = lip_curve(s_upper, -gap - shape.upper_lip * bow(s_upper))
    points[83:88, 0] = (2 * s_lower - 1) * half
    points[83:88, 1] = lip_curve(s_lower, gap + shape.lower_lip * np.sin(np.pi * s_lower))
    inner_half = half - 0.025
    s_inner_upper, s_inner_lower = np.array([.25, .5, .75]), np.array([.75, .5, .25])
    points[88, :2] = [-inner_half, lip_curve(0.5 - inner_half / (2 * half), 0.0)]
    points[92, :2] = [inner_half, lip_curve(0.5 + inner_half / (2 * half), 0.0)]
    for rows, s, sign in ((slice(89, 92), s_inner_upper, -1), (slice(93, 96), s_inner_lower, 1)):
        points[rows, 0] = (2 * s - 1) * inner_half
        points[rows, 1] = lip_curve(s, sign * gap * np.sin(np.pi * s) ** 0.5)
    points[76:96, 2] = _surface_depth(points[76:96, 0]) + 0.02
    # gaze moves both pupils alike
    gx, gy = shape.gaze
    points[WFLW_PUPILS, 0] += gx * 0.25 * shape.eye_width
    points[WFLW_PUPILS, 1] += gy * 0.3 * shape.eye_open
    return points, weights


@dataclass(frozen=True)
class FacePose:
    """Where a face lands: ``yaw``/``pitch`` (out of plane) and ``roll`` (in plane, clockwise
    as displayed) in radians, ``scale`` px per face unit, ``center`` px of the face origin."""

    yaw: float = 0.0
    pitch: float = 0.0
    roll: float = 0.0
    scale: float = 50.0
    center: tuple[float, float] = (63.5, 63.5)


def project(points: np.ndarray, weights: np.ndarray, pose: FacePose) -> np.ndarray:
    """Face units ``(N, 3)`` → image pixels ``(N, 2)`` (orthographic).

    Surface points rotate rigidly (yaw about the vertical head axis, then pitch). Outline
    points (``weights`` → 1) follow the head's silhouette instead, which for an elliptic
    cross-section widens symmetrically by ``sqrt(cos² + (1.1 sin)²)`` of the yaw.
    """
    x, y, z = points.T
    cos_yaw, sin_yaw = math.cos(pose.yaw), math.sin(pose.yaw)
    rigid_x = x * cos_yaw + z * sin_yaw
    rigid_z = -x * sin_yaw + z * cos_yaw
    outline_x = x * math.sqrt(cos_yaw ** 2 + (SILHOUETTE_DEPTH_RATIO * sin_yaw) ** 2)
    image_x = weights * outline_x + (1 - weights) * rigid_x
    image_y = y * math.cos(pose.pitch) - (1 - weights) * rigid_z * math.sin(pose.pitch)
    flat = np.stack([image_x, image_y], axis=1)
    return pose.scale * flat @ _rotation(pose.roll).T + np.asarray(pose.center)


def face_landmarks(shape: FaceShape, pose: FacePose) -> np.ndarray:
    """The 98 WFLW landmarks ``(98, 2)`` of ``shape`` placed by ``pose``, image pixels."""
    return project(*face_landmarks_3d(shape), pose)


def _face_outlines(shape: FaceShape, has_bangs: bool, hairline: float) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Canonical (x, y, z) + weights of the drawn parts that carry no landmark."""
    alpha = np.linspace(0, np.pi, 17)
    arc_x, arc_y = 0.5 * np.cos(alpha), shape.jaw_top - shape.forehead * np.sin(alpha)
    outline_weight = np.abs(np.cos(alpha))
    forehead = np.stack([arc_x, arc_y, 0.42 * np.sin(alpha)], 1)
    hair_top = shape.jaw_top - (shape.forehead + 0.08) * np.sin(alpha)
    hair_outer = np.stack([1.1 * arc_x, hair_top, 0.42 * np.sin(alpha)], 1)
    s = np.linspace(0, 1, 9)
    line_x = -0.52 + 1.04 * s
    arch = np.sin(np.pi * s)  # an arched hairline without bangs; a fringe hanging lower mid-forehead with them
    line_y = hairline + (0.06 * arch ** 4 if has_bangs else -0.12 * arch - 0.02 * arch ** 4)
    hair_line = np.stack([line_x, line_y, _surface_depth(line_x)], 1)
    hair = np.concatenate([hair_outer, hair_line])
    hair_weights = np.concatenate([outline_weight, np.zeros(len(s))])
    long_hair = np.concatenate([hair_outer, [[-0.6, 0.9, 0.0], [0.6, 0.9, 0.0]]])
    ear = _ellipse_points((0.53, 0.2), (0.07, 0.14), 12)
    ears = [np.concatenate([e, np.zeros((12, 1))], 1) for e in (ear, ear * [-1, 1])]
    neck = np.array([[-0.27, 0.55, 0], [0.27, 0.55, 0], [0.3, 1.8, 0], [-0.3, 1.8, 0]])
    shoulders = np.concatenate([_ellipse_points((0, 2.1), (1.2, 0.6), 24), np.zeros((24, 1))], 1)
    return {"forehead": (forehead, outline_weight), "hair": (hair, hair_weights),
            "long_hair": (long_hair, np.concatenate([outline_weight, [1.0, 1.0]])),
            "ear_left": (ears[1], np.ones(12)), "ear_right": (ears[0], np.ones(12)),
            "neck": (neck, np.zeros(4)), "shoulders": (shoulders, np.zeros(24))}


@dataclass
class FaceScene:
    """Everything needed to render one synthetic face (see :func:`render_face`)."""

    image_size: int
    landmarks: np.ndarray  # (98, 2) image px
    outlines: dict[str, np.ndarray]  # name -> (M, 2) image px
    iris_radius: float  # px
    colours: dict[str, tuple[int, int, int]]
    background: tuple[int, int, int]
    clutter: list[Shape]
    occluders: list[Shape]
    has_hair: bool
    has_long_hair: bool
    has_glasses: bool
    finish: Finish
    pose: FacePose
    box: np.ndarray  # (4,) detector-like box: the landmark box, each edge moved by up to 5 % of its size


def _skin_colour(rng: np.random.Generator) -> np.ndarray:
    light, dark = np.array([240, 205, 180]), np.array([90, 58, 40])
    return light + rng.uniform(0, 1) * (dark - light) + rng.uniform(-12, 12, 3)


def random_face_scene(rng: np.random.Generator, image_size: int = 128, *, keep_inside: bool = True,
                      max_rotation: float = 30.0, max_yaw: float = 30.0, max_pitch: float = 12.0,
                      occlusion_prob: float = 0.3) -> FaceScene:
    """Draw one face scene: shape and expression, pose (angles in degrees), colours, clutter,
    occluders, photometric finish."""
    shape = random_face_shape(rng)
    pose = FacePose(yaw=math.radians(rng.uniform(-max_yaw, max_yaw)),
                    pitch=math.radians(rng.uniform(-max_pitch, max_pitch)),
                    roll=math.radians(rng.uniform(-max_rotation, max_rotation)),
                    scale=rng.uniform(0.32, 0.7) * image_size, center=(0.0, 0.0))
    points, weights = face_landmarks_3d(shape)
    landmarks = project(points, weights, pose)
    margin = 2.0
    extent = (landmarks.max(axis=0) - landmarks.min(axis=0)).max()
    if keep_inside and extent > image_size - 1 - 2 * margin:  # shrink to fit
        pose = replace(pose, scale=pose.scale * (image_size - 1 - 2 * margin) / extent * 0.98)
        landmarks = project(points, weights, pose)
    shift = _placement_shift(rng, landmarks, image_size, keep_inside, margin)
    pose = replace(pose, center=tuple(shift))
    landmarks = landmarks + shift
    has_hair, has_bangs = bool(rng.random() < 0.85), bool(rng.random() < 0.3)
    outlines = {name: project(p, w, pose) for name, (p, w) in
                _face_outlines(shape, has_bangs, -shape.brow_gap - rng.uniform(0.22, 0.4)).items()}
    skin = _skin_colour(rng)
    hair = np.array([[25, 20, 18], [70, 45, 30], [120, 85, 50], [200, 170, 110], [150, 150, 150]][rng.integers(5)])
    hair = hair * rng.uniform(0.8, 1.2)
    brow = hair * 0.7 if (skin - hair).mean() > 60 else np.minimum(hair, skin * 0.45)
    colours = {
        "skin": _colour(skin), "shade": _colour(skin * rng.uniform(0.7, 0.85)),
        "nose": _colour(skin * rng.uniform(0.86, 0.94)), "lips": _colour(skin * [0.8, 0.55, 0.55] + [25, 0, 0]),
        "mouth": _colour(skin * 0.25), "teeth": _colour([235, 230, 215]), "brow": _colour(brow),
        "hair": _colour(hair), "sclera": _colour(np.array([235, 232, 225]) * rng.uniform(0.85, 1.0)),
        "iris": _colour([[70, 45, 25], [40, 90, 150], [70, 110, 60], [25, 20, 20]][rng.integers(4)]),
        "lid": _colour(skin * 0.35), "clothes": _random_colour(rng), "glasses": _colour(rng.uniform(0, 80, 3)),
    }
    occluders = []
    if rng.random() < occlusion_prob:
        iod = np.linalg.norm(landmarks[WFLW_INTER_OCULAR[0]] - landmarks[WFLW_INTER_OCULAR[1]])
        center = landmarks[rng.integers(WFLW_NUM_KEYPOINTS)] + rng.normal(0, 0.2 * iod, 2)
        colour = colours["skin"] if rng.random() < 0.3 else _random_colour(rng)
        occluders.append(_random_shape(rng, center, rng.uniform(0.4, 1.1) * iod, colour))
    tight = landmark_box(landmarks).astype(np.float64)
    box = tight + rng.uniform(-0.05, 0.05, 4) * np.tile(tight[2:] - tight[:2], 2)
    return FaceScene(
        image_size=image_size, landmarks=landmarks, outlines=outlines, box=box,
        iris_radius=0.2 * shape.eye_width * pose.scale * math.cos(pose.yaw) ** 0.5, colours=colours,
        background=_random_colour(rng), clutter=_random_clutter(rng, image_size), occluders=occluders,
        has_hair=has_hair, has_long_hair=bool(rng.random() < 0.35), has_glasses=bool(rng.random() < 0.12),
        finish=_random_finish(rng), pose=pose)


def _polygon(draw: ImageDraw.ImageDraw, points: np.ndarray, colour) -> None:
    draw.polygon(_canvas(points).ravel().tolist(), fill=colour)


def _line(draw: ImageDraw.ImageDraw, points: np.ndarray, colour, width: float) -> None:
    draw.line(_canvas(points, stroke=True).ravel().tolist(), fill=colour, width=max(1, round(width)), joint="curve")


def _draw_eye(canvas: Image.Image, eye: np.ndarray, pupil: np.ndarray, iris_radius: float, colours: dict) -> None:
    """Sclera polygon with the iris and pupil clipped to it."""
    corners = _canvas(eye)
    x1, y1 = np.floor(corners.min(axis=0)).astype(int) - 1
    x2, y2 = np.ceil(corners.max(axis=0)).astype(int) + 2
    size = (max(x2 - x1, 1), max(y2 - y1, 1))
    patch = Image.new("RGB", size, colours["sclera"])
    mask = Image.new("L", size, 0)
    local = corners - [x1, y1]
    centre = _canvas(pupil) - [x1, y1]
    radius = SUPERSAMPLE * iris_radius
    patch_draw = ImageDraw.Draw(patch)
    patch_draw.ellipse([*(centre - radius), *(centre + radius)], fill=colours["iris"])
    patch_draw.ellipse([*(centre - 0.45 * radius), *(centre + 0.45 * radius)], fill=(10, 10, 10))
    ImageDraw.Draw(mask).polygon(local.ravel().tolist(), fill=255)
    canvas.paste(patch, (int(x1), int(y1)), mask)


def render_face(scene: FaceScene) -> np.ndarray:
    """Render a :class:`FaceScene` → RGB ``uint8`` ``(S, S, 3)``."""
    canvas, draw = _new_canvas(scene.image_size, scene.background)
    colours, outlines, points = scene.colours, scene.outlines, scene.landmarks
    for shape in scene.clutter:
        shape.draw(draw)
    unit = scene.pose.scale * SUPERSAMPLE  # canvas px per face unit
    if scene.has_hair and scene.has_long_hair:
        _polygon(draw, outlines["long_hair"], colours["hair"])
    _polygon(draw, outlines["shoulders"], colours["clothes"])
    _polygon(draw, outlines["neck"], colours["shade"])
    _polygon(draw, outlines["ear_left"], colours["shade"])
    _polygon(draw, outlines["ear_right"], colours["shade"])
    _polygon(draw, np.concatenate([points[:33], outlines["forehead"][1:-1]]), colours["skin"])
    if scene.has_hair:
        _polygon(draw, outlines["hair"], colours["hair"])
    for brow in (points[33:42], points[42:51]):
        _polygon(draw, brow, colours["brow"])
    # nose: shaded wedge from the bridge top to the nostril base, bridge and base lines, nostrils
    _polygon(draw, np.concatenate([points[51:52], points[55:60]]), colours["nose"])
    _line(draw, points[51:55], colours["shade"], 0.012 * unit)
    _line(draw, points[55:60], colours["lid"], 0.014 * unit)
    for left, right in ((55, 57), (57, 59)):
        centre = (points[left] + points[right]) / 2 + (points[54] - points[57]) * 0.25
        radius = np.linalg.norm(points[right] - points[left]) * 0.22
        draw.ellipse([*(_canvas(centre) - SUPERSAMPLE * radius), *(_canvas(centre) + SUPERSAMPLE * radius)],
                     fill=colours["mouth"])
    for eye, pupil in ((points[60:68], points[96]), (points[68:76], points[97])):
        _draw_eye(canvas, eye, pupil, scene.iris_radius, colours)
        _line(draw, eye[:5], colours["lid"], 0.02 * unit)  # upper lid
        _line(draw, np.concatenate([eye[4:], eye[:1]]), colours["shade"], 0.01 * unit)
    # mouth: lips, then the opening (with teeth) or the closed line between the lips
    _polygon(draw, points[76:88], colours["lips"])
    inner = points[88:96]
    if np.linalg.norm(points[90] - points[94]) > 0.5:  # open by more than half a pixel
        _polygon(draw, inner, colours["mouth"])
        teeth = np.concatenate([inner[:5], inner[4::-1] + (points[94] - points[90]) * 0.3])
        _polygon(draw, teeth, colours["teeth"])
    _line(draw, np.concatenate([inner[:5], inner[4:], inner[:1]]), colours["mouth"], 0.012 * unit)
    if scene.has_glasses:
        for eye in (points[60:68], points[68:76]):
            centre, radius = eye.mean(axis=0), 0.75 * np.linalg.norm(eye[0] - eye[4])
            draw.ellipse([*(_canvas(centre) - SUPERSAMPLE * radius), *(_canvas(centre) + SUPERSAMPLE * radius)],
                         outline=colours["glasses"], width=max(1, round(0.015 * unit)))
        _line(draw, points[[64, 68]], colours["glasses"], 0.015 * unit)
    for shape in scene.occluders:
        shape.draw(draw)
    return _finish(canvas, scene.image_size, scene.finish)


class SyntheticFaces(FaceDataset):
    """Procedural faces with the 98 WFLW landmarks (layout, flip pairs and protocol of WFLW).

    Args:
        split: ``"train"`` or ``"test"`` (independent random streams).
        size: number of faces (default 4000 train / 500 test).
        seed: item ``i`` is drawn from ``(seed, split, i)`` alone.
        image_size: side of the square images, px.
        keep_inside: keep every landmark at least 2 px inside the image (else a face may
            overhang the border by up to 20 % of its extent).
        max_rotation, max_yaw, max_pitch: pose ranges in degrees (uniform in ±max).
        occlusion_prob: probability of an occluder over part of the face.

    Every landmark is annotated (``visible`` all True, as WFLW); ``meta["occluded"]`` marks
    those under an occluder, ``meta["yaw"]``/``["pitch"]``/``["roll"]`` give the pose
    (degrees). ``box`` is a detector-like box: the landmark box with each edge moved by up
    to 5 % of its size. ``evaluate`` is WFLW's: NME over the inter-ocular distance (60, 72),
    FR and AUC at 0.1, plus ``nme_ip`` (pupils 96, 97).
    """

    name = "synthetic-face"
    num_keypoints = WFLW_NUM_KEYPOINTS
    flip_pairs = WFLW_FLIP_PAIRS

    def __init__(self, split: str = "train", size: int | None = None, seed: int = 0, image_size: int = 128, *,
                 keep_inside: bool = True, max_rotation: float = 30.0, max_yaw: float = 30.0,
                 max_pitch: float = 12.0, occlusion_prob: float = 0.3):
        _check_split(split)
        size = DEFAULT_SIZES[split] if size is None else size
        if size < 1 or image_size < 16:
            raise ValueError(f"size must be >= 1 and image_size >= 16, got {size} and {image_size}")
        self.seed, self.image_size = seed, image_size
        scenes = [random_face_scene(_item_rng(seed, split, index), image_size, keep_inside=keep_inside,
                                    max_rotation=max_rotation, max_yaw=max_yaw, max_pitch=max_pitch,
                                    occlusion_prob=occlusion_prob) for index in range(size)]
        keypoints = np.stack([scene.landmarks for scene in scenes])
        metas = [{"occluded": np.any([shape.contains(scene.landmarks) for shape in scene.occluders], axis=0)
                  if scene.occluders else np.zeros(WFLW_NUM_KEYPOINTS, dtype=bool),
                  "yaw": math.degrees(scene.pose.yaw), "pitch": math.degrees(scene.pose.pitch),
                  "roll": math.degrees(scene.pose.roll)} for scene in scenes]
        super().__init__(split=split, loaders=[functools.partial(render_face, scene) for scene in scenes],
                         keypoints=keypoints, boxes=np.stack([scene.box for scene in scenes]),
                         normalisers=metrics.inter_ocular(keypoints, *WFLW_INTER_OCULAR),
                         metas=metas, inter_pupil=metrics.inter_ocular(keypoints, *WFLW_PUPILS))


# -------------------------------------------------------------------------------- people

@dataclass
class PersonScene:
    """Everything needed to render one synthetic person (see :func:`render_person`)."""

    image_size: int
    keypoints: np.ndarray  # (17, 2) image px, COCO order
    flags: np.ndarray  # (17,) COCO v: 2 visible, 1 occluded (labelled), 0 outside the image
    parts: list[Shape]  # the body, in drawing order
    background: tuple[int, int, int]
    clutter: list[Shape]
    occluders: list[Shape]
    finish: Finish
    box: np.ndarray  # (4,) x1, y1, x2, y2 of the drawn body, clipped to the image
    area: float  # px² of the drawn body inside the image


def _limb(start: np.ndarray, end: np.ndarray, half_width: float) -> np.ndarray:
    """The quadrilateral of a limb segment of the given half width (body units)."""
    direction = end - start
    normal = np.array([-direction[1], direction[0]]) / max(np.linalg.norm(direction), 1e-9) * half_width
    return np.array([start + normal, end + normal, end - normal, start - normal])


def _bend(direction: np.ndarray, angle: float) -> np.ndarray:
    return _rotation(angle) @ direction


@dataclass
class Body:
    """An articulated body in body units (pelvis at 0, torso length 1, y down), facing the
    viewer, so the person's left side is on the image right as in COCO."""

    keypoints: np.ndarray  # (17, 2) COCO order
    yaw: float  # radians; > 0 turns the face toward the person's left (image right)
    torso_axis: np.ndarray  # (2, 2) rotation of the torso (lean)
    hip_half: float
    head_centre: np.ndarray
    head_axis: np.ndarray  # (2, 2) rotation of the head
    head_half_size: tuple[float, float]  # (width, height) / 2
    limbs: dict[str, dict[str, np.ndarray]]  # "left"/"right" -> joints and segment directions
    hidden_ear: int | None  # the ear turned away from the viewer


def random_body(rng: np.random.Generator) -> Body:
    """Body yaw up to ±35°, torso lean ±15°, head tilt ±20°; arms anywhere from hanging to
    raised, elbows and knees bent either way, legs mostly standing, sometimes kicking."""
    yaw = math.radians(rng.uniform(-35, 35))
    cos_yaw, sin_yaw = math.cos(yaw), math.sin(yaw)
    torso_axis = _rotation(math.radians(rng.uniform(-15, 15)))
    shoulder_half, hip_half = rng.uniform(0.27, 0.36) * cos_yaw, rng.uniform(0.15, 0.22) * cos_yaw
    keypoints = np.zeros((COCO_NUM_KEYPOINTS, 2))
    keypoints[11], keypoints[12] = [hip_half, 0], [-hip_half, 0]
    shoulder_centre = torso_axis @ [0, -1]
    keypoints[5] = shoulder_centre + torso_axis @ [shoulder_half, 0]
    keypoints[6] = shoulder_centre - torso_axis @ [shoulder_half, 0]
    # head: an ellipse above the neck; eyes and nose on its front, ears on its sides
    head_axis = torso_axis @ _rotation(math.radians(rng.uniform(-20, 20)))
    half_height = rng.uniform(0.19, 0.23)
    half_width = 0.8 * half_height
    head_centre = shoulder_centre + head_axis @ [0, -(0.12 + half_height)]

    def on_head(x, z, y):  # head-frame point (x right, z toward the viewer, y down; head radii = 1)
        return head_centre + head_axis @ [(x * cos_yaw + z * sin_yaw) * half_width, y * half_height]

    keypoints[0] = on_head(0.0, 1.0, 0.2)
    keypoints[1], keypoints[2] = on_head(0.38, 0.85, -0.08), on_head(-0.38, 0.85, -0.08)
    keypoints[3], keypoints[4] = on_head(1.0, 0.0, 0.0), on_head(-1.0, 0.0, 0.0)
    hidden_ear = 3 if sin_yaw > 0.25 else 4 if sin_yaw < -0.25 else None
    # limbs: angles from straight down, positive outward
    limbs = {}
    for side, sign, first in (("left", 1, 7), ("right", -1, 8)):
        shoulder, hip = keypoints[first - 2], keypoints[first + 4]
        raised = math.radians(rng.uniform(-10, 45) if rng.random() < 0.5 else rng.uniform(45, 170))
        upper = torso_axis @ [sign * math.sin(raised), math.cos(raised)]
        elbow = shoulder + rng.uniform(0.42, 0.52) * upper
        forearm = _bend(upper, math.radians(rng.choice([-1, 1]) * rng.uniform(0, 150)))
        wrist = elbow + rng.uniform(0.36, 0.46) * forearm
        spread = math.radians(rng.uniform(-10, 35) if rng.random() < 0.85 else rng.uniform(35, 100))
        thigh = np.array([sign * math.sin(spread), math.cos(spread)])
        knee = hip + rng.uniform(0.55, 0.65) * thigh
        flex = rng.uniform(0, 30) if rng.random() < 0.7 else rng.uniform(30, 120)
        shin = _bend(thigh, math.radians(rng.choice([-1, 1]) * flex))
        ankle = knee + rng.uniform(0.5, 0.6) * shin
        keypoints[first], keypoints[first + 2], keypoints[first + 6], keypoints[first + 8] = elbow, wrist, knee, ankle
        limbs[side] = {"shoulder": shoulder, "elbow": elbow, "wrist": wrist, "forearm": forearm, "hip": hip,
                       "knee": knee, "ankle": ankle, "shin": shin, "sign": sign}
    return Body(keypoints=keypoints, yaw=yaw, torso_axis=torso_axis, hip_half=hip_half, head_centre=head_centre,
                head_axis=head_axis, head_half_size=(half_width, half_height), limbs=limbs, hidden_ear=hidden_ear)


def dress_body(rng: np.random.Generator, body: Body) -> tuple[list[tuple[np.ndarray, tuple]], dict]:
    """The body's drawn parts as ``(polygon in body units, colour)``, back to front, and the colours.

    Every joint sits on visible structure: shoulders on the shirt's corners, hips where the
    legs leave the pants, elbows/knees at a darker joint patch or where a sleeve/short ends,
    wrists where the hand begins, ankles at the top of the shoe, face points on the head.
    """
    skin = _skin_colour(rng)
    colours = {"skin": _colour(skin), "shade": _colour(skin * 0.8), "hands": _colour(skin * 0.9),
               "shirt": _random_colour(rng), "pants": _random_colour(rng), "shoes": _colour(rng.uniform(0, 90, 3)),
               "hair": _colour([[25, 20, 18], [70, 45, 30], [120, 85, 50], [200, 170, 110]][rng.integers(4)])}
    colours["shirt_joint"] = _colour(np.array(colours["shirt"]) * 0.75)
    colours["pants_joint"] = _colour(np.array(colours["pants"]) * 0.75)
    short_sleeves, shorts, has_hair = rng.random() < 0.5, rng.random() < 0.4, rng.random() < 0.85
    points, parts = body.keypoints, []

    def disc(centre, radius, colour):
        parts.append((_ellipse_points(centre, (radius, radius), 12), colour))

    def leg(limb):
        parts.append((_limb(limb["hip"], limb["knee"], 0.1), colours["pants"]))
        disc(limb["knee"], 0.085, colours["pants"] if shorts else colours["pants_joint"])
        parts.append((_limb(limb["knee"], limb["ankle"], 0.075), colours["skin"] if shorts else colours["pants"]))
        foot = limb["ankle"] + 0.07 * limb["shin"] + [limb["sign"] * 0.06, 0.0]
        parts.append((_ellipse_points(foot, (0.11, 0.06), 12), colours["shoes"]))

    def arm(limb):
        parts.append((_limb(limb["shoulder"], limb["elbow"], 0.065), colours["shirt"]))
        disc(limb["elbow"], 0.062, colours["shirt"] if short_sleeves else colours["shirt_joint"])
        forearm_colour = colours["skin"] if short_sleeves else colours["shirt"]
        parts.append((_limb(limb["elbow"], limb["wrist"], 0.055), forearm_colour))
        disc(limb["wrist"] + 0.06 * limb["forearm"], 0.065, colours["hands"])

    far, near = (body.limbs["left"], body.limbs["right"]) if body.yaw > 0 else (body.limbs["right"], body.limbs["left"])
    leg(far)
    leg(near)
    arm(far)
    axis, hip_half = body.torso_axis, body.hip_half
    waist = [axis @ [0, -0.15] + axis @ [side * (hip_half + 0.09), 0] for side in (1, -1)]
    parts.append((np.array([waist[0], waist[1], points[12] + [-0.1, 0.02], [0, 0.14], points[11] + [0.1, 0.02]]),
                  colours["pants"]))
    shirt = [points[5] + axis @ [0.07, 0.02], points[6] + axis @ [-0.07, 0.02], waist[1], waist[0]]
    parts.append((np.array(shirt), colours["shirt"]))
    disc(points[5], 0.08, colours["shirt"])
    disc(points[6], 0.08, colours["shirt"])
    neck_base = (points[5] + points[6]) / 2
    parts.append((_limb(neck_base, body.head_centre, 0.065), colours["shade"]))
    half_width, half_height = body.head_half_size
    for ear in (3, 4):
        if ear != body.hidden_ear:
            disc(points[ear], 0.28 * half_height, colours["shade"])
    to_body = lambda local: body.head_centre + np.asarray(local) @ body.head_axis.T  # noqa: E731
    parts.append((to_body(_ellipse_points((0, 0), (half_width, half_height), 20)), colours["skin"]))
    if has_hair:
        cap = _ellipse_points((0, -0.1 * half_height), (1.08 * half_width, 0.95 * half_height), 20)
        parts.append((to_body(cap[cap[:, 1] <= -0.25 * half_height]), colours["hair"]))
    for eye in (1, 2):
        disc(points[eye], 0.07 * half_width, (20, 20, 20))
    nose = points[0] + np.array([[-0.12, -0.25], [0.12, -0.25], [0.0, 0.0]]) @ body.head_axis.T * half_width
    parts.append((nose, colours["shade"]))
    arm(near)
    return parts, colours


def random_person_scene(rng: np.random.Generator, image_size: int = 128, *, keep_inside: bool = True,
                        occlusion_prob: float = 0.35, min_labelled: int = 6) -> PersonScene:
    """Draw one person (:func:`random_body`, :func:`dress_body`), rotate it (mostly upright,
    sometimes lying), scale and place it; then occluders, clutter (with loose limbs) and the
    photometric finish. Placements that overhang the border keep ``min_labelled`` joints inside."""
    body = random_body(rng)
    parts, colours = dress_body(rng, body)
    angle = rng.uniform(-25, 25) if rng.random() < 0.85 else rng.uniform(-100, 100)
    scale = rng.uniform(0.17, 0.34) * image_size  # px per torso length
    placement = _rotation(math.radians(angle)) * scale
    placed = body.keypoints @ placement.T
    margin = 2.0
    extent = (placed.max(axis=0) - placed.min(axis=0)).max()
    if keep_inside and extent > image_size - 1 - 2 * margin:  # shrink to fit
        scale *= (image_size - 1 - 2 * margin) / extent * 0.98
        placement = _rotation(math.radians(angle)) * scale
        placed = body.keypoints @ placement.T
    for _ in range(100):
        shift = _placement_shift(rng, placed, image_size, keep_inside, margin)
        inside = ((placed + shift >= -0.5) & (placed + shift <= image_size - 0.5)).all(axis=1)
        if inside.sum() >= min_labelled:
            break
    keypoints = placed + shift
    shapes = [Shape("polygon", polygon @ placement.T + shift, colour) for polygon, colour in parts]
    outline = np.concatenate([shape.points for shape in shapes])
    box = np.clip(np.concatenate([outline.min(axis=0), outline.max(axis=0)]), -0.5, image_size - 0.5)
    mask = Image.new("L", (image_size, image_size), 0)
    mask_draw = ImageDraw.Draw(mask)
    for shape in shapes:
        mask_draw.polygon((shape.points + 0.5).ravel().tolist(), fill=255)  # as _canvas at 1x
    occluders = []
    if rng.random() < occlusion_prob:
        for _ in range(int(rng.integers(1, 3))):
            centre = keypoints[rng.integers(COCO_NUM_KEYPOINTS)] + rng.normal(0, 0.05 * image_size, 2)
            occluders.append(_random_shape(rng, centre, rng.uniform(0.3, 0.7) * scale, _random_colour(rng)))
    flags = np.full(COCO_NUM_KEYPOINTS, 2)
    for shape in occluders:
        flags[shape.contains(keypoints)] = 1
    if body.hidden_ear is not None:
        flags[body.hidden_ear] = 1
    flags[~inside] = 0
    clutter = _random_clutter(rng, image_size, (3, 10))
    for _ in range(int(rng.integers(0, 4))):  # loose limbs: body-like distractors
        start = rng.uniform(0, image_size, 2)
        end = start + rng.normal(0, 0.15 * image_size, 2)
        colour = colours[rng.choice(["skin", "shirt", "pants"])]
        clutter.append(Shape("bar", np.array([start, end]), colour, rng.uniform(0.08, 0.2) * scale))
    return PersonScene(image_size=image_size, keypoints=keypoints, flags=flags, parts=shapes,
                       background=_random_colour(rng), clutter=clutter, occluders=occluders,
                       finish=_random_finish(rng), box=box.astype(np.float32),
                       area=float(np.count_nonzero(np.asarray(mask))))


def render_person(scene: PersonScene) -> np.ndarray:
    """Render a :class:`PersonScene` → RGB ``uint8`` ``(S, S, 3)``."""
    canvas, draw = _new_canvas(scene.image_size, scene.background)
    for shape in (*scene.clutter, *scene.parts, *scene.occluders):
        shape.draw(draw)
    return _finish(canvas, scene.image_size, scene.finish)


class SyntheticPeople(LandmarkDataset):
    """Procedural people with the 17 COCO joints (order, flip pairs and OKS protocol of COCO).

    Args:
        split: ``"train"`` or ``"test"`` (independent random streams).
        size: number of people (default 4000 train / 500 test), one per image.
        seed: item ``i`` is drawn from ``(seed, split, i)`` alone.
        image_size: side of the square images, px.
        keep_inside: keep every joint at least 2 px inside the image (else a person may
            overhang the border by up to 20 % of its extent; joints outside get ``v = 0``).
        occlusion_prob: probability of one or two occluders over the body.

    ``visible`` = labelled (COCO ``v > 0``); ``meta["keypoint_flags"]`` holds ``v`` (2 visible,
    1 occluded by an occluder or the head, 0 outside the image); ``meta["area"]`` is the
    drawn body's pixel count, ``meta["image_id"]`` is ``index + 1``. ``box`` (= ``box_p1``'s
    role for COCO: the ground-truth person box) bounds the drawn body, clipped to the image.
    ``evaluate`` runs COCOeval on an in-memory COCO ground truth of the evaluated items.
    """

    name = "synthetic-pose"
    num_keypoints = COCO_NUM_KEYPOINTS
    flip_pairs = COCO_FLIP_PAIRS

    def __init__(self, split: str = "train", size: int | None = None, seed: int = 0, image_size: int = 128, *,
                 keep_inside: bool = True, occlusion_prob: float = 0.35):
        _check_split(split)
        size = DEFAULT_SIZES[split] if size is None else size
        if size < 1 or image_size < 16:
            raise ValueError(f"size must be >= 1 and image_size >= 16, got {size} and {image_size}")
        self.split, self.seed, self.image_size = split, seed, image_size
        self.scenes = [random_person_scene(_item_rng(seed, split, index), image_size, keep_inside=keep_inside,
                                           occlusion_prob=occlusion_prob) for index in range(size)]

    def __len__(self) -> int:
        return len(self.scenes)

    def __getitem__(self, index: int) -> Sample:
        if not -len(self) <= index < len(self):
            raise IndexError(f"{self.name} {self.split}: index {index} out of range for {len(self)} items")
        index = index % len(self)
        scene = self.scenes[index]
        keypoints = scene.keypoints.astype(np.float32)
        visible = scene.flags > 0
        return Sample(load_image=functools.partial(render_person, scene), keypoints=keypoints, visible=visible,
                      box=scene.box.copy(), box_p1=landmark_box(keypoints, visible),
                      meta={"image_id": index + 1, "ann_id": index + 1, "area": scene.area,
                            "keypoint_flags": scene.flags.copy()})

    def coco_ground_truth(self, indices: Sequence[int] | None = None) -> dict:
        """The COCO person-keypoints ground truth (a ``person_keypoints_*.json`` dict) of the items."""
        indices = range(len(self)) if indices is None else indices
        images, annotations = [], []
        for index in indices:
            scene = self.scenes[index]
            flags = scene.flags
            keypoints = np.where(flags[:, None] > 0, scene.keypoints, 0.0)
            x1, y1, x2, y2 = (float(v) for v in scene.box)
            images.append({"id": int(index) + 1, "file_name": f"{int(index) + 1:012d}.jpg",
                           "width": self.image_size, "height": self.image_size})
            annotations.append({"id": int(index) + 1, "image_id": int(index) + 1, "category_id": PERSON_CATEGORY_ID,
                                "iscrowd": 0, "area": scene.area, "bbox": [x1, y1, x2 - x1, y2 - y1],
                                "num_keypoints": int((flags > 0).sum()),
                                "keypoints": np.concatenate([keypoints, flags[:, None]], axis=1).ravel().tolist()})
        category = {"supercategory": "person", "id": PERSON_CATEGORY_ID, "name": "person",
                    "keypoints": list(COCO_KEYPOINT_NAMES), "skeleton": [list(pair) for pair in COCO_SKELETON]}
        return {"images": images, "annotations": annotations, "categories": [category]}

    def evaluate(self, predictions: np.ndarray, indices: Sequence[int] | None = None,
                 keypoint_scores: np.ndarray | None = None) -> dict[str, float]:
        """COCO keypoint AP/AR of predictions ``(N, 17, 2)`` (image px), one person per item.

        Keypoint scores (``(N, 17)``, default 1) enter the results file; the instance score is
        the mean of the keypoint scores above 0.2 (ground-truth boxes, so no box score), as
        :meth:`h3r.data.coco.COCODataset.results`.
        """
        indices = np.arange(len(self)) if indices is None else np.asarray(indices, dtype=np.int64)
        predictions = np.asarray(predictions, dtype=np.float64)
        expected = (len(indices), COCO_NUM_KEYPOINTS, 2)
        if predictions.shape != expected:
            raise ValueError(f"predictions: expected shape {expected} for {self.name} {self.split}, "
                             f"got {predictions.shape}")
        scores = np.ones(expected[:2]) if keypoint_scores is None else np.asarray(keypoint_scores, dtype=np.float64)
        if scores.shape != expected[:2]:
            raise ValueError(f"keypoint_scores: expected shape {expected[:2]}, got {scores.shape}")
        instance_scores = mean_confident_score(scores)
        results = []
        for row, index in enumerate(indices):
            triplets = np.concatenate([predictions[row], scores[row][:, None]], axis=1)
            results.append({"image_id": int(index) + 1, "category_id": PERSON_CATEGORY_ID,
                            "keypoints": triplets.ravel().tolist(), "score": float(instance_scores[row])})
        return metrics.coco_keypoint_ap(self.coco_ground_truth(indices), results)
