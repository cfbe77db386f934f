"""One run of the report: measure what the settings ask for, assemble the JSON-ready report,
write ``report.json`` and ``report.md``."""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from h3r_kernels.backends import interpreting

from .cases import CPU_WORKERS, GAUSSIAN_SIGMA, IMPLEMENTATION_NOTES, OPS, SEED, TOPK
from .facts import git_commit, run_facts
from .host_overhead import measure_host_overhead
from .train_step import measure_train_step
from .markdown import markdown_report
from .measure import add_derived_columns, measure_cpu_encoding, measure_ops
from .timing import Timer, copy_bandwidth


def run(settings: argparse.Namespace, log=print) -> dict:
    """Measure everything ``settings`` asks for and return the report (a JSON-ready dict)."""
    started = time.perf_counter()
    device = settings.device
    timer = Timer(device, settings.repeats, settings.warmup)
    copy = copy_bandwidth(timer, device, settings.copy_mib << 20)
    log(f"copy bandwidth: {copy['gbps']:.1f} GB/s")
    throughput = not getattr(settings, "skip_throughput", False)
    rows = measure_ops(settings, timer, log) if throughput else []
    if throughput and CPU_WORKERS in settings.backends:
        rows += measure_cpu_encoding(settings, log)
    add_derived_columns(rows, copy["gbps"])
    on_cuda = device.type == "cuda"
    host_overhead = None
    if getattr(settings, "host_overhead", False):
        host_overhead = measure_host_overhead(device, settings.host_shape, settings.host_calls, settings.host_rounds,
                                              log=log)
    train_step = None
    if getattr(settings, "train_step", False):
        train_step = measure_train_step(device, settings.step_shape, settings.step_calls, settings.step_rounds, log=log)
    report = {
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
            "triton_tiles": [list(tile) for tile in getattr(settings, "triton_tiles", None) or []],
            "host_overhead": bool(getattr(settings, "host_overhead", False)),
            "train_step": bool(getattr(settings, "train_step", False)),
            "skip_throughput": not throughput,
        },
        "performance_claim": on_cuda and not interpreting(),
        "copy_bandwidth": copy,
        "ops": {s.name: {"what": s.what, "counted_passes": s.counted_passes, "op_passes": s.op_passes,
                         "note": s.passes_note} for s in OPS.values()},
        "implementations": {name: IMPLEMENTATION_NOTES[name] for name in settings.backends},
        "rows": rows,
    }
    if host_overhead is not None:
        report["host_overhead"] = host_overhead
    if train_step is not None:
        report["train_step"] = train_step
    report["elapsed_s"] = time.perf_counter() - started
    return report


def write_report(report: dict, out: Path) -> tuple[Path, Path]:
    """Write ``out/report.json`` and ``out/report.md``; return their paths."""
    out.mkdir(parents=True, exist_ok=True)
    json_path, md_path = out / "report.json", out / "report.md"
    json_path.write_text(json.dumps(report, indent=2, allow_nan=False) + "\n", encoding="utf-8")
    md_path.write_text(markdown_report(report), encoding="utf-8")
    return json_path, md_path
