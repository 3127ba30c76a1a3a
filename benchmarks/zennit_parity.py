"""Canonized LRP against Zennit 0.5.1 with its BatchNorm canonizers, on the zoo's VGG-16-BN
and ResNet-18: the maximum relative difference per analyzer (target ≤ 1e-4).

Not part of the test suite (Zennit is not a dependency). Run it in a separate environment:

    python3 -m venv /work/venv-zennit
    /work/venv-zennit/bin/pip install torch numpy pillow pytest
    /work/venv-zennit/bin/pip install --no-deps zennit==0.5.1
    PYTHONPATH=. /work/venv-zennit/bin/python benchmarks/zennit_parity.py

Zennit imports torchvision only for its ResNet canonizer's class checks; the script puts a
placeholder package on ``sys.path`` when torchvision is missing.

Pairs (ours ↔ Zennit):

- ``lrp.epsilon`` (ε = 0.01) ↔ ``Epsilon(0.01)`` on every convolution and linear layer;
- ``lrp.sequential_preset_a`` (ε = 0.1) ↔ ``EpsilonPlus`` (z⁺ = α1β0 with b⁺ in z⁺);
- ``lrp.sequential_preset_b`` ↔ ``EpsilonAlpha2Beta1`` (b⁺ in z⁺, b⁻ in z⁻);
- ``lrp.sequential_preset_a_flat`` / ``_b_flat`` ↔ ``EpsilonPlusFlat`` /
  ``EpsilonAlpha2Beta1Flat`` (Flat rule on the first kernel layer).

Conventions matched: both backward passes start from the selected logit's value (Zennit:
``grad_output = one-hot × logit``, the per-sample argmax); ε is added with the sign of z (+ at
0) in both; Zennit's other stabilizers are set to 1e-9 (ours only replace exact zeros, or keep
z⁺/z⁻ 1e-7 away from 0). Canonization: ``SequentialMergeBatchNorm`` (the emptied BatchNorm's
eps set to 0, see :class:`ExactSequentialMergeBatchNorm`) merges each BatchNorm into the
conv/linear right before it (VGG features, ResNet stem, block and downsample pairs, all
in module order); the zoo's BasicBlock (``out += identity``, ``F.relu``) gets an attribute
canonizer that routes the residual add through Zennit's ``Sum`` layer (the z-rule, as
Zennit's own ``ResNetBasicBlockCanonizer`` does for torchvision's block). Everything runs in
float64. The last column runs ours on a copy with every BatchNorm folded by hand (the
fusion of ``tests/analyzers/test_canonization.py``): it checks the pairing of rules and
conventions independently of the engine's own canonization.
"""

from __future__ import annotations

import copy
import sys
import tempfile
from pathlib import Path

import torch
from torch import Tensor, nn

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests"), str(ROOT / "tests" / "analyzers")]

PLACEHOLDER = '''"""Placeholder torchvision for zennit.torchvision's imports."""
from torch import nn


class BasicBlock(nn.Module):
    pass


class Bottleneck(nn.Module):
    pass
'''


def _torchvision_placeholder() -> None:
    try:
        import torchvision  # noqa: F401
    except ImportError:
        folder = Path(tempfile.mkdtemp(prefix="torchvision-placeholder-"))
        package = folder / "torchvision" / "models"
        package.mkdir(parents=True)
        (folder / "torchvision" / "__init__.py").write_text("")
        (package / "__init__.py").write_text("")
        (package / "resnet.py").write_text(PLACEHOLDER)
        sys.path.insert(0, str(folder))


_torchvision_placeholder()

import zoo  # noqa: E402
from test_canonization import fused  # noqa: E402
from zennit.canonizers import AttributeCanonizer, SequentialMergeBatchNorm  # noqa: E402
from zennit.composites import (  # noqa: E402
    EpsilonAlpha2Beta1,
    EpsilonAlpha2Beta1Flat,
    EpsilonPlus,
    EpsilonPlusFlat,
    LayerMapComposite,
    layer_map_base,
)
from zennit.layer import Sum  # noqa: E402
from zennit.rules import Epsilon  # noqa: E402
from zennit.types import Convolution  # noqa: E402

import lit_explain as lx  # noqa: E402

STABILIZER = 1e-9
EPSILON = 0.01
PRESET_EPSILON = 0.1


def _basic_block_forward(self: zoo.BasicBlock, x: Tensor) -> Tensor:
    identity = x if self.downsample is None else self.downsample(x)
    out = torch.relu(self.bn1(self.conv1(x)))
    out = self.bn2(self.conv2(out))
    return torch.relu(self.canonizer_sum(torch.stack([identity, out], dim=-1)))


