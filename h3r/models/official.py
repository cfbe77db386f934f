"""The authors' released models (github.com/baoshengyu/H3R, package ``torchalign``) in h3r.

A released folder, e.g. ``models/wflw/hrnet18_256x256_p1/``, holds ``config.yaml`` (yacs-style
YAML over the defaults of ``torchalign/cfg.py``) and ``model.pth`` (the ``state_dict`` of
their ``FacialLandmarkDetector``: keys ``backbone.*`` and ``heatmap_head.head.layers.*``).
This module reads such a folder into h3r's own networks and reproduces their inference:

* **network** — their backbones are h3r's :class:`~h3r.models.hrnet.HRNet` and
  :class:`~h3r.models.mobilenetv2.MobileNetV2` module for module (only the parameter names
  differ; :func:`official_to_h3r_key` renames them), followed by the two-class
  :class:`~h3r.models.head.HeatmapHead` built with ``bias=False`` (their last 1x1 conv has
  none) and ``output="foreground"``: the model returns the raw foreground logits ``z1``.
* **decoder** — ``STRIDE x`` the softmax-weighted mean of the ``TOPK`` largest ``z1`` cells:
  ``H3RCodec(stride=4, k=TOPK, weights="softmax")`` applied to ``z1`` (not to ``z1 - z0``).
* **crop** (:class:`OfficialCrop`, their ``resized_crop``) — box ``(x1, y1, x2, y2)``; side
  ``wh = max(x2 - x1 + 1, y2 - y1 + 1) * SCALE``; origin ``(x1 + x2 - wh + 1) / 2`` per axis;
  Pillow ``crop`` of that rectangle (Pillow rounds its corners; outside the image is black),
  bilinear ``resize`` to ``SIZE``, ``[0, 1]`` scaling, ImageNet mean/std. The inverse
  (their ``resized_crop_inverse``) uses the unrounded rectangle: ``p / (SIZE / wh) + origin``.
* **flip test** (``INPUT.FLIP``) — the mirrored crop is decoded too, ``x <- S - 1 - x``,
  landmarks reordered by ``FLIP_ORDER``, and the two predictions averaged.

Entry points: :func:`load_official` (model + codec + crop settings, for Python use),
:func:`load_official_weights` (an official ``model.pth`` into an h3r model, for
fine-tuning; ``h3r.models.load_checkpoint_weights`` forwards official folders here) and
:func:`read_official_config`.
"""
from __future__ import annotations

import copy
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
from PIL import Image
from torch import nn

from h3r.data.wflw import WFLW_FLIP_PAIRS
from h3r.models.head import HeatmapHead, LandmarkModel
from h3r.models.hrnet import HRNet
from h3r.models.mobilenetv2 import STAGES as MOBILENET_STAGES
from h3r.models.mobilenetv2 import MobileNetV2
from h3r.models.weights import read_weights_file, state_dict_mismatches
from h3r.transforms import IMAGENET_MEAN, IMAGENET_STD, flip_permutation

CONFIG_FILE = "config.yaml"
WEIGHTS_FILE = "model.pth"

# Backbones of torchalign/backbone: name -> (builder, output channels). hrnet18s is defined
# there but no released folder uses it; hrnet32 is used by models/lapa/hrnet32_256x256_p2.
OFFICIAL_ARCHS = {
    "hrnet18": (lambda: HRNet(width=18, modules_per_stage=(1, 4, 3), blocks_per_branch=4), 270),
    "hrnet18s": (lambda: HRNet(width=18, modules_per_stage=(1, 3, 2), blocks_per_branch=2), 270),
    "hrnet32": (lambda: HRNet(width=32, modules_per_stage=(1, 4, 3), blocks_per_branch=4), 480),
    "mobilenetv2": (MobileNetV2, 152),
}

