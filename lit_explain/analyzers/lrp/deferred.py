"""Kernel layers' outputs whose LRP rule is applied where they are first used.

A kernel layer's output is what the model receives; which rule makes its relevance is
decided by the call that uses it first: a BatchNorm merges with the kernel layer
(canonization), anything else gets the kernel layer's own rule (see :class:`KernelOutputs`).
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from dataclasses import dataclass

from torch import Tensor

from ..kinds import BATCH_NORM, replace_tensors
from .layers import KernelLayer
from .rules import Flow, Rule
from .steps import kernel_rule_step


@dataclass
class _Deferred:
    output: weakref.ref  # the kernel's linear term, as the model received it
    layer: KernelLayer
    rule: Rule
    observe: Callable[[Tensor], Tensor] | None  # the diagnostics' observer of its output
    resolved: bool = False  # whether the kernel's own rule has been applied
    relevance: Tensor | None = None  # the output with that rule, where it is another tensor
    merged: bool = False  # whether a BatchNorm has merged with it


class KernelOutputs:
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
        if not output.requires_grad:
            # (a value made without a graph, the αβ rules' sum of parts): a call that uses it
            # without being routed through the rules (TorchScript, a custom autograd
            # Function) must make a differentiable tensor, which OperationRules refuses
            output.requires_grad_()
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
            call = entry.layer.call
            if call.plan is not None:  # a replay applies the rule at the kernel call, unless
                if entry.merged:  # a BatchNorm merged with the output first: two rules
                    call.plan.unreplayable()
                else:
                    call.replay(kernel_rule_step(call, entry.rule, self.flow))
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
        deferred = self.deferred  # most tensors are not kernel outputs: one lookup each
        swaps = None
        for t in tensors:
            if id(t) in deferred and (r := self.resolve(t)) is not t:
                swaps = {} if swaps is None else swaps
                swaps[id(t)] = r
        if swaps is None:
            return args, kwargs
        return replace_tensors(args, kwargs, lambda t: swaps.get(id(t), t))
