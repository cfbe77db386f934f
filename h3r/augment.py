"""On-device augmentation: the DataLoader decodes, the training device warps.

The CPU path (:class:`h3r.transforms.TopDownTransform`) draws the augmentation, warps the
image with Pillow and jitters the colours, all in a DataLoader worker. Here the work is split:

* **in the worker** (:class:`DeviceCropDataset`): decode the image, draw the *same*
  augmentation from the *same* generator (``np.random.default_rng([seed, epoch, index])``,
  as :class:`h3r.crops.CropDataset`), build the *same* affine
  (:func:`h3r.transforms.crop_affine`), move the keypoints as the CPU path does
  (:meth:`h3r.transforms.TopDownTransform.crop_keypoints`: the same bits), and cut from the image
  the smallest axis-aligned region the warp reads (the pre-image of the ``S x S`` input, plus a
  margin). Items are uint8 regions; :func:`collate` pads them to one batch. A dataset that keeps its images in
  an image cache (the synthetic sets) can send no pixels at all (``cached_pixels``): the
  device keeps its own copy of the cache, each image uploaded once.
* **on the device** (:class:`DeviceAugment`): one batched bilinear warp of the uint8
  regions (:func:`warp_bilinear`), the same colour jitter (:func:`jitter_colours`), the same
  normalisation. On CUDA the warp and then the jitter and normalisation are two Triton kernels
  (:mod:`h3r.warp_triton`); the PyTorch operations here are their spec, and run elsewhere.

Sampling semantics matched (Pillow's ``Image.transform(..., AFFINE, resample=BILINEAR)``,
``libImaging/Geometry.c``: ``affine_transform`` + ``bilinear_filter32RGB`` in
``ImagingGenericTransform`` with ``fill=1``): for output pixel ``(i, j)`` (column, row) the
source position in pixel-*corner* coordinates is
``xin = a0 * (i + 0.5) + a1 * (j + 0.5) + a2`` (same for ``yin`` with ``a3..a5``), where
``a`` are the coefficients :func:`h3r.transforms._pillow_affine_data` passes to Pillow;

* outside the image (``xin < 0 or xin >= W or yin < 0 or yin >= H``): all channels 0;
* otherwise ``x = floor(xin - 0.5)``, ``dx = xin - 0.5 - x`` (same for y): the 4 neighbours
  ``x, x + 1`` / ``y, y + 1`` are *clamped* to the image (edge pixels repeat within the
  half-pixel border), interpolated as ``a + (b - a) * d`` along x, then along y;
* the result is *truncated* to uint8 (``(UINT8) v``, not rounded).

With ``exact=True`` (the default) the coordinates and the interpolation are computed in
float64 in the same operation order as Pillow, so the warp is bit-identical to the CPU
path; ``exact=False`` computes in float32 (half the memory traffic), which moves a pixel by
one level (1/255) where float32 rounding crosses an integer.
"""
from __future__ import annotations

import argparse
import math
import time
from typing import Any, Optional, Sequence

import numpy as np
import torch
from torch.utils.data import default_collate

from h3r.crops import CropDataset
from h3r.data.cache import SharedImages
from h3r.loading import PackedBatch
from h3r.transforms import GREY_WEIGHTS, CropConfig, TopDownTransform, _pillow_affine_data, crop_affine

__all__ = ["DeviceCropDataset", "DeviceAugment", "collate", "make_item", "plan_augmentation", "warp_bilinear",
           "augment_from_seeds", "REGION_MARGIN"]

REGION_MARGIN = 2  # pixels kept around the pre-image of the input, for float32 coordinates
# The batch fields DeviceAugment reads (pixels, origin and region_size only for regions, index
# only for the image cache).
DEVICE_FIELDS = ("pixels", "origin", "region_size", "index", "image_size", "pillow", "jitter", "jittered",
                 "keypoints", "visible", "affine", "flipped")
# Output pixels warped at once: bounds the temporaries (exact: ~100 MiB per (.., 3) float64, and the
# 4 neighbours are gathered at once).
CHUNK_PIXELS = 1 << 22

# ----------------------------------------------------------------------------------------------
# Host side (DataLoader workers): draw the augmentation, cut the region the warp reads.