# The defaults of torchalign/cfg.py that a config.yaml is merged over. The default
# FLIP_ORDER is WFLW's 98-point mirror order, i.e. h3r's WFLW flip pairs as a permutation.
DEFAULTS: dict[str, dict[str, Any]] = {
    "INPUT": {
        "SIZE": [256, 256],
        "SCALE": 1.25,
        "DATASET": "WFLW",
        "BBOX": "P1",
        "FLIP": True,
        "FLIP_ORDER": [int(i) for i in flip_permutation(98, WFLW_FLIP_PAIRS)],
    },
    "BACKBONE": {"ARCH": "hrnet18"},
    "HEATMAP": {
        "ARCH": "HeatmapHead",
        "IN_CHANNEL": 270,
        "PROJ_CHANNEL": 270,
        "OUT_CHANNEL": 98,
        "STRIDE": 4.0,
        "ENCODER": "Coordinate2BinaryHeatmap",
        "DECODER": "BinaryHeatmap2Coordinate",
        "BLOCK": "BinaryHeadBlock",
        "TOPK": 9,
    },
}
MAX_TOPK = 32  # what h3r_kernels.decode supports


@dataclass(frozen=True)
class OfficialConfig:
    """A parsed ``config.yaml`` (after merging over :data:`DEFAULTS` and checking)."""

    path: str
    input_size: int  # INPUT.SIZE (square)
    scale: float  # INPUT.SCALE
    box: str  # INPUT.BBOX: "P1" (tight landmark box) or "P2" (the dataset's box)
    flip: bool  # INPUT.FLIP
    flip_order: Optional[tuple[int, ...]]  # INPUT.FLIP_ORDER (None when it does not fit OUT_CHANNEL and FLIP is off)
    dataset: str  # INPUT.DATASET, e.g. "WFLW", "F300W"
    arch: str  # BACKBONE.ARCH
    in_channels: int  # HEATMAP.IN_CHANNEL
    proj_channels: int  # HEATMAP.PROJ_CHANNEL
    num_keypoints: int  # HEATMAP.OUT_CHANNEL
    stride: int  # HEATMAP.STRIDE
    topk: int  # HEATMAP.TOPK


def _fail(path: Path, key: str, message: str) -> ValueError:
    return ValueError(f"{path}: {key}: {message}")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _positive_int(path: Path, key: str, value: Any) -> int:
    if not _is_int(value) or value < 1:
        raise _fail(path, key, f"expected a positive integer, got {value!r}")
    return int(value)


