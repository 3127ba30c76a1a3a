"""AttnLRP and CP-LRP against LXT 2.1 (Achtibat et al. 2024), the authors' implementation.

Each transformer of ``tests/transformer_models.py`` is written a third time here with LXT's
explicit rule functions (``lxt.explicit.functional``, ``lxt.explicit.rules``) on the same
parameters, in float64: ε-LRP on linear layers, the uniform rule on ``matmul`` and gating,
AttnLRP's softmax rule, LXT's ``layer_norm`` (standard deviation detached) and the identity
rule on GELU, SiLU and RMSNorm; CP-LRP as LXT writes it (``epsilon_lrp`` on the value path
with the attention weights, and SwiGLU's gate, detached). The relevance LXT gives the
input (pixels; per token, summed over the embedding) must equal ours to 1e-4 of the map's
largest value, in both of our relevance flows.

LXT is an optional reference: the test is skipped where it is not importable. Run it in an
environment with ``pip install --no-deps lxt==2.1``::

    PYTHONPATH=. python -m pytest tests/analyzers/test_transformer_lxt.py
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor
from transformer_models import PAD, make

import lit_explain as lx
from lit_explain.analyzers.lrp.rules import Flow

lf = pytest.importorskip("lxt.explicit.functional")
lxt_rules = pytest.importorskip("lxt.explicit.rules")

EPS = 1e-12  # LXT stabilises with z + ε, we with z + ε·sign(z): a tiny ε makes them agree


def _linear(x: Tensor, module) -> Tensor:
    return lf.linear_epsilon(x, module.weight, module.bias, epsilon=EPS)


def _layer_norm(x: Tensor, norm) -> Tensor:
    return lf.layer_norm_grad_fn.apply(x, norm.weight, norm.bias, norm.eps, EPS)


def _rms_norm(x: Tensor, norm) -> Tensor:
    return lxt_rules.identity(lambda t: F.rms_norm(t, t.shape[-1:], norm.weight, norm.eps), x)


def _heads(t: Tensor, heads: int) -> Tensor:
    return t.unflatten(-1, (heads, -1)).transpose(1, 2)


def _attention(q: Tensor, k: Tensor, v: Tensor, bias: Tensor | None, cp: bool) -> Tensor:
    """LXT's attention: uniform rule on QKᵀ and AV, softmax rule; CP: the value path only."""
    scale = 1.0 / math.sqrt(q.shape[-1])
    if cp:
        with torch.no_grad():
            scores = q @ k.transpose(-2, -1) * scale
            weights = torch.softmax(scores if bias is None else scores + bias, dim=-1)
        return lxt_rules.epsilon_lrp(torch.matmul, EPS, weights, v)
    scores = lf.mul2(lf.matmul(q, k.transpose(-2, -1), epsilon=EPS), scale)
    if bias is not None:
        scores = scores + bias  # a constant: relevance passes where it is 0 (unmasked)
    return lf.matmul(lf.softmax(scores, -1), v, epsilon=EPS)


def _mha(attn, x: Tensor, bias: Tensor | None, cp: bool) -> Tensor:
    q, k, v = (_heads(lf.linear_epsilon(x, w, b, epsilon=EPS), attn.num_heads) for w, b in zip(
        attn.in_proj_weight.chunk(3), attn.in_proj_bias.chunk(3), strict=True))
    out = _attention(q, k, v, bias, cp).transpose(1, 2).flatten(2)
    return _linear(out, attn.out_proj)


def _add(a: Tensor, b: Tensor) -> Tensor:
    return lf.add2(a, b, epsilon=EPS)


def vit(m, x: Tensor, cp: bool) -> Tensor:
    size = m.patch.kernel_size[0]
    patches = F.unfold(x, size, stride=size).transpose(1, 2)
    h = lf.linear_epsilon(patches, m.patch.weight.flatten(1), m.patch.bias, epsilon=EPS)
    h = torch.cat([m.cls.expand(len(h), -1, -1), h], dim=1)
    h = _add(h, m.pos.expand_as(h))  # after the first kernel layer: its proportional share
    for block in m.blocks:
        h = _add(h, _mha(block.attn, _layer_norm(h, block.norm1), None, cp))
        first, last = block.mlp[0], block.mlp[2]
        hidden = lxt_rules.identity(F.gelu, _linear(_layer_norm(h, block.norm2), first))
        h = _add(h, _linear(hidden, last))
    return _linear(_layer_norm(h[:, 0], m.norm), m.head)


