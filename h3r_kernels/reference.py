"""Plain, vectorised PyTorch: the executable specification of every op.

The Triton and CUDA C kernels are tested against these functions; on CPU tensors they
are also the default implementation. Conventions (see ``h3r_kernels.__doc__``):
keypoints ``(B, K, 2)`` are ``(x, y)`` in heatmap pixels, the cell at row ``r``,
column ``c`` has its centre at ``(x=c, y=r)``.

Every target is separable: ``target[b, k, r, c] = row[b, k, r] * col[b, k, c]``, with
one 1-D profile per axis. The kernels generate the same two profiles in registers.
"""
from __future__ import annotations

from typing import Optional

import torch

from . import rng, spec
from .spec import compute_dtype, saved_grad_dtype  # noqa: F401  (compute_dtype re-exported: the backends' compute dtype)


def _unknown(argument: str, value: str):
    """A spec option (h3r_kernels/spec.py) this file does not implement: fail, never fall back."""
    return NotImplementedError(f"reference: {argument}={value!r} is declared in h3r_kernels.spec but not implemented")


# --------------------------------------------------------------------------- masks


def visible_as_bool(visible: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
    """The ``visible`` mask as bool: non-zero is visible, and NaN is invisible.

    A bool mask is returned as it is (no copy); integer masks give ``visible != 0``;
    floating masks give ``(visible != 0) & ~isnan(visible)`` (written ``visible.abs() > 0``).
    NaN is taken as "no annotation" rather than rejected, because rejecting it would need a
    look at the data on the host (a device sync, impossible inside CUDA-graph capture).
    """
    if visible is None or visible.dtype == torch.bool:
        return visible
    if visible.is_floating_point():
        return visible.abs() > 0
    return visible != 0


def contributing(contributes: torch.Tensor, weight: Optional[torch.Tensor]) -> torch.Tensor:
    """``contributes`` (visible and on the map) and, with a weight, ``weight != 0`` (NaN weights contribute)."""
    return contributes if weight is None else contributes & (weight != 0)


# --------------------------------------------------------------------------- targets


def rounded_cells(keypoints: torch.Tensor, rounding: str, seed: int | torch.Tensor) -> torch.Tensor:
    """The activation cell of each keypoint (float32 integers, ``(B, K, 2)``, may lie off the map).

    * ``random``: ``floor(x) + [u < frac(x)]`` with ``u`` from :mod:`h3r_kernels.rng` (H3R;
      ``seed`` an int or a 0-d integer tensor on the keypoints' device, see ``rng.uniforms``);
    * ``nearest``: ``floor(x + 0.5)``; ``floor``: ``floor(x)``;
    * ``none``: the nearest cell, used only to decide whether the keypoint is on the map.

    Keypoints are rounded to float32 first; ``frac(x) = x - floor(x)`` is then exact.
    """
    points = keypoints.to(torch.float32)
    if rounding == "random":
        floor = torch.floor(points)
        u = rng.uniforms(seed, points.shape[0], points.shape[1], points.device)
        return floor + (u < points - floor).to(torch.float32)
    if rounding == "floor":
        return torch.floor(points)
    if rounding in ("nearest", "none"):
        return torch.floor(points + 0.5)
    raise _unknown("rounding", rounding)


def _on_map(cells: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Whether each cell (x, y) lies on the map, ``(B, K, 2)`` per axis (False for NaN)."""
    x_on = (cells[..., 0] >= 0) & (cells[..., 0] <= width - 1)
    y_on = (cells[..., 1] >= 0) & (cells[..., 1] <= height - 1)
    return torch.stack([x_on, y_on], dim=-1)


def _kernel(distance: torch.Tensor, sigma: float) -> torch.Tensor:
    """1-D profile of a unit-peak target at ``distance`` cells: a Kronecker delta, or a Gaussian."""
    if sigma == 0:
        return (distance == 0).to(torch.float32)
    return torch.exp(distance * distance * spec.gaussian_scale(sigma))


def target_profiles(
    keypoints: torch.Tensor,
    visible: Optional[torch.Tensor],
    height: int,
    width: int,
    sigma: float,
    rounding: str,
    seed: int,
    expected: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The separable target: ``(rows (B,K,H), cols (B,K,W), contributes (B,K) bool)``, float32.

    ``contributes`` is False for invisible keypoints and for keypoints whose target cell is
    off the map (or not finite); their profiles are zero. With ``expected=True`` (randomized
    rounding only) each axis profile is the bilinear mixture over the two neighbouring cells
    ``floor(x) + a``, weights ``1 - frac`` and ``frac``; components off the map are dropped,
    which is exactly the expectation of the sampled target.
    """
    points = keypoints.to(torch.float32)
    cols = torch.arange(width, dtype=torch.float32, device=points.device)
    rows = torch.arange(height, dtype=torch.float32, device=points.device)
    visible_mask = torch.ones(points.shape[:2], dtype=torch.bool, device=points.device) if visible is None else visible

    if expected and rounding == "random":
        floor = torch.floor(points)
        frac = points - floor
        profiles = []
        for axis, grid, size in ((0, cols, width), (1, rows, height)):
            profile = torch.zeros(*points.shape[:2], size, dtype=torch.float32, device=points.device)
            for offset, weight in ((0.0, 1.0 - frac[..., axis]), (1.0, frac[..., axis])):
                cell = floor[..., axis] + offset
                on_map = (cell >= 0) & (cell <= size - 1)
                component = weight.unsqueeze(-1) * _kernel(grid - cell.unsqueeze(-1), sigma)
                profile = profile + torch.where(on_map.unsqueeze(-1), component, torch.zeros_like(component))
            profiles.append(profile)
        col_profile, row_profile = profiles
        contributes = visible_mask & (col_profile.amax(-1) > 0) & (row_profile.amax(-1) > 0)
    else:
        cells = rounded_cells(points, rounding, seed)
        on_map = _on_map(cells, height, width).all(-1)
        contributes = visible_mask & on_map
        centres = points if rounding == "none" else cells
        centres = torch.where(contributes.unsqueeze(-1), centres, torch.zeros_like(centres))
        col_profile = _kernel(cols - centres[..., 0:1], sigma)
        row_profile = _kernel(rows - centres[..., 1:2], sigma)

    weight = contributes.to(torch.float32).unsqueeze(-1)
    return row_profile * weight, col_profile * weight, contributes


def encode(keypoints, visible, height, width, sigma, rounding, seed, expected, dtype) -> torch.Tensor:
    rows, cols, _ = target_profiles(keypoints, visible, height, width, sigma, rounding, seed, expected)
    return (rows.unsqueeze(-1) * cols.unsqueeze(-2)).to(dtype)


# --------------------------------------------------------------------------- fused loss


def heatmap_loss(logits, keypoints, visible, sigma, rounding, seed, loss, reduction, compute_grad, weight=None):
    """Loss and its gradient with respect to ``logits`` (for an incoming gradient of 1), the
    gradient in :func:`~h3r_kernels.spec.saved_grad_dtype` (float32 for float16 logits).

    Per pixel: ``bce`` = ``max(z, 0) - z t + log(1 + exp(-|z|))`` (gradient ``sigmoid(z) - t``),
    ``mse`` = ``(z - t)^2`` (gradient ``2 (z - t)``). A keypoint contributes when it is
    visible, its target cell is on the map and (with ``weight``, a ``(B, K)`` tensor in the
    accumulation dtype) its weight is not 0. Keypoints that do not contribute are *selected
    out* (``torch.where``, not multiplied by 0): their loss and gradient are exactly 0 whatever
    their logits hold, NaN and inf included. A contributing keypoint's summed loss is
    multiplied by its weight, and its gradient by ``weight * scale``. ``none`` gives each
    keypoint's (weighted) sum over its H*W pixels, ``(B, K)``; ``sum`` adds everything;
    ``mean`` multiplies the sum by ``scale = 1 / max(count * H * W, 1)`` with ``count`` the
    number of contributing keypoints (0 when none contributes). ``weight=None`` and a weight
    of 1 everywhere give the same bits.
    """
    height, width = logits.shape[-2:]
    acc = compute_dtype(logits.dtype)
    rows, cols, contributes = target_profiles(keypoints, visible, height, width, sigma, rounding, seed, False)
    contributes = contributing(contributes, weight)
    target = (rows.unsqueeze(-1) * cols.unsqueeze(-2)).to(acc)
    z = logits.to(acc)
    live = contributes[..., None, None]
    if loss == "bce":
        pixel_loss = torch.clamp(z, min=0) - z * target + torch.log1p(torch.exp(-z.abs()))
        pixel_grad = torch.sigmoid(z) - target
    elif loss == "mse":
        pixel_loss = (z - target) ** 2
        pixel_grad = 2 * (z - target)
    else:
        raise _unknown("loss", loss)
    per_keypoint = torch.where(live, pixel_loss, torch.zeros_like(pixel_loss)).sum(dim=(-2, -1))
    if weight is not None:
        per_keypoint = torch.where(contributes, per_keypoint * weight, torch.zeros_like(per_keypoint))
    if reduction == "none":
        value, scale = per_keypoint, None
    elif reduction == "sum":
        value, scale = per_keypoint.sum(), None
    else:
        count = contributes.sum().to(acc) * (height * width)
        scale = 1.0 / torch.clamp(count, min=1)
        value = per_keypoint.sum() * scale
    if not compute_grad:
        return value, logits.new_empty(0)
    factor = weight if scale is None else (scale if weight is None else weight * scale)
    if factor is not None:
        pixel_grad = pixel_grad * (factor[..., None, None] if factor.dim() else factor)
    grad = torch.where(live, pixel_grad, torch.zeros_like(pixel_grad))
    return value, grad.to(saved_grad_dtype(logits.dtype))


def heatmap_loss_backward(grad: torch.Tensor, grad_output: torch.Tensor, reduction: str,
                          dtype: Optional[torch.dtype] = None) -> torch.Tensor:
    """The saved gradient times the incoming gradient (a scalar, or ``(B, K)`` for ``none``), as
    ``dtype`` (the logits'; default the saved gradient's)."""
    scale = grad_output[..., None, None] if reduction == "none" else grad_output
    return (grad.to(compute_dtype(grad.dtype)) * scale).to(grad.dtype if dtype is None else dtype)


def scale_grad_(grad: torch.Tensor, grad_output: torch.Tensor, reduction: str) -> None:
    """In-place :func:`heatmap_loss_backward`; the GPU kernels skip maps whose scale is 1."""
    grad.copy_(heatmap_loss_backward(grad, grad_output, reduction))


# --------------------------------------------------------------------------- decoding


def _selected_cells(flat: torch.Tensor, width: int, height: int, method: str, k: int, window: int) -> torch.Tensor:
    """Flat indices ``(B, K, S)`` of the cells each decoder weighs; ``-1`` marks an empty slot.

    ``topk``: the k largest values, ties to the lower flat index (a stable descending sort);
    ``local``: the ``window x window`` neighbourhood of the arg-max in row-major order, cells
    off the map empty; ``argmax``: the first maximum alone.
    """
    if method == "topk":
        return torch.sort(flat, dim=-1, descending=True, stable=True).indices[..., :k].contiguous()
    peak = torch.argmax(flat, dim=-1, keepdim=True)
    if method == "argmax":
        return peak
    if method != "local":
        raise _unknown("method", method)
    half = window // 2
    offsets = torch.arange(-half, half + 1, device=flat.device)
    dy = offsets.repeat_interleave(window)
    dx = offsets.repeat(window)
    r = torch.div(peak, width, rounding_mode="floor") + dy
    c = peak % width + dx
    inside = (r >= 0) & (r < height) & (c >= 0) & (c < width)
    return torch.where(inside, r * width + c, torch.full_like(r, -1))


def linear_scale(peak: torch.Tensor) -> torch.Tensor:
    """What ``linear`` weighting divides the selected values by before summing them: the peak value
    where it is finite and > 0, else 1."""
    return torch.where(torch.isfinite(peak) & (peak > 0), peak, torch.ones_like(peak))


def _weights(values: torch.Tensor, valid: torch.Tensor, weights: str, peak_slot: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Normalised weights over the selected slots, and for ``linear`` the normaliser (0: fallback).

    ``m`` is the peak value (slot ``peak_slot``: the map's maximum). ``softmax``: ``exp(v - m)``
    normalised, with ``exp(v - m) = 1`` for ``v == m``, so that an infinite peak is the limit
    of softmax: ``m = +inf`` shares the weight equally among the ``+inf`` cells (others 0), and
    ``m = -inf`` (every selected cell ``-inf``) among all selected cells. ``linear``:
    ``max(v, 0) / sum``, computed as ``(max(v, 0) / m) / sum(max(v, 0) / m)`` for a finite
    ``m > 0`` (:func:`linear_scale`: the numerators lie in [0, 1], so their sum cannot overflow
    even where the values' own sum would), where for ``m = +inf`` the ``+inf`` cells count 1 and
    the others 0 (the same limit); when the sum is not > 0 all weight goes to the peak cell. A
    NaN peak (the map holds a NaN) gives NaN or fallback weights; :func:`decode` makes its
    coordinates NaN. For ``linear`` the normaliser returned is that sum of scaled numerators.
    """
    peak = values[..., peak_slot : peak_slot + 1]
    if weights == "softmax":
        shifted = torch.where(values == peak, torch.zeros_like(values), values - peak)
        shifted = torch.where(valid, shifted, torch.full_like(values, float("-inf")))
        return torch.softmax(shifted, dim=-1), torch.ones_like(values[..., 0])
    if weights != "linear":
        raise _unknown("weights", weights)
    positive = torch.clamp(values, min=0) / linear_scale(peak)
    positive = torch.where(peak == float("inf"), (values == peak).to(values.dtype), positive)
    positive = torch.where(valid, positive, torch.zeros_like(values))
    total = positive.sum(-1)
    fallback = torch.zeros_like(values)
    fallback[..., peak_slot] = 1
    safe_total = torch.where(total > 0, total, torch.ones_like(total))
    w = torch.where((total > 0).unsqueeze(-1), positive / safe_total.unsqueeze(-1), fallback)
    return w, total


def decode(heatmaps, method, k, weights, window):
    """``(coords (B,K,2), scores (B,K), indices (B,K,S))``: weighted mean of the selected cells.

    Non-finite maps, the same for every method and weighting: a map holding a NaN anywhere has
    a NaN score and NaN coordinates (NaN ranks above every number, so its first NaN cell is
    the peak and is selected first); ``+inf`` and ``-inf`` are ordinary extreme values, weighed
    as limits (see :func:`_weights`): the coordinates of a map whose maximum is ``+inf`` are
    the mean of the selected ``+inf`` cells (the cell itself for ``argmax``).
    """
    batch, num, height, width = heatmaps.shape
    acc = compute_dtype(heatmaps.dtype)
    flat = heatmaps.reshape(batch, num, height * width).to(acc)
    scores = flat.amax(-1)
    indices = _selected_cells(flat, width, height, method, k, window)
    valid = indices >= 0
    safe = torch.where(valid, indices, torch.zeros_like(indices))
    values = torch.gather(flat, -1, safe)
    w, _ = _weights(values, valid, weights, spec.peak_slot(method, indices.shape[-1]))
    x = (safe % width).to(acc)
    y = torch.div(safe, width, rounding_mode="floor").to(acc)
    coords = torch.stack([(w * x).sum(-1), (w * y).sum(-1)], dim=-1)
    coords = torch.where(torch.isnan(scores).unsqueeze(-1), torch.full_like(coords, float("nan")), coords)
    return coords, scores, indices


def decode_backward(heatmaps, indices, grad_coords, grad_scores, method, weights):
    """Gradient of ``decode`` wrt ``heatmaps``: non-zero only on the selected cells.

    Coordinates: ``softmax`` gives ``w_j ((x_j - x) gx + (y_j - y) gy)``; ``linear`` gives
    ``[v_j > 0] ((x_j - x) gx + (y_j - y) gy) / m / sum`` with ``m`` and ``sum`` as in
    :func:`_weights` (zero in the all-zero fallback);
    ``argmax`` coordinates are piecewise constant, and so are the coordinates of a map whose
    maximum is not finite (NaN or +-inf): their gradient is zero. Scores (the maximum) send
    their gradient to the peak cell.
    """
    batch, num, height, width = heatmaps.shape
    acc = compute_dtype(heatmaps.dtype)
    flat = heatmaps.reshape(batch, num, height * width).to(acc)
    valid = indices >= 0
    safe = torch.where(valid, indices, torch.zeros_like(indices))
    values = torch.gather(flat, -1, safe)
    peak = spec.peak_slot(method, indices.shape[-1])
    w, total = _weights(values, valid, weights, peak)
    x = (safe % width).to(acc)
    y = torch.div(safe, width, rounding_mode="floor").to(acc)
    gx, gy = grad_coords[..., 0:1].to(acc), grad_coords[..., 1:2].to(acc)
    cx = (w * x).sum(-1, keepdim=True)
    cy = (w * y).sum(-1, keepdim=True)
    direction = (x - cx) * gx + (y - cy) * gy
    if method == "argmax":
        slot_grad = torch.zeros_like(values)
    elif weights == "softmax":
        slot_grad = w * direction
    else:
        live = (values > 0) & valid & (total > 0).unsqueeze(-1)
        safe_total = torch.where(total > 0, total, torch.ones_like(total)).unsqueeze(-1)
        scale = linear_scale(values[..., peak : peak + 1])
        slot_grad = torch.where(live, direction / scale / safe_total, torch.zeros_like(values))
    finite_peak = torch.isfinite(values[..., peak : peak + 1])
    slot_grad = torch.where(valid & finite_peak, slot_grad, torch.zeros_like(slot_grad))
    slot_grad[..., peak] += grad_scores.to(acc)
    grad = torch.zeros_like(flat).scatter_add_(-1, safe, slot_grad)
    return grad.reshape(heatmaps.shape).to(heatmaps.dtype)
