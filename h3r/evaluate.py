"""Evaluation: predict on crops, map back to the original image, score with the dataset's metrics.

The path of one prediction: the sample's box gives a crop (``h3r.transforms``); the model
turns the crop into heatmap logits; the codec decodes input-pixel coordinates; with
``flip_test`` the mirrored crop is predicted too, mirrored back (``x -> S - 1 - x`` and the
dataset's flip pairs swapped) and averaged; the inverse of the crop's affine takes the
coordinates back to **original-image pixels**, where ``dataset.evaluate`` computes the
standard metrics (NME / FR / AUC, PCKh, COCO AP).

Reports: ``results.json`` (metrics and settings), ``results.md`` (a Markdown table) and
PNGs of predictions drawn over the images.
"""
from __future__ import annotations

import inspect
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
import torch
from PIL import Image, ImageDraw
from torch.utils.data import DataLoader
from tqdm import tqdm

# The checkpoint format, the crops and the device live in their own modules; their names stay importable from here.
from h3r.checkpoints import (CHECKPOINT_FORMAT, CheckpointError, checkpoint_checksum,  # noqa: F401 (re-exported)
                             load_checkpoint)
from h3r.codecs import build_codec
from h3r.configs import TrainConfig, absolute_path, config_from_dict, unused_settings
from h3r.crops import CropDataset, eval_crop
from h3r.data import check_reader_options, open_dataset, require_items, require_mirror
from h3r.data.base import LandmarkDataset
from h3r.loading import WorkerCollate
from h3r.models import build_model
from h3r.runtime import autocast, resolve_device
from h3r.transforms import CropConfig, apply_affine, crop_affine, flip_keypoints, flip_permutation, invert_affine



@dataclass
class Predictions:
    """Predicted keypoints of the items ``indices`` of a dataset."""

    coords: np.ndarray  # (N, K, 2) float64, original-image pixels, 0-based, x before y
    scores: np.ndarray  # (N, K) the codec's confidence per keypoint
    indices: np.ndarray  # (N,) dataset indices


def eval_loader(dataset: LandmarkDataset, crop: CropConfig, *, device: torch.device, batch_size: int = 64,
                workers: int = 0, indices: Optional[Sequence[int]] = None, persistent: bool = False) -> DataLoader:
    """The loader of the plain crops of ``dataset`` that :func:`predict` runs on. ``persistent``: its
    workers stay between passes (a training run evaluates with one loader; no start-up per evaluation)."""
    crops = CropDataset(dataset, crop, seed=None, indices=indices)
    return DataLoader(crops, batch_size=batch_size, shuffle=False, num_workers=workers,
                      pin_memory=device.type == "cuda", collate_fn=WorkerCollate(),
                      persistent_workers=persistent and workers > 0)


@torch.no_grad()
def predict(model: torch.nn.Module, codec, dataset: LandmarkDataset, crop: CropConfig, *, device: torch.device,
            batch_size: int = 64, workers: int = 0, flip_test: bool = False, amp: str = "none",
            indices: Optional[Sequence[int]] = None, progress: bool = False,
            loader: Optional[DataLoader] = None) -> Predictions:
    """Run ``model`` on the plain crops of ``dataset`` and return predictions in image pixels.

    ``loader``: an :func:`eval_loader` of the same ``dataset`` and ``crop`` to use instead of a new
    one (then ``batch_size``, ``workers`` and ``indices`` are its own)."""
    if flip_test:
        require_mirror(dataset, "flip_test", "the mirrored prediction cannot be mapped back; evaluate with --no-flip-test")
    if loader is None:
        loader = eval_loader(dataset, crop, device=device, batch_size=batch_size, workers=workers, indices=indices)
    swap = flip_permutation(dataset.num_keypoints, dataset.flip_pairs)
    was_training = model.training
    model.eval()
    coords, scores, order = [], [], []
    for batch in tqdm(loader, desc="evaluate", leave=False, disable=not progress, unit="batch"):
        images = batch["image"].to(device, non_blocking=True)
        with autocast(device, amp):
            logits = model(images)
        batch_coords, batch_scores = codec.decode(logits)
        if flip_test:
            with autocast(device, amp):
                flipped_logits = model(images.flip(-1))
            flipped_coords, flipped_scores = codec.decode(flipped_logits)
            flipped_coords = flip_keypoints(flipped_coords, crop.input_size, dataset.flip_pairs)
            flipped_scores = flipped_scores[:, torch.from_numpy(swap).to(flipped_scores.device)]
            batch_coords = (batch_coords + flipped_coords) / 2
            batch_scores = (batch_scores + flipped_scores) / 2
        image_to_input = batch["affine"].to(torch.float64)
        coords.append(apply_affine(batch_coords.double().cpu(), invert_affine(image_to_input)).numpy())
        scores.append(batch_scores.float().cpu().numpy())
        order.append(batch["index"].numpy())
    model.train(was_training)
    num_keypoints = dataset.num_keypoints
    return Predictions(
        coords=np.concatenate(coords) if coords else np.zeros((0, num_keypoints, 2)),
        scores=np.concatenate(scores) if scores else np.zeros((0, num_keypoints)),
        indices=np.concatenate(order) if order else np.zeros(0, dtype=np.int64),
    )


