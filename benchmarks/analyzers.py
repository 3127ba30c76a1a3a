"""Time every analyzer as a ratio to a plain forward + backward, in one process.

    python benchmarks/analyzers.py [--repeats 5] [--batch 16] [--size 64] [--only NAME ...]

The baseline is what a saliency map costs in plain PyTorch: one forward pass and one
``torch.autograd.grad`` of the selected logits to the input. Nets: a VGG-style CNN and a
torchvision-style ResNet (BatchNorm, F.relu, ``out += identity``), batch 16, 3×64×64.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
from torch import nn

import lit_explain as lx
from lit_explain.demo.models import ResNetStyle, vgg_style

#: Keyword arguments per analyzer; targets from the issues (ratio to forward + backward).
SETTINGS: dict[str, dict] = {
    "integrated_gradients": {"steps": 32},
    "smoothgrad": {"augment_by_n": 32},
}
TARGETS: dict[str, float] = {
    "gradient": 1.1, "input_t_gradient": 1.1, "deconvnet": 1.1, "guided_backprop": 1.1,
    "integrated_gradients": 14.0, "smoothgrad": 14.0,
}


def median_seconds(run: Callable[[], object], repeats: int) -> float:
    """Median wall time of ``run`` after one warm-up call."""
    run()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def plain_forward_backward(model: nn.Module, x: torch.Tensor) -> Callable[[], object]:
    """The baseline: forward, then the gradient of each sample's top logit w.r.t. x."""

    def run() -> torch.Tensor:
        inputs = x.detach().requires_grad_(True)
        logits = model(inputs)
        return torch.autograd.grad(logits.max(dim=1).values.sum(), inputs)[0]

    return run


def networks(size: int) -> dict[str, nn.Module]:
    torch.manual_seed(0)
    return {"vgg": vgg_style(image_size=size).eval(), "resnet": ResNetStyle().eval()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--only", nargs="*", default=None, help="analyzer names to time")
    args = parser.parse_args()

    x = torch.randn(args.batch, 3, args.size, args.size, generator=torch.Generator().manual_seed(1))
    nets = networks(args.size)
    baselines = {net: median_seconds(plain_forward_backward(model, x), args.repeats)
                 for net, model in nets.items()}
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, batch {args.batch}, "
          f"3x{args.size}x{args.size}")
    print("baseline forward+backward: " + ", ".join(
        f"{net} {seconds * 1e3:.1f} ms" for net, seconds in baselines.items()))
    print(f"{'analyzer':34s} {'vgg':>8s} {'resnet':>8s} {'target':>8s}")
    for name in args.only or sorted(lx.analyzers):
        ratios = []
        for net, model in nets.items():
            try:
                analyzer = lx.create_analyzer(name, model, **SETTINGS.get(name, {}))
                seconds = median_seconds(lambda a=analyzer: a.analyze(x), args.repeats)
                ratios.append(f"{seconds / baselines[net]:7.2f}x")
            except Exception as error:  # report and go on: a benchmark table, not a test
                ratios.append("   n/a  ")
                print(f"  ({name} on {net}: {type(error).__name__}: {error})")
        target = f"<= {TARGETS[name]:.1f}x" if name in TARGETS else ""
        print(f"{name:34s} {ratios[0]:>8s} {ratios[1]:>8s} {target:>8s}")


if __name__ == "__main__":
    main()
