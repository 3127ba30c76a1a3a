"""Localization against ground truth: how much of a map falls inside a mask.

Masks mark where the evidence *should* be (an object's segmentation, a bounding box, a
lesion outline) or where it should *not* be (a watermark, a shortcut). Every metric here
takes ``update(attributions, masks)`` and scores each sample on its own:

- :class:`RelevanceMassAccuracy`, :class:`RelevanceRankAccuracy` (Arras et al. 2022),
- :class:`PointingGame` (Zhang et al. 2018), with a tolerance in pixels,
- :class:`AttributionLocalisation` (Kohlbrenner et al. 2020), optionally size-weighted,
- :class:`TopKIntersection` (Theiner et al. 2021),
- :class:`ShortcutScore`: the share of positive relevance *outside* the mask.

Shapes: attributions are ``(N, C, *S)``, ``(N, *S)`` (no channel axis) or tabular
``(N, F)``; masks are boolean or {0, 1}, either the attributions' shape or the spatial
shape (``(N, *S)`` or ``(N, 1, *S)``). For the pointing game's tolerance, a 3-D map with a
mask of its own shape is an image ``(N, H, W)``, a 2-D one a sequence ``(N, L)``. A spatial
mask with a multi-channel map: the map's channels are summed first
(``channel_reduce="sum"``, one value per pixel, as in the papers) or the mask is broadcast
over them (``channel_reduce=None``).

A sample whose mask is empty has nothing to localize: it is *skipped* — left out of the
mean and counted in ``skipped`` — never a NaN in the sum. So is a sample whose map has no
relevance to share out (a zero denominator in the mass-based scores, or one of rounding
errors only: a signed map whose relevance cancels out). ``compute()`` is the
mean over the scored samples; NaN only when no sample could be scored at all (as before
any update, like every metric here). Maps holding NaN or infinite values are refused with a
``ValueError`` naming the metric: such a map has no ordering and no mass to share.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor
from torchmetrics import Metric

from ._common import check_bool, check_choice, check_finite_map, check_number

__all__ = [
    "AttributionLocalisation",
    "PointingGame",
    "RelevanceMassAccuracy",
    "RelevanceRankAccuracy",
    "ShortcutScore",
    "TopKIntersection",
    "align_masks",
]

CHANNEL_REDUCTIONS = ("sum", None)


def align_masks(attributions: Tensor, masks: Tensor, channel_reduce: str | None = "sum"
                ) -> tuple[Tensor, Tensor]:
    """Bring a batch of maps and masks to the same ``(N, ...)`` shape.

    Returns ``(a, m)``: ``a`` float64, ``m`` bool, both of one shape. A mask of the map's
    full shape is used as it is. A spatial mask (the map's shape without its channel axis,
    or with a channel axis of 1) goes with the channel-summed map
    (``channel_reduce="sum"``) or is broadcast over the channels (``None``).

    Raises
    ------
    ValueError
        If the mask is not boolean or {0, 1}, or its shape fits neither rule; the message
        names both shapes.
    """
    if attributions.dim() < 2:
        raise ValueError(f"attributions need a batch axis; got shape {tuple(attributions.shape)}")
    a = attributions.detach().double()
    m = torch.as_tensor(masks).detach().to(a.device)  # (also a numpy array)
    if m.dtype != torch.bool:
        if m.is_complex() or not ((m == 0) | (m == 1)).all():
            raise ValueError(f"masks must be boolean or hold only 0 and 1; got dtype {m.dtype} "
                             f"with other values")
        m = m != 0
    if m.dim() == a.dim() + 1 and m.shape[1] == 1 and m.shape[2:] == a.shape[1:]:
        m = m.squeeze(1)  # a channel-less map, a mask with its one channel
    if m.shape == a.shape:
        return a, m
    n, spatial = a.shape[0], a.shape[2:]
    if m.shape[0] == n and a.dim() >= 3 and (tuple(m.shape[1:]) == tuple(spatial) or (
            m.dim() == a.dim() and m.shape[1] == 1 and m.shape[2:] == spatial)):
        m = m.reshape(n, 1, *spatial)
        if channel_reduce == "sum":
            return a.sum(1, keepdim=True), m
        return a, m.expand_as(a)
    raise ValueError(
        f"masks of shape {tuple(m.shape)} do not fit attributions of shape "
        f"{tuple(attributions.shape)}: give the map's shape, or its spatial shape "
        f"(N, *S) or (N, 1, *S)")


class _Localization(Metric):
    """Mean of a per-sample score over the samples that could be scored; sum/count states."""

    full_state_update = False
    is_differentiable = False

    def __init__(self, channel_reduce: str | None = "sum", **kwargs: object) -> None:
        super().__init__(**kwargs)
        check_choice("channel_reduce", channel_reduce, CHANNEL_REDUCTIONS)
        self.channel_reduce = channel_reduce
        self.add_state("value_sum", default=torch.tensor(0.0, dtype=torch.float64),
                       dist_reduce_fx="sum")
        self.add_state("count", default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("skipped", default=torch.tensor(0, dtype=torch.long),
                       dist_reduce_fx="sum")

    def _score(self, a: Tensor, m: Tensor) -> tuple[Tensor, Tensor]:
        """Per-sample scores ``(N,)`` and which of them count ``(N,)``, from flat rows."""
        raise NotImplementedError

    def _prepare(self, a: Tensor) -> Tensor:
        return a

    def _align(self, attributions: Tensor, masks: Tensor) -> tuple[Tensor, Tensor]:
        """:func:`align_masks`, after refusing maps with NaN or infinite values."""
        check_finite_map(type(self).__name__, attributions)
        return align_masks(attributions, masks, self.channel_reduce)

    def per_sample(self, attributions: Tensor, masks: Tensor) -> Tensor:
        """Each sample's score ``(N,)``, NaN where the sample is skipped (nothing is stored)."""
        a, m = self._align(attributions, masks)
        values, valid = self._score(self._prepare(a), m)
        return torch.where(valid, values, torch.full_like(values, math.nan))

    def update(self, attributions: Tensor, masks: Tensor) -> None:
        """Add a batch of maps and their masks (see the module docstring for the shapes)."""
        a, m = self._align(attributions, masks)
        values, valid = self._score(self._prepare(a), m)
        self.value_sum += values[valid].sum().to(self.value_sum)
        self.count += int(valid.sum())
        self.skipped += int((~valid).sum())

    def compute(self) -> Tensor:
        """Mean over the scored samples (NaN when none could be scored)."""
        if int(self.count) == 0:
            return torch.tensor(math.nan, dtype=torch.float64, device=self.value_sum.device)
        return self.value_sum / self.count


