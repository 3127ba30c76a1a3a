"""LRP rules against their explicit matrix form, conservation, layer coverage and errors.

Float64 throughout. A layer is its matrix ``M`` (the layer applied to the standard basis)
and bias ``b``; each rule's explicit form is in ``lrp_reference``.
"""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
import torch.nn.functional as F
from lrp_reference import (
    alpha_beta_rule,
    bounded_rule,
    flat_rule,
    w_square_rule,
    z_plus_fast_rule,
    z_rule,
)
from torch import nn
from torch.func import functional_call

import lit_explain as lx
from lit_explain.analyzers.kinds import operation_name
from lit_explain.analyzers.lrp import (
    LRP,
    AlphaBetaRule,
    BoundedRule,
    EpsilonRule,
    FlatRule,
    WSquareRule,
    ZPlusFastRule,
    ZPlusRule,
    ZRule,
)
from lit_explain.analyzers.lrp import rules as rules_module
from lit_explain.analyzers.lrp.rules import (
    SAFE_EPSILON,
    Flow,
    RelativeFlow,
    redistribute,
    safe,
    stacked_parts,
)
from lit_explain.analyzers.operations import OperationRules
from lit_explain.demo.models import ResNetStyle

RULES = [  # (rule, its explicit matrix form; "flat" needs the layer's connectivity)
    (ZRule(), z_rule()),
    (ZRule(bias=False), z_rule(bias=False)),
    (EpsilonRule(0.1), z_rule(epsilon=0.1)),
    (EpsilonRule(0.1, bias=False), z_rule(bias=False, epsilon=0.1)),
    (WSquareRule(), w_square_rule),
    (FlatRule(), "flat"),
    (AlphaBetaRule(2, 1), alpha_beta_rule(2, 1)),
    (AlphaBetaRule(2, 1, bias=False), alpha_beta_rule(2, 1, bias=False)),
    (AlphaBetaRule(1, 0), alpha_beta_rule(1, 0)),
    (AlphaBetaRule(3, 2), alpha_beta_rule(3, 2)),
    (ZPlusRule(), alpha_beta_rule(1, 0, bias=False)),
    (ZPlusFastRule(), z_plus_fast_rule),
    (BoundedRule(-2.0, 3.0), bounded_rule(-2.0, 3.0)),
]

LAYERS = {
    "linear": (lambda: nn.Linear(6, 4), (6,)),
    "linear_on_tokens": (lambda: nn.Linear(6, 4), (3, 6)),
    "conv2d_stride_padding": (lambda: nn.Conv2d(2, 4, 3, stride=2, padding=1), (2, 5, 5)),
    "conv2d_dilation_groups": (lambda: nn.Conv2d(4, 4, 3, padding=2, dilation=2, groups=2),
                               (4, 4, 4)),
    "conv1d": (lambda: nn.Conv1d(2, 3, 3, stride=2, padding=1), (2, 7)),
    "conv3d": (lambda: nn.Conv3d(1, 2, 2, padding=1), (1, 3, 3, 3)),
    "conv_transpose2d": (lambda: nn.ConvTranspose2d(2, 3, 3, stride=2, padding=1), (2, 3, 3)),
    "conv_transpose2d_groups": (lambda: nn.ConvTranspose2d(4, 6, 3, stride=2, groups=2),
                                (4, 3, 3)),
    "batch_norm2d": (lambda: nn.BatchNorm2d(3), (3, 2, 2)),
}


def make_layer(name: str, seed: int = 0) -> tuple[nn.Module, tuple[int, ...]]:
    torch.manual_seed(seed)
    factory, shape = LAYERS[name]
    layer = factory().double().eval()
    with torch.no_grad():
        if isinstance(layer, nn.BatchNorm2d):
            layer.running_mean.uniform_(-0.5, 0.5)
            layer.running_var.uniform_(0.5, 2.0)
            layer.weight.uniform_(-1.5, 1.5)
        layer.bias.uniform_(-0.3, 0.3)
    return layer, shape


def matrix_form(layer: nn.Module, shape: tuple[int, ...]):
    """(M, b, connected) of ``layer`` for one sample of ``shape``."""
    n = torch.Size(shape).numel()
    basis = torch.eye(n, dtype=torch.double).reshape(n, *shape)
    if isinstance(layer, nn.BatchNorm2d):
        scale = layer.weight / torch.sqrt(layer.running_var + layer.eps)
        shift = layer.bias - layer.running_mean * scale
        per_channel = [v.detach()[:, None, None].expand(shape).reshape(-1)
                       for v in (scale, shift)]
        return torch.diag(per_channel[0]), per_channel[1], torch.eye(n, dtype=torch.bool)

    def columns(weight):
        params = {"weight": weight, "bias": torch.zeros_like(layer.bias)}
        return functional_call(layer, params, (basis,)).reshape(n, -1).T.detach()

    bias_only = functional_call(layer, {"weight": torch.zeros_like(layer.weight)}, (basis[:1],))
    connected = columns(torch.ones_like(layer.weight)) != 0
    return columns(layer.weight), bias_only.reshape(-1).detach(), connected


def explicit_map(rule, layer, x):
    M, b, connected = matrix_form(layer, tuple(x.shape[1:]))
    rule = flat_rule(connected) if rule == "flat" else rule
    y = layer(x).detach().reshape(len(x), -1)  # "all": every output's value is its relevance
    return torch.stack([rule(x[i].reshape(-1), M, b, y[i]) for i in range(len(x))]
                       ).reshape(x.shape)


def lrp_map(rule, layer, x, flow):
    if isinstance(layer, nn.BatchNorm2d):
        analyzer = LRP(layer, "all", rule="Z", bn_layer_rule=rule)
    else:
        analyzer = LRP(layer, "all", rule=rule)
    analyzer.flow = flow
    return analyzer.analyze(x)


@pytest.mark.parametrize("layer_name", list(LAYERS))
@pytest.mark.parametrize("rule_index", range(len(RULES)), ids=[type(r).__name__ + str(i)
                                                            for i, (r, _) in enumerate(RULES)])
def test_rule_matches_its_matrix_form(layer_name, rule_index):
    rule, explicit = RULES[rule_index]
    layer, shape = make_layer(layer_name, rule_index)
    generator = torch.Generator().manual_seed(rule_index)
    x = torch.rand(3, *shape, generator=generator, dtype=torch.double) * 2 - 1
    flows = [Flow(), RelativeFlow()] if rule.proportional else [Flow()]
    for inputs in (x, x.clamp(min=0)):  # both signs, and after a ReLU (the fast path)
        if isinstance(rule, ZPlusFastRule) and inputs is x:
            continue  # defined for non-negative inputs
        expected = explicit_map(explicit, layer, inputs)
        for flow in flows:
            result = lrp_map(rule, layer, inputs, flow)
            torch.testing.assert_close(result, expected, rtol=1e-9, atol=1e-12)


def bias_free_net(average: bool) -> nn.Module:
    torch.manual_seed(3)
    pool = nn.AvgPool2d(2) if average else nn.MaxPool2d(2)
    net = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1, bias=False), nn.ReLU(), nn.MaxPool2d(2),
                        nn.Conv2d(4, 6, 3, bias=False), nn.ReLU(), pool,
                        nn.Flatten(), nn.Linear(6, 8, bias=False), nn.ReLU(),
                        nn.Linear(8, 3, bias=False))
    with torch.no_grad():
        net[-1].weight[0].abs_()  # one logit ≥ 0, for Deep Taylor
    return net.double().eval()


@pytest.mark.parametrize("name, kwargs", [
    ("lrp.z", {}), ("lrp.epsilon", {"epsilon": 1e-12}), ("lrp.alpha_1_beta_0", {}),
    ("lrp.z_plus", {}), ("lrp.w_square", {}), ("lrp.flat", {}), ("deep_taylor", {}),
])
def test_relevance_is_conserved_where_the_rule_promises_it(name, kwargs):
    """Bias-free ReLU nets: the input map sums to the explained logit. (w² and flat send
    relevance to inactive units too, which an average pool of zeros cannot pass on, so
    they are checked with max-pooling only.)"""
    net = bias_free_net(average=name not in ("lrp.w_square", "lrp.flat"))
    x = torch.rand(4, 1, 8, 8, generator=torch.Generator().manual_seed(0), dtype=torch.double)
    relevance = lx.create_analyzer(name, net, **kwargs).analyze(x).sum(dim=(1, 2, 3))
    logits = net(x).max(dim=1).values.detach()
    if name == "deep_taylor":
        logits = logits.clamp(min=0)
    assert (logits != 0).any()
    torch.testing.assert_close(relevance, logits, rtol=1e-7, atol=1e-12)


