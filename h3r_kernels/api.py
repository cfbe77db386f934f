"""The public functions: argument checks, seed drawing, then the op: under ``torch.func``
transforms and forward-mode AD the registered ops wrapped for them (:mod:`h3r_kernels.transforms`),
the eager fast path (:mod:`h3r_kernels.eager`) for plain eager calls, the registered
``torch.ops.h3r`` op otherwise."""
from __future__ import annotations

from typing import Optional, Sequence, Union

import torch

from . import checks, eager, ops, reference, rng, transforms


def _constants(*tensors):
    """``tensors`` detached (None kept): keypoints, masks and weights are constants for autograd, on the
    fast path and the registered op alike (a backend's own tensor ops would otherwise differentiate them)."""
    return tuple(t.detach() if isinstance(t, torch.Tensor) and t.requires_grad else t for t in tensors)


def _draws(keypoints, rounding: str, seed: Optional[int], seed_tensor, expected: bool):
    """The op's ``(keypoints, rounding, seed)`` from a checked seed (an int, or None: a fresh one is
    drawn). With a seed tensor (:func:`checks.device_seed`) the random rounding is done here, on the
    device, by the reference rule, and the op puts the target at those cells (``rounding="floor"``,
    exact on integers): the cells the op draws with that seed."""
    if seed_tensor is None:
        return keypoints, rounding, rng.draw_seed() if seed is None else seed
    if rounding == "random" and not expected:
        return reference.rounded_cells(keypoints, "random", seed_tensor), "floor", 0
    return keypoints, rounding, 0


def encode(
    keypoints: torch.Tensor,
    heatmap_size: Sequence[int],
    visible: Optional[torch.Tensor] = None,
    *,
    sigma: float = 0.0,
    rounding: str = "random",
    seed: Optional[Union[int, torch.Tensor]] = None,
    expected: bool = False,
    dtype: torch.dtype = torch.float32,
    backend: str = "auto",
) -> torch.Tensor:
    """Render target heatmaps ``(B, K, H, W)`` for keypoints ``(B, K, 2)`` in heatmap pixels.

    Args:
        keypoints: ``(x, y)`` per keypoint, heatmap pixel units (input pixels / stride);
            the cell at row ``r``, column ``c`` has its centre at ``(x=c, y=r)``.
        heatmap_size: ``(H, W)``.
        visible: optional ``(B, K)`` mask, bool (used as is), integer or floating (converted:
            non-zero is visible, NaN is invisible); invisible keypoints give all-zero maps.
        sigma: 0 for H3R's binary map (1 at the rounded cell); > 0 for an unnormalised
            Gaussian ``exp(-d^2 / 2 sigma^2)`` (peak 1, in cells) centred at the rounded cell.
            Any real number type (Python, NumPy, a 0-d tensor; not bool); a positive sigma
            must be >= ``checks.MIN_SIGMA`` (3.83e-20), below which -1/(2 sigma^2) overflows float32.
        rounding: ``"random"`` (H3R: ``floor(x) + [u < frac(x)]`` per axis, ``u`` uniform from a
            counter-based generator keyed by ``(seed, b, k)``), ``"nearest"``, ``"floor"``, or
            ``"none"`` (continuous centre; needs ``sigma > 0``).
        seed: 32-bit seed (any integer type); ``None`` draws one from torch's default generator.
            A 0-d integer tensor on the keypoints' device is used there without a host sync
            (same draws as its value as an int): inside a captured CUDA graph, change the
            tensor between replays and every replay re-draws (an int seed would be frozen
            into the graph). A CUDA tensor is not checked on the host: its low 32 bits count.
        expected: the expectation over the rounding instead of one sample (bilinear weights
            of the 4 neighbours, or the same mixture of 4 Gaussians).
        dtype: output dtype.

    A keypoint whose target cell lies off the map gives an all-zero map. The maps are data, not a
    function of the keypoints for autograd: no gradient flows to ``keypoints`` on any path.
    """
    keypoints, visible = _constants(keypoints, visible)
    seed_tensor = checks.device_seed(seed, keypoints)
    height, width, sigma, seed = checks.check_encode(
        keypoints, heatmap_size, visible, sigma, rounding, 0 if seed_tensor is not None else seed, dtype
    )
    checks.check_backend(backend)
    expected = checks.as_flag("expected", expected)
    keypoints, rounding, seed = _draws(keypoints, rounding, seed, seed_tensor, expected)
    op = eager.encode if eager.takes_fast_path(keypoints, visible) else ops.encode
    return op(keypoints, visible, height, width, sigma, rounding, seed, expected, dtype, backend)


