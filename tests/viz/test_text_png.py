"""Text (Pillow's scalable font) and PNG (Pillow), checked against Pillow's own reading."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw, ImageFont

from lit_explain import viz
from lit_explain.viz.font import (
    DEJAVU_SANS,
    FONT_SIZE,
    draw_text,
    line_height,
    text_mask,
    text_width,
)


def test_text_is_pillows_scalable_font():
    font = ImageFont.load_default(size=FONT_SIZE)
    assert isinstance(font, ImageFont.FreeTypeFont)  # scalable, not the old bitmap font
    assert text_width("gradient") == int(np.ceil(font.getlength("gradient")))
    # twice the scale: twice the size (give or take the font's hinting at small sizes)
    assert text_width("gradient", 2) == pytest.approx(2 * text_width("gradient"), rel=0.1)
    assert line_height(2) == pytest.approx(2 * line_height(), rel=0.1)
    assert text_mask("ab").shape == (line_height(), text_width("ab"))
    assert text_mask("").numel() == 0


def test_draw_text_puts_ink_in_the_text_box_only():
    image = torch.ones(3, 40, 80)
    draw_text(image, "Hg", 10, 5, (0.0, 0.0, 0.0))
    ink = (image < 0.5).all(0)
    rows, cols = ink.nonzero().T
    assert ink.sum() > 20
    assert rows.min() >= 5 and rows.max() < 5 + line_height()
    assert cols.min() >= 10 and cols.max() < 10 + text_width("Hg")
    # the same pixels that Pillow draws on its own canvas at (10, 5)
    reference = Image.new("L", (80, 40), 0)
    ImageDraw.Draw(reference).text((10, 5), "Hg", fill=255,
                                   font=ImageFont.truetype(str(DEJAVU_SANS), FONT_SIZE),
                                   anchor="la")
    expected = torch.from_numpy(np.asarray(reference) / 255.0).float()
    torch.testing.assert_close(1 - image[0], expected, atol=1e-6, rtol=0)


def test_draw_text_anchors_rotates_blends_and_clips():
    image = torch.ones(3, 20, 60)
    draw_text(image, "11", 30, 0, (1.0, 0.0, 0.0), anchor="center")
    cols = (image[1] < 0.5).any(0).nonzero().flatten()
    assert abs((cols.min() + cols.max()) / 2 - 30) <= 2
    assert torch.equal(image[0], torch.ones(20, 60))  # red ink: the red channel stays 1
    right = torch.ones(3, 20, 60)
    draw_text(right, "11", 50, 0, anchor="right")
    assert (right[0] < 0.5).any(0).nonzero().max() < 50
    turned = torch.ones(3, 40, 20)
    draw_text(turned, "----", 10, 20, rotate=True, anchor="center")
    ink = (turned[0] < 0.5)
    assert ink.any(1).sum() > ink.any(0).sum()  # the dashes now run up the picture
    with pytest.raises(ValueError, match="anchor"):
        draw_text(turned, "x", 0, 0, anchor="middle")
    draw_text(torch.ones(3, 4, 4), "clipped text", -3, -2)  # no error at the edges


def test_the_grid_header_has_text_over_its_columns():
    x = torch.rand(1, 1, 8, 8)
    image = viz.explanation_grid(x, {"gradient": torch.randn(1, 1, 8, 8)}, colorbar=False)
    frame = ((image - 0.72).abs() < 0.01).all(0)  # the light grey cell frames
    top = int(frame.any(1).nonzero().min())
    columns = frame.any(0).nonzero().flatten()
    header = image[:, :top]
    ink = (header < 0.5).all(0)
    assert ink.any()
    # text only in the header rows, and over the cells (not beyond the last frame)
    cols = ink.any(0).nonzero().flatten()
    assert cols.min() >= columns.min() - 4 and cols.max() <= columns.max() + 4
    # two columns, two words: ink left and right of the gap between the cells
    middle = (columns.min() + columns.max()) // 2
    assert ink[:, :middle].any() and ink[:, middle:].any()


def test_png_bytes_decode_with_pillow_to_the_same_array():
    rng = np.random.default_rng(0)
    for shape, mode in [((5, 7), "L"), ((5, 7, 2), "LA"), ((5, 7, 3), "RGB"),
                        ((5, 7, 4), "RGBA"), ((1, 1, 3), "RGB"), ((300, 2, 3), "RGB")]:
        image = rng.integers(0, 256, shape, dtype=np.uint8)
        for level in (0, 1, 9):
            data = viz.encode_png(image, compress_level=level)
            Image.open(io.BytesIO(data)).verify()  # chunk CRCs and structure
            decoded = Image.open(io.BytesIO(data))
            assert decoded.format == "PNG" and decoded.mode == mode
            assert np.array_equal(np.asarray(decoded), image)
    with pytest.raises(ValueError, match="channels"):
        viz.encode_png(np.zeros((5, 6, 7), np.uint8))
    with pytest.raises(ValueError, match="compress_level"):
        viz.encode_png(np.zeros((5, 6, 3), np.uint8), compress_level=10)


def test_write_png_takes_a_grid_tensor(tmp_path):
    grid = viz.explanation_grid(torch.rand(1, 1, 8, 8), {"g": torch.randn(1, 1, 8, 8)})
    path = tmp_path / "grid.png"
    viz.write_png(path, viz.to_uint8_hwc(grid))
    decoded = np.asarray(Image.open(path))
    assert np.array_equal(decoded, viz.to_uint8_hwc(grid))
    assert viz.encode_png(grid) == path.read_bytes()  # (3, H, W) floats converted the same


@pytest.mark.parametrize("text", ["é", "ï", "Ω", "ж"])
def test_accented_greek_and_cyrillic_letters_have_glyphs(text):
    missing = text_mask("\u0378")  # an unassigned code point: the font's box for no glyph
    drawn = text_mask(text)
    assert drawn.sum() > 0
    assert drawn.shape != missing.shape or not torch.equal(drawn, missing)


def test_a_float_tensor_whose_shape_could_end_in_channels_is_channels_first():
    # (a (3, 1, 4) heatmap strip of four features was written as 3×1 RGBA pixels)
    strip = torch.rand(3, 1, 4)
    decoded = np.asarray(Image.open(io.BytesIO(viz.encode_png(strip))))
    assert decoded.shape == (1, 4, 3)
    assert np.array_equal(decoded, viz.to_uint8_hwc(strip))
    # an array, or a uint8 tensor (a decoded image), of such a shape is channels last
    image = torch.randint(0, 256, (3, 5, 3), dtype=torch.uint8)
    for given in (image, image.numpy()):
        decoded = np.asarray(Image.open(io.BytesIO(viz.encode_png(given))))
        assert np.array_equal(decoded, image.numpy())
