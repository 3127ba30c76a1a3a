"""``lit-explain``: a LightningCLI whose default model, data and callback are the digits demo
explained by :class:`~lit_explain.ExplainCallback`.

    lit-explain fit                             # the demo, explained every epoch
    lit-explain fit --config configs/digits.yaml
    lit-explain fit --trainer.max_epochs 3
"""

from __future__ import annotations

import lightning as L
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

#: The callback ``lit-explain fit`` runs when the configuration names no callbacks.
DEFAULT_CALLBACKS = [{
    "class_path": "lit_explain.ExplainCallback",
    # (analyzers only: a config's own ExplainCallback, first in its list, starts from these
    # init_args, and took the demo's metrics and stratified samples it never asked for)
    "init_args": {"analyzers": ["gradient", "integrated_gradients", "lrp.epsilon",
                                "lrp.sequential_preset_a"]},
}]

DESCRIPTION = """\
Train a model with lit_explain's ExplainCallback: every epoch it explains fixed validation
samples with attribution analyzers (iNNvestigate's names) and logs heatmaps, faithfulness
metrics and drift. Without options `lit-explain fit` trains the digits demo with the callback
(gradient, integrated gradients, LRP-epsilon, LRP preset A); `--config configs/digits.yaml`
adds faithfulness metrics and drift.
"""

EPILOG = """\
The callback is on by default; change its options on the command line, e.g.
--trainer.callbacks.analyzers='[gradient,lrp.epsilon]'
--trainer.callbacks.metrics='[pixel_flipping]' (all of them, with their docs:
--trainer.callbacks.help ExplainCallback),
or in a config file's trainer.callbacks (class_path: lit_explain.ExplainCallback,
init_args: analyzers, metrics, num_samples, ...). Ready-made configs are in the
repository's configs/ folder: digits.yaml (the main job), gradient_family.yaml,
lrp_presets.yaml, metrics_drift.yaml, patterns.yaml, clever_hans.yaml, transformer.yaml;
run one with
`lit-explain fit --config configs/digits.yaml` and look with `tensorboard --logdir runs`.
A config that lists trainer.callbacks replaces the default callback (an ExplainCallback
first in its list keeps the default's analyzers where it names none).
"""


class ExplainCLI(LightningCLI):
    """LightningCLI with the digits demo and an ExplainCallback as defaults."""

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.set_defaults({
            "model": {"class_path": "lit_explain.demo.DigitsClassifier"},
            "data": {"class_path": "lit_explain.demo.DigitsDataModule"},
            "trainer.callbacks": DEFAULT_CALLBACKS,
        })


def main(args: list[str] | None = None) -> None:
    """Entry point of the ``lit-explain`` console script (``args``: instead of sys.argv)."""
    kwargs = {"description": DESCRIPTION, "epilog": EPILOG}
    ExplainCLI(L.LightningModule, L.LightningDataModule, subclass_mode_model=True,
               subclass_mode_data=True, args=args,
               parser_kwargs={**kwargs, "fit": kwargs, "validate": kwargs})


if __name__ == "__main__":
    main()
