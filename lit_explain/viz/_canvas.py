"""Drawing primitives on ``(3, H, W)`` float canvases: filled and outlined rectangles,
pasting and magnifying images. Everything clips to the canvas and draws in place.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache

import torch
from torch import Tensor

Color = Sequence[float]

WHITE = (1.0, 1.0, 1.0)


def canvas(height: int, width: int, color: Color = WHITE) -> Tensor:
    """A new ``(3, height, width)`` float32 canvas filled with ``color``."""
    c = torch.empty(3, height, width)
    c[:] = torch.tensor(color, dtype=torch.float32).view(3, 1, 1)
    return c


@lru_cache(maxsize=64)
def _color(color: tuple[float, ...], dtype: torch.dtype) -> Tensor:
    """``color`` as a ``(3, 1, 1)`` tensor, made once (a grid fills hundreds of frames)."""
    return torch.tensor(color, dtype=dtype).view(3, 1, 1)


def fill_rect(c: Tensor, x0: int, y0: int, x1: int, y1: int, color: Color) -> None:
    """Fill the pixels ``x0 <= x < x1``, ``y0 <= y < y1``."""
    _, H, W = c.shape
    x0, x1, y0, y1 = max(x0, 0), min(x1, W), max(y0, 0), min(y1, H)
    if x1 > x0 and y1 > y0:
        c[:, y0:y1, x0:x1] = _color(tuple(map(float, color)), c.dtype)


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


def paste_column(c: Tensor, cells: Tensor, x: int, y: int, step: int,
                 frame: Color | None = None, factor: int = 1) -> None:
    """Paste ``cells`` ``(N, 3, h, w)``, magnified by ``factor`` (as :func:`upscale` does),
    one under the other: the top-left corner of cell ``i`` at ``(x, y + i * step)``, each
    over a filled 1-pixel ``frame`` box. What ``fill_rect`` of each box and ``paste`` of each
    magnified cell draw, in one assignment each and with no magnified copy.

    The boxes must lie inside the canvas and not overlap (``step >= h * factor + 2`` with a
    frame, ``>= h * factor`` without).
    """
    n, _, h0, w0 = cells.shape
    h, w = h0 * factor, w0 * factor
    border = 1 if frame is not None else 0
    _, H, W = c.shape
    if (x - border < 0 or y - border < 0 or x + w + border > W
            or y - border + n * step > H or step < h + 2 * border):
        raise ValueError(f"cells of {h}x{w} every {step} rows at ({x}, {y}) do not fit the "
                         f"canvas {H}x{W} without overlapping")
    rows = c[:, y - border : y - border + n * step, x - border : x + w + border]
    rows = rows.unflatten(1, (n, step))  # (3, N, step, w + 2 * border)
    if frame is not None:
        rows[:, :, : h + 2] = _color(tuple(map(float, frame)), c.dtype).unsqueeze(1)
    target = rows[:, :, border : border + h, border : border + w]
    # (3, N, h0, factor, w0, factor): every source pixel onto its factor x factor block
    target = target.unflatten(2, (h0, factor)).unflatten(4, (w0, factor))
    target.copy_(cells.to(c.dtype).transpose(0, 1)[:, :, :, None, :, None].expand_as(target))


def upscale(image: Tensor, factor: int) -> Tensor:
    """Nearest-neighbour magnification of ``(..., H, W)`` by an integer ``factor``."""
    if factor <= 1:
        return image
    return image.repeat_interleave(factor, -2).repeat_interleave(factor, -1)
