"""Two throughput reports of one GPU session side by side: ``python -m h3r.benchmark.compare NEW BASELINE``.

``scripts/gpu_check.sh`` times the working tree, then (with ``BASELINE=folder``) an older commit's
tree (``scripts/baseline_tree.sh``) on the same card, one process after the other: the only
way to compare a kernel with the one it replaced, since figures from different sessions (or
cards) must not be compared. This joins the two ``report.json`` files on (op, impl, shape,
dtype) and gives, per row, both medians, the speed-up (baseline time / new time) and both
shares of the copy bandwidth (each report's own copy measurement). Rows of an implementation
both reports timed but present in only one are listed, not dropped silently.

Writes ``compare.json`` and ``compare.md`` into ``--out`` and prints the table.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Optional, Sequence

from .markdown import fmt

ROW_KEYS = ("op", "impl", "shape", "dtype", "median_ms", "pct_copy_bandwidth")


def load_report(path: str | Path) -> dict:
    """A ``report.json`` of :mod:`h3r.benchmark`, checked for what the comparison reads."""
    path = Path(path)
    try:
        report = json.loads(path.read_text(encoding="utf-8"))
    except OSError as error:
        raise ValueError(f"{path}: cannot read the report ({error.strerror or error})") from None
    except json.JSONDecodeError as error:
        raise ValueError(f"{path}: not JSON (line {error.lineno}: {error.msg})") from None
    if not isinstance(report, dict) or not isinstance(report.get("rows"), list):
        raise ValueError(f"{path}: not a benchmark report (no 'rows' list)")
    for number, row in enumerate(report["rows"]):
        missing = [key for key in ROW_KEYS if key not in row]
        if missing:
            raise ValueError(f"{path}: rows[{number}] lacks {', '.join(missing)}")
    return report


def _shape(shape) -> str:
    return "×".join(map(str, shape))


def _key(row: dict) -> tuple:
    return row["op"], row["impl"], _shape(row["shape"]), row["dtype"]


def _commit(report: dict) -> str:
    return str(report.get("facts", {}).get("git_commit", "unknown"))


def compare(new: dict, baseline: dict) -> dict:
    """``{"rows": [...], "only_new": [...], "only_baseline": [...], ...}``: the rows of ``new``
    that ``baseline`` also has (in ``new``'s order), with ``speedup`` = baseline median / new median.
    ``only_new``/``only_baseline``: the rows of an implementation both reports timed that the other lacks."""
    old_rows = {_key(row): row for row in baseline["rows"]}
    new_keys = {_key(row) for row in new["rows"]}
    old_impls, new_impls = {key[1] for key in old_rows}, {key[1] for key in new_keys}
    rows = []
    for row in new["rows"]:
        old = old_rows.get(_key(row))
        if old is None:
            continue
        ms, old_ms = row["median_ms"], old["median_ms"]
        rows.append({
            "op": row["op"], "impl": row["impl"], "shape": row["shape"], "dtype": row["dtype"],
            "baseline_ms": old_ms, "ms": ms,
            "speedup": old_ms / ms if ms and old_ms is not None else None,
            "baseline_pct_copy_bandwidth": old["pct_copy_bandwidth"], "pct_copy_bandwidth": row["pct_copy_bandwidth"],
        })
    return {
        "new": {"commit": _commit(new), "copy_bandwidth_gbps": new.get("copy_bandwidth", {}).get("gbps")},
        "baseline": {"commit": _commit(baseline), "copy_bandwidth_gbps": baseline.get("copy_bandwidth", {}).get("gbps")},
        "performance_claim": bool(new.get("performance_claim")) and bool(baseline.get("performance_claim")),
        "device": new.get("facts", {}).get("device_name"),
        "baseline_device": baseline.get("facts", {}).get("device_name"),
        "rows": rows,
        "only_new": ["/".join(key) for key in map(_key, new["rows"]) if key not in old_rows and key[1] in old_impls],
        "only_baseline": ["/".join(key) for key in old_rows if key not in new_keys and key[1] in new_impls],
    }


def markdown(result: dict) -> str:
    new, old = result["new"], result["baseline"]
    lines = [
        f"# {new['commit'][:12]} against the baseline {old['commit'][:12]}",
        "",
        f"- device: {result['device']} (baseline run: {result['baseline_device']})",
        f"- copy bandwidth: {fmt(new['copy_bandwidth_gbps'], '.1f', ' GB/s')} "
        f"(baseline run: {fmt(old['copy_bandwidth_gbps'], '.1f', ' GB/s')})",
        "- speed-up = baseline median / new median (> 1: the new code is faster)",
        "",
        "| op | impl | B×K×H×W | dtype | baseline ms | ms | speed-up | baseline % copy BW | % copy BW |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in result["rows"]:
        lines.append(
            f"| {r['op']} | {r['impl']} | {_shape(r['shape'])} | {r['dtype']} | "
            f"{fmt(r['baseline_ms'], '.4g')} | {fmt(r['ms'], '.4g')} | {fmt(r['speedup'], '.2f', '×')} | "
            f"{fmt(r['baseline_pct_copy_bandwidth'], '.1f')} | {fmt(r['pct_copy_bandwidth'], '.1f')} |"
        )
    for name, label in (("only_new", "only in the new report"), ("only_baseline", "only in the baseline report")):
        if result[name]:
            lines += ["", f"{label}: {', '.join(result[name])}"]
    if not result["performance_claim"]:
        lines += ["", "> A CPU run (or Triton interpreter) on at least one side: not a performance claim."]
    if result["device"] != result["baseline_device"]:
        lines += ["", "> The two reports come from different devices: these ratios compare nothing."]
    return "\n".join(lines) + "\n"


def main(argv: Optional[Sequence[str]] = None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m h3r.benchmark.compare", description=__doc__.split("\n\n")[0])
    parser.add_argument("new", help="report.json of the working tree")
    parser.add_argument("baseline", help="report.json of the baseline tree (same session, same card)")
    parser.add_argument("--out", default=None, help="folder for compare.json and compare.md (default: print only)")
    args = parser.parse_args(argv)
    try:
        result = compare(load_report(args.new), load_report(args.baseline))
    except ValueError as error:
        parser.error(str(error))
    if not result["rows"]:
        parser.error(f"{args.new} and {args.baseline} have no row in common (op, impl, shape, dtype)")
    text = markdown(result)
    if args.out is not None:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "compare.json").write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
        (out / "compare.md").write_text(text, encoding="utf-8")
    sys.stdout.write(text)
    return result


if __name__ == "__main__":
    main()
