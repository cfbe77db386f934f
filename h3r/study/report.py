"""The study's outputs: ``study.json`` (everything), ``study.md`` (tables), ``study.png`` (two panels per dataset)."""
from __future__ import annotations

import json
import math
from collections import defaultdict
from pathlib import Path
from typing import Any, Optional

import numpy as np

from h3r.study.presets import METHODS, PRESETS

SCHEMA = "h3r-study/1"  # study.json's format
SAMPLED_TARGET = "h3r-sampled-target"  # part A's extra row: one sampled H3R target, read by arg-max
UNRECORDED = "an earlier commit (not recorded)"  # where a row without "scored_at" was scored

# The settings that make a study's grid: where a run's differ from its preset's, its report says so.
GRID_FIELDS = ("datasets", "methods", "strides", "seeds", "backbone", "input_size", "epochs", "batch_size",
               "synthetic_sizes")


def summarise(cells: list[dict[str, Any]], seeds_planned: Optional[int] = None) -> list[dict[str, Any]]:
    """Mean ± standard deviation over seeds of each ``(dataset, method, stride)`` (finished seeds only; the
    sample standard deviation, None for a single seed).

    ``seeds_planned``: the seeds of the grid (a merged study's, also for a method or stride one
    run lacks); None: the cells found for each group."""
    groups: dict[tuple, list[dict[str, Any]]] = defaultdict(list)
    for row in cells:
        groups[(row["dataset"], row["method"], row["stride"])].append(row)
    summary = []
    for (dataset, method, stride), rows in groups.items():
        scored = [row for row in rows if row["metrics"] and row["metric"] in row["metrics"]]
        values = [row["metrics"][row["metric"]] for row in scored]
        finite = [value for value in values if value is not None and math.isfinite(value)]  # None: NaN in JSON
        summary.append({
            "dataset": dataset, "method": method, "stride": stride, "heatmap_size": rows[0]["heatmap_size"],
            "metric": scored[0]["metric"] if scored else None, "seeds": len(finite),
            "seeds_planned": len(rows) if seeds_planned is None else seeds_planned,
            "mean": float(np.mean(finite)) if finite else None,
            "std": float(np.std(finite, ddof=1)) if len(finite) > 1 else None,
            "images_per_s": _mean([row["images_per_s"] for row in scored]),
            "head_decode_ms": _mean([row["head_decode_ms"] for row in scored]),
        })
    return summary


def _mean(values: list[Optional[float]]) -> Optional[float]:
    values = [value for value in values if value is not None]
    return float(np.mean(values)) if values else None


def _format(value: Optional[float], digits: int = 4) -> str:
    return "–" if value is None or not math.isfinite(value) else f"{value:.{digits}f}"


def overridden(settings: dict[str, Any]) -> list[str]:
    """The :data:`GRID_FIELDS` of a run's ``settings`` that differ from its preset's (the command's overrides)."""
    preset = PRESETS.get(settings["preset"])

    def plain(value):
        return list(value) if isinstance(value, (list, tuple)) else value

    return [name for name in GRID_FIELDS
            if preset is not None and name in settings and plain(getattr(preset, name)) != plain(settings[name])]


