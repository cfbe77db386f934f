"""``h3r study --merge`` and the study's report: part A rows that disagree, malformed inputs, the commits that
scored each method, failed cells, single seeds, the plot's colours, and the options --merge and --jobs refuse."""
import json
import re
from pathlib import Path

import matplotlib.axes
import pytest

from h3r.cli import main
from h3r.study.merge import merge_studies
from h3r.study.presets import METHODS
from h3r.study.report import SAMPLED_TARGET, markdown, method_colours, plot, summarise

STUDIES = Path(__file__).resolve().parent.parent / "docs" / "study"


def _study(name="pose-128-e24.json"):
    return json.loads((STUDIES / name).read_text())


def _with_seed(record, seed, shift=0.0, commit="abc1234"):
    """``record`` as if trained with another ``seed`` at ``commit``: every score moved by ``shift``."""
    record = json.loads(json.dumps(record))
    record["settings"]["seeds"], record["settings"]["commit"] = [seed], commit
    record["settings"]["started"] = "2030-01-01T00:00:00+00:00"  # after the committed runs
    for row in record["cells"]:
        row["seed"] = seed
        row["metrics"] = {name: value + shift for name, value in row["metrics"].items()}
    return record


def _write(tmp_path, name, record):
    path = tmp_path / name
    path.write_text(json.dumps(record))
    return str(path)


def _part_a_row(record, method="argmax", stride=4, points="ground truth"):
    return next(row for row in record["quantization"]
                if (row["method"], row["stride"], row["points"]) == (method, stride, points))


# Part A: every run recomputes it, so two runs' rows of one key must agree


@pytest.mark.parametrize("field, value, shown", [
    ("mean_error_px", 1.5211488008499146 + 2e-4, "mean_error_px 1.52134"),  # tolerance: 1e-6 x 128 px
    ("mean_error_px", None, "mean_error_px None"),  # NaN, as study.json stores it
    ("mean_vector_px", [-0.02, -0.0037342640571296215], "mean_vector_px [-0.02, "),
    ("keypoints", 5101, "keypoints 5101"),
])
def test_part_a_rows_that_differ_are_refused_naming_both_files(tmp_path, capsys, field, value, shown):
    later = _with_seed(_study(), 1)
    row = _part_a_row(later)
    assert row["mean_error_px"] == 1.5211488008499146
    row[field] = value
    runs = [str(STUDIES / "pose-128-e24.json"), _write(tmp_path, "seed1.json", later)]
    assert main(["study", "--merge", *runs, "--out", str(tmp_path / "m")]) == 2
    error = capsys.readouterr().err
    assert f"{runs[1]}: part A row (dataset, points, stride, method) = ('synthetic-pose', 'ground truth', 4, " \
           f"'argmax') has {shown}" in error
    assert f"{runs[0]} has " in error
    # the older run (b8a00af's) is the one to re-collect, with its own command
    assert (f"re-run {runs[0]}'s folder with 'h3r study --collect --dataset synthetic-pose --input-size 128 "
            f"--strides 4,8 --seeds 0 --epochs 24 --methods argmax,quarter,h3r,h3r-linear --out ") in error
    assert "at the current commit" in error and not (tmp_path / "m").exists()


def test_part_a_rows_that_agree_to_their_rounding_are_kept_once(tmp_path):
    first = _study()
    later = _with_seed(first, 1)
    _part_a_row(later)["mean_error_px"] *= 1 + 1e-7  # float32's last bits
    _part_a_row(later, "h3r-linear")["max_error_px"] += 5e-5  # near 0: rounding of 128-px float32 coordinates
    _part_a_row(later, "argmax")["note"] = "reworded"  # prose is not compared
    merged = merge_studies([STUDIES / "pose-128-e24.json", _write(tmp_path, "seed1.json", later)])
    assert merged["quantization"] == first["quantization"]  # the first run's rows, once


