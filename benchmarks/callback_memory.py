"""Does memory stay flat while ``ExplainCallback`` runs every epoch? RSS over 30 epochs.

    python benchmarks/callback_memory.py [--epochs 30] [--analyzers gradient ...] [--no-explain]

Trains the digits demo (``DigitsClassifier``, ``DigitsDataModule``, TensorBoard logging)
with ``ExplainCallback`` configured as in ``configs/digits.yaml`` (six analyzers on 8 probe
digits, pixel flipping, sparseness and drift every epoch; ``--analyzers`` replaces the
analyzers), and records after each epoch the process's current
resident set size (``/proc/self/statm``, Linux) and its peak (``resource.getrusage``,
``ru_maxrss``). Printed: the per-epoch table, the first and last values, and the
least-squares slope of each series in KiB per epoch, over all epochs and over the second
half (after allocator caches have filled). A leak that keeps a map, an image or a graph per
epoch shows as a steady positive slope; a flat run has a slope near 0 and ends where it
started. ``--no-explain`` gives the same numbers without the callback, for comparison.
"""

from __future__ import annotations

import argparse
import os
import resource
import tempfile
from pathlib import Path
from typing import Any

import lightning as L
import yaml
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import TensorBoardLogger

import lit_explain as lx
from lit_explain.demo import DigitsClassifier, DigitsDataModule

PAGE_KIB = os.sysconf("SC_PAGE_SIZE") / 1024
ROOT = Path(__file__).resolve().parents[1]


def digits_yaml_options() -> dict[str, Any]:
    """``ExplainCallback``'s arguments in ``configs/digits.yaml`` (the main job)."""
    config = yaml.safe_load((ROOT / "configs" / "digits.yaml").read_text())
    (explain,) = [c for c in config["trainer"]["callbacks"]
                  if c["class_path"].endswith("ExplainCallback")]
    return explain["init_args"]


def current_rss_kib() -> float:
    """Resident set size now, from /proc/self/statm (second field, in pages)."""
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * PAGE_KIB


def peak_rss_kib() -> float:
    """Peak resident set size of this process so far (Linux reports ru_maxrss in KiB)."""
    return float(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)


class MemoryRecorder(Callback):
    """Current and peak RSS after every training epoch (validation and analysis included)."""

    def __init__(self) -> None:
        self.current: list[float] = []
        self.peak: list[float] = []

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.current.append(current_rss_kib())
        self.peak.append(peak_rss_kib())


def slope(values: list[float]) -> float:
    """Least-squares slope of ``values`` against their index (units per epoch)."""
    n = len(values)
    if n < 2:
        return 0.0
    mean_x, mean_y = (n - 1) / 2, sum(values) / n
    covariance = sum((i - mean_x) * (v - mean_y) for i, v in enumerate(values))
    return covariance / sum((i - mean_x) ** 2 for i in range(n))


def main(argv: list[str] | None = None) -> MemoryRecorder:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--analyzers", nargs="+", default=None,
                        help="instead of configs/digits.yaml's analyzers")
    parser.add_argument("--no-explain", action="store_true", help="run without the callback")
    args = parser.parse_args(argv)

    L.seed_everything(0, verbose=False)
    recorder = MemoryRecorder()
    callbacks: list[Callback] = [recorder]
    options = digits_yaml_options()
    if args.analyzers:
        options["analyzers"] = args.analyzers
    if not args.no_explain:
        callbacks.insert(0, lx.ExplainCallback(**options))
    with tempfile.TemporaryDirectory() as root:
        trainer = L.Trainer(max_epochs=args.epochs, accelerator="cpu", devices=1,
                            logger=TensorBoardLogger(root, name="memory"), callbacks=callbacks,
                            enable_checkpointing=False, enable_progress_bar=False,
                            enable_model_summary=False)
        trainer.fit(DigitsClassifier(), DigitsDataModule())

    what = "without the callback" if args.no_explain else f"with ExplainCallback({options})"
    print(f"\ndigits demo, {args.epochs} epochs {what}\n")
    print("| epoch | current RSS (MiB) | peak RSS (MiB) |")
    print("|---:|---:|---:|")
    for epoch, (now, peak) in enumerate(zip(recorder.current, recorder.peak, strict=True)):
        print(f"| {epoch} | {now / 1024:.1f} | {peak / 1024:.1f} |")
    half = len(recorder.current) // 2
    print("\n| series | first (MiB) | last (MiB) | slope, all epochs (KiB/epoch) "
          "| slope, 2nd half (KiB/epoch) |")
    print("|---|---:|---:|---:|---:|")
    for name, series in (("current RSS", recorder.current), ("peak RSS", recorder.peak)):
        print(f"| {name} | {series[0] / 1024:.1f} | {series[-1] / 1024:.1f} "
              f"| {slope(series):+.1f} | {slope(series[half:]):+.1f} |")
    return recorder


if __name__ == "__main__":
    main()
