"""PatternNet and PatternAttribution (Kindermans et al. 2018, "Learning how to explain neural
networks: PatternNet and PatternAttribution", ICLR).

Both are the gradient with every kernel layer's weight swapped in the backward pass:

* **PatternNet** (``pattern.net``) propagates back with the pattern ``a`` in place of the
  weight ``w``: the result estimates the *signal* in the input that produced the output.
* **PatternAttribution** (``pattern.attribution``) propagates back with ``w ⊙ a``: a
  root-point-corrected attribution (the paper's Deep-Taylor-like view).

As in iNNvestigate 1.x, the backward pass starts from the selected output's value, ReLUs
and max-pooling keep their gradient, and reshapes, concatenation and dropout pass the signal
through (concatenation hands each input its own slice). Kernel layers are ``Linear``,
``ConvNd`` and ``ConvTransposeNd`` (a transposed convolution's pattern has its weight's
shape). Beyond iNNvestigate 1.x, which refused them or projected the signal to [-1, 1] at
every layer against overflow, these keep the signal on the input's scale
(``docs/patterns.md`` gives the reasons):

* **Layer-level normalisation (PatternNet).** The paper's normalisation ``wᵀa = 1`` makes a
  single neuron's signal reproduce its output. Summed over the many redundant neurons of a
  deep layer, ``Σⱼ aⱼ sⱼ`` over-counts the signal they share (about 50× per layer on a
  ResNet-18, so 1e18-1e32 at the input). Each kernel layer's back-projection
  ``s_in = c · Aᵀ s_out`` is therefore scaled, per sample, by the least-squares ``c ≥ 0``
  with which the layer's own linear map reproduces the output signal where it is not zero:
  ``c = ⟨P W(Aᵀs), s⟩ / ‖P W(Aᵀs)‖²``, ``P = [s ≠ 0]``. For one neuron (the paper's
  setting) ``c = 1`` exactly. Other linear operations with one input (average pooling,
  interpolation, sums, means) use their gradient scaled the same way:
  an average pool then copies the signal to its window, as its pattern (all ones) does.
* **Residual adds** (``a + b``, ``torch.add``, ``out += x``, subtraction) split the signal
  in proportion to the summands' magnitudes, ``sᵢ = s · |zᵢ| / Σ|z|`` with ``zᵢ`` the
  signed summands (halves where both are 0), divided by ``zᵢ``'s coefficient (PatternNet:
  the pattern of a one-input neuron is ``1/w``). The shares lie in [0, 1] and sum to 1: the
  split conserves the signal (and PatternAttribution's relevance) and never amplifies it;
  where the summands agree in sign it is the z-rule. The plain gradient would send the whole
  signal down both branches, doubling it at every block.
* **BatchNorm** (eval) is an elementwise linear layer ``y = s·x + c`` with
  ``s = γ / √(var + ε)``. The pattern of a one-input neuron is exactly ``1/s``, whatever the
  data, so PatternNet divides the signal by ``s`` and PatternAttribution (``s · 1/s = 1``)
  passes it unchanged. This equals folding the BatchNorm into the kernel layer before it.
  So does every elementwise ``y = a ⊙ x + b`` with constants (an input normalisation
  ``(x − mean) / std`` in ``forward``, ``1 − x``, a BatchNorm written out), before or
  after a kernel layer.

PatternAttribution is conservative through kernel layers (``Σᵢ wᵢaᵢ = 1`` per neuron),
BatchNorm, adds, pooling and interpolation, so its map sums to about the selected output;
it needs no layer-level normalisation and gets none.

**Checks.** A signal that stops being finite raises ``FloatingPointError`` naming the first
layer (in the backward pass) where it happened. A signal that outgrows its layer by more
than ``max_scale`` (PatternNet: ``‖s_in‖ / ‖h_in‖`` against the layer's input activation;
PatternAttribution: ``Σ|R_in|`` against the relevance entering the top layer) warns with
``RuntimeWarning``, or raises with ``scale_check="raise"``, naming that layer.

"Per sample" means per row of the layer's own first axis, in the normalisation and in
PatternNet's check: where a model folds frames or windows into the batch
(``reshape(B * T, ...)`` before a convolution, Swin's window partition), each frame or
window is a row of its own, exactly as if the layer were called once per frame.
PatternAttribution's check compares such a layer's relevance with the top layer's over
the whole batch.

Other non-linearities (sigmoid, GELU, softmax, products) raise
:class:`~lit_explain.NotAnalyzableModelError`: the method defines no rule for them.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .base import Analyzer, NeuronSelection
from .errors import NotAnalyzableModelError
from .kinds import BATCH_NORM, ELEMENTWISE_AFFINE, KERNEL, LINEAR, MAX_POOL, RELU, STRUCTURE
from .operations import OperationCall, with_gradient
from .registry import register

PASSTHROUGH = frozenset({RELU, MAX_POOL, LINEAR, STRUCTURE})

SCALE_CHECKS = ("warn", "raise", "off")

_CONV_ARGS = ("input", "weight", "bias", "stride", "padding", "dilation", "groups")
_CONV_TRANSPOSE_ARGS = ("input", "weight", "bias", "stride", "padding", "output_padding",
                        "groups", "dilation")
_TRANSPOSED = (torch.conv_transpose1d, torch.conv_transpose2d, torch.conv_transpose3d)

Tensor_ = torch.Tensor
#: Sums of two tensors and the coefficient of each summand (``alpha`` scales the second).
_ADDS = {torch.add: (1, 1), Tensor_.add: (1, 1), Tensor_.add_: (1, 1),
         Tensor_.__add__: (1, 1), Tensor_.__iadd__: (1, 1), Tensor_.__radd__: (1, 1),
         torch.sub: (1, -1), Tensor_.sub: (1, -1), Tensor_.sub_: (1, -1),
         Tensor_.__sub__: (1, -1), Tensor_.__isub__: (1, -1), Tensor_.__rsub__: (-1, 1)}


def kernel_arguments(call: OperationCall) -> dict[str, Any]:
    """A kernel call's arguments by name (``F.linear``, ``torch.convNd`` or
    ``torch.conv_transposeNd``)."""
    if call.func is F.linear:
        names = _CONV_ARGS[:3]
    else:
        names = _CONV_TRANSPOSE_ARGS if call.func in _TRANSPOSED else _CONV_ARGS
    return {**dict(zip(names, call.args, strict=False)), **call.kwargs}


def _kernel_map(call: OperationCall, weight: Tensor) -> Callable[[Tensor], Tensor]:
    """The kernel call as a linear map (no bias) with ``weight`` in place of its weight."""
    arguments = kernel_arguments(call)
    options = {k: v for k, v in arguments.items() if k not in ("input", "weight", "bias")}
    if call.func is F.linear:
        return lambda inputs: F.linear(inputs, weight)
    return lambda inputs: call.func(inputs, weight, None, **options)


def input_gradient(call: OperationCall, weight: Tensor, grad: Tensor) -> Tensor:
    """The kernel call's backward to its input with ``weight`` in place of its weight."""
    source = kernel_arguments(call)["input"]
    if call.func is F.linear:
        return grad @ weight
    with torch.enable_grad():
        inputs = source.detach().requires_grad_(True)
        output = _kernel_map(call, weight)(inputs)
        return torch.autograd.grad(output, inputs, grad)[0]


