"""The layers LRP rules are written for, in one affine form: ``y = layer(x, W, b)``.

A rule never asks which layer it is in. It evaluates the layer with modified inputs and
parameters (``layer.run(x', W', b')``) and reads ``layer.input``, ``layer.weight`` and
``layer.bias``. Three adaptors give every supported call that form:

- :class:`KernelLayer`: ``F.linear``, ``conv1d/2d/3d`` and ``conv_transpose1d/2d/3d``
  with whatever stride, padding, dilation, groups and output padding the call used; its
  subclass :class:`MatrixLayer`, a matrix product of the input with a model weight
  (``x @ W``, ``W @ x``, ``torch.mm``/``bmm``/``einsum``), a dense layer written out.
- :class:`BatchNormLayer`: ``F.batch_norm`` is the elementwise affine map
  ``y = a ⊙ x + c`` with ``a = γ / sqrt(var + eps)`` and ``c = β − a·mean``. Rules see
  ``a`` as the weight and ``c`` as the bias.
- :class:`FusedLayer`: a kernel layer followed directly by a BatchNorm, merged into one
  kernel layer with weight ``a·W`` (per output channel) and bias ``a·b + c``, the
  canonization of Hui & Binder 2019 and Motzkus et al. 2022 (Zennit's ``MergeBatchNorm``).

Nothing is written to the model: ``a``, ``c`` and the fused parameters are computed from
the live parameters at every call.

Every layer knows its *linear term*: the layer's ordinary output computed from
``term_input`` (the input as the relevance flow wants it, see :class:`~.rules.Flow`), with
its ordinary backward. The handler computes it once; a rule that needs ``W·x + b`` (z, ε,
αβ) reuses it instead of running the layer again.
"""

from __future__ import annotations

import functools
import weakref
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor

from ..kinds import ADDMM
from ..operations import OperationCall

if TYPE_CHECKING:
    from .rules import Flow


