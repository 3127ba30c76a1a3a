"""How a replay (:mod:`~..replay`) runs the LRP rules of kernel layers and BatchNorms.

In the recorded analysis a kernel layer's rule waits for the output's first use
(:mod:`.deferred`): a BatchNorm that merges with it, or anything else. The plan keeps what
happened: the kernel call computes its output value and leaves its layer for the BatchNorm's
step, which applies the rule to the fused layer; or the kernel call applies its own rule at
once, which gives its consumers what the deferred rule gave them. A rule that is the call's
plain output with its gradient transformed (z, ε: :meth:`~.rules.Rule.output_gradient`)
needs no layer at all. Each step builds its layer from its own call's arguments, so that it
depends on nothing but its call (and, for a merge, the kernel call before it).
"""

from __future__ import annotations

from collections.abc import Callable

from torch import Tensor

from ..kinds import BATCH_NORM, differentiable
from ..operations import OperationCall
from ..replay import Diverged, Step, with_output_gradient
from .layers import BatchNormLayer, FusedLayer, KernelLayer, MatrixLayer
from .rules import Flow, Rule, unchanged


def layer_of(call: OperationCall, flow: Flow) -> KernelLayer | None:
    """The affine layer of a kernel call or weight product, its input fed as ``flow`` wants
    (through the diagnostics' observer of the call's input, where it has one); ``None``
    where the input is not differentiable (the call runs as written)."""
    weight_index = call.weight_index
    source = (call.inputs[0] if weight_index is not None
              else call.args[0] if call.args else call.kwargs["input"])
    if not differentiable(source):
        return None
    if call.observe_input is not None:
        observed = call.observe_input(source)
        call, source = call.replace_input(source, observed), observed
    return (KernelLayer(call, flow.input(source)) if weight_index is None
            else MatrixLayer(call, flow.input(source), weight_index))


def _recall(call: OperationCall) -> Callable[[Callable, tuple, dict], OperationCall]:
    """The replayed call of the same kind (and weight position) as ``call``."""
    kind, weight_index, support = call.kind, call.weight_index, call.input_support
    return lambda func, args, kwargs: OperationCall(func, args, kwargs, kind,
                                                    weight_index=weight_index,
                                                    input_support=support)


def kernel_rule_step(call: OperationCall, rule: Rule, flow: Flow) -> Step | None:
    """A kernel call with its own rule applied at once (``None``: as written)."""
    transform = rule.output_gradient(flow)
    if transform is unchanged:
        return None
    if transform is not None:
        return with_output_gradient(transform)
    recall = _recall(call)

    def step(func: Callable, args: tuple, kwargs: dict) -> Tensor:
        replayed = recall(func, args, kwargs)
        layer = layer_of(replayed, flow)
        return replayed.run() if layer is None else rule(layer, flow)

    return step


def kernel_value_step(call: OperationCall, rule: Rule, flow: Flow,
                      layers: dict[int, tuple[KernelLayer, Tensor]]) -> Step:
    """A kernel call whose output a BatchNorm merges with: its output value as ``rule``
    makes it, the layer (and the output) left in ``layers`` for the BatchNorm's step."""
    recall, index = _recall(call), call.index

    def step(func: Callable, args: tuple, kwargs: dict) -> Tensor:
        replayed = recall(func, args, kwargs)
        layer = layer_of(replayed, flow)
        if layer is None:
            return replayed.run()
        output = rule.output_value(layer)
        layers[index] = layer, output
        return output

    return step


def merged_step(rule: Rule, flow: Flow, layers: dict[int, tuple[KernelLayer, Tensor]],
                kernel_index: int, transform: Callable[[Tensor], Tensor] | None) -> Step | None:
    """A BatchNorm merged with the kernel call ``kernel_index``: its output with
    ``transform`` (the rule's :meth:`~.rules.Rule.output_gradient`; ``None``: as written,
    the fused layer's own gradient), or, where there is none, the rule on the fused layer.
    A BatchNorm that gets another tensor than that kernel call's output (a forward whose
    data flow a global flag changed) ends the replay."""
    if transform is unchanged:
        return None
    if transform is not None:
        return with_output_gradient(transform)

    def step(func: Callable, args: tuple, kwargs: dict) -> Tensor:
        call = OperationCall(func, args, kwargs, BATCH_NORM)
        source = call.args[0] if call.args else call.kwargs["input"]
        layer, output = layers.pop(kernel_index, (None, None))
        if output is not source:
            raise Diverged("the BatchNorm takes another tensor than the recorded kernel "
                           "call's output")
        return rule(FusedLayer.merge(layer, BatchNormLayer(call, source)), flow)

    return step


def batch_norm_step(rule: Rule, flow: Flow) -> Step:
    """A BatchNorm with a rule of its own (not merged)."""
    def step(func: Callable, args: tuple, kwargs: dict) -> Tensor:
        call = OperationCall(func, args, kwargs, BATCH_NORM)
        source = call.args[0] if call.args else call.kwargs["input"]
        if not differentiable(source):
            return call.run()
        return rule(BatchNormLayer(call, flow.input(source)), flow)

    return step
