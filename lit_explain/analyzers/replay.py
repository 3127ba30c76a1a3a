"""Replay a checked analysis: the rules of a model found once, applied again cheaply.

A rule-based analysis routes every torch call of the forward pass through
:class:`~.operations.OperationRules`: it sorts each call into a kind, tracks what made each
tensor, refuses what it cannot explain and hands calls to handlers. That costs tens of
microseconds a call, a tenth of a small CNN's forward and backward pass. For a model whose
forward signature (:func:`~.forward.forward_signature`) has not changed, the next forward
pass makes the same calls in the same order, and what the first analysis found holds again.

Where every handled call's rule is a function of that call alone — a ReLU rule (Guided
Backprop, Deconvnet), the LRP rules of a kernel layer, which build the layer from the call's
own arguments (or, for a BatchNorm merged with it, from that kernel call's, see
:mod:`~.lrp.steps`), relevance passing preprocessing, AttnLRP's and CP-LRP's rules
(identity, softmax, uniform, normalisation; CP-LRP's gates held by their positions among a
product's factors, each checked to be the output of the call that made it) — the analysis
records a :class:`Plan`: the function of every call, where the relevance flow's input
boundary was crossed, and for the handled calls a :data:`Step` that runs them with their
rule, or, for attention analysed through its parts, the function that makes the parts,
whose calls the plan holds next. The plan also holds where each call's tensors came from
(:class:`DataFlow`: the model input, the output of an earlier call, or neither, as a
parameter). The next analysis runs the forward pass under :class:`Replayed`, which checks
each call against the plan (its function, by identity, or equality: a property's getter is
a new object at every read; and its tensors' sources), crosses the boundary where it was
crossed and applies the steps: no kinds, no provenance, no module hooks (attention whose
parts have no rules but those of its projections and its attention core runs as plain
torch, those calls by their steps: :class:`Decomposed`). A forward pass that
makes another call than recorded, feeds a call from elsewhere (a flag in a global or a
nested config, which the forward signature does not see, that routes the input past a
layer) or makes one in an autocast region (entered behind such a flag), raises
:class:`Diverged`, and the analysis runs in full again: which layer is the input layer,
where the input boundary is crossed and which calls are kernel layers follow from the data
flow. A rule that depends on more than its call (an elementwise
product of functions of one tensor, ``x * sigmoid(x)``, whose rule passes relevance to
that tensor; DeepLIFT; the pattern analyzers), a gate by a mask, a held statistic, a kernel
output that keeps two rules (used again after the BatchNorm merged with it) or the
reverse-pass diagnostics leave nothing to replay.
"""

from __future__ import annotations

import functools
import itertools
import weakref
from collections.abc import Callable, Iterator
from typing import Any

from torch import Tensor
from torch._C import _is_any_autocast_enabled
from torch.overrides import TorchFunctionMode

from .attention import INJECTED
from .kinds import replace_tensors, tensors_in

#: How a replayed call runs: ``step(func, args, kwargs)`` returns its output with its rule.
Step = Callable[[Callable, tuple, dict], Any]


