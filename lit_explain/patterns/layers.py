"""Kernel layers as neurons: the per-batch sums behind the patterns of Linear, ConvNd and
ConvTransposeNd.

A convolution is one linear neuron per output channel applied to every input patch; its
statistics run over samples *and* positions, with the patch (``in_channels / groups ×
kernel``, ordered as ``weight[j].flatten()``) as the input row.

A **transposed** convolution is one linear neuron per output channel too: output position
``p`` of channel ``j`` is ``Σ_{c,k} W[c, j, k] · x[c, (p + padding − k·dilation) / stride]``
over the kernel offsets ``k`` that land on an input position. Its input row is therefore
``W[:, j]`` laid out as ``(in_channels / groups) × kernel`` (:func:`weight_rows`), and the
pattern, computed per output channel, is put back into the weight's own shape
``(in_channels, out_channels / groups, *kernel)`` (:func:`rows_to_weight`).

For both kinds the masked sums ``Σ mask·x`` and ``Σ mask·y·x`` over (sample, position) are
exactly the layer's weight gradient with ``mask`` and ``mask·y`` as output gradients, so they
are computed that way (``aten.convolution_backward``): the same optimized kernel training uses
for the weight gradient, no explicit patches in memory.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils import parametrize

CONVOLUTIONS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
TRANSPOSED_CONVOLUTIONS = (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)
KERNEL_LAYERS = (nn.Linear, *CONVOLUTIONS, *TRANSPOSED_CONVOLUTIONS)


@dataclass
class WeightSeen:
    """A weight as a pattern was normalised for it: its storage and version (which an
    optimizer step or ``load_state_dict`` changes; ``None`` where it is made anew at every
    read, as by a parametrization or ``weight_norm``'s hook) and a fingerprint of its values,
    which tells a weight moved or copied (``model.double()``, a deep copy) from a changed one."""

    state: tuple[int, int] | None
    fingerprint: Tensor

    @classmethod
    def of(cls, module: nn.Module, weight: Tensor) -> WeightSeen:
        return cls(weight_state(module), _fingerprint(weight))

    def holds_for(self, module: nn.Module, weight: Tensor) -> bool:
        """Whether ``weight`` (``module``'s, as its call receives it) is the one seen: the
        same storage and version, else the same values (a move or copy: remembered)."""
        state = weight_state(module)
        if state is not None and state == self.state:
            return True
        if not torch.allclose(_fingerprint(weight), self.fingerprint, rtol=1e-9, atol=0.0):
            return False
        self.state = state
        return True


def _fingerprint(weight: Tensor) -> Tensor:
    """Sum, sum of squares and position-weighted sum of the values, in float64 on the CPU."""
    values = weight.detach().reshape(-1).double()
    positions = torch.arange(1, len(values) + 1, dtype=values.dtype, device=values.device)
    return torch.stack([values.sum(), values.square().sum(), (values * positions).sum()]).cpu()


def weight_state(module: nn.Module | None) -> tuple[int, int] | None:
    """A module weight's storage and version (``None`` for a parametrized weight, made anew
    at every read, or none)."""
    if module is None or parametrize.is_parametrized(module, "weight"):
        return None
    weight = getattr(module, "weight", None)
    return None if not isinstance(weight, Tensor) or weight.is_inference() else (
        weight.data_ptr(), weight._version)


#: Pattern → the weight it was normalised for (see :func:`note_normalised_for`), by id, with
#: a weak reference that drops the entry with the pattern. (Not an attribute of the tensor:
#: ``torch.save`` keeps those, and a pattern loaded with another copy of the model would
#: name weights it never had.)
_NORMALISED_FOR: dict[int, tuple[weakref.ref, WeightSeen]] = {}


def note_normalised_for(pattern: Tensor, module: nn.Module, weight: Tensor) -> None:
    """Note that ``pattern`` was normalised with ``weight``, ``module``'s as it is now."""
    key = id(pattern)
    _NORMALISED_FOR[key] = (weakref.ref(pattern, lambda _: _NORMALISED_FOR.pop(key, None)),
                            WeightSeen.of(module, weight))


def normalised_for(pattern: Tensor) -> WeightSeen | None:
    """The weight ``pattern`` was normalised for, where a computer noted it."""
    entry = _NORMALISED_FOR.get(id(pattern))
    return entry[1] if entry is not None and entry[0]() is pattern else None


def current_weight(module: nn.Module) -> Tensor | None:
    """``module.weight`` (``None`` where it has none) read without side effects: a
    parametrized weight (``torch.nn.utils.parametrize``) is computed with its
    parametrizations in eval mode. In training mode ``spectral_norm`` runs a step of its
    power iteration at every read and updates its vectors, a change to the model (and to its
    training) no reader may make."""
    if not parametrize.is_parametrized(module, "weight"):
        return getattr(module, "weight", None)
    training = [m for m in module.parametrizations.weight.modules() if m.training]
    for m in training:
        m.training = False
    try:
        return module.weight
    finally:
        for m in training:
            m.training = True


def kernel_layers(model: nn.Module) -> dict[str, nn.Module]:
    """Module path → module, for every Linear, ConvNd and ConvTransposeNd in ``model``."""
    return {path: module for path, module in model.named_modules()
            if isinstance(module, KERNEL_LAYERS)}


def is_batch_norm(module: nn.Module) -> bool:
    return isinstance(module, nn.modules.batchnorm._BatchNorm)


def is_transposed(module: nn.Module) -> bool:
    return isinstance(module, TRANSPOSED_CONVOLUTIONS)


def out_features(module: nn.Module) -> int:
    """How many neurons (output channels) the layer has."""
    if is_transposed(module):
        return current_weight(module).shape[1] * module.groups
    return current_weight(module).shape[0]


def row_size(module: nn.Module) -> int:
    """The length of one neuron's input row (``weight[j].numel()`` for Linear and ConvNd)."""
    return current_weight(module).numel() // out_features(module)


def layout(module: nn.Module) -> list:
    """What a layer's statistics are statistics of, as plain types: its class, its weight's
    shape and a convolution's stride, padding, dilation, groups and padding mode (a 3×3 and
    a 1×9 convolution have statistics of one shape)."""
    geometry = [list(value) if isinstance(value, tuple) else value
                for value in (getattr(module, name, None) for name in
                              ("stride", "padding", "dilation", "groups", "output_padding",
                               "padding_mode"))]
    return [type(module).__name__, list(current_weight(module).shape), *geometry]


def weight_rows(module: nn.Module, weight: Tensor) -> Tensor:
    """``weight`` (or a tensor shaped like it) as one row per neuron: ``(out, row_size)``.

    For ConvTransposeNd, whose weight is ``(in, out / groups, *kernel)``, row ``j`` holds
    ``W[c, j mod (out / groups), k]`` for the input channels ``c`` of ``j``'s group.
    """
    if not is_transposed(module):
        return weight.reshape(len(weight), -1)
    groups, (cin, cout_g) = module.groups, weight.shape[:2]
    return (weight.reshape(groups, cin // groups, cout_g, -1).transpose(1, 2)
            .reshape(groups * cout_g, -1))


def rows_to_weight(module: nn.Module, rows: Tensor) -> Tensor:
    """The inverse of :func:`weight_rows`: rows back into the weight's shape."""
    shape = current_weight(module).shape
    if not is_transposed(module):
        return rows.reshape(shape)
    groups, (cin, cout_g) = module.groups, shape[:2]
    return (rows.reshape(groups, cout_g, cin // groups, -1).transpose(1, 2)
            .reshape(shape))


def pre_activation(module: nn.Module, output: Tensor, bias: Tensor | None) -> Tensor:
    """The layer's output without ``bias`` (the bias its kernel call received), ``y = wᵀx``."""
    output = output.detach()
    if bias is None:
        return output.clone()  # the model may change its output in place later
    channel_shape = [-1] if isinstance(module, nn.Linear) else \
        [-1] + [1] * (current_weight(module).dim() - 2)
    return output - bias.detach().to(output.dtype).reshape(channel_shape)


def batch_sums(module: nn.Module, x: Tensor, y: Tensor, mask: Tensor | None
               ) -> tuple[int, Tensor, Tensor, Tensor, Tensor]:
    """One batch's ``rows, count, Σx, Σy, Σxy``: masked per neuron, as in the state.

    Parameters
    ----------
    module:
        A Linear, ConvNd or ConvTransposeNd.
    x:
        Its input in this forward pass.
    y, mask:
        Its pre-activation without bias and the boolean mask, both shaped like its output
        (``mask=None``: every row).

    ``Σx`` and ``Σxy`` come back as ``(out, row_size)`` in the layout of :func:`weight_rows`.
    """
    # in float64 from the start: E[xy] − E[x]E[y] cancels, and per-batch sums in float32
    # already lose what it needs (a linear pattern 46 % off for inputs around 1000)
    y = y.detach().double()
    mask = torch.ones_like(y) if mask is None else mask.to(y.dtype)
    masked_y = y * mask
    if isinstance(module, nn.Linear):
        rows = x.detach().reshape(-1, x.shape[-1]).double()
        both = torch.cat([mask.reshape(len(rows), -1), masked_y.reshape(len(rows), -1)],
                         dim=1)  # (M, 2 out)
        out = both.shape[1] // 2
        product, sums = both.t() @ rows, both.sum(dim=0)
        return len(rows), sums[:out], product[:out], sums[out:], product[out:]
    spatial = current_weight(module).dim() - 2
    if x.dim() == spatial + 1:  # unbatched input
        x, mask, masked_y = x.unsqueeze(0), mask.unsqueeze(0), masked_y.unsqueeze(0)
    groups, out = module.groups, out_features(module)
    # output gradients [mask, mask·y], interleaved per group so that groups stay aligned
    both = torch.stack([mask.unflatten(1, (groups, -1)), masked_y.unflatten(1, (groups, -1))],
                       dim=2).flatten(1, 3)
    x = x.detach().double()
    transposed = is_transposed(module)
    padding, output_padding = module.padding, [0] * spatial
    if not transposed and (module.padding_mode != "zeros" or isinstance(padding, str)):
        mode = "constant" if module.padding_mode == "zeros" else module.padding_mode
        x, padding = F.pad(x, module._reversed_padding_repeated_twice, mode=mode), [0] * spatial
    weight = current_weight(module)
    if transposed:  # doubled weight (in, 2 · out / groups, *kernel); output padding from y
        doubled = (weight.shape[0], 2 * weight.shape[1], *weight.shape[2:])
        output_padding = [
            y.shape[2 + d] - ((x.shape[2 + d] - 1) * module.stride[d] - 2 * padding[d]
                              + module.dilation[d] * (weight.shape[2 + d] - 1) + 1)
            for d in range(spatial)]
    else:
        doubled = (2 * weight.shape[0], *weight.shape[1:])
    grad = torch.ops.aten.convolution_backward(
        both, x, torch.empty(doubled, dtype=x.dtype, device=x.device), None,
        list(module.stride), list(padding), list(module.dilation), transposed, output_padding,
        groups, [False, True, False])[1]
    if transposed:  # (g · in/g, 2 · out/g, K) -> rows (out, in/g · K) per half
        grad = grad.reshape(groups, weight.shape[0] // groups, 2, weight.shape[1], -1)
        grad = grad.permute(2, 0, 3, 1, 4).reshape(2, out, -1)
        product = grad.reshape(2, groups, out // groups, -1).transpose(0, 1)
    else:
        product = grad.reshape(groups, 2, out // groups, -1)
    sums = both.sum(dim=[0, *range(2, both.dim())]).reshape(groups, 2, out // groups)
    rows = len(x) * both[0, 0].numel()
    return (rows, sums[:, 0].reshape(out), product[:, 0].reshape(out, -1),
            sums[:, 1].reshape(out), product[:, 1].reshape(out, -1))
