"""Replacement values and batched perturbation curves shared by the perturbation metrics."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from torchmetrics import Metric

from ..analyzers.forward import OutputSelector
from ._common import (
    RegionGrid,
    as_nc,
    as_tuple,
    check_bool,
    check_choice,
    check_finite_map,
    check_number,
    check_positive_int,
    check_seed,
    eval_mode,
    forward_scores,
    gaussian_blur,
    make_generator,
    match_attributions,
    normalize_target,
    ranking_dtype,
    reduce_channels,
)
from ._tokens import check_mask_token_id, is_token_input, token_replacement

PERTURBATIONS = ("zeros", "mean", "gaussian", "invert", "blur")
ORDERS = ("morf", "lerf", "random")
REDUCTIONS = ("sum", "mean", "max")

Perturbation = str | float | Callable[[Tensor], Tensor]

#: Inputs with at least this many values (channels x positions) are perturbed a sample at
#: a time within a batch (see :func:`perturbation_curves`).
PER_SAMPLE_FROM = 1024
#: ``steps=None``: at most this many steps, fewer when the input has fewer regions.
MAX_DEFAULT_STEPS = 100
#: ``region_shape=None``: at most about this many regions (16 x 16 on images, 256 along a
#: sequence or a feature vector, 6 x 6 x 6 on volumes).
MAX_DEFAULT_REGIONS = 256


def default_region_shape(spatial: Sequence[int]) -> tuple[int, ...]:
    """The region size ``region_shape=None`` means for a spatial shape.

    Each of the ``d`` spatial dimensions is cut into at most ``floor(256 ** (1/d))`` parts
    (16 for images), so that the grid has at most :data:`MAX_DEFAULT_REGIONS` regions and
    small inputs keep one position per region: 8 x 8 -> 1 x 1 (64 regions), 32 x 32 -> 2 x 2
    (256), 224 x 224 -> 14 x 14 (256), 10 features -> 1 (10).
    """
    if not spatial:
        return ()
    parts = max(1, int(MAX_DEFAULT_REGIONS ** (1 / len(spatial)) + 1e-9))
    return tuple(max(1, -(-int(s) // parts)) for s in spatial)


def check_perturbation(name: str, value: object) -> None:
    """Accept a known name, a finite number (a constant baseline) or a callable."""
    if isinstance(value, str):
        check_choice(name, value, PERTURBATIONS)
    elif not (callable(value) or (isinstance(value, int | float) and not isinstance(value, bool)
                                  and math.isfinite(value))):
        raise ValueError(
            f"{name}={value!r} is not valid; choose one of {list(PERTURBATIONS)}, "
            "a finite number or a callable"
        )


def check_value_range(value_range: Sequence[float] | None) -> tuple[float, float] | None:
    """``None`` or ``(min, max)``: two finite numbers with ``min < max``."""
    if value_range is None:
        return None
    message = (f"value_range={value_range!r} is not valid; expected (min, max), two finite "
               f"numbers with min < max, or None")
    pair = isinstance(value_range, Sequence) and not isinstance(value_range, str)
    if not pair or len(value_range) != 2:
        raise ValueError(message)
    for v in value_range:
        try:
            check_number("value_range", v)
        except ValueError:
            raise ValueError(message) from None
    lo, hi = (float(v) for v in value_range)
    if not lo < hi:
        raise ValueError(message)
    return lo, hi


def _same_points(points: Tensor) -> Tensor:
    """``dist_reduce_fx`` of the ``points`` state: the curve length all updated metrics
    share (0 counts as "no update yet"); metrics with curves of other lengths are refused."""
    seen = points[points > 0].unique()
    if seen.numel() > 1:
        raise ValueError(
            f"cannot merge curves of {sorted(int(p) - 1 for p in seen)} steps; metrics whose "
            f"curves add up need the same steps (set steps= explicitly)")
    return seen[0] if seen.numel() else points.new_zeros(())


def replacement_values(
    x_nc: Tensor,
    grid: RegionGrid,
    perturbation: Perturbation,
    generator: torch.Generator,
    noise_std: float,
    blur_sigma: float,
    value_range: tuple[float, float] | None,
) -> Tensor:
    """What every position of ``x_nc`` ``(N, C, *S)`` becomes once its region is perturbed.

    ``"zeros"``: 0. ``"mean"``: the sample's per-channel mean. ``"gaussian"``: a draw from
    N(0, ``noise_std``) (iNNvestigate's choice). ``"invert"``: ``lo + hi - x`` within
    ``value_range``, ``-x`` without one. ``"blur"``: a Gaussian blur of the input with
    ``blur_sigma``. A number: that constant. A callable gets the input cut into regions,
    ``(N, C, n_regions, *region_shape)`` (replicate-padded), and returns values that
    broadcast to that shape (``lambda b: b.mean((-2, -1), keepdim=True)`` is a region mean).
    The result is clipped to ``value_range`` when given.
    """
    if isinstance(perturbation, int | float) and not isinstance(perturbation, bool):
        out = torch.full_like(x_nc, float(perturbation))
    elif perturbation == "zeros":
        out = torch.zeros_like(x_nc)
    elif perturbation == "mean":
        dims = tuple(range(2, x_nc.dim()))
        out = x_nc.mean(dims, keepdim=True).expand_as(x_nc)
    elif perturbation == "gaussian":
        noise = torch.randn(x_nc.shape, generator=generator, device=x_nc.device)
        out = noise.to(x_nc.dtype) * noise_std
    elif perturbation == "invert":
        out = (value_range[0] + value_range[1] - x_nc) if value_range else -x_nc
    elif perturbation == "blur":
        out = gaussian_blur(x_nc, blur_sigma)
    else:
        blocks = grid.to_blocks(grid.pad(x_nc, "replicate"))
        out = grid.from_blocks(torch.broadcast_to(perturbation(blocks), blocks.shape))
    if value_range is not None:
        out = out.clamp(*value_range)
    return out


def region_ranks(scores: Tensor, order: str, generator: torch.Generator) -> Tensor:
    """Rank of every region, ``(N, R)``: 0 is perturbed first.

    ``"morf"``: highest score first; ``"lerf"``: lowest first; ties go to the region that
    comes first in row-major order. ``"random"``: a random permutation per sample.
    """
    if order == "random":
        keys = torch.rand(scores.shape, generator=generator, device=scores.device)
        perm = keys.argsort(1)
    else:
        perm = scores.sort(dim=1, descending=order == "morf", stable=True).indices
    ranks = torch.empty_like(perm)
    positions = torch.arange(perm.shape[1], device=perm.device).expand_as(perm)
    return ranks.scatter_(1, perm, positions)


@torch.no_grad()
def perturbation_curves(
    model: Callable[[Tensor], Tensor],
    x: Tensor,
    source: Tensor,
    replacement: Tensor,
    pixel_rank: Tensor,
    counts: Tensor,
    target: Tensor | None,
    softmax: bool,
    batch_size: int,
) -> Tensor:
    """Model scores while more and more regions switch from ``source`` to ``replacement``.

    ``pixel_rank`` ``(N, P)`` is the rank of each position's region and ``counts`` ``(K,)``
    the number of regions switched at each point; returns ``(N, K)`` scores of ``target``.
    Inputs are built ``batch_size`` at a time, so memory stays bounded.
    """
    n, k = x.shape[0], counts.numel()
    shape = source.shape[1:]
    total = n * k
    out = torch.empty(total, dtype=torch.float64, device=x.device)
    # large inputs: each sample's rows made from its own input and ranks (a few samples per
    # batch), not from gathered copies of them (on 3 x 224 x 224 inputs 2.4x faster)
    per_sample = shape.numel() >= PER_SAMPLE_FROM
    dtype = torch.result_type(replacement, source)
    for start in range(0, total, batch_size):
        stop = min(start + batch_size, total)
        idx = torch.arange(start, stop, device=x.device)
        i, step = idx // k, idx % k
        if per_sample:
            xb = torch.empty((stop - start, *shape), dtype=dtype, device=x.device)
            for s in range(start // k, (stop - 1) // k + 1):
                a, b = max(start, s * k), min(stop, (s + 1) * k)  # sample s's rows
                mask = (pixel_rank[s] < counts[a - s * k : b - s * k].unsqueeze(1))
                torch.where(mask.view(-1, 1, *shape[1:]), replacement[s], source[s],
                            out=xb[a - start : b - start])
        else:
            mask = (pixel_rank[i] < counts[step].unsqueeze(1)).view(-1, 1, *shape[1:])
            xb = torch.where(mask, replacement[i], source[i])
        xb = xb.reshape(-1, *x.shape[1:])
        out[idx], _ = forward_scores(model, xb, None if target is None else target[i], softmax)
    if not bool(torch.isfinite(out).all()):  # a NaN would make the whole AOPC/AUC NaN
        bad = int((~torch.isfinite(out)).sum())
        raise FloatingPointError(
            f"the model's score is NaN or infinite on {bad} of {total} perturbed inputs: it "
            f"cannot read some of them (with token inputs, often a sequence of mask_token_id "
            f"only, such as all padding under a key padding mask that then masks every key)")
    return out.view(n, k)


class RegionCurveMetric(Metric):
    """Base of the perturbation-curve metrics: options, generator, ordering, model calls.

    Subclasses name their curve states in ``_STATES``. Every state exists from construction
    on, so an un-updated metric merges (``merge_state``, DDP, ``forward``) like any other:
    with ``steps=None`` the curves are kept at their largest length (``MAX_DEFAULT_STEPS +
    1``) and the ``points`` state holds how many of them the inputs use (0 before the first
    update; metrics whose curves differ in length refuse to merge).
    """

    full_state_update = False
    is_differentiable = False
    _STATES: tuple[str, ...] = ()

    def __init__(
        self,
        model: Callable[[Tensor], Tensor],
        region_shape: int | Sequence[int] | None,
        steps: int | None,
        softmax: bool,
        channel_reduce: str,
        region_reduce: str,
        absolute: bool,
        noise_std: float,
        blur_sigma: float,
        value_range: Sequence[float] | None,
        batch_size: int,
        seed: int,
        use_eval_mode: bool,
        *,
        output_key: int | str | None = None,
        mask_token_id: int | None = None,
        **kwargs: object,
    ) -> None:
        super().__init__(**kwargs)
        self.mask_token_id = check_mask_token_id(mask_token_id)
        if not callable(model):
            raise ValueError(f"model={model!r} is not valid; pass a callable returning logits")
        if output_key is not None and not isinstance(output_key, (int, str)):
            raise TypeError(f"output_key={output_key!r} is not valid; expected a tuple index "
                            f"(int), a mapping key (str) or None")
        if steps is not None and (isinstance(steps, bool) or not isinstance(steps, int)
                                  or steps < 1):
            raise ValueError(f"steps={steps!r} is not valid; use a positive int or None "
                             f"(derived from the input)")
        check_positive_int("batch_size", batch_size)
        for name, flag in (("softmax", softmax), ("absolute", absolute),
                           ("use_eval_mode", use_eval_mode)):
            check_bool(name, flag)
        check_choice("channel_reduce", channel_reduce, REDUCTIONS)
        check_choice("region_reduce", region_reduce, REDUCTIONS)
        check_number("noise_std", noise_std, at_least=0)
        check_number("blur_sigma", blur_sigma)
        if blur_sigma <= 0:
            raise ValueError(f"blur_sigma={blur_sigma!r} is not valid; expected a finite "
                             f"number > 0 (the blur's standard deviation, in positions)")
        check_seed(seed)
        if region_shape is not None:
            many = isinstance(region_shape, Sequence) and not isinstance(region_shape, str)
            as_tuple(region_shape, max(1, len(region_shape)) if many else 1, "region_shape")
        # Kept out of the module tree: metric.to()/.train()/state_dict() leave the model alone.
        self.__dict__["model"] = OutputSelector(model, output_key)
        self.region_shape = region_shape
        self.steps = steps
        self.softmax = softmax
        self.channel_reduce = channel_reduce
        self.region_reduce = region_reduce
        self.absolute = absolute
        self.noise_std = float(noise_std)
        self.blur_sigma = float(blur_sigma)
        self.value_range = check_value_range(value_range)
        self.batch_size = batch_size
        self.seed = seed
        self.use_eval_mode = use_eval_mode
        self._generator: torch.Generator | None = None
        #: What the first update derived from its input (``region_shape=None``'s region,
        #: insertion/deletion's regions per step), fixed until :meth:`reset`.
        self._derived: dict[str, object] = {}
        self._in_forward = False
        self.add_state("count", default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")
        if self._STATES:
            self.add_state("points", default=torch.tensor(0, dtype=torch.long),
                           dist_reduce_fx=_same_points)
            size = (MAX_DEFAULT_STEPS if steps is None else steps) + 1
            for name in self._STATES:
                self.add_state(name, default=torch.zeros(size, dtype=torch.float64),
                               dist_reduce_fx="sum")

    @property
    def _points(self) -> int | None:
        """Points per curve, ``None`` while unknown (``steps=None`` before the first update)
        or without curves (faithfulness correlation)."""
        if not self._STATES:
            return None
        return int(self.points) or (None if self.steps is None else self.steps + 1)

    def resolved_steps(self, available: int) -> int:
        """``steps``, or for ``steps=None`` ``min(100, available)`` (at least 1)."""
        if self.steps is not None:
            return self.steps
        return max(1, min(MAX_DEFAULT_STEPS, available))

    def _add_curves(self, curves: dict[str, Tensor], n: int) -> None:
        """Add summed curves ``{state: (points,)}`` of ``n`` samples to the states.

        With ``steps=None`` the length is fixed by the first update (until :meth:`reset`);
        curves of another length are refused rather than mixed in.
        """
        points = next(iter(curves.values())).numel()
        expected = self._points
        if expected is not None and points != expected:
            raise ValueError(
                f"inputs of this shape need {points - 1} steps, but the metric's curve has "
                f"{expected - 1} (from earlier inputs); set steps= to compare inputs of "
                f"different shapes")
        if points > getattr(self, self._STATES[0]).numel():
            raise ValueError(f"curves of {points - 1} steps are longer than steps=None allows "
                             f"({MAX_DEFAULT_STEPS}); set steps= explicitly")
        self.points = torch.tensor(points, dtype=torch.long, device=self.points.device)
        for name, total in curves.items():
            state = getattr(self, name)
            state[:points] += total.to(state)
        self.count += n

    def merge_state(self, incoming_state: dict[str, Any] | Metric) -> None:
        """torchmetrics' merge, also of a metric whose curve states have another size
        (``steps=10`` keeps 11 points, ``steps=None`` 101) where the curves have one length
        (they raised torch's bare size error); curves of other lengths are refused."""
        if self._STATES and (type(incoming_state) is type(self) or isinstance(
                incoming_state, dict)):
            state = dict(incoming_state.metric_state if isinstance(incoming_state, Metric)
                         else incoming_state)
            points = int(state.get("points", 0))
            _same_points(torch.tensor([points, int(self.points)]))
            derived = getattr(incoming_state, "_derived", {})
            for name, value in derived.items():
                if self._derived.get(name, value) != value:
                    raise ValueError(
                        f"cannot merge curves made with {name} {value!r} into a metric whose "
                        f"curves have {self._derived[name]!r} (each derived from its first "
                        f"input); give both the options explicitly")
            self._derived = {**derived, **self._derived}
            for name in self._STATES:
                theirs, size = state[name], getattr(self, name).numel()
                if theirs.numel() != size:
                    if points > size:
                        raise ValueError(
                            f"cannot merge curves of {points - 1} steps into a metric whose "
                            f"curves hold at most {size - 1}; give both the same steps=")
                    state[name] = F.pad(theirs[:size], (0, max(0, size - theirs.numel())))
            incoming_state = state
        super().merge_state(incoming_state)

    def _mean_curve(self, name: str) -> Tensor:
        """A curve state divided by the count; empty before any update."""
        state = getattr(self, name)
        if int(self.count) == 0:
            return state[:0]
        return state[: int(self.points)] / self.count.to(state.device)

    def generator(self, device: torch.device) -> torch.Generator:
        """The metric's own generator, seeded from ``seed`` on first use after a reset."""
        if self._generator is None or self._generator.device != device:
            self._generator = make_generator(self.seed, device)
        return self._generator

    def _pin(self, name: str, value: object, option: str) -> None:
        """Fix ``value``, what ``name`` is for this input where ``option`` is ``None``: the
        first update's holds until :meth:`reset`, and an input that needs another is refused
        (its curves would add up with the others' but mean something else)."""
        held = self._derived.setdefault(name, value)
        if held != value:
            raise ValueError(
                f"{type(self).__name__}: inputs of this shape need {name} {value!r}, but the "
                f"metric derived {held!r} from its first input ({option}=None); set {option}= "
                f"to compare inputs of different shapes, or reset() the metric")

    @contextlib.contextmanager
    def _draws_kept(self) -> Iterator[None]:
        """Leave the metric's generator, and what it derived from inputs, as they were: what
        runs inside draws what the next ``update`` will draw (the per-sample ``sample_*``
        methods do not change the metric)."""
        kept, derived = self._generator, dict(self._derived)
        state = None if kept is None else kept.get_state()
        try:
            yield
        finally:
            if kept is not None:
                kept.set_state(state)
            self._generator, self._derived = kept, derived

    def reset(self) -> None:
        """Reset the states and re-seed, so every epoch sees the same random draws."""
        super().reset()
        if not self._in_forward:
            self._generator = None
            self._derived = {}

    def forward(self, *args: object, **kwargs: object) -> object:
        """torchmetrics' forward: ``update`` and the batch's own value. Its internal reset
        does not re-seed: the random draws continue as with ``update``."""
        self._in_forward = True
        try:
            return super().forward(*args, **kwargs)
        finally:
            self._in_forward = False

    def _prepare(
        self, x: Tensor, attributions: Tensor, target: Tensor | int | None
    ) -> tuple[Tensor, RegionGrid, Tensor, Tensor | None]:
        """``(x_nc, grid, region scores (N, R), target)`` with the target resolved."""
        x_nc = as_nc(x)
        if x_nc.shape[0] == 0:
            raise ValueError(f"{type(self).__name__}: x of shape {tuple(x.shape)} holds no "
                             f"samples; pass a batch of at least one sample")
        check_finite_map(type(self).__name__, attributions)
        spatial = tuple(x_nc.shape[2:])
        tokens = is_token_input(x_nc)
        if self.region_shape is not None:
            region = as_tuple(self.region_shape, x_nc.dim() - 2, "region_shape")
        else:  # one token per region; else derived from the shape
            region = (1,) * len(spatial) if tokens else default_region_shape(spatial)
            self._pin("a region shape of", region, "region_shape")
        grid = RegionGrid(spatial, region)
        a = match_attributions(attributions.detach(), x_nc).to(ranking_dtype(attributions))
        if self.absolute:
            a = a.abs()
        scores = grid.region_scores(reduce_channels(a, self.channel_reduce), self.region_reduce)
        target = normalize_target(target, x.shape[0], x.device)
        if target is None:
            with torch.no_grad(), eval_mode(self.model, self.use_eval_mode):
                target = torch.cat(
                    [
                        forward_scores(self.model, x[s : s + self.batch_size], None, False)[1]
                        for s in range(0, x.shape[0], self.batch_size)
                    ]
                )
        return x_nc, grid, scores, target

    @torch.no_grad()
    def _scores(self, x: Tensor, target: Tensor | None) -> Tensor:
        """Target scores of the unperturbed inputs, ``batch_size`` at a time."""
        with eval_mode(self.model, self.use_eval_mode):
            return torch.cat(
                [
                    forward_scores(
                        self.model,
                        x[s : s + self.batch_size],
                        None if target is None else target[s : s + self.batch_size],
                        self.softmax,
                    )[0]
                    for s in range(0, x.shape[0], self.batch_size)
                ]
            )

    def _replacement(self, x_nc: Tensor, grid: RegionGrid, perturbation: Perturbation) -> Tensor:
        """What each position becomes when perturbed: ``mask_token_id`` for token inputs
        (see :mod:`~lit_explain.metrics._tokens`), else :func:`replacement_values`."""
        if is_token_input(x_nc) or self.mask_token_id is not None:
            return token_replacement(x_nc, self.mask_token_id, type(self).__name__)
        return replacement_values(
            x_nc,
            grid,
            perturbation,
            self.generator(x_nc.device),
            self.noise_std,
            self.blur_sigma,
            self.value_range,
        )

    def _curves(
        self,
        x: Tensor,
        source: Tensor,
        replacement: Tensor,
        pixel_rank: Tensor,
        counts: Tensor,
        target: Tensor | None,
    ) -> Tensor:
        with eval_mode(self.model, self.use_eval_mode), self._token_errors():
            return perturbation_curves(
                self.model,
                x,
                source.detach(),
                replacement.detach(),
                pixel_rank,
                counts,
                target,
                self.softmax,
                self.batch_size,
            )

    @contextlib.contextmanager
    def _token_errors(self) -> Iterator[None]:
        """Name ``mask_token_id`` when the model cannot index the perturbed token inputs."""
        try:
            yield
        except IndexError as error:
            if self.mask_token_id is None:
                raise
            raise ValueError(
                f"mask_token_id={self.mask_token_id}: the model fails on the inputs with "
                f"tokens replaced by it ({error}); use an id of the model's vocabulary"
            ) from error
