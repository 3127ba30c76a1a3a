"""LRP rules: how the relevance ``R_y`` at a layer's output reaches its input ``x``.

Every rule here is a sum of terms

    R_x = Σ_k  c_k · m_k ⊙ J_kᵀ (R_y / d_k),        J_k = ∂ layer(·, W_k) / ∂x,

with ``m_k`` a modified input (x, x⁺, x⁻, 1, the bounds), ``W_k`` modified weights and
``d_k`` a stabilised denominator. ``x⁺ = max(x, 0)``, ``x⁻ = min(x, 0)``, likewise for
``W`` and ``b``.

A rule is written as a forward computation: it returns the layer's output ``y`` (the same
value) with an autograd graph whose backward pass is the rule. A term is evaluated as
``z_k = layer.run(m_k, W_k)``: forward it is the denominator's part, backward it is the
layer's ordinary transposed pass. Nothing re-runs a layer inside the backward pass, and the
z and ε rules add only elementwise work to one ordinary forward and backward.

How relevance travels between layers is a :class:`Flow`: as itself (the gradient at a
tensor ``t`` is ``R_t``), or per unit of the tensor (the gradient is ``R_t / t``). In the
second form the ``⊙ x`` of one layer and the ``/ z`` of the layer below cancel, ReLU,
pooling, residual adds and BatchNorm under the z-rule become their ordinary gradients, and
LRP-z becomes Input × Gradient. Rules whose relevance is proportional to their input
(``proportional = True``: z, ε, αβ, z⁺) work in both forms; the others (w², flat, z^B)
need the first, and an analyzer using one of them runs in it.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import ClassVar

import torch
from torch import Tensor

from ..operations import scale_gradient, with_gradient
from ..validation import check_bool, check_number
from .layers import AffineLayer

#: The stabiliser of iNNvestigate's safe division: ``z`` is replaced by this where ``z = 0``.
SAFE_EPSILON = 1e-7


def safe(z: Tensor) -> Tensor:
    """``z`` with ε where it is 0 (a new tensor): iNNvestigate's safe division, for
    denominators of either sign. Subnormal values count as 0: their reciprocal overflows (a
    float32 softmax output of ``exp(−89)`` made a map of NaN)."""
    # (z + ε·[|z| < tiny], at a third of torch.where's cost: exactly ε where |z| < tiny in
    # float32, float64 and bfloat16, whose subnormals are far below ε's precision; the rules
    # refuse float16, where ε itself is subnormal)
    zero = torch.abs(z).lt_(torch.finfo(z.dtype).tiny)
    return torch.add(z, zero, alpha=SAFE_EPSILON)


def unchanged(y: Tensor) -> Tensor:
    """The :meth:`Rule.output_gradient` of a rule that is its layer's own gradient."""
    return y


def safe_reciprocal(z: Tensor) -> Tensor:
    """``1 / safe(z)``."""
    return safe(z).reciprocal_()


def _scaled(tensor: Tensor, factor: float) -> Tensor:
    """``tensor ·= factor`` in place, skipped for 1."""
    return tensor if factor == 1 else tensor.mul_(factor)


def gate(x: Tensor, value: Tensor, multiplier: Tensor) -> Tensor:
    """A tensor equal to ``value`` whose gradient reaches ``x`` multiplied by ``multiplier``."""
    multiplier = multiplier.detach()
    return with_gradient(x, value.detach(), lambda grad: grad * multiplier)


class _Redistribute(torch.autograd.Function):
    @staticmethod
    def forward(ctx, value: Tensor, factors: list, *terms: Tensor) -> Tensor:
        ctx.factors = factors
        return value.detach()  # a new tensor, not a view: the model may modify it in place

    @staticmethod
    def backward(ctx, grad: Tensor):
        return (None, None, *(grad * factor for factor in ctx.factors))


