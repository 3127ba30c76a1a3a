"""iNNvestigate's perturbation tools on tensors: ``Perturbation`` and ``PerturbationAnalysis``.

The options and method names are those of ``innvestigate.tools.perturbate`` (1.x), run on
``(N, C, H, W)`` or ``(N, C, L)`` tensors on any device. Where iNNvestigate's behaviour is a
bug, we follow the evident intent and say so:

- padding is ``(-size) % region`` per axis (iNNvestigate pads a whole extra region on an
  axis that already divides, then fails its own assertion);
- ``value_range`` clips the replaced values only (iNNvestigate clips the whole image
  once any region is replaced);
- step ``s`` of :meth:`PerturbationAnalysis.compute_perturbation_analysis` perturbs
  ``s * regions_per_step`` regions (iNNvestigate perturbs ``1 + (s-1) * regions_per_step``);
- ties in the region ordering go to the region that comes first (numpy's unstable sort
  decides arbitrarily);
- ``"gaussian"`` draws from a generator seeded by ``seed``, not from the global RNG.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from ..analyzers.forward import OutputSelector
from ._common import (
    RegionGrid,
    as_tuple,
    check_bool,
    check_choice,
    check_finite_map,
    check_positive_int,
    check_seed,
    eval_mode,
    make_generator,
    ranking_dtype,
)
from ._curves import check_value_range, region_ranks

__all__ = ["Perturbation", "PerturbationAnalysis"]

_PAD_MODES = {"reflect": "reflect", "edge": "replicate", "replicate": "replicate",
              "wrap": "circular", "circular": "circular", "constant": "constant"}  # fmt: skip
_REDUCE = {"mean": torch.mean, "sum": torch.sum, "max": torch.amax}


def _region_mean(blocks: Tensor) -> Tensor:
    dims = tuple(range(3, blocks.dim()))
    return blocks.mean(dims, keepdim=True)


class Perturbation:
    """Perturbation of the regions of an input, ranked by an analysis (iNNvestigate's).

    Parameters
    ----------
    perturbation_function
        ``"zeros"``, ``"gaussian"`` (values from N(0, 0.3)), ``"mean"`` (each region becomes
        its per-channel mean), ``"invert"`` (``-x``), or a callable that receives the padded
        input cut into regions, ``(N, C, n_regions, *region_shape)``, and returns values that
        broadcast to it (iNNvestigate calls its function once per region and channel).
    num_perturbed_regions
        How many of the top-ranked regions :meth:`perturbate_on_batch` replaces.
    region_shape
        Region size, ``(h, w)`` for images or ``(l,)`` for sequences (an int for all dims).
    reduce_function
        Reduction of the analysis over channels: ``"mean"``, ``"sum"``, ``"max"`` or a
        callable ``f(t, dim=1, keepdim=True)`` such as ``torch.mean``.
    aggregation_function
        Aggregation of the analysis over each region: ``"mean"``, ``"sum"``, ``"max"`` or a
        callable ``f(t, dim=-1)`` over the region's flattened positions.
    pad_mode
        Padding when the size is not a multiple of the region: ``"reflect"``, ``"edge"``,
        ``"wrap"``, ``"constant"`` (numpy names) or the torch equivalents.
    in_place
        Write the result into the given ``x``.
    value_range
        ``(min, max)`` to clip replaced values to.
    seed
        Seed of the generator used by ``"gaussian"``.
    """

    def __init__(
        self,
        perturbation_function: str | Callable[[Tensor], Tensor],
        num_perturbed_regions: int = 0,
        region_shape: int | Sequence[int] = (9, 9),
        reduce_function: str | Callable[..., Tensor] = "mean",
        aggregation_function: str | Callable[..., Tensor] = "mean",
        pad_mode: str = "reflect",
        in_place: bool = False,
        value_range: Sequence[float] | None = None,
        seed: int = 0,
    ) -> None:
        builtin = {"zeros": torch.zeros_like, "mean": _region_mean, "invert": torch.neg,
                   "gaussian": self._gaussian}  # fmt: skip
        if isinstance(perturbation_function, str):
            check_choice("perturbation_function", perturbation_function, list(builtin))
            self.perturbation_function = builtin[perturbation_function]
        elif callable(perturbation_function):
            self.perturbation_function = perturbation_function
        else:
            raise ValueError(
                f"perturbation_function={perturbation_function!r} is not valid; "
                f"choose one of {list(builtin)} or a callable"
            )
        for name, fn in (("reduce_function", reduce_function),
                         ("aggregation_function", aggregation_function)):  # fmt: skip
            if isinstance(fn, str):
                check_choice(name, fn, list(_REDUCE))
            elif not callable(fn):
                raise ValueError(f"{name}={fn!r} is not valid; use {list(_REDUCE)} or a callable")
        check_choice("pad_mode", pad_mode, list(_PAD_MODES))
        if (isinstance(num_perturbed_regions, bool) or not isinstance(num_perturbed_regions, int)
                or num_perturbed_regions < 0):
            raise ValueError(f"num_perturbed_regions={num_perturbed_regions!r} is not valid; "
                             f"expected an integer >= 0")
        many = isinstance(region_shape, Sequence) and not isinstance(region_shape, str)
        as_tuple(region_shape, max(1, len(region_shape)) if many else 1, "region_shape")
        check_bool("in_place", in_place)
        check_seed(seed)
        self.num_perturbed_regions = num_perturbed_regions
        self.region_shape = region_shape
        self.reduce_function = _REDUCE.get(reduce_function, reduce_function)
        self.aggregation_function = _REDUCE.get(aggregation_function, aggregation_function)
        self.pad_mode = pad_mode
        self.in_place = in_place
        self.value_range = check_value_range(value_range)
        self.seed = seed
        self._generator: torch.Generator | None = None

    def _gaussian(self, blocks: Tensor) -> Tensor:
        if self._generator is None or self._generator.device != blocks.device:
            self._generator = make_generator(self.seed, blocks.device)
        noise = torch.randn(blocks.shape, generator=self._generator, device=blocks.device)
        return noise.to(blocks.dtype) * 0.3

    def _grid(self, t: Tensor) -> RegionGrid:
        if t.dim() not in (3, 4):
            raise ValueError(f"expected (N, C, L) or (N, C, H, W); got shape {tuple(t.shape)}")
        grid = RegionGrid(
            tuple(t.shape[2:]), as_tuple(self.region_shape, t.dim() - 2, "region_shape")
        )
        if _PAD_MODES[self.pad_mode] == "reflect" and any(
                max(pad) >= size for pad, size in zip(grid.padding, grid.spatial, strict=True)):
            raise ValueError(
                f"region_shape={self.region_shape!r} with pad_mode='reflect' needs padding "
                f"{grid.padding} that reflect cannot make on inputs of spatial shape "
                f"{grid.spatial} (each side's padding must be smaller than the size); use a "
                f"smaller region_shape or pad_mode='edge', 'wrap' or 'constant'")
        return grid

    def pad(self, analysis: Tensor) -> tuple[Tensor, tuple[int, ...]]:
        """Pad to a multiple of the region shape; returns ``(padded, padding before)``."""
        grid = self._grid(analysis)
        padded = grid.pad(analysis, _PAD_MODES[self.pad_mode])
        return padded, tuple(before for before, _ in grid.padding)

    def reshape_to_regions(self, analysis: Tensor) -> Tensor:
        """Padded ``(N, C, H, W)`` → ``(N, C, H/h, h, W/w, w)`` (iNNvestigate's layout)."""
        n, c, *size = analysis.shape
        region = as_tuple(self.region_shape, len(size), "region_shape")
        shape = [n, c]
        for s, r in zip(size, region, strict=True):
            shape += [s // r, r]
        return analysis.reshape(shape)

    def aggregate_regions(self, analysis: Tensor) -> Tensor:
        """Padded map ``(N, 1, H, W)`` → one value per region ``(N, 1, H/h, W/w)``."""
        regions = self.reshape_to_regions(analysis)
        dims = list(range(3, regions.dim(), 2))
        grid_dims = list(range(2, regions.dim(), 2))
        flat = regions.permute(0, 1, *grid_dims, *dims).flatten(2 + len(dims))
        return self.aggregation_function(flat, dim=-1)

    @staticmethod
    def compute_region_ordering(aggregated_regions: Tensor) -> Tensor:
        """Rank of each region, 0 for the highest score, same shape as the input."""
        flat = aggregated_regions.flatten(2)
        ranks = region_ranks(flat.flatten(0, 1), "morf", None).view_as(flat)
        return ranks.view_as(aggregated_regions)

    @staticmethod
    def compute_perturbation_mask(ranks: Tensor, num_perturbated_regions: int) -> Tensor:
        """True for the ``num_perturbated_regions`` top-ranked regions."""
        return ranks <= num_perturbated_regions - 1

    def expand_regions_to_pixels(self, regions: Tensor) -> Tensor:
        """``(N, C, H/h, W/w)`` → ``(N, C, H/h, h, W/w, w)`` by repetition."""
        region = as_tuple(self.region_shape, regions.dim() - 2, "region_shape")
        out = regions
        for axis, r in enumerate(region):
            out = out.unsqueeze(3 + 2 * axis).repeat_interleave(r, dim=3 + 2 * axis)
        return out

    def reshape_region_pixels(self, region_pixels: Tensor, target_shape: Sequence[int]) -> Tensor:
        """``(N, C, H/h, h, W/w, w)`` → ``target_shape``."""
        return region_pixels.reshape(tuple(target_shape))

    def perturbate_regions(self, x: Tensor, perturbation_mask_regions: Tensor) -> Tensor:
        """Replace the masked regions of a padded ``x``; the mask is ``(N, 1, H/h, W/w)``."""
        grid = RegionGrid(
            tuple(x.shape[2:]), as_tuple(self.region_shape, x.dim() - 2, "region_shape")
        )
        blocks = grid.to_blocks(x)
        replaced = torch.broadcast_to(self.perturbation_function(blocks), blocks.shape)
        if self.value_range is not None:
            replaced = replaced.clamp(*self.value_range)
        mask = self.expand_regions_to_pixels(perturbation_mask_regions)
        mask = self.reshape_region_pixels(mask, (x.shape[0], 1, *x.shape[2:]))
        return torch.where(mask, grid.from_blocks(replaced), x)

    @torch.no_grad()
    def perturbate_on_batch(self, x: Tensor, analysis: Tensor) -> Tensor:
        """Replace the ``num_perturbed_regions`` most relevant regions of each sample.

        ``x`` and ``analysis`` are ``(N, C, H, W)`` (or ``(N, C, L)``) of the same shape.
        """
        if analysis.shape != x.shape:
            raise ValueError(
                f"analysis {tuple(analysis.shape)} must have x's shape {tuple(x.shape)}"
            )
        check_finite_map("Perturbation", analysis, "analysis")
        grid = self._grid(x)
        a = self.reduce_function(analysis.to(x.device, ranking_dtype(analysis)), dim=1,
                                 keepdim=True)
        a_pad, _ = self.pad(a)
        x_pad, _ = self.pad(x)
        ranks = self.compute_region_ordering(self.aggregate_regions(a_pad))
        mask = self.compute_perturbation_mask(ranks, self.num_perturbed_regions)
        out = grid.crop(self.perturbate_regions(x_pad, mask))
        if self.in_place:
            x.copy_(out)
            return x
        return out


def _labels(logits: Tensor, y: Tensor) -> Tensor:
    """Labels as class indices ``(N,)`` or as rows ``(N, C)`` (one-hot or probabilities).

    Accepted: ``(N,)``, ``(N, 1)`` (squeezed) and ``(N, C)`` with the logits' ``C``;
    anything else raises ``ValueError`` naming both shapes.
    """
    n, classes = logits.shape[0], logits.shape[-1]
    if y.dim() == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.shape[0] != n or not (y.dim() == 1 or (y.dim() == 2 and y.shape[1] == classes)):
        raise ValueError(
            f"labels y of shape {tuple(y.shape)} do not fit logits of shape "
            f"{tuple(logits.shape)}: expected class indices ({n},) or ({n}, 1), or one-hot / "
            f"probability rows ({n}, {classes})")
    return y


def _accuracy(logits: Tensor, y: Tensor) -> Tensor:
    y = _labels(logits, y)
    return (logits.argmax(1) == (y.argmax(1) if y.dim() == 2 else y)).double()


def _cross_entropy(logits: Tensor, y: Tensor) -> Tensor:
    y = _labels(logits, y)
    y = y.double() if y.dim() == 2 else y.long()
    return F.cross_entropy(logits.double(), y, reduction="none")


class PerturbationAnalysis:
    """Perturbation analysis: the model's score as more and more regions are perturbed.

    iNNvestigate's ``PerturbationAnalysis`` (Samek et al. 2017) on tensors.

    Parameters
    ----------
    analyzer
        An object with ``analyze(x)`` (a lit_explain analyzer) or a callable ``x -> map``.
    model
        Callable returning logits; evaluated under ``torch.no_grad()`` in eval mode (each
        module's flag restored after).
    generator
        Iterable of ``(x, y)`` or ``(x, y, analysis)`` batches (a list, a DataLoader).
    perturbation
        A :class:`Perturbation`.
    steps
        Number of perturbation steps.
    regions_per_step
        Regions perturbed per step.
    recompute_analysis
        Recompute the analysis on the perturbed input at each step (otherwise it is
        computed once, up front, as in iNNvestigate).
    verbose
        Print progress and timing.
    score
        ``"accuracy"`` (Keras' metric), ``"cross_entropy"`` or a callable
        ``(logits, y) -> per-sample scores``. The built-in scores take labels ``y`` as
        class indices ``(N,)`` or ``(N, 1)``, or as one-hot / probability rows ``(N, C)``
        (accuracy compares their argmax); other shapes are refused.
    output_key
        For a model returning a tuple (an index) or a mapping (a key): the logits. ``None``:
        the first tensor of a tuple, ``"logits"`` of a mapping.
    """

    def __init__(
        self,
        analyzer: object,
        model: Callable[[Tensor], Tensor],
        generator: Iterable[Sequence[Tensor]],
        perturbation: Perturbation,
        steps: int = 1,
        regions_per_step: int = 1,
        recompute_analysis: bool = False,
        verbose: bool = False,
        score: str | Callable[[Tensor, Tensor], Tensor] = "accuracy",
        output_key: int | str | None = None,
    ) -> None:
        scores = {"accuracy": _accuracy, "cross_entropy": _cross_entropy}
        if isinstance(score, str):
            check_choice("score", score, list(scores))
        self.score = scores.get(score, score)
        if not isinstance(perturbation, Perturbation):
            raise ValueError(f"perturbation={perturbation!r} is not valid; pass a Perturbation")
        check_positive_int("steps", steps)
        check_positive_int("regions_per_step", regions_per_step)
        check_bool("recompute_analysis", recompute_analysis)
        check_bool("verbose", verbose)
        self.analyzer = analyzer
        self.model = OutputSelector(model, output_key)
        self.generator = generator
        self.perturbation = perturbation
        self.steps = steps
        self.regions_per_step = regions_per_step
        self.recompute_analysis = recompute_analysis
        self.verbose = verbose
        if not recompute_analysis:
            self.analysis_generator = [
                (b[0], b[1], b[2] if len(b) > 2 else self._analyze(b[0])) for b in generator
            ]

    def _analyze(self, x: Tensor) -> Tensor:
        analyze = getattr(self.analyzer, "analyze", self.analyzer)
        if not callable(analyze):
            raise ValueError(
                "analyzer must have analyze(x) or be callable when analyses are needed"
            )
        return analyze(x).detach()

    def compute_on_batch(
        self, x: Tensor, analysis: Tensor | None = None, return_analysis: bool = False
    ) -> Tensor | tuple[Tensor, Tensor]:
        """Perturb ``x`` by its analysis (computed when ``None``)."""
        if analysis is None:
            analysis = self._analyze(x)
        x_perturbed = self.perturbation.perturbate_on_batch(x, analysis)
        return (x_perturbed, analysis) if return_analysis else x_perturbed

    @torch.no_grad()
    def _score(self, x: Tensor, y: Tensor) -> float:
        with eval_mode(self.model):
            return float(self.score(self.model(x), y.to(x.device)).double().mean())

    def evaluate_on_batch(
        self, x: Tensor, y: Tensor, analysis: Tensor | None = None, sample_weight: None = None
    ) -> float:
        """Perturb the batch and score the model on it (mean over the batch)."""
        if sample_weight is not None:
            raise NotImplementedError("sample_weight is not supported")
        return self._score(self.compute_on_batch(x, analysis), y)

    def evaluate_generator(self, generator: Iterable[Sequence[Tensor]]) -> float:
        """Batch-size-weighted mean of :meth:`evaluate_on_batch` over the batches."""
        total, n = 0.0, 0
        for batch in generator:
            x, y = batch[0], batch[1]
            analysis = batch[2] if len(batch) > 2 else None
            total += self.evaluate_on_batch(x, y, analysis) * x.shape[0]
            n += x.shape[0]
        return total / max(n, 1)

    def compute_perturbation_analysis(self) -> list[float]:
        """Scores on the original data, then after each of the ``steps`` steps.

        Without ``recompute_analysis`` step ``s`` perturbs the ``s * regions_per_step``
        top regions of the original analysis. With it, each step analyzes the input of the
        previous step and perturbs its ``regions_per_step`` top regions (which may include
        regions perturbed before: the new analysis decides).
        """
        if self.recompute_analysis:
            return self._recomputed()
        batches = self.analysis_generator
        scores = [sum(self._score(b[0], b[1]) * b[0].shape[0] for b in batches)
                  / max(1, sum(b[0].shape[0] for b in batches))]  # fmt: skip
        saved = self.perturbation.num_perturbed_regions
        start = time.time()
        try:
            for step in range(1, self.steps + 1):
                self.perturbation.num_perturbed_regions = step * self.regions_per_step
                tic = time.time()
                scores.append(self.evaluate_generator(batches))
                if self.verbose:
                    print(f"Step {step} of {self.steps}: {step * self.regions_per_step} regions "
                          f"perturbed, {time.time() - tic:.3f} s")  # fmt: skip
        finally:
            self.perturbation.num_perturbed_regions = saved
        if self.verbose:
            print(f"Time elapsed for {self.steps} steps: {time.time() - start:.3f} s")
        return scores

    def _recomputed(self) -> list[float]:
        totals = [0.0] * (self.steps + 1)
        n = 0
        saved = self.perturbation.num_perturbed_regions
        self.perturbation.num_perturbed_regions = self.regions_per_step
        try:
            for batch in self.generator:
                x, y = batch[0], batch[1]
                totals[0] += self._score(x, y) * x.shape[0]
                for step in range(1, self.steps + 1):
                    x = self.compute_on_batch(x)
                    totals[step] += self._score(x, y) * x.shape[0]
                n += batch[0].shape[0]
        finally:
            self.perturbation.num_perturbed_regions = saved
        return [t / max(n, 1) for t in totals]
