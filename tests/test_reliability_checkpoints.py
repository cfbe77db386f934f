"""What is on disk always agrees with itself (fault probe, issue 11 group 3).

Kills are simulated: an exception that nothing catches (like SIGKILL) is raised at every
write boundary of a tiny 3-epoch run; the run is then resumed and the folder checked.
Corrupted, truncated and foreign checkpoints are refused with one sentence naming the file;
a full disk leaves the previous checkpoint, no temporary file and a consistent metrics.jsonl.
"""
import errno
import json
import os
import pickle

import pytest
import torch

import h3r.checkpoints as checkpoints_module
import h3r.train as train_module
from h3r import cli
from h3r.evaluate import CheckpointError, load_checkpoint
from h3r.train import CheckpointWriteError, train
from tests.test_train import tiny_config


class Killed(BaseException):
    """The process dies here: no ``except Exception`` catches it."""


def quiet(message):
    pass


def small_config(folder, **changes):
    values = dict(train_options={"size": 8, "image_size": 48}, test_options={"size": 2, "image_size": 48}, epochs=3,
                  draw=1, input_size=16, rotation=0.0, scale_jitter=0.0, translate=0.0, flip_prob=0.0,
                  colour_jitter=0.0)
    values.update(changes)
    return tiny_config(folder, **values)


def read_epochs(out):
    return [json.loads(line)["epoch"] for line in (out / "metrics.jsonl").read_text().splitlines()]


def check_consistent(out, epochs):
    """metrics.jsonl = last.pt's history (epochs 1..N, once each), best.pt = the best epoch last.pt records."""
    last = load_checkpoint(out / "last.pt")
    assert last["epoch"] == epochs
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [record["epoch"] for record in lines] == list(range(1, epochs + 1))
    assert lines == json.loads(json.dumps(last["history"]))
    best = load_checkpoint(out / "best.pt")
    assert best["epoch"] == last["best"]["epoch"]
    assert not list(out.glob("*.tmp")) and not list(out.glob(".*.tmp"))


# Epochs 1 and 3 improve, epoch 2 does not: the writes of a run are last, best, line | last, line | last, best, line
# | final report.
IMPROVING_EPOCHS = {1, 3}
EVENTS = 3 + 2 + 3 + 1


def script_run(monkeypatch, kill_at=None, torn=False):
    """Count the write events of a run (checkpoint writes, metrics lines, the final report); die at ``kill_at``."""
    events = {"count": 0, "epoch": 0}

    def event():
        if events["count"] == kill_at:
            events["count"] += 1
            raise Killed()
        events["count"] += 1

    real_write, real_append, real_epoch = checkpoints_module.write_atomic, train_module.append_record, \
        train_module.train_one_epoch

    def write_atomic(path, write):
        if path.suffix == ".pt":
            event()
        real_write(path, write)

    def append_record(path, record):
        if torn and events["count"] == kill_at:  # half a line reaches the disk, then the process dies
            with open(path, "a") as handle:
                handle.write(json.dumps(record)[:20])
        event()
        real_append(path, record)

    def final_report(*arguments):
        event()
        return real_final_report(*arguments)

    def train_one_epoch(*arguments):
        events["epoch"] = arguments[-2] + 1
        return real_epoch(*arguments)

    real_final_report = train_module.final_report
    # save_atomic and reconcile_run_folder (h3r.checkpoints) write through it.
    monkeypatch.setattr(checkpoints_module, "write_atomic", write_atomic)
    monkeypatch.setattr(train_module, "append_record", append_record)
    monkeypatch.setattr(train_module, "final_report", final_report)
    monkeypatch.setattr(train_module, "train_one_epoch", train_one_epoch)
    monkeypatch.setattr(train_module, "is_better", lambda value, best, higher: events["epoch"] in IMPROVING_EPOCHS)
    monkeypatch.setattr(train_module, "plot_learning_curve", lambda history, config, baseline, path: path)
    return events