def resnet_with_statistics() -> nn.Module:
    torch.manual_seed(0)
    model = ResNetStyle(width=8).double().eval()
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.uniform_(-0.5, 0.5)
                module.running_var.uniform_(0.5, 2.0)
                module.weight.uniform_(0.5, 1.5)
                module.bias.uniform_(-0.2, 0.2)
    return model


@pytest.mark.parametrize("flow", [Flow(), RelativeFlow()], ids=["relevance", "relative"])
def test_lrp_z_is_input_times_gradient_on_a_resnet(flow):
    """BatchNorm, F.relu, ``out += identity`` and adaptive pooling, no per-model code."""
    model = resnet_with_statistics()
    x = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(1),
                    dtype=torch.double)
    analyzer = lx.create_analyzer("lrp.z", model)
    analyzer.flow = flow
    expected = lx.create_analyzer("input_t_gradient", model).analyze(x)
    torch.testing.assert_close(analyzer.analyze(x), expected, rtol=1e-8, atol=1e-14)


class Zoo(nn.Module):
    """Every supported layer kind, functional and in-place calls included."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 6, 3, stride=1, padding=2, dilation=2, groups=3)
        self.bn = nn.BatchNorm2d(6)
        self.pool = nn.AvgPool2d(2)
        self.side = nn.Conv2d(6, 6, 1)
        self.up = nn.ConvTranspose2d(12, 4, 2, stride=2)
        self.gap = nn.AdaptiveAvgPool2d(2)
        self.conv1d = nn.Conv1d(4, 4, 3, padding=1)
        self.drop = nn.Dropout(0.3)
        self.fc = nn.Linear(16, 8)
        self.bn1d = nn.BatchNorm1d(8)
        self.out = nn.Linear(8, 5)

    def forward(self, x):
        x = F.relu(self.bn(self.conv(x)))
        x = self.pool(x)
        x = torch.cat([x, torch.relu(self.side(x))], dim=1)
        x = F.max_pool2d(x, 2)
        x = self.up(x).relu_()
        x = self.gap(x).view(len(x), 4, 4)
        x = x + self.conv1d(x)
        x = torch.add(x, 0.1)
        x = self.drop(x.flatten(1))
        x = F.relu(self.bn1d(self.fc(x)), inplace=True)
        return self.out(x.reshape(len(x), -1))


def zoo() -> nn.Module:
    torch.manual_seed(4)
    model = Zoo().double().eval()
    with torch.no_grad():
        for bn in (model.bn, model.bn1d):
            bn.running_mean.uniform_(-0.3, 0.3)
            bn.running_var.uniform_(0.5, 2.0)
    return model


@pytest.mark.parametrize("name", ["lrp.z", "lrp.epsilon", "lrp.alpha_2_beta_1",
                                  "lrp.sequential_preset_a", "lrp.z_plus", "lrp.z_plus_fast"])
def test_both_flows_agree_on_every_layer_kind(name):
    """Relevance carried as itself and per unit of input: two paths, one answer."""
    model = zoo()
    x = torch.randn(3, 3, 16, 16, generator=torch.Generator().manual_seed(2),
                    dtype=torch.double)
    analyzer = lx.create_analyzer(name, model, neuron_selection_mode="all")
    assert analyzer.flow.relative
    relative = analyzer.analyze(x)
    analyzer.flow = Flow()
    torch.testing.assert_close(relative, analyzer.analyze(x), rtol=1e-7, atol=1e-12)
    assert relative.abs().sum() > 0


def test_lrp_z_is_input_times_gradient_on_every_layer_kind():
    model = zoo()
    x = torch.randn(3, 3, 16, 16, generator=torch.Generator().manual_seed(3),
                    dtype=torch.double)
    analyzer = lx.create_analyzer("lrp.z", model)
    analyzer.flow = Flow()
    expected = lx.create_analyzer("input_t_gradient", model).analyze(x)
    torch.testing.assert_close(analyzer.analyze(x), expected, rtol=1e-8, atol=1e-14)


class PassedThrough(nn.Module):
    """Scores of which some are input features themselves (a wide-and-deep model's wide
    part): reached from the input through preprocessing, selection and concatenation only,
    before or after a linear head's scores."""

    def __init__(self, features_first: bool) -> None:
        super().__init__()
        self.head = nn.Linear(4, 3, bias=False)
        self.features_first = features_first

    def forward(self, x):
        features = ((x - 0.5) * 2.0)[:, :2]
        parts = [features, self.head(x)] if self.features_first else [self.head(x), features]
        return torch.cat(parts, dim=1)


@pytest.mark.parametrize("features_first", [False, True])
def test_scores_that_are_input_features_get_their_own_value(features_first):
    """LRP-0 on a linear model is Input×Gradient of the (preprocessed) input, for a score
    that is a feature itself too: relevance per unit crosses back into relevance at the
    output (a map of 1.0 there), and a concatenation's later input-derived part crosses
    where it meets the head's scores (it crossed nowhere)."""
    torch.manual_seed(0)
    model = PassedThrough(features_first).double().eval()
    x = torch.randn(3, 4, dtype=torch.double)
    analyzer = lx.create_analyzer("lrp.z", model, neuron_selection_mode="all")
    features = (x - 0.5) * 2.0 * torch.tensor([1.0, 1.0, 0.0, 0.0], dtype=x.dtype)
    expected = model.head.weight.sum(0) * x + features
    for _ in range(2):  # the analysis and its replay
        torch.testing.assert_close(analyzer.analyze(x), expected)
    assert analyzer.replayed


@pytest.mark.parametrize("features_first", [False, True])
@pytest.mark.parametrize("name", ["lrp.epsilon", "lrp.alpha_1_beta_0",
                                  "lrp.sequential_preset_a", "deep_taylor"])
def test_scores_that_are_input_features_in_both_flows(name, features_first):
    """The same as relevance carried as itself (which needs no boundary)."""
    torch.manual_seed(0)
    model = PassedThrough(features_first).double().eval()
    x = torch.randn(3, 4, dtype=torch.double)
    analyzer = lx.create_analyzer(name, model, neuron_selection_mode="index")
    assert analyzer.flow.relative
    relative = [analyzer.analyze(x, i) for i in range(5)]
    analyzer.flow = Flow()
    for i, expected in enumerate(relative):
        torch.testing.assert_close(expected, analyzer.analyze(x, i))


def test_a_model_that_only_reshapes_its_input_is_explained_by_its_input():
    x = torch.randn(2, 3, 2, dtype=torch.double)
    for name in ["lrp.z", "lrp.epsilon", "deep_taylor"]:
        analyzer = lx.create_analyzer(name, nn.Flatten(), neuron_selection_mode="index")
        selected = torch.zeros_like(x).flatten(1)
        selected[:, 1] = 1.0
        expected = x * selected.view_as(x)
        if name == "deep_taylor":
            expected = expected.clamp(min=0)
        torch.testing.assert_close(analyzer.analyze(x, 1), expected)


class AddsIntoItsInput(nn.Module):
    """A residual added in place into a copy of the input, or into a view of its padding."""

    def __init__(self, into_view: bool) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.into_view = into_view
        self.pre, self.conv = nn.Conv1d(3, 3, 1, bias=False), nn.Conv1d(3, 4, 3, bias=False)
        self.head = nn.Linear(40, 2, bias=False)

    def forward(self, x):
        if self.into_view:
            h = F.pad(x, (1, 1))
            h[..., :1].add_(x[..., -1:])
        else:
            h = x.clone()
            h += torch.relu(self.pre(x))
            h = F.pad(h, (1, 1))
        return self.head(torch.relu(self.conv(h)).flatten(1))


def test_an_add_in_place_into_the_input_is_followed_or_refused():
    """It ran on the boundary's copy: the values changed, autograd saw no add (LRP-0 43 %
    off Input×Gradient, the map summing to 0.26 of a logit of 0.63)."""
    x = torch.randn(2, 3, 10, dtype=torch.double)
    model = AddsIntoItsInput(False).double().eval()
    analyzer = lx.create_analyzer("lrp.z", model)
    expected = lx.create_analyzer("input_t_gradient", model).analyze(x)
    for _ in range(2):  # the analysis and its replay
        torch.testing.assert_close(analyzer.analyze(x), expected)
    with pytest.raises(lx.NotAnalyzableModelError, match="in place into a view"):
        lx.create_analyzer("lrp.z", AddsIntoItsInput(True).double().eval()).analyze(x)


def test_non_proportional_rules_run_with_relevance_as_itself():
    model = zoo()
    assert not lx.create_analyzer("lrp.sequential_preset_a_flat", model).flow.relative
    assert not lx.create_analyzer("deep_taylor.bounded", model, low=-1, high=1).flow.relative
    x = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(5),
                    dtype=torch.double)
    assert torch.isfinite(lx.create_analyzer("lrp.flat", model).analyze(x)).all()