def plan_augmentation(transform: TopDownTransform, box, rng: Optional[np.random.Generator]) -> dict[str, Any]:
    """The random draws of one item, in the CPU path's order: rotation, scale, shift, flip
    (:meth:`TopDownTransform.sample_augmentation`), then the 3 colour factors.

    Returns ``affine`` (2, 3) float64 image -> input (:func:`crop_affine`), ``flip`` and
    ``jitter`` (brightness, contrast, saturation) or None when the CPU path does not jitter.
    """
    config = transform.config
    augmentation = transform.sample_augmentation(rng)
    affine = crop_affine(box, config.input_size, config.box_scale, **augmentation)
    jitter = None
    if rng is not None and config.colour_jitter > 0:
        jitter = rng.uniform(1 - config.colour_jitter, 1 + config.colour_jitter, size=3)
    return {"affine": affine, "flip": augmentation["flip"], "jitter": jitter}


def read_region(pillow: Sequence[float], size: int, width: int, height: int,
                margin: int = REGION_MARGIN) -> tuple[int, int, int, int]:
    """``(x0, y0, x1, y1)`` (inclusive) of the pixels that the warp with Pillow coefficients
    ``pillow`` onto ``size x size`` reads from a ``width x height`` image, plus ``margin``,
    clipped to the image (at least one pixel)."""
    a0, a1, a2, a3, a4, a5 = (float(v) for v in pillow)
    corners = [(i + 0.5, j + 0.5) for i in (0, size - 1) for j in (0, size - 1)]
    xs = [a0 * u + a1 * v + a2 for u, v in corners]
    ys = [a3 * u + a4 * v + a5 for u, v in corners]

    def span(values: list[float], extent: int) -> tuple[int, int]:
        low = math.floor(min(values) - 0.5) - margin
        high = math.floor(max(values) - 0.5) + 1 + margin
        low, high = min(max(low, 0), extent - 1), min(max(high, 0), extent - 1)
        return low, max(low, high)

    (x0, x1), (y0, y1) = span(xs, width), span(ys, height)
    return x0, y0, x1, y1


def make_item(transform: TopDownTransform, image: np.ndarray, box, keypoints, visible,
              rng: Optional[np.random.Generator], *, cut_region: bool = True) -> dict[str, Any]:
    """One item for :class:`DeviceAugment`: the uint8 region the warp reads, the draws, and the
    keypoints in input pixels (``keypoints``, ``visible``: the CPU path's, bit for bit).

    ``image`` is the decoded ``(H, W, 3)`` uint8 RGB image, ``keypoints`` ``(K, 2)`` and
    ``visible`` ``(K,)`` in image pixels, ``rng`` the item's generator (None: the plain crop).
    ``cut_region=False``: no ``pixels``, the origin at the image's corner (the warp reads the
    whole image from :class:`DeviceAugment`'s copy of an image cache).
    """
    keypoints = np.asarray(keypoints, dtype=np.float64)
    visible = np.asarray(visible, dtype=bool)
    if keypoints.ndim != 2 or keypoints.shape[1] != 2 or visible.shape != (keypoints.shape[0],):
        raise ValueError(f"sample keypoints must be (K, 2) and visible (K,), got {keypoints.shape} and {visible.shape}")
    plan = plan_augmentation(transform, box, rng)
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"sample image must be (H, W, 3) uint8 RGB, got shape {image.shape} and dtype {image.dtype}")
    height, width = image.shape[:2]
    pillow = _pillow_affine_data(plan["affine"])
    x0, y0, x1, y1 = read_region(pillow, transform.config.input_size, width, height) if cut_region else (0, 0, 0, 0)
    jitter = plan["jitter"]
    moved, visible = transform.crop_keypoints(keypoints, visible, plan["affine"], plan["flip"])
    item = {
        "keypoints": moved,
        "visible": visible,
        "origin": torch.tensor([x0, y0], dtype=torch.int64),
        "image_size": torch.tensor([width, height], dtype=torch.int64),
        "pillow": torch.tensor(pillow, dtype=torch.float64),
        "affine": torch.from_numpy(plan["affine"]),
        "jitter": torch.tensor(jitter if jitter is not None else (1.0, 1.0, 1.0), dtype=torch.float32),
        "jittered": jitter is not None,
        "flipped": plan["flip"],
    }
    if cut_region:
        item["pixels"] = torch.from_numpy(np.array(image[y0:y1 + 1, x0:x1 + 1]))  # a copy: the image may be cached
    return item


