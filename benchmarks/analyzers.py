"""Time every analyzer as a ratio to a plain forward + backward, in one process.

    python benchmarks/analyzers.py [--repeats 7] [--batch 16] [--size 64] [--threads 2]
                                   [--interleave] [--only NAME ...] [--device cuda]

The baseline is what a saliency map costs in plain PyTorch: one forward pass and one
``torch.autograd.grad`` of the selected logits to the input. Nets: a VGG-style CNN and a
torchvision-style ResNet (BatchNorm, F.relu, ``out += identity``), batch 16, 3×64×64, on
the CPU with ``--threads`` intra-op threads (2 by default, set before anything runs, so
that every row of the table and every comparison library runs on the same threads).
``--interleave`` times each analyzer alternately with the baseline and reports the ratio
of best times: use it on a shared or loaded machine. PyTorch's CPU tensors come from the
system allocator; with glibc's defaults every large tensor is a fresh mapping whose pages
the kernel zeroes on first touch, which makes the times vary by a third from run to run.
``MALLOC_MMAP_THRESHOLD_=1000000000 MALLOC_TRIM_THRESHOLD_=10000000000`` in the environment
keeps freed memory for reuse and makes the table reproducible (the README's is taken so).
``--device cuda`` runs everything on the GPU; each timed call then ends with
``torch.cuda.synchronize()``, so that the times are those of the finished work.

Where Zennit and Captum are importable, they are timed beside our analyzers in the same
run, against the same baseline:

- Zennit's composites beside the LRP analyzers with the same rules (``ZENNIT_COMPOSITES``).
  Our LRP analyzers merge each eval-mode BatchNorm into the kernel layer before it
  (canonization, on by default); Zennit gets its ``NamedMergeBatchNorm`` canonizer with
  the same (kernel layer, BatchNorm) pairs, found by tracing one forward pass, so that the
  comparison is like for like on the ResNet.
- Captum's attributions beside the gradient family (``CAPTUM_METHODS``), with the same
  points (32 for IG and SmoothGrad) and the same chunk size: ``internal_batch_size`` of
  IG and ``nt_samples_batch_size`` of SmoothGrad are set from the chunks our analyzer
  chooses (``points_per_chunk``). Captum's target neurons are computed outside the timed
  call; ours are chosen inside ``analyze`` (one gradient-free forward pass), so the
  comparison favours Captum slightly.

Install them in a separate environment so that they cannot change torch, and run there
with this checkout on the path. Zennit imports torchvision only to name torchvision's ResNet
blocks for its torchvision canonizers (unused here); where torchvision is missing, this
script registers a placeholder module for that import, after lit_explain (and torchmetrics,
which must not see it) are imported::

    python3 -m venv /work/venv-bench
    /work/venv-bench/bin/pip install torch==2.13.0 numpy matplotlib lightning torchmetrics
    /work/venv-bench/bin/pip install --no-deps captum==0.9.0 zennit==0.5.1 tqdm packaging
    PYTHONPATH=. /work/venv-bench/bin/python benchmarks/analyzers.py --interleave

In the main environment the comparison columns stay empty.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import types
from collections.abc import Callable

import torch
from torch import nn

import lit_explain as lx
from lit_explain.demo.models import ResNetStyle, vgg_style

#: Keyword arguments per analyzer; targets from issue 10 (ratio to forward + backward).
SETTINGS: dict[str, dict] = {
    "integrated_gradients": {"steps": 32},
    "smoothgrad": {"augment_by_n": 32},
    "deep_taylor.bounded": {"low": -5.0, "high": 5.0},
    "lrp": {"rule": "Epsilon"},
    "lrp.alpha_beta": {"alpha": 2.0},
}
TARGETS: dict[str, float] = {
    "gradient": 1.1, "input_t_gradient": 1.1, "deconvnet": 1.1, "guided_backprop": 1.1,
    "integrated_gradients": 34.0,
    "lrp.z": 1.1, "lrp.epsilon": 1.2, "lrp.sequential_preset_a": 1.6,
    "lrp.sequential_preset_b": 2.2, "lrp.alpha_2_beta_1": 2.2, "lrp.alpha_1_beta_0": 2.2,
    "lrp.alpha_beta": 2.2,
}

#: LRP analyzer → the Zennit composite with the same rules: Zennit's composite class, or
#: a rule for every Linear/Conv layer on top of Zennit's ``layer_map_base``.
ZENNIT_COMPOSITES: dict[str, str] = {
    "lrp.z": "Epsilon(1e-12) (all layers)",
    "lrp.epsilon": "Epsilon (all layers)",
    "lrp.z_plus": "ZPlus (all layers)",
    "lrp.alpha_2_beta_1": "AlphaBeta(2, 1) (all layers)",
    "lrp.alpha_1_beta_0": "AlphaBeta(1, 0) (all layers)",
    "lrp.w_square": "WSquare (all layers)",
    "lrp.flat": "Flat (all layers)",
    "lrp.sequential_preset_a": "EpsilonPlus",
    "lrp.sequential_preset_b": "EpsilonAlpha2Beta1",
    "lrp.sequential_preset_a_flat": "EpsilonPlusFlat",
    "lrp.sequential_preset_b_flat": "EpsilonAlpha2Beta1Flat",
}
#: Gradient-family analyzer → the Captum attribution doing the same work (same steps).
CAPTUM_METHODS: dict[str, str] = {
    "gradient": "Saliency", "input_t_gradient": "InputXGradient",
    "guided_backprop": "GuidedBackprop", "deconvnet": "Deconvolution",
    "integrated_gradients": "IntegratedGradients", "smoothgrad": "NoiseTunnel(Saliency)",
    "deep_lift": "DeepLift",
}


def batch_norm_pairs(model: nn.Module, x: torch.Tensor) -> list[tuple[tuple[str], str]]:
    """(kernel layer name, BatchNorm name) for every BatchNorm whose input is the output of
    a Conv/Linear module, found by tracing one forward pass (Zennit's ``name_map``)."""
    names = {module: name for name, module in model.named_modules()}
    produced_by: dict[int, str] = {}
    pairs: list[tuple[tuple[str], str]] = []

    def hook(module: nn.Module, args: tuple, output: torch.Tensor) -> None:
        if isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)):
            produced_by[id(output)] = names[module]
        elif isinstance(module, nn.modules.batchnorm._BatchNorm):
            kernel = produced_by.get(id(args[0]))
            if kernel is not None:
                pairs.append(((kernel,), names[module]))

    handles = [module.register_forward_hook(hook) for module in model.modules()]
    try:
        with torch.no_grad():
            model(x[:1])
    finally:
        for handle in handles:
            handle.remove()
    return pairs


