"""Layer-wise relevance propagation (Bach et al. 2015) as one forward and one backward pass.

The backward pass starts from the selected output's value and carries relevance as the
gradient (see :class:`~.rules.Flow`), so the map at the input is the relevance itself.
Per operation kind:

- kernel layers (linear, convolution, transposed convolution): the rule chosen by
  ``rule=``/``input_layer_rule=``/``until_layer_*`` (see :mod:`.presets`);
- BatchNorm: merged into the kernel layer whose output it consumes (canonization, on by
  default); otherwise an elementwise affine layer with its own rule, ``bn_layer_rule``
  (default: relevance passes unchanged);
- elementwise operations with constants between the model input and the first kernel
  layer (an in-forward ``(x - mean) / std``): relevance passes unchanged, so the input
  layer's rule sees the values that layer receives and the map at the raw input equals
  the map at the preprocessed one;
- ReLU (module, ``F.relu``, ``torch.relu``, ``Tensor.relu``, in place or not, its result
  used or not: in-place operations keep their meaning): relevance
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

import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..base import Analyzer, NeuronSelection
from ..errors import NotAnalyzableModelError
from ..forward import select_output
from ..operations import (
    ACTIVATION,
    ATTENTION,
    BATCH_NORM,
    ELEMENTWISE_PRODUCTS,
    INPUT_PREPROCESSING,
    KERNEL,
    LINEAR,
    MAX_POOL,
    NORMALIZATION,
    PRODUCT,
    RELU,
    SOFTMAX,
    STRUCTURE,
    OperationCall,
    differentiable,
    map_differentiable,
    replace_tensors,
    scale_gradient,
    through_parts,
    with_gradient,
)
from ..registry import register
from ..validation import check_choice
from .layers import BatchNormLayer, FusedLayer, KernelLayer
from .presets import ALPHA_1_BETA_0, ALPHA_2_BETA_1, RuleMap, RuleSpec, sequential_preset, to_rule
from .rules import (
    AlphaBetaRule,
    EpsilonRule,
    FlatRule,
    Flow,
    MagnitudeShareRule,
    RelativeFlow,
    Rule,
    WSquareRule,
    ZPlusFastRule,
    ZPlusRule,
    ZRule,
    safe_reciprocal,
)
from .transformer import (
    ATTENTION_RULES,
    attention_as_gradient,
    blocked,
    identity_rule,
    normalization_rule,
    softmax_rule,
    uniform_rule,
)

PASSTHROUGH = frozenset({MAX_POOL, STRUCTURE})


def pass_relevance(call: OperationCall) -> Tensor:
    """Relevance passes unchanged (ReLU; elementwise preprocessing of the input, summed
    over the axes a constant broadcast it to)."""
    source = call.args[0] if call.args else call.kwargs["input"]
    if not differentiable(source):
        return call.run()
    shape = source.shape
    return with_gradient(source, call.run(), lambda grad: grad.sum_to_size(shape))


def z_rule_operation(call: OperationCall) -> Tensor:
    """The z-rule on an operation linear in its inputs: ``R_x = x ⊙ Jᵀ (R_y / y)``."""
    if not call.inputs:
        return call.run()
    args, kwargs = map_differentiable(lambda t: scale_gradient(t, t), call.args,
                                      call.kwargs)
    y = call.run(*args, **kwargs)
    return scale_gradient(y, safe_reciprocal(y.detach()))


@dataclass
class _Deferred:
    output: weakref.ref  # the kernel's linear term, as the model received it
    layer: KernelLayer
    rule: Rule
    observe: Callable[[Tensor], Tensor] | None  # the diagnostics' observer of its output
    resolved: bool = False  # whether the kernel's own rule has been applied
    relevance: Tensor | None = None  # the output with that rule, where it is another tensor


class _KernelOutputs:
    """Kernel layers' outputs whose rule is applied where they are first used.

    A BatchNorm that uses one (canonization on) merges with its kernel layer: the rule is
    applied to the fused layer. Any other use, or the model's output, gets the kernel's own
    rule: that call and every later one receive the output with the rule (the same value)
    in place of the tensor the model holds, also in place (an in-place operation then
    changes the tensor every later call receives).

    An output is held weakly: once the model lets go of it (a ReLU made its own output from
    it), it and what its rule would have needed are freed, as in a plain forward pass.
    """

    def __init__(self, flow: Flow, canonize: bool) -> None:
        self.flow = flow
        self.canonize = canonize
        self.deferred: dict[int, _Deferred] = {}

    def defer(self, layer: KernelLayer, rule: Rule) -> Tensor:
        """The kernel layer's output value, its rule applied where it is first used."""
        output = rule.output_value(layer)
        key = id(output)
        self.deferred[key] = _Deferred(weakref.ref(output), layer, rule,
                                       layer.call.observe_output)
        weakref.finalize(output, self.deferred.pop, key, None)
        return output

    def _entry(self, tensor: Tensor) -> _Deferred | None:
        entry = self.deferred.get(id(tensor))
        return entry if entry is not None and entry.output() is tensor else None

    def mergeable(self, tensor: Tensor) -> _Deferred | None:
        """The deferred kernel output ``tensor`` is, if a BatchNorm may merge with it."""
        entry = self._entry(tensor) if self.canonize else None
        return entry if entry is not None and not entry.resolved else None

    def resolve(self, tensor: Tensor) -> Tensor:
        """``tensor``, or, for a deferred kernel output, that output with its kernel
        layer's own rule (applied once)."""
        entry = self._entry(tensor)
        if entry is None:
            return tensor
        if not entry.resolved:
            relevance = entry.rule(entry.layer, self.flow)
            if entry.observe is not None:
                relevance = entry.observe(relevance)
            entry.resolved = True
            entry.relevance = None if relevance is tensor else relevance  # no self-reference
        return tensor if entry.relevance is None else entry.relevance

    def prepare(self, kind: str, args: tuple, kwargs: dict, tensors: list[Tensor]
                ) -> tuple[tuple, dict]:
        """:class:`~..operations.OperationRules`' hook: the deferred kernel outputs a call
        uses, with their rule."""
        if kind == BATCH_NORM and self.canonize:
            tensors = tensors[1:]  # its input may merge
        swaps = {id(t): r for t in tensors if (r := self.resolve(t)) is not t}
        if not swaps:
            return args, kwargs
        return replace_tensors(args, kwargs, lambda t: swaps.get(id(t), t))


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
        Rule of a BatchNorm that is not merged into a kernel layer (``canonize=False``, or
        one that follows no kernel layer, as in pre-activation ResNets), seen as the
        elementwise ``y = a ⊙ x + c``. ``None``: :class:`MagnitudeShareRule`, which gives
        ``x`` the share ``|a x| / (|a x| + |c|)`` of the relevance and so cannot blow up.
    canonize:
        Keyword only, taken by every LRP and Deep Taylor analyzer. Merge every BatchNorm
        that directly consumes a kernel layer's output into that layer, and apply the
        kernel layer's rule to the fused layer (Hui & Binder 2019;
        Motzkus et al. 2022, "Measurably Stronger Explanation Reliability via Model
        Canonization"). Virtual: computed from the live parameters at each call, nothing is
        written to the model. ``False``: BatchNorm is a layer of its own.
    attention_rule:
        Keyword only, taken by every LRP and Deep Taylor analyzer: the rules of softmax and
        products of activations (:mod:`.transformer`). ``"attnlrp"`` (default): AttnLRP
        (Achtibat et al. 2024), the softmax rule and the uniform rule. ``"cp"``: CP-LRP
        (Ali et al. 2022), no relevance through the attention weights and through gates
        made by a non-linearity. Elementwise non-linearities get the identity rule and
        LayerNorm/RMSNorm/GroupNorm the z-rule with their statistic held constant under
        both.
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
                 bn_layer_rule: RuleSpec | None = None, *, canonize: bool = True,
                 attention_rule: str = "attnlrp", **reverse: Any) -> None:
        super().__init__(model, neuron_selection_mode, **reverse)
        if not isinstance(canonize, bool):
            raise TypeError(f"canonize={canonize!r} is not valid; expected True or False")
        check_choice("attention_rule", attention_rule, ATTENTION_RULES)
        self.canonize = canonize
        self.attention_rule = attention_rule
        self._softmax_outputs: dict[int, tuple[Tensor, str]] = {}
        if rule is None:
            raise ValueError("lrp needs rule=: a rule name, a Rule, a list of them or a list "
                             "of (condition, rule) pairs")
        self.rules = RuleMap(rule, input_layer_rule, until_layer_idx, until_layer_rule)
        self.bn_layer_rule = MagnitudeShareRule() if bn_layer_rule is None else to_rule(
            bn_layer_rule, "bn_layer_rule")
        # Relevance per unit of input where every rule allows it: cheaper, same result.
        proportional = all(r.proportional for r in [*self.rules.rules(), self.bn_layer_rule])
        self.flow = RelativeFlow() if proportional else Flow()

    def _kernel(self, call: OperationCall, outputs: _KernelOutputs) -> Tensor:
        source = call.args[0] if call.args else call.kwargs["input"]
        if not differentiable(source):
            return call.run()
        if call.observe_input is not None:
            source = call.observe_input(source)
            call = call.replace_input(call.args[0] if call.args else call.kwargs["input"],
                                      source)
        layer = KernelLayer(call, self.flow.input(source))
        return outputs.defer(layer, self.rules(call))

    def _batch_norm(self, call: OperationCall, outputs: _KernelOutputs) -> Tensor:
        source = call.args[0] if call.args else call.kwargs["input"]
        entry = outputs.mergeable(source)
        if entry is not None:
            fused = FusedLayer.merge(entry.layer, BatchNormLayer(call, source))
            if fused is not None:  # one layer: observed as the kernel layer
                output = entry.rule(fused, self.flow)
                return output if entry.observe is None else entry.observe(output)
        relevance = outputs.resolve(source)  # not merged: the kernel's own rule
        if relevance is not source:
            call, source = call.replace_input(source, relevance), relevance
        if not differentiable(source):
            return call.run()
        if call.observe_input is not None:
            call = call.replace_input(source, call.observe_input(source))
            source = call.args[0] if call.args else call.kwargs["input"]
        output = self.bn_layer_rule(BatchNormLayer(call, self.flow.input(source)), self.flow)
        return output if call.observe_output is None else call.observe_output(output)

    def _relevance_scale(self, tensor: Tensor) -> Tensor | None:
        if not self.flow.relative:
            return None
        # relative flow: gradient = R_t / t; a masked score (−inf) carries no relevance
        return tensor.nan_to_num(posinf=0.0, neginf=0.0) if tensor.is_floating_point() \
            and not bool(torch.isfinite(tensor).all()) else tensor

    def _seed(self, logits: Tensor, indices: Tensor | None) -> Tensor:
        seed = super()._seed(logits, indices)  # the relevance R: the selected logit's value
        return seed * safe_reciprocal(logits.detach()) if self.flow.relative else seed

    def _analyze(self, x: Tensor, neuron_selection: NeuronSelection) -> Tensor:
        outputs = _KernelOutputs(self.flow, self.canonize)
        handlers = {KERNEL: partial(self._kernel, outputs=outputs),
                    BATCH_NORM: partial(self._batch_norm, outputs=outputs),
                    INPUT_PREPROCESSING: pass_relevance}
        if self.flow.relative:
            # Per unit of input, the z-rule of ReLU, pooling, adds and sums is their gradient.
            passthrough = PASSTHROUGH | {RELU, LINEAR}
        else:
            handlers.update({RELU: pass_relevance, LINEAR: z_rule_operation})
            passthrough = PASSTHROUGH
        handlers.update(self._transformer_handlers())
        boundary = self.flow.boundary if self.flow.relative else None
        try:
            return self._backward(x, self.selector(neuron_selection), handlers, passthrough,
                                  prepare=outputs.prepare, input_boundary=boundary,
                                  self_observed=frozenset({KERNEL, BATCH_NORM}))
        finally:
            self._softmax_outputs = {}

    def _why_no_path(self) -> str:
        if self.attention_rule == "cp":
            return ("under attention_rule='cp' (CP-LRP) no relevance passes through softmax "
                    "(attention weights) and non-linear gates, and the explained output reaches "
                    "the input only through them; attention_rule='attnlrp' propagates through "
                    "them")
        return super()._why_no_path()

    def _transformer_handlers(self) -> dict[str, Callable[[OperationCall], Tensor]]:
        """AttnLRP's (or CP-LRP's) rules for non-linearities, softmax, products of
        activations, normalisations and attention (:mod:`.transformer`)."""
        flow, cp = self.flow, self.attention_rule == "cp"
        gates: dict[int, Tensor] = {}  # CP-LRP: outputs of non-linearities, held constant

        def activation(call: OperationCall) -> Tensor:
            output = identity_rule(call, flow)
            if cp:
                gates[id(output)] = output
            return output

        def softmax(call: OperationCall) -> Tensor:
            output = blocked(call) if cp else softmax_rule(call, flow)
            self._softmax_outputs[id(output)] = (output, call.where())
            return output

        def product(call: OperationCall) -> Tensor:
            constants = frozenset()
            if cp and call.func in ELEMENTWISE_PRODUCTS:
                held = frozenset(id(t) for t in call.inputs if id(t) in gates)
                constants = held if len(held) < len(call.inputs) else frozenset()
            return uniform_rule(call, flow, constants)

        # Per unit of tensor AttnLRP makes attention its own gradient, Q, K, V's scaled; the
        # reverse-pass diagnostics observe the softmax, so they get the parts
        fused = flow.relative and not cp and not self.reverse.active

        def attention(call: OperationCall) -> object:
            if fused and call.func is F.scaled_dot_product_attention:
                return attention_as_gradient(call)
            return through_parts(call)

        return {ACTIVATION: activation, SOFTMAX: softmax, PRODUCT: product,
                NORMALIZATION: partial(normalization_rule, flow=flow), ATTENTION: attention}

    def logits(self, output: Any, batch: int) -> Tensor:
        selected = select_output(output, self.output_key)
        made = self._softmax_outputs.get(id(selected))
        if made is not None and made[0] is selected:
            raise NotAnalyzableModelError(
                f"the model's output is made by {made[1]}: LRP explains logits, not "
                f"probabilities. Explain the logits instead: remove it from forward, or pass "
                f"lit_explain.model_wo_softmax(model) for a trailing nn.Softmax.")
        return super().logits(output, batch)


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