def markdown(record: dict[str, Any]) -> str:
    settings = record["settings"]
    changed = overridden(settings)
    lines = [f"# h3r study: preset '{settings['preset']}'", "",
             f"{settings['description']}."
             + (f" This run overrides the preset's {', '.join(changed)}: see the grid below." if changed else ""), "",
             *(_provenance(settings) if not settings.get("parts") else [
                 f"- merged from {len(settings['parts'])} runs"
                 + (f" by `{settings['command']}`" if settings.get("command") else "") + ":",
                 *(("  " if index == 0 else "    ") + line for part in settings["parts"]
                   for index, line in enumerate(_provenance(part, seeds=True)))]),
             f"- grid: {', '.join(settings['datasets'])}; backbone {settings['backbone']}, input "
             f"{settings['input_size']} px; strides {settings['strides']}; seeds {settings['seeds']}; "
             f"{settings['epochs']} epochs of batch {settings['batch_size']}"
             + (f"; synthetic sets {settings['synthetic_sizes'][0]} train / {settings['synthetic_sizes'][1]} test"
                if settings.get("synthetic_sizes") else ""), ""]
    lines += ["## Methods", "", "| method | codec | decoder | what it is |", "|---|---|---|---|"]
    lines += [f"| {name} | {METHODS[name].codec} | "
              f"{', '.join(f'{key}={value}' for key, value in METHODS[name].decoder.items()) or '–'} | "
              f"{METHODS[name].label} |" for name in settings["methods"]]
    lines.append("")
    for dataset in settings["datasets"]:
        lines += _part_b_tables(record, dataset, settings)
        lines += _part_a_tables(record, dataset, settings)
    if record["failed_cells"]:
        lines += ["## Failed cells", ""]
        errors = {row["run_dir"]: row["error"] for row in record["cells"] if row["status"] == "failed"}
        lines += [f"- `{run}`: {_error_summary(errors.get(run))}" for run in record["failed_cells"]]
        lines.append("")
    return "\n".join(lines)


def _error_summary(error: Optional[str]) -> str:
    """A failed cell's error on one line: its first line (what failed) and its last non-empty line (the cause)."""
    lines = [line.strip() for line in (error or "").splitlines() if line.strip()]
    if len(lines) > 1:
        return f"{lines[0]} … {lines[-1]}"
    return lines[0] if lines else "(no error recorded)"


def _provenance(run: dict[str, Any], seeds: bool = False) -> list[str]:
    """How a run was made: command, commit, start and wall time, machine (with its seeds, methods
    and strides for a part of a merged study)."""
    machine = run["machine"]
    return [(f"- command: `{run['command']}`" if run.get("command") else "- command: (Python API)")
            + (f" (seeds {run['seeds']}, methods {', '.join(run['methods'])}, strides {run.get('strides')})"
               if seeds else ""),
            f"- commit: {run['commit']}; started {run['started']}; wall time {run['wall_seconds']:.0f} s",
            f"- machine: {machine['cpu']}, {machine['cpu_count']} cores; torch {machine['torch']}"
            + (f"; GPU {machine['cuda']}" if machine.get("cuda") else "")]


def _part_b_tables(record, dataset, settings) -> list[str]:
    summary = [row for row in record["summary"] if row["dataset"] == dataset]
    strides = settings["strides"]
    metric = next((row["metric"] for row in summary if row["metric"]), "metric")
    header = " | ".join(f"stride {s} ({settings['input_size'] // s}×{settings['input_size'] // s})" for s in strides)
    lines = [f"## {dataset}: trained (part B), test {metric}, mean ± std over seeds", "",
             f"| method | {header} |", "|---|" + "---:|" * len(strides)]
    by_key = {(row["method"], row["stride"]): row for row in summary}
    for method in settings["methods"]:
        cells = []
        for stride in strides:
            row = by_key.get((method, stride))
            if row is None or row["mean"] is None:
                cells.append("–")
            else:
                cells.append(f"{row['mean']:.4f}" + (f" ± {row['std']:.4f}" if row["std"] is not None else "")
                             + (f" ({row['seeds']}/{row['seeds_planned']} seeds)" if row["seeds"] < row["seeds_planned"]
                                else ""))
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    lines += ["", *_scoring_commits(record, dataset)]
    lines += [f"### {dataset}: cost", "",
              "Training images/s (whole step, mean over epochs and seeds) and milliseconds of pooling + head + "
              "decoding for a batch of 32 on the study's device (the part of the network that changes with the "
              "stride)." + (" Merged runs: the means mix runs that may have had other machines or loads."
                            if settings.get("parts") else ""), "",
              f"| method | {' | '.join(f'stride {s}: img/s, head+decode ms' for s in strides)} |",
              "|---|" + "---:|" * len(strides)]
    for method in settings["methods"]:
        cells = []
        for stride in strides:
            row = by_key.get((method, stride))
            cells.append("–" if row is None or row["images_per_s"] is None else
                         f"{row['images_per_s']:.0f}, {_format(row['head_decode_ms'], 2)}")
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    lines.append("")
    return lines


