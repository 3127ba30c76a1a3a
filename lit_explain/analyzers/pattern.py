"""PatternNet and PatternAttribution (Kindermans et al. 2018, "Learning how to explain neural
networks: PatternNet and PatternAttribution", ICLR).

Both are the gradient with every kernel layer's weight swapped in the backward pass:

* **PatternNet** (``pattern.net``) propagates back with the pattern ``a`` in place of the
  weight ``w``: the result estimates the *signal* in the input that produced the output.
* **PatternAttribution** (``pattern.attribution``) propagates back with ``w ⊙ a``: a
  root-point-corrected attribution (the paper's Deep-Taylor-like view).

As in iNNvestigate 1.x, the backward pass starts from the selected output's value, ReLUs
and max-pooling keep their gradient, and reshapes, concatenation and dropout pass the signal
through. Beyond iNNvestigate 1.x (which refused them):

* **BatchNorm** (eval) is an elementwise linear layer ``y = s·x + c`` with
  ``s = γ / √(var + ε)``. The pattern of a one-input neuron is exactly ``1/s``, whatever the
  data, so PatternNet divides the signal by ``s`` and PatternAttribution (``s · 1/s = 1``)
  passes it unchanged. This equals folding the BatchNorm into the kernel layer before it.
* **Average pooling, residual adds and other linear operations** keep their gradient.

Other non-linearities (sigmoid, GELU, softmax, products) raise
:class:`~lit_explain.NotAnalyzableModelError`: the method defines no rule for them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn import grad as nn_grad

from .base import Analyzer, NeuronSelection
from .operations import (
    BATCH_NORM,
    KERNEL,
    LINEAR,
    MAX_POOL,
    RELU,
    STRUCTURE,
    OperationCall,
    with_gradient,
)
from .registry import register

PASSTHROUGH = frozenset({RELU, MAX_POOL, LINEAR, STRUCTURE})

_CONV_ARGS = ("input", "weight", "bias", "stride", "padding", "dilation", "groups")
_CONV_INPUT_GRAD = {torch.conv1d: nn_grad.conv1d_input, torch.conv2d: nn_grad.conv2d_input,
                    torch.conv3d: nn_grad.conv3d_input}


def kernel_arguments(call: OperationCall) -> dict[str, Any]:
    """A kernel call's arguments by name (``F.linear`` or ``torch.convNd``)."""
    names = _CONV_ARGS[:3] if call.func is F.linear else _CONV_ARGS
    return {**dict(zip(names, call.args, strict=False)), **call.kwargs}


def input_gradient(call: OperationCall, weight: Tensor, grad: Tensor) -> Tensor:
    """The kernel call's backward to its input with ``weight`` in place of its weight."""
    arguments = kernel_arguments(call)
    source = arguments["input"]
    if call.func is F.linear:
        return grad @ weight
    convolution = _CONV_INPUT_GRAD.get(call.func)
    options = {k: arguments[k] for k in _CONV_ARGS[3:] if k in arguments}
    if convolution is not None and not isinstance(options.get("padding"), str) \
            and source.dim() == weight.dim():
        return convolution(source.shape, weight, grad, **options)
    with torch.enable_grad():  # string padding, unbatched input: let autograd do it
        inputs = source.detach().requires_grad_(True)
        output = call.func(inputs, weight, None, **options)
        return torch.autograd.grad(output, inputs, grad)[0]


def batch_norm_scale(call: OperationCall) -> Tensor:
    """``s = γ / √(var + ε)`` of an ``F.batch_norm`` call, shaped to broadcast over channels."""
    names = ("input", "running_mean", "running_var", "weight", "bias", "training", "momentum",
             "eps")
    arguments = {**dict(zip(names, call.args, strict=False)), **call.kwargs}
    x = arguments["input"].detach()
    var = arguments.get("running_var")
    if arguments.get("training", False) or var is None:  # batch statistics
        var = x.transpose(0, 1).reshape(x.shape[1], -1).var(dim=1, unbiased=False)
    scale = 1 / torch.sqrt(var + arguments.get("eps", 1e-5))
    if arguments.get("weight") is not None:
        scale = scale * arguments["weight"].detach()
    return scale.reshape(1, -1, *([1] * (x.dim() - 2))).to(x.dtype)


