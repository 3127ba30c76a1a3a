"""Pattern analyzers on the hand-written model zoo (ResNet-18, U-Net) and the scale check."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import lit_explain as lx
from lit_explain.patterns import PatternComputer

zoo = pytest.importorskip("zoo")


def fitted(name: str):
    model, x = zoo.ZOO[name]()
    generator = torch.Generator().manual_seed(1)
    data = torch.randn(64, *x.shape[1:], generator=generator) * x.std() + x.mean()
    return model, x, PatternComputer(model).fit(data.split(16), progress=False)


@pytest.mark.parametrize("name", ["resnet18", "unet"])
def test_patterns_fit_every_kernel_layer_transposed_convolutions_included(name):
    model, _, patterns = fitted(name)
    kernels = {path: m for path, m in model.named_modules()
               if isinstance(m, (nn.Linear, nn.Conv2d, nn.ConvTranspose2d))}
    assert set(patterns) == set(kernels)
    for path, module in kernels.items():
        assert patterns[path].shape == module.weight.shape
    if name == "unet":
        assert any(isinstance(m, nn.ConvTranspose2d) for m in kernels.values())


@pytest.mark.parametrize("name", ["resnet18", "unet"])
def test_patternnet_signal_stays_on_the_input_scale(name):
    """The signal is a component of the input: its norm is at most the input's (a factor 2
    of slack), per sample; it is finite and not zero."""
    model, x, patterns = fitted(name)
    analyzer = lx.create_analyzer("pattern.net", model, patterns=patterns,
                                  scale_check="raise")
    signal = analyzer.analyze(x)
    assert torch.isfinite(signal).all()
    ratio = signal.flatten(1).norm(dim=1) / x.flatten(1).norm(dim=1)
    assert (ratio > 0).all() and (ratio <= 2).all(), ratio
    assert max(analyzer.signal_scales.values()) <= analyzer.max_scale


@pytest.mark.parametrize("name", ["resnet18", "unet"])
def test_patternattribution_is_bounded_by_the_explained_output(name):
    """Kernel layers (Σ wᵢaᵢ = 1), BatchNorm, adds, pooling and interpolation conserve the
    relevance and ReLUs only remove some: Σ|R| stays within a factor 10 of the logit."""
    model, x, patterns = fitted(name)
    relevance = lx.create_analyzer("pattern.attribution", model, patterns=patterns,
                                   scale_check="raise").analyze(x)
    logit = model(x).max(dim=1).values.detach()
    assert torch.isfinite(relevance).all()
    total = relevance.flatten(1).abs().sum(1)
    assert (total > 0).all() and (total <= 10 * logit.abs()).all()


def test_adds_split_the_signal_by_the_summands_magnitudes():
    """out = h + g: each summand gets s·|z|/Σ|z| (PatternNet divides by its coefficient)."""

    class Residual(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(3, 4, bias=False), nn.Linear(3, 4, bias=False)
            self.head = nn.Linear(4, 1, bias=False)

        def forward(self, x):
            return self.head(self.a(x) - 2 * 0 + torch.sub(self.b(x), self.a(x), alpha=0.5))

    torch.manual_seed(4)
    model = Residual().double()
    x = torch.randn(2, 3, dtype=torch.float64)
    patterns = {"a": torch.randn(4, 3, dtype=torch.float64),
                "b": torch.randn(4, 3, dtype=torch.float64),
                "head": torch.randn(1, 4, dtype=torch.float64)}
    result = lx.create_analyzer("pattern.attribution", model, patterns=patterns).analyze(x)
    ha, hb = model.a(x).detach(), model.b(x).detach()
    inner = hb - 0.5 * ha  # torch.sub(b, a, alpha=0.5)
    out = ha + inner
    relevance = model(x).detach() * model.head.weight.detach() * patterns["head"]  # (2, 4)
    share_a = ha.abs() / (ha.abs() + inner.abs())
    r_a, r_inner = relevance * share_a, relevance * (1 - share_a)
    share_b = hb.abs() / (hb.abs() + (0.5 * ha).abs())
    r_b, r_a2 = r_inner * share_b, r_inner * (1 - share_b)
    wa = model.a.weight.detach() * patterns["a"]
    wb = model.b.weight.detach() * patterns["b"]
    expected = (r_a + r_a2) @ wa + r_b @ wb
    torch.testing.assert_close(result, expected)
    assert out.shape == relevance.shape


def test_a_signal_that_blows_up_warns_or_raises_naming_the_layer():
    """A BatchNorm with γ = 1e-4 multiplies PatternNet's signal by 1e4 (its pattern is 1/s).
    (With γ = 1e-8 its float32 outputs 1 + 1e-8·z are all 1: the next layer sees a constant
    input, whose pattern is 0, and no signal reaches the BatchNorm.)"""
    torch.manual_seed(5)
    bn = nn.BatchNorm1d(4)
    with torch.no_grad():
        bn.weight.fill_(1e-4)
        bn.bias.fill_(1.0)
    model = nn.Sequential(nn.Linear(3, 4), bn, nn.ReLU(), nn.Linear(4, 2)).eval()
    data = torch.randn(64, 3)
    patterns = PatternComputer(model).fit([data], progress=False)
    analyzer = lx.create_analyzer("pattern.net", model, patterns=patterns)
    with pytest.warns(RuntimeWarning, match=r"at the input of '0'.*max_scale=1000"):
        analyzer.analyze(data[:3])
    assert analyzer.signal_scales["0"] > 1e3
    strict = lx.create_analyzer("pattern.net", model, patterns=patterns,
                                scale_check="raise")
    with pytest.raises(FloatingPointError, match="'0'"):
        strict.analyze(data[:3])


@pytest.mark.parametrize("name", ["pattern.net", "pattern.attribution"])
def test_a_non_finite_signal_raises_naming_the_layer(name):
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2), nn.ReLU(),
                          nn.Linear(2, 2))
    patterns = PatternComputer(model).fit([torch.randn(32, 3)], progress=False)
    patterns["2"] = torch.full_like(patterns["2"], float("inf"))
    analyzer = lx.create_analyzer(name, model, patterns=patterns, scale_check="off")
    with pytest.raises(FloatingPointError, match=r"not finite at the input of .*module '2'"):
        analyzer.analyze(torch.randn(4, 3) + 3)


def test_scale_check_arguments_are_validated():
    model = nn.Linear(3, 2)
    with pytest.raises(ValueError, match="scale_check"):
        lx.create_analyzer("pattern.net", model, scale_check="loud")
    with pytest.raises(ValueError, match="max_scale"):
        lx.create_analyzer("pattern.net", model, max_scale=0)
