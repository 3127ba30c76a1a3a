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
  flatten, ``torch.cat``, indexing, flips, rolls, pixel shuffles, tiling, max-unpooling and
  dropout move relevance as they move values;
- anything else with a differentiable output (sigmoid, GELU, softmax, attention products):
  :class:`~lit_explain.NotAnalyzableModelError`, naming the module path and type.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ...precision import LOW_PRECISION
from ..base import Analyzer, NeuronSelection
from ..errors import NotAnalyzableModelError
from ..forward import same_storage, select_output, storage_key, values_key
from ..kinds import (
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
    STATISTIC,
    STRUCTURE,
    WEIGHT_PRODUCT,
    differentiable,
    map_differentiable,
)
from ..operations import (
    OperationCall,
    handler_step,
    scale_gradient,
    through_parts,
    with_gradient,
)
from ..registry import register
from ..replay import Diverged, Step, stateless
from ..validation import check_bool, check_choice
from .deferred import KernelOutputs
from .layers import BatchNormLayer, FusedLayer
from .presets import RuleMap, RuleSpec, to_rule
from .rules import (
    Flow,
    MagnitudeShareRule,
    RelativeFlow,
    safe_reciprocal,
)
from .steps import batch_norm_step, kernel_value_step, layer_of, merged_step
from .transformer import (
    ATTENTION_RULES,
    attention_as_gradient,
    blocked,
    held_constant,
    identity_rule,
    normalization_rule,
    softmax_rule,
    uniform_rule,
)

PASSTHROUGH = frozenset({MAX_POOL, STRUCTURE})


@stateless
def pass_relevance(call: OperationCall) -> Tensor:
    """Relevance passes unchanged (ReLU; elementwise preprocessing of the input, summed
    over the axes a constant broadcast it to) to the call's one differentiable operand,
    wherever it stands (``x - mean`` and ``shift + x`` alike)."""
    inputs = call.inputs
    if not inputs:
        return call.run()
    (source,) = inputs
    shape = source.shape
    return with_gradient(source, call.run(), lambda grad: grad.sum_to_size(shape))


@stateless
def z_rule_operation(call: OperationCall) -> Tensor:
    """The z-rule on an operation linear in its inputs: ``R_x = x ⊙ Jᵀ (R_y / y)``."""
    if not call.inputs:
        return call.run()
    args, kwargs = map_differentiable(lambda t: scale_gradient(t, t), call.args,
                                      call.kwargs)
    y = call.run(*args, **kwargs)
    return scale_gradient(y, safe_reciprocal(y.detach()))


def _held(call: OperationCall, factor: Tensor) -> Tensor:
    """The tensor the model holds for a factor of ``call``: the target of an in-place call
    for the copy that stands in its out-of-place twin, else the factor itself."""
    target = call.in_place_target
    if target is not None and factor is (call.args[0] if call.args else call.kwargs["input"]):
        return target
    return factor


def _gate_key(t: Tensor, whole: bool) -> tuple:
    """How a CP-LRP gate is found among a product's factors: a gate that owns its storage
    (``whole``: a non-linearity's output) by it, so that every view of it (a reshape, a
    chunk, a slice) is the gate; a gate made in place on a view of another tensor (an
    activation on half of a fused projection) as that view exactly (see
    :func:`~..forward.values_key`), the rest of the tensor being no gate."""
    return ("storage", storage_key(t)) if whole else ("values", values_key(t))


#: The autograd nodes (``Backward`` and its number left out) of calls that copy, move or
#: select values and fill in constants: through them a CP-LRP gate's values stay the gate's.
_COPYING_NODES = frozenset({
    "Clone", "ToCopy", "Copy", "Cat", "Stack", "Index", "IndexSelect", "Gather",
    "MaskedSelect", "MaskedFill", "Where", "View", "UnsafeView", "ReshapeAlias", "Alias",
    "AsStrided", "Permute", "T", "Transpose", "Expand", "Slice", "Select", "Narrow",
    "Diagonal", "Squeeze", "Unsqueeze", "Split", "SplitWithSizes", "Unbind", "Repeat", "Flip",
    "Roll", "ConstantPadNd", "CopySlices"})
#: The nodes of elementwise arithmetic, which maps a gate by constants where it has one
#: differentiable operand (``gate * mask``, ``gate / scale``, ``gate + shift``).
_ARITHMETIC_NODES = frozenset({"Mul", "Div", "Add", "Sub", "Neg"})


