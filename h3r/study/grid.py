"""The cells of Part B: one ``h3r train`` per ``(dataset, codec, stride, seed)``, and where each lives."""
from __future__ import annotations

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


def command_line(argv: list[str]) -> str:
    """``h3r train ...`` as one shell-quoted line."""
    return shlex.join(["h3r", *argv])
