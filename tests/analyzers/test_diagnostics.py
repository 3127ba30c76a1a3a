"""The reverse_* options: relevance kept, checked, clipped and projected at every layer."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import lit_explain as lx
from lit_explain.demo.models import ResNetStyle


def vgg_style(seed: int = 0) -> nn.Sequential:
    """Conv-ReLU-Conv-ReLU-pool blocks, then dense layers: the shape of iNNvestigate's VGG."""
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 4, 3, padding=1), nn.ReLU(),
        nn.MaxPool2d(2), nn.Conv2d(4, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(8 * 4 * 4, 16), nn.ReLU(), nn.Linear(16, 5))


KERNELS = ["0", "2", "5", "9", "11"]
INPUT_SHAPES = {"0": (3, 16, 16), "2": (4, 16, 16), "5": (4, 8, 8), "9": (128,), "11": (16,)}


@pytest.mark.parametrize("name", ["lrp.z_IB", "lrp.w_square", "lrp.z_plus", "deep_taylor"])
def test_keep_tensors_shows_relevance_flowing_layer_by_layer(name):
    # iNNvestigate's VGG test: with a conserving rule every layer's relevance sums to the
    # explained output (bias-free rules; max-pooling and ReLU pass it on). In float64: the
    # z-rule divides by pre-activations that float32 cancellation makes inexact.
    model = vgg_style().double()
    x = torch.rand(3, 3, 16, 16, dtype=torch.float64)
    analyzer = lx.create_analyzer(name, model, reverse_keep_tensors=True)
    result = analyzer.analyze(x)

    assert list(analyzer.reversed_tensors) == KERNELS  # forward order, by module path
    for path, relevance in analyzer.reversed_tensors.items():
        assert relevance.shape == (3, *INPUT_SHAPES[path])
    torch.testing.assert_close(analyzer.reversed_tensors["0"], result)  # the input layer's
    logit = model(x).amax(dim=1).clamp(min=0 if name == "deep_taylor" else -float("inf"))
    for path, relevance in analyzer.reversed_tensors.items():
        torch.testing.assert_close(relevance.flatten(1).sum(1), logit.detach(), rtol=1e-9,
                                   atol=1e-12, msg=path)


@pytest.mark.parametrize("name", ["lrp.epsilon", "lrp.sequential_preset_b", "lrp.w_square",
                                  "guided_backprop", "deconvnet", "input_t_gradient",
                                  "pattern.attribution"])
def test_options_do_not_change_the_map(name):
    model = vgg_style()
    x = torch.randn(2, 3, 16, 16)
    plain = lx.create_analyzer(name, model)
    kept = lx.create_analyzer(name, model, reverse_keep_tensors=True, reverse_check_finite=True,
                              reverse_check_min_max_values=True)
    if name.startswith("pattern"):
        plain.fit(torch.randn(16, 3, 16, 16), progress=False)
        kept.patterns = plain.patterns
    assert plain.reversed_tensors == {}
    torch.testing.assert_close(kept.analyze(x), plain.analyze(x), rtol=0, atol=0)
    assert list(kept.reversed_tensors) == KERNELS
    assert list(kept.reversed_min_max) == KERNELS
    assert plain.analyze(x) is not None and plain.reversed_tensors == {}  # off: nothing kept


def test_the_gradient_family_keeps_the_backward_signal():
    model = vgg_style()
    x = torch.randn(2, 3, 16, 16)
    analyzer = lx.create_analyzer("guided_backprop", model, reverse_keep_tensors=True)
    result = analyzer.analyze(x)
    torch.testing.assert_close(analyzer.reversed_tensors["0"], result)


def test_min_max_values_are_those_of_the_kept_tensors():
    model = vgg_style()
    analyzer = lx.create_analyzer("lrp.epsilon", model, reverse_keep_tensors=True,
                                  reverse_check_min_max_values=True)
    analyzer.analyze(torch.randn(2, 3, 16, 16))
    for path, (low, high) in analyzer.reversed_min_max.items():
        assert low == float(analyzer.reversed_tensors[path].min())
        assert high == float(analyzer.reversed_tensors[path].max())


def test_clip_values_bounds_the_relevance_at_every_layer_input():
    model = vgg_style()
    x = torch.randn(2, 3, 16, 16)
    plain = lx.create_analyzer("lrp.z", model, reverse_keep_tensors=True)
    plain.analyze(x)
    bound = 0.5 * float(plain.reversed_tensors["9"].abs().max())
    clipped = lx.create_analyzer("lrp.z", model, reverse_clip_values=(-bound, bound),
                                 reverse_keep_tensors=True, reverse_check_min_max_values=True)
    result = clipped.analyze(x)
    assert result.abs().max() <= bound * (1 + 1e-6)
    for path, (low, high) in clipped.reversed_min_max.items():
        assert -bound * (1 + 1e-6) <= low and high <= bound * (1 + 1e-6), path
    # where the relevance was inside the bounds at the last layer it is untouched
    last = plain.reversed_tensors["11"]
    inside = last.abs() < bound
    torch.testing.assert_close(clipped.reversed_tensors["11"][inside], last[inside])


@pytest.mark.parametrize("name", ["lrp.epsilon", "lrp.w_square", "guided_backprop"])
def test_project_bottleneck_layers_scales_every_layer_and_keeps_the_direction(name):
    model = vgg_style()
    x = torch.randn(3, 3, 16, 16)
    plain = lx.create_analyzer(name, model).analyze(x)
    analyzer = lx.create_analyzer(name, model, reverse_project_bottleneck_layers=True,
                                  reverse_keep_tensors=True)
    projected = analyzer.analyze(x)
    ones = torch.ones(3)
    for path, relevance in analyzer.reversed_tensors.items():
        torch.testing.assert_close(relevance.flatten(1).abs().amax(1), ones, msg=path)
    peak = plain.flatten(1).abs().amax(1)
    torch.testing.assert_close(projected, plain / peak[:, None, None, None])


