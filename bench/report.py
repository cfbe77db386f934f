"""The throughput report: ``python -m bench.report [--device cuda|cpu] [--shapes ...] [--dtypes ...]
[--ops ...] [--backends ...] [--out DIR] [--repeats N]``.

For every op x implementation x shape x dtype it measures the median time of one call and
derives the effective bandwidth (bytes the op must move / time), its share of the device's
copy bandwidth measured in the same run, and the speed-ups over the reference backend, the
naive PyTorch baselines (:mod:`bench.baselines`) and CPU encoding in DataLoader workers
(:mod:`bench.cpu_encoding`). It prints the table and writes it to ``DIR/report.json`` and
``DIR/report.md``.

Implementations (``--backends``): ``reference``, ``triton``, ``cuda`` (the h3r_kernels
backends), ``naive`` (eager PyTorch baselines) and ``cpu_workers`` (NumPy targets in
DataLoader workers, encode ops only). Shapes are ``(B, K, H, W)``; keypoints are uniform
on the map, in heatmap pixels.

Timing: on CUDA, CUDA events around each call, a 256 MiB L2 flush before it, every call
queued behind a GPU spin kernel so that launch gaps are excluded (the host's time to issue a
call is reported beside it), the median of ``--repeats`` calls after ``--warmup`` calls; on
the CPU, ``time.perf_counter``. CPU timings (and anything run by the Triton interpreter) are
not performance claims.
"""
from __future__ import annotations

import argparse
import datetime
import importlib.metadata
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np
import torch

import h3r_kernels
from h3r_kernels.backends import interpreting

from . import baselines
from .cpu_encoding import time_cpu_encoding

KERNEL_BACKENDS = ("reference", "triton", "cuda")
NAIVE = "naive"
CPU_WORKERS = "cpu_workers"
IMPLEMENTATIONS = KERNEL_BACKENDS + (NAIVE, CPU_WORKERS)

# (B, K, H, W): WFLW at 256 px, COCO at 256x192, low resolution, high resolution.
CUDA_SHAPES = ((256, 98, 64, 64), (256, 17, 64, 48), (1024, 98, 16, 16), (64, 98, 128, 128))
CPU_SHAPES = ((8, 17, 16, 16), (4, 98, 16, 16))
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
DEFAULT_DTYPES = ("float32", "bfloat16")
GAUSSIAN_SIGMA = 2.0  # cells, for encode_gaussian and the CPU Gaussian target
TOPK = 9  # the authors' decoder
SEED = 2021
L2_FLUSH_BYTES = 256 << 20
MAX_STALL_MS = 2000.0  # the longest the GPU is held while the host queues the timed calls
SYNC_PROBE_MS = 20.0  # the shortest GPU spin behind which a call is checked for a host synchronisation
DEFAULT_OUT = Path(__file__).resolve().parent / "out"


@dataclass(frozen=True)
class OpSpec:
    """One benchmarked call. Bytes are counted in passes over a ``(B, K, H, W)`` map of the row's dtype.

    ``counted_passes``: the bytes the problem must move (the basis of GB/s and % of copy
    bandwidth); ``op_passes``: the passes the op's structure makes (the fused backends);
    ``cpu_target``: the :mod:`bench.cpu_encoding` target it is compared with, if any.
    """

    name: str
    what: str
    counted_passes: int
    op_passes: int
    passes_note: str
    cpu_target: Optional[str] = None


OPS = {
    spec.name: spec
    for spec in (
        OpSpec("encode", "encode: H3R binary target (sigma 0, random rounding)", 1, 1,
               "write the maps", "random_rounding"),
        OpSpec("encode_expected", "encode: expected=True, the bilinear expectation of the rounding", 1, 1,
               "write the maps"),
        OpSpec("encode_gaussian", f"encode: Gaussian, sigma {GAUSSIAN_SIGMA:g} cells, at the nearest cell", 1, 1,
               "write the maps", "gaussian"),
        OpSpec("heatmap_loss", "heatmap_loss: BCE, sigma 0, random rounding, mean; forward + backward", 2, 4,
               "counted: read logits + write their gradient; the op makes 4: the forward reads logits and "
               "writes the saved per-pixel gradient, the backward reads it and writes grad_logits"),
        OpSpec("decode", f"decode: top-{TOPK}, softmax weights; forward", 1, 1, "read the maps once"),
        OpSpec("decode_fwd_bwd", f"decode: top-{TOPK}, softmax weights; forward + backward of coords", 2, 2,
               "counted: read the maps + write their gradient (plus a gather of the selected cells)"),
    )
}

