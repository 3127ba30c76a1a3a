"""Full precision inside an autocast region, and where a forward computes in 16 bits.

An analysis (and the pattern statistics) runs with autocast off: a map is the one of the
model's own parameters and dtype, the same inside or outside a ``torch.autocast`` region
(Lightning's ``"16-mixed"``/``"bf16-mixed"``). Under autocast the maps of a float32 ResNet
differed by about 25 % from its float32 maps.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager

import torch

#: Device types whose autocast :func:`full_precision` turns off.
AUTOCAST_DEVICE_TYPES = ("cpu", "cuda")
#: Floating-point dtypes too coarse for the rules of a rule-based analysis: in float16, α2β1
#: gave maps of NaN on a MobileNetV2, and in bfloat16 the canonized BatchNorms of four zoo
#: nets moved the analysed forward's logits by up to 0.5 from the model's.
LOW_PRECISION = (torch.float16, torch.bfloat16)


def low_precision(tensors: list[torch.Tensor], lowered_by_autocast: bool) -> torch.dtype | None:
    """The 16-bit dtype an operation on ``tensors`` computes in: that of a differentiable
    one (an activation: a LayerNorm of float16 activations computes in float16 whatever its
    weight's dtype), or of all of them as torch promotes them (float32 activations times a
    float16 buffer compute in float32); or, for an operation autocast lowers
    (``lowered_by_autocast``: a matrix product, a convolution, attention, PReLU),
    autocast's, where an autocast region is open for their device (one entered inside a
    model's forward: :func:`full_precision` turns off only those open before); ``None`` in
    full precision."""
    floats = [t for t in tensors if t.is_floating_point()]
    for t in floats:
        if t.requires_grad and t.dtype in LOW_PRECISION:
            return t.dtype
    if floats:
        dtype = functools.reduce(torch.promote_types, (t.dtype for t in floats))
        if dtype in LOW_PRECISION:
            return dtype
    if lowered_by_autocast and tensors:
        device_type = tensors[0].device.type
        if device_type in AUTOCAST_DEVICE_TYPES and torch.is_autocast_enabled(device_type):
            return torch.get_autocast_dtype(device_type)
    return None


@contextmanager
def full_precision() -> Iterator[None]:
    """Turn autocast off while open, on each device type where it is on."""
    with ExitStack() as stack:
        for device_type in AUTOCAST_DEVICE_TYPES:
            if torch.is_autocast_enabled(device_type):
                stack.enter_context(torch.autocast(device_type, enabled=False))
        yield
