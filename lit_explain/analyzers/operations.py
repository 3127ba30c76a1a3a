"""Give torch operations their backward rules, however a model calls them.

Module hooks see only modules; a model written with ``F.relu`` and ``out += identity``
(every torchvision ResNet) calls operations no hook sees. :class:`OperationRules` is a
:class:`~torch.overrides.TorchFunctionMode`: during one forward pass it sees every torch
call (``F.linear`` inside ``nn.Linear``, ``F.relu``, ``Tensor.relu``, ``Tensor.add_``,
``torch.cat``, ...), sorts it into a *kind* (:mod:`.kinds`) and hands it to the
analyzer's handler for that kind. A handler returns the same forward value with a rewired
backward. Calls of a kind the analyzer neither handles nor lets pass raise
:class:`NotAnalyzableModelError`, naming the operation and the module it runs in: never a
silent plain gradient where a rule was asked for.
"""

from __future__ import annotations

import dataclasses
import functools
import threading
import warnings
import weakref
from collections import OrderedDict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.modules.module import (
    register_module_forward_hook,
    register_module_forward_pre_hook,
)
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_leaves
from torch.utils.hooks import RemovableHandle

from ..precision import low_precision
from .attention import DECOMPOSITIONS
from .errors import NotAnalyzableModelError
from .kinds import (
    ACTIVATION,
    ATTENTION,
    CLAMPS,
    ELEMENTWISE_AFFINE,
    ELEMENTWISE_PRODUCTS,
    ELEMENTWISE_SCALINGS,
    GRADIENT_HOOKS,
    INPUT_PREPROCESSING,
    KERNEL,
    LINEAR,
    MATRIX_PRODUCTS,
    PRODUCT,
    QUERIES,
    RELU,
    SOFTMAX,
    STATISTIC,
    STRUCTURE,
    UNKNOWN,
    WEIGHT_PRODUCT,
    classify,
    differentiable,
    operation_name,
    out_of_place,
    reads_values,
    replace_tensors,
    tensors_in,
    weight_operand,
)
from .masks import Masks
from .provenance import UNSEEN_CODE, Provenance
from .replay import DataFlow, Plan, Step, crossed


@dataclass
class OperationCall:
    """One torch call seen during an analysis forward pass, handed to a handler.

    Attributes
    ----------
    func, args, kwargs:
        The call as the model made it; an in-place call reaches a handler as its
        out-of-place twin (see :class:`OperationRules`).
    kind:
        Its kind (``"kernel"``, ``"relu"``, ...).
    module, module_path:
        The innermost module whose ``forward`` made the call (``None`` and ``""`` for
        calls made outside any submodule of the analyzed model).
    layer_index:
        For kernel calls: their layer's number, counted from 0 in the order of the layers'
        first calls in this forward pass (a layer called again keeps its number).
    is_input_layer:
        For kernel calls: the layer is fed by the model input through reshapes and input
        preprocessing only. For fused attention: one of its tensors is (then it has not
        crossed the relevance flow's input boundary; its parts do, see
        :meth:`decompose`).
    weight_index:
        For weight products (kind ``"weight_product"``): where ``args`` hold the weight.
    observe_input, observe_output:
        Set by the reverse-pass diagnostics for handlers that observe their own layer
        (where its input and output take their final form): apply them there.
    parts:
        For fused attention calls: runs the call through its parts with the analysis
        active, so that each part gets its own rule (see :meth:`decompose`).
    elementwise_of:
        For an elementwise product whose factors are all elementwise functions of one tensor
        (GELU written out, ``0.5 * x * (1 + tanh(...))``): that tensor, as the call's own
        tensors reach it (after the relevance flow's swaps); the product is one elementwise
        function of it, of kind ``"activation"``, whose rule takes this tensor as its input.
    in_place_target:
        For the out-of-place twin of an in-place call: the tensor the model's call writes
        (a copy of it stands in the twin's arguments, see :class:`OperationRules`).
    input_support:
        For a kernel call on a constant-padded input (``F.pad`` before the call: a causal
        or "same" padding written out; elementwise operations in place since keep it a
        constant, a write of other values into it, ``p[..., 0] = x[..., -1]``, does not):
        1 where the input holds the values it was padded from, 0 at the padding. The rules
        that spread relevance by the weights alone (w², flat, z^B) leave the padding out, as
        they do a convolution's own padding (they gave it relevance, which the padding's
        backward then dropped).
    index, plan:
        The call's position among the forward pass's calls, and the :class:`~.replay.Plan`
        the analysis records (``None``: none), which a handler whose rule depends on the
        call alone gives the call's step (:meth:`replay`).
    """

    func: Callable
    args: tuple
    kwargs: dict
    kind: str
    module: nn.Module | None = None
    module_path: str = ""
    layer_index: int | None = None
    is_input_layer: bool = False
    weight_index: int | None = None
    observe_input: Callable[[Tensor], Tensor] | None = None
    observe_output: Callable[[Tensor], Tensor] | None = None
    parts: Callable[[tuple, dict], object] | None = None
    elementwise_of: Tensor | None = None
    in_place_target: Tensor | None = None
    input_support: Tensor | None = None
    index: int = -1
    plan: Plan | None = None

    def run(self, *args, **kwargs) -> Tensor:
        """Run the operation, on new ``args``/``kwargs`` where given."""
        return self.func(*(args or self.args), **{**self.kwargs, **kwargs})

    def replay(self, step: Step | None) -> None:
        """How a replay of the analysis (:mod:`.replay`) runs this call: by ``step``, or
        (``None``) as written, for a rule found to be the call's own gradient."""
        if self.plan is not None:
            self.plan.add(self.index, step)

    def decompose(self) -> object:
        """The output of a fused call (attention) computed from its parts, each part routed to
        the handler of its own kind (:mod:`~.attention`)."""
        if self.parts is None:
            raise TypeError(f"{self.where()} has no decomposition into parts")
        if self.plan is None:
            return self.parts(self.args, self.kwargs)
        # (a replay runs the parts, each by its own step)
        decomposed = self.plan.add_parts(self.index, DECOMPOSITIONS[self.func], self.args,
                                         self.kwargs)
        output = self.parts(self.args, self.kwargs)
        decomposed.end = len(self.plan.funcs)
        return output

    def replace_input(self, old: Tensor, new: Tensor) -> OperationCall:
        """This call with the argument ``old`` replaced by ``new``."""
        swap = lambda a: new if a is old else a  # noqa: E731
        return dataclasses.replace(self, args=tuple(swap(a) for a in self.args),
                                   kwargs={k: swap(v) for k, v in self.kwargs.items()})

    @property
    def inputs(self) -> list[Tensor]:
        """The differentiable tensor arguments of the call, in order."""
        return [a for a in tensors_in(self.args, self.kwargs) if differentiable(a)]

    def where(self) -> str:
        """Human-readable location: operation, module path and module type."""
        place = f"module '{self.module_path}' ({type(self.module).__name__})" if self.module \
            is not None and self.module_path else "the model's own forward"
        return f"{operation_name(self.func)} in {place}"


