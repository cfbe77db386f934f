"""User errors get one sentence, never a traceback, and are refused before anything is written
(fault probe, issue 11 group 5)."""
import os

import pytest

import h3r.evaluate as evaluate_module
from h3r import cli
from h3r.train import train
from tests.test_reliability_checkpoints import small_config

TINY = ("--train-option", "size=8", "--train-option", "image_size=48", "--test-option", "size=2",
        "--test-option", "image_size=48", "--input-size", "16", "--batch-size", "8", "--workers", "0",
        "--no-progress", "--epochs", "1", "--device", "cpu")


def run(capsys, *arguments):
    try:
        code = cli.main(list(arguments))
    except SystemExit as stop:  # argparse
        code = stop.code
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def one_sentence(err: str, command: str) -> bool:
    lines = err.strip().splitlines()
    return "Traceback" not in err and (len(lines) == 1 and lines[0].startswith(f"h3r {command}: error: ")
                                       or lines[-1].startswith(f"h3r {command}: error: argument"))


@pytest.mark.parametrize("arguments, message", [
    (("--device", "gpu0"), "device: 'gpu0' is not a device name; use auto, cpu, cuda, cuda:N or mps"),
    (("--device", "mps"), "device: 'mps' requested but MPS is not available here"),
    (("--device", "cuda:0"), "requested but"),
    (("--device", "meta"), "device: 'meta' is not supported here"),
    (("--train-option", "bogus=1"), "train_options: the synthetic-face reader (SyntheticFaces) takes no option "
                                    "'bogus'; its options: size, seed, image_size, keep_inside, max_rotation"),
    (("--test-option", "split=train"), "test_options: the synthetic-face reader (SyntheticFaces) takes no option "
                                       "'split'"),
    (("--stop-after", "0"), "argument --stop-after: expected an integer >= 1, got 0"),
    (("--stop-after", "-1"), "argument --stop-after: expected an integer >= 1, got -1"),
    (("--seed", "-1"), "seed: expected an integer from 0 to 2**63 - 1, got -1"),
    (("--lr", "inf"), "lr: expected a finite number, got inf"),
    (("--sigma", "nan"), "sigma: expected a positive number"),
    (("--rotation-is-not-an-option",), "unrecognized arguments"),
])
def test_bad_train_options_are_one_sentence_and_write_nothing(capsys, tmp_path, monkeypatch, arguments, message):
    monkeypatch.chdir(tmp_path)
    if arguments[:2] == ("--device", "cuda:0"):
        monkeypatch.setattr(evaluate_module.torch.cuda, "is_available", lambda: True)
        monkeypatch.setattr(evaluate_module.torch.cuda, "device_count", lambda: 0)
    code, _, err = run(capsys, "train", *TINY, *arguments, "--out", str(tmp_path / "run"))
    assert code == 2 and message in err and (one_sentence(err, "train") or "unrecognized" in err), err
    assert sorted(os.listdir(tmp_path)) == []  # no run folder, no runs/


def test_unknown_reader_options_of_a_real_dataset_list_the_valid_ones(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "coco").mkdir()
    code, _, err = run(capsys, "train", "--dataset", "coco", "--data-root", str(tmp_path / "coco"), "--train-option",
                       "size=16", "--out", str(tmp_path / "run"))
    assert code == 2 and one_sentence(err, "train")
    assert "train_options: the coco reader (COCODataset) takes no option 'size'; its options: detections, " \
           "detection_threshold" in err
    assert sorted(os.listdir(tmp_path)) == ["coco"]


@pytest.mark.parametrize("where", ["under a file", "a file", "unwritable"])
def test_an_unusable_run_folder_is_refused_before_training(capsys, tmp_path, monkeypatch, where):
    (tmp_path / "file").write_text("not a folder")
    out = {"under a file": tmp_path / "file" / "run", "a file": tmp_path / "file",
           "unwritable": tmp_path / "locked" / "run"}[where]
    if where == "unwritable":
        (tmp_path / "locked").mkdir()
        real_access = os.access
        monkeypatch.setattr(os, "access", lambda path, mode: False if str(path).endswith("locked")
                            else real_access(path, mode))
    code, _, err = run(capsys, "train", *TINY, "--out", str(out))
    assert code == 2 and one_sentence(err, "train"), err
    expected = {"under a file": f"out: {out} is under the file {tmp_path / 'file'}; give a folder",
                "a file": f"out: {out} is a file; give a folder",
                "unwritable": f"out: cannot write in {tmp_path / 'locked'} (permission denied"}[where]
    assert expected in err
    assert sorted(os.listdir(tmp_path)) == (["file", "locked"] if where == "unwritable" else ["file"])
    assert not (tmp_path / "locked").exists() or os.listdir(tmp_path / "locked") == []


