"""Line plots for perturbation curves and drift over epochs: matplotlib (Agg) to arrays.

Each plot is a :class:`matplotlib.figure.Figure` drawn on its own Agg canvas, never through
pyplot's global figure list, and cleared as soon as its pixels are read, so a long run does
not accumulate figures (as ``SummaryWriter.add_figure`` users know it can).

What the plots promise: the legend sits *outside* the axes (under them), so it never covers
a curve; each series has its own colour, line style and marker, so that they can be told
apart without colour; integer x values (epochs, steps) get integer ticks, and at most 12
distinct ones are all ticked (a drift plot of 2 or 3 epochs shows each epoch).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from itertools import cycle, islice

import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from torch import Tensor

__all__ = ["figure_to_array", "line_figure", "line_plot"]

CurveData = Tensor | np.ndarray | Sequence[float]

DPI = 100
#: Line styles and markers, taken in turn with the colours (matplotlib's ``tab10``): the
#: first 12 series differ in (line style, marker), not in colour alone.
LINE_STYLES = ("-", "--", ":", "-.")
MARKERS = ("o", "s", "^", "D", "v", "P")


def _as_xy(data: CurveData | tuple[CurveData, CurveData], x: CurveData | None,
           name: str) -> tuple[np.ndarray, np.ndarray]:
    xs, ys = data if isinstance(data, tuple) and len(data) == 2 else (x, data)
    if isinstance(ys, Tensor):
        ys = ys.detach().cpu().double()  # (numpy has no bfloat16)
    y = np.asarray(ys, dtype=np.float64).reshape(-1)
    if xs is None:
        xv = np.arange(len(y), dtype=np.float64)
    else:
        xs = xs.detach().cpu().double() if isinstance(xs, Tensor) else xs
        xv = np.asarray(xs, dtype=np.float64).reshape(-1)
    if len(xv) != len(y):
        raise ValueError(f"curve {name!r} has {len(y)} values but {len(xv)} x positions")
    return xv, y


def line_figure(
    curves: Mapping[str, CurveData | tuple[CurveData, CurveData]],
    title: str = "",
    x_label: str = "",
    y_label: str = "",
    size: tuple[int, int] = (300, 420),
    *,
    x: CurveData | None = None,
    y_range: tuple[float, float] | None = None,
    show_markers: bool | None = None,
    colors: Sequence[Sequence[float]] | None = None,
) -> Figure:
    """The matplotlib :class:`~matplotlib.figure.Figure` that :func:`line_plot` renders.

    For callers who want the figure itself (to save as SVG, to restyle, or to test what is
    where). Not registered with pyplot; drop it (or ``fig.clear()``) when done. The
    parameters are :func:`line_plot`'s.
    """
    height, width = size
    if height < 60 or width < 80:
        raise ValueError(f"size {size!r} leaves no room for the plot (at least (60, 80))")
    if y_range is not None and not float(y_range[1]) > float(y_range[0]):
        raise ValueError(f"y_range must be (low, high) with low < high, got {y_range!r}")
    if not isinstance(curves, Mapping):
        raise TypeError(f"curves must be a mapping of labels to their values (or (x, y) "
                        f"pairs), {{'gradient': [...]}}, got {type(curves).__name__}")
    data = {name: _as_xy(v, x, name) for name, v in curves.items()}
    fig = Figure(figsize=(width / DPI, height / DPI), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    fontsize = 8
    palette = [tuple(c) for c in colors] if colors else [f"C{k}" for k in range(10)]
    longest = max((len(y) for _, y in data.values()), default=0)
    marks = show_markers if show_markers is not None else True
    styles = islice(cycle(zip(LINE_STYLES * 3, MARKERS * 2, strict=True)), len(data))
    for k, ((name, (xv, y)), (style, marker)) in enumerate(zip(data.items(), styles,
                                                               strict=True)):
        ax.plot(xv, y, label=name, color=palette[k % len(palette)], linestyle=style,
                linewidth=1.5, marker=marker if marks else None, markersize=4,
                markevery=max(1, longest // 12))
    finite = [(xv[m], y[m]) for xv, y in data.values()
              for m in [np.isfinite(xv) & np.isfinite(y)] if m.any()]
    if not finite:
        ax.text(0.5, 0.5, "no data", transform=ax.transAxes, ha="center", va="center",
                fontsize=fontsize + 1, color="0.3")
    else:
        xs_all = np.concatenate([f[0] for f in finite])
        if np.all(xs_all == np.round(xs_all)):  # epochs, steps: whole-number ticks
            distinct = np.unique(xs_all)
            if len(distinct) <= 12:
                ax.set_xticks(distinct)
            else:
                ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            if len(distinct) == 1:
                ax.set_xlim(distinct[0] - 1, distinct[0] + 1)
    if y_range is not None:
        ax.set_ylim(float(y_range[0]), float(y_range[1]))
    ax.grid(True, color="0.9", linewidth=0.8)
    ax.set_axisbelow(True)
    ax.tick_params(labelsize=fontsize)
    if title:
        ax.set_title(title, fontsize=fontsize + 1)
    ax.set_xlabel(x_label, fontsize=fontsize)
    ax.set_ylabel(y_label, fontsize=fontsize)
    if data:  # in as many columns (at most 3) as fit the figure's width
        renderer = fig.canvas.get_renderer()
        for ncols in range(min(len(data), 3), 0, -1):
            legend = fig.legend(loc="outside lower center", ncols=ncols, fontsize=fontsize - 1,
                                frameon=False, handlelength=2.5, columnspacing=1.2)
            if ncols == 1 or legend.get_window_extent(renderer).width <= width - 4:
                break
            legend.remove()
    return fig


def figure_to_array(fig: Figure) -> np.ndarray:
    """Draw ``fig`` with Agg and return its pixels, ``(H, W, 3)`` uint8; then clear it."""
    canvas = fig.canvas if isinstance(fig.canvas, FigureCanvasAgg) else FigureCanvasAgg(fig)
    try:
        canvas.draw()
        return np.asarray(canvas.buffer_rgba())[:, :, :3].copy()
    finally:
        fig.clear()


def line_plot(
    curves: Mapping[str, CurveData | tuple[CurveData, CurveData]],
    title: str = "",
    x_label: str = "",
    y_label: str = "",
    size: tuple[int, int] = (300, 420),
    *,
    x: CurveData | None = None,
    y_range: tuple[float, float] | None = None,
    show_markers: bool | None = None,
    colors: Sequence[Sequence[float]] | None = None,
    as_uint8: bool = False,
) -> Tensor:
    """Draw curves with axes, ticks, a title, axis labels and a legend into an RGB image.

    Meant for the dashboard: perturbation curves over perturbation steps (or the fraction
    of the input changed), and attribution drift over epochs. Drawn by matplotlib's Agg
    backend (:func:`line_figure`), the figure freed afterwards.

    Parameters
    ----------
    curves : mapping of str to values, or to (x, y) pairs
        Label -> 1-D values (Tensor, ndarray or list). A value that is NaN or infinite
        leaves a gap. A pair ``(x, y)`` gives the curve its own x positions.
    title, x_label, y_label : str
        Texts above the plot, under the x axis and left of the y axis: say what the
        numbers are (``"logit of the explained class"``, ``"epoch"``).
    size : (int, int)
        ``(height, width)`` of the image in pixels.
    x : values, optional
        x positions shared by all curves given without their own (e.g. the epochs).
        Default: 0, 1, 2, ...
    y_range : (float, float), optional
        Fixed y limits (e.g. ``(0, 1)`` for similarities). Default: the data's range.
    show_markers : bool, optional
        Markers on the points (about 12 per curve on long curves); default True. Each
        series has its own marker and line style as well as its colour.
    colors : sequence of (r, g, b), optional
        One colour per curve in order; default matplotlib's ``tab10``.
    as_uint8 : bool
        Return ``uint8`` in ``0..255`` instead of float in ``[0, 1]``.

    Returns
    -------
    Tensor
        ``(3, height, width)`` RGB image, channels first. With no finite values the axes
        are drawn with the words "no data".
    """
    fig = line_figure(curves, title, x_label, y_label, size, x=x, y_range=y_range,
                      show_markers=show_markers, colors=colors)
    pixels = figure_to_array(fig)
    del fig
    image = torch.from_numpy(pixels).permute(2, 0, 1).contiguous()
    return image if as_uint8 else image.float() / 255
