"""Codecs: where a coordinate becomes a heatmap, and a heatmap becomes a coordinate again.

This module is the only place in :mod:`h3r` that calls :mod:`h3r_kernels`' ops, so the
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

The codecs (``build_codec(name)``; :data:`CODEC_NAMES`):

* ``"h3r"``, :class:`H3RCodec` — the paper's method. The target is binary: a single 1 at
  one of the 4 integer neighbours of the keypoint, drawn afresh every iteration with
  bilinear probabilities (randomized rounding), so the *expected* target is exactly the
  keypoint. Loss: binary cross-entropy on the logits. Decoding: the softmax-weighted mean
  of the ``k`` largest logits (k = 9, as in the released H3R code), or the
  probability-weighted mean (``weights="linear"``, the theory's lossless decoder); either over
  the ``window × window`` cells around the arg-max instead (``window=3``: as lossless on the
  expected target, and blind to a second mode elsewhere on the map).
* ``"h3r-gaussian"``, :class:`H3RCodec` with ``sigma > 0`` — H3R with a Gaussian heatmap
  (the paper names "binary heatmap" and "gaussian heatmap" as two ways to build the target,
  as quoted in the authors' issue #7; the loss and decoder of the Gaussian one are not
  published, these are ours): the same randomized rounding, then a Gaussian
  ``exp(-d²/2σ²)`` of the Gaussian codecs' σ centred on the drawn cell; BCE; decoded from
  the window of ``±(⌈3σ⌉ + 1)`` cells around the arg-max (:attr:`H3RCodec.window`), whose
  probability-weighted mean is the keypoint on the expected target, up to the Gaussian's
  tail beyond the window (part A of the study measures it).
* ``"gaussian"``, :class:`GaussianCodec` — vanilla heatmap regression: an unnormalised
  Gaussian ``exp(-d²/2σ²)`` at the *nearest* cell, mean-squared error, arg-max decoding
  with an optional sub-cell refinement (none, the classic quarter offset, or DARK's step).
* ``"dark"``, :class:`GaussianCodec` with ``rounding="none"`` — DARK, both halves: the
  unbiased Gaussian centred on the continuous keypoint, and DARK's Taylor refinement.
* ``"integral"``, :class:`IntegralCodec` — integral regression (soft-argmax) with an L1
  loss on the coordinates: no heatmap target, so no quantization.
* ``"udp"``, :class:`OffsetCodec` — UDP's combined target (Huang et al., CVPR 2020; mmpose's
  ``UDPHeatmap(heatmap_type="combined")``): per keypoint a binary disk around it and two maps
  of the offset from each cell to the keypoint; MSE; decoded as the arg-max of the blurred disk
  map plus the (blurred) offsets read there. Three maps per keypoint
  (:attr:`OffsetCodec.maps_per_keypoint`): the model's head outputs ``3 K`` channels.
"""
from __future__ import annotations

import math
from typing import Optional, Union

import torch
import torch.nn.functional as F

import h3r_kernels
from h3r_kernels import checks, spec

CODEC_NAMES = ("h3r", "h3r-gaussian", "gaussian", "dark", "integral", "udp")
GAUSSIAN_REFINEMENTS = ("none", "quarter", "dark")
TOPK_WEIGHTS = spec.names(spec.Weighting)  # the decode op's weightings: softmax, linear
MAX_TOPK = spec.MAX_K  # the most activations the top-k decoder averages
# σ (heatmap cells) of the reference toolkits at stride 4 on a 64-cell map: HRNet-Facial's
# 1.5 for faces (256-px crops), HRNet/SimpleBaseline/mmpose's 2 for human pose (64x48 maps).
REFERENCE_SIGMA = {"face": 1.5, "pose": 2.0}


def default_gaussian_sigma(input_size: int, stride: int = 4, task: str = "face") -> float:
    """σ (heatmap cells) of the Gaussian codecs when none is given.

    At stride 4: the task's reference value (:data:`REFERENCE_SIGMA`: 1.5 cells for faces,
    2 for pose, on the 64-cell maps of 256-pixel crops), in proportion to the crop for other
    input sizes, but at least 1 cell (on smaller maps a thinner Gaussian is a single cell).
    At coarser strides σ shrinks as ``4 / stride``, so the target covers the same area of the
    input at every stride: σ in *input pixels* depends on the crop, never on the stride.
    Faces, 64-px crops: 1.0, 0.5, 0.25, 0.125 cells at strides 4, 8, 16, 32 (4 px);
    faces, 256-px crops: 1.5, 0.75, 0.375, 0.1875 (6 px); pose, 256 px: 2, 1, 0.5, 0.25 (8 px).
    """
    if task not in REFERENCE_SIGMA:
        raise ValueError(f"task: expected one of {', '.join(REFERENCE_SIGMA)}, got {task!r}")
    sigma_at_stride_4 = max(1.0, REFERENCE_SIGMA[task] * (input_size / 4) / 64)
    return sigma_at_stride_4 * 4 / stride


def heatmap_size(input_size: int, stride: int) -> tuple[int, int]:
    """``(H, W)`` of the heatmap for a square ``input_size`` crop: the input divided by the stride."""
    if input_size % stride:
        raise ValueError(f"input_size: expected a multiple of the stride {stride}, got {input_size}")
    return input_size // stride, input_size // stride


