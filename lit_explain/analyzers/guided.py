"""Deconvnet and Guided Backprop: the gradient with a modified ReLU backward.

Both apply to every ReLU, whether an ``nn.ReLU`` module or ``F.relu``/``torch.relu``/
``Tensor.relu`` in ``forward``. Other non-linearities (sigmoid, GELU, softmax, products)
raise :class:`~lit_explain.NotAnalyzableModelError`: the methods define no rule for them.
Max-pooling, linear and convolution layers, BatchNorm in eval mode, additions and reshapes
keep their ordinary gradient, as in iNNvestigate. The backward pass starts from the
selected output's value.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from .base import Analyzer, NeuronSelection
from .kinds import BATCH_NORM, KERNEL, LINEAR, MAX_POOL, RELU, STRUCTURE, WEIGHT_PRODUCT
from .operations import OperationCall, with_gradient
from .registry import register
from .replay import stateless

GRADIENT_KINDS = frozenset({KERNEL, WEIGHT_PRODUCT, BATCH_NORM, MAX_POOL, LINEAR, STRUCTURE})


def relu_rule(backward: Callable[[Tensor, Tensor], Tensor]):
    """A ReLU handler whose backward is ``backward(grad, relu_output)`` (the output, which
    the next layer keeps anyway, not the input, which would be held only for this)."""

    @stateless  # (replayed as it is: see .replay)
    def handler(call: OperationCall) -> Tensor:
        source = call.args[0] if call.args else call.kwargs["input"]
        output = call.run()
        kept = output.detach()
        return with_gradient(source, output, lambda grad: backward(grad, kept))

    return handler


class _ReluRuleAnalyzer(Analyzer):
    seed_with_value = True
    rule_based = True

    @staticmethod
    def relu_backward(grad: Tensor, relu_output: Tensor) -> Tensor:
        raise NotImplementedError

    def _analyze(self, x: Tensor, neuron_selection: NeuronSelection) -> Tensor:
        handlers = {RELU: relu_rule(self.relu_backward)}
        return self._backward(x, self.selector(neuron_selection), handlers, GRADIENT_KINDS)


@register("deconvnet")
class Deconvnet(_ReluRuleAnalyzer):
    """Deconvnet (Zeiler & Fergus 2014, "Visualizing and Understanding Convolutional
    Networks"): a ReLU passes the positive part of the incoming signal, whatever its input."""

    @staticmethod
    def relu_backward(grad: Tensor, relu_output: Tensor) -> Tensor:
        return grad.clamp(min=0)


@register("guided_backprop")
class GuidedBackprop(_ReluRuleAnalyzer):
    """Guided Backprop (Springenberg et al. 2015, "Striving for Simplicity: The All
    Convolutional Net"): a ReLU passes the positive part of the gradient where its input
    was positive."""

    @staticmethod
    def relu_backward(grad: Tensor, relu_output: Tensor) -> Tensor:
        # ReLU's own backward: the gradient where the output (so the input) is positive
        return torch.ops.aten.threshold_backward(grad, relu_output, 0).clamp_(min=0)
