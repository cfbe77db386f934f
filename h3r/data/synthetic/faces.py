"""Synthetic faces with the 98 WFLW landmarks: a parametric face (:class:`FaceShape`) in 3-D,
posed and projected (:class:`FacePose`), drawn from its landmarks (:func:`render_face`), and
the dataset :class:`SyntheticFaces`."""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass, replace
from typing import Sequence

import numpy as np
from PIL import Image, ImageDraw

from h3r import metrics
from h3r.data.base import landmark_box
from h3r.data.faces import FaceDataset
from h3r.data.synthetic.scenery import (DEFAULT_SIZES, SUPERSAMPLE, Finish, Shape, _canvas, _check_split, _colour,
                                        _draw_scenes, _ellipse_points, _finish, _image_loaders, _new_canvas,
                                        _placement_shift, _random_clutter, _random_colour, _random_finish,
                                        _random_shape, _rotation, _skin_colour)
from h3r.data.wflw import WFLW_FLIP_PAIRS, WFLW_INTER_OCULAR, WFLW_NUM_KEYPOINTS, WFLW_PUPILS

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
        cache_images: keep each rendered image in shared memory (``size`` × ``image_size``² × 3
            bytes, filled as items are first read), so that it is rendered once, not once per epoch
            and per evaluation; off where it would take over a quarter of the free ``/dev/shm``.

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
                 max_pitch: float = 12.0, occlusion_prob: float = 0.3, cache_images: bool = True):
        _check_split(split)
        size = DEFAULT_SIZES[split] if size is None else size
        if size < 1 or image_size < 16:
            raise ValueError(f"size must be >= 1 and image_size >= 16, got {size} and {image_size}")
        self.seed, self.image_size = seed, image_size
        scenes = _draw_scenes(functools.partial(random_face_scene, image_size=image_size, keep_inside=keep_inside,
                                                max_rotation=max_rotation, max_yaw=max_yaw, max_pitch=max_pitch,
                                                occlusion_prob=occlusion_prob), seed, split, size)
        keypoints = np.stack([scene.landmarks for scene in scenes])
        metas = [{"occluded": np.any([shape.contains(scene.landmarks) for shape in scene.occluders], axis=0)
                  if scene.occluders else np.zeros(WFLW_NUM_KEYPOINTS, dtype=bool),
                  "yaw": math.degrees(scene.pose.yaw), "pitch": math.degrees(scene.pose.pitch),
                  "roll": math.degrees(scene.pose.roll)} for scene in scenes]
        loaders, self.image_cache = _image_loaders([functools.partial(render_face, scene) for scene in scenes],
                                                   image_size, cache_images)
        super().__init__(split=split, loaders=loaders,
                         keypoints=keypoints, boxes=np.stack([scene.box for scene in scenes]),
                         normalisers=metrics.inter_ocular(keypoints, *WFLW_INTER_OCULAR),
                         metas=metas, inter_pupil=metrics.inter_ocular(keypoints, *WFLW_PUPILS))
