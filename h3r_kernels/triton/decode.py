"""Triton kernels for ``decode`` and its backward; same functions and results as :mod:`h3r_kernels.reference`.

Forward: one program (one warp up to 64x64 maps) per ``(b, k)`` map, which reads the map
from memory once and selects in three phases:

1. *group maxima*: the map is streamed in ``CHUNKS`` contiguous chunks of ``GROUPS`` cells
   (one chunk up to :data:`MIN_GROUPS` cells, 16 chunks of 256 for 64x64); lane ``g`` keeps
   the maximum of the strided group ``{g, g + GROUPS, g + 2 GROUPS, ...}`` and its first
   cell, with two float compares per cell;
2. *best groups*: ``T`` rounds of "take the largest rank, remove it" over the groups
   (``T = k`` for ``topk``, 1 for ``local``/``argmax``). A group's rank orders it exactly as
   its maximal cell, so the best ``k`` cells of the map lie in the best ``k`` groups (a cell
   outside them has ``k`` group maxima above it). For ``argmax`` and ``local`` the best
   group's cell is the arg-max;
3. *top-k* (``topk``, several chunks only): the ``k x CHUNKS`` cells of those groups are
   loaded again (cache hits) and ``k`` rounds select the top-k among them.

``local`` then loads the ``window x window`` cells around the arg-max (cache hits; off-map
slots ``-1``). Last come the weights (softmax of the raw values, or ``max(v, 0) / sum``
with all weight on the peak when that sum is not > 0), the weighted mean of the cell
centres ``(x=c, y=r)``, the score (the map's maximum) and the selected flat indices.
Map sizes are compile-time constants: each new ``(H, W)`` compiles its own kernel.

Ranks: a value's order-preserving integer (sign-magnitude bits turned into two's
complement, so ``-0.0 == +0.0``) in the high half of an int64 and ``2**31 - 1 - cell`` in the
low half: one int64 ``max`` finds the largest value and, among equal values, the lowest
flat index (``torch.sort(stable=True)``'s and ``torch.argmax``'s tie-break). float64 maps
(accumulated in float64) use the 64-bit integer alone and a second ``min`` reduction over the
cells of the maximal rank. float16/bfloat16 maps are upcast to float32.

Non-finite maps (the reference's rule, for every method and weighting): every NaN ranks
above ``+inf`` and NaNs tie with each other, as in ``torch.sort``, ``torch.argmax`` and
``torch.amax``. A map holding a NaN therefore gets score NaN, its first NaN cell as the
peak, and NaN coordinates (stored as such whatever the weights gave). ``+-inf`` are extreme
values weighed as limits: a ``+inf`` peak shares the weight among the selected ``+inf``
cells (softmax and linear alike), a ``-inf`` peak (all selected cells ``-inf``) among all
selected cells for softmax, and falls back to the peak for linear. The backward gives no
coordinate gradient to a map whose maximum is not finite.

Backward: one program per map writes zeros over the whole map, waits at a block barrier,
then writes the gradient of the (at most ``window**2``) selected cells, so every output
cell is written by this one program (no atomics, deterministic).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .. import spec
from ._common import (
    METHOD_ARGMAX, METHOD_LOCAL, METHOD_TOPK, WEIGHTING_LINEAR, WEIGHTING_SOFTMAX, accumulates_in_fp64, as_mask,
    device_guard,
)

# Forward tiling (see _plan): maps of up to MIN_GROUPS cells are one chunk; larger maps are
# streamed in up to MAX_CHUNKS chunks of GROUPS cells, MIN_GROUPS <= GROUPS <= MAX_GROUPS.
MIN_GROUPS = 256
MAX_CHUNKS = 16
MAX_GROUPS = 8192
CELLS_PER_THREAD = 8
# Backward: cells cleared per step of the zero fill.
MAX_BLOCK = 4096

# Below the rank of every value (-inf included): removed and empty slots.
_EMPTY_RANK = tl.constexpr(-(2**63))
_INT32_MIN = tl.constexpr(-(2**31))
_INT32_MAX = tl.constexpr(2**31 - 1)

def _backward_num_warps(block: int) -> int:
    """Warps of the backward: 1 up to 16x16 maps, 8 for 64x64 (16 cells cleared per thread)."""
    return max(1, min(8, block // 512))


# --------------------------------------------------------------------------- ranks


@triton.jit
def _ordered(values, IS_F64: tl.constexpr):
    """Order-preserving integer image of float values: int32 for float32, int64 for float64.

    Sign-magnitude bits become two's complement, so ``-0.0`` and ``+0.0`` share key 0; every
    NaN gets the largest key (above ``+inf``), as ``torch.sort`` and ``torch.argmax`` rank it.
    """
    if IS_F64:
        bits = values.to(tl.int64, bitcast=True)
        magnitude = bits & 0x7FFFFFFFFFFFFFFF
        key = tl.where(bits < 0, -magnitude, magnitude)
        key = tl.where(magnitude > 0x7FF0000000000000, 0x7FFFFFFFFFFFFFFF, key)
    else:
        bits = values.to(tl.int32, bitcast=True)
        magnitude = bits & 0x7FFFFFFF
        key = tl.where(bits < 0, -magnitude, magnitude)
        key = tl.where(magnitude > 0x7F800000, 0x7FFFFFFF, key)
    return key


@triton.jit
def _rank(key, cell, IS_F64: tl.constexpr):
    """The int64 rank of a (key, flat cell index) pair; larger rank = selected first.

    float32: the key in the high half, ``2**31 - 1 - cell`` in the low half, so equal values
    rank the lower index first and ranks are unique. float64: the key alone (ties are then
    broken by the index in :func:`_best`).
    """
    if IS_F64:
        rank = key
    else:
        rank = (key.to(tl.int64) << 32) | (0x7FFFFFFF - cell).to(tl.int64)
    return rank


@triton.jit
def _rank_value(rank, IS_F64: tl.constexpr):
    """The value (float32, or float64) of a rank; NaN ranks give a NaN."""
    if IS_F64:
        bits = tl.where(rank < 0, (-rank) | _EMPTY_RANK, rank)
        value = bits.to(tl.float64, bitcast=True)
    else:
        key = (rank >> 32).to(tl.int32)
        bits32 = tl.where(key < 0, (-key) | _INT32_MIN, key)
        value = bits32.to(tl.float32, bitcast=True)
    return value


@triton.jit
def _best(ranks, cells, IS_F64: tl.constexpr):
    """The largest rank and its cell (among equal ranks, the lowest cell), over all elements."""
    best = tl.max(ranks)
    if IS_F64:
        cell = tl.min(tl.where(ranks == best, cells, _INT32_MAX))
    else:
        cell = 0x7FFFFFFF - (best & 0x7FFFFFFF).to(tl.int32)
    return best, cell


@triton.jit
def _select(ranks, cells, slots, COUNT: tl.constexpr, IS_F64: tl.constexpr):
    """The ``COUNT`` largest ranks and their cells, in slots ``0..COUNT-1`` (others: empty, cell -1).

    ``cells`` must be unique where the rank is not ``_EMPTY_RANK``.
    """
    top_ranks = tl.full(slots.shape, _EMPTY_RANK, tl.int64)
    top_cells = tl.full(slots.shape, -1, tl.int32)
    for i in tl.static_range(COUNT):
        best, cell = _best(ranks, cells, IS_F64)
        top_ranks = tl.where(slots == i, best, top_ranks)
        top_cells = tl.where(slots == i, cell, top_cells)
        ranks = tl.where(cells == cell, _EMPTY_RANK, ranks)
    return top_ranks, top_cells


# --------------------------------------------------------------------------- weights


@triton.jit
def _positive(values, valid):
    """``max(v, 0)`` on the valid slots (NaN stays NaN, as ``torch.clamp``), 0 elsewhere."""
    return tl.where(valid, tl.where(values < 0, 0.0, values), 0.0)


@triton.jit
def _peak_value(values, slots, PEAK_SLOT: tl.constexpr):
    """The value in slot ``PEAK_SLOT`` (the map's maximum), as a scalar."""
    return tl.sum(tl.where(slots == PEAK_SLOT, values, 0.0), axis=0)


@triton.jit
def _is_finite(value):
    """Whether ``value`` is a finite number (False for NaN and +-inf), as a plain boolean."""
    return as_mask(tl.abs(value) < float("inf"))


@triton.jit
def _weights(values, valid, slots, PEAK_SLOT: tl.constexpr, WEIGHTS: tl.constexpr):
    """Normalised weights of the slots, as :func:`h3r_kernels.reference._weights`.

    ``softmax`` (``WEIGHTS == WEIGHTING_SOFTMAX``): ``exp(v - m)`` normalised, ``m`` the peak slot's value (the
    maximum), with ``exp(v - m) = 1`` for ``v == m`` (infinite peaks are limits: the weight is
    shared by the cells equal to the peak); ``linear``: ``max(v, 0) / sum`` (for ``m = +inf``
    the ``+inf`` cells count 1, the others 0), or all weight on ``PEAK_SLOT`` when the sum is
    not > 0 (NaN included).
    """
    peak = slots == PEAK_SLOT
    shift = _peak_value(values, slots, PEAK_SLOT)
    if WEIGHTS == WEIGHTING_SOFTMAX:
        exps = tl.where(valid, tl.where(values == shift, 1.0, tl.exp(values - shift)), 0.0)
        weights = exps / tl.sum(exps, axis=0)
    else:
        tl.static_assert(WEIGHTS == WEIGHTING_LINEAR)
        positive = _positive(values, valid)
        positive = tl.where(shift == float("inf"), tl.where(valid & as_mask(values == shift), 1.0, 0.0), positive)
        total = tl.sum(positive, axis=0)
        weights = tl.where(total > 0, positive / tl.where(total > 0, total, 1.0), tl.where(peak, 1.0, 0.0))
    return weights


# --------------------------------------------------------------------------- forward


@triton.jit
def _decode_kernel(
    maps_ptr, coords_ptr, scores_ptr, indices_ptr,
    N_CELLS: tl.constexpr, WIDTH: tl.constexpr, HEIGHT: tl.constexpr, N_SLOTS: tl.constexpr,
    METHOD: tl.constexpr, WEIGHTS: tl.constexpr, K: tl.constexpr, WINDOW: tl.constexpr, PEAK_SLOT: tl.constexpr,
    SLOTS: tl.constexpr, TOP: tl.constexpr, TOP_SLOTS: tl.constexpr,
    GROUPS: tl.constexpr, CHUNKS: tl.constexpr, CHUNK_SLOTS: tl.constexpr, IS_F64: tl.constexpr,
):
    """One program per map; see the module docstring for the three phases."""
    map_index = tl.program_id(0).to(tl.int64)
    map_ptr = maps_ptr + map_index * N_CELLS

    # Phase 1: the maximum of each strided group {g, g + GROUPS, g + 2 GROUPS, ...} and
    # its first cell, streaming the map in CHUNKS contiguous chunks of GROUPS cells. Values
    # are compared as floats: "not (v <= max)" also lets a NaN in (NaN ranks first), and
    # nothing replaces a NaN maximum; cells past the map read -inf, which never replaces.
    lanes = tl.arange(0, GROUPS)
    inside = lanes < N_CELLS
    raw = tl.load(map_ptr + lanes, mask=inside, other=float("-inf"))
    group_max = raw.to(tl.float64) if IS_F64 else raw.to(tl.float32)
    group_cell = tl.where(inside, lanes, -1)
    for chunk in tl.static_range(1, CHUNKS):
        cells = chunk * GROUPS + lanes
        if (chunk + 1) * GROUPS <= N_CELLS:
            raw = tl.load(map_ptr + cells)
        else:
            raw = tl.load(map_ptr + cells, mask=cells < N_CELLS, other=float("-inf"))
        value = raw.to(tl.float64) if IS_F64 else raw.to(tl.float32)
        better = (~(value <= group_max)) & (group_max == group_max)
        group_max = tl.where(better, value, group_max)
        group_cell = tl.where(better, cells, group_cell)
    group_rank = tl.where(group_cell >= 0, _rank(_ordered(group_max, IS_F64), group_cell, IS_F64), _EMPTY_RANK)

    # Phase 2: the best TOP groups (by maximum, then first cell) hold the TOP best cells
    # (TOP = K for topk, else 1: the peak).
    top_slots = tl.arange(0, TOP_SLOTS)
    top_ranks, top_cells = _select(group_rank, group_cell, top_slots, TOP, IS_F64)

    # Phase 3 (topk over several chunks): reload the cells of those groups (cache hits)
    # and select among them.
    if METHOD == METHOD_TOPK and CHUNKS > 1:
        candidates = (top_cells % GROUPS)[:, None] + (tl.arange(0, CHUNK_SLOTS) * GROUPS)[None, :]
        inside = (top_slots < K)[:, None] & (candidates < N_CELLS)
        raw = tl.load(map_ptr + candidates, mask=inside, other=0.0)
        key = _ordered(raw.to(tl.float64) if IS_F64 else raw.to(tl.float32), IS_F64)
        candidate_rank = tl.where(inside, _rank(key, candidates, IS_F64), _EMPTY_RANK)
        top_ranks, top_cells = _select(candidate_rank, tl.where(inside, candidates, -1), top_slots, K, IS_F64)

    score = _rank_value(tl.max(top_ranks), IS_F64)
    slots = tl.arange(0, SLOTS)
    if METHOD == METHOD_TOPK:
        valid = slots < K
        selected = top_cells
        values = _rank_value(top_ranks, IS_F64)
    else:
        peak = tl.max(top_cells)
        if METHOD == METHOD_LOCAL:
            half: tl.constexpr = WINDOW // 2
            row = peak // WIDTH + slots // WINDOW - half
            col = peak % WIDTH + slots % WINDOW - half
            valid = (slots < WINDOW * WINDOW) & (row >= 0) & (row < HEIGHT) & (col >= 0) & (col < WIDTH)
            selected = tl.where(valid, row * WIDTH + col, -1)
            raw = tl.load(map_ptr + tl.where(valid, selected, 0), mask=valid, other=0.0)
            values = raw.to(tl.float64) if IS_F64 else raw.to(tl.float32)
        else:
            tl.static_assert(METHOD == METHOD_ARGMAX)
            valid = slots < 1
            selected = tl.where(valid, peak, -1)
            values = tl.where(valid, score, 0.0)

    weights = _weights(values, valid, slots, PEAK_SLOT, WEIGHTS)
    safe = tl.where(valid, selected, 0)
    x = (safe % WIDTH).to(values.dtype)
    y = (safe // WIDTH).to(values.dtype)
    centre_x = tl.sum(tl.where(valid, weights * x, 0.0), axis=0)
    centre_y = tl.sum(tl.where(valid, weights * y, 0.0), axis=0)
    # A map holding a NaN (its score is NaN): NaN coordinates, whatever the weights made of it.
    tl.store(coords_ptr + map_index * 2, tl.where(score != score, score, centre_x))
    tl.store(coords_ptr + map_index * 2 + 1, tl.where(score != score, score, centre_y))
    tl.store(scores_ptr + map_index, score)
    tl.store(indices_ptr + map_index * N_SLOTS + slots, selected.to(tl.int64), mask=slots < N_SLOTS)


def _plan(n_cells: int) -> tuple[int, int, int]:
    """``(groups, chunks, num_warps)`` for a map of ``n_cells``: ``chunks`` x ``groups`` >= ``n_cells``.

    Up to :data:`MIN_GROUPS` cells a map is one chunk; larger maps take up to
    :data:`MAX_CHUNKS` chunks (more if the groups would exceed :data:`MAX_GROUPS`), with
    :data:`CELLS_PER_THREAD` group slots per thread.
    """
    if n_cells <= MIN_GROUPS:
        groups = triton.next_power_of_2(n_cells)
    else:
        groups = min(MAX_GROUPS, max(MIN_GROUPS, triton.next_power_of_2(triton.cdiv(n_cells, MAX_CHUNKS))))
    num_warps = max(1, min(8, groups // (32 * CELLS_PER_THREAD)))
    return groups, triton.cdiv(n_cells, groups), num_warps


def decode(heatmaps: torch.Tensor, method: str, k: int, weights: str, window: int):
    """``(coords (B,K,2), scores (B,K), indices (B,K,S) int64)``; see :func:`h3r_kernels.reference.decode`."""
    batch, num, height, width = heatmaps.shape
    in_fp64 = accumulates_in_fp64(heatmaps.dtype)
    acc = torch.float64 if in_fp64 else torch.float32
    n_slots = spec.slots(method, k, window)
    coords = heatmaps.new_empty((batch, num, 2), dtype=acc)
    scores = heatmaps.new_empty((batch, num), dtype=acc)
    indices = heatmaps.new_empty((batch, num, n_slots), dtype=torch.int64)
    if batch * num == 0:
        return coords, scores, indices
    n_cells = height * width
    if n_cells >= 2**31:
        raise ValueError(f"heatmaps: expected H*W < 2**31 cells per map, got {height}x{width}")
    groups, chunks, num_warps = _plan(n_cells)
    top = k if method == "topk" else 1
    with device_guard(heatmaps):
        _decode_kernel[(batch * num,)](
            heatmaps, coords, scores, indices,
            N_CELLS=n_cells, WIDTH=width, HEIGHT=height, N_SLOTS=n_slots,
            METHOD=spec.code(spec.Method, method), WEIGHTS=spec.code(spec.Weighting, weights), K=k, WINDOW=window,
            PEAK_SLOT=spec.peak_slot(method, n_slots), SLOTS=triton.next_power_of_2(n_slots),
            TOP=top, TOP_SLOTS=triton.next_power_of_2(top), GROUPS=groups, CHUNKS=chunks,
            CHUNK_SLOTS=triton.next_power_of_2(chunks), IS_F64=in_fp64, num_warps=num_warps,
        )
    return coords, scores, indices


# --------------------------------------------------------------------------- backward


@triton.jit
def _decode_backward_kernel(
    maps_ptr, indices_ptr, grad_coords_ptr, grad_scores_ptr, grad_ptr,
    N_CELLS: tl.constexpr, WIDTH: tl.constexpr, N_SLOTS: tl.constexpr,
    METHOD: tl.constexpr, WEIGHTS: tl.constexpr, PEAK_SLOT: tl.constexpr,
    SLOTS: tl.constexpr, BLOCK: tl.constexpr, CHUNKS: tl.constexpr, IS_F64: tl.constexpr,
):
    """One program per map: zeros over the map, then the gradients of the selected cells."""
    map_index = tl.program_id(0).to(tl.int64)
    map_ptr = maps_ptr + map_index * N_CELLS
    grad_map_ptr = grad_ptr + map_index * N_CELLS

    for chunk in range(CHUNKS):
        offsets = chunk * BLOCK + tl.arange(0, BLOCK)
        tl.store(grad_map_ptr + offsets, tl.zeros([BLOCK], grad_ptr.dtype.element_ty), mask=offsets < N_CELLS)
    # The selected cells below overwrite some of these zeros: all zeros must have landed first.
    tl.debug_barrier()

    slots = tl.arange(0, SLOTS)
    selected = tl.load(indices_ptr + map_index * N_SLOTS + slots, mask=slots < N_SLOTS, other=-1)
    valid = selected >= 0
    safe = tl.where(valid, selected, 0)
    raw = tl.load(map_ptr + safe, mask=valid, other=0.0)
    values = raw.to(tl.float64) if IS_F64 else raw.to(tl.float32)
    grad_x = tl.load(grad_coords_ptr + map_index * 2).to(values.dtype)
    grad_y = tl.load(grad_coords_ptr + map_index * 2 + 1).to(values.dtype)
    grad_score = tl.load(grad_scores_ptr + map_index).to(values.dtype)

    weights = _weights(values, valid, slots, PEAK_SLOT, WEIGHTS)
    x = (safe % WIDTH).to(values.dtype)
    y = (safe // WIDTH).to(values.dtype)
    centre_x = tl.sum(tl.where(valid, weights * x, 0.0), axis=0)
    centre_y = tl.sum(tl.where(valid, weights * y, 0.0), axis=0)
    direction = (x - centre_x) * grad_x + (y - centre_y) * grad_y
    if METHOD == METHOD_ARGMAX:
        slot_grad = tl.zeros([SLOTS], values.dtype)
    elif WEIGHTS == WEIGHTING_SOFTMAX:
        slot_grad = weights * direction
    else:
        total = tl.sum(_positive(values, valid), axis=0)
        slot_grad = tl.where(values > 0, direction / tl.where(total > 0, total, 1.0), 0.0)
        slot_grad = tl.where(total > 0, slot_grad, 0.0)  # the peak fallback is piecewise constant
    # A non-finite maximum (NaN, +-inf) makes the coordinates piecewise constant: no gradient.
    live = valid & _is_finite(_peak_value(values, slots, PEAK_SLOT))
    slot_grad = tl.where(live, slot_grad, 0.0) + tl.where(slots == PEAK_SLOT, grad_score, 0.0)
    tl.store(grad_map_ptr + safe, slot_grad.to(grad_ptr.dtype.element_ty), mask=valid)


def decode_backward(heatmaps, indices, grad_coords, grad_scores, method, weights) -> torch.Tensor:
    """Gradient wrt ``heatmaps`` (dense, zero off the selected cells); see :func:`h3r_kernels.reference.decode_backward`."""
    batch, num, height, width = heatmaps.shape
    grad = torch.empty_like(heatmaps, memory_format=torch.contiguous_format)
    if batch * num == 0:
        return grad
    n_cells = height * width
    n_slots = indices.shape[-1]
    block = min(triton.next_power_of_2(n_cells), MAX_BLOCK)
    with device_guard(heatmaps):
        _decode_backward_kernel[(batch * num,)](
            heatmaps, indices, grad_coords, grad_scores, grad,
            N_CELLS=n_cells, WIDTH=width, N_SLOTS=n_slots,
            METHOD=spec.code(spec.Method, method), WEIGHTS=spec.code(spec.Weighting, weights),
            PEAK_SLOT=spec.peak_slot(method, n_slots),
            SLOTS=triton.next_power_of_2(n_slots), BLOCK=block, CHUNKS=triton.cdiv(n_cells, block),
            IS_F64=accumulates_in_fp64(heatmaps.dtype), num_warps=_backward_num_warps(block),
        )
    return grad