IMPLEMENTATION_NOTES = {
    "reference": "h3r_kernels backend 'reference': plain vectorised PyTorch (the executable spec)",
    "triton": "h3r_kernels backend 'triton': fused Triton kernels",
    "cuda": "h3r_kernels backend 'cuda': fused CUDA C kernels through CuPy",
    NAIVE: "naive eager PyTorch (bench/baselines.py): encode = scatter_ of a randomized-rounding one-hot, "
    "encode_expected = dense bilinear triangle weights, encode_gaussian = separable full-grid Gaussian, "
    "heatmap_loss = one-hot target + F.binary_cross_entropy_with_logits + backward, decode = torch.topk "
    "k=9 -> softmax -> weighted index mean (the authors' released decoder), decode_fwd_bwd = its autograd",
    CPU_WORKERS: "per-sample NumPy targets in DataLoader workers (bench/cpu_encoding.py), float32 maps, "
    "randomized-rounding one-hot for encode and HRNet's 3-sigma patch paste for encode_gaussian; "
    "on CUDA the time includes the pinned, non_blocking host-to-device copy; bf16 rows compare with it too",
}


# --------------------------------------------------------------------------- the calls


ENCODE_OPTIONS = {
    "encode": dict(sigma=0.0, rounding="random"),
    "encode_expected": dict(sigma=0.0, rounding="random", expected=True),
    "encode_gaussian": dict(sigma=GAUSSIAN_SIGMA, rounding="nearest"),
}


def make_call(op: str, impl: str, shape: Sequence[int], dtype: torch.dtype, device: torch.device) -> Callable[[], object]:
    """A no-argument function running ``op`` once with ``impl`` (a kernel backend or ``naive``).

    Its inputs are made here, outside the timing: keypoints uniform on the map, logits and
    heatmaps standard normal in ``dtype``. The loss call clears ``logits.grad`` and runs the
    backward; ``decode_fwd_bwd`` returns the gradient of the coordinates (an all-ones seed).
    """
    if op not in OPS:
        raise ValueError(f"op: expected one of {', '.join(OPS)}, got {op!r}")
    if impl not in KERNEL_BACKENDS + (NAIVE,):
        raise ValueError(f"impl: expected one of {', '.join(KERNEL_BACKENDS + (NAIVE,))}, got {impl!r}")
    batch, num, height, width = shape
    generator = torch.Generator(device=device).manual_seed(0)
    limits = torch.tensor([width - 1, height - 1], dtype=torch.float32, device=device)
    keypoints = torch.rand(batch, num, 2, generator=generator, device=device) * limits

    if op in ENCODE_OPTIONS:
        if impl == NAIVE:
            naive = {
                "encode": lambda: baselines.random_rounding_one_hot(keypoints, height, width, dtype),
                "encode_expected": lambda: baselines.dense_bilinear_expected(keypoints, height, width, dtype),
                "encode_gaussian": lambda: baselines.dense_gaussian(keypoints, height, width, GAUSSIAN_SIGMA, dtype),
            }
            return naive[op]
        options = ENCODE_OPTIONS[op]
        return lambda: h3r_kernels.encode(keypoints, (height, width), seed=SEED, dtype=dtype, backend=impl, **options)

    maps = torch.randn(tuple(shape), generator=generator, device=device).to(dtype)
    if op == "heatmap_loss":
        logits = maps.requires_grad_()

        def loss_step():
            logits.grad = None
            if impl == NAIVE:
                value = baselines.one_hot_bce_loss(logits, keypoints)
            else:
                value = h3r_kernels.heatmap_loss(logits, keypoints, seed=SEED, backend=impl)
            value.backward()

        return loss_step

    def run_decode():
        if impl == NAIVE:
            return baselines.topk_decode(maps, TOPK)
        return h3r_kernels.decode(maps, method="topk", k=TOPK, weights="softmax", backend=impl)

    if op == "decode":
        return run_decode
    maps.requires_grad_()

    def decode_step():
        coords, _ = run_decode()
        return torch.autograd.grad(coords, maps, grad_outputs=torch.ones_like(coords))

    return decode_step


# --------------------------------------------------------------------------- timing


