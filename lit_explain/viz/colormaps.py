"""iNNvestigate's colour maps for attribution maps, in torch, with no matplotlib.

The functions carry over ``innvestigate.utils.visualizations`` (``project``, ``heatmap``,
``graymap``, ``gamma``, ``clip_quantile``) with two changes of layout that suit PyTorch:

- the batch axis comes first and **colour comes out on axis 1**: an ``(N, C, H, W)`` map
  becomes an ``(N, 3, H, W)`` RGB image with floats in ``[0, 1]`` (channels first, as
  ``torchvision`` and TensorBoard's ``add_image`` expect);
- the statistics that iNNvestigate takes over the whole array (absmax, quantiles) are
  taken **per sample**, so a batch is the same as its samples one at a time.

They take a ``torch.Tensor`` (any device, any float dtype; the result stays on that device)
or a ``numpy.ndarray`` (the result is a ``float32`` ndarray). Inputs are never modified
(iNNvestigate's ``project`` and ``clip_quantile`` write into their argument).

Colour maps are piecewise-linear segments between anchor colours, evaluated exactly rather
than through a 256-entry table, so a zero relevance maps to the seismic map's exact white.

References
----------
Alber et al., "iNNvestigate neural networks!", JMLR 20(93), 2019.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

__all__ = [
    "Colormap",
    "bwr",
    "clip_quantile",
    "cmaps",
    "coolwarm",
    "gamma",
    "get_cmap",
    "gray",
    "graymap",
    "heatmap",
    "oranges",
    "project",
    "seismic",
    "to_uint8_hwc",
    "viridis",
]

ArrayLike = Tensor | np.ndarray


class Colormap:
    """A colour map: piecewise-linear RGB segments between anchor colours.

    Parameters
    ----------
    name : str
        The name it is registered under in :data:`cmaps`.
    colors : sequence of (r, g, b)
        Anchor colours in ``[0, 1]``.
    positions : sequence of float, optional
        Where on ``[0, 1]`` the anchors sit, increasing from 0 to 1. Default: evenly spaced
        (this is how matplotlib reads a plain list of colours, e.g. its ``seismic`` data).
    one_sided : bool
        A map for non-negative values (magnitudes): 0 at its start, the maximum at its end
        (the explanation grid then maps ``[0, max]`` onto it); otherwise a diverging map
        with 0 in the middle.

    Returns
    -------
    Calling it on values of any shape gives their colours, shape ``values.shape + (3,)``,
    on the values' device.

    Examples
    --------
    >>> seismic(torch.tensor([0.0, 0.5, 1.0]))
    tensor([[0.0000, 0.0000, 0.3000],
            [1.0000, 1.0000, 1.0000],
            [0.5000, 0.0000, 0.0000]])
    """

    def __init__(
        self,
        name: str,
        colors: Sequence[Sequence[float]],
        positions: Sequence[float] | None = None,
        one_sided: bool = False,
    ) -> None:
        self.name = name
        self.one_sided = one_sided
        self.colors = torch.tensor(colors, dtype=torch.float64)
        n = self.colors.shape[0]
        if positions is None:
            positions = [i / (n - 1) for i in range(n)]
        self.positions = torch.tensor(positions, dtype=torch.float64)
        if self.colors.shape != (n, 3) or self.positions.shape != (n,) or n < 2:
            raise ValueError(f"colour map {name!r} needs >= 2 RGB anchors and one position each")
        if self.positions[0] != 0 or self.positions[-1] != 1 or (self.positions.diff() <= 0).any():
            raise ValueError(f"colour map {name!r}: positions must increase from 0 to 1")

    def __call__(self, values: Tensor) -> Tensor:
        """Colours of ``values`` (clipped to ``[0, 1]``): shape ``values.shape + (3,)``."""
        dtype = values.dtype if values.is_floating_point() else torch.float32
        v = values.to(torch.float64).clamp(0, 1).nan_to_num(0.5)
        pos, col = self.positions.to(v.device), self.colors.to(v.device)
        # segment k spans [pos[k], pos[k+1]]; the value 1 falls in the last segment
        k = (torch.searchsorted(pos, v.contiguous(), right=True) - 1).clamp(0, len(pos) - 2)
        t = ((v - pos[k]) / (pos[k + 1] - pos[k])).unsqueeze(-1)
        return (col[k] * (1 - t) + col[k + 1] * t).to(dtype)

    def __repr__(self) -> str:
        return f"Colormap({self.name!r}, {self.colors.shape[0]} anchors)"


def _hex(code: str) -> tuple[float, float, float]:
    return tuple(int(code[i : i + 2], 16) / 255 for i in (1, 3, 5))  # type: ignore[return-value]


#: Red-white-blue diverging map for signed relevance, as matplotlib's ``seismic``:
#: dark blue -> blue -> white -> red -> dark red at 0, 1/4, 1/2, 3/4, 1.
seismic = Colormap(
    "seismic",
    [(0.0, 0.0, 0.3), (0.0, 0.0, 1.0), (1.0, 1.0, 1.0), (1.0, 0.0, 0.0), (0.5, 0.0, 0.0)],
)
#: Black to white.
gray = Colormap("gray", [(0.0, 0.0, 0.0), (1.0, 1.0, 1.0)])
#: Blue-white-red, as matplotlib's ``bwr``.
bwr = Colormap("bwr", [(0.0, 0.0, 1.0), (1.0, 1.0, 1.0), (1.0, 0.0, 0.0)])
#: A five-anchor approximation of Moreland's cool-warm diverging map (matplotlib's
#: ``coolwarm``): muted blue -> light grey -> muted red.
coolwarm = Colormap(
    "coolwarm",
    [_hex(c) for c in ("#3b4cc0", "#8db0fe", "#dddddd", "#f49a7b", "#b40426")],
)
#: A ten-anchor approximation of the perceptually uniform ``viridis`` (purple -> yellow).
viridis = Colormap(
    "viridis",
    [
        _hex(c)
        for c in (
            "#440154", "#482878", "#3e4989", "#31688e", "#26828e",
            "#1f9e89", "#35b779", "#6ece58", "#b5de2b", "#fde725",
        )
    ],
)  # fmt: skip

#: One-sided map for magnitudes (``|gradient|``, squared SmoothGrad): white at 0 through
#: orange to dark brown at the maximum, as matplotlib's ``Oranges`` (its 0, 1/2 and 1
#: colours) — white like the diverging maps' zero, and neither their red ("for") nor their
#: blue ("against"), since a magnitude has no sign.
oranges = Colormap("oranges", [_hex(c) for c in ("#ffffff", "#fd8d3c", "#7f2704")],
                   one_sided=True)
#: Colour maps by name.
cmaps: dict[str, Colormap] = {c.name: c for c in (seismic, gray, bwr, coolwarm, viridis,
                                                  oranges)}


def get_cmap(cmap: str | Colormap) -> Colormap:
    """Look up a colour map by name (a :class:`Colormap` passes through).

    Parameters
    ----------
    cmap : str or Colormap
        One of :data:`cmaps`: ``"seismic"``, ``"gray"``, ``"bwr"``, ``"coolwarm"``,
        ``"viridis"``, ``"oranges"``.

    Returns
    -------
    Colormap

    Raises
    ------
    ValueError
        If the name is unknown; the message names it and the valid ones.
    """
    if isinstance(cmap, Colormap):
        return cmap
    try:
        return cmaps[cmap]
    except (KeyError, TypeError):
        raise ValueError(
            f"unknown colour map {cmap!r}; valid ones: {', '.join(sorted(cmaps))}"
        ) from None


# --------------------------------------------------------------------------- plumbing


def _to_tensor(X: ArrayLike) -> tuple[Tensor, bool]:
    """``(float tensor, came_from_numpy)``; integer and bool inputs become float32."""
    if isinstance(X, np.ndarray):
        return torch.from_numpy(np.asarray(X, dtype=np.float32)), True
    if not isinstance(X, Tensor):
        raise TypeError(f"expected a torch.Tensor or numpy.ndarray, got {type(X).__name__}")
    return (X if X.is_floating_point() else X.float()), False


def _back(Y: Tensor, was_numpy: bool) -> ArrayLike:
    return Y.detach().cpu().numpy().astype(np.float32) if was_numpy else Y


def check_scale(option: str, scale: Any, n: int | None = None, zero: bool = False) -> None:
    """Raise ``ValueError`` unless ``scale`` is a finite number above 0 (``zero``: or 0), or
    several (with ``n``: one, or one per sample of ``n``)."""
    values = torch.as_tensor(scale.detach().cpu() if isinstance(scale, Tensor)
                             else np.asarray(scale, dtype=np.float64), dtype=torch.float64)
    if n is not None and (values.ndim > 1 or (values.ndim == 1 and len(values) not in (1, n))):
        raise ValueError(f"{option} has shape {tuple(values.shape)}; give one number or one "
                         f"per sample ({n})")
    if not bool((torch.isfinite(values) & ((values >= 0) if zero else (values > 0))).all()):
        raise ValueError(f"{option}={scale!r} is not valid; a scale must be a finite number "
                         f"{'of 0 or more (0: not rescaled)' if zero else 'above 0'}")


def _check_axis(option: str, axis: int, T: Tensor) -> None:
    """Raise ``ValueError`` unless ``axis`` is an axis of ``T`` other than the batch's."""
    if not -T.ndim <= axis < T.ndim or axis % T.ndim == 0:
        raise ValueError(f"{option}={axis!r} is not valid for values shaped {tuple(T.shape)}; "
                         f"give an axis from 1 to {T.ndim - 1} (or -{T.ndim - 1} to -1)")