def test_a_run_folder_that_cannot_be_created_is_one_sentence(capsys, tmp_path, monkeypatch):
    """Should the checks be passed (a race, a file system that lies), mkdir's failure is still one sentence."""
    monkeypatch.setattr("h3r.train.check_output_folder", lambda folder, what: None)
    (tmp_path / "file").write_text("")
    code, _, err = run(capsys, "train", *TINY, "--out", str(tmp_path / "file" / "run"))
    assert code == 2 and one_sentence(err, "train") and "out: cannot create the run folder" in err


@pytest.fixture(scope="module")
def run_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("cli")
    train(small_config(folder, epochs=1, draw=0), log=lambda message: None)
    return folder / "run"


@pytest.mark.parametrize("arguments, message", [
    (("--batch-size", "0"), "argument --batch-size: expected an integer >= 1, got 0"),
    (("--draw", "-1"), "argument --draw: expected an integer >= 0, got -1"),
    (("--workers", "-2"), "argument --workers: expected an integer >= 0, got -2"),
    (("--device", "gpu0"), "device: 'gpu0' is not a device name"),
    (("--option", "bogus=1"), "options: the synthetic-face reader (SyntheticFaces) takes no option 'bogus'"),
])
def test_bad_eval_options_are_one_sentence_and_write_nothing(capsys, tmp_path, run_folder, arguments, message):
    out = tmp_path / "eval"
    code, _, err = run(capsys, "eval", "--checkpoint", str(run_folder), "--out", str(out), *arguments)
    assert code == 2 and message in err and one_sentence(err, "eval"), err
    assert not out.exists()


def test_eval_into_a_folder_under_a_file_is_one_sentence(capsys, tmp_path, run_folder):
    (tmp_path / "file").write_text("")
    code, _, err = run(capsys, "eval", "--checkpoint", str(run_folder), "--out", str(tmp_path / "file" / "eval"))
    assert code == 2 and one_sentence(err, "eval") and "is under the file" in err


def test_eval_batch_size_is_used_as_given(run_folder, tmp_path, monkeypatch):
    seen = []
    real_predict = evaluate_module.predict
    monkeypatch.setattr(evaluate_module, "predict",
                        lambda *arguments, **keywords: seen.append(keywords["batch_size"]) or real_predict(*arguments,
                                                                                                         **keywords))
    evaluate_module.evaluate_checkpoint(run_folder, batch_size=1, draw=0, device="cpu", out=str(tmp_path / "e"),
                                        progress=False)
    assert seen == [1]
    with pytest.raises(ValueError, match="batch_size: expected an integer >= 1, got 0"):
        evaluate_module.evaluate_checkpoint(run_folder, batch_size=0, device="cpu", out=str(tmp_path / "f"))
    assert not (tmp_path / "f").exists()


def test_stop_after_must_be_positive_in_the_python_api_too(tmp_path):
    with pytest.raises(ValueError, match="stop_after: expected a positive number of epochs, got 0"):
        train(small_config(tmp_path), stop_after_epochs=0)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("arguments, message", [
    (("--dataset", "coco", "--data-root", "missing-coco"), "coco: data root missing-coco is not a folder"),
    (("--pretrained", "weights.pt"), "pretrained: weights.pt cannot be read: it is truncated or corrupted"),
    (("--pretrained", "random.pt"), "pretrained: random.pt cannot be read"),
])
def test_data_model_and_loader_errors_come_before_the_run_folder(capsys, tmp_path, monkeypatch, arguments, message):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "weights.pt").write_bytes(b"PK\x03\x04 truncated")
    (tmp_path / "random.pt").write_bytes(os.urandom(2048))
    options = TINY if arguments[1] != "coco" else ("--epochs", "1", "--device", "cpu")
    code, _, err = run(capsys, "train", *options, *arguments, "--out", "run")
    assert code == 2 and message in err and one_sentence(err, "train") and "weights_only" not in err, err
    assert not (tmp_path / "run").exists()
