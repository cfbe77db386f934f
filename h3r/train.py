"""Training: one plain loop over crops, the codec's loss, AdamW, warm-up + cosine (or step) decay.

What happens in an iteration: a batch of crops (``h3r.crops.CropDataset``) goes
through the model, ``codec.loss`` builds the target heatmaps from the keypoints on the
model's device and returns the loss (see ``h3r.codecs``), and the optimiser steps.

Reproducibility: the augmentation of item ``i`` in epoch ``e`` is seeded by
``(seed, e, i)``; the data order by ``(seed, e)`` (``DistributedSampler``); the
randomized rounding of global step ``t`` on process ``r`` by ``(seed, t, r)``. A checkpoint
is written atomically after every epoch with the model, optimiser, scheduler, grad-scaler
and RNG states, so ``resume`` continues exactly where the run stopped.

Several processes: launch with ``torchrun --nproc_per_node N -m h3r train ...``; gloo on the
CPU, NCCL on CUDA; each process takes every N-th item of the shuffled order; process 0
evaluates, logs and writes checkpoints.
"""
from __future__ import annotations

import json
import math
import time
from datetime import datetime
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler
from tqdm import tqdm

from h3r.augment import DeviceAugment, DeviceCropDataset
from h3r.checkpoints import (CHECKPOINT_FORMAT, CheckpointError, CheckpointWriteError, checkpoint_checksum,
                             load_checkpoint, reconcile_run_folder, save_atomic)
from h3r.configs import RUNTIME_FIELDS, TrainConfig, config_from_dict, flat_settings
from h3r.crops import CropDataset, eval_crop
from h3r.data import check_reader_options, open_dataset, require_items, require_mirror, verify_readable
from h3r.evaluate import (check_output_folder, dataset_metrics, draw_predictions, eval_loader, mean_shape,
                          mean_shape_predictions, model_and_codec, predict, write_report)
from h3r.loading import EpochBatches, WorkerCollate
from h3r.models import load_checkpoint_weights
from h3r.runtime import (Processes, join_process_group, process_device, resolve_device, restore_rng_state, rng_state,
                         rounding_seed, seed_everything, seed_worker)
from h3r.steps import CapturedTrainStep, TrainStep

__all__ = ["TrainConfig", "train", "benchmark_loader", "RUNTIME_FIELDS", "TrainingDiverged", "CheckpointWriteError"]


# The divergence guard reads its on-device flag (one host sync) every this many steps and at the end of an epoch.
FINITE_CHECK_EVERY = 100


class TrainingDiverged(RuntimeError):
    """The loss or the weights became NaN or infinite; the run stopped without saving that epoch."""


# ----------------------------------------------------------------------------------------------
# The run folder (the checkpoint format and its atomic writer: h3r.checkpoints)


def append_record(path: Path, record: dict[str, Any]) -> None:
    """Append one epoch's line to ``metrics.jsonl``."""
    with open(path, "a") as handle:
        handle.write(json.dumps(record) + "\n")


def check_run(config: TrainConfig, resume: Optional[str | dict[str, Any]], stop_after_epochs: Optional[int]) -> None:
    """Refuse what would fail later, before anything is written: the reader options, the run folder, ``stop_after``."""
    if stop_after_epochs is not None and not (isinstance(stop_after_epochs, int) and stop_after_epochs >= 1):
        raise ValueError(f"stop_after: expected a positive number of epochs, got {stop_after_epochs!r}")
    check_reader_options(config.dataset, config.train_options, "train_options")
    check_reader_options(config.dataset, config.test_options, "test_options")
    if resume is None:
        check_output_folder(config.out if config.out is not None else "runs", "out")
        if config.out is not None:
            refuse_earlier_run(Path(config.out))
    else:
        path = Path(resume["path"] if isinstance(resume, dict) else resume)
        check_output_folder(path if path.is_dir() else path.parent, "resume")


