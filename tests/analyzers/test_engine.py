"""The engine's promises: no side effects, neuron selection, clear errors, any grad mode."""

from __future__ import annotations

import copy
import threading
import time
import weakref

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import lit_explain as lx
from lit_explain.demo.models import ResNetStyle

STATELESS = ["gradient", "input_t_gradient", "deconvnet", "guided_backprop",
             "integrated_gradients", "smoothgrad", "deep_lift"]


def trained_resnet() -> nn.Module:
    torch.manual_seed(0)
    model = ResNetStyle(in_channels=2, num_classes=5, width=4)
    model.train()
    model.layers[1].eval()  # mixed train/eval flags must come back as they were
    model.fc.weight.requires_grad_(False)  # and so must requires_grad flags
    loss = model(torch.randn(4, 2, 16, 16)).sum()
    loss.backward()  # parameters carry a .grad that must stay untouched
    return model


def snapshot(model: nn.Module) -> dict:
    return {
        "state": copy.deepcopy(model.state_dict()),
        "grads": {n: None if p.grad is None else p.grad.clone()
                  for n, p in model.named_parameters()},
        "requires_grad": {n: p.requires_grad for n, p in model.named_parameters()},
        "training": {n: m.training for n, m in model.named_modules()},
        "hooks": [(len(m._forward_hooks), len(m._forward_pre_hooks), len(m._backward_hooks))
                  for m in model.modules()],
    }


def assert_same(before: dict, after: dict) -> None:
    for key, value in before["state"].items():
        assert torch.equal(value, after["state"][key]), key
    for name, grad in before["grads"].items():
        assert (grad is None) == (after["grads"][name] is None), name
        if grad is not None:
            assert torch.equal(grad, after["grads"][name]), name
    assert before["requires_grad"] == after["requires_grad"]
    assert before["training"] == after["training"]
    assert before["hooks"] == after["hooks"]


@pytest.mark.parametrize("name", STATELESS)
def test_analysis_leaves_the_model_exactly_as_it_was(name):
    model = trained_resnet()
    before = snapshot(model)
    kwargs = {"steps": 4} if name == "integrated_gradients" else {}
    # (SmoothGrad draws its noise on the GPU there, other numbers than the CPU's: without noise)
    kwargs = {"augment_by_n": 4, "noise_scale": 0.0} if name == "smoothgrad" else kwargs
    result = lx.create_analyzer(name, model, **kwargs).analyze(torch.randn(3, 2, 16, 16))
    assert torch.isfinite(result).all()
    assert_same(before, snapshot(model))


def test_hooks_and_flags_are_restored_when_the_analysis_raises():
    class Failing(nn.Module):
        def __init__(self):
            super().__init__()
            self.body = nn.Sequential(nn.Linear(3, 3), nn.ReLU(), nn.GELU())
            self.head = nn.Linear(3, 2)

        def forward(self, x):
            return self.head(self.body(x))

    model = Failing().train()
    before = snapshot(model)
    with pytest.raises(lx.NotAnalyzableModelError):
        lx.create_analyzer("guided_backprop", model).analyze(torch.randn(2, 3))
    assert_same(before, snapshot(model))
    assert not torch.overrides._get_current_function_mode_stack()  # the mode is gone too


@pytest.mark.parametrize("context", [torch.no_grad, torch.inference_mode])
@pytest.mark.parametrize("name", ["gradient", "guided_backprop", "deep_lift"])
def test_works_under_no_grad_and_inference_mode(context, name):
    model = trained_resnet()
    x = torch.randn(2, 2, 16, 16)
    expected = lx.create_analyzer(name, model).analyze(x)
    with context():
        inside = x.clone()  # an inference tensor under inference_mode
        result = lx.create_analyzer(name, model).analyze(inside)
    torch.testing.assert_close(result, expected)


def test_result_has_the_input_shape_dtype_and_device():
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 3)).double()
    x = torch.randn(2, 3, 4, dtype=torch.float64)
    result = lx.create_analyzer("gradient", model).analyze(x)
    assert result.shape == x.shape and result.dtype == x.dtype and result.device == x.device