def test_the_scripted_run_has_the_expected_write_events(tmp_path, monkeypatch):
    events = script_run(monkeypatch)
    train(small_config(tmp_path), log=quiet)
    assert events["count"] == EVENTS
    check_consistent(tmp_path / "run", 3)
    assert load_checkpoint(tmp_path / "run" / "best.pt")["epoch"] == 3


@pytest.mark.parametrize("kill_at, torn", [(k, False) for k in range(EVENTS)] + [(4, True)])
def test_a_kill_at_any_write_boundary_then_resume_leaves_a_consistent_folder(tmp_path, monkeypatch, kill_at, torn):
    events = script_run(monkeypatch, kill_at=kill_at, torn=torn)
    config = small_config(tmp_path)
    out = tmp_path / "run"
    with pytest.raises(Killed):
        train(config, log=quiet)
    events["count"] = -10**6  # no further kill
    lines = []
    if (out / "last.pt").exists():
        summary = train(config, resume=str(out / "last.pt"), log=lines.append)
    else:
        summary = train(config, log=lines.append)
    assert summary["finished"]
    check_consistent(out, 3)
    assert load_checkpoint(out / "best.pt")["epoch"] == 3
    assert (out / "eval-synthetic-face-test" / "results.md").is_file()


def test_resume_repairs_best_pt_left_behind_by_a_kill(tmp_path, monkeypatch):
    """The probe's case: last.pt says best = epoch N, best.pt still holds an older epoch."""
    script_run(monkeypatch, kill_at=6)  # epoch 3: last.pt written, best.pt not
    out = tmp_path / "run"
    with pytest.raises(Killed):
        train(small_config(tmp_path), log=quiet)
    assert load_checkpoint(out / "last.pt")["best"]["epoch"] == 3
    assert load_checkpoint(out / "best.pt")["epoch"] == 1
    assert read_epochs(out) == [1, 2]
    monkeypatch.undo()
    lines = []
    summary = train(small_config(tmp_path), resume=str(out), log=lines.append)
    assert summary["finished"] and any("repaired" in line and "best.pt" in line for line in lines)
    check_consistent(out, 3)


def test_resuming_a_complete_run_says_so_and_rewrites_the_report(tmp_path, capsys):
    out = tmp_path / "run"
    train(small_config(tmp_path, epochs=1), log=quiet)
    report = out / "eval-synthetic-face-test" / "results.md"
    report.unlink()
    code = cli.main(["train", "--resume", str(out / "last.pt"), "--workers", "0"])
    printed = capsys.readouterr().out
    assert code == 0 and "is complete (1/1 epochs)" in printed and "final model (epoch 1)" in printed
    assert report.is_file() and read_epochs(out) == [1]


# ------------------------------------------------------------------------------------------
# Corrupted checkpoints


@pytest.fixture(scope="module")
def checkpoint_file(tmp_path_factory):
    folder = tmp_path_factory.mktemp("checkpoint")
    train(small_config(folder, epochs=1, draw=0), log=quiet)
    return folder / "run" / "last.pt"


