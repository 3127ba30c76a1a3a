"""The bitmap font and the PNG writer."""

from __future__ import annotations

import struct
import zlib

import numpy as np
import pytest
import torch

from lit_explain import viz
from lit_explain.viz.font import GLYPH_HEIGHT, GLYPHS, draw_text, text_mask, text_width


def test_every_glyph_is_five_wide_and_seven_or_nine_high():
    for ch, glyph in GLYPHS.items():
        rows = glyph.split()
        assert len(rows) in (7, 9) and all(len(r) == 5 for r in rows), ch
        assert set("".join(rows)) <= {"#", "."}, ch
    needed = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-/:|=()× "
    assert set(needed) <= set(GLYPHS)


def test_text_puts_ink_where_the_glyph_has_it():
    mask = text_mask("1")
    assert mask.shape == (GLYPH_HEIGHT, 5)
    expected = torch.tensor([[c == "#" for c in row] for row in GLYPHS["1"].split()])
    assert torch.equal(mask[:7], expected) and not mask[7:].any()
    image = torch.ones(3, 20, 20)
    draw_text(image, "1", 3, 4, (0.0, 0.0, 0.0))
    ink = (image == 0).all(0)
    assert torch.equal(ink[4 : 4 + GLYPH_HEIGHT, 3:8], mask)
    assert ink.sum() == mask.sum()
    # characters 6 px apart; scale 2 doubles every pixel; unknown characters are boxes
    assert text_mask("ab").shape == (GLYPH_HEIGHT, 11) == (GLYPH_HEIGHT, text_width("ab"))
    assert torch.equal(text_mask("x", 2), text_mask("x").repeat_interleave(2, 0)
                       .repeat_interleave(2, 1))
    assert text_mask("\u03b1")[0].all()  # a box's top edge


def test_draw_text_anchors_rotates_and_clips():
    image = torch.ones(3, 12, 40)
    draw_text(image, "11", 20, 0, (1.0, 0.0, 0.0), anchor="center")
    cols = (image[1] == 0).any(0).nonzero().flatten()
    assert cols.min() >= 20 - 6 and cols.max() < 20 + 6  # 11 px wide, centred on 20
    turned = torch.ones(3, 30, 12)
    draw_text(turned, "-", 0, 0, (0.0, 0.0, 0.0), rotate=True)
    ink = (turned == 0).all(0)
    assert ink.any(1).sum() == 3 and ink.any(0).sum() == 1  # the dash now vertical
    draw_text(torch.ones(3, 4, 4), "clipped text", -3, -2)  # no error at the edges


def test_png_round_trips_through_zlib():
    image = np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3) * 10
    data = viz.encode_png(image)
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height, depth, colour_type = struct.unpack(">IIBB", data[16:26])
    assert (width, height, depth, colour_type) == (3, 2, 8, 2)
    start = data.index(b"IDAT") + 4
    length = struct.unpack(">I", data[start - 8 : start - 4])[0]
    crc = struct.unpack(">I", data[start + length : start + length + 4])[0]
    assert crc == zlib.crc32(data[start - 4 : start + length]) & 0xFFFFFFFF
    rows = zlib.decompress(data[start : start + length])
    pixels = np.frombuffer(rows, dtype=np.uint8).reshape(2, 1 + 3 * 3)
    assert (pixels[:, 0] == 0).all()  # filter type "none"
    assert np.array_equal(pixels[:, 1:].reshape(2, 3, 3), image)
    assert data.endswith(b"IEND\xaeB`\x82")


def test_write_png_takes_a_grid_tensor(tmp_path):
    grid = viz.explanation_grid(torch.rand(1, 1, 8, 8), {"g": torch.randn(1, 1, 8, 8)})
    path = tmp_path / "grid.png"
    viz.write_png(path, viz.to_uint8_hwc(grid))
    data = path.read_bytes()
    assert struct.unpack(">II", data[16:24]) == (grid.shape[2], grid.shape[1])
    assert viz.encode_png(grid) == data  # (3, H, W) floats are converted the same way
    grey = viz.encode_png(np.zeros((4, 5), np.uint8))
    assert grey[25] == 0  # colour type grey
    with pytest.raises(ValueError, match="channels"):
        viz.encode_png(np.zeros((5, 6, 7), np.uint8))
