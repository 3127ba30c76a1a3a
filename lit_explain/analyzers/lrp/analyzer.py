"""Layer-wise relevance propagation (Bach et al. 2015) as one forward and one backward pass.

The backward pass starts from the selected output's value and carries relevance as the
gradient (see :class:`~.rules.Flow`), so the map at the input is the relevance itself.
Per operation kind:

- kernel layers (linear, convolution, transposed convolution): the rule chosen by
  ``rule=``/``input_layer_rule=``/``until_layer_*`` (see :mod:`.presets`);
- BatchNorm: an affine layer with its own rule, ``bn_layer_rule`` (default: the z-rule);
- ReLU (module, ``F.relu``, ``torch.relu``, ``Tensor.relu``, in place or not): relevance
  passes unchanged, as in iNNvestigate; the kernel rule below uses the pre-activation;
- average and adaptive average pooling, residual adds (``+``, ``+=``, ``torch.add``),
  subtraction, sums and means, padding, products with constants: the z-rule, which splits
  the relevance of ``a + b`` in proportion to ``a`` and ``b``;
- max-pooling: the winner takes the relevance (first element on ties); reshapes, views,
  flatten, ``torch.cat``, indexing and dropout move relevance as they move values;
- anything else with a differentiable output (sigmoid, GELU, softmax, attention products):
  :class:`~lit_explain.NotAnalyzableModelError`, naming the module path and type.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

from torch import Tensor, nn

from ..base import Analyzer, NeuronSelection
from ..operations import (
    BATCH_NORM,
    KERNEL,
    LINEAR,
    MAX_POOL,
    RELU,
    STRUCTURE,
    OperationCall,
    map_differentiable,
    scale_gradient,
    with_gradient,
)
from ..registry import register
from .layers import BatchNormLayer, KernelLayer
from .presets import ALPHA_1_BETA_0, ALPHA_2_BETA_1, RuleMap, RuleSpec, sequential_preset, to_rule
from .rules import (
    AlphaBetaRule,
    EpsilonRule,
    FlatRule,
    Flow,
    RelativeFlow,
    Rule,
    WSquareRule,
    ZPlusFastRule,
    ZPlusRule,
    ZRule,
    safe_reciprocal,
)

PASSTHROUGH = frozenset({MAX_POOL, STRUCTURE})


def _has_differentiable_input(call: OperationCall, layer_input: object) -> bool:
    return any(t is layer_input for t in call.inputs)


def out_of_place(call: OperationCall) -> Tensor:
    """The operation with its ordinary gradient, run out of place (``relu_``, ``+=``)."""
    return call.run()


def pass_relevance(call: OperationCall) -> Tensor:
    """ReLU: the forward value, with relevance passed through unchanged."""
    source = call.args[0] if call.args else call.kwargs["input"]
    if not call.inputs:
        return call.run()
    return with_gradient(source, call.run(), lambda grad: grad)


def z_rule_operation(call: OperationCall) -> Tensor:
    """The z-rule on an operation linear in its inputs: ``R_x = x ⊙ Jᵀ (R_y / y)``."""
    if not call.inputs:
        return call.run()
    args, kwargs = map_differentiable(lambda t: scale_gradient(t, t), (call.args, call.kwargs))
    y = call.run(*args, **kwargs)
    return scale_gradient(y, safe_reciprocal(y.detach()))


@register("lrp")
class LRP(Analyzer):
    """Layer-wise relevance propagation with a rule per layer (iNNvestigate's ``lrp``).

    Bach et al. 2015, "On Pixel-Wise Explanations for Non-Linear Classifier Decisions by
    Layer-Wise Relevance Propagation", PLoS ONE 10(7); Montavon et al. 2019, "Layer-Wise
    Relevance Propagation: An Overview".

    Parameters
    ----------
    rule:
        A rule name (``"Z"``, ``"Epsilon"``, ``"Alpha2Beta1"``, ...), a :class:`Rule` object
        or class, a list of them (one per kernel layer, input first), or a list of
        ``(condition, rule)`` pairs; see :mod:`lit_explain.analyzers.lrp.presets`.
    input_layer_rule:
        Rule for the first kernel layer fed by the input (through reshapes only); a tuple
        ``(low, high)`` means the bounded z^B rule for inputs in that range. ``None``: the
        input layer is treated like the others.
    until_layer_idx, until_layer_rule:
        Kernel layers ``0 .. until_layer_idx`` get ``until_layer_rule`` (before all others).
    bn_layer_rule:
        Rule of BatchNorm layers, seen as ``y = a ⊙ x + c``; ``None``: the z-rule.
    **reverse:
        iNNvestigate's reverse-pass diagnostics (``reverse_keep_tensors``, ...), keyword
        only, taken by every LRP analyzer; see :class:`~..diagnostics.ReverseOptions` and
        :func:`~..conservation.conservation_report`.

    Notes
    -----
    The backward pass starts from the selected logit's value. The result is the relevance
    at the input, whatever the input layer's rule.
    """

    seed_with_value = True

    def __init__(self, model: nn.Module, neuron_selection_mode: str = "max_activation",
                 rule: RuleSpec | Sequence[Any] | None = None,
                 input_layer_rule: RuleSpec | tuple[float, float] | None = None,
                 until_layer_idx: int | None = None, until_layer_rule: RuleSpec | None = None,
                 bn_layer_rule: RuleSpec | None = None, **reverse: Any) -> None:
        super().__init__(model, neuron_selection_mode, **reverse)
        if rule is None:
            raise ValueError("lrp needs rule=: a rule name, a Rule, a list of them or a list "
                             "of (condition, rule) pairs")
        self.rules = RuleMap(rule, input_layer_rule, until_layer_idx, until_layer_rule)
        self.bn_layer_rule = ZRule() if bn_layer_rule is None else to_rule(
            bn_layer_rule, "bn_layer_rule")
        # Relevance per unit of input where every rule allows it: cheaper, same result.
        proportional = all(r.proportional for r in [*self.rules.rules(), self.bn_layer_rule])
        self.flow = RelativeFlow() if proportional else Flow()

    def _kernel(self, call: OperationCall) -> Tensor:
        layer = KernelLayer(call)
        if not _has_differentiable_input(call, layer.input):
            return call.run()
        return self.rules(call)(layer, self.flow)

    def _batch_norm(self, call: OperationCall) -> Tensor:
        layer = BatchNormLayer(call)
        if not _has_differentiable_input(call, layer.input):
            return call.run()
        return self.bn_layer_rule(layer, self.flow)

    def _relevance_scale(self, tensor: Tensor) -> Tensor | None:
        return tensor if self.flow.relative else None  # relative flow: gradient = R_t / t

    def _seed(self, logits: Tensor, indices: Tensor | None) -> Tensor:
        seed = super()._seed(logits, indices)  # the relevance R: the selected logit's value
        return seed * safe_reciprocal(logits.detach()) if self.flow.relative else seed

    def _analyze(self, x: Tensor, neuron_selection: NeuronSelection) -> Tensor:
        handlers = {KERNEL: self._kernel, BATCH_NORM: self._batch_norm}
        if self.flow.relative:
            # Per unit of input, the z-rule of ReLU, pooling, adds and sums is their gradient
            # (run out of place: a rule's output may not be modified in place).
            handlers.update({RELU: out_of_place, LINEAR: out_of_place})
            passthrough = PASSTHROUGH
        else:
            handlers.update({RELU: pass_relevance, LINEAR: z_rule_operation})
            passthrough = PASSTHROUGH
        relevance = self._backward(x, self.selector(neuron_selection), handlers, passthrough)
        return x * relevance if self.flow.relative else relevance


class _FixedRuleLRP(LRP):
    """An LRP analyzer whose kernel-layer rule is fixed by its name.

    Parameters
    ----------
    input_layer_rule:
        As for :class:`LRP`: a rule for the input layer, or ``(low, high)`` for z^B.
    """

    kernel_rule: ClassVar[Rule]

    def __init__(self, model: nn.Module, neuron_selection_mode: str = "max_activation",
                 input_layer_rule: RuleSpec | tuple[float, float] | None = None,
                 **reverse: Any) -> None:
        super().__init__(model, neuron_selection_mode, rule=self.kernel_rule,
                         input_layer_rule=input_layer_rule, **reverse)


@register("lrp.z")
class LRPZ(_FixedRuleLRP):
    """LRP-z on every kernel layer (:class:`ZRule`): ``R_x = x ⊙ Jᵀ(R_y / z)``."""

    kernel_rule = ZRule()


@register("lrp.z_IB")
class LRPZIgnoreBias(_FixedRuleLRP):
    """LRP-z without the bias in the denominator: relevance is conserved."""

    kernel_rule = ZRule(bias=False)


@register("lrp.w_square")
class LRPWSquare(_FixedRuleLRP):
    """The w²-rule on every kernel layer (:class:`WSquareRule`)."""

    kernel_rule = WSquareRule()


@register("lrp.flat")
class LRPFlat(_FixedRuleLRP):
    """The Flat rule on every kernel layer (:class:`FlatRule`)."""

    kernel_rule = FlatRule()


@register("lrp.alpha_2_beta_1")
class LRPAlpha2Beta1(_FixedRuleLRP):
    """LRP-α2β1, ``b⁺`` in ``z⁺`` and ``b⁻`` in ``z⁻`` (:class:`AlphaBetaRule`)."""

    kernel_rule = ALPHA_2_BETA_1


@register("lrp.alpha_2_beta_1_IB")
class LRPAlpha2Beta1IgnoreBias(_FixedRuleLRP):
    """LRP-α2β1 without bias."""

    kernel_rule = AlphaBetaRule(2.0, 1.0, bias=False)


@register("lrp.alpha_1_beta_0")
class LRPAlpha1Beta0(_FixedRuleLRP):
    """LRP-α1β0, ``b⁺`` in ``z⁺`` (:class:`AlphaBetaRule`)."""

    kernel_rule = ALPHA_1_BETA_0


@register("lrp.alpha_1_beta_0_IB")
class LRPAlpha1Beta0IgnoreBias(_FixedRuleLRP):
    """LRP-α1β0 without bias."""

    kernel_rule = AlphaBetaRule(1.0, 0.0, bias=False)


@register("lrp.z_plus")
class LRPZPlus(_FixedRuleLRP):
    """The z⁺-rule on every kernel layer (:class:`ZPlusRule`: α1β0 without bias)."""

    kernel_rule = ZPlusRule()


@register("lrp.z_plus_fast")
class LRPZPlusFast(_FixedRuleLRP):
    """The z⁺-rule for non-negative inputs, ``x ⊙ Jᵀ_{W⁺}(R / xW⁺)`` (:class:`ZPlusFastRule`)."""

    kernel_rule = ZPlusFastRule()


@register("lrp.epsilon")
class LRPEpsilon(LRP):
    """LRP-ε on every kernel layer (:class:`EpsilonRule`).

    Parameters
    ----------
    epsilon:
        The stabiliser ε (iNNvestigate's default 1e-7).
    bias:
        Whether the bias is part of the denominator.
    """

    def __init__(self, model: nn.Module, neuron_selection_mode: str = "max_activation",
                 epsilon: float = 1e-7, bias: bool = True,
                 input_layer_rule: RuleSpec | tuple[float, float] | None = None,
                 **reverse: Any) -> None:
        _check_epsilon(epsilon)
        super().__init__(model, neuron_selection_mode, rule=EpsilonRule(epsilon, bias),
                         input_layer_rule=input_layer_rule, **reverse)


@register("lrp.epsilon_IB")
class LRPEpsilonIgnoreBias(LRP):
    """LRP-ε without the bias in the denominator."""

    def __init__(self, model: nn.Module, neuron_selection_mode: str = "max_activation",
                 epsilon: float = 1e-7,
                 input_layer_rule: RuleSpec | tuple[float, float] | None = None,
                 **reverse: Any) -> None:
        _check_epsilon(epsilon)
        super().__init__(model, neuron_selection_mode, rule=EpsilonRule(epsilon, bias=False),
                         input_layer_rule=input_layer_rule, **reverse)


@register("lrp.alpha_beta")
class LRPAlphaBeta(LRP):
    """LRP-αβ on every kernel layer (:class:`AlphaBetaRule`), α − β = 1.

    Parameters
    ----------
    alpha, beta:
        Weights of the positive and negative contributions; give one and the other follows
        from α − β = 1.
    bias:
        Whether ``b⁺`` joins ``z⁺`` and ``b⁻`` joins ``z⁻``.
    """

    def __init__(self, model: nn.Module, neuron_selection_mode: str = "max_activation",
                 alpha: float | None = None, beta: float | None = None, bias: bool = True,
                 input_layer_rule: RuleSpec | tuple[float, float] | None = None,
                 **reverse: Any) -> None:
        if alpha is None and beta is None:
            raise ValueError("lrp.alpha_beta needs alpha or beta (alpha - beta = 1)")
        alpha = float(beta) + 1.0 if alpha is None else float(alpha)
        beta = alpha - 1.0 if beta is None else float(beta)
        super().__init__(model, neuron_selection_mode, rule=AlphaBetaRule(alpha, beta, bias),
                         input_layer_rule=input_layer_rule, **reverse)


def _check_epsilon(epsilon: float) -> None:
    if isinstance(epsilon, bool) or not isinstance(epsilon, (int, float)) or epsilon < 0:
        raise ValueError(f"epsilon={epsilon!r} is not valid; expected a number >= 0")


class _SequentialPreset(LRP):
    conv_rule: Rule
    flat_input: bool = False

    def __init__(self, model: nn.Module, neuron_selection_mode: str = "max_activation",
                 epsilon: float = 0.1, **reverse: Any) -> None:
        _check_epsilon(epsilon)
        preset = sequential_preset(self.conv_rule, epsilon, self.flat_input)
        super().__init__(model, neuron_selection_mode, rule=preset.rules(),
                         input_layer_rule=preset.input_layer, **reverse)


@register("lrp.sequential_preset_a")
class LRPSequentialPresetA(_SequentialPreset):
    """ε (default 0.1) on dense layers, α1β0 on convolutions (Montavon et al. 2019)."""

    conv_rule = ALPHA_1_BETA_0


@register("lrp.sequential_preset_b")
class LRPSequentialPresetB(_SequentialPreset):
    """ε (default 0.1) on dense layers, α2β1 on convolutions (Montavon et al. 2019)."""

    conv_rule = ALPHA_2_BETA_1


@register("lrp.sequential_preset_a_flat")
class LRPSequentialPresetAFlat(_SequentialPreset):
    """Preset A with the Flat rule on the input layer."""

    conv_rule = ALPHA_1_BETA_0
    flat_input = True


@register("lrp.sequential_preset_b_flat")
class LRPSequentialPresetBFlat(_SequentialPreset):
    """Preset B with the Flat rule on the input layer."""

    conv_rule = ALPHA_2_BETA_1
    flat_input = True


@register("lrp.sequential_preset_b_flat_until_idx")
class LRPSequentialPresetBFlatUntilIdx(LRP):
    """Preset B with the Flat rule on the input layer and on kernel layers
    ``0 .. until_layer_idx`` (``None``: the input layer only).

    Parameters
    ----------
    epsilon:
        ε of the dense layers.
    until_layer_idx:
        Index of the last kernel layer (0: the first) that gets the Flat rule.
    """

    def __init__(self, model: nn.Module, neuron_selection_mode: str = "max_activation",
                 epsilon: float = 0.1, until_layer_idx: int | None = None,
                 **reverse: Any) -> None:
        _check_epsilon(epsilon)
        preset = sequential_preset(ALPHA_2_BETA_1, epsilon, flat_input=True)
        super().__init__(model, neuron_selection_mode, rule=preset.rules(),
                         input_layer_rule=preset.input_layer, until_layer_idx=until_layer_idx,
                         until_layer_rule=FlatRule(), **reverse)
