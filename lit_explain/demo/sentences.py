"""A seeded synthetic sentiment task for the token-model examples (no download).

Sentences of 8 to 16 token ids from a vocabulary of :data:`VOCABULARY` (id 0 pads them to
:data:`LENGTH`). Tokens 1–4 are "positive" words, 5–8 "negative" ones, the rest neutral; a
sentence is positive (label 1) when it holds more positive than negative words. Every
sentence holds one to three sentiment words, with no ties.
"""

from __future__ import annotations

import lightning as L
import torch
from torch import Tensor
from torch.utils.data import DataLoader, TensorDataset

VOCABULARY, LENGTH = 40, 16
POSITIVE, NEGATIVE = range(1, 5), range(5, 9)
#: The word of each token id: 0 is padding, 1-4 positive, 5-8 negative, the rest neutral.
WORDS = ["·", "good", "great", "superb", "lovely", "bad", "awful", "poor", "dull",
         "the", "a", "film", "plot", "actor", "scene", "story", "music", "it", "was", "and",
         "very", "quite", "with", "of", "in", "this", "that", "cast", "ending", "camera",
         "script", "role", "hero", "city", "night", "book", "song", "dialogue", "pace", "set"]
#: The class names: label 1 is positive.
CLASSES = ["negative", "positive"]


def word(token: int) -> str:
    """The word of a token id."""
    return WORDS[token] if 0 <= token < len(WORDS) else f"w{token}"


def make_sentences(count: int, seed: int) -> tuple[Tensor, Tensor]:
    """``count`` padded sentences (count, LENGTH) int64 and their labels (count,)."""
    generator = torch.Generator().manual_seed(seed)
    tokens = torch.randint(9, VOCABULARY, (count, LENGTH), generator=generator)
    lengths = torch.randint(8, LENGTH + 1, (count,), generator=generator)
    labels = torch.randint(0, 2, (count,), generator=generator)
    for i in range(count):
        # 1-3 sentiment words: the label's kind wins by one or more
        winners = int(torch.randint(1, 3, (), generator=generator))
        losers = int(torch.randint(0, winners, (), generator=generator))
        kinds = (POSITIVE, NEGATIVE) if labels[i] == 1 else (NEGATIVE, POSITIVE)
        places = torch.randperm(int(lengths[i]), generator=generator)[:winners + losers]
        for k, place in enumerate(places):
            kind = kinds[0] if k < winners else kinds[1]
            tokens[i, place] = kind[int(torch.randint(0, len(kind), (), generator=generator))]
        tokens[i, lengths[i]:] = 0
    return tokens, labels


class SentenceDataModule(L.LightningDataModule):
    """Training and validation sentences from two seeded generators."""

    def __init__(self, num_train: int = 2048, num_val: int = 256, batch_size: int = 64,
                 seed: int = 0) -> None:
        super().__init__()
        self.num_train, self.num_val = num_train, num_val
        self.batch_size, self.seed = batch_size, seed

    def setup(self, stage: str | None = None) -> None:
        self.train_set = TensorDataset(*make_sentences(self.num_train, self.seed))
        self.val_set = TensorDataset(*make_sentences(self.num_val, self.seed + 1))

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.train_set, batch_size=self.batch_size, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.val_set, batch_size=self.batch_size)
