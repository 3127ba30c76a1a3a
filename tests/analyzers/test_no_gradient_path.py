"""An explained output with no differentiable path to the input gets a zero map and a
warning that says why, never autograd's raw RuntimeError.

CP-LRP (Ali et al. 2022) holds the softmax output constant: by definition no relevance goes
through it, so an output that reaches the input only through a softmax has zero relevance at
the input. Where part of the output takes another path, that part alone arrives."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

import lit_explain as lx


class SoftmaxOnly(nn.Module):
    """``b(softmax(a(x)))``: the output reaches x only through the softmax."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.a, self.b = nn.Linear(4, 3), nn.Linear(3, 2)

    def forward(self, x: Tensor) -> Tensor:
        return self.b(F.softmax(self.a(x), -1))


class AttentionOverConstants(nn.Module):
    """Token ids → embedding → attention weights over constant values: under CP the tokens
    get nothing (the values, a parameter, do not depend on the input)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.embedding = nn.Embedding(10, 4)
        self.values = nn.Parameter(torch.randn(5, 4))
        self.out = nn.Linear(4, 2)

    def forward(self, tokens: Tensor) -> Tensor:
        h = self.embedding(tokens)
        weights = F.softmax(h @ h.transpose(1, 2), -1)
        return self.out((weights @ self.values).mean(1))


class Partial(nn.Module):
    """``w·x + b(softmax(a(x)))`` without biases."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.direct = nn.Linear(4, 1, bias=False)
        self.a, self.b = nn.Linear(4, 3, bias=False), nn.Linear(3, 1, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.direct(x) + self.b(F.softmax(self.a(x), -1))


@pytest.mark.parametrize("name", ["lrp.epsilon", "lrp.z", "lrp.alpha_1_beta_0"])
def test_cp_on_a_softmax_only_path_gives_a_zero_map_and_says_why(name):
    x = torch.randn(3, 4, generator=torch.Generator().manual_seed(1))
    analyzer = lx.create_analyzer(name, SoftmaxOnly(), attention_rule="cp")
    with pytest.warns(UserWarning, match=r"attention_rule='cp'.*softmax.*all zeros"):
        relevance = analyzer.analyze(x)
    assert torch.equal(relevance, torch.zeros_like(x))
    # AttnLRP propagates through the softmax: the same model gets relevance there
    assert lx.create_analyzer(name, SoftmaxOnly()).analyze(x).abs().sum() > 0


def test_cp_on_token_attention_over_constants_gives_zero_per_token():
    tokens = torch.tensor([[1, 2, 3, 4, 5], [6, 7, 8, 9, 1]])
    analyzer = lx.create_analyzer("lrp.epsilon", AttentionOverConstants(), attention_rule="cp")
    with pytest.warns(UserWarning, match="attention_rule='cp'"):
        relevance = analyzer.analyze(tokens)
    assert torch.equal(relevance, torch.zeros(2, 5))


def test_cp_keeps_the_relevance_of_the_other_path():
    # z-rule, no biases: the sum gives each branch its value as relevance; the softmax
    # branch's share stops at the softmax, the direct branch's gives x_i w_i to input i.
    model = Partial()
    x = torch.randn(3, 4, generator=torch.Generator().manual_seed(2))
    relevance = lx.create_analyzer("lrp.z", model, attention_rule="cp").analyze(x)
    torch.testing.assert_close(relevance, x * model.direct.weight.detach(), rtol=1e-5,
                               atol=1e-6)


class Detached(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(4, 2)

    def forward(self, x: Tensor) -> Tensor:
        return self.linear(x.detach())


@pytest.mark.parametrize("name", ["gradient", "input_t_gradient", "integrated_gradients"])
def test_a_model_that_detaches_its_input_gets_a_zero_gradient_map(name):
    x = torch.randn(2, 4)
    with pytest.warns(UserWarning, match="no differentiable path to the input.*all zeros"):
        relevance = lx.create_analyzer(name, Detached()).analyze(x)
    assert torch.equal(relevance, torch.zeros_like(x))


class FrozenStem(nn.Module):
    """A stem run under ``torch.no_grad()``: the output does not depend on x differentiably."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.stem, self.head = nn.Linear(4, 6), nn.Linear(6, 3)

    def forward(self, x: Tensor) -> Tensor:
        with torch.no_grad():
            h = torch.relu(self.stem(x))
        return self.head(h)


#: Keywords an analyzer needs. Left out: pattern analyzers (they need fitted patterns) and
#: the maps that are no derivative (``input``, ``random``).
NEEDS = {"lrp": {"rule": "Z"}, "lrp.alpha_beta": {"alpha": 2.0},
         "deep_taylor.bounded": {"low": -4.0, "high": 4.0}, "integrated_gradients": {"steps": 2},
         "smoothgrad": {"augment_by_n": 2}}


@pytest.mark.parametrize("name", [n for n in sorted(lx.analyzers) if not n.startswith(
    "pattern.") and n not in ("input", "random", "deep_lift")])
def test_every_analyzer_gives_a_frozen_stem_a_zero_map_and_says_why(name):
    x = torch.randn(2, 4, generator=torch.Generator().manual_seed(3))
    with pytest.warns(UserWarning, match="no differentiable path to the input"):
        relevance = lx.create_analyzer(name, FrozenStem(), **NEEDS.get(name, {})).analyze(x)
    assert torch.equal(relevance, torch.zeros_like(x))


def test_deep_lift_refuses_a_frozen_stem_whose_output_still_moves():
    # summation to delta: the map must sum to f(x) - f(0), which a zero map does not
    x = torch.randn(2, 4, generator=torch.Generator().manual_seed(3))
    with pytest.raises(lx.NotAnalyzableModelError, match="without a gradient"):
        lx.create_analyzer("deep_lift", FrozenStem()).analyze(x)


class ConstantOutput(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(4, 2)

    def forward(self, x: Tensor) -> Tensor:
        return self.linear(torch.zeros_like(x))


def test_deep_lift_gives_a_constant_output_a_zero_map_and_says_why():
    x = torch.randn(2, 4, generator=torch.Generator().manual_seed(3))
    with pytest.warns(UserWarning, match="no differentiable path to the input"):
        relevance = lx.create_analyzer("deep_lift", ConstantOutput()).analyze(x)
    assert torch.equal(relevance, torch.zeros_like(x))


class DetachedBranch(nn.Module):
    """``a(x) + b(x).detach()``, or the index of a maximum selecting a feature."""

    def __init__(self, how: str) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.how = how
        self.a, self.b, self.out = nn.Linear(4, 6), nn.Linear(4, 6), nn.Linear(6, 2)

    def forward(self, x: Tensor) -> Tensor:
        h = torch.relu(self.a(x))
        if self.how == "detach":
            h = h + self.b(x).detach()
        elif self.how == "no_grad":
            with torch.no_grad():
                scale = self.b(x).abs().mean(-1, keepdim=True)
            h = h * scale
        elif self.how == "argmax":
            h = h.gather(1, self.b(x).argmax(1, keepdim=True).expand(-1, 6))
        else:  # max-unpooling (SegNet) at the indices of a max-pooling beside its values
            pooled, indices = F.max_pool1d(h[:, None], 2, return_indices=True)
            h = F.max_unpool1d(pooled, indices, 2, output_size=[6])[:, 0]
        return self.out(h)


@pytest.mark.parametrize("how", ["detach", "no_grad", "argmax", "unpooling"])
def test_deep_lift_refuses_values_of_the_input_without_a_gradient(how):
    x = torch.randn(3, 4, generator=torch.Generator().manual_seed(4))
    with pytest.raises(lx.NotAnalyzableModelError, match="without a gradient"):
        lx.create_analyzer("deep_lift", DetachedBranch(how)).analyze(x)
    # the gradient family differentiates what autograd sees, as a training step does
    lx.create_analyzer("input_t_gradient", DetachedBranch(how)).analyze(x)
