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

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_flatten, tree_map

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
UNKNOWN = "unknown"

_KINDS: dict[Callable, str] = {}


def _register(kind: str, *funcs: Callable) -> None:
    for func in funcs:
        _KINDS[func] = kind


_register(KERNEL, F.linear, torch.conv1d, torch.conv2d, torch.conv3d,
          torch.conv_transpose1d, torch.conv_transpose2d, torch.conv_transpose3d)
_register(BATCH_NORM, F.batch_norm)
_register(RELU, F.relu, F.relu_, torch.relu, torch.relu_, Tensor_.relu, Tensor_.relu_)
_register(MAX_POOL, F.max_pool1d, F.max_pool2d, F.max_pool3d,
          torch.max_pool1d, torch.max_pool2d, torch.max_pool3d)
_register(LINEAR, F.avg_pool1d, F.avg_pool2d, F.avg_pool3d, F.adaptive_avg_pool1d,
          F.adaptive_avg_pool2d, F.adaptive_avg_pool3d, torch.add, Tensor_.add, Tensor_.add_,
          Tensor_.__add__, Tensor_.__iadd__, Tensor_.__radd__, torch.sub, Tensor_.sub,
          Tensor_.sub_, Tensor_.__sub__, Tensor_.__isub__, Tensor_.__rsub__, torch.neg,
          Tensor_.neg, Tensor_.__neg__, torch.sum, Tensor_.sum, torch.mean, Tensor_.mean, F.pad,
          F.interpolate)
_register(STRUCTURE, Tensor_.view, Tensor_.view_as, Tensor_.reshape, Tensor_.reshape_as,
          torch.reshape, torch.flatten, Tensor_.flatten, torch.permute, Tensor_.permute,
          torch.transpose, Tensor_.transpose, Tensor_.contiguous, torch.squeeze, Tensor_.squeeze,
          torch.unsqueeze, Tensor_.unsqueeze, Tensor_.__getitem__, torch.cat, torch.concat,
          torch.stack, torch.split, Tensor_.split, torch.chunk, Tensor_.chunk, Tensor_.clone,
          torch.clone, Tensor_.to, Tensor_.float, Tensor_.double, Tensor_.type_as, Tensor_.expand,
          Tensor_.expand_as, F.dropout, F.dropout1d, F.dropout2d, F.dropout3d, F.alpha_dropout,
          F.feature_alpha_dropout,
          Tensor_.unflatten, torch.unflatten, F.embedding)
_register(ACTIVATION, F.sigmoid, torch.sigmoid, Tensor_.sigmoid, F.tanh, torch.tanh,
          Tensor_.tanh, F.gelu, F.silu, F.elu, F.selu, F.celu, F.leaky_relu, F.softplus,
          F.hardtanh, F.relu6, F.mish, F.hardswish, F.hardsigmoid, F.logsigmoid, F.softsign,
          torch.exp, Tensor_.exp, torch.log, Tensor_.log, torch.abs, Tensor_.abs, torch.sqrt,
          Tensor_.sqrt, torch.clamp, Tensor_.clamp, torch.pow, Tensor_.pow, Tensor_.__pow__)
_register(SOFTMAX, F.softmax, torch.softmax, Tensor_.softmax, F.log_softmax, torch.log_softmax,
          Tensor_.log_softmax)
_PRODUCTS = {torch.mul, Tensor_.mul, Tensor_.mul_, Tensor_.__mul__, Tensor_.__imul__,
             Tensor_.__rmul__, torch.div, Tensor_.div, Tensor_.div_, Tensor_.__truediv__,
             Tensor_.__itruediv__, torch.matmul, Tensor_.matmul, Tensor_.__matmul__, torch.bmm,
             torch.einsum, F.scaled_dot_product_attention, F.multi_head_attention_forward}

# In-place operations and the out-of-place operation run instead. Python rebinds
# ``out += x`` and ``x = relu(x)`` to the new tensor; a bare ``x.add_(y)`` statement, whose
# result is dropped, is not supported inside an analyzed forward.
_OUT_OF_PLACE: dict[Callable, Callable] = {
    Tensor_.add_: torch.add, Tensor_.__iadd__: torch.add, Tensor_.sub_: torch.sub,
    Tensor_.__isub__: torch.sub, Tensor_.relu_: torch.relu, torch.relu_: torch.relu,
    F.relu_: torch.relu,
}


def _differentiable(value: object) -> bool:
    return isinstance(value, Tensor) and value.requires_grad and value.is_floating_point()


