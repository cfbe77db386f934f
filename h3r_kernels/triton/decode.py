"""Triton kernels for ``decode`` and its backward; same functions and results as :mod:`h3r_kernels.reference`.

Forward: one program per ``(b, k)`` map. The map is read once, in chunks of at most
:data:`MAX_BLOCK` cells (one chunk, held in registers, for maps up to 64x64). Each cell
becomes a totally ordered integer *key*; the selection is then a few integer max-reductions:

* ``topk``: ``k`` rounds of "take the largest key, remove it"; for maps of several chunks a
  running top-k (keys and flat indices) is merged with each chunk;
* ``local`` and ``argmax``: one running arg-max; ``local`` then loads the ``window x window``
  cells around it (cache hits: the map was just read), off-map slots ``-1``.

Then the weights (softmax of the raw values, or ``max(v, 0) / sum`` with all weight to the
peak when that sum is not positive), the weighted mean of the cell centres ``(x=c, y=r)``, the
score (the map's maximum) and the selected flat indices are written.

Keys: for float32 (and float16/bfloat16, upcast) maps, the value's order-preserving int32
image in the high half of an int64 and ``2**31 - 1 - index`` in the low half, so one int64
``max`` finds the largest value and, among equal values, the lowest flat index. float64 maps
use an int64 order-preserving key and a second ``min`` reduction over the indices of the
maximal key. ``-0.0`` and ``+0.0`` get the same key (equal, as in ``torch.sort``).

NaN: every NaN ranks above ``+inf`` and NaNs tie with each other, as in ``torch.sort``,
``torch.argmax`` and ``torch.amax``. A map holding a NaN therefore gets score NaN and its
(first) NaN cell as the peak; with ``softmax`` weights its coordinates are NaN, with
``linear`` weights the sum is NaN, so all weight falls back to the peak cell (the
reference's behaviour in both cases).

Backward: one program per map writes zeros over the whole map, waits at a block barrier,
then writes the gradient of the (at most ``window**2``) selected cells, so every output
cell is written by this one program.
"""
from __future__ import annotations

import contextlib

import torch
import triton
import triton.language as tl

# Largest chunk of a map one program holds in registers (elements); 64x64 maps are one chunk.
MAX_BLOCK = 4096

_METHODS = {"topk": 0, "local": 1, "argmax": 2}
_WEIGHTINGS = {"softmax": 0, "linear": 1}
_EMPTY_KEY = -(2**63)  # below the key of every value, -inf included
_INT32_MAX = 2**31 - 1


def _accumulator_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _slots(method: str, k: int, window: int) -> int:
    return {"topk": k, "local": window * window, "argmax": 1}[method]


def _peak_slot(method: str, n_slots: int) -> int:
    """The slot of the map's arg-max: the window centre for ``local``, else slot 0."""
    return n_slots // 2 if method == "local" else 0


