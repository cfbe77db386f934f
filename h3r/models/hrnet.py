"""HRNetV2 (Wang et al., "Deep High-Resolution Representation Learning", TPAMI 2020).

HRNetV2-W18 as used for face alignment and by H3R:
- stem: two 3x3 stride-2 convolutions (64 channels) -> stride 4;
- stage 1: 4 bottleneck blocks (64 -> 256 channels), one branch;
- stages 2, 3, 4: 1, 4 and 3 modules of 2, 3 and 4 parallel branches (strides 4, 8, 16,
  32; widths W, 2W, 4W, 8W), 4 basic blocks per branch, every module ending in a fusion
  that exchanges information between all branches;
- output: the 4 branches bilinearly upsampled (``align_corners=False``) to stride 4 and
  concatenated: 15W channels (270 for W = 18) at stride 4.

Module for module the authors' ``torchalign`` HRNet (HRNet-Image-Classification layout);
:mod:`h3r.models.official` maps their parameter names onto these modules.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


def conv_bn(in_channels: int, out_channels: int, kernel_size: int = 3, stride: int = 1, relu: bool = True) -> nn.Sequential:
    layers = [
        nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding=kernel_size // 2, bias=False),
        nn.BatchNorm2d(out_channels),
    ]
    if relu:
        layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with a residual connection (channels unchanged)."""

    def __init__(self, channels: int):
        super().__init__()
        self.body = nn.Sequential(conv_bn(channels, channels), conv_bn(channels, channels, relu=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(x + self.body(x))


class Bottleneck(nn.Module):
    """1x1 - 3x3 - 1x1 residual block with expansion 4 (``planes`` -> ``4 planes`` channels)."""

    expansion = 4

    def __init__(self, in_channels: int, planes: int):
        super().__init__()
        out_channels = planes * self.expansion
        self.body = nn.Sequential(
            conv_bn(in_channels, planes, kernel_size=1),
            conv_bn(planes, planes),
            conv_bn(planes, out_channels, kernel_size=1, relu=False),
        )
        self.shortcut = nn.Identity() if in_channels == out_channels else conv_bn(in_channels, out_channels, 1, relu=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.shortcut(x) + self.body(x))


class FuseLayer(nn.Module):
    """Sums every branch into target branch ``target``, resampled to its resolution.

    Higher-resolution branches come down by chains of 3x3 stride-2 convolutions; lower
    ones go up by a 1x1 convolution and nearest upsampling (as in HRNet).
    """

    def __init__(self, widths: list[int], target: int):
        super().__init__()
        self.target = target
        paths = []
        for source, width in enumerate(widths):
            if source == target:
                paths.append(nn.Identity())
            elif source > target:
                paths.append(conv_bn(width, widths[target], kernel_size=1, relu=False))
            else:
                steps = [conv_bn(width, width, stride=2) for _ in range(target - source - 1)]
                steps.append(conv_bn(width, widths[target], stride=2, relu=False))
                paths.append(nn.Sequential(*steps))
        self.paths = nn.ModuleList(paths)

    def forward(self, branches: list[torch.Tensor]) -> torch.Tensor:
        size = branches[self.target].shape[-2:]
        total = branches[self.target]
        for source, (path, x) in enumerate(zip(self.paths, branches)):
            if source == self.target:
                continue
            x = path(x)
            if source > self.target:
                x = F.interpolate(x, size=size, mode="nearest")
            total = total + x
        return F.relu(total)


class HighResolutionModule(nn.Module):
    """Parallel branches of basic blocks followed by a full multi-resolution fusion."""

    def __init__(self, widths: list[int], blocks_per_branch: int):
        super().__init__()
        self.branches = nn.ModuleList(
            nn.Sequential(*[BasicBlock(width) for _ in range(blocks_per_branch)]) for width in widths
        )
        self.fuse = nn.ModuleList(FuseLayer(widths, target) for target in range(len(widths)))

    def forward(self, branches: list[torch.Tensor]) -> list[torch.Tensor]:
        branches = [branch(x) for branch, x in zip(self.branches, branches)]
        return [fuse(branches) for fuse in self.fuse]


class HRNet(nn.Module):
    """HRNetV2 backbone: ``(B, 3, H, W) -> (B, 15 * width, H/4, W/4)``.

    Args:
        width: channels of the highest-resolution branch (18 for HRNet-W18, 32 for W32).
        modules_per_stage: number of high-resolution modules in stages 2, 3, 4.
        blocks_per_branch: basic blocks per branch in each module (and bottlenecks in stage 1).
    """

    def __init__(self, width: int = 18, modules_per_stage: tuple[int, int, int] = (1, 4, 3), blocks_per_branch: int = 4):
        super().__init__()
        widths = [width * 2**i for i in range(4)]
        self.stem = nn.Sequential(conv_bn(3, 64, stride=2), conv_bn(64, 64, stride=2))
        stage1_channels = 64 * Bottleneck.expansion
        self.stage1 = nn.Sequential(
            Bottleneck(64, 64), *[Bottleneck(stage1_channels, 64) for _ in range(blocks_per_branch - 1)]
        )
        # Each transition keeps the existing branches (adapting stage 1's 256 channels) and
        # opens one new branch at half the resolution of the lowest one.
        self.transitions = nn.ModuleList()
        self.stages = nn.ModuleList()
        previous = [stage1_channels]
        for stage, num_modules in enumerate(modules_per_stage):
            current = widths[: stage + 2]
            transition = nn.ModuleList(
                nn.Identity() if previous[i] == current[i] else conv_bn(previous[i], current[i]) for i in range(len(previous))
            )
            transition.append(conv_bn(previous[-1], current[-1], stride=2))
            self.transitions.append(transition)
            self.stages.append(nn.Sequential(*[HighResolutionModule(current, blocks_per_branch) for _ in range(num_modules)]))
            previous = current
        self.out_channels = sum(widths)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        branches = [self.stage1(self.stem(images))]
        for transition, stage in zip(self.transitions, self.stages):
            new_branch = transition[-1](branches[-1])
            branches = [adapt(x) for adapt, x in zip(transition, branches)] + [new_branch]
            branches = stage(branches)
        size = branches[0].shape[-2:]
        upsampled = [branches[0]] + [F.interpolate(x, size=size, mode="bilinear", align_corners=False) for x in branches[1:]]
        return torch.cat(upsampled, dim=1)


def hrnet_w18() -> HRNet:
    """HRNetV2-W18: modules [1, 1, 4, 3], branches [1, 2, 3, 4], widths 18/36/72/144 -> 270 channels."""
    return HRNet(width=18, modules_per_stage=(1, 4, 3), blocks_per_branch=4)
