"""The training step (``--train-step``): how long one optimiser step of a real model takes, how
much of it is h3r's heatmap loss, and (on CUDA) what capturing the step in a CUDA graph gives.

Measured in one run, on random images and keypoints of the asked shape, with the training
code itself (:mod:`h3r.steps`, the model and codec of ``h3r train``):

* ``step``: :class:`h3r.steps.TrainStep` (forward under autocast, H3R loss, backward, AdamW);
* ``step, CUDA graph`` (CUDA only): :class:`h3r.steps.CapturedTrainStep`, the same step replayed;
* ``heatmap loss``: the codec's loss forward + backward alone on leaf logits of the step's
  heatmap shape and dtype: its share of the step is ``heatmap loss / step``.

Each figure is the median over ``rounds`` of (wall time of ``calls`` back-to-back calls, the
device synchronised at the end) / ``calls``; the CPU time of the process per call is given
beside it (where it is close to the wall time, the step is limited by the host, not the device).
"""
from __future__ import annotations

import time

import torch

from h3r.codecs import build_codec
from h3r.models import build_model
from h3r.runtime import autocast
from h3r.steps import WARMUP_STEPS, CapturedTrainStep, TrainStep

from .timing import time_per_call

# The model of issue 13's target (an HRNet-W18 step at 256x256) on CUDA; a CPU-sized one elsewhere.
CUDA_DEFAULTS = {"backbone": "hrnet_w18", "input_size": 256, "batch": 32, "keypoints": 98, "stride": 4, "amp": "bf16"}
CPU_DEFAULTS = {"backbone": "small", "input_size": 64, "batch": 8, "keypoints": 98, "stride": 4, "amp": "none"}


def _setup(device: torch.device, shape: dict, codec, captured: bool):
    torch.manual_seed(0)
    model = build_model(shape["backbone"], shape["keypoints"], stride=shape["stride"]).to(device)
    if captured:
        optimizer = torch.optim.AdamW(model.parameters(), lr=torch.tensor(1e-4, device=device), capturable=True)
        step = CapturedTrainStep(model, codec, optimizer, 0.0, shape["amp"], device)
    else:
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
        scaler = torch.amp.GradScaler(device.type, enabled=False)
        step = TrainStep(model, codec, optimizer, scaler, 0.0, shape["amp"], device)
    return model, step


def _batch(device: torch.device, shape: dict):
    generator = torch.Generator().manual_seed(1)
    size, batch, num = shape["input_size"], shape["batch"], shape["keypoints"]
    images = torch.randn(batch, 3, size, size, generator=generator).to(device)
    keypoints = (torch.rand(batch, num, 2, generator=generator) * (size - 1)).to(device)
    visible = (torch.rand(batch, num, generator=generator) > 0.1).to(device)
    return images, keypoints, visible


def measure_train_step(device: torch.device, shape: dict, calls: int = 10, rounds: int = 3, log=print) -> dict:
    """The ``train_step`` section: rows ``step``, ``step, CUDA graph`` (CUDA), ``heatmap loss``; the share."""
    started = time.perf_counter()
    images, keypoints, visible = _batch(device, shape)
    rows = []
    seeds = iter(range(1 << 30))
    codec = build_codec("h3r", shape["stride"], input_size=shape["input_size"])

    variants = [("step", False)] + ([("step, CUDA graph", True)] if device.type == "cuda" else [])
    logits_like = None
    for name, captured in variants:
        model, step = _setup(device, shape, codec, captured)
        # warm-up: the captured step captures on call WARMUP_STEPS + 1
        timing = time_per_call(lambda: step(images, keypoints, visible, next(seeds)), device, calls, rounds,
                               warmup=WARMUP_STEPS + 2)
        rows.append({"call": name, **timing, "images_per_s": shape["batch"] * 1e3 / timing["wall_ms"]})
        if logits_like is None:
            with torch.no_grad(), autocast(device, shape["amp"]):
                logits_like = model(images)

    logits = torch.randn(logits_like.shape, device=device).to(logits_like.dtype).requires_grad_()

    def loss_call():
        logits.grad = None
        codec.loss(logits, keypoints, visible, seed=next(seeds)).backward()

    timing = time_per_call(loss_call, device, calls, rounds, warmup=3)
    rows.append({"call": "heatmap loss", **timing, "images_per_s": shape["batch"] * 1e3 / timing["wall_ms"]})
    for row in rows:
        row["share_of_step"] = row["wall_ms"] / rows[0]["wall_ms"]
        log(f"train step: {row['call']:18s} {row['wall_ms']:9.3f} ms wall {row['cpu_ms']:9.3f} ms CPU per call, "
            f"{row['images_per_s']:8.0f} images/s, {100 * row['share_of_step']:6.1f}% of the eager step")
    return {"device": device.type, "shape": dict(shape), "logits": {"shape": list(logits_like.shape),
                                                                     "dtype": str(logits_like.dtype).replace("torch.", "")},
            "calls": calls, "rounds": rounds, "rows": rows, "elapsed_s": time.perf_counter() - started}


def markdown_section(section: dict) -> str:
    """The ``## Training step`` section of report.md."""
    shape = section["shape"]
    lines = [
        "## Training step",
        "",
        f"{shape['backbone']}, {shape['batch']} × {shape['input_size']}×{shape['input_size']} images, "
        f"{shape['keypoints']} keypoints, stride {shape['stride']} (logits {'×'.join(map(str, section['logits']['shape']))} "
        f"{section['logits']['dtype']}), amp {shape['amp']}, on {section['device']}; AdamW, H3R loss. Median over "
        f"{section['rounds']} rounds of {section['calls']} back-to-back calls, synchronised, per call. "
        "`heatmap loss` is the codec's loss forward+backward alone on leaf logits of the step's shape; its share "
        "of the eager step is what h3r's op costs in training.",
        "",
        "| call | wall ms/call | CPU ms/call | images/s | share of the eager step |",
        "|---|---|---|---|---|",
    ]
    lines += [f"| {row['call']} | {row['wall_ms']:.3f} | {row['cpu_ms']:.3f} | {row['images_per_s']:.0f} | "
              f"{100 * row['share_of_step']:.1f}% |" for row in section["rows"]]
    return "\n".join(lines) + "\n"
