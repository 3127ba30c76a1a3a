"""Gradient-family analyzers against iNNvestigate's own outputs and their identities."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from reference_nets import (
    INDEX,
    NETS,
    analyzer_kwargs,
    reference_entries,
    reference_model,
    relative_error,
)
from torch import Tensor, nn

import lit_explain as lx
from lit_explain.demo.models import ResNetStyle

GRADIENT_FAMILY = {"input", "gradient", "gradient.abs", "input_t_gradient", "deconvnet",
                   "guided_backprop", "integrated_gradients"}
CASES = [(net, entry, mode) for net in NETS for entry, mode in reference_entries(net)
         if entry in GRADIENT_FAMILY]


def test_every_gradient_family_entry_is_checked():
    assert len(CASES) == 26  # 7 analyzers × 2 modes × 2 nets, IG has no "index" entry


@pytest.mark.parametrize(("net", "entry", "mode"), CASES)
def test_matches_innvestigate(net, entry, mode):
    model, x, data = reference_model(net)
    name, kwargs = analyzer_kwargs(data, entry)
    analyzer = lx.create_analyzer(name, model, neuron_selection_mode=mode, **kwargs)
    result = analyzer.analyze(x, neuron_selection=INDEX if mode == "index" else None)
    assert relative_error(result, data[f"{entry}|{mode}"]) < 1e-4


def small_cnn(activation: type[nn.Module] = nn.ReLU) -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(2, 4, 3), activation(), nn.MaxPool2d(2), nn.Flatten(),
                         nn.Linear(36, 8), activation(), nn.Linear(8, 5)).eval()


def test_integrated_gradients_one_step_is_gradient_at_reference_times_difference():
    # left Riemann sum with one point: the gradient at the reference, times (x - x0)
    model, x = small_cnn(), torch.randn(3, 2, 8, 8)
    reference = torch.randn(1, 2, 8, 8)
    ig = lx.create_analyzer("integrated_gradients", model, steps=1, reference_inputs=reference,
                            neuron_selection_mode="index")
    point = reference.expand_as(x).clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(model(point)[:, 1].sum(), point)
    torch.testing.assert_close(ig.analyze(x, 1), (x - reference) * grad)


def test_integrated_gradients_from_zero_on_a_linear_model_is_input_times_gradient():
    # on a linear model the gradient is the same at every point of the path
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 4)).eval()
    x = torch.randn(5, 3, 4)
    ig = lx.create_analyzer("integrated_gradients", model, steps=1)
    ixg = lx.create_analyzer("input_t_gradient", model)
    torch.testing.assert_close(ig.analyze(x), ixg.analyze(x))


def test_integrated_gradients_completeness_with_many_steps():
    model, x = small_cnn(nn.Softplus), torch.randn(2, 2, 8, 8)
    ig = lx.create_analyzer("integrated_gradients", model, steps=256, batch_size=64,
                            neuron_selection_mode="index")
    total = ig.analyze(x, 0).flatten(1).sum(1)
    expected = model(x)[:, 0] - model(torch.zeros_like(x))[:, 0]
    torch.testing.assert_close(total, expected, atol=2e-3, rtol=1e-2)


def test_integrated_gradients_chunking_does_not_change_the_result():
    model, x = small_cnn(), torch.randn(3, 2, 8, 8)
    whole = lx.create_analyzer("integrated_gradients", model, steps=10, batch_size=1000)
    chunked = lx.create_analyzer("integrated_gradients", model, steps=10, batch_size=7)
    torch.testing.assert_close(whole.analyze(x), chunked.analyze(x))


@pytest.mark.parametrize(("shape", "batch_size", "points"), [
    ((8, 1, 8, 8), None, 8),        # 64 values per input: chunks of 64 inputs
    ((16, 3, 64, 64), None, 1),     # 12288 values: 21 fit in 2**18, fewer than the batch
    ((2, 3, 224, 224), None, 1),    # one copy of the batch, however large the inputs
    ((16, 3, 64, 64), 64, 4),       # batch_size given: as before
    ((16, 3, 8, 8), 20, 1),         # at least one copy of the batch
])
def test_points_per_chunk(shape, batch_size, points):
    analyzer = lx.create_analyzer("integrated_gradients", nn.Flatten(), batch_size=batch_size)
    assert analyzer.points_per_chunk(torch.zeros(shape)) == points


def test_automatic_chunks_give_the_result_of_explicit_ones():
    model, x = small_cnn(), torch.randn(3, 2, 8, 8)
    automatic = lx.create_analyzer("integrated_gradients", model, steps=30)
    one_pass_each = lx.create_analyzer("integrated_gradients", model, steps=30, batch_size=3)
    torch.testing.assert_close(automatic.analyze(x), one_pass_each.analyze(x))


def test_smoothgrad_without_noise_is_the_gradient():
    model, x = small_cnn(), torch.randn(3, 2, 8, 8)
    smooth = lx.create_analyzer("smoothgrad", model, augment_by_n=4, noise_scale=0.0)
    gradient = lx.create_analyzer("gradient", model)
    torch.testing.assert_close(smooth.analyze(x), gradient.analyze(x))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_path_methods_sum_their_points_finer_than_a_16_bit_model(dtype):
    """Many points, two a chunk: a bfloat16 running sum lost most of them (SmoothGrad
    without noise 86 % off its gradient, IG from zero on a linear model half of x·∇f)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 3)).to(dtype)
    x = torch.randn(2, 6).to(dtype)
    gradient = lx.create_analyzer("gradient", model).analyze(x)
    smooth = lx.create_analyzer("smoothgrad", model, augment_by_n=2048, noise_scale=0.0,
                                batch_size=2).analyze(x)
    torch.testing.assert_close(smooth, gradient)
    integrated = lx.create_analyzer("integrated_gradients", model, steps=1024,
                                    batch_size=2).analyze(x)
    torch.testing.assert_close(integrated.float(), (x * gradient).float(), rtol=1e-2,
                               atol=1e-3)


