"""pattern.net and pattern.attribution: definitions, identities and errors."""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
from pattern_helpers import linear_toy
from torch import nn

import lit_explain as lx
from lit_explain.demo.models import ResNetStyle
from lit_explain.patterns import PatternComputer


def test_patternnet_estimates_the_signal_on_the_linear_toy():
    x, y, a_s, model = linear_toy()
    patterns = PatternComputer(model, "linear").fit([x], progress=False)
    signal = lx.create_analyzer("pattern.net", model, patterns=patterns).analyze(x[:16])
    # the backward starts from the output's value y and multiplies by the pattern
    torch.testing.assert_close(signal, y[:16, None] * patterns[""][0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(signal, y[:16, None] * a_s, rtol=0.05, atol=0.05)


def test_patternattribution_is_weight_times_pattern_and_conserves_the_output():
    x, y, _, model = linear_toy()
    patterns = PatternComputer(model, "linear").fit([x], progress=False)
    relevance = lx.create_analyzer("pattern.attribution", model,
                                   patterns=patterns).analyze(x[:16])
    torch.testing.assert_close(relevance, y[:16, None] * model.weight[0] * patterns[""][0])
    torch.testing.assert_close(relevance.sum(1), y[:16], rtol=1e-4, atol=1e-4)  # wᵀa = 1


def relu_net() -> nn.Sequential:
    torch.manual_seed(1)
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Conv2d(4, 4, 3, padding=1, groups=2, padding_mode="reflect"),
                         nn.ReLU(), nn.Conv2d(4, 4, 3), nn.ReLU(), nn.Flatten(),
                         nn.Linear(4, 5))


def test_with_ones_as_patterns_patternattribution_is_the_value_seeded_gradient():
    model = relu_net()
    x = torch.randn(6, 1, 6, 6)
    ones = {path: torch.ones_like(m.weight) for path, m in model.named_modules()
            if isinstance(m, (nn.Conv2d, nn.Linear))}
    inputs = x.clone().requires_grad_(True)
    logits = model(inputs)
    seed = torch.zeros_like(logits).scatter(1, logits.argmax(1, keepdim=True),
                                            logits.max(1, keepdim=True).values)
    (expected,) = torch.autograd.grad(logits, inputs, seed.detach())
    attribution = lx.create_analyzer("pattern.attribution", model, patterns=ones).analyze(x)
    torch.testing.assert_close(attribution, expected)


def test_patternnet_normalises_each_layer_so_that_it_reproduces_its_output_signal():
    """Two dense layers, written out: s₁ = a₂·y (one neuron: c = 1, the paper), then
    s₀ = c·A₁ᵀs₁ with c the least-squares scale of W₁(A₁ᵀs₁) onto s₁ where s₁ ≠ 0."""
    torch.manual_seed(3)
    model = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 3)).double()
    x = torch.randn(5, 4, dtype=torch.float64)
    patterns = {"0": torch.randn(6, 4, dtype=torch.float64),
                "2": torch.randn(3, 6, dtype=torch.float64)}
    result = lx.create_analyzer("pattern.net", model, patterns=patterns).analyze(x)
    w1 = model[0].weight.detach()
    for n in range(len(x)):
        hidden = model[0](x[n]).detach()
        logits = model(x[n]).detach()
        k = int(logits.argmax())
        s1 = logits[k] * patterns["2"][k] * (hidden > 0)  # through the ReLU's gradient
        raw = patterns["0"].t() @ s1
        image = (w1 @ raw) * (s1 != 0)
        c = max(float(image @ s1 / (image @ image)), 0.0)
        torch.testing.assert_close(result[n], c * raw)
        # the normalised signal reproduces s₁ at least as well as any other multiple would
        assert ((w1 @ result[n]) * (s1 != 0) - s1).norm() <= (image - s1).norm() + 1e-12


