"""What the study compares (the methods) and at which sizes (the presets).

A *method* is a codec (what the network is trained on) plus a decoder setting (how its
output is read). Methods that share a codec share the trained network: ``argmax`` and
``quarter`` read the same vanilla Gaussian model, ``h3r``, ``h3r-linear`` and ``h3r-local`` the
same H3R model, ``udp`` and ``udp-noblur`` the same UDP model, so a study trains one network per
codec, stride and seed. ``h3r-gaussian`` trains its own (H3R's rounding with a Gaussian target,
:class:`h3r.codecs.H3RCodec`).
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Optional


@dataclass(frozen=True)
class Method:
    """One row of the study."""

    name: str
    codec: str  # h3r.codecs.CODEC_NAMES
    decoder: dict[str, Any]  # h3r.evaluate.DECODER_FIELDS
    label: str


METHODS: dict[str, Method] = {method.name: method for method in (
    Method("argmax", "gaussian", {"refine": "none"},
           "vanilla: Gaussian at the nearest cell, MSE, arg-max (HRNet, SimpleBaseline)"),
    Method("quarter", "gaussian", {"refine": "quarter"},
           "vanilla + a quarter cell towards the larger neighbour"),
    Method("dark", "dark", {"refine": "dark"},
           "DARK: unbiased Gaussian target, MSE, arg-max + Taylor step on the blurred log-heatmap"),
    Method("h3r", "h3r", {"topk": 9, "topk_weights": "softmax"},
           "H3R, the authors' decoder: randomized rounding, BCE, softmax of the top-9 raw logits"),
    Method("h3r-linear", "h3r", {"topk": 9, "topk_weights": "linear"},
           "H3R, the theory's decoder: top-9 probabilities, weighted in proportion"),
    Method("h3r-local", "h3r", {"window": 3, "topk_weights": "linear"},
           "H3R, the theory's weights on the 3x3 window around the arg-max instead of the top 9 (as lossless)"),
    Method("h3r-gaussian", "h3r-gaussian", {"topk_weights": "linear"},
           "H3R, Gaussian target: a Gaussian (the baselines' sigma) at the drawn cell, BCE, the window's "
           "probabilities weighted in proportion (asked for by name: not in the smoke and quick presets)"),
    Method("integral", "integral", {},
           "integral regression: soft-argmax over the map, L1 on the coordinates (no heatmap target)"),
    Method("udp", "udp", {},
           "UDP's combined target: a disk and x/y offset maps per keypoint, MSE; arg-max of the blurred disk map "
           "+ the blurred offsets there (mmpose UDPHeatmap 'combined')"),
    Method("udp-noblur", "udp", {"offset_blur": False},
           "UDP's network, its offsets read at the arg-max without mmpose's blur (ours)"),
)}


# The methods of a preset that names none: all but h3r-gaussian, which is asked for by name
# (--methods) or by the full preset, so that the quick preset stays the grid it was measured on.
DEFAULT_METHODS = ("argmax", "quarter", "dark", "h3r", "h3r-linear", "h3r-local", "integral", "udp", "udp-noblur")


@dataclass(frozen=True)
class Preset:
    """A grid ``datasets × methods × strides × seeds`` and the training settings shared by all cells.

    ``synthetic_sizes`` = (train, test) items of the generated datasets; real datasets use
    their files. ``train_args`` are extra ``h3r train`` arguments given to every cell.
    """

    name: str
    description: str
    datasets: tuple[str, ...]
    strides: tuple[int, ...]
    seeds: tuple[int, ...]
    backbone: str
    input_size: int
    epochs: int
    batch_size: int = 32
    methods: tuple[str, ...] = DEFAULT_METHODS
    synthetic_sizes: Optional[tuple[int, int]] = None
    synthetic_image_size: Optional[int] = None  # side of the generated images (default: the dataset's)
    workers: int = 1
    uniform_points: int = 20000  # part A: keypoints drawn uniformly over the map, per stride
    jobs: int = 1  # cells trained at once by default (1: in this process; more: subprocesses of 1/jobs of the cores)
    train_args: tuple[str, ...] = field(default_factory=tuple)

    @property
    def codecs(self) -> tuple[str, ...]:
        """The codecs to train, in the order of the methods that need them."""
        return tuple(dict.fromkeys(METHODS[name].codec for name in self.methods))

    def reader_options(self, dataset: str, split: str) -> dict[str, int]:
        """The reader options the preset gives ``dataset``'s ``split`` ("train" or "test"): the sizes of a
        generated (``synthetic-*``) dataset; none for real datasets."""
        options: dict[str, int] = {}
        if dataset.startswith("synthetic-"):
            if self.synthetic_sizes is not None:
                options["size"] = self.synthetic_sizes[0 if split == "train" else 1]
            if self.synthetic_image_size is not None:
                options["image_size"] = self.synthetic_image_size
        return options

    def with_overrides(self, **overrides: Any) -> "Preset":
        """A copy with the given (non-None) fields replaced, checked."""
        preset = replace(self, **{key: value for key, value in overrides.items() if value is not None})
        preset.check()
        return preset

    def check(self) -> None:
        from h3r.configs import SUPPORTED_STRIDES

        unknown = [name for name in self.methods if name not in METHODS]
        if unknown:
            raise ValueError(f"methods: unknown {', '.join(unknown)}; expected some of {', '.join(METHODS)}")
        bad = [stride for stride in self.strides if stride not in SUPPORTED_STRIDES]
        if bad:
            raise ValueError(f"strides: {bad} not supported; expected some of {', '.join(map(str, SUPPORTED_STRIDES))}")
        for stride in self.strides:
            if self.input_size % stride or self.input_size < 2 * stride:
                raise ValueError(f"strides: input size {self.input_size} is not a multiple of stride {stride} "
                                 f"giving at least 2x2 cells")
        for name, values in (("methods", self.methods), ("strides", self.strides), ("seeds", self.seeds),
                             ("datasets", self.datasets)):
            if not values:
                raise ValueError(f"{name}: the study needs at least one")
            if len(set(values)) != len(values):
                raise ValueError(f"{name}: repeated values in {list(values)}")
        if any(seed < 0 for seed in self.seeds):
            raise ValueError(f"seeds: expected non-negative integers, got {list(self.seeds)}")
        if self.epochs < 1 or self.batch_size < 1:
            raise ValueError(f"epochs and batch size must be >= 1, got {self.epochs} and {self.batch_size}")


PRESETS: dict[str, Preset] = {preset.name: preset for preset in (
    Preset("smoke", "about a minute, for tests: 2 strides, 1 seed, tiny synthetic sets",
           datasets=("synthetic-face",), strides=(4, 8), seeds=(0,), backbone="small", input_size=32, epochs=1,
           batch_size=16, synthetic_sizes=(32, 16), workers=0, uniform_points=2000),
    Preset("quick", "the default, about 11 minutes on an idle 2-core CPU (641 s at 3b7eb13): synthetic faces, 64-px input, "
                    "strides 4, 8, 16 (16x16, 8x8, 4x4 heatmaps), 2 seeds, 6 epochs of 1000 faces, 2 cells at a time",
           datasets=("synthetic-face",), strides=(4, 8, 16), seeds=(0, 1), backbone="small", input_size=64, epochs=6,
           batch_size=32, synthetic_sizes=(1000, 300), workers=1, jobs=2),
    Preset("full", "for a GPU: synthetic faces and people, 256-px input, strides 4 to 32 (64x64 to 8x8), "
                   "3 seeds, 40 epochs",
           datasets=("synthetic-face", "synthetic-pose"), strides=(4, 8, 16, 32), seeds=(0, 1, 2),
           backbone="hrnet_w18", input_size=256, epochs=40, batch_size=32, synthetic_sizes=(6000, 1000),
           synthetic_image_size=320, workers=8, methods=tuple(METHODS)),
)}