def test_smoothgrad_is_the_mean_gradient_over_its_own_noise():
    model, x = small_cnn(), torch.randn(2, 2, 8, 8)
    smooth = lx.create_analyzer("smoothgrad", model, augment_by_n=3, noise_scale=0.2, seed=5,
                                postprocess="square", neuron_selection_mode="index")
    sigma = (x.flatten(1).amax(1) - x.flatten(1).amin(1)).reshape(2, 1, 1, 1) * 0.2
    noise = torch.randn((3, *x.shape), generator=torch.Generator().manual_seed(5))
    expected = torch.zeros_like(x)
    for k in range(3):
        point = (x + noise[k] * sigma).requires_grad_(True)
        (grad,) = torch.autograd.grad(model(point)[:, 4].sum(), point)
        expected += grad.square() / 3
    torch.testing.assert_close(smooth.analyze(x, 4), expected)


def test_smoothgrad_is_seeded_and_leaves_the_global_rng_alone():
    model, x = small_cnn(), torch.randn(2, 2, 8, 8)
    state = torch.get_rng_state()
    first = lx.create_analyzer("smoothgrad", model, augment_by_n=4, seed=1).analyze(x)
    second = lx.create_analyzer("smoothgrad", model, augment_by_n=4, seed=1).analyze(x)
    assert torch.equal(torch.get_rng_state(), state)
    torch.testing.assert_close(first, second)


@pytest.mark.parametrize("name", ["deconvnet", "guided_backprop"])
def test_relu_rules_equal_gradient_times_logit_without_relu(name):
    # no ReLU: nothing to modify; the backward starts from the logit's value
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(2, 3, 3), nn.MaxPool2d(2), nn.Flatten(),
                          nn.Linear(27, 4)).eval()
    x = torch.randn(3, 2, 8, 8)
    logits = model(x)
    top = logits.argmax(1)
    gradient = lx.create_analyzer("gradient", model).analyze(x)
    expected = gradient * logits.gather(1, top[:, None]).reshape(3, 1, 1, 1)
    torch.testing.assert_close(lx.create_analyzer(name, model).analyze(x), expected)


