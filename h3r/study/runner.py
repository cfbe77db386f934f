"""Part B: train every cell (resumable), score it with each of its methods, and write the results.

A cell is *finished* when its run folder's ``last.pt`` holds the last epoch; re-running the
study skips it (and re-reads its scores from ``study-<method>.json`` when present). A cell
stopped part-way continues with ``h3r train --resume``. A cell that fails is recorded with
the end of its log and the study goes on.

``jobs == 1`` trains in this process (``h3r.cli.main`` with the cell's arguments, output
to the cell's ``train.log``); ``jobs > 1`` runs ``python -m h3r train`` subprocesses, each
with ``cores / jobs`` threads, cells placed round-robin on ``devices``.
"""
from __future__ import annotations

import contextlib
import json
import os
import platform
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import numpy as np
import torch

from h3r.runtime import cpu_name, git_commit, resolve_device
from h3r.study.grid import Cell, cells, check_cells, command_line, train_argv
from h3r.study.presets import Preset
from h3r.study.report import SCHEMA

LOG_TAIL_LINES = 15
HEAD_BATCH = 32  # images per batch of the pooling + head + decoding timing
INTERRUPTED = 130  # the exit status of an interrupted h3r train (128 + SIGINT)


def progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def finished_epochs(run_dir: Path) -> Optional[int]:
    """The epoch stored in ``run_dir/last.pt``, or None when there is none; a ``ValueError`` naming the
    file when it cannot be read (a damaged checkpoint is not taken for a cell that never started)."""
    from h3r.evaluate import load_checkpoint

    path = run_dir / "last.pt"
    if not path.is_file():
        return None
    try:
        return int(load_checkpoint(path)["epoch"])
    except (ValueError, RuntimeError, OSError, KeyError, EOFError, TypeError) as error:
        raise ValueError(f"{path} cannot be read ({error}); remove {run_dir} to train the cell again") from None


def _log_tail(path: Path) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-LOG_TAIL_LINES:])
    except OSError:
        return ""


def runtime_arguments(argv: list[str]) -> list[str]:
    """Of a cell's ``h3r train`` arguments, those ``--resume`` takes (:data:`h3r.configs.RUNTIME_FIELDS`),
    as options: where it runs and reads its data may change between a cell's start and its continuation."""
    from h3r.cli import parse_train_arguments
    from h3r.configs import RUNTIME_FIELDS

    args, _ = parse_train_arguments(argv)
    kept = []
    for name in RUNTIME_FIELDS:
        value, option = getattr(args, name), name.replace("_", "-")
        if isinstance(value, bool):  # --no-progress, --gpu-augment / --no-gpu-augment
            kept.append(f"--{option}" if value else f"--no-{option}")
        elif value is not None:
            kept += [f"--{option}", str(value)]
    return kept


def train_cell(argv: list[str], run_dir: Path, epochs: int, *, in_process: bool, threads: int,
               done: Optional[int]) -> dict[str, Any]:
    """Train (or continue) one cell with ``h3r train`` ``argv``; returns ``{"status", "train_seconds", "error"}``.

    ``done``: the epoch ``run_dir/last.pt`` holds (:func:`finished_epochs`), None when there is none.
    """
    if done is not None:  # stopped part-way: continue with the stored settings and this run's runtime options
        argv = ["train", "--resume", str(run_dir / "last.pt"), *runtime_arguments(argv)]
    log_path = run_dir / "train.log"
    start = time.perf_counter()
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        log = open(log_path, "a")
    except OSError as error:  # this cell fails; the study goes on
        return {"status": "failed", "train_seconds": 0.0,
                "error": f"cannot write the cell's log {log_path}: {error.strerror or error}"}
    with log:
        log.write(f"$ {command_line(argv)}\n")
        log.flush()
        if in_process:
            from h3r.cli import main

            try:
                with contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
                    code = main(argv)
            except SystemExit as stop:  # argparse's errors (already written to the log)
                code = stop.code if isinstance(stop.code, int) else 1
            except Exception as error:  # noqa: BLE001 - a failed cell is reported, not fatal
                log.write(f"{type(error).__name__}: {error}\n")
                code = 1
        else:
            environment = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
            code = subprocess.call([sys.executable, "-m", "h3r", *argv], stdout=log, stderr=subprocess.STDOUT,
                                   env=environment)
    if code in (INTERRUPTED, -signal.SIGINT):  # Ctrl-C (h3r train's exit status, or the signal): the study stops too
        raise KeyboardInterrupt
    seconds = time.perf_counter() - start
    try:
        done = finished_epochs(run_dir)
    except ValueError as error:
        return {"status": "failed", "train_seconds": seconds, "error": str(error)}
    if code != 0 or done is None or done < epochs:
        return {"status": "failed", "train_seconds": seconds,
                "error": f"h3r train exited with {code}; end of {log_path}:\n{_log_tail(log_path)}"}
    return {"status": "trained", "train_seconds": seconds, "error": None}


