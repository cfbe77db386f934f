"""``h3r study --merge``: one study from several runs of the same grid that differ only in their
seeds, methods or strides (seeds trained on other machines or days, a method or stride added later). The cells are
put together as they were scored, the summary (mean ± std over seeds) is recomputed, and the
merged ``study.json`` keeps each run's command, commit, machine and wall time under
``settings.parts``. Part A is recomputed by every run: the runs' rows of one part A key must agree."""
from __future__ import annotations

import json
import math
import shlex
from pathlib import Path
from typing import Any, NoReturn, Optional, Sequence, Union, get_args, get_origin

from h3r.study.presets import METHODS
from h3r.study.report import SAMPLED_TARGET, SCHEMA, summarise

UNITED = ("methods", "seeds", "strides")  # the settings a merge takes the union of
PROVENANCE = ("command", "commit", "machine", "started", "wall_seconds", "jobs", "devices", "data_root")
UNCOMPARED = (*UNITED, *PROVENANCE, "parts", "description")  # the preset's prose changes across commits

# Part A's numbers agree when they differ by at most this fraction of the larger of the two values and the input
# size: its coordinates are float32 input pixels, so values near 0 (h3r-linear's lossless error, about 4e-4 px on
# 128-px inputs) carry their rounding, which commit 825282d's linear decoder moved by up to 5e-5 px.
PART_A_TOLERANCE = 1e-6

# What a study.json must hold for a merge and its report; float also takes an int, Optional also None (NaN).
RECORD_FIELDS = {"settings": dict, "quantization": list, "cells": list, "failed_cells": list[str]}
SETTINGS_FIELDS = {
    "preset": str, "description": str, "datasets": list[str], "methods": list[str], "strides": list[int],
    "seeds": list[int], "backbone": str, "input_size": int, "epochs": int, "batch_size": int,
    "command": Optional[str], "commit": str, "machine": dict, "started": str, "wall_seconds": float,
    "data_root": Optional[str],
}
PART_FIELDS = {"file": str, "seeds": list[int], "methods": list[str], "strides": list[int], "command": Optional[str],
               "commit": str, "machine": dict, "started": str, "wall_seconds": float, "data_root": Optional[str]}
MACHINE_FIELDS = {"cpu": str, "cpu_count": int, "torch": str}
CELL_FIELDS = {"dataset": str, "method": str, "stride": int, "heatmap_size": int, "seed": int, "status": str,
               "metrics": Optional[dict], "metric": Optional[str], "images_per_s": Optional[float],
               "head_decode_ms": Optional[float], "run_dir": str, "error": Optional[str]}
CELL_OPTIONAL_FIELDS = {"scored_at": Optional[str]}  # added later: older records lack it
PART_A_FIELDS = {"dataset": str, "points": str, "stride": int, "heatmap_size": int, "method": str,
                 "applicable": bool, "keypoints": int, "outside_map": int}
PART_A_ERROR_FIELDS = {"mean_error_px": Optional[float], "max_error_px": Optional[float]}  # of applicable rows
PART_A_OPTIONAL_FIELDS = {"theory_mean_error_px": Optional[float], "interior_mean_error_px": Optional[float]}
SAMPLED_FIELDS = {name: list[float] for name in ("mean_vector_px", "mean_vector_standard_error_px", "rms_axis_px",
                                                 "theory_rms_axis_px")}


def read_study(path: str | Path) -> dict[str, Any]:
    """A ``study.json`` (or a folder holding one), checked for everything a merge and its report read."""
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
    _check_record(path, record)
    return record


def _check_record(path: Path, record: dict[str, Any]) -> None:
    """Raises ``ValueError`` naming ``path`` and the first missing or malformed key of ``record``."""
    _check(path, record, RECORD_FIELDS, "")
    settings = record["settings"]
    _check(path, settings, SETTINGS_FIELDS, "settings", optional={"parts": list})
    _check(path, settings["machine"], MACHINE_FIELDS, "settings.machine")
    unknown = [name for name in settings["methods"] if name not in METHODS]
    if unknown:
        _refuse(path, f"settings.methods has unknown method(s) {', '.join(unknown)} (this version knows "
                      f"{', '.join(METHODS)})")
    for index, part in enumerate(settings.get("parts", [])):
        _check(path, part, PART_FIELDS, f"settings.parts[{index}]")
        _check(path, part["machine"], MACHINE_FIELDS, f"settings.parts[{index}].machine")
    for index, row in enumerate(record["cells"]):
        where = f"cells[{index}]"
        _check(path, row, CELL_FIELDS, where, optional=CELL_OPTIONAL_FIELDS)
        if row["method"] not in METHODS:
            _refuse(path, f"{where}.method is {row['method']!r}, not a method this version knows")
    for index, row in enumerate(record["quantization"]):
        where = f"quantization[{index}]"
        _check(path, row, PART_A_FIELDS, where, optional=PART_A_OPTIONAL_FIELDS)
        if row["applicable"]:
            _check(path, row, PART_A_ERROR_FIELDS, where)
        if row["method"] == SAMPLED_TARGET:
            _check(path, row, SAMPLED_FIELDS, where)