def _scoring_commits(record, dataset) -> list[str]:
    """A note on the methods of ``dataset`` whose scores come from more than one commit of the code (a row's
    ``scored_at``; rows without it were scored before it was recorded), else nothing."""
    counts: dict[str, dict[str, int]] = defaultdict(dict)  # method -> commit -> scored cells, in order of the rows
    for row in record["cells"]:
        if row["dataset"] == dataset and row["metrics"]:
            commit = f"`{row['scored_at']}`" if row.get("scored_at") else UNRECORDED
            counts[row["method"]][commit] = counts[row["method"]].get(commit, 0) + 1
    mixed = {method: commits for method, commits in counts.items() if len(commits) > 1}
    if not mixed:
        return []
    return ["Scored by more than one version of the code (a method's decoder may differ between them; "
            "'h3r study ... --collect --rescore' at one commit scores them alike):", "",
            *(f"- {method}: " + ", ".join(f"{count} cell{'s' if count > 1 else ''} at {commit}"
                                         for commit, count in commits.items())
              for method, commits in mixed.items()), ""]


def _part_a_tables(record, dataset, settings) -> list[str]:
    rows = [row for row in record["quantization"] if row["dataset"] == dataset]
    strides = settings["strides"]
    lines = []
    for points in ("ground truth", "uniform"):
        chosen = {(row["method"], row["stride"]): row for row in rows if row["points"] == points}
        if not chosen:
            continue
        by_stride = {}  # the keypoint counts are the same in every row of a stride
        for (_, stride), row in chosen.items():
            by_stride.setdefault(stride, row)
        counts = ", ".join(f"stride {s}: {by_stride[s]['keypoints']} on the map, "
                           f"{by_stride[s]['outside_map']} beyond it" for s in strides if s in by_stride)
        lines += [f"## {dataset}: quantization only (part A), {points} keypoints, mean (max) 2-D error in input "
                  f"pixels", "", f"Keypoints: {counts}.", "",
                  "| method | " + " | ".join(f"stride {s}" for s in strides) + " |", "|---|" + "---:|" * len(strides)]
        for method in [*settings["methods"], SAMPLED_TARGET]:
            cells = []
            for stride in strides:
                row = chosen.get((method, stride))
                if row is None:
                    cells.append("–")
                elif not row["applicable"]:
                    cells.append("n/a")
                else:
                    cell = f"{_format(row['mean_error_px'], 3)} ({_format(row['max_error_px'], 2)})"
                    if row.get("theory_mean_error_px") is not None:
                        cell += f"; theory {row['theory_mean_error_px']:.3f}"
                    if row.get("interior_mean_error_px") is not None:
                        cell += f"; interior {row['interior_mean_error_px']:.3f}"
                    cells.append(cell)
            if any(cell != "–" for cell in cells):
                lines.append(f"| {method} | " + " | ".join(cells) + " |")
        sampled = [chosen[(SAMPLED_TARGET, s)] for s in strides if (SAMPLED_TARGET, s) in chosen]
        if sampled:
            lines += ["", "The sampled H3R target (one randomized rounding, read by arg-max): mean error vector "
                          "(± its standard error) and per-axis RMS against the theory "
                          "`s·sqrt(mean ε(1−ε))`, input pixels:", "",
                      "| stride | mean error (x, y) | ± | RMS (x, y) | theory RMS (x, y) |", "|---:|---|---|---|---|"]
            for row in sampled:
                lines.append(f"| {row['stride']} | ({row['mean_vector_px'][0]:+.3f}, {row['mean_vector_px'][1]:+.3f}) "
                             f"| ({row['mean_vector_standard_error_px'][0]:.3f}, "
                             f"{row['mean_vector_standard_error_px'][1]:.3f}) | ({row['rms_axis_px'][0]:.3f}, "
                             f"{row['rms_axis_px'][1]:.3f}) | ({row['theory_rms_axis_px'][0]:.3f}, "
                             f"{row['theory_rms_axis_px'][1]:.3f}) |")
        lines.append("")
    return lines


