"""The layers LRP rules are written for, in one affine form: ``y = layer(x, W, b)``.

A rule never asks which layer it is in. It evaluates the layer with modified inputs and
parameters (``layer.run(x', W', b')``) and reads ``layer.input``, ``layer.weight`` and
``layer.bias``. Two adaptors give every supported call that form:

- :class:`KernelLayer`: ``F.linear``, ``conv1d/2d/3d`` and ``conv_transpose1d/2d/3d``
  with whatever stride, padding, dilation, groups and output padding the call used.
- :class:`BatchNormLayer`: ``F.batch_norm`` in eval mode is the elementwise affine map
  ``y = a ⊙ x + c`` with ``a = γ / sqrt(var + eps)`` and ``c = β − a·mean``. Rules see
  ``a`` as the weight and ``c`` as the bias. Nothing is merged into a neighbouring layer
  and no parameter is written: ``a`` and ``c`` are computed afresh at every call.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ..operations import OperationCall


class AffineLayer:
    """One affine call ``y = layer(x, W, b)``, linear in ``x`` for fixed ``W``.

    Attributes
    ----------
    input:
        The call's input ``x`` (differentiable: relevance flows back to it).
    weight, bias:
        The parameters as the call used them (``bias`` may be ``None``).
    channel_shape:
        The shape that makes a per-output-channel vector broadcast against the output.
    call:
        The operation call this layer wraps.
    """

    input: Tensor
    weight: Tensor
    bias: Tensor | None
    channel_shape: tuple[int, ...]
    call: OperationCall

    def run(self, x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
        """The layer evaluated on ``x`` with ``weight`` and ``bias`` in place of its own."""
        raise NotImplementedError

    def __call__(self, x: Tensor) -> Tensor:
        """The layer with its own parameters on input ``x``."""
        return self.run(x, self.weight, self.bias)

    def ordinary(self) -> Tensor:
        """The call as the model made it, with its ordinary backward."""
        return self.call.run()

    def per_channel(self, vector: Tensor) -> Tensor:
        """A per-output-channel vector (bias-like) shaped to broadcast against the output."""
        return vector.reshape(self.channel_shape)

    def bias_term(self, bias: Tensor | None = None) -> Tensor | float:
        """``bias`` (default: the layer's own) shaped to broadcast against the output."""
        bias = self.bias if bias is None else bias
        return 0.0 if bias is None else self.per_channel(bias)


def _argument(call: OperationCall, index: int, name: str) -> object:
    if len(call.args) > index:
        return call.args[index]
    return call.kwargs.get(name)


class KernelLayer(AffineLayer):
    """A linear, convolution or transposed convolution call in affine form."""

    _NAMES = ("input", "weight", "bias")

    def __init__(self, call: OperationCall) -> None:
        self.call = call
        self.input, self.weight, self.bias = (
            _argument(call, i, name) for i, name in enumerate(self._NAMES))
        self._rest = call.args[3:]
        self._options = {k: v for k, v in call.kwargs.items() if k not in self._NAMES}
        linear = call.func is F.linear
        self.channel_shape = (-1,) if linear else (-1, *[1] * (self.weight.dim() - 2))

    def run(self, x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
        return self.call.func(x, weight, bias, *self._rest, **self._options)


class BatchNormLayer(AffineLayer):
    """``F.batch_norm`` as ``y = a ⊙ x + c``, per channel (axis 1).

    In eval mode the running statistics are used. Where the call uses batch statistics
    (``track_running_stats=False``) they are computed from the input and held constant,
    like the running ones: relevance does not flow through the statistics.
    """

    def __init__(self, call: OperationCall) -> None:
        self.call = call
        names = ("input", "running_mean", "running_var", "weight", "bias", "training",
                 "momentum", "eps")
        x, mean, var, gamma, beta, training, _, eps = (
            _argument(call, i, name) for i, name in enumerate(names))
        eps = 1e-5 if eps is None else eps
        if training or mean is None or var is None:
            dims = [d for d in range(x.dim()) if d != 1]
            mean = x.detach().mean(dim=dims)
            var = x.detach().var(dim=dims, unbiased=False)
        scale = torch.rsqrt(var.to(x.dtype) + eps)
        if gamma is not None:
            scale = scale * gamma
        shift = -mean.to(x.dtype) * scale
        if beta is not None:
            shift = shift + beta
        self.input, self.weight, self.bias = x, scale.detach(), shift.detach()
        self.channel_shape = (-1, *[1] * max(x.dim() - 2, 0))
        self._batch_statistics = bool(training)

    def ordinary(self) -> Tensor:
        # With batch statistics the native call would differentiate through them.
        return self(self.input) if self._batch_statistics else self.call.run()

    def run(self, x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
        out = x * self.per_channel(weight)
        return out if bias is None else out + self.per_channel(bias)