Handler = Callable[[OperationCall], Tensor]
#: ``prepare(kind, args, kwargs, tensors) -> (args, kwargs)``: an analyzer's chance to swap
#: the tensors a call receives before it runs (see :class:`OperationRules`); ``tensors``:
#: those among the arguments (:func:`tensors_in`).
Prepare = Callable[[str, tuple, dict, list[Tensor]], tuple[tuple, dict]]

#: Kinds that carry the model input to the first kernel layer unchanged in meaning.
_INPUT_KINDS = frozenset({STRUCTURE, INPUT_PREPROCESSING})
#: Kinds whose tensors cross the relevance flow's input boundary where they enter: not the
#: input kinds, nor fused attention, whose parts cross it (its projections may be the input
#: layer; a handler that runs it whole is told by ``is_input_layer``).
_NOT_CROSSING = _INPUT_KINDS | {ATTENTION}
#: Kinds whose operations autocast computes in 16 bits (matrix products and convolutions),
#: and PReLU, which it lowers too.
_LOWERED_BY_AUTOCAST = frozenset({KERNEL, WEIGHT_PRODUCT, ATTENTION})
_PRELU = frozenset({F.prelu, torch.prelu})
#: Calls that write other values into a tensor (a padding written over is none).
_WRITES = frozenset({Tensor.__setitem__, Tensor.copy_, Tensor.index_put_, Tensor.index_copy_,
                     Tensor.masked_scatter_, Tensor.scatter_, Tensor.scatter_add_,
                     Tensor.masked_fill_})

#: Calls that fill in a value of their own (``masked_fill(mask, v)``, ``torch.where(c, x,
#: v)``): a constant, whose positions a carried padding's support gives 0.
_FILLS = frozenset({Tensor.masked_fill, torch.masked_fill, torch.where})


#: Kinds through which a padding is carried (with the elementwise operations with constants):
#: reshapes, copies and selections; elementwise functions of the padded tensor alone.
_CARRYING = frozenset({STRUCTURE, ACTIVATION, RELU, INPUT_PREPROCESSING})


def _written(support: Callable[[], Tensor | None], written: Tensor, value: float
             ) -> Tensor | None:
    """``support()`` with the positions in ``written`` (a write reached them) as input
    (``value`` 1) or padding (0: a constant written there)."""
    held = support()
    return None if held is None else torch.where(written, torch.full_like(held, value), held)


def _nearest(args: tuple, kwargs: dict) -> bool:
    """Whether an ``F.interpolate`` call resizes by nearest neighbours (copies values)."""
    mode = args[3] if len(args) > 3 else kwargs.get("mode", "nearest")
    return mode in ("nearest", "nearest-exact")


def too_coarse(subject: str, dtype: torch.dtype) -> NotAnalyzableModelError:
    """The refusal of a rule-based analysis whose rules would run in 16-bit ``dtype``
    (``subject`` says what runs in it)."""
    return NotAnalyzableModelError(
        f"{subject} {dtype}, too coarse for the rules, which run in the dtype of the model's "
        f"operations: their divisions give maps of NaN and a canonized BatchNorm rounds away "
        f"from the model's own output. Analyse a float32 copy (copy.deepcopy(model).float() "
        f"and x.float(), with no torch.autocast region in its forward); the gradient methods "
        f"(gradient, input_t_gradient, smoothgrad, integrated_gradients) work in {dtype}.")


def tensor_attributes(module: nn.Module) -> list[Tensor]:
    """The leaf tensors ``module`` holds outside its parameters and buffers: plain
    attributes (``self.W = torch.randn(..., requires_grad=True)``, a from-scratch layer's
    weights) and those in list, tuple or dict attributes, nested too; not a computed tensor
    (an activation the forward keeps)."""
    found = []
    attributes = vars(module)
    for name in attributes.keys() - _MODULE_INTERNALS:  # (once per module per analysis)
        value = attributes[name]
        if type(value) in _PLAIN:
            continue
        if isinstance(value, Tensor):
            if value.grad_fn is None:
                found.append(value)
        elif isinstance(value, (list, tuple, dict)) and not all(  # (kernel_size=(3, 3))
                type(item) in _PLAIN for item in (
                    value.values() if isinstance(value, dict) else value)):
            # (nested; an OrderedDict, a namedtuple)
            found.extend(t for t in tree_leaves(value)
                         if isinstance(t, Tensor) and t.grad_fn is None)
    return found


#: nn.Module's own attributes (parameters, buffers, submodules, hooks): no tensor attributes.
_MODULE_INTERNALS = frozenset(nn.Module().__dict__)
#: Types of the attributes that configure a layer (sizes, flags, names): no tensors in them.
_PLAIN = frozenset({int, float, bool, str, type(None)})


def article(word: str) -> str:
    """``"a"`` or ``"an"`` for ``word``."""
    return "an" if word[:1] in "aeiou" else "a"