def test_neuron_selection_modes():
    torch.manual_seed(0)
    model = nn.Linear(4, 3, bias=False)
    x = torch.randn(5, 4)
    weight = model.weight.detach()
    top = model(x).argmax(1)
    by_max = lx.create_analyzer("gradient", model).analyze(x)
    torch.testing.assert_close(by_max, weight[top])
    indexed = lx.create_analyzer("gradient", model, neuron_selection_mode="index")
    torch.testing.assert_close(indexed.analyze(x, 2), weight[[2] * 5])
    per_sample = [0, 1, 2, 1, 0]
    torch.testing.assert_close(indexed.analyze(x, per_sample), weight[per_sample])
    torch.testing.assert_close(indexed.analyze(x, torch.tensor(per_sample)), weight[per_sample])
    every = lx.create_analyzer("gradient", model, neuron_selection_mode="all").analyze(x)
    torch.testing.assert_close(every, weight.sum(0).expand(5, 4))


def test_outputs_with_more_than_two_dimensions_are_flattened_per_sample():
    torch.manual_seed(0)
    model = nn.Conv2d(1, 2, 3, padding=1, bias=False)  # output (N, 2, 4, 4): 32 "neurons"
    x = torch.randn(2, 1, 4, 4)
    result = lx.create_analyzer("gradient", model, neuron_selection_mode="index").analyze(x, 5)
    point = x.clone().requires_grad_(True)
    (expected,) = torch.autograd.grad(model(point).flatten(1)[:, 5].sum(), point)
    torch.testing.assert_close(result, expected)


def test_unknown_analyzer_name_lists_the_valid_ones():
    with pytest.raises(KeyError) as error:
        lx.create_analyzer("lrp.epsilonn", nn.Linear(2, 2))
    for name in ("gradient", "smoothgrad", "deep_lift", "integrated_gradients"):
        assert name in str(error.value)


def test_unknown_and_invalid_parameters_are_named():
    model = nn.Linear(2, 2)
    with pytest.raises(TypeError, match=r"stepz.*accepts.*steps"):
        lx.create_analyzer("integrated_gradients", model, stepz=3)
    with pytest.raises(ValueError, match=r"steps=0.*integer >= 1"):
        lx.create_analyzer("integrated_gradients", model, steps=0)
    with pytest.raises(ValueError, match=r"postprocess='log'.*None, 'abs', 'square'"):
        lx.create_analyzer("gradient", model, postprocess="log")
    with pytest.raises(ValueError, match=r"neuron_selection_mode='top'.*max_activation"):
        lx.create_analyzer("gradient", model, neuron_selection_mode="top")
    with pytest.raises(ValueError, match="noise_scale=-1"):
        lx.create_analyzer("smoothgrad", model, noise_scale=-1)


def test_neuron_selection_errors():
    model = nn.Linear(2, 3)
    x = torch.randn(4, 2)
    with pytest.raises(ValueError, match="only used with neuron_selection_mode='index'"):
        lx.create_analyzer("gradient", model).analyze(x, 1)
    indexed = lx.create_analyzer("gradient", model, neuron_selection_mode="index")
    with pytest.raises(ValueError, match="needs neuron_selection"):
        indexed.analyze(x)
    with pytest.raises(ValueError, match="3 indices for 4 samples"):
        indexed.analyze(x, [0, 1, 2])
    with pytest.raises(ValueError, match=r"out of range.*0\.\.2"):
        indexed.analyze(x, 3)


def test_model_wo_softmax():
    inner = nn.Sequential(nn.Linear(3, 4), nn.Softmax(dim=1))
    model = nn.Sequential(nn.Linear(3, 3), nn.ReLU(), inner)
    with pytest.raises(ValueError, match="model_wo_softmax"):
        lx.create_analyzer("gradient", model)
    stripped = lx.model_wo_softmax(model)
    x = torch.randn(2, 3)
    torch.testing.assert_close(stripped(x).softmax(1), model(x))
    assert stripped[0] is model[0] and stripped[2][0] is inner[0]  # same weights, no copies
    assert isinstance(lx.model_wo_softmax(nn.Softmax(dim=1)), nn.Identity)
    assert lx.model_wo_softmax(stripped) is stripped
    lx.create_analyzer("gradient", stripped)  # accepted now
    lx.create_analyzer("input", model)  # input and random do not need logits


def test_random_is_seeded_and_uses_its_own_generator():
    model, x = nn.Linear(3, 2), torch.zeros(4, 3)
    state = torch.get_rng_state()
    first = lx.create_analyzer("random", model, stddev=2.0, seed=3).analyze(x)
    again = lx.create_analyzer("random", model, stddev=2.0, seed=3).analyze(x)
    assert torch.equal(torch.get_rng_state(), state)
    torch.testing.assert_close(first, again)
    assert 1.0 < float(first.std()) < 3.5


