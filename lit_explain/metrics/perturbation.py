"""Perturbation curves: region perturbation / pixel flipping (AOPC) and insertion/deletion.

All curves are computed the same way: the attribution map is reduced over channels and
summed per region of a grid (see :class:`~lit_explain.metrics._common.RegionGrid`), the
regions are ranked, and the model is evaluated on the input with the first ``k`` regions
replaced, for every step ``k`` at once, ``batch_size`` inputs at a time under
``torch.no_grad()``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from ._common import check_choice, check_positive_int
from ._curves import (
    ORDERS,
    Perturbation,
    RegionCurveMetric,
    check_perturbation,
    region_ranks,
)

__all__ = ["InsertionDeletion", "PixelFlipping", "RegionPerturbation"]



def _batch(x: Tensor | None, attributions: Tensor | None) -> tuple[Tensor, Tensor]:
    """``x`` and ``attributions`` of an ``update`` call that got no ``curves``."""
    if x is None or attributions is None:
        raise TypeError("update() needs x and attributions, or curves= from sample_curves()")
    return x, attributions

class RegionPerturbation(RegionCurveMetric):
    r"""Region perturbation and its area over the perturbation curve (AOPC).

    Samek, Binder, Montavon, Lapuschkin, Müller, "Evaluating the visualization of what a
    deep neural network has learned", IEEE TNNLS 28(11), 2017.

    What it measures: how fast the model's score for the explained class falls when the
    regions an explanation calls most relevant are destroyed first. With
    :math:`x^{(0)} = x` and :math:`x^{(k)}` the input with the ``k * regions_per_step``
    top-ranked regions replaced, the curve is :math:`f(x^{(k)})` for ``k = 0..steps`` and

    .. math:: \mathrm{AOPC} = \frac{1}{L+1} \sum_{k=0}^{L}
              \big\langle f(x^{(0)}) - f(x^{(k)}) \big\rangle_{p(x)}.

    ``higher_is_better = True`` for the default ``order="morf"`` (most relevant first): a
    faithful map makes the score collapse early. With ``order="lerf"`` (least relevant
    first) **lower** is better; ``order="random"`` gives the baseline to compare with.

    Parameters
    ----------
    model
        Any callable mapping a batch of inputs to logits ``(N, classes)``; a single output
        per sample (``(N,)`` or ``(N, 1)``) is used as the score directly. Put into eval mode
        during the calls (each module's own flag is restored after) unless
        ``use_eval_mode=False``.
    output_key
        For a model returning a tuple (an index) or a mapping (a key): the logits. ``None``:
        the first tensor of a tuple, ``"logits"`` of a mapping (as for the analyzers).
    region_shape
        Region size in the spatial dims (int for all dims, or one per dim): ``(h, w)`` for
        images, ``(l,)`` for sequences, features for tabular data. Regions cover all
        channels. When the size is not a multiple, the grid is zero-padded half before,
        half after, and border regions are partial. ``None`` (default): derived from the
        input so that the grid has at most 256 regions, 16 per side on images
        (:func:`~lit_explain.metrics._curves.default_region_shape`: 8 x 8 -> 1, 32 x 32 -> 2,
        224 x 224 -> 14, tabular -> 1); one token per region for token inputs.
    steps
        Number of perturbation steps ``L``; the curve has ``steps + 1`` points. ``None``
        (default): ``min(100, regions // regions_per_step)``, fixed by the first input.
    regions_per_step
        Regions replaced per step; ``steps * regions_per_step`` must not exceed the number
        of regions.
    order
        ``"morf"``, ``"lerf"`` or ``"random"`` (a seeded permutation per sample).
    perturbation
        ``"zeros"``, ``"mean"`` (the sample's channel means), ``"gaussian"`` (N(0,
        ``noise_std``) values), ``"invert"``, ``"blur"`` (Gaussian blur, ``blur_sigma``), a
        number, or a callable on the regions (see :func:`replacement_values`).
    value_range
        ``(min, max)`` to clip replacement values to (and the range ``"invert"`` reflects in).
    softmax
        Score the softmax probability instead of the logit; for a model with one output,
        its sigmoid (a binary classifier's probability). The model must return logits: the
        scores of a model that returns probabilities would be normalized twice (pass
        ``softmax=False`` for it; nothing is detected).
    channel_reduce, region_reduce
        How the map becomes one number per region: over channels, then over the region
        (``"sum"``, ``"mean"`` or ``"max"``).
    absolute
        Rank by ``|attribution|``.
    batch_size
        Model inputs per forward call (bounds memory).
    seed
        Seed of the metric's own generator (random order, Gaussian noise); re-seeded on
        :meth:`reset`, the global RNG is never used. Calling the metric directly
        (``metric(x, a)``, torchmetrics' forward) continues the draws like ``update``.
    noise_std, blur_sigma
        The standard deviation of ``"gaussian"`` values and the sigma of ``"blur"``.
    use_eval_mode
        Run the model in eval mode during the calls (see ``model``).
    mask_token_id
        For token inputs (integer ids ``(N, L)``, one attribution per token): the id that
        replaces a deleted token (a ``[MASK]`` id, or the padding id of a model that ignores
        padding). Integer inputs need it (they are refused without, naming this option);
        regions are then single tokens unless ``region_shape`` is given, and
        ``perturbation`` and ``value_range`` do not apply. See
        :mod:`~lit_explain.metrics._tokens`.

    Before any update :meth:`compute` is NaN and :meth:`curve` is empty. Maps holding NaN
    or infinite values are refused (``ValueError``): they have no ordering.

    Examples
    --------
    >>> m = RegionPerturbation(model, region_shape=(4, 4), steps=20)  # doctest: +SKIP
    >>> m.update(x, R)  # target None: the predicted class            # doctest: +SKIP
    >>> m.compute(), m.curve()                                        # doctest: +SKIP
    """

    higher_is_better = True
    _STATES = ("curve_sum",)

    def __init__(
        self,
        model: Callable[[Tensor], Tensor],
        region_shape: int | Sequence[int] | None = None,
        steps: int | None = None,
        regions_per_step: int = 1,
        order: str = "morf",
        perturbation: Perturbation = "zeros",
        value_range: Sequence[float] | None = None,
        softmax: bool = False,
        channel_reduce: str = "sum",
        region_reduce: str = "sum",
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
            model, region_shape, steps, softmax, channel_reduce, region_reduce, absolute,
            noise_std, blur_sigma, value_range, batch_size, seed, use_eval_mode,
            output_key=output_key, mask_token_id=mask_token_id, **kwargs,
        )  # fmt: skip
        check_choice("order", order, ORDERS)
        check_perturbation("perturbation", perturbation)
        check_positive_int("regions_per_step", regions_per_step)
        self.order = order
        self.perturbation = perturbation
        self.regions_per_step = regions_per_step

    @property
    def draws_at_random(self) -> bool:
        """Whether the curves depend on draws from the metric's generator (a random order,
        Gaussian noise): then the curves of several maps are not computed together, where
        they would share one stream of draws (see :meth:`update`'s ``curves``)."""
        return self.order == "random" or _is_gaussian(self.perturbation)

    def sample_curves(
        self, x: Tensor, attributions: Tensor, target: Tensor | int | None = None
    ) -> Tensor:
        """Per-sample curves ``(N, steps + 1)`` without touching the metric: its states and
        its generator stay as they were (a random order or Gaussian noise draws what the
        next :meth:`update` will draw)."""
        with self._draws_kept():
            return self._sample_curves(x, attributions, target)

    def _sample_curves(
        self, x: Tensor, attributions: Tensor, target: Tensor | int | None
    ) -> Tensor:
        """:meth:`sample_curves`, drawing from (and advancing) the metric's generator."""
        x_nc, grid, scores, target = self._prepare(x, attributions, target)
        steps = self.resolved_steps(grid.n_regions // self.regions_per_step)
        if steps * self.regions_per_step > grid.n_regions:
            regions = "region" if grid.n_regions == 1 else "regions"
            raise ValueError(
                f"steps={steps} x regions_per_step={self.regions_per_step} exceeds the "
                f"{grid.n_regions} {regions} of region_shape={grid.region!r} on inputs of "
                f"shape {tuple(x.shape)}; lower steps or leave it None (derived)"
            )
        generator = self.generator(x.device)
        pixel_rank = region_ranks(scores, self.order, generator)[:, grid.pixel_region(x.device)]
        counts = torch.arange(steps + 1, device=x.device) * self.regions_per_step
        replacement = self._replacement(x_nc, grid, self.perturbation)
        return self._curves(x, x_nc, replacement, pixel_rank, counts, target)

    def update(self, x: Tensor | None = None, attributions: Tensor | None = None,
               target: Tensor | int | None = None, *, curves: Tensor | None = None) -> None:
        """Add the curves of a batch; ``target=None`` explains the predicted class.

        ``curves``: per-sample curves from :meth:`sample_curves` instead of ``x`` and
        ``attributions`` (so that the curves of several maps can be computed in shared model
        calls and credited to each map's metric). :meth:`sample_curves` does not advance the
        generator: where the curves draw from it (:attr:`draws_at_random`) pass ``x`` and
        ``attributions``, so that each batch gets draws of its own."""
        if curves is None:
            curves = self._sample_curves(*_batch(x, attributions), target)
        self._add_curves({"curve_sum": curves.sum(0)}, curves.shape[0])

    def curve(self) -> Tensor:
        """Mean perturbation curve ``(steps + 1,)``, for plotting (index = step); empty
        before any update."""
        return self._mean_curve("curve_sum")

    def compute(self) -> Tensor:
        """AOPC of the mean curve (equal to the mean of the per-sample AOPCs); NaN before
        any update."""
        c = self.curve()
        if c.numel() == 0:
            return torch.tensor(math.nan, dtype=torch.float64, device=c.device)
        return (c[0] - c).mean()


class PixelFlipping(RegionPerturbation):
    """Pixel flipping: region perturbation with single-position regions.

    Bach, Binder, Montavon, Klauschen, Müller, Samek, "On pixel-wise explanations for
    non-linear classifier decisions by layer-wise relevance propagation", PLOS ONE 10(7),
    2015.

    What it measures: the score drop (AOPC) as single pixels (all channels at one position;
    single features for tabular data) are flipped in the order of the map.
    ``higher_is_better = True`` for ``order="morf"``; lower is better for ``"lerf"``. All
    other options are those of :class:`RegionPerturbation`, with ``region_shape=1``.
    """

    def __init__(self, model: Callable[[Tensor], Tensor], **kwargs: object) -> None:
        if "region_shape" in kwargs:
            raise ValueError("region_shape is fixed to 1 in PixelFlipping; use RegionPerturbation")
        super().__init__(model, region_shape=1, **kwargs)


class InsertionDeletion(RegionCurveMetric):
    """Insertion and deletion AUCs.

    Petsiuk, Das, Saenko, "RISE: Randomized input sampling for explanation of black-box
    models", BMVC 2018.

    What it measures: *deletion* replaces regions of the input, most relevant first, by
    ``deletion_baseline`` (zeros) and takes the area under the score curve — a faithful map
    makes it small (**lower is better**). *Insertion* starts from ``insertion_baseline``
    (a blurred copy) and puts the most relevant regions back first — a faithful map makes
    the area large (**higher is better**). Curves have ``steps + 1`` points over the
    fraction of regions changed, from 0 to 1 (``ceil(R / steps)`` regions per step); each
    sample's area is the trapezoid rule over its fraction, and the AUC their mean (inputs of
    different sizes have different fractions: the area under their mean curve over the
    mean fraction was neither's). Scores are softmax probabilities by
    default, as in the paper (the sigmoid of a one-output model); the model must return
    logits (``softmax=False`` for a model that returns probabilities).

    ``higher_is_better = None`` because the two numbers point in opposite directions;
    :meth:`compute` returns ``{"insertion_auc": ↑, "deletion_auc": ↓}``.

    Options are those of :class:`RegionPerturbation`; the default ``region_shape=1``
    perturbs single positions, and ``steps=None`` means ``min(100, regions)``. Token inputs
    (integer ids) need ``mask_token_id``: deletion replaces the most relevant tokens first by
    that id, insertion starts from a sequence of that id only and puts the most relevant
    tokens back first (both baselines are then that id).
    """

    higher_is_better = None
    _STATES = ("insertion_sum", "deletion_sum", "fraction_sum")

    def __init__(
        self,
        model: Callable[[Tensor], Tensor],
        region_shape: int | Sequence[int] | None = 1,
        steps: int | None = None,
        insertion_baseline: Perturbation = "blur",
        deletion_baseline: Perturbation = "zeros",
        value_range: Sequence[float] | None = None,
        softmax: bool = True,
        channel_reduce: str = "sum",
        region_reduce: str = "sum",
        absolute: bool = False,
        noise_std: float = 0.3,
        blur_sigma: float = 5.0,
        batch_size: int = 256,
        seed: int = 0,
        use_eval_mode: bool = True,
        output_key: int | str | None = None,
        mask_token_id: int | None = None,
        **kwargs: object,
    ) -> None:
        super().__init__(
            model, region_shape, steps, softmax, channel_reduce, region_reduce, absolute,
            noise_std, blur_sigma, value_range, batch_size, seed, use_eval_mode,
            output_key=output_key, mask_token_id=mask_token_id, **kwargs,
        )  # fmt: skip
        check_perturbation("insertion_baseline", insertion_baseline)
        check_perturbation("deletion_baseline", deletion_baseline)
        self.insertion_baseline = insertion_baseline
        self.deletion_baseline = deletion_baseline
        for name in _AREAS:  # the sums of the samples' areas
            self.add_state(name, default=torch.tensor(0.0, dtype=torch.float64),
                           dist_reduce_fx="sum")

    @property
    def draws_at_random(self) -> bool:
        """Whether the curves depend on draws from the metric's generator (Gaussian noise as
        a baseline): see :attr:`RegionPerturbation.draws_at_random`."""
        return _is_gaussian(self.insertion_baseline) or _is_gaussian(self.deletion_baseline)

    def sample_curves(
        self, x: Tensor, attributions: Tensor, target: Tensor | int | None = None
    ) -> dict[str, Tensor]:
        """Per-sample ``{"insertion", "deletion"}`` curves ``(N, steps + 1)`` and
        ``"fraction"``, without touching the metric (its states and generator; see
        :meth:`RegionPerturbation.sample_curves`)."""
        with self._draws_kept():
            return self._sample_curves(x, attributions, target)

    def _sample_curves(
        self, x: Tensor, attributions: Tensor, target: Tensor | int | None
    ) -> dict[str, Tensor]:
        """:meth:`sample_curves`, drawing from (and advancing) the metric's generator."""
        x_nc, grid, scores, target = self._prepare(x, attributions, target)
        n_regions = grid.n_regions
        steps = self.resolved_steps(n_regions)
        per_step = -(-n_regions // steps)
        if self.steps is None:
            self._pin("regions per step of", per_step, "steps")
        counts = (torch.arange(steps + 1, device=x.device) * per_step).clamp_max(n_regions)
        pixel_rank = region_ranks(scores, "morf", self.generator(x.device))
        pixel_rank = pixel_rank[:, grid.pixel_region(x.device)]
        deleted = self._replacement(x_nc, grid, self.deletion_baseline)
        blurred = self._replacement(x_nc, grid, self.insertion_baseline)
        return {
            "deletion": self._curves(x, x_nc, deleted, pixel_rank, counts, target),
            "insertion": self._curves(x, blurred, x_nc, pixel_rank, counts, target),
            "fraction": counts.double() / n_regions,
        }

    def update(self, x: Tensor | None = None, attributions: Tensor | None = None,
               target: Tensor | int | None = None, *,
               curves: dict[str, Tensor] | None = None) -> None:
        """Add the curves of a batch; ``target=None`` explains the predicted class.
        ``curves``: per-sample curves from :meth:`sample_curves` instead of ``x`` and
        ``attributions`` (which do not advance the generator: see
        :meth:`RegionPerturbation.update`)."""
        c = self._sample_curves(*_batch(x, attributions), target) if curves is None else curves
        n = c["deletion"].shape[0]
        self._add_curves({"insertion_sum": c["insertion"].sum(0),
                          "deletion_sum": c["deletion"].sum(0),
                          "fraction_sum": c["fraction"] * n}, n)
        for curve, name in zip(("insertion", "deletion"), _AREAS, strict=True):
            area = getattr(self, name)
            area += torch.trapezoid(c[curve].double(), c["fraction"].double()).sum().to(area)

    def curves(self) -> dict[str, Tensor]:
        """Mean ``{"insertion", "deletion", "fraction"}`` curves ``(steps + 1,)`` for
        plotting (of inputs of different sizes: over their mean fraction); empty before any
        update."""
        return {name.removesuffix("_sum"): self._mean_curve(name) for name in self._STATES}

    def compute(self) -> dict[str, Tensor]:
        """``{"insertion_auc", "deletion_auc"}``: the mean of the samples' trapezoid areas;
        NaN before any update."""
        count = self.count.to(self.insertion_area.device)
        return {f"{name.removesuffix('_area')}_auc": getattr(self, name) / count
                for name in _AREAS}  # (0 / 0: NaN before any update)


#: InsertionDeletion's states of summed areas.
_AREAS = ("insertion_area", "deletion_area")


def _is_gaussian(perturbation: object) -> bool:
    return isinstance(perturbation, str) and perturbation == "gaussian"
