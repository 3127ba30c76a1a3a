"""Map complexity: Sparseness (Gini index) and Complexity (entropy)."""

from __future__ import annotations

import math

import torch
from torch import Tensor
from torchmetrics import Metric

from ._common import check_bool, check_finite_map

__all__ = ["Complexity", "Sparseness", "gini", "entropy"]


def _flat_abs(attributions: Tensor, owner: str) -> Tensor:
    """``|a|`` as float64 rows ``(N, n)``, each divided by its maximum (the Gini index and the
    entropy do not depend on the scale, and sums of entries near float64's maximum would
    overflow); refuses maps without entries or with NaN/inf. An empty batch gives ``(0, n)``."""
    if attributions.dim() < 2 or math.prod(attributions.shape[1:]) == 0:
        raise ValueError(f"{owner}: attributions of shape {tuple(attributions.shape)} are not "
                         f"valid; expected a batch axis and at least one entry per map (N, ...)")
    check_finite_map(owner, attributions)
    a = attributions.detach().flatten(1).double().abs()  # (a bool map: 0 and 1)
    peak = a.amax(1, keepdim=True)
    return a / torch.where(peak > 0, peak, 1.0)


def gini(attributions: Tensor) -> Tensor:
    r"""Gini index of ``|a|`` per sample, ``(N,)``.

    With :math:`a_{(1)} \le \dots \le a_{(n)}` sorted,
    :math:`G = \sum_i (2i - n - 1)\, a_{(i)} / (n \sum_i a_{(i)})`: 0 for a constant map,
    :math:`(n-1)/n` for a one-hot map. An all-zero map counts as constant (0). Maps with
    NaN or infinite values are refused (``ValueError``).
    """
    a = _flat_abs(attributions, "gini").sort(dim=1).values
    n = a.shape[1]
    i = torch.arange(1, n + 1, device=a.device, dtype=a.dtype)
    total = a.sum(1)
    num = ((2 * i - n - 1) * a).sum(1)
    return torch.where(total > 0, num / (n * total).clamp_min(1e-300), torch.zeros_like(total))


def entropy(attributions: Tensor) -> Tensor:
    r"""Shannon entropy (nats) of :math:`p = |a| / \sum |a|` per sample, ``(N,)``.

    :math:`0 \log 0 = 0`; an all-zero map counts as uniform (:math:`\log n`). Maps with NaN
    or infinite values are refused (``ValueError``).
    """
    a = _flat_abs(attributions, "entropy")
    total = a.sum(1, keepdim=True)
    uniform = torch.full_like(a, 1.0 / a.shape[1])
    p = torch.where(total > 0, a / total.clamp_min(1e-300), uniform)
    return -torch.xlogy(p, p).sum(1)


class _MeanOverSamples(Metric):
    full_state_update = False
    is_differentiable = False

    def __init__(self, **kwargs: object) -> None:
        super().__init__(**kwargs)
        zero = torch.tensor(0.0, dtype=torch.float64)
        self.add_state("value_sum", default=zero, dist_reduce_fx="sum")
        self.add_state("count", default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def _per_sample(self, attributions: Tensor) -> Tensor:
        raise NotImplementedError

    def update(self, attributions: Tensor) -> None:
        """Add a batch of maps ``(N, ...)`` (any layout; every entry after the batch axis).
        An empty batch (``N = 0``) adds nothing."""
        _flat_abs(attributions, type(self).__name__)  # names this metric in the errors
        values = self._per_sample(attributions)
        self.value_sum += values.sum().to(self.value_sum)
        self.count += values.numel()

    def compute(self) -> Tensor:
        """Mean over all samples seen; NaN before any update."""
        if int(self.count) == 0:
            return torch.full_like(self.value_sum, math.nan)
        return self.value_sum / self.count


class Sparseness(_MeanOverSamples):
    """Sparseness: the Gini index of the absolute map.

    Chalasani, Chen, Chowdhury, Wu, Jha, "Concise explanations of neural networks using
    adversarial training", ICML 2020.

    What it measures: how concentrated the attribution is on few features, in [0, 1): 0 for
    a constant map, close to 1 for a one-hot map (exactly ``(n-1)/n``). Computed over every
    entry of the map as given (pass a channel-reduced map to measure per pixel).
    ``higher_is_better = True``: a sparser explanation is easier to read.
    """

    higher_is_better = True

    def _per_sample(self, attributions: Tensor) -> Tensor:
        return gini(attributions)


class Complexity(_MeanOverSamples):
    """Complexity: the entropy of the normalized absolute map.

    Bhatt, Weller, Moura, "Evaluating and aggregating feature-based model explanations",
    IJCAI 2020.

    What it measures: the Shannon entropy (nats) of the fractional contributions
    ``|a_i| / sum |a|``: 0 for a one-hot map, ``log n`` for a constant map; with
    ``normalized=True`` divided by ``log n`` to lie in [0, 1].
    ``higher_is_better = False``: a less complex explanation is better.
    """

    higher_is_better = False

    def __init__(self, normalized: bool = False, **kwargs: object) -> None:
        super().__init__(**kwargs)
        check_bool("normalized", normalized)
        self.normalized = normalized

    def _per_sample(self, attributions: Tensor) -> Tensor:
        h = entropy(attributions)
        n = math.prod(attributions.shape[1:])
        return h / math.log(n) if self.normalized and n > 1 else h
