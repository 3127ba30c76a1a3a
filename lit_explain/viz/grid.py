"""The explanation grid: one row per sample, the input and then one heatmap per analyzer.

Layout::

                 input     gradient   lrp.epsilon      <- header: analyzer names (wrapped)
    true: 3    [ input ]  [ heatmap ]  [ heatmap ]     <- one row per sample
    pred: 3
    true: 7    [ input ]  [ heatmap ]  [ heatmap ]
    pred: 1                                            (pred green when right, red when wrong)
                    -max [ colour bar ] +max           <- which colour is which sign

Each input kind gets a readable cell:

- images ``(N, C, H, W)``: the picture (grey, RGB, or the channel mean), magnified by
  nearest neighbour to about ``cell_size`` pixels (an 8x8 digit becomes 64x64);
- tabular rows ``(N, F)`` and one-channel sequences ``(N, 1, L)``: a bar plot of the values
  over a strip of coloured cells, one per feature (time step); heatmap columns colour
  both the bars and the strip;
- multi-channel sequences ``(N, C, L)``: a ``C x L`` picture, with the channel-summed
  relevance as a strip below it in the heatmap columns;
- token ids (integer ``(N, L)``): the words, one cell per token, wrapped into lines; the
  heatmap columns write each word on its relevance colour.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from ._canvas import WHITE, canvas, fill_rect, outline_rect, paste, paste_column, upscale
from .colormaps import Colormap, _reduce, check_scale, get_cmap, heatmap, project
from .font import LINE_HEIGHT, draw_text, line_height, text_width

__all__ = ["colorbar_ticks", "explanation_grid", "robust_absmax"]

TEXT = (0.1, 0.1, 0.1)
GREEN = (0.0, 0.5, 0.0)
RED = (0.8, 0.1, 0.1)
FRAME = (0.72, 0.72, 0.72)
BAR = (0.35, 0.35, 0.35)
#: Colour of the ground-truth mask outlines on the input column (a bright green).
MASK_OUTLINE = (0.1, 0.85, 0.2)
KINDS = ("auto", "image", "sequence", "tabular", "tokens")

Scale = float | Tensor | Mapping[str, float | Tensor] | None
#: The quantile of ``|relevance|`` that :func:`robust_absmax` takes as a range.
ROBUST_QUANTILE = 0.995
#: The narrowest colour bar, in pixels at text scale 1: a grid too narrow for its colour
#: bars is widened to hold them.
MIN_COLORBAR_WIDTH = 48


def robust_absmax(maps: Tensor, quantile: float = ROBUST_QUANTILE) -> float:
    """One colour range for all of ``maps``: the ``quantile`` of their absolute values.

    A robust maximum: a few outlier pixels (at most ``1 - quantile`` of them) saturate
    instead of washing out every other value. 1.0 when the maps are all zero.
    """
    values = maps.detach().abs().flatten().double()
    if values.numel() > 1_000_000:  # quantile() refuses huge inputs: a strided sample
        values = values[:: values.numel() // 1_000_000 + 1]
    value = float(torch.quantile(values, quantile)) if values.numel() else 0.0
    if value <= 0:
        value = float(values.max()) if values.numel() else 0.0
    return value if value > 0 and math.isfinite(value) else 1.0


def colorbar_ticks(absmax: float | None, one_sided: bool) -> list[tuple[float, str]]:
    """Tick positions on a colour bar (0 = left end, 1 = right end) and their labels.

    Diverging maps: ``-a, -a/2, 0, a/2, a``; one-sided maps: ``0, a/2, a``. ``absmax=None``
    (each map scaled by its own maximum): the same ticks relative to that maximum,
    ``-1 ... 1``.
    """
    if absmax is not None:
        check_scale("absmax", absmax)
    a = 1.0 if absmax is None else float(absmax)
    fractions = (0.0, 0.5, 1.0) if one_sided else (0.0, 0.25, 0.5, 0.75, 1.0)
    ticks = []
    for f in fractions:
        value = f * a if one_sided else (2 * f - 1) * a
        ticks.append((f, "0" if value == 0 else f"{value:.3g}"))
    return ticks


def _column_titles(input_title: str, names: Sequence[str]) -> list[str]:
    """Headers of the input column and the map columns, all different (an analyzer called
    ``input`` keeps its name; the input column then becomes ``sample``)."""
    title = input_title
    for candidate in (input_title, "sample", "data", "x"):
        if candidate not in names:
            title = candidate
            break
    return [title, *names]


def _channel_reduced(kind: str, m: Tensor, reduce_op: str) -> Tensor:
    """The values a heatmap colours: image maps' channels combined, strips' channels summed."""
    if kind == "image":
        return _reduce(m, reduce_op, 1) if m.ndim == 4 else m
    if kind == "tokens":
        return m
    return m.sum(1)


# ----------------------------------------------------------------------------- helpers


def _cpu(t: Tensor | np.ndarray, what: str) -> Tensor:
    if isinstance(t, np.ndarray):
        t = torch.from_numpy(np.asarray(t))
    if not isinstance(t, Tensor):
        raise TypeError(f"{what} must be a torch.Tensor or numpy.ndarray, got {type(t).__name__}")
    return t.detach().cpu()


def _class_ids(v: Tensor | Sequence[int] | None, n: int, what: str) -> list[int] | None:
    if v is None:
        return None
    t = v.detach().cpu() if isinstance(v, Tensor) else torch.as_tensor(np.asarray(v))
    if t.ndim == 2 and t.shape[1] == 1:  # a column: class ids, or one logit (class: > 0)
        whole = not t.is_floating_point() or bool((t == t.round()).all())
        t = t[:, 0].long() if whole else (t[:, 0] > 0).long()
    elif t.ndim == 2:  # one-hot, probabilities or logits
        t = t.argmax(1)
    t = t.reshape(-1)
    if t.numel() != n:
        raise ValueError(f"{what} has {t.numel()} entries for {n} samples")
    return [int(i) for i in t.tolist()]


def _class_name(i: int, names: Sequence[str] | Mapping[int, str] | None) -> str:
    if names is None:
        return str(i)
    if isinstance(names, Mapping):
        return str(names.get(i, i))
    return str(names[i]) if 0 <= i < len(names) else str(i)


def _fit(text: str, width: int, scale: int = 1) -> str:
    """``text``, shortened with a trailing ``..`` until it fits ``width`` pixels."""
    if text_width(text, scale) <= width:
        return text
    while text and text_width(text + "..", scale) > width:
        text = text[:-1]
    return text + ".."


def _wrap(name: str, max_chars: int) -> list[str]:
    """Lines of at most ``max_chars``, broken preferably after ``.``, ``_``, ``-``, ``/``."""
    lines: list[str] = []
    line = ""
    for token in re.findall(r"[^._\-/ ]+[._\-/ ]*|[._\-/ ]+", name):
        while len(token) > max_chars:  # a word longer than a line is cut
            if line:
                lines.append(line)
                line = ""
            lines.append(token[:max_chars])
            token = token[max_chars:]
        if len(line) + len(token) > max_chars:
            lines.append(line)
            line = ""
        line += token
    if line:
        lines.append(line)
    return [ln.rstrip(" ") for ln in lines] or [""]


def _minmax(x: Tensor, dims: tuple[int, ...]) -> Tensor:
    """Min-max scaling to ``[0, 1]`` over ``dims`` (constant slices become 0.5)."""
    lo, hi = x.amin(dims, keepdim=True), x.amax(dims, keepdim=True)
    span = hi - lo
    return torch.where(span > 0, (x - lo) / torch.where(span > 0, span, 1), 0.5)


def _scale_for(name: str, absmax: Scale) -> float | Tensor | None:
    return absmax.get(name) if isinstance(absmax, Mapping) else absmax


def _scalar(v: object) -> float | None:
    """``v`` as a finite float if it is one number, else None."""
    if isinstance(v, Tensor):
        v = float(v) if v.numel() == 1 else None
    return float(v) if isinstance(v, (int, float)) and math.isfinite(v) else None


def _ink_for(rgb: Tensor) -> tuple[float, float, float]:
    """Black or white text, whichever reads better on the colour ``rgb`` (3,)."""
    luminance = float(0.299 * rgb[0] + 0.587 * rgb[1] + 0.114 * rgb[2])
    return (0.0, 0.0, 0.0) if luminance > 0.45 else (1.0, 1.0, 1.0)


def _middle_slices(t: Tensor, channels: bool) -> Tensor:
    """The middle slice of a volume ``(N, C, D, ..., H, W)`` (``channels``) or
    ``(N, D, ..., H, W)``: every axis between the batch (and channel) axes and the last two
    indexed at its middle."""
    first = 2 if channels else 1
    while t.ndim > first + 2:
        t = t.select(first, t.shape[first] // 2)
    return t


# ------------------------------------------------------------------------- the cells
#
# Each builder returns the input column's cells and, per analyzer, the heatmap cells:
# (3, h, w) float images, all of one size (images: (N, 3, H, W) batches and the
# magnification they are drawn at).


def _image_cells(x: Tensor, maps: dict[str, Tensor], cmaps: dict[str, Colormap],
                 reduce_op: str, absmax: Scale, cell: int, overlay: bool = False):
    N, C, H, W = x.shape
    factor = max(1, cell // max(H, W))
    shown = _minmax(x, (1, 2, 3)) if C == 3 else _minmax(x.mean(1, keepdim=True), (1, 2, 3))
    grey = shown.mean(1, keepdim=True)  # what an overlay draws on
    shown = shown.expand(-1, 3, -1, -1)
    prepared: dict[str, Tensor] = {}
    for name, m in maps.items():
        if tuple(m.shape[-2:]) != (H, W):  # e.g. a hidden layer's map: stretch to the input
            m = F.interpolate(m if m.ndim == 4 else m[:, None], size=(H, W), mode="nearest")
        prepared[name] = m
    rgbs = _heatmaps(prepared, cmaps, reduce_op, absmax)
    if overlay:  # the colour over the grey input, as opaque as the value is strong
        for name, m in prepared.items():
            reduced = _channel_reduced("image", m, reduce_op).reshape(N, 1, H, W)
            alpha = project(reduced.abs(), absmax=_scale_for(name, absmax),
                            input_is_positive_only=True)
            rgbs[name] = (1 - alpha) * grey + alpha * rgbs[name]
    # not magnified here: the cells are magnified as they are pasted (no big copies)
    return shown, rgbs, factor


def _heatmaps(maps: dict[str, Tensor], cmaps: dict[str, Colormap], reduce_op: str,
              absmax: Scale) -> dict[str, Tensor]:
    """:func:`heatmap` of each map, the maps that share a colour map, a shape and a kind of
    scale coloured in one call (every step is per sample, so the colours are those of one
    call per map)."""
    groups: dict[tuple, list[str]] = {}
    for name, m in maps.items():
        key = (id(cmaps[name]), tuple(m.shape[1:]), m.dtype, _scale_for(name, absmax) is None)
        groups.setdefault(key, []).append(name)
    out: dict[str, Tensor] = {}
    for names in groups.values():
        cmap = cmaps[names[0]]
        scales = [_scale_for(name, absmax) for name in names]
        if len(names) == 1:
            x, scale = maps[names[0]], scales[0]
        else:
            x = torch.cat([maps[name] for name in names])
            scale = None if scales[0] is None else torch.cat([
                torch.as_tensor(v, dtype=x.dtype).reshape(-1).expand(len(maps[name]))
                for name, v in zip(names, scales, strict=True)])
        rgb = heatmap(x, cmap_type=cmap, reduce_op=reduce_op, shared_absmax=scale,
                      input_is_positive_only=cmap.one_sided)
        out.update(zip(names, rgb.split([len(maps[name]) for name in names]), strict=True))
    return {name: out[name] for name in maps}  # in the maps' order


def _outline_masks(cells: list[Tensor], masks: Tensor, shape: torch.Size) -> None:
    """Paint the boundary pixels of each (magnified) mask onto its input cell, in place."""
    N, _, H, W = shape
    m = masks.reshape(N, -1, H, W) != 0 if masks.numel() % (N * H * W) == 0 else None
    if m is None:
        raise ValueError(f"masks of shape {tuple(masks.shape)} do not fit images {tuple(shape)}")
    m = m.any(1)
    color = torch.tensor(MASK_OUTLINE).view(3, 1, 1)
    for i, cell in enumerate(cells):
        factor = cell.shape[1] // H
        big = m[i].repeat_interleave(factor, 0).repeat_interleave(factor, 1)[None, None].float()
        inner = -F.max_pool2d(-F.pad(big, (1, 1, 1, 1), value=0.0), 3, stride=1)
        edge = (big > 0) & (inner <= 0)  # in the mask, next to a pixel outside it
        cells[i] = torch.where(edge[0], color, cell)


def _bars(values: Tensor, colors: Tensor, cw: int, height: int) -> Tensor:
    """A bar plot ``(3, height, L * cw)`` of ``values`` (L,) in ``colors`` (3, L).

    Bars grow from a zero line: in the middle for signed values, at the bottom (top) when
    all are non-negative (non-positive); heights are relative to the largest ``|value|``.
    """
    a = values.abs().max()
    v = values / a if a > 0 else torch.zeros_like(values)
    if (values >= 0).all():
        zero, reach = height - 1, height - 1
    elif (values <= 0).all():
        zero, reach = 0, height - 1
    else:
        zero, reach = (height - 1) // 2, (height - 1) // 2
    ends = (zero - v * reach).round().long()
    rows = torch.arange(height)[:, None]
    inside = (rows >= ends.clamp(max=zero)) & (rows <= ends.clamp(min=zero)) & (v != 0)
    inside = inside.repeat_interleave(cw, 1)
    if cw >= 3:  # a one-pixel gap between bars
        inside[:, cw - 1 :: cw] = False
    img = torch.where(inside[None], colors.repeat_interleave(cw, 1)[:, None, :], 1.0)
    img[:, zero] = torch.tensor(FRAME).view(3, 1)
    return img


def _strip_cells(x: Tensor, maps: dict[str, Tensor], cmaps: dict[str, Colormap],
                 reduce_op: str, absmax: Scale, cell: int):
    N, C, L = x.shape
    cw = max(1, (3 * cell) // L)
    strip_h, gap = max(6, cell // 5), 2
    gray = get_cmap("gray")
    # channel-summed maps (N, L) for the strips, and full (N, C, L) maps where given
    summed = {n: m.sum(1) for n, m in maps.items()}
    strips = {
        n: heatmap(r[:, None, :], cmap_type=cmaps[n], shared_absmax=_scale_for(n, absmax),
                   input_is_positive_only=cmaps[n].one_sided)[:, :, 0]
        for n, r in summed.items()
    }
    inputs: list[Tensor] = []
    out: dict[str, list[Tensor]] = {n: [] for n in maps}
    if C == 1:
        bar_h = cell - strip_h - gap
        xin = gray(_minmax(x[:, 0], (1,))).permute(0, 2, 1)  # (N, 3, L)
        for i in range(N):
            c = torch.ones(3, cell, L * cw)
            c[:, :bar_h] = _bars(x[i, 0], torch.tensor(BAR).view(3, 1).expand(3, L), cw, bar_h)
            c[:, bar_h + gap :] = xin[i].repeat_interleave(cw, 1)[:, None, :]
            inputs.append(c)
            for n in maps:
                c = torch.ones(3, cell, L * cw)
                c[:, :bar_h] = _bars(summed[n][i], strips[n][i], cw, bar_h)
                c[:, bar_h + gap :] = strips[n][i].repeat_interleave(cw, 1)[:, None, :]
                out[n].append(c)
        return inputs, out
    rh = max(1, (cell - strip_h - gap) // C)
    pic_h = rh * C
    xin = gray(_minmax(x, (2,))).permute(0, 3, 1, 2)  # (N, 3, C, L), each channel scaled
    pics = {
        n: heatmap(m, cmap_type=cmaps[n], reduce_axis=None, shared_absmax=_scale_for(n, absmax),
                   input_is_positive_only=cmaps[n].one_sided)
        for n, m in maps.items()
        if m.shape[1] == C
    }
    for i in range(N):
        c = torch.ones(3, pic_h + gap + strip_h, L * cw)
        c[:, :pic_h] = xin[i].repeat_interleave(rh, 1).repeat_interleave(cw, 2)
        inputs.append(c)
        for n in maps:
            c = torch.ones(3, pic_h + gap + strip_h, L * cw)
            if n in pics:
                c[:, :pic_h] = pics[n][i].repeat_interleave(rh, 1).repeat_interleave(cw, 2)
                c[:, pic_h + gap :] = strips[n][i].repeat_interleave(cw, 1)[:, None, :]
            else:  # a channel-reduced map: its strip fills the cell
                c[:] = strips[n][i].repeat_interleave(cw, 1)[:, None, :]
            out[n].append(c)
    return inputs, out


def _token_cells(ids: Tensor, maps: dict[str, Tensor], cmaps: dict[str, Colormap],
                 absmax: Scale, cell: int, token_names: Sequence[str] | None):
    N, L = ids.shape
    names = token_names
    words = [[str(t) if names is None or not 0 <= t < len(names) else str(names[t])
              for t in row.tolist()] for row in ids]
    longest = max((text_width(_fit(w, 16 * 6)) for row in words for w in row), default=0)
    tw = max((3 * cell) // L, longest + 4)  # cell width per token
    per_line = max(1, min(L, (6 * cell) // tw))
    lines = math.ceil(L / per_line)
    th = LINE_HEIGHT + 4
    size = (3, lines * th, per_line * tw)

    def draw(colors: Tensor | None, i: int) -> Tensor:
        c = torch.ones(size)
        for k, word in enumerate(words[i]):
            x0, y0 = (k % per_line) * tw, (k // per_line) * th
            ink = (0.0, 0.0, 0.0)
            if colors is not None:
                c[:, y0 : y0 + th - 1, x0 : x0 + tw - 1] = colors[:, k].view(3, 1, 1)
                ink = _ink_for(colors[:, k])
            draw_text(c, _fit(word, tw - 4), x0 + (tw - 1) // 2, y0 + 1, ink, anchor="center")
        return c

    inputs = [draw(None, i) for i in range(N)]
    out = {}
    for n, m in maps.items():
        rgb = heatmap(m[:, None, :], cmap_type=cmaps[n], shared_absmax=_scale_for(n, absmax),
                      input_is_positive_only=cmaps[n].one_sided)
        out[n] = [draw(rgb[i, :, 0], i) for i in range(N)]
    return inputs, out


def _token_map(name: str, m: Tensor, L: int) -> Tensor:
    """A token model's map as ``(N, L)``: one value per token (embedding axes summed)."""
    if m.ndim >= 2 and m[0].numel() == L:
        return m.reshape(len(m), L)
    if m.ndim >= 3 and m.shape[1] == L:
        return m.flatten(2).sum(2)
    if m.ndim >= 3 and m.shape[-1] == L:
        return m.flatten(1, -2).sum(1)
    raise ValueError(f"map {name!r} has shape {tuple(m.shape)}; token inputs of length {L} "
                     f"need (N, {L}) maps, or (N, {L}, E) / (N, E, {L}) summed over E")