class Quotient(nn.Module):
    """A quotient of two activations: no LRP rule (products have the uniform rule)."""

    def __init__(self) -> None:
        super().__init__()
        self.q, self.k = nn.Linear(4, 4), nn.Linear(4, 4)

    def forward(self, x):
        return (self.q(x) / self.k(x)).sum(-1)


class Recurrent(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lstm, self.head = nn.LSTM(4, 3, batch_first=True), nn.Linear(3, 2)

    def forward(self, x):
        return self.head(self.lstm(x[:, None])[0][:, -1])


class Spectral(nn.Module):
    """Features mixed through complex values: FNet's ``|fft(h)|``, or a rotation by complex
    phases (a product with a complex constant) and its real part."""

    def __init__(self, how: str) -> None:
        super().__init__()
        self.how, self.fc, self.head = how, nn.Linear(4, 4), nn.Linear(4, 2)
        self.register_buffer("phases", torch.exp(1j * torch.arange(4.0)))

    def forward(self, x):
        if self.how == "magnitude":
            return self.head(torch.relu(self.fc(x)) + torch.fft.fft(self.fc(x)).abs())
        return self.head(torch.relu((self.fc(x) * self.phases).real))


@pytest.mark.parametrize("block, where", [
    (Recurrent(), "'lstm' (LSTM)"),
    (nn.Sequential(nn.Linear(4, 4), nn.Softplus(), nn.Linear(4, 2), nn.LogSoftmax(1),
                   nn.Linear(2, 2)), "'3' (LogSoftmax)"),
    (Quotient(), "div in the model's own forward"),
    # complex values: the Fourier transform is refused, not passed with its gradient (an
    # FNet's map was Input×Gradient, an |STFT| front end's the bare gradient)
    (Spectral("magnitude"), "fft_fft in the model's own forward"),
    (Spectral("rotation"), "mul in the model's own forward makes complex values"),
])
@pytest.mark.parametrize("name", ["lrp.epsilon", "lrp.alpha_2_beta_1", "lrp.flat",
                                  "deep_taylor", "guided_backprop", "deep_lift"])
def test_an_operation_without_a_rule_is_an_error_naming_it(block, where, name):
    if name == "guided_backprop" and "LogSoftmax" in where:
        where = "softplus"  # (ReLU only: no rule for the activation before)
    with pytest.raises(lx.NotAnalyzableModelError, match=where.replace("(", r"\(")
                       .replace(")", r"\)")):
        lx.create_analyzer(name, block).analyze(torch.randn(2, 4))


def test_a_tensor_property_is_named_as_written():
    assert operation_name(torch.Tensor.real.__get__) == "torch.Tensor.real"


class Chunked(nn.Module):
    """A network run chunk by chunk (a hand-written data parallel): its layers are called
    once per chunk."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x):
        return torch.cat([self.net(chunk) for chunk in x.chunk(2)])


def reparametrized(net: nn.Sequential, how: str) -> nn.Sequential:
    """``net`` with its linear layers' weights made anew at every call."""
    for layer in net:
        if isinstance(layer, nn.Linear):
            if how == "weight_norm":
                torch.nn.utils.parametrizations.weight_norm(layer)
            elif how == "spectral_norm":
                torch.nn.utils.parametrizations.spectral_norm(layer)
            elif how == "weight_norm hook":
                torch.nn.utils.weight_norm(layer)
    return net


@pytest.mark.parametrize("how", ["plain", "weight_norm", "spectral_norm", "weight_norm hook"])
@pytest.mark.parametrize(("name", "kwargs"), [
    ("lrp.sequential_preset_b_flat_until_idx", {"until_layer_idx": 1}),
    ("lrp", {"rule": "Epsilon", "until_layer_idx": 1, "until_layer_rule": "Flat"}),
    ("lrp", {"rule": ["Flat", "Alpha1Beta0", "Epsilon"]}),
])
def test_a_layer_called_again_keeps_its_number(name, kwargs, how):
    """Layers numbered by call gave the second chunk's samples other rules (maps 1–16× off
    theirs alone), and a rule list was too short; so did layers whose weight is made anew
    at every call, numbered by it."""
    torch.manual_seed(0)
    net = reparametrized(nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 8), nn.ReLU(),
                                       nn.Linear(8, 3)), how).double().eval()
    x = torch.randn(4, 6, dtype=torch.double)
    expected = lx.create_analyzer(name, net, **kwargs).analyze(x)
    torch.testing.assert_close(lx.create_analyzer(name, Chunked(net), **kwargs).analyze(x),
                               expected)


class Padded(nn.Module):
    """A bias-free CNN whose first convolution is zero-padded by the convolution itself or
    by ``F.pad`` before it: symmetric ("same"), or causal (1-D, on the left only, which a
    convolution padded on both sides and cut at the end computes)."""

    def __init__(self, how: str) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.how, self.causal = how, how.startswith("causal")
        conv = nn.Conv1d if self.causal else nn.Conv2d
        self.first = conv(2, 4, 3, padding=2 if how == "causal own" else int(how == "own"),
                          bias=False)
        self.second = conv(4, 3, 3, bias=False)

    def forward(self, x):
        if self.how == "F.pad":
            x = F.pad(x, (1, 1, 1, 1))
        elif self.how == "causal F.pad":
            x = F.pad(x, (2, 0))
        h = self.first(x)
        h = h[..., :-2] if self.how == "causal own" else h
        return self.second(torch.relu(h)).flatten(2).sum(-1)


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize(("name", "kwargs"), [
    ("lrp.w_square", {}), ("lrp.flat", {}), ("deep_taylor.bounded", {"low": -3, "high": 3}),
    ("lrp.sequential_preset_a_flat", {})])
def test_a_zero_padding_written_before_a_layer_is_no_input(name, kwargs, causal):
    """Rules that spread relevance by the weights alone gave the padding written with F.pad
    relevance, which its backward dropped (maps 25-46 % off, sums 16-45 % short)."""
    written, own = ("causal F.pad", "causal own") if causal else ("F.pad", "own")
    x = torch.randn(2, 2, 9, dtype=torch.double) if causal else torch.randn(
        2, 2, 5, 5, dtype=torch.double)
    model, reference = Padded(written).double().eval(), Padded(own).double().eval()
    torch.testing.assert_close(model(x), reference(x))
    expected = lx.create_analyzer(name, reference, **kwargs).analyze(x)
    analyzer = lx.create_analyzer(name, model, **kwargs)
    for _ in range(2):  # the analysis and its replay
        torch.testing.assert_close(analyzer.analyze(x), expected)


class PaddedByHand(nn.Module):
    """A 1-D CNN padded circularly by F.pad, or by hand: zeros written over with the values
    from the other end (no padding left)."""

    def __init__(self, by_hand: bool) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.by_hand = by_hand
        self.conv, self.head = nn.Conv1d(3, 4, 3, bias=False), nn.Linear(40, 2, bias=False)

    def forward(self, x):
        if self.by_hand:
            p = F.pad(x, (1, 1))
            p[..., 0], p[..., -1] = x[..., -1], x[..., 0]
        else:
            p = F.pad(x, (1, 1), mode="circular")
        return self.head(torch.relu(self.conv(p)).flatten(1))


@pytest.mark.parametrize("name", ["lrp.w_square", "lrp.flat"])
def test_a_padding_written_over_by_the_model_is_its_values(name):
    x = torch.randn(3, 3, 10, dtype=torch.double)
    torch.testing.assert_close(
        lx.create_analyzer(name, PaddedByHand(True).double().eval()).analyze(x),
        lx.create_analyzer(name, PaddedByHand(False).double().eval()).analyze(x))


@pytest.mark.parametrize("name", ["lrp.w_square", "lrp.flat"])
def test_a_padding_changed_in_place_elementwise_stays_a_padding(name):
    """An in-place ReLU after the padding keeps it a constant (it was given relevance: maps
    19-33 % off the same model with the ReLU before the padding)."""
    torch.manual_seed(0)
    conv, head = nn.Conv1d(2, 3, 3, bias=False), nn.Linear(24, 2, bias=False)
    before = nn.Sequential(nn.ReLU(), nn.ConstantPad1d(1, 0.0), conv, nn.Flatten(), head)
    after = nn.Sequential(nn.ConstantPad1d(1, 0.0), nn.ReLU(inplace=True), conv, nn.Flatten(),
                          head)
    x = torch.randn(3, 2, 8, dtype=torch.double)
    torch.testing.assert_close(lx.create_analyzer(name, after.double().eval()).analyze(x),
                               lx.create_analyzer(name, before.double().eval()).analyze(x))


