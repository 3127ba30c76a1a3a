"""Clever Hans in training: watch a model come to rely on a watermark, and a control not.

What it shows
-------------
Lapuschkin et al. ("Unmasking Clever Hans predictors and assessing what machines really
learn", Nature Communications 2019) found, with LRP, a classifier that recognised horses
by a copyright tag. Here the same shortcut is planted in the 8×8 digits
(:class:`lit_explain.demo.CleverHansDigits`): a 2×2 bright patch in the bottom-right
corner on 95% of the eights and 2% of the other digits, in training and validation alike.
The control run stamps as many images, independently of the label. Both runs train the same
CNN with an :class:`lit_explain.ExplainCallback` that explains 16 watermarked validation
images every epoch with LRP (preset A), the gradient and Integrated Gradients and logs the
watermark's share of the relevance, ``explain/<analyzer>/relevance_mass_accuracy`` (the
relevance mass of the watermark mask; ``|R|``, so that evidence against counts too), plus
the pointing game (how often the map's maximum lies on the watermark). At the end the
script prints those shares per epoch, and each model's accuracy on the validation images
with the watermark removed: the confounded model's eights are then mostly missed, the
control's are not.

How to look at it
-----------------
::

    python examples/clever_hans.py                  # 2.5 min measured on two busy CPU cores
    tensorboard --logdir runs                       # SCALARS: filter "relevance_mass"

TensorBoard draws the runs ``clever_hans/confounded`` and ``clever_hans/control`` side by
side; the IMAGES tab shows the heatmaps with the watermark outlined in green.
"""

from __future__ import annotations

import glob
import os

import lightning as L
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

import lit_explain as lx
from lit_explain.demo import CleverHansDigits, DigitsClassifier
from lit_explain.demo.runs import example_parser, fit_example

ANALYZERS = ["lrp.sequential_preset_a", "gradient", "integrated_gradients"]
SHARE = "relevance_mass_accuracy"
METRICS = {SHARE: {"values": "abs"}, "pointing_game": {}}
RUNS = {"confounded": True, "control": False}


def watermark_shares(log_dir: str) -> dict[str, list[float]]:
    """Analyzer -> the watermark's relevance share per explained epoch, from the event file."""
    (event_file,) = glob.glob(os.path.join(log_dir, "events.out.tfevents.*"))
    events = EventAccumulator(event_file)
    events.Reload()
    return {a: [e.value for e in events.Scalars(f"explain/{a}/{SHARE}")] for a in ANALYZERS}


@torch.no_grad()
def clean_accuracy(model: L.LightningModule, data: CleverHansDigits) -> tuple[float, float]:
    """Accuracy on the validation images without watermark: all of them, and the class's."""
    x, y = data.val_clean.tensors
    predicted = model.eval()(x.to(model.device)).argmax(1).cpu()
    right = predicted == y
    return float(right.float().mean()), float(right[y == data.watermark_class].float().mean())


def main(argv: list[str] | None = None) -> dict[str, dict]:
    """Train both runs; return ``{run: {"log_dir", "shares", "clean_accuracy", ...}}``."""
    parser = example_parser(__doc__.split("\n")[0], max_epochs=8, num_samples=16)
    args = parser.parse_args(argv)
    results: dict[str, dict] = {}
    for run, confounded in RUNS.items():
        L.seed_everything(args.seed, verbose=False)
        model = DigitsClassifier(channels=16, learning_rate=3e-3)
        data = CleverHansDigits(confounded=confounded, seed=args.seed)
        explain = lx.ExplainCallback(analyzers=ANALYZERS, num_samples=args.num_samples,
                                     mask_key=2, metrics=METRICS, drift=[],
                                     class_names=data.class_names)
        log_dir = fit_example(model, data, args, f"clever_hans/{run}", [explain],
                              f"{args.num_samples} watermarked validation digits ({run})")
        overall, of_class = clean_accuracy(model, data)
        results[run] = {"log_dir": log_dir, "shares": watermark_shares(log_dir),
                        "clean_accuracy": overall, "clean_class_accuracy": of_class}
    print("\nWatermark share of |relevance| on watermarked validation digits, per epoch "
          "(the watermark is 4 of 64 pixels):")
    for analyzer in ANALYZERS:
        for run in RUNS:
            shares = " ".join(f"{v:.3f}" for v in results[run]["shares"][analyzer])
            print(f"  {analyzer:<24} {run:<10} {shares}")
    print("Accuracy on validation digits with the watermark removed (all / eights):")
    for run in RUNS:
        print(f"  {run:<10} {results[run]['clean_accuracy']:.3f} / "
              f"{results[run]['clean_class_accuracy']:.3f}")
    return results


if __name__ == "__main__":
    main()