def zennit_runner(name: str, model: nn.Module, x: torch.Tensor) -> Callable[[], object]:
    """A Zennit attribution with the rules of LRP analyzer ``name``, BatchNorm merged."""
    from zennit import composites, rules
    from zennit.attribution import Gradient
    from zennit.canonizers import NamedMergeBatchNorm
    from zennit.types import Convolution

    pairs = batch_norm_pairs(model, x)
    canonizers = [NamedMergeBatchNorm(pairs)] if pairs else []
    every_layer = {"lrp.z": lambda: rules.Epsilon(1e-12), "lrp.epsilon": rules.Epsilon,
                   "lrp.z_plus": rules.ZPlus, "lrp.w_square": rules.WSquare,
                   "lrp.flat": rules.Flat,
                   "lrp.alpha_2_beta_1": lambda: rules.AlphaBeta(2.0, 1.0),
                   "lrp.alpha_1_beta_0": lambda: rules.AlphaBeta(1.0, 0.0)}
    if name in every_layer:
        rule = every_layer[name]
        composite = composites.LayerMapComposite(
            composites.layer_map_base() + [(Convolution, rule()), (nn.Linear, rule())],
            canonizers=canonizers)
    else:
        composite = getattr(composites, ZENNIT_COMPOSITES[name])(canonizers=canonizers)

    def seed(output: torch.Tensor) -> torch.Tensor:  # the top logit's value, as in LRP
        return output * nn.functional.one_hot(output.argmax(1), output.shape[1])

    def run() -> torch.Tensor:
        with Gradient(model=model, composite=composite) as attributor:
            return attributor(x, seed)[1]

    return run


