"""Truncated MobileNetV2 (Sandler et al., CVPR 2018) as used by H3R.

A 32-channel stride-2 stem followed by the inverted-residual stages
``(expansion t, channels c, repeats n, stride s)`` = (1,16,1,1), (6,24,2,2), (6,32,3,2),
(6,64,4,2), (6,96,3,1); the 160/320 stages are dropped. The stride-4 (24 ch), stride-8
(32 ch) and stride-16 (96 ch) features are bilinearly upsampled (``align_corners=False``)
to stride 4 and concatenated: 152 channels at stride 4.

Module for module the authors' ``torchalign`` MobileNetV2; :mod:`h3r.models.official` maps
their parameter names (``features.<n>.conv.<i>``) onto these modules.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

# (expansion, output channels, repeats, stride of the first block)
STAGES = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1))


def conv_bn_relu6(in_channels: int, out_channels: int, kernel_size: int, stride: int = 1, groups: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size, stride, kernel_size // 2, groups=groups, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU6(inplace=True),
    )


class InvertedResidual(nn.Module):
    """1x1 expansion - 3x3 depthwise - 1x1 linear projection; residual when shapes allow."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, expansion: int):
        super().__init__()
        hidden = in_channels * expansion
        layers = [] if expansion == 1 else [conv_bn_relu6(in_channels, hidden, 1)]
        layers += [
            conv_bn_relu6(hidden, hidden, 3, stride, groups=hidden),
            nn.Conv2d(hidden, out_channels, 1, bias=False),
            nn.BatchNorm2d(out_channels),
        ]
        self.body = nn.Sequential(*layers)
        self.residual = stride == 1 and in_channels == out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x) if self.residual else self.body(x)


class MobileNetV2(nn.Module):
    """``(B, 3, H, W) -> (B, 152, H/4, W/4)``."""

    def __init__(self):
        super().__init__()
        self.stem = conv_bn_relu6(3, 32, 3, stride=2)
        stages = []
        in_channels = 32
        for expansion, channels, repeats, stride in STAGES:
            blocks = []
            for i in range(repeats):
                blocks.append(InvertedResidual(in_channels, channels, stride if i == 0 else 1, expansion))
                in_channels = channels
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.ModuleList(stages)
        # indices of the stages whose outputs are concatenated: stride 4 (24), 8 (32), 16 (96)
        self.output_stages = (1, 2, 4)
        self.out_channels = sum(STAGES[i][1] for i in self.output_stages)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = self.stem(images)
        outputs = []
        for index, stage in enumerate(self.stages):
            x = stage(x)
            if index in self.output_stages:
                outputs.append(x)
        size = outputs[0].shape[-2:]
        upsampled = [outputs[0]] + [F.interpolate(x, size=size, mode="bilinear", align_corners=False) for x in outputs[1:]]
        return torch.cat(upsampled, dim=1)
