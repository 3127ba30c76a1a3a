"""Shared plumbing for the metrics: input layouts, option checks, model calls, regions.

Inputs come in three layouts and are handled as ``(N, C, *S)`` with one or two spatial
dimensions: tabular ``(N, F)`` is seen as ``(N, 1, F)``, sequences ``(N, C, L)`` and
images ``(N, C, H, W)`` as they are. A *region* is a block of ``region_shape`` positions
in the spatial dimensions that covers every channel; the grid of regions is padded
symmetrically (half before, the rest after, as iNNvestigate and Quantus do) when the
spatial size is not a multiple of the region size.
"""

from __future__ import annotations

import contextlib
import math
import numbers
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from .. import modes
from ..analyzers.validation import check_bool, check_number, check_positive_int, check_seed

__all__ = [
    "RegionGrid",
    "as_nc",
    "check_bool",
    "check_choice",
    "check_finite_map",
    "check_number",
    "check_positive_int",
    "check_seed",
    "eval_mode",
    "forward_scores",
    "make_generator",
    "reduce_channels",
]


def check_choice(name: str, value: object, choices: Sequence[object]) -> None:
    """Raise ``ValueError`` naming the parameter, the bad value and the valid choices."""
    if value not in choices:
        raise ValueError(f"{name}={value!r} is not valid; choose one of {list(choices)}")


def check_finite_map(owner: str, attributions: Tensor, name: str = "attributions") -> None:
    """Refuse a map holding NaN or infinite values: it has no ordering and no mass to share.

    Raises ``ValueError`` naming the metric (``owner``), the argument and how many samples
    are affected.
    """
    finite = torch.isfinite(attributions.detach())
    if bool(finite.all()):
        return
    rows = finite.reshape(finite.shape[0], -1).all(1) if finite.dim() > 0 else finite
    bad = int((~rows).sum())
    raise ValueError(
        f"{owner}: {name} hold NaN or infinite values in {bad} of {rows.numel()} samples; a "
        f"map with NaN has no ordering: drop or repair those samples before the metric")


def as_nc(x: Tensor) -> Tensor:
    """View ``(N, F)``, ``(N, C, L)`` or ``(N, C, H, W)`` as ``(N, C, *S)``."""
    if x.dim() == 2:
        return x.unsqueeze(1)
    if x.dim() in (3, 4):
        return x
    raise ValueError(
        f"inputs must be tabular (N, F), sequences (N, C, L) or images (N, C, H, W); "
        f"got shape {tuple(x.shape)}"
    )


def ranking_dtype(attributions: Tensor) -> torch.dtype:
    """The dtype a map's values are summed and ranked in: the map's own (the default dtype
    for an integer map), at least float32. Never the input's: a bfloat16 or float16 input
    would tie or overflow values the map tells apart (a map of 1.000 and 1.003 ties in
    bfloat16)."""
    dtype = attributions.dtype if attributions.is_floating_point() else \
        torch.get_default_dtype()
    return torch.promote_types(dtype, torch.float32)


def match_attributions(attributions: Tensor, x_nc: Tensor) -> Tensor:
    """Bring attributions to ``(N, C', *S)`` with ``C'`` equal to 1 or to x's channels.

    Accepted: the shape of x, x's shape with one channel, or x's shape without the channel
    axis (``(N, H, W)`` for images, ``(N, L)`` for sequences).
    """
    n, _, *spatial = x_nc.shape
    a = attributions.to(device=x_nc.device)
    if a.dim() == x_nc.dim() - 1 and list(a.shape[1:]) == spatial:
        a = a.unsqueeze(1)
    elif a.dim() == x_nc.dim() - 1 and x_nc.shape[1] == 1:
        a = a.unsqueeze(1)
    if a.dim() != x_nc.dim() or a.shape[0] != n or list(a.shape[2:]) != spatial:
        raise ValueError(
            f"attributions of shape {tuple(attributions.shape)} do not match inputs of shape "
            f"{tuple(x_nc.shape)} (channels squeezed for tabular data)"
        )
    if a.shape[1] not in (1, x_nc.shape[1]):
        raise ValueError(
            f"attributions have {a.shape[1]} channels, inputs {x_nc.shape[1]}; use 1 or the same"
        )
    return a


def reduce_channels(a: Tensor, how: str) -> Tensor:
    """Reduce ``(N, C, *S)`` to ``(N, 1, *S)`` by ``"sum"``, ``"mean"`` or ``"max"``."""
    if how == "sum":
        return a.sum(1, keepdim=True)
    if how == "mean":
        return a.mean(1, keepdim=True)
    return a.amax(1, keepdim=True)