def test_every_registered_name_is_an_analyzer_class():
    for name, cls in lx.analyzers.items():
        assert issubclass(cls, lx.Analyzer) and cls.name == name
        assert cls.__doc__, f"{name} has no docstring"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("name", STATELESS)
def test_cuda_result_matches_cpu(name, monkeypatch):
    # float32 on the GPU as on the CPU: TF32 convolutions (torch's default) flip ReLUs near
    # zero under SmoothGrad's noise (the zoo's CUDA variants run with TF32, rtol 1e-2)
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)
    model = trained_resnet().eval()
    x = torch.randn(2, 2, 16, 16)
    kwargs = {"steps": 4} if name == "integrated_gradients" else {}
    # (SmoothGrad draws its noise on the GPU there, other numbers than the CPU's: without noise)
    kwargs = {"augment_by_n": 4, "noise_scale": 0.0} if name == "smoothgrad" else kwargs
    expected = lx.create_analyzer(name, model, **kwargs).analyze(x)
    result = lx.create_analyzer(name, model.cuda(), **kwargs).analyze(x.cuda())
    assert result.device.type == "cuda"
    torch.testing.assert_close(result.cpu(), expected, atol=1e-4, rtol=1e-3)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("name", ["smoothgrad", "random"])
def test_noise_is_drawn_on_the_gpu_from_the_analyzers_seed(name):
    model, x = nn.Sequential(nn.Flatten(), nn.Linear(12, 3)).cuda(), torch.randn(2, 3, 4).cuda()
    first = lx.create_analyzer(name, model, seed=3)
    maps = [first.analyze(x), first.analyze(x), lx.create_analyzer(name, model, seed=3).analyze(x)]
    assert first.generators.on(x.device).device.type == "cuda"
    assert not torch.equal(maps[0], maps[1])  # the generator goes on
    torch.testing.assert_close(maps[2], maps[0])  # the seed starts it where it started


def test_the_engine_imports_no_lightning():
    import subprocess
    import sys

    code = ("import sys, torch, lit_explain as lx; "
            "lx.create_analyzer('lrp.epsilon', torch.nn.Linear(2, 2)).analyze(torch.ones(1, 2)); "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('lightning', "
            "'pytorch_lightning', 'torchmetrics')))")
    output = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            check=True).stdout
    assert output.strip() == "[]"


class _WatchesItsPreActivations(nn.Module):
    """Conv → ReLU → conv → ReLU → linear; records whether each conv output is still alive
    once the model has let go of it (after the ReLU made its own output)."""

    def __init__(self) -> None:
        super().__init__()
        self.convs = nn.ModuleList([nn.Conv2d(2, 4, 3, padding=1), nn.Conv2d(4, 4, 3, padding=1)])
        self.head = nn.Linear(4 * 6 * 6, 3)
        self.alive: list[bool] = []

    def forward(self, x):
        for conv in self.convs:
            h = conv(x)
            watch = weakref.ref(h)
            x = torch.relu(h)
            del h  # freed at once unless something else holds it
            self.alive.append(watch() is not None)
        return self.head(x.flatten(1))


@pytest.mark.parametrize("name", ["lrp.z", "lrp.epsilon", "lrp.alpha_2_beta_1",
                                  "lrp.sequential_preset_a"])
def test_lrp_lets_go_of_kernel_outputs_the_model_let_go_of(name):
    # As in a plain forward pass: a kernel layer's output that no later call can use is freed
    # (its rule is applied where it is used; holding every output until the backward pass
    # cost LRP a third to a half more peak memory than the gradient).
    torch.manual_seed(0)
    model = _WatchesItsPreActivations().eval()
    x = torch.randn(2, 2, 6, 6)
    result = lx.create_analyzer(name, model).analyze(x)
    assert result.abs().sum() > 0
    assert model.alive and not any(model.alive)