@pytest.mark.parametrize("name", ["pattern.net", "pattern.attribution"])
def test_batchnorm_acts_as_if_folded_into_the_conv_before_it(name):
    """Conv→BN→ReLU and the conv with the BatchNorm folded in give the same analysis."""
    torch.manual_seed(2)
    conv, bn = nn.Conv2d(2, 3, 3, padding=1), nn.BatchNorm2d(3)
    with torch.no_grad():
        bn.running_mean.uniform_(-0.5, 0.5)
        bn.running_var.uniform_(0.3, 3.0)
        bn.weight.uniform_(0.3, 2.0)
        bn.bias.uniform_(-0.3, 0.3)
    head = nn.Sequential(nn.ReLU(), nn.Flatten(), nn.Linear(3 * 16, 4))
    model = nn.Sequential(conv, bn, *head).eval()
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    folded_conv = nn.Conv2d(2, 3, 3, padding=1)
    with torch.no_grad():
        folded_conv.weight.copy_(conv.weight * scale[:, None, None, None])
        folded_conv.bias.copy_((conv.bias - bn.running_mean) * scale + bn.bias)
    folded = nn.Sequential(folded_conv, *head).eval()

    data = torch.randn(64, 2, 4, 4)
    x = data[:5]
    torch.testing.assert_close(model(x), folded(x))
    results = []
    for network in (model, folded):
        patterns = PatternComputer(network, "relu").fit([data], progress=False)
        results.append(lx.create_analyzer(name, network, patterns=patterns).analyze(x))
    if name == "pattern.net":
        # PatternNet's layer normalisation weighs the conv's channels by the BatchNorm's
        # scale: on a chain the map's direction is that of the folded net, its size per
        # sample may differ (one scalar per sample)
        results = [r / r.flatten(1).norm(dim=1)[:, None, None, None] for r in results]
    torch.testing.assert_close(results[0], results[1], rtol=1e-3, atol=1e-5)


MEAN = torch.tensor([0.5, -1.0, 2.0]).view(1, 3, 1, 1)
STD = torch.tensor([0.25, -1.0, 4.0]).view(1, 3, 1, 1)  # (a negative one: 1 - x, say)


class NormalisedInput(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(3)
        self.conv, self.head = nn.Conv2d(3, 6, 3), nn.Linear(6 * 36, 4)

    def forward(self, x):
        return self.head(torch.relu(self.conv((x - MEAN) / STD)).flatten(1))


@pytest.mark.parametrize("name", ["pattern.net", "pattern.attribution"])
def test_input_normalisation_in_forward_acts_as_if_folded_into_the_first_layer(name):
    """An elementwise affine map with constants is a layer of one-input neurons, as a
    BatchNorm: PatternNet divides the signal by its scale, PatternAttribution passes it.
    PatternAttribution was divided by the std (214 % off the folded net), PatternNet by
    its square."""
    model = NormalisedInput().double().eval()
    folded = nn.Sequential(nn.Conv2d(3, 6, 3), nn.ReLU(), nn.Flatten(),
                           nn.Linear(6 * 36, 4)).double().eval()
    weight, mean, std = model.conv.weight, MEAN.double(), STD.double()
    with torch.no_grad():
        folded[0].weight.copy_(weight / std)
        folded[0].bias.copy_(model.conv.bias - (weight * mean / std).sum((1, 2, 3)))
        folded[3].load_state_dict(model.head.state_dict())
    data = mean + std.abs() * torch.randn(128, 3, 8, 8, dtype=torch.double)
    x = data[:4]
    torch.testing.assert_close(model(x), folded(x))
    maps = [lx.create_analyzer(name, network, patterns=PatternComputer(network).compute(data))
            .analyze(x) for network in (model, folded)]
    torch.testing.assert_close(maps[0], maps[1])


@pytest.mark.parametrize("name", ["pattern.net", "pattern.attribution"])
def test_resnet_with_batchnorm_residual_adds_and_average_pooling(name):
    model = ResNetStyle(in_channels=1, num_classes=4, width=4).eval()
    data = torch.randn(16, 1, 8, 8)
    analyzer = lx.create_analyzer(name, model)
    analyzer.fit([data], progress=False)
    result = analyzer.analyze(data[:3])
    assert result.shape == (3, 1, 8, 8)
    assert torch.isfinite(result).all() and result.abs().sum() > 0


def test_reverse_project_bottleneck_layers_scales_each_map_to_one():
    model = relu_net()
    x = torch.randn(4, 1, 6, 6)
    patterns = PatternComputer(model).fit([torch.randn(32, 1, 6, 6)], progress=False)
    plain = lx.create_analyzer("pattern.net", model, patterns=patterns).analyze(x)
    projected = lx.create_analyzer("pattern.net", model, patterns=patterns,
                                   reverse_project_bottleneck_layers=True).analyze(x)
    peak = plain.flatten(1).abs().amax(1)
    torch.testing.assert_close(projected, plain / peak[:, None, None, None])


def test_missing_patterns_are_a_clear_error():
    model = relu_net()
    x = torch.randn(2, 1, 6, 6)
    with pytest.raises(ValueError, match="pattern.net needs patterns"):
        lx.create_analyzer("pattern.net", model).analyze(x)
    patterns = PatternComputer(model).fit([x], progress=False)
    del patterns["3"]
    with pytest.raises(lx.NotAnalyzableModelError,
                       match=r"module '3' \(Conv2d\) is a kernel layer without"):
        lx.create_analyzer("pattern.attribution", model, patterns=patterns).analyze(x)
    with pytest.raises(ValueError, match="not a module with a weight"):
        lx.create_analyzer("pattern.net", model, patterns={"net.0": torch.zeros(1)})
    with pytest.raises(ValueError, match="has shape"):
        lx.create_analyzer("pattern.net", model, patterns={"0": torch.zeros(3)})


def test_non_relu_activations_are_refused():
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2))
    patterns = PatternComputer(model).fit([torch.randn(8, 3)], progress=False)
    with pytest.raises(lx.NotAnalyzableModelError, match="tanh"):
        lx.create_analyzer("pattern.net", model, patterns=patterns).analyze(torch.randn(2, 3))


