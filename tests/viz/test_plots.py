"""Line plots: ticks, curves in their colours, gaps, edge cases."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lit_explain import viz
from lit_explain.viz._canvas import PALETTE
from lit_explain.viz.plots import nice_ticks


def hits(image, colour, tol=1e-3):
    return (image - torch.tensor(colour).view(3, 1, 1)).abs().amax(0) < tol


def test_nice_ticks_are_one_two_five_steps_covering_the_range():
    assert nice_ticks(0.0183, 1.0) == pytest.approx([0.0, 0.2, 0.4, 0.6, 0.8, 1.0])
    assert nice_ticks(0, 20, 5) == [0, 5, 10, 15, 20]
    assert nice_ticks(0, 3, 6, integer=True) == [0, 1, 2, 3]
    assert nice_ticks(-0.31, 0.02, 4) == pytest.approx([-0.4, -0.2, 0.0, 0.2])
    assert nice_ticks(0.5, 0.9) == pytest.approx([0.5, 0.6, 0.7, 0.8, 0.9])
    with pytest.raises(ValueError):
        nice_ticks(1.0, 1.0)


def test_line_plot_draws_each_curve_in_its_colour():
    image = viz.line_plot({"up": torch.linspace(0, 1, 10), "down": torch.linspace(1, 0, 10)},
                          title="t", x_label="step", y_label="score")
    assert image.shape == (3, 240, 360) and image.dtype == torch.float32
    up, down = hits(image, PALETTE[0]), hits(image, PALETTE[1])
    assert up.sum() > 300 and down.sum() > 300
    # "up" rises to the right: its pixels on the right half lie higher (smaller row)
    rows_up = up.nonzero()
    rows_down = down.nonzero()
    right_up = rows_up[rows_up[:, 1] > 300][:, 0].float().mean()
    right_down = rows_down[rows_down[:, 1] > 300][:, 0].float().mean()
    assert right_up < right_down


def test_a_horizontal_curve_is_drawn_on_its_row_and_a_nan_leaves_a_gap():
    y = torch.tensor([0.5] * 10 + [float("nan")] + [0.5] * 10)
    image = viz.line_plot({"flat": y}, y_range=(0, 1), show_markers=False)
    ink = hits(image, PALETTE[0])
    rows = ink.any(1).nonzero().flatten()
    assert len(rows) <= 4  # 2 px wide line (and the legend swatch)
    line = ink.sum(1).argmax()  # the curve's row (not the legend swatch)
    cols = ink[line].nonzero().flatten()
    gaps = (cols[1:] - cols[:-1]) > 1
    assert gaps.sum() >= 1  # the NaN broke the line


def test_line_plot_takes_x_values_pairs_numpy_and_gives_uint8():
    epochs = [2, 4, 6]
    image = viz.line_plot({"a": np.array([1.0, 0.9, 0.95]), "b": (epochs, [0.5, 0.6, 0.7])},
                          x=epochs, as_uint8=True, size=(200, 300))
    assert image.dtype == torch.uint8 and image.shape == (3, 200, 300)
    with pytest.raises(ValueError, match="curve 'a' has 3 values but 2 x positions"):
        viz.line_plot({"a": [1.0, 2.0, 3.0]}, x=[0, 1])


def test_empty_and_constant_curves_still_draw():
    assert viz.line_plot({}).shape == (3, 240, 360)
    assert viz.line_plot({"nan": torch.full((5,), float("nan"))}).shape == (3, 240, 360)
    constant = viz.line_plot({"c": torch.ones(5)})
    assert hits(constant, PALETTE[0]).sum() > 100
    single = viz.line_plot({"one": torch.tensor([0.3])})
    assert hits(single, PALETTE[0]).sum() > 4