def head_and_decode_ms(model, codec, input_size: int, device: torch.device, batch: int = HEAD_BATCH,
                       repeats: int = 10) -> float:
    """Median milliseconds of pooling + head + decoding for a batch (the part that changes with the stride)."""
    from h3r.benchmark.timing import time_per_call

    model.eval()
    with torch.no_grad():
        features = model.backbone(torch.zeros(batch, 3, input_size, input_size, device=device))
        timing = time_per_call(lambda: codec.decode(model.head(model.pool(features))), device, calls=1,
                               rounds=repeats, warmup=2)
    return timing["wall_ms"]


def _method_model(checkpoint: dict[str, Any], method, device: str):
    """``(model on its device, codec, config, device)`` of a finished cell's checkpoint, read with ``method``'s decoder."""
    from h3r.configs import config_from_dict
    from h3r.evaluate import model_and_codec, resolve_device

    config = config_from_dict({**checkpoint["config"], **method.decoder})
    model, codec = model_and_codec(config, checkpoint["num_keypoints"])
    model.load_state_dict(checkpoint["model"])
    torch_device = resolve_device(device)
    return model.to(torch_device), codec, config, torch_device


def _run_scores(checkpoint: dict[str, Any]) -> dict[str, Any]:
    """What every method's score of a cell takes from its run: the metric, the training images/s, the epochs."""
    from h3r.configs import config_from_dict

    config = config_from_dict(checkpoint["config"])
    history = checkpoint["history"]
    return {"metric": config.metric, "higher_is_better": config.higher_is_better, "head_decode_ms": None,
            "batch": HEAD_BATCH,
            "images_per_s": float(np.mean([record["images_per_s"] for record in history])) if history else None,
            "epochs": checkpoint["epoch"]}


def score_cell(cell: Cell, preset: Preset, run_dir: Path, device: str, rescore: bool,
               scored_at: str) -> dict[str, Any]:
    """Each method of the cell on the final model: ``{method: {"metrics", ...}}``, cached in ``study-<method>.json``;
    ``scored_at``: the commit of the code that scores (recorded with each new score)."""
    from h3r.evaluate import evaluate_checkpoint, load_checkpoint

    scores = {}
    run = None  # read from last.pt once, when a method is scored
    for method in cell.methods(preset):
        cache = run_dir / f"study-{method.name}.json"
        if cache.is_file() and not rescore:
            scores[method.name] = json.loads(cache.read_text())
            continue
        result = evaluate_checkpoint(run_dir / "last.pt", out=str(run_dir / f"eval-{method.name}"), draw=0,
                                     workers=0, progress=False, device=device, decoder=method.decoder)
        run = run or _run_scores(load_checkpoint(run_dir / "last.pt"))
        scores[method.name] = {"metrics": result["metrics"], **run, "scored_at": scored_at}
        cache.write_text(json.dumps(scores[method.name], indent=2) + "\n")
    return scores