def _image_map(name: str, m: Tensor, shape: torch.Size) -> Tensor:
    """An image map as ``(N, C', H', W')`` or ``(N, H', W')``, for inputs of ``shape``
    ``(N, C, ..., H, W)``: a flat map takes the input's shape (with or without its channel
    axis); a volume's map, with any channel count or without the channel axis, is sliced
    where the input column is (:func:`_middle_slices`)."""
    N, C, *spatial = shape
    given = tuple(m.shape)
    positions = math.prod(spatial)
    if m.ndim == 2 and m.shape[1] in (C * positions, positions):
        m = m.reshape(N, -1, *spatial)
    if len(shape) > 4 and m.ndim in (len(shape) - 1, len(shape)):
        m = _middle_slices(m, channels=m.ndim == len(shape))
    if m.ndim not in (3, 4):
        raise ValueError(
            f"map {name!r} has shape {given}; for inputs of shape {tuple(shape)} a map needs "
            f"{len(shape)} axes (N, C', ...) with any channel count C', {len(shape) - 1} "
            f"without the channel axis, or flat {C * positions} or {positions} values per "
            f"sample")
    return m


def _strip_map(name: str, m: Tensor, C: int, L: int) -> Tensor:
    """A map as ``(N, C, L)`` or, when already channel-reduced, ``(N, 1, L)``."""
    if m.ndim >= 2 and m[0].numel() == C * L:
        return m.reshape(len(m), C, L)
    if m.ndim >= 2 and m[0].numel() == L:
        return m.reshape(len(m), 1, L)
    raise ValueError(f"map {name!r} has shape {tuple(m.shape)}; for inputs with {C} "
                     f"channel(s) of length {L} a map needs {C * L} or {L} values per sample")