def _per_sample(value: Any, X: Tensor) -> Tensor:
    """A scalar or per-sample ``(N,)`` value, shaped to broadcast against ``X``."""
    if isinstance(value, np.ndarray):
        value = torch.from_numpy(np.asarray(value, dtype=np.float32))
    v = torch.as_tensor(value, dtype=X.dtype, device=X.device)
    if v.ndim == 0:
        return v
    v = v.reshape(v.shape[0], *([1] * (X.ndim - 1))) if v.ndim == 1 else v
    return v


# --------------------------------------------------------------------------- functions


def project(
    X: ArrayLike,
    output_range: tuple[float, float] = (0, 1),
    absmax: float | ArrayLike | None = None,
    input_is_positive_only: bool = False,
) -> ArrayLike:
    """Project values into ``output_range`` by their absolute maximum (iNNvestigate's rule).

    Each sample is divided by its ``absmax`` (so it lies in ``[-1, 1]``), shifted to
    ``[0, 1]`` by ``(x + 1) / 2`` unless ``input_is_positive_only``, clipped, and mapped
    linearly onto ``output_range``. Hence ``-absmax``, ``0`` and ``+absmax`` land on the
    start, the middle and the end of the range.

    Parameters
    ----------
    X : Tensor or ndarray, shape (N, ...)
        Values; axis 0 is the batch.
    output_range : (float, float)
        Where ``-absmax`` (or ``0`` when positive only) and ``+absmax`` go.
    absmax : float, (N,) tensor/array or broadcastable tensor, optional
        The scale. Default: ``max |X|`` per sample over all non-batch axes. Samples whose
        absmax is 0 are not rescaled (as in iNNvestigate).
    input_is_positive_only : bool
        Treat ``X`` as non-negative: ``[0, absmax]`` maps onto the whole range.

    Returns
    -------
    Tensor or ndarray
        Same shape as ``X``.
    """
    T, was_numpy = _to_tensor(X)
    if absmax is not None:
        check_scale("absmax", absmax, zero=True)
    if absmax is None:
        if T.ndim == 0 or T.numel() == 0:
            a = T.abs()
        else:
            a = T.abs().reshape(T.shape[0], -1).amax(1) if T.ndim > 1 else T.abs().amax()
        a = _per_sample(a, T)
    else:
        a = _per_sample(absmax, T)
    Y = torch.where(a != 0, T / torch.where(a != 0, a, torch.ones_like(a)), T)
    if not input_is_positive_only:
        Y = (Y + 1) / 2
    Y = Y.clamp(0, 1)
    Y = output_range[0] + Y * (output_range[1] - output_range[0])
    return _back(Y, was_numpy)


