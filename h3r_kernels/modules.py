"""``nn.Module`` front doors to the ops: every option is set once, in ``__init__``.

* :class:`HeatmapEncoder`: ``keypoints (B, K, 2) [, visible] -> target maps (B, K, H, W)``;
* :class:`HeatmapLoss`: ``(logits, keypoints [, visible, weight]) -> loss``;
* :class:`HeatmapDecoder`: ``heatmaps (B, K, H, W) -> (coords (B, K, 2), scores (B, K))``.

The options are checked in ``__init__`` by the same functions the ops use
(:mod:`h3r_kernels.checks`), so a bad option fails when the module is built, not at the first
batch. The modules hold no parameters or buffers; they work in ``nn.Sequential`` (the encoder
as a first stage, the decoder as a last one) and under ``torch.compile``.

Seeds: ``seed=None`` (the default) draws a fresh seed from torch's generator at every call,
as the functions do. A fixed ``seed`` in ``__init__`` is used for every call (the same rounding
each time: for evaluation or tests); ``forward(..., seed=...)`` overrides it for one call,
which is how to pass a seed inside CUDA-graph capture or ``torch.compile(fullgraph=True)``:
a 0-d integer tensor on the keypoints' device, changed between replays, re-draws at every
replay (an int passed at capture is frozen into the graph).
"""
from __future__ import annotations

from typing import Optional, Sequence, Union

import torch
from torch import nn

from . import api, checks


def _options(**options) -> str:
    return ", ".join(f"{name}={value!r}" for name, value in options.items())


class HeatmapEncoder(nn.Module):
    """:func:`h3r_kernels.encode` with its options fixed: ``forward(keypoints, visible=None, *, seed=None)``."""

    def __init__(
        self,
        heatmap_size: Sequence[int],
        *,
        sigma: float = 0.0,
        rounding: str = "random",
        seed: Optional[int] = None,
        expected: bool = False,
        dtype: torch.dtype = torch.float32,
        backend: str = "auto",
    ) -> None:
        super().__init__()
        self.heatmap_size = checks.check_heatmap_size(heatmap_size)
        self.sigma, self.seed = checks.check_target_options(sigma, rounding, seed)
        checks.check_dtype(dtype)
        checks.check_backend(backend)
        self.rounding = rounding
        self.expected = checks.as_flag("expected", expected)
        self.dtype = dtype
        self.backend = backend

    def forward(
        self, keypoints: torch.Tensor, visible: Optional[torch.Tensor] = None, *,
        seed: Optional[Union[int, torch.Tensor]] = None
    ) -> torch.Tensor:
        return api.encode(
            keypoints, self.heatmap_size, visible, sigma=self.sigma, rounding=self.rounding,
            seed=self.seed if seed is None else seed, expected=self.expected, dtype=self.dtype, backend=self.backend,
        )

    def extra_repr(self) -> str:
        return _options(
            heatmap_size=self.heatmap_size, sigma=self.sigma, rounding=self.rounding, seed=self.seed,
            expected=self.expected, dtype=self.dtype, backend=self.backend,
        )


class HeatmapLoss(nn.Module):
    """:func:`h3r_kernels.heatmap_loss` with its options fixed.

    ``forward(logits, keypoints, visible=None, weight=None, *, seed=None)``; ``visible`` and
    ``weight`` are per-batch data (``(B, K)``), everything else is set here.
    """

    def __init__(
        self,
        *,
        sigma: float = 0.0,
        rounding: str = "random",
        seed: Optional[int] = None,
        loss: str = "bce",
        reduction: str = "mean",
        backend: str = "auto",
    ) -> None:
        super().__init__()
        self.sigma, self.seed = checks.check_target_options(sigma, rounding, seed)
        checks.check_choice("loss", loss, checks.LOSSES)
        checks.check_choice("reduction", reduction, checks.REDUCTIONS)
        checks.check_backend(backend)
        self.rounding = rounding
        self.loss = loss
        self.reduction = reduction
        self.backend = backend

    def forward(
        self,
        logits: torch.Tensor,
        keypoints: torch.Tensor,
        visible: Optional[torch.Tensor] = None,
        weight: Optional[torch.Tensor] = None,
        *,
        seed: Optional[Union[int, torch.Tensor]] = None,
    ) -> torch.Tensor:
        return api.heatmap_loss(
            logits, keypoints, visible, weight=weight, sigma=self.sigma, rounding=self.rounding,
            seed=self.seed if seed is None else seed, loss=self.loss, reduction=self.reduction, backend=self.backend,
        )

    def extra_repr(self) -> str:
        return _options(
            loss=self.loss, reduction=self.reduction, sigma=self.sigma, rounding=self.rounding, seed=self.seed,
            backend=self.backend,
        )


class HeatmapDecoder(nn.Module):
    """:func:`h3r_kernels.decode` with its options fixed: ``forward(heatmaps) -> (coords, scores)``."""

    def __init__(
        self, *, method: str = "topk", k: int = 9, weights: str = "softmax", window: int = 3, backend: str = "auto"
    ) -> None:
        super().__init__()
        self.k, self.window = checks.check_decode_options(method, k, weights, window)
        checks.check_backend(backend)
        self.method = method
        self.weights = weights
        self.backend = backend

    def forward(self, heatmaps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return api.decode(
            heatmaps, method=self.method, k=self.k, weights=self.weights, window=self.window, backend=self.backend
        )

    def extra_repr(self) -> str:
        return _options(method=self.method, k=self.k, weights=self.weights, window=self.window, backend=self.backend)
