"""The training-step section of the benchmark report (``--train-step``): it runs the training code's
step, its numbers are sane, and it lands in report.json and report.md; bad settings are refused."""
import json

import pytest

from h3r.benchmark import cli


@pytest.fixture(scope="module")
def step_report(tmp_path_factory):
    out = tmp_path_factory.mktemp("step")
    argv = ["--device", "cpu", "--train-step", "--skip-throughput", "--step-input-size", "32", "--step-batch", "2",
            "--step-keypoints", "5", "--step-calls", "2", "--step-rounds", "1", "--copy-mib", "1", "--commit", "abc",
            "--out", str(out)]
    return out, cli.main(argv)


def test_section_rows_are_sane(step_report):
    _, report = step_report
    section = report["train_step"]
    assert report["rows"] == [] and report["settings"]["train_step"] is True
    assert section["shape"] == {"backbone": "small", "input_size": 32, "batch": 2, "keypoints": 5, "stride": 4,
                                "amp": "none"}
    assert section["logits"] == {"shape": [2, 5, 8, 8], "dtype": "float32"}
    rows = {row["call"]: row for row in section["rows"]}
    assert set(rows) == {"step", "heatmap loss"}  # no CUDA graph row on the CPU
    for row in rows.values():
        assert 0 < row["wall_ms"] < 60_000 and 0 <= row["cpu_ms"] and row["images_per_s"] > 0
        assert row["images_per_s"] == pytest.approx(2 * 1e3 / row["wall_ms"])
    assert rows["step"]["share_of_step"] == 1.0
    # the loss alone is a part of the step (generous: timing noise on a shared 2-core machine)
    assert 0 < rows["heatmap loss"]["share_of_step"] < 1.5


def test_section_in_json_and_markdown(step_report):
    out, report = step_report
    assert json.loads((out / "report.json").read_text())["train_step"]["rows"] == report["train_step"]["rows"]
    page = (out / "report.md").read_text()
    assert "## Training step" in page and "| heatmap loss |" in page and "small, 2 × 32×32 images" in page


@pytest.mark.parametrize("argv,message", [
    (["--train-step", "--step-input-size", "30"], "--step-input-size: expected a multiple of the stride 4"),
    (["--skip-throughput"], "--skip-throughput: nothing left to measure without --host-overhead or --train-step"),
    (["--train-step", "--step-backbone", "resnet"], "argument --step-backbone: invalid choice"),
])
def test_bad_settings(argv, message, capsys):
    with pytest.raises(SystemExit):
        cli.main(["--device", "cpu", *argv])
    assert message in capsys.readouterr().err