class _FromScratch(nn.Module):
    """A ReLU net whose weights are registered parameters, or plain tensors that require
    grad (the from-scratch style), directly or in a list; one gates by an elementwise
    weight (``h * g``)."""

    def __init__(self, how: str) -> None:
        super().__init__()
        torch.manual_seed(0)
        values = [torch.randn(8, 5), 0.1 * torch.randn(8), torch.rand(8) + 0.5,
                  torch.randn(3, 8), 0.1 * torch.randn(3)]
        if how == "parameters":
            self.weights = nn.ParameterList(values)
        else:
            tensors = [v.requires_grad_() for v in values]
            self.weights = tensors if how == "list" else None
            self.w1, self.b1, self.g, self.w2, self.b2 = tensors

    def forward(self, x):
        w1, b1, g, w2, b2 = self.weights if self.weights is not None else (
            self.w1, self.b1, self.g, self.w2, self.b2)
        return torch.relu(x @ w1.T + b1) * g @ w2.T + b2


class _InContainers(_FromScratch):
    """The from-scratch weights in an OrderedDict or a namedtuple attribute."""

    def __init__(self, how: str) -> None:
        super().__init__("attributes")
        from collections import OrderedDict, namedtuple

        names = ["w1", "b1", "g", "w2", "b2"]
        tensors = [getattr(self, name) for name in names]
        for name in names:
            delattr(self, name)
        self.held = OrderedDict(zip(names, tensors, strict=True)) if how == "OrderedDict" \
            else namedtuple("Weights", names)(*tensors)

    def forward(self, x):
        held = self.held if isinstance(self.held, dict) else self.held._asdict()
        w1, b1, g, w2, b2 = held.values()
        return torch.relu(x @ w1.T + b1) * g @ w2.T + b2


class _Nested(_FromScratch):
    """The from-scratch weights as a list of (weight,) tuples."""

    def __init__(self) -> None:
        super().__init__("attributes")
        names = ["w1", "b1", "g", "w2", "b2"]
        self.held = [(getattr(self, name),) for name in names]
        for name in names:
            delattr(self, name)

    def forward(self, x):
        (w1,), (b1,), (g,), (w2,), (b2,) = self.held
        return torch.relu(x @ w1.T + b1) * g @ w2.T + b2


@pytest.mark.parametrize("how", ["OrderedDict", "namedtuple", "nested"])
def test_weights_held_in_other_containers_are_weights(how):
    x = torch.randn(4, 5)
    model = _Nested() if how == "nested" else _InContainers(how)
    torch.testing.assert_close(lx.create_analyzer("lrp.epsilon", model.eval()).analyze(x),
                               lx.create_analyzer("lrp.epsilon", _FromScratch("parameters")
                                                  .eval()).analyze(x))


@pytest.mark.parametrize("how", ["attributes", "list"])
@pytest.mark.parametrize("name", ["lrp.z", "lrp.epsilon", "lrp.alpha_2_beta_1",
                                  "lrp.sequential_preset_a", "deep_taylor", "deep_lift",
                                  "guided_backprop"])
def test_weights_held_as_plain_tensors_are_weights(name, how):
    """They were activations to the rules: ``h * g`` and ``x @ W`` products of two, half
    the relevance lost at each (LRP-z summed to 1/8 of Input×Gradient)."""
    x = torch.randn(4, 5)
    expected = lx.create_analyzer(name, _FromScratch("parameters").eval()).analyze(x)
    model = _FromScratch(how).eval()
    torch.testing.assert_close(lx.create_analyzer(name, model).analyze(x), expected)
    assert all(t.requires_grad for t in (model.w1, model.g, model.b2))


class _BufferBasis(nn.Module):
    """A dense layer written out with a buffer as its weight, scaled in forward or stored
    scaled."""

    def __init__(self, scaled_in_forward: bool) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.scaled_in_forward = scaled_in_forward
        basis = torch.randn(6, 6)
        self.register_buffer("basis", basis if scaled_in_forward else basis * 0.1)
        self.fc, self.out = nn.Linear(5, 6), nn.Linear(6, 3)

    def forward(self, x):
        basis = self.basis * 0.1 if self.scaled_in_forward else self.basis
        return self.out(torch.relu(torch.relu(self.fc(x)) @ basis))


@pytest.mark.parametrize("name", ["lrp.alpha_2_beta_1", "deep_taylor"])
def test_a_weight_computed_from_a_buffer_is_a_weight(name):
    """As the docs say (it was a product with a constant: maps 42-112 % off)."""
    x = torch.randn(4, 5)
    torch.testing.assert_close(lx.create_analyzer(name, _BufferBasis(True).eval()).analyze(x),
                               lx.create_analyzer(name, _BufferBasis(False).eval()).analyze(x))


