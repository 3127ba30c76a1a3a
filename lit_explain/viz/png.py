"""PNG bytes and files through Pillow, for loggers that save or send encoded images."""

from __future__ import annotations

import io
import os

import numpy as np
from PIL import Image
from torch import Tensor

__all__ = ["encode_png", "write_png"]

_MODES = {1: "L", 2: "LA", 3: "RGB", 4: "RGBA"}  # channels -> Pillow mode


def _as_hwc_uint8(image: np.ndarray | Tensor) -> np.ndarray:
    # where either end could hold the channels ((3, 1, 4): an RGB strip of 4 pixels, or 3×1
    # RGBA pixels), a float tensor (a heatmap) follows torch's layout, channels first; an
    # array or a uint8 tensor (a decoded image) is channels last
    channels_first = isinstance(image, Tensor) and image.is_floating_point()
    if isinstance(image, Tensor):
        image = image.detach().cpu().numpy()
    a = np.asarray(image)
    if a.ndim == 2:
        a = a[:, :, None]
    if a.ndim != 3:
        raise ValueError(f"expected an (H, W), (H, W, C) or (C, H, W) image, got shape {a.shape}")
    if a.shape[0] in _MODES and (channels_first or a.shape[-1] not in _MODES):
        a = np.moveaxis(a, 0, -1)  # channels first -> last
    if a.shape[-1] not in _MODES:
        raise ValueError(f"expected 1, 2, 3 or 4 channels, got shape {a.shape}")
    if a.dtype != np.uint8:
        if not np.issubdtype(a.dtype, np.floating):
            raise ValueError(f"expected uint8 or float in [0, 1], got dtype {a.dtype}")
        a = np.rint(np.clip(np.nan_to_num(a), 0, 1) * 255).astype(np.uint8)
    return np.ascontiguousarray(a)


def _pil(image: np.ndarray | Tensor) -> Image.Image:
    a = _as_hwc_uint8(image)
    return Image.fromarray(a[:, :, 0] if a.shape[-1] == 1 else a)  # L, LA, RGB or RGBA


def encode_png(image: np.ndarray | Tensor, compress_level: int = 6) -> bytes:
    """Encode an image as PNG bytes (Pillow).

    Parameters
    ----------
    image : ndarray or Tensor
        ``uint8`` ``(H, W, C)`` with C in 1..4 (grey, grey+alpha, RGB, RGBA) or ``(H, W)``.
        Channels-first ``(C, H, W)`` and float images in ``[0, 1]`` are converted. Where
        both ends of the shape could be the channels, a float tensor (a heatmap) is taken as
        channels-first (torch's layout), an array or a ``uint8`` tensor as channels-last.
    compress_level : int
        zlib level 0-9 (1 is fast and enough for the flat colour cells of a grid).

    Returns
    -------
    bytes
        The PNG file's content.
    """
    if not isinstance(compress_level, int) or not 0 <= compress_level <= 9:
        raise ValueError(f"compress_level={compress_level!r} is not valid; use 0 to 9")
    buffer = io.BytesIO()
    _pil(image).save(buffer, format="PNG", compress_level=compress_level)
    return buffer.getvalue()


def write_png(path: str | os.PathLike[str], image: np.ndarray | Tensor) -> None:
    """Write an image to a PNG file (see :func:`encode_png` for the accepted layouts).

    Parameters
    ----------
    path : str or PathLike
        The file to write; its folder must exist.
    image : ndarray or Tensor
        ``uint8`` ``(H, W, 3)`` typically, e.g. from :func:`lit_explain.viz.to_uint8_hwc`.

    Returns
    -------
    None
    """
    with open(path, "wb") as f:
        f.write(encode_png(image))