class FunctionalNet(nn.Module):
    """The module net of `small_cnn`, with every ReLU written as a function call."""

    def __init__(self, modules: nn.Sequential, style: str) -> None:
        super().__init__()
        self.conv, self.fc1, self.fc2 = modules[0], modules[4], modules[6]
        self.style = style

    def relu(self, x):
        return {"F.relu": F.relu, "torch.relu": torch.relu, "Tensor.relu": torch.Tensor.relu,
                "inplace": lambda t: F.relu(t, inplace=True)}[self.style](x)

    def forward(self, x):
        x = F.max_pool2d(self.relu(self.conv(x)), 2)
        return self.fc2(self.relu(self.fc1(x.flatten(1))))


@pytest.mark.parametrize("name", ["deconvnet", "guided_backprop", "deep_lift"])
@pytest.mark.parametrize("style", ["F.relu", "torch.relu", "Tensor.relu", "inplace"])
def test_functional_relu_gets_the_same_rule_as_the_module(name, style):
    modules = small_cnn()
    x = torch.randn(3, 2, 8, 8)
    expected = lx.create_analyzer(name, modules).analyze(x)
    result = lx.create_analyzer(name, FunctionalNet(modules, style)).analyze(x)
    torch.testing.assert_close(result, expected)


@pytest.mark.parametrize("name", ["deconvnet", "guided_backprop"])
def test_relu_rules_on_a_resnet_with_functional_relu_and_inplace_add(name):
    model = ResNetStyle(in_channels=2, num_classes=4, width=4).eval()
    x = torch.randn(2, 2, 16, 16)
    result = lx.create_analyzer(name, model).analyze(x)
    gradient = lx.create_analyzer("gradient", model).analyze(x)
    assert result.shape == x.shape and torch.isfinite(result).all()
    assert not torch.allclose(result, gradient)  # the rules did reach the F.relu calls


@pytest.mark.parametrize("name", ["deconvnet", "guided_backprop", "deep_lift"])
def test_unhandled_nonlinearity_is_an_error_naming_it(name):
    model = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 4), nn.Softmax(dim=1))
    with pytest.raises(ValueError, match="model_wo_softmax"):
        lx.create_analyzer(name, model)

    class Gated(nn.Module):
        def __init__(self):
            super().__init__()
            self.inner = nn.Sequential(nn.Linear(4, 4), nn.GELU())
            self.out = nn.Linear(4, 2)

        def forward(self, x):
            h = self.inner(x)
            return self.out(h * torch.sigmoid(x))  # (h * sigmoid(h) is elementwise in h)

    expected = "gelu" if name != "deep_lift" else "mul"
    with pytest.raises(lx.NotAnalyzableModelError, match=expected) as error:
        lx.create_analyzer(name, Gated()).analyze(torch.randn(2, 4))
    if name != "deep_lift":
        assert "inner.1" in str(error.value) and "GELU" in str(error.value)


def test_guided_backprop_by_hand():
    # y = w2 · relu(W1 x): a 2-unit hidden layer, one positive and one negative pre-activation
    model = nn.Sequential(nn.Linear(2, 2, bias=False), nn.ReLU(), nn.Linear(2, 1, bias=False))
    model[0].weight.data = torch.tensor([[1.0, 2.0], [-1.0, 1.0]])
    model[2].weight.data = torch.tensor([[3.0, -1.0]])
    x = torch.tensor([[1.0, 1.0]])  # hidden pre-activations (3, 0): unit 2 is off
    value = 9.0  # 3 * relu(3) - 1 * relu(0)
    guided = lx.create_analyzer("guided_backprop", model).analyze(x)
    deconv = lx.create_analyzer("deconvnet", model).analyze(x)
    # backward from 9: hidden signal (27, -9); guided keeps unit 1 only (positive & active)
    torch.testing.assert_close(guided, value * 3.0 * torch.tensor([[1.0, 2.0]]))
    # deconvnet keeps positive parts only, whatever the forward: also unit 1
    torch.testing.assert_close(deconv, value * 3.0 * torch.tensor([[1.0, 2.0]]))


