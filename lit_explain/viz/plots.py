"""Line plots as RGB tensors, for perturbation curves and drift over epochs (no matplotlib)."""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor

from ._canvas import BLACK, PALETTE, WHITE, canvas, fill_rect, outline_rect, polyline
from .font import GLYPH_HEIGHT, draw_text, text_width

GRID = (0.88, 0.88, 0.88)


def _label(value: float) -> str:
    return f"{value:.3g}"


def line_plot(curves: Mapping[str, Tensor], title: str = "", x_label: str = "",
              y_label: str = "", size: tuple[int, int] = (240, 360)) -> Tensor:
    """Draw curves (index on the x axis, value on the y axis) with axes and a legend.

    Parameters
    ----------
    curves:
        Label → 1-D tensor of values; each curve gets its own colour (d3's category10).
    title, x_label, y_label:
        Texts around the plot.
    size:
        ``(height, width)`` of the image in pixels.

    Returns
    -------
    Tensor
        ``(3, height, width)`` float RGB image in ``[0, 1]``.
    """
    height, width = size
    image = canvas(height, width, WHITE)
    values = {k: torch.as_tensor(v, dtype=torch.float64).detach().cpu().flatten()
              for k, v in curves.items()}
    finite = [v[torch.isfinite(v)] for v in values.values()]
    finite = torch.cat(finite) if finite else torch.zeros(0, dtype=torch.float64)
    low, high = (float(finite.min()), float(finite.max())) if len(finite) else (0.0, 1.0)
    if high - low < 1e-12:
        low, high = low - 0.5, high + 0.5
    margin = 0.05 * (high - low)
    low, high = low - margin, high + margin
    steps = max([len(v) for v in values.values()] + [2]) - 1

    tick_w = max(text_width(_label(low)), text_width(_label(high)))
    left = 6 + GLYPH_HEIGHT + 4 + tick_w + 4
    top = 6 + (GLYPH_HEIGHT + 6 if title else 0)
    right, bottom = width - 10, height - (6 + 2 * GLYPH_HEIGHT + 8)
    box = (left, top, right, bottom)

    def to_x(index: Tensor) -> Tensor:
        return left + index / max(steps, 1) * (right - left - 1)

    def to_y(value: Tensor) -> Tensor:
        return bottom - 1 - (value - low) / (high - low) * (bottom - top - 1)

    for fraction in (0.25, 0.5, 0.75):
        fill_rect(image, left, int(top + fraction * (bottom - top)), right,
                  int(top + fraction * (bottom - top)) + 1, GRID)
    outline_rect(image, left - 1, top - 1, right + 1, bottom + 1, BLACK)
    for value in (low + margin, high - margin):
        y = int(to_y(torch.tensor(value)))
        draw_text(image, _label(value), left - 4, y - GLYPH_HEIGHT // 2, BLACK, anchor="right")
    for index in sorted({0, steps // 2, steps}):
        draw_text(image, str(index), int(to_x(torch.tensor(float(index)))), bottom + 4, BLACK,
                  anchor="center")
    if title:
        draw_text(image, title, width // 2, 4, BLACK, anchor="center")
    if x_label:
        draw_text(image, x_label, (left + right) // 2, bottom + GLYPH_HEIGHT + 8, BLACK,
                  anchor="center")
    if y_label:
        draw_text(image, y_label, 4, (top + bottom) // 2, BLACK, anchor="center", rotate=True)

    for k, curve in enumerate(values.values()):
        xs = to_x(torch.arange(len(curve), dtype=torch.float64))
        polyline(image, xs, to_y(curve), PALETTE[k % len(PALETTE)], width=2, clip=box)
    legend_w = max([text_width(label) for label in values] + [0]) + 14
    if values:  # a white box under the legend keeps it readable over the curves
        fill_rect(image, right - 10 - legend_w, top + 1, right - 1,
                  top + 6 + len(values) * (GLYPH_HEIGHT + 3), WHITE)
    for k, label in enumerate(values):
        color = PALETTE[k % len(PALETTE)]
        y = top + 4 + k * (GLYPH_HEIGHT + 3)
        x = right - 6 - text_width(label) - 14
        fill_rect(image, x, y + GLYPH_HEIGHT // 2 - 1, x + 10, y + GLYPH_HEIGHT // 2 + 1, color)
        draw_text(image, label, x + 14, y, BLACK)
    return image
