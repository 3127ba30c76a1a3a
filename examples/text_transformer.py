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
from torch import Tensor

import lit_explain as lx
from lit_explain.demo import TextTransformer
from lit_explain.demo.runs import example_parser, fit_example
from lit_explain.demo.sentences import (
    LENGTH,
    VOCABULARY,
    WORDS,
    SentenceDataModule,
    make_sentences,
)

ANALYZERS = {"lrp.epsilon": {"epsilon": 1e-6},  # AttnLRP
             "lrp": {"rule": "Epsilon", "attention_rule": "cp"},  # CP-LRP
             "input_t_gradient": {}, "integrated_gradients": {"steps": 32}}
#: Token deletion: a deleted word becomes the padding id 0, which the model masks out.
METRICS = {"pixel_flipping": {"mask_token_id": 0}}


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
    data = SentenceDataModule(num_train=args.num_train, seed=args.seed)
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
