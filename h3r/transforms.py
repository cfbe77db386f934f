"""Top-down crops and augmentation; the keypoints follow the image through one affine.

Conventions: points are ``(x, y)``, x the column, 0-based, pixel centres at integers
(the pixel at row r, column c has its centre at ``(x=c, y=r)``). An *affine* is a
``(2, 3)`` float64 matrix ``A`` mapping a point ``p`` to ``A[:, :2] @ p + A[:, 2]``; the
one a :class:`TopDownTransform` returns maps original-image pixels to input pixels of
the crop.

The crop is the square of side ``box_scale * max(w, h)`` centred on the box, whose edges
land on the outer edges of the ``S x S`` input, so its centre goes to ``((S-1)/2, (S-1)/2)``.
Rotation, scale jitter, translation and horizontal flip compose into that one affine, which
is applied to the image (Pillow, bilinear, zero fill) and to the keypoints exactly.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
from PIL import Image

from h3r.data.base import Sample

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass
class CropConfig:
    """How a sample becomes a network input.

    Attributes:
        input_size: S, side of the square input in pixels.
        box_scale: crop side = ``box_scale * max(box width, box height)``.
        rotation: maximum rotation in degrees; the angle is drawn from U(-rotation, rotation).
            Positive angles turn the content counter-clockwise as displayed (y down).
        scale_jitter: the crop side is multiplied by U(1 - scale_jitter, 1 + scale_jitter).
        translate: the crop centre moves by U(-translate, translate) crop sides along each axis.
        flip_prob: probability of a horizontal flip.
        colour_jitter: strength j of brightness, contrast and saturation jitter, each factor
            drawn from U(1 - j, 1 + j).
        mean, std: per-channel normalisation of the [0, 1] RGB image.
    """

    input_size: int = 256
    box_scale: float = 1.25
    rotation: float = 0.0
    scale_jitter: float = 0.0
    translate: float = 0.0
    flip_prob: float = 0.0
    colour_jitter: float = 0.0
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD

    def __post_init__(self):
        """Checks every value once; an error names the setting (``rotation: ...``) as a user writes it."""
        try:
            self.mean, self.std = tuple(map(float, self.mean)), tuple(map(float, self.std))
        except (TypeError, ValueError):
            raise ValueError(f"mean, std: expected 3 numbers each, got {self.mean!r}, {self.std!r}") from None
        for name in ("box_scale", "rotation", "scale_jitter", "translate", "flip_prob", "colour_jitter"):
            value = getattr(self, name)
            if isinstance(value, float) and not math.isfinite(value):  # inf passes the range checks below
                raise ValueError(f"{name}: expected a finite number, got {value!r}")
        if not self.input_size >= 1:
            raise ValueError(f"input_size: expected a positive number of pixels, got {self.input_size!r}")
        if not self.box_scale > 0:
            raise ValueError(f"box_scale: expected a positive number, got {self.box_scale!r}")
        for name in ("rotation", "translate", "colour_jitter"):
            if not getattr(self, name) >= 0:
                raise ValueError(f"{name}: expected a number >= 0, got {getattr(self, name)!r}")
        if not 0 <= self.scale_jitter < 1:
            raise ValueError(f"scale_jitter: expected a number in [0, 1), got {self.scale_jitter!r}")
        if not 0 <= self.flip_prob <= 1:
            raise ValueError(f"flip_prob: expected a probability in [0, 1], got {self.flip_prob!r}")
        if len(self.mean) != 3 or len(self.std) != 3 or not min(self.std) > 0:
            raise ValueError(f"mean, std: expected 3 values each (std > 0), got {self.mean}, {self.std}")


def crop_affine(
    box: Sequence[float],
    input_size: int,
    box_scale: float = 1.25,
    rotation: float = 0.0,
    scale: float = 1.0,
    shift: tuple[float, float] = (0.0, 0.0),
    flip: bool = False,
) -> np.ndarray:
    """The ``(2, 3)`` float64 affine from image pixels to input pixels of a crop.

    Args:
        box: ``(x1, y1, x2, y2)`` in image pixels; the crop side is
            ``box_scale * scale * max(x2 - x1, y2 - y1)``, centred on the box centre.
        input_size: S; the crop's outer edges go to the input's outer edges
            (pixel-centre range ``[-0.5, S - 0.5]``).
        rotation: degrees, counter-clockwise as displayed, about the crop centre.
        shift: translation of the crop centre in crop sides, ``(dx, dy)``.
        flip: mirror horizontally afterwards: ``x -> S - 1 - x``.
    """
    x1, y1, x2, y2 = (float(v) for v in box)
    side = box_scale * scale * max(x2 - x1, y2 - y1)
    if not side > 0 or not math.isfinite(side):
        raise ValueError(f"box {tuple(box)} must have positive, finite width or height")
    centre_x = (x1 + x2) / 2 + shift[0] * side
    centre_y = (y1 + y2) / 2 + shift[1] * side
    zoom = input_size / side
    cos, sin = math.cos(math.radians(rotation)) * zoom, math.sin(math.radians(rotation)) * zoom
    middle = (input_size - 1) / 2
    # out = zoom * R @ (p - centre) + middle, R = [[cos, sin], [-sin, cos]]
    affine = np.array(
        [
            [cos, sin, middle - cos * centre_x - sin * centre_y],
            [-sin, cos, middle + sin * centre_x - cos * centre_y],
        ]
    )
    if flip:
        affine[0] = -affine[0]
        affine[0, 2] += input_size - 1
    return affine


def invert_affine(affine):
    """Inverse of ``(..., 2, 3)`` affines (numpy array or torch tensor, same type back)."""
    if not isinstance(affine, torch.Tensor):
        affine = np.asarray(affine, dtype=np.float64)
    if affine.shape[-2:] != (2, 3):
        raise ValueError(f"affine must have shape (..., 2, 3), got {tuple(affine.shape)}")
    if isinstance(affine, torch.Tensor):
        linear_inverse = torch.linalg.inv(affine[..., :2])
        offset = -(linear_inverse @ affine[..., 2:])
        return torch.cat([linear_inverse, offset], dim=-1)
    linear_inverse = np.linalg.inv(affine[..., :2])
    offset = -(linear_inverse @ affine[..., 2:])
    return np.concatenate([linear_inverse, offset], axis=-1)


def apply_affine(points, affine):
    """Map ``(..., K, 2)`` points by ``(..., 2, 3)`` affines (batch dimensions broadcast).

    Works on numpy arrays or torch tensors; computes in float64 and returns the points' type
    (and floating dtype).
    """
    if isinstance(points, torch.Tensor):
        affine = torch.as_tensor(affine, dtype=torch.float64, device=points.device)
    else:
        points, affine = np.asarray(points), np.asarray(affine, dtype=np.float64)
    if affine.shape[-2:] != (2, 3) or points.shape[-1] != 2:
        raise ValueError(f"expected points (..., K, 2) and affine (..., 2, 3), got {tuple(points.shape)} and {tuple(affine.shape)}")
    if isinstance(points, torch.Tensor):
        mapped = points.double() @ affine[..., :2].transpose(-1, -2) + affine[..., None, :, 2]
        return mapped.to(points.dtype) if points.is_floating_point() else mapped
    mapped = points.astype(np.float64) @ np.swapaxes(affine[..., :2], -1, -2) + affine[..., None, :, 2]
    return mapped.astype(points.dtype if np.issubdtype(points.dtype, np.floating) else np.float64)


def flip_permutation(num_keypoints: int, flip_pairs: Sequence[tuple[int, int]]) -> np.ndarray:
    """Index array ``perm`` with ``flipped[..., i, :] = keypoints[..., perm[i], :]`` (pairs swapped)."""
    permutation = np.arange(num_keypoints)
    seen: set[int] = set()
    for pair in flip_pairs:
        if len(pair) != 2:
            raise ValueError(f"flip pair {pair!r} must hold two indices")
        left, right = int(pair[0]), int(pair[1])
        for index in (left, right):
            if not 0 <= index < num_keypoints:
                raise ValueError(f"flip pair {pair!r} has index {index} outside [0, {num_keypoints})")
            if index in seen:
                raise ValueError(f"flip pairs name keypoint {index} more than once")
            seen.add(index)
        permutation[left], permutation[right] = right, left
    return permutation


def flip_keypoints(keypoints, width: int, flip_pairs: Sequence[tuple[int, int]]):
    """Mirror ``(..., K, 2)`` points in an image ``width`` pixels wide: ``x -> width - 1 - x``, pairs swapped.

    The flip test: predict on the flipped input, then ``flip_keypoints(coords, S, flip_pairs)``
    brings the prediction back to the unflipped input. Numpy or torch in, same type out.
    Applying it twice is the identity.
    """
    permutation = flip_permutation(keypoints.shape[-2], flip_pairs)
    if isinstance(keypoints, torch.Tensor):
        flipped = keypoints[..., torch.from_numpy(permutation).to(keypoints.device), :].clone()
    else:
        flipped = np.asarray(keypoints)[..., permutation, :].copy()
    flipped[..., 0] = (width - 1) - flipped[..., 0]
    return flipped


def _pillow_affine_data(image_to_input: np.ndarray) -> tuple[float, ...]:
    """Pillow's ``Image.AFFINE`` coefficients for an image -> input affine.

    Pillow maps *output* to *input* in pixel-corner coordinates (centre of pixel i at
    i + 0.5): ``input_corner = L @ output_corner + c``. With our centre convention,
    ``input = L @ output + t``, this gives ``c = t + 0.5 - 0.5 * L @ (1, 1)``.
    """
    inverse = invert_affine(image_to_input)
    linear, offset = inverse[:, :2], inverse[:, 2]
    corner_offset = offset + 0.5 - 0.5 * linear.sum(axis=1)
    return (linear[0, 0], linear[0, 1], corner_offset[0], linear[1, 0], linear[1, 1], corner_offset[1])


GREY_WEIGHTS = (0.299, 0.587, 0.114)  # ITU-R 601 luma of RGB


def _jitter_colours(image: torch.Tensor, strength: float, rng: np.random.Generator) -> torch.Tensor:
    """Brightness, contrast and saturation jitter (in this order) of a (3, H, W) RGB image in [0, 1], in place."""
    brightness, contrast, saturation = (float(factor) for factor in rng.uniform(1 - strength, 1 + strength, size=3))
    weights = torch.tensor(GREY_WEIGHTS).view(3, 1, 1)
    image.mul_(brightness)
    mean_grey = float((image * weights).sum(0).mean())
    image.sub_(mean_grey).mul_(contrast).add_(mean_grey)
    grey = (image * weights).sum(0, keepdim=True)
    image.sub_(grey).mul_(saturation).add_(grey)
    return image.clamp_(0.0, 1.0)


class TopDownTransform:
    """Crop a :class:`~h3r.data.base.Sample` around its box, augment, normalise.

    ``transform(sample, rng)`` returns a dict:
        ``image``: float32 tensor (3, S, S), normalised with ``config.mean``/``config.std``;
        ``keypoints``: float32 tensor (K, 2) in input pixels of the crop;
        ``visible``: bool tensor (K,): visible in the sample *and* inside the crop
            (``0 <= x, y <= S - 1``);
        ``affine``: float64 tensor (2, 3) mapping original-image pixels to input pixels;
        ``flipped``: whether a horizontal flip was applied (pairs are already swapped).

    ``rng`` draws the augmentation (rotation, scale, translation, flip, colour, in a fixed
    order), so a given seed gives the same output; ``rng=None`` applies no random
    augmentation at all (the plain crop, for evaluation), whatever the config says.
    """

    def __init__(self, config: CropConfig, flip_pairs: Sequence[tuple[int, int]] = ()):
        self.config = config
        self.flip_pairs = [tuple(pair) for pair in flip_pairs]
        self.mean = torch.tensor(config.mean, dtype=torch.float32).view(3, 1, 1)
        self.std = torch.tensor(config.std, dtype=torch.float32).view(3, 1, 1)

    def sample_augmentation(self, rng: np.random.Generator | None) -> dict:
        """The random parameters of one crop (the identity augmentation when ``rng`` is None)."""
        config = self.config
        if rng is None:
            return {"rotation": 0.0, "scale": 1.0, "shift": (0.0, 0.0), "flip": False}
        rotation = rng.uniform(-config.rotation, config.rotation) if config.rotation > 0 else 0.0
        scale = rng.uniform(1 - config.scale_jitter, 1 + config.scale_jitter) if config.scale_jitter > 0 else 1.0
        shift = tuple(rng.uniform(-config.translate, config.translate, size=2)) if config.translate > 0 else (0.0, 0.0)
        flip = bool(rng.random() < config.flip_prob) if config.flip_prob > 0 else False
        return {"rotation": float(rotation), "scale": float(scale), "shift": shift, "flip": flip}

    def __call__(self, sample: Sample, rng: np.random.Generator | None = None) -> dict:
        config = self.config
        size = config.input_size
        keypoints = np.asarray(sample.keypoints, dtype=np.float64)
        visible = np.asarray(sample.visible, dtype=bool)
        if keypoints.ndim != 2 or keypoints.shape[1] != 2 or visible.shape != (keypoints.shape[0],):
            raise ValueError(f"sample keypoints must be (K, 2) and visible (K,), got {keypoints.shape} and {visible.shape}")

        augmentation = self.sample_augmentation(rng)
        affine = crop_affine(sample.box, size, config.box_scale, **augmentation)

        image = sample.image()
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise ValueError(f"sample image must be (H, W, 3) uint8 RGB, got shape {image.shape} and dtype {image.dtype}")
        crop = Image.fromarray(image).transform(
            (size, size), Image.Transform.AFFINE, _pillow_affine_data(affine), resample=Image.Resampling.BILINEAR
        )
        image_tensor = torch.from_numpy(np.array(crop)).permute(2, 0, 1).contiguous().float().mul_(1 / 255)
        if rng is not None and config.colour_jitter > 0:
            image_tensor = _jitter_colours(image_tensor, config.colour_jitter, rng)
        image_tensor.sub_(self.mean).div_(self.std)

        moved, visible = self.crop_keypoints(keypoints, visible, affine, augmentation["flip"])
        return {
            "image": image_tensor,
            "keypoints": moved,
            "visible": visible,
            "affine": torch.from_numpy(affine),
            "flipped": augmentation["flip"],
        }

    def crop_keypoints(self, keypoints: np.ndarray, visible: np.ndarray, affine: np.ndarray,
                       flip: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """``(K, 2)`` float64 image-pixel keypoints and ``(K,)`` visibility -> input pixels ``(K, 2)``
        float32 and visibility (visible *and* finite inside ``[0, S - 1]``), flip pairs swapped when ``flip``."""
        size = self.config.input_size
        moved = apply_affine(keypoints, affine)
        inside = np.all(np.isfinite(moved) & (moved >= 0) & (moved <= size - 1), axis=1)
        visible = visible & inside
        if flip:
            permutation = flip_permutation(len(keypoints), self.flip_pairs)
            moved, visible = moved[permutation], visible[permutation]
        return torch.from_numpy(moved.astype(np.float32)), torch.from_numpy(visible)