def test_analysis_changes_nothing_in_the_model():
    model = relu_net().train()
    patterns = PatternComputer(model).fit([torch.randn(8, 1, 6, 6)], progress=False)
    before = {name: p.clone() for name, p in model.state_dict().items()}
    with torch.no_grad():
        lx.create_analyzer("pattern.attribution", model,
                           patterns=patterns).analyze(torch.randn(2, 1, 6, 6))
    assert model.training and all(p.grad is None and p.requires_grad
                                  for p in model.parameters())
    for name, p in model.state_dict().items():
        assert torch.equal(p, before[name])


def test_patternnet_does_not_depend_on_a_patterns_scale_in_float32():
    # each layer's signal is scaled by least squares to reproduce its output signal, so a
    # pattern multiplied by any factor gives the same map; at 1e20 the float32 squares of
    # the signal overflowed (the map was all zeros)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 3)).eval()
    x = torch.randn(16, 4)
    patterns = PatternComputer(model, "relu").fit([x], progress=False)
    # (scale_check off: a sample whose hidden units are all 0 has no scale to check against)
    expected = lx.create_analyzer("pattern.net", model, patterns=patterns,
                                  scale_check="off").analyze(x)
    scaled = {**patterns, "2": patterns["2"] * 1e20}
    result = lx.create_analyzer("pattern.net", model, patterns=scaled,
                                scale_check="off").analyze(x)
    assert float(expected.abs().max()) > 0
    torch.testing.assert_close(result, expected, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("when", ["before_the_analyzer", "after_an_analysis"])
def test_weights_changed_since_the_patterns_were_computed_are_a_warning(when):
    # (patterns are normalised with the weights they were computed for: w ⊙ a summed to 3
    # for every neuron, not 1, and the map changed without a word)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 6), nn.ReLU(), nn.Linear(6, 3))
    data = torch.randn(64, 5)
    patterns = PatternComputer(model).fit([data], progress=False)
    analyzer = None
    if when == "after_an_analysis":
        analyzer = lx.create_analyzer("pattern.attribution", model, patterns=patterns)
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # (unchanged weights: no warning)
            analyzer.analyze(data[:4])
    with torch.no_grad():
        model[0].weight.mul_(3.0)
    analyzer = analyzer or lx.create_analyzer("pattern.attribution", model, patterns=patterns)
    with pytest.warns(UserWarning, match=r"the weight of '0' changed since its pattern was "
                                         r"computed"):
        analyzer.analyze(data[:4])
    refitted = lx.create_analyzer("pattern.attribution", model).fit(data, progress=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        refitted.analyze(data[:4])


@pytest.mark.parametrize("how", ["double", "deep_copy", "same_state_dict", "weight_norm_hook"])
def test_weights_moved_or_copied_with_their_values_are_no_change(how):
    # (the check compared storage and version only: each of these warned, the map the method's)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 6), nn.ReLU(), nn.Linear(6, 3))
    if how == "weight_norm_hook":  # (a weight made anew at every forward pass)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            model[0] = nn.utils.weight_norm(model[0])
    data = torch.randn(64, 5)
    patterns = PatternComputer(model).fit([data], progress=False)
    if how == "double":
        model, data = model.double(), data.double()
    elif how == "deep_copy":
        model = copy.deepcopy(model)
    elif how == "same_state_dict":
        model.load_state_dict(copy.deepcopy(model.state_dict()))
    analyzer = lx.create_analyzer("pattern.attribution", model, patterns=patterns)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        analyzer.analyze(data[:4])
        analyzer.analyze(data[4:8])


def test_patternnet_normalises_a_nearest_resize_of_the_input():
    """A nearest resize is a linear operation to PatternNet, normalised so that it
    reproduces its output signal (docs/patterns.md): ``c · Lᵀs`` with ``c = ⟨P L Lᵀs, s⟩ /
    ‖P L Lᵀs‖²``, computed here by hand from the signal ``s`` PatternNet sends into the
    resized input. Taken for a copy, it passed the sum over copies (2-7× the map)."""
    torch.manual_seed(0)
    body = nn.Sequential(nn.Conv2d(2, 4, 3), nn.ReLU(), nn.Flatten(),
                         nn.Linear(4 * 64, 5)).double().eval()

    def resize(t):
        return torch.nn.functional.interpolate(t, scale_factor=2, mode="nearest")

    class Resized(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.body = body

        def forward(self, x):
            return self.body(resize(x))

    model = Resized().eval()
    data = torch.rand(32, 2, 5, 5, dtype=torch.double)
    patterns = PatternComputer(model).compute(data)
    x = data[:3]
    selected = model(x).argmax(1)
    body_patterns = {key.removeprefix("body."): p for key, p in patterns.items()}
    signal = lx.create_analyzer("pattern.net", body, patterns=body_patterns,
                                neuron_selection_mode="index").analyze(resize(x), selected)
    point = x.clone().requires_grad_(True)
    (back,) = torch.autograd.grad(resize(point), point, signal)
    forward = resize(back)
    kept = (signal != 0).double()
    scale = (kept * forward * signal).flatten(1).sum(1) / (kept * forward ** 2).flatten(1).sum(1)
    expected = back * scale.view(-1, 1, 1, 1)
    torch.testing.assert_close(lx.create_analyzer("pattern.net", model, patterns=patterns)
                               .analyze(x), expected)


def test_patternnet_averages_an_input_broadcast_to_several_channels():
    """``x * c`` with ``x`` of one channel and ``c`` of three: each channel's signal divided
    by its scale estimates the one input's signal; their sum counted it thrice (PatternNet
    3× the net with ``c`` folded into its first layer). PatternAttribution sums them."""
    torch.manual_seed(4)
    scale = torch.tensor([0.5, -2.0, 3.0], dtype=torch.double).view(1, 3, 1, 1)

    class Broadcast(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv, self.head = nn.Conv2d(3, 4, 3), nn.Linear(4 * 16, 3)

        def forward(self, x):
            return self.head(torch.relu(self.conv(x * scale)).flatten(1))

    model = Broadcast().double().eval()
    folded = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(),
                           nn.Linear(4 * 16, 3)).double().eval()
    with torch.no_grad():
        folded[0].weight.copy_((model.conv.weight * scale.view(1, 3, 1, 1)).sum(1, True))
        folded[0].bias.copy_(model.conv.bias)
        folded[3].load_state_dict(model.head.state_dict())
    data = torch.randn(64, 1, 6, 6, dtype=torch.double)
    x = data[:4]
    torch.testing.assert_close(model(x), folded(x))
    for name in ("pattern.net", "pattern.attribution"):
        maps = [lx.create_analyzer(name, net, patterns=PatternComputer(net).compute(data))
                .analyze(x) for net in (model, folded)]
        torch.testing.assert_close(maps[0], maps[1])