class _PatternBased(Analyzer):
    """The shared machinery: look a kernel layer's pattern up by its module path."""

    seed_with_value = True

    fitted_parameters = frozenset({"patterns"})

    def __init__(self, model: nn.Module, patterns: Mapping[str, Tensor] | None = None,
                 pattern_type: str = "relu", neuron_selection_mode: str = "max_activation",
                 **reverse: Any) -> None:
        from ..patterns.statistics import PATTERN_TYPES
        from .validation import check_choice

        super().__init__(model, neuron_selection_mode, **reverse)
        check_choice("pattern_type", pattern_type, PATTERN_TYPES)
        self.pattern_type = pattern_type
        self._patterns: dict[str, Tensor] | None = None
        if patterns is not None:
            self.patterns = patterns

    @property
    def patterns(self) -> dict[str, Tensor] | None:
        """Module path → pattern (each shaped like that module's weight)."""
        return self._patterns

    @patterns.setter
    def patterns(self, patterns: Mapping[str, Tensor]) -> None:
        if not isinstance(patterns, Mapping):
            raise TypeError(f"patterns must be a dict of module path -> tensor (what "
                            f"PatternComputer.compute() returns), got {type(patterns).__name__}")
        modules = dict(self.model.named_modules())
        for path, pattern in patterns.items():
            weight = getattr(modules.get(path), "weight", None)
            if not isinstance(weight, Tensor):
                raise ValueError(f"patterns has an entry {path!r}, which is not a module with "
                                 f"a weight in {type(self.model).__name__}; fit the patterns on "
                                 f"the same module the analyzer explains")
            if tuple(pattern.shape) != tuple(weight.shape):
                raise ValueError(f"pattern {path!r} has shape {tuple(pattern.shape)}, but the "
                                 f"module's weight has shape {tuple(weight.shape)}")
        self._patterns = {path: pattern.detach() for path, pattern in patterns.items()}

    def fit(self, data: Tensor | Iterable[Any] | None = None, batch_size: int = 32,
            max_batches: int | None = None, progress: bool = True,
            disable_no_training_warning: bool = False) -> _PatternBased:
        """Fit the patterns with ``pattern_type`` (iNNvestigate 1.x's ``fit``); returns the
        analyzer, so that ``create_analyzer(...).fit(loader).analyze(x)`` works.

        Parameters
        ----------
        data:
            A tensor of inputs (cut into batches of ``batch_size``) or an iterable of batches
            (a ``DataLoader``; a batch is a tensor or a tuple/list/dict whose first item is
            the input).
        batch_size:
            Batch size when ``data`` is a tensor.
        max_batches:
            Stop after this many batches (``None``: all).
        progress:
            Show a tqdm progress bar.
        disable_no_training_warning:
            Unused here (these analyzers do need training); accepted as by every analyzer.
        """
        from ..patterns import PatternComputer
        from .validation import check_positive_int

        if data is None:
            raise ValueError(f"{self.name}.fit needs data: a tensor of inputs or a DataLoader")
        if isinstance(data, Tensor):
            check_positive_int("batch_size", batch_size)
            data = data.split(batch_size)
        computer = PatternComputer(self.model, self.pattern_type)
        self.patterns = computer.fit(data, max_batches=max_batches, progress=progress)
        return self

    def fitted_state(self) -> dict[str, Any]:
        return {} if self._patterns is None else {"patterns": dict(self._patterns)}

    def load_fitted_state(self, state: Mapping[str, Any]) -> None:
        unknown = sorted(set(state) - {"patterns"})
        if unknown:
            raise ValueError(f"{self.name}: unknown fitted state {unknown}; expected 'patterns'")
        if "patterns" in state:
            self.patterns = state["patterns"]

    def backward_weight(self, pattern: Tensor, weight: Tensor) -> Tensor:
        """The tensor that replaces ``weight`` in the backward pass."""
        raise NotImplementedError

    def batch_norm_factor(self, scale: Tensor) -> Tensor:
        """What the backward signal is multiplied by across a BatchNorm with scale ``s``."""
        raise NotImplementedError

    def _kernel(self, call: OperationCall) -> Tensor:
        weight = kernel_arguments(call)["weight"].detach()
        pattern = self._patterns.get(call.module_path) if self._patterns else None
        if pattern is None:
            raise ValueError(f"{self.name}: {call.where()} is a kernel layer without a pattern "
                             f"(patterns has {sorted(self._patterns or {})}); fit the patterns "
                             f"with PatternComputer on this model and on data that reaches it")
        replacement = self.backward_weight(pattern.to(weight.device, weight.dtype), weight)
        source = kernel_arguments(call)["input"]
        # a copy, not with_gradient's view: the model may add into it in place (out += x)
        return with_gradient(source, call.run(),
                             lambda grad: input_gradient(call, replacement, grad)).clone()

    def _batch_norm(self, call: OperationCall) -> Tensor:
        source = call.args[0] if call.args else call.kwargs["input"]
        factor = self.batch_norm_factor(batch_norm_scale(call))
        return with_gradient(source, call.run(), lambda grad: grad * factor).clone()

    def _analyze(self, x: Tensor, neuron_selection: NeuronSelection) -> Tensor:
        if self._patterns is None:
            raise ValueError(f"{self.name} needs patterns: pass patterns=PatternComputer("
                             f"model).fit(dataloader) to create_analyzer, or call "
                             f"analyzer.fit(dataloader) first")
        handlers: dict[str, Callable[[OperationCall], Tensor]] = {
            KERNEL: self._kernel, BATCH_NORM: self._batch_norm}
        return self._backward(x, self.selector(neuron_selection), handlers, PASSTHROUGH)