@pytest.mark.parametrize("runs", [
    ("pose-128-e48.json", "pose-128-e48-seed1.json"),  # h3r-linear's part A from before and after 825282d
    ("faces-e24.json", "faces-e24-udp-rescored.json"),
    ("faces-e24-local.json", "faces-e24-udp-rescored.json"),
    ("pose-128-e48-h3r-gaussian.json", "pose-128-e48-h3r-gaussian-seed1.json"),
])
def test_the_documented_merges_still_merge(runs):
    merged = merge_studies([STUDIES / name for name in runs])
    assert merged["settings"]["seeds"] == [0, 1]


def test_the_documented_seed_merge_reproduces_its_record():
    merged = merge_studies([STUDIES / "pose-128-e48.json", STUDIES / "pose-128-e48-seed1.json"])
    recorded = _study("pose-128-e48-2seeds.json")
    assert merged["quantization"] == recorded["quantization"] and merged["summary"] == recorded["summary"]


# Malformed inputs: refused with the file and key before anything is written


def _deleted(record, *path):
    """``record`` without the item at ``path`` (keys and indices)."""
    *parents, last = path
    target = record
    for step in parents:
        target = target[step]
    del target[last]
    return record


@pytest.mark.parametrize("change, message", [
    (lambda r: _deleted(r, "settings"), r"seed1\.json: no settings; merge the study\.json files"),
    (lambda r: _deleted(r, "cells", 3, "run_dir"), r"seed1\.json: no cells\[3\]\.run_dir"),
    (lambda r: _deleted(r, "cells", 0, "seed"), r"seed1\.json: no cells\[0\]\.seed"),
    (lambda r: _deleted(r, "quantization", 2, "stride"), r"seed1\.json: no quantization\[2\]\.stride"),
    (lambda r: _deleted(r, "settings", "machine", "cpu"), r"seed1\.json: no settings\.machine\.cpu"),
    (lambda r: dict(r, cells={}), r"seed1\.json: cells is \{\}, expected a list"),
    (lambda r: dict(r, cells=[*r["cells"][:1], "row"]), r"cells\[1\] is 'row', expected a JSON object"),
    (lambda r: dict(r, settings=dict(r["settings"], seeds="1")), r"settings\.seeds is '1', expected a list of"),
    (lambda r: dict(r, settings=dict(r["settings"], methods=["argmax", "dsnt"])),
     r"settings\.methods has unknown method\(s\) dsnt"),
    (lambda r: dict(r, settings=dict(r["settings"], parts=[{"file": "a.json"}])), r"no settings\.parts\[0\]\.seeds"),
])
def test_malformed_runs_are_refused_before_anything_is_written(tmp_path, capsys, change, message):
    runs = [str(STUDIES / "pose-128-e24.json"), _write(tmp_path, "seed1.json", change(_with_seed(_study(), 1)))]
    assert main(["study", "--merge", *runs, "--out", str(tmp_path / "m")]) == 2
    assert re.search(message, capsys.readouterr().err)
    assert not (tmp_path / "m").exists()


def test_a_merged_run_whose_part_lacks_its_machine_is_refused_and_the_retry_works(tmp_path, capsys):
    merged = merge_studies([STUDIES / "pose-128-e24.json", STUDIES / "pose-128-e24-dark.json"])
    del merged["settings"]["parts"][1]["machine"]
    runs = [_write(tmp_path, "merged.json", merged), _write(tmp_path, "seed1.json", _with_seed(_study(), 1))]
    out = tmp_path / "m"
    assert main(["study", "--merge", *runs, "--out", str(out)]) == 2
    assert "merged.json: no settings.parts[1].machine" in capsys.readouterr().err
    merged["settings"]["parts"][1]["machine"] = merged["settings"]["machine"]
    _write(tmp_path, "merged.json", merged)
    assert main(["study", "--merge", *runs, "--out", str(out)]) == 0


