"""A two-layer transformer encoder on a synthetic sentiment task, one relevance per word.

What it shows
-------------
A seeded synthetic task (no download): sentences of 8 to 16 token ids from a vocabulary of
40 (id 0 pads). Tokens 1–4 are "positive" words, 5–8 "negative" ones, the rest neutral; a
sentence is positive when it holds more positive than negative words. The model,
:class:`lit_explain.demo.TextTransformer`, is ``nn.Embedding`` + a position embedding, two
``nn.TransformerEncoderLayer`` with a key padding mask, and a masked mean.

:class:`lit_explain.ExplainCallback` explains 8 validation sentences every epoch with AttnLRP
(``lrp.epsilon``), CP-LRP (``lrp``, ``attention_rule="cp"``), Input×Gradient and Integrated
Gradients: one value per token (the analyses start at the embedding's output and sum over it),
drawn as strips with the words written in the cells (``token_names``), and scores each map by
token deletion (``pixel_flipping`` with ``mask_token_id=0``: the most relevant words are
replaced by the padding id first, which the model's key padding mask then ignores; its AOPC is
``explain/<analyzer>/pixel_flipping``). At the end the script prints a few sentences with each
word's AttnLRP relevance.

How to look at it
-----------------
::

    python examples/text_transformer.py             # about 30 s on two CPU cores
    tensorboard --logdir runs                       # IMAGES tab, tags explain/*
"""

from __future__ import annotations

import lightning as L
import torch
from torch import Tensor
from torch.utils.data import DataLoader, TensorDataset

import lit_explain as lx
from lit_explain.demo import TextTransformer
from lit_explain.demo.runs import example_parser, fit_example

ANALYZERS = {"lrp.epsilon": {"epsilon": 1e-6},  # AttnLRP
             "lrp": {"rule": "Epsilon", "attention_rule": "cp"},  # CP-LRP
             "input_t_gradient": {}, "integrated_gradients": {"steps": 32}}
#: Token deletion: a deleted word becomes the padding id 0, which the model masks out.
METRICS = {"pixel_flipping": {"mask_token_id": 0}}
VOCABULARY, LENGTH = 40, 16
POSITIVE, NEGATIVE = range(1, 5), range(5, 9)
WORDS = ["·", *(f"+{t}" for t in POSITIVE), *(f"-{t}" for t in NEGATIVE),
         *(f"w{t}" for t in range(9, VOCABULARY))]


def make_sentences(count: int, seed: int) -> tuple[Tensor, Tensor]:
    """``count`` padded sentences (count, LENGTH) int64 and their labels (count,)."""
    generator = torch.Generator().manual_seed(seed)
    tokens = torch.randint(9, VOCABULARY, (count, LENGTH), generator=generator)
    lengths = torch.randint(8, LENGTH + 1, (count,), generator=generator)
    labels = torch.randint(0, 2, (count,), generator=generator)
    for i in range(count):
        winners = int(torch.randint(1, 3, (), generator=generator))
        losers = int(torch.randint(0, winners, (), generator=generator))
        kinds = (POSITIVE, NEGATIVE) if labels[i] == 1 else (NEGATIVE, POSITIVE)
        places = torch.randperm(int(lengths[i]), generator=generator)[:winners + losers]
        for k, place in enumerate(places):
            kind = kinds[0] if k < winners else kinds[1]
            tokens[i, place] = kind[int(torch.randint(0, len(kind), (), generator=generator))]
        tokens[i, lengths[i]:] = 0
    return tokens, labels


class Sentences(L.LightningDataModule):
    def __init__(self, num_train: int = 2048, num_val: int = 256, batch_size: int = 64,
                 seed: int = 0) -> None:
        super().__init__()
        self.num_train, self.num_val, self.batch_size, self.seed = (num_train, num_val,
                                                                    batch_size, seed)

    def setup(self, stage: str | None = None) -> None:
        self.train_set = TensorDataset(*make_sentences(self.num_train, self.seed))
        self.val_set = TensorDataset(*make_sentences(self.num_val, self.seed + 1))

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.train_set, batch_size=self.batch_size, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.val_set, batch_size=self.batch_size)


def explain_in_words(model: TextTransformer, tokens: Tensor) -> str:
    """Each sentence's words with their AttnLRP relevance."""
    relevance = lx.create_analyzer("lrp.epsilon", model, epsilon=1e-6).analyze(tokens)
    return "\n".join(" ".join(f"{WORDS[int(t)]}({float(r):+.2f})" for t, r in zip(
        sentence, values, strict=True) if t != 0) for sentence, values in zip(
        tokens, relevance, strict=True))


def main(argv: list[str] | None = None) -> str:
    """Train and explain; return the TensorBoard log directory of the run."""
    parser = example_parser(__doc__.split("\n")[0], max_epochs=8)
    parser.add_argument("--num-train", type=int, default=2048, help="training sentences")
    args = parser.parse_args(argv)
    L.seed_everything(args.seed, verbose=False)
    model = TextTransformer(vocabulary=VOCABULARY, length=LENGTH)
    data = Sentences(num_train=args.num_train, seed=args.seed)
    explain = lx.ExplainCallback(analyzers=ANALYZERS, num_samples=args.num_samples,
                                 sample_selection="stratified", token_names=WORDS,
                                 metrics=METRICS,
                                 class_names=["negative", "positive"])
    log_dir = fit_example(model, data, args, "text_transformer", [explain],
                          f"{args.num_samples} validation sentences (per token)",
                          accelerator="cpu")
    print("\n" + explain_in_words(model.eval(), make_sentences(4, args.seed + 1)[0]))
    return log_dir


if __name__ == "__main__":
    main()
