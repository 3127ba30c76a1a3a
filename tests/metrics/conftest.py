"""Fixtures shared by the metrics tests."""

import pytest
import torch
from torch import nn


@pytest.fixture
def linear_setup():
    """A linear model, inputs, its exact attribution w ⊙ x and a random map."""
    g = torch.Generator().manual_seed(0)
    model = nn.Linear(32, 5)
    with torch.no_grad():
        model.weight.copy_(torch.randn(5, 32, generator=g))
        model.bias.zero_()
    x = torch.randn(24, 32, generator=g)
    target = model(x).argmax(1)
    exact = model.weight.detach()[target] * x
    random_map = torch.randn(24, 32, generator=g)
    return model, x, target, exact, random_map
