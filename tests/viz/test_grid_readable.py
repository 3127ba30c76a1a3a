"""Heatmaps people can read: numbered colour bars, overlays, one-sided maps for magnitudes,
a robust shared range, unique column headers."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lit_explain import viz
from lit_explain.viz.font import line_height, text_mask
from lit_explain.viz.grid import _column_titles

WHITE = torch.ones(3)
FRAME = torch.tensor([0.72] * 3)
TOP = 4 + line_height() + 1 + 4  # the first row of cells under a one-line header


def is_colour(image, colour, tol=1e-3):
    return (image - torch.as_tensor(colour).view(3, 1, 1)).abs().amax(0) < tol


def bar_span(image, start_row):
    """(row, first column, last column) of the colour bar: the row below the cells whose
    pixels between two frame pixels are not white."""
    for y in range(start_row, image.shape[1]):
        frame = is_colour(image[:, y : y + 1], FRAME)[0].nonzero().flatten()
        if len(frame) >= 2 and not is_colour(image[:, y : y + 1, frame[0] + 1 : frame[1]],
                                              WHITE).all():
            return y, int(frame[0]) + 1, int(frame[1]) - 1
    raise AssertionError("no colour bar")


def test_colour_bar_ticks_are_the_values_of_the_shared_scale():
    assert viz.colorbar_ticks(0.5, one_sided=False) == [
        (0.0, "-0.5"), (0.25, "-0.25"), (0.5, "0"), (0.75, "0.25"), (1.0, "0.5")]
    assert viz.colorbar_ticks(2.0, one_sided=True) == [(0.0, "0"), (0.5, "1"), (1.0, "2")]
    # each map scaled by its own maximum: the ticks are relative to it
    assert [label for _, label in viz.colorbar_ticks(None, False)] == [
        "-1", "-0.5", "0", "0.5", "1"]


def test_the_colour_bar_carries_its_numbers_and_zero_is_white():
    inputs, maps = torch.rand(1, 1, 8, 8), {"g": torch.randn(1, 1, 8, 8)}
    without = viz.explanation_grid(inputs, maps, absmax={"g": 0.5}, colorbar=False)
    image = viz.explanation_grid(inputs, maps, absmax={"g": 0.5})
    y, x0, x1 = bar_span(image, without.shape[1])
    width = x1 - x0 + 1
    # seismic: dark blue at -0.5, white at the "0" tick, dark red at +0.5
    assert torch.allclose(image[:, y + 1, x0], torch.tensor([0.0, 0.0, 0.3]), atol=0.02)
    assert torch.allclose(image[:, y + 1, x0 + round(0.5 * (width - 1))], WHITE, atol=0.02)
    assert torch.allclose(image[:, y + 1, x1], torch.tensor([0.5, 0.0, 0.0]), atol=0.02)
    # the label "0.5" is written, centred under the right end
    ink = (image < 0.55).all(0)  # text (0.1 grey) covering more than half of a pixel
    label = text_mask("0.5") > 0.5
    h, w = label.shape
    found = False
    for row in range(y, image.shape[1] - h + 1):
        for col in range(x1 - w, x1 + 1):
            if torch.equal(ink[row : row + h, col : col + w], label):
                found = True
    assert found


def test_a_map_without_negative_values_gets_the_one_sided_map():
    r = torch.zeros(1, 1, 8, 8)
    r[..., 4:] = 2.0  # |gradient|-like: 0 on the left, the maximum on the right
    image = viz.explanation_grid(torch.rand(1, 1, 8, 8), {"abs": r}, colorbar=False)
    cell = image[:, TOP:TOP + 64, 4 + 72 : 4 + 72 + 64]
    assert is_colour(cell[:, :, :32], WHITE).all()  # 0 is white
    assert is_colour(cell[:, :, 32:], viz.oranges(torch.tensor(1.0))).all()  # max: dark end
    assert viz.oranges(torch.tensor(1.0)).tolist() == pytest.approx(
        [0x7F / 255, 0x27 / 255, 0x04 / 255])
    # its colour bar goes from 0 (white, left end) to the maximum
    x = torch.rand(1, 1, 8, 8)
    bar = viz.explanation_grid(x, {"abs": r}, absmax={"abs": 2.0})
    y, x0, x1 = bar_span(bar, viz.explanation_grid(x, {"abs": r}, absmax={"abs": 2.0},
                                                   colorbar=False).shape[1])
    assert torch.allclose(bar[:, y + 1, x0], WHITE, atol=0.01)
    # a signed map keeps the diverging map
    signed = viz.explanation_grid(torch.rand(1, 1, 8, 8), {"s": r - 1.0}, colorbar=False)
    assert is_colour(signed, (0.0, 0.0, 0.3)).any()


def test_overlay_shows_the_grey_input_where_the_map_is_zero():
    x = torch.rand(1, 3, 8, 8)
    r = torch.zeros(1, 3, 8, 8)
    r[..., 4:] = 1.0
    image = viz.explanation_grid(x, {"g": r}, colorbar=False, overlay=True, cmap="seismic")
    shown = (x - x.min()) / (x.max() - x.min())  # the input column: min-max scaled RGB
    grey = shown.mean(1)[0]  # (8, 8)
    cell = image[:, TOP:TOP + 64, 4 + 72 : 4 + 72 + 64]
    left = cell[:, ::8, :32:8]  # one pixel per input pixel
    torch.testing.assert_close(left, grey[:, :4].expand(3, -1, -1), atol=1e-5, rtol=0)
    # where |R| is at its maximum the colour is the map's own (opaque)
    assert is_colour(cell[:, :, 32:], (0.5, 0.0, 0.0)).all()


def test_robust_absmax_is_the_quantile_so_an_outlier_does_not_wash_out_the_map():
    r = torch.arange(1, 1001, dtype=torch.float32).reshape(1, 1, 10, 100)
    r[0, 0, 0, 0] = 1e6  # one outlier
    expected = np.quantile(np.abs(r.numpy()).ravel(), 0.995)
    assert viz.robust_absmax(r) == pytest.approx(expected)
    assert viz.robust_absmax(torch.zeros(2, 3)) == 1.0


def test_shared_range_does_not_saturate_maps_that_grow():
    # four samples whose relevance grows 10x each (as maps do while a model trains)
    torch.manual_seed(0)
    r = torch.randn(4, 1, 8, 8) * torch.tensor([1.0, 10.0, 100.0, 1000.0]).view(4, 1, 1, 1)
    image = viz.explanation_grid(torch.rand(4, 1, 8, 8), {"g": r}, absmax="shared",
                                 colorbar=False)
    ends = is_colour(image, (0.5, 0.0, 0.0), 0.01) | is_colour(image, (0.0, 0.0, 0.3), 0.01)
    # only the values at or beyond the 99.5th percentile hit the ends of the map: of 256,
    # the one at it and the 2 above (64 pixels each)
    assert ends.sum() <= (int(0.005 * r.numel()) + 2) * 64
    # a range kept from the smallest sample (the old "first epoch" rule) saturates most
    fixed = viz.explanation_grid(torch.rand(4, 1, 8, 8), {"g": r},
                                 absmax={"g": float(r[0].abs().max())}, colorbar=False)
    ends = is_colour(fixed, (0.5, 0.0, 0.0), 0.01) | is_colour(fixed, (0.0, 0.0, 0.3), 0.01)
    assert ends.sum() > 0.5 * r.numel() * 64


def test_column_headers_are_unique():
    assert _column_titles("input", ["input", "gradient"]) == ["sample", "input", "gradient"]
    assert _column_titles("input", ["gradient"]) == ["input", "gradient"]
    titles = _column_titles("input", ["input", "sample", "random"])
    assert len(set(titles)) == len(titles)