def make_generator(seed: int, device: torch.device) -> torch.Generator:
    """A generator of the metric's own, on ``device``: the global RNG is never touched."""
    g = torch.Generator(device=device)
    g.manual_seed(seed)
    return g


@contextlib.contextmanager
def eval_mode(model: Callable[[Tensor], Tensor], enabled: bool = True) -> Iterator[None]:
    """Put every submodule in eval mode, restore each module's own flag afterwards; the
    metric's forward passes are the library's own work meanwhile (no pattern statistics'
    data, see :func:`~lit_explain.modes.explaining`)."""
    with modes.explaining():
        if not enabled or not isinstance(model, torch.nn.Module):
            yield
            return
        with modes.eval_mode(model):
            yield


def forward_scores(
    model: Callable[[Tensor], Tensor],
    x: Tensor,
    target: Tensor | None,
    softmax: bool,
) -> tuple[Tensor, Tensor]:
    """Score of the target class for each row of ``x``; returns ``(scores, target)``.

    A model with one output per sample (``(N,)`` or ``(N, 1)``) is scored by that output
    (its sigmoid with ``softmax=True``: the probability of a one-logit binary classifier)
    and ``target`` is ignored. Otherwise ``target=None`` selects the predicted class. The
    model must return logits: with ``softmax=True`` they are normalized here.
    """
    out = model(x)
    if out.dim() == 1 or (out.dim() == 2 and out.shape[1] == 1):
        out = out.reshape(-1)
        if softmax:
            out = out.sigmoid()
        return out.double(), torch.zeros(out.shape[0], dtype=torch.long, device=out.device)
    out = out.reshape(out.shape[0], -1)
    if target is None:
        target = out.argmax(1)
    elif bool(((target < 0) | (target >= out.shape[1])).any()):
        bad = target[(target < 0) | (target >= out.shape[1])][0].item()
        raise ValueError(f"target={bad} is out of range: the model has {out.shape[1]} outputs; "
                         f"use a class index from 0 to {out.shape[1] - 1}")
    if softmax:
        out = out.softmax(1)
    return out.gather(1, target.view(-1, 1)).squeeze(1).double(), target


def normalize_target(target: Tensor | int | None, n: int, device: torch.device) -> Tensor | None:
    """``None``, an int or one class per sample → ``None`` or a long tensor of shape ``(n,)``."""
    if target is None:
        return None
    if isinstance(target, bool) or (isinstance(target, Tensor) and target.dtype == torch.bool):
        raise ValueError(f"target={target!r} is not valid; use class indices (ints), not bools")
    try:
        t = torch.as_tensor(target, device=device)
    except (TypeError, ValueError, RuntimeError) as error:
        raise ValueError(f"target={target!r} is not valid; give a class index (int) or one per "
                         f"sample (a list or tensor of ints)") from error
    if t.is_complex() or (t.is_floating_point() and not bool((t == t.round()).all())):
        raise ValueError(f"target={target!r} is not valid; class indices must be integers")
    t = t.long().reshape(-1)
    if t.numel() == 1:
        t = t.expand(n)
    if t.numel() != n:
        raise ValueError(f"target has {t.numel()} entries for {n} samples")
    return t


def as_tuple(value: int | Sequence[int], dims: int, name: str) -> tuple[int, ...]:
    """An int or a sequence of ``dims`` positive ints as a tuple (bools and floats refused)."""
    def is_positive_int(v: object) -> bool:
        return isinstance(v, numbers.Integral) and not isinstance(v, bool) and v >= 1

    if is_positive_int(value):
        shape = (value,) * dims
    elif isinstance(value, Sequence) and not isinstance(value, str):
        shape = tuple(value)
    else:
        shape = ()
    if len(shape) != dims or not all(is_positive_int(v) for v in shape):
        many = "" if dims == 1 else f" or {dims} positive ints, one per spatial dimension"
        raise ValueError(f"{name}={value!r} is not valid; expected a positive int{many}")
    return tuple(int(v) for v in shape)