def _per_peak(a: Tensor) -> Tensor:
    """Flat rows ``a`` each divided by its largest magnitude (where not 0): the shares of
    relevance stay as they are, and the sums finite (a float64 map of values near the
    largest float summed to infinity, and scored a share of 0)."""
    a = a if a.is_floating_point() else a.double()
    peak = a.abs().amax(1, keepdim=True)
    return a / torch.where(peak > 0, peak, torch.ones_like(peak))


def _rounding_of_sum(a: Tensor) -> Tensor:
    """How far from 0 the float sum of each row of ``a`` may land when its exact sum is 0
    (the bound of a pairwise sum's rounding: ``log2(n)·ε·Σ|a|``): a signed map whose
    relevance cancels out has a total of rounding errors only (5.6e-17 for a map of tenths),
    whose share means nothing (it was 1.8e15)."""
    return a.abs().sum(1) * (torch.finfo(a.dtype).eps * max(1.0, math.log2(a.shape[1])))


class _MassShare(_Localization):
    """Share of (optionally transformed) relevance that falls inside the mask."""

    values: str = "raw"

    def _prepare(self, a: Tensor) -> Tensor:
        if self.values == "positive":
            return a.clamp_min(0)
        if self.values == "abs":
            return a.abs()
        return a

    def _inside_share(self, a: Tensor, m: Tensor) -> tuple[Tensor, Tensor]:
        a, m = _per_peak(a.flatten(1)), m.flatten(1)
        total = a.sum(1)
        inside = (a * m).sum(1)
        valid = m.any(1) & (total.abs() > _rounding_of_sum(a))
        return inside / torch.where(valid, total, torch.ones_like(total)), valid