def _reduce(T: Tensor, reduce_op: str, axis: int) -> Tensor:
    if reduce_op == "sum":
        return T.sum(axis)
    if reduce_op == "mean":
        return T.mean(axis)
    if reduce_op == "absmax":
        # the signed value of largest magnitude; a tie goes to the positive one
        pos, neg = T.amax(axis), T.amin(axis)
        return torch.where(pos >= -neg, pos, neg)
    raise ValueError(f"unknown reduce_op {reduce_op!r}; valid ones: 'sum', 'mean', 'absmax'")


def heatmap(
    X: ArrayLike,
    cmap_type: str | Colormap = "seismic",
    reduce_op: str = "sum",
    reduce_axis: int | None = 1,
    alpha_cmap: bool = False,
    normalize: bool = True,
    shared_absmax: float | ArrayLike | None = None,
    input_is_positive_only: bool = False,
) -> ArrayLike:
    """Colour an attribution map: reduce the channel axis, project, apply a colour map.

    iNNvestigate's ``heatmap``, batched, channels first. With the default seismic map and
    per-sample normalization, the largest positive relevance of each sample is dark red,
    zero is white and the most negative value is dark blue (as ``plt.imshow(a,
    cmap="seismic", clim=(-1, 1))`` after ``a /= abs(a).max()`` in iNNvestigate's README).

    Parameters
    ----------
    X : Tensor or ndarray
        ``(N, C, H, W)`` (reduced over ``reduce_axis``), ``(N, H, W)`` or ``(N, F)``
        (no channel axis: not reduced; ``(N, F)`` comes out as a 1-pixel-high strip).
        Higher ranks, e.g. ``(N, C, D, H, W)``, are reduced over ``reduce_axis`` too.
    cmap_type : str or Colormap
        ``"seismic"`` (default), ``"gray"``, ``"bwr"``, ``"coolwarm"``, ``"viridis"``,
        ``"oranges"``.
    reduce_op : {"sum", "absmax", "mean"}
        How channels are combined: their sum (iNNvestigate's default), the signed value of
        largest magnitude, or the mean; in float64, so that the sum of a finite map stays
        finite (a float16 map's could pass 65504). The colours come back in ``X``'s dtype.
    reduce_axis : int or None
        The channel axis of inputs with 4 or more axes (default 1, channels first). ``None``
        never reduces.
    alpha_cmap : bool
        Append an alpha channel (4 channels out). Our maps are opaque, so it is 1
        everywhere, as for matplotlib's built-in maps in iNNvestigate.
    normalize : bool
        Divide each sample by its absolute maximum, so it spans ``[-1, 1]`` (default). With
        ``False`` the values are taken as already in ``[-1, 1]`` and clipped.
    shared_absmax : float or (N,) tensor, optional
        A fixed scale used instead of the per-sample one: keep it across epochs so that a
        map that grows or shrinks looks stronger or fainter. Overrides ``normalize``.
    input_is_positive_only : bool
        Map ``[0, absmax]`` (instead of ``[-absmax, absmax]``) onto the whole colour map.

    Returns
    -------
    Tensor or ndarray, float in [0, 1]
        ``(N, 3, H, W)`` for ``(N, C, H, W)`` or ``(N, H, W)`` input, ``(N, 3, 1, F)`` for
        ``(N, F)``; ``(N, 4, ...)`` with ``alpha_cmap``. On the device of ``X``.

    Raises
    ------
    ValueError
        For an unknown ``cmap_type`` or ``reduce_op``, or input with fewer than 2 axes.
    """
    cmap = get_cmap(cmap_type)
    T, was_numpy = _to_tensor(X)
    if T.ndim < 2:
        raise ValueError(f"heatmap needs a batch axis and at least one more, got {tuple(T.shape)}")
    if not bool(torch.isfinite(T).all()):  # (they would make their samples blank)
        raise ValueError("heatmap of values with NaN or infinity: they have no colour; "
                         "drop or repair those samples")
    dtype = T.dtype
    if T.ndim == 2:
        T = T[:, None, :]
    elif T.ndim >= 4 and reduce_axis is not None:
        _check_axis("reduce_axis", reduce_axis, T)
        # in float64, as the colours are: a float16 channel sum overflows at 65504
        T = _reduce(T.double(), reduce_op, reduce_axis)
    if shared_absmax is not None:
        check_scale("shared_absmax", shared_absmax)
        absmax = shared_absmax
    elif normalize:
        absmax = None
    else:
        absmax = 1.0
    P = project(T, absmax=absmax, input_is_positive_only=input_is_positive_only)
    rgb = cmap(P).to(dtype).movedim(-1, 1)  # (N, ..., 3) -> (N, 3, ...), in X's dtype
    if alpha_cmap:
        rgb = torch.cat([rgb, torch.ones_like(rgb[:, :1])], 1)
    return _back(rgb, was_numpy)