@dataclass(frozen=True)
class RegionGrid:
    """A grid of ``region_shape`` blocks over a spatial shape, padded symmetrically.

    Padding per dimension is ``(-size) % region``; ``pad // 2`` goes before and the rest
    after (iNNvestigate's and Quantus's split), so border regions may be partial.
    """

    spatial: tuple[int, ...]
    region: tuple[int, ...]

    @property
    def padding(self) -> tuple[tuple[int, int], ...]:
        pads = [(-s) % r for s, r in zip(self.spatial, self.region, strict=True)]
        return tuple((p // 2, p - p // 2) for p in pads)

    @property
    def grid(self) -> tuple[int, ...]:
        return tuple(math.ceil(s / r) for s, r in zip(self.spatial, self.region, strict=True))

    @property
    def n_regions(self) -> int:
        return math.prod(self.grid)

    def pad(self, t: Tensor, mode: str = "constant", value: float = 0.0) -> Tensor:
        """Pad the spatial dims of ``(N, C, *S)`` (``mode`` as in ``torch.nn.functional.pad``)."""
        flat = [p for pair in reversed(self.padding) for p in pair]
        if not any(flat):
            return t
        if mode == "constant":
            return F.pad(t, flat, mode="constant", value=value)
        return F.pad(t, flat, mode=mode)

    def crop(self, t: Tensor) -> Tensor:
        """Undo :meth:`pad`."""
        index = [slice(None), slice(None)]
        for (before, _), s in zip(self.padding, self.spatial, strict=True):
            index.append(slice(before, before + s))
        return t[tuple(index)]

    def to_blocks(self, padded: Tensor) -> Tensor:
        """``(N, C, *padded S)`` → ``(N, C, n_regions, *region)`` in row-major region order."""
        n, c = padded.shape[:2]
        if len(self.grid) == 1:
            return padded.reshape(n, c, self.grid[0], self.region[0])
        (gh, gw), (rh, rw) = self.grid, self.region
        b = padded.reshape(n, c, gh, rh, gw, rw).permute(0, 1, 2, 4, 3, 5)
        return b.reshape(n, c, gh * gw, rh, rw)

    def from_blocks(self, blocks: Tensor) -> Tensor:
        """Inverse of :meth:`to_blocks`, cropped back to the unpadded spatial shape."""
        n, c = blocks.shape[:2]
        if len(self.grid) == 1:
            return self.crop(blocks.reshape(n, c, -1))
        (gh, gw), (rh, rw) = self.grid, self.region
        b = blocks.reshape(n, c, gh, gw, rh, rw).permute(0, 1, 2, 4, 3, 5)
        return self.crop(b.reshape(n, c, gh * rh, gw * rw))

    def pixel_region(self, device: torch.device) -> Tensor:
        """Region id of every (unpadded) spatial position, flattened row-major: ``(prod S,)``."""
        ids = torch.arange(self.n_regions, device=device).reshape(1, 1, self.n_regions)
        ones = (1,) * len(self.region)
        blocks = ids.reshape(1, 1, self.n_regions, *ones).expand(1, 1, self.n_regions, *self.region)
        return self.from_blocks(blocks).reshape(-1)

    def region_sizes(self, device: torch.device) -> Tensor:
        """Real (unpadded) positions of every region, ``(n_regions,)``."""
        ones = torch.ones(1, 1, *self.spatial, device=device)
        return self.to_blocks(self.pad(ones)).flatten(3).sum(-1).reshape(-1)

    def region_scores(self, a: Tensor, region_reduce: str = "sum") -> Tensor:
        """Aggregate a one-channel map ``(N, 1, *S)`` per region: ``(N, n_regions)``.

        ``"sum"``, ``"mean"`` or ``"max"`` over the real positions of each region only: a
        partial border region's padding never counts (its mean divides by its real size).
        """
        if region_reduce == "max":
            return self.to_blocks(self.pad(a, value=-math.inf)).flatten(3).amax(-1).squeeze(1)
        sums = self.to_blocks(self.pad(a)).flatten(3).sum(-1).squeeze(1)
        if region_reduce == "sum":
            return sums
        return sums / self.region_sizes(a.device).to(sums.dtype)


def gaussian_blur(x_nc: Tensor, sigma: float) -> Tensor:
    """Separable Gaussian blur of the spatial dims of ``(N, C, *S)`` (replicate padding)."""
    radius = max(1, math.ceil(3 * sigma))
    t = torch.arange(-radius, radius + 1, device=x_nc.device, dtype=x_nc.dtype)
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    k = k / k.sum()
    c = x_nc.shape[1]
    out = x_nc
    for dim in range(2, x_nc.dim()):
        shape = [1] * (x_nc.dim() - 2)
        shape[dim - 2] = k.numel()
        weight = k.reshape(1, 1, *shape).expand(c, 1, *shape)
        pad = [0, 0] * (x_nc.dim() - 2)
        pad[2 * (x_nc.dim() - 1 - dim)] = radius
        pad[2 * (x_nc.dim() - 1 - dim) + 1] = radius
        out = F.pad(out, pad, mode="replicate")
        conv = F.conv1d if x_nc.dim() == 3 else F.conv2d
        out = conv(out, weight, groups=c)
    return out