class RelevanceMassAccuracy(_MassShare):
    r"""Relevance mass accuracy: the share of the map's relevance inside the mask.

    Arras, Osman, Samek, "CLEVR-XAI: A benchmark dataset for the ground truth evaluation
    of neural network explanations", Information Fusion 81, 2022.

    :math:`\mathrm{MA} = \sum_{i \in M} R_i / \sum_i R_i`. With ``values="raw"`` (the
    default, as in Quantus) the signed map is used, so the value can leave [0, 1] when
    negative relevance is large; ``"positive"`` (only positive relevance, as in the paper's
    experiments) and ``"abs"`` keep it in [0, 1]. 1: all relevance in the mask.
    ``higher_is_better = True`` for an object mask (for a shortcut mask, such as a
    watermark, a high value is the warning sign). Samples with an empty mask or a total of
    0 (up to the rounding of its sum: a signed map whose relevance cancels out) are skipped.
    """

    higher_is_better = True

    def __init__(self, values: str = "raw", channel_reduce: str | None = "sum",
                 **kwargs: object) -> None:
        super().__init__(channel_reduce=channel_reduce, **kwargs)
        check_choice("values", values, ("raw", "positive", "abs"))
        self.values = values

    def _score(self, a: Tensor, m: Tensor) -> tuple[Tensor, Tensor]:
        return self._inside_share(a, m)


class ShortcutScore(_MassShare):
    r"""The share of positive relevance that falls *outside* the mask, a mask of the object
    (where the evidence should lie).

    :math:`\sum_{i \notin M} R_i^+ / \sum_i R_i^+`, in [0, 1]: 0 when all evidence for the
    output lies on the object, 1 when all of it lies elsewhere — on a watermark, a border,
    a hospital tag (the "Clever Hans" shortcuts of Lapuschkin et al., "Unmasking Clever
    Hans predictors and assessing what machines really learn", Nature Communications
    10, 2019). ``higher_is_better = False``. Samples with an empty mask or no positive
    relevance are skipped. For a mask of the shortcut itself (the watermark), read
    :class:`RelevanceMassAccuracy` instead: there a high share is the warning sign.
    """

    higher_is_better = False
    values = "positive"  # (always: the share of the evidence for the output)

    def __init__(self, channel_reduce: str | None = "sum", **kwargs: object) -> None:
        super().__init__(channel_reduce=channel_reduce, **kwargs)

    def _score(self, a: Tensor, m: Tensor) -> tuple[Tensor, Tensor]:
        share, valid = self._inside_share(a, m)
        return 1 - share, valid


def _top_k(a: Tensor, k: Tensor) -> Tensor:
    """Boolean ``(N, n)``: the ``k[i]`` largest entries of each row ``i``.

    Ties at the ``k``-th value go to the earlier (row-major) positions. One ``topk`` for
    the largest ``k`` of the batch, no full sort.
    """
    chosen = torch.zeros_like(a, dtype=torch.bool)
    k_max = int(k.max()) if k.numel() else 0
    if k_max == 0:
        return chosen
    values = a.topk(k_max, dim=1).values
    kth = values.gather(1, (k - 1).clamp_min(0)[:, None])
    above = a > kth
    tied = a == kth
    room = k[:, None] - above.sum(1, keepdim=True)
    return (above | (tied & (tied.cumsum(1) <= room))) & (k[:, None] > 0)


class RelevanceRankAccuracy(_Localization):
    r"""Relevance rank accuracy: the share of the ``K`` highest entries that lie in the mask.

    Arras, Osman, Samek, "CLEVR-XAI", Information Fusion 81, 2022.

    With :math:`K = |M|` the mask's size and :math:`P_K` the positions of the ``K``
    largest values of the map, :math:`\mathrm{RA} = |P_K \cap M| / K`, in [0, 1]; 1: the
    mask holds exactly the top of the map. Ties in the ranking go to the earlier
    (row-major) position. ``absolute=True`` ranks ``|R|``. ``higher_is_better = True``.
    Samples with an empty mask are skipped.
    """

    higher_is_better = True

    def __init__(self, absolute: bool = False, channel_reduce: str | None = "sum",
                 **kwargs: object) -> None:
        super().__init__(channel_reduce=channel_reduce, **kwargs)
        check_bool("absolute", absolute)
        self.absolute = absolute

    def _prepare(self, a: Tensor) -> Tensor:
        return a.abs() if self.absolute else a

    def _score(self, a: Tensor, m: Tensor) -> tuple[Tensor, Tensor]:
        a, m = a.flatten(1), m.flatten(1)
        k = m.sum(1)
        hits = (_top_k(a, k) & m).sum(1)
        return hits.double() / k.clamp_min(1), k > 0


