"""LRP rules: how the relevance ``R_y`` at a layer's output reaches its input ``x``.

Relevance travels as the gradient. A rule takes an :class:`~.layers.AffineLayer` and returns
the layer's output ``y`` (the same forward value) with an autograd graph whose backward pass
maps ``R_y`` to ``R_x``. Every rule below is a sum of terms

    R_x = Σ_k  c_k · m_k ⊙ J_kᵀ (R_y / d_k),        J_k = ∂ layer(·, W_k, b_k) / ∂x,

with ``m_k`` a modified input (x, x⁺, 1, the bounds ...), ``W_k`` modified weights and
``d_k`` a stabilised denominator. A term is evaluated as ``z_k = layer(gate(x, m_k), W_k)``:
its forward value is the denominator's part and its backward is the ordinary (transposed)
layer backward followed by ``⊙ m_k``. The z and ε rules are thus one ordinary forward and
one ordinary backward plus elementwise work; nothing re-runs a layer inside the backward.

``x⁺ = max(x, 0)``, ``x⁻ = min(x, 0)``, likewise ``W⁺``, ``W⁻``, ``b⁺``, ``b⁻``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from ..operations import scale_gradient, with_gradient
from .layers import AffineLayer

#: The stabiliser of iNNvestigate's safe division: ``z`` is replaced by this where ``z = 0``.
SAFE_EPSILON = 1e-7


# Primitives: forward values stay, gradients are rewired. -------------------------------

def times_input(x: Tensor) -> Tensor:
    """``x`` whose backward multiplies the incoming gradient by ``x`` (``R_x = x ⊙ ...``)."""
    return scale_gradient(x, x)


def gate(x: Tensor, value: Tensor) -> Tensor:
    """A tensor equal to ``value`` whose gradient reaches ``x`` multiplied by ``value``."""
    value = value.detach()
    return with_gradient(x, value, lambda grad: grad * value)


def attach(value: Tensor, relevance: Tensor) -> Tensor:
    """``value`` forward; backward through the graph of ``relevance`` (same shape)."""
    return value.detach() + (relevance - relevance.detach())


def safe(z: Tensor) -> Tensor:
    """``z`` with its zeros replaced by :data:`SAFE_EPSILON` (iNNvestigate's safe divide)."""
    return z + (z == 0).to(z.dtype) * SAFE_EPSILON


def safe_reciprocal(z: Tensor) -> Tensor:
    """``1 / safe(z)``."""
    return 1.0 / safe(z)


def non_negative(x: Tensor) -> bool:
    """Whether every entry of ``x`` is ≥ 0 (then x⁻ = 0 and its terms are skipped)."""
    return x.numel() == 0 or bool(x.detach().min() >= 0)


# Rules ---------------------------------------------------------------------------------

class Rule:
    """Base class: ``rule(layer)`` returns ``layer(layer.input)`` with the rule's backward."""

    def __call__(self, layer: AffineLayer) -> Tensor:
        raise NotImplementedError


class _RescalingRule(Rule):
    """The z-rule family: ``R_x = x ⊙ Jᵀ (R_y / stabilize(z))``, ``z = Wx (+ b)``.

    One ordinary forward and backward of the layer; ``⊙ x`` and ``/ stabilize(z)`` are the
    only extra (elementwise) work.
    """

    bias: bool

    def stabilize(self, z: Tensor) -> Tensor:
        raise NotImplementedError

    def __call__(self, layer: AffineLayer) -> Tensor:
        y = layer(times_input(layer.input))
        z = y.detach() if self.bias else y.detach() - layer.bias_term()
        return scale_gradient(y, 1.0 / self.stabilize(z))


@dataclass(frozen=True)
class ZRule(_RescalingRule):
    """LRP-z (Bach et al. 2015, "On Pixel-Wise Explanations for Non-Linear Classifier
    Decisions by Layer-Wise Relevance Propagation", PLoS ONE):
    ``R_x = x ⊙ Jᵀ (R_y / z)``, ``z = Wx + b`` (``z = Wx`` with ``bias=False``).

    Relevance absorbed by the bias is lost; with ``bias=False`` it is conserved exactly.
    """

    bias: bool = True

    def stabilize(self, z: Tensor) -> Tensor:
        return safe(z)


@dataclass(frozen=True)
class EpsilonRule(_RescalingRule):
    """LRP-ε (Bach et al. 2015): ``R_x = x ⊙ Jᵀ (R_y / (z + ε·sign(z)))``, sign(0) = +1.

    ε absorbs the relevance of weak or contradictory activations: larger ε, sparser maps.
    """

    epsilon: float = 1e-7
    bias: bool = True

    def stabilize(self, z: Tensor) -> Tensor:
        return z + torch.where(z >= 0, self.epsilon, -self.epsilon)


@dataclass(frozen=True)
class WSquareRule(Rule):
    """w²-rule (Montavon et al. 2017, "Explaining Nonlinear Classification Decisions with
    Deep Taylor Decomposition", Pattern Recognition): ``R_i = Σ_j w_ij² / Σ_i' w_i'j² R_j``.

    For unbounded inputs; the result does not depend on ``x``. The bias is ignored.
    """

    def modified_weight(self, weight: Tensor) -> Tensor:
        return weight.square()

    def __call__(self, layer: AffineLayer) -> Tensor:
        x = layer.input
        z = layer.run(gate(x, torch.ones_like(x)), self.modified_weight(layer.weight))
        return attach(layer(x.detach()), z * safe_reciprocal(z.detach()))


@dataclass(frozen=True)
class FlatRule(WSquareRule):
    """Flat rule (Lapuschkin et al. 2019, "Unmasking Clever Hans Predictors and Assessing
    What Machines Really Learn", Nature Communications): the w²-rule with all weights 1,
    so that relevance spreads evenly over each output's receptive field."""

    def modified_weight(self, weight: Tensor) -> Tensor:
        return torch.ones_like(weight)


@dataclass(frozen=True)
class AlphaBetaRule(Rule):
    """LRP-αβ (Bach et al. 2015; Montavon et al. 2019, "Layer-Wise Relevance Propagation:
    An Overview"), α − β = 1:

        R_x = α · (xW)⁺-part ⊙ Jᵀ(R_y / z⁺) − β · (xW)⁻-part ⊙ Jᵀ(R_y / z⁻),
        z⁺ = x⁺W⁺ + x⁻W⁻ + b⁺,      z⁻ = x⁺W⁻ + x⁻W⁺ + b⁻.

    With ``bias=False`` the ``b⁺``/``b⁻`` terms are left out. iNNvestigate 2.x puts the whole
    bias ``b`` into both ``z⁺`` and ``z⁻``; this follows the papers (and Zennit) instead.
    Cost: where ``x ≥ 0`` (after a ReLU) one call with ``[W⁺; W⁻]`` stacked along the
    output channels gives ``z⁺`` and ``z⁻`` and the layer's output, and one transposed call
    the backward; inputs of both signs take a second such call.
    """

    alpha: float = 2.0
    beta: float = 1.0
    bias: bool = True

    def __post_init__(self) -> None:
        if abs(self.alpha - self.beta - 1.0) > 1e-9:
            raise ValueError(f"alpha - beta must be 1 (relevance conservation); got "
                             f"alpha={self.alpha!r}, beta={self.beta!r}")
        if self.beta < 0:
            raise ValueError(f"beta={self.beta!r} is not valid; expected a number >= 0")

    def __call__(self, layer: AffineLayer) -> Tensor:
        x = layer.input
        plus, minus = layer.weight.clamp(min=0), layer.weight.clamp(max=0)
        # (input part, its weights in z⁺, its weights in z⁻): x⁺ with W⁺ | W⁻, x⁻ with W⁻ | W⁺.
        parts = [(x.detach().clamp(min=0), plus, minus)]
        if not non_negative(x):
            parts.append((x.detach().clamp(max=0), minus, plus))
        activator = inhibitor = 0.0
        for part, to_activator, to_inhibitor in parts:
            if self.beta:
                a, i = layer.run_many(gate(x, part), [to_activator, to_inhibitor])
            else:  # the inhibitor is needed for the output value only
                a, i = layer.run(gate(x, part), to_activator), layer.run(part, to_inhibitor)
            activator, inhibitor = activator + a, inhibitor + i
        y = activator.detach() + inhibitor.detach() + layer.bias_term()
        bias_plus = bias_minus = 0.0
        if self.bias and layer.bias is not None:
            bias_plus = layer.bias_term(layer.bias.clamp(min=0))
            bias_minus = layer.bias_term(layer.bias.clamp(max=0))
        relevance = self.alpha * activator * safe_reciprocal(activator.detach() + bias_plus)
        if self.beta:
            relevance = relevance - self.beta * inhibitor * safe_reciprocal(
                inhibitor.detach() + bias_minus)
        return attach(y, relevance)


@dataclass(frozen=True)
class ZPlusRule(AlphaBetaRule):
    """z⁺-rule (Montavon et al. 2017, Deep Taylor Decomposition): α = 1, β = 0, no bias."""

    alpha: float = field(default=1.0, init=False)
    beta: float = field(default=0.0, init=False)
    bias: bool = field(default=False, init=False)


@dataclass(frozen=True)
class ZPlusFastRule(Rule):
    """z⁺-rule for inputs known to be ≥ 0 (Montavon et al. 2017): ``R_x = x ⊙ Jᵀ(R_y / xW⁺)``.

    Takes ``x`` as it is: on inputs of both signs it differs from :class:`ZPlusRule`.
    """

    def __call__(self, layer: AffineLayer) -> Tensor:
        x = layer.input
        z = layer.run(times_input(x), layer.weight.clamp(min=0))
        return attach(layer(x.detach()), z * safe_reciprocal(z.detach()))


@dataclass(frozen=True)
class BoundedRule(Rule):
    """z^B-rule for inputs in ``[low, high]`` (Montavon et al. 2017, Deep Taylor
    Decomposition): ``R_x = (x ⊙ Jᵀ_W − l ⊙ Jᵀ_{W⁺} − h ⊙ Jᵀ_{W⁻})(R_y / z)``,
    ``z = xW − lW⁺ − hW⁻``. The bias is ignored. Meant for the first layer."""

    low: float = -1.0
    high: float = 1.0

    def __call__(self, layer: AffineLayer) -> Tensor:
        x, weight = layer.input, layer.weight
        y = layer(times_input(x))
        low = layer.run(gate(x, torch.full_like(x, self.low)), weight.clamp(min=0))
        high = layer.run(gate(x, torch.full_like(x, self.high)), weight.clamp(max=0))
        z = y - layer.bias_term() - low - high
        return attach(y, z * safe_reciprocal(z.detach()))


#: iNNvestigate's rule names (``LRP(rule="Epsilon")``) and the rules they stand for.
RULES: dict[str, Rule] = {
    "Z": ZRule(),
    "ZIgnoreBias": ZRule(bias=False),
    "Epsilon": EpsilonRule(),
    "EpsilonIgnoreBias": EpsilonRule(bias=False),
    "WSquare": WSquareRule(),
    "Flat": FlatRule(),
    "AlphaBeta": AlphaBetaRule(),
    "AlphaBetaIgnoreBias": AlphaBetaRule(bias=False),
    "Alpha2Beta1": AlphaBetaRule(2.0, 1.0),
    "Alpha2Beta1IgnoreBias": AlphaBetaRule(2.0, 1.0, bias=False),
    "Alpha1Beta0": AlphaBetaRule(1.0, 0.0),
    "Alpha1Beta0IgnoreBias": AlphaBetaRule(1.0, 0.0, bias=False),
    "ZPlus": ZPlusRule(),
    "ZPlusFast": ZPlusFastRule(),
    "Bounded": BoundedRule(),
}