# ------------------------------------------------------------------------------ grid


def explanation_grid(
    inputs: Tensor | np.ndarray,
    maps: Mapping[str, Tensor | np.ndarray],
    labels: Tensor | Sequence[int] | None = None,
    predictions: Tensor | Sequence[int] | None = None,
    class_names: Sequence[str] | Mapping[int, str] | None = None,
    cmap: str | Colormap | Mapping[str, str | Colormap] = "auto",
    absmax: float | Tensor | Mapping[str, float | Tensor] | str | None = None,
    token_names: Sequence[str] | None = None,
    *,
    masks: Tensor | np.ndarray | None = None,
    reduce_op: str = "sum",
    kind: str = "auto",
    cell_size: int = 64,
    padding: int = 4,
    text_scale: int | None = None,
    input_title: str = "input",
    colorbar: bool = True,
    overlay: bool = False,
    as_uint8: bool = False,
) -> Tensor:
    """Compose inputs and their attribution maps into one picture, one row per sample.

    Columns: the true and predicted label (when given), the input, then one heatmap per
    analyzer (iNNvestigate's :func:`heatmap`: channels summed, each sample scaled by its
    absolute maximum, seismic colours: red for, blue against the explained output, white
    zero), under a header of analyzer names; a colour bar at the bottom.

    Parameters
    ----------
    inputs : Tensor or ndarray
        ``(N, C, H, W)`` images (C = 3 shown as RGB, other counts as their channel mean;
        each sample min-max scaled), ``(N, C, L)`` sequences, ``(N, F)`` tabular rows, or
        integer ``(N, L)`` token ids. Inputs with more than 4 axes (``(N, C, D, H, W)``
        volumes, videos) are shown by their middle slice along the extra axes. Any device;
        the picture is made on the CPU.
    maps : mapping of str to Tensor or ndarray
        Analyzer name -> attribution map of the same samples: the input's shape, or
        already channel-reduced (``(N, H, W)``, ``(N, L)``), or flat with as many values
        per sample. Image maps of another spatial size or channel count (a hidden
        layer's) have their channels combined and are stretched to the input's size by
        nearest neighbour; a volume's maps are shown by their middle slice, as the input
        is. Float64 maps are drawn in float64, all others in float32.
    labels, predictions : (N,) ints, (N, K) scores (arg-maxed), or an (N, 1) column (class
        ids; a column of one logit per sample: class ``logit > 0``), optional
        Written left of each row as ``true: ...`` and ``pred: ...``; the prediction is
        green when it matches the label and red when not.
    class_names : sequence or mapping, optional
        Names of the class indices.
    cmap : str, Colormap, or mapping of analyzer name to those
        Colour map of the heatmaps (:data:`cmaps`). ``"auto"`` (default): ``"seismic"``
        for signed maps, the one-sided ``"oranges"`` (white at 0) for maps with no negative
        value, such as ``|gradient|`` or squared SmoothGrad; a one-sided map spreads
        ``[0, max]`` over all its colours.
    absmax : float, (N,) tensor, mapping of analyzer name to those, or "shared", optional
        Fixed heatmap scales (:func:`heatmap`'s ``shared_absmax``), written on the colour
        bar or in the header; analyzers without one are scaled per sample. ``"shared"``:
        one scale per analyzer for all its samples, :func:`robust_absmax` of its map (the
        99.5th percentile of ``|R|``), so that the samples compare.
    token_names : sequence of str, optional
        The word of each token id, for integer inputs.
    masks : Tensor or ndarray, optional
        Ground-truth masks of image inputs (``(N, H, W)``, ``(N, 1, H, W)`` or the inputs'
        shape, any channel counting), outlined in :data:`MASK_OUTLINE` on the input column.
    reduce_op : {"sum", "absmax", "mean"}
        How image maps' channels are combined.
    kind : {"auto", "image", "sequence", "tabular", "tokens"}
        How to read ``inputs``. ``"auto"``: integer ``(N, L)`` are tokens; otherwise 4+
        axes are images, 3 sequences, 2 tabular. ``"image"`` reads 3 axes as
        ``(N, H, W)``; ``"tabular"`` flattens each sample.
    cell_size : int
        Images smaller than this are magnified by the largest integer factor that keeps
        them within it (8x8 -> 64x64). Strips are this high and about 3 times as wide.
    padding : int
        Pixels between cells.
    text_scale : int, optional
        Font magnification; default 1, or 2 when cells are 160 pixels or larger.
    input_title : str
        Header of the input column.
    colorbar : bool
        Draw the colour map(s) as a bar at the bottom, with numbered ticks: the values when
        every analyzer shares one scale, else relative to each map's scale (``-1 ... 1``).
        A grid narrower than its bars is widened to hold them.
    overlay : bool
        Image inputs: draw each heatmap over the grey input, as opaque as ``|R|`` is large
        relative to the scale (where the map is 0 the grey input shows unchanged).
    as_uint8 : bool
        Return ``uint8`` in ``0..255`` instead of float in ``[0, 1]`` (still ``(3, H, W)``,
        stored channels-last, so that :func:`to_uint8_hwc` needs no copy).

    Returns
    -------
    Tensor
        ``(3, H, W)`` RGB picture on the CPU, channels first (TensorBoard's ``add_image``
        layout; :func:`to_uint8_hwc` makes the ``(H, W, 3)`` uint8 that W&B and
        :func:`write_png` want).

    Raises
    ------
    ValueError
        For an unknown ``kind``, colour map or ``reduce_op``, inputs without samples, or a
        map whose batch size or shape does not fit the inputs (the message names the
        analyzer and the shapes).
    """
    if kind not in KINDS:
        raise ValueError(f"unknown kind {kind!r}; valid ones: {', '.join(map(repr, KINDS))}")
    if not isinstance(maps, Mapping):
        raise TypeError(f"maps must be a mapping of analyzer names to their maps "
                        f"({{'gradient': R}}), got {type(maps).__name__}")
    if isinstance(cell_size, bool) or not isinstance(cell_size, int) or cell_size < 1:
        raise ValueError(f"cell_size={cell_size!r} is not valid; give a positive int (pixels)")
    x = _cpu(inputs, "inputs")
    if x.ndim < 2 or x.shape[0] == 0:
        raise ValueError(f"inputs must be a batch (N, ...) with N >= 1, got {tuple(x.shape)}")
    integer = not (x.is_floating_point() or x.dtype == torch.bool)
    if kind == "auto":
        kind = ("tokens" if integer and x.ndim == 2
                else {2: "tabular", 3: "sequence"}.get(x.ndim, "image"))
    if kind != "tokens":
        x = x.float()
    if kind == "image":
        x = x[:, None] if x.ndim == 3 else x
        if x.ndim < 4:
            raise ValueError(f"kind='image' needs (N, C, H, W) or (N, H, W), got {tuple(x.shape)}")
        image_shape = x.shape  # a volume (N, C, D, ..., H, W) is shown by its middle slice
        x = _middle_slices(x, channels=True)
    elif kind == "tabular":
        x = x.reshape(len(x), 1, -1)
    elif kind == "sequence":
        x = x[:, None] if x.ndim == 2 else x
        if x.ndim != 3:
            raise ValueError(f"kind='sequence' needs (N, C, L) or (N, L), got {tuple(x.shape)}")
    else:
        x = x.reshape(len(x), -1).long()
    N = len(x)
    ms: dict[str, Tensor] = {}
    for name, m in maps.items():
        t = _cpu(m, f"map {name!r}")
        t = t if t.dtype == torch.float64 else t.float()  # (float64 beyond float32's range)
        if t.ndim < 2 or t.shape[0] != N:
            raise ValueError(f"map {name!r} has shape {tuple(t.shape)}, but there are {N} inputs")
        if not bool(torch.isfinite(t).all()):  # (it would draw its samples blank)
            bad = int((~torch.isfinite(t)).flatten(1).any(1).sum())
            raise ValueError(f"map {name!r} holds NaN or infinite values in {bad} of {N} "
                             f"samples; a heatmap has no colour for them")
        if kind == "tokens":
            t = _token_map(name, t, x.shape[1])
        elif kind == "image":
            t = _image_map(name, t, image_shape)
        else:
            t = _strip_map(name, t, x.shape[1], x.shape[2])
        ms[name] = t
    if isinstance(absmax, str):
        if absmax != "shared":
            raise ValueError(f"absmax={absmax!r} is not valid; give numbers or 'shared'")
        absmax = {n: robust_absmax(_channel_reduced(kind, t, reduce_op)) for n, t in ms.items()}
    for n in ms:
        if _scale_for(n, absmax) is not None:
            check_scale(f"absmax for map {n!r}", _scale_for(n, absmax), N)
    if isinstance(cmap, Mapping) and set(ms) - set(cmap):
        raise ValueError(f"cmap= has no colour map for the maps {sorted(set(ms) - set(cmap))}; "
                         f"give one per map (it has {sorted(cmap)}) or one for all")
    cms: dict[str, Colormap] = {}
    for n, t in ms.items():
        chosen = cmap[n] if isinstance(cmap, Mapping) else cmap
        if isinstance(chosen, str) and chosen == "auto":
            chosen = "oranges" if bool((t >= 0).all()) and bool((t > 0).any()) else "seismic"
        cms[n] = get_cmap(chosen)

    # each column: its cells (N, 3, h, w) and the magnification they are drawn at
    if kind == "image":
        shown, rgbs, factor = _image_cells(x, ms, cms, reduce_op, absmax, cell_size, overlay)
        in_column = (shown, factor)
        if masks is not None:  # outlined on the magnified inputs
            in_column = (upscale(shown, factor), 1)
            m = _cpu(masks, "masks")
            if len(image_shape) > 4:  # a volume's masks: the slice the input column shows
                m = _middle_slices(m, channels=m.ndim == len(image_shape))
            _outline_masks(in_column[0], m, x.shape)
        map_columns = {name: (rgb, factor) for name, rgb in rgbs.items()}
    else:
        in_cells, map_cells = (
            _token_cells(x, ms, cms, absmax, cell_size, token_names) if kind == "tokens"
            else _strip_cells(x, ms, cms, reduce_op, absmax, cell_size))
        in_column = (torch.stack(in_cells), 1)
        map_columns = {name: (torch.stack(cells), 1) for name, cells in map_cells.items()}
    ch, cw = (size * in_column[1] for size in in_column[0].shape[2:])

    s = text_scale or (2 if max(ch, cw) >= 160 and kind == "image" else 1)
    line_h = line_height(s) + s
    pad = padding

    # header: names wrapped to the column width (at least 12 characters)
    names = list(ms)
    titles = _column_titles(input_title, names)
    wrapped = [_wrap(t, max(12, cw // (6 * s))) for t in titles]
    scales = [_scalar(_scale_for(n, absmax)) for n in ms]
    for lines, v in zip(wrapped[1:], scales, strict=True):
        if v is not None:  # a fixed scale: say which
            lines.append(f"max {v:.3g}")
    col_w = [max(cw, *(text_width(ln, s) for ln in lines)) for lines in wrapped]
    header_h = max(len(lines) for lines in wrapped) * line_h

    # label column
    trues = _class_ids(labels, N, "labels")
    preds = _class_ids(predictions, N, "predictions")
    row_text: list[list[tuple[str, tuple[float, float, float]]]] = []
    for i in range(N):
        lines = []
        if trues is not None:
            lines.append((f"true: {_class_name(trues[i], class_names)}", TEXT))
        if preds is not None:
            color = TEXT if trues is None else GREEN if trues[i] == preds[i] else RED
            lines.append((f"pred: {_class_name(preds[i], class_names)}", color))
        row_text.append(lines)
    max_label = 18 * 6 * s
    label_w = max((min(text_width(t, s), max_label) for ln in row_text for t, _ in ln), default=0)

    # canvas: a row is as tall as its cells or its labels (a one-line token strip is lower
    # than two lines of labels, whose text then ran into the next rows)
    x_cells = pad + (label_w + 2 * pad if label_w else 0)
    width = x_cells + sum(w + 2 * pad for w in col_w)
    bar_h = line_h + 12 * s + 2 * pad if colorbar and ms else 0
    shared = scales[0] if len(set(scales)) == 1 else None  # bar values only if all agree
    bars = list({c.name: c for c in cms.values()}.values())  # each colour map once
    if bar_h:
        width = max(width, _colorbars_width(len(bars), shared, s, pad))
    top = pad + header_h + pad
    step = max(ch, max((len(lines) for lines in row_text), default=0) * line_h) + 2 * pad
    height = top + N * step + bar_h
    img = canvas(height, width, WHITE)

    x0 = x_cells
    for lines, w in zip(wrapped, col_w, strict=True):
        for k, ln in enumerate(lines):  # bottom-aligned over the column
            draw_text(img, ln, x0 + w // 2, top - pad - (len(lines) - k) * line_h + s, TEXT, s,
                      anchor="center")
        x0 += w + 2 * pad
    for i in range(N):
        y = top + i * step
        lines = row_text[i]
        ly = y + max(ch - len(lines) * line_h, 0) // 2 + s
        for k, (t, color) in enumerate(lines):
            draw_text(img, _fit(t, max_label, s), pad, ly + k * line_h, color, s)
    x0 = x_cells
    for j, w in enumerate(col_w):
        cells, factor = in_column if j == 0 else map_columns[names[j - 1]]
        cx = x0 + (w - cw) // 2
        # the frame: its box filled, then the cell over all of it but the 1-pixel border
        if pad >= 1 or step >= ch + 2:  # the boxes do not overlap: a whole column at once
            paste_column(img, cells, cx, top, step, FRAME, factor)
        else:  # each box overlaps its neighbours: drawn in order, as it always was
            for i, cell in enumerate(cells):
                y = top + i * step
                fill_rect(img, cx - 1, y - 1, cx + cw + 1, y + ch + 1, FRAME)
                paste(img, upscale(cell, factor), cx, y)
        x0 += w + 2 * pad
    if bar_h:
        _colorbars(img, bars, shared, height - bar_h + pad, s, pad)
    img.clamp_(0, 1)  # in place: the canvas is ours
    if not as_uint8:
        return img
    img.nan_to_num_(0.0).mul_(255).round_()
    # stored pixel by pixel (H, W, 3), which PNG encoders and W&B take: to_uint8_hwc is then
    # a view; written a channel at a time, which is faster than one transposing copy
    out = torch.empty(img.shape[1], img.shape[2], 3, dtype=torch.uint8)
    for channel in range(3):
        out[..., channel] = img[channel]
    return out.permute(2, 0, 1)


def _colorbar_note(absmax: float | None, s: int) -> tuple[str, int]:
    """The note beside the colour bars, what their numbers are relative to (none when they
    are the values), and the width it takes."""
    note = "" if absmax is not None else "x each map's scale"
    return note, text_width(note, s) + 8 * s if note else 0


def _colorbars_width(n_bars: int, absmax: float | None, s: int, pad: int) -> int:
    """The narrowest canvas that holds ``n_bars`` colour bars of :data:`MIN_COLORBAR_WIDTH`,
    the room for their end labels and the note."""
    return 2 * pad + n_bars * (MIN_COLORBAR_WIDTH + 24) * s + _colorbar_note(absmax, s)[1]


def _colorbars(img: Tensor, bars: list[Colormap], absmax: float | None, y: int, s: int,
               pad: int) -> None:
    """Horizontal bars of the colour maps at height ``y``, side by side, with numbered ticks
    (:func:`colorbar_ticks`) and, when the maps have their own scales, what the numbers are
    relative to. ``img`` is at least :func:`_colorbars_width` wide."""
    _, _, W = img.shape
    note, note_w = _colorbar_note(absmax, s)
    room = W - 2 * pad - note_w
    step = room // len(bars)
    bw = min(step - 24 * s, 160 * s)
    bh = 8 * s
    x = (W - (step * len(bars) + note_w)) // 2
    for cmap in bars:
        x0 = x + (step - bw) // 2
        paste(img, cmap(torch.linspace(0, 1, bw)).T[:, None, :].expand(3, bh, bw), x0, y)
        outline_rect(img, x0 - 1, y - 1, x0 + bw + 1, y + bh + 1, FRAME)
        free = -W  # the first x a label may take; one that would touch the last is left out
        ticks = colorbar_ticks(absmax, cmap.one_sided)
        for k, (fraction, label) in enumerate(ticks):
            tx = x0 + round(fraction * (bw - 1))
            fill_rect(img, tx, y + bh + 1, tx + s, y + bh + 1 + 2 * s, TEXT)
            lw = text_width(label, s)
            last_room = x0 + round(ticks[-1][0] * (bw - 1)) - text_width(ticks[-1][1], s) // 2
            if tx - lw // 2 >= free and (k == len(ticks) - 1 or tx + lw // 2 + 3 * s < last_room):
                draw_text(img, label, tx, y + bh + 3 * s + 1, TEXT, s, anchor="center")
                free = tx + lw // 2 + 3 * s
        x += step
    if note:
        draw_text(img, note, x + 4 * s, y + (bh - line_height(s)) // 2, TEXT, s)
