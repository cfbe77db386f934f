"""``h3r study --merge``: one study from several runs of the same grid that differ only in their
seeds, methods or strides (seeds trained on other machines or days, a method or stride added later). The cells are
put together as they were scored, the summary (mean ± std over seeds) is recomputed, and the
merged ``study.json`` keeps each run's command, commit, machine and wall time under
``settings.parts``."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional, Sequence

from h3r.study.presets import METHODS
from h3r.study.report import SCHEMA, summarise

UNITED = ("methods", "seeds", "strides")  # the settings a merge takes the union of
PROVENANCE = ("command", "commit", "machine", "started", "wall_seconds", "jobs", "devices", "data_root")
UNCOMPARED = (*UNITED, *PROVENANCE, "parts", "description")  # the preset's prose changes across commits


def read_study(path: str | Path) -> dict[str, Any]:
    """A ``study.json`` (or a folder holding one), checked for its schema."""
    path = Path(path)
    if path.is_dir():
        path = path / "study.json"
    try:
        record = json.loads(path.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: no such study.json") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"{path}: not a study.json ({error})") from None
    if not isinstance(record, dict) or record.get("schema") != SCHEMA:
        raise ValueError(f"{path}: not a study.json (schema {SCHEMA!r} expected)")
    return record


def _parts(path: Path, settings: dict[str, Any]) -> list[dict[str, Any]]:
    """Where a run's cells come from: its own provenance, or a merged run's parts."""
    if settings.get("parts"):
        return list(settings["parts"])
    return [{"file": str(path), "seeds": settings["seeds"], "methods": settings["methods"], "strides": settings["strides"],
             **{key: settings.get(key) for key in PROVENANCE}}]


def merge_studies(paths: Sequence[str | Path], command: Optional[str] = None) -> dict[str, Any]:
    """The study record of the runs in ``paths`` together (see the module's docstring).

    Raises ``ValueError`` naming the file and setting where the grids differ otherwise, or the
    cell that two runs both hold."""
    if len(paths) < 2:
        raise ValueError(f"--merge: expected at least two study.json files, got {len(paths)}")
    records = [(Path(path), read_study(path)) for path in paths]
    first_path, first = records[0]
    compared = set(first["settings"]) - set(UNCOMPARED)
    for path, record in records[1:]:
        for key in sorted(compared | (set(record["settings"]) - set(UNCOMPARED))):
            mine, theirs = record["settings"].get(key), first["settings"].get(key)
            if mine != theirs:
                raise ValueError(f"{path}: settings.{key} is {mine!r}, {first_path} has {theirs!r}; only runs of "
                                 f"the same grid that differ in their seeds, methods or strides can be merged")
    cells, owner, quantization, seen_rows = [], {}, [], set()
    for path, record in records:
        for row in record["cells"]:
            key = (row["dataset"], row["method"], row["stride"], row["seed"])
            if key in owner:
                raise ValueError(f"{path}: the cell (dataset, method, stride, seed) = {key} is also in {owner[key]}")
            owner[key] = path
            cells.append(row)
        for row in record["quantization"]:  # part A depends on the data, strides and codecs, not on seeds
            key = (row["dataset"], row["points"], row["stride"], row["method"])
            if key not in seen_rows:
                seen_rows.add(key)
                quantization.append(row)
    settings_of = [record["settings"] for _, record in records]
    parts = [part for (path, record) in records for part in _parts(path, record["settings"])]
    commits = list(dict.fromkeys(part["commit"] for part in parts if part.get("commit")))
    settings = {
        **first["settings"],
        "methods": [name for name in METHODS if any(name in s["methods"] for s in settings_of)],
        "seeds": sorted({seed for s in settings_of for seed in s["seeds"]}),
        "strides": sorted({stride for s in settings_of for stride in s["strides"]}),
        "command": command, "commit": "+".join(commits), "machine": first["settings"]["machine"],
        "started": min(part["started"] for part in parts if part.get("started")),
        "wall_seconds": round(sum(part["wall_seconds"] or 0.0 for part in parts), 1),
        "jobs": None, "devices": [], "data_root": first["settings"].get("data_root"), "parts": parts,
    }
    return {
        "schema": SCHEMA,
        "settings": settings,
        "quantization": quantization,
        "cells": cells,
        "summary": summarise(cells, seeds_planned=len(settings["seeds"])),
        "failed_cells": sorted({run for _, record in records for run in record["failed_cells"]}),
    }
