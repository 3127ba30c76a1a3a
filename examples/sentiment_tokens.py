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

import lit_explain as lx
from lit_explain.demo import Classifier
from lit_explain.demo.runs import example_parser, fit_example
from lit_explain.demo.sentences import (
    CLASSES,
    VOCABULARY,
    WORDS,
    SentenceDataModule,
    make_sentences,
    word,
)

ANALYZERS = ["gradient", "input_t_gradient", "integrated_gradients", "lrp.epsilon",
             "pattern.attribution"]
#: Token deletion: a deleted word becomes the padding id 0, which the masked mean leaves out.
METRICS = {"pixel_flipping": {"mask_token_id": 0}}


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
