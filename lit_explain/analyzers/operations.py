"""Give torch operations their backward rules, however a model calls them.

Module hooks see only modules; a model written with ``F.relu`` and ``out += identity``
(every torchvision ResNet) calls operations no hook sees. :class:`OperationRules` is a
:class:`~torch.overrides.TorchFunctionMode`: during one forward pass it sees every torch
call (``F.linear`` inside ``nn.Linear``, ``F.relu``, ``Tensor.relu``, ``Tensor.add_``,
``torch.cat``, ...), sorts it into a *kind* and hands it to the analyzer's handler for that
kind. A handler returns the same forward value with a rewired backward. Calls of a kind the
analyzer neither handles nor lets pass raise :class:`NotAnalyzableModelError`, naming the
operation and the module it runs in: never a silent plain gradient where a rule was asked for.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.modules.module import (
    register_module_forward_hook,
    register_module_forward_pre_hook,
)
from torch.overrides import TorchFunctionMode

from .attention import DECOMPOSITIONS
from .errors import NotAnalyzableModelError

Tensor_ = torch.Tensor

# Operation kinds. A handler is chosen by kind; see `classify`.
KERNEL = "kernel"  # linear and convolution layers: the layers LRP rules are written for
BATCH_NORM = "batch_norm"  # an affine layer with running statistics
RELU = "relu"
MAX_POOL = "max_pool"
LINEAR = "linear"  # other operations linear in their one differentiable input, sums included
STRUCTURE = "structure"  # reshapes, selections, concatenation, dropout: move values, no maths
ACTIVATION = "activation"  # elementwise non-linearities other than ReLU
SOFTMAX = "softmax"
PRODUCT = "product"  # products of two differentiable tensors (attention, gating)
#: LayerNorm, RMSNorm, GroupNorm, ``F.normalize``: a normalisation by a statistic of the input
NORMALIZATION = "normalization"
#: Fused attention (``F.scaled_dot_product_attention``, ``F.multi_head_attention_forward``):
#: a handler may run it through its parts (:meth:`OperationCall.decompose`)
ATTENTION = "attention"
UNKNOWN = "unknown"
#: Elementwise operations with constants on the way from the model input to the first kernel
#: layer (an in-forward ``(x - mean) / std``); an analyzer that has no rule for them sees
#: them as ``LINEAR``.
INPUT_PREPROCESSING = "input_preprocessing"
#: Every kind: a plain gradient (no rules) lets all of them pass.
ALL_KINDS = frozenset({KERNEL, BATCH_NORM, RELU, MAX_POOL, LINEAR, STRUCTURE, ACTIVATION,
                       SOFTMAX, PRODUCT, NORMALIZATION, ATTENTION, UNKNOWN,
                       INPUT_PREPROCESSING})

_KINDS: dict[Callable, str] = {}


def _register(kind: str, *funcs: Callable) -> None:
    for func in funcs:
        _KINDS[func] = kind


_register(KERNEL, F.linear, torch.conv1d, torch.conv2d, torch.conv3d,
          torch.conv_transpose1d, torch.conv_transpose2d, torch.conv_transpose3d)
_register(BATCH_NORM, F.batch_norm)
_register(RELU, F.relu, F.relu_, torch.relu, torch.relu_, Tensor_.relu, Tensor_.relu_)
_register(MAX_POOL, F.max_pool1d, F.max_pool2d, F.max_pool3d,
          torch.max_pool1d, torch.max_pool2d, torch.max_pool3d, F.adaptive_max_pool1d,
          F.adaptive_max_pool2d, F.adaptive_max_pool3d)
_register(LINEAR, F.avg_pool1d, F.avg_pool2d, F.avg_pool3d, F.adaptive_avg_pool1d,
          F.adaptive_avg_pool2d, F.adaptive_avg_pool3d, torch.add, Tensor_.add, Tensor_.add_,
          Tensor_.__add__, Tensor_.__iadd__, Tensor_.__radd__, torch.sub, Tensor_.sub,
          Tensor_.sub_, Tensor_.__sub__, Tensor_.__isub__, Tensor_.__rsub__, torch.neg,
          Tensor_.neg, Tensor_.neg_, Tensor_.__neg__, torch.sum, Tensor_.sum, torch.mean,
          Tensor_.mean, F.pad, F.interpolate)
_register(STRUCTURE, Tensor_.view, Tensor_.view_as, Tensor_.reshape, Tensor_.reshape_as,
          torch.reshape, torch.flatten, Tensor_.flatten, torch.permute, Tensor_.permute,
          torch.transpose, Tensor_.transpose, Tensor_.contiguous, torch.squeeze, Tensor_.squeeze,
          torch.unsqueeze, Tensor_.unsqueeze, Tensor_.__getitem__, torch.cat, torch.concat,
          torch.stack, torch.split, Tensor_.split, torch.chunk, Tensor_.chunk, Tensor_.clone,
          torch.clone, Tensor_.to, Tensor_.float, Tensor_.double, Tensor_.type_as, Tensor_.expand,
          Tensor_.expand_as, F.dropout, F.dropout1d, F.dropout2d, F.dropout3d, F.alpha_dropout,
          F.feature_alpha_dropout,
          Tensor_.unflatten, torch.unflatten, F.embedding, Tensor_.__setitem__,
          Tensor_.masked_fill, Tensor_.masked_fill_, torch.masked_fill, torch.where,
          Tensor_.repeat, Tensor_.repeat_interleave, torch.repeat_interleave, torch.unbind,
          Tensor_.unbind, Tensor_.narrow, torch.narrow, torch.t, Tensor_.t, torch.movedim,
          Tensor_.movedim, Tensor_.swapaxes, torch.swapaxes)
_register(ACTIVATION, F.sigmoid, torch.sigmoid, Tensor_.sigmoid, F.tanh, torch.tanh,
          Tensor_.tanh, F.gelu, F.silu, F.elu, F.selu, F.celu, F.leaky_relu, F.softplus,
          F.hardtanh, F.relu6, F.mish, F.hardswish, F.hardsigmoid, F.logsigmoid, F.softsign,
          torch.exp, Tensor_.exp, torch.log, Tensor_.log, torch.abs, Tensor_.abs, torch.sqrt,
          Tensor_.sqrt, torch.clamp, Tensor_.clamp, torch.pow, Tensor_.pow, Tensor_.__pow__,
          Tensor_.sigmoid_, Tensor_.tanh_, Tensor_.exp_, Tensor_.log_, Tensor_.abs_,
          Tensor_.sqrt_, Tensor_.clamp_, torch.clamp_, Tensor_.clamp_min, Tensor_.clamp_min_,
          Tensor_.clamp_max, Tensor_.clamp_max_, Tensor_.pow_, F.elu_, F.leaky_relu_,
          F.hardtanh_, F.threshold, F.rrelu, torch.erf, Tensor_.erf, torch.sin, Tensor_.sin,
          torch.cos, Tensor_.cos, F.tanhshrink, F.softshrink, F.hardshrink, torch.rsqrt,
          Tensor_.rsqrt)
_register(SOFTMAX, F.softmax, torch.softmax, Tensor_.softmax, F.log_softmax, torch.log_softmax,
          Tensor_.log_softmax)
_register(NORMALIZATION, F.layer_norm, F.group_norm, F.rms_norm, F.normalize)
_register(ATTENTION, *DECOMPOSITIONS)
#: Elementwise products (gating); with the matrix products, the products of two
#: differentiable tensors (kind ``PRODUCT``), linear in each when the other is a constant.
ELEMENTWISE_PRODUCTS = frozenset({torch.mul, Tensor_.mul, Tensor_.mul_, Tensor_.__mul__,
                                  Tensor_.__imul__, Tensor_.__rmul__})
#: Division: linear in the dividend; a quotient of two differentiable tensors has no rule.
_QUOTIENTS = {torch.div, Tensor_.div, Tensor_.div_, Tensor_.__truediv__, Tensor_.__itruediv__,
              Tensor_.__rtruediv__}
_PRODUCTS = ELEMENTWISE_PRODUCTS | _QUOTIENTS | {
    torch.matmul, Tensor_.matmul, Tensor_.__matmul__, Tensor_.__rmatmul__, torch.bmm,
    Tensor_.bmm, torch.einsum}

#: Elementwise operations that are linear in their one differentiable operand when the other
#: is a constant (``x - mean``, ``x / std``, ``-x``): before the first kernel layer they are
#: input preprocessing (kind ``INPUT_PREPROCESSING``).
_ELEMENTWISE_AFFINE = {
    torch.add, Tensor_.add, Tensor_.add_, Tensor_.__add__, Tensor_.__iadd__, Tensor_.__radd__,
    torch.sub, Tensor_.sub, Tensor_.sub_, Tensor_.__sub__, Tensor_.__isub__, Tensor_.__rsub__,
    torch.mul, Tensor_.mul, Tensor_.mul_, Tensor_.__mul__, Tensor_.__imul__, Tensor_.__rmul__,
    torch.div, Tensor_.div, Tensor_.div_, Tensor_.__truediv__, Tensor_.__itruediv__,
    torch.neg, Tensor_.neg, Tensor_.__neg__}
#: Queries of a tensor's metadata (``x.shape``, ``x.dtype``, ``len(x)``, ``x.dim()``): they
#: return no tensor and a third of the calls of a transformer's forward pass are among them;
#: an analysis lets them run at once.
QUERIES = frozenset({
    *(getattr(Tensor_, name).__get__ for name in (
        "shape", "dtype", "device", "layout", "ndim", "requires_grad", "is_leaf", "is_nested",
        "is_cuda", "is_sparse", "is_quantized", "is_meta", "is_mkldnn")),
    Tensor_.__len__, Tensor_.dim, Tensor_.ndimension, Tensor_.size, Tensor_.numel,
    Tensor_.nelement, Tensor_.stride, Tensor_.element_size, Tensor_.is_contiguous,
    Tensor_.is_floating_point, torch.is_floating_point, Tensor_.is_complex, torch.is_complex,
    Tensor_.get_device, Tensor_.data_ptr, torch.numel})
_INPLACE_OPERATORS = {Tensor_.__iadd__: Tensor_.__add__, Tensor_.__isub__: Tensor_.__sub__,
                      Tensor_.__imul__: Tensor_.__mul__, Tensor_.__itruediv__: Tensor_.__truediv__}


@functools.cache
def _inplace_parameter(func: Callable) -> int | None:
    """Position of ``func``'s ``inplace`` parameter (``F.relu(x, inplace=True)``), if any."""
    try:
        names = list(inspect.signature(func).parameters)
    except (TypeError, ValueError):
        return None
    return names.index("inplace") if "inplace" in names else None


