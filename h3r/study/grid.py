"""The cells of Part B: one ``h3r train`` per ``(dataset, codec, stride, seed)``, and where each lives."""
from __future__ import annotations

import json
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from h3r.study.presets import METHODS, Method, Preset


@dataclass(frozen=True)
class Cell:
    dataset: str
    codec: str
    stride: int
    seed: int

    @property
    def key(self) -> str:
        return f"{self.dataset}/{self.codec}-stride{self.stride}-seed{self.seed}"

    def run_dir(self, out: Path) -> Path:
        """The ``h3r train`` run folder of this cell."""
        return Path(out) / "runs" / self.dataset / f"{self.codec}-stride{self.stride}-seed{self.seed}"

    def methods(self, preset: Preset) -> list[Method]:
        """The study's methods scored on this cell's network."""
        return [METHODS[name] for name in preset.methods if METHODS[name].codec == self.codec]


def cells(preset: Preset) -> list[Cell]:
    """Every cell of the grid, dataset-major, then stride, codec, seed (so early results cover every codec)."""
    return [Cell(dataset, codec, stride, seed) for dataset in preset.datasets for stride in preset.strides
            for seed in preset.seeds for codec in preset.codecs]


def train_argv(cell: Cell, preset: Preset, out: Path, *, data_root: Optional[str] = None,
               device: Optional[str] = None, extra: tuple[str, ...] = ()) -> list[str]:
    """The ``h3r train`` arguments (without the program name) that train ``cell``.

    Every cell evaluates only after its last epoch, draws nothing and shows no progress bar;
    everything else comes from the dataset's defaults, the preset and ``extra``.
    """
    argv = ["train", "--dataset", cell.dataset, "--codec", cell.codec, "--stride", str(cell.stride),
            "--seed", str(cell.seed), "--backbone", preset.backbone, "--input-size", str(preset.input_size),
            "--epochs", str(preset.epochs), "--batch-size", str(preset.batch_size), "--eval-every", str(preset.epochs),
            "--workers", str(preset.workers), "--draw", "0", "--no-progress", "--out", str(cell.run_dir(out))]
    if data_root is not None:
        argv += ["--data-root", data_root]
    train, test = preset.reader_options(cell.dataset, "train"), preset.reader_options(cell.dataset, "test")
    for key in train:
        argv += ["--train-option", f"{key}={train[key]}", "--test-option", f"{key}={test[key]}"]
    if device is not None:
        argv += ["--device", device]
    return argv + [*preset.train_args, *extra]


# What the study sets per cell, and the study option that sets it (arguments after '--' may not change these).
CELL_SETTINGS = {"dataset": "--dataset", "codec": "--methods", "stride": "--strides", "seed": "--seeds",
                 "backbone": "--backbone", "input_size": "--input-size", "epochs": "--epochs",
                 "batch_size": "--batch-size", "out": "--out"}
# The data every cell trains and tests on, as part A reads it (the dataset's splits and the preset's reader options).
DATA_SETTINGS = ("data_root", "train_split", "test_split", "train_options", "test_options")
KEEPING_OPTIONS = ("cache_images",)  # reader options that change how the items are kept, not what they are


def _data_of(value):
    """A data setting as it decides the items: reader options without :data:`KEEPING_OPTIONS`."""
    return {key: option for key, option in value.items() if key not in KEEPING_OPTIONS} if isinstance(value, dict) \
        else value


def check_cells(preset: Preset, out: Path, *, data_root: Optional[str] = None, extra: tuple[str, ...] = ()) -> None:
    """Refuse, before anything trains, a grid whose ``h3r train`` commands would fail to start (a bad
    argument after '--', a heatmap too small for the decoder) or would train something other than their
    cell (an argument after '--' that sets what the study sets per cell, or the data; a run folder in
    ``out`` holding a network trained with other settings, which would be skipped or resumed as it is):
    the report would mislabel it."""
    from h3r.cli import train_config_of
    from h3r.configs import RUNTIME_FIELDS, flat_settings
    from h3r.evaluate import DECODER_FIELDS, codec_of

    for cell in cells(preset):
        argv = train_argv(cell, preset, out, data_root=data_root, extra=extra)
        try:
            config = train_config_of(argv)
            codec_of(config)  # the codec's own limits (e.g. h3r-gaussian's sigma for its decoder's window)
            settings = flat_settings(config)
        except ValueError as error:
            raise ValueError(f"cell {cell.key}: {command_line(argv)} would fail: {error}") from None
        wanted = {"dataset": cell.dataset, "codec": cell.codec, "stride": cell.stride, "seed": cell.seed,
                  "backbone": preset.backbone, "input_size": preset.input_size, "epochs": preset.epochs,
                  "batch_size": preset.batch_size, "out": str(cell.run_dir(out))}
        if extra:  # a decoder setting would be read by some methods and overridden by others: mislabelled rows
            plain = flat_settings(train_config_of(train_argv(cell, preset, out, data_root=data_root)))
            decoders = [name for name in DECODER_FIELDS if settings[name] != plain[name]]
            if decoders:
                raise ValueError(f"arguments after '--' set {', '.join(decoders)}, which the study's methods set "
                                 f"(their decoders): choose them with the study's --methods")
            data = [name for name in DATA_SETTINGS if _data_of(settings[name]) != _data_of(plain[name])]
            if data:  # the cells would read other data than part A and the report say
                advice = ("give the data folder with the study's --data-root" if data == ["data_root"] else
                          "the study reads the dataset's splits with the preset's reader options")
                raise ValueError(f"arguments after '--' change the data ({', '.join(data)}), which the study sets for "
                                 f"every cell and part A: {advice}")
        changed = [name for name, value in wanted.items() if settings[name] != value]
        if changed:
            shown = ", ".join(f"{name} ({wanted[name]!r} -> {settings[name]!r}; set it with the study's "
                              f"{CELL_SETTINGS[name]})" for name in changed)
            raise ValueError(f"arguments after '--' change what the study sets per cell: {shown}")
        stored = stored_settings(cell.run_dir(out))  # a cell trained (or begun) earlier is skipped or resumed
        if stored is not None:  # as it was trained: its settings must be the ones this grid asks for
            ignored = {*RUNTIME_FIELDS, "out"}  # where it runs and reads its data, and where the folder is now
            differ = [name for name in settings
                      if name not in ignored and _data_of(stored.get(name)) != _data_of(settings[name])]
            if differ:
                shown = ", ".join(f"{name} {stored.get(name)!r} (asked now: {settings[name]!r})" for name in differ)
                raise ValueError(f"cell {cell.key}: its run folder {cell.run_dir(out)} holds a network trained with "
                                 f"other settings: {shown}; give another --out, or remove that folder to train the "
                                 f"cell again")


def stored_settings(run_dir: Path) -> Optional[dict]:
    """The settings (flat names) a cell's network in ``run_dir`` was trained with, from the ``config.json``
    beside its checkpoint; None when the folder holds no checkpoint (the cell trains from the start)."""
    from h3r.configs import config_from_dict, flat_settings

    if not (run_dir / "last.pt").exists():
        return None
    path = run_dir / "config.json"
    try:
        return flat_settings(config_from_dict(json.loads(path.read_text()), source=str(path)))
    except (OSError, ValueError) as error:  # json's errors are ValueErrors
        raise ValueError(f"{path}: cannot read the settings its run's checkpoint was trained with ({error}); "
                         f"remove {run_dir} to train the cell again") from None


def command_line(argv: list[str]) -> str:
    """``h3r train ...`` as one shell-quoted line."""
    return shlex.join(["h3r", *argv])
