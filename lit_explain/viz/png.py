"""A minimal PNG writer (zlib and struct only), for loggers that save plain image files.

Writes 8-bit greyscale, RGB or RGBA images, non-interlaced, every row with filter type 0
(none), as the PNG specification (ISO/IEC 15948, W3C PNG 2nd edition) defines them.
"""

from __future__ import annotations

import os
import struct
import zlib

import numpy as np
from torch import Tensor

__all__ = ["encode_png", "write_png"]

_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_COLOR_TYPE = {1: 0, 2: 4, 3: 2, 4: 6}  # channels -> PNG colour type (grey, grey+alpha, RGB, RGBA)


def _chunk(kind: bytes, data: bytes) -> bytes:
    crc = zlib.crc32(kind + data) & 0xFFFFFFFF
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)


def _as_hwc_uint8(image: np.ndarray | Tensor) -> np.ndarray:
    if isinstance(image, Tensor):
        image = image.detach().cpu().numpy()
    a = np.asarray(image)
    if a.ndim == 2:
        a = a[:, :, None]
    if a.ndim != 3:
        raise ValueError(f"expected an (H, W), (H, W, C) or (C, H, W) image, got shape {a.shape}")
    if a.shape[-1] not in _COLOR_TYPE and a.shape[0] in _COLOR_TYPE:
        a = np.moveaxis(a, 0, -1)  # channels first -> last
    if a.shape[-1] not in _COLOR_TYPE:
        raise ValueError(f"expected 1, 2, 3 or 4 channels, got shape {a.shape}")
    if a.dtype != np.uint8:
        if not np.issubdtype(a.dtype, np.floating):
            raise ValueError(f"expected uint8 or float in [0, 1], got dtype {a.dtype}")
        a = np.rint(np.clip(np.nan_to_num(a), 0, 1) * 255).astype(np.uint8)
    return np.ascontiguousarray(a)


def encode_png(image: np.ndarray | Tensor, compress_level: int = 6) -> bytes:
    """Encode an image as PNG bytes.

    Parameters
    ----------
    image : ndarray or Tensor
        ``uint8`` ``(H, W, C)`` with C in 1..4 (grey, grey+alpha, RGB, RGBA) or ``(H, W)``.
        Channels-first ``(C, H, W)`` and float images in ``[0, 1]`` are converted.
    compress_level : int
        zlib level 0-9.

    Returns
    -------
    bytes
        The PNG file's content.
    """
    a = _as_hwc_uint8(image)
    h, w, c = a.shape
    header = struct.pack(">IIBBBBB", w, h, 8, _COLOR_TYPE[c], 0, 0, 0)
    raw = np.concatenate([np.zeros((h, 1), np.uint8), a.reshape(h, w * c)], axis=1)
    return (
        _SIGNATURE
        + _chunk(b"IHDR", header)
        + _chunk(b"IDAT", zlib.compress(raw.tobytes(), compress_level))
        + _chunk(b"IEND", b"")
    )


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
    data = encode_png(image)
    with open(path, "wb") as f:
        f.write(data)