class ElementwiseRoots:
    """Which tensor each output of a chain of elementwise operations is a function of (its
    *root*): ``0.5 * x``, ``x ** 3``, ``tanh(...)``, ``1 + ...`` and sums of such terms
    all have root ``x``. An elementwise product of factors of one root is one elementwise
    function of it (see :attr:`OperationCall.elementwise_of`), and so are a non-linearity
    of a number added to it (``relu6(x + 3)``: :meth:`shifted_root`) and a map by numbers of
    a non-linearity's output (``1 + exp(-x)``: :meth:`non_linear`).

    Each output is marked with a :class:`_RootMark`.
    """

    def __init__(self) -> None:
        self._token = object()  # this pass's marks only

    def _mark(self, t: Tensor) -> _RootMark | None:
        mark = getattr(t, "_lit_explain_root", None)
        return mark if mark is not None and mark.token is self._token else None

    def _root(self, t: Tensor, mark: _RootMark | None) -> Tensor:
        """``t``'s root (``mark``: its mark), or ``t`` itself."""
        root = mark.root() if mark is not None else None
        return t if root is None else root

    def shifted_root(self, tensors: list[Tensor]) -> Tensor | None:
        """The root of a non-linearity's one operand where numbers were added to the root on
        the way (``relu6(x + 3)``, ``erf((x - mu) / s)``): the function is of the root."""
        mark = self._mark(tensors[0]) if len(tensors) == 1 else None
        return mark.root() if mark is not None and mark.shifted else None

    def non_linear(self, func: Callable, tensors: list[Tensor]) -> bool:
        """Whether the call maps the output of a chain through a non-linearity by numbers
        alone (``1 - sigmoid(x)``, ``(1 + tanh(x)) / 2``): part of that elementwise
        function, not an affine layer whose constant takes a share."""
        if func not in ELEMENTWISE_AFFINE or len(tensors) != 1:
            return False
        mark = self._mark(tensors[0])
        return mark is not None and mark.non_linear

    def common(self, func: Callable, tensors: list[Tensor]) -> Tensor | None:
        """The one root of an elementwise product's differentiable factors (two or more,
        the product shaped like the root), or ``None``."""
        operands = [t for t in tensors if differentiable(t)]
        if func not in ELEMENTWISE_PRODUCTS or len(operands) < 2:
            return None
        roots = {id(r): r for r in (self._root(t, self._mark(t)) for t in operands)}
        if len(roots) != 1:
            return None
        (root,) = roots.values()
        shapes = [t.shape for t in operands]
        return root if torch.broadcast_shapes(*shapes) == root.shape else None

    def note(self, func: Callable, kind: str, tensors: list[Tensor],
             produced: list[Tensor]) -> None:
        """Give the output of an elementwise call the root its differentiable operands
        share."""
        if len(produced) != 1 or not produced[0].requires_grad or not (
                kind in _ELEMENTWISE_KINDS or func in ELEMENTWISE_AFFINE
                or func in ELEMENTWISE_PRODUCTS):
            return
        root, non_linear = None, kind == ACTIVATION  # (a plain loop: once per call of
        shifted = func in _SHIFTS and len(tensors) == 1  # every analysed forward pass)
        for t in tensors:
            if not (t.requires_grad and t.is_floating_point()):
                shifted = None  # (a tensor constant)
                continue
            mark = self._mark(t)
            operand_root = self._root(t, mark)
            if mark is not None:
                non_linear = non_linear or mark.non_linear
                shifted = None if shifted is None or mark.shifted is None else \
                    shifted or mark.shifted
            if root is None:
                root = operand_root
            elif operand_root is not root:
                return
        if root is not None and produced[0].shape == root.shape:
            produced[0]._lit_explain_root = _RootMark(
                self._token, weakref.ref(root), non_linear,
                None if kind == ACTIVATION else shifted)


class _RootMark(NamedTuple):
    """What :class:`ElementwiseRoots` knows of a tensor."""

    token: object  # the pass that marked it
    root: weakref.ref  # the tensor it is an elementwise function of
    non_linear: bool  # whether the chain from the root passed a non-linearity
    #: Whether the chain added a number to the root, with numbers alone (``None`` where a
    #: tensor constant, a bias, took part: it takes its share of the relevance).
    shifted: bool | None


#: Additions and subtractions (of a number, where :class:`ElementwiseRoots` sees them).
_SHIFTS = frozenset({torch.add, Tensor.add, Tensor.add_, Tensor.__add__, Tensor.__iadd__,
                     Tensor.__radd__, torch.sub, Tensor.sub, Tensor.sub_, Tensor.__sub__,
                     Tensor.__isub__, Tensor.__rsub__})
#: Kinds whose calls are elementwise functions of their operands.
_ELEMENTWISE_KINDS = frozenset({ACTIVATION, RELU, INPUT_PREPROCESSING})


@dataclass
class _ForwardState:
    module_stack: list[tuple[str, nn.Module]] = field(default_factory=list)
    input_derived: dict[int, Tensor] = field(default_factory=dict)
    #: The model input's node in the autograd graph (``None``: it requires no grad).
    input_node: object = None
    #: Layer numbers (:attr:`OperationCall.layer_index`) by weight (see ``_layer_index``),
    #: and the weights the forward pass made: id → the weight and the ids of the
    #: parameters and buffers it is made from.
    layers: dict[object, int] = field(default_factory=dict)
    made_from: dict[int, tuple[Tensor, frozenset[int]]] = field(default_factory=dict)
    held: frozenset[int] | None = None  # ids of the model's buffers and tensor attributes
    #: Constant-padded tensors (``F.pad``; not written into since): id → the tensor and the
    #: maker of its support.
    padded: dict[int, tuple[Tensor, Callable[[], Tensor]]] = field(default_factory=dict)
    #: Operations without a rule, in forward order: their error and their outputs' nodes.
    refusals: list[tuple[Exception, list]] = field(default_factory=list)
    weight_token: object = field(default_factory=object)  # marks tensors made from weights
    provenance: Provenance = field(default_factory=Provenance)
    masks: Masks = field(default_factory=Masks)
    roots: ElementwiseRoots = field(default_factory=lambda: ElementwiseRoots())


