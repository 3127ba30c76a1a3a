"""Replacement values and batched perturbation curves shared by the perturbation metrics."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor
from torchmetrics import Metric

from ..analyzers.forward import OutputSelector
from ._common import (
    RegionGrid,
    as_nc,
    as_tuple,
    check_choice,
    eval_mode,
    forward_scores,
    gaussian_blur,
    make_generator,
    match_attributions,
    normalize_target,
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
    """Accept a known name, a number (a constant baseline) or a callable."""
    if isinstance(value, str):
        check_choice(name, value, PERTURBATIONS)
    elif not (isinstance(value, int | float) or callable(value)):
        raise ValueError(
            f"{name}={value!r} is not valid; choose one of {list(PERTURBATIONS)}, "
            "a number or a callable"
        )


def check_value_range(value_range: Sequence[float] | None) -> tuple[float, float] | None:
    if value_range is None:
        return None
    lo, hi = (float(v) for v in value_range)
    if not lo < hi:
        raise ValueError(f"value_range={tuple(value_range)!r} must be (min, max) with min < max")
    return lo, hi


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
    """Base of the perturbation-curve metrics: options, generator, ordering, model calls."""

    full_state_update = False
    is_differentiable = False

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
        if steps is not None and (not isinstance(steps, int) or steps < 1):
            raise ValueError(f"steps={steps!r} is not valid; use a positive int or None "
                             f"(derived from the input)")
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size={batch_size!r} is not valid; use a positive int")
        check_choice("channel_reduce", channel_reduce, REDUCTIONS)
        check_choice("region_reduce", region_reduce, REDUCTIONS)
        if region_shape is None:
            pass
        elif isinstance(region_shape, int):
            as_tuple(region_shape, 1, "region_shape")
        else:
            as_tuple(region_shape, len(region_shape), "region_shape")
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
        self._points: int | None = None

    def resolved_steps(self, available: int) -> int:
        """``steps``, or for ``steps=None`` ``min(100, available)`` (at least 1)."""
        if self.steps is not None:
            return self.steps
        return max(1, min(MAX_DEFAULT_STEPS, available))

    def _curve_states(self, names: Sequence[str], steps: int, device: torch.device) -> None:
        """Declare the curve states (``steps + 1`` points each) once the steps are known.

        With ``steps=None`` they depend on the first input's shape; a later input that
        needs another number of steps is refused rather than mixed in.
        """
        if self._points is None:
            for name in names:
                self.add_state(name, default=torch.zeros(steps + 1, dtype=torch.float64,
                                                          device=device),
                               dist_reduce_fx="sum")
            self._points = steps + 1
        elif self._points != steps + 1:
            raise ValueError(
                f"inputs of this shape need {steps} steps, but the metric's curve has "
                f"{self._points - 1} (from earlier inputs); set steps= to compare inputs of "
                f"different shapes")

    def _curve_state(self, name: str) -> Tensor:
        """A curve state, or one zero point before the first update."""
        state = getattr(self, name, None)
        return state if state is not None else torch.zeros(1, dtype=torch.float64)

    def generator(self, device: torch.device) -> torch.Generator:
        """The metric's own generator, seeded from ``seed`` on first use after a reset."""
        if self._generator is None or self._generator.device != device:
            self._generator = make_generator(self.seed, device)
        return self._generator

    def reset(self) -> None:
        """Reset the states and re-seed, so every epoch sees the same random draws."""
        super().reset()
        self._generator = None

    def _prepare(
        self, x: Tensor, attributions: Tensor, target: Tensor | int | None
    ) -> tuple[Tensor, RegionGrid, Tensor, Tensor | None]:
        """``(x_nc, grid, region scores (N, R), target)`` with the target resolved."""
        x_nc = as_nc(x)
        spatial = tuple(x_nc.shape[2:])
        tokens = is_token_input(x_nc)
        if self.region_shape is not None:
            region = as_tuple(self.region_shape, x_nc.dim() - 2, "region_shape")
        else:  # one token per region; else derived from the shape
            region = (1,) * len(spatial) if tokens else default_region_shape(spatial)
        grid = RegionGrid(spatial, region)
        dtype = x_nc.dtype if not tokens else (
            attributions.dtype if attributions.is_floating_point() else torch.get_default_dtype())
        a = match_attributions(attributions.detach(), x_nc).to(dtype)
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
            return token_replacement(x_nc, self.mask_token_id)
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
        with eval_mode(self.model, self.use_eval_mode):
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