def time_heads(rows: list[dict[str, Any]], devices: dict[str, Optional[str]]) -> None:
    """Fill ``head_decode_ms`` of every scored row, one cell at a time (nothing else running), cached on disk.

    The rows of a cell are consecutive: its checkpoint is read once for all its methods.
    """
    from h3r.evaluate import load_checkpoint
    from h3r.study.presets import METHODS

    checkpoint, loaded = None, None
    for row in rows:
        if row["metrics"] is None or row["head_decode_ms"] is not None:
            continue
        run_dir = Path(row["run_dir"])
        if run_dir != loaded:
            checkpoint, loaded = load_checkpoint(run_dir / "last.pt"), run_dir
        device = devices.get(row["run_dir"]) or "auto"
        model, codec, config, torch_device = _method_model(checkpoint, METHODS[row["method"]], device)
        row["head_decode_ms"] = head_and_decode_ms(model, codec, config.crop.input_size, torch_device)
        cache = run_dir / f"study-{row['method']}.json"
        cached = json.loads(cache.read_text())
        cache.write_text(json.dumps({**cached, "head_decode_ms": row["head_decode_ms"]}, indent=2) + "\n")


def run_study(preset: Preset, out: str | Path, *, data_root: Optional[str] = None, jobs: Optional[int] = None,
              devices: Sequence[str] = (), extra: Sequence[str] = (), skip_training: bool = False,
              rescore: bool = False, command: Optional[str] = None,
              say: Callable[[str], None] = progress) -> dict[str, Any]:
    """Run Part A and Part B of ``preset`` into ``out`` and write ``study.json``, ``study.md``, ``study.png``.

    Returns the study record (the content of ``study.json``). ``skip_training`` only
    collects finished cells (and runs Part A). ``rescore`` re-evaluates finished cells.
    """
    from h3r.study.quantization import quantization_rows
    from h3r.study.report import summarise, write_outputs

    preset.check()
    jobs = preset.jobs if jobs is None else jobs
    if jobs < 1:
        raise ValueError(f"jobs: expected a positive number of parallel cells, got {jobs}")
    out = Path(out)
    refuse_merged_study(out)
    for device in devices:  # a cell on a missing device would fail only after part A and the cells before it
        resolve_device(device)
    check_cells(preset, out, data_root=data_root, extra=tuple(extra))
    out.mkdir(parents=True, exist_ok=True)
    started, wall_start = datetime.now(timezone.utc), time.perf_counter()
    scored_at = git_commit(short=True, mark_dirty=True)  # the code this process imported, which scores every cell
    say(f"h3r study '{preset.name}': {len(preset.datasets)} dataset(s) x {len(preset.methods)} methods "
        f"({len(preset.codecs)} codecs to train) x strides {list(preset.strides)} x seeds {list(preset.seeds)}; "
        f"{preset.backbone}, {preset.input_size} px input, {preset.epochs} epochs -> {out}")

    say("part A, quantization only: encode the ground truth, decode it back ...")
    part_a_start = time.perf_counter()
    quantization = quantization_rows(preset, data_root=data_root, extra=tuple(extra))
    say(f"part A done in {time.perf_counter() - part_a_start:.1f} s")

    grid = cells(preset)
    devices = list(devices) or [None]
    threads = max(1, (os.cpu_count() or 1) // jobs)
    results: list[dict[str, Any]] = []

    interrupted = threading.Event()  # set by a cell interrupted with Ctrl-C: no further cell starts

    def run_one(index: int, cell: Cell) -> list[dict[str, Any]]:
        if interrupted.is_set():
            raise KeyboardInterrupt
        device = devices[index % len(devices)]
        run_dir = cell.run_dir(out)
        argv = train_argv(cell, preset, out, data_root=data_root, device=device, extra=tuple(extra))
        try:
            done, damaged = finished_epochs(run_dir), None
        except ValueError as error:
            done, damaged = None, str(error)
        if damaged:
            outcome = {"status": "failed", "train_seconds": None, "error": damaged}
        elif done is not None and done >= preset.epochs:
            outcome = {"status": "skipped (finished earlier)", "train_seconds": None, "error": None}
        elif skip_training:
            outcome = {"status": "not trained", "train_seconds": None, "error": None}
        else:
            say(f"[{index + 1}/{len(grid)}] {cell.key}: training ({command_line(argv)})")
            try:
                outcome = train_cell(argv, run_dir, preset.epochs, in_process=jobs == 1, threads=threads, done=done)
            except KeyboardInterrupt:
                interrupted.set()
                raise
        scores: dict[str, Any] = {}
        if outcome["status"] in ("trained", "skipped (finished earlier)"):
            try:
                scores = score_cell(cell, preset, run_dir, device or "auto", rescore, scored_at)
            except Exception as error:  # noqa: BLE001 - reported, not fatal
                outcome = {**outcome, "status": "failed", "error": f"scoring: {type(error).__name__}: {error}"}
        rows = []
        for method in cell.methods(preset):
            score = scores.get(method.name, {})
            rows.append({"dataset": cell.dataset, "method": method.name, "codec": cell.codec, "stride": cell.stride,
                         "heatmap_size": preset.input_size // cell.stride, "seed": cell.seed,
                         "status": outcome["status"], "metrics": score.get("metrics"), "metric": score.get("metric"),
                         "higher_is_better": score.get("higher_is_better"), "epochs": score.get("epochs"),
                         "scored_at": score.get("scored_at"),
                         "images_per_s": score.get("images_per_s"), "head_decode_ms": score.get("head_decode_ms"),
                         "train_seconds": outcome["train_seconds"], "run_dir": str(run_dir),
                         "command": command_line(argv), "error": outcome["error"]})
        shown = ", ".join(f"{row['method']} {row['metric']} {row['metrics'][row['metric']]:.4f}"
                          for row in rows if row["metrics"] and row["metric"] in row["metrics"])
        say(f"[{index + 1}/{len(grid)}] {cell.key}: {outcome['status']}" + (f"; {shown}" if shown else "")
            + (f"\n{outcome['error']}" if outcome["error"] else ""))
        return rows

    if jobs == 1:
        for index, cell in enumerate(grid):
            results += run_one(index, cell)
    else:
        with ThreadPoolExecutor(max_workers=jobs) as pool:
            try:
                for rows in pool.map(lambda pair: run_one(*pair), enumerate(grid)):
                    results += rows
            except KeyboardInterrupt:  # no further cell starts; the running ones got the same Ctrl-C
                pool.shutdown(wait=False, cancel_futures=True)
                raise
    say("timing pooling + head + decoding of each finished cell, one at a time ...")
    time_heads(results, {str(cell.run_dir(out)): devices[index % len(devices)] for index, cell in enumerate(grid)})

    failed = sorted({row["run_dir"] for row in results if row["status"] == "failed"})
    record = {
        "schema": SCHEMA,
        "settings": {
            "preset": preset.name, "description": preset.description, "datasets": list(preset.datasets),
            "methods": list(preset.methods), "strides": list(preset.strides), "seeds": list(preset.seeds),
            "backbone": preset.backbone, "input_size": preset.input_size, "epochs": preset.epochs,
            "batch_size": preset.batch_size, "synthetic_sizes": preset.synthetic_sizes,
            "synthetic_image_size": preset.synthetic_image_size, "train_args": [*preset.train_args, *extra],
            "data_root": data_root, "jobs": jobs, "devices": [d for d in devices if d], "command": command,
            "commit": git_commit(short=True, mark_dirty=True), "machine": _machine(), "started": started.isoformat(timespec="seconds"),
            "wall_seconds": None,
        },
        "quantization": quantization,
        "cells": results,
        "summary": summarise(results),
        "failed_cells": failed,
    }
    record["settings"]["wall_seconds"] = round(time.perf_counter() - wall_start, 1)
    paths = write_outputs(record, out)
    say(f"wrote {', '.join(str(path) for path in paths)} in {record['settings']['wall_seconds']:.0f} s"
        + (f"; {len(failed)} cell(s) failed: {', '.join(failed)}" if failed else ""))
    return record


def refuse_merged_study(out: Path) -> None:
    """A run does not write over a merged study (``h3r study --merge``): its ``study.json`` holds cells of
    other folders, which the run's own record would replace."""
    path = out / "study.json"
    try:
        merged = bool(json.loads(path.read_text()).get("settings", {}).get("parts"))
    except (OSError, ValueError, AttributeError):  # none, or not a study's: the run writes its own
        return
    if merged:
        raise ValueError(f"out: {path} is a merged study (h3r study --merge); give another --out")


def _machine() -> dict[str, Any]:
    return {"cpu": cpu_name(), "platform": platform.platform(), "cpu_count": os.cpu_count(),
            "python": platform.python_version(), "torch": torch.__version__,
            "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}
