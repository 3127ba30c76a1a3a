"""Pictures of explanations, made with torch alone (no matplotlib).

iNNvestigate's colour maps (:func:`heatmap`, :func:`graymap`, :func:`gamma`,
:func:`clip_quantile`, :func:`project`), the grid the callback logs
(:func:`explanation_grid`), line plots (:func:`line_plot`) and a PNG writer
(:func:`write_png`).
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
    project,
    seismic,
    to_uint8_hwc,
    viridis,
)
from .grid import explanation_grid
from .plots import line_plot
from .png import encode_png, write_png

__all__ = [
    "Colormap",
    "bwr",
    "clip_quantile",
    "cmaps",
    "coolwarm",
    "encode_png",
    "explanation_grid",
    "gamma",
    "gray",
    "get_cmap",
    "graymap",
    "heatmap",
    "line_plot",
    "project",
    "seismic",
    "to_uint8_hwc",
    "viridis",
    "write_png",
]
