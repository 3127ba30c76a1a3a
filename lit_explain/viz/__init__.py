"""Pictures of explanations: colour maps in torch, text and PNG by Pillow, plots by matplotlib.

- iNNvestigate's colour maps, batched, on any device: :func:`project`, :func:`heatmap`,
  :func:`graymap`, :func:`gamma`, :func:`clip_quantile`; the colour maps
  (:data:`seismic`, :data:`gray`, :data:`bwr`, :data:`coolwarm`, :data:`viridis`, the
  one-sided :data:`oranges`, by name
  in :data:`cmaps` and :func:`get_cmap`).
- The picture the callback logs: :func:`explanation_grid` (one row per sample, the input
  then one heatmap per analyzer, true/predicted labels; images, tabular rows, sequences
  and tokens).
- Line plots for perturbation curves and drift over epochs: :func:`line_plot` (matplotlib's
  Agg backend rendered to an image; :func:`line_figure` gives the figure itself).
- Output: :func:`to_uint8_hwc` (for W&B) and :func:`write_png` / :func:`encode_png` (Pillow).

Layout: images are RGB **channels first**, ``(N, 3, H, W)`` from the colour maps and
``(3, H, W)`` from the grid and plots, floats in ``[0, 1]`` (TensorBoard's ``add_image``
layout). ``to_uint8_hwc`` turns them into the ``(H, W, 3)`` uint8 that W&B and PNG want.

>>> img = heatmap(R)                                 # doctest: +SKIP
>>> grid = explanation_grid(x, {"lrp.epsilon": R}, labels=y, predictions=p)  # doctest: +SKIP
>>> write_png("grid.png", to_uint8_hwc(grid))        # doctest: +SKIP
"""

from .colormaps import (
    Colormap,
    bwr,
    clip_quantile,
    cmaps,
    coolwarm,
    gamma,
    get_cmap,
    gray,
    graymap,
    heatmap,
    oranges,
    project,
    seismic,
    to_uint8_hwc,
    viridis,
)
from .font import draw_text, text_mask
from .grid import colorbar_ticks, explanation_grid, robust_absmax
from .plots import line_figure, line_plot
from .png import encode_png, write_png

__all__ = [
    "Colormap",
    "bwr",
    "clip_quantile",
    "cmaps",
    "colorbar_ticks",
    "coolwarm",
    "draw_text",
    "encode_png",
    "explanation_grid",
    "gamma",
    "get_cmap",
    "graymap",
    "gray",
    "heatmap",
    "line_figure",
    "line_plot",
    "oranges",
    "project",
    "robust_absmax",
    "seismic",
    "text_mask",
    "to_uint8_hwc",
    "viridis",
    "write_png",
]
