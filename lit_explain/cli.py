"""``lit-explain``: a LightningCLI whose default model and data are the digits demo.

    lit-explain fit --config configs/digits.yaml
    lit-explain fit --trainer.max_epochs 3      # the demo with its defaults
"""

from __future__ import annotations

import lightning as L
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI


class ExplainCLI(LightningCLI):
    """LightningCLI with the digits demo as default model and data."""

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.set_defaults({
            "model": {"class_path": "lit_explain.demo.DigitsClassifier"},
            "data": {"class_path": "lit_explain.demo.DigitsDataModule"},
        })


def main(args: list[str] | None = None) -> None:
    """Entry point of the ``lit-explain`` console script (``args``: instead of sys.argv)."""
    ExplainCLI(L.LightningModule, L.LightningDataModule, subclass_mode_model=True,
               subclass_mode_data=True, args=args)


if __name__ == "__main__":
    main()