class BasicBlockCanonizer(AttributeCanonizer):
    """The zoo's BasicBlock with its residual add through Zennit's ``Sum`` (the z-rule)."""

    def __init__(self) -> None:
        super().__init__(self._attribute_map)

    @staticmethod
    def _attribute_map(name: str, module: nn.Module) -> dict | None:
        if isinstance(module, zoo.BasicBlock):
            return {"forward": _basic_block_forward.__get__(module), "canonizer_sum": Sum()}
        return None


class ExactSequentialMergeBatchNorm(SequentialMergeBatchNorm):
    """Zennit's ``SequentialMergeBatchNorm``, with the emptied BatchNorm an exact identity.

    Zennit leaves the merged BatchNorm with mean 0, var 1, γ 1, β 0 but its ``eps``, so it
    still scales by 1/√(1 + eps) (5e-6 per layer, ~1e-4 relative over 13 layers); here eps is
    set to 0 too (on the copy Zennit analyses), so that both sides explain the same function.
    """

    @staticmethod
    def merge_batch_norm(modules, batch_norm):
        SequentialMergeBatchNorm.merge_batch_norm(modules, batch_norm)
        batch_norm.eps = 0.0


def canonizers(name: str) -> list:
    merge = [ExactSequentialMergeBatchNorm()]
    return merge + [BasicBlockCanonizer()] if name == "resnet18" else merge


def composites(name: str) -> dict[str, tuple[dict, object]]:
    """Our analyzer → (its keywords, the Zennit composite that computes the same)."""
    common = {"stabilizer": STABILIZER, "canonizers": canonizers(name)}
    epsilon = LayerMapComposite(
        layer_map=layer_map_base(STABILIZER) + [
            (Convolution, Epsilon(epsilon=EPSILON)), (nn.Linear, Epsilon(epsilon=EPSILON))],
        canonizers=canonizers(name))
    preset = {"epsilon": PRESET_EPSILON}
    return {
        "lrp.epsilon": ({"epsilon": EPSILON}, epsilon),
        "lrp.sequential_preset_a": (preset, EpsilonPlus(epsilon=PRESET_EPSILON, **common)),
        "lrp.sequential_preset_b": (preset, EpsilonAlpha2Beta1(epsilon=PRESET_EPSILON,
                                                               **common)),
        "lrp.sequential_preset_a_flat": (preset, EpsilonPlusFlat(epsilon=PRESET_EPSILON,
                                                                 **common)),
        "lrp.sequential_preset_b_flat": (preset, EpsilonAlpha2Beta1Flat(epsilon=PRESET_EPSILON,
                                                                        **common)),
    }


def zennit_map(model: nn.Module, x: Tensor, composite) -> Tensor:
    """Zennit's relevance at the input, starting from one-hot × the argmax logit."""
    model = copy.deepcopy(model)  # canonizers write into the model (and undo it on exit)
    with composite.context(model) as modified:
        inputs = x.clone().requires_grad_(True)
        logits = modified(inputs)
        mask = torch.zeros_like(logits).scatter_(1, logits.argmax(dim=1, keepdim=True), 1.0)
        (relevance,) = torch.autograd.grad(logits, inputs, mask * logits.detach())
    return relevance


def relative_difference(ours: Tensor, theirs: Tensor) -> float:
    return float((ours - theirs).abs().max() / theirs.abs().max())


def ours(analyzer: str, model: nn.Module, x: Tensor, kwargs: dict, theirs: Tensor) -> str:
    try:
        result = lx.create_analyzer(analyzer, model, **kwargs).analyze(x)
    except Exception as error:  # noqa: BLE001 (reported in the table)
        return f"error: {type(error).__name__}: {str(error)[:80]}"
    return f"{relative_difference(result, theirs):.2e}"


def main() -> None:
    torch.set_num_threads(4)
    print("| model | analyzer ↔ Zennit composite | ours (canonized by the engine) "
          "| ours on the explicitly fused copy |")
    print("|---|---|---|---|")
    for name in ("vgg16_bn", "resnet18"):
        model, x = zoo.ZOO[name]()
        model, x = model.double(), x.double()
        reference = fused(model, x)  # BatchNorm folded by hand: checks the pairing itself
        for analyzer, (kwargs, composite) in composites(name).items():
            theirs = zennit_map(model, x, composite)
            print(f"| {name} | {analyzer} ↔ {type(composite).__name__} "
                  f"| {ours(analyzer, model, x, kwargs, theirs)} "
                  f"| {ours(analyzer, reference, x, kwargs, theirs)} |", flush=True)


if __name__ == "__main__":
    main()
