"""Evaluate one of the authors' released folders with the authors' test protocol.

``h3r eval --checkpoint <folder with config.yaml + model.pth> --dataset wflw --data-root ...``
lands here (``h3r.evaluate.evaluate_checkpoint`` dispatches). Per item: the box named by
``INPUT.BBOX`` (P1: the tight landmark box; P2: the dataset's box), their crop, their
network and decoder, their flip test, their inverse (:mod:`h3r.models.official`); then the
dataset's own ``evaluate`` (WFLW: NME over the outer eye corners 60-72, as their
``examples/test_wflw.py``). The report is written like ``evaluate_checkpoint``'s
(``results.json``, ``results.md``, ``images/``), without a mean-shape baseline (a released
folder carries no training set).

One quirk kept for parity: their ``examples/test_300w.py`` builds "P2" as the landmark box of
the 1-based ``.pts`` coordinates, i.e. h3r's P1 box shifted by +1 pixel; on ``300w`` a P2
folder is cropped from that box.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from h3r.data import open_dataset
from h3r.data.base import LandmarkDataset, Sample
from h3r.models.official import OfficialCrop, OfficialModel, load_official

# INPUT.DATASET of their configs -> h3r's dataset name and default split.
DATASETS = {"WFLW": "wflw", "F300W": "300w"}
DEFAULT_SPLITS = {"wflw": "test", "300w": "full"}


def official_box(sample: Sample, box: str, dataset: str) -> np.ndarray:
    """The box their test script crops from: P1 = tight landmark box, P2 = the dataset's box
    (on 300W: the landmark box in 1-based .pts pixels, as ``examples/test_300w.py``)."""
    if box == "P1":
        return np.asarray(sample.box_p1, dtype=np.float32)
    if dataset == "300w":
        return np.asarray(sample.box_p1, dtype=np.float32) + np.float32(1)
    return np.asarray(sample.box, dtype=np.float32)


class OfficialCrops(Dataset):
    """Items ``{"image" (3, S, S), "rect" (4,), "index"}``: their crop of each sample."""

    def __init__(self, dataset: LandmarkDataset, crop: OfficialCrop, dataset_name: str):
        self.dataset, self.crop, self.dataset_name = dataset, crop, dataset_name

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> dict[str, Any]:
        sample = self.dataset[index]
        image, rect = self.crop.crop(sample.image(), official_box(sample, self.crop.box, self.dataset_name))
        return {"image": image, "rect": rect, "index": index}


@torch.no_grad()
def predict_official(official: OfficialModel, dataset: LandmarkDataset, dataset_name: str, *, flip: bool,
                     batch_size: int = 32, workers: int = 0, progress: bool = False):
    """:class:`h3r.evaluate.Predictions` (image pixels) of a released model on every item."""
    from h3r.evaluate import Predictions

    loader = DataLoader(OfficialCrops(dataset, official.crop, dataset_name), batch_size=batch_size, shuffle=False,
                        num_workers=workers, pin_memory=official.device.type == "cuda")
    coords, scores, order = [], [], []
    for batch in tqdm(loader, desc="evaluate", leave=False, disable=not progress, unit="batch"):
        batch_coords, batch_scores = official.predict_inputs(batch["image"], flip)
        landmarks = official.crop.to_image(batch_coords.float(), batch["rect"].to(batch_coords.device))
        coords.append(landmarks.double().cpu().numpy())
        scores.append(batch_scores.float().cpu().numpy())
        order.append(batch["index"].numpy())
    count = dataset.num_keypoints
    return Predictions(
        coords=np.concatenate(coords) if coords else np.zeros((0, count, 2)),
        scores=np.concatenate(scores) if scores else np.zeros((0, count)),
        indices=np.concatenate(order) if order else np.zeros(0, dtype=np.int64),
    )


def evaluate_official(folder: str | Path, *, dataset: Optional[str] = None, data_root: Optional[str] = None,
                      split: Optional[str] = None, options: Optional[dict[str, Any]] = None,
                      flip_test: Optional[bool] = None, device: str = "auto", batch_size: Optional[int] = None,
                      workers: Optional[int] = None, out: Optional[str] = None, draw: Optional[int] = None,
                      progress: bool = True) -> dict[str, Any]:
    """Evaluate a released folder with the authors' protocol and write the reports.

    ``dataset`` defaults from ``INPUT.DATASET`` (WFLW -> wflw, F300W -> 300w), ``split`` to
    that dataset's test split (wflw: test; 300w: full), ``flip_test`` to ``INPUT.FLIP``,
    ``out`` to ``<folder>/eval-<dataset>-<split>``. Returns ``{"metrics", "baseline" (None),
    "settings", "paths"}`` as :func:`h3r.evaluate.evaluate_checkpoint`.
    """
    from h3r.evaluate import dataset_metrics, draw_predictions, resolve_device, write_report

    folder = Path(folder)
    torch_device = resolve_device(device)
    official = load_official(folder, device=torch_device)
    config = official.config
    dataset_name = dataset or DATASETS.get(config.dataset)
    if dataset_name is None:
        raise ValueError(f"{config.path}: INPUT.DATASET {config.dataset!r} is not a dataset h3r reads; "
                         f"give --dataset")
    split = split or DEFAULT_SPLITS.get(dataset_name, "test")
    data = open_dataset(dataset_name, root=data_root, split=split, **(options or {}))
    if getattr(data, "source", None) == "csv":  # their scripts read the official files: P2 and 300W's 1-based boxes
        raise ValueError(f"data root {data_root}: the authors' protocol reads the official {dataset_name} files "
                         f"({'the WFLW_annotations lists' if dataset_name == 'wflw' else 'the iBUG .pts folders'}), "
                         f"not HRNet's csv (its boxes differ, and its coordinate origin may)")
    if data.num_keypoints != config.num_keypoints:
        raise ValueError(f"dataset: {dataset_name} has {data.num_keypoints} keypoints but {config.path} "
                         f"(HEATMAP.OUT_CHANNEL) predicts {config.num_keypoints}")
    flip = config.flip if flip_test is None else flip_test
    if flip and config.flip_order is None:
        raise ValueError(f"{config.path}: INPUT.FLIP_ORDER does not describe {config.num_keypoints} landmarks; "
                         f"run with --no-flip-test")
    predictions = predict_official(official, data, dataset_name, flip=flip, batch_size=batch_size or 32,
                                   workers=0 if workers is None else workers, progress=progress)
    metrics = dataset_metrics(data, predictions)
    settings = {"dataset": dataset_name, "split": split, "items": len(data),
                "codec": f"official (top-{config.topk} softmax of the foreground logits)",
                "backbone": config.arch, "input_size": config.input_size, "heatmap_size": config.input_size // 4,
                "flip_test": flip, "box": config.box, "box_scale": config.scale,
                "checkpoint": str(folder), "epoch": None}
    out_dir = Path(out) if out else folder / f"eval-{dataset_name}-{split}"
    paths = write_report(out_dir, metrics, settings, None)
    paths["images"] = draw_predictions(data, predictions, out_dir / "images", 8 if draw is None else draw)
    return {"metrics": metrics, "baseline": None, "settings": settings, "paths": paths}
