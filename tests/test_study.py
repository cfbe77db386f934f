"""The stride option end to end, and ``h3r study``: part A's closed forms, resume/skip, failures, JSON schema."""
import json
import math
import os
import re
import shlex
from pathlib import Path

import pytest

from h3r.cli import build_parser, main
from h3r.evaluate import evaluate_checkpoint, load_checkpoint
from h3r.study import PRESETS, run_study
from h3r.study.grid import cells, train_argv
from h3r.study.presets import METHODS
from h3r.study.quantization import VANILLA_MEAN_ERROR, quantization_rows

TINY = ["--epochs", "1", "--batch-size", "8", "--workers", "0", "--draw", "0", "--no-progress",
        "--train-option", "size=16", "--test-option", "size=8"]


@pytest.mark.parametrize("stride", [8, 16])
def test_stride_end_to_end(tmp_path, capsys, stride):
    """train -> checkpoint -> eval at a coarse stride: the heatmap is input/stride cells and everything follows."""
    run = tmp_path / "run"
    assert main(["train", "--codec", "gaussian", "--stride", str(stride), "--input-size", "64", "--out", str(run),
                 *TINY]) == 0
    checkpoint = load_checkpoint(run / "last.pt")
    assert checkpoint["config"]["stride"] == stride
    assert f"heatmap {64 // stride}x{64 // stride}" in capsys.readouterr().out
    result = evaluate_checkpoint(run, out=str(tmp_path / "eval"), draw=0, workers=0, progress=False,
                                 decoder={"refine": "none"})
    assert result["settings"]["stride"] == stride and result["settings"]["heatmap_size"] == 64 // stride
    assert "refine='none'" in result["settings"]["decoder"] and math.isfinite(result["metrics"]["nme"])
    assert main(["eval", "--checkpoint", str(run), "--refine", "dark", "--draw", "0", "--workers", "0",
                 "--out", str(tmp_path / "eval-dark")]) == 0
    assert json.loads((tmp_path / "eval-dark" / "results.json").read_text())["settings"]["stride"] == stride


def test_udp_end_to_end_with_its_offsets_read_unblurred(tmp_path):
    """A udp model (3 maps per keypoint) trains, resumes its config, and is read again without the offset blur."""
    run = tmp_path / "run"
    assert main(["train", "--codec", "udp", "--stride", "8", "--input-size", "64", "--radius", "1.5", "--out", str(run),
                 *TINY]) == 0
    checkpoint = load_checkpoint(run / "last.pt")
    assert checkpoint["config"]["radius"] == 1.5 and checkpoint["config"]["offset_blur"] is True
    assert checkpoint["model"]["head.logits.weight"].shape[0] == 3 * checkpoint["num_keypoints"]
    blurred = evaluate_checkpoint(run, out=str(tmp_path / "a"), draw=0, workers=0, progress=False)
    sharp = evaluate_checkpoint(run, out=str(tmp_path / "b"), draw=0, workers=0, progress=False,
                                decoder={"offset_blur": False})
    assert "offset_blur=True" in blurred["settings"]["decoder"] and "offset_blur=False" in sharp["settings"]["decoder"]
    assert blurred["metrics"]["nme"] != sharp["metrics"]["nme"]
    assert main(["eval", "--checkpoint", str(run), "--no-offset-blur", "--draw", "0", "--workers", "0",
                 "--out", str(tmp_path / "c")]) == 0
    assert json.loads((tmp_path / "c" / "results.json").read_text())["metrics"]["nme"] == sharp["metrics"]["nme"]


