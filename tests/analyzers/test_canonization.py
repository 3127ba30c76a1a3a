"""BatchNorm canonization: LRP on a BN net is LRP on the fused network.

The reference is built here, independently of the engine: a copy of the model in which each
eval-mode BatchNorm that consumes a conv/linear output is folded into that layer,

    W' = W · γ/√(var + eps),     b' = (b − μ) · γ/√(var + eps) + β,

and replaced by ``nn.Identity`` (Hui & Binder 2019; Motzkus et al. 2022, "Measurably
Stronger Explanation Reliability via Model Canonization"). On the fused copy canonization
has nothing to do, so canonized LRP on the original (the default) must equal LRP on it.
Both run in float64.
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import Tensor, nn
from zoo import ZOO

import lit_explain as lx

KERNELS = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d,
           nn.ConvTranspose3d)
NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
ANALYZERS = ("lrp.epsilon", "lrp.alpha_2_beta_1", "lrp.alpha_1_beta_0",
             "lrp.sequential_preset_a", "lrp.sequential_preset_b", "lrp.w_square", "lrp.flat",
             "lrp.z_IB", "deep_taylor")
MODELS = ("vgg16_bn", "resnet18", "bottleneck", "audio1d", "upsampler")


def kernel_norm_pairs(model: nn.Module, x: Tensor) -> list[tuple[str, str]]:
    """(kernel path, BatchNorm path) for each BatchNorm whose input is a kernel layer's
    output tensor itself, found by tracing one forward pass."""
    produced: dict[int, str] = {}
    pairs: list[tuple[str, str]] = []

    def kernel_hook(path: str):
        return lambda module, args, output: produced.__setitem__(id(output), path)

    def norm_hook(path: str):
        def hook(module: nn.Module, args: tuple) -> None:
            if id(args[0]) in produced:
                pairs.append((produced[id(args[0])], path))
        return hook

    handles = []
    for path, module in model.named_modules():
        if isinstance(module, KERNELS):
            handles.append(module.register_forward_hook(kernel_hook(path)))
        elif isinstance(module, NORMS):
            handles.append(module.register_forward_pre_hook(norm_hook(path)))
    try:
        with torch.no_grad():
            model(x)
    finally:
        for handle in handles:
            handle.remove()
    return pairs


def fused(model: nn.Module, x: Tensor) -> nn.Module:
    """A copy of ``model`` with each BatchNorm folded into the kernel layer it follows."""
    fused_model = copy.deepcopy(model)
    modules = dict(fused_model.named_modules())
    with torch.no_grad():
        for kernel_path, norm_path in kernel_norm_pairs(model, x):
            kernel, norm = modules[kernel_path], modules[norm_path]
            assert not norm.training and norm.track_running_stats
            scale = norm.weight / torch.sqrt(norm.running_var + norm.eps)
            if isinstance(kernel, nn.modules.conv._ConvTransposeNd):
                # weight (in, out / groups, ...): output channel g·(out / groups) + j is
                # weight[inputs of group g, j]
                groups, (inputs, per_group) = kernel.groups, kernel.weight.shape[:2]
                for g in range(groups):
                    rows = slice(g * inputs // groups, (g + 1) * inputs // groups)
                    kernel.weight[rows] *= scale[g * per_group:(g + 1) * per_group].reshape(
                        1, -1, *(1,) * (kernel.weight.dim() - 2))
            else:
                shape = (-1,) + (1,) * (kernel.weight.dim() - 1)
                kernel.weight.mul_(scale.reshape(shape))
            bias = kernel.bias if kernel.bias is not None else torch.zeros_like(norm.bias)
            new_bias = (bias - norm.running_mean) * scale + norm.bias
            kernel.bias = nn.Parameter(new_bias)
            parent_path, _, name = norm_path.rpartition(".")
            setattr(modules[parent_path] if parent_path else fused_model, name, nn.Identity())
    assert not any(isinstance(m, NORMS) for m in fused_model.modules()), \
        "a BatchNorm follows no kernel layer"
    return fused_model.eval()


class Upsampler(nn.Module):
    """A decoder stage: grouped transposed convolutions, each followed by a BatchNorm."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(),
            nn.ConvTranspose2d(8, 8, 3, stride=2, padding=1, output_padding=1, groups=4),
            nn.BatchNorm2d(8), nn.ReLU(),
            nn.ConvTranspose2d(8, 6, 2, stride=2, groups=2), nn.BatchNorm2d(6), nn.ReLU(),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(6, 4))
        for module in self.features:
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.uniform_(-1, 1)
                module.running_var.uniform_(0.5, 2.0)
                nn.init.uniform_(module.weight, -1.5, 1.5)  # (negative scales too)
                nn.init.uniform_(module.bias, -0.5, 0.5)

    def forward(self, x):
        return self.features(x)