@pytest.mark.parametrize("name", ["lrp.w_square", "lrp.flat"])
def test_values_added_into_a_padding_in_place_end_it(name):
    """``p[..., :1].add_(x[..., -1:])`` (wrap-around padding by hand) left it a padding
    (10-14 % off the same function padded circularly)."""
    torch.manual_seed(0)
    conv, head = nn.Conv1d(3, 4, 3, bias=False), nn.Linear(40, 2, bias=False)

    class ByHand(nn.Module):
        def forward(self, x):
            p = F.pad(x, (1, 1))
            p[..., :1].add_(x[..., -1:])
            p[..., -1:].add_(x[..., :1])
            return head(torch.relu(conv(p)).flatten(1))

    circular = nn.Sequential(nn.CircularPad1d(1), conv, nn.ReLU(), nn.Flatten(), head)
    x = torch.randn(3, 3, 10)
    torch.testing.assert_close(lx.create_analyzer(name, ByHand().eval()).analyze(x),
                               lx.create_analyzer(name, circular.eval()).analyze(x))


class PaddedThenChanged(nn.Module):
    """A CNN whose input is padded, then changed by an out-of-place operation (an
    elementwise one with constants, a copy, a reshape), or changed before the padding (with
    the padding value that gives the same tensor)."""

    def __init__(self, how: str) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.how = how
        self.first, self.second = nn.Conv2d(3, 4, 3), nn.Conv2d(4, 5, 3)
        self.head = nn.Linear(20, 6)
        self.register_buffer("mean", torch.tensor([0.5, 0.5, 0.5]).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(0.25))
        self.border = F.pad(torch.zeros(1, 1, 4, 4), [1, 1, 1, 1], value=1.0).bool()

    def forward(self, x):
        pad = [1, 1, 1, 1]
        x = {"normalised, padded": lambda: F.pad((x - 0.5) / 0.25, pad, value=-2.0),
             "padded, normalised": lambda: (F.pad(x, pad) - 0.5) / 0.25,
             "padded, normalised by buffers": lambda: (F.pad(x, pad) - self.mean) / self.std,
             "padded, filled": lambda: torch.where(self.border, -2.0,
                                                   F.pad((x - 0.5) / 0.25, pad, value=3.0)),
             "padded twice": lambda: F.pad(F.pad((x - 0.5) / 0.25, [1, 1, 0, 0], value=-2.0),
                                           [0, 0, 1, 1], value=-2.0),
             "padded, cloned": lambda: F.pad((x - 0.5) / 0.25, pad, value=-2.0).clone(),
             "padded, channels last": lambda: F.pad((x - 0.5) / 0.25, pad, value=-2.0).contiguous(
                 memory_format=torch.channels_last),
             "padded, permuted twice": lambda: F.pad((x - 0.5) / 0.25, pad, value=-2.0).permute(
                 0, 2, 3, 1).permute(0, 3, 1, 2)}[self.how]()
        h = torch.relu(self.second(torch.relu(self.first(x))))
        return self.head(h.flatten(1))


@pytest.mark.parametrize("how", ["padded, normalised", "padded, cloned",
                                 "padded, channels last", "padded, permuted twice",
                                 "padded, normalised by buffers", "padded, filled",
                                 "padded twice"])
@pytest.mark.parametrize(("name", "kwargs"), [
    ("lrp.w_square", {}), ("lrp.flat", {}), ("deep_taylor.bounded", {"low": -2, "high": 2}),
    ("lrp.z", {"input_layer_rule": (-2.0, 2.0)})])
def test_a_padding_changed_out_of_place_stays_a_padding(name, kwargs, how):
    """The padding is carried through out-of-place operations that keep it a constant (it was
    forgotten after any: maps 17-47 % off, sums 16-21 % short of the logit)."""
    x = torch.rand(2, 3, 4, 4, dtype=torch.double)
    model = PaddedThenChanged(how).double().eval()
    reference = PaddedThenChanged("normalised, padded").double().eval()
    torch.testing.assert_close(model(x), reference(x))
    expected = lx.create_analyzer(name, reference, **kwargs).analyze(x)
    analyzer = lx.create_analyzer(name, model, **kwargs)
    for _ in range(2):  # the analysis and its replay
        torch.testing.assert_close(analyzer.analyze(x), expected)


@pytest.mark.parametrize("name", ["lrp.w_square", "lrp.flat"])
def test_a_view_of_a_padding_written_through_its_base_is_its_values(name):
    """A view of the padded tensor carried the padding on after the model wrote the input's
    values into its base (maps 38-74 % off the same function padded circularly)."""
    torch.manual_seed(0)
    conv, head = nn.Conv1d(3, 4, 3, bias=False), nn.Linear(32, 2, bias=False)

    class ByHand(nn.Module):
        def forward(self, x):
            p = F.pad(x, (2, 0))
            q = p.view(p.shape)
            p[..., :2] = x[..., -2:]
            return head(torch.relu(conv(q)).flatten(1))

    circular = nn.Sequential(nn.CircularPad1d((2, 0)), conv, nn.ReLU(), nn.Flatten(), head)
    x = torch.randn(3, 3, 8)
    torch.testing.assert_close(lx.create_analyzer(name, ByHand()).analyze(x),
                               lx.create_analyzer(name, circular).analyze(x))


class PaddedHalves(nn.Module):
    """Four channels padded at once, their halves (views or chunks) convolved apart; the
    first half's padding written over with its values from the other end (circular by
    hand), or its interior scaled in place; or each half padded on its own."""

    def __init__(self, how: str) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.how = how
        self.conv_a, self.conv_b = nn.Conv1d(2, 3, 3, bias=False), nn.Conv1d(2, 3, 3, bias=False)
        self.head = nn.Linear(48, 2, bias=False)
        self.left = torch.arange(10) == 0

    def forward(self, x):
        if self.how == "apart":
            a, b = F.pad(x[:, :2], (1, 1), mode="circular"), F.pad(x[:, 2:], (1, 1))
        elif self.how == "constant written":  # (the reference pads with that constant)
            a = F.pad(x[:, :2], (1, 1), mode="circular")
            b = F.pad(F.pad(x[:, 2:], (1, 0), value=1.0), (0, 1))
        elif self.how == "constant filled in":
            a = F.pad(x[:, :2], (1, 1), mode="circular")
            b = F.pad(x[:, 2:], (1, 1))
            b[..., 0] = 1.0
        elif self.how == "constant filled in place":
            a = F.pad(x[:, :2], (1, 1), mode="circular")
            b = F.pad(x[:, 2:], (1, 1)).masked_fill_(self.left, 1.0)
        elif self.how == "indexed":
            # (the wrap-around by an advanced index; b's rows unbound and stacked again)
            a = F.pad(x[:, :2], (1, 1))
            a[..., [0, -1]] = x[:, :2][..., [-1, 0]]
            b = torch.stack(F.pad(x[:, 2:], (1, 1)).unbind(1), 1)
        elif self.how == "chunks":
            a, b = F.pad(x, (1, 1)).chunk(2, dim=1)
            a = F.pad(x[:, :2], (1, 1), mode="circular")
        else:
            p = F.pad(x, (1, 1))
            a, b = p[:, :2], p[:, 2:]
            if self.how == "wrapped":
                a[..., 0], a[..., -1] = x[:, :2, -1], x[:, :2, 0]
            else:  # (the interior scaled by one in place: a write where no padding is)
                p[..., 1:-1] *= 1.0
                a = F.pad(x[:, :2], (1, 1), mode="circular")
        h = torch.relu(torch.cat([self.conv_a(a), self.conv_b(b)], dim=1))
        return self.head(h.flatten(1))


@pytest.mark.parametrize(("how", "twin"), [
    ("wrapped", "apart"), ("chunks", "apart"), ("interior scaled", "apart"),
    ("indexed", "apart"), ("constant filled in", "constant written"),
    ("constant filled in place", "constant written")])
@pytest.mark.parametrize("name", ["lrp.w_square", "lrp.flat"])
def test_a_write_into_padded_memory_changes_only_what_it_reaches(name, how, twin):
    """A write into one view of a padded tensor ended the padding of the other (35 % off);
    chunks lost it (46 %); a write into the interior ended it whole (44 %); an advanced
    index's write reached the whole tensor (7 %); a constant written into the padding made
    it input (4-7 %); parts of a split joined again lost it (10 %)."""
    x = torch.randn(3, 4, 8, dtype=torch.double)
    model, reference = PaddedHalves(how).double(), PaddedHalves(twin).double()
    torch.testing.assert_close(model(x), reference(x))
    expected = lx.create_analyzer(name, reference).analyze(x)
    analyzer = lx.create_analyzer(name, model)
    for _ in range(2):  # the analysis and its replay
        torch.testing.assert_close(analyzer.analyze(x), expected)


