"""Training configuration: the :class:`TrainConfig` dataclass and the per-dataset defaults.

Each dataset has a readable TOML file next to this module (``wflw.toml``, ``coco.toml``
...) whose keys are :class:`TrainConfig` fields. ``h3r train --dataset wflw`` starts from
``TrainConfig()``, applies ``wflw.toml``, then the command-line options.

The crop settings live in ``TrainConfig.crop`` (a :class:`h3r.transforms.CropConfig`). Files,
command lines and the configurations saved by earlier versions name them flat
(``input_size = 256``); :func:`config_from_dict` also reads them as a ``crop`` table, as
:meth:`TrainConfig.to_dict` writes them, and refuses a setting given both ways.
"""
from __future__ import annotations

import dataclasses
import functools
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Optional

from h3r._compat import tomllib
from h3r.codecs import CODEC_NAMES as CODECS
from h3r.codecs import GAUSSIAN_REFINEMENTS as REFINEMENTS
from h3r.codecs import MAX_TOPK
from h3r.codecs import TOPK_WEIGHTS
from h3r.codecs import check_radius
from h3r.models import BACKBONES as BACKBONE_BUILDERS
from h3r.models import HEAD_KINDS as HEADS
from h3r.models import STRIDES as SUPPORTED_STRIDES
from h3r.transforms import CropConfig
from h3r_kernels.checks import check_decode_options

# The vocabularies of the settings: the codec's and the model's own names (above), and these.
CONFIG_DIR = Path(__file__).parent
BACKBONES = tuple(BACKBONE_BUILDERS)
OPTIMIZERS = ("adamw", "adam")
SCHEDULES = ("cosine", "step")
AMP_MODES = ("none", "bf16", "fp16")
# Settings that may differ between a run and its resumption: they do not change the result.
RUNTIME_FIELDS = ("device", "workers", "progress", "draw", "gpu_augment", "data_root")
POSE_DATASETS = ("mpii", "coco", "synthetic-pose")  # the rest are faces: they set the default Gaussian sigma


def default_crop() -> CropConfig:
    """``TrainConfig``'s crop before any setting: :class:`CropConfig`'s defaults on a 64-pixel input."""
    return CropConfig(input_size=64)