class AffineLayer:
    """One affine call ``y = layer(x, W, b)``, linear in ``x`` for fixed ``W``.

    Attributes
    ----------
    input:
        The call's input ``x`` (differentiable: relevance flows back to it).
    term_input:
        ``x`` as the relevance flow feeds it to a term ``x ⊙ Jᵀ(...)``.
    weight, bias:
        The parameters as the call used them (``bias`` may be ``None``).
    channel_shape:
        The shape that makes a per-output-channel vector broadcast against the output.
    call:
        The operation call this layer wraps.
    """

    input: Tensor
    term_input: Tensor
    weight: Tensor
    bias: Tensor | None
    channel_shape: tuple[int, ...]
    call: OperationCall

    def run(self, x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
        """The layer evaluated on ``x`` with ``weight`` and ``bias`` in place of its own."""
        raise NotImplementedError

    def support(self, value: float, at_padding: str = "zero") -> Tensor:
        """``value`` at every element of the input that holds the model's values; at a
        constant padding written before the call (:attr:`OperationCall.input_support`), 0
        (``at_padding="zero"``) or the padding's own value (``"input"``)."""
        filled = torch.full_like(self.input, value)
        support = self.call.input_support
        if support is None:
            return filled
        filled = filled.mul_(support)
        return filled if at_padding == "zero" else filled.add_(
            self.input.detach() * (1 - support))

    def __call__(self, x: Tensor) -> Tensor:
        """The layer with its own parameters on input ``x``."""
        return self.run(x, self.weight, self.bias)

    def biased(self, x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        """The layer on ``x`` with ``weight``, plus ``bias`` (a per-output-channel vector or
        ``None``): kernel layers add it in their own call, at no pass of its own."""
        output = self.run(x, weight)
        return output if bias is None else output + self.bias_term(bias)

    def linear_term(self) -> Tensor:
        """``layer(term_input)`` with its ordinary backward (computed once)."""
        raise NotImplementedError

    def output_value(self) -> Tensor:
        """The layer's output value, detached."""
        return self.linear_term().detach()

    @functools.cached_property
    def product_term(self) -> Tensor:
        """``W·term_input`` without the bias, with its ordinary backward: what rules that
        leave the bias out divide by, computed as such (the output minus the bias cancels
        where the bias dominates: in float32 ``lrp.z_IB`` was 87 % off at inputs of 1e-6)."""
        return self.run(self.term_input, self.weight)

    def part(self, x: Tensor, positive: bool) -> Tensor:
        """The layer on ``x`` with ``W⁺`` (``positive``) or ``W⁻`` and no bias (computed once
        per input: a rule's output value and its backward both use it)."""
        key = (id(x), positive)
        if key not in self._parts:  # kept with x: an id is not reused while cached
            weight = self.weight.clamp(min=0) if positive else self.weight.clamp(max=0)
            self._parts[key] = (x, self.run(x, weight))
        return self._parts[key][1]

    def parts(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """``part(x, True)`` and ``part(x, False)``; where the layer has its output channels
        on one axis (:meth:`output_stacking_axes`), made by one call with ``W⁺`` and ``W⁻``
        stacked along them (the input is read once: a quarter to a fifth less time for the
        pair at 16 channels of 64 × 64 on a CPU), otherwise by two."""
        axes = self.output_stacking_axes()
        if axes is not None and not self.has_parts(x):
            output_axis, weight_axis = axes
            both = self.run(x, torch.cat(self.weight_parts, weight_axis))
            for positive, half in zip((True, False), both.chunk(2, output_axis), strict=True):
                self._parts[(id(x), positive)] = (x, half)
        return self.part(x, True), self.part(x, False)

    def output_stacking_axes(self) -> tuple[int, int] | None:
        """The axes of the output and of the weight that hold the output channels, where a
        call with weights stacked along the second gives the two calls' outputs stacked
        along the first (``None``: not so for this layer)."""
        return None

    def scaled_parts(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor | None]:
        """``(q⁺, q⁻, s)`` with ``part(x, True) = s ⊙ q⁺`` and ``part(x, False) = s ⊙ q⁻``, ``s``
        a positive per-output-channel scale shaped like :meth:`bias_term` (``None``: 1). A
        rule that divides by the parts can divide by the ``q`` (its bias divided by ``s``)
        and skip the scaling, forward and backward."""
        return *self.parts(x), None

    def has_parts(self, x: Tensor) -> bool:
        """Whether both parts of ``x`` are made already."""
        return (id(x), True) in self._parts and (id(x), False) in self._parts

    @functools.cached_property
    def _parts(self) -> dict[tuple[int, bool], tuple[Tensor, Tensor]]:
        return {}

    @functools.cached_property
    def memo(self) -> dict[str, object]:
        """What a rule computes once per layer for both the output value the model receives
        and the rule itself (see :meth:`~.rules.Rule.output_value`)."""
        return {}

    def input_parts(self, flow: Flow) -> tuple[Tensor, Tensor]:
        """``x⁺`` and ``x⁻`` as the flow feeds them to terms (made once per layer)."""
        if getattr(self, "_input_parts", None) is None:
            self._input_parts = (flow.part(self.input, True), flow.part(self.input, False))
        return self._input_parts

    def mixed_part(self, positive_input: Tensor, negative_input: Tensor, positive: bool,
                   bias: Tensor | None = None) -> Tensor:
        """``W⁺ x⁺ + W⁻ x⁻`` (``positive``) or ``W⁻ x⁺ + W⁺ x⁻``, plus ``bias`` (see
        :meth:`biased`): the αβ rules' ``z⁺`` and ``z⁻`` of an input of both signs. Where the
        layer has its input channels on one axis (:meth:`stacking_axes`), one call on the two
        inputs stacked along it, with the two weights stacked likewise: for a first layer of
        few input channels it costs about what one call costs, not two. Otherwise two calls."""
        axes = self.stacking_axes()
        if axes is None:
            total = self.part(positive_input, positive) + self.part(negative_input, not positive)
            return total if bias is None else total + self.bias_term(bias)
        input_axis, weight_axis = axes
        weights = self.weight_parts if positive else self.weight_parts[::-1]
        return self.biased(torch.cat([positive_input, negative_input], input_axis),
                           torch.cat(weights, weight_axis), bias)

    @functools.cached_property
    def weight_parts(self) -> tuple[Tensor, Tensor]:
        """``W⁺`` and ``W⁻`` (made once)."""
        return self.weight.clamp(min=0), self.weight.clamp(max=0)

    def stacking_axes(self) -> tuple[int, int] | None:
        """The axes of the input and of the weight that hold the input channels, where a call
        on inputs stacked along the first with weights stacked along the second sums the
        two calls (``None``: not so for this layer)."""
        return None

    def input_non_negative(self) -> bool:
        """Whether every entry of the input is ≥ 0 (then x⁻ = 0 and its terms are skipped);
        one reduction, made once per layer."""
        if getattr(self, "_non_negative", None) is None:
            x = self.input
            self._non_negative = x.numel() == 0 or bool(x.detach().min() >= 0)
        return self._non_negative

    def per_channel(self, vector: Tensor) -> Tensor:
        """A per-output-channel vector (bias-like) shaped to broadcast against the output (a
        0-d one, the bias of a dot product ``F.linear(x, w)`` with a 1-D ``w``, as it is)."""
        return vector if vector.dim() == 0 else vector.reshape(self.channel_shape)

    def bias_term(self, bias: Tensor | None = None) -> Tensor | float:
        """``bias`` (default: the layer's own) shaped to broadcast against the output."""
        bias = self.bias if bias is None else bias
        return 0.0 if bias is None else self.per_channel(bias)


def _argument(call: OperationCall, index: int, name: str) -> object:
    if len(call.args) > index:
        return call.args[index]
    return call.kwargs.get(name)


def _frozen(value: object) -> object:
    """A layer's weight or bias, detached: a constant of the input (one computed from the
    input makes the call a product of activations, see :mod:`~..kinds`), which may still
    require grad, as a parameter of a module the model holds unregistered (in a list) does
    (an out= operation of a rule refused it)."""
    return value.detach() if isinstance(value, Tensor) and value.requires_grad else value


class KernelLayer(AffineLayer):
    """A linear, convolution or transposed convolution call in affine form.

    Parameters
    ----------
    call:
        The kernel call.
    term_input:
        The input as the relevance flow feeds it (``Flow.input(call's input)``).
    """

    _NAMES = ("input", "weight", "bias")

    def __init__(self, call: OperationCall, term_input: Tensor) -> None:
        self.call = call
        self.input, weight, bias = (_argument(call, i, name) for i, name in enumerate(self._NAMES))
        self.weight, self.bias = _frozen(weight), _frozen(bias)
        self.term_input = term_input
        self._rest = call.args[3:]
        self._options = {k: v for k, v in call.kwargs.items() if k not in self._NAMES}
        self.is_linear = call.func is F.linear
        self.is_transposed = call.func in _TRANSPOSED
        self.channel_shape = (-1,) if self.is_linear else (-1, *[1] * (self.weight.dim() - 2))
        self._linear_term: weakref.ref | None = None  # weakly: the model's output, often

    def run(self, x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
        return self.call.func(x, weight, bias, *self._rest, **self._options)

    def linear_term(self) -> Tensor:
        term = None if self._linear_term is None else self._linear_term()
        if term is None:
            term = self(self.term_input)
            self._linear_term = weakref.ref(term)
        return term

    def biased(self, x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        return self.run(x, weight, bias)

    def stacking_axes(self) -> tuple[int, int] | None:
        if self.is_linear:
            return (-1, 1) if self.weight.dim() == 2 else None  # (a 1-D weight: a dot product)
        if (_argument(self.call, 6, "groups") or 1) != 1:  # channels interleaved by group
            return None
        channels = 1 - self.weight.dim()  # counted from the end: the input may be unbatched
        return (channels, 0) if self.is_transposed else (channels, 1)

    def output_stacking_axes(self) -> tuple[int, int] | None:
        if self.is_linear:
            return (-1, 0) if self.weight.dim() == 2 else None
        if (_argument(self.call, 6, "groups") or 1) != 1:  # groups split the output channels
            return None
        channels = 1 - self.weight.dim()  # counted from the end: the input may be unbatched
        return (channels, 1) if self.is_transposed else (channels, 0)

    def channels_scalable(self) -> bool:
        """``True``: :meth:`scaled_weight` scales every output channel."""
        return True

    def scaled_weight(self, scale: Tensor) -> Tensor:
        """The weight with output channel ``k`` multiplied by ``scale[k]``. A transposed
        convolution's weight is ``(in, out / groups, ...)``: output channel ``g·(out /
        groups) + j`` is ``weight[g-th group of inputs, j]``."""
        weight = self.weight
        if not self.is_transposed:
            return weight * scale.reshape(-1, *[1] * (weight.dim() - 1))
        groups = _argument(self.call, 6, "groups") or 1
        grouped = weight.reshape(groups, len(weight) // groups, *weight.shape[1:])
        return (grouped * scale.reshape(groups, 1, -1, *[1] * (weight.dim() - 2))
                ).reshape(weight.shape)


_TRANSPOSED = {torch.conv_transpose1d, torch.conv_transpose2d, torch.conv_transpose3d}


class MatrixLayer(KernelLayer):
    """A matrix product of the input with a model weight, in affine form: no bias (a bias
    added after it is an add of its own), except ``addmm(bias, x, W)``'s.

    Parameters
    ----------
    call:
        The product (``torch.matmul``, ``@``, ``torch.mm``/``bmm``, two-operand
        ``torch.einsum``).
    term_input:
        The input as the relevance flow feeds it.
    weight_index:
        Where the call's arguments hold the weight (the other tensor is the input).
    """

    def __init__(self, call: OperationCall, term_input: Tensor, weight_index: int) -> None:
        self.call = call
        self._weight_index = weight_index
        self._with_bias = call.func in ADDMM  # addmm(bias, x, W)
        self._input_index = next(i for i, a in enumerate(call.args) if isinstance(a, Tensor)
                                 and i != weight_index and not (self._with_bias and i == 0))
        self.input = call.args[self._input_index]
        self.weight = _frozen(call.args[weight_index])
        self.bias = _frozen(call.args[0]) if self._with_bias else None
        self.term_input = term_input
        self.is_linear, self.is_transposed = False, False
        self.channel_shape = (-1,)
        self._linear_term = None

    def run(self, x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
        if self._with_bias:  # the product alone; the bias is added where a rule asks for it
            output = torch.mm(*((x, weight) if self._input_index == 1 else (weight, x)))
        else:
            args = list(self.call.args)
            args[self._input_index], args[self._weight_index] = x, weight
            output = self.call.func(*args, **self.call.kwargs)
        return output if bias is None else output + bias

    biased = AffineLayer.biased  # (its run adds a bias shaped for addmm only)

    def stacking_axes(self) -> None:
        return None  # (which axes depends on the product)

    def output_stacking_axes(self) -> None:
        return None

    def channels_scalable(self) -> bool:
        """``False``: which weight axis is the output channel depends on the product, so a
        BatchNorm after it is not merged (it keeps a rule of its own)."""
        return False


class BatchNormLayer(AffineLayer):
    """``F.batch_norm`` as ``y = a ⊙ x + c``, per channel (axis 1).

    In eval mode the running statistics are used. Where the call uses batch statistics
    (``track_running_stats=False``) they are computed from the input and held constant,
    like the running ones: relevance does not flow through the statistics. ``a`` and ``c``
    are computed where a rule first reads them: the z and ε rules never do.
    """

    def __init__(self, call: OperationCall, term_input: Tensor) -> None:
        self.call = call
        self.input = _argument(call, 0, "input")
        self.term_input = term_input
        self.channel_shape = (-1, *[1] * max(self.input.dim() - 2, 0))
        self.batch_statistics = bool(_argument(call, 5, "training")) or any(
            _argument(call, i, name) is None for i, name in ((1, "running_mean"),
                                                              (2, "running_var")))
        self._linear_term: Tensor | None = None

    @functools.cached_property
    def _affine(self) -> tuple[Tensor, Tensor]:
        x = self.input
        mean, var, gamma, beta = (_argument(self.call, i, name) for i, name in (
            (1, "running_mean"), (2, "running_var"), (3, "weight"), (4, "bias")))
        eps = _argument(self.call, 7, "eps")
        eps = 1e-5 if eps is None else eps
        if self.batch_statistics:
            dims = [d for d in range(x.dim()) if d != 1]
            mean = x.detach().mean(dim=dims)
            var = x.detach().var(dim=dims, unbiased=False)
        scale = torch.rsqrt(var.detach().to(x.dtype) + eps)
        if gamma is not None:
            scale = scale * gamma.detach()
        shift = -mean.detach().to(x.dtype) * scale
        if beta is not None:
            shift = shift + beta.detach()
        return scale, shift

    @property
    def weight(self) -> Tensor:  # a
        return self._affine[0]

    @property
    def bias(self) -> Tensor:  # c
        return self._affine[1]

    def run(self, x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
        out = x * self.per_channel(weight)
        return out if bias is None else out + self.per_channel(bias)

    def linear_term(self) -> Tensor:
        if self._linear_term is None:
            self._linear_term = self.on(self.term_input)
        return self._linear_term

    def on(self, x: Tensor) -> Tensor:
        """The BatchNorm on ``x`` with its ordinary backward: the model's own call where it
        uses running statistics (one fused kernel), the affine form where it uses the
        batch's (held constant)."""
        if self.batch_statistics:
            return self(x)
        return self.call.replace_input(self.input, x).run()


class FusedLayer(AffineLayer):
    """A kernel layer and the BatchNorm that consumes its output, as one kernel layer.

    ``y = a ⊙ (W x + b) + c = (a·W) x + (a·b + c)``. Its linear term is the BatchNorm
    applied to the kernel's linear term (no convolution is run again); rules with
    modified weights run the kernel with the fused weight.
    """

    def __init__(self, kernel: KernelLayer, norm: BatchNormLayer) -> None:
        self.kernel, self.norm = kernel, norm
        self.call = kernel.call
        self.input, self.term_input = kernel.input, kernel.term_input
        self.channel_shape = kernel.channel_shape
        self._linear_term: Tensor | None = None

    @classmethod
    def merge(cls, kernel: KernelLayer, norm: BatchNormLayer) -> FusedLayer | None:
        """The fused layer, or ``None`` where the BatchNorm's channels are not the kernel's
        output channels (a linear layer on more than two dimensions, an unbatched
        convolution) or the kernel's weight has no output channel axis (a matrix product)."""
        if kernel.input.dim() != (2 if kernel.is_linear else kernel.weight.dim()):
            return None  # (unbatched, a BatchNorm's channels are the kernel's second axis)
        return cls(kernel, norm) if kernel.channels_scalable() else None

    @functools.cached_property
    def weight(self) -> Tensor:  # a·W, made where a rule first reads it
        return self.kernel.scaled_weight(self.norm.weight.to(self.kernel.weight.dtype))

    @functools.cached_property
    def bias(self) -> Tensor:  # a·b + c
        norm, kernel = self.norm, self.kernel
        return norm.bias if kernel.bias is None else norm.bias + norm.weight * kernel.bias

    def run(self, x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
        return self.kernel.run(x, weight, bias)

    def part(self, x: Tensor, positive: bool) -> Tensor:
        """``(aW)⁺ x`` (or ``(aW)⁻ x``): where the kernel layer has made its own parts of
        ``x`` (the αβ rules' output value did, before the BatchNorm came), per output channel
        their combination ``a·W⁺ x`` where ``a > 0`` and ``a·W⁻ x`` where ``a < 0``, no new
        call; otherwise one call with the fused weight's part."""
        if not self.kernel.has_parts(x):
            return super().part(x, positive)
        scale = self.kernel.per_channel(self.norm.weight)
        terms = [factor * self.kernel.part(x, sign)
                 for sign, factor in ((positive, scale.clamp(min=0)),
                                      (not positive, scale.clamp(max=0)))
                 if bool((factor != 0).any())]
        if not terms:  # every a is 0: the fused layer is constant
            return self.kernel.part(x, positive) * 0
        return terms[0] if len(terms) == 1 else terms[0] + terms[1]

    def scaled_parts(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor | None]:
        """Where the kernel layer has made its parts of ``x`` and every BatchNorm scale ``a``
        is positive, ``(W⁺x, W⁻x, a)``: the fused parts are ``a·W⁺x`` and ``a·W⁻x``."""
        scale = self.norm.weight
        if not self.kernel.has_parts(x) or not bool((scale > 0).all()):
            return super().scaled_parts(x)
        return (self.kernel.part(x, True), self.kernel.part(x, False),
                self.kernel.per_channel(scale))

    def input_parts(self, flow: Flow) -> tuple[Tensor, Tensor]:
        return self.kernel.input_parts(flow)

    def input_non_negative(self) -> bool:
        return self.kernel.input_non_negative()  # (the kernel's output value asked it)

    def stacking_axes(self) -> tuple[int, int] | None:
        return self.kernel.stacking_axes()

    def biased(self, x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        return self.kernel.biased(x, weight, bias)

    def linear_term(self) -> Tensor:
        if self._linear_term is None:
            self._linear_term = self.norm.on(self.kernel.linear_term())
        return self._linear_term
