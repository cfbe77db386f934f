"""The ``h3r`` command: help, argument errors, a tiny train → eval round trip, bench forwarding."""
import json
import re
import subprocess
import sys

import pytest

from h3r import cli


def run(capsys, *arguments):
    """``h3r ARGUMENTS`` in this process: (exit code, stdout, stderr)."""
    try:
        code = cli.main(list(arguments))
    except SystemExit as stop:  # argparse exits on --help and on bad arguments
        code = stop.code
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_python_dash_m_h3r_help():
    result = subprocess.run([sys.executable, "-m", "h3r", "--help"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0
    for word in ("train", "eval", "bench", "randomized rounding"):
        assert word in result.stdout


def test_no_command_prints_help(capsys):
    code, out, _ = run(capsys)
    assert code == 0 and "h3r train" in out


def test_train_help_explains_the_options(capsys):
    code, out, _ = run(capsys, "train", "--help")
    assert code == 0
    for text in ("--dataset", "synthetic-face", "--codec", "--stride", "--input-size", "--resume", "--flip-test",
                 "--data-only", "torchrun", "h3r/configs/<dataset>.toml"):
        assert text in out, text


@pytest.mark.parametrize("arguments, message", [
    (("train", "--codec", "dsnt"), "argument --codec: invalid choice: 'dsnt'"),
    (("train", "--dataset", "imagenet"), "argument --dataset: invalid choice: 'imagenet'"),
    (("train", "--stride", "6"), "argument --stride: invalid choice: 6"),
    (("train", "--epochs", "ten"), "argument --epochs: invalid int value: 'ten'"),
    (("train", "--train-option", "size"), "argument --train-option: expected KEY=VALUE"),
    (("eval",), "the following arguments are required: --checkpoint"),
    (("fit",), "invalid choice: 'fit'"),
])
def test_bad_arguments_are_named(capsys, arguments, message):
    code, _, err = run(capsys, *arguments)
    assert code == 2 and message in err


@pytest.mark.parametrize("arguments, message", [
    (("train", "--dataset", "wflw"), "wflw: root is required: the folder holding the WFLW folder with "
                                     "WFLW_annotations/ and WFLW_images/"),
    (("train", "--dataset", "coco", "--data-root", "/nonexistent/coco"),
     "data root /nonexistent/coco is not a folder; expected the folder holding annotations/"),
    (("train", "--input-size", "30"), "input_size: expected a multiple of the stride 4"),
    (("train", "--amp", "bf16", "--device", "cpu", "--epochs", "1", "--train-option", "size=8",
      "--test-option", "size=2"), "amp: mixed precision (bf16) needs a CUDA device"),
    (("eval", "--checkpoint", "/nonexistent/last.pt"), "checkpoint /nonexistent/last.pt does not exist"),
])
def test_bad_settings_give_clear_messages(capsys, tmp_path, monkeypatch, arguments, message):
    monkeypatch.chdir(tmp_path)
    code, _, err = run(capsys, *arguments)
    assert code == 2 and message in err


def test_reader_options_are_typed():
    assert cli.reader_option("size=500") == ("size", 500)
    assert cli.reader_option("keep_inside=false") == ("keep_inside", False)
    assert cli.reader_option("subset=largepose") == ("subset", "largepose")
    assert cli.reader_option("scale=0.5") == ("scale", 0.5)


TINY = ("--train-option", "size=16", "--train-option", "image_size=48", "--test-option", "size=4",
        "--test-option", "image_size=48", "--input-size", "32", "--batch-size", "8", "--workers", "0",
        "--no-progress", "--draw", "1")


def test_train_resume_and_eval_from_the_command_line(capsys, tmp_path):
    out = tmp_path / "run"
    code, printed, _ = run(capsys, "train", *TINY, "--epochs", "2", "--stop-after", "1", "--out", str(out))
    assert code == 0 and "mean-shape baseline on test: nme" in printed
    assert f"h3r train --resume {out / 'last.pt'}" in printed

    code, _, err = run(capsys, "train", "--resume", str(out / "last.pt"), "--lr", "0.1")
    assert code == 2 and "--resume continues the run with its stored settings; remove --lr" in err
    code, _, err = run(capsys, "train", "--resume", str(out / "last.pt"), "--no-flip-test", "--cuda-graphs")
    assert code == 2 and "remove --cuda-graphs, --no-flip-test (only" in err  # as typed

    code, printed, _ = run(capsys, "train", "--resume", str(out / "last.pt"), "--workers", "0")
    assert code == 0 and "resuming" in printed and "final model (epoch 2)" in printed
    assert "| nme |" in printed and "mean-shape baseline" in printed
    logged = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])["test"]

    code, printed, _ = run(capsys, "eval", "--checkpoint", str(out), "--out", str(tmp_path / "eval"), "--draw", "1")
    assert code == 0 and "| nme |" in printed
    assert json.loads(printed.strip().splitlines()[-1]) == pytest.approx(logged)
    assert (tmp_path / "eval" / "results.md").is_file()
    assert len(list((tmp_path / "eval" / "images").glob("*.png"))) == 1

    code, printed, _ = run(capsys, "eval", "--checkpoint", str(out / "best.pt"), "--option", "size=3",
                           "--split", "train", "--no-flip-test", "--out", str(tmp_path / "eval-train"), "--draw", "0")
    assert code == 0 and "synthetic-face train (3 items)" in printed


