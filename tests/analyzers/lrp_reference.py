"""LRP written out layer by layer in matrix form, float64: the tests' explicit reference.

A kernel layer is its matrix ``M`` (outputs × inputs, from the layer's Jacobian) and bias
``b``; a rule maps ``(x, M, b, R_out)`` to ``R_in`` for one sample, exactly as the papers
write it. ``sequential_lrp`` runs a ``Sequential`` of Linear/Conv2d/ReLU/MaxPool2d/
AvgPool2d/Flatten layers backwards with a rule per kernel layer.
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

EPS = 1e-7  # iNNvestigate's safe division


def safe_divide(a: Tensor, b: Tensor) -> Tensor:
    return a / (b + (b == 0).to(b.dtype) * EPS)


def z_rule(bias: bool = True, epsilon: float = 0.0) -> Callable:
    def rule(x, M, b, R):
        contributions = M * x[None, :]                       # z_ji = M_ji x_i
        z = contributions.sum(1) + (b if bias else 0)
        if epsilon:
            z = z + epsilon * torch.where(z >= 0, 1.0, -1.0).to(z.dtype)
            return (contributions / z[:, None] * R[:, None]).sum(0)
        return (safe_divide(contributions, z[:, None]) * R[:, None]).sum(0)
    return rule


def w_square_rule(x, M, b, R):
    squares = M ** 2
    return (safe_divide(squares, squares.sum(1, keepdim=True)) * R[:, None]).sum(0)


def flat_rule(connected: Tensor) -> Callable:
    def rule(x, M, b, R):
        ones = connected.to(M.dtype)
        return (safe_divide(ones, ones.sum(1, keepdim=True)) * R[:, None]).sum(0)
    return rule


def alpha_beta_rule(alpha: float, beta: float, bias: bool = True,
                    innvestigate_bias: bool = False) -> Callable:
    """The paper's αβ (b⁺ in z⁺, b⁻ in z⁻), or iNNvestigate 2.x's (b in both)."""

    def rule(x, M, b, R):
        contributions = M * x[None, :]
        positive, negative = contributions.clamp(min=0), contributions.clamp(max=0)
        if not bias:
            b_plus = b_minus = 0.0
        elif innvestigate_bias:
            b_plus = b_minus = b
        else:
            b_plus, b_minus = b.clamp(min=0), b.clamp(max=0)
        z_plus = positive.sum(1) + b_plus
        z_minus = negative.sum(1) + b_minus
        return (alpha * safe_divide(positive, z_plus[:, None]) * R[:, None]
                - beta * safe_divide(negative, z_minus[:, None]) * R[:, None]).sum(0)
    return rule


def z_plus_fast_rule(x, M, b, R):
    contributions = M.clamp(min=0) * x[None, :]
    return (safe_divide(contributions, contributions.sum(1, keepdim=True)) * R[:, None]).sum(0)


def bounded_rule(low: float, high: float) -> Callable:
    def rule(x, M, b, R):
        terms = M * x[None, :] - M.clamp(min=0) * low - M.clamp(max=0) * high
        return (safe_divide(terms, terms.sum(1, keepdim=True)) * R[:, None]).sum(0)
    return rule


def layer_matrix(layer: nn.Module, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """``(M, b, connected)`` of a kernel layer at one input sample ``x`` (any shape): the
    layer applied to the standard basis gives the columns of ``M``."""
    weight = layer.weight.detach().double()
    bias = layer.bias.detach().double() if layer.bias is not None else None
    basis = torch.eye(x.numel(), dtype=torch.double).reshape(x.numel(), *x.shape)

    def columns(w: Tensor) -> Tensor:
        if isinstance(layer, nn.Linear):
            out = F.linear(basis, w)
        else:
            out = layer._conv_forward(basis, w, None)
        return out.reshape(x.numel(), -1).T, out.shape[1:]

    M, out = columns(weight)
    connected = columns(torch.ones_like(weight))[0] != 0
    if bias is None:
        b = torch.zeros(len(M), dtype=torch.double)
    elif len(out) > 1:
        b = bias.reshape(-1, *[1] * (len(out) - 1)).expand(out).reshape(-1)
    else:
        b = bias
    return M, b, connected


def sequential_lrp(model: nn.Sequential, x: Tensor, seed: Tensor,
                   rule_for: Callable[[int, nn.Module], Callable | str]) -> Tensor:
    """Relevance at the input of ``model`` for one sample ``x``, starting from ``seed`` (the
    relevance of the outputs). ``rule_for(kernel_index, layer)`` gives a matrix-form rule,
    or ``"flat"`` for the Flat rule."""
    model = copy.deepcopy(model).double()
    activations = [x.double()]
    for layer in model:
        activations.append(layer(activations[-1][None])[0].detach())
    relevance = seed.double()
    kernel_layers = [i for i, layer in enumerate(model) if isinstance(layer, (nn.Linear,
                                                                               nn.Conv2d))]
    for position in reversed(range(len(model))):
        layer, a_in = model[position], activations[position]
        if isinstance(layer, (nn.Linear, nn.Conv2d)):
            M, b, connected = layer_matrix(layer, a_in)
            rule = rule_for(kernel_layers.index(position), layer)
            if rule == "flat":
                rule = flat_rule(connected)
            relevance = rule(a_in.reshape(-1), M, b, relevance.reshape(-1)).reshape(a_in.shape)
        elif isinstance(layer, nn.MaxPool2d):
            # The winner of each window takes its relevance (indices are per channel plane).
            _, indices = F.max_pool2d(a_in[None], layer.kernel_size, return_indices=True)
            plane = a_in.shape[-2] * a_in.shape[-1]
            offsets = torch.arange(a_in.shape[0])[:, None, None] * plane
            routed = torch.zeros(a_in.numel(), dtype=torch.double)
            routed.index_add_(0, (indices[0] + offsets).reshape(-1), relevance.reshape(-1))
            relevance = routed.reshape(a_in.shape)
        elif isinstance(layer, nn.AvgPool2d):
            basis = torch.eye(a_in.numel(), dtype=torch.double).reshape(-1, *a_in.shape)
            M = layer(basis).reshape(a_in.numel(), -1).T
            relevance = z_rule()(a_in.reshape(-1), M, torch.zeros(len(M), dtype=torch.double),
                                 relevance.reshape(-1)).reshape(a_in.shape)
        elif isinstance(layer, (nn.ReLU, nn.Flatten)):
            relevance = relevance.reshape(a_in.shape)  # ReLU passes relevance unchanged
        else:
            raise TypeError(f"no explicit rule for {type(layer).__name__}")
    return relevance