class _RedistributeStacked(torch.autograd.Function):
    @staticmethod
    def forward(ctx, value: Tensor, factors: list, axis: int, stacked: Tensor,
                sizes: list[int]) -> Tensor:
        ctx.factors, ctx.axis, ctx.sizes = factors, axis, sizes
        ctx.shape, ctx.strides = stacked.shape, stacked.stride()
        return value.detach()

    @staticmethod
    def backward(ctx, grad: Tensor):
        # g ⊙ factor written into each part of the stacked tensor's gradient: the parts' own
        # gradients would be concatenated into it, one more pass over all of it
        stacked = torch.empty_strided(ctx.shape, ctx.strides, dtype=grad.dtype,
                                      device=grad.device)
        for part, factor in zip(stacked.split(ctx.sizes, ctx.axis), ctx.factors, strict=True):
            torch.mul(grad, factor, out=part)
        return None, None, None, stacked, None


def stacked_parts(terms: list[Tensor]) -> tuple[Tensor, int] | None:
    """``(stacked, axis)`` where ``terms`` are views of one tensor that tile it along
    ``axis`` in order (the parts :meth:`~.layers.AffineLayer.parts` makes by one call)."""
    stacked = terms[0]._base
    if stacked is None or any(t._base is not stacked or t.dim() != stacked.dim()
                              for t in terms):
        return None
    strides, shape = stacked.stride(), stacked.shape
    for axis in range(stacked.dim()):
        if sum(t.shape[axis] for t in terms) != shape[axis]:
            continue
        offset = stacked.storage_offset()
        for t in terms:
            if t.stride() != strides or t.storage_offset() != offset or any(
                    t.shape[d] != shape[d] for d in range(len(shape)) if d != axis):
                break
            offset += t.shape[axis] * strides[axis]
        else:
            return stacked, axis
    return None


def redistribute(terms: list[Tensor], value: Tensor, factors: list[Tensor | float]) -> Tensor:
    """``value`` forward; backward, the incoming gradient ``g`` enters the graph of each
    ``terms[k]`` as ``g ⊙ factors[k]`` (where the terms are the parts of one stacked
    tensor, into that tensor's graph directly)."""
    stacked = stacked_parts(terms) if len(terms) > 1 else None
    if stacked is not None:
        return _RedistributeStacked.apply(value.detach(), factors, stacked[1], stacked[0],
                                          [t.shape[stacked[1]] for t in terms])
    return _Redistribute.apply(value.detach(), factors, *terms)


# How relevance travels --------------------------------------------------------------------

class Flow:
    """Relevance travels as itself: the gradient reaching a tensor ``t`` is ``R_t``."""

    #: Whether the gradient is relevance per unit of the tensor, ``R_t / t``.
    relative: ClassVar[bool] = False

    def input(self, x: Tensor) -> Tensor:
        """``x`` as the input of a term ``x ⊙ Jᵀ(...)``."""
        return scale_gradient(x, x)

    def part(self, x: Tensor, positive: bool) -> Tensor:
        """``x⁺`` (or ``x⁻``) as the input of a term ``x⁺ ⊙ Jᵀ(...)``."""
        value = x.detach().clamp(min=0) if positive else x.detach().clamp(max=0)
        return gate(x, value, value)

    def output(self, y: Tensor, *terms: tuple[Tensor, Tensor, float],
               exact: bool = False) -> Tensor:
        """``y`` forward; backward, ``R_y ⊙ scale / denominator`` enters ``z`` for each term
        ``(z, denominator, scale)``. A denominator is owned by the caller, which lets it be
        overwritten: one elementwise pass makes the factor. It is stabilised (no zeros), or,
        with ``exact``, 0 only where every contribution to its term is 0 (αβ's ``z⁺ + b⁺ ≥
        0``): the factor is 0 there (one more pass, where a floor took one too), the ratio
        exact everywhere else, at any scale (a floor of ε = 1e-7 took αβ 38 % off, Deep Taylor
        to all zeros, at inputs of 1e-5 to 1e-8, where these positively homogeneous rules
        scale with the input). A factor too large for the dtype counts as such a 0."""
        factors = [self._factor(y, denominator, scale) for _, denominator, scale in terms]
        if exact:
            for factor in factors:
                factor.nan_to_num_(nan=0.0, posinf=0.0, neginf=0.0)
        return redistribute([z for z, _, _ in terms], y, factors)

    def rescale(self, y: Tensor, denominator: Tensor) -> Tensor:
        """``y`` forward; backward, ``R_y / denominator`` enters ``y``'s own graph (the
        z-rule family)."""
        return self.output(y, (y, denominator, 1.0))

    def _factor(self, y: Tensor, denominator: Tensor, scale: float) -> Tensor:
        return _scaled(denominator.reciprocal_(), scale)


