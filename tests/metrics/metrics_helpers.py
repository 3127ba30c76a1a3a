"""Tiny models shared by the metrics tests."""

import torch
from torch import nn


class SumModel(nn.Module):
    """One output per sample: the sum of the input (a hand-checkable score)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1).sum(1)


def tiny_cnn(channels: int = 3, size: int = 8, classes: int = 4) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(channels, 4, 3, padding=1),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.Dropout(0.5),
        nn.Flatten(),
        nn.Linear(4 * size * size, classes),
    )
