"""Patterns fit during training: their quality and what collecting them costs.

Run: ``python benchmarks/patterns.py`` (CPU, about a minute; ``--help`` for options).
``python benchmarks/patterns.py --scale`` prints only the scale of both analyzers' maps on
the test zoo's ``resnet18`` and ``unet`` (``docs/patterns.md``).

1. **Quality.** The digits demo trains with ``PatternCallback(source="train")`` and
   ``PatternCallback(source="val")``; after the last epoch, an exact offline fit
   (``PatternComputer(model).fit(train set)``, eval mode, final weights) is the reference.
   Per kernel layer: the cosine between the flattened patterns, and the median over
   neurons of the per-neuron cosine.
2. **Overhead.** The time of one training step (forward, backward, Adam) on the demo model
   and data, plain and with the statistics collected (hooks attached, sums added), for
   several ``every_n_batches``. Steps alternate between the variants, so that load from
   other processes hits all variants alike; the typical step is the median over blocks of
   consecutive steps (whole collection cycles) of the mean step.
"""

from __future__ import annotations

import argparse
import math
import statistics
import time

import lightning as L
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from lit_explain.callbacks.patterns import PatternCallback
from lit_explain.demo import DigitsClassifier, DigitsDataModule
from lit_explain.patterns import PatternComputer


def cosines(a: torch.Tensor, b: torch.Tensor) -> tuple[float, float]:
    """Whole-layer cosine and median per-neuron cosine."""
    whole = F.cosine_similarity(a.flatten().double(), b.flatten().double(), dim=0).item()
    neurons = F.cosine_similarity(a.flatten(1).double(), b.flatten(1).double(), dim=1)
    return whole, neurons.median().item()


def quality(epochs: int, pattern_type: str, train_every: list[int]) -> None:
    L.seed_everything(0, verbose=False)
    data, model = DigitsDataModule(), DigitsClassifier()
    callbacks = {f"train, every {n}": PatternCallback(pattern_type, "train", every_n_batches=n)
                 for n in train_every}
    callbacks["val"] = PatternCallback(pattern_type, source="val")
    trainer = L.Trainer(max_epochs=epochs, callbacks=list(callbacks.values()), logger=False,
                        enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, accelerator="cpu", devices=1)
    trainer.fit(model, data)
    metrics = {k: round(v.item(), 3) for k, v in trainer.callback_metrics.items()}
    exact = PatternComputer(model, pattern_type).fit(
        DataLoader(data.train_set, batch_size=256), progress=False)
    print(f"\n## Quality: digits demo, {epochs} epochs, pattern_type={pattern_type!r} "
          f"(final {metrics})\n")
    print("Reference: exact offline fit on the training set with the final weights (eval "
          "mode). Each cell: whole-layer cosine / median per-neuron cosine. The train "
          "source's window is the last epoch; the val source's is the last validation run.\n")
    print("| layer | weight | " + " | ".join(callbacks) + " |")
    print("|---|---|" + "---|" * len(callbacks))
    for path, pattern in exact.items():
        cells = []
        for callback in callbacks.values():
            whole, neuron = cosines(callback.patterns[path], pattern)
            cells.append(f"{whole:.4f} / {neuron:.4f}")
        shape = "×".join(map(str, pattern.shape))
        print(f"| {path} | {shape} | " + " | ".join(cells) + " |")


def overhead(steps: int, pattern_type: str, every: list[int], threads: int) -> None:
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    data = DigitsDataModule(batch_size=64)
    data.setup()
    batches = [b for b in DataLoader(data.train_set, batch_size=64, shuffle=True,
                                     drop_last=True)]
    variants: dict[str, tuple[torch.nn.Module, torch.optim.Optimizer, PatternComputer | None,
                              int]] = {}
    for n in [0, *every]:
        model = DigitsClassifier().net
        optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
        computer = PatternComputer(model, pattern_type) if n else None
        variants["plain" if n == 0 else f"every_n_batches={n}"] = (model, optimizer, computer, n)
    times: dict[str, list[float]] = {name: [] for name in variants}

    def step(model, optimizer, computer, n, index, x, y) -> float:
        start = time.perf_counter()
        handle = computer.attach() if computer is not None and index % n == 0 else None
        loss = F.cross_entropy(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if handle is not None:
            handle.remove()
        return time.perf_counter() - start

    for index in range(steps + 20):
        x, y = batches[index % len(batches)]
        for name, (model, optimizer, computer, n) in variants.items():
            elapsed = step(model, optimizer, computer, n, index, x, y)
            if index >= 20:  # warm-up
                times[name].append(elapsed)
    print(f"\n## Overhead: training step of the digits CNN, batch 64, CPU, {threads} thread(s), "
          f"{steps} steps per variant, pattern_type={pattern_type!r}\n")
    # block means over whole cycles of every every_n_batches, then the median block: robust
    # to load spikes from other processes, fair to variants that collect on some steps only
    block = math.lcm(*every)
    block *= max(1, 20 // block)
    def typical(values: list[float]) -> float:
        blocks = [statistics.fmean(values[i:i + block])
                  for i in range(0, len(values) - block + 1, block)]
        return statistics.median(blocks)

    plain = typical(times["plain"])
    print(f"Step time: median over blocks of {block} consecutive steps of the mean step.\n")
    print("| variant | step (ms) | overhead |")
    print("|---|---|---|")
    for name, values in times.items():
        value = typical(values)
        print(f"| {name} | {value * 1e3:.3f} | {value / plain - 1:+.1%} |")


def scale(names: list[str]) -> None:
    """max |map| / max |x| and ‖map‖ / ‖x‖ of both analyzers on zoo models (tests/zoo.py)."""
    import sys
    from pathlib import Path

    import lit_explain as lx

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from zoo import ZOO

    print("| model | analyzer | max abs(map) / max abs(x) | norm(map) / norm(x) |")
    print("|---|---|---|---|")
    for name in names:
        model, x = ZOO[name]()
        generator = torch.Generator().manual_seed(1)
        data = torch.randn(64, *x.shape[1:], generator=generator) * x.std() + x.mean()
        patterns = PatternComputer(model).fit(data.split(16), progress=False)
        for analyzer in ("pattern.net", "pattern.attribution"):
            result = lx.create_analyzer(analyzer, model, patterns=patterns,
                                        scale_check="off").analyze(x)
            print(f"| {name} | {analyzer} | {(result.abs().max() / x.abs().max()).item():.3g}"
                  f" | {(result.norm() / x.norm()).item():.3g} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--pattern-type", default="relu")
    parser.add_argument("--train-every", type=int, nargs="+", default=[1, 10],
                        help="every_n_batches of the train-source callbacks (one fit)")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--every", type=int, nargs="+", default=[1, 4, 10])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--skip-quality", action="store_true")
    parser.add_argument("--scale", nargs="*", metavar="MODEL",
                        help="only print the map scale on these zoo models "
                             "(default: resnet18 unet)")
    args = parser.parse_args()
    if args.scale is not None:
        scale(args.scale or ["resnet18", "unet"])
        return
    if not args.skip_quality:
        quality(args.epochs, args.pattern_type, args.train_every)
    overhead(args.steps, args.pattern_type, args.every, args.threads)


if __name__ == "__main__":
    main()
