"""The analysed forward pass: it is the model's own or refused, which output is explained,
in-place operations, input preprocessing and a softmax in forward."""

from __future__ import annotations

import functools
import math
import re
import types
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import lit_explain as lx
from lit_explain.analyzers.lrp import LRP, ZRule


def small_cnn() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), nn.ReLU(), nn.Flatten(),
                         nn.Linear(4 * 5 * 5, 3)).eval()


def input_times_gradient(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    x = x.clone().requires_grad_(True)
    logits = model(x)
    chosen = logits.gather(1, logits.argmax(1, keepdim=True)).sum()
    return x * torch.autograd.grad(chosen, x)[0]


class DoublingRule(ZRule):
    """A broken custom rule: its forward value is twice the layer's."""

    def __call__(self, layer, flow):
        return super().__call__(layer, flow) * 2


def test_a_rule_that_changes_the_forward_is_refused_naming_the_operation():
    model = small_cnn()
    analyzer = LRP(model, rule=[ZRule(), DoublingRule()])
    with pytest.raises(lx.NotAnalyzableModelError) as error:
        analyzer.analyze(torch.randn(2, 2, 5, 5))
    message = str(error.value)
    assert "does not compute the model's function" in message
    # the first conv is unchanged; the dense layer (kernel layer 1) doubles its output
    assert "operation 3 of the forward pass, torch._C._nn.linear in module '3' (Linear)" in message


@pytest.fixture
def forward_checks(monkeypatch) -> list[tuple[int, ...]]:
    """The input shapes of the forward checks made (``check_same_forward`` calls)."""
    from lit_explain.analyzers import base

    made: list[tuple[int, ...]] = []

    def check(model, x, *args):
        made.append(tuple(x.shape))
        return original(model, x, *args)

    original = base.check_same_forward
    monkeypatch.setattr(base, "check_same_forward", check)
    return made


def test_the_forward_check_is_made_again_where_the_model_or_the_input_shape_changes(
        forward_checks):
    model = small_cnn()
    analyzer = lx.create_analyzer("lrp.epsilon", model)
    x = torch.randn(4, 2, 5, 5)
    analyzer.analyze(x)
    analyzer.analyze(torch.randn(4, 2, 5, 5))  # same modules, parameters and shape
    assert forward_checks == [(4, 2, 5, 5)]
    analyzer.analyze(x[:3])  # another shape
    with torch.no_grad():
        model[0].weight.mul_(1.5)  # an in-place change of a parameter (an optimizer step)
    analyzer.analyze(x[:3])
    model[1] = nn.ReLU()  # another module
    analyzer.analyze(x[:3])
    model[3].weight = nn.Parameter(model[3].weight.detach().clone())  # a new parameter
    analyzer.analyze(x[:3])
    model[1].inplace = True  # a module's setting
    analyzer.analyze(x[:3])
    handle = model[1].register_forward_hook(lambda module, args, output: output)  # a hook
    analyzer.analyze(x[:3])
    handle.remove()
    handle = model[1].register_forward_hook(lambda module, args, output: output)  # another
    analyzer.analyze(x[:3])
    handle.remove()
    analyzer.analyze(x[:3])
    assert forward_checks == [(4, 2, 5, 5)] + [(3, 2, 5, 5)] * 8
    other = lx.create_analyzer("lrp.epsilon", model)  # each analyzer checks its own rules
    other.analyze(x[:3])
    assert len(forward_checks) == 10


class _Configured(nn.Sequential):
    """small_cnn with a configuration dict, as models keep them."""


def test_the_forward_check_is_made_again_where_state_the_forward_may_read_changes(
        forward_checks):
    from torch.nn.modules.module import register_module_forward_hook

    model = _Configured(*small_cnn())
    model.config = {"scale": 1.0, "names": ["a"]}
    analyzer = lx.create_analyzer("lrp.epsilon", model)
    x = torch.randn(3, 2, 5, 5)
    analyzer.analyze(x)
    analyzer.analyze(x)
    model.config["scale"] = 2.0  # an entry of a dict attribute
    analyzer.analyze(x)
    model.options = types.SimpleNamespace(deep=False)  # an object's attribute
    analyzer.analyze(x)
    model.options.deep = True
    analyzer.analyze(x)
    analyzer.analyze(x.contiguous(memory_format=torch.channels_last))  # other strides
    handle = register_module_forward_hook(lambda module, args, output: output)  # global
    try:
        analyzer.analyze(x)
    finally:
        handle.remove()
    _Configured.forward = lambda self, x: nn.Sequential.forward(self, x)  # (replaced)
    try:
        analyzer.analyze(x)
    finally:
        del _Configured.forward
    assert len(forward_checks) == 7  # the first analysis and one after each change


class _BranchOnValue(nn.Module):
    """One dense layer, or two, depending on the sign of the input's mean."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.first, self.second = nn.Linear(6, 6), nn.Linear(6, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.mean() > 0:  # a tensor value read into Python
            return self.second(torch.relu(self.first(x)))
        return self.second(x)


class _BranchOnCount(_BranchOnValue):
    """The same branches, chosen by how many inputs are positive: a shape made by values."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        positive = (x.detach() > 0).nonzero()  # (or x[x > 0], torch.where(x > 0), ...)
        if len(positive):  # a shape the values made
            x = torch.relu(self.first(x))
        return self.second(x)


@pytest.mark.parametrize("model", [_BranchOnValue, _BranchOnCount])
def test_a_model_that_branches_on_a_value_is_checked_at_every_analysis(model, forward_checks):
    # DoublingRule is the rule of the second kernel layer, which only the first branch
    # reaches: its wrong forward must be found although the second branch was checked first
    analyzer = LRP(model().eval(), rule=[ZRule(), DoublingRule()])
    negative = -torch.rand(2, 6)
    analyzer.analyze(negative)
    analyzer.analyze(negative)
    assert len(forward_checks) == 2
    with pytest.raises(lx.NotAnalyzableModelError, match="does not compute the model's"):
        analyzer.analyze(torch.rand(2, 6))


@pytest.mark.parametrize("read", [
    lambda x: x[:, :(x > 0).sum()], lambda x: torch.zeros((x > 0).sum()),  # sizes in C++
    lambda x: x.new_zeros((x > 0).sum()),
    lambda x: True in (x > 0), lambda x: str(x), lambda x: f"{x.sum():.2f}",
    lambda x: bool(x[0, 0] > 0), lambda x: x.sum().item(), lambda x: x.tolist(),
    lambda x: torch.equal(x, x), lambda x: (x > 0).nonzero(), lambda x: torch.where(x > 0),
    lambda x: x.unique(), lambda x: x[x > 0], lambda x: x.masked_select(x > 0),
    lambda x: torch.repeat_interleave((x[0] > 0).long()), lambda x: x.argwhere(),
])
def test_reads_of_values_into_python_or_shapes_are_seen(read):
    from lit_explain.analyzers.operations import OperationRules

    x = torch.randn(3, 4)
    rules = OperationRules(nn.Identity(), {}, frozenset(), x)
    with rules:
        read(x)
    assert rules.reads_values
    shapes_only = OperationRules(nn.Identity(), {}, frozenset(), x)
    with shapes_only:  # shapes, integer indices, a three-argument where: no value read
        x[torch.tensor([0, 2])], torch.where(x > 0, x, 0.0), x.repeat_interleave(2), x.shape[0]
    assert not shapes_only.reads_values


class BareInPlace(nn.Module):
    """In-place statements whose results are not assigned: the tensors held change."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(1)
        self.conv = nn.Conv2d(1, 3, 3, padding=1)
        self.fc = nn.Linear(3 * 4 * 4, 2)

    def forward(self, x):
        h = self.conv(x)
        h.mul_(0.5)            # linear, in place, after a kernel layer
        h[:, 0] = 0            # index assignment of a constant
        h.add_(0.25).sub_(0.5)
        F.relu(h, inplace=True)
        return self.fc(h.flatten(1))


@pytest.mark.parametrize("name", ["lrp.z", "lrp.epsilon", "input_t_gradient"])
def test_bare_in_place_statements_keep_their_meaning(name):
    model, x = BareInPlace().eval(), torch.randn(3, 1, 4, 4)
    result = lx.create_analyzer(name, model, **({"epsilon": 1e-12} if name == "lrp.epsilon"
                                                else {})).analyze(x)
    torch.testing.assert_close(result, input_times_gradient(model, x), rtol=1e-4, atol=1e-6)


#: torch.nn.functional's in-place activations with no torch.<name> twin, and their
#: out-of-place forms.
FUNCTIONAL_IN_PLACE = {
    "elu_": (F.elu_, F.elu),
    "hardtanh_": (lambda h: F.hardtanh_(h, -0.5, 0.5), lambda h: F.hardtanh(h, -0.5, 0.5)),
    "leaky_relu_": (lambda h: F.leaky_relu_(h, 0.1), lambda h: F.leaky_relu(h, 0.1)),
}


class Activated(nn.Module):
    def __init__(self, activation) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.activation = activation
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in ((5, 7), (7, 6), (6, 3)))

    def forward(self, x):
        for layer in self.layers[:-1]:
            x = self.activation(layer(x))
        return self.layers[-1](x)


@pytest.mark.parametrize("pair", FUNCTIONAL_IN_PLACE.values(), ids=FUNCTIONAL_IN_PLACE.keys())
@pytest.mark.parametrize("name", ["lrp.epsilon", "lrp.alpha_2_beta_1", "lrp.w_square",
                                  "deep_taylor", "deep_lift"])
def test_functional_in_place_activations_get_the_rules_of_their_out_of_place_forms(pair, name):
    """F.elu_, F.hardtanh_ and F.leaky_relu_ (torch._C._nn's) were not seen as in place: the
    rules read the input the call had overwritten (LRP maps 18-99 % off, DeepLIFT refused
    with a wrong reason)."""
    in_place, out_of_place = (Activated(f).double().eval() for f in pair)
    x = torch.randn(4, 5, dtype=torch.float64)
    torch.testing.assert_close(lx.create_analyzer(name, in_place).analyze(x),
                               lx.create_analyzer(name, out_of_place).analyze(x))


class CumulativeProduct(nn.Module):
    """A kernel layer followed by an operation no analyzer has a rule for."""

    def __init__(self, inplace: bool) -> None:
        super().__init__()
        self.conv, self.fc, self.inplace = nn.Conv2d(1, 2, 3), nn.Linear(8, 2), inplace

    def forward(self, x):
        h = self.conv(x)
        if self.inplace:
            h.cumprod_(1)
        else:
            h = h.cumprod(1)
        return self.fc(h.flatten(1))


@pytest.mark.parametrize("inplace", [True, False])
def test_an_in_place_operation_without_a_rule_gets_the_error_of_its_out_of_place_form(inplace):
    with pytest.raises(lx.NotAnalyzableModelError, match=r"cumprod_? in the model's own forward"):
        lx.create_analyzer("lrp.epsilon", CumulativeProduct(inplace).eval()).analyze(
            torch.randn(2, 1, 4, 4))


class Normalizing(nn.Module):
    def __init__(self, body: nn.Module) -> None:
        super().__init__()
        self.body = body
        self.register_buffer("mean", torch.tensor([0.5, -0.2]).reshape(1, 2, 1, 1))
        self.register_buffer("std", torch.tensor([0.25, 2.0]).reshape(1, 2, 1, 1))

    def forward(self, x):
        return self.body((x - self.mean) / self.std)


class ConstantsFirst(Normalizing):
    """The same preprocessing with the constants written first: ``(1/std) * (-mean + x)``."""

    def forward(self, x):
        return self.body(self.std.reciprocal() * (-self.mean + x))


@pytest.mark.parametrize("written", [Normalizing, ConstantsFirst])
@pytest.mark.parametrize("name", ["lrp.z", "lrp.epsilon", "lrp.sequential_preset_a_flat",
                                  "lrp.alpha_2_beta_1", "lrp.w_square"])
def test_relevance_passes_input_preprocessing_unchanged(name, written):
    body = small_cnn()
    model, x = written(body).eval(), torch.rand(2, 2, 5, 5)
    normalized = (x - model.mean) / model.std
    expected = lx.create_analyzer(name, body).analyze(normalized)
    torch.testing.assert_close(lx.create_analyzer(name, model).analyze(x), expected,
                               rtol=1e-5, atol=1e-7)


def test_the_input_layer_rule_applies_after_preprocessing():
    model, x = Normalizing(small_cnn()).eval(), torch.rand(2, 2, 5, 5)
    flat = lx.create_analyzer("lrp.sequential_preset_a_flat", model).analyze(x)
    plain = lx.create_analyzer("lrp.sequential_preset_a", model).analyze(x)
    assert not torch.allclose(flat, plain)
    bounded = lx.create_analyzer("deep_taylor.bounded", model, low=-3.0, high=3.0).analyze(x)
    assert not torch.allclose(bounded, lx.create_analyzer("deep_taylor", model).analyze(x))


class TupleOutput(nn.Module):
    def __init__(self, mapping: bool = False) -> None:
        super().__init__()
        self.body, self.mapping = small_cnn(), mapping

    def forward(self, x):
        logits = self.body(x)
        return {"aux": -logits, "logits": logits} if self.mapping else (logits, -logits)


@pytest.mark.parametrize("mapping", [False, True])
def test_output_key_selects_the_explained_output(mapping):
    model, x = TupleOutput(mapping).eval(), torch.randn(2, 2, 5, 5)
    plain = lx.create_analyzer("lrp.z", model.body).analyze(x)
    torch.testing.assert_close(lx.create_analyzer("lrp.z", model).analyze(x), plain)
    aux = lx.create_analyzer("gradient", model, output_key="aux" if mapping else 1,
                             neuron_selection_mode="index").analyze(x, 0)
    expected = lx.create_analyzer("gradient", model.body,
                                  neuron_selection_mode="index").analyze(x, 0)
    torch.testing.assert_close(aux, -expected)


def test_a_bad_output_key_names_the_valid_ones():
    with pytest.raises(ValueError, match=r"valid keys: \['aux', 'logits'\]"):
        lx.create_analyzer("gradient", TupleOutput(True), output_key="probs").analyze(
            torch.randn(1, 2, 5, 5))
    with pytest.raises(ValueError, match=r"valid: 0..1"):
        lx.create_analyzer("gradient", TupleOutput(), output_key=2).analyze(
            torch.randn(1, 2, 5, 5))


class SoftmaxInForward(nn.Module):
    def __init__(self, view: str = "") -> None:
        super().__init__()
        self.body = small_cnn()
        self.view = view

    def forward(self, x):
        if self.view == "squeezed":  # a view of the probabilities is returned
            return F.softmax(self.body(x).unsqueeze(1), dim=-1).squeeze(1)
        if self.view == "sliced":  # all classes but the first
            return F.softmax(self.body(x), dim=1)[:, 1:]
        return F.softmax(self.body(x), dim=1)


def test_a_softmax_in_forward_warns_the_gradient_family_once():
    analyzer = lx.create_analyzer("gradient", SoftmaxInForward().eval())
    with pytest.warns(UserWarning, match="explains probabilities"):
        analyzer.analyze(torch.randn(2, 2, 5, 5))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        analyzer.analyze(torch.randn(2, 2, 5, 5))  # once


@pytest.mark.parametrize("view", ["", "squeezed", "sliced"])
def test_a_softmax_in_forward_is_refused_by_rule_based_analyzers_pointing_to_the_fix(view):
    with pytest.raises(lx.NotAnalyzableModelError, match="(?i)explain the logits instead"):
        lx.create_analyzer("lrp.epsilon", SoftmaxInForward(view).eval()).analyze(
            torch.randn(2, 2, 5, 5))


def test_a_sliced_softmax_in_forward_warns_the_gradient_family():
    with pytest.warns(UserWarning, match="explains probabilities"):
        lx.create_analyzer("gradient", SoftmaxInForward("sliced").eval()).analyze(
            torch.randn(2, 2, 5, 5))


@pytest.mark.parametrize("backend", ["eager", "aot_eager"])
def test_a_compiled_model_gives_the_uncompiled_maps(backend):
    model, x = BareInPlace().eval(), torch.randn(2, 1, 4, 4)
    compiled = torch.compile(model, backend=backend)
    compiled(x)  # compiled and run once, as in training
    for name in ("lrp.epsilon", "guided_backprop", "gradient"):
        torch.testing.assert_close(lx.create_analyzer(name, compiled).analyze(x),
                                   lx.create_analyzer(name, model).analyze(x))


class _WithAuxiliaryOutput(nn.Module):
    """Logits, an auxiliary value computed from them with operations no ReLU-only rule set
    has (an entropy regulariser), and scores made the same way."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 5))

    def forward(self, x):
        logits = self.net(x)
        p = logits.softmax(1)
        return {"logits": logits, "entropy": -(p * p.log()).sum(1), "scores": torch.tanh(logits)}


@pytest.mark.parametrize("name", ["guided_backprop", "deconvnet", "deep_lift", "lrp.epsilon",
                                  "lrp.alpha_2_beta_1"])
def test_an_operation_without_a_rule_counts_only_where_the_explained_output_uses_it(name):
    """An auxiliary output beside the logits made the ReLU-only methods refuse the model,
    for operations the explained logits do not use."""
    model, x = _WithAuxiliaryOutput().eval(), torch.randn(3, 6)
    torch.testing.assert_close(lx.create_analyzer(name, model).analyze(x),
                               lx.create_analyzer(name, model.net).analyze(x))
    if name in ("guided_backprop", "deconvnet"):  # the first one the scores use
        with pytest.raises(lx.NotAnalyzableModelError, match=r"tanh .*the explained output "
                                                             r"depends on it"):
            lx.create_analyzer(name, model, output_key="scores").analyze(x)


class _GatesHalfInPlace(nn.Module):
    """An operation without a ReLU-only rule, in place on a slice of an activation."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.fc, self.head = nn.Linear(6, 8), nn.Linear(8, 3)

    def forward(self, x):
        h = self.fc(x)
        h[:, :4].sigmoid_()
        return self.head(torch.relu(h))


@pytest.mark.parametrize("name", ["guided_backprop", "deconvnet"])
def test_an_operation_without_a_rule_in_place_on_a_slice_is_refused(name):
    """Left to the end of the forward, it was not found (a view's node): a plain gradient."""
    with pytest.raises(lx.NotAnalyzableModelError, match="sigmoid_"):
        lx.create_analyzer(name, _GatesHalfInPlace().eval()).analyze(torch.randn(2, 6))


class _AuxiliaryInPlace(_WithAuxiliaryOutput):
    """The auxiliary value made by an operation without a ReLU-only rule, in place."""

    def forward(self, x):
        logits = self.net(x)
        aux = logits.clone()
        aux.sigmoid_()
        return {"logits": logits, "aux": aux}


@pytest.mark.parametrize("name", ["guided_backprop", "deconvnet", "lrp.epsilon"])
def test_an_operation_without_a_rule_in_place_on_an_unexplained_output_counts_not(name):
    model, x = _AuxiliaryInPlace().eval(), torch.randn(3, 6)
    torch.testing.assert_close(lx.create_analyzer(name, model).analyze(x),
                               lx.create_analyzer(name, model.net).analyze(x))


class _AuxiliaryInPlaceView(_WithAuxiliaryOutput):
    """The auxiliary value made in place into a view of a copy of the logits."""

    def forward(self, x):
        logits = self.net(x)
        aux = logits.clone()
        aux[:, :2].sigmoid_()
        return {"logits": logits, "aux": aux}


@pytest.mark.parametrize("name", ["guided_backprop", "deep_lift"])
def test_an_operation_without_a_rule_in_place_into_a_view_of_an_unexplained_output(name):
    model, x = _AuxiliaryInPlaceView().eval(), torch.randn(3, 6)
    torch.testing.assert_close(lx.create_analyzer(name, model).analyze(x),
                               lx.create_analyzer(name, model.net).analyze(x))


class _KeywordInputs(nn.Module):
    def __init__(self, keyword: bool) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.keyword, self.conv, self.fc = keyword, nn.Conv2d(2, 3, 3), nn.Linear(12, 2)

    def forward(self, x):
        h = self.conv(x)
        if self.keyword:
            h = torch.max_pool2d(input=torch.relu(input=h), kernel_size=2)
        else:
            h = torch.max_pool2d(torch.relu(h), 2)
        return self.fc(torch.sigmoid(input=h.flatten(1)) if self.keyword else torch.sigmoid(
            h.flatten(1)))


def test_deep_lift_reads_a_tensor_given_as_input_keyword():
    """torch.relu(input=h) raised a bare IndexError."""
    x = torch.randn(3, 2, 6, 6)
    torch.testing.assert_close(lx.create_analyzer("deep_lift", _KeywordInputs(True)).analyze(x),
                               lx.create_analyzer("deep_lift", _KeywordInputs(False)).analyze(x))


class _ComputedExponent(nn.Module):
    def __init__(self, how: str) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.how, self.fc, self.e, self.head = how, nn.Linear(4, 4), nn.Linear(4, 4), \
            nn.Linear(4, 2)

    def forward(self, x):
        h, e = torch.sigmoid(self.fc(x)), torch.sigmoid(self.e(x))
        return self.head(h ** e if self.how == "pow" else F.prelu(h, e.mean(0)))


@pytest.mark.parametrize("how", ["pow", "prelu"])
def test_deep_lift_refuses_an_elementwise_operation_of_two_computed_tensors(how):
    """It gave the first one all of it and inputs reaching only the other 0 (the map still
    summed to the difference)."""
    with pytest.raises(lx.NotAnalyzableModelError, match=r"several tensors that require grad"):
        lx.create_analyzer("deep_lift", _ComputedExponent(how).eval()).analyze(torch.randn(3, 4))


@pytest.mark.parametrize(("written", "twin"), [
    (lambda h: torch.pow(2.0, h), lambda h: torch.exp(h * math.log(2.0))),
    (lambda h: 2.0 ** h, lambda h: torch.exp(h * math.log(2.0))),
    (lambda h: torch.div(2.0, 1.5 + torch.tanh(h)), lambda h: 2.0 * (1.5 + torch.tanh(h)) ** -1),
    (lambda h: torch.full((4,), 2.0, dtype=h.dtype) / (1.5 + torch.tanh(h)),
     lambda h: 2.0 * (1.5 + torch.tanh(h)) ** -1)],
    ids=["torch.pow(2, h)", "2 ** h", "torch.div(2, t)", "tensor constant / t"])
def test_deep_lift_rescales_a_function_of_one_tensor_wherever_it_stands(written, twin):
    """torch.pow(2, h) first got a plain gradient (the summation check blamed the batch),
    then was refused with torch.div(2.0, t), as operations of a tensor that is not their
    first argument: the rescale rule holds for a function of one tensor at any position."""
    torch.manual_seed(0)
    first, head = nn.Linear(4, 4), nn.Linear(4, 2)
    models = [nn.Sequential(first, _Applied(f), head).double().eval() for f in (written, twin)]
    x = torch.randn(3, 4, dtype=torch.double)
    torch.testing.assert_close(models[0](x), models[1](x))
    maps = [lx.create_analyzer("deep_lift", model).analyze(x) for model in models]
    torch.testing.assert_close(maps[0], maps[1])


class _Applied(nn.Module):
    def __init__(self, function) -> None:
        super().__init__()
        self.function = function

    def forward(self, h):
        return self.function(h)


class _ComputedBias(nn.Module):
    """A dense layer whose bias is computed from the input, as an argument or added."""

    def __init__(self, added: bool) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.added, self.fc, self.b, self.head = added, nn.Linear(6, 4), nn.Linear(6, 4), \
            nn.Linear(4, 2)

    def forward(self, x):
        h, b = torch.relu(self.fc(x)), self.b(x)
        weight = self.head.weight
        return F.linear(h, weight) + b[:, :2] if self.added else F.linear(h, weight, b[:, :2])


def test_a_kernel_layer_with_a_bias_computed_from_the_input():
    """The LRP rules hold a bias constant: its path got no relevance (maps 70-100 % off);
    refused, with the add form advised. The gradient-based rules keep it."""
    x = torch.randn(3, 6)
    with pytest.raises(lx.NotAnalyzableModelError, match=r"bias the forward computes from "
                                                         r"the input.*F.linear\(h, W\) \+ b"):
        lx.create_analyzer("lrp.epsilon", _ComputedBias(False).eval()).analyze(x)
    for name in ("lrp.z", "deep_lift"):
        lx.create_analyzer(name, _ComputedBias(True).eval()).analyze(x)
    torch.testing.assert_close(
        lx.create_analyzer("deep_lift", _ComputedBias(False).eval()).analyze(x),
        lx.create_analyzer("deep_lift", _ComputedBias(True).eval()).analyze(x))


class _RegionallyCompiled(nn.Module):
    """A convolution and a head each compiled on their own, ``fullgraph=True``: wrapped by
    ``torch.compile`` or compiled in place (``module.compile()``)."""

    def __init__(self, in_place: bool = False) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv, self.fc = nn.Conv2d(3, 4, 3, padding=1), nn.Linear(4 * 8 * 8, 5)
        for name in ("conv", "fc"):
            if in_place:  # (not fullgraph: dynamo skips torch.nn's own frames there)
                getattr(self, name).compile(backend="eager")
            else:
                setattr(self, name, torch.compile(getattr(self, name), backend="eager",
                                                  fullgraph=True))

    def forward(self, x):
        return self.fc(torch.relu(self.conv(x)).flatten(1))


@pytest.mark.parametrize("in_place", [False, True])
def test_analyses_recompile_no_compiled_submodule(in_place):
    """Every analysis runs compiled submodules eagerly: the gradient methods ran them
    compiled and recompiled them for every analysis (frozen parameters, other batch sizes),
    until the recompile limit failed the analyses and the next training step."""
    from torch._dynamo.utils import counters

    model = _RegionallyCompiled(in_place)
    for batch in (2, 8):  # training compiles what it runs
        model.train()
        model(torch.randn(batch, 3, 8, 8)).sum().backward()
    model.eval()
    compiled = counters["stats"]["unique_graphs"]
    for _ in range(3):
        for name in ("gradient", "smoothgrad", "integrated_gradients", "lrp.epsilon"):
            lx.create_analyzer(name, model).analyze(torch.randn(2, 3, 8, 8))
    assert counters["stats"]["unique_graphs"] == compiled
    model.train()
    for batch in (2, 8):
        model(torch.randn(batch, 3, 8, 8)).sum().backward()  # (still compiled, no failure)
    assert counters["stats"]["unique_graphs"] == compiled


def test_a_rule_based_analysis_of_compiled_submodules_raises_no_warning_about_its_hooks():
    """torch warned at each compiled submodule's call that global module hooks fire for it
    too: the analysis' own, which expect it (three times in a 2-epoch callback run)."""
    model = _RegionallyCompiled()
    model(torch.randn(2, 3, 8, 8))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        lx.create_analyzer("lrp.epsilon", model.eval()).analyze(torch.randn(2, 3, 8, 8))


class _CompiledCond(nn.Module):
    """A compiled submodule that branches with torch.cond (which runs only compiled)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.block = torch.compile(_Cond(), backend="eager")
        self.head = nn.Linear(3, 2)

    def forward(self, x):
        return self.head(self.block(x))


def test_torch_cond_in_a_compiled_submodule_is_a_clear_error():
    """An analysis compiles nothing for itself, and torch.cond runs only compiled: the
    gradient methods, which ran it compiled, raised torch's own error."""
    model, x = _CompiledCond().eval(), torch.rand(2, 6)
    model(x)  # compiled and run, as in training
    for name in ("gradient", "integrated_gradients", "lrp.epsilon"):
        with pytest.raises(lx.NotAnalyzableModelError, match="torch.cond"):
            lx.create_analyzer(name, model).analyze(x)
    plain = nn.Sequential(model.block._orig_mod, model.head)  # (as the error advises)
    expected = torch.autograd.grad(plain(x.requires_grad_())[:, 0].sum(), x)[0]
    torch.testing.assert_close(lx.create_analyzer("gradient", plain, neuron_selection_mode=
                                                  "index").analyze(x.detach(), 0), expected)


def test_the_strongest_open_stance_holds_and_the_one_found_comes_back():
    import torch._dynamo

    from lit_explain.compiled import eager

    def stance() -> str:
        return torch._dynamo.eval_frame._stance.stance

    with eager("eager_on_recompile"):
        assert stance() == "eager_on_recompile"
        with eager():
            assert stance() == "force_eager"
            with eager("eager_on_recompile"):
                assert stance() == "force_eager"
        assert stance() == "eager_on_recompile"
    assert stance() == "default"


class NormalizesInPlace(nn.Module):
    """Normalises its input in place, as some preprocessing code does."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(2)
        self.conv, self.fc = nn.Conv2d(2, 3, 3, padding=1), nn.Linear(3 * 16, 3)

    def forward(self, x):
        x.sub_(0.5).div_(2.0)
        return self.fc(F.relu(self.conv(x)).flatten(1))


class NormalizesOutOfPlace(NormalizesInPlace):
    def forward(self, x):
        return self.fc(F.relu(self.conv((x - 0.5) / 2.0)).flatten(1))


@pytest.mark.parametrize("name", ["gradient", "input_t_gradient", "integrated_gradients",
                                  "smoothgrad", "deep_lift", "guided_backprop", "lrp.z",
                                  "lrp.epsilon"])
def test_a_model_that_modifies_its_input_in_place_gives_the_maps_of_its_function(name):
    """Every analysis, a repeated one too (a replay, path points fed as they are), gives the
    map of the function the model computes, which writing its input in place leaves."""
    x = torch.randn(2, 2, 4, 4)
    kwargs = {"integrated_gradients": {"steps": 4},
              "smoothgrad": {"augment_by_n": 4}}.get(name, {})
    analyzer = lx.create_analyzer(name, NormalizesInPlace().eval(), **kwargs)
    out_of_place = lx.create_analyzer(name, NormalizesOutOfPlace().eval(), **kwargs)
    for _ in range(2):  # (SmoothGrad's generator goes on alike in both)
        torch.testing.assert_close(analyzer.analyze(x), out_of_place.analyze(x))


@pytest.mark.parametrize("name", ["gradient", "input_t_gradient", "integrated_gradients",
                                  "smoothgrad", "deep_lift", "guided_backprop", "lrp.z"])
def test_a_model_that_modifies_its_input_in_place_leaves_the_callers_tensor_alone(name):
    model, x = NormalizesInPlace().eval(), torch.randn(2, 2, 4, 4)
    original = x.clone()
    kwargs = {"steps": 2} if name == "integrated_gradients" else {}
    kwargs = {"augment_by_n": 2, "noise_scale": 0.0} if name == "smoothgrad" else kwargs
    result = lx.create_analyzer(name, model, **kwargs).analyze(x)
    assert torch.equal(x, original)
    if name in ("gradient", "smoothgrad"):  # the gradient of the function the model computes
        leaf = original.clone().requires_grad_(True)
        logits = model(leaf.clone())
        (expected,) = torch.autograd.grad(logits.gather(1, logits.argmax(1, keepdim=True)).sum(),
                                          leaf)
        torch.testing.assert_close(result, expected)


@pytest.mark.parametrize("reentrant", [False, True])
def test_checkpoints_run_directly_in_an_analysis_and_again_in_training(reentrant):
    from torch.utils.checkpoint import checkpoint

    class Counted(nn.Module):  # counts how often the checkpointed part runs
        def __init__(self) -> None:
            super().__init__()
            self.body, self.head, self.calls = small_cnn()[:2], small_cnn()[2:], 0

        def part(self, x: torch.Tensor) -> torch.Tensor:
            self.calls += 1
            return self.body(x)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.head(checkpoint(self.part, x, use_reentrant=reentrant))

    model, x = Counted().eval(), torch.randn(2, 2, 5, 5)
    plain = nn.Sequential(model.body, model.head)
    result = lx.create_analyzer("lrp.alpha_2_beta_1", model).analyze(x)
    torch.testing.assert_close(result, lx.create_analyzer("lrp.alpha_2_beta_1", plain).analyze(x))
    # the analysed forward and the guard's, with gradients and without; no recomputation
    assert model.calls == 3
    model.calls = 0
    model(x.requires_grad_(True)).sum().backward()  # training: recomputed in the backward
    assert model.calls == 2


class _Clamp(torch.autograd.Function):  # a custom autograd Function: a ReLU of its own
    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(x)
        return x.clamp(min=0)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        (x,) = ctx.saved_tensors
        return grad * (x > 0)


class _Hidden(nn.Module):
    """small_cnn's function with its convolution and ReLU computed out of the engine's sight:
    a scripted or traced submodule, a custom autograd Function, or a whole scripted model."""

    def __init__(self, how: str) -> None:
        super().__init__()
        self.how, plain = how, small_cnn()
        self.head = plain[2:]
        self.body = (torch.jit.script(plain[:2]) if how == "script" else
                     torch.jit.trace(plain[:2], torch.randn(1, 2, 5, 5)) if how == "trace"
                     else plain[:2])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.how == "function":
            return self.head(_Clamp.apply(self.body[0](x)))
        return self.head(self.body(x))


GRADIENT_METHODS = ("gradient", "input_t_gradient", "smoothgrad", "integrated_gradients",
                    "input", "random")


@functools.cache
def hidden(how: str) -> nn.Module:
    """The model for ``how``, made once (TorchScript compiles once per form, not per test;
    analyses leave a model as they found it)."""
    if how == "whole script":
        return torch.jit.script(_Hidden("plain").eval())
    return _Hidden(how).eval()


@pytest.mark.parametrize("how", ["script", "trace", "function", "whole script"])
@pytest.mark.parametrize("name", [n for n in sorted(lx.analyzers)
                                  if not n.startswith("pattern.")])
def test_code_the_engine_cannot_see_is_refused_by_rules_and_differentiated_by_gradients(
        how, name):
    model = hidden(how)
    x = torch.randn(2, 2, 5, 5)
    kwargs = {"lrp": {"rule": "Z"}, "lrp.alpha_beta": {"alpha": 1.0},
              "deep_taylor.bounded": {"low": -3.0, "high": 3.0}}.get(name, {})
    analyzer = lx.create_analyzer(name, model, **kwargs)
    if name in GRADIENT_METHODS:  # autograd goes through such code: the plain model's map
        expected = lx.create_analyzer(name, small_cnn(), **kwargs).analyze(x)
        torch.testing.assert_close(analyzer.analyze(x), expected)
        return
    where = {"script": "module 'body' (RecursiveScriptModule)",
             "trace": "module 'body' (TopLevelTracedModule)",
             "function": "in module 'head.2' (Flatten) receives",
             "whole script": "the model (RecursiveScriptModule)"}[how]
    with pytest.raises(lx.NotAnalyzableModelError, match=re.escape(where)):
        analyzer.analyze(x)


class _DenseWrittenOut(nn.Module):
    """A bias-free dense layer, ReLU, then nn.Linear; the first layer as ``nn.Linear`` or
    written out as a matrix product with its weight (``form``)."""

    FORMS = {"linear": lambda x, w, layer: layer(x),
             "matmul": lambda x, w, layer: x @ w.T,
             "weight first": lambda x, w, layer: (w @ x.T).T,
             "einsum": lambda x, w, layer: torch.einsum("ni,oi->no", x, w),
             "mm": lambda x, w, layer: torch.mm(x, w.t()),
             "bmm": lambda x, w, layer: torch.bmm(x[:, None], w.T.expand(len(x), -1, -1))[:, 0],
             # a weight computed from parameters alone in forward (a scaled learned query)
             "computed weight": lambda x, w, layer: x @ (w * 1.0).T,
             "computed einsum": lambda x, w, layer: torch.einsum("ni,oi->no", x,
                                                                 w.clone().neg().neg())}

    def __init__(self, form: str) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.form, self.dense, self.head = form, nn.Linear(6, 8, bias=False), nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(F.relu(self.FORMS[self.form](x, self.dense.weight, self.dense)))


@pytest.mark.parametrize("form", [f for f in _DenseWrittenOut.FORMS if f != "linear"])
@pytest.mark.parametrize("name", sorted(lx.analyzers))
def test_a_dense_layer_written_as_a_matrix_product_gets_the_layer_rule(form, name):
    # before, x @ W was a linear operation with the z-rule's gradient whatever the analyzer's
    # rule: eps, alpha-beta, w-square and the presets gave another map than nn.Linear's
    model, x = _DenseWrittenOut(form).eval(), torch.randn(4, 6)
    kwargs = {"lrp": {"rule": "Epsilon"}, "lrp.alpha_beta": {"alpha": 1.0},
              "deep_taylor.bounded": {"low": -3.0, "high": 3.0}}.get(name, {})
    if name.startswith("pattern."):  # patterns are fitted for nn.Linear/Conv modules only
        patterns = lx.PatternComputer(_DenseWrittenOut("linear").eval()).fit([x], progress=False)
        with pytest.raises(lx.NotAnalyzableModelError, match="weight_product"):
            lx.create_analyzer(name, model, patterns=patterns).analyze(x)
        return
    expected = lx.create_analyzer(name, _DenseWrittenOut("linear").eval(), **kwargs).analyze(x)
    torch.testing.assert_close(lx.create_analyzer(name, model, **kwargs).analyze(x), expected)


@pytest.mark.parametrize("mode", ["reflect", "replicate", "circular"])
@pytest.mark.parametrize(("name", "kwargs"), [
    ("lrp.sequential_preset_a_flat", {}), ("deep_taylor.bounded", {"low": 0.0, "high": 1.0}),
    ("lrp.epsilon", {}), ("lrp.w_square", {})])
def test_a_convolution_with_a_padding_mode_stays_the_input_layer(mode, name, kwargs):
    # nn.Conv2d pads with F.pad before its convolution when padding_mode is not "zeros";
    # that pad used to make the next layer no input layer (flat = plain preset, bounded =
    # deep_taylor). The map must be that of the same network on the padded input, its
    # relevance summed back onto the positions it copies (pad's transpose)
    torch.manual_seed(0)
    body = [nn.ReLU(), nn.Conv2d(4, 4, 3, padding=1), nn.ReLU(), nn.Flatten(),
            nn.Linear(4 * 6 * 6, 3)]
    padded = nn.Conv2d(2, 4, 3, padding=1, padding_mode=mode)
    model = nn.Sequential(padded, *body).eval()
    on_padded_input = nn.Sequential(nn.Conv2d(2, 4, 3), *body).eval()
    on_padded_input[0].load_state_dict(padded.state_dict())
    x = torch.rand(2, 2, 6, 6)

    def pad(t: torch.Tensor) -> torch.Tensor:
        return F.pad(t, (1, 1, 1, 1), mode=mode)

    relevance = lx.create_analyzer(name, on_padded_input, **kwargs).analyze(pad(x))
    point = x.clone().requires_grad_(True)
    (expected,) = torch.autograd.grad(pad(point), point, relevance)
    torch.testing.assert_close(lx.create_analyzer(name, model, **kwargs).analyze(x), expected)


class _ResizedOrClamped(nn.Module):
    """A CNN whose input is clamped to [0, 1] or resized 2× by nearest neighbours first, or
    written without the clamp, or with the resize as ``repeat_interleave``."""

    PREPARE = {"clamp(0, 1)": lambda x: x.clamp(0, 1), "none": lambda x: x,
               "clamp_min(-0.5)": lambda x: x.clamp_min(-0.5),
               "clamp_max(1.5)": lambda x: x.clamp_max(1.5),
               "hardtanh(0, 1)": lambda x: F.hardtanh(x, 0, 1),
               "clamp(min=0)": lambda x: x.clamp(min=0), "relu": F.relu,
               "nearest": lambda x: F.interpolate(x, scale_factor=2, mode="nearest"),
               "repeat_interleave": lambda x: x.repeat_interleave(2, -1).repeat_interleave(2, -2)}

    def __init__(self, prepare: str) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.prepare = prepare
        self.first, self.second = nn.Conv2d(3, 4, 3), nn.Conv2d(4, 5, 3)
        self.head = nn.Linear(20, 6)

    def forward(self, x):
        h = F.relu(self.second(F.relu(self.first(self.PREPARE[self.prepare](x)))))
        return self.head(h.flatten(1))


@pytest.mark.parametrize(("prepare", "twin", "size"), [
    ("clamp(0, 1)", "none", 6), ("clamp_min(-0.5)", "none", 6), ("clamp_max(1.5)", "none", 6),
    ("hardtanh(0, 1)", "none", 6), ("clamp(min=0)", "none", 6), ("relu", "none", 6),
    ("nearest", "repeat_interleave", 3)])
@pytest.mark.parametrize(("name", "kwargs"), [
    ("deep_taylor.bounded", {"low": 0.0, "high": 1.0}), ("lrp.z", {"input_layer_rule": (0, 1)}),
    ("lrp.sequential_preset_a_flat", {}), ("lrp.alpha_2_beta_1", {"input_layer_rule": "Flat"})])
def test_a_clamp_or_a_nearest_resize_of_the_input_keeps_the_input_layer(
        name, kwargs, prepare, twin, size):
    """A clamp to constant bounds is an elementwise operation with constants and a nearest
    resize copies values: the first layer after them stays the input layer (its rule was
    dropped with a warning that blamed a BatchNorm: maps 0.98-9.25× off)."""
    x = torch.rand(2, 3, size, size, dtype=torch.double)  # (in [0, 1]: the clamp keeps it)
    model = _ResizedOrClamped(prepare).double().eval()
    reference = _ResizedOrClamped(twin).double().eval()
    torch.testing.assert_close(model(x), reference(x))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # (no "applies nowhere")
        relevance = lx.create_analyzer(name, model, **kwargs).analyze(x)
    torch.testing.assert_close(relevance, lx.create_analyzer(name, reference, **kwargs).analyze(x))


class _MaxOverTime(nn.Module):
    """A 1-D convolution over a sequence and its maximum over time (a text CNN's pooling),
    written as ``pooling``."""

    POOLINGS = {"adaptive": lambda h: F.adaptive_max_pool1d(h, 1)[..., 0],
                "amax": lambda h: torch.amax(h, dim=-1),
                "max values": lambda h: h.max(dim=-1).values,
                "torch.max index": lambda h: torch.max(h, -1)[0]}

    def __init__(self, pooling: str) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.pooling, self.conv, self.head = pooling, nn.Conv1d(3, 6, 3), nn.Linear(6, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # (no ReLU before the pooling: its zeros tie, and amax's gradient splits ties evenly
        # where the others give all to one winner)
        return self.head(F.relu(self.POOLINGS[self.pooling](self.conv(x))))


@pytest.mark.parametrize("pooling", [p for p in _MaxOverTime.POOLINGS if p != "adaptive"])
@pytest.mark.parametrize("name", [n for n in sorted(lx.analyzers)
                                  if not n.startswith("pattern.")])
def test_a_maximum_over_a_dimension_is_a_max_pooling(pooling, name):
    # torch.amax and torch.max(x, dim) were refused as unknown operations
    if pooling == "amax" and name == "integrated_gradients":
        pytest.skip("at IG's first point, 0, the convolution gives its bias at every time step: "
                    "amax's gradient splits that tie evenly, max pooling's goes to one winner")
    x = torch.randn(3, 3, 9)
    kwargs = {"lrp": {"rule": "Epsilon"}, "lrp.alpha_beta": {"alpha": 1.0},
              "deep_taylor.bounded": {"low": -3.0, "high": 3.0}}.get(name, {})
    expected = lx.create_analyzer(name, _MaxOverTime("adaptive").eval(), **kwargs).analyze(x)
    result = lx.create_analyzer(name, _MaxOverTime(pooling).eval(), **kwargs).analyze(x)
    torch.testing.assert_close(result, expected)


class _PooledWithoutBatchAxis(nn.Module):
    """Max-pooling of (N, L, D) read as torch's unbatched (C, H, W), or of (N, D) as (C, L):
    per sample still; or (``batched``) the same with a batch axis made explicit."""

    def __init__(self, dims: int, batched: bool) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.dims, self.batched = dims, batched
        self.fc, self.head = nn.Linear(4, 4), nn.Linear(4 if dims == 2 else 2, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pool = F.max_pool2d if self.dims == 2 else F.max_pool1d
        h = self.fc(x)
        h = pool(h[:, None], 2)[:, 0] if self.batched else pool(h, 2)
        return self.head(h.flatten(1))


@pytest.mark.parametrize("dims", [1, 2])
def test_deep_lift_through_a_max_pooling_without_a_batch_axis(dims):
    """Its winners' indices are per leading axis: DeepLIFT scattered them as if the first two
    axes were batch and channel and failed with torch's index error."""
    x = torch.randn(3, 4, 4, dtype=torch.float64) if dims == 2 else torch.randn(
        3, 4, dtype=torch.float64)
    result, expected = (lx.create_analyzer("deep_lift", _PooledWithoutBatchAxis(
        dims, batched).double().eval()).analyze(x) for batched in (False, True))
    torch.testing.assert_close(result, expected)


def test_the_elementwise_maximum_of_two_tensors_is_no_pooling():
    model = nn.Sequential(nn.Linear(4, 4)).eval()

    class Maximum(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.max(model(x), model(-x))

    with pytest.raises(lx.NotAnalyzableModelError, match="torch.max"):
        lx.create_analyzer("lrp.epsilon", Maximum()).analyze(torch.randn(2, 4))


@pytest.mark.parametrize("name", ["lrp.z", "deep_lift", "guided_backprop"])
def test_prelu_gets_the_identity_rule_of_the_other_elementwise_non_linearities(name):
    # F.prelu (nn.PReLU) was refused as an unknown operation by every rule-based analyzer
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 6), nn.PReLU(6), nn.Linear(6, 3)).eval()
    nn.init.uniform_(model[1].weight, 0.1, 0.4)
    x = torch.randn(4, 5)
    analyzer = lx.create_analyzer(name, model)
    if name == "guided_backprop":  # a ReLU-only method
        with pytest.raises(lx.NotAnalyzableModelError, match="prelu"):
            analyzer.analyze(x)
        return
    result = analyzer.analyze(x)
    logits = model(x)
    chosen = logits.argmax(1)
    if name == "lrp.z":  # piecewise linear through 0: LRP-z is Input x Gradient
        torch.testing.assert_close(result, input_times_gradient(model, x))
    else:  # summation to delta against the zero reference
        delta = logits.gather(1, chosen[:, None])[:, 0] - model(torch.zeros_like(x))[0, chosen]
        torch.testing.assert_close(result.sum(1), delta.detach())


class _Conv1D(nn.Module):
    """Hugging Face GPT-2's ``Conv1D``: ``torch.addmm(bias, x.view(-1, nx), weight)``, the
    weight stored (in, out)."""

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        self.weight = nn.Parameter(linear.weight.detach().T.clone())
        self.bias = nn.Parameter(linear.bias.detach().clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.addmm(self.bias, x.view(-1, x.size(-1)), self.weight)
        return out.view(*x.shape[:-1], self.weight.shape[1])


@pytest.mark.parametrize("name", [n for n in sorted(lx.analyzers)
                                  if not n.startswith("pattern.")])
def test_gpt2_conv1d_addmm_is_a_dense_layer_with_its_bias(name):
    torch.manual_seed(0)
    linear = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3)).eval()
    conv1d = nn.Sequential(_Conv1D(linear[0]), nn.ReLU(), linear[2]).eval()
    x = torch.randn(2, 5, 6)
    kwargs = {"lrp": {"rule": "Epsilon"}, "lrp.alpha_beta": {"alpha": 1.0},
              "deep_taylor.bounded": {"low": -3.0, "high": 3.0}}.get(name, {})
    expected = lx.create_analyzer(name, linear, **kwargs).analyze(x)
    result = lx.create_analyzer(name, conv1d, **kwargs).analyze(x)
    torch.testing.assert_close(result, expected, rtol=1e-5, atol=1e-6)


class WrittenInto(nn.Module):
    """``out = zeros_like(h); out[:, :2] = h[:, :2]; out[:, 2:] = 2 * h[:, 2:]`` (as top-1
    mixture-of-experts layers write their experts' outputs), or the same with ``torch.cat``."""

    def __init__(self, written_into: bool) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.written_into = written_into
        self.fc, self.head = nn.Linear(4, 4), nn.Linear(4, 3)

    def forward(self, x):
        h = torch.relu(self.fc(x))
        if not self.written_into:
            return self.head(torch.cat([h[:, :2], 2 * h[:, 2:]], dim=1))
        out = torch.zeros_like(h)
        out[:, :2] = h[:, :2]
        out[:, 2:] = 2 * h[:, 2:]
        return self.head(out)


@pytest.mark.parametrize("name", ["lrp.epsilon", "lrp.z", "lrp.alpha_2_beta_1", "lrp.flat",
                                  "deep_lift", "guided_backprop", "deep_taylor"])
def test_values_written_into_a_new_tensor_explain_as_their_concatenation(name):
    x = torch.randn(5, 4, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(lx.create_analyzer(name, WrittenInto(True)).analyze(x),
                               lx.create_analyzer(name, WrittenInto(False)).analyze(x))


class Cast(nn.Module):
    """small_cnn with its hidden activations cast (``cast``: how) and back."""

    def __init__(self, cast) -> None:
        super().__init__()
        self.body, self.cast = small_cnn(), cast

    def forward(self, x):
        h = self.body[:2](x)
        return self.body[2:](self.cast(h).type(h.dtype))


@pytest.mark.parametrize("cast", [lambda h: h.type(torch.float64), lambda h: h.to(torch.float64),
                                  lambda h: h.type(h.type()), lambda h: h.cpu()],
                         ids=["type", "to", "type-str", "cpu"])
@pytest.mark.parametrize("name", ["lrp.epsilon", "lrp.alpha_2_beta_1", "guided_backprop"])
def test_casts_move_values_as_they_are(name, cast):
    # Tensor.type(dtype) was an unknown operation (GPT-2's eager attention casts with it)
    x = torch.randn(2, 2, 5, 5, generator=torch.Generator().manual_seed(5))
    torch.testing.assert_close(lx.create_analyzer(name, Cast(cast)).analyze(x),
                               lx.create_analyzer(name, small_cnn()).analyze(x))


class _Cond(_BranchOnValue):
    """The same branches written with torch.cond (a control-flow operator torch runs
    compiled)."""

    def deep(self, x: torch.Tensor) -> torch.Tensor:
        return self.second(torch.relu(self.first(x)))

    def shallow(self, x: torch.Tensor) -> torch.Tensor:
        return self.second(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cond(x.mean() > 0, self.deep, self.shallow, (x,))


def test_torch_cond_is_refused_by_rules_and_differentiated_by_gradients():
    model, x = _Cond().eval(), torch.rand(2, 6)
    for name in ("lrp.epsilon", "guided_backprop"):
        with pytest.raises(lx.NotAnalyzableModelError, match="torch.cond"):
            lx.create_analyzer(name, model).analyze(x)
    # (torch.cond fails under torch's force_eager stance, which only the rules use)
    expected = torch.autograd.grad(model(x.requires_grad_())[:, 0].sum(), x)[0]
    gradient = lx.create_analyzer("gradient", model, neuron_selection_mode="index").analyze(
        x.detach(), 0)
    torch.testing.assert_close(gradient, expected)


class _GradModeBranch(nn.Module):
    """A forward that branches on the grad mode (as checkpointing code does); here the two
    branches even compute different functions."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.layer = nn.Linear(6, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled():
            return self.layer(x)
        return self.layer(x) * 2


def test_the_forward_check_runs_the_model_in_the_analysis_grad_mode():
    # an analysis runs with grad enabled (also under Lightning's no_grad validation), and so
    # does its check: the same branch (run without grad, it took the other and refused)
    x = torch.randn(3, 6)
    model = _GradModeBranch().eval()
    with torch.no_grad(), pytest.warns(UserWarning, match="another output under torch.no_grad"):
        result = lx.create_analyzer("lrp.epsilon", model).analyze(x)
    plain = lx.create_analyzer("lrp.epsilon", nn.Sequential(model.layer).eval())
    torch.testing.assert_close(result, plain.analyze(x))


class _RunsWithGradientsOnly(_GradModeBranch):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not torch.is_grad_enabled():
            raise RuntimeError("this model runs with gradients only")
        return self.layer(x)


def test_a_model_that_runs_with_gradients_only_is_analysed():
    """The check's comparison with the output under torch.no_grad() is skipped where the
    model cannot run so."""
    x, model = torch.randn(3, 6), _RunsWithGradientsOnly().eval()
    torch.testing.assert_close(
        lx.create_analyzer("lrp.epsilon", model).analyze(x),
        lx.create_analyzer("lrp.epsilon", nn.Sequential(model.layer).eval()).analyze(x))


class _RequiresGradBranch(_GradModeBranch):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer(x) if x.requires_grad else self.layer(x) * 2


@pytest.mark.parametrize("name", ["lrp.epsilon", "guided_backprop", "deep_lift"])
def test_a_forward_that_branches_on_its_input_requiring_grad_is_explained_as_with_gradients(
        name):
    """The analysis and its check run the branch taken with gradients, as every gradient
    method does, and say that the model computes otherwise without."""
    x = torch.randn(3, 6)
    model = _RequiresGradBranch().eval()
    with pytest.warns(UserWarning, match="another output under torch.no_grad"):
        result = lx.create_analyzer(name, model).analyze(x)
    torch.testing.assert_close(
        result, lx.create_analyzer(name, nn.Sequential(model.layer).eval()).analyze(x))


class _BatchMask(nn.Module):
    """Cross-attention with a key padding mask the model holds for the whole batch: it
    cannot run one sample alone (torch asserts the mask's batch size)."""

    def __init__(self, padding: torch.Tensor) -> None:
        super().__init__()
        self.padding = padding
        self.attn, self.head = nn.MultiheadAttention(8, 2, batch_first=True), nn.Linear(8, 3)

    def forward(self, x):
        h = torch.tanh(x)
        return self.head(self.attn(x, h, h, key_padding_mask=self.padding)[0].mean(1))


@pytest.mark.parametrize("name", ["lrp.epsilon", "deep_taylor", "lrp.alpha_2_beta_1"])
def test_the_forward_check_of_a_model_that_cannot_run_one_sample_compares_the_batch(name):
    padding = torch.zeros(3, 5, dtype=torch.bool)
    padding[1, 3:] = True
    torch.manual_seed(0)
    model = _BatchMask(padding).double().eval()
    x = torch.randn(3, 5, 8, dtype=torch.float64)
    with pytest.raises(AssertionError):
        model(x[:1])
    result = lx.create_analyzer(name, model).analyze(x)
    for i in range(len(x)):  # the samples are independent: each alone, with its own mask
        model.padding = padding[i:i + 1]
        alone = lx.create_analyzer(name, model).analyze(x[i:i + 1])
        torch.testing.assert_close(result[i:i + 1], alone)


def assert_sums_to_delta(model: nn.Module, x: torch.Tensor) -> None:
    """DeepLIFT's map of ``x`` (zero reference) sums to the top logit's difference."""
    result = lx.create_analyzer("deep_lift", model).analyze(x)
    with torch.no_grad():
        delta = (model(x) - model(torch.zeros_like(x))).gather(1, model(x).argmax(1, True))
    torch.testing.assert_close(result.sum(1, keepdim=True), delta)


class _Layout(nn.Module):
    """A ReLU net behind a change of the batch layout that keeps its function (``how``):
    run in two chunks (a hand-written DataParallel), its samples reordered and put back,
    time-major ``(L, N, C)``; or a batch-statistics normalisation (samples affect each
    other)."""

    def __init__(self, how: str) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.how = how
        self.net = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 3))
        self.norm = nn.BatchNorm1d(6, track_running_stats=False)

    def forward(self, x):
        if self.how == "chunks":
            return torch.cat([self.net(c) for c in x.chunk(2)])
        if self.how == "reordered":
            order = torch.arange(len(x) - 1, -1, -1)
            return self.net(x[order])[torch.argsort(order)]
        if self.how == "time-major":  # x: (N, L, C)
            return self.net(x.transpose(0, 1)).mean(0)
        if self.how == "batch statistics":
            return self.net(torch.relu(self.norm(x)))
        return self.net(x)


@pytest.mark.parametrize("how", ["chunks", "reordered", "time-major", "batch statistics"])
def test_deep_lift_refuses_a_model_that_moves_its_batch(how):
    """[x; x₀] paired by halves of the batch axis: a model that moves them gave maps with no
    error, 100 % off summation to delta (checked now), or torch's size error."""
    x = torch.randn(4, 5, 6) if how == "time-major" else torch.randn(4, 6)
    with pytest.raises(lx.NotAnalyzableModelError, match=r"\[x; x₀\].* first axis"):
        lx.create_analyzer("deep_lift", _Layout(how).eval()).analyze(x)
    assert_sums_to_delta(_Layout("plain").eval(), torch.randn(4, 6))


class _BranchOnTheBatch(nn.Module):
    """Reads a value of the whole batch: ``threshold`` decides whether the branch differs
    between the input alone and the input stacked with a zero reference."""

    def __init__(self, threshold: float) -> None:
        super().__init__()
        self.threshold = threshold
        self.fc1, self.fc2 = nn.Linear(4, 6), nn.Linear(6, 2)

    def forward(self, x):
        h = torch.relu(self.fc1(x))
        if x.mean() > self.threshold:  # on the batch: [x; 0] has half x's mean
            h = 2 * h
        return self.fc2(h)


def test_deep_lift_refuses_a_model_whose_branch_depends_on_the_stacked_batch():
    torch.manual_seed(0)
    x = torch.rand(3, 4, dtype=torch.float64) + 1.0  # mean ≈ 1.5, [x; 0] ≈ 0.75
    with pytest.raises(lx.NotAnalyzableModelError, match="reads tensor values"):
        lx.create_analyzer("deep_lift", _BranchOnTheBatch(1.0).double().eval()).analyze(x)
    assert_sums_to_delta(_BranchOnTheBatch(100.0).double().eval(), x)  # one branch either way


class _MonteCarloDropout(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(4, 16), nn.Linear(16, 2)

    def forward(self, x):
        return self.fc2(F.dropout(torch.relu(self.fc1(x)), 0.5, training=True))


@pytest.mark.parametrize("name", ["deep_lift", "guided_backprop", "lrp.epsilon"])
def test_a_forward_that_differs_each_run_is_refused_naming_the_operation(name):
    torch.manual_seed(0)
    with pytest.raises(lx.NotAnalyzableModelError, match="part at .*dropout"):
        lx.create_analyzer(name, _MonteCarloDropout().eval()).analyze(torch.rand(8, 4))


class _GlobalMaximum(nn.Module):
    """Reads the maximum of the whole batch into Python, or (``scale``) multiplies by it."""

    def __init__(self, scale: bool) -> None:
        super().__init__()
        self.scale = scale
        self.fc1, self.fc2 = nn.Linear(4, 6), nn.Linear(6, 2)

    def forward(self, x):
        h = torch.relu(self.fc1(x))
        if self.scale:
            h = h * x.abs().max()
        elif x.abs().max().item() > 100.0:  # never here
            h = 2 * h
        return self.fc2(h)


def test_deep_lift_reads_a_whole_batch_maximum_and_refuses_to_scale_by_it():
    torch.manual_seed(0)
    x = torch.rand(3, 4, dtype=torch.float64)
    assert_sums_to_delta(_GlobalMaximum(scale=False).double().eval(), x)
    with pytest.raises(lx.NotAnalyzableModelError):
        lx.create_analyzer("deep_lift", _GlobalMaximum(scale=True).double().eval()).analyze(x)


def test_overlapping_eager_contexts_in_threads_put_the_stance_back():
    """The compiler's stance is process-wide: the training callback's eager context and a
    standalone analysis' overlap; each restoring what it found left it force_eager for good."""
    import threading

    import torch._dynamo

    from lit_explain.compiled import eager

    def stance() -> str:
        return torch._dynamo.eval_frame._stance.stance

    entered = [threading.Event(), threading.Event()]
    leave = [threading.Event(), threading.Event()]

    def hold(i: int) -> None:  # (events, not sleeps: a loaded machine starts threads late)
        with eager():
            entered[i].set()
            leave[i].wait(10)

    assert stance() == "default"
    threads = [threading.Thread(target=hold, args=(i,)) for i in range(2)]
    threads[0].start()
    assert entered[0].wait(10)
    threads[1].start()  # opens while the first is open, closes after it
    assert entered[1].wait(10)
    assert stance() == "force_eager"
    leave[0].set()
    threads[0].join()
    assert stance() == "force_eager"  # (the second is still open)
    leave[1].set()
    threads[1].join()
    assert stance() == "default"