def test_a_report_that_fails_leaves_no_study_json(tmp_path, monkeypatch):
    def broken(record, path):
        raise OSError("disk full")

    monkeypatch.setattr("h3r.study.report.plot", broken)
    runs = [str(STUDIES / "pose-128-e24.json"), str(STUDIES / "pose-128-e24-dark.json")]
    assert main(["study", "--merge", *runs, "--out", str(tmp_path)]) == 2
    assert not (tmp_path / "study.json").exists()  # so the same command can be run again


# The report


def test_one_seed_has_no_std_and_no_error_bar(tmp_path, monkeypatch):
    seed0 = _study()
    seed1 = _with_seed(seed0, 1, 0.1)
    seed1["cells"] = [row for row in seed1["cells"] if row["method"] != "h3r"]  # h3r: seed 0 only
    seed1["settings"]["methods"] = ["argmax", "quarter", "h3r-linear"]
    merged = merge_studies([STUDIES / "pose-128-e24.json", _write(tmp_path, "seed1.json", seed1)])
    rows = {(row["method"], row["stride"]): row for row in merged["summary"]}
    assert rows["h3r", 4]["std"] is None and rows["h3r", 4]["seeds"] == 1
    assert rows["argmax", 4]["std"] == pytest.approx(0.1 / 2 ** 0.5)
    assert all(row["std"] is None for row in summarise(seed0["cells"]))
    table = markdown(merged)
    assert "| h3r | 0.5813 (1/2 seeds) | 0.5042 (1/2 seeds) |" in table
    assert re.search(r"\| argmax \| 0\.6757 ± 0\.0707 \|", table)
    bars = {}
    original = matplotlib.axes.Axes.errorbar

    def errorbar(self, x, y, *args, **kwargs):
        bars[kwargs["color"]] = list(kwargs["yerr"])
        return original(self, x, y, *args, **kwargs)

    monkeypatch.setattr(matplotlib.axes.Axes, "errorbar", errorbar)
    plot(merged, tmp_path / "study.png")
    colours = method_colours()
    assert colours["h3r"] not in bars and bars[colours["argmax"]] == pytest.approx([0.1 / 2 ** 0.5] * 2)


def test_failed_cells_show_the_cause(tmp_path):
    record = _study()
    row = record["cells"][0]
    row.update(status="failed", metrics=None, error=f"h3r train exited with 1; end of {row['run_dir']}/train.log:\n"
                                                   f"$ h3r train ...\nTraceback (most recent call last):\n"
                                                   f"RuntimeError: CUDA out of memory\n\n")
    record["failed_cells"] = [row["run_dir"]]
    assert (f"- `{row['run_dir']}`: h3r train exited with 1; end of {row['run_dir']}/train.log: … RuntimeError: "
            f"CUDA out of memory\n") in markdown(record)


def _scored(record, commit_of):
    """``record`` with each cell's ``scored_at`` set to ``commit_of(row)`` (None: not recorded)."""
    record = json.loads(json.dumps(record))
    for row in record["cells"]:
        row["scored_at"] = commit_of(row)
    return record


def test_methods_scored_at_several_commits_are_noted():
    record = _study()  # b8a00af: argmax, quarter, h3r, h3r-linear at strides 4 and 8, one seed
    assert "more than one version" not in markdown(record)  # no row records its commit
    assert "more than one version" not in markdown(_scored(record, lambda row: "b8a00af"))
    mixed = markdown(_scored(record, lambda row: {("h3r-linear", 4): "825282d", ("h3r-linear", 8): None}.get(
        (row["method"], row["stride"]), "b8a00af")))
    note = mixed[mixed.index("Scored by more than one version"):mixed.index("### synthetic-pose: cost")]
    assert note.splitlines()[2:] == ["- h3r-linear: 1 cell at `825282d`, 1 cell at an earlier commit (not recorded)", ""]
    assert mixed.index("| h3r-linear |") < mixed.index("Scored by more than one version")  # under the table