def text(m, e: Tensor, tokens: Tensor, cp: bool) -> Tensor:
    padding = tokens == PAD
    bias = torch.zeros(padding.shape, dtype=e.dtype).masked_fill(padding, float("-inf"))
    h = e + m.pos[:, :tokens.shape[1]]  # before any kernel layer: relevance passes unchanged
    for layer in m.layers:
        h = _layer_norm(_add(h, _mha(layer.self_attn, h, bias[:, None, None, :], cp)),
                        layer.norm1)
        ff = _linear(lxt_rules.identity(F.gelu, _linear(h, layer.linear1)), layer.linear2)
        h = _layer_norm(_add(h, ff), layer.norm2)
    keep = (~padding).to(h.dtype)[..., None]
    pooled = lf.mean(h * keep, 1, False, epsilon=EPS)  # ε-rule over the sum
    return _linear(lf.mul2(pooled, tokens.shape[1] / keep.sum(dim=1)), m.head)


def decoder(m, e: Tensor, tokens: Tensor, cp: bool) -> Tensor:
    length = tokens.shape[1]
    h = e + m.pos[:, :length]
    n = _rms_norm(h, m.norm1)
    q, k, v = (_heads(lf.linear_epsilon(n, f.weight, epsilon=EPS), m.heads)
               for f in (m.q, m.k, m.v))
    future = torch.ones(length, length, dtype=torch.bool).triu(1)
    bias = torch.zeros(length, length, dtype=e.dtype).masked_fill(future, float("-inf"))
    attended = _attention(q, k, v, bias, cp).transpose(1, 2).flatten(2)
    h = _add(h, lf.linear_epsilon(attended, m.o.weight, epsilon=EPS))
    n = _rms_norm(h, m.norm2)
    gate = lxt_rules.identity(F.silu, lf.linear_epsilon(n, m.gate.weight, epsilon=EPS))
    up = lf.linear_epsilon(n, m.up.weight, epsilon=EPS)
    gated = lxt_rules.epsilon_lrp(torch.mul, EPS, gate.detach(), up) if cp else lf.mul2(gate, up)
    h = _add(h, lf.linear_epsilon(gated, m.down.weight, epsilon=EPS))
    return lf.linear_epsilon(_rms_norm(h, m.norm)[:, -1], m.head.weight, epsilon=EPS)


REFERENCES = {"vit": vit, "text": text, "decoder": decoder}


def lxt_relevance(name: str, model, x: Tensor, cp: bool) -> Tensor:
    """LXT's relevance at the input for each sample's largest logit (seeded with its value)."""
    for p in model.parameters():
        p.requires_grad_(False)
    if name == "vit":
        leaf = x.detach().clone().requires_grad_(True)
        logits = vit(model, leaf, cp)
    else:
        leaf = model.embed(x).detach().requires_grad_(True)
        logits = REFERENCES[name](model, leaf, x, cp)
    with torch.no_grad():
        torch.testing.assert_close(logits, model(x))  # the same function as the model
    seed = torch.zeros_like(logits)
    choice = logits.argmax(dim=1, keepdim=True)
    seed.scatter_(1, choice, logits.detach().gather(1, choice))
    (relevance,) = torch.autograd.grad(logits, leaf, seed)
    return relevance if name == "vit" else relevance.sum(dim=-1)


def relative_difference(ours: Tensor, reference: Tensor) -> float:
    return float((ours - reference).abs().max() / reference.abs().max())


@pytest.mark.parametrize("flow", ["relative", "absolute"])
@pytest.mark.parametrize("rule", ["attnlrp", "cp"])
@pytest.mark.parametrize("name", ["vit", "text", "decoder"])
def test_matches_lxt(name: str, rule: str, flow: str) -> None:
    model, x = make(name, dtype=torch.float64)
    expected = lxt_relevance(name, model, x, cp=rule == "cp")
    analyzer = lx.create_analyzer("lrp.epsilon", model, epsilon=EPS, attention_rule=rule)
    if flow == "absolute":
        analyzer.flow = Flow()  # relevance as itself, as LXT's explicit rules carry it
    assert relative_difference(analyzer.analyze(x), expected) < 1e-4
