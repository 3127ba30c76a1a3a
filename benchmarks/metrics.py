"""Benchmark: region perturbation, lit_explain vs Quantus, on the same inputs and options.

64 synthetic 3x32x32 images, a small CNN, input x gradient maps (channel-summed), 3x3
regions (an 11x11 grid: 32 is padded by one row/column after, as both libraries do), 100
steps, most relevant first, regions replaced by 0, logits (no softmax).

Where the definitions agree (grid regions, zero padding of the map, region sums, the same
baseline and target), both give the curve ``f(x) - f(x^(k))``: Quantus returns it per
sample for ``k = 1..100``, lit_explain keeps the mean curve ``f(x^(k))`` for ``k = 0..100``.
The script prints the largest difference between the two mean curves.

``--localization`` times the localization metrics instead: 256 images 3x64x64 with
one-channel signed maps and box/blob masks, relevance mass and rank accuracy, the pointing
game, attribution localisation and top-k intersection (k=200), each against Quantus's class
of the same name (per-sample scores; largest difference and time ratio per metric).

Run (Quantus is optional and imported lazily; keep it out of the main environment)::

    PYTHONPATH=/work/main .venv-compare/bin/python benchmarks/metrics.py
    PYTHONPATH=/work/main .venv-compare/bin/python benchmarks/metrics.py --localization
    PYTHONPATH=/work/main .venv/bin/python benchmarks/metrics.py     # ours only
"""

from __future__ import annotations

import argparse
import importlib.metadata
import importlib.util
import sys
import time

import numpy as np
import torch
from torch import nn


def _import_metrics():
    """Import lit_explain.metrics; hide a metadata-less torchvision stub from torchmetrics.

    The comparison environment may carry a stand-in ``torchvision`` package (no real build
    matches its torch) that torchmetrics would take for the real one and fail to import
    ``torchvision.transforms`` from. It is hidden only while torchmetrics is imported.
    """
    stub = False
    if "torchvision" not in sys.modules and importlib.util.find_spec("torchvision"):
        try:
            importlib.metadata.version("torchvision")
        except importlib.metadata.PackageNotFoundError:
            stub = True
    if stub:
        sys.modules["torchvision"] = None  # find_spec() -> None while torchmetrics loads
    try:
        from lit_explain.metrics import RegionPerturbation
    finally:
        if stub:
            del sys.modules["torchvision"]
    return RegionPerturbation


RegionPerturbation = _import_metrics()
import lit_explain.metrics as lm  # noqa: E402  (after the torchvision guard above)

#: Our metric (name, options) and Quantus's class name with its options, per row.
LOCALIZATION = [
    ("relevance_mass_accuracy", {}, "RelevanceMassAccuracy", {}),
    ("relevance_rank_accuracy", {}, "RelevanceRankAccuracy", {}),
    ("pointing_game", {}, "PointingGame", {}),
    ("attribution_localisation", {"absolute": True}, "AttributionLocalisation", {}),
    ("top_k_intersection", {"k": 200}, "TopKIntersection", {"k": 200}),
]


def localization_benchmark(args: argparse.Namespace, device: torch.device) -> None:
    """Time the localization metrics against Quantus on the same maps and masks."""
    rng = np.random.default_rng(0)
    n, side = args.n, 64
    x = rng.random((n, 3, side, side)).astype(np.float32)
    a = rng.normal(size=(n, 1, side, side)).astype(np.float32)
    s = np.zeros((n, 1, side, side), dtype=np.float32)
    for i in range(n):
        y0, x0 = rng.integers(0, side - 8, size=2)
        h, w = rng.integers(4, 32, size=2)
        s[i, 0, y0 : y0 + h, x0 : x0 + w] = 1
    a_t, s_t = torch.from_numpy(a).to(device), torch.from_numpy(s).to(device)
    try:
        import quantus
    except Exception as err:  # noqa: BLE001 - any import failure means "not available"
        print(f"Quantus not importable ({type(err).__name__}: {err}); timing ours only.")
        quantus = None
    print(f"\nlocalization: {n} images 3x{side}x{side}, maps 1x{side}x{side}, {device}, "
          f"{torch.get_num_threads()} threads, best of {args.repeats}")
    print(f"| {'metric':<26} | {'ours s':>8} | {'Quantus s':>9} | {'ratio':>6} | "
          f"{'max |diff|':>10} |")
    print(f"|{'-' * 28}|{'-' * 10}|{'-' * 11}|{'-' * 8}|{'-' * 12}|")
    total_ours = total_theirs = 0.0
    for name, ours_kwargs, theirs_name, theirs_kwargs in LOCALIZATION:
        def ours(name=name, kwargs=ours_kwargs) -> torch.Tensor:
            metric = lm.create_metric(name, **kwargs).to(device)
            metric.update(a_t, s_t)
            return metric.compute()

        ours()  # warm-up
        t_ours, _ = best_of(ours, args.repeats)
        got = lm.create_metric(name, **ours_kwargs).per_sample(a_t, s_t)  # for the comparison
        total_ours += t_ours
        row = f"| {name:<26} | {t_ours:>8.4f} |"
        if quantus is None:
            print(row + f" {'-':>9} | {'-':>6} | {'-':>10} |")
            continue
        metric = getattr(quantus, theirs_name)(disable_warnings=True, display_progressbar=False,
                                               **theirs_kwargs)

        def theirs(metric=metric) -> np.ndarray:
            return np.asarray(metric(model=None, x_batch=x, y_batch=np.zeros(n, dtype=int),
                                     a_batch=a.astype(np.float64), s_batch=s,
                                     batch_size=n), dtype=np.float64)

        t_q, expected = best_of(theirs, args.repeats)
        total_theirs += t_q
        diff = float(np.abs(got.cpu().numpy() - expected).max())
        print(row + f" {t_q:>9.4f} | {t_q / t_ours:>5.1f}x | {diff:>10.2e} |")
    if quantus is not None:
        print(f"all five: ours {total_ours:.4f} s, Quantus {total_theirs:.4f} s, "
              f"speed ratio (Quantus / ours) {total_theirs / total_ours:.1f}x")


