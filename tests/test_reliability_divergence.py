"""Training that diverges stops and says so; nothing that draws, plots or reports hangs on non-finite values
(fault probe, issue 11 group 4)."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import h3r.train as train_module
from h3r import cli
from h3r.configs import config_from_dict
from h3r.evaluate import load_checkpoint
from h3r.train import TrainingDiverged, train
from tests.test_reliability_checkpoints import small_config

REPOSITORY = Path(__file__).resolve().parent.parent


def quiet(message):
    pass


@pytest.mark.parametrize("name", ["lr", "weight_decay", "warmup_epochs", "min_lr_ratio", "step_gamma", "grad_clip",
                                  "box_scale", "rotation", "scale_jitter", "translate", "flip_prob", "colour_jitter",
                                  "sigma"])
@pytest.mark.parametrize("value", [float("inf"), float("nan"), float("-inf")])
def test_non_finite_float_settings_are_refused(name, value):
    with pytest.raises(ValueError, match=f"{name}: expected a (finite|positive|number >= 0)"):
        config_from_dict({name: value})


def poison_loss(monkeypatch, at_call):
    """The codec's loss is NaN at the ``at_call``-th training step (1-based)."""
    calls = {"count": 0}
    real = train_module.model_and_codec

    def model_and_codec(config, num_keypoints):
        model, codec = real(config, num_keypoints)
        real_loss = codec.loss

        def loss(*arguments, **keywords):
            calls["count"] += 1
            value = real_loss(*arguments, **keywords)
            return value * float("nan") if calls["count"] == at_call else value

        codec.loss = loss
        return model, codec

    monkeypatch.setattr(train_module, "model_and_codec", model_and_codec)


def test_a_non_finite_loss_stops_the_run_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    checks = []
    real_check = train_module.check_finite
    monkeypatch.setattr(train_module, "check_finite", lambda *arguments: checks.append(arguments[-1] is not None)
                        or real_check(*arguments))
    monkeypatch.setattr(train_module, "FINITE_CHECK_EVERY", 2)
    poison_loss(monkeypatch, at_call=7)  # 4 steps per epoch: epoch 2, its 3rd step
    out = tmp_path / "run"
    with pytest.raises(TrainingDiverged) as caught:
        train(small_config(tmp_path, train_options={"size": 32, "image_size": 48}), log=quiet)
    assert str(caught.value).startswith(f"training diverged: the loss is nan at step 7 (epoch 2); stopped without "
                                        f"saving this epoch, so {out / 'last.pt'} still holds epoch 1;")
    # one host read of the guard every 2 steps (the last of an epoch also checks the weights), none per step
    assert checks == [False, True, False, True]
    kept = load_checkpoint(out / "last.pt")
    assert kept["epoch"] == 1 and all(bool(torch.isfinite(value).all()) for value in kept["model"].values())
    assert [json.loads(line)["epoch"] for line in (out / "metrics.jsonl").read_text().splitlines()] == [1]


