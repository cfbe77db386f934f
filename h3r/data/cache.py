"""Decoded images kept for every process that reads a dataset: :class:`SharedImages`.

The synthetic sets render each image from its scene (1-2 ms at 96-128 px), and a training
run asks for every image once per epoch, in whichever data-loader worker draws it. Rendered
once into shared memory, an image costs a copy from then on, in any worker and in the
training process alike.
"""
from __future__ import annotations

import os
from typing import Callable

import numpy as np
import torch

__all__ = ["SharedImages", "shared_memory_allows"]

# Take at most this fraction of the free space of /dev/shm: the data loader passes its
# batches through the same file system.
SHARED_MEMORY_SHARE = 0.25


def shared_memory_allows(nbytes: int, folder: str = "/dev/shm") -> bool:
    """Whether ``nbytes`` fit in :data:`SHARED_MEMORY_SHARE` of the free space of ``folder``
    (True where the system has no such folder: its shared memory is not a file system there)."""
    if not os.path.isdir(folder):
        return True
    stats = os.statvfs(folder)
    return nbytes <= SHARED_MEMORY_SHARE * stats.f_bavail * stats.f_frsize


class SharedImages:
    """``count`` RGB ``uint8`` images of one ``(height, width)``, in shared memory, each
    stored by the first process that decodes it.

    Make it before the data-loader workers start: they inherit it (fork) or receive it as a
    shared-memory handle (spawn), so an image decoded by one worker is read by every process
    afterwards. :meth:`load` returns a read-only view into the cache, so nothing that reads an
    image can change what the next reader gets. An image is written whole before its
    ``filled`` flag, and a process learns of an item another one read through the loader's
    pipes (a batch, then the next indices), which order the two; two processes that decode the
    same item at once write the same pixels (decoders are deterministic).
    """

    def __init__(self, count: int, height: int, width: int):
        if count < 1 or height < 1 or width < 1:
            raise ValueError(f"count, height and width must be >= 1, got {count}, {height} and {width}")
        self.pixels = torch.empty((count, height, width, 3), dtype=torch.uint8).share_memory_()
        self.filled = torch.zeros(count, dtype=torch.bool).share_memory_()

    def __len__(self) -> int:
        return self.pixels.shape[0]

    def load(self, index: int, decode: Callable[[], np.ndarray]) -> np.ndarray:
        """Image ``index`` (read-only ``(H, W, 3)`` uint8), decoded by ``decode()`` the first time."""
        pixels = self.pixels[index].numpy()
        if not self.filled[index]:
            image = decode()
            if image.shape != pixels.shape or image.dtype != np.uint8:
                raise ValueError(f"image {index}: decoded to {image.dtype} {image.shape}, the cache holds "
                                 f"uint8 {pixels.shape}")
            pixels[...] = image
            self.filled[index] = True
        pixels.flags.writeable = False
        return pixels

    def loader(self, index: int, decode: Callable[[], np.ndarray]) -> "CachedImage":
        """A picklable zero-argument callable (a ``Sample.load_image``) for image ``index``."""
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for a cache of {len(self)} images")
        return CachedImage(self, index, decode)


class CachedImage:
    """``load_image`` of one item of a :class:`SharedImages` (see :meth:`SharedImages.loader`)."""

    def __init__(self, cache: SharedImages, index: int, decode: Callable[[], np.ndarray]):
        self.cache, self.index, self.decode = cache, index, decode

    def __call__(self) -> np.ndarray:
        return self.cache.load(self.index, self.decode)

    def __repr__(self) -> str:
        return f"cached image {self.index} of {self.decode!r}"
