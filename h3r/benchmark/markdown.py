"""The report as Markdown: the table of rows and the page around it."""
from __future__ import annotations

from typing import Optional

from .cases import CPU_WORKERS, IMPLEMENTATION_NOTES, OPS
from .host_overhead import markdown_section
from .train_step import markdown_section as train_step_section


def fmt(value: Optional[float], spec: str, suffix: str = "") -> str:
    """``value`` formatted with ``spec`` and ``suffix``, or an em dash for a missing value."""
    return "—" if value is None else f"{value:{spec}}{suffix}"


TABLE_HEADER = ("op", "impl", "B×K×H×W", "dtype", "median ms", "host ms", "GB/s", "% copy BW",
                "× reference", "× naive", "× CPU encoding", "samples/s", "note")


def markdown_table(rows: list[dict]) -> str:
    lines = ["| " + " | ".join(TABLE_HEADER) + " |", "|" + "---|" * len(TABLE_HEADER)]
    for r in rows:
        cells = (
            r["op"], r["impl"], "×".join(map(str, r["shape"])), r["dtype"],
            fmt(r["median_ms"], ".4g"), fmt(r["host_ms"], ".3g"), fmt(r["gbps"], ".4g"), fmt(r["pct_copy_bandwidth"], ".1f"),
            fmt(r["x_vs_reference"], ".2f", "×"), fmt(r["x_vs_naive"], ".2f", "×"),
            fmt(r["x_vs_cpu_encoding"], ".2f", "×"), fmt(r["samples_per_s"], ",.0f"), r["note"].replace("|", "/"),
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
    lines += [f"- **triton tile {elements}/{per_thread}**: the Triton kernel with a candidate GPU tile of {elements} "
              f"elements per program and {per_thread} per thread instead of the tile in use (h3r/benchmark/tiles.py)"
              for elements, per_thread in settings.get("triton_tiles", [])]
    if "host_overhead" in report:
        lines += ["", markdown_section(report["host_overhead"]).rstrip("\n")]
    if "train_step" in report:
        lines += ["", train_step_section(report["train_step"]).rstrip("\n")]
    return "\n".join(lines) + "\n"