@dataclass
class TrainConfig:
    """Everything a training run depends on.

    Sizes are pixels of the square network input; the heatmap is ``crop.input_size / stride``
    cells wide, whatever the backbone (the model pools its stride-4 features down to
    ``stride``; see :class:`h3r.models.LandmarkModel`). ``batch_size`` is per process (a
    ``torchrun`` job with N processes sees N times as many images per step).
    """

    # Data: the dataset, its two splits and extra keyword arguments of ``h3r.data.open_dataset``.
    dataset: str = "synthetic-face"
    data_root: Optional[str] = None
    train_split: str = "train"
    test_split: str = "test"
    train_options: dict[str, Any] = field(default_factory=dict)
    test_options: dict[str, Any] = field(default_factory=dict)
    metric: str = "nme"  # the test metric that selects the best checkpoint
    higher_is_better: bool = False

    # Model and codec.
    backbone: str = "small"
    head: str = "binary"
    pretrained: Optional[str] = None  # weights loaded into the model before training
    stride: int = 4  # input pixels per heatmap cell: 4, 8, 16 or 32
    # h3r, h3r-gaussian (a Gaussian at the drawn cell), gaussian (vanilla), dark (unbiased Gaussian + DARK),
    # integral (soft-argmax + L1), udp (UDP's disk + offset maps): h3r.codecs
    codec: str = "h3r"
    topk: int = 9  # h3r: activations averaged by the decoder
    topk_weights: str = "softmax"  # h3r, h3r-gaussian: "softmax" of logits (released decoder), "linear": probabilities
    window: Optional[int] = None  # h3r, h3r-gaussian: decode the window x window cells around the arg-max (odd)
    # instead of the top k (None: top k for h3r; 2 (ceil(3 sigma) + 1) + 1 for h3r-gaussian)
    sigma: Optional[float] = None  # h3r-gaussian, gaussian, dark: heatmap cells (None: codecs.default_gaussian_sigma)
    refine: Optional[str] = None  # gaussian, dark: refinement after the arg-max (None: quarter / dark)
    radius: Optional[float] = None  # udp: the disk's radius in heatmap cells (None: codecs.OffsetCodec.radius_on)
    offset_blur: bool = True  # udp: blur the offset maps before reading them (mmpose's decoder)

    # Crop and augmentation: input_size, box_scale, rotation, scale_jitter, translate, flip_prob, colour_jitter,
    # mean and std (see h3r.transforms.CropConfig; its values are checked there).
    crop: CropConfig = field(default_factory=default_crop)

    # Optimisation.
    optimizer: str = "adamw"
    lr: float = 1e-3
    weight_decay: float = 1e-4
    epochs: int = 10
    batch_size: int = 32
    warmup_epochs: float = 1.0  # linear warm-up, then the schedule
    schedule: str = "cosine"
    min_lr_ratio: float = 0.01  # cosine: the final learning rate is lr * min_lr_ratio
    step_epochs: list[int] = field(default_factory=list)  # step: multiply by step_gamma at these epochs
    step_gamma: float = 0.1
    grad_clip: float = 0.0  # maximum gradient norm; 0 = no clipping
    amp: str = "none"  # mixed precision on CUDA: "bf16" or "fp16"

    # Running.
    device: str = "auto"  # "auto" = cuda when available, else cpu
    workers: int = 2  # DataLoader worker processes (0 = load in the main process)
    seed: int = 0
    out: Optional[str] = None  # run folder; None = runs/<dataset>-<codec>-<date>-<time>
    eval_every: int = 1  # evaluate on the test split every this many epochs (and after the last)
    flip_test: bool = False  # average the prediction of the flipped crop
    draw: int = 8  # images with drawn predictions written by the final evaluation
    progress: bool = True  # tqdm progress bar
    gpu_augment: bool = False  # warp + colour jitter on the training device (h3r/augment.py); workers only decode
    cuda_graphs: bool = False  # capture the training step in one CUDA graph and replay it (h3r/steps.py)

    def __post_init__(self):
        choices = {"codec": CODECS, "backbone": BACKBONES, "head": HEADS, "optimizer": OPTIMIZERS,
                   "schedule": SCHEDULES, "amp": AMP_MODES, "topk_weights": TOPK_WEIGHTS,
                   "refine": REFINEMENTS + (None,)}
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                shown = ", ".join(str(choice) for choice in allowed)
                raise ValueError(f"{name}: expected one of {shown}, got {getattr(self, name)!r}")
        if self.stride not in SUPPORTED_STRIDES:
            raise ValueError(f"stride: expected one of {', '.join(map(str, SUPPORTED_STRIDES))}, got {self.stride!r}")
        input_size = self.crop.input_size
        if input_size < 2 * self.stride or input_size % self.stride:
            raise ValueError(f"input_size: expected a multiple of the stride {self.stride} giving a heatmap of at "
                             f"least 2x2 cells (>= {2 * self.stride}), got {input_size}")
        positive = {"epochs": self.epochs, "batch_size": self.batch_size, "lr": self.lr, "eval_every": self.eval_every,
                    "topk": self.topk}
        for name, value in positive.items():
            if not value > 0:
                raise ValueError(f"{name}: expected a positive number, got {value!r}")
        side = self.heatmap_side
        if self.codec == "h3r" and self.topk > min(MAX_TOPK, side * side):
            raise ValueError(f"topk: the h3r decoder averages at most {MAX_TOPK} activations and at most the heatmap's "
                             f"cells ({side}x{side} = {side * side} at input {input_size} px, stride {self.stride}); "
                             f"got {self.topk}")
        if self.data_root is not None:  # stored absolute: the run resumes and evaluates from any folder
            self.data_root = absolute_path(self.data_root)
        non_negative = {"workers": self.workers, "weight_decay": self.weight_decay, "warmup_epochs": self.warmup_epochs,
                        "grad_clip": self.grad_clip, "draw": self.draw, "min_lr_ratio": self.min_lr_ratio}
        for name, value in non_negative.items():
            if not value >= 0:
                raise ValueError(f"{name}: expected a number >= 0, got {value!r}")
        if self.cuda_graphs and self.amp == "fp16":
            raise ValueError("cuda_graphs: not with amp='fp16' (its gradient scaler checks for inf on the host, which "
                             "a CUDA graph cannot replay); use amp='bf16' or 'none'")
        if self.window is not None:  # the decode op's own rule: odd, >= 1, window * window <= MAX_WINDOW_CELLS
            check_decode_options("local", 1, "linear", self.window)
        if self.sigma is not None and not self.sigma > 0:
            raise ValueError(f"sigma: expected a positive number of heatmap cells (or None), got {self.sigma!r}")
        if self.radius is not None:  # UDP's disk: a number of cells that fits the heatmap (other codecs ignore it)
            self.radius = check_radius(self.radius, (side, side) if self.codec == "udp" else None)
        for item in dataclasses.fields(self):  # inf passes every comparison above and trains to NaN
            value = getattr(self, item.name)
            if isinstance(value, float) and not math.isfinite(value):
                raise ValueError(f"{item.name}: expected a finite number, got {value!r}")
        if not (isinstance(self.seed, int) and 0 <= self.seed < 2**63):
            raise ValueError(f"seed: expected an integer from 0 to 2**63 - 1, got {self.seed!r}")

    @property
    def heatmap_side(self) -> int:
        return self.crop.input_size // self.stride

    @property
    def task(self) -> str:
        """``"pose"`` for human-pose datasets, else ``"face"`` (it picks the default Gaussian sigma)."""
        return "pose" if self.dataset in POSE_DATASETS else "face"

    def to_dict(self) -> dict[str, Any]:
        """Every field, the crop settings as a ``crop`` table (:func:`config_from_dict` reads it back)."""
        return dataclasses.asdict(self)


