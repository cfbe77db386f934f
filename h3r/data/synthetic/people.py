"""Synthetic people with the 17 COCO joints: an articulated :class:`Body`, dressed and placed
in a scene (:class:`PersonScene`), drawn from its joints (:func:`render_person`), and the
dataset :class:`SyntheticPeople`."""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np
from PIL import Image, ImageDraw

from h3r import metrics
from h3r.data.base import LandmarkDataset, Sample, landmark_box
from h3r.data.coco import COCO_FLIP_PAIRS, COCO_NUM_KEYPOINTS, PERSON_CATEGORY_ID, mean_confident_score
from h3r.data.synthetic.ground_truth import coco_ground_truth
from h3r.data.synthetic.scenery import (DEFAULT_SIZES, Finish, Shape, _check_split, _colour, _draw_scenes,
                                        _ellipse_points, _finish, _image_loaders, _new_canvas, _placement_shift,
                                        _random_clutter, _random_colour, _random_finish, _random_shape, _rotation,
                                        _skin_colour)

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
        cache_images: keep each rendered image in shared memory (``size`` × ``image_size``² × 3
            bytes, filled as items are first read), so that it is rendered once, not once per epoch
            and per evaluation; off where it would take over a quarter of the free ``/dev/shm``.

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
                 keep_inside: bool = True, occlusion_prob: float = 0.35, cache_images: bool = True):
        _check_split(split)
        size = DEFAULT_SIZES[split] if size is None else size
        if size < 1 or image_size < 16:
            raise ValueError(f"size must be >= 1 and image_size >= 16, got {size} and {image_size}")
        self.split, self.seed, self.image_size = split, seed, image_size
        self.scenes = _draw_scenes(functools.partial(random_person_scene, image_size=image_size,
                                                     keep_inside=keep_inside, occlusion_prob=occlusion_prob),
                                   seed, split, size)
        self._loaders, self.image_cache = _image_loaders(
            [functools.partial(render_person, scene) for scene in self.scenes], image_size, cache_images)

    def __len__(self) -> int:
        return len(self.scenes)

    def __getitem__(self, index: int) -> Sample:
        if not -len(self) <= index < len(self):
            raise IndexError(f"{self.name} {self.split}: index {index} out of range for {len(self)} items")
        index = index % len(self)
        scene = self.scenes[index]
        keypoints = scene.keypoints.astype(np.float32)
        visible = scene.flags > 0
        return Sample(load_image=self._loaders[index], keypoints=keypoints, visible=visible,
                      box=scene.box.copy(), box_p1=landmark_box(keypoints, visible),
                      meta={"image_id": index + 1, "ann_id": index + 1, "area": scene.area,
                            "keypoint_flags": scene.flags.copy()})

    def coco_ground_truth(self, indices: Sequence[int] | None = None) -> dict:
        """The COCO person-keypoints ground truth (a ``person_keypoints_*.json`` dict) of the items."""
        indices = range(len(self)) if indices is None else indices
        return coco_ground_truth([(int(index), self.scenes[index]) for index in indices], self.image_size)

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