class _Casting(nn.Module):
    """A 16-bit model fed float32 data, which it casts itself (as Hugging Face models do)."""

    def __init__(self, body: nn.Module, dtype: torch.dtype) -> None:
        super().__init__()
        self.body, self.dtype = body.to(dtype), dtype

    def forward(self, x):
        return self.body(x.to(self.dtype))


class _Autocasting(nn.Module):
    """A float32 model whose forward computes under autocast."""

    def __init__(self, body: nn.Module, dtype: torch.dtype) -> None:
        super().__init__()
        self.body, self.dtype = body, dtype

    def forward(self, x):
        with torch.autocast("cpu", dtype=self.dtype):
            return self.body(x).float()


@pytest.mark.parametrize(("dtype", "how"), [
    (torch.float16, "model and input"), (torch.bfloat16, "model and input"),
    (torch.float16, "model casting its input"), (torch.bfloat16, "model casting its input"),
    (torch.bfloat16, "autocast in forward")])
@pytest.mark.parametrize("name", [n for n in sorted(lx.analyzers) if not n.startswith("pattern.")])
def test_16_bit_models_get_the_gradient_methods_and_a_clear_refusal_of_rules(name, dtype, how):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(2, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(),
                          nn.Linear(4 * 4 * 4, 3))
    model[1].running_mean.uniform_(-1, 1)
    model = {"model and input": lambda: model.to(dtype),
             "model casting its input": lambda: _Casting(model, dtype),
             "autocast in forward": lambda: _Autocasting(model, dtype)}[how]().eval()
    x = torch.randn(2, 2, 6, 6, dtype=dtype if how == "model and input" else torch.float32)
    kwargs = {"smoothgrad": {"noise_scale": 0.0}, "integrated_gradients": {"steps": 1},
              "deep_taylor.bounded": {"low": -3.0, "high": 3.0}, "lrp": {"rule": "Z"},
              "lrp.alpha_beta": {"alpha": 1.0}}
    analyzer = lx.create_analyzer(name, model, **kwargs.get(name, {}))
    if name in ("gradient", "input_t_gradient", "smoothgrad", "integrated_gradients"):
        # (one IG step from zero: the gradient at 0, for the output chosen at x)
        point = (torch.zeros_like(x) if name == "integrated_gradients" else x).requires_grad_()
        choice = model(x).argmax(dim=1, keepdim=True)
        (grad,) = torch.autograd.grad(model(point).gather(1, choice).sum(), point)
        expected = grad if name in ("gradient", "smoothgrad") else x * grad
        torch.testing.assert_close(analyzer.analyze(x), expected)
    elif name in ("input", "random"):
        assert analyzer.analyze(x).dtype == x.dtype
    else:
        with pytest.raises(lx.NotAnalyzableModelError, match=rf"{dtype}.*float32 copy"):
            analyzer.analyze(x)


class _HalfActivations(nn.Module):
    """float16 activations normalised by a float32 LayerNorm (which computes in float16),
    or a float32 model with a PReLU under autocast inside forward (which lowers it)."""

    def __init__(self, how: str) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.how, self.fc, self.norm = how, nn.Linear(4, 4), nn.LayerNorm(4)
        self.act, self.head = nn.PReLU(), nn.Linear(4, 2)

    def forward(self, x):
        if self.how == "layer norm":
            return self.head(self.norm(self.fc(x).half()).float())
        with torch.autocast("cpu", dtype=torch.bfloat16):
            h = self.act(x.to(torch.bfloat16))
        return self.head(h.float())


class _HalfAuxiliary(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2))

    def forward(self, x):
        logits = self.net(x)
        return {"logits": logits, "aux": torch.relu(logits.half())}


@pytest.mark.parametrize("name", ["lrp.epsilon", "deep_taylor"])
def test_a_16_bit_operation_on_an_unexplained_output_counts_not(name):
    model, x = _HalfAuxiliary().eval(), torch.randn(3, 4)
    torch.testing.assert_close(lx.create_analyzer(name, model).analyze(x),
                               lx.create_analyzer(name, model.net).analyze(x))