def absolute_path(path) -> str:
    """``path`` (``~`` expanded) as an absolute path string: how a run stores and compares its data root."""
    return os.path.abspath(os.path.expanduser(os.fspath(path)))


# Settings read by some codecs only, and the schedule's own.
CODEC_SETTINGS = {"topk": ("h3r",), "topk_weights": ("h3r", "h3r-gaussian"), "window": ("h3r", "h3r-gaussian"),
                  "sigma": ("h3r-gaussian", "gaussian", "dark"), "refine": ("gaussian", "dark"), "radius": ("udp",),
                  "offset_blur": ("udp",)}


def unused_settings(config: TrainConfig, names) -> list[str]:
    """Of the settings ``names`` a user gave, those ``config`` does not read, each with why (for a note)."""
    unused = [f"{name} (read by the {' and '.join(CODEC_SETTINGS[name])} codec{'s' * (len(CODEC_SETTINGS[name]) > 1)}, "
              f"not {config.codec})" for name in names if name in CODEC_SETTINGS and config.codec not in CODEC_SETTINGS[name]]
    if "step_epochs" in names and config.schedule != "step":
        unused.append(f"step_epochs (read by the step schedule, not {config.schedule})")
    return unused


def flat_settings(config: TrainConfig) -> dict[str, Any]:
    """``config``'s settings by the names a user writes (:data:`SETTING_NAMES`): the crop's flat."""
    values = config.to_dict()
    return {**{key: value for key, value in values.items() if key != "crop"}, **values["crop"]}


FIELD_NAMES = tuple(f.name for f in dataclasses.fields(TrainConfig))
CROP_FIELD_NAMES = tuple(f.name for f in dataclasses.fields(CropConfig))


def _accepting_flat_crop_settings(generated_init):
    """``TrainConfig(input_size=64, rotation=10.0, ...)`` as before the crop was nested: flat crop
    keywords fill ``crop`` (from :func:`default_crop`); with ``crop=`` too, a ``TypeError``."""
    @functools.wraps(generated_init)
    def __init__(self, *args, **settings):
        flat = {name: settings.pop(name) for name in CROP_FIELD_NAMES if name in settings}
        if flat:
            if "crop" in settings:
                raise TypeError(f"TrainConfig: {', '.join(flat)} given both flat and in crop=; give each setting once")
            settings["crop"] = dataclasses.replace(default_crop(), **flat)
        generated_init(self, *args, **settings)
    return __init__


TrainConfig.__init__ = _accepting_flat_crop_settings(TrainConfig.__init__)
for _name in CROP_FIELD_NAMES:  # read-only flat views, as before the crop was nested: config.input_size
    setattr(TrainConfig, _name, property(lambda self, name=_name: getattr(self.crop, name), doc=f"``crop.{_name}``"))