def classify(func: Callable, args: tuple, kwargs: dict) -> str:
    """The kind of a torch call: which rule family it belongs to."""
    kind = _KINDS.get(func)
    if kind is not None:
        return kind
    if func in _PRODUCTS:
        operands = [a for a in tree_flatten((args, kwargs))[0] if _differentiable(a)]
        return PRODUCT if len(operands) > 1 else LINEAR
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
        The call as the model made it.
    kind:
        Its kind (``"kernel"``, ``"relu"``, ...).
    module, module_path:
        The innermost module whose ``forward`` made the call (``None`` and ``""`` for
        calls made outside any submodule of the analyzed model).
    layer_index:
        For kernel calls: their position among the kernel calls of this forward pass.
    is_input_layer:
        For kernel calls: the layer is fed by the model input through reshapes only.
    """

    func: Callable
    args: tuple
    kwargs: dict
    kind: str
    module: nn.Module | None = None
    module_path: str = ""
    layer_index: int | None = None
    is_input_layer: bool = False

    def run(self, *args, **kwargs) -> Tensor:
        """Run the operation out of place, on new ``args``/``kwargs`` where given."""
        func = _OUT_OF_PLACE.get(self.func, self.func)
        kwargs = {**self.kwargs, **kwargs}
        if kwargs.get("inplace"):
            kwargs["inplace"] = False
        return func(*(args or self.args), **kwargs)

    @property
    def inputs(self) -> list[Tensor]:
        """The differentiable tensor arguments of the call, in order."""
        return [a for a in tree_flatten((self.args, self.kwargs))[0] if _differentiable(a)]

    def where(self) -> str:
        """Human-readable location: operation, module path and module type."""
        place = f"module '{self.module_path}' ({type(self.module).__name__})" if self.module \
            is not None and self.module_path else "the model's own forward"
        return f"{operation_name(self.func)} in {place}"


Handler = Callable[[OperationCall], Tensor]


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
        Kinds whose ordinary gradient is the analyzer's rule.
    model_input:
        The input tensor, so that the first kernel layer fed by it can be told apart.

    Any other call whose output is differentiable raises :class:`NotAnalyzableModelError`.
    Use it as a context manager around the forward pass only.
    """

    def __init__(self, model: nn.Module, handlers: dict[str, Handler],
                 passthrough: frozenset[str], model_input: Tensor) -> None:
        super().__init__()
        self.model = model
        self.handlers = handlers
        self.passthrough = passthrough
        self.state = _ForwardState(input_derived={id(model_input): model_input})

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        kind = classify(func, args, kwargs)
        handler = self.handlers.get(kind)
        if handler is None:
            # In place on a handler's output (a custom autograd node) is not allowed: run
            # ``out += x`` out of place too; Python rebinds ``out`` to the result.
            output = _OUT_OF_PLACE.get(func, func)(*args, **kwargs)
            if kind not in self.passthrough and any(
                    _differentiable(o) for o in tree_flatten(output)[0]):
                raise NotAnalyzableModelError(
                    f"{self._call(func, args, kwargs, kind).where()} is a {kind} operation, "
                    f"for which this analyzer has no rule. Supported operation kinds: "
                    f"{sorted(set(self.handlers) | self.passthrough)}.")
        else:
            output = handler(self._call(func, args, kwargs, kind))
        if kind == STRUCTURE and self._from_input(args):
            for o in tree_flatten(output)[0]:
                if isinstance(o, Tensor):
                    self.state.input_derived[id(o)] = o
        return output

    def _from_input(self, args: tuple) -> bool:
        first = tree_flatten(args)[0][:1]
        return bool(first) and id(first[0]) in self.state.input_derived

    def _call(self, func, args, kwargs, kind) -> OperationCall:
        path, module = self.state.module_stack[-1] if self.state.module_stack else ("", None)
        call = OperationCall(func, args, kwargs, kind, module, path)
        if kind == KERNEL:
            call.layer_index = self.state.kernel_calls
            call.is_input_layer = self._from_input(args)
            self.state.kernel_calls += 1
        return call

    @contextmanager
    def tracking_modules(self) -> Iterator[OperationRules]:
        """Enter the mode and track which submodule runs, removing every hook on exit."""
        stack = self.state.module_stack

        def leave(module: nn.Module, args: tuple, output: object) -> None:
            stack.pop()

        handles = []
        for path, module in self.model.named_modules():
            handles.append(module.register_forward_pre_hook(
                lambda m, a, path=path: stack.append((path, m))))
            handles.append(module.register_forward_hook(leave, always_call=True))
        try:
            with self:
                yield self
        finally:
            for handle in handles:
                handle.remove()


# Backward rewiring primitives: the forward value stays, the gradient changes.

class _ScaleGradient(torch.autograd.Function):
    @staticmethod
    def forward(ctx, tensor: Tensor, factor: Tensor) -> Tensor:
        ctx.save_for_backward(factor)
        return tensor.view_as(tensor)

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
        return value.view_as(value)

    @staticmethod
    def backward(ctx, grad: Tensor):
        return ctx.backward(grad), None, None


def with_gradient(source: Tensor, value: Tensor, backward: Callable[[Tensor], Tensor]) -> Tensor:
    """A tensor equal to ``value`` whose gradient reaches ``source`` as ``backward(grad)``."""
    return _ReplaceGradient.apply(source, value.detach(), backward)


def map_differentiable(fn: Callable[[Tensor], Tensor], tree):
    """Apply ``fn`` to every differentiable tensor in a nest of args."""
    return tree_map(lambda a: fn(a) if _differentiable(a) else a, tree)