def test_train_resume_reads_the_checkpoint_once(capsys, tmp_path, monkeypatch):
    import h3r.checkpoints as checkpoints_module

    out = tmp_path / "run"
    code, _, _ = run(capsys, "train", *TINY, "--epochs", "2", "--stop-after", "1", "--out", str(out))
    assert code == 0
    reads = []
    real_read = checkpoints_module.read_weights_file
    monkeypatch.setattr(checkpoints_module, "read_weights_file", lambda path: reads.append(path) or real_read(path))
    code, printed, _ = run(capsys, "train", "--resume", str(out), "--workers", "0")
    assert code == 0 and "final model (epoch 2)" in printed
    assert reads.count(out / "last.pt") == 1  # by the command for its settings; train() is handed what it read


def test_data_only_benchmark(capsys):
    code, printed, _ = run(capsys, "train", "--data-only", "--train-option", "size=24", "--batch-size", "8",
                           "--workers", "0", "--input-size", "32")
    assert code == 0 and "data loading alone" in printed
    assert re.search(r"epoch 1: \d+ images/s \(16 images in [\d.]+ s\)\n  epoch 2: \d+ images/s \(24 images", printed)


def test_data_only_with_a_step_reports_the_loader_wait(capsys):
    code, printed, _ = run(capsys, "train", "--data-only", "--step-ms", "2", "--train-option", "size=24",
                           "--batch-size", "8", "--workers", "1", "--input-size", "32")
    assert code == 0 and "a 2 ms step per batch" in printed
    assert len(re.findall(r"images in [\d.]+ s\); the loop waited for the loader \d+\.\d% of the time", printed)) == 2
    assert "a step of 2 ms alone would give 4000 images/s" in printed


def test_step_ms_needs_data_only(capsys):
    with pytest.raises(SystemExit):
        cli.main(["train", "--step-ms", "5"])
    assert "--step-ms is an option of --data-only" in capsys.readouterr().err


def test_bench_forwards_its_arguments(monkeypatch):
    calls = []
    monkeypatch.setattr(cli.subprocess, "call", lambda command, env: calls.append((command, env)) or 0)
    assert cli.main(["bench", "--quick", "--out", "report.md"]) == 0
    command, environment = calls[0]
    assert command == [sys.executable, "-m", "h3r.benchmark", "--quick", "--out", "report.md"]
    assert str(cli.Path(cli.__file__).resolve().parent.parent) in environment["PYTHONPATH"]