@pytest.mark.parametrize("name", ["deep_lift", "guided_backprop"])
def test_a_16_bit_layer_is_refused_where_it_passes_gradients_too(name):
    """DeepLIFT's summation check blamed the batch layout for a bfloat16 head."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), _Cast(torch.bfloat16),
                          nn.Linear(4, 2).to(torch.bfloat16), _Cast(torch.float32)).eval()
    with pytest.raises(lx.NotAnalyzableModelError, match="computes in torch.bfloat16"):
        lx.create_analyzer(name, model).analyze(torch.randn(3, 4))


class _Cast(nn.Module):
    def __init__(self, dtype: torch.dtype) -> None:
        super().__init__()
        self.dtype = dtype

    def forward(self, x):
        return x.to(self.dtype)


@pytest.mark.parametrize(("how", "dtype"), [("layer norm", "float16"), ("prelu", "bfloat16")])
def test_16_bit_operations_with_float32_parameters_are_refused(how, dtype):
    """torch computes them in 16 bits: maps 2e-4 to 2e-3 off, or misleading errors."""
    with pytest.raises(lx.NotAnalyzableModelError, match=rf"computes in torch.{dtype}"):
        lx.create_analyzer("lrp.epsilon", _HalfActivations(how).eval()).analyze(
            torch.randn(3, 4))


class _HalfStatistics(nn.Module):
    """A float32 CNN normalising its input with 16-bit statistics: torch computes
    ``(x - mean) / std`` in float32, as every other operation."""

    def __init__(self, dtype: torch.dtype) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.register_buffer("mean", torch.full((1, 2, 1, 1), 0.5, dtype=dtype))
        self.register_buffer("std", torch.full((1, 2, 1, 1), 0.25, dtype=dtype))
        self.net = nn.Sequential(nn.Conv2d(2, 4, 3), nn.ReLU(), nn.Flatten(),
                                 nn.Linear(4 * 4 * 4, 3))

    def forward(self, x):
        return self.net((x - self.mean) / self.std)


@pytest.mark.parametrize("name", ["lrp.epsilon", "lrp.flat", "deep_taylor", "deep_lift",
                                  "guided_backprop"])
def test_16_bit_constants_in_float32_operations_are_no_16_bit_model(name):
    """They were refused ("computes in torch.float16") though nothing computes in it."""
    x = torch.randn(2, 2, 6, 6)
    expected = lx.create_analyzer(name, _HalfStatistics(torch.float32).eval()).analyze(x)
    torch.testing.assert_close(
        lx.create_analyzer(name, _HalfStatistics(torch.float16).eval()).analyze(x), expected)


class _Normalising(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(1, 3, 1, 1))
        self.register_buffer("std", torch.ones(1, 3, 1, 1))
        self.conv = nn.Conv2d(3, 2, 3)

    def forward(self, x):
        return self.conv((x - self.mean) / self.std).flatten(1)


def test_a_buffer_made_in_inference_mode_is_named():
    """Normalisation statistics computed under inference mode: training works (it never
    differentiates with respect to the input), an analysis cannot, and says which buffer."""
    model = _Normalising().eval()
    with torch.inference_mode():
        model.std = torch.full((1, 3, 1, 1), 0.5)
    model.train()
    model(torch.randn(2, 3, 4, 4)).sum().backward()  # (it trains)
    model.eval()
    for name in ["gradient", "lrp.epsilon"]:
        with pytest.raises(lx.NotAnalyzableModelError,
                           match=r"buffers \['_Normalising.std'\] are inference tensors"):
            lx.create_analyzer(name, model).analyze(torch.randn(2, 3, 4, 4))


class _Sleep(nn.Module):
    """Holds the thread a while, so that two analyses overlap."""

    def __init__(self, seconds: float) -> None:
        super().__init__()
        self.seconds = seconds

    def forward(self, x):
        time.sleep(self.seconds)
        return x


def test_analyses_in_threads_of_models_sharing_a_backbone_are_one_at_a_time():
    """Two heads on one backbone (in train mode), analysed in two threads at once: one
    analysis put the shared BatchNorm back into train mode while the other still ran (its
    map 1.4× its size off, the running statistics updated), and the overlapping switches of
    torch's process-wide checkpointing were restored wrongly, for good."""
    import torch.utils.checkpoint as checkpoint

    torch.manual_seed(0)
    backbone = nn.Sequential(nn.Linear(6, 8), nn.BatchNorm1d(8), nn.ReLU())
    first = nn.Sequential(backbone, _Sleep(0.2), nn.Linear(8, 3)).train()
    second = nn.Sequential(_Sleep(0.3), backbone, nn.Linear(8, 3)).train()
    x = torch.randn(4, 6)
    expected = {name: lx.create_analyzer(name, second).analyze(x)
                for name in ("gradient", "lrp.epsilon")}
    statistics = backbone[1].running_mean.clone()
    apply = checkpoint.CheckpointFunction.apply
    got = {}

    def analyse(name: str, model: nn.Module) -> None:
        got[name, model] = lx.create_analyzer(name, model).analyze(x)

    for name in expected:
        threads = [threading.Thread(target=analyse, args=(name, model))
                   for model in (first, second)]
        for thread in threads:
            thread.start()
            time.sleep(0.05)
        for thread in threads:
            thread.join()
        torch.testing.assert_close(got[name, second], expected[name])
    assert torch.equal(backbone[1].running_mean, statistics)
    assert first.training and second.training and backbone[1].training
    assert checkpoint.CheckpointFunction.apply == apply  # torch's own again