del _name
# Every setting by the name a user writes (the key input_size, the option --input-size): the crop's flat.
SETTING_NAMES = tuple(setting for name in FIELD_NAMES for setting in (CROP_FIELD_NAMES if name == "crop" else (name,)))


def nest_crop_settings(values: Mapping[str, Any], source: str = "config") -> dict[str, Any]:
    """``values`` with its crop settings gathered into one ``crop`` mapping, from flat keys and a ``crop`` table.

    A setting given both ways, or an unknown key in the table, raises an error naming ``source``.
    """
    table = values.get("crop", {})
    if isinstance(table, CropConfig):
        table = dataclasses.asdict(table)
    if not isinstance(table, Mapping):
        raise ValueError(f"{source}: crop: expected a table of crop settings, got {table!r}")
    unknown = sorted(set(table) - set(CROP_FIELD_NAMES))
    if unknown:
        raise ValueError(f"{source}: unknown crop setting(s) {', '.join(unknown)}; known crop settings: "
                         f"{', '.join(CROP_FIELD_NAMES)}")
    flat = {name: values[name] for name in CROP_FIELD_NAMES if name in values}
    twice = sorted(set(flat) & set(table))
    if twice:
        raise ValueError(f"{source}: {', '.join(twice)} given both at the top level and in the [crop] table; "
                         f"give each setting once")
    nested = {key: value for key, value in values.items() if key not in CROP_FIELD_NAMES}
    nested["crop"] = {**table, **flat}
    return nested


def config_from_dict(values: Mapping[str, Any], source: str = "config") -> TrainConfig:
    """A :class:`TrainConfig` from a mapping of its settings, the crop's flat or as a ``crop`` table.

    Unknown keys and bad values raise an error naming ``source`` and the setting.
    """
    values = nest_crop_settings(values, source)
    unknown = sorted(set(values) - set(FIELD_NAMES))
    if unknown:
        raise ValueError(f"{source}: unknown setting(s) {', '.join(unknown)}; known settings: "
                         f"{', '.join(SETTING_NAMES)}")
    try:
        crop = dataclasses.replace(default_crop(), **values.pop("crop"))
        return TrainConfig(**values, crop=crop)
    except (TypeError, ValueError) as error:
        raise ValueError(f"{source}: {error}") from error


def dataset_defaults_path(dataset: str) -> Path:
    return CONFIG_DIR / f"{dataset}.toml"


def dataset_defaults(dataset: str) -> dict[str, Any]:
    """The settings in ``h3r/configs/<dataset>.toml``: :class:`TrainConfig` fields, the crop's in a ``crop`` mapping.

    The file may name the crop settings flat (``input_size = 256``) or in a ``[crop]`` table, not both.
    """
    path = dataset_defaults_path(dataset)
    if not path.is_file():
        known = sorted(p.stem for p in CONFIG_DIR.glob("*.toml"))
        raise ValueError(f"dataset: no defaults file {path}; datasets with defaults: {', '.join(known)}")
    try:
        with open(path, "rb") as handle:
            values = tomllib.load(handle)
    except tomllib.TOMLDecodeError as error:
        raise ValueError(f"{path}: not valid TOML ({error})") from error
    values = nest_crop_settings(values, str(path))
    unknown = sorted(set(values) - set(FIELD_NAMES))
    if unknown:
        raise ValueError(f"{path}: unknown setting(s) {', '.join(unknown)}")
    values.setdefault("dataset", dataset)
    return values


def load_config(dataset: str = "synthetic-face", **overrides: Any) -> TrainConfig:
    """``TrainConfig`` defaults, then ``h3r/configs/<dataset>.toml``, then ``overrides`` (None values ignored).

    ``overrides`` name the crop settings flat (``input_size=128``) or as a ``crop`` mapping; they,
    ``train_options`` and ``test_options`` are merged into the file's tables key by key.
    """
    values = dataset_defaults(dataset)
    given = nest_crop_settings({key: value for key, value in overrides.items() if value is not None}, "overrides")
    for key, value in given.items():
        if key in ("train_options", "test_options", "crop"):
            value = {**values.get(key, {}), **value}
        values[key] = value
    return config_from_dict(values, source=f"{dataset} configuration")
