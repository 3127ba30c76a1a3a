"""Attention through its parts: ``F.scaled_dot_product_attention`` and
``F.multi_head_attention_forward`` (every ``nn.MultiheadAttention``, also inside
``nn.TransformerEncoderLayer``/``DecoderLayer``) written as the torch calls they are made of.

A fused attention kernel is one opaque call; a rule-based analysis needs its parts: the
query, key and value projections (kernel layers), the product ``QKᵀ`` and the product of the
attention weights with ``V`` (products of two activations), the scaling and the mask
(operations with constants), the softmax and the output projection. The functions here
compute the same values as torch's own (up to rounding) from those parts, so that every
part reaches the analyzer's handler for its kind (see
:class:`~.operations.OperationRules`, which runs them with its mode active).
``multi_head_attention_forward`` without ``need_weights`` leaves the core
``softmax(QKᵀ/√d + mask) V`` to one ``F.scaled_dot_product_attention`` call, which an
analysis whose rules make it its own gradient runs as one operation (AttnLRP, see
:func:`~.lrp.transformer.attention_as_gradient`) and any other through its parts.

Masks follow torch: for ``scaled_dot_product_attention`` a boolean ``attn_mask`` marks the
positions that take part (``True``), a float one is added to the scores; for
``multi_head_attention_forward`` a boolean ``attn_mask`` or ``key_padding_mask`` marks the
positions that do not (``True``). ``is_causal`` masks the upper triangle. Dropout on the
attention weights is applied as torch applies it (``multi_head_attention_forward``: only in
training; analyses run in eval mode).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from .errors import NotAnalyzableModelError


def _additive(mask: Tensor | None, like: Tensor, keep: bool) -> Tensor | None:
    """A float mask to add to the scores: a float ``mask`` as it is; a boolean one as 0 where
    a position takes part and −inf elsewhere (``keep``: ``True`` marks the positions that
    take part, else those that do not)."""
    if mask is None or mask.dtype != torch.bool:
        return None if mask is None else mask.to(like.dtype)
    blocked = ~mask if keep else mask
    return torch.zeros(mask.shape, dtype=like.dtype, device=like.device).masked_fill(
        blocked, float("-inf"))


def _causal(queries: int, keys: int, like: Tensor) -> Tensor:
    allowed = torch.ones(queries, keys, dtype=torch.bool, device=like.device).tril()
    return _additive(allowed, like, keep=True)


def attend(query: Tensor, key: Tensor, value: Tensor, bias: Tensor | None, scale: float,
           dropout_p: float = 0.0, open_rows: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """``softmax(scale·QKᵀ + bias) V`` and the attention weights, one torch call per part;
    the weights times ``open_rows`` where given (0 for a query that attends to no key)."""
    scores = torch.matmul(query * scale, key.transpose(-2, -1))
    if bias is not None:
        scores = scores + bias
    weights = torch.softmax(scores, dim=-1)
    if open_rows is not None:
        weights = weights * open_rows
    if dropout_p > 0.0:
        weights = F.dropout(weights, dropout_p, training=True)
    return torch.matmul(weights, value), weights


def scaled_dot_product_attention(query: Tensor, key: Tensor, value: Tensor,
                                 attn_mask: Tensor | None = None, dropout_p: float = 0.0,
                                 is_causal: bool = False, scale: float | None = None,
                                 enable_gqa: bool = False) -> Tensor:
    """``F.scaled_dot_product_attention`` through its parts (same arguments)."""
    if enable_gqa and key.size(-3) != query.size(-3):
        groups = query.size(-3) // key.size(-3)
        key = key.repeat_interleave(groups, dim=-3)
        value = value.repeat_interleave(groups, dim=-3)
    scale = 1.0 / math.sqrt(query.size(-1)) if scale is None else scale
    bias = _additive(attn_mask, query, keep=True)
    if is_causal:
        causal = _causal(query.size(-2), key.size(-2), query)
        bias = causal if bias is None else bias + causal
    if bias is None or bias.requires_grad:  # (a computed float mask: as it is)
        return attend(query, key, value, bias, scale, dropout_p)[0]
    # A query whose mask blocks every key (a padded position under a causal mask) attends
    # to none: torch's fused attention gives 0 there, a softmax of -inf alone NaN. Its row
    # of the mask is opened (the softmax stays finite) and its weights multiplied by 0.
    blocked = torch.isneginf(bias).all(dim=-1, keepdim=True)
    bias = torch.where(blocked, 0.0, bias)
    return attend(query, key, value, bias, scale, dropout_p, (~blocked).to(query.dtype))[0]


def _projected(x: Tensor, weight: Tensor, bias: Tensor | None, parts: int, heads: int,
               linear: Callable[..., Tensor]) -> tuple[Tensor, ...]:
    """``parts`` projections of ``x`` (L, N, E) by one ``linear`` (``F.linear``) call with
    their weights stacked, each split into heads, batch first: (N, H, L, head_dim)."""
    output = linear(x.transpose(0, 1), weight, bias)  # batch first: relevance per sample
    batch, length = output.shape[:2]
    return output.view(batch, length, parts, heads, -1).permute(2, 0, 3, 1, 4).unbind(0)


def multi_head_attention_forward(
        query: Tensor, key: Tensor, value: Tensor, embed_dim_to_check: int, num_heads: int,
        in_proj_weight: Tensor | None, in_proj_bias: Tensor | None, bias_k: Tensor | None,
        bias_v: Tensor | None, add_zero_attn: bool, dropout_p: float, out_proj_weight: Tensor,
        out_proj_bias: Tensor | None, training: bool = True,
        key_padding_mask: Tensor | None = None, need_weights: bool = True,
        attn_mask: Tensor | None = None, use_separate_proj_weight: bool = False,
        q_proj_weight: Tensor | None = None, k_proj_weight: Tensor | None = None,
        v_proj_weight: Tensor | None = None, static_k: Tensor | None = None,
        static_v: Tensor | None = None, average_attn_weights: bool = True,
        is_causal: bool = False, *, linear: Callable[..., Tensor] = F.linear,
        attention: Callable[..., Tensor] = F.scaled_dot_product_attention
        ) -> tuple[Tensor, Tensor | None]:
    """``F.multi_head_attention_forward`` through its parts (same arguments; inputs
    sequence first, ``(L, N, E)``, or unbatched ``(L, E)``). ``linear`` and ``attention``
    make its ``F.linear`` and ``F.scaled_dot_product_attention`` calls (see
    :data:`INJECTED`)."""
    if bias_k is not None or bias_v is not None or add_zero_attn or static_k is not None \
            or static_v is not None:
        raise NotAnalyzableModelError(
            "multi_head_attention_forward with add_bias_kv, add_zero_attn or static keys/values "
            "has no decomposition here; use nn.MultiheadAttention without them")
    unbatched = query.dim() == 2
    if unbatched:
        query, key, value = (t.unsqueeze(1) for t in (query, key, value))
        if key_padding_mask is not None:
            key_padding_mask = key_padding_mask.unsqueeze(0)
    targets, batch, embed = query.shape
    sources, head_dim = key.shape[0], embed // num_heads
    # The projections as torch makes them (its _in_projection_packed), so that the kernel
    # layers are the calls torch makes: one for self-attention (query is key is value), two
    # where key is value, three otherwise. (An LRP rule is one per output neuron: one layer
    # of 3E outputs gives the relevance of three layers of E; layer-indexed rule lists and
    # the reverse-pass diagnostics count the calls.)
    if use_separate_proj_weight:  # (input, how many projections, their stacked weights)
        calls = [(query, 1, q_proj_weight), (key, 1, k_proj_weight), (value, 1, v_proj_weight)]
    elif query is key is value:
        calls = [(query, 3, in_proj_weight)]
    elif key is value:
        calls = [(query, 1, in_proj_weight[:embed]), (key, 2, in_proj_weight[embed:])]
    else:
        calls = [(t, 1, w) for t, w in zip((query, key, value), in_proj_weight.chunk(3),
                                           strict=True)]
    projected, start = [], 0
    for x, parts, weight in calls:
        part_bias = None if in_proj_bias is None else in_proj_bias[start:start + len(weight)]
        projected += _projected(x, weight, part_bias, parts, num_heads, linear)
        start += len(weight)
    q, k, v = projected
    bias = _additive(attn_mask, q, keep=False)
    if is_causal and attn_mask is None:
        bias = _causal(targets, sources, q)
    if bias is not None and bias.dim() == 3:  # (N·H, L, S)
        bias = bias.reshape(batch, num_heads, targets, sources)
    padding = _additive(key_padding_mask, q, keep=False)
    if padding is not None:
        padding = padding.reshape(batch, 1, 1, sources)
        bias = padding if bias is None else bias + padding
    dropout_p = dropout_p if training else 0.0
    if need_weights:
        output, attention = attend(q, k, v, bias, 1.0 / math.sqrt(head_dim), dropout_p)
    else:  # one call, which an analysis may run fused or through its parts in turn
        output = attention(q, k, v, attn_mask=bias, dropout_p=dropout_p)
    output = output.transpose(1, 2).flatten(2)
    output = linear(output, out_proj_weight, out_proj_bias).transpose(0, 1)
    if unbatched:
        output = output.squeeze(1)
    if not need_weights:
        return output, None
    if average_attn_weights:
        attention = attention.mean(dim=1)
    return output, attention.squeeze(0) if unbatched else attention


#: Fused attention calls → their decomposition into parts.
DECOMPOSITIONS: dict[Callable, Callable] = {
    F.scaled_dot_product_attention: scaled_dot_product_attention,
    F.multi_head_attention_forward: multi_head_attention_forward,
}

#: Decompositions that take some of their calls as keyword arguments → those calls, by
#: keyword: a replay hands them over with their rules and runs the rest of the parts as plain
#: torch (see :class:`~.replay.Decomposed`).
INJECTED: dict[Callable, dict[Callable, str]] = {
    multi_head_attention_forward: {F.linear: "linear",
                                   F.scaled_dot_product_attention: "attention"},
}