def test_check_finite_names_the_first_layer_with_bad_relevance():
    # forward finite (logits ~1e10), but layer 0's w² = 1e60 overflows in the backward pass
    # (layer 2's w² = 1e-40, a subnormal sum, is divided by as a zero would be)
    model = nn.Sequential(nn.Linear(3, 2), nn.ReLU(), nn.Linear(2, 2))
    with torch.no_grad():
        model[0].weight.fill_(1e30)
        model[0].bias.zero_()
        model[2].weight.fill_(1e-20)
        model[2].bias.zero_()
    x = torch.rand(2, 3)
    assert torch.isfinite(model(x)).all()
    assert not torch.isfinite(lx.create_analyzer("lrp.w_square", model).analyze(x)).all()
    with pytest.raises(FloatingPointError, match=r"relevance at the input of layer '0' is not"):
        lx.create_analyzer("lrp.w_square", model, reverse_check_finite=True).analyze(x)


def test_check_finite_at_the_model_output():
    model = nn.Sequential(nn.Linear(3, 2), nn.ReLU(), nn.Linear(2, 2))
    with torch.no_grad():
        model[2].bias.fill_(float("inf"))
    with pytest.raises(FloatingPointError, match="relevance at the model output"):
        lx.create_analyzer("lrp.z", model, reverse_check_finite=True).analyze(torch.rand(2, 3))


@pytest.mark.parametrize("canonize", [True, False])
def test_residual_nets_and_repeated_modules_get_distinct_keys(canonize):
    model = ResNetStyle(in_channels=1, num_classes=3, width=4).eval()
    analyzer = lx.create_analyzer("lrp.epsilon", model, reverse_keep_tensors=True,
                                  canonize=canonize)
    analyzer.analyze(torch.randn(2, 1, 8, 8))
    # canonized, a BatchNorm is part of the convolution before it
    layers = (nn.Conv2d, nn.Linear) if canonize else (nn.Conv2d, nn.Linear, nn.BatchNorm2d)
    paths = {name for name, m in model.named_modules() if isinstance(m, layers)}
    assert set(analyzer.reversed_tensors) == paths

    layer = nn.Linear(4, 4)

    class Twice(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.layer, self.out = layer, nn.Linear(4, 2)

        def forward(self, x):
            return self.out(torch.relu(self.layer(torch.relu(self.layer(x)))))

    twice = lx.create_analyzer("lrp.z", Twice(), reverse_keep_tensors=True)
    twice.analyze(torch.randn(2, 4))
    assert list(twice.reversed_tensors) == ["layer", "layer:1", "out"]


@pytest.mark.parametrize("kwargs, message", [
    ({"reverse_clip_values": (1.0, -1.0)}, "reverse_clip_values"),
    ({"reverse_clip_values": 3.0}, "reverse_clip_values"),
    ({"reverse_keep_tensors": "yes"}, "reverse_keep_tensors"),
])
def test_bad_options_fail_at_construction(kwargs, message):
    with pytest.raises(ValueError, match=message):
        lx.create_analyzer("lrp.z", vgg_style(), **kwargs)


def test_every_rule_based_analyzer_takes_the_options():
    from lit_explain.analyzers.registry import parameters_of

    options = {"reverse_keep_tensors", "reverse_check_finite", "reverse_clip_values",
               "reverse_check_min_max_values", "reverse_project_bottleneck_layers"}
    rule_based = [n for n in lx.analyzers if n.startswith(("lrp", "deep_taylor", "pattern."))]
    rule_based += ["deconvnet", "guided_backprop", "input_t_gradient"]
    for name in rule_based:
        assert options <= set(parameters_of(lx.analyzers[name])), name


@pytest.mark.parametrize("clip", [(0.01, 0.2), (-0.2, -0.01)])
def test_a_clip_range_without_zero_reaches_the_layers_below_dead_units_too(clip):
    # clipping gives relevance where an activation is 0 (a dead ReLU): the map is the one of
    # relevance carried as itself, whatever the rules would otherwise allow
    from lit_explain.analyzers.lrp.rules import Flow

    torch.manual_seed(2)
    model = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 3)).double().eval()
    x = torch.randn(5, 4, dtype=torch.float64)
    analyzer = lx.create_analyzer("lrp.z", model, reverse_clip_values=clip)
    absolute = lx.create_analyzer("lrp.z", model, reverse_clip_values=clip)
    absolute.flow = Flow()
    torch.testing.assert_close(analyzer.analyze(x), absolute.analyze(x))


def test_clip_values_take_numpy_numbers_and_bounds_refuse_bools():
    import numpy as np

    model = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))
    analyzer = lx.create_analyzer("lrp.z", model,
                                  reverse_clip_values=(np.float32(-1), np.float64(1)))
    assert analyzer.reverse.clip_values == (-1.0, 1.0)
    with pytest.raises(ValueError, match="two finite numbers"):
        lx.create_analyzer("lrp.z", model, reverse_clip_values=(torch.tensor(0.0), 1.0))
    with pytest.raises(TypeError, match=r"input_layer_rule=\(True, 2\) is not a rule"):
        lx.create_analyzer("lrp.epsilon", model, input_layer_rule=(True, 2))
