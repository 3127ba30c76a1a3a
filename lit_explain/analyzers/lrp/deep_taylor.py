"""Deep Taylor decomposition (Montavon et al. 2017, "Explaining Nonlinear Classification
Decisions with Deep Taylor Decomposition", Pattern Recognition 65).

For ReLU networks: the z⁺-rule on every kernel layer (the root point on the positive
orthant), a BatchNorm merged into the kernel layer before it (or, after no kernel layer,
the magnitude-share rule of every LRP analyzer),
the z-rule on sum and average pooling and residual adds, relevance passed through ReLU,
max-pooling to the winner. As in iNNvestigate the output is made positive: the backward
pass starts from ``max(logit, 0)``, so a negative selected logit gives an all-zero map.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from ..registry import register
from .analyzer import LRP
from .rules import BoundedRule, ZPlusRule


@register("deep_taylor")
class DeepTaylor(LRP):
    """Deep Taylor decomposition for ReLU networks with unbounded input (z⁺ everywhere)."""

    def __init__(self, model: nn.Module, neuron_selection_mode: str = "max_activation",
                 **reverse: Any) -> None:
        super().__init__(model, neuron_selection_mode, rule=ZPlusRule(), **reverse)

    def _seed(self, logits: Tensor, indices: Tensor | None) -> Tensor:
        return super()._seed(logits.clamp(min=0), indices)


@register("deep_taylor.bounded")
class BoundedDeepTaylor(DeepTaylor):
    """Deep Taylor decomposition for inputs in ``[low, high]``: the z^B rule on the input
    layer (:class:`BoundedRule`), z⁺ on the others.

    Parameters
    ----------
    low, high:
        The smallest and largest input value (e.g. ``-1.0, 1.0`` for images scaled so).

    Notes
    -----
    iNNvestigate 2.x does not apply the z^B rule on its own networks (its
    ``deep_taylor.bounded`` equals ``deep_taylor``); this one does.
    """

    def __init__(self, model: nn.Module, neuron_selection_mode: str = "max_activation",
                 low: float | None = None, high: float | None = None, **reverse: Any) -> None:
        if low is None or high is None:
            raise ValueError("deep_taylor.bounded needs low= and high=, the input range")
        LRP.__init__(self, model, neuron_selection_mode, rule=ZPlusRule(),
                     input_layer_rule=BoundedRule(low, high), **reverse)
