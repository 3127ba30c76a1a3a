"""The explanation grid: where the cells are, what they hold, every input kind."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lit_explain import viz
from lit_explain.viz.font import line_height, text_width

LINE = line_height() + 1  # a header line: the font's line and 1 px
TOP = 4 + LINE + 4  # the first row of cells under a one-line header
DARK_RED = torch.tensor([0.5, 0.0, 0.0])
DARK_BLUE = torch.tensor([0.0, 0.0, 0.3])


def is_colour(image, colour, tol=1e-3):
    return (image - torch.as_tensor(colour).view(3, 1, 1)).abs().amax(0) < tol


def test_grid_cells_sit_where_the_layout_puts_them():
    # 2 samples of 8x8, magnified x8 to 64x64; padding 4 -> cells 64 + 2*4 apart;
    # no label column: cells start at x = 4; header = one line: rows at y = TOP
    inputs = torch.zeros(2, 1, 8, 8)
    inputs[:, :, :, 4:] = 1.0  # right half white
    maps = {"pos": torch.ones(2, 1, 8, 8), "neg": -torch.ones(2, 1, 8, 8)}
    image = viz.explanation_grid(inputs, maps, colorbar=False, cmap="seismic")
    assert image.shape == (3, TOP + 2 * 72, 4 + 3 * 72)
    for i in range(2):
        y = TOP + i * 72
        cell = lambda j, y=y: image[:, y : y + 64, 4 + j * 72 : 4 + j * 72 + 64]  # noqa: E731
        assert (cell(0)[:, :, :32] == 0).all() and (cell(0)[:, :, 32:] == 1).all()
        assert is_colour(cell(1), DARK_RED).all()
        assert is_colour(cell(2), DARK_BLUE).all()
    # frames of light grey around the cells, white padding elsewhere
    assert torch.allclose(image[:, TOP - 1, 4 + 72 + 10], torch.tensor([0.72] * 3))
    assert (image[:, TOP + 64 + 3, :] == 1).all()
    # exactly the two map cells are red and blue: 2 samples x 64 x 64 each
    assert is_colour(image, DARK_RED).sum() == 2 * 64 * 64
    assert is_colour(image, DARK_BLUE).sum() == 2 * 64 * 64


def test_grid_writes_headers_and_true_and_predicted_labels():
    inputs = torch.rand(2, 1, 8, 8)
    maps = {"lrp.sequential_preset_a_flat": torch.randn(2, 1, 8, 8)}
    plain = viz.explanation_grid(inputs, maps, colorbar=False)
    labelled = viz.explanation_grid(inputs, maps, labels=[3, 4], predictions=[3, 5],
                                    class_names=["zero", "one", "two", "three", "four", "five"],
                                    colorbar=False)
    # a label column as wide as its longest line plus padding
    longest = max(text_width(t) for t in ("true: three", "true: four", "pred: three", "pred: five"))
    assert labelled.shape[2] - plain.shape[2] == longest + 8
    # a long name is wrapped after "." / "_" into lines of at most 12 characters:
    # "lrp." / "sequential_" / "preset_a_" / "flat", a header of 4 lines
    assert plain.shape[1] == 4 + 4 * LINE + 4 + 2 * 72
    # the right prediction is written in green, the wrong one in red
    green = is_colour(labelled, (0.0, 0.5, 0.0))
    red = is_colour(labelled, (0.8, 0.1, 0.1))
    row0, row1 = slice(0, labelled.shape[1] // 2 + 10), slice(labelled.shape[1] // 2 + 10, None)
    assert green[row0].any() and not red[row0].any()
    assert red[row1].any() and not green[row1].any()


def test_colour_bar_shows_the_map_and_a_shared_scale():
    inputs, maps = torch.rand(1, 1, 8, 8), {"g": torch.randn(1, 1, 8, 8)}
    without = viz.explanation_grid(inputs, maps, colorbar=False)
    image = viz.explanation_grid(inputs, maps, absmax={"g": 2.5})
    extra = image[:, without.shape[1] :]
    assert is_colour(extra, DARK_RED, 0.02).any() and is_colour(extra, DARK_BLUE, 0.02).any()
    # a fixed scale is written under the analyzer's name: one more header line
    scaled = viz.explanation_grid(inputs, maps, absmax={"g": 2.5}, colorbar=False)
    assert scaled.shape[1] == without.shape[1] + LINE


def test_grid_returns_uint8_and_takes_numpy_rgb_and_hidden_layer_maps():
    x = np.random.default_rng(0).random((2, 3, 16, 16)).astype(np.float32)
    maps = {"g": np.ones((2, 3, 16, 16)), "layer": torch.ones(2, 4, 4)}  # 4x4: stretched
    image = viz.explanation_grid(x, maps, as_uint8=True, colorbar=False, cmap="seismic")
    assert image.dtype == torch.uint8 and image.shape[0] == 3
    # 16x16 magnified x4 to 64x64; both maps are all dark red
    assert is_colour(image.float() / 255, DARK_RED, 0.003).sum() == 2 * 2 * 64 * 64


def test_tabular_rows_become_bars_over_a_coloured_strip():
    x = torch.tensor([[1.0, -1.0, 0.0, 2.0]])
    r = torch.tensor([[2.0, -2.0, 0.0, 1.0]])
    image = viz.explanation_grid(x, {"g": r}, colorbar=False)
    # strip cells 3 * 64 // 4 = 48 px per feature, 64 high; the strip is the bottom 12 rows
    cw, y0 = 48, TOP
    x0 = 4 + (4 * cw + 8)  # second column
    strip = image[:, y0 + 64 - 6, x0 : x0 + 4 * cw]
    expected = viz.heatmap(r[:, None, :])[0, :, 0, :].repeat_interleave(cw, 1)
    torch.testing.assert_close(strip, expected)
    # the bar of feature 0 (largest positive) reaches the top row of the bar area
    assert is_colour(image[:, y0 : y0 + 1, x0 : x0 + cw - 1], DARK_RED).all()
    assert viz.explanation_grid(torch.randn(3, 13), {"g": torch.randn(3, 13)}).shape[0] == 3


def test_sequences_get_a_channel_picture_and_a_summed_strip():
    x = torch.randn(2, 4, 30)
    image = viz.explanation_grid(x, {"g": torch.randn(2, 4, 30), "reduced": torch.randn(2, 30)})
    assert image.shape[0] == 3 and image.shape[1] > 2 * 4 and image.min() >= 0
    # a one-channel sequence is drawn like a tabular row
    one = viz.explanation_grid(torch.randn(2, 1, 30), {"g": torch.randn(2, 1, 30)})
    tab = viz.explanation_grid(torch.randn(2, 30), {"g": torch.randn(2, 30)})
    assert one.shape == tab.shape


def test_rows_are_tall_enough_for_their_labels():
    # a one-line token strip is lower than two lines of labels: the labels of each row ran
    # into the next rows, the last prediction below the last row
    ids = torch.tensor([[0, 1, 2], [2, 1, 0], [1, 1, 1]])
    maps = {"g": torch.randn(3, 3)}
    plain = viz.explanation_grid(ids, maps, colorbar=False)
    labelled = viz.explanation_grid(ids, maps, labels=[0, 1, 2], predictions=[0, 1, 1],
                                    colorbar=False)
    grown = labelled.shape[1] - plain.shape[1]
    assert grown > 0 and grown % 3 == 0  # every row alike


def test_token_inputs_show_their_words_and_one_cell_per_token():
    ids = torch.tensor([[0, 1, 2]])
    maps = {"g": torch.tensor([[1.0, 0.0, -1.0]])}
    image = viz.explanation_grid(ids, maps, token_names=["good", "movie", "bad"], colorbar=False)
    red, blue = is_colour(image, DARK_RED), is_colour(image, DARK_BLUE)
    red_cols, blue_cols = red.any(0).nonzero().flatten(), blue.any(0).nonzero().flatten()
    # one cell per token, 3 * 64 // 3 = 64 px apart (at least the longest word + 4),
    # coloured but for a 1-px separator
    width = max(3 * 64 // 3, text_width("movie") + 4)
    assert len(red_cols) == width - 1 and len(blue_cols) == width - 1
    assert blue_cols.min() - red_cols.min() == 2 * width
    ink = (image < 0.5).all(0)  # anti-aliased black text: mostly covered pixels
    assert ink[:, : red_cols.min()].sum() > 3 * 10  # the words in the input column
    # the words are written on the map cells too, in white on dark colours
    assert (image[:, :, red_cols.min() : red_cols.max() + 1] > 0.99).all(0).any()


def test_a_volume_shows_its_middle_slice_with_the_masks_and_maps_of_that_slice():
    x = torch.rand(1, 1, 5, 8, 8)
    channel_free = -torch.ones(1, 5, 8, 8)
    channel_free[:, 2] = 1.0  # positive on the middle slice only
    image = viz.explanation_grid(x, {"g": channel_free}, cmap="seismic", colorbar=False)
    # (summed over the depth, as the channels of an image, it was all blue)
    assert is_colour(image, DARK_RED).any() and not is_colour(image, DARK_BLUE).any()
    mask = torch.zeros(1, 1, 5, 8, 8, dtype=torch.bool)
    mask[:, :, 0, 2:6, 2:6] = True  # on the first slice only: nothing on the middle one
    plain = viz.explanation_grid(x, {"g": channel_free}, colorbar=False)
    outlined = viz.explanation_grid(x, {"g": channel_free}, masks=mask, colorbar=False)
    assert torch.equal(plain, outlined)


def test_odd_shapes_give_a_picture_or_a_clear_error():
    volume = viz.explanation_grid(torch.randn(2, 1, 5, 8, 8), {"g": torch.randn(2, 1, 5, 8, 8)})
    assert volume.shape[0] == 3  # the middle slice
    uint8_images = viz.explanation_grid(torch.randint(0, 255, (1, 3, 8, 8), dtype=torch.uint8),
                                        {"g": torch.randn(1, 3, 8, 8)})
    assert uint8_images.shape[0] == 3  # integer images are images, not tokens
    with pytest.raises(ValueError, match=r"map 'g'.*\(3, 7\)"):
        viz.explanation_grid(torch.randn(3, 5), {"g": torch.randn(3, 7)})
    with pytest.raises(ValueError, match=r"map 'g'.*but there are 2 inputs"):
        viz.explanation_grid(torch.randn(2, 1, 8, 8), {"g": torch.randn(3, 1, 8, 8)})
    with pytest.raises(ValueError, match="unknown kind 'video'.*'image'"):
        viz.explanation_grid(torch.randn(2, 8), {}, kind="video")
    with pytest.raises(ValueError, match="unknown colour map"):
        viz.explanation_grid(torch.randn(2, 8), {"g": torch.randn(2, 8)}, cmap="nope")
    assert viz.explanation_grid(torch.randn(2, 8), {}).shape[0] == 3  # inputs only


@pytest.mark.parametrize("step, frame, factor", [
    (10, (0.72, 0.72, 0.72), 1), (12, (0.1, 0.2, 0.3), 1), (8, None, 1),
    (18, (0.72, 0.72, 0.72), 2), (25, None, 3)])
def test_paste_column_draws_what_a_frame_box_and_a_paste_per_cell_draw(step, frame, factor):
    from lit_explain.viz._canvas import canvas, fill_rect, paste, paste_column

    g = torch.Generator().manual_seed(0)
    cells = torch.rand(4, 3, 8, 5, generator=g)
    start = torch.rand(3, 110, 30, generator=g)  # whatever was drawn before stays around
    expected = start.clone()
    for i, cell in enumerate(cells):  # one box, then one magnified cell, row by row
        y = 3 + i * step
        big = cell.repeat_interleave(factor, 1).repeat_interleave(factor, 2)
        if frame is not None:
            fill_rect(expected, 6 - 1, y - 1, 6 + big.shape[2] + 1, y + big.shape[1] + 1, frame)
        paste(expected, big, 6, y)
    got = start.clone()
    paste_column(got, cells, 6, 3, step, frame, factor)
    assert torch.equal(got, expected)
    with pytest.raises(ValueError, match="overlapping"):  # boxes would overlap
        paste_column(canvas(60, 20), cells, 6, 3, 9, (0.5, 0.5, 0.5))
    with pytest.raises(ValueError, match="do not fit"):  # the last row leaves the canvas
        paste_column(canvas(40, 20), cells, 6, 3, 10, (0.5, 0.5, 0.5))


@pytest.mark.parametrize("padding", [0, 1, 4])
def test_every_cell_is_framed_at_any_padding(padding):
    # every framed cell in its place; with padding 0 the frames of neighbours overlap the
    # cells' edges (drawn row by row, the later frame on top)
    inputs = torch.ones(3, 1, 4, 4)
    image = viz.explanation_grid(inputs, {"pos": torch.ones(3, 1, 4, 4)}, colorbar=False,
                                 cmap="seismic", padding=padding, cell_size=16)
    red = is_colour(image, DARK_RED)
    lost = 16 if padding == 0 else 0  # the last pixel row of the upper two cells
    assert red.sum() == 3 * 16 * 16 - 2 * lost
    assert is_colour(image, (0.72, 0.72, 0.72)).sum() > 0


def test_pictures_that_would_mislead_are_refused_naming_the_value():
    x = torch.rand(2, 1, 4, 4)
    bad = torch.rand(2, 1, 4, 4)
    bad[0, 0, 1, 1] = float("nan")
    with pytest.raises(ValueError, match=r"map 'g' holds NaN or infinite values in 1 of 2"):
        viz.explanation_grid(x, {"g": bad})
    with pytest.raises(ValueError, match="NaN or infinity"):
        viz.heatmap(bad)
    for scale in (-1.0, 0.0, float("nan")):
        with pytest.raises(ValueError, match="a scale must be a finite number above 0"):
            viz.explanation_grid(x, {"g": x}, absmax=scale)
        with pytest.raises(ValueError, match="not valid; a scale must be"):
            viz.heatmap(x, shared_absmax=scale)
    with pytest.raises(ValueError, match=r"absmax for map 'g' has shape \(3,\)"):
        viz.explanation_grid(x, {"g": x}, absmax=torch.ones(3))
    with pytest.raises(ValueError, match=r"no colour map for the maps \['h'\]"):
        viz.explanation_grid(x, {"g": x, "h": x}, cmap={"g": "bwr"})
    with pytest.raises(ValueError, match=r"map 'g' has shape \(2, 1, 4, 4, 2\)"):
        viz.explanation_grid(x, {"g": torch.rand(2, 1, 4, 4, 2)})


def test_line_plot_takes_bfloat16_values():
    values = torch.tensor([1.0, 0.5, 0.25], dtype=torch.bfloat16)
    np.testing.assert_array_equal(viz.line_plot({"a": values}),
                                  viz.line_plot({"a": values.float()}))


def test_flat_image_and_volume_maps_are_drawn_as_the_maps_they_flatten():
    # docs: "flat with as many values per sample" (with or without the channel axis)
    x, r = torch.rand(2, 3, 8, 8), torch.randn(2, 3, 8, 8)
    for shaped in (r, r.sum(1)):
        torch.testing.assert_close(viz.explanation_grid(x, {"g": shaped.flatten(1)}),
                                   viz.explanation_grid(x, {"g": shaped}))
    # a volume's flat map: the map of its middle slice, next to the middle slice of the input
    volume, v = torch.rand(2, 2, 5, 8, 8), torch.randn(2, 2, 5, 8, 8)
    for flat, middle in ((v.flatten(1), v[:, :, 2]), (v.sum(1).flatten(1), v.sum(1)[:, 2])):
        torch.testing.assert_close(viz.explanation_grid(volume, {"g": flat}),
                                   viz.explanation_grid(volume[:, :, 2], {"g": middle}))
    with pytest.raises(ValueError, match=r"map 'g' has shape \(2, 7\); for inputs of shape "
                                         r"\(2, 2, 5, 8, 8\).*flat 640 or 320 values"):
        viz.explanation_grid(volume, {"g": torch.randn(2, 7)})


def test_a_hidden_layers_volume_map_is_its_middle_slice_with_channels_combined():
    # docs: a volume shows its middle slice; a map with another channel count (a hidden
    # layer's) has its channels combined and is stretched, as an image's is
    x = torch.rand(1, 1, 4, 8, 8)
    hidden = torch.zeros(1, 3, 2, 4, 4)
    hidden[:, 0] = 1.0  # all of it in hidden channel 0: the channel sum is +1 everywhere
    image = viz.explanation_grid(x, {"m": hidden}, cmap="seismic", colorbar=False)
    assert is_colour(image, DARK_RED).sum() == 64 * 64  # the whole 8x8 cell, magnified x8
    x, h = torch.rand(2, 1, 4, 8, 8), torch.randn(2, 3, 2, 4, 4)
    torch.testing.assert_close(viz.explanation_grid(x, {"m": h}),
                               viz.explanation_grid(x[:, :, 2], {"m": h[:, :, 1]}))


def test_a_finite_float64_map_beyond_float32s_range_is_drawn():
    # colours do not depend on the scale of a map scaled per sample: 1e39 * r looks like r
    x, r = torch.rand(2, 1, 4, 4), torch.randn(2, 1, 4, 4, dtype=torch.float64)
    torch.testing.assert_close(viz.explanation_grid(x, {"g": 1e39 * r}),
                               viz.explanation_grid(x, {"g": r}))
    # the quantile scales with the map
    assert viz.robust_absmax(1e39 * r) == pytest.approx(1e39 * viz.robust_absmax(r))


def test_a_narrow_grid_is_widened_to_hold_its_colour_bar():
    # one analyzer of 8x8 images, no labels: 148 pixels, narrower than the bar and its note
    inputs, maps = torch.rand(2, 1, 8, 8), {"g": torch.randn(2, 1, 8, 8)}
    without = viz.explanation_grid(inputs, maps, colorbar=False)
    image = viz.explanation_grid(inputs, maps, cmap="seismic")
    bar = image[:, without.shape[1] :]
    assert is_colour(bar, DARK_RED, 0.02).any() and is_colour(bar, DARK_BLUE, 0.02).any()
    assert torch.equal(image[:, : without.shape[1], : without.shape[2]], without)
