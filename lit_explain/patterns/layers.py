"""Kernel layers as neurons: the per-batch sums behind the patterns of Linear and Conv1d/2d.

A convolution is one linear neuron per output channel applied to every input patch; its
statistics run over samples *and* positions, with the patch (``in_channels / groups ×
kernel``, ordered as ``weight[j].flatten()``) as the input row. The patch sums
``Σ mask·x`` and ``Σ mask·y·x`` are exactly a convolution's weight gradient with ``mask`` and
``mask·y`` as output gradients, so they are computed that way: one call of the same
optimized kernel training uses for the weight gradient, no explicit patches in memory.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn import grad as nn_grad

KERNEL_LAYERS = (nn.Linear, nn.Conv1d, nn.Conv2d)


def kernel_layers(model: nn.Module) -> dict[str, nn.Module]:
    """Module path → module, for every Linear, Conv1d and Conv2d in ``model``."""
    return {path: module for path, module in model.named_modules()
            if isinstance(module, KERNEL_LAYERS)}


def is_batch_norm(module: nn.Module) -> bool:
    return isinstance(module, nn.modules.batchnorm._BatchNorm)


def row_size(module: nn.Module) -> int:
    """The length of one neuron's input row: ``weight[j].numel()``."""
    return module.weight[0].numel()


def pre_activation(module: nn.Module, output: Tensor) -> Tensor:
    """The layer's output without its bias, ``y = wᵀx``."""
    output = output.detach()
    if module.bias is None:
        return output.clone()  # the model may change its output in place later
    channel_shape = [-1] if isinstance(module, nn.Linear) else \
        [-1] + [1] * (module.weight.dim() - 2)
    return output - module.bias.detach().to(output.dtype).reshape(channel_shape)


def batch_sums(module: nn.Module, x: Tensor, y: Tensor, mask: Tensor | None
               ) -> tuple[int, Tensor, Tensor, Tensor, Tensor]:
    """One batch's ``rows, count, Σx, Σy, Σxy``: masked per neuron, as in the state.

    Parameters
    ----------
    module:
        A Linear, Conv1d or Conv2d.
    x:
        Its input in this forward pass.
    y, mask:
        Its pre-activation without bias and the boolean mask, both shaped like its output
        (``mask=None``: every row).
    """
    mask = torch.ones_like(y) if mask is None else mask.to(y.dtype)
    masked_y = y * mask
    if isinstance(module, nn.Linear):
        rows = x.detach().reshape(-1, x.shape[-1]).float()
        both = torch.cat([mask.reshape(len(rows), -1), masked_y.reshape(len(rows), -1)],
                         dim=1).float()  # (M, 2 out)
        out = both.shape[1] // 2
        product, sums = both.t() @ rows, both.sum(dim=0)
        return len(rows), sums[:out], product[:out], sums[out:], product[out:]
    spatial = module.weight.dim() - 2
    if x.dim() == spatial + 1:  # unbatched input
        x, mask, masked_y = x.unsqueeze(0), mask.unsqueeze(0), masked_y.unsqueeze(0)
    groups, out = module.groups, module.weight.shape[0]
    # output gradients [mask, mask·y], interleaved per group so that groups stay aligned
    both = torch.stack([mask.unflatten(1, (groups, -1)), masked_y.unflatten(1, (groups, -1))],
                       dim=2).flatten(1, 3).float()
    x = x.detach().float()
    if module.padding_mode == "zeros" and not isinstance(module.padding, str):
        padding = module.padding
    else:
        mode = "constant" if module.padding_mode == "zeros" else module.padding_mode
        x, padding = F.pad(x, module._reversed_padding_repeated_twice, mode=mode), 0
    weight_grad = nn_grad.conv1d_weight if spatial == 1 else nn_grad.conv2d_weight
    product = weight_grad(x, (2 * out, *module.weight.shape[1:]), both, module.stride,
                          padding, module.dilation, groups).reshape(groups, 2, out // groups, -1)
    sums = both.sum(dim=[0, *range(2, both.dim())]).reshape(groups, 2, out // groups)
    rows = len(x) * both[0, 0].numel()
    return (rows, sums[:, 0].reshape(out), product[:, 0].reshape(out, -1),
            sums[:, 1].reshape(out), product[:, 1].reshape(out, -1))