class OperationRules(TorchFunctionMode):
    """Route the torch calls of one forward pass to an analyzer's handlers.

    Parameters
    ----------
    model:
        The analyzed model; its submodules are tracked so that a call knows where it runs.
    handlers:
        Kind → handler. A handler returns the operation's output with its rule's backward.
    passthrough:
        Kinds whose ordinary gradient is the analyzer's rule; they run as the model wrote
        them, in place or not.
    model_input:
        The input tensor. Tensors derived from it through reshapes (``STRUCTURE``) and
        elementwise operations with constants (``INPUT_PREPROCESSING``, such as an
        in-forward ``(x - mean) / std``) are tracked, so that the first kernel layer they
        reach is the input layer.
    prepare:
        Called on every routed call's arguments before it runs (the LRP analyzer resolves
        deferred kernel outputs there).
    input_boundary:
        Applied to every input-derived tensor where it enters an operation of another kind
        (the LRP analyzer's relative flow turns relevance per unit into relevance there).
    record:
        A list that receives a :class:`Recorded` for every call: for diagnostics.
    refuse_detached:
        Raise :class:`NotAnalyzableModelError` where a call combines a differentiable tensor
        with a value computed from the input without a gradient (``detach()``, a
        ``torch.no_grad()`` region, an ``argmax`` index): DeepLIFT, which must account for
        every difference to the reference, cannot.
    plan:
        A :class:`~.replay.Plan` to record the forward pass in: every call's function, where
        the input boundary is crossed, and the steps handlers give their calls; a handler
        that gives none, a gate or a held statistic makes it unreplayable.

    What made each tensor is tracked (:mod:`.provenance`): a differentiable tensor that
    reaches a call or leaves a submodule without having been made by a routed call —
    computed in TorchScript, a custom ``torch.autograd.Function`` or a C++ extension, out of
    the rules' reach — raises :class:`NotAnalyzableModelError`. For an analyzer with a
    ``STATISTIC`` handler (LRP), a statistic that scales another tensor in an elementwise
    product or quotient (a normalisation written out by hand) is held constant there.

    Gradient hooks the forward pass registers on tensors (``Tensor.register_hook``) are not
    registered: the rules define the backward pass, and such a hook would receive (or change)
    relevance. In-place operations keep their meaning: the tensor the model holds is the one that
    changes. Kinds that pass run in place as written; for a kind with a handler, the
    handler gets the out-of-place twin of the call on a copy of the target, and its result
    is written back into the target (``target.copy_(result)``), whose gradient then flows
    through the rule. Any other call whose output is differentiable raises
    :class:`NotAnalyzableModelError`. Use it as a context manager around the forward pass.
    """

    def __init__(self, model: nn.Module, handlers: dict[str, Handler],
                 passthrough: frozenset[str], model_input: Tensor, *,
                 prepare: Prepare | None = None,
                 input_boundary: Callable[[Tensor], Tensor] | None = None,
                 record: list[Recorded] | None = None, refuse_detached: bool = False,
                 plan: Plan | None = None) -> None:
        super().__init__()
        self.model = model
        self.plan = plan
        if plan is not None:
            plan.boundary = input_boundary
            self.flow = DataFlow(model_input)
        self.handlers = handlers
        self.passthrough = passthrough
        self.prepare = prepare
        self.input_boundary = input_boundary
        self.record = record
        self.refuse_detached = refuse_detached
        # statistics held constant where they scale a tensor: analyzers with a rule for them
        self.holds_statistics = STATISTIC in handlers
        # elementwise roots: x * g(x) is an elementwise function of x, for the analyzers
        # with a rule for those
        self.tracks_roots = ACTIVATION in handlers
        self.state = _ForwardState(input_derived={id(model_input): model_input})
        if model_input.requires_grad:  # (what a weight computed from the input reaches)
            self.state.input_node = torch.autograd.graph.get_gradient_edge(model_input).node
        #: Whether the forward pass read a tensor value into Python or a shape
        #: (:func:`~.kinds.reads_values`).
        self.reads_values = False
        self.state.provenance.add_made([model_input])

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        plan = self.plan
        if plan is None:
            return self._route(func, args, kwargs)
        index = len(plan.funcs)
        plan.funcs.append(func)
        if func in QUERIES:  # (as a replay runs them: unchecked)
            plan.sources.append(None)
            return self._route(func, args, kwargs, index)
        plan.sources.append(self.flow.sources(args, kwargs))
        output = self._route(func, args, kwargs, index)
        if index in plan.parts:
            self.flow.passed_by_parts(plan.parts[index], args, kwargs)
        target = None
        if args and out_of_place(func, args, kwargs) is not None:
            plan.in_place.add(index)
            target = args[0]
        self.flow.note(index, output, target)
        return output

    def _route(self, func: Callable, args: tuple, kwargs: dict, index: int | None = None
               ) -> object:
        """The call ``func(*args, **kwargs)`` (number ``index`` of the plan) as the rules
        make it."""
        plan = self.plan
        if func in QUERIES:
            return func(*args, **kwargs)
        if func in GRADIENT_HOOKS:  # its gradient would be the rules' relevance: not registered
            if plan is not None:
                plan.add(index, unregistered_hook)
            return unregistered_hook(func, args, kwargs)
        model_args, tensors = args, tensors_in(args, kwargs)
        if not self.reads_values and reads_values(func, args, kwargs, tensors):
            self.reads_values = True
        made, gate = func, self.state.masks.rewrite(func, args, kwargs)
        if gate is not None:  # a gate by a mask of activations, as what it computes
            func, args, kwargs = gate.func, gate.args, gate.kwargs
        holds = self.holds_statistics
        if holds and func in ELEMENTWISE_SCALINGS:
            args = self.state.provenance.hold_statistic(func, args)
        if plan is not None and (gate is not None or args is not model_args):
            plan.unreplayable()  # (a gate or a held statistic: more than the call)
        if gate is not None or args is not model_args:
            tensors = tensors_in(args, kwargs)
        given_tensors = tensors  # (as the model passed them)
        kind = gate.kind if gate is not None else self._kind(func, args, kwargs, tensors)
        root = self.state.roots.common(func, given_tensors) if (
            kind == PRODUCT and self.tracks_roots) else None
        if root is not None:  # x * g(x) written out: one elementwise function of x, whose
            kind = ACTIVATION  # rule reads x, no argument of the call (nothing to replay)
            if plan is not None:
                plan.unreplayable()
        elif kind == LINEAR and self.tracks_roots and self.state.roots.non_linear(func,
                                                                                   tensors):
            kind = ACTIVATION  # (1 + exp(-x): the 1 is part of the function, no bias)
        elif kind == ACTIVATION and self.tracks_roots:  # (relu6(x + 3): a function of x)
            root = self.state.roots.shifted_root(tensors)
            if root is not None and plan is not None:
                plan.unreplayable()
        handler = self.handlers.get(kind)
        routed = handler is not None or kind in self.passthrough
        first = tensors[0] if tensors else None
        if kind == KERNEL and handler is not None and self._from_input(
                args[2] if len(args) > 2 else kwargs.get("bias")):
            raise NotAnalyzableModelError(
                f"{self._call(func, args, kwargs, kind).where()} is a kernel layer whose bias "
                f"the forward computes from the input; its rule holds the bias constant and "
                f"would give the bias's path no relevance. Add it after the layer "
                f"(F.linear(h, W) + b(x)), where the add's rule shares the relevance")
        if self.state.provenance.made_unseen(tensors):
            raise NotAnalyzableModelError(
                f"{self._call(func, args, kwargs, kind).where()} receives a tensor computed by "
                f"code this analysis cannot see into: {UNSEEN_CODE}")
        if self.refuse_detached and any(t.requires_grad for t in tensors) and \
                self.state.provenance.detached(tensors) is not None:
            raise NotAnalyzableModelError(
                f"{self._call(func, args, kwargs, kind).where()} combines a differentiable "
                f"tensor with a value computed from the input without a gradient (detach(), "
                f"a torch.no_grad() region, an index such as argmax): the analysis cannot "
                f"account for how that value differs between the input and the reference, and "
                f"its map would not sum to the output's difference")
        held = [id(t) for t in tensors] if self.record is not None else []
        # (taken before the call: an in-place one may make its target differentiable)
        input_derived = self._input_derived(tensors) if kind == STRUCTURE else None
        if routed:
            given = args, kwargs
            if self.input_boundary is not None and (
                    kind not in _NOT_CROSSING or input_derived is False):
                crossing = self._crossing(tensors)
                if 0 in crossing and args and args[0] is first and out_of_place(
                        func, args, kwargs) is not None:
                    # in place: the model's tensor itself crosses (its copy would take the
                    # call's values, and autograd would record the call on the copy)
                    if first._base is not None:  # (its base would cross again, later)
                        raise NotAnalyzableModelError(
                            f"{self._call(func, args, kwargs, kind).where()} writes in place "
                            f"into a view of a tensor the model input reaches through "
                            f"reshapes and preprocessing only (p[..., :1].add_(x[..., -1:])), "
                            f"which the relevance flow cannot follow: write it out of place "
                            f"(torch.cat, or F.pad with mode='circular' for a wrap-around)")
                    first.copy_(self.input_boundary(first.clone()))  # (its values now)
                    self.state.input_derived.pop(id(first), None)
                    crossing = crossing - {0}
                    if plan is not None:
                        plan.targets_crossing.add(index)
                if crossing:
                    args, kwargs = crossed(args, kwargs, crossing, self.input_boundary)
                    tensors = tensors_in(args, kwargs)
                    if plan is not None:
                        plan.crossings[index] = crossing
                if root is not None and self._crossing([root]):
                    root = self.input_boundary(root)
            if self.prepare is not None:
                args, kwargs = self.prepare(kind, args, kwargs, tensors)
                if root is not None:
                    root = self.prepare(kind, (root,), {}, [root])[0][0]
                if plan is not None:  # (a replay's steps hand on what prepare resolves)
                    self.flow.alias(tensors, tensors_in(args, kwargs))
            if args is not given[0] or kwargs is not given[1]:  # the engine's own tensors
                self.state.provenance.add_made(tensors_in(args, kwargs))
        # Calls that run as written (most of them) need no OperationCall: it is made for a
        # handler, an error or the diagnostics' record only.
        call = self._call(func, args, kwargs, kind, given_tensors) if (
            handler is not None or self.record is not None) else None
        if call is not None:
            call.elementwise_of = root
            if plan is not None:
                call.index, call.plan = index, plan
        if self.record is not None:
            # the ids the model passed (a hook may swap a tensor), the values the call got
            inputs = [(i, _snapshot(t)) for i, t in zip(held, tensors_in(args, kwargs),
                                                         strict=True)]
        in_place = gate is not None and gate.in_place  # (its func runs out of place)
        coarse = None  # (casts and moves compute nothing)
        if routed and tensors and kind != STRUCTURE:
            dtype = low_precision(tensors, kind in _LOWERED_BY_AUTOCAST or (
                kind == PRODUCT and func in MATRIX_PRODUCTS) or func in _PRELU)
            if dtype is not None:  # run as written, refused where the explained output uses it
                coarse = too_coarse(f"{self._call(func, args, kwargs, kind).where()} "
                                    f"computes in", dtype)
                handler = None
        if handler is None:
            output = func(*args, **kwargs)
            if in_place:
                output = args[0].copy_(output)
            produced = tensors_in(output)
            if not routed and any(differentiable(o) for o in produced):
                hint = (" If it turns the model's output into probabilities, explain the logits "
                        "instead: remove it from forward, or pass lit_explain.model_wo_softmax("
                        "model) for a trailing nn.Softmax.") if kind == SOFTMAX else ""
                error = NotAnalyzableModelError(
                    f"{self._call(func, args, kwargs, kind).where()} is {article(kind)} "
                    f"{kind} operation, for which this analyzer has no rule, and the "
                    f"explained output depends on it. Supported operation kinds: "
                    f"{sorted(set(self.handlers) | self.passthrough)}.{hint}")
                self._refuse_where_used(error, produced, first)
            if coarse is not None:
                self._refuse_where_used(coarse, produced, first)
        else:
            twin = (func, args, kwargs) if in_place else out_of_place(func, args, kwargs)
            output = handler(call) if twin is None else self._in_place(call, handler, twin)
            produced = tensors_in(output)
            if plan is not None:
                if getattr(handler, "stateless", False):
                    plan.add(index, handler_step(handler, kind))
                elif index not in plan.planned:  # (a handler that gives its own step)
                    plan.unreplayable()
        if any(o.is_complex() and differentiable(o) for o in produced):
            raise NotAnalyzableModelError(
                f"{self._call(func, args, kwargs, kind).where()} makes complex values of the "
                f"input, through which no rule propagates relevance (its gradient would stand "
                f"in for one); the gradient methods (gradient, input_t_gradient, smoothgrad, "
                f"integrated_gradients) differentiate it as it is")
        if self.record is not None:
            self.record.append(Recorded(call.where(), inputs, [_snapshot(t) for t in produced],
                                        {id(t) for t in produced}))
        # and the call's target, which an in-place call may have made differentiable
        # (out = zeros_like(h); out[i] = h[i]): it passed the check above as an input
        self.state.provenance.add_made(produced if first is None else [*produced, first])
        self.state.masks.note(made, args, kwargs, output)
        if func is F.pad and isinstance(output, Tensor):
            self._note_padding(args, kwargs, output)
        elif self.state.padded and first is not None and (func in _WRITES or (
                out_of_place(func, args, kwargs) is not None and any(
                    differentiable(t) for t in tensors[1:]))):
            # other values written into a padding, or added to it: no padding there now (an
            # elementwise change in place by constants, relu_(), keeps it one)
            self._end_padding(func, args, kwargs, first)
        elif self.state.padded and output is not first and (
                kind in _CARRYING or func in ELEMENTWISE_AFFINE):
            self._carry_padding(func, args, kwargs, tensors, output,
                                func in ELEMENTWISE_AFFINE or kind != STRUCTURE)
        self._note_weights(tensors, produced)
        if self.tracks_roots:
            self.state.roots.note(func, kind, given_tensors, produced)
        if self.refuse_detached:
            self.state.provenance.note_detached(made, tensors, produced)
        if holds and len(produced) == 1:
            self.state.provenance.note_statistic(func, kind, args, produced[0])
            self.state.provenance.note_reciprocal(func, kind, args, produced[0])
        # preprocessing: its one differentiable operand is input-derived, wherever it stands;
        # a reshape, selection or concatenation of input-derived tensors and constants (a
        # class token put before the input): so is its output, or its target, in place
        if kind == INPUT_PREPROCESSING or input_derived:
            in_place = first is not None and (output is None or output is first)
            for o in [*produced, first] if in_place else produced:
                self.state.input_derived[id(o)] = o
        return output

    def _refuse_where_used(self, error: Exception, produced: list[Tensor],
                           target: Tensor | None) -> None:
        """Raise ``error`` at the end of the forward pass where the explained output uses
        what the call produced (see :meth:`output`): an output it does not use (an auxiliary
        loss beside the logits) costs nothing. In place into a view ``target``: where its
        base is used (the view's node no longer reaches it)."""
        nodes = [o.grad_fn for o in produced if differentiable(o)]
        if target is not None and target._base is not None and any(
                o is target for o in produced):
            nodes.append(target._base.grad_fn)
        self.state.refusals.append((error, nodes))

    def _note_padding(self, args: tuple, kwargs: dict, output: Tensor) -> None:
        """Note a constant padding's output and how to make its support (see
        :attr:`OperationCall.input_support`)."""
        source, pad = args[0], args[1] if len(args) > 1 else kwargs["pad"]
        mode = args[2] if len(args) > 2 else kwargs.get("mode", "constant")
        if mode == "constant" and differentiable(source):
            entry = self.state.padded.get(id(source))
            inner = entry[1] if entry is not None and entry[0] is source else None

            def support() -> Tensor:  # (of a padded tensor padded again: its own zeros too)
                held = None if inner is None else inner()
                return F.pad(torch.ones_like(source.detach()) if held is None else held, pad)

            self.state.padded[id(output)] = (output, support)

    def _end_padding(self, func: Callable, args: tuple, kwargs: dict, target: Tensor) -> None:
        """The positions of every padded tensor (the target, its views, the tensor it views)
        that a write into ``target`` reached hold values of the model's now: input, in the
        support (``p[..., :2] = x[..., -2:]``, a wrap-around by hand), or a constant written
        there (``p[..., 0] = 1.0``): padding. A write elsewhere in the same memory
        (``p[..., 1:-1, 1:-1] *= 2``) leaves the padding one."""
        storage = target.untyped_storage()
        if not any(padded.untyped_storage().data_ptr() == storage.data_ptr()
                   for padded, _ in self.state.padded.values()):
            return

        def argument(i: int, name: str) -> object:
            return args[i] if len(args) > i else kwargs.get(name)

        with torch._C.DisableTorchFunction():  # (the engine's own reads)
            index = argument(1, "mask") if func is Tensor.masked_fill_ else argument(1, "key")
            value = argument(2, "value") if func in (Tensor.__setitem__, Tensor.masked_fill_) \
                else argument(1, "src") if func is Tensor.copy_ else None
            written_value = 0.0 if value is not None and not differentiable(value) else 1.0
            mark = torch.zeros(storage.nbytes() // target.element_size(), dtype=torch.bool,
                               device=target.device)
            region = mark.as_strided(target.shape, target.stride(), target.storage_offset())
            by_values = False
            if func is Tensor.__setitem__:  # (the positions its index reaches, however given)
                region[index] = True
                by_values = self._computed(index)
            elif func is Tensor.masked_fill_:
                region.masked_fill_(index, True)
                by_values = self._computed(index)
            else:
                region.fill_(True)
            for key, (padded, support) in list(self.state.padded.items()):
                if padded.untyped_storage().data_ptr() != storage.data_ptr():
                    continue
                if padded.element_size() != target.element_size():
                    del self.state.padded[key]
                    continue
                written = mark.as_strided(padded.shape, padded.stride(),
                                          padded.storage_offset()).clone()
                if bool(written.any()):
                    self.state.padded[key] = (padded, functools.partial(
                        _written, support, written, written_value))
                    if by_values and self.plan is not None:  # (a replay would keep these)
                        self.plan.unreplayable()

    def _computed(self, index: object) -> bool:
        """Whether an index or mask (or a tuple of them) holds a tensor the forward pass
        computed, whose values may be the input's: positions that differ between inputs."""
        if self.plan is None:  # (nothing is replayed)
            return False
        indices = index if isinstance(index, tuple) else (index,)
        made = self.flow.made
        return any(isinstance(i, Tensor) and (entry := made.get(id(i))) is not None
                   and entry[0]() is i for i in indices)

    def _carry_padding(self, func: Callable, args: tuple, kwargs: dict, tensors: list[Tensor],
                       output: object, elementwise: bool) -> None:
        """Carry a constant padding through a reshape, copy, selection or concatenation of
        padded tensors (with constants, or with other tensors, whose values are input), or an
        elementwise operation of one with constants (``F.pad(x) * 2``, ``(F.pad(x) - mean) /
        std``, ``.permute()``, ``.clone()``, ``masked_fill``, ``torch.cat`` of the parts of a
        split): its output holds the padding (so transformed) where the call put it, and
        constants where it put those (no input either). Each part of a split (``chunk``,
        ``unbind``) holds its part."""
        operands = [t for t in tensors if differentiable(t)]
        supports = {}
        for t in operands:
            entry = self.state.padded.get(id(t))
            if entry is not None and entry[0] is t:
                supports[id(t)] = entry[1]
        if not supports or (elementwise and len(operands) != 1):
            return
        if self._computed(tuple(t for t in tensors if not t.is_floating_point())):
            self.plan.unreplayable()  # (a mask or index of the input's values, as above)
        parts = [output] if isinstance(output, Tensor) else list(output) if isinstance(
            output, (tuple, list)) and all(isinstance(o, Tensor) for o in output) else []

        def carried(part: int) -> Tensor | None:
            held = {}
            for t in operands:  # (an operand without a padding: input everywhere)
                support = supports.get(id(t))
                held[id(t)] = torch.ones_like(t.detach()) if support is None else support()
                if held[id(t)] is None:
                    return None
            shape = parts[part].shape
            if elementwise:  # (with constants, or a function of it alone: f(c) is one)
                return held[id(operands[0])].expand(shape)

            def support_of(value: object) -> object:  # (of a constant: 0)
                if not isinstance(value, Tensor) or not value.is_floating_point():
                    return value
                made = held.get(id(value))
                return torch.zeros_like(value) if made is None else made

            swapped, named = replace_tensors(args, kwargs, support_of)
            if func in _FILLS:  # (the value filled in: a constant, no input)
                swapped = tuple(0.0 if isinstance(a, (int, float)) and not isinstance(
                    a, bool) else a for a in swapped)
                named = {k: 0.0 if k in ("value", "other", "input") and isinstance(
                    v, (int, float)) else v for k, v in named.items()}
            made = func(*swapped, **named)
            made = made if isinstance(made, Tensor) else made[part]
            return made if made.shape == shape else None

        for part, tensor in enumerate(parts):
            self.state.padded[id(tensor)] = (tensor, functools.partial(carried, part))

    def _input_derived(self, tensors: list[Tensor]) -> bool | None:
        """Whether the differentiable ones among a call's tensors are all input-derived
        (``True``), some of them (``False``: the call mixes the input with computed values,
        and the relevance flow's input boundary is crossed there), or none (``None``)."""
        derived = self.state.input_derived
        flags = {id(t) in derived for t in tensors if t.requires_grad}
        return len(flags) == 1 if True in flags else None

    def _kind(self, func, args: tuple, kwargs: dict, tensors: list[Tensor]) -> str:
        kind = classify(func, args, kwargs)
        if kind == PRODUCT and self.holds_statistics and func in ELEMENTWISE_PRODUCTS and \
                self.state.provenance.divides(args):
            return UNKNOWN  # (a quotient written as a product: no rule, as e / e.sum())
        if kind == KERNEL and self._from_input(args[1] if len(args) > 1 else kwargs.get(
                "weight")):
            # a layer whose weight the forward computes from the input (a hypernetwork, a
            # dynamic convolution): bilinear in its input and weight, a product of two
            # activations; linear in the weight alone where the input is a constant
            data = args[0] if args else kwargs.get("input")
            return PRODUCT if differentiable(data) else LINEAR
        if kind == LINEAR and func in MATRIX_PRODUCTS and weight_operand(
                func, args, kwargs, self._is_weight) is not None:
            return WEIGHT_PRODUCT
        if func is F.interpolate and kind == LINEAR and _nearest(args, kwargs) and \
                self._input_preprocessing(tensors):
            return STRUCTURE  # (copies of the input's values, as repeat_interleave makes)
        if (kind == RELU or (kind == ACTIVATION and func in CLAMPS)) and \
                self._input_preprocessing(tensors):
            return INPUT_PREPROCESSING  # (an elementwise operation with constants)
        if kind == LINEAR and func in ELEMENTWISE_AFFINE:
            if self._input_preprocessing(tensors):
                return INPUT_PREPROCESSING
        return kind

    def _input_preprocessing(self, tensors: list[Tensor]) -> bool:
        """Whether an elementwise call of ``tensors`` is input preprocessing, for handlers
        that have a rule for it: its one differentiable tensor is input-derived, the others
        constants."""
        operands = [a for a in tensors if differentiable(a)]
        # (a statistic of the input held constant is no constant: a normalisation written
        # out, which F.rms_norm's rule sees as no preprocessing either)
        return len(operands) == 1 and id(operands[0]) in self.state.input_derived and (
            INPUT_PREPROCESSING in self.handlers or INPUT_PREPROCESSING in self.passthrough
        ) and not any(self.state.provenance.is_held(t) for t in tensors)

    def _from_input(self, t: object) -> bool:
        """Whether ``t`` is computed from the model input with a gradient: autograd reaches
        the input from it (not a weight that merely requires grad: a tensor the model holds
        with ``requires_grad=True``, fast weights computed before the forward pass, a module
        held unregistered)."""
        return differentiable(t) and self.state.input_node is not None and \
            self.state.input_node in _graph_nodes(t.grad_fn)

    def _held(self) -> frozenset[int]:
        """The ids of the model's buffers and tensor attributes (:func:`tensor_attributes`),
        made at first use."""
        if self.state.held is None:
            self.state.held = frozenset(
                [id(t) for t in self.model.buffers()]
                + [id(t) for m in self.model.modules() for t in tensor_attributes(m)])
        return self.state.held

    def _is_weight(self, t: Tensor) -> bool:
        """Whether ``t`` is a parameter or buffer of the model, a view of one, or a tensor
        computed from them alone in this forward pass (``self.query / math.sqrt(d)``,
        ``self.basis * 0.1``)."""
        return self._is_parameter_made(t) or id(
            t if t._base is None else t._base) in self._held() or self._made(t)

    def _is_parameter_made(self, t: Tensor) -> bool:
        """Whether ``t`` is a parameter, a view of one, or computed from weights in this
        forward pass (no walk over the model: most calls ask this first)."""
        return isinstance(t if t._base is None else t._base, nn.Parameter) or getattr(
            t, "_lit_explain_weight", None) is self.state.weight_token

    def _note_weights(self, tensors: list[Tensor], produced: list[Tensor]) -> None:
        """Mark what a call computes from weights alone, a parameter among them (no
        differentiable output), and note for what it computes from the model's parameters
        and buffers alone which ones (a weight made anew is its layer by them)."""
        for t in produced:  # (most calls: a differentiable output, nothing to mark)
            if t.requires_grad:
                return
        if not produced or not all(self._is_weight(t) or self._made(t) for t in tensors):
            return
        sources = frozenset().union(*(self._weight_sources(t) for t in tensors))
        if not sources:  # (a constant made from nothing: torch.arange, torch.zeros)
            return
        weight = any(self._is_parameter_made(t) for t in tensors) and all(
            self._is_weight(t) for t in tensors)
        for t in produced:
            if weight:
                t._lit_explain_weight = self.state.weight_token
            self.state.made_from[id(t)] = (t, sources)

    def _made(self, t: Tensor) -> bool:
        """Whether ``t`` (or what it views) was computed from the model's parameters and
        buffers alone in this forward pass."""
        base = t if t._base is None else t._base
        entry = self.state.made_from.get(id(base))
        return entry is not None and entry[0] is base

    def _weight_sources(self, t: Tensor) -> frozenset[int]:
        """The ids of the parameters and buffers ``t`` is computed from in this forward pass
        (itself, where it is one)."""
        base = t if t._base is None else t._base
        return self.state.made_from[id(base)][1] if self._made(base) else frozenset({id(base)})

    @staticmethod
    def _in_place(call: OperationCall, handler: Handler,
                  twin: tuple[Callable, tuple, dict]) -> Tensor:
        func, args, kwargs = twin
        target = args[0] if args else kwargs["input"]
        twin_call = dataclasses.replace(call, func=func, args=args, kwargs=kwargs,
                                        in_place_target=target)
        return target.copy_(handler(twin_call.replace_input(target, target.clone())))

    def _through_parts(self, parts: Callable, args: tuple, kwargs: dict) -> object:
        with self:  # a handler runs with the mode popped: the parts must be seen
            return parts(*args, **kwargs)

    def output(self, logits: Tensor) -> Tensor:
        """The explained output, through the input boundary where it is input-derived (it
        reaches the input through reshapes, selections and preprocessing only, and crossed
        no other operation on the way: ``x[:, :2]`` as scores); the replay plan notes it.

        Raises the first operation without a rule that it depends on (a replay of the same
        data flow depends on the same ones)."""
        if self.state.refusals:
            reached = _graph_nodes(logits.grad_fn)
            for error, nodes in self.state.refusals:
                if any(node in reached for node in nodes):
                    raise error
        crossed = self.input_boundary is not None and logits.requires_grad and \
            id(logits) in self.state.input_derived
        if self.plan is not None:
            self.plan.output_crossed = crossed
        return self.input_boundary(logits) if crossed else logits

    def _crossing(self, tensors: list[Tensor]) -> frozenset[int]:
        """The positions among a call's tensors of those that cross the input boundary: the
        differentiable input-derived ones."""
        derived = self.state.input_derived
        return frozenset(i for i, t in enumerate(tensors)
                         if t.requires_grad and id(t) in derived)

    def _call(self, func, args, kwargs, kind,
              given: list[Tensor] | None = None) -> OperationCall:
        """The call as handlers see it; ``given``: its tensors as the model passed them, before
        the relevance flow swapped any (which decides whether a kernel layer is the input
        layer: the swapped tensors are no longer the input's)."""
        path, module = self.state.module_stack[-1] if self.state.module_stack else ("", None)
        call = OperationCall(func, args, kwargs, kind, module, path)
        if kind == ATTENTION:
            call.parts = functools.partial(self._through_parts, DECOMPOSITIONS[func])
            given = tensors_in(args, kwargs) if given is None else given
            call.is_input_layer = any(id(t) in self.state.input_derived for t in given)
        if kind == KERNEL or kind == WEIGHT_PRODUCT:
            given = tensors_in(args, kwargs) if given is None else given
            derived = self.state.input_derived
            if kind == KERNEL:  # (its input is its first tensor)
                call.is_input_layer = bool(given) and id(given[0]) in derived
                weight = args[1] if len(args) > 1 else kwargs.get("weight")
                padded = self.state.padded.get(id(given[0])) if given else None
                if padded is not None and padded[0] is given[0]:
                    call.input_support = padded[1]()
            else:
                call.weight_index = weight_operand(func, args, kwargs, self._is_weight)
                call.is_input_layer = any(id(t) in derived for t in given)
                weight = None if call.weight_index is None else args[call.weight_index]
            call.layer_index = self._layer_index(weight, module)
        return call

    def _layer_index(self, weight: object, module: nn.Module | None) -> int:
        """A kernel call's layer number: layers are numbered in the order of their first
        call, and a layer called again (shared, or a network run chunk by chunk) keeps its
        number. A layer is its weight where the model holds that (a parameter, buffer or
        tensor attribute, or a view of one: which part of it, as attention's projections
        are parts of one). A weight made anew in the forward pass (by a hook of its module,
        the old ``weight_norm`` and ``spectral_norm``, or in ``forward``:
        ``parametrizations.weight_norm``, a merged LoRA or standardised weight) is the
        parameters it is made from: made again from them (in a loop, for another chunk) it
        is the same layer, and layers made from other parameters (a deep copy, another
        adapter) are others, whatever their values."""
        if not isinstance(weight, Tensor):  # (no weight found: a call of its own)
            return self.state.layers.setdefault(object(), len(self.state.layers))
        base = weight if weight._base is None else weight._base
        part = (weight.storage_offset(), weight.shape, weight.stride())  # (which part of it)
        if self._made(base):
            key = ("made", self.state.made_from[id(base)][1], base.shape, *part)
        elif isinstance(base, nn.Parameter) or id(base) in self._held():
            key = (id(base), *part)
        else:  # (made outside the forward pass and held nowhere: itself)
            key = (id(base),)
        return self.state.layers.setdefault(key, len(self.state.layers))

    @contextmanager
    def tracking_modules(self) -> Iterator[OperationRules]:
        """Enter the mode and track which submodule runs, removing every hook on exit."""
        stack = self.state.module_stack
        paths = {id(module): (path, module) for path, module in self.model.named_modules()}
        # (global hooks fire in every thread; the mode, and so the analysis, is this one's)
        thread = threading.get_ident()

        def enter(module: nn.Module, args: tuple) -> None:
            if id(module) in paths and threading.get_ident() == thread:
                stack.append(paths[id(module)])

        def leave(module: nn.Module, args: tuple, output: object) -> None:
            if id(module) in paths and threading.get_ident() == thread:
                path, _ = stack.pop()
                with torch._C.DisableTorchFunction():  # (the checks read tensor attributes)
                    unseen = self.state.provenance.made_unseen(tensors_in(output))
                if unseen:
                    where = f"module '{path}'" if path else "the model"
                    raise NotAnalyzableModelError(
                        f"{where} ({type(module).__name__}) returns a tensor computed by code "
                        f"this analysis cannot see into: {UNSEEN_CODE}")

        # Two global hooks (filtered to the model's modules), not two per module.
        handles = [register_module_forward_pre_hook(enter),
                   register_module_forward_hook(leave, always_call=True)]
        try:
            with self, warnings.catch_warnings():
                # (torch warns at each compiled submodule's call that global hooks fire for
                # it too: these, which count on it)
                warnings.filterwarnings("ignore", message=r"Using `torch\.compile\(module\)` "
                                        r"when there are global hooks")
                yield self
        finally:
            for handle in handles:
                handle.remove()


