"""Every piece of work that switches the model to eval mode puts it back through the modules'
own ``train(True)``: a LoRA layer as ``loralib`` writes it (``tests/zoo.py``) merges its
adapter into the frozen weight in ``train(False)`` and must take it out again, or its
adapter gets no gradient in the next training step."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from torch import nn
from zoo import LoRALinear

import lit_explain as lx


def lora_model() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 8), nn.ReLU(), LoRALinear(8, 4)).train()


def analyse(name: str) -> Callable[[nn.Module, torch.Tensor], object]:
    return lambda model, x: lx.create_analyzer(name, model).analyze(x)


WORK = {
    "gradient": analyse("gradient"),
    "lrp.epsilon": analyse("lrp.epsilon"),
    "pattern statistics": lambda model, x: lx.PatternComputer(model).update(x),
    "pixel flipping": lambda model, x: lx.metrics.PixelFlipping(model, steps=2).update(
        x, torch.randn_like(x)),
}


@pytest.mark.parametrize("work", list(WORK))
def test_work_in_eval_mode_leaves_a_lora_layer_training(work):
    model, x = lora_model(), torch.randn(5, 6)
    lora = model[2]
    weight = lora.weight.detach().clone()
    WORK[work](model, x)
    assert all(module.training for module in model.modules())
    assert not lora.merged  # (it stayed merged: a weight 0.03 off, no adapter gradient)
    torch.testing.assert_close(lora.weight, weight)
    model(x).square().sum().backward()
    assert lora.lora_A.grad is not None and lora.lora_B.grad is not None


def test_an_analysis_explains_the_merged_layer_in_eval_mode():
    """In eval mode the layer computes with its adapter merged, the same function: the map is
    the gradient of the model in eval mode, which autograd gives (the merged weight held)."""
    model, x = lora_model(), torch.randn(5, 6)
    reference = lora_model().eval()
    inputs = x.clone().requires_grad_(True)
    logits = reference(inputs)
    (expected,) = torch.autograd.grad(logits.max(1).values.sum(), inputs)
    torch.testing.assert_close(lx.create_analyzer("gradient", model).analyze(x), expected)


class Wrapper(nn.Module):
    """Overrides ``train`` as DistributedDataParallel does (and a frozen-stage backbone,
    which freezes its first layer in it)."""

    def __init__(self, inner: nn.Module, freezes: bool = False) -> None:
        super().__init__()
        self.inner, self.freezes = inner, freezes

    def train(self, mode: bool = True) -> Wrapper:
        super().train(mode)
        if self.freezes and mode:
            self.inner[0].weight.requires_grad_(False)
        return self

    def forward(self, x):
        return self.inner(x)


class RefusesEval(nn.Module):
    def train(self, mode: bool = True) -> RefusesEval:
        if not mode:
            raise RuntimeError("cannot switch to eval now")
        return super().train(mode)

    def forward(self, x):
        return x


@pytest.mark.parametrize("work", list(WORK))
def test_a_submodule_in_eval_mode_is_left_as_it_was(work):
    """The wrapper's own train(True) reached a LoRA layer the user had put in eval mode
    (merged): it took the adapter out of its weight (0.054 off), its flag still eval."""
    model, x = Wrapper(lora_model()).train(), torch.randn(5, 6)
    lora = model.inner[2].eval()
    weight = lora.weight.detach().clone()
    WORK[work](model, x)
    assert lora.merged and not lora.training
    assert torch.equal(lora.weight, weight)


@pytest.mark.parametrize("work", list(WORK))
def test_requires_grad_comes_back_after_a_train_that_freezes(work):
    """A train() that freezes a stage (mmdet's frozen_stages) froze, after the work, a
    parameter the user had unfrozen since."""
    model, x = Wrapper(lora_model(), freezes=True).train(), torch.randn(5, 6)
    model.inner[0].weight.requires_grad_(True)
    WORK[work](model, x)
    assert model.inner[0].weight.requires_grad


@pytest.mark.parametrize("work", ["gradient", "pattern statistics"])
def test_the_flags_come_back_when_a_module_refuses_eval_mode(work):
    """model.eval() ran before the work's own restoring began: the modules it had switched
    before the one that raised stayed in eval mode."""
    model = nn.Sequential(nn.Linear(6, 8), nn.BatchNorm1d(8), RefusesEval(),
                          nn.Linear(8, 4)).train()
    with pytest.raises(RuntimeError, match="cannot switch to eval now"):
        WORK[work](model, torch.randn(5, 6))
    assert all(module.training for module in model.modules())


@pytest.mark.parametrize("work", list(WORK))
def test_a_lora_layer_whose_dropout_is_in_eval_mode_trains_again(work):
    """Its own train(True) did not run where a submodule of it was in eval mode (the usual
    way of switching its dropout off): it stayed merged, its adapter without gradient."""
    model, x = lora_model(), torch.randn(5, 6)
    lora = model[2]
    lora.dropout = nn.Dropout(0.1).eval()
    weight = lora.weight.detach().clone()
    WORK[work](model, x)
    assert lora.training and not lora.merged and not lora.dropout.training
    torch.testing.assert_close(lora.weight, weight)


@pytest.mark.parametrize("work", list(WORK))
def test_a_training_layer_inside_an_eval_module_inside_a_wrapper_trains_again(work):
    """Putting the eval-mode part back through its own train(False) merged a LoRA layer
    inside it that was training (its adapter then got no gradient)."""
    encoder = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), LoRALinear(8, 4)).eval()
    encoder[2].train()
    model, x = Wrapper(encoder), torch.randn(5, 6)
    model.training = True  # (the wrapper in train mode, the encoder in eval, its LoRA training)
    WORK[work](model, x)
    assert encoder[2].training and not encoder[2].merged and not encoder.training
