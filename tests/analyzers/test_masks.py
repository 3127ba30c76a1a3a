"""Masks computed from activations (see ``lit_explain.analyzers.masks``).

A ReLU written with a comparison (``torch.where(h > 0, h, 0)``, ``h * (h > 0)``,
``h[h < 0] = 0``, ...) must give every analyzer the map of the same net written with
``F.relu``; another elementwise function written so (a threshold) the map of the same net
written with ``F.threshold``; any other gate by a mask of activations is refused by the
rule-based analyzers (held constant, the mask would make DeepLIFT, Guided Backprop and the
flat rule explain another function) and left to autograd by the gradient family.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

import lit_explain as lx


def _setitem(h: Tensor) -> Tensor:
    h = h.clone()
    h[h < 0] = 0
    return h


def _masked_fill_(h: Tensor) -> Tensor:
    h = h.clone()
    h.masked_fill_(h <= 0, 0.0)
    return h


RELU_FORMS: dict[str, Callable[[Tensor], Tensor]] = {
    "where": lambda h: torch.where(h > 0, h, 0.0),
    "where_zeros": lambda h: torch.where(h > 0, h, torch.zeros_like(h)),
    "where_negated": lambda h: torch.where(~(h < 0), h, 0.0),
    "where_reversed": lambda h: torch.where(0 >= h, 0.0, h),
    "tensor_where": lambda h: h.where(h >= 0, 0.0),
    "masked_fill": lambda h: h.masked_fill(h < 0, 0.0),
    "masked_fill_": _masked_fill_,
    "mul_bool": lambda h: h * (h > 0),
    "mul_float": lambda h: (h > 0).to(h.dtype) * h,
    "setitem": _setitem,
    "clamp": lambda h: h.clamp(min=0),
    "clamp_min": lambda h: torch.clamp_min(h, 0),
    "clamp_": lambda h: h.clone().clamp_(min=0.0),
}


class MLP(nn.Module):
    """Three dense layers with ``activation`` between them."""

    def __init__(self, activation: Callable[[Tensor], Tensor]) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.activation = activation
        self.fc1, self.fc2, self.fc3 = nn.Linear(6, 16), nn.Linear(16, 16), nn.Linear(16, 3)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc3(self.activation(self.fc2(self.activation(self.fc1(x)))))


#: Keywords an analyzer needs; pattern analyzers (fitted) and ``random`` are left out.
NEEDS = {"lrp": {"rule": "Z"}, "lrp.alpha_beta": {"alpha": 2.0},
         "deep_taylor.bounded": {"low": -4.0, "high": 4.0}, "integrated_gradients": {"steps": 4},
         "smoothgrad": {"augment_by_n": 2, "noise_scale": 0.0}}
ANALYZERS = [n for n in sorted(lx.analyzers) if not n.startswith("pattern.") and n != "random"]
X = torch.randn(4, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(1))


def analyze(name: str, activation: Callable[[Tensor], Tensor]) -> Tensor:
    model = MLP(activation).double().eval()
    return lx.create_analyzer(name, model, **NEEDS.get(name, {})).analyze(X)


@pytest.mark.parametrize("form", sorted(RELU_FORMS))
@pytest.mark.parametrize("name", ANALYZERS)
def test_a_relu_written_with_a_mask_gets_the_map_of_f_relu(name, form):
    torch.testing.assert_close(analyze(name, RELU_FORMS[form]), analyze(name, F.relu),
                               rtol=1e-10, atol=1e-12)


THRESHOLD_FORMS: dict[str, Callable[[Tensor], Tensor]] = {
    "where": lambda h: torch.where(h > 0.25, h, -1.0),
    "masked_fill": lambda h: h.masked_fill(h <= 0.25, -1.0),
}


@pytest.mark.parametrize("form", sorted(THRESHOLD_FORMS))
@pytest.mark.parametrize("name", ANALYZERS)
def test_another_function_written_with_a_mask_gets_the_map_of_its_functional_form(name, form):
    def threshold(h: Tensor) -> Tensor:
        return F.threshold(h, 0.25, -1.0)

    try:
        expected = analyze(name, threshold)
    except lx.NotAnalyzableModelError:  # Guided Backprop and Deconvnet: ReLU only
        with pytest.raises(lx.NotAnalyzableModelError):
            analyze(name, THRESHOLD_FORMS[form])
        return
    torch.testing.assert_close(analyze(name, THRESHOLD_FORMS[form]), expected, rtol=1e-10,
                               atol=1e-12)


def test_deep_lift_sums_to_delta_through_a_thresholded_gate():
    model = MLP(THRESHOLD_FORMS["where"]).double().eval()
    relevance = lx.create_analyzer("deep_lift", model).analyze(X)
    logits, reference = model(X), model(torch.zeros_like(X))
    top = logits.argmax(1, keepdim=True)
    torch.testing.assert_close(relevance.sum(1), (logits - reference).gather(1, top)[:, 0])


class GatedByAnother(nn.Module):
    """``a(x) * (b(x) > 0)``: a gate made from another tensor than the one it gates."""

    def __init__(self, changed_in_between: bool = False) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.a, self.b, self.out = nn.Linear(6, 8), nn.Linear(6, 8), nn.Linear(8, 3)
        self.changed_in_between = changed_in_between

    def forward(self, x: Tensor) -> Tensor:
        h = self.a(x)
        if self.changed_in_between:  # the mask is h's, but h changes before it is used
            mask = h > 0
            h = h.add_(1.0)
        else:
            mask = self.b(x) > 0
        return self.out(h * mask)


@pytest.mark.parametrize("changed_in_between", [False, True])
@pytest.mark.parametrize("name", ANALYZERS)
def test_other_gates_by_masks_of_activations_are_refused_by_rules_left_to_autograd(
        name, changed_in_between):
    model = GatedByAnother(changed_in_between).double().eval()
    analyzer = lx.create_analyzer(name, model, **NEEDS.get(name, {}))
    if name in ("gradient", "input", "input_t_gradient", "integrated_gradients",
                "smoothgrad"):
        analyzer.analyze(X)  # autograd: the mask has no gradient, as in any training step
        return
    # (DeepLIFT refuses the mask as a value of the input without a gradient, before its kind)
    with pytest.raises(lx.NotAnalyzableModelError, match="data_mask|without a gradient"):
        analyzer.analyze(X)


def test_the_gradient_through_a_mask_is_autograds():
    model = GatedByAnother().double().eval()
    x = X.clone().requires_grad_(True)
    logits = model(x)
    top = logits.argmax(1)
    (expected,) = torch.autograd.grad(logits.gather(1, top[:, None]).sum(), x)
    torch.testing.assert_close(lx.create_analyzer("gradient", model).analyze(X), expected)