def graymap(X: ArrayLike, **kwargs: Any) -> ArrayLike:
    """Same as :func:`heatmap` with the ``"gray"`` colour map.

    A signed map goes from black (most negative) through mid-grey (zero) to white; pass
    ``input_is_positive_only=True`` for a non-negative map (e.g. ``|gradient|``) to use the
    whole range from black (zero) to white.

    Parameters
    ----------
    X : Tensor or ndarray
        As for :func:`heatmap`.
    **kwargs
        :func:`heatmap`'s other parameters (``cmap_type`` defaults to ``"gray"``).

    Returns
    -------
    Tensor or ndarray
        ``(N, 3, H, W)`` float in ``[0, 1]``, as :func:`heatmap`.
    """
    kwargs.setdefault("cmap_type", "gray")
    return heatmap(X, **kwargs)


def gamma(
    X: ArrayLike,
    gamma: float = 0.5,
    minamp: float = 0,
    maxamp: float | ArrayLike | None = None,
) -> ArrayLike:
    """Gamma-correct ``X`` around ``minamp``, keeping order and sign (iNNvestigate's rule).

    ``y = minamp + sign(x - minamp) * maxamp * (|x - minamp| / maxamp) ** gamma``: values
    above and below ``minamp`` are scaled separately against a common amplitude, so the
    order of entries is kept. ``gamma < 1`` lifts faint relevance.

    Parameters
    ----------
    X : Tensor or ndarray, shape (N, ...)
        Values; axis 0 is the batch.
    gamma : float
        The exponent (iNNvestigate's default 0.5; 1 is the identity).
    minamp : float
        The neutral value (0 for relevance).
    maxamp : float or (N,) tensor, optional
        The largest amplitude ``|x - minamp|`` to consider. Default: taken per sample
        (iNNvestigate takes it over the whole array: pass ``abs(X - minamp).max()`` for
        that). Samples with amplitude 0 come back unchanged.

    Returns
    -------
    Tensor or ndarray
        Same shape as ``X``.
    """
    if not (isinstance(gamma, numbers.Real) and math.isfinite(gamma) and gamma > 0):
        raise ValueError(f"gamma={gamma!r} is not valid; give a finite number above 0 (below "
                         f"1 lifts faint relevance, 1 changes nothing)")
    if maxamp is not None:
        check_scale("maxamp", maxamp)
    T, was_numpy = _to_tensor(X)
    D = T - minamp
    if maxamp is None:
        amp = D.abs().reshape(D.shape[0], -1).amax(1) if D.ndim > 1 else D.abs().amax()
    else:
        amp = maxamp
    a = _per_sample(amp, D)
    safe = torch.where(a != 0, a, torch.ones_like(a))
    Y = D.sign() * (D.abs() / safe).pow(gamma) * safe + minamp
    return _back(torch.where(a != 0, Y, T), was_numpy)


