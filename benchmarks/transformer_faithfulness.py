"""Faithfulness of AttnLRP, CP-LRP and the gradient family on the trained transformer examples.

Trains the two transformer examples with a fixed seed, in plain PyTorch loops (Adam, the
examples' models, data and learning rates, fewer epochs), then scores each analyzer's maps of
held-out samples by the area over the perturbation curve (AOPC, Samek et al. 2017; higher is
better) with the most relevant positions perturbed first (MoRF), and, for reference, least
relevant first (LeRF, lower is better):

- **ViT on the digits** (``examples/vit_digits.py``: :class:`lit_explain.demo.ViTDigitsClassifier`,
  dim 32, 4 heads, 2 blocks): pixel flipping, ``PixelFlipping(steps=None)``: all 64 pixels,
  one per step, replaced by 0 (the digits' background), logit of the predicted class.
- **Text transformer** (``examples/text_transformer.py``: :class:`lit_explain.demo.TextTransformer`
  on the seeded synthetic sentiment task): token deletion,
  ``PixelFlipping(mask_token_id=0)``: all 16 positions, one token per step, replaced by the
  padding id (which the model masks out), logit of the predicted class.

Analyzers (each explains the predicted class): AttnLRP (``lrp.epsilon``, ε = 1e-6, as in the
examples), CP-LRP (the same with ``attention_rule="cp"``), Input×Gradient, gradient (signed,
iNNvestigate's default), Integrated Gradients (32 steps, zero reference; for tokens the zero
embedding) and ``random`` (seeded Gaussian noise). Token maps are one value per token (the
analyses start at the embedding's output and sum over it). ``±`` is the standard error of the
mean over the samples. The numbers are deterministic for a seed (CPU); the run takes
1.5 to 3 minutes on two CPU cores, almost all of it in the perturbation curves' model calls::

    python benchmarks/transformer_faithfulness.py [--threads 2] [--samples 256] [--seed 0]
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset

import lit_explain as lx
from lit_explain.demo import DigitsDataModule, TextTransformer, ViTDigitsClassifier
from lit_explain.metrics import PixelFlipping

ANALYZERS = {
    "AttnLRP (lrp.epsilon)": ("lrp.epsilon", {"epsilon": 1e-6}),
    "CP-LRP (lrp.epsilon, cp)": ("lrp.epsilon", {"epsilon": 1e-6, "attention_rule": "cp"}),
    "Input×Gradient": ("input_t_gradient", {}),
    "gradient": ("gradient", {}),
    "Integrated Gradients (32)": ("integrated_gradients", {"steps": 32}),
    "random": ("random", {"seed": 0}),
}
EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def load_example(name: str):
    """``examples/<name>.py`` as a module (``examples/`` is not a package)."""
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def train(model: nn.Module, loader: DataLoader, epochs: int, learning_rate: float) -> nn.Module:
    """Adam on the cross-entropy, as the examples' ``Classifier`` does; returns it in eval."""
    optimizer = torch.optim.Adam(model.parameters(), lr=learning_rate)
    model.train()
    for _ in range(epochs):
        for x, y in loader:
            optimizer.zero_grad()
            F.cross_entropy(model(x), y).backward()
            optimizer.step()
    return model.eval()


@torch.no_grad()
def accuracy(model: nn.Module, x: Tensor, y: Tensor) -> float:
    return float((model(x).argmax(1) == y).float().mean())


def aopc_table(model: nn.Module, x: Tensor, metric: dict) -> dict[str, dict[str, Tensor]]:
    """Per analyzer: per-sample MoRF and LeRF AOPCs ``(N,)``."""
    rows = {}
    for label, (name, kwargs) in ANALYZERS.items():
        maps = lx.create_analyzer(name, model, **kwargs).analyze(x)
        row = {}
        for order in ("morf", "lerf"):
            curves = PixelFlipping(model, order=order, **metric).sample_curves(x, maps)
            row[order] = (curves[:, :1] - curves).mean(1)  # per-sample AOPC
        rows[label] = row
    return rows


def print_table(title: str, rows: dict[str, dict[str, Tensor]]) -> None:
    print(f"\n{title}")
    print("| analyzer | AOPC MoRF ↑ | AOPC LeRF ↓ | MoRF − LeRF ↑ |")
    print("|---|---:|---:|---:|")
    for label, row in rows.items():
        cells = []
        for values in (row["morf"], row["lerf"], row["morf"] - row["lerf"]):
            sem = values.std() / len(values) ** 0.5
            cells.append(f"{float(values.mean()):.3f} ± {float(sem):.3f}")
        print(f"| {label} | " + " | ".join(cells) + " |")


def vit_digits(args: argparse.Namespace) -> None:
    torch.manual_seed(args.seed)
    data = DigitsDataModule(batch_size=64, seed=args.seed)  # the example's split
    data.setup()
    model = ViTDigitsClassifier(dim=32, heads=4, depth=2, learning_rate=3e-3)  # the example's
    started = time.perf_counter()
    train(model, data.train_dataloader(), args.vit_epochs, model.learning_rate)
    trained = time.perf_counter() - started
    x, y = data.val_set.tensors
    print(f"\nViT on the digits: {args.vit_epochs} epochs in {trained:.0f} s, validation "
          f"accuracy {accuracy(model, x, y):.3f} ({len(x)} images)")
    x = x[:args.samples]
    print_table(f"Pixel flipping (64 pixels -> 0, one per step), {len(x)} validation digits",
                aopc_table(model, x, {}))


def text_transformer(args: argparse.Namespace) -> None:
    example = load_example("text_transformer")
    torch.manual_seed(args.seed)
    model = TextTransformer(vocabulary=example.VOCABULARY, length=example.LENGTH)  # as there
    tokens, labels = example.make_sentences(args.num_train, args.seed)
    loader = DataLoader(TensorDataset(tokens, labels), batch_size=64, shuffle=True)
    started = time.perf_counter()
    train(model, loader, args.text_epochs, model.learning_rate)
    trained = time.perf_counter() - started
    x, y = example.make_sentences(args.samples, args.seed + 1)  # the example's validation set
    print(f"\nText transformer: {args.text_epochs} epochs of {args.num_train} sentences in "
          f"{trained:.0f} s, validation accuracy {accuracy(model, x, y):.3f} ({len(x)} "
          f"sentences)")
    print_table(f"Token deletion (16 positions -> padding id 0, one per step), {len(x)} "
                f"validation sentences", aopc_table(model, x, {"mask_token_id": 0}))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--samples", type=int, default=256, help="explained samples per model")
    parser.add_argument("--vit-epochs", type=int, default=15)
    parser.add_argument("--text-epochs", type=int, default=6)
    parser.add_argument("--num-train", type=int, default=2048, help="training sentences")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    print(f"torch {torch.__version__}, {args.threads} threads, seed {args.seed}")
    vit_digits(args)
    text_transformer(args)
    print(f"\ntotal {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