def collate(items: list[dict[str, Any]]) -> PackedBatch:
    """Batch items of :func:`make_item`: regions zero-padded to the largest, ``region_size`` (w, h) kept
    (items without ``pixels``, for an image cache, are batched as they are). The batch's small
    tensors share one buffer (:class:`h3r.loading.PackedBatch`): one pinned allocation and one copy
    to the device for all of them."""
    fields = default_collate([{key: value for key, value in item.items() if key != "pixels"} for item in items])
    if "pixels" in items[0]:
        height = max(item["pixels"].shape[0] for item in items)
        width = max(item["pixels"].shape[1] for item in items)
        pixels = torch.zeros((len(items), height, width, 3), dtype=torch.uint8)
        for row, item in enumerate(items):
            region = item["pixels"]
            pixels[row, :region.shape[0], :region.shape[1]] = region
        fields["pixels"] = pixels
        fields["region_size"] = torch.tensor([[item["pixels"].shape[1], item["pixels"].shape[0]] for item in items],
                                             dtype=torch.int64)
    return PackedBatch(fields)


class DeviceCropDataset(CropDataset):
    """:class:`h3r.crops.CropDataset` with the warp left to the device (:class:`DeviceAugment`).

    Same seeding (item ``i`` of epoch ``e`` draws from ``default_rng([seed, e, i])``; set
    ``epoch`` or give ``(epoch, position)`` keys as for ``CropDataset``), same draws, same affines; items are
    :func:`make_item` dicts plus ``index``. Use ``collate_fn=DeviceCropDataset.collate``.

    ``cached_pixels=True`` (for a dataset with an ``image_cache``): items carry no pixels; the
    worker only makes sure the image is in the cache, and the :class:`DeviceAugment` given
    ``images=dataset.image_cache`` reads it from there.
    """

    collate = staticmethod(collate)

    def __init__(self, dataset, crop: CropConfig, seed: Optional[int] = None, indices: Optional[Sequence[int]] = None,
                 *, cached_pixels: bool = False):
        super().__init__(dataset, crop, seed, indices)
        if cached_pixels and getattr(dataset, "image_cache", None) is None:
            raise ValueError(f"cached_pixels: {getattr(dataset, 'name', type(dataset).__name__)} keeps no image cache")
        self.cached_pixels = cached_pixels

    def __getitem__(self, key: int | tuple[int, int]) -> dict[str, Any]:
        index, generator = self.resolve(key)
        sample = self.dataset[index]
        item = make_item(self.transform, sample.image(), sample.box, sample.keypoints, sample.visible, generator,
                         cut_region=not self.cached_pixels)
        item["index"] = index
        return item


# ----------------------------------------------------------------------------------------------
# Device side: the warp, the colour jitter, the normalisation.


