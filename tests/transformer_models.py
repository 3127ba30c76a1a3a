"""Three small transformers, each written twice: with modules and functionally.

- :class:`ViT`: a patch convolution, a class token, a position embedding, pre-LN blocks with
  ``nn.MultiheadAttention`` and a GELU MLP, a final LayerNorm and a head on the class token.
- :class:`TextEncoder`: ``nn.Embedding`` with a padding id, a position embedding, two
  ``nn.TransformerEncoderLayer`` (post-LN, GELU) with a key padding mask, a masked mean.
- :class:`Decoder`: ``nn.Embedding``, a decoder block with ``nn.RMSNorm``, causal
  ``F.scaled_dot_product_attention`` and a SwiGLU MLP, a head on the last token.

``Functional*`` wraps the module model and computes the same function from the same
parameters with ``torch.nn.functional`` calls and hand-written attention (matmul, mask,
softmax), so that the engine meets every operation in both forms. ``make(name)`` builds a
seeded model in eval mode with an input batch.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

VOCAB, PAD = 20, 0


class Block(nn.Module):
    def __init__(self, dim: int, heads: int, hidden: int) -> None:
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))

    def forward(self, h: Tensor) -> Tensor:
        n = self.norm1(h)
        h = h + self.attn(n, n, n)[0]
        return h + self.mlp(self.norm2(h))


class ViT(nn.Module):
    def __init__(self, image: int = 8, patch: int = 2, channels: int = 1, dim: int = 16,
                 heads: int = 2, depth: int = 2, hidden: int = 32, classes: int = 10) -> None:
        super().__init__()
        tokens = (image // patch) ** 2 + 1
        self.heads = heads
        self.patch = nn.Conv2d(channels, dim, patch, stride=patch)
        self.cls = nn.Parameter(0.1 * torch.randn(1, 1, dim))
        self.pos = nn.Parameter(0.1 * torch.randn(1, tokens, dim))
        self.blocks = nn.ModuleList(Block(dim, heads, hidden) for _ in range(depth))
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, classes)

    def forward(self, x: Tensor) -> Tensor:
        h = self.patch(x).flatten(2).transpose(1, 2)
        h = torch.cat([self.cls.expand(len(h), -1, -1), h], dim=1) + self.pos
        for block in self.blocks:
            h = block(h)
        return self.head(self.norm(h[:, 0]))


def _split(t: Tensor, heads: int) -> Tensor:  # (N, L, D) -> (N, H, L, D/H)
    return t.unflatten(-1, (heads, -1)).transpose(1, 2)


def _attention(q: Tensor, k: Tensor, v: Tensor, blocked: Tensor | None) -> Tensor:
    """Hand-written attention: ``blocked`` (bool, broadcastable) marks masked scores."""
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])
    if blocked is not None:
        scores = scores.masked_fill(blocked, float("-inf"))
    return torch.softmax(scores, dim=-1) @ v


def _mha(attn: nn.MultiheadAttention, x: Tensor, mask: Tensor | None = None,
         sdpa: bool = True) -> Tensor:
    """``nn.MultiheadAttention`` (batch first, self-attention) with functional calls;
    ``mask``: bool, True where a key takes part (broadcastable to the scores)."""
    q, k, v = (_split(F.linear(x, w, b), attn.num_heads) for w, b in zip(
        attn.in_proj_weight.chunk(3), attn.in_proj_bias.chunk(3), strict=True))
    if sdpa:
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    else:
        out = _attention(q, k, v, None if mask is None else ~mask)
    out = out.transpose(1, 2).flatten(2)
    return F.linear(out, attn.out_proj.weight, attn.out_proj.bias)


class FunctionalViT(nn.Module):
    def __init__(self, model: ViT) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: Tensor) -> Tensor:
        m = self.model
        h = F.conv2d(x, m.patch.weight, m.patch.bias, stride=m.patch.stride)
        h = h.reshape(len(h), h.shape[1], -1).permute(0, 2, 1)
        h = torch.cat([m.cls.expand(len(h), -1, -1), h], dim=1) + m.pos
        for i, block in enumerate(m.blocks):
            n = F.layer_norm(h, h.shape[-1:], block.norm1.weight, block.norm1.bias)
            h = h + _mha(block.attn, n, sdpa=i % 2 == 0)
            n = F.layer_norm(h, h.shape[-1:], block.norm2.weight, block.norm2.bias)
            first, last = block.mlp[0], block.mlp[2]
            h = h + F.linear(F.gelu(F.linear(n, first.weight, first.bias)), last.weight,
                             last.bias)
        h = F.layer_norm(h[:, 0], h.shape[-1:], m.norm.weight, m.norm.bias)
        return F.linear(h, m.head.weight, m.head.bias)


class TextEncoder(nn.Module):
    def __init__(self, length: int = 7, dim: int = 16, heads: int = 2, layers: int = 2,
                 hidden: int = 32, classes: int = 2) -> None:
        super().__init__()
        self.embed = nn.Embedding(VOCAB, dim, padding_idx=PAD)
        self.pos = nn.Parameter(0.1 * torch.randn(1, length, dim))
        self.layers = nn.ModuleList(
            nn.TransformerEncoderLayer(dim, heads, hidden, dropout=0.0, activation="gelu",
                                       batch_first=True) for _ in range(layers))
        self.head = nn.Linear(dim, classes)

    def forward(self, tokens: Tensor) -> Tensor:
        padding = tokens == PAD
        h = self.embed(tokens) + self.pos[:, :tokens.shape[1]]
        for layer in self.layers:
            h = layer(h, src_key_padding_mask=padding)
        keep = (~padding).to(h.dtype)[..., None]
        return self.head((h * keep).sum(dim=1) / keep.sum(dim=1))


class FunctionalTextEncoder(nn.Module):
    def __init__(self, model: TextEncoder) -> None:
        super().__init__()
        self.model = model
        self.embed = model.embed  # the input embedding stays a module (token input)

    def forward(self, tokens: Tensor) -> Tensor:
        m = self.model
        padding = tokens == PAD
        h = self.embed(tokens) + m.pos[:, :tokens.shape[1]]
        keys = (~padding)[:, None, None, :]
        for i, layer in enumerate(m.layers):
            h = F.layer_norm(h + _mha(layer.self_attn, h, keys, sdpa=i % 2 == 1),
                             h.shape[-1:], layer.norm1.weight, layer.norm1.bias, layer.norm1.eps)
            ff = F.linear(F.gelu(F.linear(h, layer.linear1.weight, layer.linear1.bias)),
                          layer.linear2.weight, layer.linear2.bias)
            h = F.layer_norm(h + ff, h.shape[-1:], layer.norm2.weight, layer.norm2.bias,
                             layer.norm2.eps)
        keep = (~padding).to(h.dtype)[..., None]
        pooled = (h * keep).sum(dim=1) / keep.sum(dim=1)
        return F.linear(pooled, m.head.weight, m.head.bias)


class Decoder(nn.Module):
    def __init__(self, dim: int = 16, heads: int = 2, hidden: int = 32, classes: int = 5,
                 length: int = 6) -> None:
        super().__init__()
        self.heads = heads
        self.embed = nn.Embedding(VOCAB, dim)
        self.pos = nn.Parameter(0.1 * torch.randn(1, length, dim))
        self.norm1, self.norm2, self.norm = nn.RMSNorm(dim), nn.RMSNorm(dim), nn.RMSNorm(dim)
        self.q, self.k, self.v, self.o = (nn.Linear(dim, dim, bias=False) for _ in range(4))
        self.gate, self.up = nn.Linear(dim, hidden, bias=False), nn.Linear(dim, hidden, bias=False)
        self.down, self.act = nn.Linear(hidden, dim, bias=False), nn.SiLU()
        self.head = nn.Linear(dim, classes, bias=False)
        for norm in (self.norm1, self.norm2, self.norm):  # weights other than 1
            nn.init.uniform_(norm.weight, 0.5, 1.5)

    def forward(self, tokens: Tensor) -> Tensor:
        h = self.embed(tokens) + self.pos[:, :tokens.shape[1]]
        n = self.norm1(h)
        q, k, v = (_split(f(n), self.heads) for f in (self.q, self.k, self.v))
        attended = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        h = h + self.o(attended.transpose(1, 2).flatten(2))
        n = self.norm2(h)
        h = h + self.down(self.act(self.gate(n)) * self.up(n))
        return self.head(self.norm(h)[:, -1])


class FunctionalDecoder(nn.Module):
    def __init__(self, model: Decoder) -> None:
        super().__init__()
        self.model = model
        self.embed = model.embed

    def forward(self, tokens: Tensor) -> Tensor:
        m = self.model
        h = self.embed(tokens) + m.pos[:, :tokens.shape[1]]
        norm = lambda t, mod: F.rms_norm(t, t.shape[-1:], mod.weight, mod.eps)  # noqa: E731
        n = norm(h, m.norm1)
        q, k, v = (_split(F.linear(n, f.weight), m.heads) for f in (m.q, m.k, m.v))
        length = tokens.shape[1]
        future = torch.ones(length, length, dtype=torch.bool, device=h.device).triu(1)
        attended = _attention(q, k, v, future)
        h = h + F.linear(attended.transpose(1, 2).flatten(2), m.o.weight)
        n = norm(h, m.norm2)
        gated = F.silu(F.linear(n, m.gate.weight)) * F.linear(n, m.up.weight)
        h = h + F.linear(gated, m.down.weight)
        return F.linear(norm(h, m.norm)[:, -1], m.head.weight)


MODELS = {"vit": (ViT, FunctionalViT), "text": (TextEncoder, FunctionalTextEncoder),
          "decoder": (Decoder, FunctionalDecoder)}


def make(name: str, functional: bool = False, batch: int = 3, seed: int = 0,
         dtype: torch.dtype = torch.float32) -> tuple[nn.Module, Tensor]:
    """A seeded model (eval mode, ``dtype``) and an input batch for it."""
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    module_cls, functional_cls = MODELS[name]
    model = module_cls().to(dtype).eval()
    if name == "vit":
        x = torch.rand(batch, 1, 8, 8, generator=generator, dtype=dtype)
    elif name == "text":
        x = torch.randint(1, VOCAB, (batch, 7), generator=generator)
        for row in range(batch):
            x[row, 7 - row:] = PAD  # row r ends with r padding tokens
    else:
        x = torch.randint(0, VOCAB, (batch, 6), generator=generator)
    return (functional_cls(model).eval() if functional else model), x