@pytest.mark.parametrize("name", ["lrp.w_square", "lrp.flat"])
def test_a_constant_written_where_the_input_says_is_not_replayed_from_another_input(name):
    """Positions of the padding chosen by the input's values (an index made of them): a
    replay kept the first input's (maps 62-68 % off the second input's)."""
    torch.manual_seed(0)
    conv, head = nn.Conv1d(1, 3, 3, bias=False), nn.Linear(24, 2, bias=False)

    class ByValue(nn.Module):
        def forward(self, x):
            p = F.pad(x, (1, 1))
            p[torch.arange(len(x)), 0, x[:, 0].argmax(-1) + 1] = 0.0
            return head(torch.relu(conv(p)).flatten(1))

    model, analyzer = ByValue(), lx.create_analyzer(name, ByValue())
    for seed in (1, 2):  # (another input: other positions)
        x = torch.randn(3, 1, 8, generator=torch.Generator().manual_seed(seed))
        torch.testing.assert_close(analyzer.analyze(x), lx.create_analyzer(name, model)
                                   .analyze(x))


class FilledAfterPadding(nn.Module):
    """A padded sequence whose positions are filled with 0 by a mask: one of the input's
    values (replays must not keep the first input's positions), or a buffer (they may);
    in place, out of place, with keywords; or an activation of the padded tensor."""

    def __init__(self, how: str) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.how = how
        self.conv, self.head = nn.Conv1d(1, 3, 3, bias=False), nn.Linear(24, 2, bias=False)
        self.register_buffer("fixed", torch.arange(10) % 3 == 0)

    def forward(self, x):
        p = F.pad(x, (1, 1))
        by_values = F.pad(x.detach() < 0, (1, 1))  # (a mask that carries no gradient)
        p = {"input's mask": lambda: p.masked_fill(by_values, 0.0),
             "input's mask, where": lambda: torch.where(by_values, 0.0, p),
             "input's mask, in place": lambda: p.masked_fill_(by_values, 0.0),
             "buffer mask, in place": lambda: p.masked_fill_(mask=self.fixed, value=0.0),
             "relu": lambda: torch.relu(p),
             "an index computed elsewhere": lambda: F.pad(x[..., torch.arange(8)], (1, 1))
             }[self.how]()
        return self.head(torch.relu(self.conv(p)).flatten(1))


@pytest.mark.parametrize("how", ["input's mask", "input's mask, where",
                                 "input's mask, in place", "buffer mask, in place", "relu",
                                 "an index computed elsewhere"])
@pytest.mark.parametrize("name", ["lrp.w_square", "lrp.flat"])
def test_a_padding_filled_by_a_mask_is_replayed_only_where_the_mask_is_fixed(name, how):
    """masked_fill_ with keywords raised a bare IndexError in any model with a padding; a
    fill by a mask of the input's values replayed the first input's positions (99 % off); a
    fill by a buffer's mask lost its replay; a ReLU after the padding lost it (6-14 %)."""
    model = FilledAfterPadding(how).double()
    analyzer = lx.create_analyzer(name, model)
    for seed in (1, 2, 3):
        x = torch.randn(3, 1, 8, dtype=torch.double, generator=torch.Generator().manual_seed(seed))
        torch.testing.assert_close(analyzer.analyze(x), lx.create_analyzer(name, model)
                                   .analyze(x))
    assert analyzer.replayed == (not how.startswith("input's"))


@pytest.mark.parametrize("value", [1.5, -1.0])
def test_bounded_rule_gives_a_padding_of_any_value_nothing(value):
    """The bounds at a padding are its value (z^B gave a non-zero padding relevance, which
    its backward dropped: maps summed 2-18 % short of the logit)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.ConstantPad1d(1, value), nn.Conv1d(2, 3, 3, bias=False), nn.ReLU(),
                          nn.Flatten(), nn.Linear(24, 2, bias=False)).double().eval()
    x = torch.rand(4, 2, 8, dtype=torch.double) * 2 - 1
    analyzer = lx.create_analyzer("lrp.w_square", model, neuron_selection_mode="index",
                                  input_layer_rule=(-3.0, 3.0))
    for _ in range(2):  # the analysis and its replay
        relevance = analyzer.analyze(x, 0)
        torch.testing.assert_close(relevance.sum((1, 2)), model(x)[:, 0].detach())


class TiedBlock(nn.Module):
    def __init__(self, weight: torch.Tensor) -> None:
        super().__init__()
        self.weight = weight  # (a plain tensor, held by each block)

    def forward(self, h):
        return torch.relu(F.linear(h, self.weight))


class Merged(nn.Module):
    """Two dense layers of one shape whose weights forward merges (LoRA), or a weight held
    as a plain tensor by two blocks (tied)."""

    def __init__(self, how: str) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.how = how
        self.w1 = nn.Parameter(torch.randn(8, 8) / 3)
        self.w2 = nn.Parameter(torch.randn(8, 8) / 3)
        self.a, self.b = nn.Parameter(torch.randn(8, 2) / 3), nn.Parameter(torch.randn(2, 8) / 3)
        self.out = nn.Linear(8, 3, bias=False)
        tied = torch.randn(8, 8, requires_grad=True)
        self.blocks = nn.ModuleList([TiedBlock(tied), TiedBlock(tied)])

    def forward(self, x):
        if self.how == "merged":
            h = torch.relu(F.linear(x, self.w1 + self.a @ self.b))
            h = torch.relu(F.linear(h, self.w2 + self.a @ self.b))
        else:
            h = self.blocks[1](self.blocks[0](x))
        return self.out(h)


def test_layers_with_merged_or_tied_weights_are_numbered_by_layer():
    """Two merged weights of one shape got one number (maps 13-297 % off); a plain-tensor
    weight tied between two calls got two where an nn.Parameter gets one."""
    for how, expected in (("merged", [0, 1, 2]), ("tied", [0, 0, 1])):
        assert layer_numbers(Merged(how).eval(), torch.randn(4, 8)) == expected, how


class Recurrent(nn.Module):
    """A weight-normalised recurrent weight applied in a loop, or weights a parent makes and a
    helper module applies (each layer as its stored-weight twin numbers it)."""

    def __init__(self, how: str) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.how = how
        self.step = torch.nn.utils.parametrizations.weight_norm(nn.Linear(8, 8, bias=False))
        self.w = nn.ParameterList(nn.Parameter(torch.randn(8, 8) / 3) for _ in range(2))
        self.apply_weight, self.out = LinearHelper(), nn.Linear(8, 3, bias=False)

    def forward(self, x):
        h = x
        if self.how == "loop":
            for _ in range(3):
                h = torch.relu(F.linear(h, self.step.weight))
        else:
            for w in self.w:
                h = torch.relu(self.apply_weight(h, w * 1.0))  # (made here, applied there)
        return self.out(h)


class LinearHelper(nn.Module):
    def forward(self, h, weight):
        return F.linear(h, weight)


def test_made_weights_are_numbered_by_their_values():
    """A weight made again in a loop got a new number each time (15-16 % off), weights a
    parent made and a helper applied one number for all (37 % off)."""
    assert layer_numbers(Recurrent("loop").eval(), torch.randn(4, 8)) == [0, 0, 0, 1]
    assert layer_numbers(Recurrent("helper").eval(), torch.randn(4, 8)) == [0, 1, 2]


class Adapted(nn.Module):
    """Two deep-copied weight-normalised layers, or two LoRA adapters on one base weight
    with B initialised to zero: equal weights, other layers."""

    def __init__(self, how: str) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.how = how
        layer = torch.nn.utils.parametrizations.weight_norm(nn.Linear(8, 8, bias=False))
        self.layers = nn.ModuleList([layer, copy.deepcopy(layer)])
        self.base = nn.Parameter(torch.randn(8, 8) / 3)
        self.a = nn.ParameterList(nn.Parameter(torch.randn(2, 8)) for _ in range(2))
        self.b = nn.ParameterList(nn.Parameter(torch.zeros(8, 2)) for _ in range(2))
        self.out = nn.Linear(8, 3, bias=False)

    def forward(self, x):
        for i in range(2):
            weight = self.layers[i].weight if self.how == "copies" else \
                self.base + self.b[i] @ self.a[i]
            x = torch.relu(F.linear(x, weight))
        return self.out(x)


def test_equal_made_weights_of_other_layers_are_other_layers():
    """Numbered by their values, they got one number (a rule list 75 % off)."""
    for how in ("copies", "lora"):
        assert layer_numbers(Adapted(how).eval(), torch.randn(4, 8)) == [0, 1, 2], how


class FusedMade(nn.Module):
    """One weight-normalised fused projection cut into three layers."""

    def __init__(self) -> None:
        super().__init__()
        self.fused = torch.nn.utils.parametrizations.weight_norm(nn.Linear(8, 24, bias=False))
        self.out = nn.Linear(8, 3, bias=False)

    def forward(self, x):
        for part in self.fused.weight.chunk(3):
            x = torch.relu(F.linear(x, part))
        return self.out(x)


def test_the_parts_of_a_made_weight_are_layers_of_their_own():
    """Numbered by their sources alone, they got one number (maps 66-421 % off)."""
    assert layer_numbers(FusedMade().eval(), torch.randn(4, 8)) == [0, 1, 2, 3]


def layer_numbers(model: nn.Module, x: torch.Tensor) -> list[int]:
    """The layer number of each kernel call of ``model``'s forward pass, in order."""
    seen: list[int] = []
    lx.create_analyzer("lrp", model, rule=[
        (lambda call: seen.append(call.layer_index) or True, "Z")]).analyze(x)
    return seen