class H3RCodec:
    """Randomized-rounding targets, BCE loss, top-k (or window) decoding (Yu & Tao, TPAMI 2021).

    Args:
        stride: input pixels per heatmap cell.
        k: number of largest activations averaged by the decoder (binary target).
        weights: ``"softmax"`` of the selected logits (the released H3R decoder) or
            ``"linear"`` (weights proportional to the selected probabilities: the theory's
            decoder, lossless on the expected target).
        sigma: 0 (codec ``"h3r"``): the binary target, a single 1 at the drawn cell. ``> 0``
            (codec ``"h3r-gaussian"``): a Gaussian of ``sigma`` cells, peak 1, centred on the
            drawn cell.
        window: read the ``window × window`` cells around the arg-max instead of the top
            ``k`` (odd). None: the top ``k`` for the binary target; for the Gaussian one
            ``2 (⌈3σ⌉ + 1) + 1``, the drawn cell's ±3σ and the one cell of rounding. On the
            expected binary target a 3×3 window is lossless with ``"linear"``, as the top 9 are.
    """

    maps_per_keypoint = 1  # the head's output channels per keypoint

    def __init__(self, stride: int = 4, k: int = 9, weights: str = "softmax", sigma: float = 0.0,
                 window: Optional[int] = None):
        if weights not in TOPK_WEIGHTS:
            raise ValueError(f"weights: expected one of {', '.join(TOPK_WEIGHTS)}, got {weights!r}")
        self.stride = stride
        self.k = k
        self.weights = weights
        self.sigma = checks.as_sigma(sigma)
        if window is None and self.sigma > 0:
            window = 2 * (math.ceil(3 * self.sigma) + 1) + 1
            if window**2 > spec.MAX_WINDOW_CELLS:
                largest = (math.isqrt(spec.MAX_WINDOW_CELLS) // 2 - 2) / 3
                raise ValueError(f"sigma: at most {largest:.4g} cells for h3r-gaussian (its decoder's window of "
                                 f"2 * (ceil(3 sigma) + 1) + 1 cells per side holds at most {spec.MAX_WINDOW_CELLS} "
                                 f"cells; or give a window), got {sigma!r}")
        if window is not None:
            window = checks.check_decode_options("local", 1, weights, window)[1]
        self.window = window

    @property
    def name(self) -> str:
        return "h3r" if self.sigma == 0 else "h3r-gaussian"

    def __repr__(self) -> str:
        selection = (f"sigma={self.sigma}, " if self.sigma else "") + (
            f"k={self.k}" if self.window is None else f"window={self.window}")
        return f"H3RCodec(stride={self.stride}, {selection}, weights={self.weights!r})"

    def initial_logit(self, size: tuple[int, int]) -> float:
        """The logit a fresh head should output everywhere: the log-odds of the target's prior.

        One cell in ``H * W`` is 1, so the prior probability is ``1 / (H W)`` and the logit
        ``-log(H W - 1)`` (the "prior" initialisation of focal loss). Starting at logit 0
        instead, BCE training on these targets first spends its steps pushing the whole map
        down and, in our runs on 16x16 maps, then got stuck at errors worse than predicting
        the mean shape. With a Gaussian target of ``sigma`` cells the prior is the target's
        mean over the map for a drawn cell anywhere on it, cut by the map's edges:
        ``p = a(H) a(W) / (H W)`` with ``a(n) = (1/n) Σ_{c<n} Σ_{j<n} exp(-(j-c)²/2σ²)``.
        """
        height, width = size
        if self.sigma == 0:
            return -math.log(max(height * width - 1, 1))

        def mean_row_sum(cells: int) -> float:  # a(n): the mass on an n-cell axis, averaged over the centre
            return sum(math.exp(-(j - c) ** 2 / (2 * self.sigma**2)) for c in range(cells)
                       for j in range(cells)) / cells

        prior = mean_row_sum(height) * mean_row_sum(width) / (height * width)
        return math.log(prior / (1 - prior))

    def loss(self, logits: torch.Tensor, keypoints: torch.Tensor, visible: Optional[torch.Tensor] = None,
             seed: Union[int, torch.Tensor, None] = None) -> torch.Tensor:
        """Mean BCE of ``logits`` (B, K, H, W) against a freshly rounded target (binary, or
        the Gaussian of ``sigma`` cells at the drawn cell).

        ``keypoints`` (B, K, 2) are input pixels; ``seed`` fixes the rounding draws (None:
        drawn from torch's default generator; a 0-d integer tensor on the logits' device is
        read there, as in a captured CUDA graph). Invisible keypoints and keypoints whose
        rounded cell falls off the map contribute nothing.
        """
        return h3r_kernels.heatmap_loss(
            logits, _to_heatmap_units(keypoints, logits, self.stride), _on(visible, logits),
            sigma=self.sigma, rounding="random", seed=seed, loss="bce", reduction="mean",
        )

    def targets(self, keypoints: torch.Tensor, size: tuple[int, int], visible: Optional[torch.Tensor] = None,
                seed: Optional[int] = None, expected: bool = False) -> torch.Tensor:
        """The target heatmaps (B, K, H, W) the loss compares against (for inspection and figures).

        ``expected=True`` gives the average over all roundings: the bilinear weights of the
        4 neighbouring cells (with ``sigma``: the same mixture of 4 Gaussians).
        """
        return h3r_kernels.encode(keypoints / self.stride, size, visible, sigma=self.sigma, rounding="random",
                                  seed=seed, expected=expected)

    def ideal_output(self, keypoints: torch.Tensor, size: tuple[int, int],
                     visible: Optional[torch.Tensor] = None) -> torch.Tensor:
        """What a perfectly trained network outputs (B, K, H, W): the Bayes-optimal logits.

        BCE is minimised by ``sigmoid(z) = E[target]``, the bilinear expected target, so the
        ideal logit is ``logit(E[target])`` (probabilities clamped to [1e-6, 1 - 1e-6]).
        Decoding this map measures the codec's own quantization error.
        """
        expected = self.targets(keypoints, size, visible, expected=True)
        return expected.clamp(1e-6, 1 - 1e-6).logit()

    def decode(self, logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(coords (B, K, 2) input pixels, scores (B, K) = the largest probability, sigmoid(logit))``.

        ``weights="softmax"`` weighs the selected raw logits (the released decoder);
        ``"linear"`` weighs the selected probabilities ``sigmoid(logit)`` in proportion. The
        selection: the top ``k``, or the ``window`` around the arg-max.
        """
        selection = ({"method": "topk", "k": self.k} if self.window is None
                     else {"method": "local", "window": self.window})
        if self.weights == "softmax":  # reads bfloat16/float16 logits as they are, computes in float32
            coords, max_logits = h3r_kernels.decode(logits, weights="softmax", **selection)
            scores = torch.sigmoid(max_logits)
        else:
            coords, scores = h3r_kernels.decode(logits.float().sigmoid(), weights="linear", **selection)
        return coords * self.stride, scores


class GaussianCodec:
    """Gaussian targets, MSE, arg-max decoding with an optional sub-cell refinement.

    Two targets, two codec names:

    * ``rounding="nearest"`` (codec ``"gaussian"``): vanilla heatmap regression (HRNet,
      SimpleBaseline), an unnormalised Gaussian ``exp(-d²/2σ²)`` centred on the *nearest*
      cell, so the target itself carries the quantization error;
    * ``rounding="none"`` (codec ``"dark"``): DARK's unbiased target (Zhang et al., CVPR
      2020), the Gaussian centred on the continuous keypoint.

    Args:
        stride: input pixels per heatmap cell.
        sigma: Gaussian standard deviation in heatmap cells (see :func:`default_gaussian_sigma`).
        refine: sub-cell refinement after the arg-max: ``"none"``; ``"quarter"`` moves a
            quarter cell towards the larger neighbour on each axis (HRNet/SimpleBaseline);
            ``"dark"``: DARK's Taylor step on the log of the blurred heatmap
            (:func:`dark_offset`).
        rounding: ``"nearest"`` or ``"none"`` (see above).
    """

    ROUNDINGS = ("nearest", "none")
    maps_per_keypoint = 1

    def __init__(self, stride: int = 4, sigma: float = 1.0, refine: str = "quarter", rounding: str = "nearest"):
        if refine not in GAUSSIAN_REFINEMENTS:
            raise ValueError(f"refine: expected one of {', '.join(GAUSSIAN_REFINEMENTS)}, got {refine!r}")
        if rounding not in self.ROUNDINGS:
            raise ValueError(f"rounding: expected one of {', '.join(self.ROUNDINGS)}, got {rounding!r}")
        if not sigma > 0:
            raise ValueError(f"sigma: expected a positive number of heatmap cells, got {sigma!r}")
        self.stride = stride
        self.sigma = float(sigma)
        self.refine = refine
        self.rounding = rounding

    @property
    def name(self) -> str:
        return "gaussian" if self.rounding == "nearest" else "dark"

    def __repr__(self) -> str:
        return (f"GaussianCodec(stride={self.stride}, sigma={self.sigma}, refine={self.refine!r}, "
                f"rounding={self.rounding!r})")

    def initial_logit(self, size: tuple[int, int]) -> float:
        """The value a fresh head should output everywhere: 0, the Gaussian target's background."""
        return 0.0

    def loss(self, logits: torch.Tensor, keypoints: torch.Tensor, visible: Optional[torch.Tensor] = None,
             seed: Union[int, torch.Tensor, None] = None) -> torch.Tensor:
        """Mean squared error of ``logits`` (B, K, H, W) against the Gaussian target.

        ``keypoints`` (B, K, 2) are input pixels. ``seed`` is accepted so every codec shares
        one signature; these targets are deterministic.
        """
        return h3r_kernels.heatmap_loss(
            logits, _to_heatmap_units(keypoints, logits, self.stride), _on(visible, logits),
            sigma=self.sigma, rounding=self.rounding, seed=seed, loss="mse", reduction="mean",
        )

    def targets(self, keypoints: torch.Tensor, size: tuple[int, int], visible: Optional[torch.Tensor] = None,
                seed: Optional[int] = None, expected: bool = False) -> torch.Tensor:
        """The target heatmaps (B, K, H, W) the loss compares against (deterministic)."""
        return h3r_kernels.encode(keypoints / self.stride, size, visible, sigma=self.sigma, rounding=self.rounding,
                                  seed=seed, expected=expected)

    def ideal_output(self, keypoints: torch.Tensor, size: tuple[int, int],
                     visible: Optional[torch.Tensor] = None) -> torch.Tensor:
        """What a perfectly trained network outputs: MSE is minimised by the target itself."""
        return self.targets(keypoints, size, visible)

    def decode(self, logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(coords (B, K, 2) input pixels, scores (B, K) = the heatmap maximum)``."""
        heatmaps = logits.float()
        coords, scores = h3r_kernels.decode(heatmaps, method="argmax")
        if self.refine == "quarter":
            coords = coords + quarter_offset(heatmaps, coords)
        elif self.refine == "dark":
            coords = coords + dark_offset(heatmaps, coords, self.sigma)
        return coords * self.stride, scores


class IntegralCodec:
    """Integral regression (soft-argmax; Sun et al., ECCV 2018): no heatmap target at all.

    The logits of each map go through a softmax over its ``H * W`` cells; the prediction is
    the expected cell position under that distribution, a continuous coordinate, so nothing
    is quantized. The loss is L1 between predicted and true coordinates, each axis divided
    by the map's extent (as mmpose's ``IntegralRegressionLabel`` normalises by ``[W, H]``),
    averaged over visible keypoints and both axes. Predictions lie inside the map's cell
    centres ``[0, W - 1] x [0, H - 1]``.
    """

    name = "integral"
    maps_per_keypoint = 1

    def __init__(self, stride: int = 4):
        self.stride = stride

    def __repr__(self) -> str:
        return f"IntegralCodec(stride={self.stride})"

    def initial_logit(self, size: tuple[int, int]) -> float:
        """0: a fresh head predicts the uniform distribution, i.e. the map's centre."""
        return 0.0

    def loss(self, logits: torch.Tensor, keypoints: torch.Tensor, visible: Optional[torch.Tensor] = None,
             seed: Union[int, torch.Tensor, None] = None) -> torch.Tensor:
        """Mean normalised L1 of the soft-argmax of ``logits`` against ``keypoints`` (input pixels)."""
        keypoints, visible = _keypoints_on(logits, keypoints, visible)
        height, width = logits.shape[-2:]
        target = keypoints / self.stride
        mask = torch.isfinite(target).all(dim=-1)
        if visible is not None:
            mask = mask & visible
        # A masked keypoint's map is read as zeros: its NaN or inf logits change neither the loss nor a gradient.
        predicted = soft_argmax(torch.where(mask[..., None, None], logits.float(), 0.0))
        distance = (predicted - torch.nan_to_num(target)).abs()
        error = distance[..., 0] / width + distance[..., 1] / height  # no host-made tensor: capturable
        return (error * mask).sum() / (2 * mask.sum()).clamp_min(1)

    def decode(self, logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(coords (B, K, 2) input pixels, scores (B, K) = 1)``.

        The scores are 1, as mmpose's integral regression gives (``RegressionLabel.decode``): a
        softmax peak is no confidence on the heatmap scale that COCO's instance rescoring
        assumes (it keeps keypoint scores above 0.2; a peak probability is about 0.04 for a
        spread of 2 cells, which would zero every instance score and rank detections by list order).
        """
        coords = soft_argmax(logits.float()) * self.stride
        return coords, torch.ones(coords.shape[:2], dtype=coords.dtype, device=coords.device)


# UDP's combined target as mmpose builds it (UDPHeatmap, generate_offset_heatmap): the disk's radius is
# this fraction of the map's longer side (3.5 cells on a 64-cell map), and the decoder blurs the disk maps
# with an OpenCV kernel of 2 * 11 + 1 taps and the offset maps with one of 11, whatever the map's size.
UDP_RADIUS_FACTOR = 0.0546875
UDP_BLUR_HALF_WIDTHS = (11, 5)  # disk maps, offset maps: cells on a map of UDP_REFERENCE_SIDE cells
UDP_REFERENCE_SIDE = 64  # the maps of 256-px crops that mmpose's UDP settings were chosen for
MIN_UDP_RADIUS = math.sqrt(0.5)  # a smaller disk misses every cell when its keypoint is between four


def opencv_gaussian_kernel(size: int) -> torch.Tensor:
    """The 1-D kernel (float64) OpenCV's ``GaussianBlur(map, (size, size), 0)`` uses: its
    fixed binomial tables for 1 to 9 taps, else a Gaussian of ``σ = 0.3 ((size - 1) / 2 - 1) + 0.8``,
    normalised (``cv2.getGaussianKernel(size, 0)``)."""
    if size < 1 or size % 2 == 0:
        raise ValueError(f"size: expected an odd number of taps >= 1, got {size!r}")
    tables = {1: [1.0], 3: [1, 2, 1], 5: [1, 4, 6, 4, 1], 7: [1, 3.5, 7, 9, 7, 3.5, 1], 9: [4, 13, 30, 51, 60, 51, 30, 13, 4]}
    if size in tables:
        kernel = torch.tensor(tables[size], dtype=torch.float64)
    else:
        sigma = 0.3 * ((size - 1) / 2 - 1) + 0.8
        taps = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
        kernel = torch.exp(-taps**2 / (2 * sigma**2))
    return kernel / kernel.sum()


def opencv_blur(maps: torch.Tensor, half_width: int) -> torch.Tensor:
    """Each map of ``maps`` (..., H, W) blurred as ``cv2.GaussianBlur(map, (2 h + 1, 2 h + 1), 0)``:
    :func:`opencv_gaussian_kernel`, OpenCV's default border (reflect about the edge cell,
    ``BORDER_REFLECT_101``, again and again where the kernel is wider than the map). ``h = 0``:
    the maps as they are."""
    if half_width < 1:
        return maps
    height, width = maps.shape[-2:]
    kernel = opencv_gaussian_kernel(2 * half_width + 1).to(device=maps.device, dtype=maps.dtype)
    flat = maps.reshape(1, -1, height, width)  # the maps as channels of one depthwise convolution
    count = flat.shape[1]  # (on a CPU 25x faster than as a batch of one-channel images)
    if count == 0:
        return maps
    if half_width < min(height, width):  # one reflection: torch's own padding, the faster
        padded = F.pad(flat, (half_width,) * 4, mode="reflect")
    else:
        padded = flat.index_select(2, _reflect_101(height, half_width, maps.device)).index_select(
            3, _reflect_101(width, half_width, maps.device))
    rows = F.conv2d(padded, kernel.view(1, 1, 1, -1).expand(count, 1, 1, -1), groups=count)
    return F.conv2d(rows, kernel.view(1, 1, -1, 1).expand(count, 1, -1, 1), groups=count).view(maps.shape)


def _reflect_101(size: int, pad: int, device: torch.device) -> torch.Tensor:
    """Indices of an axis of ``size`` cells padded by ``pad`` on each side as OpenCV's
    ``BORDER_REFLECT_101`` (``... 2 1 | 0 1 2 ... n-1 | n-2 ...``, periodic beyond)."""
    positions = torch.arange(-pad, size + pad, device=device)
    if size == 1:
        return torch.zeros_like(positions)
    period = 2 * (size - 1)
    folded = positions.remainder(period)
    return torch.where(folded < size, folded, period - folded)


class OffsetCodec:
    """UDP's combined classification and offset target (Huang et al., "The Devil is in the
    Details", CVPR 2020; mmpose ``UDPHeatmap(heatmap_type="combined")`` and
    ``CombinedTargetMSELoss``), in h3r's units.

    Per keypoint three maps, in this order in the head's ``3 K`` channels (``3 k``, ``3 k + 1``,
    ``3 k + 2``, as mmpose lays them out):

    * the disk: 1 on the cells within ``radius`` cells of the keypoint (``d² <= r²``), else 0;
    * the offsets ``(x_keypoint - x_cell) / r`` and ``(y_keypoint - y_cell) / r`` on the
      disk's cells, 0 elsewhere.

    Loss (mmpose's): the mean over batch, keypoints and cells of
    ``0.5 v (disk_pred - disk)² + 0.5 disk (dx_pred - dx)² + 0.5 disk (dy_pred - dy)²``,
    ``v`` the keypoint's visibility (an invisible or non-finite keypoint has an empty disk).
    Decoding (mmpose's): blur the disk maps and the offset maps with OpenCV's kernels
    (:func:`opencv_blur`), take the arg-max cell of the blurred disk map, add ``r`` times the
    blurred offsets read there; the score is the blurred disk map's maximum. (Where that maximum
    is not positive mmpose returns ``-1`` and reads a wrapped index; here the arg-max stands.)

    Sizes. mmpose's radius is ``0.0546875 max(W, H)`` cells and its blur kernels 23 and 11 taps:
    on its 64-cell maps the disk and the blurs cover a fixed share of the crop. On the study's
    smaller maps both keep that share (the kernels' half-widths 11 and 5 scaled by
    ``max(W, H) / 64`` and rounded: 3 and 1 on 16 cells, 1 and 1 on 8, 1 and 0 on 4, none on 2),
    and the radius is at least 1 cell: below ``√2 / 2`` cells a disk can hold no cell and its
    keypoint gets no target (the published rule gives 0.875, 0.44 and 0.22 cells on 16x16, 8x8
    and 4x4 maps); at 1 cell the keypoint's nearest cells are always inside.

    Units as every codec: keypoints in input pixels, cell ``i`` on input pixel ``stride i``
    (mmpose's UDP places the last cell on the last pixel, ``(input - 1) / (map - 1)`` pixels
    apart; h3r's crops and flips follow the ``stride i`` convention instead, both unbiased).

    Args:
        stride: input pixels per heatmap cell.
        radius: the disk's radius in heatmap cells; None: as above, from the map's size.
        offset_blur: blur the offset maps before reading them (mmpose's decoder); False reads
            the network's offsets at the arg-max as they are (ours: the blur mixes the cells
            around it, and reflects at the border).
    """

    name = "udp"
    maps_per_keypoint = 3

    def __init__(self, stride: int = 4, radius: Optional[float] = None, offset_blur: bool = True):
        if radius is not None:
            check_radius(radius)
        if not isinstance(offset_blur, bool):
            raise TypeError(f"offset_blur: expected True or False, got {offset_blur!r}")
        self.stride = stride
        self.radius = None if radius is None else float(radius)
        self.offset_blur = offset_blur

    def __repr__(self) -> str:
        return f"OffsetCodec(stride={self.stride}, radius={self.radius}, offset_blur={self.offset_blur})"

    def radius_on(self, size: tuple[int, int]) -> float:
        """The disk's radius (heatmap cells) on an ``(H, W)`` map."""
        if self.radius is None:
            return max(1.0, UDP_RADIUS_FACTOR * max(size))
        return check_radius(self.radius, size)

    @staticmethod
    def blur_half_widths(size: tuple[int, int]) -> tuple[int, int]:
        """Half-widths (cells) of the decoder's blur of the disk maps and of the offset maps on an
        ``(H, W)`` map: mmpose's 11 and 5 on 64 cells, in proportion, rounded (0: no blur)."""
        return tuple(round(half * max(size) / UDP_REFERENCE_SIDE) for half in UDP_BLUR_HALF_WIDTHS)

    def initial_logit(self, size: tuple[int, int]) -> float:
        """0: a fresh head predicts no disk and no offset, the targets' background."""
        return 0.0

    def targets(self, keypoints: torch.Tensor, size: tuple[int, int],
                visible: Optional[torch.Tensor] = None) -> torch.Tensor:
        """``(B, 3 K, H, W)``: each keypoint's disk, x offsets and y offsets (see the class)."""
        disk, dx, dy, _ = self._fields(keypoints, size, visible)
        return torch.stack([disk, disk * dx, disk * dy], dim=2).flatten(1, 2)

    def _fields(self, keypoints: torch.Tensor, size: tuple[int, int], visible: Optional[torch.Tensor]):
        """``(disk, dx, dy, present)``: ``(B, K, H, W)`` the disk of each visible, finite keypoint and
        the offsets ``(keypoint - cell) / r`` on every cell; ``(B, K)`` which keypoints are both."""
        height, width = size
        radius = self.radius_on(size)
        cells = keypoints.detach().to(torch.float32) / self.stride
        present = torch.isfinite(cells).all(dim=-1)
        if visible is not None:
            present = present & _on(visible, cells)
        cells = torch.nan_to_num(cells, nan=0.0, posinf=0.0, neginf=0.0)
        columns = torch.arange(width, device=cells.device, dtype=cells.dtype)
        rows = torch.arange(height, device=cells.device, dtype=cells.dtype)
        dx = ((cells[..., 0, None, None] - columns.view(1, 1, 1, width)) / radius).expand(-1, -1, height, -1)
        dy = ((cells[..., 1, None, None] - rows.view(1, 1, height, 1)) / radius).expand(-1, -1, -1, width)
        disk = ((dx**2 + dy**2 <= 1) & present[..., None, None]).to(cells.dtype)
        return disk, dx, dy, present

    def loss(self, logits: torch.Tensor, keypoints: torch.Tensor, visible: Optional[torch.Tensor] = None,
             seed: Union[int, torch.Tensor, None] = None) -> torch.Tensor:
        """mmpose's ``CombinedTargetMSELoss`` of ``logits`` (B, 3K, H, W) against :meth:`targets`.

        ``keypoints`` (B, K, 2) are input pixels; ``seed`` is accepted so every codec shares
        one signature (the target is deterministic)."""
        checks.check_keypoints(keypoints, None)
        batch, channels, height, width = _check_offset_maps(logits, keypoints.shape[1])
        keypoints, visible = _keypoints_on(logits, keypoints, visible, maps_per_keypoint=3)
        predicted = logits.float().view(batch, channels // 3, 3, height, width)
        disk, dx, dy, present = self._fields(keypoints, (height, width), visible)
        # Only the cells the loss reads are read: a masked keypoint's maps and the offsets off a disk (NaN or
        # inf logits there, a far keypoint's huge offsets) change neither the loss nor a gradient.
        on_disk = disk > 0
        offsets = ((torch.where(on_disk, predicted[:, :, 1], 0.0) - torch.where(on_disk, dx, 0.0)) ** 2
                   + (torch.where(on_disk, predicted[:, :, 2], 0.0) - torch.where(on_disk, dy, 0.0)) ** 2)
        squared = (torch.where(present[..., None, None], predicted[:, :, 0], 0.0) - disk) ** 2 + offsets
        return 0.5 * (squared.mean() if squared.numel() else squared.sum())  # an empty batch: 0

    def ideal_output(self, keypoints: torch.Tensor, size: tuple[int, int],
                     visible: Optional[torch.Tensor] = None) -> torch.Tensor:
        """What a perfectly trained network outputs: the disk, and the offsets to the keypoint on
        every cell. The loss leaves the offsets off the disk free; this takes them as the disk's
        field continued, which the decoder's blur keeps away from the border. (The target's
        zeros there instead are what the blur mixes in: mmpose's decoder on its own target misses
        by 0.2 to 0.4 cells on average in the interior, ``tests/test_codecs.py``.)"""
        disk, dx, dy, _ = self._fields(keypoints, size, visible)
        return torch.stack([disk, dx, dy], dim=2).flatten(1, 2)

    def decode(self, logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(coords (B, K, 2) input pixels, scores (B, K) = the blurred disk map's maximum)``."""
        batch, channels, height, width = _check_offset_maps(logits)
        maps = logits.float().view(batch, channels // 3, 3, height, width)
        disk_half_width, offset_half_width = self.blur_half_widths((height, width))
        disk = opencv_blur(maps[:, :, 0], disk_half_width)
        offsets = opencv_blur(maps[:, :, 1:], offset_half_width if self.offset_blur else 0)  # (B, K, 2, H, W)
        peaks, scores = h3r_kernels.decode(disk, method="argmax")
        # Where a raw maximum is not finite, the blur has spread a +inf over the kernel's cells (or a NaN): the
        # raw map's peak, by the decode op's rule (an inf is a limit; a NaN decodes to NaN). Read for every map,
        # not after a check on the host: one pass over the disk maps (2-5% of this decode on a 2-core CPU).
        raw_peaks, raw_scores = h3r_kernels.decode(maps[:, :, 0], method="argmax")
        unbounded = ~torch.isfinite(raw_scores)
        peaks = torch.where(unbounded[..., None], raw_peaks, peaks)
        scores = torch.where(unbounded, raw_scores, scores)
        x, y = peaks[..., 0].long(), peaks[..., 1].long()
        shift = torch.stack([_gather(offsets[:, :, 0], x, y), _gather(offsets[:, :, 1], x, y)], dim=-1)
        return (peaks + self.radius_on((height, width)) * shift) * self.stride, scores


def check_radius(radius, size: Optional[tuple[int, int]] = None) -> float:
    """``radius`` (heatmap cells) of UDP's disk as a float, refused where no disk could work: not a number,
    below ``√2 / 2`` (a disk can then hold no cell, and its keypoint gets no target), or, on an ``(H, W)``
    map, above ``hypot(H, W)`` (every disk then holds every cell: no peak, and offsets shrunk by ``1 / r``)."""
    if isinstance(radius, bool) or not isinstance(radius, (int, float)):
        raise TypeError(f"radius: expected a number of heatmap cells, got {type(radius).__name__} {radius!r}")
    if not (math.isfinite(radius) and radius >= MIN_UDP_RADIUS):
        raise ValueError(f"radius: expected at least √2/2 ≈ {MIN_UDP_RADIUS:.8f} heatmap cells (a smaller disk can "
                         f"hold no cell), got {radius!r}")
    if size is not None and radius > math.hypot(*size):
        raise ValueError(f"radius: {radius!r} cells is wider than the {size[0]}x{size[1]} heatmap (at most its diagonal, "
                         f"{math.hypot(*size):.4g} cells): every disk would hold every cell")
    return float(radius)


def _check_offset_maps(logits: torch.Tensor, num_keypoints: Optional[int] = None) -> torch.Size:
    """``logits.shape``, checked to be ``(B, 3 K, H, W)`` (with ``K = num_keypoints`` when given)."""
    channels = logits.shape[1] if logits.dim() == 4 else 0
    if not channels or channels % 3 or (num_keypoints is not None and channels != 3 * num_keypoints):
        expected = "3 K" if num_keypoints is None else f"3 x {num_keypoints} keypoints = {3 * num_keypoints}"
        raise ValueError(f"logits: the udp codec reads (B, {expected}, H, W) maps (disk, x and y offsets per "
                         f"keypoint), got shape {tuple(logits.shape)}")
    return logits.shape


def soft_argmax(logits: torch.Tensor) -> torch.Tensor:
    """``(B, K, 2)`` expected ``(x, y)`` cell of ``softmax`` over each map of ``logits`` (B, K, H, W)."""
    return _expected_cell(_cell_probabilities(logits))


def _cell_probabilities(logits: torch.Tensor) -> torch.Tensor:
    """``softmax`` over the ``H * W`` cells of each map of ``logits`` (B, K, H, W), in that shape."""
    return logits.flatten(2).softmax(dim=-1).view_as(logits)


def _expected_cell(probabilities: torch.Tensor) -> torch.Tensor:
    """``(B, K, 2)`` expected ``(x, y)`` cell under each map's distribution ``probabilities`` (B, K, H, W)."""
    height, width = probabilities.shape[-2:]
    columns = torch.arange(width, device=probabilities.device, dtype=probabilities.dtype)
    rows = torch.arange(height, device=probabilities.device, dtype=probabilities.dtype)
    x = (probabilities.sum(dim=-2) * columns).sum(dim=-1)
    y = (probabilities.sum(dim=-1) * rows).sum(dim=-1)
    return torch.stack([x, y], dim=-1)


def _to_heatmap_units(keypoints: torch.Tensor, logits: torch.Tensor, stride: int) -> torch.Tensor:
    return keypoints.to(device=logits.device, dtype=torch.float32) / stride


def _on(visible: Optional[torch.Tensor], like: torch.Tensor) -> Optional[torch.Tensor]:
    """``visible`` as a bool mask on ``like``'s device, read as the ops read it: non-zero is visible, NaN is not."""
    if visible is None:
        return None
    if not isinstance(visible, torch.Tensor):
        raise TypeError(f"visible: expected a torch.Tensor or None, got {type(visible).__name__}")
    visible = visible.to(like.device)
    if visible.dtype == torch.bool:
        return visible
    return (visible != 0) & ~visible.isnan() if visible.is_floating_point() else visible != 0


def _keypoints_on(logits: torch.Tensor, keypoints: torch.Tensor, visible: Optional[torch.Tensor],
                  maps_per_keypoint: int = 1) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
    """``(keypoints, visible)`` for a loss written in PyTorch (the ops check their own): float32 input
    pixels, constants (no gradient reaches them), and the bool mask (:func:`_on`), on the logits' device;
    their shapes checked against the ``(B, maps_per_keypoint K, H, W)`` logits as the ops check them."""
    checks.check_maps("logits", logits)
    checks.check_keypoints(keypoints, None)
    batch, keypoint_count = logits.shape[0], logits.shape[1] // maps_per_keypoint
    if tuple(keypoints.shape[:2]) != (batch, keypoint_count):
        raise ValueError(f"keypoints: expected (B, K) = {(batch, keypoint_count)} to match logits of shape "
                         f"{tuple(logits.shape)}, got shape {tuple(keypoints.shape)}")
    keypoints = keypoints.detach().to(device=logits.device, dtype=torch.float32)
    visible = _on(visible, logits)
    if visible is not None and tuple(visible.shape) != (batch, keypoint_count):
        raise ValueError(f"visible: expected shape (B, K) = {(batch, keypoint_count)} to match keypoints, "
                         f"got {tuple(visible.shape)}")
    return keypoints, visible


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


def dark_blur_radius(sigma: float) -> int:
    """Half-width of DARK's modulation kernel for a target of ``sigma`` cells.

    DARK and mmpose blur with an OpenCV kernel of odd size ``ks`` whose automatic σ,
    ``0.3 ((ks - 1) / 2 - 1) + 0.8``, matches the target's (``ks = 11`` for σ = 2, 17 for
    σ = 3); this inverts that rule, at least 1.
    """
    return max(1, round((sigma - 0.8) / 0.3 + 1))


DARK_FLOOR = 1e-10  # DarkPose and mmpose floor the map here before the log
# The 13 cells the Taylor step reads, relative to the peak: centre, ±1 and ±2 on each axis, diagonals.
_DARK_STENCIL = ((0, 0), (1, 0), (-1, 0), (0, 1), (0, -1), (2, 0), (-2, 0), (0, 2), (0, -2),
                 (1, 1), (1, -1), (-1, 1), (-1, -1))


def dark_offset(heatmaps: torch.Tensor, peaks: torch.Tensor, sigma: float) -> torch.Tensor:
    """DARK sub-cell offset (B, K, 2) at each integer peak (Zhang et al., CVPR 2020).

    As DarkPose (``lib/core/inference.py``) and mmpose (``refine_keypoints_dark``) compute it:

    1. Modulation: each map is blurred with a Gaussian of the target's ``sigma`` on a
       **zero-padded** map (:func:`dark_blur_radius` cells of zeros around it), then rescaled
       to its original maximum; values are floored at :data:`DARK_FLOOR` and the log taken.
    2. Taylor step ``-H⁻¹ g`` of the log map at the peak: gradient from the ±1 neighbours,
       Hessian diagonal from the ±2 neighbours (``(f(x+2) - 2 f(x) + f(x-2)) / 4``), mixed
       term from the diagonal neighbours.
    3. Border guard: the step is taken only where the peak has the neighbours it reads,
       ``1 < x < W - 2`` and ``1 < y < H - 2``; elsewhere, and where the Hessian is singular,
       the arg-max stands.

    Two guards of ours make the step never worse than the arg-max on an unbiased Gaussian
    (``tests/test_codecs.py`` checks every position on the map):

    * near the border, where the blur of the cells the step reads would include the zero
      padding (peak within ``radius + 2`` cells of an edge), the padding pulls the step
      towards the centre (measured on clean targets: up to 0.30 cells *worse* than the
      arg-max at σ = 2, 1.03 at σ = 3); there the step reads the un-modulated map instead;
    * where any value the step reads is below the floor, the log is the floor's, not the
      map's, and the step is skipped. This is what happens when σ < 0.5 cells: such a
      Gaussian is sampled too coarsely for a quadratic fit, and DARK falls back to arg-max.
    """
    batch, num_keypoints, height, width = heatmaps.shape
    radius = dark_blur_radius(sigma)
    taps = torch.arange(-radius, radius + 1, device=heatmaps.device, dtype=heatmaps.dtype)
    kernel_1d = torch.exp(-taps**2 / (2 * sigma**2))
    kernel_1d = kernel_1d / kernel_1d.sum()
    maps = heatmaps.reshape(batch * num_keypoints, 1, height, width)
    padded = F.pad(maps, (radius, radius, radius, radius), mode="constant", value=0.0)
    blurred = F.conv2d(F.conv2d(padded, kernel_1d.view(1, 1, 1, -1)), kernel_1d.view(1, 1, -1, 1))
    original_max = maps.amax(dim=(2, 3), keepdim=True)
    blurred_max = blurred.amax(dim=(2, 3), keepdim=True)
    blurred = blurred * original_max / torch.where(blurred_max != 0, blurred_max, torch.ones_like(blurred_max))
    blurred = blurred.reshape(batch, num_keypoints, height, width)

    x, y = peaks[..., 0].round().long(), peaks[..., 1].round().long()
    clear_of_padding = (x >= radius + 2) & (x <= width - 3 - radius) & (y >= radius + 2) & (y <= height - 3 - radius)
    has_neighbours = (x > 1) & (x < width - 2) & (y > 1) & (y < height - 2)
    modulated = _taylor_step(blurred, x, y)
    plain = _taylor_step(heatmaps, x, y)
    offset, usable = (torch.where(clear_of_padding.unsqueeze(-1), a, b) for a, b in zip(modulated, plain))
    return torch.where(usable & has_neighbours.unsqueeze(-1), offset, torch.zeros_like(offset))


def _taylor_step(maps: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(-H⁻¹ g (B, K, 2), usable (B, K, 1))`` of ``log(maps)`` at the integer cells ``(x, y)``."""
    stencil = {step: _gather(maps, x + step[0], y + step[1]) for step in _DARK_STENCIL}
    defined = torch.stack([value > DARK_FLOOR for value in stencil.values()]).all(dim=0)
    log = {step: value.clamp_min(DARK_FLOOR).log() for step, value in stencil.items()}
    gx = 0.5 * (log[1, 0] - log[-1, 0])
    gy = 0.5 * (log[0, 1] - log[0, -1])
    hxx = 0.25 * (log[2, 0] - 2 * log[0, 0] + log[-2, 0])
    hyy = 0.25 * (log[0, 2] - 2 * log[0, 0] + log[0, -2])
    hxy = 0.25 * (log[1, 1] - log[1, -1] - log[-1, 1] + log[-1, -1])
    det = hxx * hyy - hxy * hxy
    safe_det = torch.where(det != 0, det, torch.ones_like(det))
    offset = torch.stack([-(hyy * gx - hxy * gy) / safe_det, -(-hxy * gx + hxx * gy) / safe_det], dim=-1)
    usable = (defined & (det != 0)).unsqueeze(-1) & torch.isfinite(offset).all(dim=-1, keepdim=True)
    return offset, usable


def build_codec(name: str, stride: int = 4, *, input_size: Optional[int] = None, task: str = "face", k: int = 9,
                weights: str = "softmax", sigma: Optional[float] = None, refine: Optional[str] = None,
                window: Optional[int] = None, radius: Optional[float] = None, offset_blur: bool = True):
    """The codec called ``name`` (one of :data:`CODEC_NAMES`).

    * ``"h3r"``: :class:`H3RCodec` (``k`` or ``window``, ``weights``);
    * ``"h3r-gaussian"``: :class:`H3RCodec` with a Gaussian target of ``sigma`` (``window``, ``weights``);
    * ``"gaussian"``: :class:`GaussianCodec` at the nearest cell, ``refine`` default ``"quarter"``;
    * ``"dark"``: :class:`GaussianCodec` with the unbiased target, ``refine`` default ``"dark"``;
    * ``"integral"``: :class:`IntegralCodec`;
    * ``"udp"``: :class:`OffsetCodec` with a disk of ``radius`` cells (None: from the map's size),
      ``offset_blur``.

    For the codecs with a Gaussian ``sigma=None`` picks :func:`default_gaussian_sigma` for an
    ``input_size`` crop (required then), the ``stride`` and the ``task`` (``"face"``/``"pose"``).
    """
    if name == "h3r":
        return H3RCodec(stride=stride, k=k, weights=weights, window=window)
    if name in ("h3r-gaussian", "gaussian", "dark") and sigma is None:
        if input_size is None:
            raise ValueError("sigma: give sigma, or input_size to choose the default sigma")
        sigma = default_gaussian_sigma(input_size, stride, task)
    if name == "h3r-gaussian":
        if not sigma > 0:
            raise ValueError(f"sigma: expected a positive number of heatmap cells for h3r-gaussian (0 is the binary "
                             f"target: codec h3r), got {sigma!r}")
        return H3RCodec(stride=stride, k=k, weights=weights, sigma=sigma, window=window)
    if name in ("gaussian", "dark"):
        rounding, default_refine = ("nearest", "quarter") if name == "gaussian" else ("none", "dark")
        return GaussianCodec(stride=stride, sigma=sigma, refine=refine or default_refine, rounding=rounding)
    if name == "integral":
        return IntegralCodec(stride=stride)
    if name == "udp":
        return OffsetCodec(stride=stride, radius=radius, offset_blur=offset_blur)
    raise ValueError(f"codec: expected one of {', '.join(CODEC_NAMES)}, got {name!r}")