class TopKIntersection(_Localization):
    r"""Top-k intersection: the share of the map's ``k`` highest entries that lie in the mask.

    Theiner, Müller-Budack, Ewerth, "Interpretable semantic photo geolocation", WACV 2022
    (arXiv 2021).

    :math:`|P_k \cap M| / k` for a fixed ``k`` (Quantus's default: 1000; it must not exceed
    the entries per map), in [0, 1]. ``concept_influence=True`` multiplies by
    ``entries / |M|`` (how much more often than chance the top ``k`` fall in the mask): 1
    is chance, and the value lies in [0, ``entries / |M|``], no longer in [0, 1].
    Ties go to the earlier position. ``absolute=True`` ranks ``|R|``.
    ``higher_is_better = True``. Samples with an empty mask are skipped.
    """

    higher_is_better = True

    def __init__(self, k: int = 1000, concept_influence: bool = False, absolute: bool = False,
                 channel_reduce: str | None = "sum", **kwargs: object) -> None:
        super().__init__(channel_reduce=channel_reduce, **kwargs)
        if not isinstance(k, int) or isinstance(k, bool) or k < 1:
            raise ValueError(f"k={k!r} is not valid; expected a positive int")
        check_bool("concept_influence", concept_influence)
        check_bool("absolute", absolute)
        self.k = k
        self.concept_influence = concept_influence
        self.absolute = absolute

    def _prepare(self, a: Tensor) -> Tensor:
        return a.abs() if self.absolute else a

    def _score(self, a: Tensor, m: Tensor) -> tuple[Tensor, Tensor]:
        a, m = a.flatten(1), m.flatten(1)
        if self.k > a.shape[1]:
            raise ValueError(f"k={self.k} exceeds the {a.shape[1]} entries of each map; "
                             f"choose k <= {a.shape[1]}")
        size = m.sum(1)
        k = torch.full((a.shape[0],), self.k, device=a.device)
        value = (_top_k(a, k) & m).sum(1).double() / self.k
        if self.concept_influence:
            value = value * a.shape[1] / size.clamp_min(1)
        return value, size > 0


def _dilate(m: Tensor, tolerance: float) -> Tensor:
    """Grow a boolean ``(N, C, *S)`` mask (1 to 3 spatial axes) by every position within
    Euclidean ``tolerance``."""
    # no two positions are further apart than the largest side along any axis
    radius = min(int(math.floor(tolerance)), max(m.shape[2:], default=0))
    if radius < 1:
        return m
    t = torch.arange(-radius, radius + 1, device=m.device, dtype=torch.float32)
    offsets = torch.meshgrid(*[t] * (m.dim() - 2), indexing="ij")
    kernel = (sum(o**2 for o in offsets) <= tolerance**2).float()[None, None]
    conv = (F.conv1d, F.conv2d, F.conv3d)[m.dim() - 3]
    n, c = m.shape[:2]
    flat = m.reshape(n * c, 1, *m.shape[2:]).float()
    grown = conv(flat, kernel, padding=radius) > 0
    return grown.reshape(m.shape)