def out_of_place(func: Callable, args: tuple,
                 kwargs: dict) -> tuple[Callable, tuple, dict] | None:
    """For an in-place call, the out-of-place call computing the same value (``add_`` →
    ``add``, ``F.relu(x, inplace=True)`` → ``inplace=False``) as ``(func, args, kwargs)``;
    ``None`` for a call that is not in place."""
    if func in _INPLACE_OPERATORS:
        return _INPLACE_OPERATORS[func], args, kwargs
    name = getattr(func, "__name__", "")
    if name.endswith("_") and not name.startswith("_"):
        owner = Tensor_ if getattr(Tensor_, name, None) is func else torch
        twin = getattr(owner, name[:-1], None)
        return (twin, args, kwargs) if twin is not None else None
    index = _inplace_parameter(func)
    if index is None:
        return None
    if kwargs.get("inplace"):
        return func, args, {**kwargs, "inplace": False}
    if len(args) > index and args[index] is True:
        return func, (*args[:index], False, *args[index + 1:]), kwargs
    return None


def tensors_in(*nests: object) -> list[Tensor]:
    """The tensors among call arguments: ``args`` tuples, ``kwargs`` dicts and the lists and
    tuples in them (``torch.cat([a, b])``), one level deep. Cheaper than a pytree walk, which
    matters once per operation of every analysed forward pass."""
    found: list[Tensor] = []
    for nest in nests:
        values = nest.values() if isinstance(nest, dict) else nest if isinstance(
            nest, (list, tuple)) else (nest,)
        for value in values:
            if isinstance(value, Tensor):
                found.append(value)
            elif isinstance(value, (list, tuple)):
                found.extend(v for v in value if isinstance(v, Tensor))
    return found