def _check(path: Path, mapping: Any, fields: dict[str, Any], where: str,
           optional: Optional[dict[str, Any]] = None) -> None:
    """Raises ``ValueError`` unless ``mapping`` is a dict holding each of ``fields``, and those of ``optional``
    it has, with a value of its kind."""
    if not isinstance(mapping, dict):
        _refuse(path, f"{where or 'the file'} is {mapping!r}, expected a JSON object")
    for key, kind in {**fields, **{key: kind for key, kind in (optional or {}).items() if key in mapping}}.items():
        name = f"{where}.{key}" if where else key
        if key not in mapping:
            _refuse(path, f"no {name}")
        if not _conforms(mapping[key], kind):
            _refuse(path, f"{name} is {mapping[key]!r}, expected {_kind_name(kind)}")


def _refuse(path: Path, problem: str) -> NoReturn:
    raise ValueError(f"{path}: {problem}; merge the study.json files that 'h3r study' wrote (re-run a damaged run's "
                     f"command with --collect to write its study.json again)")


def _conforms(value: Any, kind: Any) -> bool:
    if get_origin(kind) is Union:
        return any(_conforms(value, option) for option in get_args(kind))
    if get_origin(kind) is list:
        return isinstance(value, list) and all(_conforms(item, get_args(kind)[0]) for item in value)
    if kind is type(None):
        return value is None
    if kind in (int, float):  # JSON's numbers: an int is a float too, a bool is neither
        return isinstance(value, (int, float) if kind is float else int) and not isinstance(value, bool)
    return isinstance(value, kind)


def _kind_name(kind: Any) -> str:
    if get_origin(kind) is Union:
        return " or ".join(_kind_name(option) for option in get_args(kind))
    if get_origin(kind) is list:
        return f"a list of {_kind_name(get_args(kind)[0])}"
    names = {type(None): "null", str: "a string", int: "an integer", float: "a number", bool: "true or false",
             dict: "a JSON object", list: "a list"}
    return names[kind]


def _parts(path: Path, settings: dict[str, Any]) -> list[dict[str, Any]]:
    """Where a run's cells come from: its own provenance, or a merged run's parts."""
    if settings.get("parts"):
        return list(settings["parts"])
    return [{"file": str(path), "seeds": settings["seeds"], "methods": settings["methods"], "strides": settings["strides"],
             **{key: settings.get(key) for key in PROVENANCE}}]


def _same_training(mine: Any, theirs: Any) -> bool:
    """Whether two runs' arguments after '--' train alike (``--lr 3e-3 --sigma 2`` and ``--sigma 2 --lr 0.003``):
    the values ``h3r train`` parses from each (each run's cells have checked them against its grid)."""
    from h3r.cli import parse_train_arguments

    def values(arguments) -> dict[str, Any]:
        parsed = vars(parse_train_arguments(["train", *arguments])[0])
        return {name: value for name, value in parsed.items() if name != "command_parsers"}  # the parsers themselves

    try:
        return values(mine) == values(theirs)
    except (ValueError, TypeError):  # not arguments h3r train takes: compared as written
        return False


def _differs(mine: Any, theirs: Any, scale: float) -> bool:
    """Whether two values of a part A field differ: numbers by more than :data:`PART_A_TOLERANCE` of the larger of
    them and ``scale``, a number against NaN (None in JSON), lists in any item; text (notes) is not compared."""
    if isinstance(mine, list) and isinstance(theirs, list):
        return len(mine) != len(theirs) or any(_differs(a, b, scale) for a, b in zip(mine, theirs))
    if isinstance(mine, str) and isinstance(theirs, str):
        return False
    if _conforms(mine, Optional[float]) and _conforms(theirs, Optional[float]) and (mine, theirs) != (None, None):
        a, b = (math.nan if value is None else float(value) for value in (mine, theirs))
        if math.isnan(a) or math.isnan(b):
            return math.isnan(a) != math.isnan(b)
        return abs(a - b) > PART_A_TOLERANCE * max(abs(a), abs(b), scale)
    return mine != theirs