class Plan:
    """What one analysis found replayable: every call's function, in order, and the steps of
    the calls that have a rule (the others run as written).

    Attributes
    ----------
    key:
        What the plan holds for: the forward signature and the analyzer's settings.
    replayable:
        Whether every rule met was a step (see :meth:`unreplayable`).
    """

    def __init__(self) -> None:
        self.funcs: list[Callable] = []
        #: Where each call's tensors came from (see :class:`DataFlow`), by call index
        #: (``None`` for a query of a tensor's metadata, which makes none).
        self.sources: list[list | None] = []
        #: The calls in place: their target, as the model holds it, is theirs too.
        self.in_place: set[int] = set()
        self.steps: dict[int, Step] = {}
        #: Fused calls run through their parts (attention), whose calls the plan holds next.
        self.parts: dict[int, Decomposed] = {}
        self.planned: set[int] = set()  # the handled calls given a step (or none: as written)
        #: What a step leaves for a later one in the same replay (a kernel layer for the
        #: BatchNorm merged with it, a CP-LRP gate for the products that hold it), by the
        #: index of the call that left it.
        self.held: dict[int, Any] = {}
        #: Where the relevance flow's input boundary was crossed: call index → the positions
        #: (among the call's tensors, :func:`~.kinds.tensors_in`) that crossed it, and how.
        self.crossings: dict[int, frozenset[int]] = {}
        #: In-place calls whose target, the model's tensor itself, crossed it before.
        self.targets_crossing: set[int] = set()
        self.boundary: Callable[[Tensor], Tensor] | None = None
        #: Whether the explained output crossed the boundary (it is input-derived).
        self.output_crossed = False
        self.replayable = True
        self.key: tuple | None = None

    def add(self, index: int, step: Step | None) -> None:
        """Run call ``index`` by ``step`` (``None``: as written)."""
        if step is None:
            self.steps.pop(index, None)
        else:
            self.steps[index] = step
        self.planned.add(index)

    def add_parts(self, index: int, parts: Callable, args: tuple, kwargs: dict) -> Decomposed:
        """Run call ``index`` (``args``, ``kwargs``) through ``parts(*args, **kwargs)``, its
        calls replayed in turn; the caller sets :attr:`Decomposed.end` once they ran."""
        self.parts[index] = decomposed = Decomposed(index, parts, args, kwargs)
        self.planned.add(index)
        return decomposed

    @functools.cached_property
    def special(self) -> frozenset[int]:
        """The calls a replay does more with than run and check them (taken once recorded)."""
        return frozenset().union(self.steps, self.parts, self.crossings,
                                 self.targets_crossing, self.in_place)

    def unreplayable(self) -> None:
        """A rule met depends on more than its call: nothing to replay."""
        self.replayable = False


def argument_signature(args: tuple, kwargs: dict) -> tuple:
    """What decides which calls a decomposition's Python code makes: every argument's value,
    a tensor's dtype, number of dimensions and the first argument that is the same tensor
    (``query is key``) in its place."""
    first: dict[int, int] = {}
    values = [*args, *kwargs.values()]
    return tuple(kwargs), tuple(
        (v.dtype, v.dim(), first.setdefault(id(v), i)) if isinstance(v, Tensor) else v
        for i, v in enumerate(values))


class Decomposed:
    """A fused call (attention) that the recorded analysis ran through its parts: the plan
    holds the parts' calls after it, up to :attr:`end`.

    Where the decomposition takes the calls that have rules as keyword arguments
    (:data:`~.attention.INJECTED`) and every other part runs as written, a replay runs it
    directly (:meth:`direct`): those calls by their steps, the rest as plain torch, with no
    check of each part. The parts are the library's own code, whose calls follow from the
    arguments' :func:`argument_signature` alone, which the replay compares with the
    recorded one, and from the fused call's tensors, whose sources it checks.
    """

    def __init__(self, index: int, parts: Callable, args: tuple, kwargs: dict) -> None:
        self.index, self.parts = index, parts
        self.signature = argument_signature(args, kwargs)
        #: The index after the parts' last call.
        self.end = index + 1
        #: The call's own tensors that a part returned as they were (a float mask's
        #: ``.to(dtype)``), by position among them (:func:`~.kinds.tensors_in`) → the source
        #: that part gave them, which the model's later calls got them from.
        self.passed: list[tuple[int, object]] = []
        self._direct: Callable[[tuple, dict], Any] | None | bool = False  # (not made yet)

    def direct(self, plan: Plan) -> Callable[[tuple, dict], Any] | None:
        """``run(args, kwargs)``, the call run directly, or ``None`` where a part needs the
        replay (it runs in place, or has a rule or crosses the input boundary and is no
        call the decomposition takes)."""
        if self._direct is not False:
            return self._direct
        self._direct = None
        injected = INJECTED.get(self.parts)
        if injected is None:
            return None
        runs: dict[Callable, list[tuple[Step | None, frozenset[int] | None]]] = {
            func: [] for func in injected}
        for i in range(self.index + 1, self.end):
            func = plan.funcs[i]
            if func in injected:
                runs[func].append((plan.steps.get(i), plan.crossings.get(i)))
            elif i in plan.steps or i in plan.crossings or i in plan.parts:
                return None
            if i in plan.targets_crossing or i in plan.in_place:
                return None
        parts, boundary = self.parts, plan.boundary

        def run(args: tuple, kwargs: dict) -> Any:
            calls = {keyword: _replayed_in_turn(func, iter(runs[func]), boundary)
                     for func, keyword in injected.items()}
            return parts(*args, **kwargs, **calls)

        self._direct = run
        return run


