"""The ``h3r`` command: ``h3r train``, ``h3r eval``, ``h3r study``, ``h3r bench``.

``h3r train`` with no options trains a small model on generated faces in a few minutes on
a CPU and prints its learning curve. Settings come from, in order: ``TrainConfig``'s
defaults, ``h3r/configs/<dataset>.toml``, the command line.
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Optional, Sequence

from h3r._compat import tomllib
from h3r.configs import (AMP_MODES, BACKBONES, CODECS, HEADS, OPTIMIZERS, REFINEMENTS, RUNTIME_FIELDS, SCHEDULES,
                         SETTING_NAMES, SUPPORTED_STRIDES, TOPK_WEIGHTS, config_from_dict, load_config,
                         unused_settings)
from h3r.data import DATASET_NAMES
from h3r.study.cli import STUDY_DESCRIPTION, add_study_arguments, run_study

TRAIN_DATASETS = ("wflw", "300w", "cofw", "aflw", "mpii", "coco", "synthetic-face", "synthetic-pose")

DESCRIPTION = """\
Heatmap regression via randomized rounding (H3R): train, evaluate and benchmark landmark models.

  h3r train                      a small model on generated faces (a few minutes on a CPU)
  h3r train --dataset wflw --data-root ~/data/WFLW --codec h3r
  h3r eval --checkpoint runs/<run>/last.pt
  h3r study                      accuracy vs heatmap stride: H3R against the baselines (~11 min on a 2-core CPU)
  h3r bench                      kernel throughput report (python -m h3r.benchmark)

'h3r <command> --help' lists each command's options.
"""

TRAIN_EPILOG = """\
Each dataset has defaults in h3r/configs/<dataset>.toml; options given here override them.
Coordinates: keypoints are divided by the stride (--stride, default 4) to reach the heatmap;
heatmap cell i sits on input pixel stride*i. Every backbone computes stride-4 features; at
strides 8, 16 and 32 they are average-pooled down (3x3, stride 2, centred) before the head.

Codecs (each trains its own target and loss; --refine / --topk-weights pick the decoder):
  h3r        randomized rounding: a binary target at one of the 4 neighbouring cells, drawn
             every step with bilinear probabilities; BCE; top-k decoding (k=9; --topk-weights
             softmax = the authors' decoder on raw logits, linear = probability-weighted mean)
  h3r-gaussian  the same rounding, a Gaussian (--sigma) at the drawn cell instead of a single 1;
             BCE; decoded from the window of +-(ceil(3 sigma) + 1) cells around the arg-max
  gaussian   vanilla (HRNet/SimpleBaseline): Gaussian at the nearest cell; MSE; arg-max with
             --refine none or quarter (default: a quarter cell towards the larger neighbour)
  dark       DARK: the unbiased Gaussian at the continuous keypoint; MSE; arg-max + DARK's
             Taylor step on the blurred log-heatmap (--refine dark, the default)
  integral   integral regression (soft-argmax over the map) with an L1 loss on coordinates
  udp        UDP's combined target (mmpose UDPHeatmap 'combined'): a disk of --radius cells and
             x/y offset maps per keypoint (3 head channels); MSE; arg-max of the blurred disk
             map + the blurred offsets there (--no-offset-blur: the offsets as they are)
Gaussian sigma (--sigma, heatmap cells): by default the task's reference value at stride 4
(faces 1.5, pose 2 cells on a 64-cell map; in proportion to the crop, at least 1), scaled by
4/stride at coarser strides so that the target covers the same input area. The udp disk's
radius (--radius, heatmap cells) follows mmpose's 0.0546875 x the map's side, at least 1 cell.

The run folder receives config.json, metrics.jsonl (one JSON line per epoch), last.pt /
best.pt, curve.png and eval-<dataset>-<split>/ (results.md, results.json, images/).

Several processes: torchrun --nproc_per_node 2 -m h3r train ...  (--batch-size is per process)
"""


def reader_option(text: str) -> tuple[str, object]:
    """``KEY=VALUE`` → ``(key, value)``; the value is read as a TOML value when it is one
    (``500`` → int, ``0.5`` → float, ``true`` → bool), else kept as a string."""
    key, separator, value = text.partition("=")
    if not separator or not key.strip():
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    try:
        parsed = tomllib.loads(f"value = {value}")["value"]
    except tomllib.TOMLDecodeError:
        parsed = value
    return key.strip(), parsed


def counting_number(least: int):
    """An argparse type: an integer >= ``least``."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer >= {least}, got {text!r}") from None
        if value < least:
            raise argparse.ArgumentTypeError(f"expected an integer >= {least}, got {value}")
        return value

    parse.__name__ = "integer"
    return parse