def replace_tensors(args: tuple, kwargs: dict, replace: Callable[[Tensor], Tensor]
                    ) -> tuple[tuple, dict]:
    """``args`` and ``kwargs`` with every tensor that :func:`tensors_in` finds replaced by
    ``replace(tensor)``."""

    def one(value: object) -> object:
        if isinstance(value, Tensor):
            return replace(value)
        if isinstance(value, (list, tuple)) and any(isinstance(v, Tensor) for v in value):
            items = [replace(v) if isinstance(v, Tensor) else v for v in value]
            return type(value)._make(items) if hasattr(value, "_make") else type(value)(items)
        return value

    return tuple(one(a) for a in args), {k: one(v) for k, v in kwargs.items()}


def differentiable(value: object) -> bool:
    """Whether ``value`` is a floating-point tensor that requires grad."""
    return isinstance(value, Tensor) and value.requires_grad and value.is_floating_point()


def classify(func: Callable, args: tuple, kwargs: dict) -> str:
    """The kind of a torch call: which rule family it belongs to."""
    kind = _KINDS.get(func)
    if kind is not None:
        return kind
    if func in _PRODUCTS:
        operands = [a for a in tensors_in(args, kwargs) if differentiable(a)]
        if len(operands) <= 1:
            return LINEAR
        return UNKNOWN if func in _QUOTIENTS else PRODUCT
    return UNKNOWN


