"""Small transformers for the demos: a ViT on the 8×8 digits and a text encoder.

Both are written as people write transformers (``nn.MultiheadAttention``,
``nn.TransformerEncoderLayer``, ``nn.LayerNorm``, GELU), and every LRP analyzer explains them
with AttnLRP's rules (or CP-LRP's, ``attention_rule="cp"``); see ``docs/lrp.md``.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from . import Classifier


class PreNormBlock(nn.Module):
    """``h + attention(LN(h))``, then ``h + MLP(LN(h))`` with a GELU MLP (ViT's block)."""

    def __init__(self, dim: int, heads: int, hidden: int) -> None:
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))

    def forward(self, h: Tensor) -> Tensor:
        n = self.norm1(h)
        h = h + self.attn(n, n, n, need_weights=False)[0]
        return h + self.mlp(self.norm2(h))


class TinyViT(nn.Module):
    """A vision transformer: patch convolution, class token, position embedding, pre-LN
    blocks, a head on the class token (Dosovitskiy et al. 2021).

    Parameters
    ----------
    image, patch, channels:
        Side of the square input images, side of the square patches, input channels.
    dim, heads, depth, hidden:
        Width, attention heads, blocks and the MLP's hidden width.
    num_classes:
        Outputs (logits).
    """

    def __init__(self, image: int = 8, patch: int = 2, channels: int = 1, dim: int = 32,
                 heads: int = 4, depth: int = 2, hidden: int = 64, num_classes: int = 10
                 ) -> None:
        super().__init__()
        self.patch = nn.Conv2d(channels, dim, patch, stride=patch)
        self.cls = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos = nn.Parameter(0.02 * torch.randn(1, (image // patch) ** 2 + 1, dim))
        self.blocks = nn.Sequential(*(PreNormBlock(dim, heads, hidden) for _ in range(depth)))
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        h = self.patch(x).flatten(2).transpose(1, 2)
        h = torch.cat([self.cls.expand(len(h), -1, -1), h], dim=1) + self.pos
        return self.head(self.norm(self.blocks(h)[:, 0]))


class ViTDigitsClassifier(Classifier):
    """:class:`TinyViT` on the 8×8 digits (2×2 patches); returns logits.

    Parameters
    ----------
    dim, heads, depth:
        Width, attention heads and blocks of the transformer.
    learning_rate:
        Adam's learning rate.
    """

    def __init__(self, dim: int = 32, heads: int = 4, depth: int = 2,
                 learning_rate: float = 3e-3) -> None:
        super().__init__(learning_rate)
        self.save_hyperparameters()
        self.net = TinyViT(dim=dim, heads=heads, depth=depth, hidden=2 * dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


class TextTransformer(Classifier):
    """Token ids → ``nn.Embedding`` + position embedding → ``nn.TransformerEncoderLayer``
    (post-LN, GELU, key padding mask) → mean over the non-padding tokens → ``Linear``.

    Parameters
    ----------
    vocabulary, length:
        Vocabulary size (id 0 pads) and the longest sentence.
    dim, heads, layers:
        Width, attention heads and encoder layers.
    num_classes:
        Outputs (logits).
    learning_rate:
        Adam's learning rate.
    """

    def __init__(self, vocabulary: int = 40, length: int = 16, dim: int = 32, heads: int = 4,
                 layers: int = 2, num_classes: int = 2, learning_rate: float = 3e-3) -> None:
        super().__init__(learning_rate)
        self.save_hyperparameters()
        self.embedding = nn.Embedding(vocabulary, dim, padding_idx=0)
        self.pos = nn.Parameter(0.02 * torch.randn(1, length, dim))
        self.layers = nn.ModuleList(
            nn.TransformerEncoderLayer(dim, heads, 2 * dim, dropout=0.0, activation="gelu",
                                       batch_first=True) for _ in range(layers))
        self.out = nn.Linear(dim, num_classes)

    def forward(self, tokens: Tensor) -> Tensor:
        padding = tokens == 0
        # A sentence of padding only (every word deleted, as token deletion does at its last
        # step) would mask every key and make NaNs: it attends to all of its positions
        # instead, and the masked mean below still gives it no word (the output is the bias).
        attend = padding & ~padding.all(dim=1, keepdim=True)
        h = self.embedding(tokens) + self.pos[:, :tokens.shape[1]]
        for layer in self.layers:
            h = layer(h, src_key_padding_mask=attend)
        keep = (~padding).to(h.dtype)[..., None]
        return self.out((h * keep).sum(dim=1) / keep.sum(dim=1).clamp(min=1))
