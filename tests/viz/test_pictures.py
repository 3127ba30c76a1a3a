"""Colour maps, the explanation grid and line plots against hand computations."""

from __future__ import annotations

import struct
import zlib

import numpy as np
import pytest
import torch

from lit_explain import viz
from lit_explain.viz.font import GLYPH_HEIGHT, text_mask


def test_project_maps_minus_absmax_zero_and_absmax_to_the_range():
    x = torch.tensor([[-2.0, 0.0, 1.0, 2.0]])
    torch.testing.assert_close(viz.project(x), torch.tensor([[0.0, 0.5, 0.75, 1.0]]))
    torch.testing.assert_close(viz.project(x, output_range=(0, 255))[0, 2], torch.tensor(191.25))
    positive = viz.project(torch.tensor([[0.0, 1.0, 4.0]]), input_is_positive_only=True)
    torch.testing.assert_close(positive, torch.tensor([[0.0, 0.25, 1.0]]))


def test_heatmap_colours_signs_with_the_seismic_map():
    # seismic: -1 dark blue (0, 0, 0.3), 0 white, +1 dark red (0.5, 0, 0)
    maps = torch.tensor([[[[-1.0, 0.0, 1.0]]]])  # (N, C, H, W) = (1, 1, 1, 3)
    rgb = viz.heatmap(maps)
    assert rgb.shape == (1, 3, 1, 3)
    torch.testing.assert_close(rgb[0, :, 0, 0], torch.tensor([0.0, 0.0, 0.3]), atol=1e-3,
                               rtol=0)
    torch.testing.assert_close(rgb[0, :, 0, 1], torch.tensor([1.0, 1.0, 1.0]), atol=1e-3,
                               rtol=0)
    torch.testing.assert_close(rgb[0, :, 0, 2], torch.tensor([0.5, 0.0, 0.0]), atol=1e-3,
                               rtol=0)


def test_heatmap_sums_channels_and_scales_each_sample_alone():
    maps = torch.stack([torch.ones(3, 2, 2), 10 * torch.ones(3, 2, 2)])
    rgb = viz.heatmap(maps)
    assert rgb.shape == (2, 3, 2, 2)
    torch.testing.assert_close(rgb[0], rgb[1])  # per-sample normalization
    shared = viz.heatmap(maps, shared_absmax=30.0)
    assert not torch.allclose(shared[0], shared[1])  # a shared range shows the magnitude


def test_graymap_is_monotone_and_gamma_keeps_order_and_sign():
    ramp = torch.linspace(0, 1, 11).reshape(1, 1, 1, 11)
    gray = viz.graymap(ramp)[0, 0, 0]
    assert bool((gray[1:] >= gray[:-1]).all()) and gray[0] < gray[-1]
    x = torch.tensor([[-4.0, -1.0, 0.0, 1.0, 4.0]])
    # y = sign(x)·4·(|x|/4)^0.5
    torch.testing.assert_close(viz.gamma(x, gamma=0.5), torch.tensor([[-4.0, -2.0, 0.0, 2.0,
                                                                        4.0]]))


def test_clip_quantile_clips_to_the_percentiles():
    x = torch.arange(11.0).reshape(1, 11)  # percentiles 10 and 90 are 1 and 9
    torch.testing.assert_close(viz.clip_quantile(x, 10), x.clamp(1, 9))


def test_unknown_colour_map_names_the_valid_ones():
    with pytest.raises(ValueError, match="seismic"):
        viz.heatmap(torch.ones(1, 1, 2, 2), cmap_type="jet-ish")