def damaged(tmp_path, checkpoint_file, how):
    data = checkpoint_file.read_bytes()
    path = tmp_path / "last.pt"
    if how == "empty":
        data = b""
    elif how == "truncated":
        data = data[: len(data) // 2]
    elif how == "random":
        data = os.urandom(4096)
    elif how == "flipped":
        middle = len(data) // 2
        data = data[:middle] + bytes(b ^ 0xFF for b in data[middle:middle + 64]) + data[middle + 64:]
    elif how == "foreign pickle":
        with open(path, "wb") as handle:
            pickle.dump({"format": "h3r-checkpoint-1", "thing": Killed}, handle, protocol=2)
        return path
    path.write_bytes(data)
    return path


@pytest.mark.parametrize("how, message", [
    ("empty", "is empty (0 bytes)"),
    ("truncated", "cannot be read: it is truncated or corrupted"),
    ("random", "cannot be read"),
    ("flipped", "is corrupted: its contents differ from the checksum"),
    ("foreign pickle", "cannot be read"),
])
def test_damaged_checkpoints_are_refused_with_the_file_name(tmp_path, checkpoint_file, how, message):
    path = damaged(tmp_path, checkpoint_file, how)
    with pytest.raises(CheckpointError) as caught:
        load_checkpoint(path)
    text = str(caught.value)
    assert str(path) in text and message in text
    assert "weights_only" not in text and "\n" not in text


@pytest.mark.parametrize("how", ["empty", "truncated", "random", "flipped"])
def test_the_cli_reports_a_damaged_checkpoint_in_one_line(tmp_path, checkpoint_file, capsys, how):
    path = damaged(tmp_path, checkpoint_file, how)
    for arguments in (["eval", "--checkpoint", str(path)], ["train", "--resume", str(path)]):
        code = cli.main(arguments)
        err = capsys.readouterr().err
        assert code == 2 and err.count("\n") == 1 and str(path) in err and "weights_only" not in err


def test_checkpoints_without_a_checksum_still_load(tmp_path, checkpoint_file):
    payload = torch.load(checkpoint_file, weights_only=True)
    assert payload.pop("checksum")["algorithm"] == "sha256"
    torch.save(payload, tmp_path / "old.pt")
    loaded = load_checkpoint(tmp_path / "old.pt")
    assert loaded["epoch"] == 1 and "checksum" not in loaded


def test_a_changed_tensor_value_is_caught_by_the_checksum(tmp_path, checkpoint_file):
    payload = torch.load(checkpoint_file, weights_only=True)
    name = next(iter(payload["model"]))
    payload["model"][name].view(-1)[0] += 1.0
    torch.save(payload, tmp_path / "edited.pt")
    with pytest.raises(CheckpointError, match="checksum"):
        load_checkpoint(tmp_path / "edited.pt")


# ------------------------------------------------------------------------------------------
# A full disk


def fill_disk_on(monkeypatch, name, call):
    """torch.save of the ``call``-th write of ``name`` writes some bytes, then fails with ENOSPC."""
    calls = {"count": 0}
    real_save = torch.save

    def save(payload, handle, *arguments, **keywords):
        if os.path.basename(handle.name) == f".{name}.tmp":
            calls["count"] += 1
            if calls["count"] == call:
                handle.write(b"\0" * 4096)
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_save(payload, handle, *arguments, **keywords)

    monkeypatch.setattr(torch, "save", save)


@pytest.mark.parametrize("name", ["last.pt", "best.pt"])
def test_a_full_disk_keeps_the_previous_checkpoint_and_no_temporary_file(tmp_path, monkeypatch, name):
    monkeypatch.setattr(train_module, "is_better", lambda value, best, higher: True)
    fill_disk_on(monkeypatch, name, call=2)
    out = tmp_path / "run"
    with pytest.raises(CheckpointWriteError) as caught:
        train(small_config(tmp_path, epochs=2), log=quiet)
    text = str(caught.value)
    assert text == f"could not write {out / name}: No space left on device; the previous {name} is unchanged"
    assert caught.value.__cause__ is None and caught.value.__suppress_context__
    assert sorted(path.name for path in out.iterdir()) == ["best.pt", "config.json", "last.pt", "metrics.jsonl"]
    assert load_checkpoint(out / name)["epoch"] == 1
    assert read_epochs(out) == [1]  # the line of epoch 2 is written after its checkpoints
    monkeypatch.undo()
    assert train(small_config(tmp_path, epochs=2), resume=str(out), log=quiet)["finished"]
    check_consistent(out, 2)


def test_the_cli_reports_a_full_disk_in_one_line(tmp_path, monkeypatch, capsys):
    fill_disk_on(monkeypatch, "last.pt", call=1)
    out = tmp_path / "run"
    code = cli.main(["train", "--train-option", "size=8", "--train-option", "image_size=48", "--test-option", "size=2",
                     "--test-option", "image_size=48", "--input-size", "32", "--batch-size", "8", "--workers", "0",
                     "--no-progress", "--epochs", "1", "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 2 and err == (f"h3r train: error: could not write {out / 'last.pt'}: No space left on device; "
                                 f"no last.pt was written\n")
    assert not list(out.glob(".*.tmp"))
