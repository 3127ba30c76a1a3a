"""DeepLIFT's summation-to-delta at every input scale (issue 10, item 7).

The identity: Σ map = f(x)_c − f(x₀)_c. The truth is computed independently, by a float64
copy of the model, so the float32 analysis is held to the exact difference, not to its own
rounded forward pass.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

import lit_explain as lx
from lit_explain.analyzers.deep_lift import lost_in_rounding
from lit_explain.demo.models import ResNetStyle, vgg_style

SCALES = [1e-6, 1e-4, 1e-2, 1.0, 1e3]
DTYPES = [torch.float32, torch.float64]
SIZE = 16


def relu_cnn(bias: bool) -> nn.Module:
    """ReLU CNN with max-pooling (VGG-style), default init, with or without biases."""
    torch.manual_seed(0)
    model = vgg_style(image_size=SIZE)
    if not bias:
        for module in model.modules():
            if isinstance(module, (nn.Conv2d, nn.Linear)):
                nn.init.zeros_(module.bias)
    return model.eval()


def resnet(random_statistics: bool) -> nn.Module:
    """ResNet-style net with BatchNorm: default init, or random running statistics and
    affine parameters (so that every BatchNorm shifts its input)."""
    torch.manual_seed(1)
    model = ResNetStyle()
    if random_statistics:
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.uniform_(-1, 1)
                module.running_var.uniform_(0.2, 3)
                module.weight.data.uniform_(0.5, 1.5)
                module.bias.data.uniform_(-0.5, 0.5)
    return model.eval()


NETS = {
    "cnn": lambda: relu_cnn(bias=True),
    "cnn_without_bias": lambda: relu_cnn(bias=False),
    "resnet": lambda: resnet(random_statistics=False),
    "resnet_random_bn": lambda: resnet(random_statistics=True),
}


def cases():
    for net in NETS:
        for dtype in DTYPES:
            for scale in SCALES:
                # With biases, f(x) − f(x₀) of this default-init CNN is ~1e-9 of f itself
                # below scale 1: below float32's resolution, so that the model's own float32
                # forward gives a difference of exactly 0. No float32 computation can be
                # held to 1e-5 of it; float64 and the bias-free (scale-free) CNN cover it.
                if net == "cnn" and dtype == torch.float32 and scale < 1:
                    continue
                yield net, dtype, scale


@pytest.mark.parametrize("reference", ["zero", "random"])
@pytest.mark.parametrize(("net", "dtype", "scale"), list(cases()))
def test_summation_to_delta_at_any_scale(net, dtype, scale, reference):
    model = NETS[net]()
    generator = torch.Generator().manual_seed(2)
    x = torch.randn(3, 3, SIZE, SIZE, generator=generator, dtype=torch.float64) * scale
    x0 = torch.zeros_like(x[:1])
    if reference == "random":
        x0 = torch.randn(1, 3, SIZE, SIZE, generator=generator, dtype=torch.float64) * scale
    analyzer = lx.create_analyzer("deep_lift", copy.deepcopy(model).to(dtype),
                                  reference_inputs=x0.to(dtype), neuron_selection_mode="index")
    relevance = analyzer.analyze(x.to(dtype), 3).double().flatten(1)
    with torch.no_grad():
        truth = model.double()(x)[:, 3] - model(x0.expand_as(x))[:, 3]
    error = (relevance.sum(1) - truth).abs()
    # 1e-5 of the delta, plus the rounding floor of the map itself: its entries carry the
    # dtype's rounding, amplified through the layers, and they cancel (Σ|R| reaches
    # ~200·|Δ| here): a few dozen ulps of Σ|R|, scale-free, negligible in float64.
    floor = 32 * torch.finfo(dtype).eps * relevance.abs().sum(1)
    assert bool((error <= 1e-5 * truth.abs() + floor).all()), (error / truth.abs()).max()


def test_an_absolute_threshold_would_fail_here():
    # the regression: at input scale 1e-6 every |x − x₀| is below 1e-6, and the old rule
    # replaced max-pooling's Δy/Δx by 0 and the rescale rule by the gradient everywhere
    model = relu_cnn(bias=False).double()
    x = torch.randn(2, 3, SIZE, SIZE, dtype=torch.float64) * 1e-6
    relevance = lx.create_analyzer("deep_lift", model).analyze(x)
    logits = model(x)
    top = logits.argmax(1)
    truth = (logits - model(torch.zeros_like(x))).gather(1, top[:, None]).squeeze(1)
    torch.testing.assert_close(relevance.flatten(1).sum(1), truth, rtol=1e-9, atol=0)


def test_sigmoid_secant_is_kept_where_it_is_resolved():
    # f = sigmoid on one unit: DeepLIFT's multiplier is the secant (σ(x) − σ(x₀))/(x − x₀),
    # which differs from the tangent σ'(x); the map must be exactly Δσ at small and large Δ
    model = nn.Sequential(nn.Flatten(), nn.Sigmoid()).double().eval()
    for delta in (1e-6, 1e-3, 2.0):
        x = torch.tensor([[0.5 + delta]], dtype=torch.float64)
        result = lx.create_analyzer("deep_lift", model, reference_inputs=0.5).analyze(x)
        expected = torch.sigmoid(x) - torch.sigmoid(torch.tensor(0.5, dtype=torch.float64))
        torch.testing.assert_close(result, expected, rtol=1e-9, atol=0)


def test_lost_in_rounding_is_relative_to_each_element():
    value = torch.tensor([1e-6, 1e6, 1.0, 1.0])
    reference = torch.tensor([1e-6 * (1 + 2e-7), 1e6 * (1 + 1e-3), 1.0, 0.0])
    # a few ulps of the element's own magnitude, whatever its scale; exact zeros included
    expected = torch.tensor([True, False, True, False])
    assert torch.equal(lost_in_rounding(value - reference, value, reference), expected)


class ParameterFunctions(nn.Module):
    """Non-linearities of parameters in forward (a CLIP-style ``logit_scale.exp()``, a
    weight standardised with ``sqrt`` over 5 output channels): constants to DeepLIFT."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 5, 3, padding=1)
        self.fc = nn.Linear(5 * 4 * 4, 3)
        self.logit_scale = nn.Parameter(torch.tensor(0.7))

    def standardised(self) -> Tensor:
        w = self.conv.weight
        return (w - w.mean((1, 2, 3), keepdim=True)) / torch.sqrt(
            w.var((1, 2, 3), keepdim=True, unbiased=False) + 1e-5)

    def forward(self, x: Tensor) -> Tensor:
        h = torch.relu(F.conv2d(x, self.standardised(), self.conv.bias, padding=1))
        return self.fc(h.flatten(1)) * self.logit_scale.exp()


def test_non_linearities_of_parameters_are_constants():
    model = ParameterFunctions().double().eval()
    x = torch.randn(2, 3, 4, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    relevance = lx.create_analyzer("deep_lift", model).analyze(x)
    # summation to delta: Σ map = f(x) − f(0) for the explained (top) logit
    logits, reference = model(x), model(torch.zeros_like(x))
    top = logits.argmax(1)
    expected = (logits - reference).gather(1, top[:, None])[:, 0]
    torch.testing.assert_close(relevance.sum((1, 2, 3)), expected.detach())