def test_merged_runs_scored_at_several_commits_are_noted(tmp_path):
    seed1 = _scored(_with_seed(_study(), 1, 0.1, commit="abc1234"), lambda row: "abc1234")
    merged = merge_studies([STUDIES / "pose-128-e24.json", _write(tmp_path, "seed1.json", seed1)])
    table = markdown(merged)
    assert "- argmax: 2 cells at an earlier commit (not recorded), 2 cells at `abc1234`" in table
    seed0 = _scored(_with_seed(_study(), 0, commit="abc1234"), lambda row: "abc1234")
    alike = merge_studies([_write(tmp_path, "seed0.json", seed0), _write(tmp_path, "seed1.json", seed1)])
    assert alike["settings"]["commit"] == "abc1234" and "more than one version" not in markdown(alike)


def test_every_method_has_its_own_colour_in_every_panel(tmp_path, monkeypatch):
    colours = method_colours()
    assert set(colours) == {*METHODS, SAMPLED_TARGET} and len(set(colours.values())) == len(colours)
    drawn = {}
    original = matplotlib.axes.Axes.plot

    def record_plot(self, *args, **kwargs):
        if "label" in kwargs and "color" in kwargs:
            drawn.setdefault(kwargs["label"], set()).add(kwargs["color"])
        return original(self, *args, **kwargs)

    monkeypatch.setattr(matplotlib.axes.Axes, "plot", record_plot)
    plot(_study("pose-128-e48-all.json"), tmp_path / "study.png")  # udp-noblur and the sampled target
    assert drawn["udp-noblur"] == {colours["udp-noblur"]} and drawn[SAMPLED_TARGET] == {colours[SAMPLED_TARGET]}
    assert colours["udp-noblur"] != colours[SAMPLED_TARGET]


# Options


def test_merge_refuses_a_preset(tmp_path, capsys):
    runs = [str(STUDIES / "pose-128-e24.json"), str(STUDIES / "pose-128-e24-dark.json")]
    assert main(["study", "--merge", *runs, "--preset", "full", "--out", str(tmp_path / "m")]) == 2
    assert "--merge takes only --out: --preset belong to the runs being merged" in capsys.readouterr().err


@pytest.mark.parametrize("mode", [["--print-commands"], ["--collect"], ["--merge", "a.json", "b.json"]])
@pytest.mark.parametrize("jobs", ["0", "-2"])
def test_jobs_must_be_positive_in_every_mode(tmp_path, capsys, mode, jobs):
    assert main(["study", *mode, "--jobs", jobs, "--out", str(tmp_path / "s")]) == 2
    assert capsys.readouterr().err.strip() == (
        f"h3r study: error: --jobs: expected a positive number of cells trained at once, got {jobs}")
    assert not (tmp_path / "s").exists()


def test_arguments_that_train_alike_merge_in_any_order(tmp_path):
    """``-- --lr 3e-3 --sigma 2`` and ``-- --sigma 2.0 --lr 0.003`` are one grid (they were refused as two)."""
    first, second = _study(), _with_seed(_study(), 1)
    first["settings"]["train_args"] = ["--lr", "3e-3", "--sigma", "2"]
    second["settings"]["train_args"] = ["--sigma", "2.0", "--lr", "0.003"]
    paths = [_write(tmp_path, "seed0.json", first), _write(tmp_path, "seed1.json", second)]
    assert merge_studies(paths)["settings"]["seeds"] == [0, 1]
    first["settings"]["train_args"] = ["--radius", "30", "--lr", "0.01"]  # valid on the grid's maps, not on 16x16
    second["settings"]["train_args"] = ["--lr", "0.01", "--radius", "30.0"]
    paths = [_write(tmp_path, "seed0.json", first), _write(tmp_path, "seed1.json", second)]
    assert merge_studies(paths)["settings"]["seeds"] == [0, 1]
    second["settings"]["train_args"] = ["--sigma", "2.0", "--lr", "0.1"]
    paths[1] = _write(tmp_path, "seed1.json", second)
    with pytest.raises(ValueError, match=r"settings.train_args is \['--sigma', '2.0', '--lr', '0.1'\]"):
        merge_studies(paths)