class RelativeFlow(Flow):
    """Relevance travels per unit of the tensor: the gradient reaching ``t`` is ``R_t / t``.

    Where the model input (or a reshape or preprocessing of it) enters the model's first
    other operation, :meth:`boundary` turns it back into relevance, so that the gradient at
    the input is the relevance itself. Only for rules whose relevance is proportional to
    their input (``Rule.proportional``).
    """

    relative = True

    @staticmethod
    def boundary(t: Tensor) -> Tensor:
        """``t`` forward; backward, relevance per unit of ``t`` becomes relevance."""
        value = t.detach()
        return with_gradient(t, value, lambda grad: grad * value)

    def input(self, x: Tensor) -> Tensor:
        return x  # (x ⊙ Jᵀ(...)) / x

    def part(self, x: Tensor, positive: bool) -> Tensor:
        detached = x.detach()
        value = detached.clamp(min=0) if positive else detached.clamp(max=0)
        mask = (detached > 0) if positive else (detached < 0)
        return gate(x, value, mask.to(x.dtype))  # x⁺ / x

    def _factor(self, y: Tensor, denominator: Tensor, scale: float) -> Tensor:
        # R_y = y ⊙ gradient; scale · y / denominator in one pass, into the denominator
        if scale == 1:
            return torch.div(y.detach(), denominator, out=denominator)
        y = y.detach()
        return torch.addcdiv(y.new_zeros(()), y, denominator, value=scale, out=denominator)


# Rules --------------------------------------------------------------------------------------

class Rule:
    """Base class: ``rule(layer, flow)`` returns ``layer(layer.input)`` with the rule as its
    backward pass. ``proportional``: the rule's relevance is ``x ⊙ (...)`` (works in
    :class:`RelativeFlow`)."""

    proportional: ClassVar[bool] = False

    def __call__(self, layer: AffineLayer, flow: Flow) -> Tensor:
        raise NotImplementedError

    def output_gradient(self, flow: Flow) -> Callable[[Tensor], Tensor] | None:
        """Where in ``flow`` the rule is the layer's plain output with its incoming gradient
        transformed (nothing else of the layer needed), that transform (:func:`unchanged`:
        the layer's own backward); otherwise ``None``. A replay of the analysis applies it to
        the layer's output (:mod:`~..replay`)."""
        return None

    def output_value(self, layer: AffineLayer) -> Tensor:
        """The layer's output value, computed the way this rule will need anyway: what the
        model receives while the rule waits to be applied (see the LRP analyzer)."""
        return layer.linear_term()