def unregistered_hook(func: Callable, args: tuple, kwargs: dict) -> RemovableHandle:
    """A gradient hook the forward registers on a tensor, not registered (see
    :class:`OperationRules`): a handle that removes nothing."""
    return RemovableHandle(OrderedDict())


def handler_step(handler: Handler, kind: str) -> Step:
    """The replay step of a handler whose rule depends on its call alone: the handler on the
    call, an in-place call as :class:`OperationRules` runs it (on its out-of-place twin)."""
    def step(func: Callable, args: tuple, kwargs: dict) -> Tensor:
        call = OperationCall(func, args, kwargs, kind)
        twin = out_of_place(func, args, kwargs)
        return handler(call) if twin is None else OperationRules._in_place(call, handler, twin)

    return step


@dataclass
class Recorded:
    """One call of a recorded forward pass (see :class:`OperationRules`' ``record``)."""

    where: str
    inputs: list[tuple[int, Tensor]]  # (id, value when the call ran) of each tensor argument
    outputs: list[Tensor]
    output_ids: set[int]


def _snapshot(tensor: Tensor) -> Tensor:
    return tensor.detach().clone()


# Backward rewiring primitives: the forward value stays, the gradient changes. Their outputs
# are new tensors (not views), so that the model may modify them in place.

class _ScaleGradient(torch.autograd.Function):
    @staticmethod
    def forward(ctx, tensor: Tensor, factor: Tensor | float) -> Tensor:
        if isinstance(factor, Tensor):
            ctx.save_for_backward(factor)
        else:
            ctx.factor = factor
        return tensor.detach()

    @staticmethod
    def backward(ctx, grad: Tensor):
        factor = ctx.saved_tensors[0] if ctx.saved_tensors else ctx.factor
        return grad * factor, None