def test_rule_specifications():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(5, 4), nn.ReLU(), nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))
    x = torch.randn(3, 5)

    def run(**kwargs):
        return LRP(net, **kwargs).analyze(x)

    z = run(rule="Z")
    torch.testing.assert_close(run(rule=ZRule()), z)
    torch.testing.assert_close(run(rule=ZRule), z)
    torch.testing.assert_close(run(rule=["Z", ZRule(), "Z"]), z)
    torch.testing.assert_close(run(rule=[(nn.Linear, "Z")]), z)
    eps = run(rule=EpsilonRule(0.5))
    torch.testing.assert_close(run(rule=[(lambda call: call.layer_index == 2, "Z"),
                                         (lambda call: True, EpsilonRule(0.5))]),
                               run(rule=[EpsilonRule(0.5), EpsilonRule(0.5), "Z"]))
    assert not torch.allclose(eps, z)
    torch.testing.assert_close(run(rule="Z", input_layer_rule=(-1, 1)),
                               run(rule=[BoundedRule(-1.0, 1.0), "Z", "Z"]))
    torch.testing.assert_close(run(rule="Z", until_layer_idx=1, until_layer_rule="Flat"),
                               run(rule=["Flat", "Flat", "Z"]))
    torch.testing.assert_close(
        lx.create_analyzer("lrp.sequential_preset_b_flat_until_idx", net,
                           until_layer_idx=1).analyze(x),
        run(rule=["Flat", "Flat", EpsilonRule(0.1)]))


@pytest.mark.parametrize("input_rule", ["Z", "ZPlus", "Alpha1Beta0", "Alpha2Beta1", "Flat"])
def test_an_input_layer_rule_is_the_first_layer_rule_in_either_relevance_flow(input_rule):
    # proportional rules run with relevance per unit of tensor, where the input crosses into
    # relevance at the first layer: that layer was then no longer seen as the input layer
    # and any proportional input_layer_rule was silently ignored
    torch.manual_seed(3)
    net = nn.Sequential(nn.Linear(5, 4), nn.ReLU(), nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))
    x = torch.randn(3, 5)
    torch.testing.assert_close(
        LRP(net, rule="Epsilon", input_layer_rule=input_rule).analyze(x),
        LRP(net, rule=[input_rule, "Epsilon", "Epsilon"]).analyze(x))
    condition = LRP(net, rule=[(lambda call: call.is_input_layer, input_rule),
                               (lambda call: True, "Epsilon")]).analyze(x)
    torch.testing.assert_close(condition, LRP(net, rule=[input_rule, "Epsilon", "Epsilon"])
                               .analyze(x))


def test_rule_specification_errors():
    net = nn.Sequential(nn.Linear(5, 4), nn.ReLU(), nn.Linear(4, 2))
    with pytest.raises(ValueError, match="valid names"):
        LRP(net, rule="Epsilonn")
    with pytest.raises(ValueError, match="needs rule"):
        lx.create_analyzer("lrp", net)
    with pytest.raises(ValueError, match="alpha - beta must be 1"):
        lx.create_analyzer("lrp.alpha_beta", net, alpha=2, beta=2)
    with pytest.raises(ValueError, match="alpha or beta"):
        lx.create_analyzer("lrp.alpha_beta", net)
    with pytest.raises(ValueError, match="low="):
        lx.create_analyzer("deep_taylor.bounded", net)
    with pytest.raises(ValueError, match="epsilon"):
        lx.create_analyzer("lrp.epsilon", net, epsilon=-1)
    with pytest.raises(ValueError, match="1 rules, one per kernel layer"):
        LRP(net, rule=["Z"]).analyze(torch.randn(1, 5))
    with pytest.raises(lx.NotAnalyzableModelError, match="no rule condition holds"):
        LRP(net, rule=[(nn.Conv2d, "Z")]).analyze(torch.randn(1, 5))


def test_alpha_beta_infers_the_missing_parameter():
    net = nn.Sequential(nn.Linear(5, 2))
    assert lx.create_analyzer("lrp.alpha_beta", net, beta=1).rules.single == AlphaBetaRule(2, 1)
    assert lx.create_analyzer("lrp.alpha_beta", net, alpha=1).rules.single == AlphaBetaRule(1, 0)


def test_deep_taylor_explains_only_positive_outputs():
    net = nn.Sequential(nn.Linear(3, 2))
    with torch.no_grad():
        net[0].weight.copy_(torch.tensor([[1.0, 1.0, 1.0], [-1.0, -1.0, -1.0]]))
        net[0].bias.zero_()
    x = torch.tensor([[1.0, 2.0, 3.0]])
    analyzer = lx.create_analyzer("deep_taylor", net, neuron_selection_mode="index")
    torch.testing.assert_close(analyzer.analyze(x, neuron_selection=0), x)
    assert analyzer.analyze(x, neuron_selection=1).abs().sum() == 0


@pytest.mark.parametrize("name", ["lrp.z_IB", "lrp.epsilon_IB"])
def test_rules_without_the_bias_divide_by_the_product_itself_in_float32(name):
    # W x was recovered as y - b, which cancels where the bias dominates: at inputs of 1e-6
    # with biases of 0.5, lrp.z_IB's float32 map was 87 % off its float64 map
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3))
    with torch.no_grad():
        for layer in (net[0], net[2]):
            layer.bias.fill_(0.5)
    x = 1e-6 * torch.randn(4, 6)
    single = lx.create_analyzer(name, net).analyze(x)
    double = lx.create_analyzer(name, net.double()).analyze(x.double())
    torch.testing.assert_close(single.double(), double, rtol=1e-4, atol=1e-6 * double.abs().max())


