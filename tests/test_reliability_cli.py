"""User errors get one sentence, never a traceback, and are refused before anything is written
(fault probe, issue 11 group 5)."""
import json
import os

import pytest
import torch

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
    (("--stride", "8"), "topk: the h3r decoder averages at most 32 activations and at most the heatmap's cells "
                        "(2x2 = 4 at input 16 px, stride 8); got 9"),
    (("--topk", "33"), "topk: the h3r decoder averages at most 32 activations"),
    (("--train-option", "size=abc"), "train_options: the synthetic-face reader's option size expects int | None, "
                                     "got str 'abc'"),
    (("--train-option", "size=6.5"), "option size expects int | None, got float 6.5"),
    (("--test-option", "size=true"), "test_options: the synthetic-face reader's option size expects int | None, "
                                     "got bool True"),
    (("--train-option", "image_size=1e9"), "option image_size expects int, got float 1000000000.0"),
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
    (("--dataset", "coco", "--data-root", "missing-coco"), "missing-coco is not a folder"),
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


# --------------------------------------------------------------------------- second fault probe (CLI)


def test_a_folder_holding_a_run_is_not_trained_into_again(capsys, tmp_path):
    """A fresh run into another run's folder is refused (its best.pt would outlive the new run's epochs);
    a folder left by a run that stopped before its first checkpoint may be reused."""
    out = tmp_path / "run"
    assert run(capsys, "train", *TINY, "--out", str(out))[0] == 0
    before = {name: (out / name).read_bytes() for name in ("last.pt", "best.pt", "metrics.jsonl")}
    code, _, err = run(capsys, "train", *TINY, "--codec", "gaussian", "--out", str(out))
    assert code == 2 and one_sentence(err, "train") and "already holds a run (last.pt, best.pt, metrics.jsonl)" in err
    assert f"h3r train --resume {out}" in err
    assert {name: (out / name).read_bytes() for name in before} == before
    stopped = tmp_path / "stopped"
    stopped.mkdir()
    (stopped / "config.json").write_text("{}")
    (stopped / "metrics.jsonl").write_text("")
    code, _, err = run(capsys, "train", "--resume", str(stopped))
    assert code == 2 and one_sentence(err, "train") and f"start the run again with --out {stopped}" in err
    assert run(capsys, "train", *TINY, "--out", str(stopped))[0] == 0
    assert (stopped / "last.pt").is_file()


def test_a_relative_data_root_is_stored_absolute_and_may_change_on_resume(capsys, tmp_path, monkeypatch):
    from h3r.configs import load_config

    import shutil

    from tests.test_train import write_cofw_files

    monkeypatch.chdir(tmp_path)
    assert load_config("wflw", data_root="data/WFLW").data_root == str(tmp_path / "data" / "WFLW")
    (tmp_path / "data").mkdir()
    write_cofw_files(tmp_path / "data")
    out = tmp_path / "run"
    code, _, err = run(capsys, "train", "--dataset", "cofw", "--data-root", "data", "--input-size", "16",
                       "--batch-size", "4", "--workers", "0", "--no-progress", "--device", "cpu", "--epochs", "2",
                       "--stop-after", "1", "--draw", "0", "--out", str(out))
    assert code == 0, err
    assert cli_config(out)["data_root"] == str(tmp_path / "data")
    shutil.move(tmp_path / "data", tmp_path / "moved")
    monkeypatch.chdir(out)
    code, _, err = run(capsys, "train", "--resume", str(out), "--data-root", "../moved", "--no-progress")
    assert code == 0, err
    assert cli_config(out)["data_root"] == str(tmp_path / "moved")


def cli_config(out):
    import json

    return json.loads((out / "config.json").read_text())


def test_eval_of_the_training_split_reads_it_with_the_runs_train_options(run_folder, tmp_path):
    result = evaluate_module.evaluate_checkpoint(run_folder, split="train", draw=0, device="cpu",
                                                 out=str(tmp_path / "e"), progress=False)
    assert result["settings"]["items"] == 8  # train_options size=8, not the reader's default 4,000


def test_options_a_codec_does_not_read_are_noted(capsys, tmp_path, run_folder):
    code, _, err = run(capsys, "train", *TINY, "--codec", "gaussian", "--topk", "5", "--step-epochs", "1",
                       "--out", str(tmp_path / "run"))
    assert code == 0
    assert "h3r train: note: ignored topk (read by the h3r codec, not gaussian)" in err
    assert "h3r train: note: ignored step_epochs (read by the step schedule, not cosine)" in err
    code, _, err = run(capsys, "eval", "--checkpoint", str(run_folder), "--refine", "dark", "--draw", "0",
                       "--out", str(tmp_path / "e"))
    assert code == 0 and "h3r eval: note: ignored refine (read by the gaussian and dark codecs, not h3r)" in err