def _quantile_along_last(V: Tensor, q: float) -> Tensor:
    """Linear-interpolation quantile (numpy's default) of each row, ``q`` in ``[0, 1]``."""
    s = V.sort(-1).values
    pos = q * (s.shape[-1] - 1)
    lo = math.floor(pos)
    hi = min(lo + 1, s.shape[-1] - 1)
    return s[..., lo] + (s[..., hi] - s[..., lo]) * (pos - lo)


def clip_quantile(
    X: ArrayLike,
    quantile: float | tuple[float, float] = 1,
    channel_axis: int | None = None,
) -> ArrayLike:
    """Clip ``X`` to its percentiles, per sample (iNNvestigate's ``clip_quantile``).

    Parameters
    ----------
    X : Tensor or ndarray, shape (N, ...)
        Values; axis 0 is the batch.
    quantile : float or (float, float)
        In percent, as in iNNvestigate: ``q`` clips to the ``[q, 100 - q]`` percentiles; a
        pair gives the lower and upper percentile. Percentiles interpolate linearly
        between order statistics (numpy's default).
    channel_axis : int, optional
        Take the percentiles per sample *and* channel (e.g. 1 for ``(N, C, H, W)``).
        Default: per sample over all non-batch axes.

    Returns
    -------
    Tensor or ndarray
        Same shape as ``X``.
    """
    low_q, high_q = (quantile, 100 - quantile) if not isinstance(quantile, Sequence) else quantile
    if not 0 <= low_q <= high_q <= 100:
        raise ValueError(f"quantile must give 0 <= low <= high <= 100 percent, got {quantile!r}")
    T, was_numpy = _to_tensor(X)
    if T.ndim < 2:
        V = T.reshape(1, -1)
    elif channel_axis is None:
        V = T.reshape(T.shape[0], -1)
    else:
        _check_axis("channel_axis", channel_axis, T)
        ax = channel_axis % T.ndim
        V = T.movedim(ax, 1).reshape(T.shape[0], T.shape[ax], -1)
    lo = _quantile_along_last(V, low_q / 100)
    hi = _quantile_along_last(V, high_q / 100)
    # back to a shape that broadcasts against T
    if T.ndim < 2:
        shape: list[int] = []
    elif channel_axis is None:
        shape = [T.shape[0]] + [1] * (T.ndim - 1)
    else:
        shape = [1] * T.ndim
        shape[0], shape[channel_axis % T.ndim] = T.shape[0], T.shape[channel_axis % T.ndim]
    Y = torch.minimum(torch.maximum(T, lo.reshape(shape)), hi.reshape(shape))
    return _back(Y, was_numpy)