class _Unbatched(nn.Module):
    """Layers called the way some models call them: a convolution on one sample at a time
    (unbatched, channels first), a dense layer with a 1-D weight (a dot product)."""

    def __init__(self, per_sample: bool) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.per_sample = per_sample
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.w = nn.Parameter(torch.randn(4 * 4 * 4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.stack([self.conv(s) for s in x]) if self.per_sample else self.conv(x)
        h = h.flatten(1)
        dot = F.linear(h, self.w) if self.per_sample else F.linear(h, self.w[None])[:, 0]
        return torch.stack([dot, -dot], dim=1)


@pytest.mark.parametrize("name", ["lrp.alpha_2_beta_1", "lrp.alpha_1_beta_0", "lrp.z_plus"])
def test_alpha_beta_on_unbatched_calls_and_one_dimensional_weights(name):
    # inputs of both signs (the stacked parts): the same maps as the batched, 2-D forms
    x = torch.randn(3, 3, 4, 4, dtype=torch.double)
    maps = [lx.create_analyzer(name, _Unbatched(per_sample).double().eval()).analyze(x)
            for per_sample in (True, False)]
    torch.testing.assert_close(maps[0], maps[1], rtol=1e-10, atol=1e-12)


class _DotProducts(nn.Module):
    """``F.linear`` of each unbatched sample with a 1-D weight and a 0-d bias: a scalar."""

    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.tensor([0.5, -1.0, 0.3], dtype=torch.double))
        self.b = nn.Parameter(torch.tensor(0.2, dtype=torch.double))

    def forward(self, x):
        return torch.stack([F.linear(s, self.w, self.b) for s in x])[:, None]


@pytest.mark.parametrize(("name", "alpha", "beta", "bias"), [
    ("lrp.alpha_2_beta_1", 2, 1, True), ("lrp.alpha_2_beta_1_IB", 2, 1, False),
    ("lrp.alpha_1_beta_0", 1, 0, True)])
def test_alpha_beta_on_a_dot_product_with_a_scalar_bias(name, alpha, beta, bias):
    model = _DotProducts()
    x = torch.tensor([[1.0, 2.0, 0.5], [1.0, -2.0, 0.5]], dtype=torch.double)
    for sample, result in zip(x, lx.create_analyzer(name, model).analyze(x), strict=True):
        c = sample * model.w.detach()  # the contributions, by hand
        b = model.b.detach() if bias else torch.zeros((), dtype=torch.double)
        y = (sample * model.w.detach()).sum() + model.b.detach()
        # (a part without contributions: a denominator kept 1e-7 from 0, a term of 0)
        positive = alpha * c.clamp(min=0) / (c.clamp(min=0).sum() + b.clamp(min=0)).clamp(
            min=1e-7)
        negative = beta * c.clamp(max=0) / (c.clamp(max=0).sum() + b.clamp(max=0)).clamp(
            max=-1e-7)
        torch.testing.assert_close(result, (positive - negative) * y)


class _UnbatchedConvNorm(nn.Module):
    """A BatchNorm1d on each sample's unbatched conv output (C, L): it normalises along L,
    which is not the convolution's output channel axis."""

    def __init__(self, channels: int, length: int) -> None:
        super().__init__()
        self.conv = nn.Conv1d(2, channels, 3, padding=1)
        self.norm = nn.BatchNorm1d(length)
        with torch.no_grad():
            self.norm.weight.uniform_(-1.0, 2.0)
            self.norm.running_mean.uniform_(-0.5, 0.5)
            self.norm.running_var.uniform_(0.5, 2.0)

    def forward(self, x):
        return torch.stack([self.norm(self.conv(s)) for s in x]).flatten(1)


@pytest.mark.parametrize("channels", [3, 4])  # 4: as many channels as positions
@pytest.mark.parametrize("name", ["lrp.epsilon", "lrp.alpha_1_beta_0", "lrp.alpha_2_beta_1",
                                  "deep_taylor"])
def test_a_batch_norm_across_an_unbatched_convolutions_positions_is_not_merged(name, channels):
    torch.manual_seed(4)
    model = _UnbatchedConvNorm(channels, 4).double().eval()
    x = torch.rand(2, 2, 4, dtype=torch.double)
    merged = lx.create_analyzer(name, model).analyze(x)
    own_rule = lx.create_analyzer(name, model, canonize=False).analyze(x)
    torch.testing.assert_close(merged, own_rule)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_safe_division_treats_zero_and_subnormal_denominators_alike(dtype):
    tiny = torch.finfo(dtype).tiny  # the smallest normal number: 1 / (tiny / 4) overflows
    z = torch.tensor([0.0, -0.0, tiny / 4, -tiny / 4, tiny, -2.0], dtype=dtype)
    expected = torch.tensor([SAFE_EPSILON] * 4 + [tiny, -2.0], dtype=dtype)
    torch.testing.assert_close(safe(z), expected, rtol=0, atol=0)
    assert bool(torch.isfinite(safe(z).reciprocal()).all())


@pytest.mark.parametrize(("name", "kwargs"), [("deep_taylor.bounded", {"low": -3, "high": 3}),
                                              ("lrp.sequential_preset_a_flat", {})])
def test_an_input_layer_rule_that_applies_nowhere_is_said_once(name, kwargs):
    torch.manual_seed(0)
    first = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.Flatten(), nn.Linear(18, 2))
    model = nn.Sequential(nn.BatchNorm2d(1), first).eval()  # a BatchNorm takes the input
    analyzer = lx.create_analyzer(name, model, **kwargs)
    with pytest.warns(UserWarning, match="no kernel layer receives the model input"):
        analyzer.analyze(torch.rand(2, 1, 5, 5))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        analyzer.analyze(torch.rand(2, 1, 5, 5))  # once per analyzer
        lx.create_analyzer(name, first.eval(), **kwargs).analyze(torch.rand(2, 1, 5, 5))


def test_terms_that_tile_one_stacked_tensor_get_its_gradient_directly():
    """The αβ rules' parts made by one call (``AffineLayer.parts``) are parts of one tensor:
    the incoming gradient times each factor reaches that tensor as the concatenation of the
    products, as it reaches separate terms."""
    torch.manual_seed(0)
    source = torch.randn(2, 4, 5, requires_grad=True)
    stacked = source * 2.0
    plus, minus = stacked.chunk(2, dim=1)
    value = torch.randn(2, 2, 5)
    factors = [torch.randn(2, 2, 5), -0.5]
    found, axis = stacked_parts([plus, minus])
    assert found is stacked and axis == 1
    grad = torch.randn(2, 2, 5)
    (got,) = torch.autograd.grad(redistribute([plus, minus], value, factors), source, grad)
    expected = 2.0 * torch.cat([grad * factors[0], grad * factors[1]], 1)
    torch.testing.assert_close(got, expected)
    # parts out of order, with a gap, or of two tensors are separate terms
    assert stacked_parts([minus, plus]) is None
    assert stacked_parts([stacked[:, :1], stacked[:, 2:3]]) is None
    assert stacked_parts([plus, (source * 2.0)[:, 2:]]) is None


@pytest.mark.parametrize("name", ["lrp.alpha_2_beta_1", "lrp.sequential_preset_b"])
def test_stacked_parts_give_the_maps_of_separate_terms(name, monkeypatch):
    torch.manual_seed(0)
    model = ResNetStyle().eval()
    x = torch.randn(2, 3, 32, 32)
    stacked = lx.create_analyzer(name, model).analyze(x)
    monkeypatch.setattr(rules_module, "stacked_parts", lambda terms: None)
    separate = lx.create_analyzer(name, model).analyze(x)
    torch.testing.assert_close(stacked, separate, rtol=1e-5, atol=1e-7)


class _Moves(nn.Module):
    """Operations that move, copy or scatter values: flips, rolls, rot90, pixel (un)shuffle,
    max-unpooling, index_select (a channel twice) and tile."""

    def __init__(self, unpool: bool) -> None:
        super().__init__()
        self.c1, self.c2 = nn.Conv2d(2, 8, 3, padding=1), nn.Conv2d(4, 4, 3, padding=1)
        self.fc = nn.Linear(8 * 36, 3)
        self.unpool = unpool

    def forward(self, x):
        h = F.pixel_shuffle(F.relu(self.c1(x)), 2)  # (N, 2, 12, 12)
        h = torch.roll(h.flip(-1), 1, dims=-2).rot90(1, (-2, -1)).fliplr()
        if self.unpool:
            pooled, indices = F.max_pool2d(h, 2, return_indices=True)
            h = F.max_unpool2d(pooled, indices, 2)
        h = F.pixel_unshuffle(h, 2).index_select(1, torch.tensor([0, 2, 2, 5]))
        return self.fc(F.relu(self.c2(h)).tile(1, 2, 1, 1).flatten(1))


@pytest.mark.parametrize("unpool", [False, True])
def test_operations_that_move_values_move_relevance(unpool):
    torch.manual_seed(0)
    model = _Moves(unpool).double().eval()
    x = torch.randn(3, 2, 6, 6, dtype=torch.float64)
    inputs = x.clone().requires_grad_()
    output = model(inputs)
    (gradient,) = torch.autograd.grad(output.max(1).values.sum(), inputs)
    torch.testing.assert_close(lx.create_analyzer("lrp.z", model).analyze(x), x * gradient)
    lx.create_analyzer("guided_backprop", model).analyze(x)  # a map, no refusal
    if not unpool:  # (max-unpooling by the input's own indices: refused by DeepLIFT)
        delta = lx.create_analyzer("deep_lift", model).analyze(x).sum((1, 2, 3))
        with torch.no_grad():
            selected = output.argmax(1, keepdim=True)
            expected = (output - model(torch.zeros_like(x))).gather(1, selected)[:, 0]
        torch.testing.assert_close(delta, expected)


def test_instance_norm_is_a_group_norm_of_one_channel_per_group():
    """Its rule is the normalisation rule (statistic held constant); with running statistics
    in eval mode, the z-rule of the affine map they make, as a BatchNorm's own z-rule."""
    torch.manual_seed(0)
    conv, head = nn.Conv2d(2, 4, 3), nn.Linear(4 * 16, 3)
    instance, group = nn.InstanceNorm2d(4, affine=True), nn.GroupNorm(4, 4)
    with torch.no_grad():
        instance.weight.uniform_(0.5, 1.5), instance.bias.normal_(0, 0.3)
    group.load_state_dict(instance.state_dict())
    x = torch.randn(3, 2, 6, 6, dtype=torch.float64)
    for name in ("lrp.epsilon", "lrp.z"):
        maps = [lx.create_analyzer(name, nn.Sequential(conv, norm, nn.ReLU(), nn.Flatten(),
                                                       head).double().eval()).analyze(x)
                for norm in (instance, group)]
        torch.testing.assert_close(maps[0], maps[1])
    running = nn.InstanceNorm2d(4, affine=True, track_running_stats=True)
    batch_norm = nn.BatchNorm2d(4)
    with torch.no_grad():
        for norm in (running, batch_norm):
            norm.running_mean.copy_(torch.tensor([0.1, -0.2, 0.3, 0.0]))
            norm.running_var.copy_(torch.tensor([0.5, 1.5, 1.0, 2.0]))
            norm.weight.copy_(instance.weight), norm.bias.copy_(instance.bias)
    maps = [lx.create_analyzer("lrp", nn.Sequential(
        nn.ReLU(), norm, nn.ReLU(), nn.Flatten(), head).double().eval(), rule="Epsilon",
        canonize=False, bn_layer_rule="Z").analyze(x[:, :1].expand(3, 4, 6, 6)[:, :, :4, :4])
        for norm in (running, batch_norm)]
    torch.testing.assert_close(maps[0], maps[1])


