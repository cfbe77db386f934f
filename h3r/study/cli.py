"""``h3r study``: the command-line front of :func:`h3r.study.run_study`."""
from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

from h3r.study.presets import METHODS, PRESETS

DEFAULT_PRESET = "quick"

STUDY_DESCRIPTION = """\
The low-resolution study: accuracy against heatmap stride at a fixed input size, H3R against
faithful baselines. Part A (seconds): every codec encodes the test split's ground truth and
decodes it back, at every stride (the quantization error alone). Part B: one 'h3r train' per
(dataset, codec, stride, seed) cell, each scored with every decoder of its codec. Writes
study.json, study.md and study.png into --out; progress goes to stderr. Re-running skips
finished cells (a cell stopped part-way resumes); a failed cell is reported, not fatal.

presets:
""" + "\n".join(f"  {name:<6} {preset.description}" for name, preset in PRESETS.items()) + """

methods:
""" + "\n".join(f"  {name:<12} {method.label}" for name, method in METHODS.items()) + """

Arguments after '--' are given to every 'h3r train', e.g.  h3r study -- --lr 1e-3

Runs of one grid that differ only in seeds, methods or strides (e.g. seeds trained on two
machines) make one study with  h3r study --merge A/study.json B/study.json --out DIR
"""


def _integers(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def _names(text: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in text.split(",") if part.strip())


def add_study_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--preset", choices=tuple(PRESETS), help=f"the grid (default {DEFAULT_PRESET})")
    parser.add_argument("--out", metavar="DIR", help="output folder (default runs/study-<preset>)")
    parser.add_argument("--dataset", help="run the study on this dataset instead of the preset's")
    parser.add_argument("--data-root", metavar="DIR", help="folder of a real dataset")
    parser.add_argument("--strides", type=_integers, metavar="S,S,...", help="e.g. 4,8,16")
    parser.add_argument("--seeds", type=_integers, metavar="N,N,...", help="e.g. 0,1,2")
    parser.add_argument("--methods", type=_names, metavar="NAME,...", help=f"some of {','.join(METHODS)}")
    parser.add_argument("--backbone", help="network of every cell")
    parser.add_argument("--input-size", type=int, metavar="PX", help="input side of every cell")
    parser.add_argument("--epochs", type=int, metavar="N")
    parser.add_argument("--batch-size", type=int, metavar="N")
    parser.add_argument("--workers", type=int, metavar="N", help="data-loading processes per cell")
    parser.add_argument("--jobs", type=int, default=None, metavar="N",
                        help="cells trained at once: 1 trains in this process; more run subprocesses with cores/N "
                             "threads each (default: the preset's, 2 for quick; with --devices, one per device)")
    parser.add_argument("--devices", type=_names, metavar="DEV,...",
                        help="e.g. cuda:0,cuda:1: cells are placed round-robin on these devices")
    parser.add_argument("--print-commands", action="store_true",
                        help="print one 'h3r train' command per cell (for a cluster scheduler) and exit; "
                             "re-run without it to collect the results")
    parser.add_argument("--collect", action="store_true",
                        help="train nothing: score the cells that are finished and write the outputs")
    parser.add_argument("--rescore", action="store_true", help="re-evaluate finished cells instead of reusing scores")
    parser.add_argument("--merge", nargs="+", metavar="STUDY_JSON",
                        help="train nothing: write one study of these runs' cells (the same grid but for seeds, "
                             "methods or strides) into --out")
    parser.add_argument("train_args", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)


def merge_runs(args: argparse.Namespace) -> int:
    """``--merge``: the studies named written as one into ``--out``, which must not hold a study yet."""
    from h3r.study.merge import merge_studies
    from h3r.study.report import write_outputs

    grid_options = [f"--{name.replace('_', '-')}" for name in ("preset", "dataset", "data_root", "strides", "seeds",
                    "methods", "backbone", "input_size", "epochs", "batch_size", "workers", "jobs", "devices")
                    if getattr(args, name) is not None]
    grid_options += [f"--{name.replace('_', '-')}" for name in ("print_commands", "collect", "rescore")
                     if getattr(args, name)] + (["-- ..."] if args.train_args else [])
    if grid_options:
        raise ValueError(f"--merge takes only --out: {', '.join(grid_options)} belong to the runs being merged")
    if not args.out:
        raise ValueError("--merge: give --out, the folder of the merged study")
    out = Path(args.out)
    if (out / "study.json").exists():
        raise ValueError(f"--out: {out} already holds a study.json; choose another folder")
    command = shlex.join(["h3r", *sys.argv[1:]]) if sys.argv[1:2] == ["study"] else None
    record = merge_studies(args.merge, command=command)
    out.mkdir(parents=True, exist_ok=True)
    paths = write_outputs(record, out)
    failed = record["failed_cells"]
    print(f"merged {len(args.merge)} runs ({len(record['cells'])} cells, seeds {record['settings']['seeds']}) "
          f"into {', '.join(str(path) for path in paths)}"
          + (f"; {len(failed)} cell(s) failed: {', '.join(failed)}" if failed else ""), file=sys.stderr)
    return 1 if failed else 0


def run_study(args: argparse.Namespace) -> int:
    from h3r.study.grid import cells, check_cells, command_line, train_argv
    from h3r.study.runner import run_study as run

    if args.jobs is not None and args.jobs < 1:
        raise ValueError(f"--jobs: expected a positive number of cells trained at once, got {args.jobs}")
    if args.merge:
        return merge_runs(args)

    preset = PRESETS[args.preset or DEFAULT_PRESET]
    overrides = {"strides": args.strides, "seeds": args.seeds, "methods": args.methods, "backbone": args.backbone,
                 "input_size": args.input_size, "epochs": args.epochs, "batch_size": args.batch_size,
                 "workers": args.workers}
    if args.dataset:
        overrides["datasets"] = (args.dataset,)
    preset = preset.with_overrides(**overrides)
    extra = tuple(args.train_args[1:] if args.train_args[:1] == ["--"] else args.train_args)
    out = args.out or f"runs/study-{preset.name}"
    devices = tuple(args.devices or ())
    jobs = args.jobs if args.jobs is not None else (len(devices) if devices else preset.jobs)
    if args.print_commands:
        check_cells(preset, Path(out), data_root=args.data_root, extra=extra)
        for index, cell in enumerate(cells(preset)):
            device = devices[index % len(devices)] if devices else None
            print(command_line(train_argv(cell, preset, out, data_root=args.data_root, device=device, extra=extra)))
        return 0
    command = shlex.join(["h3r", *sys.argv[1:]]) if sys.argv[1:2] == ["study"] else None
    record = run(preset, out, data_root=args.data_root, jobs=jobs, devices=devices, extra=extra,
                 skip_training=args.collect, rescore=args.rescore, command=command)
    return 1 if record["failed_cells"] else 0
