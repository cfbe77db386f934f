"""The heatmap head and the model that puts a backbone and a head together.

Every model maps an image batch ``(B, 3, S, S)`` to one logit map per landmark at a
stride ``s`` in {4, 8, 16, 32}: ``(B, K, S/s, S/s)``. Heatmap cell ``i`` sits over input
pixel ``s i`` (pixel centres, no half-pixel offset): the backbones reach stride 4 with two
stride-2, padding-1 convolutions, and each further halving is a 3x3, stride-2, padding-1
average pooling of the stride-4 features, which keeps output cell ``j`` centred on input
cell ``2 j`` (see :class:`LandmarkModel`).
"""
from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

HEAD_KINDS = ("binary", "two-class")
STRIDES = (4, 8, 16, 32)
TWO_CLASS_OUTPUTS = ("difference", "foreground")  # z1 - z0 (h3r's), or the raw z1 (the authors' decoder input)


class HeatmapHead(nn.Module):
    """1x1 conv - BN - ReLU - 1x1 conv to heatmap logits.

    ``kind="binary"``: one logit ``z`` per landmark and pixel, trained with
    BCE-with-logits (or MSE) against the binary / Gaussian target.

    ``kind="two-class"``: the authors' head, two logits ``(z0, z1)`` (background,
    foreground) per landmark and pixel. A per-pixel 2-class softmax cross-entropy on
    ``(z0, z1)`` equals BCE-with-logits on ``z1 - z0``, since
    ``softmax(z0, z1)[1] = sigmoid(z1 - z0)``; so the head returns ``z1 - z0`` and both
    kinds share one loss and one decoder. The two kinds compute the same family of
    functions; the two-class one only carries the authors' parameterisation (twice the
    output channels).

    ``bias=False`` drops the output convolution's bias (the authors' released head has
    none). ``output="foreground"`` makes a two-class head return the raw foreground logits
    ``z1`` instead of ``z1 - z0``: what the authors' decoder reads (see
    :mod:`h3r.models.official`).
    """

    def __init__(self, in_channels: int, num_keypoints: int, kind: str = "binary", hidden_channels: int | None = None,
                 bias: bool = True, output: str = "difference"):
        super().__init__()
        if kind not in HEAD_KINDS:
            raise ValueError(f"head kind must be one of {HEAD_KINDS}, got {kind!r}")
        if output not in TWO_CLASS_OUTPUTS or (output != "difference" and kind != "two-class"):
            raise ValueError(f"head output must be one of {TWO_CLASS_OUTPUTS} ('foreground' only for the two-class "
                             f"head), got {output!r} for kind {kind!r}")
        self.output = output
        if num_keypoints < 1:
            raise ValueError(f"num_keypoints must be >= 1, got {num_keypoints}")
        hidden_channels = in_channels if hidden_channels is None else hidden_channels
        if hidden_channels < 1:
            raise ValueError(f"head_channels must be >= 1, got {hidden_channels}")
        self.kind = kind
        self.num_keypoints = num_keypoints
        logits_per_keypoint = 1 if kind == "binary" else 2
        self.hidden = nn.Sequential(
            nn.Conv2d(in_channels, hidden_channels, 1, bias=False),
            nn.BatchNorm2d(hidden_channels),
            nn.ReLU(inplace=True),
        )
        self.logits = nn.Conv2d(hidden_channels, logits_per_keypoint * num_keypoints, 1, bias=bias)
        # Start from (near) zero logits, as HRNet initialises its final layer.
        nn.init.normal_(self.logits.weight, std=0.001)
        if bias:
            nn.init.zeros_(self.logits.bias)

    def start_at(self, logit: float) -> None:
        """Set the output bias so that a fresh head (weights ~0) outputs ``logit`` everywhere.

        For H3R's binary target this is the log prior odds, ``-log(H W - 1)`` (see
        :meth:`h3r.codecs.H3RCodec.initial_logit`). The two-class head outputs ``z1 - z0``:
        the foreground half of its bias gets ``logit`` and the background half 0.
        """
        if self.logits.bias is None:
            raise ValueError("start_at: this head was built with bias=False")
        with torch.no_grad():
            if self.kind == "binary":
                self.logits.bias.fill_(logit)
            else:
                self.logits.bias[: self.num_keypoints].zero_()
                self.logits.bias[self.num_keypoints:].fill_(logit)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        z = self.logits(self.hidden(features))
        if self.kind == "binary":
            return z
        batch, _, height, width = z.shape
        z = z.view(batch, 2, self.num_keypoints, height, width)  # (z0, z1) as the authors lay them out
        if self.output == "foreground":
            return z[:, 1]
        return z[:, 1] - z[:, 0]


class LandmarkModel(nn.Module):
    """A stride-4 backbone, average pooling down to ``stride``, then a :class:`HeatmapHead`.

    ``forward(images (B, 3, H, W) float, H and W multiples of stride) -> logits (B, K, H/s, W/s)``.

    The heatmap resolution is independent of the input size: for ``stride`` 8, 16 or 32 the
    stride-4 features are halved ``log2(stride / 4)`` times by ``avg_pool2d(3, stride=2,
    padding=1, count_include_pad=False)`` before the head. That pooling window is centred
    on input cell ``2 j``, so output cell ``j`` still sits over input pixel ``stride * j``
    (the codecs' convention), the backbone is the same at every stride, and the pooling has
    no parameters: a checkpoint's weights fit the model at any stride.
    """

    def __init__(self, backbone: nn.Module, head: HeatmapHead, stride: int = 4):
        super().__init__()
        if stride not in STRIDES:
            raise ValueError(f"stride: expected one of {', '.join(map(str, STRIDES))}, got {stride!r}")
        self.backbone = backbone
        self.head = head
        self.stride = stride
        self.halvings = int(math.log2(stride // 4))
        self.num_keypoints = head.num_keypoints

    def extra_repr(self) -> str:
        return f"stride={self.stride}"

    def pool(self, features: torch.Tensor) -> torch.Tensor:
        """Stride-4 features -> features at ``self.stride`` (identity at stride 4)."""
        for _ in range(self.halvings):
            features = F.avg_pool2d(features, 3, stride=2, padding=1, count_include_pad=False)
        return features

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"images must be (B, 3, H, W), got shape {tuple(images.shape)}")
        height, width = images.shape[-2:]
        if height % self.stride or width % self.stride:
            raise ValueError(f"image height and width must be multiples of the stride {self.stride}, "
                             f"got {height}x{width}")
        logits = self.head(self.pool(self.backbone(images)))
        assert logits.shape[-2:] == (height // self.stride, width // self.stride), \
            "backbone must return stride-4 features"
        return logits
