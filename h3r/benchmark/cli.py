"""The command line of the report: ``python -m h3r.benchmark`` (and ``h3r bench``).

Parses and checks the arguments, fills the device-dependent defaults, runs the report,
prints its table and writes ``report.json`` and ``report.md``.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Optional, Sequence

import torch

import h3r_kernels
from h3r_kernels.backends import interpreting

from .cases import (CPU_SHAPES, CPU_WORKERS, CUDA_SHAPES, DEFAULT_DTYPES, DTYPES, IMPLEMENTATIONS, KERNEL_BACKENDS,
                    NAIVE, OPS, shape_text)
from h3r.models import BACKBONES, STRIDES

from .host_overhead import DEFAULT_SHAPE as HOST_SHAPE
from .train_step import CPU_DEFAULTS as CPU_STEP
from .train_step import CUDA_DEFAULTS as CUDA_STEP
from .markdown import markdown_table
from .report import run, write_report
from .tiles import parse_tiles

DEFAULT_OUT = Path("bench") / "out"  # under the current folder


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


def _tiles(text: str) -> list[tuple[int, int]]:
    try:
        return parse_tiles(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


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
        prog="python -m h3r.benchmark",
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
    parser.add_argument("--triton-tiles", type=_tiles, metavar="ELEMENTS:PER_THREAD,...",
                        help="also time the map-tiled Triton kernels (encode, heatmap_loss) with these GPU tiles, "
                        "beside the tile in use (rows 'triton tile E/P'; h3r/benchmark/tiles.py)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="folder for report.json and report.md (default: bench/out under the current folder)")
    parser.add_argument("--repeats", type=_positive, default=20, help="timed calls per measurement (default 20)")
    parser.add_argument("--warmup", type=_positive, default=3, help="untimed calls first (default 3)")
    parser.add_argument("--copy-mib", type=_positive,
                        help="size of the copy_ that measures the bandwidth (default 1024 on CUDA, 256 on the CPU)")
    parser.add_argument("--cpu-workers", type=_positive, default=os.cpu_count() or 1,
                        help="DataLoader workers for CPU encoding (default: os.cpu_count())")
    parser.add_argument("--cpu-rounds", type=_positive, default=2,
                        help="batches per worker for CPU encoding, >= 2; the first round is untimed (default 2)")
    host = parser.add_argument_group("host overhead (its own section of the report)")
    host.add_argument("--host-overhead", action="store_true",
                      help="add the host-overhead section: CPU time per call of heatmap_loss fwd+bwd and decode on "
                      "tiny inputs against plain BCE, with the profile of where it goes")
    host.add_argument("--host-shape", type=_shapes, help="BxKxHxW of the host-overhead calls (default 2x4x8x8)")
    host.add_argument("--host-calls", type=_positive, default=200, help="calls per timed round (default 200)")
    host.add_argument("--host-rounds", type=_positive, default=5, help="timed rounds, the median is kept (default 5)")
    host.add_argument("--skip-throughput", action="store_true",
                      help="measure no throughput rows (e.g. with --host-overhead or --train-step alone)")
    step = parser.add_argument_group("training step (its own section of the report)")
    step.add_argument("--train-step", action="store_true",
                      help="add the training-step section: one AdamW step of a real model (eager, and captured in a "
                      "CUDA graph on CUDA) and the share of it spent in the H3R loss")
    step.add_argument("--step-backbone", choices=tuple(BACKBONES),
                      help=f"default {CUDA_STEP['backbone']} on CUDA, {CPU_STEP['backbone']} on the CPU")
    step.add_argument("--step-input-size", type=_positive, metavar="PX",
                      help=f"default {CUDA_STEP['input_size']} on CUDA, {CPU_STEP['input_size']} on the CPU")
    step.add_argument("--step-batch", type=_positive, metavar="N",
                      help=f"default {CUDA_STEP['batch']} on CUDA, {CPU_STEP['batch']} on the CPU")
    step.add_argument("--step-keypoints", type=_positive, metavar="K", help="default 98")
    step.add_argument("--step-stride", type=int, choices=STRIDES, help="default 4")
    step.add_argument("--step-amp", choices=("none", "bf16"),
                      help=f"default {CUDA_STEP['amp']} on CUDA, none on the CPU (autocast is CUDA-only here)")
    step.add_argument("--step-calls", type=_positive, default=10, help="calls per timed round (default 10)")
    step.add_argument("--step-rounds", type=_positive, default=3, help="timed rounds, the median is kept (default 3)")
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
    if settings.host_shape is None:
        settings.host_shape = [HOST_SHAPE]
    if len(settings.host_shape) != 1:
        parser.error("--host-shape: expected one shape BxKxHxW")
    settings.host_shape = settings.host_shape[0]
    if settings.skip_throughput and not (settings.host_overhead or settings.train_step):
        parser.error("--skip-throughput: nothing left to measure without --host-overhead or --train-step")
    defaults = CUDA_STEP if on_cuda else CPU_STEP
    settings.step_shape = {name: getattr(settings, f"step_{name}") if getattr(settings, f"step_{name}") is not None
                           else default for name, default in defaults.items()}
    size, stride = settings.step_shape["input_size"], settings.step_shape["stride"]
    if settings.train_step and (size % stride or size < 2 * stride):
        parser.error(f"--step-input-size: expected a multiple of the stride {stride} of at least {2 * stride}, "
                     f"got {size}")
    if settings.copy_mib is None:
        settings.copy_mib = 1024 if on_cuda else 256
    if settings.cpu_rounds < 2:
        parser.error(f"--cpu-rounds: expected >= 2 (the first round only starts the workers), got {settings.cpu_rounds}")
    if settings.triton_tiles and not on_cuda:
        parser.error("--triton-tiles: GPU tiles are timed on CUDA only (the interpreter's times say nothing)")
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


def main(argv: Optional[Sequence[str]] = None) -> dict:
    """``python -m h3r.benchmark``: measure, print the table, write JSON and Markdown; return the report."""
    settings = parse_settings(argv)

    def log(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    report = run(settings, log)
    json_path, md_path = write_report(report, settings.out)
    print(markdown_table(report["rows"]))
    log(f"wrote {json_path} and {md_path} in {report['elapsed_s']:.0f} s")
    return report
