"""Perturbation metrics constructed with their defaults work on every input size, with the
documented rule for the region size and the number of steps (issue 12, item 2)."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import lit_explain.metrics as lm

# (input shape, positions per sample, RegionPerturbation's default region side)
SHAPES = [((3, 10), 10, 1), ((2, 1, 8, 8), 64, 1), ((2, 3, 32, 32), 1024, 2),
          ((1, 3, 224, 224), 224 * 224, 14)]


@pytest.mark.parametrize(("shape", "positions", "side"), SHAPES)
def test_perturbation_metrics_with_defaults_fit_the_input(shape, positions, side):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(math.prod(shape[1:]), 4))
    x, maps = torch.randn(shape), torch.randn(shape)
    regions = math.ceil(shape[-1] / side) ** (len(shape) - 2) if len(shape) > 2 else positions
    expected_points = {  # steps = min(100, what the input has) , plus the start
        lm.PixelFlipping: min(100, positions) + 1,
        lm.RegionPerturbation: min(100, regions) + 1,
        lm.InsertionDeletion: min(100, positions) + 1,
    }
    for cls, points in expected_points.items():
        metric = cls(model)
        metric.update(x, maps)
        values = metric.compute()
        values = values.values() if isinstance(values, dict) else [values]
        assert all(torch.isfinite(v) for v in values), cls.__name__
        curve = metric.curve() if hasattr(metric, "curve") else metric.curves()["deletion"]
        assert curve.shape == (points,), cls.__name__
    correlation = lm.FaithfulnessCorrelation(model)
    correlation.update(x, maps)
    assert torch.isfinite(correlation.compute())


def test_default_region_shape_rule():
    from lit_explain.metrics._curves import default_region_shape

    assert default_region_shape((8, 8)) == (1, 1)
    assert default_region_shape((32, 32)) == (2, 2)
    assert default_region_shape((224, 224)) == (14, 14)
    assert default_region_shape((10,)) == (1,)
    assert default_region_shape((1000,)) == (4,)  # 250 regions along a sequence


def test_derived_steps_are_fixed_by_the_first_input():
    metric = lm.PixelFlipping(lambda t: t.flatten(1)[:, :2])
    metric.update(torch.randn(2, 1, 4, 4), torch.randn(2, 1, 4, 4))
    assert metric.curve().shape == (17,)
    with pytest.raises(ValueError, match="need 64 steps.*has 16"):
        metric.update(torch.randn(2, 1, 8, 8), torch.randn(2, 1, 8, 8))


def _pooled(t: torch.Tensor) -> torch.Tensor:  # any spatial size: channel means, 3 scores
    return t.mean((2, 3))


@pytest.mark.parametrize(("cls", "options", "first", "other", "message"), [
    # 2x2 regions on 32x32, 4x4 on 64x64: 100 steps each, so the curves added up (47 % off)
    (lm.RegionPerturbation, {}, 32, 64, r"region shape of \(4, 4\).*\(2, 2\).*region_shape="),
    # 144 positions: 2 per step; 256: 3 per step, on one averaged fraction axis
    (lm.InsertionDeletion, {}, 12, 16, "regions per step of 3.*derived 2.*steps="),
])
def test_derived_regions_are_fixed_by_the_first_input(cls, options, first, other, message):
    def batch(side: int) -> tuple[torch.Tensor, torch.Tensor]:
        g = torch.Generator().manual_seed(side)
        return torch.randn(2, 3, side, side, generator=g), torch.randn(2, 3, side, side,
                                                                       generator=g)

    metric = cls(_pooled, **options)
    metric.sample_curves(*batch(other))  # (the per-sample curves fix nothing)
    metric.update(*batch(first))
    with pytest.raises(ValueError, match=message):
        metric.update(*batch(other))
    alone = cls(_pooled, **options)
    alone.update(*batch(other))
    with pytest.raises(ValueError, match="cannot merge"):
        metric.merge_state(alone)
    metric.reset()  # (until reset: then the next input derives them again)
    metric.update(*batch(other))
    torch.testing.assert_close(metric.compute(), alone.compute())
