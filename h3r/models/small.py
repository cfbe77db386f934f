"""A small, fast stride-4 backbone for CPU training on small inputs (e.g. 64x64).

Two stride-2 stem convolutions reach stride 4 (32 ch); one residual block there; one
downsampling path to stride 8 (64 ch, one residual block); the stride-8 features are
bilinearly upsampled back to stride 4, concatenated with the stride-4 skip and mixed by a
3x3 convolution: 64 channels at stride 4, about 0.17 M parameters. At 64x64 input the
stride-8 receptive field already spans the whole crop.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from h3r.models.hrnet import BasicBlock, conv_bn


class SmallNet(nn.Module):
    """``(B, 3, H, W) -> (B, 64, H/4, W/4)``."""

    def __init__(self, stem_channels: int = 24, stride4_channels: int = 32, stride8_channels: int = 64, out_channels: int = 64):
        super().__init__()
        self.stem = nn.Sequential(conv_bn(3, stem_channels, stride=2), conv_bn(stem_channels, stride4_channels, stride=2))
        self.stride4 = BasicBlock(stride4_channels)
        self.stride8 = nn.Sequential(conv_bn(stride4_channels, stride8_channels, stride=2), BasicBlock(stride8_channels))
        self.fuse = conv_bn(stride4_channels + stride8_channels, out_channels)
        self.out_channels = out_channels

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        skip = self.stride4(self.stem(images))
        coarse = F.interpolate(self.stride8(skip), size=skip.shape[-2:], mode="bilinear", align_corners=False)
        return self.fuse(torch.cat([skip, coarse], dim=1))
