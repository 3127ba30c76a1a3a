"""A tiny vision transformer on the 8×8 digits, explained with AttnLRP while it learns.

What it shows
-------------
:class:`lit_explain.demo.ViTDigitsClassifier`: 2×2 patches of the digits (16 patches and a
class token), a position embedding, two pre-LN blocks with ``nn.MultiheadAttention`` and a
GELU MLP. An :class:`lit_explain.ExplainCallback` explains 8 validation digits after every
validation epoch with AttnLRP (``lrp.epsilon``: ε-LRP on the linear layers, the softmax,
uniform and identity rules of Achtibat et al. 2024), CP-LRP (``lrp`` with
``attention_rule="cp"``: no relevance through the attention weights; Ali et al. 2022), the
gradient and Integrated Gradients, scores them with pixel flipping and tracks their drift.
The same run as ``lit-explain fit --config configs/transformer.yaml``.

How to look at it
-----------------
::

    python examples/vit_digits.py                   # about a minute on two CPU cores
    tensorboard --logdir runs                       # IMAGES and SCALARS tabs, explain/*
"""

from __future__ import annotations

import lightning as L

import lit_explain as lx
from lit_explain.demo import DigitsDataModule, ViTDigitsClassifier
from lit_explain.demo.runs import example_parser, fit_example

ANALYZERS = {"lrp.epsilon": {"epsilon": 1e-6},  # AttnLRP
             "lrp": {"rule": "Epsilon", "attention_rule": "cp"},  # CP-LRP
             "gradient": {}, "integrated_gradients": {"steps": 32}}
METRICS = {"pixel_flipping": {"steps": 16}}


def main(argv: list[str] | None = None) -> str:
    """Train and explain; return the TensorBoard log directory of the run."""
    args = example_parser(__doc__.split("\n")[0], max_epochs=15).parse_args(argv)
    L.seed_everything(args.seed, verbose=False)
    model = ViTDigitsClassifier(dim=32, heads=4, depth=2, learning_rate=3e-3)
    data = DigitsDataModule(batch_size=64)
    explain = lx.ExplainCallback(analyzers=ANALYZERS, num_samples=args.num_samples,
                                 sample_selection="stratified", metrics=METRICS,
                                 drift=["previous", "first"], class_names=data.class_names)
    return fit_example(model, data, args, "vit_digits", [explain],
                       f"{args.num_samples} validation digits", accelerator="cpu")


if __name__ == "__main__":
    main()
