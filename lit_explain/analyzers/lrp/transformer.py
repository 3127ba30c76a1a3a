"""LRP rules for the operations transformers are made of: AttnLRP and CP-LRP.

AttnLRP (Achtibat et al. 2024, "AttnLRP: Attention-Aware Layer-Wise Relevance Propagation
for Transformers", ICML), with ``R`` the relevance at an operation's output ``y``:

- elementwise non-linearities ``y = f(x)`` (GELU, SiLU, tanh, sigmoid, LeakyReLU, ReLU6, ...):
  the **identity rule** (Eq. 9), ``R_x = R_y``;
- softmax ``s = softmax(x)``: ``R_x = x ⊙ (R_s − s ⊙ Σ R_s)`` (Prop. 3.1), which is
  ``x ⊙ Jᵀ(R_s / s)`` with J the softmax's Jacobian;
- a product of ``n`` activations (``QKᵀ``, ``AV``, gating ``a ⊙ b``): the **uniform rule**
  after the z-rule over the sum of a matrix product (Eq. 7, Prop. 3.3),
  ``R_a = (1/n) · a ⊙ Jᵀ_a (R_y / y)``, each factor gets ``1/n`` of every term;
- LayerNorm, RMSNorm, GroupNorm, InstanceNorm, ``F.normalize``: the normalising statistic
  held constant
  (Prop. 3.4; Ali et al. 2022), which leaves an affine map of ``x``
  (``(x − mean)/σ · γ + β``); the z-rule on it, so that the centring redistributes, the
  scaling passes relevance unchanged (identity) and β takes its share.

CP-LRP (Ali et al. 2022, "XAI for Transformers: Better Explanations through Conservative
Propagation", ICML): the attention weights, and any gate made by a non-linearity
(SwiGLU's ``silu(x W_g) ⊙ x W_u``), are constants: no relevance flows through the softmax
or the gate; the other factor of the product gets all of it.

Every rule here is either the z-rule of an operation that is linear in each of its inputs
(:func:`proportional_rule`: softmax, products, normalisations), or the identity. Both work
in either :class:`~.rules.Flow`: when relevance travels per unit of tensor
(:class:`~.rules.RelativeFlow`), the z-rule is the operation's own gradient (times ``1/n``
for the uniform rule), and the identity rule multiplies the incoming gradient by ``y / x``.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from ..attention import scaled_dot_product_attention
from ..errors import NotAnalyzableModelError
from ..kinds import differentiable, map_differentiable
from ..operations import OperationCall, scale_gradient, with_gradient
from .rules import Flow, safe, safe_reciprocal

#: ``attention_rule=`` values: AttnLRP, or CP-LRP (no relevance through softmax and gates).
ATTENTION_RULES = ("attnlrp", "cp")


def proportional_rule(flow: Flow, operation: Callable[..., Tensor], args: tuple, kwargs: dict,
                      share: float = 1.0) -> Tensor:
    """``R_x = share · x ⊙ Jᵀ_x (R_y / y)`` for every differentiable tensor ``x`` among the
    arguments of ``y = operation(*args, **kwargs)``: the z-rule (``share = 1``) of an
    operation linear in each input, the uniform rule (``share = 1/n``) of a product of n."""
    if flow.relative:  # gradient = R/t: the rule is the operation's own backward, times share
        y = operation(*args, **kwargs)
        return y if share == 1.0 else scale_gradient(y, share)
    args, kwargs = map_differentiable(flow.input, args, kwargs)
    y = operation(*args, **kwargs)
    factor = safe_reciprocal(y.detach())
    return scale_gradient(y, factor if share == 1.0 else factor.mul_(share))


def identity_rule(call: OperationCall, flow: Flow) -> Tensor:
    """Elementwise non-linearity ``y = f(x)``: ``R_x = R_y`` (AttnLRP Eq. 9). Per unit of
    tensor the gradient is multiplied by ``y / x`` (``x = 0``: the relevance is lost). ``x``
    is :attr:`~.operations.OperationCall.elementwise_of` where the call is a product of
    functions of it (``x * sigmoid(x)``)."""
    if call.elementwise_of is not None:
        return passed_through(call.elementwise_of, call.run(), flow)
    inputs = call.inputs
    if not inputs:
        return call.run()
    if len(inputs) > 1:
        raise NotAnalyzableModelError(
            f"{call.where()} is an elementwise operation of {len(inputs)} computed tensors; "
            f"the identity rule is defined for one")
    return passed_through(inputs[0], call.run(), flow)


def passed_through(source: Tensor, y: Tensor, flow: Flow) -> Tensor:
    """``y``, an elementwise function of ``source``, with the identity rule ``R_x = R_y``.
    An infinite output (a score masked with −inf by a mask of its own values, top-k
    attention) carries no relevance, as the softmax rule gives it none."""
    shape = source.shape
    if not flow.relative:
        return with_gradient(source, y, lambda grad: grad.sum_to_size(shape))
    # (its ratio would make the 0 it gets NaN)
    ratio = torch.div(y.detach(), safe(source.detach())).nan_to_num_(posinf=0.0, neginf=0.0)
    return with_gradient(source, y, lambda grad: (grad * ratio).sum_to_size(shape))


def softmax_rule(call: OperationCall, flow: Flow) -> Tensor:
    """AttnLRP's softmax rule, ``R_x = x ⊙ (R_s − s ⊙ Σ R_s)``; masked inputs (−inf) get
    nothing."""
    if call.func in _LOG_SOFTMAX:
        raise NotAnalyzableModelError(f"{call.where()}: log-softmax has no LRP rule here")
    if flow.relative or not call.inputs:
        return call.run()
    # as written, with no division by s (1/s of a float32 softmax output of exp(−89), a
    # subnormal number, overflows)
    x = call.inputs[0]
    finite = torch.where(torch.isinf(x.detach()), 0.0, x.detach())
    s = call.run()
    held, dim = s.detach(), _softmax_dim(call, x)

    def backward(relevance: Tensor) -> Tensor:
        kept = relevance - held * relevance.sum(dim, keepdim=True)
        return (finite * kept).to(x.dtype)

    return with_gradient(x, s, backward)


def _softmax_dim(call: OperationCall, x: Tensor) -> int:
    """The dimension a softmax call normalises (``F.softmax``'s legacy default where none
    is given)."""
    dim = call.args[1] if len(call.args) > 1 else call.kwargs.get("dim")
    return (0 if x.dim() in (0, 1, 3) else 1) if dim is None else dim


def attention_as_gradient(call: OperationCall, cp: bool = False) -> Tensor:
    """``F.scaled_dot_product_attention`` under AttnLRP (or, ``cp``, CP-LRP) with relevance per
    unit of tensor: its own gradient with the gradients of Q, K and V scaled (LXT's efficient
    path does the same).

    Per unit, the softmax rule is softmax's own gradient and the uniform rule a product's own
    gradient times ``1/2``, so the rules of the parts make the attention's ordinary backward
    with Q, K and V's gradients scaled by their shares: ``1/4`` for Q and K, ``1/2`` for V
    (and for a computed float mask, which takes its share of the scores' half). Under CP-LRP
    the attention weights are constants: V takes all of it, Q, K and the mask nothing.
    No part meets the analysis on its own. On a GPU the call runs as the model made it (a
    fused kernel); on a CPU as its parts in plain torch, which is faster there (torch's CPU
    kernel took 6× as long, forward and backward, at 256 × 4 heads × 33 tokens × 8). With
    dropout, where one of Q, K and V is a constant (a learned query is a model weight, whose
    product is a kernel layer with the analyzer's kernel rule) or the model input itself
    (where the parts turn relevance per unit into relevance), the call goes through the
    analysis part by part."""
    names = ("query", "key", "value")
    dropout = call.args[4] if len(call.args) > 4 else call.kwargs.get("dropout_p", 0.0)
    tensors = [call.args[i] if len(call.args) > i else call.kwargs[n]
               for i, n in enumerate(names)]
    if dropout or call.is_input_layer or not all(differentiable(t) for t in tensors):
        return call.decompose()
    shared = functools.partial(attention_with_shares, shares=CP_SHARES if cp else SHARES)
    call.replay(shared)  # (in a replay: a function of the call alone)
    return shared(call.func, call.args, call.kwargs)


#: The shares of Q, K, V and a computed float mask in attention's relevance, by AttnLRP and by
#: CP-LRP (see :func:`attention_as_gradient`).
SHARES, CP_SHARES = (0.25, 0.25, 0.5, 0.5), (0.0, 0.0, 1.0, 0.0)


def attention_with_shares(func: Callable, args: tuple, kwargs: dict,
                          shares: tuple[float, float, float, float] = SHARES) -> Tensor:
    """``func`` (``F.scaled_dot_product_attention``) with the gradients of Q, K, V and a
    computed float mask multiplied by their ``shares`` (0: detached)."""
    args, kwargs = list(args), dict(kwargs)
    names = ("query", "key", "value", "attn_mask")
    for i, (name, share) in enumerate(zip(names, shares, strict=True)):
        tensor = args[i] if len(args) > i else kwargs.get(name)
        if not differentiable(tensor) or share == 1.0:
            continue
        shared = tensor.detach() if share == 0.0 else scale_gradient(tensor, share)
        if len(args) > i:
            args[i] = shared
        else:
            kwargs[name] = shared
    query = args[0] if args else kwargs["query"]
    return (func if query.is_cuda else scaled_dot_product_attention)(*args, **kwargs)


def blocked(call: OperationCall) -> Tensor:
    """CP-LRP: the attention weights (or a gate) are constants; no relevance flows back."""
    if call.func in _LOG_SOFTMAX:
        raise NotAnalyzableModelError(f"{call.where()}: log-softmax has no LRP rule here")
    return call.run().detach()


def uniform_rule(call: OperationCall, flow: Flow, held: frozenset[int] = frozenset()
                 ) -> Tensor:
    """A product of computed tensors: the uniform rule, ``1/n`` of the z-rule's share to each
    of its ``n`` factors (AttnLRP Eq. 7, Prop. 3.3). The factors at the positions ``held``
    among the call's differentiable tensors (CP-LRP's gates) are held constant: the other
    factors share all of it."""
    args, kwargs, inputs = call.args, call.kwargs, call.inputs
    if held:
        constants = {id(inputs[i]) for i in held}
        hold = lambda t: t.detach() if id(t) in constants else t  # noqa: E731
        args, kwargs = map_differentiable(hold, args, kwargs)
    factors = len(inputs) - len(held)
    if not factors:
        return call.run(*args, **kwargs).detach()
    return proportional_rule(flow, call.func, args, kwargs, 1.0 / factors)


def normalization_rule(call: OperationCall, flow: Flow) -> Tensor:
    """LayerNorm, RMSNorm, GroupNorm, InstanceNorm, ``F.normalize``: the statistic held
    constant (InstanceNorm with running statistics: those), the
    z-rule on the affine map that remains (Prop. 3.4; LXT's ``layer_norm``)."""
    inputs = call.inputs
    if not inputs:
        return call.run()
    arguments = _bind(call.func, call.args, call.kwargs)
    normalize = _NORMALIZED[call.func]
    x = arguments.pop("input")
    if flow.relative and call.func is F.layer_norm and len(inputs) == 1 and inputs[0] is x:
        return _layer_norm_as_gradient(x, **arguments)
    return proportional_rule(flow, lambda t: normalize(t, **arguments), (x,), {})


def _layer_norm_as_gradient(x: Tensor, normalized_shape, weight=None, bias=None,
                            eps=1e-5) -> Tensor:
    """Per unit of tensor, the rule of a LayerNorm (the z-rule with the deviation held
    constant) is the gradient of ``(x − mean) · rstd · γ + β`` with ``rstd`` constant,
    ``rstd ⊙ (gγ − mean(gγ))``: the model's own fused call forward (which gives ``rstd``
    too), that gradient backward, where the rule as its parts costs nine calls each way."""
    dims = tuple(range(-len(normalized_shape), 0))
    y, _, rstd = torch.native_layer_norm(x.detach(), normalized_shape, weight, bias, eps)

    def backward(grad: Tensor) -> Tensor:
        scaled = grad if weight is None else grad * weight
        return (scaled - scaled.mean(dim=dims, keepdim=True)).mul_(rstd)

    return with_gradient(x, y, backward)


def held_constant(call: OperationCall) -> Tensor:
    """A statistic a normalisation written out divides by (``var``, ``std``, ``norm``): held
    constant, as the normalisation rule holds LayerNorm's; no relevance flows into it."""
    return call.run().detach()


def _inverse_deviation(centred: Tensor, dims: tuple[int, ...], eps: float) -> Tensor:
    """``1 / sqrt(var + eps)`` of the values whose centred form is ``centred``, held
    constant (as the mean of squares: ``Tensor.var`` over a short last axis is tens of times
    slower on a CPU)."""
    return torch.rsqrt(centred.detach().square().mean(dim=dims, keepdim=True).add_(eps))


def _layer_norm(x: Tensor, normalized_shape, weight=None, bias=None, eps=1e-5) -> Tensor:
    dims = tuple(range(-len(normalized_shape), 0))
    centred = x - x.mean(dim=dims, keepdim=True)
    y = centred * _inverse_deviation(centred, dims, eps)
    y = y if weight is None else y * weight
    return y if bias is None else y + bias


def _rms_norm(x: Tensor, normalized_shape, weight=None, eps=None) -> Tensor:
    dims = tuple(range(-len(normalized_shape), 0))
    eps = torch.finfo(x.dtype).eps if eps is None else eps
    y = x * torch.rsqrt(x.detach().square().mean(dim=dims, keepdim=True) + eps)
    return y if weight is None else y * weight


def _group_norm(x: Tensor, num_groups: int, weight=None, bias=None, eps=1e-5) -> Tensor:
    grouped = x.reshape(len(x), num_groups, -1)
    centred = grouped - grouped.mean(dim=-1, keepdim=True)
    y = (centred * _inverse_deviation(centred, (-1,), eps)).reshape(x.shape)
    channel = (-1, *[1] * (x.dim() - 2))
    y = y if weight is None else y * weight.reshape(channel)
    return y if bias is None else y + bias.reshape(channel)


def _instance_norm(x: Tensor, running_mean=None, running_var=None, weight=None, bias=None,
                   use_input_stats=True, momentum=0.1, eps=1e-5) -> Tensor:
    if use_input_stats:  # per sample and channel: a GroupNorm of one channel per group
        return _group_norm(x, x.shape[1], weight, bias, eps)
    channel = (-1, *[1] * (x.dim() - 2))  # the running statistics: an affine map
    y = (x - running_mean.reshape(channel)) * torch.rsqrt(running_var + eps).reshape(channel)
    y = y if weight is None else y * weight.reshape(channel)
    return y if bias is None else y + bias.reshape(channel)


def _normalize(x: Tensor, p: float = 2.0, dim: int = 1, eps: float = 1e-12, out=None) -> Tensor:
    norm = x.detach().norm(p, dim=dim, keepdim=True).clamp_min(eps)
    return x / norm


_NORMALIZED = {F.layer_norm: _layer_norm, F.rms_norm: _rms_norm, F.group_norm: _group_norm,
               F.normalize: _normalize, F.instance_norm: _instance_norm}
_LOG_SOFTMAX = {F.log_softmax, torch.log_softmax, Tensor.log_softmax}


@functools.cache
def _parameter_names(func: Callable) -> tuple[str, ...]:
    return tuple(inspect.signature(func).parameters)


def _bind(func: Callable, args: tuple, kwargs: dict) -> dict:
    """The arguments of a call the model made (and torch accepted) by parameter name; those
    left out keep their defaults where the rule calls with them."""
    names = _parameter_names(func)
    if len(args) > len(names):
        raise TypeError(f"{func.__name__}() takes {len(names)} arguments, {len(args)} given")
    return {**dict(zip(names[:len(args)], args, strict=True)), **kwargs}