def least_squares_scale(image: Tensor, target: Tensor) -> Tensor:
    """Per sample, the ``c ≥ 0`` minimising ``‖P(c·image) − target‖``, ``P = [target ≠ 0]``,
    shaped to broadcast over a tensor whose first axis is the batch (0 where ``P·image = 0``).
    Computed in float64: ``‖image‖²`` of a float32 signal from a large pattern overflows (a
    pattern × 1e20 made an all-zero map)."""
    image, target = image.double(), target.double()
    image = torch.where(target != 0, image, torch.zeros_like(image))
    numerator = (image * target).reshape(len(target), -1).sum(1)
    denominator = image.square().reshape(len(target), -1).sum(1)
    scale = torch.where(denominator > 0, numerator / torch.where(denominator > 0,
                                                                 denominator, 1), 0)
    return scale.clamp(min=0)


def _per_sample(scale: Tensor, like: Tensor) -> Tensor:
    return scale.reshape(len(scale), *([1] * (like.dim() - 1))).to(like.dtype)


def _ratio(value: Tensor, reference: Tensor) -> Tensor:
    """``value / reference`` elementwise; where ``reference`` is 0: ``inf``, or 0 if ``value``
    is 0 too."""
    nonzero = reference > 0
    return torch.where(nonzero, value / torch.where(nonzero, reference, 1),
                       torch.where(value > 0, torch.inf, 0.0))


