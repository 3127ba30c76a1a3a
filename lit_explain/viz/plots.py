"""Line plots as RGB tensors, for perturbation curves and drift over epochs (no matplotlib).

Axes with "nice" ticks (steps of 1, 2 or 5 times a power of ten) and light grid lines, a
title, axis labels (the y label turned to read upwards), one colour per curve (d3's
category10), square markers on curves of few points, and a legend in the corner of the
plot that the curves cover least.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
import torch
from torch import Tensor

from ._canvas import BLACK, PALETTE, WHITE, canvas, fill_rect, markers, outline_rect, polyline
from .font import GLYPH_HEIGHT, draw_text, text_width

__all__ = ["line_plot", "nice_ticks"]

GRID = (0.9, 0.9, 0.9)
AXIS = (0.25, 0.25, 0.25)
TEXT = (0.1, 0.1, 0.1)

CurveData = Tensor | np.ndarray | Sequence[float]


def nice_ticks(low: float, high: float, count: int = 5, integer: bool = False) -> list[float]:
    """About ``count`` round tick values covering ``[low, high]``.

    The step is 1, 2 or 5 times a power of ten (at least 1 when ``integer``), the one whose
    ticks from ``floor(low / step)`` to ``ceil(high / step)`` come closest to ``count``
    (a tie goes to the larger step).

    Parameters
    ----------
    low, high : float
        The range to cover, ``low < high``.
    count : int
        The number of ticks wanted.
    integer : bool
        Only whole-number steps (for epochs and step indices).

    Returns
    -------
    list of float (int when ``integer``)
        Increasing ticks, the first ``<= low`` and the last ``>= high``.
    """
    if not (math.isfinite(low) and math.isfinite(high)) or high <= low:
        raise ValueError(f"need finite low < high, got {low!r}, {high!r}")
    want = max(count - 1, 1)
    power = math.floor(math.log10((high - low) / want))
    best: tuple[float, float] | None = None
    for p in (power - 1, power, power + 1):
        for m in (1, 2, 5):
            step = m * 10.0**p
            if integer:
                step = max(1.0, float(round(step)))
            n = math.ceil(high / step - 1e-9) - math.floor(low / step + 1e-9)
            score = abs(n - want)
            if best is None or score < best[0] or (score == best[0] and step > best[1]):
                best = (score, step)
    assert best is not None
    step = best[1]
    first, last = math.floor(low / step + 1e-9), math.ceil(high / step - 1e-9)
    ticks = [k * step for k in range(first, last + 1)]
    return [round(t, 12) if not integer else int(t) for t in ticks]


def _tick_label(value: float, step: float) -> str:
    if abs(value) < step * 1e-6:
        return "0"
    if step >= 1 and abs(value) < 1e6 and float(value).is_integer():
        return str(int(value))
    if abs(value) >= 1e5 or step < 1e-3:
        return f"{value:.1e}".replace("e-0", "e-").replace("e+0", "e")
    decimals = max(0, -math.floor(math.log10(step) + 1e-9))
    return f"{value:.{decimals}f}"


def _as_xy(data: CurveData | tuple[CurveData, CurveData], x: CurveData | None,
           name: str) -> tuple[Tensor, Tensor]:
    if isinstance(data, tuple) and len(data) == 2:
        xs, ys = data
    else:
        xs, ys = x, data
    if isinstance(ys, Tensor):
        ys = ys.detach().cpu()
    y = torch.as_tensor(np.asarray(ys, dtype=np.float64)).flatten()
    if xs is None:
        xv = torch.arange(len(y), dtype=torch.float64)
    else:
        xs = xs.detach().cpu() if isinstance(xs, Tensor) else xs
        xv = torch.as_tensor(np.asarray(xs, dtype=np.float64)).flatten()
    if len(xv) != len(y):
        raise ValueError(f"curve {name!r} has {len(y)} values but {len(xv)} x positions")
    return xv, y


def line_plot(
    curves: Mapping[str, CurveData | tuple[CurveData, CurveData]],
    title: str = "",
    x_label: str = "",
    y_label: str = "",
    size: tuple[int, int] = (240, 360),
    *,
    x: CurveData | None = None,
    y_range: tuple[float, float] | None = None,
    show_markers: bool | None = None,
    colors: Sequence[Sequence[float]] | None = None,
    as_uint8: bool = False,
) -> Tensor:
    """Draw curves with axes, ticks, a title, axis labels and a legend into an RGB image.

    Meant for the dashboard: perturbation (AOPC) curves over perturbation steps, and
    attribution drift over epochs.

    Parameters
    ----------
    curves : mapping of str to values, or to (x, y) pairs
        Label -> 1-D values (Tensor, ndarray or list). A value that is NaN or infinite
        leaves a gap. A pair ``(x, y)`` gives the curve its own x positions.
    title, x_label, y_label : str
        Texts above the plot, under the x axis and (turned) left of the y axis.
    size : (int, int)
        ``(height, width)`` of the image in pixels.
    x : values, optional
        x positions shared by all curves given without their own (e.g. the epochs).
        Default: 0, 1, 2, ...
    y_range : (float, float), optional
        Fixed y limits (e.g. ``(0, 1)`` for similarities); points outside are clipped.
        Default: the data's range, widened to round ticks.
    show_markers : bool, optional
        Square markers on the points; default when the longest curve has at most 30.
    colors : sequence of (r, g, b), optional
        One colour per curve in order; default d3's category10 palette.
    as_uint8 : bool
        Return ``uint8`` in ``0..255`` instead of float in ``[0, 1]``.

    Returns
    -------
    Tensor
        ``(3, height, width)`` RGB image, channels first. With no finite values the axes
        are drawn with the words "no data".
    """
    height, width = size
    palette = [tuple(c) for c in colors] if colors else list(PALETTE)
    data = {name: _as_xy(v, x, name) for name, v in curves.items()}
    img = canvas(height, width, WHITE)
    line_h = GLYPH_HEIGHT + 2

    # ranges
    xs_all = torch.cat([xv[torch.isfinite(y) & torch.isfinite(xv)] for xv, y in data.values()]
                       + [torch.zeros(0, dtype=torch.float64)])
    ys_all = torch.cat([y[torch.isfinite(y) & torch.isfinite(xv)] for xv, y in data.values()]
                       + [torch.zeros(0, dtype=torch.float64)])
    empty = len(ys_all) == 0
    x_lo, x_hi = (float(xs_all.min()), float(xs_all.max())) if not empty else (0.0, 1.0)
    integer_x = empty or bool((xs_all == xs_all.round()).all())
    if x_hi <= x_lo:
        x_lo, x_hi = x_lo - 1, x_hi + 1
    if y_range is not None:
        y_lo, y_hi = float(y_range[0]), float(y_range[1])
        if not y_hi > y_lo:
            raise ValueError(f"y_range must be (low, high) with low < high, got {y_range!r}")
        y_ticks = [t for t in nice_ticks(y_lo, y_hi) if y_lo - 1e-9 <= t <= y_hi + 1e-9]
    else:
        y_lo, y_hi = (float(ys_all.min()), float(ys_all.max())) if not empty else (0.0, 1.0)
        if y_hi - y_lo <= 1e-12 * max(1.0, abs(y_hi)):
            half = 0.5 if y_hi == 0 else abs(y_hi) * 0.1
            y_lo, y_hi = y_lo - half, y_hi + half
        y_ticks = nice_ticks(y_lo, y_hi)
        y_lo, y_hi = y_ticks[0], y_ticks[-1]
    y_step = y_ticks[1] - y_ticks[0] if len(y_ticks) > 1 else (y_hi - y_lo)
    y_labels = [_tick_label(t, y_step) for t in y_ticks]

    # margins and the plot box [left, right) x [top, bottom)
    tick_w = max(text_width(t) for t in y_labels)
    left = 4 + (line_h + 2 if y_label else 0) + tick_w + 6
    top = 6 + (line_h + 4 if title else 0)
    bottom = height - (4 + line_h + 4 + (line_h if x_label else 0))
    x_ticks_try = nice_ticks(x_lo, x_hi, max(2, (width - left) // 60), integer=integer_x)
    x_ticks = [t for t in x_ticks_try if x_lo - 1e-9 <= t <= x_hi + 1e-9]
    x_step = x_ticks_try[1] - x_ticks_try[0] if len(x_ticks_try) > 1 else 1.0
    x_labels = [_tick_label(t, x_step) for t in x_ticks]
    right = width - 4 - max(8, text_width(x_labels[-1]) // 2 if x_labels else 0)
    if right - left < 20 or bottom - top < 20:
        raise ValueError(f"size {size!r} leaves no room for the plot")
    box = (left, top, right, bottom)

    def px(v: Tensor | float) -> Tensor:
        return left + (torch.as_tensor(v, dtype=torch.float64) - x_lo) / (x_hi - x_lo) * (
            right - left - 1)

    def py(v: Tensor | float) -> Tensor:
        return bottom - 1 - (torch.as_tensor(v, dtype=torch.float64) - y_lo) / (y_hi - y_lo) * (
            bottom - top - 1)

    # grid, ticks and tick labels
    for t, label in zip(y_ticks, y_labels, strict=True):
        yy = int(py(t).round())
        fill_rect(img, left, yy, right, yy + 1, GRID)
        fill_rect(img, left - 3, yy, left, yy + 1, AXIS)
        draw_text(img, label, left - 5, yy - 3, TEXT, anchor="right")
    for t, label in zip(x_ticks, x_labels, strict=True):
        xx = int(px(t).round())
        fill_rect(img, xx, top, xx + 1, bottom, GRID)
        fill_rect(img, xx, bottom, xx + 1, bottom + 3, AXIS)
        draw_text(img, label, xx, bottom + 5, TEXT, anchor="center")
    outline_rect(img, left - 1, top - 1, right + 1, bottom + 1, AXIS)
    if title:
        draw_text(img, title, (left + right) // 2, 5, BLACK, anchor="center")
    if x_label:
        draw_text(img, x_label, (left + right) // 2, bottom + 5 + line_h, TEXT, anchor="center")
    if y_label:
        draw_text(img, y_label, 4, (top + bottom) // 2, TEXT, anchor="center", rotate=True)
    if empty:
        draw_text(img, "no data", (left + right) // 2, (top + bottom) // 2 - 4, TEXT,
                  anchor="center")

    # curves
    longest = max((len(y) for _, y in data.values()), default=0)
    marks = show_markers if show_markers is not None else longest <= 30
    for k, (xv, y) in enumerate(data.values()):
        color = palette[k % len(palette)]
        polyline(img, px(xv), py(y), color, width=2, clip=box)
        if marks:
            markers(img, px(xv), py(y), color, size=4, clip=box)

    # legend in the corner the curves cover least
    if data:
        names = list(data)
        lw = max(text_width(n) for n in names) + 22
        lh = len(names) * line_h + 6
        if lw < right - left - 4 and lh < bottom - top - 4:
            corners = [(right - 3 - lw, top + 3), (left + 3, top + 3),
                       (right - 3 - lw, bottom - 3 - lh), (left + 3, bottom - 3 - lh)]

            def covered(c: tuple[int, int]) -> int:
                region = img[:, c[1] : c[1] + lh, c[0] : c[0] + lw]
                return int(((region - torch.tensor(GRID).view(3, 1, 1)).abs().amax(0) > 0.05)
                           .logical_and((region < 0.99).any(0)).sum())

            lx, ly = min(corners, key=covered)
            fill_rect(img, lx, ly, lx + lw, ly + lh, WHITE)
            outline_rect(img, lx, ly, lx + lw, ly + lh, GRID)
            for k, name in enumerate(names):
                yy = ly + 4 + k * line_h
                color = palette[k % len(palette)]
                fill_rect(img, lx + 4, yy + 3, lx + 16, yy + 5, color)
                draw_text(img, name, lx + 20, yy, TEXT)
    img = img.clamp(0, 1)
    return (img * 255).round().to(torch.uint8) if as_uint8 else img
