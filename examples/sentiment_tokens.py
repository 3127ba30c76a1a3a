"""A token classifier (sentiment-style): one relevance value per token, explained in training.

What it shows
-------------
A synthetic "sentiment" task, generated with a seeded generator (no download): sentences of
8 to 16 random token ids from a vocabulary of 40 (id 0 pads them to length 16). Tokens 1–4
are "positive" words, 5–8 "negative" ones, the rest neutral; a sentence is positive when it
holds more positive than negative words (every sentence holds at least one, and no ties).
The model is an ``nn.Embedding`` → ``Conv1d`` → ReLU → masked mean over the words →
``Linear``, as a small text CNN would be.

Token ids are integers, so the analyzers start at the embedding's output and sum each map
over the embedding axis (as iNNvestigate's sentiment example does): one relevance value per
token, which :class:`lit_explain.ExplainCallback` draws as a 1-D strip per sentence (one cell
per token, red for the predicted class, blue against it). As the model learns, the cells of
the sentiment words light up and the neutral ones and the padding fade. At the end the script
prints a few validation sentences with each word's LRP-ε relevance, and the conservation
report (where relevance is absorbed on its way from the logit to the tokens).

Each map is also scored by token deletion, ``explain/<analyzer>/pixel_flipping``: the words are
replaced by the padding id 0 (which the masked mean leaves out), most relevant first, and the
AOPC is the mean drop of the logit (``mask_token_id=0``: token ids have no float baseline).

How to look at it
-----------------
::

    python examples/sentiment_tokens.py             # about 10 s on two CPU cores
    tensorboard --logdir runs                       # IMAGES tab, tags explain/*
"""

from __future__ import annotations

import argparse

import lightning as L
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset

import lit_explain as lx
from lit_explain.demo import Classifier
from lit_explain.demo.runs import example_parser, fit_example

ANALYZERS = ["gradient", "input_t_gradient", "integrated_gradients", "lrp.epsilon",
             "pattern.attribution"]
VOCABULARY = 40
LENGTH = 16
POSITIVE = range(1, 5)
NEGATIVE = range(5, 9)
#: Token deletion: a deleted word becomes the padding id 0, which the masked mean leaves out.
METRICS = {"pixel_flipping": {"mask_token_id": 0}}


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


class TextCNN(Classifier):
    """Embedding → Conv1d (3 words) → ReLU → mean over the non-padding words → Linear."""

    def __init__(self, vocabulary: int = VOCABULARY, dim: int = 16, channels: int = 16,
                 learning_rate: float = 1e-2) -> None:
        super().__init__(learning_rate)
        self.save_hyperparameters()
        self.embedding = nn.Embedding(vocabulary, dim, padding_idx=0)
        self.conv = nn.Conv1d(dim, channels, 3, padding=1)
        self.out = nn.Linear(channels, 2)

    def forward(self, tokens: Tensor) -> Tensor:
        mask = (tokens != 0).to(self.out.weight.dtype)[:, None]  # (N, 1, L)
        hidden = torch.relu(self.conv(self.embedding(tokens).transpose(1, 2)))
        return self.out((hidden * mask).sum(2) / mask.sum(2).clamp(min=1))



def explain_in_words(model: nn.Module, tokens: Tensor, labels: Tensor) -> str:
    """A few sentences as text, each word with its LRP-ε relevance, and where relevance is lost."""
    analyzer = lx.create_analyzer("lrp.epsilon", model, epsilon=0.01)
    report = lx.conservation_report(analyzer, tokens)
    lines = []
    for sentence, relevance, label in zip(tokens, report.map, labels, strict=True):
        words = [f"{word(int(t))}({float(r):+.2f})" for t, r in zip(sentence, relevance,
                                                                    strict=True) if t != 0]
        lines.append(f"{'positive' if label == 1 else 'negative'}: " + " ".join(words))
    return "\n".join(lines) + "\n\n" + str(report)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = example_parser(__doc__.split("\n")[0], max_epochs=6)
    parser.add_argument("--num-train", type=int, default=2048, help="training sentences")
    parser.add_argument("--every-n-epochs", type=int, default=1)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> str:
    """Train and explain; return the TensorBoard log directory of the run."""
    args = parse_args(argv)
    L.seed_everything(args.seed, verbose=False)
    model = TextCNN()
    data = SentenceDataModule(num_train=args.num_train, seed=args.seed)
    explain = lx.ExplainCallback(analyzers=ANALYZERS, num_samples=args.num_samples,
                                 every_n_epochs=args.every_n_epochs,
                                 sample_selection="stratified", pattern_source="train",
                                 metrics=METRICS, token_names=WORDS, class_names=CLASSES)
    log_dir = fit_example(model, data, args, "sentiment_tokens", [explain],
                          f"{args.num_samples} validation sentences (per token)",
                          accelerator="cpu")
    tokens, labels = make_sentences(4, args.seed + 1)
    print("\n" + explain_in_words(model, tokens, labels))
    return log_dir

if __name__ == "__main__":
    main()
