"""The crop settings live in ``TrainConfig.crop``; dataset files, the command line and runs saved by
earlier versions still name them flat (``input_size = 256``, ``--input-size``)."""
import dataclasses
import json
import re

import pytest
import torch

from h3r import cli, configs
from h3r._compat import tomllib
from h3r.checkpoints import checkpoint_checksum
from h3r.configs import SETTING_NAMES, TrainConfig, config_from_dict, flat_settings, load_config
from h3r.evaluate import evaluate_checkpoint
from h3r.train import train
from h3r.transforms import CropConfig
from tests.test_reliability_checkpoints import small_config

# The crop settings as configurations saved them before TrainConfig.crop (no mean, no std).
FLAT_CROP_KEYS = ("input_size", "box_scale", "rotation", "scale_jitter", "translate", "flip_prob", "colour_jitter")


def quiet(message):
    pass


# ------------------------------------------------------------------------------------------
# Dataset files


@pytest.mark.parametrize("dataset", sorted(path.stem for path in configs.CONFIG_DIR.glob("*.toml")))
def test_flat_dataset_files_fill_the_crop(dataset):
    written = tomllib.loads(configs.dataset_defaults_path(dataset).read_text(encoding="utf-8"))
    crop = load_config(dataset).crop
    assert {key: getattr(crop, key) for key in FLAT_CROP_KEYS} == {key: written[key] for key in FLAT_CROP_KEYS}
    assert (crop.mean, crop.std) == (CropConfig().mean, CropConfig().std)


def defaults_file(monkeypatch, tmp_path, text):
    """``h3r/configs/mine.toml`` holding ``text``."""
    monkeypatch.setattr(configs, "CONFIG_DIR", tmp_path)
    path = tmp_path / "mine.toml"
    path.write_text('dataset = "synthetic-face"\n' + text)
    return path


def test_a_crop_table_in_a_dataset_file_is_read_and_overridden_flat(monkeypatch, tmp_path):
    defaults_file(monkeypatch, tmp_path, "epochs = 1\n\n[crop]\ninput_size = 48\nrotation = 5.0\n")
    assert load_config("mine").crop == CropConfig(input_size=48, rotation=5.0)
    assert load_config("mine", input_size=32).crop == CropConfig(input_size=32, rotation=5.0)


@pytest.mark.parametrize("text, message", [
    ("input_size = 48\n[crop]\ninput_size = 64\n", "input_size given both at the top level and in the [crop] table"),
    ("[crop]\nrotate = 5.0\n", "unknown crop setting(s) rotate"),
    ("crop = 5\n", "crop: expected a table of crop settings"),
])
def test_a_crop_setting_given_twice_or_unknown_names_the_file(monkeypatch, tmp_path, text, message):
    path = defaults_file(monkeypatch, tmp_path, text)
    with pytest.raises(ValueError, match=re.escape(f"{path}: {message}")):
        load_config("mine")


@pytest.mark.parametrize("text, message", [
    ("rotation = -5.0\n", "mine configuration: rotation: expected a number >= 0, got -5.0"),
    ("[crop]\nflip_prob = 2.0\n", "mine configuration: flip_prob: expected a probability in [0, 1], got 2.0"),
    ("input_size = 30\n", "mine configuration: input_size: expected a multiple of the stride 4"),
])
def test_a_bad_crop_value_is_named_as_written(monkeypatch, tmp_path, text, message):
    defaults_file(monkeypatch, tmp_path, text)
    with pytest.raises(ValueError, match=re.escape(message)):
        load_config("mine")


def test_a_saved_configuration_reads_back_equal():
    config = load_config("wflw", input_size=128)
    saved = json.loads(json.dumps(config.to_dict()))  # config.json: the crop as a table, mean and std as lists
    assert saved["crop"]["input_size"] == 128 and "input_size" not in saved
    assert config_from_dict(saved) == config
    assert config_from_dict(flat_settings(config)) == config


# ------------------------------------------------------------------------------------------
# The command line


