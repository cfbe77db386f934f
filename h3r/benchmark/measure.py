"""Measuring the rows of the report: every op x implementation x shape x dtype, CPU encoding in
DataLoader workers, and the columns derived from the times (bytes, GB/s, speed-ups)."""
from __future__ import annotations

import argparse
import contextlib
import math
from typing import Optional, Sequence

import torch

from .cases import CPU_WORKERS, DTYPES, GAUSSIAN_SIGMA, NAIVE, OPS, make_call, shape_text
from .cpu_encoding import time_cpu_encoding
from .markdown import fmt
from .tiles import tile_in_use, tile_name, triton_tile
from .timing import Timer

# The benchmarked ops whose Triton kernels cut the maps into tiles, and the op whose tile they use
# (h3r_kernels/triton/_common.py: GPU_TILES, map_tiling).
MAP_TILED_OPS = {"encode": "encode", "encode_expected": "encode", "encode_gaussian": "encode",
                 "heatmap_loss": "heatmap_loss"}


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0] if text else ''}"[:200]


def _row(op: str, impl: str, shape: Sequence[int], dtype: str) -> dict:
    return {"op": op, "impl": impl, "shape": list(shape), "dtype": dtype, "median_ms": None, "host_ms": None,
            "host_sync": None, "note": ""}


def measure_ops(settings: argparse.Namespace, timer: Timer, log) -> list[dict]:
    """Time every op x implementation (kernel backends and ``naive``) x shape x dtype.

    A call that raises (a backend still being written, out of memory) gives a row whose
    ``note`` holds the error; the report goes on.
    """
    rows = []
    impls = [(impl, None) for impl in settings.backends if impl != CPU_WORKERS]
    if "triton" in settings.backends:  # candidate tiles, measured beside the tile in use
        impls += [("triton", tile) for tile in getattr(settings, "triton_tiles", None) or []]
    for shape in settings.shapes:
        for dtype_name in settings.dtypes:
            for op in settings.ops:
                for backend, tile in impls:
                    if tile is not None and (op not in MAP_TILED_OPS or tile == tile_in_use(MAP_TILED_OPS[op])):
                        continue
                    impl = backend if tile is None else f"triton tile {tile_name(tile)}"
                    row = _row(op, impl, shape, dtype_name)
                    try:
                        with triton_tile(tile) if tile is not None else contextlib.nullcontext():
                            timing = timer(make_call(op, backend, shape, DTYPES[dtype_name], settings.device))
                        row["median_ms"], row["host_ms"] = timing.median_ms, timing.host_ms
                        row["host_sync"] = timing.host_sync
                        if timing.host_sync:
                            row["note"] = "synchronises with the host: times include the host's gaps"
                        elif timing.queued_ahead is False:
                            row["note"] = "the GPU caught up with the host: times include launch gaps"
                    except Exception as error:  # noqa: BLE001 - recorded in the report, which goes on
                        row["note"] = _first_line(error)
                        if settings.device.type == "cuda":
                            torch.cuda.empty_cache()
                    if backend == "triton" and settings.device.type != "cuda":
                        row["note"] = row["note"] or "Triton interpreter: not a performance claim"
                    rows.append(row)
                    log(f"{op:16s} {impl:10s} {shape_text(shape):16s} {dtype_name:9s} "
                        f"{fmt(row['median_ms'], '.4g')} ms {row['note']}")
    return rows


def measure_cpu_encoding(settings: argparse.Namespace, log) -> list[dict]:
    """Time CPU encoding in DataLoader workers for each shape and each encode op that has a CPU target."""
    rows = []
    for shape in settings.shapes:
        for op in settings.ops:
            target = OPS[op].cpu_target
            if target is None:
                continue
            row = _row(op, CPU_WORKERS, shape, "float32")
            try:
                timing = time_cpu_encoding(tuple(shape), target, settings.device, settings.cpu_workers,
                                           settings.cpu_rounds, GAUSSIAN_SIGMA)
                row["median_ms"] = timing.batch_ms
                row["note"] = (f"{timing.workers} workers, {timing.timed_batches} of {timing.batches} batches timed"
                               + (", incl. host-to-device copy" if timing.includes_copy_to_device else ""))
            except Exception as error:  # noqa: BLE001 - recorded in the report, which goes on
                row["note"] = _first_line(error)
            rows.append(row)
            log(f"{op:16s} {CPU_WORKERS:10s} {shape_text(shape):16s} float32   "
                f"{fmt(row['median_ms'], '.4g')} ms {row['note']}")
    return rows


def _ratio(baseline_ms: Optional[float], ms: Optional[float]) -> Optional[float]:
    return baseline_ms / ms if baseline_ms and ms else None


def add_derived_columns(rows: list[dict], copy_gbps: float) -> None:
    """Bytes, GB/s, % of the copy bandwidth, samples/s and the speed-ups, in place.

    ``x_vs_<impl>`` = time of ``<impl>`` / time of this row, same op, shape and dtype (the
    CPU-encoding rows are float32 and every dtype compares with them).
    """
    times = {(r["op"], r["impl"], tuple(r["shape"]), r["dtype"]): r["median_ms"] for r in rows}
    for row in rows:
        spec, shape, ms = OPS[row["op"]], tuple(row["shape"]), row["median_ms"]
        map_bytes = math.prod(shape) * DTYPES[row["dtype"]].itemsize
        row["bytes"] = spec.counted_passes * map_bytes
        row["op_bytes"] = spec.op_passes * map_bytes
        row["gbps"] = row["bytes"] / (ms * 1e6) if ms else None
        row["pct_copy_bandwidth"] = 100 * row["gbps"] / copy_gbps if ms else None
        row["samples_per_s"] = shape[0] * 1e3 / ms if ms else None
        for impl in ("reference", NAIVE):
            baseline = times.get((row["op"], impl, shape, row["dtype"])) if row["impl"] != impl else None
            row[f"x_vs_{impl}"] = _ratio(baseline, ms)
        cpu = times.get((row["op"], CPU_WORKERS, shape, "float32")) if row["impl"] != CPU_WORKERS else None
        row["x_vs_cpu_encoding"] = _ratio(cpu, ms)