@dataclass
class Timing:
    """``median_ms``: time of one call on the device; CUDA only: ``host_ms``, the CPU time to issue it,
    ``host_sync``, whether the call blocks the host until the GPU is idle (a host synchronisation),
    and ``queued_ahead``, False when the GPU ran out of queued work before the host had issued
    every timed call (then some times include launch gaps).
    """

    median_ms: float
    host_ms: Optional[float] = None
    host_sync: Optional[bool] = None
    queued_ahead: Optional[bool] = None


class Timer:
    """Median times of ``fn()`` on ``device`` over ``repeats`` calls after ``warmup`` calls.

    CUDA: the GPU is first held by a spin kernel (``torch.cuda._sleep``) long enough for the
    host to queue every timed call behind it; each call is preceded by zeroing a 256 MiB
    buffer (flushes L2) and bracketed by a CUDA event pair. The event times are thus the
    device's time per call without launch gaps; ``host_ms`` is the median
    ``time.perf_counter`` span of issuing one call. One more call, issued while the GPU spins,
    tells whether the call synchronises with the host. CPU: ``time.perf_counter``.
    """

    def __init__(self, device: torch.device, repeats: int, warmup: int):
        self.device, self.repeats, self.warmup = device, repeats, warmup
        self.cuda = device.type == "cuda"
        self.flush = torch.empty(L2_FLUSH_BYTES, dtype=torch.int8, device=device) if self.cuda else None
        self.cycles_per_ms = self._spin_cycles_per_ms() if self.cuda else None

    def _spin_cycles_per_ms(self) -> float:
        cycles = 10_000_000
        torch.cuda._sleep(cycles)  # clocks up
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        torch.cuda._sleep(cycles)
        end.record()
        end.synchronize()
        return cycles / start.elapsed_time(end)

    def _spin(self, ms: float) -> None:
        """Keep the GPU busy for about ``ms`` milliseconds (queued on the current stream)."""
        torch.cuda._sleep(int(min(ms, MAX_STALL_MS) * self.cycles_per_ms))

    def __call__(self, fn: Callable[[], object]) -> Timing:
        for _ in range(self.warmup):
            fn()
        if not self.cuda:
            return Timing(statistics.median(_host_ms(fn) for _ in range(self.repeats)))
        torch.cuda.synchronize(self.device)
        issue_ms = _host_ms(fn)  # with the GPU idle: what the host needs to issue one call
        torch.cuda.synchronize(self.device)
        spin_ms = max(SYNC_PROBE_MS, 4 * issue_ms)
        self._spin(spin_ms)
        host_sync = _host_ms(fn) > spin_ms / 2  # a call that waits for the GPU outlasts the spin
        torch.cuda.synchronize(self.device)

        events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(self.repeats)]
        self._spin(0.0 if host_sync else 3 * issue_ms * self.repeats + 5.0)
        spin_end = torch.cuda.Event()
        spin_end.record()
        host = []
        for start, end in events:
            self.flush.zero_()
            start.record()
            host.append(_host_ms(fn))
            end.record()
        queued_ahead = not spin_end.query()
        torch.cuda.synchronize(self.device)
        median = statistics.median([start.elapsed_time(end) for start, end in events])
        return Timing(median, statistics.median(host), host_sync, queued_ahead)