class _TokenBeforeInput(nn.Module):
    """A learned token put before the input (or the input placed into a tensor of constants)
    before the first kernel layer: CLS, register and soft-prompt tokens."""

    def __init__(self, how: str) -> None:
        super().__init__()
        self.how = how
        self.cls = nn.Parameter(torch.randn(1, 1, 8))
        self.norm, self.fc, self.head = nn.LayerNorm(8), nn.Linear(8, 8), nn.Linear(8, 3)

    def forward(self, x):
        cls = self.cls.expand(len(x), -1, -1)
        if self.how == "cat":
            h = torch.cat([cls, x], 1)
        elif self.how == "stack":
            h = torch.stack([cls[:, 0], *x.unbind(1)], 1)
        elif self.how == "where":
            h = torch.where(torch.arange(x.shape[1])[:, None] > 0, x, 0.0)
        else:  # written into a buffer of zeros, in place
            h = torch.zeros(len(x), x.shape[1] + 1, 8, dtype=x.dtype)
            h[:, 1:] = x
            h[:, 0] = cls[:, 0]
        h = h + torch.linspace(0, 1, 8, dtype=x.dtype)  # a position term: preprocessing
        return self.head(F.relu(self.fc(self.norm(h))).mean(1))


class _InputBesideFeatures(nn.Module):
    """DenseNet-style: the raw input concatenated with features computed from it."""

    def __init__(self) -> None:
        super().__init__()
        self.c1, self.c2 = nn.Conv2d(2, 3, 3, padding=1), nn.Conv2d(5, 4, 3, padding=1)
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        h = torch.cat([x, F.relu(self.c1(x))], 1)
        return self.fc(F.relu(self.c2(h)).mean((2, 3)))


@pytest.mark.parametrize(("model", "shape"), [
    *[(lambda how=how: _TokenBeforeInput(how), (3, 4, 8))
      for how in ("cat", "stack", "where", "setitem")],
    (_InputBesideFeatures, (3, 2, 6, 6))])
@pytest.mark.parametrize("name", ["lrp.z", "lrp.epsilon", "lrp.alpha_2_beta_1",
                                  "lrp.sequential_preset_a"])
def test_constants_or_features_beside_the_input_keep_both_flows_equal(model, shape, name):
    """Relevance per unit of tensor turns into relevance where the input meets computed
    values, and stays per unit through constants put beside it (a map of relevance per unit
    at the input was 1e-17 where it should be 1e-2)."""
    torch.manual_seed(0)
    model = model().double().eval()
    x = torch.randn(*shape, dtype=torch.double)
    analyzer = lx.create_analyzer(name, model)
    relative = analyzer.analyze(x)
    analyzer.flow = Flow()
    torch.testing.assert_close(relative, analyzer.analyze(x), rtol=1e-7, atol=1e-12)
    assert relative.abs().sum() > 1e-3


class _Normalising(nn.Module):
    """(x − mean) / std in forward: its rule passes relevance unchanged, no gradient."""

    def __init__(self) -> None:
        super().__init__()
        self.net = ResNetStyle(in_channels=3, num_classes=4, width=4)

    def forward(self, x):
        return self.net((x - 0.5) / 0.25)


@pytest.mark.parametrize("model", [lambda: ResNetStyle(in_channels=3, num_classes=4, width=4),
                                   _Normalising], ids=["resnet", "normalising"])
def test_rules_that_are_all_gradients_run_as_the_plain_gradient_once_checked(model,
                                                                             monkeypatch):
    """LRP-z on a ReLU network with its BatchNorms merged applies only gradients, each rule a
    function of its call: once an analysis has recorded so for a model and input signature,
    the next ones replay it without the rules' machinery (the same map: Input × Gradient,
    and with preprocessing, whose relevance passes as itself, the full analysis' map), until
    the model changes."""
    from lit_explain.analyzers import base

    torch.manual_seed(0)
    network = model().double().eval()
    x = torch.randn(3, 3, 16, 16, dtype=torch.double)
    analyzer = lx.create_analyzer("lrp.z", network)
    ruled = []
    monkeypatch.setattr(base, "OperationRules", lambda *a, **k: ruled.append(1) or
                        OperationRules(*a, **k))

    def input_times_gradient(net: nn.Module) -> torch.Tensor:
        return lx.create_analyzer("input_t_gradient", net).analyze(x)

    first = analyzer.analyze(x)
    runs = len(ruled)
    second = analyzer.analyze(x)
    torch.testing.assert_close(second, first, rtol=1e-10, atol=1e-12)
    plain = isinstance(network, ResNetStyle)
    assert len(ruled) == runs and analyzer.replayed  # no rules run: a replay
    if plain:
        torch.testing.assert_close(second, input_times_gradient(network))
    with torch.no_grad():
        next(network.parameters()).mul_(1.5)  # a step changes the model: checked anew
    third = analyzer.analyze(x)
    assert len(ruled) > runs
    if plain:
        torch.testing.assert_close(third, input_times_gradient(network))


@pytest.mark.parametrize("name", ["lrp.alpha_2_beta_1", "lrp.alpha_1_beta_0", "deep_taylor",
                                  "lrp.z_plus"])
@pytest.mark.parametrize("scale", [1e-5, 1e-8, 1e5])
def test_positively_homogeneous_rules_scale_with_the_input(name, scale):
    """On a bias-free ReLU network the αβ and z⁺ rules are positively homogeneous:
    map(s·x) = s·map(x) (the logit scales with s, the rules' ratios do not). A floor of
    ε = 1e-7 on their denominators took αβ 38 % off at s = 1e-5, Deep Taylor to zeros at
    1e-8; only exact zeros are replaced."""
    torch.manual_seed(5)
    model = nn.Sequential(nn.Linear(6, 8, bias=False), nn.ReLU(), nn.Linear(8, 8, bias=False),
                          nn.ReLU(), nn.Linear(8, 3, bias=False)).double().eval()
    x = torch.randn(5, 6, dtype=torch.double)
    analyzer = lx.create_analyzer(name, model)
    torch.testing.assert_close(analyzer.analyze(x * scale) / scale, analyzer.analyze(x),
                               rtol=1e-9, atol=1e-12)


class _CastOutput(nn.Module):
    def __init__(self, dtype: torch.dtype | None) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.dtype = dtype
        self.hidden, self.head = nn.Linear(4, 6), nn.Linear(6, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.head(torch.relu(self.hidden(x)))
        return y if self.dtype is None else y.to(self.dtype)


@pytest.mark.parametrize("name", ["deep_taylor", "lrp.z_plus", "lrp.epsilon"])
def test_an_output_cast_to_16_bits_gives_the_map_of_the_float32_output(name):
    # (the relevance per unit of the selected logit, 1/ε where a logit is 0 (Deep Taylor
    # clamps them), overflowed float16: a map of NaN)
    x = torch.randn(2, 4, generator=torch.Generator().manual_seed(1))
    expected = lx.create_analyzer(name, _CastOutput(None)).analyze(x)
    for dtype in (torch.float16, torch.bfloat16):
        got = lx.create_analyzer(name, _CastOutput(dtype)).analyze(x)
        torch.testing.assert_close(got, expected, rtol=1e-2, atol=1e-3 * float(
            expected.abs().max()))


@pytest.mark.parametrize("name", ["lrp.epsilon", "deep_taylor", "guided_backprop", "gradient"])
def test_an_infinite_output_not_explained_leaves_the_map_finite(name):
    # (a float16 output that overflows: the starting gradient was logits * one-hot, inf * 0)
    x = torch.randn(2, 4, generator=torch.Generator().manual_seed(1))
    models = [_CastOutput(None), _CastOutput(torch.float16)]
    for model in models:
        with torch.no_grad():
            model.head.bias[0] = 7e4
    expected, got = (lx.create_analyzer(name, model, neuron_selection_mode="index").analyze(
        x, neuron_selection=1) for model in models)
    assert bool(torch.isfinite(got).all())
    torch.testing.assert_close(got, expected, rtol=1e-2, atol=1e-3 * float(
        expected.abs().max()))