def _num_warps(block: int) -> int:
    """Warps per program: 1 for maps up to 16x16, 8 for a 64x64 chunk (16 cells per thread)."""
    return max(1, min(8, block // 512))


def _device_guard(device: torch.device):
    return torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext()


# --------------------------------------------------------------------------- keys


@triton.jit
def _keys(values, offsets, valid, IS_F64: tl.constexpr):
    """Order-preserving int64 keys of ``values`` (float32, or float64 if ``IS_F64``); ``_EMPTY_KEY`` where not ``valid``.

    Without ``IS_F64`` the flat index is packed into the low half (ties to the lower index).
    """
    if IS_F64:
        bits = values.to(tl.int64, bitcast=True)
        bits = tl.where(values == 0, 0, bits)
        key = tl.where(bits < 0, bits ^ 0x7FFFFFFFFFFFFFFF, bits)
        key = tl.where(values != values, 0x7FFFFFFFFFFFFFFF, key)
    else:
        bits = values.to(tl.int32, bitcast=True)
        bits = tl.where(values == 0, 0, bits)
        key32 = tl.where(bits < 0, bits ^ 0x7FFFFFFF, bits)
        key32 = tl.where(values != values, 0x7FFFFFFF, key32)
        key = (key32.to(tl.int64) << 32) | (2147483647 - offsets).to(tl.int64)
    return tl.where(valid, key, -9223372036854775808)


@triton.jit
def _key_value(key, IS_F64: tl.constexpr):
    """The value (float32, or float64) a key was made from; NaN keys give a NaN."""
    if IS_F64:
        bits = tl.where(key < 0, key ^ 0x7FFFFFFFFFFFFFFF, key)
        return bits.to(tl.float64, bitcast=True)
    key32 = (key >> 32).to(tl.int32)
    bits = tl.where(key32 < 0, key32 ^ 0x7FFFFFFF, key32)
    return bits.to(tl.float32, bitcast=True)


@triton.jit
def _best(keys, indices, IS_F64: tl.constexpr):
    """The largest key and its flat index (the lowest index among equal keys)."""
    best = tl.max(keys, axis=0)
    if IS_F64:
        index = tl.min(tl.where(keys == best, indices, 2147483647), axis=0)
    else:
        index = 2147483647 - (best & 0x7FFFFFFF).to(tl.int32)
    return best, index


@triton.jit
def _load_keys(map_ptr, start, n_cells, BLOCK: tl.constexpr, IS_F64: tl.constexpr):
    offsets = start + tl.arange(0, BLOCK)
    inside = offsets < n_cells
    if IS_F64:
        values = tl.load(map_ptr + offsets, mask=inside, other=0.0).to(tl.float64)
    else:
        values = tl.load(map_ptr + offsets, mask=inside, other=0.0).to(tl.float32)
    return _keys(values, offsets, inside, IS_F64), offsets


# --------------------------------------------------------------------------- weights


@triton.jit
def _positive(values, valid):
    """``max(v, 0)`` on the valid slots (NaN stays NaN, as ``torch.clamp``), 0 elsewhere."""
    return tl.where(valid, tl.where(values < 0, 0.0, values), 0.0)


@triton.jit
def _weights(values, valid, slots, PEAK_SLOT: tl.constexpr, WEIGHTS: tl.constexpr):
    """Normalised weights of the slots.

    ``softmax`` (``WEIGHTS == 0``): ``exp(v - v_peak)`` normalised (the peak slot holds the
    maximum); ``linear``: ``max(v, 0) / sum``, or all weight on ``PEAK_SLOT`` when the sum is
    not > 0 (NaN included).
    """
    peak = slots == PEAK_SLOT
    if WEIGHTS == 0:
        shift = tl.sum(tl.where(peak, values, 0.0), axis=0)
        exps = tl.where(valid, tl.exp(values - shift), 0.0)
        weights = exps / tl.sum(exps, axis=0)
    else:
        positive = _positive(values, valid)
        total = tl.sum(positive, axis=0)
        weights = tl.where(total > 0, positive / tl.where(total > 0, total, 1.0), tl.where(peak, 1.0, 0.0))
    return weights


# --------------------------------------------------------------------------- forward


@triton.jit
def _decode_kernel(
    maps_ptr, coords_ptr, scores_ptr, indices_ptr,
    n_cells, width, height, n_slots,
    METHOD: tl.constexpr, WEIGHTS: tl.constexpr, K: tl.constexpr, WINDOW: tl.constexpr, PEAK_SLOT: tl.constexpr,
    SLOTS: tl.constexpr, BLOCK: tl.constexpr, CHUNKS: tl.constexpr, IS_F64: tl.constexpr,
):
    map_index = tl.program_id(0).to(tl.int64)
    map_ptr = maps_ptr + map_index * n_cells
    slots = tl.arange(0, SLOTS)

    if METHOD == 0:
        # topk: K rounds of "largest remaining key", over the chunk and the running top-k.
        top_keys = tl.full([SLOTS], -9223372036854775808, tl.int64)
        top_index = tl.full([SLOTS], -1, tl.int32)
        if CHUNKS == 1:
            keys, offsets = _load_keys(map_ptr, 0, n_cells, BLOCK, IS_F64)
            for i in tl.static_range(K):
                best, index = _best(keys, offsets, IS_F64)
                top_keys = tl.where(slots == i, best, top_keys)
                top_index = tl.where(slots == i, index, top_index)
                keys = tl.where(offsets == index, -9223372036854775808, keys)
        else:
            for chunk in range(CHUNKS):
                keys, offsets = _load_keys(map_ptr, chunk * BLOCK, n_cells, BLOCK, IS_F64)
                old_keys = top_keys
                old_index = top_index
                for i in tl.static_range(K):
                    chunk_best, chunk_index = _best(keys, offsets, IS_F64)
                    old_best, old_at = _best(old_keys, old_index, IS_F64)
                    # Equal keys: the running top-k holds the lower (earlier) indices.
                    from_chunk = chunk_best > old_best
                    top_keys = tl.where(slots == i, tl.where(from_chunk, chunk_best, old_best), top_keys)
                    top_index = tl.where(slots == i, tl.where(from_chunk, chunk_index, old_at), top_index)
                    keys = tl.where(from_chunk & (offsets == chunk_index), -9223372036854775808, keys)
                    taken = (old_index == old_at) & (chunk_best <= old_best)
                    old_keys = tl.where(taken, -9223372036854775808, old_keys)
        valid = slots < K
        selected = top_index
        values = _key_value(top_keys, IS_F64)
        score = _key_value(tl.max(top_keys, axis=0), IS_F64)
    else:
        # local / argmax: the running arg-max (ties to the lower index: earlier chunks win).
        best_key = tl.full([], -9223372036854775808, tl.int64)
        best_index = tl.full([], 0, tl.int32)
        for chunk in range(CHUNKS):
            keys, offsets = _load_keys(map_ptr, chunk * BLOCK, n_cells, BLOCK, IS_F64)
            chunk_best, chunk_index = _best(keys, offsets, IS_F64)
            from_chunk = chunk_best > best_key
            best_key = tl.where(from_chunk, chunk_best, best_key)
            best_index = tl.where(from_chunk, chunk_index, best_index)
        score = _key_value(best_key, IS_F64)
        if METHOD == 1:
            half: tl.constexpr = WINDOW // 2
            row = best_index // width + slots // WINDOW - half
            col = best_index % width + slots % WINDOW - half
            valid = (slots < WINDOW * WINDOW) & (row >= 0) & (row < height) & (col >= 0) & (col < width)
            selected = tl.where(valid, row * width + col, -1)
            raw = tl.load(map_ptr + tl.where(valid, selected, 0), mask=valid, other=0.0)
            values = raw.to(tl.float64) if IS_F64 else raw.to(tl.float32)
        else:
            valid = slots < 1
            selected = tl.where(valid, best_index, -1)
            values = tl.where(valid, score, 0.0)

    weights = _weights(values, valid, slots, PEAK_SLOT, WEIGHTS)
    safe = tl.where(valid, selected, 0)
    x = (safe % width).to(values.dtype)
    y = (safe // width).to(values.dtype)
    tl.store(coords_ptr + map_index * 2, tl.sum(tl.where(valid, weights * x, 0.0), axis=0))
    tl.store(coords_ptr + map_index * 2 + 1, tl.sum(tl.where(valid, weights * y, 0.0), axis=0))
    tl.store(scores_ptr + map_index, score)
    tl.store(indices_ptr + map_index * n_slots + slots, selected.to(tl.int64), mask=slots < n_slots)


def decode(heatmaps: torch.Tensor, method: str, k: int, weights: str, window: int):
    """``(coords (B,K,2), scores (B,K), indices (B,K,S) int64)``; see :func:`h3r_kernels.reference.decode`."""
    batch, num, height, width = heatmaps.shape
    acc = _accumulator_dtype(heatmaps.dtype)
    n_slots = _slots(method, k, window)
    coords = heatmaps.new_empty((batch, num, 2), dtype=acc)
    scores = heatmaps.new_empty((batch, num), dtype=acc)
    indices = heatmaps.new_empty((batch, num, n_slots), dtype=torch.int64)
    if batch * num == 0:
        return coords, scores, indices
    n_cells = height * width
    if n_cells > _INT32_MAX:
        raise ValueError(f"heatmaps: expected H*W < 2**31 cells per map, got {height}x{width}")
    block = min(triton.next_power_of_2(n_cells), MAX_BLOCK)
    with _device_guard(heatmaps.device):
        _decode_kernel[(batch * num,)](
            heatmaps, coords, scores, indices,
            n_cells, width, height, n_slots,
            METHOD=_METHODS[method], WEIGHTS=_WEIGHTINGS[weights], K=k, WINDOW=window,
            PEAK_SLOT=_peak_slot(method, n_slots),
            SLOTS=triton.next_power_of_2(n_slots), BLOCK=block, CHUNKS=triton.cdiv(n_cells, block),
            IS_F64=acc == torch.float64, num_warps=_num_warps(block),
        )
    return coords, scores, indices


# --------------------------------------------------------------------------- backward


@triton.jit
def _decode_backward_kernel(
    maps_ptr, indices_ptr, grad_coords_ptr, grad_scores_ptr, grad_ptr,
    n_cells, width, n_slots,
    METHOD: tl.constexpr, WEIGHTS: tl.constexpr, PEAK_SLOT: tl.constexpr,
    SLOTS: tl.constexpr, BLOCK: tl.constexpr, CHUNKS: tl.constexpr, IS_F64: tl.constexpr,
):
    map_index = tl.program_id(0).to(tl.int64)
    map_ptr = maps_ptr + map_index * n_cells
    grad_map_ptr = grad_ptr + map_index * n_cells

    for chunk in range(CHUNKS):
        offsets = chunk * BLOCK + tl.arange(0, BLOCK)
        tl.store(grad_map_ptr + offsets, tl.zeros([BLOCK], grad_ptr.dtype.element_ty), mask=offsets < n_cells)
    # The selected cells below overwrite some of these zeros: all zeros must have landed first.
    tl.debug_barrier()

    slots = tl.arange(0, SLOTS)
    selected = tl.load(indices_ptr + map_index * n_slots + slots, mask=slots < n_slots, other=-1)
    valid = selected >= 0
    safe = tl.where(valid, selected, 0)
    raw = tl.load(map_ptr + safe, mask=valid, other=0.0)
    values = raw.to(tl.float64) if IS_F64 else raw.to(tl.float32)
    grad_x = tl.load(grad_coords_ptr + map_index * 2).to(values.dtype)
    grad_y = tl.load(grad_coords_ptr + map_index * 2 + 1).to(values.dtype)
    grad_score = tl.load(grad_scores_ptr + map_index).to(values.dtype)

    weights = _weights(values, valid, slots, PEAK_SLOT, WEIGHTS)
    x = (safe % width).to(values.dtype)
    y = (safe // width).to(values.dtype)
    centre_x = tl.sum(tl.where(valid, weights * x, 0.0), axis=0)
    centre_y = tl.sum(tl.where(valid, weights * y, 0.0), axis=0)
    direction = (x - centre_x) * grad_x + (y - centre_y) * grad_y
    if METHOD == 2:
        slot_grad = tl.zeros([SLOTS], values.dtype)
    elif WEIGHTS == 0:
        slot_grad = weights * direction
    else:
        total = tl.sum(_positive(values, valid), axis=0)
        slot_grad = tl.where(values > 0, direction / tl.where(total > 0, total, 1.0), 0.0)
        slot_grad = tl.where(total > 0, slot_grad, 0.0)  # the peak fallback is piecewise constant
    slot_grad = tl.where(valid, slot_grad, 0.0) + tl.where(slots == PEAK_SLOT, grad_score, 0.0)
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
    with _device_guard(heatmaps.device):
        _decode_backward_kernel[(batch * num,)](
            heatmaps, indices, grad_coords, grad_scores, grad,
            n_cells, width, n_slots,
            METHOD=_METHODS[method], WEIGHTS=_WEIGHTINGS[weights],
            PEAK_SLOT=_peak_slot(method, n_slots),
            SLOTS=triton.next_power_of_2(n_slots), BLOCK=block, CHUNKS=triton.cdiv(n_cells, block),
            IS_F64=heatmaps.dtype == torch.float64, num_warps=_num_warps(block),
        )
    return grad