def _replayed_in_turn(func: Callable,
                      runs: Iterator[tuple[Step | None, frozenset[int] | None]],
                      boundary: Callable[[Tensor], Tensor] | None) -> Callable:
    """``func`` whose successive calls run as the recorded ones did, by ``runs`` in turn:
    ``(step, crossing)``, the call's step (``None``: as written) and the positions of its
    tensors that cross the input boundary (``None``: none)."""
    def call(*args: Any, **kwargs: Any) -> Any:
        step, crossing = next(runs)
        if crossing is not None:
            args, kwargs = crossed(args, kwargs, crossing, boundary)
        return func(*args, **kwargs) if step is None else step(func, args, kwargs)

    return call


def stateless(handler: Callable) -> Callable:
    """Mark a handler whose rule is a function of its call alone: an analysis replays it as
    it is (see :func:`~.operations.handler_step`)."""
    handler.stateless = True
    return handler


def with_output_gradient(transform: Callable[[Tensor], Tensor]) -> Step:
    """The step of a call whose rule is its plain output with ``transform`` applied (a
    gradient rewired, the value kept)."""
    return lambda func, args, kwargs: transform(func(*args, **kwargs))


def crossed(args: tuple, kwargs: dict, positions: frozenset[int],
            boundary: Callable[[Tensor], Tensor]) -> tuple[tuple, dict]:
    """``args`` and ``kwargs`` with the tensors at ``positions`` through ``boundary``, once
    per tensor (``q is k`` stays true)."""
    count = itertools.count()
    done: dict[int, Tensor] = {}

    def swap(t: Tensor) -> Tensor:
        if next(count) not in positions:
            return t
        if id(t) not in done:
            done[id(t)] = boundary(t)
        return done[id(t)]

    return replace_tensors(args, kwargs, swap)


#: The source of the model input among a call's tensors (see :class:`DataFlow`).
MODEL_INPUT = -1


class DataFlow:
    """Where the tensors of a forward pass came from: the model input, the ``k``-th tensor
    output of call ``i`` (``(i, k)``), or neither (``None``: a parameter, a buffer, a
    tensor made outside the forward pass)."""

    def __init__(self, model_input: Tensor) -> None:
        # (by id, each with a weak reference to its tensor: an id is reused once its tensor
        # is freed, and a forward pass frees what it no longer uses)
        self.made: dict[int, tuple[weakref.ref, object]] = {
            id(model_input): (weakref.ref(model_input), MODEL_INPUT)}

    def passed_by_parts(self, decomposed: Decomposed, args: tuple, kwargs: dict) -> None:
        """Note which of a fused call's tensors (``args``, ``kwargs``) its parts returned as
        they were (:attr:`Decomposed.passed`), once they ran."""
        decomposed.passed = [
            (position, source) for position, source in enumerate(self.sources(args, kwargs))
            if isinstance(source, tuple) and decomposed.index < source[0] < decomposed.end]

    def restate(self, tensors: list[Tensor], passed: list[tuple[int, object]]) -> None:
        """The tensors at the positions ``passed`` names as made by the parts that returned
        them as they were, as the recorded analysis saw them (a direct run of the parts
        notes none)."""
        for position, source in passed:
            t = tensors[position]
            self.made[id(t)] = (weakref.ref(t), source)

    def sources(self, args: tuple, kwargs: dict) -> list:
        """The sources of the tensors among a call's arguments (:func:`~.kinds.tensors_in`),
        in order."""
        made = self.made
        return [entry[1] if (entry := made.get(id(t))) is not None and entry[0]() is t
                else None for t in tensors_in(args, kwargs)]

    def note(self, index: int, output: object, target: object = None) -> None:
        """Call ``index`` made the tensors of ``output``, and, in place, its ``target`` as
        the model holds it (whatever tensor the call returned: none for ``t[i] = v``)."""
        made = self.made
        if isinstance(output, Tensor):
            made[id(output)] = (weakref.ref(output), (index, 0))
        else:
            for k, t in enumerate(tensors_in(output)):
                made[id(t)] = (weakref.ref(t), (index, k))
        if isinstance(target, Tensor):
            made[id(target)] = (weakref.ref(target), (index, 0))

    def alias(self, tensors: list[Tensor], replacements: list[Tensor]) -> None:
        """Each of ``replacements`` stands for the tensor at its position in ``tensors``
        (where the analysis swapped them: a kernel layer's output resolved for its use, which
        a replay's step gives at once)."""
        made = self.made
        for t, new in zip(tensors, replacements, strict=True):
            entry = made.get(id(t))
            if new is not t and entry is not None and entry[0]() is t:
                made[id(new)] = (weakref.ref(new), entry[1])