def method_colours() -> dict[str, Any]:
    """A distinct colour for each method and part A's sampled target, the same in every panel: tab10's ten, then
    tab20's lighter shades of them."""
    import matplotlib

    palette = [*matplotlib.colormaps["tab10"].colors, *matplotlib.colormaps["tab20"].colors[1::2]]
    return dict(zip([*METHODS, SAMPLED_TARGET], palette))


def plot(record: dict[str, Any], path: Path) -> Path:
    """Per dataset: the trained metric against heatmap side (error bars: std over seeds, none for a single
    seed), and part A's error."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    settings = record["settings"]
    datasets = settings["datasets"]
    colour = method_colours()
    figure, axes = plt.subplots(len(datasets), 2, figsize=(11, 4 * len(datasets)), squeeze=False)
    sides = sorted({settings["input_size"] // s for s in settings["strides"]})
    for row_axes, dataset in zip(axes, datasets):
        trained, quantization = row_axes
        summary = [row for row in record["summary"] if row["dataset"] == dataset and row["mean"] is not None]
        metric = summary[0]["metric"] if summary else "metric"
        for method in settings["methods"]:
            points = sorted((row["heatmap_size"], row["mean"], row["std"]) for row in summary
                            if row["method"] == method)
            if points:
                x, y, _ = zip(*points)
                trained.plot(x, y, marker="o", label=method, color=colour[method])
                spread = [point for point in points if point[2] is not None]  # no error bar for a single seed
                if spread:
                    x, y, error = zip(*spread)
                    trained.errorbar(x, y, yerr=error, fmt="none", capsize=3, color=colour[method])
        trained.set(xscale="log", xlabel="heatmap side (cells)", ylabel=f"test {metric}",
                    title=f"{dataset}: trained, {settings['backbone']}, {settings['input_size']} px input")
        trained.set_xticks(sides, [str(side) for side in sides], minor=False)
        trained.set_xticks([], minor=True)
        if summary:  # no cell scored (all failed): an empty panel, no legend
            trained.legend(fontsize=8)
        part_a = [row for row in record["quantization"]
                  if row["dataset"] == dataset and row["points"] == "ground truth" and row["applicable"]]
        for method in [*settings["methods"], SAMPLED_TARGET]:
            points = sorted((row["heatmap_size"], row["mean_error_px"]) for row in part_a
                            if row["method"] == method and row["mean_error_px"] is not None)
            if points:
                x, y = zip(*points)
                quantization.plot(x, y, marker="o", label=method, color=colour[method],
                                  linestyle=":" if method == SAMPLED_TARGET else "-")
        theory = sorted((row["heatmap_size"], row["theory_mean_error_px"]) for row in part_a
                        if row["method"] == "argmax" and row.get("theory_mean_error_px") is not None)
        if theory:
            x, y = zip(*theory)
            quantization.plot(x, y, color="grey", linestyle="--", label="0.383 × stride (uniform offsets)")
        quantization.set(xscale="log", xlabel="heatmap side (cells)", ylabel="mean 2-D error (input px)",
                         title=f"{dataset}: quantization alone (truth encoded, decoded)")
        quantization.set_xticks(sides, [str(side) for side in sides], minor=False)
        quantization.set_xticks([], minor=True)
        quantization.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


def write_outputs(record: dict[str, Any], out: Path) -> list[Path]:
    """Writes ``study.png``, ``study.md`` and, last, ``study.json`` into ``out`` (a report that fails leaves no
    study.json behind, which would refuse a second try of ``--merge``); returns their paths."""
    out = Path(out)
    json_path, markdown_path, png_path = out / "study.json", out / "study.md", out / "study.png"
    text = json.dumps(_finite(record), indent=2, allow_nan=False) + "\n"
    report = markdown(record) + "\n"
    plot(record, png_path)
    markdown_path.write_text(report)
    json_path.write_text(text)
    return [json_path, markdown_path, png_path]


def _finite(value):
    """``value`` with non-finite floats as None (strict JSON) and tuples as lists."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: _finite(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(item) for item in value]
    return value