class _RescalingRule(Rule):
    """The z-rule family: ``R_x = x ⊙ Jᵀ (R_y / stabilized(z))``, ``z = Wx (+ b)``:
    the layer's ordinary forward and backward, plus elementwise work."""

    proportional = True
    bias: bool

    def __post_init__(self) -> None:
        check_bool("bias", self.bias)

    def stabilize(self, z: Tensor) -> Tensor:
        """The denominator for ``z``: a new tensor with no zeros."""
        raise NotImplementedError

    def output_value(self, layer: AffineLayer) -> Tensor:
        if self.bias:
            return super().output_value(layer)
        return layer.product_term.detach() + layer.bias_term()  # (the product made once)

    def __call__(self, layer: AffineLayer, flow: Flow) -> Tensor:
        if self.bias:
            y = layer.linear_term()
            return flow.rescale(y, self.stabilize(y.detach()))
        wx = layer.product_term  # W x itself: y − b cancels where b dominates
        return flow.rescale(wx + layer.bias_term(), self.stabilize(wx.detach()))


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

    def __call__(self, layer: AffineLayer, flow: Flow) -> Tensor:
        if flow.relative and self.bias:  # R_y / z = gradient: the layer's own backward
            return layer.linear_term()
        return super().__call__(layer, flow)

    def output_gradient(self, flow: Flow) -> Callable[[Tensor], Tensor] | None:
        return unchanged if flow.relative and self.bias else None


@dataclass(frozen=True)
class EpsilonRule(_RescalingRule):
    """LRP-ε (Bach et al. 2015): ``R_x = x ⊙ Jᵀ (R_y / (z + ε·sign(z)))``, sign(0) = +1.

    ε absorbs the relevance of weak or contradictory activations: larger ε, sparser maps.
    """

    epsilon: float = 1e-7
    bias: bool = True

    def __post_init__(self) -> None:
        super().__post_init__()
        check_number("epsilon", self.epsilon, at_least=0)

    def stabilize(self, z: Tensor) -> Tensor:
        if not self.epsilon:
            return safe(z)
        return z.abs().add_(self.epsilon).copysign_(z)  # sign(z)·(|z| + ε) = z + ε·sign(z)

    def __call__(self, layer: AffineLayer, flow: Flow) -> Tensor:
        transform = self.output_gradient(flow)
        if transform is None:
            return super().__call__(layer, flow)
        return transform(layer.linear_term())

    def output_gradient(self, flow: Flow) -> Callable[[Tensor], Tensor] | None:
        if not (flow.relative and self.bias and self.epsilon):
            return None
        epsilon = self.epsilon

        def transform(y: Tensor) -> Tensor:
            # Per unit: R_y / (y + ε·sign y) · y = |y| / (|y| + ε) times the gradient g, that
            # is g − ε·g / (|y| + ε): one pass forward, one backward.
            denominator = y.detach().abs().add_(epsilon)
            return with_gradient(y, y, lambda grad: torch.addcdiv(grad, grad, denominator,
                                                                  value=-epsilon))

        return transform


@dataclass(frozen=True)
class MagnitudeShareRule(Rule):
    """The input and the bias share the relevance by the magnitude of their contributions:
    ``R_x = |W x| / (|W x| + |b|) · R_y``. For elementwise layers (a BatchNorm that follows
    no kernel layer): a share in [0, 1] of ``R_y``, so it cannot blow up where ``y ≈ 0``
    (the z-rule can), and it does not hand the bias's relevance to an input near 0 (passing
    relevance unchanged does, and the kernel layer below then divides it by that input).
    """

    proportional = True

    def __call__(self, layer: AffineLayer, flow: Flow) -> Tensor:
        y = layer.linear_term()
        z = layer.product_term.detach()  # W x itself (y − b cancels where b dominates)
        bias = torch.as_tensor(layer.bias_term(), dtype=z.dtype, device=z.device).abs()
        # sign(z)·(|z| + |b|): R_y times |z| / (|z| + |b|), the input's share, reaches z
        denominator = z.abs().add_(bias).clamp_(min=SAFE_EPSILON).copysign_(z)
        return flow.rescale(y, denominator)