def scale_gradient(tensor: Tensor, factor: Tensor | float) -> Tensor:
    """``tensor`` unchanged forward; its incoming gradient is multiplied by ``factor``."""
    if isinstance(factor, Tensor):
        factor = factor.detach()
    return _ScaleGradient.apply(tensor, factor)


class _ReplaceGradient(torch.autograd.Function):
    @staticmethod
    def forward(ctx, source: Tensor, value: Tensor, backward: Callable) -> Tensor:
        ctx.backward = backward
        return value.detach()

    @staticmethod
    def backward(ctx, grad: Tensor):
        return ctx.backward(grad), None, None


def _graph_nodes(root: object) -> set:
    """The autograd nodes ``root`` reaches (itself included)."""
    seen, pending = set(), [root]
    while pending:
        node = pending.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        pending.extend(next_node for next_node, _ in node.next_functions)
    return seen


def with_gradient(source: Tensor, value: Tensor, backward: Callable[[Tensor], Tensor]) -> Tensor:
    """A tensor equal to ``value`` whose gradient reaches ``source`` as ``backward(grad)``."""
    return _ReplaceGradient.apply(source, value.detach(), backward)


def through_parts(call: OperationCall) -> object:
    """Handler of fused attention: its parts, each with the rule of its kind."""
    return call.decompose()
