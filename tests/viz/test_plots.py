"""Line plots (matplotlib, Agg): where the legend is, which ticks, styles, pixels, freeing."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from matplotlib.colors import to_rgb

from lit_explain import viz
from lit_explain.callbacks.evaluation import _read
from lit_explain.callbacks.explain import _curve_plot_args, _drift_plot_args
from lit_explain.metrics import InsertionDeletion

DRIFT = ["cosine_first", "cosine_previous", "rank_first", "rank_previous", "topk_first",
         "topk_previous"]


def hits(image, colour, tol=0.02):
    return (image - torch.tensor(colour).view(3, 1, 1)).abs().amax(0) < tol


def drawn(fig):
    fig.canvas.draw()
    (ax,) = fig.axes
    return ax, fig.canvas.get_renderer()


def test_the_legend_covers_no_line():
    # six series that fill the whole plot area, corner to corner (where an inside legend
    # would have to sit on some of them)
    rng = np.random.default_rng(0)
    curves = {name: rng.random(3) for name in DRIFT}
    curves["cosine_first"] = np.array([0.0, 1.0, 0.0])
    curves["cosine_previous"] = np.array([1.0, 0.0, 1.0])
    fig = viz.line_figure(curves, title="t", x_label="epoch", y_label="similarity", x=[0, 1, 2])
    ax, renderer = drawn(fig)
    (legend,) = fig.legends
    box = legend.get_window_extent(renderer)
    assert [t.get_text() for t in legend.get_texts()] == DRIFT
    for line in ax.get_lines():
        points = ax.transData.transform(line.get_xydata())  # display coordinates
        inside = ((points[:, 0] >= box.x0) & (points[:, 0] <= box.x1)
                  & (points[:, 1] >= box.y0) & (points[:, 1] <= box.y1))
        assert not inside.any(), line.get_label()
    assert not box.overlaps(ax.get_window_extent(renderer))  # outside the axes altogether
    assert box.y1 < ax.get_window_extent(renderer).y0  # under them
    # and inside the picture
    assert box.x0 >= 0 and box.y0 >= 0 and box.x1 <= fig.bbox.width


def test_a_legend_of_long_names_takes_fewer_columns_and_stays_in_the_picture():
    names = [f"drift_{r}_{m}" for r in ("previous", "first")
             for m in ("spearman", "ssim", "topk_intersection")]  # what the callback logs
    fig = viz.line_figure({n: np.linspace(0, 1, 4) for n in names}, x=[1, 2, 3, 4])
    ax, renderer = drawn(fig)
    (legend,) = fig.legends
    box = legend.get_window_extent(renderer)
    assert box.x0 >= 0 and box.x1 <= fig.bbox.width and box.y0 >= 0
    assert len(legend.get_texts()) == 6
    assert box.y1 < ax.get_window_extent(renderer).y0


@pytest.mark.parametrize("epochs", [[0, 1], [3, 4, 5], [0, 2, 4]])
def test_drift_plots_of_few_epochs_tick_each_epoch(epochs):
    fig = viz.line_figure({n: np.linspace(0.5, 1, len(epochs)) for n in DRIFT}, x=epochs)
    ax, _ = drawn(fig)
    low, high = ax.get_xlim()
    shown = [t for t in ax.get_xticklabels() if low <= t.get_position()[0] <= high]
    assert [t.get_text() for t in shown] == [str(e) for e in epochs]


def test_long_integer_axes_get_integer_ticks_and_fractions_get_decimals():
    ax, _ = drawn(viz.line_figure({"a": np.arange(40.0)}, x=np.arange(40)))
    assert all(float(t).is_integer() for t in ax.get_xticks())
    ax, _ = drawn(viz.line_figure({"a": np.arange(11.0)}, x=np.linspace(0, 1, 11)))
    assert any(not float(t).is_integer() for t in ax.get_xticks())


def test_six_series_differ_in_line_style_and_marker_not_colour_alone():
    fig = viz.line_figure({n: np.random.default_rng(1).random(4) for n in DRIFT})
    ax, _ = drawn(fig)
    lines = ax.get_lines()
    styles = [(line.get_linestyle(), line.get_marker()) for line in lines]
    assert len(set(styles)) == 6
    assert len({s for s, _ in styles}) == 4 and len({m for _, m in styles}) == 6
    assert len({line.get_color() for line in lines}) == 6


def test_line_plot_renders_the_figure_at_its_size_in_its_colours():
    image = viz.line_plot({"up": torch.linspace(0, 1, 10), "down": torch.linspace(1, 0, 10)},
                          title="t", x_label="step", y_label="score", size=(240, 360))
    assert image.shape == (3, 240, 360) and image.dtype == torch.float32
    up, down = hits(image, to_rgb("C0")), hits(image, to_rgb("C1"))
    assert up.sum() > 100 and down.sum() > 100
    # "up" rises to the right: on the right of the plot its pixels lie higher (smaller row)
    right = lambda mask: mask[:, 200:300].nonzero()[:, 0].float().mean()  # noqa: E731
    plot_rows = slice(0, 170)  # above the legend
    assert right(up[plot_rows]) < right(down[plot_rows])
    as_bytes = viz.line_plot({"a": [1.0, 0.9, 0.95]}, x=[2, 4, 6], as_uint8=True)
    assert as_bytes.dtype == torch.uint8 and as_bytes.shape == (3, 300, 420)
    with pytest.raises(ValueError, match="curve 'a' has 3 values but 2 x positions"):
        viz.line_plot({"a": [1.0, 2.0, 3.0]}, x=[0, 1])


def test_a_nan_leaves_a_gap_in_the_line():
    y = torch.tensor([0.5] * 10 + [float("nan")] + [0.5] * 10)
    image = viz.line_plot({"flat": y}, y_range=(0, 1), show_markers=False)
    ink = hits(image, to_rgb("C0"))
    row = ink[:200].sum(1).argmax()  # the curve's row (above the legend)
    cols = ink[row].nonzero().flatten()
    assert len(cols) > 150 and ((cols[1:] - cols[:-1]) > 3).sum() == 1


def test_empty_constant_and_single_point_curves_still_draw():
    assert viz.line_plot({}).shape == (3, 300, 420)
    ax, _ = drawn(viz.line_figure({"nan": np.full(5, np.nan)}))
    assert [t.get_text() for t in ax.texts] == ["no data"]
    assert hits(viz.line_plot({"c": torch.ones(5)}), to_rgb("C0")).sum() > 100
    ax, _ = drawn(viz.line_figure({"one": [0.3]}, x=[7]))
    assert [t.get_text() for t in ax.get_xticklabels()] == ["7"]


def test_figures_are_freed_and_never_reach_pyplot():
    import matplotlib.pyplot as plt

    before = plt.get_fignums()
    fig = viz.line_figure({"a": [1.0, 2.0]})
    pixels = viz.plots.figure_to_array(fig)
    assert pixels.shape == (300, 420, 3) and pixels.dtype == np.uint8
    assert fig.axes == [] and fig.legends == []  # cleared once read
    viz.line_plot({"a": [1.0, 2.0]})
    assert plt.get_fignums() == before


def test_the_callbacks_plots_name_their_axes_and_plot_no_fraction():
    metric = InsertionDeletion(lambda x: x.sum(1, keepdim=True).repeat(1, 2), steps=4,
                               softmax=False)
    x = torch.rand(3, 8)
    metric.update(x, x, torch.zeros(3, dtype=torch.long))
    _, curves = _read("insertion_deletion", metric)
    args = _curve_plot_args("gradient", "insertion_deletion", *curves["insertion_deletion"])
    assert sorted(args["curves"]) == ["deletion", "insertion"]  # the fraction is the x axis
    assert args["x_label"] == "fraction of regions changed"
    assert args["y_label"] == "logit of the explained class"
    ax, _ = drawn(viz.line_figure(**args))
    assert len(ax.get_lines()) == 2
    assert ax.get_ylabel() == "logit of the explained class"
    drift = _drift_plot_args("gradient", {"cosine_first": torch.tensor([1.0, 0.9])}, [0, 1])
    ax, _ = drawn(viz.line_figure(**drift))
    assert ax.get_xlabel() == "epoch" and "similarity" in ax.get_ylabel()