def zoo64(name: str) -> tuple[nn.Module, Tensor]:
    if name == "upsampler":
        return Upsampler().double().eval(), torch.randn(2, 3, 6, 6, dtype=torch.double)
    model, x = ZOO[name]()
    return model.double(), x.double()


def kwargs(analyzer: str) -> dict:
    return {"epsilon": 1e-3} if analyzer == "lrp.epsilon" else {}


def relative_error(actual: Tensor, expected: Tensor) -> float:
    return float((actual - expected).abs().max() / expected.abs().max())


_FUSED: dict[str, tuple[nn.Module, nn.Module, Tensor]] = {}


def original_and_fused(name: str) -> tuple[nn.Module, nn.Module, Tensor]:
    if name not in _FUSED:
        model, x = zoo64(name)
        _FUSED[name] = (model, fused(model, x), x)
    return _FUSED[name]


def test_the_fusion_computes_the_same_function():
    for name in MODELS:
        model, reference, x = original_and_fused(name)
        torch.testing.assert_close(reference(x), model(x), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize(("name", "analyzer"), [
    pytest.param(m, a, id=f"{m}-{a}") for m in MODELS for a in ANALYZERS])
def test_canonized_lrp_is_lrp_on_the_fused_network(name: str, analyzer: str):
    model, reference, x = original_and_fused(name)
    expected = lx.create_analyzer(analyzer, reference, **kwargs(analyzer)).analyze(x)
    actual = lx.create_analyzer(analyzer, model, **kwargs(analyzer)).analyze(x)
    assert actual.dtype == torch.float64
    assert relative_error(actual, expected) < 1e-4


@pytest.mark.parametrize("analyzer", ANALYZERS)
def test_without_canonization_the_map_is_not_the_fused_one(analyzer: str):
    model, reference, x = original_and_fused("vgg16_bn")
    expected = lx.create_analyzer(analyzer, reference, **kwargs(analyzer)).analyze(x)
    plain = lx.create_analyzer(analyzer, model, canonize=False, **kwargs(analyzer)).analyze(x)
    assert bool(torch.isfinite(plain).all())
    assert relative_error(plain, expected) > 1e-3


def test_canonization_writes_nothing_to_the_model():
    model, _, x = original_and_fused("resnet18")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    lx.create_analyzer("lrp.epsilon", model).analyze(x)
    after = model.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert sum(isinstance(m, NORMS) for m in model.modules()) == \
        sum(isinstance(m, NORMS) for m in ZOO["resnet18"]()[0].modules())


# A BatchNorm that follows no kernel layer (pre-activation DenseNet) keeps a rule of its own
# that cannot blow up: the map is finite and its mass on the scale of the logit explained.
BOUNDED = ("lrp.epsilon", "lrp.epsilon_IB", "lrp.z_IB", "lrp.w_square", "lrp.flat",
           "lrp.alpha_1_beta_0", "lrp.sequential_preset_a", "deep_taylor")


@pytest.mark.parametrize("analyzer", BOUNDED)
def test_batch_norm_after_no_kernel_layer_stays_bounded(analyzer: str):
    model, x = ZOO["densenet"]()
    result = lx.create_analyzer(analyzer, model).analyze(x)
    assert bool(torch.isfinite(result).all())
    with torch.no_grad():
        logit = model(x).amax(dim=1).abs()
    mass = result.reshape(len(x), -1).abs().sum(dim=1)
    assert bool((mass <= 10 * logit).all()), f"|R| sums {mass.tolist()}, logits {logit.tolist()}"