def add_train_arguments(parser: argparse.ArgumentParser) -> None:
    data = parser.add_argument_group("data")
    data.add_argument("--dataset", choices=TRAIN_DATASETS,
                      help="dataset to train on (default: synthetic-face, generated in memory)")
    data.add_argument("--data-root", metavar="DIR",
                      help="folder holding the dataset (required for real datasets; not used by synthetic ones)")
    data.add_argument("--train-split", metavar="NAME", help="training split (default from the dataset's config)")
    data.add_argument("--test-split", metavar="NAME", help="test split evaluated after each epoch")
    data.add_argument("--train-option", action="append", metavar="KEY=VALUE", type=reader_option,
                      help="keyword argument for the training split's reader, repeatable; e.g. size=500 "
                           "(synthetic sets), source=csv (AFLW)")
    data.add_argument("--test-option", action="append", metavar="KEY=VALUE", type=reader_option,
                      help="the same for the test split; e.g. subset=largepose (WFLW)")

    model = parser.add_argument_group("model and codec")
    model.add_argument("--codec", choices=CODECS,
                       help="h3r: randomized-rounding binary target + BCE, top-k decoding; "
                            "h3r-gaussian: the same with a Gaussian at the drawn cell, window decoding; "
                            "gaussian: Gaussian at the nearest cell + MSE, arg-max decoding; "
                            "dark: unbiased Gaussian + MSE, DARK refinement; "
                            "integral: soft-argmax + L1 (see below)")
    model.add_argument("--backbone", choices=BACKBONES, help="network (small: CPU-sized)")
    model.add_argument("--head", choices=HEADS, help="binary (one logit per landmark) or two-class (the authors')")
    model.add_argument("--pretrained", metavar="FILE",
                       help="weights loaded into the model before training: an h3r checkpoint (or run folder: its "
                            "last.pt), or one of the authors' released folders (config.yaml + model.pth; "
                            "docs/OFFICIAL.md)")
    model.add_argument("--input-size", type=int, metavar="PX", help="side of the square network input, in pixels")
    model.add_argument("--stride", type=int, choices=SUPPORTED_STRIDES,
                       help="input pixels per heatmap cell (default 4): the heatmap is input-size/stride cells "
                            "wide, with the same backbone and input")
    model.add_argument("--topk", type=int, metavar="K", help="h3r: activations averaged by the decoder (default 9)")
    model.add_argument("--topk-weights", choices=TOPK_WEIGHTS,
                       help="h3r, h3r-gaussian: decoder weights (default softmax)")
    model.add_argument("--window", type=int, metavar="N",
                       help="h3r, h3r-gaussian: decode from the NxN cells around the arg-max instead of the top k "
                            "(odd; default: top k for h3r, 2(ceil(3 sigma)+1)+1 for h3r-gaussian)")
    model.add_argument("--sigma", type=float, metavar="CELLS",
                       help="h3r-gaussian, gaussian, dark: sigma in heatmap cells (default: see below)")
    model.add_argument("--radius", type=float, metavar="CELLS",
                       help="udp: the disk's radius in heatmap cells, from √2/2 to the map's diagonal (default: see below)")
    model.add_argument("--offset-blur", action=argparse.BooleanOptionalAction, default=None,
                       help="udp: blur the offset maps before reading them, as mmpose does (default: yes)")
    model.add_argument("--refine", choices=REFINEMENTS,
                       help="gaussian, dark: sub-cell refinement after the arg-max (default quarter for gaussian, "
                            "dark for dark)")

    optimisation = parser.add_argument_group("optimisation")
    optimisation.add_argument("--epochs", type=int, metavar="N")
    optimisation.add_argument("--batch-size", type=int, metavar="N", help="images per step and process")
    optimisation.add_argument("--lr", type=float, help="peak learning rate")
    optimisation.add_argument("--optimizer", choices=OPTIMIZERS)
    optimisation.add_argument("--weight-decay", type=float, metavar="WD")
    optimisation.add_argument("--warmup-epochs", type=float, metavar="E",
                              help="linear warm-up length (may be fractional)")
    optimisation.add_argument("--schedule", choices=SCHEDULES, help="decay after the warm-up")
    optimisation.add_argument("--step-epochs", type=int, nargs="+", metavar="E",
                              help="step schedule: multiply the learning rate by 0.1 at these epochs")
    optimisation.add_argument("--grad-clip", type=float, metavar="NORM", help="maximum gradient norm (0: off)")
    optimisation.add_argument("--amp", choices=AMP_MODES, help="mixed precision on CUDA (default none)")
    optimisation.add_argument("--seed", type=int)

    running = parser.add_argument_group("running")
    running.add_argument("--device", help="auto (default: cuda if available), cpu, cuda, cuda:1 ...")
    running.add_argument("--workers", type=int, metavar="N", help="data-loading processes (0: main process)")
    running.add_argument("--out", metavar="DIR", help="run folder (default runs/<dataset>-<codec>-<date>-<time>)")
    running.add_argument("--eval-every", type=int, metavar="N", help="evaluate every N epochs")
    running.add_argument("--flip-test", action=argparse.BooleanOptionalAction, default=None,
                         help="average the prediction of the mirrored crop")
    running.add_argument("--draw", type=int, metavar="N", help="images with drawn predictions in the final report")
    running.add_argument("--no-progress", dest="progress", action="store_false", default=None,
                         help="no progress bar")
    running.add_argument("--gpu-augment", action=argparse.BooleanOptionalAction, default=None,
                         help="warp and colour-jitter the training crops on the training device (h3r/augment.py); "
                              "loader workers only decode and cut the region read; the same crops as without it")
    running.add_argument("--cuda-graphs", action=argparse.BooleanOptionalAction, default=None,
                         help="capture forward, loss, backward and optimiser step in one CUDA graph and replay it "
                              "per batch (h3r/steps.py): no Python per step; CUDA, one process, amp none or bf16")
    running.add_argument("--resume", metavar="CHECKPOINT",
                         help="continue a run from its last.pt (or run folder) with its stored settings; "
                              f"only {resume_flags()} may be given with it")
    running.add_argument("--stop-after", type=counting_number(1), metavar="EPOCHS",
                         help="stop after this many epochs (continue later with --resume)")
    running.add_argument("--data-only", action="store_true",
                         help="measure how many images/s the data loader delivers without the model (two epochs of at "
                              "most 200 batches), then exit")
    running.add_argument("--step-ms", type=counting_number(1), metavar="MS",
                         help="with --data-only: a stand-in for the training step (MS ms of sleep per batch) and "
                              "the share of the time the loop would wait for the loader")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="h3r", description=DESCRIPTION,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", metavar="{train,eval,study,bench}")

    train_parser = commands.add_parser("train", help="train a model (default: small model, synthetic faces)",
                                       description="Train a landmark model and evaluate it after every epoch.",
                                       epilog=TRAIN_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_train_arguments(train_parser)

    eval_parser = commands.add_parser("eval", help="evaluate a checkpoint",
                                      description="Evaluate a checkpoint written by 'h3r train' and write "
                                                  "results.json, results.md and images with drawn predictions.")
    eval_parser.add_argument("--checkpoint", required=True, metavar="FILE",
                             help="last.pt / best.pt of a run (or the run folder), or one of the authors' "
                                  "released folders (config.yaml + model.pth), evaluated with their protocol "
                                  "(docs/OFFICIAL.md)")
    eval_parser.add_argument("--dataset", choices=DATASET_NAMES,
                             help="dataset to evaluate on (default: the one it was trained on)")
    eval_parser.add_argument("--data-root", metavar="DIR", help="dataset folder (default: the training one)")
    eval_parser.add_argument("--split", metavar="NAME", help="split (default: the run's test split)")
    eval_parser.add_argument("--option", action="append", metavar="KEY=VALUE", type=reader_option,
                             help="keyword argument for the dataset reader, repeatable; e.g. "
                                  "detections=<file.json> (COCO), subset=largepose (WFLW)")
    eval_parser.add_argument("--flip-test", action=argparse.BooleanOptionalAction, default=None,
                             help="average the prediction of the mirrored crop (default: as in training)")
    eval_parser.add_argument("--device", default="auto", help="auto (default), cpu, cuda ...")
    eval_parser.add_argument("--batch-size", type=counting_number(1), metavar="N")
    eval_parser.add_argument("--workers", type=counting_number(0), metavar="N")
    eval_parser.add_argument("--out", metavar="DIR", help="report folder (default <run>/eval-<dataset>-<split>)")
    eval_parser.add_argument("--draw", type=counting_number(0), metavar="N",
                             help="images with drawn predictions (default 8)")
    decoder = eval_parser.add_argument_group("decoder (default: the run's)")
    decoder.add_argument("--topk", type=int, metavar="K", help="h3r: activations averaged by the decoder")
    decoder.add_argument("--topk-weights", choices=TOPK_WEIGHTS, help="h3r, h3r-gaussian: softmax (authors') or linear")
    decoder.add_argument("--window", type=int, metavar="N",
                         help="h3r, h3r-gaussian: the NxN cells around the arg-max instead of the top k (odd)")
    decoder.add_argument("--refine", choices=REFINEMENTS, help="gaussian, dark: sub-cell refinement")
    decoder.add_argument("--offset-blur", action=argparse.BooleanOptionalAction, default=None,
                         help="udp: blur the offset maps before reading them (mmpose's decoder)")

    study_parser = commands.add_parser("study", help="accuracy vs heatmap stride, H3R against the baselines",
                                       description=STUDY_DESCRIPTION,
                                       formatter_class=argparse.RawDescriptionHelpFormatter)
    add_study_arguments(study_parser)

    commands.add_parser("bench", help="kernel benchmark report (forwards its arguments to python -m h3r.benchmark)",
                        description="Runs 'python -m h3r.benchmark' with the arguments that follow; "
                                    "'h3r bench --help' shows that report's own options.", add_help=False)
    parser.set_defaults(command_parsers={"train": train_parser, "eval": eval_parser, "study": study_parser})
    return parser


def resume_flags() -> str:
    """The options ``--resume`` accepts (:data:`h3r.configs.RUNTIME_FIELDS`), as typed."""
    return ", ".join("--no-progress" if name == "progress" else "--" + name.replace("_", "-")
                     for name in RUNTIME_FIELDS)


def train_settings(args: argparse.Namespace, parser: argparse.ArgumentParser):
    """``(config, checkpoint)`` of ``h3r train`` with ``args``: the checkpoint read for ``--resume``, else None."""
    from h3r.evaluate import load_checkpoint

    checkpoint = None
    # The options are the settings by their flat names (--input-size: TrainConfig.crop.input_size).
    given = {name: getattr(args, name) for name in SETTING_NAMES if getattr(args, name, None) is not None}
    for option, field_name in (("train_option", "train_options"), ("test_option", "test_options")):
        if getattr(args, option):
            given[field_name] = dict(getattr(args, option))
    if args.resume:
        folder = Path(args.resume)
        if folder.is_dir() and not (folder / "last.pt").exists() and (folder / "config.json").is_file():
            raise ValueError(f"resume: {folder} holds no checkpoint yet (its run stopped before its first epoch "
                             f"ended); start the run again with --out {folder}")
        checkpoint = load_checkpoint(args.resume)
        forbidden = sorted(set(given) - set(RUNTIME_FIELDS))
        if forbidden:
            options = ", ".join("--" + "no-" * (given[name] is False) + name.replace("_", "-") for name in forbidden)
            parser.error(f"--resume continues the run with its stored settings; remove {options} "
                         f"(only {resume_flags()} may change)")
        runtime = {name: given[name] for name in RUNTIME_FIELDS if name in given}
        config = config_from_dict({**checkpoint["config"], **runtime}, source=f"{checkpoint['path']} configuration")
    else:
        config = load_config(given.pop("dataset", "synthetic-face"), **given)
    if args.step_ms is not None and not args.data_only:
        parser.error("--step-ms is an option of --data-only")
    return config, checkpoint


def parse_train_arguments(argv: Sequence[str]) -> tuple[argparse.Namespace, argparse.ArgumentParser]:
    """``(arguments, train parser)`` of ``h3r ARGV`` (a ``train`` command), or a ``ValueError`` with the
    message it would exit with."""
    def refuse(message: str):
        raise ValueError(message)

    parser = build_parser()
    train_parser = parser.parse_args(["train"]).command_parsers["train"]
    parser.error = train_parser.error = refuse
    args = parser.parse_args(list(argv))
    if args.command != "train":
        raise ValueError(f"expected an 'h3r train' command line, got {shlex.join(argv)}")
    return args, train_parser


def train_config_of(argv: Sequence[str]):
    """The configuration ``h3r ARGV`` (a ``train`` command) would train, or a ``ValueError`` with the
    message it would exit with; nothing is read but the dataset defaults (and the checkpoint of ``--resume``)."""
    return train_settings(*parse_train_arguments(argv))[0]


def run_train(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from h3r.train import benchmark_loader, train

    config, checkpoint = train_settings(args, parser)
    for setting in unused_settings(config, [name for name in SETTING_NAMES if getattr(args, name, None) is not None]):
        print(f"h3r train: note: ignored {setting}", file=sys.stderr)
    if args.data_only:
        result = benchmark_loader(config, step_ms=args.step_ms or 0)
        step = f", a {args.step_ms} ms step per batch" if args.step_ms else ""
        print(f"data loading alone ({config.dataset} {config.train_split}, batch {result['batch_size']}, "
              f"{result['workers']} workers{step}):")
        for epoch in result["epochs"]:
            waited = (f"; the loop waited for the loader {100 * epoch['loader_wait_fraction']:.1f}% of the time"
                      if args.step_ms else "")
            print(f"  epoch {epoch['epoch']}: {epoch['images_per_s']:.0f} images/s "
                  f"({epoch['images']} images in {epoch['seconds']:.1f} s){waited}")
        if args.step_ms:
            print(f"a step of {args.step_ms} ms alone would give {1000 * config.batch_size / args.step_ms:.0f} images/s; "
                  f"the first epoch renders the synthetic images, later ones read them from the cache")
        else:
            print("compare with images_per_s in a run's metrics.jsonl: if they are close, loading is the bottleneck")
        return 0
    # The checkpoint read above is passed on: train() does not read (and checksum) it again.
    summary = train(config, resume=checkpoint, stop_after_epochs=args.stop_after)
    is_main_process = os.environ.get("RANK", "0") == "0"  # torchrun sets RANK
    if is_main_process and not summary["finished"]:
        print(f"stopped after epoch {summary['epochs_completed']}/{config.epochs}; continue with: "
              f"h3r train --resume {Path(summary['out']) / 'last.pt'}")
    return 0


def run_eval(args: argparse.Namespace) -> int:
    from h3r.evaluate import evaluate_checkpoint, markdown_table

    result = evaluate_checkpoint(args.checkpoint, dataset=args.dataset, data_root=args.data_root, split=args.split,
                                 options=dict(args.option or []), flip_test=args.flip_test, device=args.device,
                                 batch_size=args.batch_size, workers=args.workers, out=args.out, draw=args.draw,
                                 decoder={"topk": args.topk, "topk_weights": args.topk_weights, "window": args.window,
                                          "refine": args.refine, "offset_blur": args.offset_blur})
    settings = result["settings"]
    for setting in settings.get("ignored_decoder_settings", []):
        print(f"h3r eval: note: ignored {setting}", file=sys.stderr)
    epoch = f", checkpoint epoch {settings['epoch']}" if settings.get("epoch") is not None else ""
    print(f"{settings['dataset']} {settings['split']} ({settings['items']} items), {settings['codec']} codec"
          f"{epoch}{', flip test' if settings['flip_test'] else ''}:")
    print(markdown_table(result["metrics"], result["baseline"]).rstrip())
    print(f"wrote {result['paths']['markdown']} and {result['paths']['json']}")
    print(json.dumps(result["metrics"]))
    return 0


def run_bench(arguments: Sequence[str]) -> int:
    """``python -m h3r.benchmark ARGUMENTS``, with the folder holding this h3r package on the module path."""
    repository = Path(__file__).resolve().parent.parent
    environment = dict(os.environ)
    environment["PYTHONPATH"] = os.pathsep.join(filter(None, [str(repository), environment.get("PYTHONPATH")]))
    return subprocess.call([sys.executable, "-m", "h3r.benchmark", *arguments], env=environment)


def error_message(error: BaseException) -> str:
    """What the user is told of ``error``. An error raised in a DataLoader worker arrives re-raised with the
    worker's whole traceback in its message (``Caught ValueError in DataLoader worker process 0. Original
    Traceback ...``): only the worker's own message is kept, and where it came from."""
    text = str(error)
    caught, separator, traceback_text = text.partition("\nOriginal Traceback")
    if not separator or not caught.startswith("Caught "):
        return text
    prefix = f"{type(error).__name__}: "
    lines = traceback_text.rstrip().splitlines()
    starts = [index for index, line in enumerate(lines) if line.startswith(prefix)]
    if not starts:
        return text
    message = "\n".join(lines[starts[-1]:])[len(prefix):]
    where = caught.removeprefix("Caught ").removeprefix(type(error).__name__).strip().rstrip(".")
    return f"{message} ({where})"


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["bench"]:
        return run_bench(argv[1:])
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    try:
        if args.command == "train":
            return run_train(args, args.command_parsers["train"])
        if args.command == "study":
            return run_study(args)
        return run_eval(args)
    except (ValueError, OSError) as error:  # user errors, unusable files, a full disk: one sentence
        print(f"h3r {args.command}: error: {error_message(error)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        hint = (": the run folder keeps its last completed epoch (continue with 'h3r train --resume <run folder>')"
                if args.command == "train" else "")
        print(f"h3r {args.command}: interrupted{hint}", file=sys.stderr)
        return 130
    except RuntimeError as error:
        from h3r.train import TrainingDiverged

        if not isinstance(error, TrainingDiverged):
            raise
        print(f"h3r {args.command}: error: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