def operation_name(func: Callable) -> str:
    """A readable name for a torch callable, e.g. ``torch.nn.functional.gelu``."""
    module = getattr(func, "__module__", None) or "torch.Tensor"
    return f"{module}.{getattr(func, '__name__', repr(func))}"


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
        For kernel calls: their position among the kernel calls of this forward pass.
    is_input_layer:
        For kernel calls: the layer is fed by the model input through reshapes and input
        preprocessing only.
    observe_input, observe_output:
        Set by the reverse-pass diagnostics for handlers that observe their own layer
        (where its input and output take their final form): apply them there.
    parts:
        For fused attention calls: runs the call through its parts with the analysis
        active, so that each part gets its own rule (see :meth:`decompose`).
    """

    func: Callable
    args: tuple
    kwargs: dict
    kind: str
    module: nn.Module | None = None
    module_path: str = ""
    layer_index: int | None = None
    is_input_layer: bool = False
    observe_input: Callable[[Tensor], Tensor] | None = None
    observe_output: Callable[[Tensor], Tensor] | None = None
    parts: Callable[[tuple, dict], object] | None = None

    def run(self, *args, **kwargs) -> Tensor:
        """Run the operation, on new ``args``/``kwargs`` where given."""
        return self.func(*(args or self.args), **{**self.kwargs, **kwargs})

    def decompose(self) -> object:
        """The output of a fused call (attention) computed from its parts, each part routed to
        the handler of its own kind (:mod:`~.attention`)."""
        if self.parts is None:
            raise TypeError(f"{self.where()} has no decomposition into parts")
        return self.parts(self.args, self.kwargs)

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


def article(word: str) -> str:
    """``"a"`` or ``"an"`` for ``word``."""
    return "an" if word[:1] in "aeiou" else "a"


@dataclass
class _ForwardState:
    module_stack: list[tuple[str, nn.Module]] = field(default_factory=list)
    input_derived: dict[int, Tensor] = field(default_factory=dict)
    kernel_calls: int = 0


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

    In-place operations keep their meaning: the tensor the model holds is the one that
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
                 record: list[Recorded] | None = None) -> None:
        super().__init__()
        self.model = model
        self.handlers = handlers
        self.passthrough = passthrough
        self.prepare = prepare
        self.input_boundary = input_boundary
        self.record = record
        self.state = _ForwardState(input_derived={id(model_input): model_input})

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in QUERIES:
            return func(*args, **kwargs)
        kind = self._kind(func, args, kwargs)
        handler = self.handlers.get(kind)
        routed = handler is not None or kind in self.passthrough
        tensors = tensors_in(args, kwargs)
        held = [id(t) for t in tensors] if self.record is not None else []
        if routed:
            if self.input_boundary is not None and kind not in _INPUT_KINDS:
                args, kwargs, tensors = self._cross_boundary(args, kwargs, tensors)
            if self.prepare is not None:
                args, kwargs = self.prepare(kind, args, kwargs, tensors)
        # Calls that run as written (most of them) need no OperationCall: it is made for a
        # handler, an error or the diagnostics' record only.
        call = self._call(func, args, kwargs, kind) if (
            handler is not None or self.record is not None) else None
        if self.record is not None:
            # the ids the model passed (a hook may swap a tensor), the values the call got
            inputs = [(i, _snapshot(t)) for i, t in zip(held, tensors_in(args, kwargs),
                                                         strict=True)]
        if handler is None:
            output = func(*args, **kwargs)
            if not routed and any(differentiable(o) for o in tensors_in(output)):
                hint = (" If it turns the model's output into probabilities, explain the logits "
                        "instead: remove it from forward, or pass lit_explain.model_wo_softmax("
                        "model) for a trailing nn.Softmax.") if kind == SOFTMAX else ""
                raise NotAnalyzableModelError(
                    f"{self._call(func, args, kwargs, kind).where()} is {article(kind)} "
                    f"{kind} operation, for which this analyzer has no rule. Supported "
                    f"operation kinds: {sorted(set(self.handlers) | self.passthrough)}.{hint}")
        else:
            twin = out_of_place(func, args, kwargs)
            output = handler(call) if twin is None else self._in_place(call, handler, twin)
        if self.record is not None:
            outputs = tensors_in(output)
            self.record.append(Recorded(call.where(), inputs, [_snapshot(t) for t in outputs],
                                        {id(t) for t in outputs}))
        if kind in _INPUT_KINDS and self._from_input(args):
            for o in tensors_in(output):
                self.state.input_derived[id(o)] = o
        return output

    def _kind(self, func, args: tuple, kwargs: dict) -> str:
        kind = classify(func, args, kwargs)
        if kind == LINEAR and func in _ELEMENTWISE_AFFINE:
            operands = [a for a in tensors_in(args, kwargs) if differentiable(a)]
            if len(operands) == 1 and id(operands[0]) in self.state.input_derived and (
                    INPUT_PREPROCESSING in self.handlers
                    or INPUT_PREPROCESSING in self.passthrough):
                return INPUT_PREPROCESSING
        return kind

    @staticmethod
    def _in_place(call: OperationCall, handler: Handler,
                  twin: tuple[Callable, tuple, dict]) -> Tensor:
        func, args, kwargs = twin
        target = args[0] if args else kwargs["input"]
        twin_call = dataclasses.replace(call, func=func, args=args, kwargs=kwargs)
        return target.copy_(handler(twin_call.replace_input(target, target.clone())))

    def _through_parts(self, parts: Callable, args: tuple, kwargs: dict) -> object:
        with self:  # a handler runs with the mode popped: the parts must be seen
            return parts(*args, **kwargs)

    def _cross_boundary(self, args: tuple, kwargs: dict, tensors: list[Tensor]
                        ) -> tuple[tuple, dict, list[Tensor]]:
        derived = self.state.input_derived
        if not any(id(t) in derived and t.requires_grad for t in tensors):
            return args, kwargs, tensors
        cross = lambda t: self.input_boundary(t) if (  # noqa: E731
            id(t) in derived and t.requires_grad) else t
        args, kwargs = replace_tensors(args, kwargs, cross)
        return args, kwargs, tensors_in(args, kwargs)

    def _from_input(self, args: tuple) -> bool:
        first = tensors_in(args)[:1]
        return bool(first) and id(first[0]) in self.state.input_derived

    def _call(self, func, args, kwargs, kind) -> OperationCall:
        path, module = self.state.module_stack[-1] if self.state.module_stack else ("", None)
        call = OperationCall(func, args, kwargs, kind, module, path)
        if kind == ATTENTION:
            call.parts = functools.partial(self._through_parts, DECOMPOSITIONS[func])
        if kind == KERNEL:
            call.layer_index = self.state.kernel_calls
            call.is_input_layer = self._from_input(args)
            self.state.kernel_calls += 1
        return call

    @contextmanager
    def tracking_modules(self) -> Iterator[OperationRules]:
        """Enter the mode and track which submodule runs, removing every hook on exit."""
        stack = self.state.module_stack
        paths = {id(module): (path, module) for path, module in self.model.named_modules()}

        def enter(module: nn.Module, args: tuple) -> None:
            if id(module) in paths:
                stack.append(paths[id(module)])

        def leave(module: nn.Module, args: tuple, output: object) -> None:
            if id(module) in paths:
                stack.pop()

        # Two global hooks (filtered to the model's modules), not two per module.
        handles = [register_module_forward_pre_hook(enter),
                   register_module_forward_hook(leave, always_call=True)]
        try:
            with self:
                yield self
        finally:
            for handle in handles:
                handle.remove()


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
    def forward(ctx, tensor: Tensor, factor: Tensor) -> Tensor:
        ctx.save_for_backward(factor)
        return tensor.detach()

    @staticmethod
    def backward(ctx, grad: Tensor):
        (factor,) = ctx.saved_tensors
        return grad * factor, None


def scale_gradient(tensor: Tensor, factor: Tensor) -> Tensor:
    """``tensor`` unchanged forward; its incoming gradient is multiplied by ``factor``."""
    return _ScaleGradient.apply(tensor, factor.detach())


class _ReplaceGradient(torch.autograd.Function):
    @staticmethod
    def forward(ctx, source: Tensor, value: Tensor, backward: Callable) -> Tensor:
        ctx.backward = backward
        return value.detach()

    @staticmethod
    def backward(ctx, grad: Tensor):
        return ctx.backward(grad), None, None


def with_gradient(source: Tensor, value: Tensor, backward: Callable[[Tensor], Tensor]) -> Tensor:
    """A tensor equal to ``value`` whose gradient reaches ``source`` as ``backward(grad)``."""
    return _ReplaceGradient.apply(source, value.detach(), backward)


def through_parts(call: OperationCall) -> object:
    """Handler of fused attention: its parts, each with the rule of its kind."""
    return call.decompose()


def map_differentiable(fn: Callable[[Tensor], Tensor], args: tuple, kwargs: dict
                       ) -> tuple[tuple, dict]:
    """``args`` and ``kwargs`` with ``fn`` applied to every differentiable tensor among them."""
    return replace_tensors(args, kwargs, lambda t: fn(t) if differentiable(t) else t)
