"""Backbones and the heatmap head.

``build_model(backbone, num_keypoints, head="binary", stride=4)`` returns a
:class:`LandmarkModel` mapping ``(B, 3, S, S)`` images to ``(B, K, S/s, S/s)`` heatmap logits
(``model.stride == s``, one of :data:`STRIDES`).
Backbones: ``"hrnet_w18"`` (270 ch), ``"mobilenetv2"`` (152 ch), ``"small"`` (64 ch, for
CPU runs). No pretrained weights are downloaded; :func:`load_checkpoint_weights` loads a
user checkpoint or one of the authors' released folders, and :func:`load_official` runs
such a folder exactly as the authors do (see :mod:`h3r.models.official`).
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from h3r.models.head import HEAD_KINDS, STRIDES, HeatmapHead, LandmarkModel
from h3r.models.hrnet import HRNet, hrnet_w18
from h3r.models.mobilenetv2 import MobileNetV2
from h3r.models.official import OfficialCrop, OfficialModel, load_official, official_folder
from h3r.models.small import SmallNet
from h3r.models.weights import read_weights_file, state_dict_mismatches

BACKBONES = {"hrnet_w18": hrnet_w18, "mobilenetv2": MobileNetV2, "small": SmallNet}

__all__ = [
    "BACKBONES",
    "HEAD_KINDS",
    "HRNet",
    "HeatmapHead",
    "LandmarkModel",
    "MobileNetV2",
    "OfficialCrop",
    "OfficialModel",
    "SmallNet",
    "STRIDES",
    "build_model",
    "load_checkpoint_weights",
    "load_official",
]


def build_model(backbone: str, num_keypoints: int, head: str = "binary", head_channels: int | None = None,
                stride: int = 4) -> LandmarkModel:
    """A randomly initialised backbone + heatmap head.

    Args:
        backbone: one of :data:`BACKBONES`.
        num_keypoints: K, the number of heatmaps.
        head: ``"binary"`` (one logit per landmark) or ``"two-class"`` (the authors' head,
            returning ``z1 - z0``; see :class:`HeatmapHead`).
        head_channels: hidden width of the head; default = the backbone's output channels.
        stride: input pixels per heatmap cell (4, 8, 16 or 32); the backbone's stride-4
            features are average-pooled down to it (see :class:`LandmarkModel`).
    """
    if backbone not in BACKBONES:
        raise ValueError(f"unknown backbone {backbone!r}; expected one of {sorted(BACKBONES)}")
    features = BACKBONES[backbone]()
    return LandmarkModel(features, HeatmapHead(features.out_channels, num_keypoints, head, head_channels), stride)


def load_checkpoint_weights(model: nn.Module, path: str | Path) -> None:
    """Load weights saved by ``torch.save`` into ``model`` (in place).

    Accepts a raw state dict or a dict holding it under ``"model"``. Loads with
    ``weights_only=True`` (no arbitrary code is unpickled). Raises ``ValueError`` naming the
    file when it cannot be read, and the missing, unexpected and wrongly shaped entries when
    the checkpoint does not fit.

    ``path`` may also be an ``h3r train`` run folder (its ``last.pt``), or one of the authors'
    released folders (``config.yaml`` + ``model.pth``) or its ``model.pth``: their parameter
    names are mapped to h3r's (:func:`h3r.models.official.load_official_weights`).
    """
    path = Path(path)
    if official_folder(path) is not None:
        from h3r.models.official import load_official_weights

        return load_official_weights(model, path)
    if path.is_dir():  # an h3r run folder: its last checkpoint, as h3r eval and --resume read it
        path = path / "last.pt"
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist (give a .pt file, an h3r run folder holding "
                                f"last.pt, or one of the authors' released folders)")
    checkpoint = read_weights_file(path)
    state = checkpoint.get("model", checkpoint) if isinstance(checkpoint, dict) else None
    if not isinstance(state, dict) or not all(isinstance(value, torch.Tensor) for value in state.values()):
        raise ValueError(f"checkpoint {path}: expected a state dict of tensors, or a dict with one under 'model'")
    problems = state_dict_mismatches(model.state_dict(), state, source="checkpoint")
    if problems:
        raise ValueError(f"checkpoint {path} does not fit the model; " + "; ".join(problems))
    model.load_state_dict(state)