def test_a_model_with_inference_tensor_parameters_is_refused_before_any_flag_changes():
    with torch.inference_mode():
        model = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))
    model.train()
    for name in ("gradient", "lrp.z"):
        with pytest.raises(lx.NotAnalyzableModelError, match=r"Linear.weight\) are inference"):
            lx.create_analyzer(name, model).analyze(torch.randn(2, 4))
    assert model.training and all(p.requires_grad for p in model.parameters())


def test_input_and_selection_errors_name_the_argument():
    model = nn.Sequential(nn.Linear(4, 3))
    with pytest.raises(TypeError, match=r"x is complex \(torch.complex64\)"):
        lx.create_analyzer("gradient", model).analyze(torch.randn(2, 4, dtype=torch.cfloat))
    with pytest.raises(ValueError, match="neuron_selection=9223372036854775808 is out of range"):
        lx.create_analyzer("gradient", model, neuron_selection_mode="index").analyze(
            torch.randn(2, 4), neuron_selection=2 ** 63)
    with pytest.raises(RuntimeError) as info:
        lx.create_analyzer("gradient", model).analyze(torch.randn(2, 4, dtype=torch.double))
    assert "x has dtype torch.float64 and the model's parameters torch.float32" in "".join(
        info.value.__notes__)


class _HoldsALayerInAList(nn.Module):
    """A first layer whose weight requires grad where the analysis cannot freeze it, as
    ``how`` says: a layer held in a plain list (not registered), its weight scaled in the
    forward, a tensor attribute, fast weights (MAML) through ``torch.func.functional_call``;
    ``"registered"``: the same layer registered."""

    def __init__(self, how: str) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.how = how
        first = nn.Linear(6, 6)
        self.held = nn.ModuleList([first]) if how == "registered" else [first]
        self.weight = first.weight.detach().clone().requires_grad_(True)
        self.fast = {name: p.detach().clone().requires_grad_(True)
                     for name, p in first.named_parameters()}
        self.out = nn.Linear(6, 3)

    def forward(self, x):
        first = self.held[0]
        if self.how == "scaled":
            h = F.linear(x, first.weight * 1.0, first.bias)
        elif self.how == "attribute":
            h = F.linear(x, self.weight, first.bias)
        elif self.how == "fast_weights":
            h = torch.func.functional_call(first, self.fast, (x,))
        else:
            h = first(x)
        return self.out(torch.relu(h))


@pytest.mark.parametrize("name", ["lrp.z", "lrp.epsilon", "lrp.alpha_2_beta_1",
                                  "lrp.alpha_1_beta_0", "lrp.z_plus", "lrp.w_square",
                                  "lrp.flat", "lrp.sequential_preset_a", "deep_taylor"])
@pytest.mark.parametrize("how", ["held", "scaled", "attribute", "fast_weights"])
def test_a_weight_the_analysis_cannot_freeze_is_a_weight_all_the_same(name, how):
    # (αβ's out= division into a denominator that required grad through it raised; a weight
    # that requires grad but is no function of the input is no product of activations)
    model, registered = _HoldsALayerInAList(how), _HoldsALayerInAList("registered")
    x = torch.randn(3, 6)
    torch.testing.assert_close(lx.create_analyzer(name, model).analyze(x),
                               lx.create_analyzer(name, registered).analyze(x))
    assert model.held[0].weight.grad is None and model.weight.grad is None
