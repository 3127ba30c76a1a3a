"""Attribution drift: how much the explanations of the same samples changed."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor
from torchmetrics import Metric
from torchmetrics.utilities import dim_zero_cat

from ._common import check_bool, check_finite_map

__all__ = ["AttributionDrift", "average_ranks", "drift_measures", "spearman", "ssim",
           "topk_intersection"]


def average_ranks(v: Tensor) -> Tensor:
    """Row-wise ranks ``(N, n)`` (0-based), ties sharing their mean rank."""
    values, perm = v.sort(dim=1, stable=True)
    starts = torch.ones_like(values, dtype=torch.long)
    starts[:, 1:] = (values[:, 1:] != values[:, :-1]).long()
    group = starts.cumsum(1) - 1
    positions = torch.arange(v.shape[1], device=v.device, dtype=torch.float64).expand_as(values)
    sums = torch.zeros_like(positions).scatter_add_(1, group, positions)
    counts = torch.zeros_like(positions).scatter_add_(1, group, torch.ones_like(positions))
    ranks_sorted = (sums / counts.clamp_min(1)).gather(1, group)
    return torch.empty_like(ranks_sorted).scatter_(1, perm, ranks_sorted)


def spearman(a: Tensor, b: Tensor, ranks_a: Tensor | None = None,
             ranks_b: Tensor | None = None) -> Tensor:
    """Spearman rank correlation of flattened maps, per sample ``(N,)``.

    Ties get average ranks. Where a map is constant the correlation is undefined; it is 1
    if the two maps are equal and 0 otherwise. ``ranks_a``, ``ranks_b``: the
    :func:`average_ranks` of ``a``/``b`` flattened to float64, when known already (a map
    compared with several others, or again at the next epoch, is ranked once).
    """
    a, b = a.flatten(1).double(), b.flatten(1).double()
    ra = average_ranks(a) if ranks_a is None else ranks_a
    rb = average_ranks(b) if ranks_b is None else ranks_b
    ra, rb = ra - ra.mean(1, keepdim=True), rb - rb.mean(1, keepdim=True)
    den = (ra.square().sum(1) * rb.square().sum(1)).sqrt()
    equal = (a == b).all(1).double()
    return torch.where(den > 0, (ra * rb).sum(1) / den.clamp_min(1e-300), equal)


def topk_intersection(a: Tensor, b: Tensor, k: int | float) -> Tensor:
    """Fraction of the ``k`` largest-``|value|`` entries the two maps share, per sample; ties
    go to the earlier row-major position (``topk`` leaves their order unspecified). Maps of
    any dtype, boolean ones included, are compared as float64 (as :func:`spearman` does)."""
    a, b = a.flatten(1).double().abs(), b.flatten(1).double().abs()
    n = a.shape[1]
    kk = min(n, max(1, round(k * n)) if isinstance(k, float) else int(k))

    def top(values: Tensor) -> Tensor:
        first = values.argsort(dim=1, descending=True, stable=True)[:, :kk]
        return torch.zeros_like(values, dtype=torch.bool).scatter_(1, first, True)

    return (top(a) & top(b)).sum(1).double() / kk


def ssim(a: Tensor, b: Tensor, window: int = 7, sigma: float = 1.5) -> Tensor:
    """Structural similarity of image maps ``(N, C, H, W)``, per sample ``(N,)``.

    Wang, Bovik, Sheikh, Simoncelli, "Image quality assessment: from error visibility to
    structural similarity", IEEE TIP 13(4), 2004. Maps are summed over channels and divided
    by their largest ``|value|`` (so the scale of a map does not count; data range 2), then
    compared with a Gaussian window (``window`` clipped to the map size, no padding).
    """
    x = a.double().sum(1, keepdim=True)
    y = b.double().sum(1, keepdim=True)
    x = x / x.flatten(1).abs().amax(1).clamp_min(1e-300).view(-1, 1, 1, 1)
    y = y / y.flatten(1).abs().amax(1).clamp_min(1e-300).view(-1, 1, 1, 1)
    size = min(window, x.shape[2], x.shape[3])
    size = size if size % 2 else size - 1
    t = torch.arange(size, device=x.device, dtype=x.dtype) - (size - 1) / 2
    g = torch.exp(-0.5 * (t / sigma) ** 2)
    g = g / g.sum()
    # the 2-D Gaussian window is g g^T: filtered along the rows, then the columns (2 size
    # instead of size**2 products per value)
    stats = F.conv2d(torch.cat([x, y, x * x, y * y, x * y], 1),
                     g.view(1, 1, size, 1).expand(5, 1, -1, -1), groups=5)
    stats = F.conv2d(stats, g.view(1, 1, 1, size).expand(5, 1, -1, -1), groups=5)
    mx, my, mxx, myy, mxy = stats.unbind(1)
    vx, vy, cxy = mxx - mx * mx, myy - my * my, mxy - mx * my
    c1, c2 = (0.01 * 2) ** 2, (0.03 * 2) ** 2
    s = ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx * mx + my * my + c1) * (vx + vy + c2))
    return s.flatten(1).mean(1)


def drift_measures(reference_maps: Tensor, current_maps: Tensor, top_k: int | float = 0.1,
                   reference_ranks: Tensor | None = None, current_ranks: Tensor | None = None
                   ) -> dict[str, Tensor]:
    """Per-sample ``(N,)`` similarities of two batches of maps of the same samples:
    ``"spearman"``, ``"topk_intersection"`` and, for image maps ``(N, C, H, W)``, ``"ssim"``.

    Every measure is per sample, so the maps of several analyzers (or references) can be
    concatenated, measured in one call and split again. ``reference_ranks``,
    ``current_ranks``: the maps' :func:`average_ranks` when known (see :func:`spearman`).
    """
    values = {
        "spearman": spearman(reference_maps, current_maps, reference_ranks, current_ranks),
        "topk_intersection": topk_intersection(reference_maps, current_maps, top_k),
    }
    if current_maps.dim() == 4:
        values["ssim"] = ssim(reference_maps, current_maps)
    return values


class AttributionDrift(Metric):
    """Attribution drift between two points of training.

    What it measures: for the same samples explained at a reference point (e.g. an earlier
    epoch) and now, the similarity of the two maps: the Spearman rank correlation of all
    entries (Spearman 1904; used for explanation stability by Adebayo et al., "Sanity checks
    for saliency maps", NeurIPS 2018), the SSIM of the channel-summed, max-normalized maps
    (Wang et al. 2004; image maps ``(N, C, H, W)`` only) and the top-k intersection of the
    ``top_k`` largest ``|attribution|`` entries. Each is computed per sample and averaged.

    ``higher_is_better = None``: all three are similarities, 1 meaning the explanations did
    not change; whether change is good depends on the phase of training.

    Parameters
    ----------
    top_k
        Entries compared by the top-k intersection: an int, or a float in (0, 1] for a
        fraction of the entries.
    keep_per_sample
        Also keep the per-sample values (``"cat"`` states, gathered across processes);
        see :meth:`per_sample`.
    """

    higher_is_better = None
    full_state_update = False
    is_differentiable = False

    def __init__(
        self, top_k: int | float = 0.1, keep_per_sample: bool = True, **kwargs: object
    ) -> None:
        super().__init__(**kwargs)
        ok_fraction = isinstance(top_k, float) and 0 < top_k <= 1
        ok_count = isinstance(top_k, int) and not isinstance(top_k, bool) and top_k >= 1
        if not (ok_fraction or ok_count):
            raise ValueError(f"top_k={top_k!r} is not valid; use an int >= 1 or a float in (0, 1]")
        check_bool("keep_per_sample", keep_per_sample)
        self.top_k = top_k
        self.keep_per_sample = keep_per_sample
        zero = torch.tensor(0.0, dtype=torch.float64)
        for name in ("spearman", "ssim", "topk_intersection"):
            self.add_state(f"{name}_sum", default=zero.clone(), dist_reduce_fx="sum")
            if keep_per_sample:
                self.add_state(f"{name}_values", default=[], dist_reduce_fx="cat")
        self.add_state("count", default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")
        self.add_state(
            "ssim_count", default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum"
        )

    def update(self, reference_maps: Tensor, current_maps: Tensor,
               measured: dict[str, Tensor] | None = None) -> None:
        """Compare two batches of maps of the same samples, same shape ``(N, ...)``.

        ``measured``: :func:`drift_measures` of exactly these maps, when the caller computed
        it already (batched with other maps); it is taken as is.
        """
        if reference_maps.shape != current_maps.shape or reference_maps.dim() < 2:
            raise ValueError(
                f"reference_maps {tuple(reference_maps.shape)} and current_maps "
                f"{tuple(current_maps.shape)} must have the same shape (N, ...)"
            )
        check_finite_map("AttributionDrift", reference_maps, "reference_maps")
        check_finite_map("AttributionDrift", current_maps, "current_maps")
        ref = reference_maps.detach().to(current_maps.device)
        cur = current_maps.detach()
        values = drift_measures(ref, cur, self.top_k) if measured is None else measured
        if any(len(v) != cur.shape[0] for v in values.values()):
            raise ValueError(f"measured holds {[len(v) for v in values.values()]} values for "
                             f"{cur.shape[0]} samples")
        if "ssim" in values:
            self.ssim_count += cur.shape[0]
        for name, v in values.items():
            setattr(self, f"{name}_sum", getattr(self, f"{name}_sum") + v.sum())
            if self.keep_per_sample:
                getattr(self, f"{name}_values").append(v)
        self.count += cur.shape[0]

    def compute(self) -> dict[str, Tensor]:
        """Mean ``{"spearman", "topk_intersection"}``, and ``"ssim"`` when image maps were seen;
        NaN before any update."""
        n = self.count.double().where(self.count > 0, torch.nan)
        out = {
            "spearman": self.spearman_sum / n,
            "topk_intersection": self.topk_intersection_sum / n,
        }
        if self.ssim_count > 0:
            out["ssim"] = self.ssim_sum / self.ssim_count
        return out

    def per_sample(self) -> dict[str, Tensor]:
        """Per-sample values in update order (needs ``keep_per_sample=True``)."""
        if not self.keep_per_sample:
            raise RuntimeError("per_sample() needs AttributionDrift(keep_per_sample=True)")
        out = {}
        for name in ("spearman", "topk_intersection", "ssim"):
            values = getattr(self, f"{name}_values")
            if (isinstance(values, list) and values) or isinstance(values, Tensor):
                out[name] = dim_zero_cat(values)
        return out