def captum_runner(name: str, model: nn.Module, x: torch.Tensor) -> Callable[[], object]:
    """The Captum attribution doing analyzer ``name``'s work: the same 32 points for IG and
    SmoothGrad, in chunks of the same size as ours (our analyzer's ``batch_size`` inputs)."""
    from captum import attr

    target = model(x).argmax(1)
    ours = lx.create_analyzer(name, model, **SETTINGS.get(name, {}))
    if name == "integrated_gradients":
        method = attr.IntegratedGradients(model)
        return lambda: method.attribute(x, target=target, n_steps=ours.steps,
                                        method="riemann_left",
                                        internal_batch_size=ours.points_per_chunk(x) * len(x))
    if name == "smoothgrad":
        method = attr.NoiseTunnel(attr.Saliency(model))
        per_chunk = ours.points_per_chunk(x)  # noisy copies of the batch per chunk
        return lambda: method.attribute(x, target=target, nt_samples=ours.augment_by_n,
                                        stdevs=0.1, abs=False, nt_samples_batch_size=per_chunk)
    method = getattr(attr, CAPTUM_METHODS[name])(model)
    kwargs = {"abs": False} if name == "gradient" else {}
    return lambda: method.attribute(x, target=target, **kwargs)


def importable(library: str) -> bool:
    if library == "zennit":
        torchvision_placeholder()
    try:
        __import__(library)
    except ImportError:
        return False
    return True


def torchvision_placeholder() -> None:
    """Let ``import zennit`` succeed without torchvision: a module with the two names that
    ``zennit.torchvision`` imports, registered only where torchvision is missing."""
    try:
        import torchvision  # noqa: F401
    except ImportError:
        resnet = types.ModuleType("torchvision.models.resnet")
        resnet.Bottleneck = type("Bottleneck", (nn.Module,), {})
        resnet.BasicBlock = type("BasicBlock", (nn.Module,), {})
        models = types.ModuleType("torchvision.models")
        models.resnet = resnet
        package = types.ModuleType("torchvision")
        package.models = models
        sys.modules.update({"torchvision": package, "torchvision.models": models,
                            "torchvision.models.resnet": resnet})


def comparison(name: str) -> tuple[str, Callable] | None:
    """(label, runner factory) of the library timed beside analyzer ``name``, if it imports."""
    for library, table, factory in (("zennit", ZENNIT_COMPOSITES, zennit_runner),
                                    ("captum", CAPTUM_METHODS, captum_runner)):
        if name in table and importable(library):
            return f"{library} {table[name]}", factory
    return None


def seconds(run: Callable[[], object]) -> float:
    """Wall time of one call of ``run``, its GPU work finished (where CUDA is in use)."""
    start = time.perf_counter()
    run()
    if torch.cuda.is_initialized():
        torch.cuda.synchronize()
    return time.perf_counter() - start


def median_seconds(run: Callable[[], object], repeats: int) -> float:
    """Median wall time of ``run`` after one warm-up call."""
    run()
    return statistics.median(seconds(run) for _ in range(repeats))


def interleaved_ratio(run: Callable[[], object], baseline: Callable[[], object],
                      repeats: int) -> float:
    """Best time of ``run`` over best time of ``baseline``, the two timed alternately, so
    that load from other processes hits both alike (``--interleave``)."""
    run(), baseline()
    best_run = best_baseline = float("inf")
    for _ in range(repeats):
        best_baseline = min(best_baseline, seconds(baseline))
        best_run = min(best_run, seconds(run))
    return best_run / best_baseline