@dataclass(frozen=True)
class WSquareRule(Rule):
    """w²-rule (Montavon et al. 2017, "Explaining Nonlinear Classification Decisions with
    Deep Taylor Decomposition", Pattern Recognition 65): ``R_i = Σ_j w_ij² / Σ_i' w_i'j² R_j``.

    For unbounded inputs; the result does not depend on ``x``. The bias is ignored.
    """

    def modified_weight(self, weight: Tensor) -> Tensor:
        return weight.square()

    def __call__(self, layer: AffineLayer, flow: Flow) -> Tensor:
        x = layer.input
        ones = layer.support(1.0)  # (not a padding written before the layer)
        z = layer.run(gate(x, ones, ones), self.modified_weight(layer.weight))
        return flow.output(layer.output_value(), (z, safe(z.detach()), 1.0))


@dataclass(frozen=True)
class FlatRule(WSquareRule):
    """Flat rule (Lapuschkin et al. 2019, "Unmasking Clever Hans Predictors and Assessing
    What Machines Really Learn", Nature Communications 10): the w²-rule with all weights 1,
    so that relevance spreads evenly over each output's receptive field."""

    def modified_weight(self, weight: Tensor) -> Tensor:
        return torch.ones_like(weight)


@dataclass(frozen=True)
class AlphaBetaRule(Rule):
    """LRP-αβ (Bach et al. 2015; Montavon et al. 2019, "Layer-Wise Relevance Propagation:
    An Overview"), α − β = 1:

        R_x = α Σ_j (positive part of x_i w_ij) / z⁺_j R_j − β Σ_j (negative part) / z⁻_j R_j
        z⁺ = x⁺W⁺ + x⁻W⁻ + b⁺,      z⁻ = x⁺W⁻ + x⁻W⁺ + b⁻.

    With ``bias=False`` the ``b⁺``/``b⁻`` terms are left out. iNNvestigate 2.x puts the whole
    bias ``b`` into both ``z⁺`` and ``z⁻``; this follows the papers (and Zennit) instead.
    Cost: where ``x ≥ 0`` (after a ReLU) the calls with ``W⁺`` and ``W⁻`` give ``z⁺``,
    ``z⁻`` and so the output, and the backward is their two transposed calls; β = 0 needs
    ``W⁺`` and the ordinary call forward, one transposed call backward. On inputs of both
    signs (the first layer) each of ``z⁺``, ``z⁻`` is one call on ``x⁺`` and ``x⁻`` stacked
    along the input channels (:meth:`~.layers.AffineLayer.mixed_part`), two where the
    layer groups its channels.
    """

    proportional = True
    alpha: float = 2.0
    beta: float = 1.0
    bias: bool = True

    def __post_init__(self) -> None:
        check_bool("bias", self.bias)
        check_number("alpha", self.alpha, at_least=1)
        check_number("beta", self.beta, at_least=0)
        if abs(self.alpha - self.beta - 1.0) > 1e-9:
            raise ValueError(f"alpha - beta must be 1 (relevance conservation); got "
                             f"alpha={self.alpha!r}, beta={self.beta!r}")

    def output_value(self, layer: AffineLayer) -> Tensor:
        """With β > 0 on a non-negative input the two parts this rule needs give the output;
        the layer's own call is not needed. The rule reuses it (held weakly, as the model
        holds it: once the model lets go, so does the layer)."""
        if not self.beta or not layer.input_non_negative():
            return super().output_value(layer)
        z_plus, z_minus = layer.parts(layer.term_input)
        output = torch.add(z_plus.detach(), z_minus.detach()).add_(layer.bias_term())
        layer.memo["output"] = weakref.ref(output)
        return output

    def __call__(self, layer: AffineLayer, flow: Flow) -> Tensor:
        signed = not layer.input_non_negative()
        if not self.beta:
            return self._positive_only(layer, flow, signed)
        bias_plus = bias_minus = 0.0
        if self.bias and layer.bias is not None:
            bias_plus = layer.bias_term(layer.bias.clamp(min=0))
            bias_minus = layer.bias_term(layer.bias.clamp(max=0))
        scale, y = None, None
        if not signed:  # x⁻ = 0: z⁺ = xW⁺, z⁻ = xW⁻; where both are s ⊙ q, in q
            z_plus, z_minus, scale = layer.scaled_parts(layer.term_input)
            if scale is not None:  # (s z + b) / (s z + b) · s = (z + b/s) / (z + b/s)
                bias_plus, bias_minus = bias_plus / scale, bias_minus / scale
            else:  # the output value made of the same parts (a fused layer's is another)
                y = layer.memo.pop("output", lambda: None)()
        else:  # x⁺ with W⁺ | W⁻, x⁻ with W⁻ | W⁺
            positive, negative = layer.input_parts(flow)
            z_plus = layer.mixed_part(positive, negative, True)
            z_minus = layer.mixed_part(positive, negative, False)
        # The denominators z⁺ + b⁺ ≥ 0 and z⁻ + b⁻ ≤ 0 (for the term −β R (z⁻-part) /
        # (z⁻ + b⁻)), exact (see Flow.output)
        activator = torch.add(z_plus.detach(), bias_plus)
        inhibitor = torch.add(z_minus.detach(), bias_minus)
        if y is None:
            y = activator + inhibitor  # W x + b
            if scale is not None:
                y.mul_(scale)
            if not self.bias and layer.bias is not None:  # the denominators leave b out
                y.add_(layer.bias_term())
        return flow.output(y, (z_plus, activator, self.alpha),
                           (z_minus, inhibitor, -self.beta), exact=True)

    def _positive_only(self, layer: AffineLayer, flow: Flow, signed: bool) -> Tensor:
        """β = 0: ``z⁺ + b⁺`` alone (the layer's call adds ``b⁺``), exact; the output value
        is the layer's own."""
        bias = layer.bias.clamp(min=0) if self.bias and layer.bias is not None else None
        if signed:
            z_plus = layer.mixed_part(*layer.input_parts(flow), True, bias)
        else:
            z_plus = layer.biased(layer.term_input, layer.weight_parts[0], bias)
        # (z⁺'s own values are not needed backward, only its graph: the factor is made in them)
        return flow.output(layer.output_value(), (z_plus, z_plus.detach(), self.alpha),
                           exact=True)


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

    proportional = True

    def __call__(self, layer: AffineLayer, flow: Flow) -> Tensor:
        z = layer.part(layer.term_input, True)
        return flow.output(layer.output_value(), (z, safe(z.detach()), 1.0))