def warp_bilinear(pixels: torch.Tensor, pillow: torch.Tensor, size: int, *, image_size: Optional[torch.Tensor] = None,
                  origin: Optional[torch.Tensor] = None, region_size: Optional[torch.Tensor] = None,
                  exact: bool = True, chunk_pixels: int = CHUNK_PIXELS, rows: Optional[torch.Tensor] = None,
                  backend: str = "auto") -> torch.Tensor:
    """Pillow's bilinear ``AFFINE`` transform of a batch, on ``pixels``' device: ``(B, 3, S, S)`` uint8.

    Args:
        pixels: ``(B, Hp, Wp, 3)`` uint8, item ``b`` holding (in its top-left corner) the
            region of its image that starts at image pixel ``origin[b]`` and is
            ``region_size[b]`` = (w, h) pixels large. With ``rows``: ``(N, Hp, Wp, 3)``, and
            item ``b`` reads ``pixels[rows[b]]`` (an image cache, read in place).
        pillow: ``(B, 6)`` float64 Pillow coefficients (output corner -> image corner
            coordinates), as :func:`h3r.transforms._pillow_affine_data` gives.
        size: S.
        image_size: ``(B, 2)`` (W, H) of the whole images (default: the regions' size),
            which decides the zero fill and the edge clamping.
        origin: ``(B, 2)`` (x, y) of each region in its image (default 0).
        region_size: ``(B, 2)`` (w, h) of each region (default: ``(Wp, Hp)``).
        exact: float64 arithmetic in Pillow's order (bit-identical); False: float32.
        chunk_pixels: at most this many output pixels (whole items, at least one) are warped
            at once by the PyTorch path, to bound the memory of its temporaries.
        rows: ``(B,)`` integer rows of ``pixels`` (default: item ``b`` reads ``pixels[b]``).
        backend: ``"torch"`` (the spec: PyTorch operations, any device), ``"triton"`` (one kernel,
            :mod:`h3r.warp_triton`: CUDA tensors, or CPU tensors with ``TRITON_INTERPRET=1``), or
            ``"auto"``: Triton for CUDA tensors when it is available (and each image and crop holds
            under 2**31 bytes), else PyTorch. Both give the same bits.
    """
    if pixels.dtype != torch.uint8 or pixels.ndim != 4 or pixels.shape[-1] != 3:
        raise ValueError(f"pixels must be (B, H, W, 3) uint8, got {tuple(pixels.shape)} {pixels.dtype}")
    batch = pixels.shape[0] if rows is None else rows.shape[0]
    if rows is not None and (rows.ndim != 1 or rows.dtype.is_floating_point or rows.dtype == torch.bool):
        raise ValueError(f"rows must be (B,) integers, got {tuple(rows.shape)} {rows.dtype}")
    if pillow.shape != (batch, 6):
        raise ValueError(f"pillow must be (B, 6) = ({batch}, 6), got {tuple(pillow.shape)}")
    if _warp_backend(backend, pixels, size) == "triton":
        from h3r import warp_triton

        def per_item(value):  # a (2,) value serves every item
            return None if value is None else torch.as_tensor(value, device=pixels.device).expand(batch, 2)

        return warp_triton.warp(pixels, pillow, size, per_item(image_size), per_item(origin), per_item(region_size),
                                exact, rows)
    if rows is not None:
        pixels = pixels.index_select(0, rows.to(device=pixels.device, dtype=torch.int64))
    step = max(1, chunk_pixels // (size * size))
    if batch > step:
        def part(value, start):
            return None if value is None or torch.as_tensor(value).dim() < 2 else value[start:start + step]

        return torch.cat([warp_bilinear(pixels[start:start + step], pillow[start:start + step], size,
                                        image_size=part(image_size, start), origin=part(origin, start),
                                        region_size=part(region_size, start), exact=exact, chunk_pixels=chunk_pixels,
                                        backend="torch")
                          for start in range(0, batch, step)])
    return _warp_chunk(pixels, pillow, size, image_size, origin, region_size, exact)


WARP_BACKENDS = ("auto", "torch", "triton")


def _warp_backend(backend: str, pixels: torch.Tensor, size: int) -> str:
    """The backend :func:`warp_bilinear` runs for ``backend`` on ``pixels``' device (clear errors for the rest)."""
    if backend not in WARP_BACKENDS:
        raise ValueError(f"backend: expected one of {', '.join(WARP_BACKENDS)}, got {backend!r}")
    if backend == "torch" or (backend == "auto" and not pixels.is_cuda):
        return "torch"
    why_not = _triton_cannot_run(pixels.device)
    if backend == "auto":
        from h3r import warp_triton

        return "triton" if why_not is None and warp_triton.fits(pixels, size) else "torch"
    if why_not is not None:
        raise ValueError(f"backend='triton' cannot run here: {why_not}")
    return "triton"


def _triton_cannot_run(device: torch.device) -> Optional[str]:
    """None when the Triton kernels can run on ``device``'s tensors here, else why not
    (:mod:`h3r_kernels.backends` probes Triton)."""
    from h3r_kernels.backends import backends, interpreting

    if device.type != "cuda" and not (device.type == "cpu" and interpreting()):
        return f"{device.type} tensors (Triton runs CUDA tensors, or CPU ones with TRITON_INTERPRET=1)"
    triton_backend = backends()["triton"]
    return None if triton_backend["available"] else triton_backend["reason"]


def _warp_chunk(pixels, pillow, size, image_size, origin, region_size, exact) -> torch.Tensor:
    batch, padded_height, padded_width = pixels.shape[:3]
    device = pixels.device
    dtype = torch.float64 if exact else torch.float32

    def per_item(value, default):
        value = torch.as_tensor(default if value is None else value, device=device)
        return value.to(torch.int64).expand(batch, 2).unsqueeze(-1).unsqueeze(-1)  # (B, 2, 1, 1)

    region = per_item(region_size, [padded_width, padded_height])
    whole = region if image_size is None else per_item(image_size, None)
    start = per_item(origin, [0, 0])
    a0, a1, a2, a3, a4, a5 = pillow.to(device=device, dtype=dtype).view(batch, 6, 1, 1).unbind(1)
    centres = torch.arange(size, device=device, dtype=dtype) + 0.5
    u, v = centres.view(1, 1, size), centres.view(1, size, 1)
    xin = (a0 * u + a1 * v) + a2  # (B, S, S), Pillow's affine_transform
    yin = (a3 * u + a4 * v) + a5
    width, height = whole.to(dtype).unbind(1)
    inside = (xin >= 0) & (xin < width) & (yin >= 0) & (yin < height)
    xin, yin = xin - 0.5, yin - 0.5
    x_floor, y_floor = torch.floor(xin), torch.floor(yin)
    dx, dy = (xin - x_floor).unsqueeze(-1), (yin - y_floor).unsqueeze(-1)
    # Pillow clamps neighbours to the image; the region holds every pixel an inside sample reads.
    # x and y at once: (B, 2, S, S) int64 against (B, 2, 1, 1) bounds.
    low = torch.stack([x_floor, y_floor], 1).clamp(-2, 2**30).to(torch.int64)
    image_last, region_last = whole - 1, region - 1

    def in_region(position):
        return (position.clamp_min(0).minimum(image_last) - start).clamp_min(0).minimum(region_last)

    (x0, y0), (x1, y1) = in_region(low).unbind(1), in_region(low + 1).unbind(1)
    base = (torch.arange(batch, device=device) * (padded_height * padded_width)).view(batch, 1, 1)
    row0, row1 = base + y0 * padded_width, base + y1 * padded_width
    index = torch.stack([row0 + x0, row0 + x1, row1 + x0, row1 + x1]).view(-1)
    # index_select: one gather of the 4 neighbours (advanced indexing is much slower on a CPU)
    p00, p01, p10, p11 = pixels.reshape(-1, 3).index_select(0, index).to(dtype).view(4, batch, size, size, 3).unbind(0)
    top = p00 + (p01 - p00) * dx
    bottom = p10 + (p11 - p10) * dx
    value = top + (bottom - top) * dy
    value = torch.where(inside.unsqueeze(-1), value.clamp_(0, 255), 0)
    # truncation, as (UINT8) v; NCHW-contiguous like the CPU batch (a channels-last input would change the
    # convolution algorithms, hence the rounding, of the model)
    return value.to(torch.uint8).permute(0, 3, 1, 2).contiguous()


def jitter_colours(images: torch.Tensor, factors: torch.Tensor) -> torch.Tensor:
    """Batched :func:`h3r.transforms._jitter_colours`: ``(B, 3, S, S)`` in [0, 1], ``factors`` ``(B, 3)``
    (brightness, contrast, saturation), float32, same formula and order."""
    weights = GREY_WEIGHTS
    brightness, contrast, saturation = (factors[:, i].to(images.dtype).view(-1, 1, 1, 1) for i in range(3))

    def grey(image):
        return (image[:, 0:1] * weights[0] + image[:, 1:2] * weights[1]) + image[:, 2:3] * weights[2]

    images = images * brightness
    mean_grey = grey(images).mean(dim=(1, 2, 3), keepdim=True)
    images = (images - mean_grey) * contrast + mean_grey
    luma = grey(images)
    images = (images - luma) * saturation + luma
    return images.clamp_(0.0, 1.0)


class DeviceAugment:
    """The device half of the augmentation: a :func:`collate` batch in (or a dict of its tensors: the
    fields read here are packed), the CPU path's batch out.

    ``augment(batch)`` returns ``image`` (B, 3, S, S) float32 normalised as
    :class:`TopDownTransform` does, and the batch's ``keypoints`` (B, K, 2) float32 in input pixels,
    ``visible`` (B, K) bool (visible and inside ``[0, S - 1]``, flip pairs swapped; both made by
    the workers, :func:`make_item`), ``affine`` (B, 2, 3) float64 image -> input, ``flipped`` (B,)
    bool, and ``index`` when the batch has it; all on ``device``. ``flip_pairs``: those
    :func:`augment_from_seeds` makes items with.

    ``images``: the dataset's image cache, for batches without ``pixels``
    (``DeviceCropDataset(..., cached_pixels=True)``): the warp reads row ``index`` of a copy
    of it on ``device``, each row uploaded when a batch first needs it (the workers fill the
    cache before they send a batch that reads it).

    ``backend`` (as :func:`warp_bilinear`'s): ``"auto"`` runs Triton kernels on CUDA (the warp,
    reading the device copy of the cache in place, then the jitter and normalisation:
    :func:`h3r.warp_triton.finish`) and PyTorch operations elsewhere; ``"torch"`` or ``"triton"`` force one.
    """

    def __init__(self, crop: CropConfig, flip_pairs: Sequence[tuple[int, int]] = (), device="cpu", *,
                 exact: bool = True, images: Optional[SharedImages] = None, backend: str = "auto"):
        self.config = crop
        self.flip_pairs = [tuple(pair) for pair in flip_pairs]
        self.device = torch.device(device)
        self.exact = exact
        self.backend = backend
        _warp_backend(backend, torch.empty((0, 1, 1, 3), device=self.device), 1)  # a clear error now, not at the first batch
        self.images = images
        self._device_images: Optional[torch.Tensor] = None  # the cache's rows on the device
        self._on_device: Optional[np.ndarray] = None  # which rows are there
        self.mean = torch.tensor(crop.mean, dtype=torch.float32, device=self.device).view(1, 3, 1, 1)
        self.std = torch.tensor(crop.std, dtype=torch.float32, device=self.device).view(1, 3, 1, 1)

    def _cached_pixels(self, rows: torch.Tensor) -> torch.Tensor:
        """The device copy of :attr:`images` ``(N, H, W, 3)`` uint8, with the rows ``rows`` (host) in it."""
        if self.images is None:
            raise ValueError("batch: no 'pixels' (DeviceCropDataset(cached_pixels=True)), and this DeviceAugment "
                             "was given no image cache to read them from (images=dataset.image_cache)")
        host_rows = rows.cpu().numpy()
        if host_rows.size and (host_rows.min() < 0 or host_rows.max() >= len(self.images)):
            raise IndexError(f"batch 'index': rows must lie in [0, {len(self.images)}) of the image cache, "
                             f"got {host_rows.min()}..{host_rows.max()}")
        if self._device_images is None:
            self._device_images = torch.empty_like(self.images.pixels, device=self.device)
            self._on_device = np.zeros(len(self.images), dtype=bool)
        missing = np.unique(host_rows[~self._on_device[host_rows]])
        if missing.size:  # rows read for the first time (a row on the device was checked when uploaded)
            missing_rows = torch.from_numpy(missing)
            unfilled = missing_rows[~self.images.filled.index_select(0, missing_rows)]
            if unfilled.numel():
                raise RuntimeError(f"image cache: rows {unfilled.tolist()} were never filled; "
                                   f"a DeviceCropDataset with cached_pixels fills them before it sends a batch")
            self._device_images.index_copy_(0, missing_rows.to(self.device),
                                            self.images.pixels.index_select(0, missing_rows).to(self.device))
            self._on_device[missing] = True
        return self._device_images

    def __call__(self, batch: PackedBatch | dict[str, torch.Tensor]) -> dict[str, Any]:
        if not isinstance(batch, PackedBatch):  # a batch not made by collate: pack what is read here
            batch = PackedBatch({name: batch[name] for name in DEVICE_FIELDS if name in batch})
        cache = None if "pixels" in batch else self._cached_pixels(batch["index"])
        # One copy of the packed fields (pinned by the loader: non_blocking does not wait for the GPU).
        put = batch.to(self.device, non_blocking=True).__getitem__
        size = self.config.input_size
        if cache is None:
            pixels = put("pixels")
            backend = _warp_backend(self.backend, pixels, size)
            crops = warp_bilinear(pixels, put("pillow"), size, image_size=put("image_size"), origin=put("origin"),
                                  region_size=put("region_size"), exact=self.exact, backend=backend)
        else:
            backend = _warp_backend(self.backend, cache, size)
            crops = warp_bilinear(cache, put("pillow"), size, image_size=put("image_size"), rows=put("index"),
                                  exact=self.exact, backend=backend)
        if backend == "triton":  # one more kernel: [0, 1], the jitter, the normalisation
            from h3r import warp_triton

            images = warp_triton.finish(crops, put("jitter"), put("jittered"), self.mean, self.std)
        else:
            images = crops.float().mul_(1 / 255)
            if bool(batch["jittered"].any()):
                changed = jitter_colours(images, put("jitter"))
                images = torch.where(put("jittered").view(-1, 1, 1, 1), changed, images)
            images = images.sub_(self.mean).div_(self.std)

        out = {"image": images, "keypoints": put("keypoints"), "visible": put("visible"), "affine": put("affine"),
               "flipped": put("flipped")}
        if "index" in batch:
            out["index"] = batch["index"]
        return out


def augment_from_seeds(augment: DeviceAugment, images: Sequence[np.ndarray], boxes, keypoints, visible,
                       seeds: Sequence[Any]) -> dict[str, Any]:
    """Augment items given as arrays, each with its own seed (anything ``np.random.default_rng``
    takes, e.g. ``[seed, epoch, index]`` as the training loader uses; None: the plain crop).

    The draws run on the host (microseconds per item), the warp on ``augment.device``.
    """
    transform = TopDownTransform(augment.config, augment.flip_pairs)
    items = [make_item(transform, image, box, points, mask, None if seed is None else np.random.default_rng(seed))
             for image, box, points, mask, seed in zip(images, boxes, keypoints, visible, seeds)]
    return augment(collate(items))


# ----------------------------------------------------------------------------------------------
# ``python -m h3r.augment``: equivalence with the CPU path and throughput, on one device.


def _random_affine_cases(count: int, seed: int = 0):
    """Random images, boxes and augmentations (rotation, scale, shift, flip), some boxes past the edges."""
    rng = np.random.default_rng(seed)
    for _ in range(count):
        height, width = (int(v) for v in rng.integers(8, 200, size=2))
        image = rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8)
        if rng.random() < 0.5:  # smooth content too: flat regions test exact integer results
            image = np.repeat(np.repeat(image[::8, ::8], 8, axis=0), 8, axis=1)[:height, :width].copy()
        centre = rng.uniform(-0.2, 1.2, size=2) * (width, height)
        half = rng.uniform(2, 0.8 * max(width, height), size=2)
        box = (*(centre - half), *(centre + half))
        config = dict(rotation=float(rng.uniform(-180, 180)), scale=float(rng.uniform(0.5, 1.5)),
                      shift=tuple(rng.uniform(-0.3, 0.3, size=2)), flip=bool(rng.random() < 0.5))
        size = int(rng.choice([16, 33, 64, 96]))
        yield image, box, size, config