def _copied_gate(call: OperationCall, factor: Tensor, gates: list[Tensor]) -> bool:
    """Whether the values of ``factor``, a factor of the CP-LRP product ``call`` that is no
    gate nor a view of one, are copies of ``gates`` or maps of them by constants
    (``g.clone()``, ``g.t().contiguous()``, ``torch.cat`` of gates, an index, a mask): its
    autograd graph, followed through such calls only, reaches the gates' nodes (as they are
    now: a gate made in place has the node of its copy into the model's tensor) and nothing
    else. Refused where it reaches both: the product would hold part of a factor constant."""
    gate_nodes = {gate.grad_fn for gate in gates}
    pending, seen, gate, other = [factor.grad_fn], set(), False, False
    while pending:
        node = pending.pop()
        if node is None or node in seen:  # (None: a constant among the copied values)
            continue
        seen.add(node)
        name = type(node).__name__.rstrip("0123456789").removesuffix("Backward")
        operands = [next_node for next_node, _ in node.next_functions if next_node is not None]
        if node in gate_nodes:
            gate = True
        elif name in _COPYING_NODES or (name in _ARITHMETIC_NODES and len(operands) == 1):
            pending.extend(operands)
        else:
            other = True
    if gate and other:
        raise NotAnalyzableModelError(
            f"{call.where()} multiplies a tensor made of both a gate's values (the output of a "
            f"non-linearity, which CP-LRP holds constant in a product) and other values (by "
            f"torch.cat, an in-place write, ...): the rule would hold only part of that factor "
            f"constant. Multiply the gate and the rest separately, or use "
            f"attention_rule='attnlrp'")
    return gate


def _made_gate(step: Step, index: int, gates: dict[int, Any]) -> Step:
    """A CP-LRP gate's replay step: ``step``, its output kept for the products (by call)."""
    def made(func: Callable, args: tuple, kwargs: dict) -> Tensor:
        output = gates[index] = step(func, args, kwargs)
        return output

    return made


