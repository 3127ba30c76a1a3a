"""What the example scripts share: their command-line options and their training run."""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence

import lightning as L
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import TensorBoardLogger


def batch_limit(text: str) -> int | float:
    """Lightning's convention: an int is a number of batches, a float a fraction."""
    return float(text) if "." in text else int(text)


def example_parser(description: str, max_epochs: int, num_samples: int = 8
                   ) -> argparse.ArgumentParser:
    """The options every example takes: epochs, batch limits, probe samples, log root, seed."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--max-epochs", type=int, default=max_epochs)
    parser.add_argument("--limit-train-batches", type=batch_limit, default=1.0,
                        help="batches per epoch: a number (2) or a fraction (0.5)")
    parser.add_argument("--limit-val-batches", type=batch_limit, default=1.0)
    parser.add_argument("--num-samples", type=int, default=num_samples,
                        help="probe samples to explain")
    parser.add_argument("--save-dir", default="runs", help="TensorBoard log root")
    parser.add_argument("--seed", type=int, default=0)
    return parser


def fit_example(model: L.LightningModule, data: L.LightningDataModule,
                args: argparse.Namespace, name: str, callbacks: Sequence[Callback],
                what: str, log_every_n_steps: int = 5, accelerator: str = "auto") -> str:
    """Train with TensorBoard logging, say where ``what`` was logged; return the log dir."""
    logger = TensorBoardLogger(args.save_dir, name=name)
    trainer = L.Trainer(max_epochs=args.max_epochs, accelerator=accelerator, devices=1,
                        logger=logger, callbacks=list(callbacks),
                        log_every_n_steps=log_every_n_steps,
                        limit_train_batches=args.limit_train_batches,
                        limit_val_batches=args.limit_val_batches, enable_checkpointing=False)
    trainer.fit(model, data)
    log_dir = os.path.abspath(logger.log_dir)
    print(f"\nExplanations of {what} were logged to {log_dir}\n"
          f"Look at them with:  tensorboard --logdir {os.path.abspath(args.save_dir)}  "
          f"(IMAGES tab, tags explain/*)")
    return log_dir