def test_part_a_matches_the_closed_forms():
    rows = quantization_rows(PRESETS["smoke"].with_overrides(strides=(4, 8)))
    uniform = {(row["method"], row["stride"]): row for row in rows if row["points"] == "uniform"}
    for stride in (4, 8):
        vanilla = uniform["argmax", stride]
        assert vanilla["theory_mean_error_px"] == pytest.approx(VANILLA_MEAN_ERROR * stride)
        assert abs(vanilla["mean_error_px"] / vanilla["theory_mean_error_px"] - 1) < 0.03
        assert uniform["h3r-linear", stride]["max_error_px"] < 1e-3 * stride  # lossless
        assert uniform["h3r-local", stride]["max_error_px"] < 1e-3 * stride  # lossless too
        sampled = uniform["h3r-sampled-target", stride]
        for axis in range(2):  # unbiased within 4 standard errors, spread as the theory says within 3 %
            assert abs(sampled["mean_vector_px"][axis]) < 4 * sampled["mean_vector_standard_error_px"][axis]
            assert abs(sampled["rms_axis_px"][axis] / sampled["theory_rms_axis_px"][axis] - 1) < 0.03
        assert uniform["integral", stride]["applicable"] is False
    assert VANILLA_MEAN_ERROR == pytest.approx(0.3826, abs=1e-4)


def test_part_a_uses_the_cells_settings_and_h3r_gaussian_is_asked_for_by_name():
    """Part A reads each codec as its cells train it: '-- --sigma 1.0' changes the Gaussians of part A too."""
    smoke = PRESETS["smoke"].with_overrides(strides=(8,), methods=("dark", "h3r-gaussian"))
    default, wide = quantization_rows(smoke), quantization_rows(smoke, extra=("--sigma", "1.0"))
    sigmas = {(row["method"], row["points"]): row["sigma_cells"] for row in default if "sigma_cells" in row}
    assert sigmas == {(method, points): 0.5 for method in ("dark", "h3r-gaussian")
                      for points in ("ground truth", "uniform")}  # the default for 32-px faces at stride 8
    assert {row["sigma_cells"] for row in wide if "sigma_cells" in row} == {1.0}
    assert {row["mean_error_px"] for row in wide if row["method"] == "h3r-gaussian"}.isdisjoint(
        {row["mean_error_px"] for row in default if row["method"] == "h3r-gaussian"})  # (DARK's step has no cell)
    quick = PRESETS["quick"].with_overrides(methods=("h3r-gaussian",), strides=(4,), uniform_points=2000)
    for row in quantization_rows(quick):  # 16x16 maps, sigma 1: lossless where the border cuts nothing
        assert row["interior_keypoints"] > 100 and row["interior_mean_error_px"] < 0.005 < row["mean_error_px"]
    assert "h3r-gaussian" not in PRESETS["quick"].methods and "h3r-gaussian" not in PRESETS["smoke"].methods
    assert PRESETS["full"].methods == tuple(METHODS)


SCHEMA_CELL_KEYS = {"dataset", "method", "codec", "stride", "heatmap_size", "seed", "status", "metrics", "metric",
                    "images_per_s", "head_decode_ms", "train_seconds", "run_dir", "command", "error"}
SCORE_KEYS = {"higher_is_better", "epochs", "scored_at"}  # added to the rows later: older records lack them


def check_schema(record):
    assert record["schema"] == "h3r-study/1"
    assert {"preset", "datasets", "methods", "strides", "seeds", "commit", "machine", "wall_seconds"} <= set(
        record["settings"])
    for row in record["cells"]:
        assert SCHEMA_CELL_KEYS <= set(row) <= SCHEMA_CELL_KEYS | SCORE_KEYS
        assert isinstance(row["stride"], int)
        assert row["heatmap_size"] == record["settings"]["input_size"] // row["stride"]
        if row["status"] != "failed":
            assert isinstance(row["metrics"][row["metric"]], float) and row["head_decode_ms"] > 0
    for row in record["quantization"]:
        assert {"dataset", "points", "method", "stride", "heatmap_size", "keypoints", "outside_map",
                "applicable"} <= set(row)
    for row in record["summary"]:
        assert {"dataset", "method", "stride", "heatmap_size", "metric", "mean", "std", "seeds"} <= set(row)


