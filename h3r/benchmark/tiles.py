"""Candidate GPU tiles of the map-tiled Triton kernels (encode, heatmap_loss), for measuring them
beside the tile in use: ``--triton-tiles`` of the report, ``--tiles`` of the static profile.

A tile is ``(elements per program, elements per thread)``, an op's entry of ``GPU_TILES`` in
``h3r_kernels/triton/_common.py`` that :func:`~h3r_kernels.triton._common.map_tiling` reads;
the results do not depend on it (tests/test_triton_internals.py), only the speed does.
"""
from __future__ import annotations

import contextlib
from typing import Iterator

Tile = tuple[int, int]


def tile_in_use(op: str) -> Tile:
    """The tile ``op`` ("encode" or "heatmap_loss") is launched with."""
    from h3r_kernels.triton import _common

    return _common.GPU_TILES[op]


def parse_tiles(text: str) -> list[Tile]:
    """``"4096:16,2048:8"`` -> ``[(4096, 16), (2048, 8)]``; powers of two, at least 32 elements per program."""
    tiles = []
    for part in text.split(","):
        try:
            elements, per_thread = (int(value) for value in part.strip().split(":"))
        except ValueError:
            elements = per_thread = 0
        if elements < 32 or elements & (elements - 1) or per_thread < 1 or per_thread & (per_thread - 1):
            raise ValueError(f"expected ELEMENTS:PER_THREAD,... (powers of two, ELEMENTS >= 32), got {part.strip()!r}")
        tiles.append((elements, per_thread))
    return tiles


def tile_name(tile: Tile) -> str:
    return f"{tile[0]}/{tile[1]}"


@contextlib.contextmanager
def triton_tile(tile: Tile) -> Iterator[None]:
    """Within the block, every map-tiled Triton kernel is launched (and compiled) with ``tile``."""
    from h3r_kernels.triton import _common

    previous = dict(_common.GPU_TILES)
    _common.GPU_TILES.update((op, tile) for op in previous)
    try:
        yield
    finally:
        _common.GPU_TILES.update(previous)