_DOC_PARAMETERS = """
    Parameters
    ----------
    model:
        The model to explain (logits out).
    patterns:
        Module path → pattern, as returned by :meth:`lit_explain.PatternComputer.compute`
        (fit on this same module). ``None``: call :meth:`fit` before :meth:`analyze`.
    pattern_type:
        The pattern type :meth:`fit` uses (``"relu"`` by default, as iNNvestigate).
    neuron_selection_mode:
        ``"max_activation"``, ``"index"`` or ``"all"``.
    reverse_project_bottleneck_layers:
        Scale the signal at each layer's input, and each sample's result, so that its largest
        absolute value is 1. iNNvestigate 1.x projected its bottleneck tensors to [-1, 1] (on
        by default there) against overflow in deep networks; the direction is the same. Off
        here, so that PatternNet returns the signal in the input's units (on the paper's
        linear toy: exactly ``a_s · y``). The other ``reverse_*`` options (keyword only) are
        those of every analyzer: :class:`~lit_explain.analyzers.diagnostics.ReverseOptions`.
"""


@register("pattern.net")
class PatternNet(_PatternBased):
    __doc__ = """PatternNet: the gradient with each kernel's pattern in place of its weight.

    Kindermans et al. 2018, "Learning how to explain neural networks: PatternNet and
    PatternAttribution". Estimates the signal component of the input that the network
    extracts for the selected output; BatchNorm divides the signal by its scale.
    """ + _DOC_PARAMETERS

    def backward_weight(self, pattern: Tensor, weight: Tensor) -> Tensor:
        return pattern

    def batch_norm_factor(self, scale: Tensor) -> Tensor:
        nonzero = scale != 0
        return torch.where(nonzero, 1 / torch.where(nonzero, scale, 1), 0)


@register("pattern.attribution")
class PatternAttribution(_PatternBased):
    __doc__ = """PatternAttribution: the gradient with ``pattern ⊙ weight`` in place of each weight.

    Kindermans et al. 2018, "Learning how to explain neural networks: PatternNet and
    PatternAttribution". Attributes the selected output to the input's signal; BatchNorm
    passes it unchanged (its own pattern times its scale is 1).
    """ + _DOC_PARAMETERS

    def backward_weight(self, pattern: Tensor, weight: Tensor) -> Tensor:
        return pattern * weight

    def batch_norm_factor(self, scale: Tensor) -> Tensor:
        return (scale != 0).to(scale.dtype)
