"""What an analysis does with the hooks of a model: backward hooks of the modules and gradient
hooks a forward pass registers are not part of the explained function; they see no analysis
and change no map."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.module import register_module_full_backward_hook

import lit_explain as lx

ANALYZERS = ["gradient", "input_t_gradient", "guided_backprop", "deep_lift", "lrp.z",
             "lrp.epsilon", "lrp.alpha_2_beta_1", "lrp.sequential_preset_a"]


class ConvBatchNormNet(nn.Module):
    def __init__(self, gradient_hook: bool = False) -> None:
        super().__init__()
        self.c1, self.bn1 = nn.Conv2d(3, 6, 3, padding=1), nn.BatchNorm2d(6)
        self.c2, self.bn2 = nn.Conv2d(6, 6, 3, padding=1), nn.BatchNorm2d(6)
        self.fc = nn.Linear(6, 4)
        self.gradient_hook = gradient_hook

    def forward(self, x):
        h = F.relu(self.bn1(self.c1(x)))
        if self.gradient_hook and h.requires_grad:  # as a Grad-CAM model stores a gradient
            h.register_hook(lambda grad: grad * 0.5)
        h = F.relu(self.bn2(self.c2(h)))
        return self.fc(F.adaptive_avg_pool2d(h, 1).flatten(1))


def conv_batch_norm_net(gradient_hook: bool = False) -> nn.Module:
    torch.manual_seed(0)
    model = ConvBatchNormNet(gradient_hook).double()
    with torch.no_grad():
        for bn in (model.bn1, model.bn2):
            bn.running_mean.normal_(0, 0.3)
            bn.running_var.uniform_(0.5, 1.5)
            bn.bias.normal_(0, 0.2)
    return model.eval()


@pytest.mark.parametrize("name", ANALYZERS)
def test_module_backward_hooks_see_no_analysis_and_change_no_map(name):
    model = conv_batch_norm_net()
    x = torch.randn(3, 3, 8, 8, dtype=torch.float64)
    expected = lx.create_analyzer(name, model).analyze(x)
    calls = []

    def halve(module, grad_input, grad_output):  # a hook that changes the gradient
        calls.append(module)
        return tuple(None if g is None else g * 0.5 for g in grad_input)

    handles = [model.c2.register_full_backward_hook(halve),
               model.bn1.register_full_backward_pre_hook(lambda m, g: calls.append(m)),
               model.fc.register_backward_hook(lambda m, gi, go: calls.append(m))]
    got = lx.create_analyzer(name, model).analyze(x)
    torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-12)
    assert calls == []
    model(x.requires_grad_()).sum().backward()  # the hooks are back for training
    assert set(calls) == {model.c2, model.bn1, model.fc}
    for handle in handles:
        handle.remove()
    assert all(not m._backward_hooks and not m._backward_pre_hooks for m in model.modules())


@pytest.mark.parametrize("name", ["guided_backprop", "deep_lift", "lrp.z", "lrp.epsilon",
                                  "lrp.alpha_2_beta_1", "lrp.w_square"])
def test_a_gradient_hook_registered_in_forward_is_not_registered_under_the_rules(name):
    """The rules define the backward pass: the map is that of the model without the hook."""
    x = torch.randn(3, 3, 8, 8, dtype=torch.float64)
    expected = lx.create_analyzer(name, conv_batch_norm_net()).analyze(x)
    got = lx.create_analyzer(name, conv_batch_norm_net(gradient_hook=True)).analyze(x)
    torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-12)


def test_the_gradient_methods_differentiate_the_forward_as_autograd_does():
    """A hook registered in forward is part of the code autograd runs (documented)."""
    model = conv_batch_norm_net(gradient_hook=True)
    x = torch.randn(3, 3, 8, 8, dtype=torch.float64, requires_grad=True)
    output = model(x)
    (expected,) = torch.autograd.grad(output.max(1).values.sum(), x)
    torch.testing.assert_close(lx.create_analyzer("gradient", model).analyze(x.detach()),
                               expected)


def test_a_global_module_backward_hook_is_refused_by_the_rules():
    model = conv_batch_norm_net()
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    handle = register_module_full_backward_hook(lambda m, gi, go: None)
    try:
        with pytest.raises(lx.NotAnalyzableModelError, match="global module backward hook"):
            lx.create_analyzer("lrp.z", model).analyze(x)
        assert lx.create_analyzer("gradient", model).analyze(x).shape == x.shape
    finally:
        handle.remove()
