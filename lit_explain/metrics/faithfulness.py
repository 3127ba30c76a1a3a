"""Faithfulness correlation (Bhatt et al. 2020)."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from ._common import eval_mode, forward_scores
from ._curves import Perturbation, RegionCurveMetric, check_perturbation

__all__ = ["FaithfulnessCorrelation"]


def pearson(a: Tensor, b: Tensor) -> Tensor:
    """Row-wise Pearson correlation of ``(N, S)`` tensors; 0 where a row is constant."""
    a = a - a.mean(1, keepdim=True)
    b = b - b.mean(1, keepdim=True)
    den = (a.square().sum(1) * b.square().sum(1)).sqrt()
    return torch.where(den > 0, (a * b).sum(1) / den.clamp_min(1e-300), torch.zeros_like(den))


class FaithfulnessCorrelation(RegionCurveMetric):
    r"""Faithfulness correlation.

    Bhatt, Weller, Moura, "Evaluating and aggregating feature-based model explanations",
    IJCAI 2020.

    What it measures: whether the attribution mass of a random subset of features predicts
    how much the model's score drops when that subset is removed. For each sample,
    ``n_subsets`` random subsets :math:`S` of ``subset_size`` regions are replaced by the
    ``perturbation`` baseline, and the metric is the Pearson correlation, over the subsets,
    between :math:`\sum_{i \in S} a_i` and :math:`f(x) - f(x_{[x_S = \bar x_S]})`, averaged
    over samples. In [-1, 1]; ``higher_is_better = True``. A sample whose subset sums or
    score drops do not vary gets correlation 0.

    Parameters
    ----------
    model
        Callable returning logits (see :class:`RegionPerturbation`).
    n_subsets
        Random subsets per sample (Quantus' ``nr_runs``).
    subset_size
        Regions per subset: an int, or a float in (0, 1) for a fraction of the regions.
    region_shape
        Region size in the spatial dims; the default 1 draws single positions (all channels).
    perturbation
        Replacement, as in :class:`RegionPerturbation` (default ``"zeros"``).
    softmax, channel_reduce, absolute, noise_std, blur_sigma, value_range, batch_size, seed,
    use_eval_mode, output_key, mask_token_id
        As in :class:`RegionPerturbation` (token inputs: subsets of tokens are replaced by
        ``mask_token_id``). Subsets are drawn from the metric's own generator,
        one sample after another, so they do not depend on ``batch_size``.
    """

    higher_is_better = True

    def __init__(
        self,
        model: Callable[[Tensor], Tensor],
        n_subsets: int = 100,
        subset_size: int | float = 0.1,
        region_shape: int | Sequence[int] = 1,
        perturbation: Perturbation = "zeros",
        value_range: Sequence[float] | None = None,
        softmax: bool = False,
        channel_reduce: str = "sum",
        absolute: bool = False,
        noise_std: float = 0.3,
        blur_sigma: float = 2.0,
        batch_size: int = 256,
        seed: int = 0,
        use_eval_mode: bool = True,
        output_key: int | str | None = None,
        mask_token_id: int | None = None,
        **kwargs: object,
    ) -> None:
        super().__init__(
            model, region_shape, 1, softmax, channel_reduce, "sum", absolute,
            noise_std, blur_sigma, value_range, batch_size, seed, use_eval_mode,
            output_key=output_key, mask_token_id=mask_token_id, **kwargs,
        )  # fmt: skip
        if isinstance(n_subsets, bool) or not isinstance(n_subsets, int) or n_subsets < 2:
            raise ValueError(f"n_subsets={n_subsets!r} is not valid; use an int >= 2")
        is_fraction = isinstance(subset_size, float) and 0 < subset_size < 1
        is_count = isinstance(subset_size, int) and not isinstance(subset_size, bool)
        if not (is_fraction or (is_count and subset_size >= 1)):
            raise ValueError(
                f"subset_size={subset_size!r} is not valid; use an int >= 1 or a float in (0, 1)"
            )
        check_perturbation("perturbation", perturbation)
        self.n_subsets = n_subsets
        self.subset_size = subset_size
        self.perturbation = perturbation
        zero = torch.tensor(0.0, dtype=torch.float64)
        self.add_state("correlation_sum", default=zero, dist_reduce_fx="sum")

    def _size(self, n_regions: int) -> int:
        if isinstance(self.subset_size, float):
            return max(1, round(self.subset_size * n_regions))
        if self.subset_size > n_regions:
            raise ValueError(
                f"subset_size={self.subset_size} exceeds the {n_regions} regions of the inputs"
            )
        return self.subset_size

    def sample_correlations(
        self, x: Tensor, attributions: Tensor, target: Tensor | int | None = None
    ) -> Tensor:
        """Per-sample correlations ``(N,)`` without touching the metric: its states and its
        generator stay as they were (the subsets are those the next :meth:`update` draws)."""
        with self._draws_kept():
            return self._sample_correlations(x, attributions, target)

    @torch.no_grad()
    def _sample_correlations(
        self, x: Tensor, attributions: Tensor, target: Tensor | int | None
    ) -> Tensor:
        """:meth:`sample_correlations`, drawing from (and advancing) the metric's generator."""
        x_nc, grid, scores, target = self._prepare(x, attributions, target)
        n, r = scores.shape
        k = self._size(r)
        g = self.generator(x.device)
        subsets = torch.stack(
            [
                torch.rand(self.n_subsets, r, generator=g, device=x.device).argsort(1)[:, :k]
                for _ in range(n)
            ]
        )  # (N, S, k)
        attribution_sums = scores.double().gather(1, subsets.flatten(1)).view(n, -1, k).sum(-1)
        replacement = self._replacement(x_nc, grid, self.perturbation).detach()
        x_nc = x_nc.detach()
        pixel_region = grid.pixel_region(x.device)
        total = n * self.n_subsets
        perturbed = torch.empty(total, dtype=torch.float64, device=x.device)
        with eval_mode(self.model, self.use_eval_mode), self._token_errors():
            for start in range(0, total, self.batch_size):
                idx = torch.arange(start, min(start + self.batch_size, total), device=x.device)
                i, s = idx // self.n_subsets, idx % self.n_subsets
                region_mask = torch.zeros(idx.numel(), r, dtype=torch.bool, device=x.device)
                region_mask.scatter_(1, subsets[i, s], True)
                mask = region_mask[:, pixel_region].view(-1, 1, *x_nc.shape[2:])
                xb = torch.where(mask, replacement[i], x_nc[i]).reshape(-1, *x.shape[1:])
                perturbed[idx] = forward_scores(self.model, xb, target[i], self.softmax)[0]
        drops = self._scores(x, target).unsqueeze(1) - perturbed.view(n, self.n_subsets)
        return pearson(attribution_sums, drops)

    def update(self, x: Tensor, attributions: Tensor, target: Tensor | int | None = None) -> None:
        """Add the correlations of a batch; ``target=None`` explains the predicted class."""
        corr = self._sample_correlations(x, attributions, target)
        self.correlation_sum += corr.sum().to(self.correlation_sum)
        self.count += corr.numel()

    def compute(self) -> Tensor:
        """Mean per-sample correlation; NaN before any update."""
        if int(self.count) == 0:
            return torch.full_like(self.correlation_sum, math.nan)
        return self.correlation_sum / self.count
