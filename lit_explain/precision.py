"""Full precision inside an autocast region.

An analysis (and the pattern statistics) runs with autocast off: a map is the one of the
model's own parameters and dtype, the same inside or outside a ``torch.autocast`` region
(Lightning's ``"16-mixed"``/``"bf16-mixed"``). Under autocast the maps of a float32 ResNet
differed by about 25 % from its float32 maps.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack, contextmanager

import torch

#: Device types whose autocast :func:`full_precision` turns off.
AUTOCAST_DEVICE_TYPES = ("cpu", "cuda")


@contextmanager
def full_precision() -> Iterator[None]:
    """Turn autocast off while open, on each device type where it is on."""
    with ExitStack() as stack:
        for device_type in AUTOCAST_DEVICE_TYPES:
            if torch.is_autocast_enabled(device_type):
                stack.enter_context(torch.autocast(device_type, enabled=False))
        yield
