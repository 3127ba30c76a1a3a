"""DeepLIFT with the rescale rule (Shrikumar et al. 2017, "Learning Important Features
Through Propagating Activation Differences").

The input and its reference run through the model as one batch ``[x; x₀]``, so every
non-linearity sees both. In the backward pass an elementwise non-linearity f (ReLU,
sigmoid, tanh, GELU, ...) multiplies the incoming multiplier by Δy/Δx =
(f(x) − f(x₀)) / (x − x₀), falling back to f'(x) where |x − x₀| is tiny. Max-pooling sends
g·Δy to the winner for x (Δy ≥ 0) or for x₀ (Δy < 0) and divides by Δx, so that
Σ Δx·m = Σ g·Δy holds there too (the rule Captum uses). Linear layers, convolutions,
BatchNorm in eval mode, additions, average pooling and reshapes are linear and keep their
gradient. The result (x − x₀)·m sums to f(x) − f(x₀) for the selected output
("summation to delta"). Softmax and products of two activations have no rescale rule and
raise :class:`~lit_explain.NotAnalyzableModelError`.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .base import Analyzer, NeuronSelection
from .gradient import reference_like
from .operations import (
    ACTIVATION,
    BATCH_NORM,
    KERNEL,
    LINEAR,
    MAX_POOL,
    RELU,
    STRUCTURE,
    OperationCall,
    OperationRules,
    with_gradient,
)
from .registry import register

LINEAR_KINDS = frozenset({KERNEL, BATCH_NORM, LINEAR, STRUCTURE})
#: |x − x₀| below which the rescale rule falls back to the gradient.
DELTA_EPSILON = 1e-6


def _vector_jacobian(call: OperationCall, source: Tensor, grad: Tensor) -> Tensor:
    """Ordinary gradient of the operation at ``source`` for the output gradient ``grad``."""
    with torch.enable_grad():
        leaf = source.detach().requires_grad_(True)
        output = call.run(leaf, *call.args[1:])
        (result,) = torch.autograd.grad(output, leaf, grad)
    return result


def _differences(tensor: Tensor) -> Tensor:
    """x-half minus reference half of a ``[x; x₀]`` batch."""
    value, reference = tensor.detach().chunk(2)
    return value - reference


def rescale_rule(call: OperationCall) -> Tensor:
    """Elementwise non-linearity: multiplier Δy/Δx on the input half, zero on the reference."""
    source, output = call.args[0], call.run()
    delta_in, delta_out = _differences(source), _differences(output)
    tiny = delta_in.abs() < DELTA_EPSILON

    def backward(grad: Tensor) -> Tensor:
        grad_x = grad.chunk(2)[0]
        ratio = delta_out / torch.where(tiny, torch.ones_like(delta_in), delta_in)
        multiplier = grad_x * ratio
        if bool(tiny.any()):
            slope = _vector_jacobian(call, source, grad).chunk(2)[0]
            multiplier = torch.where(tiny, slope, multiplier)
        return torch.cat([multiplier, torch.zeros_like(multiplier)])

    return with_gradient(source, output, backward)


def max_pool_rule(call: OperationCall) -> Tensor:
    """Max-pooling: g·Δy goes to the winner for x where the output grew and to the winner
    for x₀ where it shrank (a winner whose Δx has Δy's sign and is at least as large),
    then is divided by Δx."""
    source, output = call.args[0], call.run()
    delta_in, delta_out = _differences(source), _differences(output)
    tiny = delta_in.abs() < DELTA_EPSILON

    def backward(grad: Tensor) -> Tensor:
        share = grad.chunk(2)[0] * delta_out
        grew = delta_out >= 0
        split = torch.cat([torch.where(grew, share, 0.0), torch.where(grew, 0.0, share)])
        routed = _vector_jacobian(call, source, split).chunk(2)
        safe = torch.where(tiny, torch.ones_like(delta_in), delta_in)
        multiplier = torch.where(tiny, 0.0, (routed[0] + routed[1]) / safe)
        return torch.cat([multiplier, torch.zeros_like(multiplier)])

    return with_gradient(source, output, backward)


@register("deep_lift")
class DeepLIFT(Analyzer):
    """DeepLIFT, rescale rule: (x − x₀) times the multipliers of the selected output.

    Parameters
    ----------
    reference_inputs:
        The reference x₀: a number or a tensor broadcastable to the input.
    """

    def __init__(self, model: nn.Module, neuron_selection_mode: str = "max_activation",
                 reference_inputs: float | Tensor = 0.0) -> None:
        super().__init__(model, neuron_selection_mode)
        self.reference_inputs = reference_inputs

    def _analyze(self, x: Tensor, neuron_selection: NeuronSelection) -> Tensor:
        x = x.requires_grad_(True)
        reference = reference_like(self.reference_inputs, x)
        both = torch.cat([x, reference])
        handlers = {RELU: rescale_rule, ACTIVATION: rescale_rule, MAX_POOL: max_pool_rule}
        with OperationRules(self.model, handlers, LINEAR_KINDS, both).tracking_modules():
            output = self.model(both)
        logits = output.reshape(len(both), -1)[: len(x)]
        seed = self._seed(logits, self.selector(neuron_selection)(logits))
        (multiplier,) = torch.autograd.grad(logits, x, seed)
        return (x - reference) * multiplier