def read_official_config(path: str | Path) -> OfficialConfig:
    """Parse and check an official ``config.yaml``.

    Raises ``FileNotFoundError`` when the file is missing and ``ValueError`` naming the file
    (and the key) for malformed YAML, unknown keys, wrong types and unsupported settings
    (e.g. a ``BACKBONE.ARCH`` h3r does not build).
    """
    import yaml

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: the authors' config.yaml not found")
    try:
        data = yaml.safe_load(path.read_text())
    except (yaml.YAMLError, UnicodeDecodeError) as error:
        raise ValueError(f"{path}: malformed YAML: {error}") from None
    data = {} if data is None else data
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a mapping with sections {sorted(DEFAULTS)}, got {type(data).__name__}")
    merged = copy.deepcopy(DEFAULTS)
    for section, values in data.items():
        if section not in merged:
            raise _fail(path, str(section), f"unknown section (expected one of {sorted(DEFAULTS)})")
        if not isinstance(values, dict):
            raise _fail(path, section, f"expected a mapping of keys, got {values!r}")
        for key, value in values.items():
            if key not in merged[section]:
                raise _fail(path, f"{section}.{key}", f"unknown key (expected one of {sorted(merged[section])})")
            merged[section][key] = value
    inputs, backbone, heatmap = merged["INPUT"], merged["BACKBONE"], merged["HEATMAP"]

    size = inputs["SIZE"]
    if (not isinstance(size, (list, tuple)) or len(size) != 2 or not all(_is_int(v) and v > 0 for v in size)):
        raise _fail(path, "INPUT.SIZE", f"expected [S, S], two positive integers, got {size!r}")
    if size[0] != size[1] or size[0] % 4:
        raise _fail(path, "INPUT.SIZE", f"only square inputs whose side is a multiple of 4 are supported, got {size!r}")
    scale = inputs["SCALE"]
    if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not scale > 0:
        raise _fail(path, "INPUT.SCALE", f"expected a positive number, got {scale!r}")
    box = inputs["BBOX"]
    if box not in ("P1", "P2"):
        raise _fail(path, "INPUT.BBOX", f"expected 'P1' or 'P2', got {box!r}")
    flip = inputs["FLIP"]
    if not isinstance(flip, bool):
        raise _fail(path, "INPUT.FLIP", f"expected true or false, got {flip!r}")
    if not isinstance(inputs["DATASET"], str):
        raise _fail(path, "INPUT.DATASET", f"expected a string, got {inputs['DATASET']!r}")

    arch = backbone["ARCH"]
    if arch not in OFFICIAL_ARCHS:
        raise _fail(path, "BACKBONE.ARCH", f"unsupported backbone {arch!r}; h3r builds {sorted(OFFICIAL_ARCHS)}")
    supported = (("ARCH", "HeatmapHead"), ("BLOCK", "BinaryHeadBlock"), ("DECODER", "BinaryHeatmap2Coordinate"))
    for key, expected in supported:
        if heatmap[key] != expected:
            raise _fail(path, f"HEATMAP.{key}", f"unsupported value {heatmap[key]!r}; only {expected!r} is supported")
    in_channels = _positive_int(path, "HEATMAP.IN_CHANNEL", heatmap["IN_CHANNEL"])
    backbone_channels = OFFICIAL_ARCHS[arch][1]
    if in_channels != backbone_channels:
        raise _fail(path, "HEATMAP.IN_CHANNEL", f"{arch} outputs {backbone_channels} channels, got {in_channels}")
    proj_channels = _positive_int(path, "HEATMAP.PROJ_CHANNEL", heatmap["PROJ_CHANNEL"])
    num_keypoints = _positive_int(path, "HEATMAP.OUT_CHANNEL", heatmap["OUT_CHANNEL"])
    stride = heatmap["STRIDE"]
    if isinstance(stride, bool) or not isinstance(stride, (int, float)) or stride != 4:
        raise _fail(path, "HEATMAP.STRIDE", f"the backbones output stride 4, got {stride!r}")
    topk = _positive_int(path, "HEATMAP.TOPK", heatmap["TOPK"])
    cells = (size[0] // 4) ** 2
    if topk > min(MAX_TOPK, cells):
        raise _fail(path, "HEATMAP.TOPK", f"expected at most {min(MAX_TOPK, cells)}, got {topk}")

    order = inputs["FLIP_ORDER"]
    valid_order = (isinstance(order, (list, tuple)) and all(_is_int(v) for v in order)
                   and sorted(order) == list(range(num_keypoints)))
    if flip and not valid_order:
        if "FLIP_ORDER" not in (data.get("INPUT") or {}):
            raise _fail(path, "INPUT.FLIP_ORDER", f"not given, and the default (WFLW's 98-point order) does not fit "
                        f"HEATMAP.OUT_CHANNEL = {num_keypoints}; give the model's FLIP_ORDER or set INPUT.FLIP: false")
        shown = repr(order) if len(repr(order)) <= 80 else repr(order)[:77] + "..."
        raise _fail(path, "INPUT.FLIP_ORDER", f"expected a permutation of 0..{num_keypoints - 1} "
                    f"(HEATMAP.OUT_CHANNEL = {num_keypoints}) since INPUT.FLIP is on, got {shown}")
    return OfficialConfig(
        path=str(path), input_size=int(size[0]), scale=float(scale), box=box, flip=flip,
        flip_order=tuple(int(v) for v in order) if valid_order else None, dataset=inputs["DATASET"], arch=arch,
        in_channels=in_channels, proj_channels=proj_channels, num_keypoints=num_keypoints, stride=4, topk=topk,
    )


# ----------------------------------------------------------------------------------------------
# Parameter names: the authors' layout -> h3r's.

_STEM = {"conv1": "stem.0.0", "bn1": "stem.0.1", "conv2": "stem.1.0", "bn2": "stem.1.1"}
# conv1/bn1, conv2/bn2, conv3/bn3 of a residual block -> body.<n-1>.<0 conv | 1 bn>
_BLOCK_LAYER = re.compile(r"^(conv|bn)([123])$")
# Inverted-residual blocks: index in their ``conv`` Sequential -> h3r's path under ``body``.
_MOBILENET_EXPANSION_1 = {"0": "0.0", "1": "0.1", "3": "1", "4": "2"}
_MOBILENET_EXPANDED = {"0": "0.0", "1": "0.1", "3": "1.0", "4": "1.1", "6": "2", "7": "3"}
_MOBILENET_BLOCKS = [(stage, block, expansion) for stage, (expansion, _, repeats, _) in enumerate(MOBILENET_STAGES)
                     for block in range(repeats)]  # features.<n> for n >= 1 is _MOBILENET_BLOCKS[n - 1]
_TENSOR_NAME = re.compile(r"^(weight|bias|running_mean|running_var|num_batches_tracked)$")


def _block_layer(name: str) -> Optional[str]:
    match = _BLOCK_LAYER.match(name)
    if not match:
        return None
    return f"body.{int(match.group(2)) - 1}.{0 if match.group(1) == 'conv' else 1}"


def _backbone_key(parts: list[str]) -> Optional[str]:
    """h3r's name (below ``backbone.``) of one of their backbone tensors, or None."""
    if len(parts) < 2 or not _TENSOR_NAME.match(parts[-1]):
        return None
    *path, tensor = parts
    head = path[0]
    if len(path) == 1 and head in _STEM:  # HRNet stem
        return f"{_STEM[head]}.{tensor}"
    if head == "layer1" and len(path) == 3:  # layer1.<b>.<conv|bn><n>
        layer = _block_layer(path[2])
        return None if layer is None else f"stage1.{path[1]}.{layer}.{tensor}"
    if head == "layer1" and len(path) == 4 and path[2] == "downsample":
        return f"stage1.{path[1]}.shortcut.{path[3]}.{tensor}"
    transition = re.match(r"^transition([123])$", head)
    if transition:
        stage = int(transition.group(1)) - 1
        if len(path) == 3:  # an existing branch adapted: Sequential(conv, bn, relu)
            return f"transitions.{stage}.{path[1]}.{path[2]}.{tensor}"
        if len(path) == 4 and path[2] == "0":  # the new branch: Sequential(Sequential(conv, bn, relu))
            return f"transitions.{stage}.{path[1]}.{path[3]}.{tensor}"
        return None
    stage = re.match(r"^stage([234])$", head)
    if stage and len(path) >= 4:
        prefix = f"stages.{int(stage.group(1)) - 2}.{path[1]}"
        if path[2] == "branches" and len(path) == 6:  # branches.<b>.<k>.<conv|bn><n>
            layer = _block_layer(path[5])
            return None if layer is None else f"{prefix}.branches.{path[3]}.{path[4]}.{layer}.{tensor}"
        if path[2] == "fuse_layers" and len(path) in (6, 7):
            target, source = int(path[3]), int(path[4])
            if source > target and len(path) == 6:  # Sequential(conv1x1, bn, upsample)
                return f"{prefix}.fuse.{target}.paths.{source}.{path[5]}.{tensor}"
            if source < target and len(path) == 7:  # Sequential of Sequential(conv3x3 s2, bn[, relu])
                return f"{prefix}.fuse.{target}.paths.{source}.{path[5]}.{path[6]}.{tensor}"
        return None
    if head == "features" and len(path) >= 3:  # MobileNetV2
        if path[1] == "0" and len(path) == 3:
            return f"stem.{path[2]}.{tensor}"
        if len(path) == 4 and path[2] == "conv" and path[1].isdigit() and 1 <= int(path[1]) <= len(_MOBILENET_BLOCKS):
            stage_index, block, expansion = _MOBILENET_BLOCKS[int(path[1]) - 1]
            table = _MOBILENET_EXPANSION_1 if expansion == 1 else _MOBILENET_EXPANDED
            if path[3] in table:
                return f"stages.{stage_index}.{block}.body.{table[path[3]]}.{tensor}"
    return None


def official_to_h3r_key(key: str) -> Optional[str]:
    """The h3r parameter name of an official ``FacialLandmarkDetector`` key, or None if it is not one.

    ``backbone.conv1.weight -> backbone.stem.0.0.weight``;
    ``heatmap_head.head.layers.{0,1,3}.* -> head.{hidden.0, hidden.1, logits}.*``.
    """
    parts = key.split(".")
    if parts[0] == "backbone":
        mapped = _backbone_key(parts[1:])
        return None if mapped is None else "backbone." + mapped
    if parts[:3] == ["heatmap_head", "head", "layers"] and len(parts) == 5:
        layer = {"0": "hidden.0", "1": "hidden.1", "3": "logits"}.get(parts[3])
        if layer is not None and _TENSOR_NAME.match(parts[4]):
            return f"head.{layer}.{parts[4]}"
    return None


def is_official_state(state: dict) -> bool:
    """Whether a state dict has the authors' layout (their head's keys)."""
    return any(str(key).startswith("heatmap_head.head.layers.") for key in state)


def official_to_h3r_state(state: dict[str, torch.Tensor], source: str = "state dict") -> dict[str, torch.Tensor]:
    """Rename every tensor of an official state dict to h3r's names (``ValueError`` for unknown keys)."""
    mapped, unknown = {}, []
    for key, value in state.items():
        name = official_to_h3r_key(key)
        if name is None:
            unknown.append(key)
        else:
            mapped[name] = value
    if unknown:
        shown = ", ".join(unknown[:10]) + (f", ... ({len(unknown)} in all)" if len(unknown) > 10 else "")
        raise ValueError(f"{source}: keys outside the authors' FacialLandmarkDetector layout: {shown}")
    return mapped


# ----------------------------------------------------------------------------------------------
# Folders and weights.


def official_folder(path: str | Path) -> Optional[Path]:
    """The released folder ``path`` names (the folder, or its config.yaml / model.pth), else None."""
    path = Path(path)
    if path.is_file() and path.name in (CONFIG_FILE, WEIGHTS_FILE):
        path = path.parent
    if path.is_dir() and (path / CONFIG_FILE).is_file():
        return path
    return None


def read_official_state(path: str | Path) -> dict[str, torch.Tensor]:
    """The tensors of an official ``model.pth`` (loaded with ``weights_only=True`` on the CPU)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: the authors' weights (model.pth) not found; download the released file")
    with open(path, "rb") as file:
        head = file.read(64)
    if head.startswith(b"version https://git-lfs"):
        raise ValueError(f"{path}: a Git LFS pointer, not the weights; download the real model.pth "
                         f"(git lfs pull, or the authors' Google Drive bundle)")
    state = read_weights_file(path)
    for wrapper in ("state_dict", "model", "net"):  # a training checkpoint that holds the weights under one key
        if isinstance(state, dict) and isinstance(state.get(wrapper), dict):
            state = state[wrapper]
            break
    if not isinstance(state, dict) or not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
        found = f"; found keys {sorted(map(str, state))[:8]}" if isinstance(state, dict) and state else ""
        raise ValueError(f"{path}: expected a state dict of tensors (or one under 'state_dict', 'model' or "
                         f"'net'){found}")
    state = {key[len("module."):] if key.startswith("module.") else key: value for key, value in state.items()}
    if not is_official_state(state):
        raise ValueError(f"{path}: no 'heatmap_head.head.layers.*' keys: not a torchalign FacialLandmarkDetector")
    return state


def _mismatch_hint(expected: dict[str, torch.Tensor], state: dict[str, torch.Tensor], keypoints: int) -> str:
    """What a mismatch most likely is, said first: another backbone, or another number of landmarks
    (``keypoints``: the model's; the official head has two logits per landmark)."""
    hints = []
    missing, unexpected = set(expected) - set(state), set(state) - set(expected)
    if any(key.startswith("backbone.") for key in missing) and any(key.startswith("backbone.") for key in unexpected):
        hints.append("their backbone is not the model's (BACKBONE.ARCH or --backbone)")
    weight = state.get("head.logits.weight")
    if keypoints and weight is not None and weight.shape[0] != 2 * keypoints:
        hints.append(f"they predict {weight.shape[0] // 2} landmarks (two logits each), the model's head {keypoints} "
                     f"maps (one per landmark; three with codec udp)")
    return f": {'; '.join(hints)}" if hints else ""


def load_official_weights(model: nn.Module, path: str | Path) -> None:
    """Load official weights (a released folder, or its ``model.pth``) into an h3r model, in place.

    ``model`` is a :class:`LandmarkModel` with the matching backbone (``hrnet_w18`` for
    ``hrnet18``, ``mobilenetv2``) and K keypoints. Its head may be:

    * two-class (their parameterisation): loaded as is; a bias the official head lacks is
      set to 0, which computes the same function;
    * binary: its one logit per landmark becomes ``z1 - z0`` of theirs (weights
      ``W1 - W0``, bias 0), the function h3r's two-class head returns.

    Raises ``ValueError`` naming the file and the missing / unexpected / misshapen entries.
    """
    path = Path(path)
    if path.is_dir() or path.name == CONFIG_FILE:
        folder = path if path.is_dir() else path.parent
        if not (folder / CONFIG_FILE).is_file() and not (folder / WEIGHTS_FILE).is_file():
            raise FileNotFoundError(f"{folder}: not a released H3R model folder "
                                    f"(expected {CONFIG_FILE} and {WEIGHTS_FILE})")
        path = folder / WEIGHTS_FILE
    state = official_to_h3r_state(read_official_state(path), source=str(path))
    expected = model.state_dict()
    weight, target = state.get("head.logits.weight"), expected.get("head.logits.weight")
    head = getattr(model, "head", None)
    if (weight is not None and target is not None and getattr(head, "kind", None) == "binary"
            and weight.shape[0] == 2 * target.shape[0] and weight.shape[1:] == target.shape[1:]):
        half = target.shape[0]
        state["head.logits.weight"] = weight[half:] - weight[:half]
    if "head.logits.bias" in expected and "head.logits.bias" not in state:
        state["head.logits.bias"] = torch.zeros_like(expected["head.logits.bias"])
    problems = state_dict_mismatches(expected, state, source="official")
    if problems:
        keypoints = 0 if target is None else target.shape[0] // (1 if getattr(head, "kind", None) == "binary" else 2)
        raise ValueError(f"{path}: the authors' weights do not fit the model (h3r names)"
                         f"{_mismatch_hint(expected, state, keypoints)}; " + "; ".join(problems))
    model.load_state_dict(state)


def build_official_model(config: OfficialConfig) -> LandmarkModel:
    """h3r's network for ``config``, randomly initialised: ``images -> z1`` (B, K, S/4, S/4)."""
    backbone = OFFICIAL_ARCHS[config.arch][0]()
    head = HeatmapHead(config.in_channels, config.num_keypoints, "two-class", config.proj_channels,
                       bias=False, output="foreground")
    return LandmarkModel(backbone, head)


# ----------------------------------------------------------------------------------------------
# Their crop, its inverse and the flip test.


@dataclass(frozen=True)
class OfficialCrop:
    """The authors' test-time crop (``api.py``: ``resized_crop`` / ``resized_crop_inverse``).

    ``box`` names which box the crop starts from (``"P1"``: the tight landmark box; ``"P2"``:
    the dataset's box); ``flip`` / ``flip_order`` are the flip test.
    """

    input_size: int
    scale: float = 1.25
    box: str = "P1"
    flip: bool = True
    flip_order: Optional[tuple[int, ...]] = None
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD

    def rect(self, box) -> torch.Tensor:
        """The crop rectangle ``(..., 4)`` float32 ``(x0, y0, x0 + wh, y0 + wh)`` of boxes ``(..., 4)``.

        ``wh = max(x2 - x1 + 1, y2 - y1 + 1) * scale``, ``x0 = (x1 + x2 - wh + 1) / 2`` (and y),
        in float32 as the authors compute it.
        """
        box = torch.as_tensor(np.asarray(box, dtype=np.float32))
        if box.shape[-1] != 4:
            raise ValueError(f"box: expected (..., 4) x1, y1, x2, y2, got shape {tuple(box.shape)}")
        side = (box[..., 2:] - box[..., :2] + 1).max(-1).values * self.scale
        origin = (box[..., :2] + box[..., 2:] - side[..., None] + 1) / 2.0
        return torch.cat([origin, origin + side[..., None]], -1)

    def crop(self, image, box) -> tuple[torch.Tensor, torch.Tensor]:
        """``(input (3, S, S) float32 normalised, rect (4,) float32)`` for one image and box.

        ``image``: a PIL image or an ``(H, W, 3)`` uint8 RGB array. Pillow rounds the
        rectangle's corners (``round``) and fills outside the image with black; the crop is
        resized to ``S x S`` with Pillow's bilinear filter (what torchvision's ``Resize`` does
        to a PIL image). ``box=None``: the whole image, ``(0, 0, W, H)``, neither squared nor
        enlarged (their ``api.py`` without a box).
        """
        picture = image if isinstance(image, Image.Image) else Image.fromarray(np.asarray(image))
        if picture.mode != "RGB":
            picture = picture.convert("RGB")
        if box is None:
            rect = torch.tensor([0.0, 0.0, picture.width, picture.height], dtype=torch.float32)
        else:
            rect = self.rect(box)
        if rect.shape != (4,):
            raise ValueError(f"box: expected one box (4,), got shape {tuple(rect.shape)}")
        size = self.input_size
        patch = picture.crop(tuple(rect.tolist())).resize((size, size), Image.Resampling.BILINEAR)
        pixels = torch.from_numpy(np.array(patch, dtype=np.uint8)).permute(2, 0, 1).contiguous()
        tensor = pixels.float().div(255)
        mean = torch.tensor(self.mean, dtype=torch.float32).view(3, 1, 1)
        std = torch.tensor(self.std, dtype=torch.float32).view(3, 1, 1)
        return tensor.sub_(mean).div_(std), rect

    def to_image(self, coords: torch.Tensor, rect: torch.Tensor) -> torch.Tensor:
        """Input pixels ``(..., K, 2)`` -> image pixels, given the rectangles ``(..., 4)``:
        ``p / (S / wh) + origin`` (no half-pixel offset)."""
        rect = torch.as_tensor(rect).to(coords.device)
        scale = torch.stack([self.input_size / (rect[..., 2] - rect[..., 0]),
                             self.input_size / (rect[..., 3] - rect[..., 1])], -1)
        return coords / scale[..., None, :] + rect[..., None, :2]

    def to_input(self, points: torch.Tensor, rect: torch.Tensor) -> torch.Tensor:
        """Image pixels ``(..., K, 2)`` -> input pixels of the crop (the inverse of :meth:`to_image`)."""
        rect = torch.as_tensor(rect).to(points.device)
        scale = torch.stack([self.input_size / (rect[..., 2] - rect[..., 0]),
                             self.input_size / (rect[..., 3] - rect[..., 1])], -1)
        return (points - rect[..., None, :2]) * scale[..., None, :]

    def unflip(self, coords: torch.Tensor, width: Optional[int] = None) -> torch.Tensor:
        """A prediction on the mirrored input brought back: ``x <- width - 1 - x``, then
        ``[..., flip_order, :]`` (``width`` defaults to ``input_size``)."""
        if self.flip_order is None or len(self.flip_order) != coords.shape[-2]:
            raise ValueError(f"flip test: FLIP_ORDER does not describe {coords.shape[-2]} landmarks")
        width = self.input_size if width is None else width
        mirrored = coords.clone()
        mirrored[..., 0] = width - 1 - mirrored[..., 0]
        return mirrored[..., torch.tensor(self.flip_order, device=coords.device), :]


@dataclass
class OfficialModel:
    """A released model in h3r: ``model`` (images -> foreground logits z1), ``codec`` (their
    decoder), ``crop`` (their crop and flip settings), ``config`` (the parsed config.yaml)."""

    model: LandmarkModel
    codec: Any  # h3r.codecs.H3RCodec(stride=4, k=TOPK, weights="softmax")
    crop: OfficialCrop
    config: OfficialConfig
    folder: Path

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @torch.no_grad()
    def predict_inputs(self, images: torch.Tensor, flip: Optional[bool] = None) -> tuple[torch.Tensor, torch.Tensor]:
        """``(coords (B, K, 2) input pixels, scores (B, K))`` for normalised crops ``(B, 3, S, S)``.

        ``flip`` (default ``crop.flip``): also decode the mirrored crops, bring them back and
        average. Scores are ``sigmoid`` of the largest ``z1`` (averaged likewise).
        """
        flip = self.crop.flip if flip is None else flip
        images = images.to(self.device)
        coords, scores = self.codec.decode(self.model(images))
        if flip:
            mirrored_coords, mirrored_scores = self.codec.decode(self.model(images.flip(-1)))
            coords = (coords + self.crop.unflip(mirrored_coords, images.shape[-1])) / 2.0
            order = torch.tensor(self.crop.flip_order, device=scores.device)
            scores = (scores + mirrored_scores[:, order]) / 2.0
        return coords, scores

    @torch.no_grad()
    def predict(self, image, boxes=None, flip: Optional[bool] = None) -> torch.Tensor:
        """Landmarks in image pixels for one image: ``boxes (4,)`` -> ``(K, 2)``, ``(N, 4)`` -> ``(N, K, 2)``,
        None -> ``(K, 2)`` from the whole image (:meth:`OfficialCrop.crop`).

        What their ``FacialLandmarkDetector(img, bbox)`` returns (``image``: PIL image or
        ``(H, W, 3)`` uint8 RGB array; boxes ``x1, y1, x2, y2`` in image pixels).
        """
        if boxes is None:
            crops, single = [self.crop.crop(image, None)], True
        else:
            boxes_array = np.asarray(boxes, dtype=np.float32)
            single = boxes_array.ndim == 1
            crops = [self.crop.crop(image, box) for box in boxes_array.reshape(-1, 4)]
        images = torch.stack([data for data, _ in crops])
        rects = torch.stack([rect for _, rect in crops]).to(self.device)
        coords, _ = self.predict_inputs(images, flip)
        landmarks = self.crop.to_image(coords, rects)
        return landmarks[0] if single else landmarks


def load_official(folder: str | Path, device: str | torch.device = "cpu") -> OfficialModel:
    """A released folder (``config.yaml`` + ``model.pth``) as an :class:`OfficialModel` in eval mode.

    Errors name the file: ``FileNotFoundError`` for a missing folder / config.yaml / model.pth,
    ``ValueError`` for malformed YAML, unsupported settings or weights that do not fit.
    """
    from h3r.codecs import H3RCodec

    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: not a folder; expected a released H3R model folder "
                                f"({CONFIG_FILE} + {WEIGHTS_FILE}), e.g. models/wflw/hrnet18_256x256_p1")
    config = read_official_config(folder / CONFIG_FILE)
    model = build_official_model(config)
    load_official_weights(model, folder / WEIGHTS_FILE)
    model.eval().to(device)
    codec = H3RCodec(stride=config.stride, k=config.topk, weights="softmax")
    crop = OfficialCrop(input_size=config.input_size, scale=config.scale, box=config.box, flip=config.flip,
                        flip_order=config.flip_order)
    return OfficialModel(model=model, codec=codec, crop=crop, config=config, folder=folder)


__all__ = [
    "DEFAULTS",
    "OFFICIAL_ARCHS",
    "OfficialConfig",
    "OfficialCrop",
    "OfficialModel",
    "build_official_model",
    "is_official_state",
    "load_official",
    "load_official_weights",
    "official_folder",
    "official_to_h3r_key",
    "official_to_h3r_state",
    "read_official_config",
]