def small_cnn(classes: int = 10) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(32 * 8 * 8, classes),
    ).eval()


def input_x_gradient(model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Channel-summed input x gradient of the predicted class, and the predicted class."""
    x = x.clone().requires_grad_(True)
    out = model(x)
    target = out.argmax(1)
    (grad,) = torch.autograd.grad(out.gather(1, target[:, None]).sum(), x)
    return (grad * x).sum(1, keepdim=True).detach(), target


def best_of(fn, repeats: int) -> tuple[float, object]:
    times, result = [], None
    for _ in range(repeats):
        tic = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - tic)
    return min(times), result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=64)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--region", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--localization", action="store_true",
                        help="time the localization metrics (default --n 256) instead")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if args.localization:
        if args.n == parser.get_default("n"):
            args.n = 256
        localization_benchmark(args, device)
        return

    model = small_cnn().to(device)
    x = torch.rand(args.n, 3, 32, 32, generator=torch.Generator().manual_seed(0)).to(device)
    a, target = input_x_gradient(model, x)

    def ours() -> torch.Tensor:
        m = RegionPerturbation(
            model,
            region_shape=args.region,
            steps=args.steps,
            order="morf",
            perturbation=0.0,
            softmax=False,
            batch_size=args.batch_size,
        ).to(device)
        m.update(x, a, target)
        m.compute()
        return m.curve()

    ours()  # warm-up
    t_ours, curve = best_of(ours, args.repeats)
    drop_ours = (curve[0] - curve[1:]).cpu().numpy()

    # The floor for any implementation: the model alone on the same (steps + 1) * n inputs.
    inputs = x.repeat(args.steps + 1, 1, 1, 1)

    @torch.no_grad()
    def model_only() -> None:
        for s in range(0, inputs.shape[0], args.batch_size):
            model(inputs[s : s + args.batch_size])

    t_floor, _ = best_of(model_only, args.repeats)
    rows = [
        ("lit_explain RegionPerturbation", t_ours),
        (f"model alone on {inputs.shape[0]} inputs (floor)", t_floor),
    ]
    diff = ratio = None
    try:
        import quantus
    except Exception as err:  # noqa: BLE001 - any import failure means "not available"
        print(f"Quantus not importable ({type(err).__name__}: {err}); comparison skipped.")
        print("Install it in a separate environment: pip install quantus")
        quantus = None
    if quantus is not None:
        metric = quantus.RegionPerturbation(
            patch_size=args.region,
            regions_evaluation=args.steps,
            order="morf",
            perturb_baseline=0.0,
            abs=False,
            normalise=False,
            disable_warnings=True,
            display_progressbar=False,
        )
        xs, ys, as_ = x.cpu().numpy(), target.cpu().numpy(), a.cpu().numpy()

        def theirs() -> np.ndarray:
            scores = metric(
                model=model,
                x_batch=xs,
                y_batch=ys,
                a_batch=as_,
                softmax=False,
                device=str(device),
                channel_first=True,
                batch_size=args.n,
            )
            return np.asarray(scores)

        t_q, scores = best_of(theirs, args.repeats)
        rows.append((f"Quantus {quantus.__version__} RegionPerturbation", t_q))
        diff = float(np.abs(scores.mean(0) - drop_ours).max())
        ratio = t_q / t_ours

    print()
    print(
        f"region perturbation: {args.n} images 3x32x32, {args.steps} steps, "
        f"{args.region}x{args.region} regions, {device}, {torch.get_num_threads()} threads, "
        f"best of {args.repeats}"
    )
    print(f"| {'implementation':<40} | {'seconds':>8} |")
    print(f"|{'-' * 42}|{'-' * 10}|")
    for name, t in rows:
        print(f"| {name:<40} | {t:>8.3f} |")
    if ratio is not None:
        print(f"speed ratio (Quantus / ours): {ratio:.1f}x")
        print(f"share of Quantus's time the model forward alone needs: {t_floor / t_q:.0%}")
        print(f"max |mean curve difference| over {args.steps} steps: {diff:.2e}")
        print(f"(curve scale: f(x) - f(x^(k)) up to {np.abs(drop_ours).max():.3f})")


if __name__ == "__main__":
    main()