@dataclass(frozen=True)
class BoundedRule(Rule):
    """z^B-rule for inputs in ``[low, high]`` (Montavon et al. 2017, Deep Taylor
    Decomposition): ``R_x = (x ⊙ Jᵀ_W − l ⊙ Jᵀ_{W⁺} − h ⊙ Jᵀ_{W⁻})(R_y / z)``,
    ``z = xW − lW⁺ − hW⁻``. The bias is ignored. Meant for the first layer."""

    low: float = -1.0
    high: float = 1.0

    def __post_init__(self) -> None:
        check_number("low", self.low)
        check_number("high", self.high)
        if not self.low < self.high:
            raise ValueError(f"low={self.low!r} must be smaller than high={self.high!r}")

    def __call__(self, layer: AffineLayer, flow: Flow) -> Tensor:
        x, weight = layer.input, layer.weight
        # (at a padding the bounds are its value: no term of it, no relevance to it)
        low, high = layer.support(self.low, "input"), layer.support(self.high, "input")
        y = layer.linear_term()
        z = (layer.product_term - layer.run(gate(x, low, low), weight.clamp(min=0))
             - layer.run(gate(x, high, high), weight.clamp(max=0)))
        return flow.output(y.detach(), (z, safe(z.detach()), 1.0))


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
    "MagnitudeShare": MagnitudeShareRule(),
}