def test_deep_lift_by_hand():
    # f(x) = relu(x1 - x2) + 2 relu(x2), reference 0
    model = nn.Sequential(nn.Linear(2, 2, bias=False), nn.ReLU(), nn.Linear(2, 1, bias=False))
    model[0].weight.data = torch.tensor([[1.0, -1.0], [0.0, 1.0]])
    model[2].weight.data = torch.tensor([[1.0, 2.0]])
    x = torch.tensor([[3.0, 1.0]])
    # unit 1: Δ = 2 over Δz = 2 → m = 1; unit 2: Δ = 1 over Δz = 1 → m = 1
    # contributions: x1 → 1·3 = 3; x2 → (−1 + 2)·1 = 1; total 4 = f(x) − f(0)
    result = lx.create_analyzer("deep_lift", model).analyze(x)
    torch.testing.assert_close(result, torch.tensor([[3.0, 1.0]]))
    reference = torch.tensor([[4.0, 0.0]])  # unit 1 goes from 4 to 2: slope 1; unit 2 0→1
    result = lx.create_analyzer("deep_lift", model, reference_inputs=reference).analyze(x)
    torch.testing.assert_close(result, torch.tensor([[-1.0, 1.0]]))


@pytest.mark.parametrize("activation", [nn.ReLU, nn.Sigmoid, nn.Tanh])
def test_deep_lift_sums_to_the_output_difference(activation):
    model, x = small_cnn(activation), torch.randn(4, 2, 8, 8)
    reference = torch.randn(1, 2, 8, 8) * 0.3
    deep_lift = lx.create_analyzer("deep_lift", model, reference_inputs=reference,
                                   neuron_selection_mode="index")
    total = deep_lift.analyze(x, 3).flatten(1).sum(1)
    expected = model(x)[:, 3] - model(reference)[:, 3]
    torch.testing.assert_close(total, expected, atol=1e-5, rtol=1e-4)


def test_deep_lift_on_a_resnet_sums_to_the_output_difference():
    model = ResNetStyle(in_channels=2, num_classes=4, width=4).eval()
    for module in model.modules():  # non-trivial BatchNorm statistics
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
    x = torch.randn(2, 2, 16, 16)
    result = lx.create_analyzer("deep_lift", model, neuron_selection_mode="all").analyze(x)
    expected = (model(x) - model(torch.zeros_like(x))).sum(1)
    torch.testing.assert_close(result.flatten(1).sum(1), expected, atol=1e-4, rtol=1e-4)


class InPlaceResidual(nn.Module):
    """``h += x`` on a kernel layer's output, a handler's output under LRP rules."""

    def __init__(self, in_place: bool):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(3, 3), nn.Linear(3, 2)
        self.in_place = in_place

    def forward(self, x):
        h = self.fc1(x)
        if self.in_place:
            h += x
        else:
            h = h + x
        return self.fc2(F.relu(h))


@pytest.mark.parametrize("name", ["gradient", "guided_backprop", "deep_lift", "lrp.epsilon",
                                  "lrp.alpha_2_beta_1"])
def test_in_place_add_on_a_rule_output_equals_the_out_of_place_add(name):
    torch.manual_seed(0)
    in_place = InPlaceResidual(in_place=True)
    out_of_place = InPlaceResidual(in_place=False)
    out_of_place.load_state_dict(in_place.state_dict())
    x = torch.randn(4, 3)
    torch.testing.assert_close(lx.create_analyzer(name, in_place).analyze(x),
                               lx.create_analyzer(name, out_of_place).analyze(x))


def forward_batches(model: nn.Module, run) -> list[int]:
    """Batch sizes of the model's forward passes during ``run()``."""
    sizes: list[int] = []
    handle = model.register_forward_pre_hook(lambda module, args: sizes.append(len(args[0])))
    try:
        run()
    finally:
        handle.remove()
    return sizes


