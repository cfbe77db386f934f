"""The public functions: argument checks, seed drawing, then the registered ``torch.ops.h3r`` ops."""
from __future__ import annotations

from typing import Optional, Sequence

import torch

from . import checks, ops, rng


def _seed(seed: Optional[int]) -> int:
    return rng.draw_seed() if seed is None else seed


def encode(
    keypoints: torch.Tensor,
    heatmap_size: Sequence[int],
    visible: Optional[torch.Tensor] = None,
    *,
    sigma: float = 0.0,
    rounding: str = "random",
    seed: Optional[int] = None,
    expected: bool = False,
    dtype: torch.dtype = torch.float32,
    backend: str = "auto",
) -> torch.Tensor:
    """Render target heatmaps ``(B, K, H, W)`` for keypoints ``(B, K, 2)`` in heatmap pixels.

    Args:
        keypoints: ``(x, y)`` per keypoint, heatmap pixel units (input pixels / stride);
            the cell at row ``r``, column ``c`` has its centre at ``(x=c, y=r)``.
        heatmap_size: ``(H, W)``.
        visible: optional ``(B, K)`` bool mask; invisible keypoints give all-zero maps.
        sigma: 0 for H3R's binary map (1 at the rounded cell); > 0 for an unnormalised
            Gaussian ``exp(-d^2 / 2 sigma^2)`` (peak 1, in cells) centred at the rounded cell.
        rounding: ``"random"`` (H3R: ``floor(x) + [u < frac(x)]`` per axis, ``u`` uniform from a
            counter-based generator keyed by ``(seed, b, k)``), ``"nearest"``, ``"floor"``, or
            ``"none"`` (continuous centre; needs ``sigma > 0``).
        seed: 32-bit seed; ``None`` draws one from torch's default generator.
        expected: the expectation over the rounding instead of one sample (bilinear weights
            of the 4 neighbours, or the same mixture of 4 Gaussians).
        dtype: output dtype.

    A keypoint whose target cell lies off the map gives an all-zero map.
    """
    height, width = checks.check_encode(keypoints, heatmap_size, visible, sigma, rounding, seed, dtype)
    checks.check_backend(backend)
    return ops.encode(keypoints, visible, height, width, float(sigma), rounding, _seed(seed), expected, dtype, backend)


def heatmap_loss(
    logits: torch.Tensor,
    keypoints: torch.Tensor,
    visible: Optional[torch.Tensor] = None,
    *,
    sigma: float = 0.0,
    rounding: str = "random",
    seed: Optional[int] = None,
    loss: str = "bce",
    reduction: str = "mean",
    backend: str = "auto",
) -> torch.Tensor:
    """Fused target-and-loss: ``loss(logits, encode(keypoints, ...))`` without materialising the target.

    The target is exactly the one :func:`encode` renders with the same arguments and seed.
    ``loss="bce"`` is per-pixel binary cross-entropy with logits (H3R's binary heatmap loss;
    the authors' 2-channel softmax head ``(z0, z1)`` is the same loss on ``z1 - z0``);
    ``loss="mse"`` is the squared error (the vanilla Gaussian baseline). Keypoints that are
    invisible or whose target cell is off the map contribute nothing.

    ``reduction``: ``"mean"`` divides the sum by (contributing keypoints) * H * W (0 if none
    contribute); ``"sum"``; ``"none"`` returns ``(B, K)``, each keypoint's sum over its pixels.
    The result is float32 (float64 for float64 logits); differentiable wrt ``logits``.
    """
    checks.check_heatmap_loss(logits, keypoints, visible, sigma, rounding, seed, loss, reduction)
    checks.check_backend(backend)
    compute_grad = torch.is_grad_enabled() and logits.requires_grad
    value, _ = ops.heatmap_loss(
        logits, keypoints, visible, float(sigma), rounding, _seed(seed), loss, reduction, compute_grad, backend
    )
    return value


def decode(
    heatmaps: torch.Tensor,
    *,
    method: str = "topk",
    k: int = 9,
    weights: str = "softmax",
    window: int = 3,
    backend: str = "auto",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Coordinates ``(B, K, 2)`` (x, y in heatmap pixels) and scores ``(B, K)`` from heatmaps.

    Args:
        method: ``"topk"``: the ``k`` largest values over the whole map (ties to the lower
            flat index; the authors' decoder with ``k=9``); ``"local"``: the
            ``window x window`` neighbourhood of the arg-max, clipped at the borders;
            ``"argmax"``: the arg-max cell (the first, on ties).
        weights: ``"softmax"`` over the selected raw values (the released decoder) or
            ``"linear"``: ``max(v, 0)`` normalised to sum to one, the probability-weighted
            mean of the theory. Use it on probabilities, e.g. ``decode(logits.sigmoid(),
            weights="linear")``; if all selected values are <= 0 the peak cell is returned.
        k: 1..32 (and at most H*W). ``window``: odd, >= 1.

    ``scores`` is each map's maximum. Differentiable wrt ``heatmaps`` through the weights;
    the gradient is non-zero only on the selected cells (and the peak, through ``scores``).
    """
    checks.check_decode(heatmaps, method, k, weights, window)
    checks.check_backend(backend)
    coords, scores, _ = ops.decode(heatmaps, method, k, weights, window, backend)
    return coords, scores
