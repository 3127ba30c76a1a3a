"""Small reference architectures used by the demo, the tests, the examples and benchmarks.

No torchvision is needed: ``vgg_style`` is a plain ``Sequential`` of convolutions, ReLU
modules and max-pooling; ``ResNetStyle`` is written the way torchvision writes ResNets,
with BatchNorm, ``F.relu`` calls and ``out += identity``, so that analyzers are checked on
functional operations no module hook sees.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn


def vgg_style(in_channels: int = 3, num_classes: int = 10, width: int = 16,
              image_size: int = 64) -> nn.Sequential:
    """A VGG-style CNN: three conv-conv-pool blocks, then two dense layers."""
    layers: list[nn.Module] = []
    channels = in_channels
    for block in range(3):
        out = width * 2**block
        layers += [nn.Conv2d(channels, out, 3, padding=1), nn.ReLU(),
                   nn.Conv2d(out, out, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2)]
        channels = out
    side = image_size // 8
    layers += [nn.Flatten(), nn.Linear(channels * side * side, 4 * width), nn.ReLU(),
               nn.Dropout(0.5), nn.Linear(4 * width, num_classes)]
    return nn.Sequential(*layers)


class BasicBlock(nn.Module):
    """torchvision's ResNet basic block: two 3×3 convs with BatchNorm and a residual add."""

    def __init__(self, in_channels: int, channels: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, channels, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)
        self.downsample = None
        if stride != 1 or in_channels != channels:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_channels, channels, 1, stride, bias=False), nn.BatchNorm2d(channels))

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out += identity
        return F.relu(out)


class ResNetStyle(nn.Module):
    """A small ResNet: stem, three stages of basic blocks, global average pooling, dense."""

    def __init__(self, in_channels: int = 3, num_classes: int = 10, width: int = 16,
                 blocks_per_stage: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, width, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        stages, channels = [], width
        for stage in range(3):
            out = width * 2**stage
            for index in range(blocks_per_stage):
                stride = 2 if stage > 0 and index == 0 else 1
                stages.append(BasicBlock(channels, out, stride))
                channels = out
        self.layers = nn.Sequential(*stages)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(channels, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.pool(self.layers(x))
        return self.fc(x.flatten(1))