@pytest.mark.parametrize(("mode", "selection_passes"), [("max_activation", [3]), ("index", [])])
@pytest.mark.parametrize("name", ["integrated_gradients", "smoothgrad"])
def test_path_analyzers_choose_the_neurons_once_per_analysis(name, mode, selection_passes):
    # 10 points of 3 samples in chunks of at most 12 inputs: chunks of 4, 4 and 2 points.
    # "max_activation" chooses each sample's output on x itself in one forward pass of x,
    # not once per chunk; "index" needs no pass of its own.
    model, x = small_cnn(), torch.randn(3, 2, 8, 8)
    points = {"steps": 10} if name == "integrated_gradients" else {"augment_by_n": 10}
    analyzer = lx.create_analyzer(name, model, neuron_selection_mode=mode, batch_size=12,
                                  **points)
    selection = 1 if mode == "index" else None
    analyzer.analyze(x, selection)  # a first call may check the model once (softmax)
    sizes = forward_batches(model, lambda: analyzer.analyze(x, selection))
    assert sorted(sizes) == sorted(selection_passes + [12, 12, 6])


def test_integrated_gradients_explains_the_neuron_chosen_at_the_input():
    # the top class at x differs from the top class along most of the path
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 2)).eval()
    with torch.no_grad():
        model[1].weight.copy_(torch.tensor([[1.0, 0, 0, 0], [0, 0, 0, 0]]))
        model[1].bias.copy_(torch.tensor([0.0, 0.5]))
    x = torch.tensor([[1.0, 2.0, 3.0, 4.0]])  # logits (1, 0.5): class 0; at α < 0.5: class 1
    ig = lx.create_analyzer("integrated_gradients", model, steps=8)
    # linear model: IG = (x − 0) ⊙ w_c for the class chosen at x, c = 0
    torch.testing.assert_close(ig.analyze(x), torch.tensor([[1.0, 0, 0, 0]]))


class _Reciprocal(nn.Module):
    """``1 / (1 + relu(h))``, written as a division by the tensor or as its reciprocal."""

    def __init__(self, spelling: str) -> None:
        super().__init__()
        self.first, self.second, self.spelling = nn.Linear(5, 6), nn.Linear(6, 3), spelling

    def forward(self, x: Tensor) -> Tensor:
        t = 1.0 + F.relu(self.first(x))
        inverse = {"slash": lambda: 1.0 / t, "div": lambda: torch.div(2.0, t) / 2,
                   "method": lambda: t.reciprocal()}[self.spelling]()
        return self.second(inverse)


@pytest.mark.parametrize("spelling", ["slash", "div", "method"])
@pytest.mark.parametrize("name", ["guided_backprop", "deconvnet"])
def test_a_division_by_a_computed_tensor_is_no_linear_operation(spelling, name):
    """``1 / t`` is a non-linearity of ``t``, as ``t.reciprocal()`` is: Guided Backprop and
    Deconvnet (ReLU-only) refuse it in every spelling. ``1 / t`` was classed as linear and
    passed its plain gradient with no error."""
    torch.manual_seed(0)
    model = _Reciprocal(spelling).eval()
    with pytest.raises(lx.NotAnalyzableModelError, match="activation"):
        lx.create_analyzer(name, model).analyze(torch.randn(4, 5))


class _HandSigmoid(nn.Module):
    def __init__(self, by_hand: bool) -> None:
        super().__init__()
        self.first, self.second, self.by_hand = nn.Linear(5, 6), nn.Linear(6, 3), by_hand

    def forward(self, x: Tensor) -> Tensor:
        h = self.first(x)
        return self.second(1 / (1 + torch.exp(-h)) if self.by_hand else torch.sigmoid(h))


def test_deep_lift_of_a_sigmoid_written_as_a_division_is_the_sigmoid_one():
    """DeepLIFT's rescale rule on ``1 / (1 + exp(-h))`` (each step an elementwise
    non-linearity of one tensor: the chain's secants multiply to the sigmoid's) gives the
    ``torch.sigmoid`` model's map. It raised, blaming the batch layout (34 % off delta)."""
    torch.manual_seed(0)
    hand = _HandSigmoid(by_hand=True).double().eval()
    plain = _HandSigmoid(by_hand=False).double().eval()
    plain.load_state_dict(hand.state_dict())
    x = torch.randn(4, 5, dtype=torch.double)
    torch.testing.assert_close(lx.create_analyzer("deep_lift", hand).analyze(x),
                               lx.create_analyzer("deep_lift", plain).analyze(x))