def _collect_advice(path: Path, record: dict[str, Any]) -> str:
    """How to recompute the part A of the run in ``path``: its command with ``--collect``, at the current commit."""
    settings = record["settings"]
    if settings.get("parts"):
        return (f"re-run the folders of {path}'s parts (settings.parts) with 'h3r study ... --collect' at the current "
                f"commit and merge their new study.json files instead")
    words = shlex.split(settings["command"] or "")
    if words[:2] == ["h3r", "study"]:
        command = shlex.join(words if "--collect" in words else [*words[:2], "--collect", *words[2:]])
    else:
        command = "h3r study ... --collect (with that run's options and --out)"
    return f"re-run {path}'s folder with '{command}' at the current commit and merge its new study.json instead"


def _merge_part_a(records: list[tuple[Path, dict[str, Any]]], input_size: int) -> list[dict[str, Any]]:
    """The part A rows of every key ``(dataset, points, stride, method)`` once; ``ValueError`` where two runs'
    rows of a key differ (see :func:`_differs`), naming both files, the key, the field and both values."""
    rows: dict[tuple, tuple[Path, dict[str, Any], dict[str, Any]]] = {}
    for path, record in records:
        for row in record["quantization"]:  # part A depends on the data, strides and codecs, not on seeds
            key = (row["dataset"], row["points"], row["stride"], row["method"])
            if key not in rows:
                rows[key] = (path, record, row)
                continue
            first_path, first_record, first = rows[key]
            for field in sorted(set(row) & set(first)):
                if _differs(first[field], row[field], input_size):
                    older = min((first_path, first_record), (path, record),
                                key=lambda pair: pair[1]["settings"]["started"])
                    raise ValueError(
                        f"{path}: part A row (dataset, points, stride, method) = {key} has {field} {row[field]!r}, "
                        f"{first_path} has {first[field]!r}: the runs computed part A with different code, and a "
                        f"merged study keeps one row; {_collect_advice(*older)}")
    return [row for _, _, row in rows.values()]


def merge_studies(paths: Sequence[str | Path], command: Optional[str] = None) -> dict[str, Any]:
    """The study record of the runs in ``paths`` together (see the module's docstring).

    Raises ``ValueError`` naming the file and key of a malformed input, the file and setting where the
    grids differ otherwise, the cell that two runs both hold, or the part A row on which they disagree."""
    if len(paths) < 2:
        raise ValueError(f"--merge: expected at least two study.json files, got {len(paths)}")
    records = [(Path(path), read_study(path)) for path in paths]
    first_path, first = records[0]
    compared = set(first["settings"]) - set(UNCOMPARED)
    for path, record in records[1:]:
        for key in sorted(compared | (set(record["settings"]) - set(UNCOMPARED))):
            mine, theirs = record["settings"].get(key), first["settings"].get(key)
            if mine != theirs and not (key == "train_args" and _same_training(mine, theirs)):
                raise ValueError(f"{path}: settings.{key} is {mine!r}, {first_path} has {theirs!r}; only runs of "
                                 f"the same grid that differ in their seeds, methods or strides can be merged")
    cells, owner = [], {}
    for path, record in records:
        for row in record["cells"]:
            key = (row["dataset"], row["method"], row["stride"], row["seed"])
            if key in owner:
                raise ValueError(f"{path}: the cell (dataset, method, stride, seed) = {key} is also in {owner[key]}")
            owner[key] = path
            cells.append(row)
    quantization = _merge_part_a(records, first["settings"]["input_size"])
    settings_of = [record["settings"] for _, record in records]
    parts = [part for (path, record) in records for part in _parts(path, record["settings"])]
    commits = list(dict.fromkeys(part["commit"] for part in parts if part.get("commit")))
    settings = {
        **first["settings"],
        "methods": [name for name in METHODS if any(name in s["methods"] for s in settings_of)],
        "seeds": sorted({seed for s in settings_of for seed in s["seeds"]}),
        "strides": sorted({stride for s in settings_of for stride in s["strides"]}),
        "command": command, "commit": "+".join(commits), "machine": first["settings"]["machine"],
        "started": min(part["started"] for part in parts),
        "wall_seconds": round(sum(part["wall_seconds"] for part in parts), 1),
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
