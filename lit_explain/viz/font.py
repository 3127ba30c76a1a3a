"""A 5x7 pixel bitmap font (with 2 rows of descent) and text rendering into tensors.

Each glyph is 5 pixels wide (``#`` ink, ``.`` paper), in the style of the classic HD44780
character LCD: capitals, digits and the bodies of lower-case letters sit in 7 rows above
the baseline; the descenders of g, j, p, q, y and of ``,`` ``;`` take 2 more rows, so a
line of text is 9 pixels high. Characters are set 6 pixels apart (one blank column). A
character without a glyph is drawn as an open box.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache

import torch
from torch import Tensor

__all__ = [
    "GLYPH_HEIGHT",
    "GLYPH_WIDTH",
    "GLYPHS",
    "draw_text",
    "text_mask",
    "text_width",
]

GLYPH_WIDTH = 5
GLYPH_HEIGHT = 9  # 7 rows above the baseline, 2 of descent
_ADVANCE = GLYPH_WIDTH + 1

# fmt: off
#: Glyphs: character -> rows of 5 pixels separated by spaces, top down; 7 rows (those
#: above the baseline) or 9 (with the descent).
GLYPHS: dict[str, str] = {
    " ": "..... ..... ..... ..... ..... ..... .....",
    "A": ".###. #...# #...# #...# ##### #...# #...#",
    "B": "####. #...# #...# ####. #...# #...# ####.",
    "C": ".###. #...# #.... #.... #.... #...# .###.",
    "D": "###.. #..#. #...# #...# #...# #..#. ###..",
    "E": "##### #.... #.... ####. #.... #.... #####",
    "F": "##### #.... #.... ####. #.... #.... #....",
    "G": ".###. #...# #.... #.### #...# #...# .####",
    "H": "#...# #...# #...# ##### #...# #...# #...#",
    "I": ".###. ..#.. ..#.. ..#.. ..#.. ..#.. .###.",
    "J": "..### ...#. ...#. ...#. ...#. #..#. .##..",
    "K": "#...# #..#. #.#.. ##... #.#.. #..#. #...#",
    "L": "#.... #.... #.... #.... #.... #.... #####",
    "M": "#...# ##.## #.#.# #.#.# #...# #...# #...#",
    "N": "#...# #...# ##..# #.#.# #..## #...# #...#",
    "O": ".###. #...# #...# #...# #...# #...# .###.",
    "P": "####. #...# #...# ####. #.... #.... #....",
    "Q": ".###. #...# #...# #...# #.#.# #..#. .##.#",
    "R": "####. #...# #...# ####. #.#.. #..#. #...#",
    "S": ".#### #.... #.... .###. ....# ....# ####.",
    "T": "##### ..#.. ..#.. ..#.. ..#.. ..#.. ..#..",
    "U": "#...# #...# #...# #...# #...# #...# .###.",
    "V": "#...# #...# #...# #...# #...# .#.#. ..#..",
    "W": "#...# #...# #...# #.#.# #.#.# #.#.# .#.#.",
    "X": "#...# #...# .#.#. ..#.. .#.#. #...# #...#",
    "Y": "#...# #...# .#.#. ..#.. ..#.. ..#.. ..#..",
    "Z": "##### ....# ...#. ..#.. .#... #.... #####",
    "a": "..... ..... .###. ....# .#### #...# .####",
    "b": "#.... #.... #.##. ##..# #...# #...# ####.",
    "c": "..... ..... .###. #.... #.... #...# .###.",
    "d": "....# ....# .##.# #..## #...# #...# .####",
    "e": "..... ..... .###. #...# ##### #.... .###.",
    "f": "..##. .#..# .#... ###.. .#... .#... .#...",
    "g": "..... ..... .#### #...# #...# #...# .#### ....# .###.",
    "h": "#.... #.... #.##. ##..# #...# #...# #...#",
    "i": "..#.. ..... .##.. ..#.. ..#.. ..#.. .###.",
    "j": "...#. ..... ..##. ...#. ...#. ...#. ...#. #..#. .##..",
    "k": "#.... #.... #..#. #.#.. ##... #.#.. #..#.",
    "l": ".##.. ..#.. ..#.. ..#.. ..#.. ..#.. .###.",
    "m": "..... ..... ##.#. #.#.# #.#.# #...# #...#",
    "n": "..... ..... #.##. ##..# #...# #...# #...#",
    "o": "..... ..... .###. #...# #...# #...# .###.",
    "p": "..... ..... ####. #...# #...# #...# ####. #.... #....",
    "q": "..... ..... .#### #...# #...# #...# .#### ....# ....#",
    "r": "..... ..... #.##. ##..# #.... #.... #....",
    "s": "..... ..... .###. #.... .###. ....# ####.",
    "t": ".#... .#... ###.. .#... .#... .#..# ..##.",
    "u": "..... ..... #...# #...# #...# #..## .##.#",
    "v": "..... ..... #...# #...# #...# .#.#. ..#..",
    "w": "..... ..... #...# #...# #.#.# #.#.# .#.#.",
    "x": "..... ..... #...# .#.#. ..#.. .#.#. #...#",
    "y": "..... ..... #...# #...# #...# #...# .#### ....# .###.",
    "z": "..... ..... ##### ...#. ..#.. .#... #####",
    "0": ".###. #...# #..## #.#.# ##..# #...# .###.",
    "1": "..#.. .##.. ..#.. ..#.. ..#.. ..#.. .###.",
    "2": ".###. #...# ....# ...#. ..#.. .#... #####",
    "3": "##### ...#. ..#.. ...#. ....# #...# .###.",
    "4": "...#. ..##. .#.#. #..#. ##### ...#. ...#.",
    "5": "##### #.... ####. ....# ....# #...# .###.",
    "6": "..##. .#... #.... ####. #...# #...# .###.",
    "7": "##### ....# ...#. ..#.. .#... .#... .#...",
    "8": ".###. #...# #...# .###. #...# #...# .###.",
    "9": ".###. #...# #...# .#### ....# ...#. .##..",
    ".": "..... ..... ..... ..... ..... .##.. .##..",
    ",": "..... ..... ..... ..... ..... .##.. .##.. ..#.. .#...",
    "_": "..... ..... ..... ..... ..... ..... #####",
    "-": "..... ..... ..... .###. ..... ..... .....",
    "+": "..... ..#.. ..#.. ##### ..#.. ..#.. .....",
    "/": "..... ....# ...#. ..#.. .#... #.... .....",
    "\\": "..... #.... .#... ..#.. ...#. ....# .....",
    ":": "..... .##.. .##.. ..... .##.. .##.. .....",
    ";": "..... .##.. .##.. ..... ..... .##.. .##.. ..#.. .#...",
    "|": "..#.. ..#.. ..#.. ..#.. ..#.. ..#.. ..#..",
    "=": "..... ..... ##### ..... ##### ..... .....",
    "(": "...#. ..#.. .#... .#... .#... ..#.. ...#.",
    ")": ".#... ..#.. ...#. ...#. ...#. ..#.. .#...",
    "[": ".###. .#... .#... .#... .#... .#... .###.",
    "]": ".###. ...#. ...#. ...#. ...#. ...#. .###.",
    "<": "...#. ..#.. .#... #.... .#... ..#.. ...#.",
    ">": ".#... ..#.. ...#. ....# ...#. ..#.. .#...",
    "×": "..... #...# .#.#. ..#.. .#.#. #...# .....",
    "*": "..... ..#.. #.#.# .###. #.#.# ..#.. .....",
    "%": "##... ##..# ...#. ..#.. .#... #..## ...##",
    "!": "..#.. ..#.. ..#.. ..#.. ..#.. ..... ..#..",
    "?": ".###. #...# ....# ...#. ..#.. ..... ..#..",
    "'": "..#.. ..#.. .#... ..... ..... ..... .....",
    '"': ".#.#. .#.#. ..... ..... ..... ..... .....",
    "#": ".#.#. .#.#. ##### .#.#. ##### .#.#. .#.#.",
    "^": "..#.. .#.#. #...# ..... ..... ..... .....",
    "~": "..... ..... .#... #.#.# ...#. ..... .....",
    "@": ".###. #...# #.### #.#.# #.### #.... .####",
    "&": ".##.. #..#. #.#.. .#... #.#.# #..#. .##.#",
    "$": "..#.. .#### #.#.. .###. ..#.# ####. ..#..",
}
_MISSING = "##### #...# #...# #...# #...# #...# #####"
# fmt: on


@lru_cache(maxsize=1)
def _atlas() -> tuple[dict[str, int], Tensor]:
    """Character -> index, and all glyphs as a bool tensor ``(n + 1, 9, 6)``.

    Each glyph carries its blank spacing column on the right; the last entry is the box
    drawn for characters without a glyph.
    """
    index = {ch: i for i, ch in enumerate(GLYPHS)}
    rows = [*GLYPHS.values(), _MISSING]
    atlas = torch.zeros(len(rows), GLYPH_HEIGHT, _ADVANCE, dtype=torch.bool)
    for i, glyph in enumerate(rows):
        for r, row in enumerate(glyph.split()):
            for c, px in enumerate(row):
                atlas[i, r, c] = px == "#"
    return index, atlas


def text_width(text: str, scale: int = 1) -> int:
    """Width in pixels of ``text`` set in one line at ``scale``."""
    return max(0, len(text) * _ADVANCE - 1) * scale


def text_mask(text: str, scale: int = 1) -> Tensor:
    """Ink of ``text`` set in one line: a bool tensor ``(9 * scale, text_width(text, scale))``.

    Parameters
    ----------
    text : str
        The characters; those without a glyph are drawn as a box.
    scale : int
        Integer magnification (each font pixel becomes ``scale x scale`` pixels).

    Returns
    -------
    Tensor
        bool, ``True`` where there is ink; 7 rows above the baseline, 2 of descent.
    """
    if scale < 1:
        raise ValueError(f"scale must be a positive integer, got {scale!r}")
    index, atlas = _atlas()
    if not text:
        return torch.zeros(GLYPH_HEIGHT * scale, 0, dtype=torch.bool)
    ids = torch.tensor([index.get(ch, len(atlas) - 1) for ch in text])
    mask = atlas[ids].permute(1, 0, 2).reshape(GLYPH_HEIGHT, -1)[:, :-1]
    if scale > 1:
        mask = mask.repeat_interleave(scale, 0).repeat_interleave(scale, 1)
    return mask


def draw_text(
    canvas: Tensor,
    text: str,
    x: int,
    y: int,
    color: Sequence[float] = (0.0, 0.0, 0.0),
    scale: int = 1,
    anchor: str = "left",
    rotate: bool = False,
) -> Tensor:
    """Draw ``text`` into a ``(3, H, W)`` float canvas in place, clipped to its edges.

    Parameters
    ----------
    canvas : Tensor
        ``(3, H, W)`` image; modified in place and returned.
    text : str
        One line of text.
    x, y : int
        Position of the text's top-left corner (``anchor="left"``), top centre
        (``"center"``) or top-right corner (``"right"``).
    color : (r, g, b)
        Ink colour in ``[0, 1]``.
    scale : int
        Integer magnification.
    anchor : {"left", "center", "right"}
        Which point of the text ``x`` refers to.
    rotate : bool
        Turn the text 90 degrees counter-clockwise (reading bottom to top, for a y-axis
        label); ``x, y`` is then the top-left corner of the turned block and ``anchor``
        refers to its vertical extent (``"center"`` centres it on ``y``).

    Returns
    -------
    Tensor
        ``canvas``, drawn on.
    """
    if anchor not in ("left", "center", "right"):
        raise ValueError(f"unknown anchor {anchor!r}; valid ones: 'left', 'center', 'right'")
    mask = text_mask(text, scale)
    if rotate:
        mask = torch.rot90(mask, 1, (0, 1))
        h = mask.shape[0]
        y = y - h // 2 if anchor == "center" else (y - h if anchor == "right" else y)
    else:
        w = mask.shape[1]
        x = x - w // 2 if anchor == "center" else (x - w if anchor == "right" else x)
    _, H, W = canvas.shape
    mh, mw = mask.shape
    # clip the mask to the canvas
    x0, y0 = max(x, 0), max(y, 0)
    x1, y1 = min(x + mw, W), min(y + mh, H)
    if x1 <= x0 or y1 <= y0:
        return canvas
    sub = mask[y0 - y : y1 - y, x0 - x : x1 - x].to(canvas.device)
    ink = torch.as_tensor(color, dtype=canvas.dtype, device=canvas.device).view(3, 1, 1)
    region = canvas[:, y0:y1, x0:x1]
    region.copy_(torch.where(sub, ink, region))
    return canvas
