"""The digits demo as a plain Python script: a small CNN explained while it learns.

What it shows
-------------
A 4-layer CNN (:func:`lit_explain.demo.digits_cnn`) learns scikit-learn's 8×8 handwritten
digits (shipped with scikit-learn, no download). An :class:`lit_explain.ExplainCallback`
keeps 8 validation digits (stratified over the classes) as probe samples and, after every
validation epoch, explains them with the gradient (Simonyan et al. 2014), Guided Backprop
(Springenberg et al. 2015), Integrated Gradients (Sundararajan et al. 2017), LRP-ε and LRP
preset A (Bach et al. 2015; Kotikalapudi et al. 2019) and DeepLIFT (Shrikumar et al. 2017);
it scores each analyzer's maps with pixel flipping (Samek et al. 2017) and sparseness
(Chalasani et al. 2020), and tracks how much they drift from epoch to epoch. The same run
as ``lit-explain fit --config configs/digits.yaml``, written out as a script. Early epochs
give noisy maps; as accuracy climbs the LRP maps settle on the strokes that tell one digit
from another, and the drift curves flatten.

How to look at it
-----------------
::

    python examples/digits_demo.py                  # about 20 s on two CPU cores
    tensorboard --logdir runs                       # then open the IMAGES tab

``explain/all`` is one grid per epoch (rows: samples, with true/predicted label; columns:
the input, then one heatmap per analyzer; red = evidence for the predicted class, blue =
against it); ``explain/<analyzer>`` holds one column each, ``explain/<analyzer>/drift`` and
``explain/<analyzer>/pixel_flipping_curve`` are plots. The SCALARS tab has the metric and
drift values per epoch. Drag the step slider above an image to watch the explanations
change while the model trains.
"""

from __future__ import annotations

import argparse
import os

import lightning as L
from lightning.pytorch.loggers import TensorBoardLogger

import lit_explain as lx
from lit_explain.demo import DigitsClassifier, DigitsDataModule

ANALYZERS = ["gradient", "guided_backprop", "integrated_gradients", "lrp.epsilon",
             "lrp.sequential_preset_a", "deep_lift"]
METRICS = {"pixel_flipping": {"steps": 32}, "sparseness": {}}


def _limit(text: str) -> int | float:
    """Lightning's convention: an int is a number of batches, a float a fraction."""
    return float(text) if "." in text else int(text)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--max-epochs", type=int, default=8)
    parser.add_argument("--limit-train-batches", type=_limit, default=1.0,
                        help="batches per epoch: a number (2) or a fraction (0.5)")
    parser.add_argument("--limit-val-batches", type=_limit, default=1.0)
    parser.add_argument("--num-samples", type=int, default=8, help="probe samples to explain")
    parser.add_argument("--save-dir", default="runs", help="TensorBoard log root")
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> str:
    """Train and explain; return the TensorBoard log directory of the run."""
    args = parse_args(argv)
    L.seed_everything(args.seed, verbose=False)
    model = DigitsClassifier(channels=16, learning_rate=3e-3)
    data = DigitsDataModule(batch_size=64)
    logger = TensorBoardLogger(args.save_dir, name="digits_demo")
    explain = lx.ExplainCallback(analyzers=ANALYZERS, num_samples=args.num_samples,
                                 sample_selection="stratified", metrics=METRICS,
                                 drift=["previous", "first"], class_names=data.class_names)
    trainer = L.Trainer(max_epochs=args.max_epochs, accelerator="auto", devices=1,
                        logger=logger, callbacks=[explain], log_every_n_steps=5,
                        limit_train_batches=args.limit_train_batches,
                        limit_val_batches=args.limit_val_batches,
                        enable_checkpointing=False)
    trainer.fit(model, data)
    log_dir = os.path.abspath(logger.log_dir)
    print(f"\nExplanations of {args.num_samples} validation digits were logged to {log_dir}\n"
          f"Look at them with:  tensorboard --logdir {os.path.abspath(args.save_dir)}  "
          f"(IMAGES tab, tags explain/*)")
    return log_dir


if __name__ == "__main__":
    main()