def dataset_metrics(dataset: LandmarkDataset, predictions: Predictions) -> dict[str, Optional[float]]:
    """``dataset.evaluate`` of the predictions; datasets that rank instances by keypoint
    confidence (COCO: ``keypoint_scores``) also get the decoded scores."""
    indices = predictions.indices
    whole = len(indices) == len(dataset) and np.array_equal(indices, np.arange(len(dataset)))
    arguments: dict[str, Any] = {"indices": None if whole else indices}
    if "keypoint_scores" in inspect.signature(dataset.evaluate).parameters:
        arguments["keypoint_scores"] = predictions.scores
    # None: a metric the data cannot define (COCO's APl without large people)
    results = {key: None if value is None else float(value)
               for key, value in dataset.evaluate(predictions.coords, **arguments).items()}
    # Items with a NaN or infinite predicted coordinate: every metric scores them as failures.
    results["non_finite"] = int((~np.isfinite(np.asarray(predictions.coords))).any(axis=(1, 2)).sum())
    return results


# ----------------------------------------------------------------------------------------------
# The trivial baseline: the mean shape placed in every crop.


def mean_shape(dataset: LandmarkDataset, crop: CropConfig) -> np.ndarray:
    """The mean keypoint position ``(K, 2)`` in input pixels over the plain crops of ``dataset``.

    Computed from the annotations and boxes only (no image is decoded); a keypoint never
    visible sits at the crop centre.
    """
    total = np.zeros((dataset.num_keypoints, 2))
    count = np.zeros(dataset.num_keypoints)
    for index in range(len(dataset)):
        sample = dataset[index]
        moved = apply_affine(np.asarray(sample.keypoints, np.float64),
                             crop_affine(sample.box, crop.input_size, crop.box_scale))
        visible = np.asarray(sample.visible, bool) & np.isfinite(moved).all(axis=1)
        total[visible] += moved[visible]
        count[visible] += 1
    centre = (crop.input_size - 1) / 2
    return np.where(count[:, None] > 0, total / np.maximum(count, 1)[:, None], centre)


def mean_shape_predictions(dataset: LandmarkDataset, shape: np.ndarray, crop: CropConfig) -> Predictions:
    """``shape`` (input pixels) placed in the plain crop of every item, in image pixels."""
    coords = np.stack([
        apply_affine(shape, invert_affine(crop_affine(dataset[index].box, crop.input_size, crop.box_scale)))
        for index in range(len(dataset))
    ]) if len(dataset) else np.zeros((0, dataset.num_keypoints, 2))
    return Predictions(coords=coords, scores=np.ones(coords.shape[:2]), indices=np.arange(len(dataset)))


# ----------------------------------------------------------------------------------------------
# Settings checks, the model and reports.