def to_uint8_hwc(image: ArrayLike) -> np.ndarray:
    """Convert a channels-first float image in ``[0, 1]`` to a ``uint8`` HWC ndarray.

    For Weights & Biases (which casts to ``uint8`` without rescaling and wants channels
    last) and :func:`lit_explain.viz.write_png`.

    Parameters
    ----------
    image : Tensor or ndarray
        ``(C, H, W)`` or batched ``(N, C, H, W)``; floats are clipped to ``[0, 1]`` and
        rounded to ``0..255``; ``uint8`` input is only transposed.

    Returns
    -------
    ndarray of uint8
        ``(H, W, C)`` or ``(N, H, W, C)``, on the CPU.
    """
    if isinstance(image, Tensor):  # in torch: one float copy, then in place
        if image.dim() not in (3, 4):
            raise ValueError(f"expected (C, H, W) or (N, C, H, W), got shape "
                             f"{tuple(image.shape)}")
        if image.dtype != torch.uint8:  # x * 255 clipped to [0, 255] = clip to [0, 1], * 255
            image = image.detach().float().mul(255).nan_to_num_(0.0).clamp_(0, 255).round_()
        return image.to(torch.uint8).movedim(-3, -1).contiguous().cpu().numpy()
    a = np.asarray(image)
    if a.ndim not in (3, 4):
        raise ValueError(f"expected (C, H, W) or (N, C, H, W), got shape {a.shape}")
    if a.dtype != np.uint8:
        a = np.rint(np.clip(np.nan_to_num(a.astype(np.float32)), 0, 1) * 255).astype(np.uint8)
    return np.ascontiguousarray(np.moveaxis(a, -3, -1))