class _Split(torch.autograd.Function):
    """``value`` forward; the incoming gradient reaches ``sources[i]`` times ``factors[i]``."""

    @staticmethod
    def forward(ctx, value: Tensor, factors: list, *sources: Tensor) -> Tensor:
        ctx.factors, ctx.shapes = factors, [s.shape for s in sources]
        return value.view_as(value)

    @staticmethod
    def backward(ctx, grad: Tensor):
        return (None, None, *[(grad * f).sum_to_size(shape)
                              for f, shape in zip(ctx.factors, ctx.shapes, strict=True)])


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
    rule_based = True

    fitted_parameters = frozenset({"patterns"})

    def __init__(self, model: nn.Module, patterns: Mapping[str, Tensor] | None = None,
                 pattern_type: str = "relu", neuron_selection_mode: str = "max_activation",
                 scale_check: str = "warn", max_scale: float = 1e3, **reverse: Any) -> None:
        from ..patterns.statistics import PATTERN_TYPES
        from .validation import check_choice

        super().__init__(model, neuron_selection_mode, **reverse)
        check_choice("pattern_type", pattern_type, PATTERN_TYPES)
        check_choice("scale_check", scale_check, SCALE_CHECKS)
        if isinstance(max_scale, bool) or not isinstance(max_scale, (int, float)) \
                or not max_scale > 0:
            raise ValueError(f"max_scale={max_scale!r} is not valid; expected a number > 0")
        self.pattern_type = pattern_type
        self.scale_check = scale_check
        self.max_scale = float(max_scale)
        #: After :meth:`analyze`: layer → largest scale ratio over the batch (see the module
        #: docstring), in the order of the backward pass.
        self.signal_scales: dict[str, float] = {}
        self._non_finite: str | None = None
        self._patterns: dict[str, Tensor] | None = None
        self._weights_set: dict[str, Any] = {}  # path → WeightSeen
        self._stale_warned = False
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
        from ..patterns.layers import WeightSeen, current_weight, kernel_layers, normalised_for

        modules = dict(self.model.named_modules())
        for path, pattern in patterns.items():
            if not isinstance(pattern, Tensor):
                raise TypeError(f"pattern {path!r} is {type(pattern).__name__}; patterns must "
                                f"be tensors shaped like their module's weight")
            weight = current_weight(modules.get(path))
            if not isinstance(weight, Tensor):
                raise ValueError(
                    f"patterns has an entry {path!r}, which is not a module with a weight in "
                    f"{type(self.model).__name__} (its kernel layers: "
                    f"{sorted(kernel_layers(self.model))}); the keys are module paths in the "
                    f"module the analyzer explains (of a torch.compile'd model: its original "
                    f"module, without '_orig_mod.'), as PatternComputer(model).compute() "
                    f"gives them")
            if tuple(pattern.shape) != tuple(weight.shape):
                raise ValueError(f"pattern {path!r} has shape {tuple(pattern.shape)}, but the "
                                 f"module's weight has shape {tuple(weight.shape)}")
        with torch.inference_mode(False):  # (a pattern made in inference mode, as under
            self._patterns = {  # trainer.validate(), cannot be saved for the backward pass)
                path: pattern.clone() if pattern.is_inference() else pattern.detach()
                for path, pattern in patterns.items()}
        # the weights the patterns were computed for (where the computer noted them), else
        # those they are set for: an optimizer step or load_state_dict changes their version
        self._weights_set = {
            path: normalised_for(pattern) or WeightSeen.of(modules[path],
                                                           current_weight(modules[path]))
            for path, pattern in patterns.items()}
        self._stale_warned = False

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

    def normalise(self, forward: Callable[[Tensor], Tensor], signal_out: Tensor,
                  signal_in: Tensor) -> Tensor:
        """The layer-level normalisation of a linear map's backward signal (identity here)."""
        return signal_in

    def summand_factor(self, coefficient: float) -> float:
        """What a summand's share of the signal is multiplied by (its coefficient ``w``)."""
        raise NotImplementedError

    def copies_factor(self, copies: int) -> float:
        """What the signal of each of ``copies`` an elementwise map broadcasts one input
        element to is multiplied by, before they are summed back onto it."""
        raise NotImplementedError

    def scale_ratio(self, signal_in: Tensor, activation: Tensor) -> Tensor:
        """Per row of the layer's first axis, how far the signal at its input (``signal_in``)
        outgrew its reference."""
        raise NotImplementedError

    # Handlers -----------------------------------------------------------------------------

    def _check(self, call: OperationCall, signal_in: Tensor, activation: Tensor) -> None:
        where = call.where()
        if not bool(torch.isfinite(signal_in).all()):
            if self._non_finite is None:
                self._non_finite = where
            return
        ratio = self.scale_ratio(signal_in, activation.detach())
        if ratio.numel():
            key = call.module_path or where
            self.signal_scales[key] = max(self.signal_scales.get(key, 0.0),
                                          float(ratio.max()))

    def _kernel(self, call: OperationCall) -> Tensor:
        weight = kernel_arguments(call)["weight"].detach()  # the weight the layer really uses
        pattern = self._patterns.get(call.module_path)
        if pattern is None:
            raise self._missing_pattern(call)
        self._warn_if_stale(call, weight)
        replacement = self.backward_weight(pattern.to(weight.device, weight.dtype), weight)
        source = kernel_arguments(call)["input"]
        forward = _kernel_map(call, weight)

        def backward(grad: Tensor) -> Tensor:
            if self._top is None:  # the first kernel layer of the backward pass: the top
                self._top = grad.detach().abs().reshape(len(grad), -1).sum(1)
            signal = self.normalise(forward, grad, input_gradient(call, replacement, grad))
            self._check(call, signal, source)
            return signal

        # a copy, not with_gradient's view: the model may add into it in place (out += x)
        return with_gradient(source, call.run(), backward).clone()

    def _warn_if_stale(self, call: OperationCall, weight: Tensor) -> None:
        """Warn (once) where the weight a layer's call receives is not the one its pattern
        was computed for (or, for patterns from elsewhere, set with): a pattern is normalised
        with those weights, and PatternAttribution scales with any change (weights × 3: maps
        × 3). A weight moved or copied with its values (``model.double()``, a deep copy) is
        the same."""
        seen = self._weights_set.get(call.module_path)
        if self._stale_warned or seen is None or seen.holds_for(call.module, weight):
            return
        self._stale_warned = True
        warnings.warn(
            f"{self.name}: the weight of '{call.module_path}' changed since its pattern was "
            f"computed (an optimizer step, load_state_dict): the patterns belong to the old "
            f"weights, and the map is not the method's for the model as it is. Fit them again "
            f"(analyzer.fit(data), or set analyzer.patterns from a PatternComputer fit now)",
            UserWarning, stacklevel=2)

    def _missing_pattern(self, call: OperationCall) -> NotAnalyzableModelError:
        from ..patterns import KERNEL_LAYERS

        if isinstance(call.module, KERNEL_LAYERS):
            return NotAnalyzableModelError(
                f"{self.name}: {call.where()} is a kernel layer without a pattern (patterns "
                f"has {sorted(self._patterns)}); fit the patterns with PatternComputer on this "
                f"model and on data that reaches this layer")
        return NotAnalyzableModelError(
            f"{self.name}: {call.where()} is a kernel call outside an nn.Linear, nn.ConvNd or "
            f"nn.ConvTransposeNd module, the layers PatternComputer fits patterns for; write "
            f"it as a subclass of one whose forward makes the call (an nn.Linear subclass "
            f"whose forward is F.linear(x, F.softplus(self.weight)) gets the pattern of the "
            f"weight it computes)")

    def _batch_norm(self, call: OperationCall) -> Tensor:
        source = call.args[0] if call.args else call.kwargs["input"]
        factor = self.batch_norm_factor(batch_norm_scale(call))
        return with_gradient(source, call.run(), lambda grad: grad * factor).clone()

    def _elementwise_affine(self, call: OperationCall, index: int, source: Tensor,
                            value: Tensor) -> Tensor:
        """``y = a ⊙ x + b`` with constants ``a`` and ``b`` (input normalisation, a scaling,
        a BatchNorm written out): one-input neurons, as a BatchNorm's, whose pattern is
        ``1/a`` (see :meth:`batch_norm_factor`; the copies it broadcasts one element to
        share it, :meth:`copies_factor`). The same map as the net with ``a`` and ``b`` folded
        into the kernel layer before it (or, for PatternAttribution, after it; PatternNet's
        layer normalisation then weighs that layer's channels by ``a``, as for a BatchNorm:
        the same direction, another size per sample)."""
        kwargs = {k: v for k, v in call.kwargs.items() if k != "inplace"}

        def at(inputs: Tensor) -> Tensor:
            args = list(call.args)
            args[index] = inputs
            return call.func(*args, **kwargs)

        with torch.no_grad():
            x = source.detach()
            factor = self.batch_norm_factor(at(torch.ones_like(x)) - at(torch.zeros_like(x)))
            factor = factor * self.copies_factor(max(1, value.numel() // x.numel()))
        shape = source.shape
        return with_gradient(source, value,
                             lambda grad: (grad * factor).sum_to_size(shape)).clone()

    def _linear(self, call: OperationCall) -> Tensor:
        """Adds of two tensors split the signal; other linear operations are normalised."""
        operands = [(i, a) for i, a in enumerate(call.args) if isinstance(a, Tensor)
                    and a.requires_grad and a.is_floating_point()]
        value = call.run()
        if call.func in _ADDS and len(operands) == 2:
            alpha = call.kwargs.get("alpha", 1)
            coefficients = [c * (alpha if i == 1 else 1)
                            for i, c in enumerate(_ADDS[call.func])]
            summands = [a.detach() * c for (_, a), c in zip(operands, coefficients, strict=True)]
            total = summands[0].abs() + summands[1].abs()
            nonzero = total > 0
            safe = torch.where(nonzero, total, torch.ones_like(total))
            factors = [torch.where(nonzero, z.abs() / safe, torch.full_like(total, 0.5))
                       * self.summand_factor(c)
                       for z, c in zip(summands, coefficients, strict=True)]
            return _Split.apply(value.detach(), factors, *(a for _, a in operands)).clone()
        if len(operands) == 1 and call.func in ELEMENTWISE_AFFINE:
            return self._elementwise_affine(call, *operands[0], value)
        if len(operands) != 1 or type(self).normalise is _PatternBased.normalise:
            return value  # the plain gradient
        index, source = operands[0]

        def forward(inputs: Tensor) -> Tensor:
            args = list(call.args)
            args[index] = inputs
            kwargs = {k: v for k, v in call.kwargs.items() if k != "inplace"}
            return call.func(*args, **kwargs)

        def backward(grad: Tensor) -> Tensor:
            with torch.enable_grad():
                inputs = source.detach().requires_grad_(True)
                (plain,) = torch.autograd.grad(forward(inputs), inputs, grad)
            return self.normalise(forward, grad, plain)

        return with_gradient(source, value, backward).clone()

    def _analyze(self, x: Tensor, neuron_selection: NeuronSelection) -> Tensor:
        if self._patterns is None:
            raise ValueError(f"{self.name} needs patterns: pass patterns=PatternComputer("
                             f"model).fit(dataloader) to create_analyzer, or call "
                             f"analyzer.fit(dataloader) first")
        self.signal_scales, self._non_finite, self._top = {}, None, None
        handlers: dict[str, Callable[[OperationCall], Tensor]] = {
            KERNEL: self._kernel, BATCH_NORM: self._batch_norm, LINEAR: self._linear}
        result = self._backward(x, self.selector(neuron_selection), handlers,
                                PASSTHROUGH - {LINEAR})
        self._report(result, x)
        return result

    def _report(self, result: Tensor, x: Tensor) -> None:
        if self._non_finite is not None or not bool(torch.isfinite(result).all()):
            place = self._non_finite or "the model input"
            raise FloatingPointError(
                f"{self.name}: the backward signal is not finite at the input of {place}; "
                f"check the patterns (fit on more data?) and the model's weights there")
        if self.scale_check == "off":
            return
        over = [(key, ratio) for key, ratio in self.signal_scales.items()
                if ratio > self.max_scale]
        if over:
            key, ratio = over[0]
            message = (f"{self.name}: the backward signal grew to {ratio:.3g}× its reference "
                       f"({self.scale_reference}) at the input of {key!r}, above max_scale="
                       f"{self.max_scale:g}; the map's values are not on the input's scale. "
                       f"{len(over)} layer(s) over the limit; see analyzer.signal_scales")
            if self.scale_check == "raise":
                raise FloatingPointError(message)
            warnings.warn(message, RuntimeWarning, stacklevel=3)


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
    scale_check:
        What a signal that outgrows its layer by more than ``max_scale`` does: ``"warn"``
        (default: a ``RuntimeWarning`` naming the layer; the map is returned), ``"raise"``
        (``FloatingPointError``) or ``"off"``. A non-finite signal always raises.
    max_scale:
        The largest growth that passes the check (default 1e3); the measured ratio of every
        kernel layer is in :attr:`signal_scales` after each :meth:`analyze`.
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
    extracts for the selected output. BatchNorm divides the signal by its scale; adds split
    it by the summands' magnitudes; every other linear map (kernel layers included) is
    normalised per sample so that its forward reproduces the signal at its output
    (see :mod:`lit_explain.analyzers.pattern`), which keeps the signal on the input's scale.
    """ + _DOC_PARAMETERS

    scale_reference = "the norm of the layer's input activation"

    def backward_weight(self, pattern: Tensor, weight: Tensor) -> Tensor:
        return pattern

    def batch_norm_factor(self, scale: Tensor) -> Tensor:
        nonzero = scale != 0
        return torch.where(nonzero, 1 / torch.where(nonzero, scale, 1), 0)

    def normalise(self, forward: Callable[[Tensor], Tensor], signal_out: Tensor,
                  signal_in: Tensor) -> Tensor:
        scale = least_squares_scale(forward(signal_in), signal_out)
        return signal_in * _per_sample(scale, signal_in)

    def summand_factor(self, coefficient: float) -> float:
        return 1 / coefficient

    def copies_factor(self, copies: int) -> float:
        return 1 / copies  # (each copy estimates the one signal: their mean)

    def scale_ratio(self, signal_in: Tensor, activation: Tensor) -> Tensor:
        signal = signal_in.reshape(len(signal_in), -1).norm(dim=1)
        reference = activation.reshape(len(activation), -1).norm(dim=1).to(signal.dtype)
        return _ratio(signal, reference)


@register("pattern.attribution")
class PatternAttribution(_PatternBased):
    __doc__ = """PatternAttribution: the gradient with ``pattern ⊙ weight`` in place of each weight.

    Kindermans et al. 2018, "Learning how to explain neural networks: PatternNet and
    PatternAttribution". Attributes the selected output to the input's signal; BatchNorm
    passes it unchanged (its own pattern times its scale is 1), adds split it by the
    summands' magnitudes, so that it is conserved through kernel layers and adds.
    """ + _DOC_PARAMETERS

    scale_reference = "the relevance entering the top layer, Σ|R|"

    def backward_weight(self, pattern: Tensor, weight: Tensor) -> Tensor:
        return pattern * weight

    def batch_norm_factor(self, scale: Tensor) -> Tensor:
        return (scale != 0).to(scale.dtype)

    def summand_factor(self, coefficient: float) -> float:
        return 1.0

    def copies_factor(self, copies: int) -> float:
        return 1.0  # (the copies' relevance sums back)

    def scale_ratio(self, signal_in: Tensor, activation: Tensor) -> Tensor:
        relevance = signal_in.abs().reshape(len(signal_in), -1).sum(1)
        top = self._top.to(relevance.dtype)
        if len(relevance) != len(top):  # rows are frames or windows: the batch's totals
            relevance, top = relevance.sum(0, keepdim=True), top.sum(0, keepdim=True)
        return _ratio(relevance, top)