def measure_equivalence(device="cpu", exact: bool = True, count: int = 60, seed: int = 0,
                        backend: str = "auto") -> dict[str, float]:
    """Warp ``count`` random cases with Pillow and with :func:`warp_bilinear` (``backend``) on ``device``;
    the max and mean absolute difference in levels (1 level = 1/255) and the share of pixels that differ."""
    from PIL import Image

    worst, total, differing, pixels = 0, 0.0, 0, 0
    for image, box, size, augmentation in _random_affine_cases(count, seed):
        affine = crop_affine(box, size, 1.25, **augmentation)
        pillow = _pillow_affine_data(affine)
        expected = np.array(Image.fromarray(image).transform((size, size), Image.Transform.AFFINE, pillow,
                                                             resample=Image.Resampling.BILINEAR))
        x0, y0, x1, y1 = read_region(pillow, size, image.shape[1], image.shape[0])
        region = torch.from_numpy(np.ascontiguousarray(image[y0:y1 + 1, x0:x1 + 1]))[None].to(device)
        got = warp_bilinear(region, torch.tensor([pillow], dtype=torch.float64), size,
                            image_size=torch.tensor([[image.shape[1], image.shape[0]]]),
                            origin=torch.tensor([[x0, y0]]), exact=exact, backend=backend)
        error = np.abs(got[0].permute(1, 2, 0).cpu().numpy().astype(np.int64) - expected.astype(np.int64))
        worst, total = max(worst, int(error.max())), total + float(error.sum())
        differing, pixels = differing + int((error > 0).sum()), pixels + error.size
    return {"max_levels": worst, "mean_levels": total / pixels, "differing_fraction": differing / pixels,
            "values": pixels, "cases": count}


