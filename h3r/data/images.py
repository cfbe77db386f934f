"""Image decoding shared by the readers: always RGB ``uint8`` ``(H, W, 3)``."""
from __future__ import annotations

import functools
import os
from typing import Callable

import numpy as np
from PIL import Image, UnidentifiedImageError

# Pillow formats that only identify a file (stubs needing a plug-in or an external program)
# or are not still images: a file with one of these extensions is not taken as an image.
_NOT_IMAGES = {".bufr", ".grib", ".h5", ".hdf", ".mpeg", ".mpg", ".eps", ".ps", ".emf", ".wmf"}


def _readable_extensions() -> tuple[str, ...]:
    Image.init()
    registered = Image.registered_extensions()
    return tuple(sorted(extension for extension, kind in registered.items()
                        if kind in Image.OPEN and extension not in _NOT_IMAGES))


# Lower-case extensions (with the dot) of every image format this Pillow decodes: .jpg, .png,
# .bmp, .ppm, .pgm, .tif, .gif, .webp, ... Compare ``os.path.splitext(name)[1].lower()``.
IMAGE_EXTENSIONS = _readable_extensions()


def as_rgb(image: np.ndarray, source: str = "image") -> np.ndarray:
    """Grey ``(H, W)`` or ``(H, W, 1)`` → ``(H, W, 3)``; RGBA → RGB; ``uint8`` out."""
    image = np.asarray(image)
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[:, :, 0]
    if image.ndim == 2:
        image = np.repeat(image[:, :, None], 3, axis=2)
    if image.ndim != 3 or image.shape[2] not in (3, 4):
        raise ValueError(f"{source}: expected an (H, W), (H, W, 3) or (H, W, 4) image, got shape {image.shape}")
    if image.dtype != np.uint8:
        raise ValueError(f"{source}: expected uint8 pixels, got {image.dtype}")
    return np.ascontiguousarray(image[:, :, :3])


def read_rgb(path: str | os.PathLike) -> np.ndarray:
    """Decode an image file with Pillow into RGB ``uint8`` ``(H, W, 3)``."""
    try:
        with Image.open(path) as image:
            return np.asarray(image.convert("RGB"))
    except FileNotFoundError:
        raise FileNotFoundError(f"image not found: {path}") from None
    except (UnidentifiedImageError, OSError) as error:
        raise ValueError(f"cannot decode image {path}: {error}") from error


def image_loader(path: str | os.PathLike) -> Callable[[], np.ndarray]:
    """A picklable zero-argument callable that decodes ``path`` when called (for ``Sample.load_image``)."""
    return functools.partial(read_rgb, os.fspath(path))


def write_image(path: str | os.PathLike, image: np.ndarray) -> None:
    """Save an RGB (or grey ``(H, W)``) ``uint8`` array; the format follows the extension (JPEG at quality 95)."""
    image = np.asarray(image)
    if image.dtype != np.uint8 or image.ndim not in (2, 3):
        raise ValueError(f"{path}: expected a uint8 (H, W) or (H, W, 3) image, got {image.dtype} {image.shape}")
    os.makedirs(os.path.dirname(os.fspath(path)) or ".", exist_ok=True)
    Image.fromarray(image).save(path, quality=95)