def _host_ms(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return (time.perf_counter() - start) * 1e3


def copy_bandwidth(timer: Timer, device: torch.device, nbytes: int) -> dict:
    """The device's copy bandwidth: ``dst.copy_(src)`` of ``nbytes`` float32, read + write bytes counted."""
    src = torch.ones(nbytes // 4, dtype=torch.float32, device=device)
    dst = torch.empty_like(src)
    ms = timer(lambda: dst.copy_(src)).median_ms
    moved = 2 * src.numel() * 4
    return {"bytes": moved, "source_bytes": src.numel() * 4, "ms": ms, "gbps": moved / (ms * 1e6)}


# --------------------------------------------------------------------------- measuring


def shape_text(shape: Sequence[int]) -> str:
    return "x".join(str(v) for v in shape)


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
    impls = [impl for impl in settings.backends if impl != CPU_WORKERS]
    for shape in settings.shapes:
        for dtype_name in settings.dtypes:
            for op in settings.ops:
                for impl in impls:
                    row = _row(op, impl, shape, dtype_name)
                    try:
                        timing = timer(make_call(op, impl, shape, DTYPES[dtype_name], settings.device))
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
                    if impl == "triton" and settings.device.type != "cuda":
                        row["note"] = row["note"] or "Triton interpreter: not a performance claim"
                    rows.append(row)
                    log(f"{op:16s} {impl:10s} {shape_text(shape):16s} {dtype_name:9s} "
                        f"{_fmt(row['median_ms'], '.4g')} ms {row['note']}")
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
                f"{_fmt(row['median_ms'], '.4g')} ms {row['note']}")
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


# --------------------------------------------------------------------------- the run's facts


def _version(*distributions: str) -> Optional[str]:
    for name in distributions:
        try:
            return importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return None


def _command_output(command: Sequence[str], cwd: Optional[Path] = None) -> Optional[str]:
    try:
        done = subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() if done.returncode == 0 and done.stdout.strip() else None


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def git_commit() -> str:
    """``git rev-parse HEAD`` of this checkout, or ``"unknown"`` (no git, or a copy without ``.git``)."""
    return _command_output(["git", "rev-parse", "HEAD"], cwd=Path(__file__).resolve().parent.parent) or "unknown"


def run_facts(device: torch.device, commit: str) -> dict:
    """Device, driver, library versions, git commit, date."""
    facts = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "git_commit": commit,
        "device": device.type,
        "cpu": _cpu_name(),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "triton": _version("triton"),
        "cupy": _version("cupy", "cupy-cuda13x", "cupy-cuda12x", "cupy-cuda11x"),
        "numpy": np.__version__,
        "h3r_kernels": h3r_kernels.__version__,
        "backends": h3r_kernels.backends(),
        "triton_interpreter": interpreting(),
    }
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        facts["device_name"] = torch.cuda.get_device_name(index)
        query = ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader", "-i", str(index)]
        facts["driver"] = _command_output(query) or "unknown"
    else:
        facts["device_name"] = facts["cpu"]
        facts["driver"] = "n/a"
    return facts


# --------------------------------------------------------------------------- output


def _fmt(value: Optional[float], spec: str, suffix: str = "") -> str:
    return "—" if value is None else f"{value:{spec}}{suffix}"


TABLE_HEADER = ("op", "impl", "B×K×H×W", "dtype", "median ms", "host ms", "GB/s", "% copy BW",
                "× reference", "× naive", "× CPU encoding", "samples/s", "note")


def markdown_table(rows: list[dict]) -> str:
    lines = ["| " + " | ".join(TABLE_HEADER) + " |", "|" + "---|" * len(TABLE_HEADER)]
    for r in rows:
        cells = (
            r["op"], r["impl"], "×".join(map(str, r["shape"])), r["dtype"],
            _fmt(r["median_ms"], ".4g"), _fmt(r["host_ms"], ".3g"), _fmt(r["gbps"], ".4g"), _fmt(r["pct_copy_bandwidth"], ".1f"),
            _fmt(r["x_vs_reference"], ".2f", "×"), _fmt(r["x_vs_naive"], ".2f", "×"),
            _fmt(r["x_vs_cpu_encoding"], ".2f", "×"), _fmt(r["samples_per_s"], ",.0f"), r["note"].replace("|", "/"),
        )
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def markdown_report(report: dict) -> str:
    facts, settings, copy = report["facts"], report["settings"], report["copy_bandwidth"]
    available = ", ".join(f"{name} ({'yes' if info['available'] else 'no'}: {info['reason']})"
                          for name, info in facts["backends"].items())
    timing = ("CUDA events, a 256 MiB L2 flush before each call, all calls queued behind a GPU spin kernel"
              if facts["device"] == "cuda" else "time.perf_counter")
    lines = [
        "# h3r_kernels throughput report",
        "",
        f"- device: {facts['device_name']} ({facts['device']}), driver {facts['driver']}, "
        f"CUDA (torch) {facts['torch_cuda']}; CPU: {facts['cpu']}, {facts['cpu_count']} cores",
        f"- versions: torch {facts['torch']}, triton {facts['triton']}, cupy {facts['cupy']}, "
        f"numpy {facts['numpy']}, python {facts['python']}, h3r_kernels {facts['h3r_kernels']}",
        f"- git commit {facts['git_commit']}, date {facts['date']}, run took {report['elapsed_s']:.0f} s",
        f"- copy bandwidth: {copy['gbps']:.1f} GB/s (`copy_` of {copy['source_bytes'] / 2**30:.3g} GiB float32, "
        f"read + write counted, {copy['ms']:.4g} ms)",
        f"- timing: {timing}; median of {settings['repeats']} calls after {settings['warmup']} warm-up calls",
        f"- backends: {available}",
    ]
    if CPU_WORKERS in settings["backends"]:
        lines.append(f"- CPU encoding: DataLoader with {settings['cpu_workers']} workers, {settings['cpu_rounds']} "
                     "rounds of one batch per worker, the first round (worker start-up) untimed")
    lines.append("")
    if not report["performance_claim"]:
        lines += ["> CPU run (or Triton interpreter): these timings check the harness; they are not a "
                  "performance claim.", ""]
    lines += [
        "GB/s = counted bytes / median time; % copy BW = that / the copy bandwidth above; "
        "× X = time of X / time of the row (same op, shape, dtype); samples/s = B / median time. "
        "On CUDA, median ms is the device time of one call (calls queued ahead, so no launch gaps) and "
        "host ms the CPU time to issue one; where host ms is the larger, a loop of back-to-back calls is "
        "limited by the CPU side (Python, launches), not by the GPU. A call that synchronises with the host "
        "(found by issuing it behind a GPU spin) breaks CUDA-graph capture and is flagged in the note.",
        "",
        markdown_table(report["rows"]),
        "",
        "## Bytes moved (N = B·K·H·W elements of the row's dtype)",
        "",
        "| op | what | counted passes | passes by the op | note |",
        "|---|---|---|---|---|",
    ]
    lines += [f"| {s.name} | {s.what} | {s.counted_passes}·N | {s.op_passes}·N | {s.passes_note} |"
              for s in OPS.values()]
    lines += ["", "## Implementations", ""]
    lines += [f"- **{name}**: {IMPLEMENTATION_NOTES[name]}" for name in settings["backends"]]
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- command line