def test_study_writes_its_outputs_resumes_and_reports_failures(tmp_path, monkeypatch):
    preset = PRESETS["smoke"].with_overrides(strides=(8,), input_size=32)
    out = tmp_path / "study"
    messages = []
    record = run_study(preset, out, say=messages.append)
    for name in ("study.json", "study.md", "study.png"):
        assert (out / name).stat().st_size > 0
    on_disk = json.loads((out / "study.json").read_text())
    check_schema(on_disk)
    assert {row["method"] for row in on_disk["cells"]} == set(preset.methods)
    assert {row["status"] for row in on_disk["cells"]} == {"trained"} and not on_disk["failed_cells"]
    assert all(row["epochs"] == preset.epochs and row["higher_is_better"] is False and row["scored_at"]
               for row in on_disk["cells"])  # NME; the commit that scored each row
    assert len(on_disk["summary"]) == len(preset.methods)
    markdown = (out / "study.md").read_text()
    assert "quantization only" in markdown and "h3r-linear" in markdown and "stride 8 (4×4)" in markdown
    assert "This run overrides the preset's strides: see the grid below." in markdown  # smoke has strides 4, 8

    # Re-running skips every finished cell and reuses its scores.
    messages.clear()
    again = run_study(preset, out, say=messages.append)
    assert {row["status"] for row in again["cells"]} == {"skipped (finished earlier)"}
    assert [row["metrics"] for row in again["cells"]] == [row["metrics"] for row in record["cells"]]
    assert not any("training (" in message for message in messages)

    # A cell that fails is reported with its log, the others still run, the outputs are written.
    import h3r.cli

    real_main = h3r.cli.main

    def failing_main(argv):
        if "integral" in argv:
            raise RuntimeError("injected failure")
        return real_main(argv)

    monkeypatch.setattr(h3r.cli, "main", failing_main)
    broken = run_study(preset.with_overrides(seeds=(1,)), tmp_path / "broken", say=messages.append)
    failed = [row for row in broken["cells"] if row["status"] == "failed"]
    assert [row["codec"] for row in failed] == ["integral"] and "injected failure" in failed[0]["error"]
    assert all(row["status"] == "trained" for row in broken["cells"] if row["codec"] != "integral")
    assert broken["failed_cells"] == [failed[0]["run_dir"]]
    assert "Failed cells" in (tmp_path / "broken" / "study.md").read_text()


