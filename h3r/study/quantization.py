"""Part A: the quantization error of each codec alone — encode the ground truth, decode it back.

No network is trained. For every stride, the test split's keypoints (in input pixels of
the un-augmented crop) are encoded by each codec into the output a *perfect* network would
give (``codec.ideal_output``: the Bayes-optimal output for the codec's loss) and decoded
with the method's decoder. What remains is the error the representation itself adds.

The closed forms the study checks (``docs/STUDY.md``, ``/work/shared/reference/method.md``):

* vanilla (nearest cell + arg-max): with sub-cell offsets uniform, the mean 2-D error is
  ``s (√2 + ln(1 + √2)) / 6 ≈ 0.383 s`` input pixels (``s`` = stride);
* H3R, expected target decoded with probability weights: 0 (lossless);
* H3R, one sampled target (what a training step sees), decoded by arg-max: unbiased (mean
  error vector 0) with per-axis variance ``s² ε (1 - ε)``, ``ε`` the sub-cell offset;
* DARK (unbiased Gaussian + Taylor step): ≈ 0 where the step applies (σ ≥ 0.5 cell).

Keypoints outside the map's cell centres (beyond ``s (W - 1)`` input pixels, where no cell
can represent them under the convention ``cell i ↔ pixel s i``) are counted but left out.

The closed forms assume sub-cell offsets spread uniformly; a dataset's keypoints on a map
of a few cells need not be (a face's layout repeats from crop to crop). So every stride is
measured twice: on the dataset's keypoints (``points="ground truth"``) and on
keypoints drawn uniformly over the map (``points="uniform"``), where
the closed forms must hold (``Preset.uniform_points`` of them).
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch

from h3r.codecs import build_codec, dark_blur_radius
from h3r.configs import load_config
from h3r.data import open_dataset
from h3r.study.presets import METHODS, Method, Preset
from h3r.transforms import apply_affine, crop_affine

VANILLA_MEAN_ERROR = (math.sqrt(2) + math.log(1 + math.sqrt(2))) / 6  # × stride: E‖e‖ for uniform offsets


def ground_truth_in_input_pixels(dataset, input_size: int, box_scale: float) -> np.ndarray:
    """``(M, 2)`` visible, finite keypoints of every item in input pixels of the plain crop."""
    points = []
    for index in range(len(dataset)):
        sample = dataset[index]
        moved = apply_affine(np.asarray(sample.keypoints, np.float64), crop_affine(sample.box, input_size, box_scale))
        keep = np.asarray(sample.visible, bool) & np.isfinite(moved).all(axis=1)
        points.append(moved[keep])
    return np.concatenate(points) if points else np.zeros((0, 2))


def method_codec(method: Method, dataset: str, stride: int, preset: Preset, data_root: Optional[str] = None,
                 extra: tuple[str, ...] = ()):
    """``method``'s codec as its cells train and score it: the settings of the cell's ``h3r train``
    (the dataset's defaults, the preset, the arguments after '--' such as ``--sigma``), with the
    method's decoder settings on top, as ``h3r eval`` applies them."""
    from h3r.cli import train_config_of
    from h3r.configs import config_from_dict
    from h3r.evaluate import codec_of
    from h3r.study.grid import Cell, train_argv

    cell = Cell(dataset, method.codec, stride, preset.seeds[0])
    config = train_config_of(train_argv(cell, preset, Path("."), data_root=data_root, extra=extra))
    return codec_of(config_from_dict({**config.to_dict(), **method.decoder}, source=f"method {method.name}"))


def quantization_rows(preset: Preset, data_root: Optional[str] = None, seed: int = 0,
                      extra: tuple[str, ...] = ()) -> list[dict[str, Any]]:
    """Part A rows for every dataset, method and stride of ``preset`` (plus the sampled H3R target);
    ``extra``: the arguments after '--' the cells train with."""
    rows = []
    for dataset_name in preset.datasets:
        config = load_config(dataset_name, data_root=data_root, input_size=preset.input_size)
        options = {**config.test_options, **preset.reader_options(dataset_name, "test")}
        data = open_dataset(dataset_name, root=config.data_root, split=config.test_split, **options)
        points = ground_truth_in_input_pixels(data, preset.input_size, config.crop.box_scale)
        for stride in preset.strides:
            side = preset.input_size // stride
            uniform = np.random.default_rng([seed, stride]).uniform(0, stride * (side - 1), (preset.uniform_points, 2))
            for label, where in (("ground truth", points), ("uniform", uniform)):
                rows += stride_rows(dataset_name, label, where, preset, stride, seed,
                                    data_root=data_root, extra=extra)
    return rows


def stride_rows(dataset: str, label: str, points: np.ndarray, preset: Preset, stride: int, seed: int, *,
                data_root: Optional[str] = None, extra: tuple[str, ...] = ()) -> list[dict[str, Any]]:
    """The rows of one stride for ``points`` (M, 2) in input pixels."""
    side = preset.input_size // stride
    cells = torch.from_numpy(points).float() / stride
    on_map = ((cells >= 0) & (cells <= side - 1)).all(dim=1)
    keypoints = (cells[on_map] * stride).unsqueeze(0)  # (1, M, 2) input pixels
    common = {"dataset": dataset, "points": label, "stride": stride, "heatmap_size": side,
              "keypoints": int(on_map.sum()), "outside_map": int((~on_map).sum())}
    offsets = cells[on_map] - cells[on_map].floor()  # ε per axis
    rows = []
    for name in preset.methods:
        method = METHODS[name]
        if method.codec == "integral":
            rows.append({**common, "method": name, "applicable": False,
                         "note": "no heatmap target: the coordinate itself is regressed, nothing is quantized"})
            continue
        codec = method_codec(method, dataset, stride, preset, data_root=data_root, extra=extra)
        decoded = _decode_chunked(codec, keypoints, (side, side))
        row = {**common, "method": name, "applicable": True, **_errors(decoded - keypoints[0])}
        if name == "argmax":
            row["theory_mean_error_px"] = VANILLA_MEAN_ERROR * stride
        if name in ("h3r-linear", "h3r-local"):
            row["theory_mean_error_px"] = 0.0
        if getattr(codec, "sigma", 0) > 0:
            row["sigma_cells"] = codec.sigma
        # The interior, where the border does not cut what the decoder reads: for DARK where the Taylor
        # step has its neighbours (1 < x < W - 2); for h3r-gaussian where the window around either
        # cell the keypoint may round to lies on the map (r <= x <= W - 1 - r, r = window // 2); for
        # udp where the disk map's blur around the keypoint's cells does not reflect at the border.
        interior, reach = None, None
        if name == "dark":
            interior = ((cells[on_map] > 1.5) & (cells[on_map] < side - 2.5)).all(dim=1)
            row["blur_radius_cells"] = dark_blur_radius(codec.sigma)
        elif method.codec == "h3r-gaussian":
            reach = codec.window // 2
        elif method.codec == "udp":
            reach = codec.blur_half_widths((side, side))[0] + 1
            row["radius_cells"] = codec.radius_on((side, side))
        if reach is not None:
            interior = ((cells[on_map] >= reach) & (cells[on_map] <= side - 1 - reach)).all(dim=1)
        if interior is not None:
            row["interior_keypoints"] = int(interior.sum())
            row["interior_mean_error_px"] = (float((decoded - keypoints[0])[interior].norm(dim=1).mean())
                                             if interior.any() else None)
        rows.append(row)
    if any(METHODS[name].codec == "h3r" for name in preset.methods):
        codec = build_codec("h3r", stride)
        target = codec.targets(keypoints, (side, side), seed=seed)
        sampled = _argmax_cells(target) * stride
        error = sampled - keypoints[0]
        row = {**common, "method": "h3r-sampled-target", "applicable": True, **_errors(error),
               "theory_rms_axis_px": [float(stride * torch.sqrt((offsets[:, axis] * (1 - offsets[:, axis])).mean()))
                                      for axis in range(2)],
               "mean_vector_standard_error_px": [float(error[:, axis].std() / math.sqrt(max(len(error), 1)))
                                                 for axis in range(2)],
               "note": "one randomized rounding of each keypoint (what one training step sees), read by arg-max"}
        rows.append(row)
    return rows


def _decode_chunked(codec, keypoints: torch.Tensor, size: tuple[int, int], chunk: int = 4096) -> torch.Tensor:
    parts = []
    for start in range(0, keypoints.shape[1], chunk):
        part = keypoints[:, start:start + chunk]
        parts.append(codec.decode(codec.ideal_output(part, size))[0][0])
    return torch.cat(parts) if parts else torch.zeros(0, 2)


def _argmax_cells(maps: torch.Tensor) -> torch.Tensor:
    """``(M, 2)`` (x, y) of each map's maximum in ``maps`` (1, M, H, W)."""
    width = maps.shape[-1]
    flat = maps[0].flatten(1).argmax(dim=1)
    return torch.stack([flat % width, flat // width], dim=1).float()


def _errors(error: torch.Tensor) -> dict[str, Any]:
    """Mean and max 2-D error, mean error vector and per-axis RMS, in input pixels."""
    if len(error) == 0:
        return {"mean_error_px": None, "max_error_px": None, "mean_vector_px": None, "rms_axis_px": None}
    norms = error.norm(dim=1)
    return {"mean_error_px": float(norms.mean()), "max_error_px": float(norms.max()),
            "mean_vector_px": [float(v) for v in error.mean(dim=0)],
            "rms_axis_px": [float(v) for v in error.pow(2).mean(dim=0).sqrt()]}