def _gated_product(call: OperationCall, rule: Callable[[OperationCall], Tensor],
                   made: dict[int, tuple[int, bool]], gates: dict[int, Any]) -> Tensor:
    """A CP-LRP product replayed: ``rule`` where the gates among its factors (position →
    the call that made the gate, and whether it owns its storage) are those calls' outputs
    in this forward pass; else the data flow changed (a global flag swapped the factors)
    and the replay ends."""
    inputs = call.inputs
    for position, (index, whole) in made.items():
        gate = gates.get(index)
        if gate is None or _gate_key(_held(call, inputs[position]), whole) != _gate_key(
                gate, whole):
            raise Diverged(f"factor {position} of {call.where()} is not the gate made by "
                           f"call {index}")
    return rule(call)


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
    rule_based = True

    def __init__(self, model: nn.Module, neuron_selection_mode: str = "max_activation",
                 rule: RuleSpec | Sequence[Any] | None = None,
                 input_layer_rule: RuleSpec | tuple[float, float] | None = None,
                 until_layer_idx: int | None = None, until_layer_rule: RuleSpec | None = None,
                 bn_layer_rule: RuleSpec | None = None, *, canonize: bool = True,
                 attention_rule: str = "attnlrp", **reverse: Any) -> None:
        super().__init__(model, neuron_selection_mode, **reverse)
        check_bool("canonize", canonize)
        check_choice("attention_rule", attention_rule, ATTENTION_RULES)
        self.canonize = canonize
        self.attention_rule = attention_rule
        self._softmax_outputs: dict[int, tuple[Tensor, str]] = {}
        self._input_layer_seen = False  # whether an analysis met an input layer
        self._warned_no_input_layer = False
        if rule is None:
            raise ValueError("lrp needs rule=: a rule name, a Rule, a list of them or a list "
                             "of (condition, rule) pairs")
        self.rules = RuleMap(rule, input_layer_rule, until_layer_idx, until_layer_rule)
        self.bn_layer_rule = MagnitudeShareRule() if bn_layer_rule is None else to_rule(
            bn_layer_rule, "bn_layer_rule")
        # Relevance per unit of input where every rule allows it: cheaper, same result.
        proportional = all(r.proportional for r in [*self.rules.rules(), self.bn_layer_rule])
        # (a clip range without 0 gives relevance where a tensor is 0, which relevance per
        # unit of that tensor cannot carry)
        clip = self.reverse.clip_values
        moves_zero = clip is not None and not clip[0] <= 0 <= clip[1]
        self.flow = RelativeFlow() if proportional and not moves_zero else Flow()

    def _kernel(self, call: OperationCall, outputs: KernelOutputs) -> Tensor:
        self._input_layer_seen = self._input_layer_seen or call.is_input_layer
        rule = self.rules(call)
        if call.plan is not None:  # (its own rule, where it is applied, replaces this step)
            call.replay(kernel_value_step(call, rule, self.flow, call.plan.held))
        layer = layer_of(call, self.flow)
        return call.run() if layer is None else outputs.defer(layer, rule)

    def _batch_norm(self, call: OperationCall, outputs: KernelOutputs) -> Tensor:
        source = call.args[0] if call.args else call.kwargs["input"]
        entry = outputs.mergeable(source)
        if entry is not None:
            fused = FusedLayer.merge(entry.layer, BatchNormLayer(call, source))
            if fused is not None:  # one layer: observed as the kernel layer
                output = entry.rule(fused, self.flow)
                if call.plan is not None:  # (a replay merges them the same way)
                    self._plan_merge(call, entry, fused)
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
        call.replay(batch_norm_step(self.bn_layer_rule, self.flow))
        return output if call.observe_output is None else call.observe_output(output)

    def _plan_merge(self, call: OperationCall, entry: Any, fused: FusedLayer) -> None:
        """The replay steps of a kernel call and the BatchNorm ``call`` merged with it: the
        rule on the fused layer at the BatchNorm; where the rule is the fused layer's output
        with its gradient transformed (z, ε), that, and the kernel call as written. Not
        replayable where another BatchNorm merged with the same output."""
        kernel, plan = entry.layer.call, call.plan
        if entry.merged:
            plan.unreplayable()
            return
        entry.merged = True
        # (a BatchNorm with batch statistics: its own gradient is not the fused layer's)
        transform = None if fused.norm.batch_statistics else entry.rule.output_gradient(
            self.flow)
        call.replay(merged_step(entry.rule, self.flow, plan.held, kernel.index, transform))
        if transform is not None:
            kernel.replay(None)  # (the fused layer's output needs no kernel layer)

    def _relevance_scale(self, tensor: Tensor) -> Tensor | None:
        if not self.flow.relative:
            return None
        # relative flow: gradient = R_t / t; a masked score (−inf) carries no relevance
        return tensor.nan_to_num(posinf=0.0, neginf=0.0) if tensor.is_floating_point() \
            and not bool(torch.isfinite(tensor).all()) else tensor

    def _seed(self, logits: Tensor, indices: Tensor | None) -> Tensor:
        seed = super()._seed(logits, indices)  # the relevance R: the selected logit's value
        if not self.flow.relative:
            return seed
        # R / logit, 1 or 0, in float32 at least: 1/ε overflows float16 (a model whose output
        # is cast to it made a map of NaN)
        held = logits.detach()
        held = held.float() if held.dtype in LOW_PRECISION else held
        return (seed * safe_reciprocal(held)).to(logits.dtype)

    def _analyze(self, x: Tensor, neuron_selection: NeuronSelection) -> Tensor:
        outputs = KernelOutputs(self.flow, self.canonize)
        kernel = partial(self._kernel, outputs=outputs)
        handlers = {KERNEL: kernel, WEIGHT_PRODUCT: kernel,
                    BATCH_NORM: partial(self._batch_norm, outputs=outputs),
                    INPUT_PREPROCESSING: pass_relevance}
        if self.flow.relative:
            # Per unit of input, the z-rule of ReLU, pooling, adds and sums is their gradient.
            passthrough = PASSTHROUGH | {RELU, LINEAR}
        else:
            handlers.update({RELU: pass_relevance, LINEAR: z_rule_operation})
            passthrough = PASSTHROUGH
        handlers.update(self._transformer_handlers(handlers.get(RELU, OperationCall.run)))
        boundary = self.flow.boundary if self.flow.relative else None
        self._input_layer_seen = False
        try:
            result = self._backward(x, self.selector(neuron_selection), handlers, passthrough,
                                    prepare=outputs.prepare, input_boundary=boundary,
                                    self_observed=frozenset({KERNEL, WEIGHT_PRODUCT, BATCH_NORM}))
            self._warn_if_no_input_layer()
            return result
        finally:
            self._softmax_outputs = {}
            outputs.deferred.clear()  # an output the model keeps (a feature cache) holds none

    def _settings(self) -> tuple:
        return self.flow, self.rules, self.canonize, self.attention_rule, self.bn_layer_rule

    def _warn_if_no_input_layer(self) -> None:
        """Warn once where an input layer rule was asked for and no kernel layer got it."""
        if self.rules.input_layer_rule is None or self._input_layer_seen or \
                self._warned_no_input_layer or self.replayed:  # (a replay sees no layer)
            return
        self._warned_no_input_layer = True
        warnings.warn(
            f"{self.name or type(self).__name__}: no kernel layer receives the model input "
            f"through reshapes, copies (a nearest resize, a padding) and elementwise "
            f"operations with constants (a normalisation, a clamp): another operation comes "
            f"first (a BatchNorm, a bilinear resize, a non-linear function), so the input "
            f"layer rule "
            f"{type(self.rules.input_layer_rule).__name__} applies nowhere and the map is "
            f"that of the other rules", UserWarning, stacklevel=4)

    def _why_no_path(self) -> str:
        if self.attention_rule == "cp":
            return ("under attention_rule='cp' (CP-LRP) no relevance passes through softmax "
                    "(attention weights) and non-linear gates, and the explained output reaches "
                    "the input only through them; attention_rule='attnlrp' propagates through "
                    "them")
        return super()._why_no_path()

    def _transformer_handlers(self, relu_rule: Callable[[OperationCall], Tensor]
                              ) -> dict[str, Callable[[OperationCall], Tensor]]:
        """AttnLRP's (or CP-LRP's) rules for non-linearities, softmax, products of
        activations, normalisations and attention (:mod:`.transformer`); under CP-LRP also
        ReLU's (``relu_rule``), whose outputs are gates like those of the others (ReGLU)."""
        flow, cp = self.flow, self.attention_rule == "cp"
        # CP-LRP: the outputs of non-linearities (held constant), by _gate_key: the gate, the
        # call that made it and whether it owns its storage
        gates: dict[tuple, tuple[Tensor, int, bool]] = {}

        def note_gate(made: Tensor, index: int) -> None:
            whole = made._base is None
            gates[_gate_key(made, whole)] = made, index, whole

        def found_gate(t: Tensor) -> tuple[Tensor, int, bool] | None:
            return gates.get(_gate_key(t, True)) or gates.get(_gate_key(t, False))

        def gate(rule: Callable[[OperationCall], Tensor]) -> Callable[[OperationCall], Tensor]:
            def handler(call: OperationCall) -> Tensor:
                output = rule(call)
                note_gate(output if call.in_place_target is None else call.in_place_target,
                          call.index)
                if call.plan is not None:  # (a replay's products check their gates by it)
                    call.replay(_made_gate(handler_step(rule, call.kind), call.index,
                                           call.plan.held))
                return output

            return handler

        activation = partial(identity_rule, flow=flow)
        activation = gate(activation) if cp else stateless(activation)

        @stateless  # (the record of softmax outputs is the analyzer's, kept in a replay too)
        def softmax(call: OperationCall) -> Tensor:
            output = blocked(call) if cp else softmax_rule(call, flow)
            self._softmax_outputs[id(output)] = (output, call.where())
            return output

        def product(call: OperationCall) -> Tensor:
            # position of a gate among the factors → its call, and whether it owns its storage
            made: dict[int, tuple[int, bool]] = {}
            copies: set[int] = set()  # (positions of gates' copies)
            if cp and call.func in ELEMENTWISE_PRODUCTS:
                inputs = call.inputs
                found = [found_gate(_held(call, t)) for t in inputs]
                made = {i: entry[1:] for i, entry in enumerate(found) if entry is not None}
                held = [gate for gate, _, _ in gates.values()]
                copies = {i for i, entry in enumerate(found) if entry is None and
                          _copied_gate(call, _held(call, inputs[i]), held)}
                if len(made) + len(copies) == len(inputs):
                    made, copies = {}, set()
                if copies and call.plan is not None:  # (a replay finds gates by storage)
                    call.plan.unreplayable()
                target = call.in_place_target
                if target is not None:  # (a gate multiplied in place is a gate no more)
                    for whole in (True, False):
                        gates.pop(_gate_key(target, whole), None)
            rule = partial(uniform_rule, flow=flow, held=frozenset(made) | copies)
            if call.plan is not None:
                call.replay(handler_step(partial(_gated_product, rule=rule, made=made,
                                                 gates=call.plan.held) if made else rule,
                                         PRODUCT))
            return rule(call)

        # Per unit of tensor AttnLRP and CP-LRP make attention its own gradient, Q, K, V's
        # scaled; the reverse-pass diagnostics observe the softmax, so they get the parts
        fused = flow.relative and not self.reverse.active

        def attention(call: OperationCall) -> object:  # (each path plans its replay)
            if fused and call.func is F.scaled_dot_product_attention:
                return attention_as_gradient(call, cp)
            return through_parts(call)

        handlers = {ACTIVATION: activation, SOFTMAX: softmax, PRODUCT: product,
                    NORMALIZATION: stateless(partial(normalization_rule, flow=flow)),
                    ATTENTION: attention, STATISTIC: stateless(held_constant)}
        if cp:
            handlers[RELU] = gate(relu_rule)
        return handlers

    def logits(self, output: Any, batch: int) -> Tensor:
        selected = select_output(output, self.output_key)
        # (the output or a view of it: reshaped, squeezed, sliced; a softmax output's storage
        # is its own)
        made = next((where for made, where in self._softmax_outputs.values()
                     if same_storage(made, selected)), None)
        if made is not None:
            raise NotAnalyzableModelError(
                f"the model's output is made by {made}: LRP explains logits, not "
                f"probabilities. Explain the logits instead: remove it from forward, or pass "
                f"lit_explain.model_wo_softmax(model) for a trailing nn.Softmax.")
        return super().logits(output, batch)
