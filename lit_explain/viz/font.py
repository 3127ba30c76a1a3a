"""Text on ``(3, H, W)`` float canvases, set in DejaVu Sans.

The font is the DejaVu Sans that matplotlib ships (Latin with its accents, Greek, Cyrillic
and many symbols: "café", "naïve", "Ω"; Pillow's default font has ASCII only and drew
boxes for the rest), loaded by Pillow's FreeType; where it is missing, Pillow's scalable
default font. Scripts neither has (CJK) still come out as boxes. A line of text is
:data:`LINE_HEIGHT` pixels high at scale 1 (the font's ascent plus descent at
:data:`FONT_SIZE` pixels); ``scale`` multiplies the font size, so text stays sharp when it
is larger. Glyphs are anti-aliased: the text's
coverage of each pixel blends the colour into the canvas.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path

import matplotlib
import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont
from torch import Tensor

__all__ = ["FONT_SIZE", "LINE_HEIGHT", "draw_text", "line_height", "text_mask", "text_width"]

#: Font size in pixels at scale 1.
FONT_SIZE = 11


#: matplotlib's copy of DejaVu Sans (a dependency of this package).
DEJAVU_SANS = Path(matplotlib.__file__).parent / "mpl-data" / "fonts" / "ttf" / "DejaVuSans.ttf"


@lru_cache(maxsize=8)
def _font(scale: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    try:
        return ImageFont.truetype(str(DEJAVU_SANS), FONT_SIZE * scale)
    except OSError:  # (no such file, or Pillow without FreeType)
        return ImageFont.load_default(size=FONT_SIZE * scale)


def line_height(scale: int = 1) -> int:
    """Pixels from the top of a line of text to the bottom of its descenders."""
    font = _font(scale)
    if isinstance(font, ImageFont.FreeTypeFont):
        ascent, descent = font.getmetrics()
        return ascent + descent
    return FONT_SIZE * scale  # Pillow without FreeType: its fixed bitmap font


#: The height of a line of text at scale 1.
LINE_HEIGHT = line_height(1)


@lru_cache(maxsize=4096)
def text_width(text: str, scale: int = 1) -> int:
    """Width in pixels that ``text`` takes (its advance)."""
    return int(np.ceil(_font(scale).getlength(text))) if text else 0


@lru_cache(maxsize=4096)
def _mask(text: str, scale: int) -> np.ndarray:
    width, height = text_width(text, scale), line_height(scale)
    image = Image.new("L", (max(width, 1), height), 0)
    if text:
        ImageDraw.Draw(image).text((0, 0), text, fill=255, font=_font(scale), anchor="la")
    return np.asarray(image, dtype=np.float32)[:, :width] / 255.0


@lru_cache(maxsize=512)
def _blend(text: str, scale: int, color: tuple[float, ...], dtype: torch.dtype
           ) -> tuple[Tensor, Tensor]:
    """The two factors of drawing ``text`` in ``color``, ``1 - alpha`` ``(h, w)`` and
    ``alpha * ink`` ``(3, h, w)``, made once per label (a grid writes the same headers,
    labels and ticks every epoch)."""
    alpha = torch.from_numpy(_mask(text, scale)).to(dtype)
    ink = torch.tensor(color, dtype=dtype).view(3, 1, 1)
    return 1 - alpha, alpha * ink


def text_mask(text: str, scale: int = 1) -> Tensor:
    """How much ink ``text`` puts on each pixel: ``(line_height(scale), text_width)``
    floats in ``[0, 1]`` (Pillow's anti-aliased rendering, top of the line at row 0)."""
    return torch.from_numpy(_mask(text, scale).copy())


def draw_text(
    canvas: Tensor,
    text: str,
    x: int,
    y: int,
    color: Sequence[float] = (0.0, 0.0, 0.0),
    scale: int = 1,
    anchor: str = "left",
    rotate: bool = False,
) -> None:
    """Draw ``text`` into a ``(3, H, W)`` float canvas, in place, clipped to it.

    Parameters
    ----------
    canvas : Tensor
        ``(3, H, W)`` floats in ``[0, 1]``.
    text : str
        One line of text.
    x, y : int
        Where the text goes: ``y`` is the top of the line; ``x`` its left end, centre or
        right end by ``anchor``. Turned text (``rotate``) reads upwards and is centred on
        ``(x, y)`` with ``anchor="center"``, else starts at its bottom-left ``(x, y)``.
    color : (r, g, b)
        Ink colour in ``[0, 1]``.
    scale : int
        Font size multiplier.
    anchor : {"left", "center", "right"}
    rotate : bool
        Turn the text 90 degrees counter-clockwise (a y-axis label).
    """
    if anchor not in ("left", "center", "right"):
        raise ValueError(f"anchor must be 'left', 'center' or 'right', got {anchor!r}")
    keep, ink = _blend(text, scale, tuple(map(float, color)), canvas.dtype)  # cached
    if keep.numel() == 0:
        return
    if rotate:  # reads bottom to top
        keep, ink = keep.T.flip(0), ink.transpose(1, 2).flip(1)
        h, w = keep.shape
        x0 = x - w // 2 if anchor == "center" else x
        y0 = y - h // 2 if anchor == "center" else y - h
    else:
        h, w = keep.shape
        x0 = x - {"left": 0, "center": w // 2, "right": w}[anchor]
        y0 = y
    _, H, W = canvas.shape
    cx0, cy0, cx1, cy1 = max(x0, 0), max(y0, 0), min(x0 + w, W), min(y0 + h, H)
    if cx1 <= cx0 or cy1 <= cy0:
        return
    rows, cols = slice(cy0 - y0, cy1 - y0), slice(cx0 - x0, cx1 - x0)
    region = canvas[:, cy0:cy1, cx0:cx1]
    region.mul_(keep[rows, cols]).add_(ink[:, rows, cols])