def test_the_guard_finds_the_first_non_finite_loss_of_its_window():
    from torch.utils._python_dispatch import TorchDispatchMode

    class Operations(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.names = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.names.append(str(func))
            return func(*args, **(kwargs or {}))

    losses = torch.tensor([0.5, float("inf"), float("nan"), 0.25], dtype=torch.float64)
    with Operations() as operations:
        step, loss = train_module.first_non_finite(losses, next_step=14)  # the losses of global steps 10..13
    assert not [name for name in operations.names if "_local_scalar_dense" in name]  # no host read (.item())
    assert step.item() == 11 and loss.item() == float("inf") and loss.dim() == 0
    step, _ = train_module.first_non_finite(losses[3:], next_step=14)
    assert step.item() == -1


@pytest.mark.parametrize("at_call, where", [(4, "at step 4 (epoch 1); stopped without saving this epoch, so no "
                                                 "checkpoint was written"),
                                            (6, "at step 6 (epoch 2); stopped without saving this epoch, so")])
def test_the_reported_step_is_the_poisoned_one_in_a_full_or_partial_window(tmp_path, monkeypatch, at_call, where):
    monkeypatch.setattr(train_module, "FINITE_CHECK_EVERY", 3)  # 4 steps per epoch: windows of 3 and 1 steps
    poison_loss(monkeypatch, at_call=at_call)
    with pytest.raises(TrainingDiverged) as caught:
        train(small_config(tmp_path, train_options={"size": 32, "image_size": 48}), log=quiet)
    assert str(caught.value).startswith(f"training diverged: the loss is nan {where}")


def test_non_finite_weights_with_a_finite_loss_stop_the_run(tmp_path, monkeypatch):
    real_epoch = train_module.train_one_epoch

    def train_one_epoch(network, *arguments):
        result = real_epoch(network, *arguments)  # the check at the end of the epoch has passed: spoil, check again
        next(network.parameters()).data.fill_(float("inf"))
        train_module.check_finite(torch.tensor(-1), torch.tensor(0.0), train_module.Processes(),
                                  list(network.parameters()))
        return result

    monkeypatch.setattr(train_module, "train_one_epoch", train_one_epoch)
    with pytest.raises(TrainingDiverged, match="the weights are no longer finite .epoch 1.*no checkpoint was written"):
        train(small_config(tmp_path), log=quiet)


def test_a_huge_learning_rate_exits_non_zero_in_one_line(tmp_path, capsys):
    out = tmp_path / "run"
    code = cli.main(["train", "--train-option", "size=16", "--train-option", "image_size=48", "--test-option", "size=2",
                     "--test-option", "image_size=48", "--input-size", "32", "--batch-size", "8", "--workers", "0",
                     "--no-progress", "--epochs", "3", "--lr", "1e6", "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 1 and err.startswith("h3r train: error: training diverged: the loss is ") and err.count("\n") == 1
    assert not (out / "eval-synthetic-face-test").exists()
    if (out / "last.pt").exists():
        assert all(bool(torch.isfinite(value).all()) for value in load_checkpoint(out / "last.pt")["model"].values())


def run_python(code: str, timeout: int = 240) -> subprocess.CompletedProcess:
    """``code`` in a fresh interpreter on this checkout: a hang inside Pillow's C code cannot be interrupted here."""
    environment = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPOSITORY),
                                                                             os.environ.get("PYTHONPATH")]))}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout,
                          env=environment, cwd=REPOSITORY)


def test_drawing_plotting_and_reporting_non_finite_values_finish(tmp_path):
    code = f"""
import numpy as np
from pathlib import Path
from h3r.configs import TrainConfig
from h3r.data import open_dataset
from h3r.evaluate import Predictions, draw_predictions, write_report
from h3r.train import plot_learning_curve
data = open_dataset("synthetic-face", split="test", size=4, image_size=48)
coords = np.stack([np.asarray(data[i].keypoints, np.float64) for i in range(4)])
coords[0] = np.nan
coords[1] = np.inf
coords[2, :, 0] = 1e300
coords[3, ::2] = -1e300
out = Path({str(tmp_path)!r})
paths = draw_predictions(data, Predictions(coords, np.full(coords.shape[:2], np.nan), np.arange(4)), out / "images", 4)
assert len(paths) == 4 and all(p.stat().st_size > 0 for p in paths)
history = [{{"epoch": 1, "train_loss": float("nan"), "test": {{"nme": float("inf")}}}},
           {{"epoch": 2, "train_loss": float("inf"), "test": {{"nme": float("nan")}}}}]
plot_learning_curve(history, TrainConfig(), {{"nme": float("nan")}}, out / "curve.png")
write_report(out / "report", {{"nme": float("nan"), "non_finite": 4}}, {{"dataset": "x"}}, {{"nme": float("inf")}})
print("done")
"""
    result = run_python(code)
    assert result.returncode == 0 and result.stdout.strip() == "done", result.stderr
    assert (tmp_path / "curve.png").is_file()
    assert "| non_finite | 4 |" in (tmp_path / "report" / "results.md").read_text()


def test_evaluating_a_checkpoint_with_nan_weights_finishes_and_counts_the_failures(tmp_path):
    train(small_config(tmp_path, epochs=1, draw=0), log=quiet)
    payload = torch.load(tmp_path / "run" / "last.pt", weights_only=True)
    for value in payload["model"].values():
        if value.is_floating_point():
            value.fill_(float("nan"))
    payload.pop("checksum")
    torch.save(payload, tmp_path / "nan.pt")
    code = (f"from h3r import cli; raise SystemExit(cli.main(['eval', '--checkpoint', {str(tmp_path / 'nan.pt')!r}, "
            f"'--device', 'cpu', '--draw', '2', '--out', {str(tmp_path / 'eval')!r}]))")
    result = run_python(code)
    assert result.returncode == 0, result.stderr
    metrics = json.loads((tmp_path / "eval" / "results.json").read_text())["metrics"]
    assert metrics["non_finite"] == 2 and metrics["fr@0.1"] == 1.0 and metrics["auc@0.1"] == 0.0
    assert np.isnan(metrics["nme"]) and len(list((tmp_path / "eval" / "images").glob("*.png"))) == 2