def measure_throughput(device="cpu", batch: int = 256, size: int = 256, region: int = 320, exact: bool = True,
                       repeats: int = 10, backend: str = "auto") -> dict[str, float]:
    """Milliseconds per batch of :class:`DeviceAugment` (warp + jitter + normalise + keypoints' copy), its
    ``backend`` (``"triton"``: the image kernels of :mod:`h3r.warp_triton`)."""
    device = torch.device(device)
    generator = torch.Generator().manual_seed(0)
    crop = CropConfig(input_size=size, colour_jitter=0.2, flip_prob=0.5)
    augment = DeviceAugment(crop, [(0, 1)], device, exact=exact, backend=backend)
    items = []
    rng = np.random.default_rng(0)
    transform = TopDownTransform(crop, [(0, 1)])
    image = torch.randint(0, 256, (region, region, 3), generator=generator, dtype=torch.uint8).numpy()
    for _ in range(batch):
        box = (region * 0.2, region * 0.2, region * 0.8, region * 0.8)
        items.append(make_item(transform, image, box, rng.uniform(0, region, size=(17, 2)), np.ones(17, bool), rng))
    host = collate(items)
    if device.type == "cuda":
        host = host.pin_memory()
    augment(host)
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        augment(host)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append((time.perf_counter() - start) * 1e3)
    times.sort()
    median = times[len(times) // 2]
    return {"batch": batch, "input_size": size, "padded_region": list(host["pixels"].shape[1:3]), "exact": exact,
            "backend": backend, "median_ms": median, "images_per_s": batch * 1e3 / median}


def main(argv: Optional[Sequence[str]] = None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m h3r.augment",
                                     description="On-device warp vs Pillow (the CPU path), and its throughput.")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--cases", type=int, default=60, help="random cases warped by Pillow too (0: none)")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--backends", default="auto",
                        help="the warp's backends to measure, comma-separated: auto, torch, triton (default: auto)")
    args = parser.parse_args(argv)
    backends = [name.strip() for name in args.backends.split(",")]
    for name in backends:
        try:
            _warp_backend(name, torch.empty((0, 1, 1, 3), device=args.device), 1)
        except ValueError as error:
            parser.error(f"--backends {name}: {error}")
    results = {}
    for backend in backends:
        for exact in (True, False):
            name = f"{backend} {'exact' if exact else 'float32'}"
            if args.cases > 0:
                results[f"equivalence {name}"] = measure_equivalence(args.device, exact, args.cases, backend=backend)
                print(f"{args.device} {name:14s} warp vs Pillow: {results[f'equivalence {name}']}", flush=True)
            results[f"throughput {name}"] = measure_throughput(args.device, args.batch, args.size, exact=exact,
                                                              repeats=args.repeats, backend=backend)
            print(f"{args.device} {name:14s} throughput: {results[f'throughput {name}']}", flush=True)
    return results


if __name__ == "__main__":
    main()