def test_grid_layout_holds_the_input_and_the_heatmaps():
    inputs = torch.zeros(2, 1, 8, 8)
    inputs[:, :, :, 4:] = 1.0  # right half white
    maps = {"a": torch.ones(2, 1, 8, 8), "b": -torch.ones(2, 1, 8, 8)}
    image = viz.explanation_grid(inputs, maps, labels=[3, 4], predictions=[3, 5])
    assert image.shape[0] == 3 and image.min() >= 0 and image.max() <= 1
    # locate the cells by colour: pure red (all positive map) and dark blue (all negative)
    red = (image[0] > 0.45) & (image[1] < 0.05) & (image[2] < 0.05)
    blue = (image[0] < 0.05) & (image[1] < 0.05) & (image[2] > 0.25)
    red_cols = red.any(0).nonzero().flatten()
    blue_cols = blue.any(0).nonzero().flatten()
    assert len(red_cols) and len(blue_cols) and red_cols.max() < blue_cols.min()
    assert red.sum() == 2 * 64 * 64 and blue.sum() == 2 * 64 * 64  # 8×8 magnified 8 times
    # the input column (left of the maps) shows the white right half
    white = (image > 0.99).all(0)
    left = red_cols.min()
    assert white[:, :left].any()


def test_grid_renders_tabular_and_sequence_inputs():
    tabular = viz.explanation_grid(torch.randn(3, 13), {"g": torch.randn(3, 13)})
    sequences = viz.explanation_grid(torch.randn(2, 4, 30), {"g": torch.randn(2, 4, 30)})
    assert tabular.shape[0] == 3 and tabular.shape[2] > 13
    assert sequences.shape[0] == 3 and sequences.shape[1] > 2 * 4


def test_text_puts_ink_where_the_glyph_has_it():
    mask = text_mask("1")
    assert mask.shape == (GLYPH_HEIGHT, 5)
    image = torch.ones(3, 20, 20)
    viz.font.draw_text(image, "1", 3, 4, (0.0, 0.0, 0.0))
    ink = (image == 0).all(0)
    assert torch.equal(ink[4:4 + GLYPH_HEIGHT, 3:8], mask)
    assert ink.sum() == mask.sum()


def test_line_plot_draws_each_curve_in_its_colour():
    image = viz.line_plot({"up": torch.linspace(0, 1, 10), "down": torch.linspace(1, 0, 10)},
                          title="t", x_label="step", y_label="score")
    assert image.shape == (3, 240, 360)
    for colour in viz._canvas.PALETTE[:2]:
        hit = (image - torch.tensor(colour).view(3, 1, 1)).abs().amax(0) < 1e-3
        assert hit.sum() > 100  # the curve (and its legend swatch) are drawn


def test_png_round_trips_through_zlib():
    image = np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3) * 10
    data = viz.encode_png(image)
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", data[16:24])
    assert (width, height) == (3, 2)
    start = data.index(b"IDAT") + 4
    length = struct.unpack(">I", data[start - 8:start - 4])[0]
    rows = zlib.decompress(data[start:start + length])
    stride = 1 + 3 * 3
    pixels = np.frombuffer(rows, dtype=np.uint8).reshape(2, stride)
    assert (pixels[:, 0] == 0).all()  # filter type "none"
    assert np.array_equal(pixels[:, 1:].reshape(2, 3, 3), image)


def test_token_inputs_show_their_words_and_one_cell_per_token():
    ids = torch.tensor([[0, 1, 2]])
    maps = {"g": torch.tensor([[1.0, 0.0, -1.0]])}
    image = viz.explanation_grid(ids, maps, token_names=["good", "movie", "bad"])
    red = (image[0] > 0.45) & (image[1] < 0.05) & (image[2] < 0.05)
    blue = (image[0] < 0.05) & (image[1] < 0.05) & (image[2] > 0.25)
    red_cols, blue_cols = red.any(0).nonzero().flatten(), blue.any(0).nonzero().flatten()
    # the first token is red, the last blue, one cell each: strips are about 192 px wide,
    # and a cell is at least as wide as the longest word + 4
    width = max(192 // 3, viz.font.text_width("movie") + 4)
    assert len(red_cols) == width and len(blue_cols) == width
    assert blue_cols.min() - red_cols.min() == 2 * width
    ink = (image < 0.05).all(0)
    assert ink[:, : red_cols.min()].sum() > 3 * 10  # three words written left of the maps
