"""Triton kernels for ``decode`` and its backward; same functions and results as :mod:`h3r_kernels.reference`.

One compiled kernel serves every map size: the map count, ``H``, ``W``, ``H*W`` and the chunk
count are runtime arguments (not specialised: ``RUNTIME_SIZES``); the constexprs are the
options (method, weighting, k, window, dtype) and the tile (:func:`decode_tile`): every map
of up to :data:`SMALL_CELLS` cells (32x32, any shape) runs :data:`SMALL_MAPS` maps per
program in :data:`SMALL_GROUPS` groups each, larger maps :data:`LARGE_MAPS` per program in
:data:`LARGE_GROUPS` groups (a second kernel, the only size bucket). A program holds its maps
as the rows of ``[MAPS, GROUPS]`` blocks (reductions along the rows), and selects in three
phases:

1. *group maxima*: the map is streamed in ``chunks`` contiguous chunks of ``GROUPS`` cells
   (:data:`UNROLL` chunks per loop iteration, unmasked while whole); lane ``g`` keeps the
   maximum of the strided group ``{g, g + GROUPS, g + 2 GROUPS, ...}`` and its first cell,
   with two float compares per cell;
2. *best group*: the largest (key, lowest cell) over the groups (``T`` rounds: ``T = k`` for
   ``topk``, 1 for ``local``/``argmax``). A group's (key, cell) is that of its best remaining
   cell, so the best group's cell is the best remaining cell of the map (for ``argmax`` and
   ``local`` the arg-max);
3. *rescan* (``topk``, before each round but the last): the cells of the group just taken
   are read again (cache hits) and the best of those ranked below the one taken becomes the
   group's (key, cell) (cells leave a group in rank order; an emptied group ranks below all).

``local`` then loads the ``window x window`` cells around the arg-max (cache hits; off-map
slots ``-1``). Last come the weights (softmax of the raw values, or ``max(v, 0) / sum``
with all weight on the peak when that sum is not > 0), the weighted mean of the cell
centres ``(x=c, y=r)``, the score (the map's maximum) and the selected flat indices. The
spare rows of a partial last program re-read the last map and store nothing.

Order: a value's order-preserving integer key (sign-magnitude bits turned into two's
complement, so ``-0.0 == +0.0``; int32 for float32 maps, int64 for float64 maps) and its flat
cell index travel as two arrays; a selection is two reductions of the key's width, the
``max`` key, then the ``min`` cell among the slots holding it: the largest value and, among
equal values, the lowest flat index (``torch.sort(stable=True)``'s and ``torch.argmax``'s
tie-break). bfloat16 maps of up to 65536 cells carry both in one int32 (``PACKED``: the key,
whose low 16 bits are 0 for a bfloat16 value, plus ``0xFFFF - cell``), one reduction per
selection. float64 maps are accumulated in float64, float16/bfloat16 maps upcast to float32.

Non-finite maps (the reference's rule, for every method and weighting): every NaN ranks
above ``+inf`` and NaNs tie with each other, as in ``torch.sort``, ``torch.argmax`` and
``torch.amax``. A map holding a NaN therefore gets score NaN, its first NaN cell as the
peak, and NaN coordinates (stored as such whatever the weights gave). ``+-inf`` are extreme
values weighed as limits: a ``+inf`` peak shares the weight among the selected ``+inf``
cells (softmax and linear alike), a ``-inf`` peak (all selected cells ``-inf``) among all
selected cells for softmax, and falls back to the peak for linear. The backward gives no
coordinate gradient to a map whose maximum is not finite.

Backward: one program per map writes zeros over the whole map (blocks of
:data:`BACKWARD_BLOCK` cells, a runtime count: one compiled kernel for every size), waits at a
block barrier, then writes the gradient of the (at most ``window**2``) selected cells, so
every output cell is written by this one program (no atomics, deterministic).

Runtime loops are written as ``while`` loops: Triton's interpreter (under numpy 2) cannot
``range()`` over a kernel argument.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
import triton
import triton.language as tl

from .. import spec
from ._common import (
    METHOD_ARGMAX, METHOD_LOCAL, METHOD_TOPK, WEIGHTING_LINEAR, WEIGHTING_SOFTMAX, accumulates_in_fp64, as_mask,
    device_guard,
)

# Forward tiles (decode_tile): maps of up to SMALL_CELLS cells (32x32), whatever their shape,
# run SMALL_MAPS maps per program in SMALL_GROUPS groups each; larger maps LARGE_MAPS per
# program in LARGE_GROUPS groups. Both tiles are one warp (4 group slots per thread). Each
# top-k rescan reads one group's cells, n_cells / GROUPS of them at a stride of GROUPS cells
# (a 32-byte sector each): k - 1 rescans re-read (k - 1) * 8 / GROUPS times the map's bytes
# from L1/L2. 16 groups keep small maps' rescans in L1 and the per-map work low (sm_90 static
# profile at 16x16: 42 instructions per element, from 122); 64 groups keep larger maps' rescans
# to one map's bytes for top-9 (64x64: 15.3 per element, from 18.4; with 16 groups 18.1 but four
# times the bytes from L2). Those figures are from int64 ranks; int32 keys and cells: 34.5 at 16x16,
# 13.2 at 64x64.
SMALL_CELLS = 1024
SMALL_MAPS = 8
SMALL_GROUPS = 16
LARGE_MAPS = 2
LARGE_GROUPS = 64
CELLS_PER_THREAD = 4
# Chunks read per iteration of the first phase's loop.
UNROLL = 4
# The forward's runtime size arguments: not specialised (Triton would compile apart sizes equal
# to 1 or divisible by 16), so one compiled kernel serves them all.
RUNTIME_SIZES = ["n_maps", "n_cells", "width", "height", "chunks"]
# bfloat16 maps of up to PACKED_CELLS cells select on packed int32 ranks (the order key, whose low 16
# bits are 0 for a bfloat16 value, plus 0xFFFF - cell: one reduction per selection instead of two).
PACKED_CELLS = 1 << 16
# Backward: cells cleared per step of the zero fill (8 per thread), for every map size.
BACKWARD_BLOCK = 512
BACKWARD_WARPS = 2

# Below the key of every value (-inf included): empty groups and slots (int64 keys; int32: _INT32_MIN).
_EMPTY_RANK = tl.constexpr(-(2**63))
_INT32_MIN = tl.constexpr(-(2**31))
_INT32_MAX = tl.constexpr(2**31 - 1)

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
        sign = bits >> 31  # 0, or -1 (all ones) for a set sign bit
        key = ((bits & 0x7FFFFFFF) ^ sign) - sign  # the magnitude, negated for a set sign bit
        key = tl.where(values != values, 0x7FFFFFFF, key)
    return key


@triton.jit
def _key_value(key, IS_F64: tl.constexpr):
    """The value (float32, or float64) of an order key (:func:`_ordered`); NaN keys give a NaN."""
    if IS_F64:
        bits = tl.where(key < 0, (-key) | _EMPTY_RANK, key)
        value = bits.to(tl.float64, bitcast=True)
    else:
        bits32 = tl.where(key < 0, (-key) | _INT32_MIN, key)
        value = bits32.to(tl.float32, bitcast=True)
    return value


@triton.jit
def _best(keys, cells):
    """The largest key of each row and its cell (among equal keys, the lowest cell), as ``[rows, 1]`` columns.

    Two reductions of the key's width (int32 for float32 maps): the maximum key, then the
    minimum cell among the slots holding it.
    """
    best = tl.max(keys, axis=1, keep_dims=True)
    cell = tl.min(tl.where(keys == best, cells, _INT32_MAX), axis=1, keep_dims=True)
    return best, cell


@triton.jit
def _packed_rank(values, cells):
    """Packed order ranks of bfloat16 ``values`` (as float32) at ``cells`` (< 65536): the order key
    of :func:`_ordered` (``-0.0 == +0.0``; every NaN ``0x7FFF0000``, above ``+inf``), whose low 16
    bits are 0 for a bfloat16 value, plus ``0xFFFF - cell``: one int32 ``max`` selects the largest
    value and, among equal values, the lowest cell."""
    bits = values.to(tl.int32, bitcast=True)
    sign = bits >> 31
    key = ((bits & 0x7FFFFFFF) ^ sign) - sign
    key = tl.where(values != values, 0x7FFF0000, key)
    return key + (0xFFFF - cells)


@triton.jit
def _packed_cell(rank):
    """The cell of a packed rank (:func:`_packed_rank`)."""
    return 0xFFFF - (rank & 0xFFFF)


@triton.jit
def _rank_value(key, IS_F64: tl.constexpr, PACKED: tl.constexpr):
    """The value of an order key (:func:`_ordered`) or, with ``PACKED``, of a packed rank (:func:`_packed_rank`)."""
    if PACKED:
        value = _key_value(key & -65536, False)
    else:
        value = _key_value(key, IS_F64)
    return value


# --------------------------------------------------------------------------- weights


@triton.jit
def _positive(values, valid):
    """``max(v, 0)`` on the valid slots (NaN stays NaN, as ``torch.clamp``), 0 elsewhere."""
    return tl.where(valid, tl.where(values < 0, 0.0, values), 0.0)


@triton.jit
def _peak_value(values, slots, PEAK_SLOT: tl.constexpr):
    """The value in slot ``PEAK_SLOT`` (the map's maximum) of each row, as a ``[rows, 1]`` column."""
    return tl.sum(tl.where(slots == PEAK_SLOT, values, 0.0), axis=1, keep_dims=True)


@triton.jit
def _is_finite(value):
    """Whether ``value`` is a finite number (False for NaN and +-inf), as a plain boolean."""
    return as_mask(tl.abs(value) < float("inf"))


@triton.jit
def _linear_scale(peak):
    """What ``linear`` weighting divides the values by (:func:`h3r_kernels.reference.linear_scale`): the
    peak where it is finite and > 0, else 1; the numerators then lie in [0, 1] and their sum cannot overflow."""
    return tl.where(as_mask((peak > 0) & (peak < float("inf"))), peak, 1.0)


@triton.jit
def _weights(values, valid, slots, PEAK_SLOT: tl.constexpr, WEIGHTS: tl.constexpr):
    """Normalised weights of the slots (one map per row), as :func:`h3r_kernels.reference._weights`.

    ``softmax`` (``WEIGHTS == WEIGHTING_SOFTMAX``): ``exp(v - m)`` normalised, ``m`` the peak slot's value (the
    maximum), with ``exp(v - m) = 1`` for ``v == m`` (infinite peaks are limits: the weight is
    shared by the cells equal to the peak); ``linear``: ``max(v, 0) / sum``, each divided by
    :func:`_linear_scale` first (for ``m = +inf``
    the ``+inf`` cells count 1, the others 0), or all weight on ``PEAK_SLOT`` when the sum is
    not > 0 (NaN included).
    """
    peak = slots == PEAK_SLOT
    shift = _peak_value(values, slots, PEAK_SLOT)
    if WEIGHTS == WEIGHTING_SOFTMAX:
        exps = tl.where(valid, tl.where(values == shift, 1.0, tl.exp(values - shift)), 0.0)
        weights = exps / tl.sum(exps, axis=1, keep_dims=True)
    else:
        tl.static_assert(WEIGHTS == WEIGHTING_LINEAR)
        positive = _positive(values, valid) / _linear_scale(shift)
        positive = tl.where(as_mask(shift == float("inf")), tl.where(valid & as_mask(values == shift), 1.0, 0.0),
                            positive)
        total = tl.sum(positive, axis=1, keep_dims=True)
        weights = tl.where(total > 0, positive / tl.where(total > 0, total, 1.0), tl.where(peak, 1.0, 0.0))
    return weights


# --------------------------------------------------------------------------- forward


@triton.jit(do_not_specialize=RUNTIME_SIZES)
def _decode_kernel(
    maps_ptr, coords_ptr, scores_ptr, indices_ptr,
    n_maps, n_cells, width, height, chunks,
    N_SLOTS: tl.constexpr, METHOD: tl.constexpr, WEIGHTS: tl.constexpr, K: tl.constexpr, WINDOW: tl.constexpr,
    PEAK_SLOT: tl.constexpr, SLOTS: tl.constexpr, TOP: tl.constexpr, TOP_SLOTS: tl.constexpr,
    MAPS: tl.constexpr, GROUPS: tl.constexpr, UNROLL: tl.constexpr, IS_F64: tl.constexpr, PACKED: tl.constexpr,
):
    """``MAPS`` maps per program, one per row of every block; see the module docstring for the phases."""
    maps = tl.program_id(0).to(tl.int64) * MAPS + tl.arange(0, MAPS).to(tl.int64)
    # The spare rows of the last program re-read the last map (valid memory, never stored).
    map_ptr = maps_ptr + (tl.minimum(maps, n_maps - 1) * n_cells)[:, None]
    lanes = tl.arange(0, GROUPS)[None, :]

    # Phase 1: the maximum of each strided group {g, g + GROUPS, g + 2 GROUPS, ...} and the
    # chunk of its first maximal cell, streaming the map in `chunks` chunks of GROUPS cells,
    # UNROLL chunks (loads in flight) per iteration, in order: the first maximum stays.
    # Values are compared as floats: "not (v <= max)" also lets a NaN in (NaN ranks first),
    # and nothing replaces a NaN maximum; cells past the map read -inf, which never replaces.
    # Runtime loops are `while` loops: the interpreter cannot range() over an argument.
    group_max = tl.full([MAPS, GROUPS], float("-inf"), tl.float64 if IS_F64 else tl.float32)
    group_chunk = tl.zeros([MAPS, GROUPS], tl.int32)
    pointers = map_ptr + lanes
    whole = n_cells // (GROUPS * UNROLL)
    start = 0
    while start < whole:  # whole chunks: no masks
        for step in tl.static_range(UNROLL):
            raw = tl.load(pointers + step * GROUPS)
            value = raw.to(tl.float64) if IS_F64 else raw.to(tl.float32)
            better = (~(value <= group_max)) & (group_max == group_max)
            group_max = tl.where(better, value, group_max)
            group_chunk = tl.where(better, start * UNROLL + step, group_chunk)
        pointers += GROUPS * UNROLL
        start += 1
    for step in tl.static_range(UNROLL):  # the rest: at most UNROLL chunks, the last one partial
        rest = (whole * UNROLL + step) * GROUPS + lanes
        raw = tl.load(map_ptr + rest, mask=rest < n_cells, other=float("-inf"))
        value = raw.to(tl.float64) if IS_F64 else raw.to(tl.float32)
        better = (~(value <= group_max)) & (group_max == group_max)
        group_max = tl.where(better, value, group_max)
        group_chunk = tl.where(better, whole * UNROLL + step, group_chunk)
    first = lanes < n_cells
    lowest = _EMPTY_RANK if IS_F64 else _INT32_MIN
    group_cell = tl.where(first, group_chunk * GROUPS + lanes, -1)
    if PACKED:  # bfloat16: a group's (key, cell) as one packed rank; group_cell is not read again
        group_key = tl.where(first, _packed_rank(group_max, group_cell), _INT32_MIN)
    else:
        group_key = tl.where(first, _ordered(group_max, IS_F64), lowest)

    # Phases 2 and 3: TOP rounds (TOP = K for topk, else 1: the peak) of "take the best group's
    # cell, then give that group its next best cell" (the best of its cells ranked below the
    # one taken: its cells leave a group in rank order). A group's (key, cell) is always that
    # of its best remaining cell, so each round takes the best remaining cell of the map.
    top_slots = tl.arange(0, TOP_SLOTS)[None, :]
    top_keys = tl.full([MAPS, TOP_SLOTS], lowest, tl.int64 if IS_F64 else tl.int32)
    top_cells = tl.full([MAPS, TOP_SLOTS], -1, tl.int32)
    peak_key = tl.full([MAPS, 1], lowest, tl.int64 if IS_F64 else tl.int32)
    peak_cell = tl.full([MAPS, 1], -1, tl.int32)
    for i in tl.static_range(TOP):
        if PACKED:
            best_key = tl.max(group_key, axis=1, keep_dims=True)
            cell = _packed_cell(best_key)
        else:
            best_key, cell = _best(group_key, group_cell)
        if i == 0:
            peak_key = best_key
            peak_cell = cell
        top_keys = tl.where(top_slots == i, best_key, top_keys)
        if not PACKED:
            top_cells = tl.where(top_slots == i, cell, top_cells)
        if i + 1 < TOP:
            # The group's cells below (best_key, cell) in (key, then lower cell first) order;
            # each lane keeps the best of those it reads (reading them in increasing cell
            # order, an equal key keeps the earlier), one (key, cell) reduction at the end. An
            # emptied group gets (lowest, -1), below every cell.
            group = cell & (GROUPS - 1)  # cell >= 0: k <= the map's cells
            kept_key = tl.full([MAPS, GROUPS], lowest, tl.int64 if IS_F64 else tl.int32)
            kept_cell = tl.full([MAPS, GROUPS], -1, tl.int32)
            start = 0
            while start < chunks:
                scanned = (start + lanes) * GROUPS + group
                inside = scanned < n_cells
                raw = tl.load(map_ptr + scanned, mask=inside, other=0.0)
                if PACKED:
                    rank = _packed_rank(raw.to(tl.float32), scanned)
                    take = inside & (rank < best_key) & (rank > kept_key)
                    kept_key = tl.where(take, rank, kept_key)
                else:
                    key = _ordered(raw.to(tl.float64) if IS_F64 else raw.to(tl.float32), IS_F64)
                    below = (key < best_key) | ((key == best_key) & (scanned > cell))
                    take = inside & below & (key > kept_key)
                    kept_key = tl.where(take, key, kept_key)
                    kept_cell = tl.where(take, scanned, kept_cell)
                start += GROUPS
            if PACKED:
                group_key = tl.where(lanes == group, tl.max(kept_key, axis=1, keep_dims=True), group_key)
            else:
                next_key, next_cell = _best(kept_key, kept_cell)
                group_key = tl.where(lanes == group, next_key, group_key)
                group_cell = tl.where(lanes == group, next_cell, group_cell)

    score = _rank_value(peak_key, IS_F64, PACKED)
    slots = tl.arange(0, SLOTS)[None, :]
    if METHOD == METHOD_TOPK:
        valid = slots < K
        selected = tl.where(valid, _packed_cell(top_keys), -1) if PACKED else top_cells
        values = _rank_value(top_keys, IS_F64, PACKED)
    elif METHOD == METHOD_LOCAL:
        half: tl.constexpr = WINDOW // 2
        row = peak_cell // width + slots // WINDOW - half
        col = peak_cell % width + slots % WINDOW - half
        valid = (slots < WINDOW * WINDOW) & (row >= 0) & (row < height) & (col >= 0) & (col < width)
        selected = tl.where(valid, row * width + col, -1)
        raw = tl.load(map_ptr + tl.where(valid, selected, 0), mask=valid, other=0.0)
        values = raw.to(tl.float64) if IS_F64 else raw.to(tl.float32)
    else:
        tl.static_assert(METHOD == METHOD_ARGMAX)
        valid = slots < 1
        selected = tl.where(valid, peak_cell, -1)
        values = tl.where(valid, score, 0.0)

    weights = _weights(values, valid, slots, PEAK_SLOT, WEIGHTS)
    safe = tl.where(valid, selected, 0)
    x = (safe % width).to(values.dtype)
    y = (safe // width).to(values.dtype)
    centre_x = tl.sum(tl.where(valid, weights * x, 0.0), axis=1)
    centre_y = tl.sum(tl.where(valid, weights * y, 0.0), axis=1)
    # A map holding a NaN (its score is NaN): NaN coordinates, whatever the weights made of it.
    score = _rank_value(tl.max(peak_key, axis=1), IS_F64, PACKED)  # the same, as a [MAPS] vector
    stored = maps < n_maps
    tl.store(coords_ptr + maps * 2, tl.where(score != score, score, centre_x), mask=stored)
    tl.store(coords_ptr + maps * 2 + 1, tl.where(score != score, score, centre_y), mask=stored)
    tl.store(scores_ptr + maps, score, mask=stored)
    tl.store(indices_ptr + (maps * N_SLOTS)[:, None] + slots, selected.to(tl.int64),
             mask=(maps < n_maps)[:, None] & (slots < N_SLOTS))


@dataclass(frozen=True)
class DecodePlan:
    """How :func:`decode` launches ``_decode_kernel``: ``grid`` programs of ``num_warps`` warps,
    the runtime ``sizes`` (map count and size, chunks per map) and the ``constexprs`` (the
    options and the tile): one compiled kernel per distinct ``constexprs`` (and dtype)."""

    grid: tuple[int]
    sizes: dict
    constexprs: dict
    num_warps: int

    @property
    def loop_trips(self) -> tuple[int, ...]:
        return loop_trips({**self.sizes, **self.constexprs})


def loop_trips(arguments: dict) -> tuple[int, ...]:
    """Iterations of ``_decode_kernel``'s runtime loops, in program order, from its launch
    ``arguments`` (what the static profile multiplies each loop body by): phase 1's
    ``n_cells // (GROUPS * UNROLL)`` (whole chunks), then each of the ``TOP - 1`` rescans'
    ``cdiv(chunks, GROUPS)``."""
    chunks, groups = arguments["chunks"], arguments["GROUPS"]
    return (arguments["n_cells"] // (groups * arguments["UNROLL"]),) + (triton.cdiv(chunks, groups),) * (arguments["TOP"] - 1)


def decode_tile(n_cells: int) -> tuple[int, int]:
    """``(maps per program, groups per map)`` for maps of ``n_cells``: one tile for every map of
    up to :data:`SMALL_CELLS` cells, another beyond (see the module docstring)."""
    return (SMALL_MAPS, SMALL_GROUPS) if n_cells <= SMALL_CELLS else (LARGE_MAPS, LARGE_GROUPS)


def decode_plan(num_maps: int, height: int, width: int, method: str, k: int, weights: str, window: int,
                dtype: torch.dtype, maps_per_program: Optional[int] = None, groups: Optional[int] = None) -> DecodePlan:
    """The launch of ``_decode_kernel`` for ``num_maps`` (>= 1) maps of ``(height, width)``.

    ``maps_per_program`` and ``groups`` (powers of two) override :func:`decode_tile`; results do
    not depend on them (the tests check this).
    """
    tile_maps, tile_groups = decode_tile(height * width)
    tile_maps = tile_maps if maps_per_program is None else _power_of_two("maps_per_program", maps_per_program)
    tile_groups = tile_groups if groups is None else _power_of_two("groups", groups)
    n_slots = spec.slots(method, k, window)
    top = k if method == "topk" else 1
    constexprs = dict(
        N_SLOTS=n_slots, METHOD=spec.code(spec.Method, method), WEIGHTS=spec.code(spec.Weighting, weights), K=k,
        WINDOW=window, PEAK_SLOT=spec.peak_slot(method, n_slots), SLOTS=triton.next_power_of_2(n_slots), TOP=top,
        TOP_SLOTS=triton.next_power_of_2(top), MAPS=tile_maps, GROUPS=tile_groups, UNROLL=UNROLL, IS_F64=accumulates_in_fp64(dtype),
        PACKED=dtype == torch.bfloat16 and height * width <= PACKED_CELLS,
    )
    sizes = dict(n_maps=num_maps, n_cells=height * width, width=width, height=height,
                 chunks=triton.cdiv(height * width, tile_groups))
    num_warps = max(1, min(8, tile_maps * tile_groups // (32 * CELLS_PER_THREAD)))
    return DecodePlan((triton.cdiv(num_maps, tile_maps),), sizes, constexprs, num_warps)


def _power_of_two(name: str, value: int) -> int:
    if value < 1 or value & (value - 1):
        raise ValueError(f"{name}: expected a power of two >= 1, got {value}")
    return value


def decode(heatmaps: torch.Tensor, method: str, k: int, weights: str, window: int,
           maps_per_program: Optional[int] = None, groups: Optional[int] = None):
    """``(coords (B,K,2), scores (B,K), indices (B,K,S) int64)``; see :func:`h3r_kernels.reference.decode`.

    ``maps_per_program`` and ``groups`` override the tile (:func:`decode_plan`).
    """
    batch, num, height, width = heatmaps.shape
    in_fp64 = accumulates_in_fp64(heatmaps.dtype)
    acc = torch.float64 if in_fp64 else torch.float32
    n_slots = spec.slots(method, k, window)
    coords = heatmaps.new_empty((batch, num, 2), dtype=acc)
    scores = heatmaps.new_empty((batch, num), dtype=acc)
    indices = heatmaps.new_empty((batch, num, n_slots), dtype=torch.int64)
    if batch * num == 0:
        return coords, scores, indices
    if height * width >= 2**31:
        raise ValueError(f"heatmaps: expected H*W < 2**31 cells per map, got {height}x{width}")
    plan = decode_plan(batch * num, height, width, method, k, weights, window, heatmaps.dtype, maps_per_program, groups)
    with device_guard(heatmaps):
        _decode_kernel[plan.grid](heatmaps, coords, scores, indices, **plan.sizes, **plan.constexprs,
                                  num_warps=plan.num_warps)
    return coords, scores, indices


# --------------------------------------------------------------------------- backward


@triton.jit(do_not_specialize=["n_cells", "width", "chunks"])
def _decode_backward_kernel(
    maps_ptr, indices_ptr, grad_coords_ptr, grad_scores_ptr, grad_ptr,
    n_cells, width, chunks,
    N_SLOTS: tl.constexpr, METHOD: tl.constexpr, WEIGHTS: tl.constexpr, PEAK_SLOT: tl.constexpr,
    SLOTS: tl.constexpr, BLOCK: tl.constexpr, IS_F64: tl.constexpr,
):
    """One program per map: zeros over the map, then the gradients of the selected cells."""
    map_index = tl.program_id(0).to(tl.int64)
    map_ptr = maps_ptr + map_index * n_cells
    grad_map_ptr = grad_ptr + map_index * n_cells

    chunk = 0
    while chunk < chunks:
        offsets = chunk * BLOCK + tl.arange(0, BLOCK)
        tl.store(grad_map_ptr + offsets, tl.zeros([BLOCK], grad_ptr.dtype.element_ty), mask=offsets < n_cells)
        chunk += 1
    # The selected cells below overwrite some of these zeros: all zeros must have landed first.
    tl.debug_barrier()

    slots = tl.arange(0, SLOTS)[None, :]
    selected = tl.load(indices_ptr + map_index * N_SLOTS + slots, mask=slots < N_SLOTS, other=-1)
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
    centre_x = tl.sum(tl.where(valid, weights * x, 0.0), axis=1, keep_dims=True)
    centre_y = tl.sum(tl.where(valid, weights * y, 0.0), axis=1, keep_dims=True)
    direction = (x - centre_x) * grad_x + (y - centre_y) * grad_y
    peak = _peak_value(values, slots, PEAK_SLOT)
    if METHOD == METHOD_ARGMAX:
        slot_grad = tl.zeros([1, SLOTS], values.dtype)
    elif WEIGHTS == WEIGHTING_SOFTMAX:
        slot_grad = weights * direction
    else:
        scale = _linear_scale(peak)
        total = tl.sum(_positive(values, valid) / scale, axis=1, keep_dims=True)
        slot_grad = tl.where(values > 0, direction / scale / tl.where(total > 0, total, 1.0), 0.0)
        slot_grad = tl.where(total > 0, slot_grad, 0.0)  # the peak fallback is piecewise constant
    # A non-finite maximum (NaN, +-inf) makes the coordinates piecewise constant: no gradient.
    live = valid & _is_finite(peak)
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
    with device_guard(heatmaps):
        _decode_backward_kernel[(batch * num,)](
            heatmaps, indices, grad_coords, grad_scores, grad, n_cells, width, triton.cdiv(n_cells, BACKWARD_BLOCK),
            N_SLOTS=n_slots, METHOD=spec.code(spec.Method, method), WEIGHTS=spec.code(spec.Weighting, weights),
            PEAK_SLOT=spec.peak_slot(method, n_slots), SLOTS=triton.next_power_of_2(n_slots), BLOCK=BACKWARD_BLOCK,
            IS_F64=accumulates_in_fp64(heatmaps.dtype), num_warps=BACKWARD_WARPS,
        )
    return grad
