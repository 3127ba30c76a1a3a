"""The explanation grid: one row per sample — the input, then one heatmap per analyzer.

Images ``(N, C, H, W)`` are shown as images; tabular ``(N, F)`` and sequence ``(N, C, L)``
inputs as coloured strips (one cell per feature, one strip row per channel), so every input
kind gives a readable picture. Small inputs (8×8 digits) are magnified by an integer factor
with nearest-neighbour sampling.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from torch import Tensor

from ._canvas import BLACK, WHITE, canvas, paste
from .colormaps import heatmap
from .font import GLYPH_HEIGHT, draw_text, text_width

RED = (0.8, 0.1, 0.1)
PAD = 4


def as_image_batch(x: Tensor) -> Tensor:
    """View inputs or maps as ``(N, C, H, W)``: ``(N, F)`` → ``(N, 1, 1, F)``,
    ``(N, C, L)`` → ``(N, 1, C, L)``, more than 4 dims → ``(N, 1, 1, rest)``."""
    x = x.detach().float().cpu()
    if x.dim() == 4:
        return x
    if x.dim() == 2:
        return x[:, None, None, :]
    if x.dim() == 3:
        return x[:, None]
    if x.dim() > 4:
        return x.reshape(len(x), 1, 1, -1)
    raise ValueError(f"expected a batch (N, ...) with at least 2 dims, got shape {tuple(x.shape)}")


def display_inputs(x: Tensor) -> Tensor:
    """Inputs as RGB in ``[0, 1]``: per-sample min-max scaled, gray unless 3 channels."""
    x = as_image_batch(x)
    if x.shape[1] != 3:
        x = x.mean(dim=1, keepdim=True)
    low = x.flatten(1).amin(1).view(-1, 1, 1, 1)
    high = x.flatten(1).amax(1).view(-1, 1, 1, 1)
    x = (x - low) / (high - low).clamp(min=1e-12)
    return x.expand(-1, 3, -1, -1)


def _magnification(height: int, width: int) -> tuple[int, int]:
    """Integer factors that make a cell readable: about 64×64 for images, strips of at
    least 24 px (two lines of label text) and about 192 px wide for 1-D data."""
    if height == 1 or height * 4 < width:
        return max(1, 24 // height), max(1, 192 // width)
    factor = max(1, 64 // max(height, width))
    return factor, factor


def explanation_grid(inputs: Tensor, maps: Mapping[str, Tensor],
                     labels: Tensor | Sequence[int] | None = None,
                     predictions: Tensor | Sequence[int] | None = None,
                     class_names: Sequence[str] | None = None, cmap: str = "seismic",
                     absmax: Mapping[str, float] | None = None,
                     token_names: Sequence[str] | None = None) -> Tensor:
    """Compose the picture the callback logs.

    Parameters
    ----------
    inputs:
        The samples, ``(N, C, H, W)``, ``(N, C, L)`` or ``(N, F)``.
    maps:
        Analyzer name → attribution map of the same shape as ``inputs``.
    labels, predictions:
        True and predicted class per sample, written beside each row (a wrong prediction
        in red).
    class_names:
        Names for the class indices.
    cmap:
        Colour map of the heatmaps (``"seismic"``: red for, blue against the output).
    absmax:
        Analyzer name → a fixed range for its heatmaps (shared across epochs); analyzers
        not in it are scaled per sample.
    token_names:
        For integer inputs (token ids, ``(N, L)``): the word of each id. The input column
        then shows the tokens as text, and each map column colours one cell per token.

    Returns
    -------
    Tensor
        ``(3, H, W)`` float RGB image in ``[0, 1]``.
    """
    tokens = not inputs.is_floating_point()
    shown = display_inputs(inputs) if not tokens else as_image_batch(inputs).new_ones(
        len(inputs), 3, 1, inputs[0].numel())
    count, _, height, width = shown.shape
    fy, fx = _magnification(height, width)
    words: list[list[str]] = []
    if tokens:
        names = token_names
        words = [[str(int(t)) if names is None else names[int(t)] for t in row.flatten()]
                 for row in inputs]
        fy = max(fy, GLYPH_HEIGHT + 4)
        fx = max(fx, max(text_width(w) for row in words for w in row) + 4)
    columns = [("input", shown)]
    for name, attribution in maps.items():
        limit = (absmax or {}).get(name)
        columns.append((name, heatmap(as_image_batch(attribution), cmap_type=cmap,
                                      shared_absmax=limit)))
    cell_h, cell_w = height * fy, width * fx
    column_w = [max(cell_w, text_width(title) + PAD) for title, _ in columns]
    names = [str(i) for i in range(1000)] if class_names is None else list(class_names)
    row_text = []
    for i in range(count):
        lines = []
        if labels is not None:
            lines.append(f"true {names[int(labels[i])]}")
        if predictions is not None:
            lines.append(f"pred {names[int(predictions[i])]}")
        row_text.append(lines)
    label_w = max([text_width(line) for lines in row_text for line in lines] + [0])
    label_w += PAD if label_w else 0
    header_h = GLYPH_HEIGHT + PAD
    total_w = PAD + label_w + sum(w + PAD for w in column_w)
    total_h = header_h + PAD + count * (cell_h + PAD)
    image = canvas(total_h, total_w, WHITE)
    x = PAD + label_w
    for (title, cells), w in zip(columns, column_w, strict=True):
        draw_text(image, title, x + w // 2, PAD // 2, BLACK, anchor="center")
        for i in range(count):
            y = header_h + PAD + i * (cell_h + PAD)
            cell = cells[i].repeat_interleave(fy, -2).repeat_interleave(fx, -1)
            paste(image, cell, x + (w - cell_w) // 2, y)
            if tokens and title == "input":
                for k, word in enumerate(words[i]):
                    draw_text(image, word, x + (w - cell_w) // 2 + k * fx + fx // 2, y + 2,
                              BLACK, anchor="center")
        x += w + PAD
    for i, lines in enumerate(row_text):
        y = header_h + PAD + i * (cell_h + PAD)
        wrong = labels is not None and predictions is not None and int(labels[i]) != int(
            predictions[i])
        for k, line in enumerate(lines):
            color = RED if wrong and line.startswith("pred") else BLACK
            draw_text(image, line, PAD, y + k * (GLYPH_HEIGHT + 2), color)
    return image.clamp(0, 1)