def refuse_earlier_run(out: Path) -> None:
    """A fresh run does not write into a folder that holds another run's checkpoints or learning curve: its
    ``best.pt`` would outlive the new run's epochs. A folder left by a run that stopped before its first
    checkpoint (``config.json`` and an empty ``metrics.jsonl``) may be reused."""
    metrics = out / "metrics.jsonl"
    held = [name for name in ("last.pt", "best.pt") if (out / name).exists()]
    if metrics.is_file() and metrics.stat().st_size > 0:
        held.append("metrics.jsonl")
    if held:
        raise ValueError(f"out: {out} already holds a run ({', '.join(held)}); continue it with "
                         f"'h3r train --resume {out}', or give another --out (or remove that folder)")


class NonFiniteTraining(Exception):
    """Raised inside an epoch when the divergence guard finds a non-finite loss or weight."""


def first_non_finite(losses: torch.Tensor, next_step: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(first_bad_step, first_bad_loss)`` for :func:`check_finite`, on the device (no host sync).

    ``losses`` are the losses of the steps just before global step ``next_step``; the step is
    the global step (0-based) of the first non-finite one, or -1 when all are finite.
    """
    bad = ~torch.isfinite(losses)
    first = torch.argmax(bad.to(torch.uint8))  # the first maximum: the first non-finite loss
    return torch.where(bad.any(), next_step - len(losses) + first, -1), losses.take(first)  # [first] would sync


def check_finite(first_bad_step: torch.Tensor, first_bad_loss: torch.Tensor, processes: Processes,
                 parameters: Optional[list[torch.Tensor]] = None) -> None:
    """The divergence guard's check: one host sync (``tolist``), plus an all-reduce with several processes.

    ``first_bad_step`` is the global step (0-based) of the first non-finite loss or -1, kept
    on the device without syncing; with ``parameters``, a non-finite weight counts too.
    """
    flags = [first_bad_step.to(torch.float64)]
    if parameters is not None:
        flags.append(torch.stack([torch.isfinite(p).all() for p in parameters]).all().logical_not().to(torch.float64))
    reduced = torch.stack(flags)
    if processes.world_size > 1:
        dist.all_reduce(reduced, op=dist.ReduceOp.MAX)  # every process stops together
    values = reduced.tolist()
    if values[0] >= 0:
        local = first_bad_step.item() >= 0
        shown = f"{first_bad_loss.item()}" if local else "not finite (on another process)"
        raise NonFiniteTraining(f"the loss is {shown} at step {int(values[0]) + 1}")
    if len(values) > 1 and values[1] > 0:
        raise NonFiniteTraining("the weights are no longer finite")


# ----------------------------------------------------------------------------------------------
# Data, optimiser, schedule


def open_splits(config: TrainConfig):
    """``(train dataset, test dataset)`` as the configuration names them.

    Opening checks that every image file exists; the first image of each split is also
    decoded here, so that an unreadable format fails in seconds rather than mid-epoch.
    """
    train_data = open_dataset(config.dataset, root=config.data_root, split=config.train_split, **config.train_options)
    test_data = open_dataset(config.dataset, root=config.data_root, split=config.test_split, **config.test_options)
    for data in (train_data, test_data):
        require_items(data, config.data_root)
        verify_readable(data)
    return train_data, test_data


def training_crops(config: TrainConfig, train_data) -> CropDataset:
    """The augmented crops of the training split. With ``gpu_augment`` the workers only decode and cut
    the region the warp reads (a dataset with an image cache sends no pixels: the device reads its own
    copy of the cache), and the device warps and jitters (:class:`DeviceAugment`): the same crops."""
    if config.crop.flip_prob > 0:
        require_mirror(train_data, "flip_prob", "a flipped crop would mislabel them; set flip_prob = 0")
    if config.gpu_augment:
        return DeviceCropDataset(train_data, config.crop, seed=config.seed,
                                 cached_pixels=train_data.image_cache is not None)
    return CropDataset(train_data, config.crop, seed=config.seed)


def train_loader(config: TrainConfig, crops: CropDataset, processes: Processes, device: torch.device):
    """The shuffled training loader of this process, with its batch sampler (``set_epoch(e)`` before
    each ``iter``). Its workers persist across epochs: no start-up per epoch, and the next epoch's
    batches load during the evaluation (:func:`epoch_batches`)."""
    positions = DistributedSampler(crops, num_replicas=processes.world_size, rank=processes.rank, shuffle=True,
                                   seed=config.seed, drop_last=True)
    sampler = EpochBatches(positions, config.batch_size, drop_last=len(positions) >= config.batch_size)
    loader = DataLoader(crops, batch_sampler=sampler, num_workers=config.workers, pin_memory=device.type == "cuda",
                        worker_init_fn=seed_worker, collate_fn=WorkerCollate(getattr(crops, "collate", None)),
                        persistent_workers=config.workers > 0)
    if len(loader) == 0:
        raise ValueError(f"{config.dataset} {config.train_split}: {len(crops)} items give no batch "
                         f"for {processes.world_size} process(es)")
    return sampler, loader


def epoch_batches(sampler: EpochBatches, loader: DataLoader, epoch: int):
    """The loader's iterator over the batches of ``epoch``: its workers start loading now."""
    sampler.set_epoch(epoch)
    return iter(loader)


def build_optimizer(config: TrainConfig, model: torch.nn.Module, device: torch.device) -> torch.optim.Optimizer:
    """AdamW (or Adam); with ``cuda_graphs`` capturable, its learning rate a device tensor the schedule writes."""
    optimizer_class = torch.optim.AdamW if config.optimizer == "adamw" else torch.optim.Adam
    if config.cuda_graphs:
        return optimizer_class(model.parameters(), lr=torch.tensor(config.lr, device=device),
                               weight_decay=config.weight_decay, capturable=True)
    return optimizer_class(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)


def training_step(config: TrainConfig, network, codec, optimizer, scaler, device: torch.device):
    """The step the loop calls per batch: eager, or captured in a CUDA graph (``cuda_graphs``)."""
    if config.cuda_graphs:
        return CapturedTrainStep(network, codec, optimizer, config.grad_clip, config.amp, device)
    return TrainStep(network, codec, optimizer, scaler, config.grad_clip, config.amp, device)


def learning_rate_factor(config: TrainConfig, steps_per_epoch: int) -> Callable[[int], float]:
    """Multiplier of ``config.lr`` after ``step`` optimiser steps: linear warm-up, then cosine or step decay."""
    total_steps = config.epochs * steps_per_epoch
    warmup_steps = min(round(config.warmup_epochs * steps_per_epoch), total_steps - 1)

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / (warmup_steps + 1)
        if config.schedule == "step":
            epoch = step / steps_per_epoch
            return config.step_gamma ** sum(epoch >= milestone for milestone in config.step_epochs)
        progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
        return config.min_lr_ratio + (1 - config.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return factor


def benchmark_loader(config: TrainConfig, batches: int = 200, step_ms: float = 0.0, epochs: int = 2) -> dict[str, Any]:
    """Images/s of the training loader alone (augmentation and decoding, no model), per epoch.

    Compare with ``images_per_s`` in ``metrics.jsonl``: when the two are close, loading is
    the bottleneck (add ``workers``). With ``step_ms``, each batch is followed by that many
    milliseconds of sleep, a stand-in for a training step that leaves the CPU to the workers
    (as a GPU step mostly does), and ``loader_wait_fraction`` is the share of the time spent
    waiting for the next batch, as the training loop reports it.

    Times ``epochs`` epochs of at most ``batches`` batches, as training runs them (persistent
    workers; the first batch, which includes starting the workers, is not counted). The first
    epoch renders the synthetic images, later ones read them from the cache (those of an epoch
    cut short by ``batches`` are rendered when first read). ``epochs`` holds one record per
    epoch; the top-level figures are the last epoch's.
    """
    if epochs < 1:
        raise ValueError(f"epochs: expected >= 1, got {epochs}")
    check_reader_options(config.dataset, config.train_options, "train_options")
    seed_everything(config.seed)
    train_data = open_dataset(config.dataset, root=config.data_root, split=config.train_split, **config.train_options)
    crops = training_crops(config, train_data)
    sampler, loader = train_loader(config, crops, Processes(), torch.device("cpu"))
    if len(loader) < 2:
        raise ValueError(f"data-only: {len(crops)} items make {len(loader)} batch of {config.batch_size}; "
                         f"the benchmark skips the first batch and needs at least 2")
    records = []
    for epoch in range(epochs):
        iterator = epoch_batches(sampler, loader, epoch)
        if epoch == 0:
            next(iterator)  # the first batch includes starting the workers
        images, waiting, start = 0, 0.0, time.perf_counter()
        for _ in range(min(batches, len(loader) - (epoch == 0))):
            before = time.perf_counter()
            images += len(next(iterator)["index"])
            waiting += time.perf_counter() - before
            if step_ms:
                time.sleep(step_ms / 1000)
        elapsed = time.perf_counter() - start
        records.append({"epoch": epoch + 1, "images": images, "seconds": elapsed,
                        "images_per_s": images / elapsed if elapsed > 0 else float("nan"),
                        "loader_wait_fraction": waiting / elapsed if elapsed > 0 else float("nan")})
    return {**records[-1], "epochs": records, "step_ms": step_ms, "workers": config.workers,
            "batch_size": config.batch_size}


# ----------------------------------------------------------------------------------------------
# The loop


def default_run_folder(config: TrainConfig) -> str:
    return str(Path("runs") / f"{config.dataset}-{config.codec}-{datetime.now():%Y%m%d-%H%M%S}")


def check_resumable(config: TrainConfig, checkpoint: dict[str, Any]) -> None:
    """Refuse a configuration that differs from the checkpoint's (saved flat by earlier versions, or nested) beyond
    :data:`RUNTIME_FIELDS` and ``out``."""
    stored = flat_settings(config_from_dict(checkpoint["config"], source=f"{checkpoint['path']} configuration"))
    current = flat_settings(config)
    changed = [name for name, value in current.items()
               if name not in RUNTIME_FIELDS + ("out",) and stored[name] != value]
    if changed:
        details = ", ".join(f"{name} ({stored[name]!r} -> {current[name]!r})" for name in changed)
        raise ValueError(f"resume: {checkpoint['path']} continues its own configuration; only "
                         f"{', '.join(RUNTIME_FIELDS)} may change, but these differ: {details}")


def check_world_size(checkpoint: dict[str, Any], world_size: int) -> None:
    """A run resumes with the number of processes it was trained by: the steps per epoch, the learning-rate
    schedule (counted in steps) and each process's share of the data depend on it. Checkpoints written before
    the number was recorded are not checked."""
    trained_by = checkpoint.get("world_size")
    if trained_by is not None and trained_by != world_size:
        how = "h3r train --resume" if trained_by == 1 else f"torchrun --nproc_per_node {trained_by} -m h3r train --resume"
        raise ValueError(f"resume: {checkpoint['path']} was trained by {trained_by} process(es), this call has "
                         f"{world_size}: the steps per epoch, the learning-rate schedule and the data each process "
                         f"reads depend on it; continue with {how}")


def train(config: TrainConfig, *, resume: Optional[str | dict[str, Any]] = None,
          stop_after_epochs: Optional[int] = None, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Train (or continue) a run; returns a summary dict on every process.

    The summary holds ``out`` (the run folder), ``history`` (the ``metrics.jsonl`` records),
    ``best``, ``baseline`` (mean-shape metrics), ``finished``, ``config`` and ``model`` (the
    trained module, on its device).

    Args:
        config: the run's settings. With ``resume``, only :data:`RUNTIME_FIELDS` may differ
            from the checkpoint's configuration (``h3r.cli`` fills the rest from it), and
            ``out`` is ignored.
        resume: a checkpoint (``last.pt``) or run folder to continue from, or the checkpoint
            as :func:`h3r.checkpoints.load_checkpoint` returned it (not read again; ``h3r.cli``
            has read it for its configuration); the run continues in the folder that holds it.
        stop_after_epochs: stop after this many epochs of this call (continue later with
            ``resume``), e.g. to fit a time-limited job slot.
        log: where the learning curve is printed (process 0 only).
    """
    device = resolve_device(config.device)
    check_run(config, resume, stop_after_epochs)
    if config.cuda_graphs and device.type != "cuda":
        raise ValueError(f"cuda_graphs: needs a CUDA device, got device {config.device!r} ({device})")
    processes = join_process_group(device)
    try:
        return _train(config, processes, resume, stop_after_epochs, log)
    finally:
        if processes.started_group:
            dist.destroy_process_group()


def _train(config: TrainConfig, processes: Processes, resume: Optional[str | dict[str, Any]],
           stop_after_epochs: Optional[int], log: Callable[[str], None]) -> dict[str, Any]:
    if config.cuda_graphs and processes.world_size > 1:
        raise ValueError(f"cuda_graphs: one process only, got {processes.world_size} (DistributedDataParallel's "
                         "gradient hooks are not captured)")
    device = process_device(config, processes)
    say = log if processes.is_main else (lambda message: None)
    checkpoint = resume if isinstance(resume, dict) else load_checkpoint(resume) if resume else None
    if checkpoint is not None:
        check_resumable(config, checkpoint)
        check_world_size(checkpoint, processes.world_size)
        runtime = {name: getattr(config, name) for name in RUNTIME_FIELDS}
        # The run continues in the folder that holds the checkpoint (wherever the run was moved).
        config = config_from_dict({**checkpoint["config"], **runtime, "out": str(Path(checkpoint["path"]).parent)})
    elif config.out is None:
        folder = [default_run_folder(config)]
        if processes.world_size > 1:
            dist.broadcast_object_list(folder, src=0)
        config = config_from_dict({**config.to_dict(), "out": folder[0]})
    out = Path(config.out)

    seed_everything(config.seed)
    train_data, test_data = open_splits(config)
    crop = eval_crop(config)
    model, codec = model_and_codec(config, train_data.num_keypoints)
    if checkpoint is None:
        model.head.start_at(codec.initial_logit((config.heatmap_side, config.heatmap_side)))
        if config.pretrained:
            try:
                load_checkpoint_weights(model, config.pretrained)
            except ValueError as error:
                raise CheckpointError(f"pretrained: {error}") from None
    model.to(device)
    crops = training_crops(config, train_data)
    augment = (DeviceAugment(config.crop, train_data.flip_pairs, device, images=train_data.image_cache)
               if config.gpu_augment else None)
    sampler, loader = train_loader(config, crops, processes, device)
    optimizer = build_optimizer(config, model, device)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, learning_rate_factor(config, len(loader)))
    scaler = torch.amp.GradScaler(device.type, enabled=config.amp == "fp16")

    if checkpoint is not None:
        model.load_state_dict(checkpoint["model"])
        optimizer.load_state_dict(checkpoint["optimizer"])
        if config.cuda_graphs:  # loaded as a CPU tensor; the captured step reads it on the device
            for group in optimizer.param_groups:
                group["lr"] = torch.as_tensor(group["lr"], device=device)
        scheduler.load_state_dict(checkpoint["scheduler"])
        scaler.load_state_dict(checkpoint["scaler"])
        restore_rng_state(checkpoint["rng"])
        start_epoch, global_step = checkpoint["epoch"], checkpoint["global_step"]
        history, best = checkpoint["history"], checkpoint["best"]
        shape, baseline = np.asarray(checkpoint["mean_shape"]), checkpoint["baseline"]
        say(f"resuming {checkpoint['path']} after epoch {start_epoch}/{config.epochs}")
    else:
        start_epoch, global_step, history, best = 0, 0, [], {"epoch": None, "value": None}
        shape = mean_shape(train_data, crop)
        baseline = {}
        if processes.is_main:
            baseline = dataset_metrics(test_data, mean_shape_predictions(test_data, shape, crop))
    # The run folder is written only now, once the data, the model and the loader have been accepted.
    if processes.is_main:
        try:
            out.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise ValueError(f"out: cannot create the run folder {out} ({error.strerror or error})") from None
        (out / "config.json").write_text(json.dumps(config.to_dict(), indent=2) + "\n")
        reconcile_run_folder(out, checkpoint, say)
    network = model
    if processes.world_size > 1:
        network = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    train_step = training_step(config, network, codec, optimizer, scaler, device)

    say(f"h3r train: {config.dataset} ({len(train_data)} train / {len(test_data)} test items), codec {config.codec}, "
        f"backbone {config.backbone}, input {config.crop.input_size} px -> heatmap {config.heatmap_side}x"
        f"{config.heatmap_side}, {config.epochs} epochs of {len(loader)} steps x {config.batch_size} images"
        f"{f' x {processes.world_size} processes' if processes.world_size > 1 else ''}, {device}")
    say(f"run folder: {out}")
    if config.metric in baseline:
        say(f"mean-shape baseline on {config.test_split}: {config.metric} {baseline[config.metric]:.4f}")
    if start_epoch < config.epochs:
        say(f"{'epoch':>7}  {'train loss':>10}  {'test ' + config.metric:>10}  {'lr':>8}  {'img/s':>7}  "
            f"{'loader wait':>11}")

    # One test loader for every evaluation of the run: its workers start once.
    test_loader = eval_loader(test_data, crop, device=device, batch_size=config.batch_size, workers=config.workers,
                              persistent=True)
    last_predictions = None
    epochs_run = 0
    batches = None  # the iterator over the batches of the next epoch, made before this one's evaluation
    for epoch in range(start_epoch, config.epochs):
        if stop_after_epochs is not None and epochs_run >= stop_after_epochs:
            break
        if batches is None:
            batches = epoch_batches(sampler, loader, epoch)
        try:
            stats, global_step = train_one_epoch(network, train_step, batches, len(loader), optimizer, scheduler,
                                                 config, device, processes, epoch, global_step, augment)
        except NonFiniteTraining as problem:
            kept = f"{out / 'last.pt'} still holds epoch {epoch}" if epoch > 0 else "no checkpoint was written"
            raise TrainingDiverged(f"training diverged: {problem} (epoch {epoch + 1}); stopped without saving this "
                                   f"epoch, so {kept}; lower the learning rate (lr {config.lr:g}), clip gradients "
                                   f"(grad_clip) or check the codec settings") from None
        next_runs = epoch + 1 < config.epochs and (stop_after_epochs is None or epochs_run + 1 < stop_after_epochs)
        batches = epoch_batches(sampler, loader, epoch + 1) if next_runs else None  # loads during the evaluation
        record: dict[str, Any] = {"epoch": epoch + 1, "step": global_step, **stats}
        if (epoch + 1) % config.eval_every == 0 or epoch + 1 == config.epochs:
            if processes.is_main:
                last_predictions = predict(model, codec, test_data, crop, device=device, loader=test_loader,
                                           flip_test=config.flip_test, amp=config.amp)
                record["test"] = dataset_metrics(test_data, last_predictions)
            processes.barrier()
        epochs_run += 1
        history.append(record)  # on every process; only process 0's records hold "test"
        if processes.is_main:
            improved = is_better(record.get("test", {}).get(config.metric), best["value"], config.higher_is_better)
            if improved:
                best = {"epoch": epoch + 1, "value": record["test"][config.metric]}
            state = {"format": CHECKPOINT_FORMAT, "config": config.to_dict(), "epoch": epoch + 1,
                     "global_step": global_step, "world_size": processes.world_size,
                     "num_keypoints": train_data.num_keypoints,
                     "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                     "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict(), "rng": rng_state(),
                     "history": history, "best": best, "mean_shape": torch.from_numpy(np.asarray(shape, np.float64)),
                     "baseline": baseline}
            state["checksum"] = checkpoint_checksum(state)
            # last.pt (the record), then best.pt, then metrics.jsonl: see reconcile_run_folder.
            save_atomic(state, out / "last.pt")
            if improved:
                save_atomic(state, out / "best.pt")
            append_record(out / "metrics.jsonl", record)
            say(epoch_line(record, config))
        processes.barrier()

    finished = bool(history) and history[-1]["epoch"] == config.epochs
    if finished and epochs_run == 0:  # resumed a run whose last epoch was written: only the report is left
        say(f"the run in {out} is complete ({config.epochs}/{config.epochs} epochs); rewriting its final report")
        if processes.is_main:
            last_predictions = predict(model, codec, test_data, crop, device=device, loader=test_loader,
                                       flip_test=config.flip_test, amp=config.amp)
    summary = {"out": str(out), "epochs_completed": history[-1]["epoch"] if history else 0, "finished": finished,
               "history": history, "best": best, "baseline": baseline, "config": config.to_dict(), "model": model}
    if processes.is_main and finished and last_predictions is not None:
        summary.update(final_report(config, test_data, last_predictions, history, baseline, best, out, say))
    return summary


def is_better(value: Optional[float], best: Optional[float], higher_is_better: bool) -> bool:
    """Whether a test metric ``value`` beats ``best`` (None: nothing yet); NaN never does."""
    if value is None or not math.isfinite(value):
        return False
    return best is None or (value > best if higher_is_better else value < best)


def train_one_epoch(network, train_step, batches, steps: int, optimizer, scheduler, config: TrainConfig,
                    device: torch.device, processes: Processes, epoch: int, global_step: int,
                    augment: Optional[DeviceAugment] = None) -> tuple[dict[str, float], int]:
    """One pass over this process's share of the training set, ``steps`` batches from the loader
    iterator ``batches``; returns its statistics and the new global step.

    ``train_step(images, keypoints, visible, seed) -> loss`` is the optimiser step (h3r/steps.py).
    """
    network.train()
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    # Divergence guard: each loss is copied into a device window (one copy per step, no host sync); every
    # FINITE_CHECK_EVERY steps and at the end of the epoch (where the weights are checked too) the window of
    # the steps since the last check is searched for the first non-finite loss and read once.
    every = FINITE_CHECK_EVERY
    recent_losses = torch.empty(min(every, steps), dtype=torch.float64, device=device)
    images_seen, waiting = 0, 0.0
    bar = tqdm(total=steps, desc=f"epoch {epoch + 1}/{config.epochs}", leave=False, unit="batch",
               disable=not (config.progress and processes.is_main))
    start = time.perf_counter()
    for step in range(steps):
        before = time.perf_counter()
        batch = next(batches)
        waiting += time.perf_counter() - before
        if augment is not None:
            batch = augment(batch)  # on the device: warp, colour jitter, normalisation, keypoints
        images = batch["image"]  # the step copies the batch to the device (once, also into a graph's inputs)
        loss = train_step(images, batch["keypoints"], batch["visible"],
                          rounding_seed(config.seed, global_step, processes.rank))
        scheduler.step()
        recent_losses[step % every] = loss.detach()
        global_step += 1
        loss_sum += loss.detach()
        images_seen += len(images)
        bar.update()
        if not bar.disable and (step % 10 == 0 or step == steps - 1):  # .item() syncs: only for a shown bar
            rate = images_seen * processes.world_size / (time.perf_counter() - start)
            bar.set_postfix(loss=f"{loss_sum.item() / (step + 1):.4g}", img_s=f"{rate:.0f}")
        if (step + 1) % every == 0 or step == steps - 1:
            first_bad_step, first_bad_loss = first_non_finite(recent_losses[:step % every + 1], global_step)
            check_finite(first_bad_step, first_bad_loss, processes,
                         list(network.parameters()) if step == steps - 1 else None)
    bar.close()
    elapsed = time.perf_counter() - start
    totals = torch.stack([loss_sum, torch.tensor(float(steps), dtype=torch.float64, device=device)])
    if processes.world_size > 1:
        dist.all_reduce(totals)  # on the device: NCCL reduces CUDA tensors only
    return {
        "train_loss": float(totals[0] / totals[1]),
        "lr": float(optimizer.param_groups[0]["lr"]),  # a device tensor with cuda_graphs
        "images_per_s": images_seen * processes.world_size / elapsed,
        "loader_wait_fraction": waiting / elapsed,
        "epoch_seconds": elapsed,
    }, global_step


def epoch_line(record: dict[str, Any], config: TrainConfig) -> str:
    test = record.get("test", {}).get(config.metric)
    shown = f"{test:10.4f}" if test is not None else f"{'-':>10}"
    return (f"{record['epoch']:>3}/{config.epochs:<3}  {record['train_loss']:10.5f}  {shown}  {record['lr']:8.1e}  "
            f"{record['images_per_s']:7.0f}  {100 * record['loader_wait_fraction']:10.0f}%")


def final_report(config: TrainConfig, test_data, predictions, history, baseline, best, out: Path,
                 say: Callable[[str], None]) -> dict[str, Any]:
    """Reports of the final model (``eval-<split>/``), the learning-curve plot and the closing lines."""
    metrics = history[-1]["test"]
    settings = {"dataset": config.dataset, "split": config.test_split, "items": len(test_data), "codec": config.codec,
                "backbone": config.backbone, "input_size": config.crop.input_size, "stride": config.stride,
                "heatmap_size": config.heatmap_side,
                "flip_test": config.flip_test, "checkpoint": str(out / "last.pt"), "epoch": history[-1]["epoch"]}
    eval_dir = out / f"eval-{config.dataset}-{config.test_split}"
    paths = write_report(eval_dir, metrics, settings, baseline)
    draw_predictions(test_data, predictions, eval_dir / "images", config.draw)
    curve = plot_learning_curve(history, config, baseline, out / "curve.png")
    say(f"\nfinal model (epoch {history[-1]['epoch']}) on {config.dataset} {config.test_split}, "
        f"{len(test_data)} items{', flip test' if config.flip_test else ''}:")
    say(paths["markdown"].read_text().split("\n\n", 2)[-1].rstrip())
    model_value, baseline_value = metrics.get(config.metric), baseline.get(config.metric)
    if model_value is not None and baseline_value:
        say(f"{config.metric}: model {model_value:.4f} vs mean-shape baseline {baseline_value:.4f} "
            f"(ratio {model_value / baseline_value:.2f})")
    if best["epoch"] is not None:
        say(f"best {config.metric} {best['value']:.4f} at epoch {best['epoch']} (best.pt)")
    say(f"wrote {paths['markdown']}, {out / 'metrics.jsonl'}, {curve}, checkpoints {out / 'last.pt'}")
    return {"final": metrics, "report": str(paths["markdown"])}


def plot_learning_curve(history, config: TrainConfig, baseline: dict[str, float], path: Path) -> Path:
    """Train loss and test metric per epoch (with the baseline as a dashed line), as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (loss_axes, metric_axes) = plt.subplots(1, 2, figsize=(9, 3.5))
    loss_axes.plot([r["epoch"] for r in history], [r["train_loss"] for r in history], marker="o")
    loss_axes.set(xlabel="epoch", ylabel="train loss", title=f"{config.codec} loss")
    tested = [r for r in history if config.metric in r.get("test", {})]
    metric_axes.plot([r["epoch"] for r in tested], [r["test"][config.metric] for r in tested], marker="o",
                     label="model")
    if config.metric in baseline:
        metric_axes.axhline(baseline[config.metric], linestyle="--", color="grey", label="mean-shape baseline")
    metric_axes.set(xlabel="epoch", ylabel=f"test {config.metric}", title=f"{config.dataset} {config.test_split}")
    metric_axes.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path