class PointingGame(_Localization):
    r"""Pointing game: does the map's maximum fall inside the mask?

    Zhang, Bargal, Lin, Brandt, Shen, Sclaroff, "Top-down neural attention by excitation
    backprop", International Journal of Computer Vision 126, 2018.

    A hit (1) when a position of the map's largest value lies in the mask grown by
    ``tolerance`` pixels (Euclidean distance; the paper uses 15 pixels on 224×224 images,
    0 means the mask as given), a miss (0) otherwise; the mean is the hit rate in [0, 1].
    When several positions share the maximum, any of them in the mask is a hit (as in
    Quantus). ``absolute=True`` looks for the largest ``|R|``. ``higher_is_better = True``.
    Samples with an empty mask are skipped.
    """

    higher_is_better = True

    def __init__(self, tolerance: float = 0, absolute: bool = False,
                 channel_reduce: str | None = "sum", **kwargs: object) -> None:
        super().__init__(channel_reduce=channel_reduce, **kwargs)
        check_number("tolerance", tolerance, at_least=0)
        check_bool("absolute", absolute)
        self.tolerance = tolerance
        self.absolute = absolute

    def _prepare(self, a: Tensor) -> Tensor:
        return a.abs() if self.absolute else a

    def _align(self, attributions: Tensor, masks: Tensor) -> tuple[Tensor, Tensor]:
        """Aligned ``(N, C, *S)`` pairs, so the tolerance runs along the spatial axes only.

        A tabular or sequence map ``(N, L)`` becomes ``(N, 1, L)``; a 3-D map with a mask of
        its own shape is an image without channel axis ``(N, H, W)`` and becomes
        ``(N, 1, H, W)`` (a sequence with channels ``(N, C, L)`` takes a spatial mask
        ``(N, L)`` or ``(N, 1, L)``).
        """
        a, m = super()._align(attributions, masks)
        shape, given = tuple(attributions.shape), tuple(torch.as_tensor(masks).shape)
        image = a.dim() == 3 and (given == shape or given == (shape[0], 1, *shape[1:]))
        if a.dim() == 2 or image:
            a, m = a.unsqueeze(1), m.unsqueeze(1)
        if self.tolerance >= 1 and a.dim() > 5:
            raise ValueError(f"PointingGame(tolerance={self.tolerance}) grows masks along up to "
                             f"3 spatial axes; maps of shape {shape} have {a.dim() - 2}")
        return a, m

    def _score(self, a: Tensor, m: Tensor) -> tuple[Tensor, Tensor]:
        valid = m.flatten(1).any(1)
        grown = _dilate(m, self.tolerance)
        a, grown = a.flatten(1), grown.flatten(1)
        top = a == a.amax(1, keepdim=True)
        return (top & grown).any(1).double(), valid


class AttributionLocalisation(_Localization):
    r"""Attribution localisation: the share of positive relevance inside the mask.

    Kohlbrenner, Bauer, Nakajima, Binder, Samek, Lapuschkin, "Towards best practice in
    explaining neural network decisions with LRP", IJCNN 2020.

    :math:`\mu = \sum_{i \in M} R_i^+ / \sum_i R_i^+` in [0, 1]; the size-weighted
    variant (``weighted=True``) is :math:`\mu_w = \mu \cdot |S| / |M|` (``|S|`` the
    entries per map), which rewards a mask that holds more relevance than its area would
    by chance (1: as much as chance). Samples whose mask covers more than ``max_size`` of
    the map (the paper keeps objects under a third of the image), whose mask is empty, or
    whose map has no positive relevance, are skipped. ``absolute=True`` uses ``|R|``
    instead of ``R^+``. ``higher_is_better = True``.
    """

    higher_is_better = True

    def __init__(self, weighted: bool = False, max_size: float = 1.0, absolute: bool = False,
                 channel_reduce: str | None = "sum", **kwargs: object) -> None:
        super().__init__(channel_reduce=channel_reduce, **kwargs)
        if not (isinstance(max_size, int | float) and not isinstance(max_size, bool)
                and 0 < max_size <= 1):
            raise ValueError(f"max_size={max_size!r} is not valid; expected a number with "
                             f"0 < max_size <= 1 (the largest share of the map a mask may cover)")
        check_bool("weighted", weighted)
        check_bool("absolute", absolute)
        self.weighted = weighted
        self.max_size = max_size
        self.absolute = absolute

    def _prepare(self, a: Tensor) -> Tensor:
        return a.abs() if self.absolute else a.clamp_min(0)

    def _score(self, a: Tensor, m: Tensor) -> tuple[Tensor, Tensor]:
        a, m = _per_peak(a.flatten(1)), m.flatten(1)
        total = a.sum(1)
        size = m.sum(1).double()
        ratio = size / a.shape[1]
        valid = (size > 0) & (total > 0) & (ratio <= self.max_size)
        mu = (a * m).sum(1) / torch.where(valid, total, torch.ones_like(total))
        if self.weighted:
            mu = mu / ratio.clamp_min(1e-300)
        return mu, valid
