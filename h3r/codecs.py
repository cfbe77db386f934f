"""Codecs: where a coordinate becomes a heatmap, and a heatmap becomes a coordinate again.

This module is the only place in :mod:`h3r` that calls :mod:`h3r_kernels`, so the two
methods compared by the project share everything else (data, crops, model, optimiser).

A codec answers three questions:

* **training** — ``codec.loss(logits, keypoints, visible)``: the network's output
  ``(B, K, H, W)`` is scored against a target heatmap built *on the logits' device*, inside
  the kernel, from the keypoints. No target tensor is ever built on the CPU.
* **testing** — ``codec.decode(logits) -> (coords, scores)``: the coordinates the network
  predicts;
* **initialisation** — ``codec.initial_logit(heatmap_size)``: where a fresh head should
  start (the BCE target's log prior odds for H3R; this matters, see
  :meth:`H3RCodec.initial_logit`).

Units. Keypoints enter and leave a codec in **input-crop pixels** (x before y, the
centre of the top-left pixel is (0, 0)). The codec divides by the stride to get
**heatmap units**: heatmap cell ``i`` sits on input pixel ``stride * i``, with no half-pixel
offset; decoded heatmap coordinates are multiplied by the stride on the way out.

The two codecs:

* :class:`H3RCodec` — the paper's method. The target is binary: a single 1 at one of the 4
  integer neighbours of the keypoint, drawn afresh every iteration with bilinear
  probabilities (randomized rounding), so the *expected* target is exactly the keypoint.
  Loss: binary cross-entropy on the logits. Decoding: the softmax-weighted mean of the
  ``k`` largest logits (k = 9, as in the released H3R code).
* :class:`GaussianCodec` — vanilla heatmap regression: an unnormalised Gaussian
  ``exp(-d²/2σ²)`` at the *nearest* cell, mean-squared error, arg-max decoding with an
  optional sub-cell refinement (the classic quarter offset, or DARK's Taylor step).
"""
from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F

import h3r_kernels

CODEC_NAMES = ("h3r", "gaussian")
GAUSSIAN_REFINEMENTS = ("none", "quarter", "dark")


def default_gaussian_sigma(heatmap_side: int) -> float:
    """σ (heatmap cells) used by :class:`GaussianCodec` when none is given.

    1.5 cells on a 64-cell map (the HRNet face setting: 256-pixel input, stride 4), scaled
    in proportion to the map, but never below 1 cell: 64 → 1.5, 32 → 1.0, 16 → 1.0. On
    smaller maps a thinner Gaussian would be a single cell and give arg-max nothing to
    refine.
    """
    return max(1.0, 1.5 * heatmap_side / 64)


def heatmap_size(input_size: int, stride: int) -> tuple[int, int]:
    """``(H, W)`` of the heatmap for a square ``input_size`` crop: the input divided by the stride."""
    if input_size % stride:
        raise ValueError(f"input_size: expected a multiple of the stride {stride}, got {input_size}")
    return input_size // stride, input_size // stride