def test_the_command_line_fills_the_crop(monkeypatch):
    seen = []
    monkeypatch.setattr("h3r.train.train", lambda config, **keywords: seen.append(config) or {"finished": True})
    assert cli.main(["train", "--dataset", "wflw", "--input-size", "128"]) == 0
    assert seen[0].crop == dataclasses.replace(load_config("wflw").crop, input_size=128)


def test_every_train_option_is_a_setting_by_its_flat_name():
    train_parser = cli.build_parser().parse_args(["train"]).command_parsers["train"]
    destinations = {action.dest for action in train_parser._actions} - {"help"}
    assert "input_size" in destinations
    assert destinations - set(SETTING_NAMES) == {"train_option", "test_option", "resume", "stop_after", "data_only", "step_ms"}


def test_train_help_still_lists_the_input_size(capsys):
    with pytest.raises(SystemExit):
        cli.main(["train", "--help"])
    shown = " ".join(capsys.readouterr().out.split())
    assert "--input-size PX side of the square network input, in pixels" in shown


# ------------------------------------------------------------------------------------------
# Runs saved before TrainConfig.crop


def save_as_before_nesting(path):
    """Rewrite a checkpoint's configuration as earlier versions saved it: flat, without mean and std."""
    payload = torch.load(path, weights_only=True)
    payload.pop("checksum")
    flat = {key: value for key, value in flat_settings(config_from_dict(payload["config"])).items()
            if key not in ("mean", "std")}
    payload["config"] = flat
    payload["checksum"] = checkpoint_checksum(payload)
    torch.save(payload, path)
    return flat


def test_a_run_saved_flat_evaluates_and_resumes_exactly(tmp_path, capsys):
    for name in ("whole", "part"):
        (tmp_path / name).mkdir()
    whole = train(small_config(tmp_path / "whole", epochs=2, draw=0), log=quiet)
    part = small_config(tmp_path / "part", epochs=2, draw=0)
    train(part, stop_after_epochs=1, log=quiet)
    out = tmp_path / "part" / "run"
    flat = save_as_before_nesting(out / "last.pt")
    (out / "config.json").write_text(json.dumps(flat))
    assert set(FLAT_CROP_KEYS) <= set(flat) and "crop" not in flat

    result = evaluate_checkpoint(out / "last.pt", out=str(tmp_path / "eval"), draw=0, progress=False)
    assert result["settings"]["input_size"] == 16
    changed = dataclasses.replace(part, crop=dataclasses.replace(part.crop, rotation=5.0))
    with pytest.raises(ValueError, match=re.escape("these differ: rotation (0.0 -> 5.0)")):
        train(changed, resume=str(out), log=quiet)
    with pytest.raises(SystemExit):
        cli.main(["train", "--resume", str(out), "--input-size", "32"])
    assert "remove --input-size" in capsys.readouterr().err

    assert cli.main(["train", "--resume", str(out), "--workers", "0", "--no-progress"]) == 0
    resumed = torch.load(out / "last.pt", weights_only=True)
    assert resumed["epoch"] == 2 and config_from_dict(resumed["config"]) == part
    assert resumed["config"]["crop"]["input_size"] == 16  # saved nested from now on
    expected = whole["model"].state_dict()
    assert all(torch.equal(resumed["model"][key], expected[key]) for key in expected)


def test_flat_crop_keywords_still_build_a_config():
    """The Python API before the crop was nested: ``TrainConfig(input_size=..., rotation=...)`` and ``config.input_size``."""
    config = TrainConfig(input_size=32, rotation=5.0, flip_prob=0.5)
    assert config.crop == dataclasses.replace(TrainConfig().crop, input_size=32, rotation=5.0, flip_prob=0.5)
    assert (config.input_size, config.rotation, config.flip_prob, config.heatmap_side) == (32, 5.0, 0.5, 8)
    assert config_from_dict(config.to_dict()) == config and "input_size" not in config.to_dict()
    with pytest.raises(TypeError, match="TrainConfig: input_size given both flat and in crop="):
        TrainConfig(input_size=32, crop=config.crop)
    with pytest.raises(ValueError, match="rotation: expected"):
        TrainConfig(rotation=-1.0)
    with pytest.raises(AttributeError):
        config.input_size = 64