def heatmap_loss(
    logits: torch.Tensor,
    keypoints: torch.Tensor,
    visible: Optional[torch.Tensor] = None,
    *,
    weight: Optional[torch.Tensor] = None,
    sigma: float = 0.0,
    rounding: str = "random",
    seed: Optional[Union[int, torch.Tensor]] = None,
    loss: str = "bce",
    reduction: str = "mean",
    backend: str = "auto",
) -> torch.Tensor:
    """Fused target-and-loss: ``loss(logits, encode(keypoints, ...))`` without materialising the target.

    The target is exactly the one :func:`encode` renders with the same arguments and seed.
    ``loss="bce"`` is per-pixel binary cross-entropy with logits (H3R's binary heatmap loss;
    the authors' 2-channel softmax head ``(z0, z1)`` is the same loss on ``z1 - z0``);
    ``loss="mse"`` is the squared error (the vanilla Gaussian baseline).

    A keypoint *contributes* when it is visible (``visible`` as in :func:`encode`), its target
    cell is on the map and, with ``weight``, its weight is not 0. Keypoints that do not
    contribute are selected out: their loss and gradient are exactly 0 whatever their logits
    hold (NaN and inf included), on every backend.

    ``weight``: optional ``(B, K)`` floating tensor (mmpose's ``keypoint_weights``). Each
    contributing keypoint's per-pixel loss and gradient are multiplied by its weight. Values
    are used as given: a negative weight negates its keypoint's loss, a NaN or infinite one
    makes the loss NaN or infinite (it is not hidden). It is a constant for autograd: no
    gradient flows to it. ``weight`` of 1 everywhere gives the same bits as ``weight=None``.

    ``reduction``: ``"mean"`` divides the (weighted) sum by (contributing keypoints) * H * W:
    the weights do not change the divisor, except that a keypoint of weight 0 does not
    contribute (0 if none contribute); ``"sum"``; ``"none"`` returns
    ``(B, K)``, each keypoint's weighted sum over its pixels. The result is float32 (float64
    for float64 logits); differentiable wrt ``logits``.

    mmpose's ``KeypointMSELoss(use_target_weight=True)`` (mmpose 1.x: the mean over all
    ``B*K*H*W`` pixels of ``w * (z - t)^2``, times ``loss_weight``) is::

        heatmap_loss(heatmaps, keypoints, weight=keypoint_weights, loss="mse", sigma=2.0,
                     rounding="nearest", reduction="sum") / heatmaps.numel() * loss_weight

    i.e. ``reduction="sum"`` divided by ``B*K*H*W`` (mmpose's mean also counts the masked
    keypoints' pixels, so ``reduction="mean"`` differs from it when some weights are 0), with
    the Gaussian target of mmpose's ``MSRAHeatmap`` codec (``rounding="nearest"``; use
    ``"none"`` for its ``unbiased=True`` variant). mmpose 0.x squared the weight and halved
    the loss: pass ``weight=w**2`` and multiply by 0.5.
    """
    keypoints, visible, weight = _constants(keypoints, visible, weight)
    seed_tensor = checks.device_seed(seed, keypoints)
    sigma, seed = checks.check_heatmap_loss(
        logits, keypoints, visible, sigma, rounding, 0 if seed_tensor is not None else seed, loss, reduction, weight
    )
    checks.check_backend(backend)
    compute_grad = torch.is_grad_enabled() and logits.requires_grad
    keypoints, rounding, seed = _draws(keypoints, rounding, seed, seed_tensor, False)
    if transforms.differentiating(compute_grad):
        return transforms.heatmap_loss(logits, keypoints, visible, sigma, rounding, seed, loss, reduction, backend, weight)
    if eager.takes_fast_path(logits, keypoints, visible, weight):
        return eager.heatmap_loss(logits, keypoints, visible, sigma, rounding, seed, loss, reduction, compute_grad, backend, weight)
    value, _ = ops.heatmap_loss(logits, keypoints, visible, sigma, rounding, seed, loss, reduction, compute_grad, backend, weight)
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
        k: 1..32 (and at most H*W). ``window``: odd, 1..31 (``window**2 <= 1024`` cells). Any
            integer type (not bool).

    ``scores`` is each map's maximum. Differentiable wrt ``heatmaps`` through the weights;
    the gradient is non-zero only on the selected cells (and the peak, through ``scores``).

    Non-finite maps, the same for every method, weighting and backend: a map holding a NaN
    anywhere decodes to NaN coordinates (x and y) and a NaN score. ``+inf`` and ``-inf`` are
    weighed as the limits of finite values: when the maximum is ``+inf`` the weight is shared
    equally by the selected ``+inf`` cells (softmax and linear; the score is ``+inf``);
    ``-inf`` cells get weight 0, and a selection of only ``-inf`` cells gets equal softmax
    weights (linear: the peak cell). A map whose maximum is not finite has no coordinate
    gradient (only the score's, at the peak cell).
    """
    k, window = checks.check_decode(heatmaps, method, k, weights, window)
    checks.check_backend(backend)
    if transforms.differentiating(torch.is_grad_enabled() and heatmaps.requires_grad):
        return transforms.decode(heatmaps, method, k, weights, window, backend)
    if eager.takes_fast_path(heatmaps):
        return eager.decode(heatmaps, method, k, weights, window, backend)
    coords, scores, _ = ops.decode(heatmaps, method, k, weights, window, backend)
    return coords, scores