def plain_forward_backward(model: nn.Module, x: torch.Tensor) -> Callable[[], object]:
    """The baseline: forward, then the gradient of each sample's top logit w.r.t. x."""

    def run() -> torch.Tensor:
        inputs = x.detach().requires_grad_(True)
        logits = model(inputs)
        return torch.autograd.grad(logits.max(dim=1).values.sum(), inputs)[0]

    return run


def training_step(model: nn.Module, x: torch.Tensor) -> Callable[[], object]:
    """For reference: a training step's forward + backward (input and every parameter)."""

    def run() -> tuple[torch.Tensor, ...]:
        inputs = x.detach().requires_grad_(True)
        logits = model(inputs)
        return torch.autograd.grad(logits.max(dim=1).values.sum(),
                                   [inputs, *model.parameters()])

    return run


def networks(size: int, device: torch.device) -> dict[str, nn.Module]:
    torch.manual_seed(0)
    return {"vgg": vgg_style(image_size=size).eval().to(device),
            "resnet": ResNetStyle().eval().to(device)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    parser.add_argument("--only", nargs="*", default=None, help="analyzer names to time")
    parser.add_argument("--interleave", action="store_true",
                        help="time each analyzer alternately with the baseline and report the "
                             "ratio of best times (robust on a shared, loaded machine)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    device = torch.device(args.device)
    x = torch.randn(args.batch, 3, args.size, args.size,
                    generator=torch.Generator().manual_seed(1)).to(device)
    nets = networks(args.size, device)
    baselines = {net: median_seconds(plain_forward_backward(model, x), args.repeats)
                 for net, model in nets.items()}
    where = (torch.cuda.get_device_name(device) if device.type == "cuda"
             else f"{torch.get_num_threads()} threads")
    print(f"torch {torch.__version__}, {where}, batch {args.batch}, 3x{args.size}x{args.size}")
    print("baseline forward+backward to the input: " + ", ".join(
        f"{net} {seconds * 1e3:.1f} ms" for net, seconds in baselines.items()))
    print("(a training step's forward+backward, parameter gradients too: " + ", ".join(
        f"{net} {median_seconds(training_step(model, x), args.repeats) * 1e3:.1f} ms"
        for net, model in nets.items()) + ")")
    missing = [library for library in ("zennit", "captum") if not importable(library)]
    if missing:
        print(f"not importable here: {missing}; their ratios are left out (see the module "
              "docstring to run the comparison)")
    print(f"{'analyzer':34s} {'vgg':>8s} {'resnet':>8s} {'target':>8s}   "
          f"{'other vgg':>9s} {'other resnet':>12s}  other")

    def ratio(run: Callable[[], object], net: str) -> float:
        if args.interleave:
            return interleaved_ratio(run, plain_forward_backward(nets[net], x), args.repeats)
        return median_seconds(run, args.repeats) / baselines[net]

    for name in args.only or sorted(lx.analyzers):
        ratios = []
        for net, model in nets.items():
            try:
                analyzer = lx.create_analyzer(name, model, **SETTINGS.get(name, {}))
                ratios.append(f"{ratio(lambda a=analyzer: a.analyze(x), net):7.2f}x")
            except Exception as error:  # report and go on: a benchmark table, not a test
                ratios.append("   n/a  ")
                print(f"  ({name} on {net}: {type(error).__name__}: {error})")
        target = f"<= {TARGETS[name]:.1f}x" if name in TARGETS else ""
        theirs = ""
        other = comparison(name)
        if other is not None:
            label, factory = other
            values = [ratio(factory(name, model, x), net) for net, model in nets.items()]
            theirs = f"   {values[0]:8.2f}x {values[1]:11.2f}x  {label}"
        print(f"{name:34s} {ratios[0]:>8s} {ratios[1]:>8s} {target:>8s}{theirs}")


if __name__ == "__main__":
    main()