def test_h3r_gaussian_trains_and_evaluates_with_its_sigma(capsys, tmp_path):
    code, _, err = run(capsys, "train", *TINY, "--codec", "h3r-gaussian", "--sigma", "0.75", "--topk", "5",
                       "--out", str(tmp_path / "run"))
    assert code == 0, err
    assert "ignored topk (read by the h3r codec, not h3r-gaussian)" in err and "ignored sigma" not in err
    assert (cli_config(tmp_path / "run")["codec"], cli_config(tmp_path / "run")["sigma"]) == ("h3r-gaussian", 0.75)
    code, _, err = run(capsys, "eval", "--checkpoint", str(tmp_path / "run"), "--topk-weights", "linear",
                       "--draw", "0", "--out", str(tmp_path / "e"))
    assert code == 0 and "ignored" not in err, err
    code, _, err = run(capsys, "eval", "--checkpoint", str(tmp_path / "run"), "--window", "5", "--draw", "0",
                       "--out", str(tmp_path / "e5"))
    decoder = json.loads((tmp_path / "e5" / "results.json").read_text())["settings"]["decoder"]
    assert code == 0 and decoder == "H3RCodec(stride=4, sigma=0.75, window=5, weights='softmax')", err
    code, _, err = run(capsys, "eval", "--checkpoint", str(tmp_path / "run"), "--window", "4", "--draw", "0",
                       "--out", str(tmp_path / "e4"))
    assert code == 2 and "window: expected an odd integer >= 1, got 4" in err
    code, _, err = run(capsys, "train", *TINY, "--codec", "h3r-gaussian", "--sigma", "5", "--out", str(tmp_path / "r"))
    assert code == 2 and "sigma: at most 4.667 cells for h3r-gaussian" in err


def test_pretrained_accepts_a_run_folder(capsys, tmp_path, run_folder):
    code, _, err = run(capsys, "train", *TINY, "--pretrained", str(run_folder), "--out", str(tmp_path / "run"))
    assert code == 0, err
    code, _, err = run(capsys, "train", *TINY, "--pretrained", str(tmp_path), "--out", str(tmp_path / "run2"))
    assert code == 2 and f"checkpoint {tmp_path / 'last.pt'} does not exist (give a .pt file, an h3r run folder" in err


def test_an_error_in_a_loader_worker_is_one_sentence():
    """torch re-raises a worker's error with the worker's traceback in its message: the user sees the
    worker's own message and where it came from."""
    from torch.utils.data import DataLoader

    class Broken(torch.utils.data.Dataset):
        def __len__(self):
            return 2

        def __getitem__(self, index):
            raise ValueError("cannot decode image data/x.jpg: Truncated File Read")

    with pytest.raises(ValueError) as caught:
        next(iter(DataLoader(Broken(), num_workers=1)))
    assert "Original Traceback" in str(caught.value)
    assert cli.error_message(caught.value) == ("cannot decode image data/x.jpg: Truncated File Read "
                                               "(in DataLoader worker process 0)")
    assert cli.error_message(ValueError("plain")) == "plain"


def test_ctrl_c_says_how_to_continue(capsys, monkeypatch):
    import h3r.train

    def interrupted(*arguments, **keywords):
        raise KeyboardInterrupt

    monkeypatch.setattr(h3r.train, "train", interrupted)
    code, _, err = run(capsys, "train", *TINY)
    assert code == 130 and "Traceback" not in err
    assert err.strip() == ("h3r train: interrupted: the run folder keeps its last completed epoch (continue with "
                           "'h3r train --resume <run folder>')")


def test_flip_test_is_refused_where_the_left_right_pairs_are_unknown(tmp_path, run_folder):
    """A .pts folder of 5 points (no known layout): the mirrored prediction cannot be mapped back."""
    import numpy as np
    from PIL import Image

    from h3r.data import open_dataset
    from h3r.evaluate import predict, load_checkpoint, model_and_codec
    from h3r.configs import config_from_dict
    from h3r.crops import eval_crop

    for index in range(2):
        Image.fromarray(np.zeros((20, 20, 3), np.uint8)).save(tmp_path / f"face{index}.png")
        points = "\n".join(f"{3 + 2 * i} {4 + i}" for i in range(5))
        (tmp_path / f"face{index}.pts").write_text(f"version: 1\nn_points: 5\n{{\n{points}\n}}\n")
    data = open_dataset("pts", root=str(tmp_path))
    assert not data.mirror_known
    checkpoint = load_checkpoint(run_folder)
    config = config_from_dict(checkpoint["config"])
    model, codec = model_and_codec(config, 5)
    with pytest.raises(ValueError, match="flip_test: the left/right pairs of pts's 5 landmarks are unknown"):
        predict(model, codec, data, eval_crop(config), device=torch.device("cpu"), flip_test=True)
    assert predict(model, codec, data, eval_crop(config), device=torch.device("cpu")).coords.shape == (2, 5, 2)


def test_an_empty_split_is_named():
    from h3r.data import require_items

    class Empty:
        name, split = "coco", "val"

        def __len__(self):
            return 0

    with pytest.raises(ValueError, match=r"coco val \(/data/coco\): the split has no items"):
        require_items(Empty(), "/data/coco")