def check_output_folder(folder: str | Path, what: str = "out") -> None:
    """Refuse a folder that cannot be created or written: under a file, a file itself, no write permission."""
    folder = Path(folder)
    existing = next(candidate for candidate in (folder, *folder.parents)
                    if candidate.exists() or candidate == Path("."))
    if not existing.is_dir():
        place = "is a file" if existing == folder else f"is under the file {existing}"
        raise ValueError(f"{what}: {folder} {place}; give a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ValueError(f"{what}: cannot write in {existing} (permission denied or a read-only file system)")


def check_eval_settings(batch_size: Optional[int], workers: Optional[int], draw: Optional[int]) -> None:
    """The numeric options of :func:`evaluate_checkpoint` (None: the run's setting)."""
    for name, value, least in (("batch_size", batch_size, 1), ("workers", workers, 0), ("draw", draw, 0)):
        if value is not None and not (isinstance(value, int) and value >= least):
            raise ValueError(f"{name}: expected an integer >= {least}, got {value!r}")


def model_and_codec(config: TrainConfig, num_keypoints: int):
    """The (untrained) model and the codec that ``config`` describes (the head outputs the codec's
    maps per keypoint: 3 for udp)."""
    codec = codec_of(config)
    model = build_model(config.backbone, num_keypoints * codec.maps_per_keypoint, head=config.head, stride=config.stride)
    return model, codec


def codec_of(config: TrainConfig):
    """The codec that ``config`` describes (:func:`h3r.codecs.build_codec`)."""
    return build_codec(config.codec, config.stride, input_size=config.crop.input_size, task=config.task,
                       k=config.topk, weights=config.topk_weights, sigma=config.sigma, refine=config.refine,
                       window=config.window, radius=config.radius, offset_blur=config.offset_blur)


# The decoder settings ``h3r eval`` may change: they act after the network, so one trained
# model can be scored with several decoders (the study does: arg-max and quarter offset of
# one Gaussian model, top-k softmax and linear of one H3R model).
DECODER_FIELDS = ("topk", "topk_weights", "window", "refine", "offset_blur")


def format_value(value: Optional[float]) -> str:
    """A metric as the reports show it; None: not defined on this data (e.g. COCO's APl without large people)."""
    if value is None:
        return "n/a"
    if isinstance(value, int) and not isinstance(value, bool):  # a count (non_finite)
        return str(value)
    return "nan" if not math.isfinite(value) else f"{value:.4f}"


def markdown_table(metrics: dict[str, float], baseline: Optional[dict[str, float]] = None) -> str:
    """``| metric | model | mean-shape baseline |`` rows, one per metric."""
    if baseline:
        lines = ["| metric | model | mean-shape baseline |", "|---|---:|---:|"]
        lines += [f"| {key} | {format_value(value)} | {format_value(baseline.get(key, float('nan')))} |"
                  for key, value in metrics.items()]
    else:
        lines = ["| metric | model |", "|---|---:|"]
        lines += [f"| {key} | {format_value(value)} |" for key, value in metrics.items()]
    return "\n".join(lines) + "\n"


def write_report(out_dir: str | Path, metrics: dict[str, float], settings: dict[str, Any],
                 baseline: Optional[dict[str, float]] = None) -> dict[str, Path]:
    """Write ``results.json`` and ``results.md`` into ``out_dir``; returns their paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path, markdown_path = out_dir / "results.json", out_dir / "results.md"
    json_path.write_text(json.dumps({"settings": settings, "metrics": metrics, "mean_shape_baseline": baseline},
                                    indent=2) + "\n")
    title = f"# {settings.get('dataset', '')} {settings.get('split', '')}: {settings.get('codec', '')} codec\n\n"
    described = ", ".join(f"{key} = {value}" for key, value in settings.items())
    markdown_path.write_text(title + described + "\n\n" + markdown_table(metrics, baseline))
    return {"json": json_path, "markdown": markdown_path}


def draw_predictions(dataset: LandmarkDataset, predictions: Predictions, out_dir: str | Path, count: int = 8,
                     min_side: int = 256) -> list[Path]:
    """PNGs of the first ``count`` items: ground truth in green, prediction in red, joined by a line.

    Small images are enlarged (nearest neighbour) so their shorter side is at least ``min_side``.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for row in range(min(count, len(predictions.indices))):
        index = int(predictions.indices[row])
        sample = dataset[index]
        image = Image.fromarray(sample.image())
        zoom = max(1, math.ceil(min_side / min(image.size)))
        image = image.resize((image.width * zoom, image.height * zoom), Image.Resampling.NEAREST)
        draw = ImageDraw.Draw(image)
        radius = max(2, zoom)
        # Pillow hangs on NaN, infinite or huge coordinates: non-finite predictions are not drawn,
        # far ones are pulled in to a margin around the image (the line still points their way).
        limit = 4 * max(image.size)
        for truth, guess, visible in zip(sample.keypoints, predictions.coords[row], sample.visible):
            drawn = bool(np.isfinite(guess).all())
            gx, gy = np.clip(_enlarged(guess, zoom), -limit, limit) if drawn else (0.0, 0.0)
            if visible and np.isfinite(truth).all():
                tx, ty = _enlarged(truth, zoom)
                if drawn:
                    draw.line([(tx, ty), (gx, gy)], fill=(255, 255, 0), width=1)
                draw.ellipse([tx - radius, ty - radius, tx + radius, ty + radius], outline=(0, 255, 0))
            if drawn:
                draw.ellipse([gx - radius, gy - radius, gx + radius, gy + radius], fill=(255, 0, 0))
        path = out_dir / f"prediction_{row:03d}_item{index}.png"
        image.save(path)
        paths.append(path)
    return paths


def _enlarged(point: Sequence[float], zoom: int) -> tuple[float, float]:
    """Where the pixel-centre coordinate ``point`` lands in the image enlarged ``zoom`` times."""
    return (point[0] + 0.5) * zoom - 0.5, (point[1] + 0.5) * zoom - 0.5


def evaluate_checkpoint(checkpoint_path: str | Path, *, dataset: Optional[str] = None, data_root: Optional[str] = None,
                        split: Optional[str] = None, options: Optional[dict[str, Any]] = None,
                        flip_test: Optional[bool] = None, device: str = "auto",
                        batch_size: Optional[int] = None, workers: Optional[int] = None, out: Optional[str] = None,
                        draw: Optional[int] = None, progress: bool = True,
                        decoder: Optional[dict[str, Any]] = None) -> dict[str, Any]:
    """Evaluate a checkpoint of ``h3r train`` and write the reports.

    Unset arguments come from the checkpoint's configuration: the test split of the
    training dataset (with the run's ``test_options``; the training split with its
    ``train_options``), its flip-test setting, and
    ``<run folder>/eval-<dataset>-<split>`` as ``out``. ``options`` are keyword arguments of
    the dataset reader, merged over those. ``decoder`` overrides the run's decoding settings
    (:data:`DECODER_FIELDS`: ``topk``, ``topk_weights``, ``window``, ``refine``, ``offset_blur``).
    Returns ``{"metrics", "baseline", "settings", "paths"}``.

    ``checkpoint_path`` may also be one of the authors' released folders (``config.yaml`` +
    ``model.pth``): it is evaluated with their protocol (:mod:`h3r.official_eval`).
    """
    from h3r.models.official import official_folder

    decoder = {key: value for key, value in (decoder or {}).items() if value is not None}
    unknown = sorted(set(decoder) - set(DECODER_FIELDS))
    if unknown:
        raise ValueError(f"decoder: unknown setting(s) {', '.join(unknown)}; expected {', '.join(DECODER_FIELDS)}")
    check_eval_settings(batch_size, workers, draw)  # both protocols
    released = official_folder(checkpoint_path)
    if released is not None:
        from h3r.official_eval import evaluate_official

        if decoder:
            raise ValueError(f"decoder: {checkpoint_path} is one of the authors' models, decoded as they do "
                             f"(top-k softmax of the foreground logits); {', '.join(decoder)} cannot be changed")
        return evaluate_official(released, dataset=dataset, data_root=data_root, split=split,
                                 options=options, flip_test=flip_test, device=device, batch_size=batch_size,
                                 workers=workers, out=out, draw=draw, progress=progress)
    checkpoint = load_checkpoint(checkpoint_path)
    config = config_from_dict({**checkpoint["config"], **decoder}, source=f"{checkpoint['path']} configuration")
    if data_root is not None:
        data_root = absolute_path(data_root)
    same_data = (dataset is None or dataset == config.dataset) and (data_root is None or data_root == config.data_root)
    dataset_name = dataset or config.dataset
    root = data_root if data_root is not None else (config.data_root if dataset_name == config.dataset else None)
    split = split or config.test_split
    # The run's reader options of the split it names (e.g. the synthetic sets' size and image size).
    run_options = {config.train_split: config.train_options, config.test_split: config.test_options}
    reader_options = dict(run_options.get(split, {})) if same_data else {}
    reader_options.update(options or {})
    check_reader_options(dataset_name, reader_options, "options")
    torch_device = resolve_device(device)
    out_dir = Path(out) if out else Path(checkpoint["path"]).parent / f"eval-{dataset_name}-{split}"
    check_output_folder(out_dir, "out")
    data = open_dataset(dataset_name, root=root, split=split, **reader_options)
    require_items(data, root)
    model, codec = model_and_codec(config, checkpoint["num_keypoints"])
    if data.num_keypoints != checkpoint["num_keypoints"]:
        raise ValueError(f"dataset: {dataset_name} has {data.num_keypoints} keypoints but the checkpoint's model "
                         f"predicts {checkpoint['num_keypoints']}")
    model.load_state_dict(checkpoint["model"])
    model.to(torch_device)
    flip_test = config.flip_test if flip_test is None else flip_test
    crop = eval_crop(config)
    predictions = predict(model, codec, data, crop, device=torch_device,
                          batch_size=config.batch_size if batch_size is None else batch_size,
                          workers=config.workers if workers is None else workers, flip_test=flip_test,
                          amp=config.amp, progress=progress)
    metrics = dataset_metrics(data, predictions)
    shape = np.asarray(checkpoint["mean_shape"], dtype=np.float64)
    baseline = dataset_metrics(data, mean_shape_predictions(data, shape, crop))
    settings = {"dataset": dataset_name, "split": split, "items": len(data), "codec": config.codec,
                "decoder": repr(codec), "backbone": config.backbone, "input_size": config.crop.input_size,
                "stride": config.stride,
                "heatmap_size": config.heatmap_side, "flip_test": flip_test,
                "checkpoint": checkpoint["path"], "epoch": checkpoint["epoch"]}
    ignored = unused_settings(config, decoder)
    if ignored:
        settings["ignored_decoder_settings"] = ignored
    paths = write_report(out_dir, metrics, settings, baseline)
    paths["images"] = draw_predictions(data, predictions, out_dir / "images", config.draw if draw is None else draw)
    return {"metrics": metrics, "baseline": baseline, "settings": settings, "paths": paths}