class Diverged(Exception):
    """The forward pass made another call than the plan recorded."""


class Replayed(TorchFunctionMode):
    """Run a forward pass of ``model_input`` by a :class:`Plan`: each call checked against the
    recorded one, the handled ones run by their steps. Use as a context manager;
    :meth:`finish` after the forward pass checks that it made all the recorded calls."""

    def __init__(self, plan: Plan, model_input: Tensor) -> None:
        super().__init__()
        self.plan = plan
        self.flow = DataFlow(model_input)
        self.index = 0
        plan.held.clear()

    def __torch_function__(self, func, types, args=(), kwargs=None):
        index = self.index
        self.index = index + 1
        plan = self.plan
        kwargs = kwargs or {}
        # (equal, not only the same: a property's getter, x.shape, is a new object each time)
        if index >= len(plan.funcs) or (
                (recorded := plan.funcs[index]) is not func and recorded != func):
            raise Diverged(f"call {index} is {getattr(func, '__name__', func)}, not the "
                           f"recorded one")
        sources = plan.sources[index]
        if sources is None:  # (a query of a tensor's metadata: no tensor made, no rule)
            return func(*args, **kwargs)
        if self.flow.sources(args, kwargs) != sources:
            raise Diverged(f"call {index} ({getattr(func, '__name__', func)}) gets tensors "
                           f"made elsewhere than recorded")
        if _is_any_autocast_enabled():  # (an autocast region behind a global flag: the
            # full analysis refuses what it would compute in 16 bits)
            raise Diverged(f"call {index} ({getattr(func, '__name__', func)}) runs in an "
                           f"autocast region")
        if index not in plan.special:  # (most calls)
            output = func(*args, **kwargs)
            self.flow.note(index, output)
            return output
        given, given_kwargs = args, kwargs
        if index in plan.targets_crossing:
            args[0].copy_(plan.boundary(args[0].clone()))
        crossing = plan.crossings.get(index)
        if crossing is not None:  # where the recorded analysis crossed it, as it did
            args, kwargs = crossed(args, kwargs, crossing, plan.boundary)
        step = plan.steps.get(index)
        if step is not None:
            output = step(func, args, kwargs)
        elif index in plan.parts:
            decomposed = plan.parts[index]
            output = self._through_parts(decomposed, args, kwargs)
            self.flow.restate(tensors_in(given, given_kwargs), decomposed.passed)
        else:
            output = func(*args, **kwargs)
        self.flow.note(index, output, given[0] if index in plan.in_place else None)
        return output

    def _through_parts(self, decomposed: Decomposed, args: tuple, kwargs: dict) -> object:
        """A fused call run directly where it can (:meth:`Decomposed.direct`), else with its
        parts replayed in turn."""
        direct = decomposed.direct(self.plan)
        if direct is not None and argument_signature(args, kwargs) == decomposed.signature:
            self.index = decomposed.end
            return direct(args, kwargs)
        with self:  # (a call runs with the mode popped: its parts must be seen)
            return decomposed.parts(*args, **kwargs)

    def finish(self, logits: Tensor) -> Tensor:
        """Check that the forward pass made all the recorded calls; the explained output
        ``logits`` through the boundary where the recorded one crossed it."""
        self.plan.held.clear()
        if self.index != len(self.plan.funcs):
            raise Diverged(f"{self.index} calls, {len(self.plan.funcs)} recorded")
        return self.plan.boundary(logits) if self.plan.output_crossed else logits