def _shapes(text: str) -> list[tuple[int, int, int, int]]:
    shapes = []
    for part in text.split(","):
        try:
            shape = tuple(int(v) for v in part.strip().lower().split("x"))
        except ValueError:
            shape = ()
        if len(shape) != 4 or min(shape) < 1:
            raise argparse.ArgumentTypeError(f"expected shapes BxKxHxW (positive integers, comma separated), got {part!r}")
        shapes.append(shape)
    return shapes


def _choices(allowed: Sequence[str]):
    def parse(text: str) -> list[str]:
        names = [name.strip() for name in text.split(",") if name.strip()]
        unknown = [name for name in names if name not in allowed]
        if unknown or not names:
            raise argparse.ArgumentTypeError(f"expected a comma-separated subset of {', '.join(allowed)}, got {text!r}")
        return names
    return parse


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bench.report",
        description="Time the h3r_kernels ops against the reference, naive PyTorch and CPU encoding; "
        "print the table and write it as JSON and Markdown.",
    )
    parser.add_argument("--device", choices=("cuda", "cpu"), help="default: cuda if available, else cpu")
    parser.add_argument("--shapes", type=_shapes,
                        help="BxKxHxW,... (default on CUDA: " + ",".join(map(shape_text, CUDA_SHAPES))
                        + "; on the CPU: " + ",".join(map(shape_text, CPU_SHAPES)) + ")")
    parser.add_argument("--dtypes", type=_choices(tuple(DTYPES)), default=list(DEFAULT_DTYPES),
                        help="map dtypes (default: float32,bfloat16)")
    parser.add_argument("--ops", type=_choices(tuple(OPS)), default=list(OPS), help="default: all of " + ",".join(OPS))
    parser.add_argument("--backends", type=_choices(IMPLEMENTATIONS),
                        help="implementations among " + ",".join(IMPLEMENTATIONS) + " (default on CUDA: every "
                        "available kernel backend + naive + cpu_workers; on the CPU: reference,naive,cpu_workers; "
                        "triton on the CPU needs TRITON_INTERPRET=1 and is not a performance claim)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="folder for report.json and report.md")
    parser.add_argument("--repeats", type=_positive, default=20, help="timed calls per measurement (default 20)")
    parser.add_argument("--warmup", type=_positive, default=3, help="untimed calls first (default 3)")
    parser.add_argument("--copy-mib", type=_positive,
                        help="size of the copy_ that measures the bandwidth (default 1024 on CUDA, 256 on the CPU)")
    parser.add_argument("--cpu-workers", type=_positive, default=os.cpu_count() or 1,
                        help="DataLoader workers for CPU encoding (default: os.cpu_count())")
    parser.add_argument("--cpu-rounds", type=_positive, default=2,
                        help="batches per worker for CPU encoding, >= 2; the first round is untimed (default 2)")
    parser.add_argument("--commit", help="git commit to record (default: git rev-parse HEAD, else 'unknown'); "
                        "for runs on a copy of the tree without .git")
    return parser


def parse_settings(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    """Parse and check the arguments; fill the device-dependent defaults."""
    parser = build_parser()
    settings = parser.parse_args(argv)
    if settings.device is None:
        settings.device = "cuda" if torch.cuda.is_available() else "cpu"
    if settings.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device is visible to torch")
    settings.device = torch.device(settings.device)
    on_cuda = settings.device.type == "cuda"
    if settings.shapes is None:
        settings.shapes = list(CUDA_SHAPES if on_cuda else CPU_SHAPES)
    if settings.copy_mib is None:
        settings.copy_mib = 1024 if on_cuda else 256
    if settings.cpu_rounds < 2:
        parser.error(f"--cpu-rounds: expected >= 2 (the first round only starts the workers), got {settings.cpu_rounds}")
    available = h3r_kernels.backends()
    if settings.backends is None:
        kernels = [name for name in KERNEL_BACKENDS if available[name]["available"]] if on_cuda else ["reference"]
        settings.backends = kernels + [NAIVE, CPU_WORKERS]
    for name in settings.backends:
        if name == "cuda" and not on_cuda:
            parser.error("--backends cuda: the CUDA C backend needs --device cuda")
        if name == "triton" and not on_cuda and not interpreting():
            parser.error("--backends triton on the CPU: set TRITON_INTERPRET=1 before running (the Triton "
                         "interpreter; its timings are not a performance claim)")
        if name in KERNEL_BACKENDS and not available[name]["available"]:
            parser.error(f"--backends {name}: not available here: {available[name]['reason']}")
    return settings


def run(settings: argparse.Namespace, log=print) -> dict:
    """Measure everything ``settings`` asks for and return the report (a JSON-ready dict)."""
    started = time.perf_counter()
    device = settings.device
    timer = Timer(device, settings.repeats, settings.warmup)
    copy = copy_bandwidth(timer, device, settings.copy_mib << 20)
    log(f"copy bandwidth: {copy['gbps']:.1f} GB/s")
    rows = measure_ops(settings, timer, log)
    if CPU_WORKERS in settings.backends:
        rows += measure_cpu_encoding(settings, log)
    add_derived_columns(rows, copy["gbps"])
    on_cuda = device.type == "cuda"
    return {
        "facts": run_facts(device, settings.commit or git_commit()),
        "settings": {
            "device": device.type,
            "shapes": [list(s) for s in settings.shapes],
            "dtypes": settings.dtypes,
            "ops": settings.ops,
            "backends": settings.backends,
            "repeats": settings.repeats,
            "warmup": settings.warmup,
            "copy_mib": settings.copy_mib,
            "cpu_workers": settings.cpu_workers,
            "cpu_rounds": settings.cpu_rounds,
            "gaussian_sigma": GAUSSIAN_SIGMA,
            "topk": TOPK,
            "seed": SEED,
        },
        "performance_claim": on_cuda and not interpreting(),
        "copy_bandwidth": copy,
        "ops": {s.name: {"what": s.what, "counted_passes": s.counted_passes, "op_passes": s.op_passes,
                         "note": s.passes_note} for s in OPS.values()},
        "implementations": {name: IMPLEMENTATION_NOTES[name] for name in settings.backends},
        "rows": rows,
        "elapsed_s": time.perf_counter() - started,
    }


def write_report(report: dict, out: Path) -> tuple[Path, Path]:
    """Write ``out/report.json`` and ``out/report.md``; return their paths."""
    out.mkdir(parents=True, exist_ok=True)
    json_path, md_path = out / "report.json", out / "report.md"
    json_path.write_text(json.dumps(report, indent=2, allow_nan=False) + "\n", encoding="utf-8")
    md_path.write_text(markdown_report(report), encoding="utf-8")
    return json_path, md_path


def main(argv: Optional[Sequence[str]] = None) -> dict:
    """``python -m bench.report``: measure, print the table, write JSON and Markdown; return the report."""
    settings = parse_settings(argv)

    def log(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    report = run(settings, log)
    json_path, md_path = write_report(report, settings.out)
    print(markdown_table(report["rows"]))
    log(f"wrote {json_path} and {md_path} in {report['elapsed_s']:.0f} s")
    return report


if __name__ == "__main__":
    main()
