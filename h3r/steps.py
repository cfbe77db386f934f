"""One optimiser step on a batch: eagerly (:class:`TrainStep`) or replayed from a CUDA graph
(:class:`CapturedTrainStep`, ``h3r train --cuda-graphs``).

A step: forward (under autocast), the codec's loss (for H3R the fused randomized-rounding
target and BCE), backward, gradient clipping, the optimiser's update. Both classes are called
as ``step(images, keypoints, visible, seed) -> loss`` with the batch as the loader gives it
(pinned host memory, or already on the device with ``--gpu-augment``), copied to the device once
by the step, and the rounding seed of this step as an int; the learning-rate schedule, the divergence guard and
the statistics stay in the loop (h3r/train.py).
"""
from __future__ import annotations

import torch

from h3r.runtime import autocast

# Eager steps run on a side stream before the capture (the CUDA-graph recipe of PyTorch's docs):
# they initialise the optimiser state and compile every kernel.
WARMUP_STEPS = 3


class TrainStep:
    """The eager step, with the gradient scaler of ``amp="fp16"`` (a no-op otherwise)."""

    def __init__(self, network, codec, optimizer, scaler, grad_clip: float, amp: str, device: torch.device):
        self.network, self.codec, self.optimizer, self.scaler = network, codec, optimizer, scaler
        self.grad_clip, self.amp, self.device = grad_clip, amp, device

    def __call__(self, images, keypoints, visible, seed) -> torch.Tensor:
        images, keypoints, visible = (value.to(self.device, non_blocking=True) for value in (images, keypoints, visible))
        return self._update(images, keypoints, visible, seed)

    def _update(self, images, keypoints, visible, seed, cache_enabled: bool = True) -> torch.Tensor:
        """Forward, loss, backward, clipping and the optimiser's step on a batch on the device."""
        with autocast(self.device, self.amp, cache_enabled=cache_enabled):
            logits = self.network(images)
        loss = self.codec.loss(logits, keypoints, visible, seed=seed)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        if self.grad_clip > 0:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.network.parameters(), self.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        return loss


class CapturedTrainStep(TrainStep):
    """The same step (its gradient scaler disabled) captured once in a CUDA graph and then replayed.

    Each call copies the batch into the graph's static input tensors and the seed into a device
    tensor (the rounding is drawn on the device from it, so every replay re-draws: the draws of
    the eager step with that int seed), then replays. The first :data:`WARMUP_STEPS` calls run
    eagerly on a side stream, the next one captures and replays. The returned loss is the
    graph's output tensor: read it before the next call overwrites it.

    Needs (checked by the caller, h3r/train.py): a CUDA device, one process, ``amp`` "none" or
    "bf16", an optimiser built with ``capturable=True`` and a tensor learning rate (the
    schedule writes it between replays), and every batch of the same shape (else a clear error).

    ``capture=False`` runs every call eagerly through the same static inputs and device seed:
    what the CPU tests compare with :class:`TrainStep`.
    """

    def __init__(self, network, codec, optimizer, grad_clip: float, amp: str, device: torch.device,
                 capture: bool = True):
        super().__init__(network, codec, optimizer, torch.amp.GradScaler(device.type, enabled=False), grad_clip, amp,
                         device)
        self.capture = capture
        self.inputs: dict[str, torch.Tensor] = {}
        self.seed = torch.zeros((), dtype=torch.int64, device=device)
        self.side_stream = None
        self.graph = None
        self.loss = None
        self.calls = 0

    def __call__(self, images, keypoints, visible, seed: int) -> torch.Tensor:
        self._load({"images": images, "keypoints": keypoints, "visible": visible})
        self.seed.fill_(seed)
        self.calls += 1
        if self.graph is not None:
            self.graph.replay()
            return self.loss
        if not self.capture:
            return self._step()
        if self.calls <= WARMUP_STEPS:
            current = torch.cuda.current_stream(self.device)
            self.side_stream = self.side_stream or torch.cuda.Stream(self.device)
            self.side_stream.wait_stream(current)
            with torch.cuda.stream(self.side_stream):
                loss = self._step()
            current.wait_stream(self.side_stream)
            loss.record_stream(current)  # read there by the loop: not reused before it is
            return loss
        # The step's zero_grad(set_to_none) runs at capture only: the gradients the captured backward
        # writes are allocated in the graph's pool, and replays overwrite them.
        graph = torch.cuda.CUDAGraph()
        # thread_local: the loader's pin-memory thread keeps calling CUDA (host allocations) meanwhile.
        with torch.cuda.graph(graph, capture_error_mode="thread_local"):
            self.loss = self._step()
        self.graph = graph
        graph.replay()
        return self.loss

    def _load(self, batch: dict[str, torch.Tensor]) -> None:
        """Copy the batch into the static inputs (made at the first call)."""
        if not self.inputs:
            self.inputs = {name: torch.empty_like(value, device=self.device) for name, value in batch.items()}
        for name, value in batch.items():
            static = self.inputs[name]
            if value.shape != static.shape or value.dtype != static.dtype:
                raise ValueError(f"cuda_graphs: every batch must have the shape of the captured one; {name} is "
                                 f"{tuple(value.shape)} {value.dtype}, captured {tuple(static.shape)} {static.dtype}")
            static.copy_(value, non_blocking=True)

    def _step(self) -> torch.Tensor:
        # No autocast weight cache: casts made inside a capture must not outlive it.
        return self._update(self.inputs["images"], self.inputs["keypoints"], self.inputs["visible"], self.seed,
                            cache_enabled=False)