class H3RCodec:
    """Randomized-rounding binary targets, BCE loss, top-k decoding (Yu & Tao, TPAMI 2021).

    Args:
        stride: input pixels per heatmap cell.
        k: number of largest activations averaged by the decoder.
        weights: ``"softmax"`` of the top-k logits (the released H3R decoder) or
            ``"linear"`` (weights proportional to the top-k probabilities).
    """

    name = "h3r"

    def __init__(self, stride: int = 4, k: int = 9, weights: str = "softmax"):
        if weights not in ("softmax", "linear"):
            raise ValueError(f"weights: expected 'softmax' or 'linear', got {weights!r}")
        self.stride = stride
        self.k = k
        self.weights = weights

    def __repr__(self) -> str:
        return f"H3RCodec(stride={self.stride}, k={self.k}, weights={self.weights!r})"

    def initial_logit(self, size: tuple[int, int]) -> float:
        """The logit a fresh head should output everywhere: the log-odds of the target's prior.

        One cell in ``H * W`` is 1, so the prior probability is ``1 / (H W)`` and the logit
        ``-log(H W - 1)`` (the "prior" initialisation of focal loss). Starting at logit 0
        instead, BCE training on these targets first spends its steps pushing the whole map
        down and, in our runs on 16x16 maps, then got stuck at errors worse than predicting
        the mean shape.
        """
        height, width = size
        return -math.log(max(height * width - 1, 1))

    def loss(self, logits: torch.Tensor, keypoints: torch.Tensor, visible: Optional[torch.Tensor] = None,
             seed: Optional[int] = None) -> torch.Tensor:
        """Mean BCE of ``logits`` (B, K, H, W) against a freshly rounded binary target.

        ``keypoints`` (B, K, 2) are input pixels; ``seed`` fixes the rounding draws (None:
        drawn from torch's default generator). Invisible keypoints and keypoints whose
        rounded cell falls off the map contribute nothing.
        """
        return h3r_kernels.heatmap_loss(
            logits, self._to_heatmap_units(keypoints, logits), _on(visible, logits),
            sigma=0.0, rounding="random", seed=seed, loss="bce", reduction="mean",
        )

    def targets(self, keypoints: torch.Tensor, size: tuple[int, int], visible: Optional[torch.Tensor] = None,
                seed: Optional[int] = None, expected: bool = False) -> torch.Tensor:
        """The target heatmaps (B, K, H, W) the loss compares against (for inspection and figures).

        ``expected=True`` gives the average over all roundings: the bilinear weights of the
        4 neighbouring cells.
        """
        return h3r_kernels.encode(keypoints / self.stride, size, visible, sigma=0.0, rounding="random",
                                  seed=seed, expected=expected)

    def decode(self, logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(coords (B, K, 2) input pixels, scores (B, K) = the largest probability, sigmoid(logit))``.

        ``weights="softmax"`` weighs the top-k raw logits (the released decoder);
        ``"linear"`` weighs the top-k probabilities ``sigmoid(logit)`` in proportion.
        """
        if self.weights == "softmax":  # reads bfloat16/float16 logits as they are, computes in float32
            coords, max_logits = h3r_kernels.decode(logits, method="topk", k=self.k, weights="softmax")
            scores = torch.sigmoid(max_logits)
        else:
            coords, scores = h3r_kernels.decode(logits.float().sigmoid(), method="topk", k=self.k, weights="linear")
        return coords * self.stride, scores

    def _to_heatmap_units(self, keypoints: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        return keypoints.to(device=logits.device, dtype=torch.float32) / self.stride


class GaussianCodec:
    """Vanilla heatmap regression: Gaussian at the nearest cell, MSE, arg-max decoding.

    Args:
        stride: input pixels per heatmap cell.
        sigma: Gaussian standard deviation in heatmap cells (see :func:`default_gaussian_sigma`).
        refine: sub-cell refinement after the arg-max: ``"none"``; ``"quarter"`` moves a
            quarter cell towards the larger neighbour on each axis (HRNet/SimpleBaseline);
            ``"dark"`` takes one Newton step on the log of the blurred heatmap (DARK, Zhang et
            al. CVPR 2020), clamped to one cell.
    """

    name = "gaussian"

    def __init__(self, stride: int = 4, sigma: float = 1.0, refine: str = "quarter"):
        if refine not in GAUSSIAN_REFINEMENTS:
            raise ValueError(f"refine: expected one of {GAUSSIAN_REFINEMENTS}, got {refine!r}")
        if not sigma > 0:
            raise ValueError(f"sigma: expected a positive number of heatmap cells, got {sigma!r}")
        self.stride = stride
        self.sigma = float(sigma)
        self.refine = refine

    def __repr__(self) -> str:
        return f"GaussianCodec(stride={self.stride}, sigma={self.sigma}, refine={self.refine!r})"

    def initial_logit(self, size: tuple[int, int]) -> float:
        """The value a fresh head should output everywhere: 0, the Gaussian target's background."""
        return 0.0

    def loss(self, logits: torch.Tensor, keypoints: torch.Tensor, visible: Optional[torch.Tensor] = None,
             seed: Optional[int] = None) -> torch.Tensor:
        """Mean squared error of ``logits`` (B, K, H, W) against the Gaussian target.

        ``keypoints`` (B, K, 2) are input pixels. ``seed`` is accepted so both codecs share
        one signature; nearest rounding draws nothing.
        """
        return h3r_kernels.heatmap_loss(
            logits, keypoints.to(device=logits.device, dtype=torch.float32) / self.stride,
            _on(visible, logits), sigma=self.sigma, rounding="nearest", seed=seed, loss="mse", reduction="mean",
        )

    def targets(self, keypoints: torch.Tensor, size: tuple[int, int], visible: Optional[torch.Tensor] = None,
                seed: Optional[int] = None, expected: bool = False) -> torch.Tensor:
        """The target heatmaps (B, K, H, W) the loss compares against (deterministic)."""
        return h3r_kernels.encode(keypoints / self.stride, size, visible, sigma=self.sigma, rounding="nearest",
                                  seed=seed, expected=expected)

    def decode(self, logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(coords (B, K, 2) input pixels, scores (B, K) = the heatmap maximum)``."""
        heatmaps = logits.float()
        coords, scores = h3r_kernels.decode(heatmaps, method="argmax")
        if self.refine == "quarter":
            coords = coords + quarter_offset(heatmaps, coords)
        elif self.refine == "dark":
            coords = coords + dark_offset(heatmaps, coords, self.sigma)
        return coords * self.stride, scores


def _on(visible: Optional[torch.Tensor], like: torch.Tensor) -> Optional[torch.Tensor]:
    return None if visible is None else visible.to(device=like.device, dtype=torch.bool)


def _gather(maps: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``maps[b, k, y, x]`` for integer (B, K) tensors ``x``, ``y`` (clamped to the map)."""
    height, width = maps.shape[-2:]
    flat = y.clamp(0, height - 1) * width + x.clamp(0, width - 1)
    return maps.flatten(2).gather(2, flat.unsqueeze(-1)).squeeze(-1)


def quarter_offset(heatmaps: torch.Tensor, peaks: torch.Tensor) -> torch.Tensor:
    """Quarter-cell shift (B, K, 2) towards the larger neighbour of each integer peak.

    Cells on the border keep their position along the axis that has no neighbour on one side.
    """
    height, width = heatmaps.shape[-2:]
    x, y = peaks[..., 0].round().long(), peaks[..., 1].round().long()
    dx = _gather(heatmaps, x + 1, y) - _gather(heatmaps, x - 1, y)
    dy = _gather(heatmaps, x, y + 1) - _gather(heatmaps, x, y - 1)
    dx = torch.where((x > 0) & (x < width - 1), dx.sign(), torch.zeros_like(dx))
    dy = torch.where((y > 0) & (y < height - 1), dy.sign(), torch.zeros_like(dy))
    return 0.25 * torch.stack([dx, dy], dim=-1)


def dark_offset(heatmaps: torch.Tensor, peaks: torch.Tensor, sigma: float) -> torch.Tensor:
    """DARK sub-cell offset (B, K, 2): ``-H⁻¹ g`` of the log heatmap at each integer peak.

    The heatmap is first blurred with a Gaussian of the target's σ and rescaled to its
    original maximum (as DARK does), then floored at 1e-10 before the log. Gradient and
    Hessian use central differences with one-cell spacing on an edge-padded map; where the
    Hessian is singular the offset is 0, and offsets are clamped to ±1 cell.
    """
    batch, num_keypoints, height, width = heatmaps.shape
    radius = max(1, int(math.ceil(3 * sigma)))
    offsets = torch.arange(-radius, radius + 1, device=heatmaps.device, dtype=heatmaps.dtype)
    kernel_1d = torch.exp(-offsets**2 / (2 * sigma**2))
    kernel_1d = kernel_1d / kernel_1d.sum()
    maps = heatmaps.reshape(batch * num_keypoints, 1, height, width)
    padded = F.pad(maps, (radius, radius, radius, radius), mode="replicate")
    blurred = F.conv2d(F.conv2d(padded, kernel_1d.view(1, 1, 1, -1)), kernel_1d.view(1, 1, -1, 1))
    original_max = maps.amax(dim=(2, 3), keepdim=True)
    blurred = blurred * original_max / blurred.amax(dim=(2, 3), keepdim=True).clamp_min(1e-10)
    log_map = blurred.clamp_min(1e-10).log().reshape(batch, num_keypoints, height, width)

    x, y = peaks[..., 0].round().long(), peaks[..., 1].round().long()

    def at(dx: int, dy: int) -> torch.Tensor:
        return _gather(log_map, x + dx, y + dy)

    centre = at(0, 0)
    gx = 0.5 * (at(1, 0) - at(-1, 0))
    gy = 0.5 * (at(0, 1) - at(0, -1))
    hxx = at(1, 0) - 2 * centre + at(-1, 0)
    hyy = at(0, 1) - 2 * centre + at(0, -1)
    hxy = 0.25 * (at(1, 1) - at(1, -1) - at(-1, 1) + at(-1, -1))
    det = hxx * hyy - hxy * hxy
    safe_det = torch.where(det.abs() > 1e-12, det, torch.ones_like(det))
    offset_x = -(hyy * gx - hxy * gy) / safe_det
    offset_y = -(-hxy * gx + hxx * gy) / safe_det
    offset = torch.stack([offset_x, offset_y], dim=-1)
    offset = torch.where((det.abs() > 1e-12).unsqueeze(-1), offset, torch.zeros_like(offset))
    return offset.clamp(-1.0, 1.0)


def build_codec(name: str, stride: int = 4, *, input_size: Optional[int] = None, k: int = 9,
                weights: str = "softmax", sigma: Optional[float] = None, refine: str = "quarter"):
    """The codec called ``name`` (``"h3r"`` or ``"gaussian"``).

    For ``"gaussian"``, ``sigma=None`` picks :func:`default_gaussian_sigma` for the heatmap
    of an ``input_size`` crop (required then).
    """
    if name == "h3r":
        return H3RCodec(stride=stride, k=k, weights=weights)
    if name == "gaussian":
        if sigma is None:
            if input_size is None:
                raise ValueError("sigma: give sigma, or input_size to choose the default sigma")
            sigma = default_gaussian_sigma(heatmap_size(input_size, stride)[1])
        return GaussianCodec(stride=stride, sigma=sigma, refine=refine)
    raise ValueError(f"codec: expected one of {CODEC_NAMES}, got {name!r}")