def test_print_commands_gives_one_valid_train_command_per_cell(capsys):
    assert main(["study", "--preset", "quick", "--devices", "cuda:0,cuda:1", "--print-commands", "--", "--lr",
                 "0.002"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    preset = PRESETS["quick"]
    assert len(lines) == len(cells(preset)) == len(preset.codecs) * len(preset.strides) * len(preset.seeds)
    parser = build_parser()
    devices = set()
    for line in lines:
        words = shlex.split(line)
        assert words[:2] == ["h3r", "train"]
        args = parser.parse_args(words[1:])
        assert args.lr == 0.002 and args.stride in preset.strides and args.codec in preset.codecs
        devices.add(args.device)
    assert devices == {"cuda:0", "cuda:1"}
    assert train_argv(cells(preset)[0], preset, "out")[:2] == ["train", "--dataset"]


@pytest.mark.parametrize("arguments, message", [
    (("--strides", "4,6"), "strides: [6] not supported"),
    (("--methods", "h3r,dsnt"), "methods: unknown dsnt"),
    (("--input-size", "40", "--strides", "16"), "not a multiple of stride 16"),
    (("--seeds", "0,0"), "seeds: repeated values"),
    (("--backbone", "foo"), "cell synthetic-face/gaussian-stride4-seed0: h3r train --dataset synthetic-face"),
    (("--backbone", "foo"), "would fail: argument --backbone: invalid choice: 'foo'"),
    (("--preset", "smoke", "--input-size", "16", "--strides", "8", "--methods", "h3r"),
     "would fail: synthetic-face configuration: topk: the h3r decoder averages at most 32 activations and at most "
     "the heatmap's cells (2x2 = 4 at input 16 px, stride 8); got 9"),
    (("--preset", "smoke", "--methods", "h3r-gaussian", "--", "--sigma", "5"),
     "cell synthetic-face/h3r-gaussian-stride4-seed0: h3r train --dataset synthetic-face --codec h3r-gaussian"),
    (("--preset", "smoke", "--methods", "h3r-gaussian", "--", "--sigma", "5"),
     "would fail: sigma: at most 4.667 cells for h3r-gaussian"),
    (("--", "--window", "3"), "arguments after '--' set window, which the study's methods set"),
    (("--", "--no-offset-blur", "--topk", "5"), "arguments after '--' set topk, offset_blur, which the study's "
                                                 "methods set"),
    (("--", "--lr", "abc"), "would fail: argument --lr: invalid float value: 'abc'"),
    (("--", "--step-ms", "5"), "would fail: --step-ms is an option of --data-only"),
    (("--", "--stride", "8"), "arguments after '--' change what the study sets per cell: stride (4 -> 8; set it "
                              "with the study's --strides)"),
    (("--", "--codec", "dark", "--epochs", "3"), "codec ('gaussian' -> 'dark'; set it with the study's --methods), "
                                                 "epochs (6 -> 3; set it with the study's --epochs)"),
])
def test_bad_study_options_are_named(capsys, arguments, message):
    assert main(["study", "--print-commands", *arguments]) == 2
    assert message in capsys.readouterr().err


def test_a_cell_stopped_part_way_resumes(tmp_path):
    preset = PRESETS["smoke"].with_overrides(methods=("h3r",), strides=(8,), epochs=2)
    cell = cells(preset)[0]
    assert main([*train_argv(cell, preset, tmp_path), "--stop-after", "1"]) == 0
    assert load_checkpoint(cell.run_dir(tmp_path) / "last.pt")["epoch"] == 1
    record = run_study(preset, tmp_path, say=lambda message: None)
    assert record["cells"][0]["status"] == "trained"
    assert load_checkpoint(cell.run_dir(tmp_path) / "last.pt")["epoch"] == 2
    assert "train --resume" in (cell.run_dir(tmp_path) / "train.log").read_text()


def test_parallel_cells_run_as_subprocesses(tmp_path):
    """--jobs 2: each cell is a 'python -m h3r train' subprocess; the results land the same way."""
    preset = PRESETS["smoke"].with_overrides(methods=("h3r",), strides=(4, 8))
    record = run_study(preset, tmp_path, jobs=2, say=lambda message: None)
    assert [row["status"] for row in record["cells"]] == ["trained", "trained"]
    assert record["settings"]["jobs"] == 2
    for row in record["cells"]:
        log = (tmp_path / row["run_dir"] / "train.log").read_text()
        assert "h3r train: synthetic-face" in log and math.isfinite(row["metrics"]["nme"])


def test_head_timings_read_each_checkpoint_once(tmp_path, monkeypatch):
    """The methods of a cell share its network: its last.pt is read once to time all of them."""
    import h3r.evaluate
    from h3r.study.runner import time_heads

    preset = PRESETS["smoke"].with_overrides(methods=("h3r", "h3r-linear"), strides=(8,))
    record = run_study(preset, tmp_path, say=lambda message: None)
    rows = [{**row, "head_decode_ms": None} for row in record["cells"]]
    assert len(rows) == 2 and len({row["run_dir"] for row in rows}) == 1
    reads = []
    load_checkpoint = h3r.evaluate.load_checkpoint
    monkeypatch.setattr(h3r.evaluate, "load_checkpoint", lambda path: reads.append(path) or load_checkpoint(path))
    time_heads(rows, {})
    assert len(reads) == 1 and all(row["head_decode_ms"] > 0 for row in rows)


def test_grid_checks_come_before_any_training(tmp_path):
    """The runner refuses a grid whose cells would not start before it trains one (it used to end the whole
    study with no message when 'h3r train' exited in-process)."""
    preset = PRESETS["smoke"].with_overrides(methods=("h3r",), strides=(8,))
    with pytest.raises(ValueError, match="arguments after '--' change what the study sets per cell: seed"):
        run_study(preset, tmp_path, extra=("--seed", "5"), say=lambda message: None)
    assert not (tmp_path / "runs").exists()


def _fake_finished_cell(preset, out, cell, extra=()):
    """A cell's run folder as training leaves it: config.json beside a last.pt (here unreadable)."""
    from h3r.cli import train_config_of

    run_dir = cell.run_dir(out)
    run_dir.mkdir(parents=True)
    config = train_config_of(train_argv(cell, preset, out, extra=extra))
    (run_dir / "config.json").write_text(json.dumps(config.to_dict()))
    (run_dir / "last.pt").write_bytes(b"not a checkpoint")
    return run_dir


def test_a_cell_trained_with_other_settings_is_refused(tmp_path):
    """A re-run with other settings used to skip (or resume) the cells trained earlier and label their
    networks with the new settings."""
    from h3r.study.grid import check_cells

    preset = PRESETS["smoke"].with_overrides(methods=("h3r",), strides=(8,))
    cell = cells(preset)[0]
    _fake_finished_cell(preset, tmp_path, cell, extra=("--lr", "0.01"))
    check_cells(preset, tmp_path, extra=("--lr", "0.01"))
    check_cells(preset, tmp_path, extra=("--lr", "0.01", "--workers", "0"))  # where it runs may change
    with pytest.raises(ValueError, match=r"cell synthetic-face/h3r-stride8-seed0: its run folder .* holds a network "
                                         r"trained with other settings: lr 0.01 \(asked now: 0.003\); give another --out"):
        check_cells(preset, tmp_path)
    with pytest.raises(ValueError, match=r"epochs 1 \(asked now: 3\), eval_every 1 \(asked now: 3\)"):
        check_cells(preset.with_overrides(epochs=3), tmp_path, extra=("--lr", "0.01"))
    (cell.run_dir(tmp_path) / "config.json").write_text("{")
    with pytest.raises(ValueError, match=r"config.json: cannot read the settings .*; remove .* to train the cell again"):
        check_cells(preset, tmp_path)
    with pytest.raises(ValueError, match=r"arguments after '--' change the data \(test_options\), .* the study reads "
                                         r"the dataset's splits with the preset's reader options"):
        check_cells(preset, tmp_path / "other", extra=("--test-option", "size=100"))
    with pytest.raises(ValueError, match=r"change the data \(data_root\), .* give the data folder with the study's "
                                         r"--data-root"):
        check_cells(preset, tmp_path / "other", extra=("--data-root", str(tmp_path)))
    check_cells(preset, tmp_path / "other", extra=("--train-option", "cache_images=false"))  # how items are kept


def test_cells_that_cannot_start_fail_alone(tmp_path):
    """A cell whose folder cannot be written, or whose checkpoint is damaged, is a failed cell: the others run
    (the first ended the study with a traceback; the second retrained and failed on 'already holds a run')."""
    preset = PRESETS["smoke"].with_overrides(methods=("h3r", "argmax", "integral"), strides=(8,), input_size=32)
    blocked, damaged, healthy = cells(preset)
    blocked.run_dir(tmp_path).parent.mkdir(parents=True)
    blocked.run_dir(tmp_path).write_text("a file where the cell's folder belongs")
    _fake_finished_cell(preset, tmp_path, damaged)
    record = run_study(preset, tmp_path, say=lambda message: None)
    status = {row["codec"]: (row["status"], row["error"]) for row in record["cells"]}
    assert status[blocked.codec][0] == "failed" and "cannot write the cell's log" in status[blocked.codec][1]
    assert status[damaged.codec][0] == "failed" and "last.pt cannot be read" in status[damaged.codec][1]
    assert status[healthy.codec] == ("trained", None)


def test_a_resumed_cell_keeps_this_runs_runtime_options():
    from h3r.study.runner import runtime_arguments

    argv = ["train", "--dataset", "wflw", "--seed", "0", "--workers", "1", "--draw", "0", "--no-progress", "--out",
            "o", "--data-root", "/new/wflw", "--device", "cuda:1", "--gpu-augment", "--lr", "0.1", "--workers=3"]
    assert runtime_arguments(argv) == ["--device", "cuda:1", "--workers", "3", "--no-progress", "--draw", "0",
                                       "--gpu-augment", "--data-root", os.path.abspath("/new/wflw")]
    assert runtime_arguments(["train", "--dev", "cpu"]) == ["--device", "cpu"]  # abbreviated, as argparse takes it


def test_a_study_refuses_a_missing_device_and_a_merged_folder(tmp_path):
    preset = PRESETS["smoke"].with_overrides(methods=("h3r",), strides=(8,))
    with pytest.raises(ValueError, match="device: 'bogus' is not a device name"):
        run_study(preset, tmp_path, devices=["bogus"], say=lambda message: None)
    assert not (tmp_path / "runs").exists()
    (tmp_path / "study.json").write_text(json.dumps({"schema": "h3r-study/1", "settings": {"parts": [{}, {}]}}))
    with pytest.raises(ValueError, match=r"study.json is a merged study \(h3r study --merge\); give another --out"):
        run_study(preset, tmp_path, say=lambda message: None)


def test_a_cell_that_exits_is_reported_and_ctrl_c_stops_the_study(tmp_path, monkeypatch):
    import h3r.cli

    preset = PRESETS["smoke"].with_overrides(methods=("h3r", "argmax"), strides=(8,))

    def exiting_main(argv):
        if "h3r" in argv:
            raise SystemExit(2)  # what argparse does inside 'h3r train'
        return 0

    monkeypatch.setattr(h3r.cli, "main", exiting_main)
    record = run_study(preset, tmp_path / "exits", say=lambda message: None)
    statuses = {row["codec"]: row["status"] for row in record["cells"]}
    assert statuses["h3r"] == "failed" and "exited with 2" in record["cells"][0]["error"] + record["cells"][1]["error"]

    started = []
    monkeypatch.setattr(h3r.cli, "main", lambda argv: started.append(argv) or 130)  # h3r train interrupted
    with pytest.raises(KeyboardInterrupt):
        run_study(preset, tmp_path / "interrupted", say=lambda message: None)
    assert len(started) == 1  # no further cell after the interrupted one


def test_ctrl_c_stops_a_parallel_study(tmp_path, monkeypatch):
    """--jobs 2: an interrupted cell (exit status 130) stops the study; the queued cells never start
    (the pool used to run every queued cell before it let the interrupt through)."""
    import h3r.study.runner as runner

    preset = PRESETS["smoke"].with_overrides(methods=("h3r",), strides=(4, 8), seeds=(0, 1, 2))
    started = []
    monkeypatch.setattr(runner.subprocess, "call", lambda argv, **keywords: started.append(argv) or 130)
    with pytest.raises(KeyboardInterrupt):
        run_study(preset, tmp_path, jobs=2, say=lambda message: None)
    assert len(cells(preset)) == 6 and 1 <= len(started) <= 2


STUDIES = Path(__file__).resolve().parent.parent / "docs" / "study"


def _with_seed(record, seed, shift):
    """``record`` as if trained with another ``seed``: every score moved by ``shift``."""
    record = json.loads(json.dumps(record))
    record["settings"]["seeds"], record["settings"]["commit"] = [seed], "abc1234"
    record["settings"]["description"] += " (reworded at a later commit)"  # prose: not compared
    for row in record["cells"]:
        row["seed"] = seed
        row["metrics"] = {name: value + shift for name, value in row["metrics"].items()}
    return record


def test_runs_of_one_grid_merge_into_one_study(tmp_path, capsys):
    seed0 = json.loads((STUDIES / "pose-128-e24.json").read_text())
    (tmp_path / "seed1.json").write_text(json.dumps(_with_seed(seed0, 1, 0.1)))
    out = tmp_path / "merged"
    assert main(["study", "--merge", str(STUDIES / "pose-128-e24.json"), str(tmp_path / "seed1.json"),
                 str(STUDIES / "pose-128-e24-dark.json"), "--out", str(out)]) == 0
    merged = json.loads((out / "study.json").read_text())
    check_schema(merged)
    assert merged["settings"]["seeds"] == [0, 1]
    assert merged["settings"]["methods"] == ["argmax", "quarter", "dark", "h3r", "h3r-linear"]
    assert merged["settings"]["commit"] == "b8a00af+abc1234+c3451bc" and len(merged["settings"]["parts"]) == 3
    assert len(merged["cells"]) == 2 * len(seed0["cells"]) + 2
    rows = {(row["method"], row["stride"]): row for row in merged["summary"]}
    before = {(row["method"], row["stride"]): row for row in seed0["summary"]}
    assert rows["quarter", 8]["seeds"] == 2 and rows["dark", 8]["seeds"] == 1
    assert rows["quarter", 8]["mean"] == pytest.approx(before["quarter", 8]["mean"] + 0.05)
    assert rows["quarter", 8]["std"] == pytest.approx(0.1 / math.sqrt(2))
    assert {(row["points"], row["method"], row["stride"]) for row in merged["quantization"]} == {
        (row["points"], row["method"], row["stride"]) for name in ("pose-128-e24", "pose-128-e24-dark")
        for row in json.loads((STUDIES / f"{name}.json").read_text())["quantization"]}
    markdown = (out / "study.md").read_text()
    assert "- merged from 3 runs by `h3r study --merge" not in markdown  # main() was not called as `h3r study`
    assert "- merged from 3 runs:" in markdown
    assert "(seeds [1], methods argmax, quarter, h3r, h3r-linear, strides [4, 8])" in markdown
    assert "| dark | 0.7283 (1/2 seeds) | 0.5162 (1/2 seeds) |" in markdown  # dark: seed 0 only
    assert (out / "study.png").stat().st_size > 0
    # a merged study merges again, its parts flattened
    (tmp_path / "seed2.json").write_text(json.dumps(_with_seed(seed0, 2, -0.1)))
    assert main(["study", "--merge", str(out), str(tmp_path / "seed2.json"), "--out", str(tmp_path / "again")]) == 0
    again = json.loads((tmp_path / "again" / "study.json").read_text())
    assert again["settings"]["seeds"] == [0, 1, 2] and len(again["settings"]["parts"]) == 4


def test_strides_run_apart_merge(tmp_path):
    record = json.loads((STUDIES / "pose-128-e24.json").read_text())
    for stride in (4, 8):
        part = json.loads(json.dumps(record))
        part["settings"]["strides"] = [stride]
        part["cells"] = [row for row in part["cells"] if row["stride"] == stride]
        part["quantization"] = [row for row in part["quantization"] if row["stride"] == stride]
        (tmp_path / f"stride{stride}.json").write_text(json.dumps(part))
    assert main(["study", "--merge", str(tmp_path / "stride8.json"), str(tmp_path / "stride4.json"),
                 "--out", str(tmp_path / "m")]) == 0
    merged = json.loads((tmp_path / "m" / "study.json").read_text())
    assert merged["settings"]["strides"] == [4, 8]
    assert sorted((r["method"], r["stride"], r["mean"]) for r in merged["summary"]) == sorted(
        (r["method"], r["stride"], r["mean"]) for r in record["summary"])
    # a stride only one method has: the others show "–"
    lone = json.loads((tmp_path / "stride4.json").read_text())
    lone["settings"]["strides"], lone["settings"]["methods"] = [16], ["dark"]
    lone["cells"] = [dict(row, stride=16, heatmap_size=8, method="dark", codec="dark") for row in lone["cells"][:1]]
    (tmp_path / "lone.json").write_text(json.dumps(lone))
    assert main(["study", "--merge", str(tmp_path / "m"), str(tmp_path / "lone.json"), "--out", str(tmp_path / "m2")]) == 0
    table = (tmp_path / "m2" / "study.md").read_text()
    assert "| argmax | 0.6257 | 0.3925 | – |" in table


@pytest.mark.parametrize("arguments, message", [
    (["pose-128-e24.json", "pose-128.json"], r"pose-128.json: settings.epochs is 6, .*pose-128-e24.json has 24"),
    (["pose-128-e24.json", "pose-128-e24.json"], r"the cell \(dataset, method, stride, seed\) = \('synthetic-pose', "
                                                 r"'argmax', 4, 0\) is also in"),
    (["pose-128-e24.json"], "expected at least two study.json files, got 1"),
    (["pose-128-e24.json", "missing.json"], "missing.json: no such study.json"),
    (["pose-128-e24.json", "pose-128-e24.md"], "pose-128-e24.md: not a study.json"),
])
def test_runs_that_do_not_merge_are_named(tmp_path, capsys, arguments, message):
    assert main(["study", "--merge", *(str(STUDIES / name) for name in arguments), "--out", str(tmp_path / "m")]) == 2
    assert re.search(message, capsys.readouterr().err)
    assert not (tmp_path / "m").exists()


def test_merge_keeps_failures_nan_scores_and_data_roots(tmp_path, capsys):
    record = json.loads((STUDIES / "pose-128-e24.json").read_text())
    failed = _with_seed(record, 1, 0.0)
    failed["settings"]["data_root"] = "/elsewhere/data"  # the same data on another machine
    for row in failed["cells"]:
        if row["codec"] == "gaussian" and row["stride"] == 8:
            row.update(status="failed", metrics=None, error="RuntimeError: injected\nmore")
    failed["failed_cells"] = sorted({row["run_dir"] for row in failed["cells"] if row["status"] == "failed"})
    nan_seed = _with_seed(record, 2, 0.0)
    nan_seed["cells"][0]["metrics"]["AP"] = None  # how study.json stores a NaN score
    (tmp_path / "failed.json").write_text(json.dumps(failed))
    (tmp_path / "nan.json").write_text(json.dumps(nan_seed))
    runs = [str(STUDIES / "pose-128-e24.json"), str(tmp_path / "failed.json"), str(tmp_path / "nan.json")]
    assert main(["study", "--merge", *runs, "--out", str(tmp_path / "m")]) == 1  # as a study with a failed cell
    assert "1 cell(s) failed" in capsys.readouterr().err
    merged = json.loads((tmp_path / "m" / "study.json").read_text())
    assert merged["failed_cells"] == failed["failed_cells"]
    assert [part["data_root"] for part in merged["settings"]["parts"]] == [None, "/elsewhere/data", None]
    markdown = (tmp_path / "m" / "study.md").read_text()
    assert f"- `{failed['failed_cells'][0]}`: RuntimeError: injected" in markdown
    rows = {(row["method"], row["stride"]): row for row in merged["summary"]}
    assert (rows["quarter", 8]["seeds"], rows["quarter", 8]["seeds_planned"]) == (2, 3)  # seed 1 failed
    assert (rows["argmax", 4]["seeds"], rows["argmax", 4]["seeds_planned"]) == (2, 3)  # seed 2 scored NaN


def test_merge_takes_only_out_and_never_overwrites_a_study(tmp_path, capsys):
    runs = [str(STUDIES / "pose-128-e24.json"), str(STUDIES / "pose-128-e24-dark.json")]
    assert main(["study", "--merge", *runs, "--seeds", "1", "--out", str(tmp_path)]) == 2
    assert "--merge takes only --out: --seeds belong to the runs being merged" in capsys.readouterr().err
    assert main(["study", "--merge", *runs]) == 2
    assert "--merge: give --out" in capsys.readouterr().err
    (tmp_path / "study.json").write_text("{}")
    assert main(["study", "--merge", *runs, "--out", str(tmp_path)]) == 2
    assert "already holds a study.json" in capsys.readouterr().err and (tmp_path / "study.json").read_text() == "{}"
