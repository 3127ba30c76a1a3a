"""Drawing primitives on ``(3, H, W)`` float canvases: rectangles, polylines, markers.

Everything clips to the canvas (or to a given box) and draws in place.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

Color = Sequence[float]
Box = tuple[int, int, int, int]  # x0, y0, x1, y1 (exclusive ends)

WHITE = (1.0, 1.0, 1.0)
BLACK = (0.0, 0.0, 0.0)

#: Ten distinct line colours (the "category10" palette of d3 and matplotlib's ``tab10``).
PALETTE: tuple[tuple[float, float, float], ...] = tuple(
    tuple(int(h[i : i + 2], 16) / 255 for i in (0, 2, 4))  # type: ignore[misc]
    for h in (
        "1f77b4", "ff7f0e", "2ca02c", "d62728", "9467bd",
        "8c564b", "e377c2", "7f7f7f", "bcbd22", "17becf",
    )
)  # fmt: skip


def canvas(height: int, width: int, color: Color = WHITE) -> Tensor:
    """A new ``(3, height, width)`` float32 canvas filled with ``color``."""
    c = torch.empty(3, height, width)
    c[:] = torch.tensor(color, dtype=torch.float32).view(3, 1, 1)
    return c


def fill_rect(c: Tensor, x0: int, y0: int, x1: int, y1: int, color: Color) -> None:
    """Fill the pixels ``x0 <= x < x1``, ``y0 <= y < y1``."""
    _, H, W = c.shape
    x0, x1, y0, y1 = max(x0, 0), min(x1, W), max(y0, 0), min(y1, H)
    if x1 > x0 and y1 > y0:
        c[:, y0:y1, x0:x1] = torch.tensor(color, dtype=c.dtype).view(3, 1, 1)


def outline_rect(c: Tensor, x0: int, y0: int, x1: int, y1: int, color: Color,
                 width: int = 1) -> None:
    """Draw a frame of ``width`` pixels *inside* the box ``[x0, x1) x [y0, y1)``."""
    fill_rect(c, x0, y0, x1, y0 + width, color)
    fill_rect(c, x0, y1 - width, x1, y1, color)
    fill_rect(c, x0, y0, x0 + width, y1, color)
    fill_rect(c, x1 - width, y0, x1, y1, color)


def paste(c: Tensor, image: Tensor, x: int, y: int) -> None:
    """Copy a ``(3, h, w)`` image with its top-left corner at ``(x, y)``, clipped."""
    _, H, W = c.shape
    _, h, w = image.shape
    x0, y0, x1, y1 = max(x, 0), max(y, 0), min(x + w, W), min(y + h, H)
    if x1 > x0 and y1 > y0:
        c[:, y0:y1, x0:x1] = image[:, y0 - y : y1 - y, x0 - x : x1 - x].to(c.dtype)


def _stamp(c: Tensor, xs: Tensor, ys: Tensor, color: Color, size: int, clip: Box | None) -> None:
    """Paint ``size x size`` squares centred on integer pixel positions ``(xs, ys)``."""
    _, H, W = c.shape
    x0, y0, x1, y1 = clip if clip is not None else (0, 0, W, H)
    x0, y0, x1, y1 = max(x0, 0), max(y0, 0), min(x1, W), min(y1, H)
    offs = torch.arange(size) - (size - 1) // 2
    X = (xs[:, None, None] + offs[None, None, :]).expand(-1, size, size).reshape(-1)
    Y = (ys[:, None, None] + offs[None, :, None]).expand(-1, size, size).reshape(-1)
    keep = (X >= x0) & (X < x1) & (Y >= y0) & (Y < y1)
    X, Y = X[keep], Y[keep]
    col = torch.tensor(color, dtype=c.dtype)
    for ch in range(3):
        c[ch, Y, X] = col[ch]


def polyline(
    c: Tensor,
    xs: Sequence[float] | Tensor,
    ys: Sequence[float] | Tensor,
    color: Color,
    width: int = 2,
    clip: Box | None = None,
) -> None:
    """Draw straight segments through the points ``(xs[i], ys[i])`` (pixel coordinates).

    A non-finite coordinate breaks the line (as a gap in a curve). Each segment is sampled
    at about two points per pixel of its length and stamped with a ``width``-pixel square.
    """
    xs = torch.as_tensor(xs, dtype=torch.float64).flatten()
    ys = torch.as_tensor(ys, dtype=torch.float64).flatten()
    px: list[Tensor] = []
    py: list[Tensor] = []
    finite = torch.isfinite(xs) & torch.isfinite(ys)
    for i in range(len(xs)):
        if not finite[i]:
            continue
        if i + 1 < len(xs) and finite[i + 1]:
            length = math.hypot(float(xs[i + 1] - xs[i]), float(ys[i + 1] - ys[i]))
            t = torch.linspace(0, 1, max(2, int(2 * length) + 2), dtype=torch.float64)
            px.append(xs[i] + (xs[i + 1] - xs[i]) * t)
            py.append(ys[i] + (ys[i + 1] - ys[i]) * t)
        else:  # an isolated point still shows
            px.append(xs[i : i + 1])
            py.append(ys[i : i + 1])
    if px:
        X = torch.cat(px).round().long()
        Y = torch.cat(py).round().long()
        _stamp(c, X, Y, color, width, clip)


def markers(
    c: Tensor,
    xs: Sequence[float] | Tensor,
    ys: Sequence[float] | Tensor,
    color: Color,
    size: int = 4,
    clip: Box | None = None,
) -> None:
    """Draw ``size x size`` square markers at the finite points ``(xs[i], ys[i])``."""
    xs = torch.as_tensor(xs, dtype=torch.float64).flatten()
    ys = torch.as_tensor(ys, dtype=torch.float64).flatten()
    ok = torch.isfinite(xs) & torch.isfinite(ys)
    _stamp(c, xs[ok].round().long(), ys[ok].round().long(), color, size, clip)


def upscale(image: Tensor, factor: int) -> Tensor:
    """Nearest-neighbour magnification of ``(..., H, W)`` by an integer ``factor``."""
    if factor <= 1:
        return image
    return image.repeat_interleave(factor, -2).repeat_interleave(factor, -1)
