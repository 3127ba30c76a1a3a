"""Pattern analyzers on layers as real models write them, each against an independent truth:
the same computation written with plain modules.

* Frames folded into the batch (``reshape(B * T, ...)`` before a per-frame CNN) explain as
  the same CNN called once per frame.
* A layer that computes its weight in ``forward`` (weight standardisation, weight_norm, a
  softplus weight) explains as a plain layer holding the weight it computes.
* A kernel call made outside a kernel-layer module is refused with
  ``NotAnalyzableModelError``.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from pattern_helpers import PATTERN_ANALYZERS, assert_relatively_close, fit_and_explain
from torch import Tensor, nn
from torch.nn.utils.parametrizations import weight_norm

import lit_explain as lx
from lit_explain.patterns import PatternComputer


def noisy_batches(x: Tensor, n: int = 4, seed: int = 0) -> list[Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [x + 0.3 * torch.randn(x.shape, generator=g, dtype=x.dtype) for _ in range(n)]


def assert_same_explanations(model: nn.Module, twin: nn.Module, x: Tensor) -> None:
    """Equal patterns (fit on the same data) and equal maps of both pattern analyzers."""
    patterns, _, maps = fit_and_explain(model, noisy_batches(x), x)
    twin_patterns, _, twin_maps = fit_and_explain(twin, noisy_batches(x), x)
    assert patterns.keys() == twin_patterns.keys()
    for path, pattern in patterns.items():
        assert_relatively_close(pattern, twin_patterns[path])
    for name in PATTERN_ANALYZERS:
        assert_relatively_close(maps[name], twin_maps[name])


# Frames folded into the batch ----------------------------------------------------------------

class PerFrameCNN(nn.Module):
    """(B, T, C, H, W) → a CNN on each frame → mean over time → classes."""

    def __init__(self, fold: bool) -> None:
        super().__init__()
        self.fold = fold
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.fc = nn.Linear(4, 3)

    def frame_features(self, frames: Tensor) -> Tensor:
        return F.relu(self.conv(frames)).mean((2, 3))

    def forward(self, video: Tensor) -> Tensor:
        batch, time = video.shape[:2]
        if self.fold:
            folded = video.reshape(batch * time, *video.shape[2:])
            features = self.frame_features(folded).view(batch, time, -1)
        else:
            features = torch.stack([self.frame_features(video[:, t]) for t in range(time)], 1)
        return self.fc(features.mean(1))


def test_frames_folded_into_the_batch_explain_as_the_cnn_called_per_frame():
    torch.manual_seed(0)
    folded = PerFrameCNN(fold=True).double().eval()
    per_frame = PerFrameCNN(fold=False).double().eval()
    per_frame.load_state_dict(folded.state_dict())
    video = torch.randn(2, 4, 3, 8, 8, dtype=torch.float64)
    assert_same_explanations(folded, per_frame, video)
    # the scale check sees the same rows, one per (sample, frame), in both
    _, folded_analyzers, _ = fit_and_explain(folded, noisy_batches(video), video)
    _, frame_analyzers, _ = fit_and_explain(per_frame, noisy_batches(video), video)
    for name in PATTERN_ANALYZERS:
        scales = folded_analyzers[name].signal_scales
        assert scales.keys() == {"conv", "fc"}
        for path, ratio in frame_analyzers[name].signal_scales.items():
            assert scales[path] == pytest.approx(ratio, rel=1e-9)


class FoldedMLP(nn.Module):
    """(B, T, F) → fc1 on every (sample, step) row → ReLU → sum over time → fc2."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(5, 6)
        self.fc2 = nn.Linear(6, 3)

    def forward(self, x: Tensor) -> Tensor:
        batch, time, features = x.shape
        hidden = F.relu(self.fc1(x.reshape(batch * time, features)))
        return self.fc2(hidden.view(batch, time, -1).sum(1))


def test_pattern_attribution_by_hand_on_a_layer_whose_rows_are_frames():
    """R_h = (w₂⊙a₂)ᵀ R_top, copied to every step where fc1's output is positive, is fc1's
    R_out; R_in = (w₁⊙a₁)ᵀ R_out is the map. The scale check compares Σ|R_in| with the
    top's Σ|R| per sample for fc2, and over the whole batch for fc1, whose rows are steps."""
    torch.manual_seed(0)
    model = FoldedMLP().double().eval()
    x = torch.randn(2, 3, 5, dtype=torch.float64)
    patterns = PatternComputer(model).fit(noisy_batches(x), progress=False)
    analyzer = lx.create_analyzer("pattern.attribution", model, patterns=patterns)
    result = analyzer.analyze(x)

    logits = model(x).detach()
    top = torch.zeros_like(logits).scatter(1, logits.argmax(1, keepdim=True),
                                           logits.amax(1, keepdim=True))
    relevance_h = top @ (model.fc2.weight * patterns["fc2"]).detach()  # (B, 6)
    active = model.fc1(x.reshape(6, 5)).detach() > 0
    relevance_out = relevance_h.repeat_interleave(3, dim=0) * active  # (B·T, 6)
    relevance_in = relevance_out @ (model.fc1.weight * patterns["fc1"]).detach()
    torch.testing.assert_close(result, relevance_in.view(2, 3, 5))

    top_sum = top.abs().sum(1)
    assert analyzer.signal_scales == pytest.approx({
        "fc2": float((relevance_h.abs().sum(1) / top_sum).max()),
        "fc1": float(relevance_in.abs().sum() / top_sum.sum())}, rel=1e-9)


# Layers that compute their weight in forward ----------------------------------------------

def standardise(weight: Tensor) -> Tensor:
    dims = tuple(range(1, weight.dim()))
    mean = weight.mean(dims, keepdim=True)
    return (weight - mean) / torch.sqrt(weight.var(dims, keepdim=True, unbiased=False) + 1e-5)


class StandardisedConv2d(nn.Conv2d):
    """Weight standardisation (Qiao et al. 2019), as in BiT ResNets."""

    def forward(self, x: Tensor) -> Tensor:
        return F.conv2d(x, standardise(self.weight), self.bias, self.stride, self.padding)


def cnn(conv: type[nn.Module] = nn.Conv2d) -> nn.Sequential:
    return nn.Sequential(conv(3, 6, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                         conv(6, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                         nn.Flatten(), nn.Linear(8, 5))


def plain_twin(model: nn.Sequential) -> nn.Sequential:
    """``cnn()`` holding the weights that ``model``'s layers compute."""
    twin = cnn().double().eval()
    with torch.no_grad():
        for layer, plain in zip(model, twin, strict=True):
            if isinstance(layer, nn.Conv2d | nn.Linear):
                plain.weight.copy_(layer.weight if not isinstance(layer, StandardisedConv2d)
                                   else standardise(layer.weight))
                plain.bias.copy_(layer.bias)
    return twin


def test_weight_standardised_convolutions_explain_as_plain_ones_with_their_weights():
    torch.manual_seed(0)
    model = cnn(StandardisedConv2d).double().eval()
    x = torch.randn(2, 3, 12, 12, dtype=torch.float64)
    twin = plain_twin(model)
    torch.testing.assert_close(model(x), twin(x))
    assert_same_explanations(model, twin, x)


def test_weight_norm_layers_explain_as_plain_ones_with_their_weights():
    torch.manual_seed(0)
    model = cnn().double().eval()
    for index in (0, 3, 7):
        model[index] = weight_norm(model[index])
    x = torch.randn(2, 3, 12, 12, dtype=torch.float64)
    twin = plain_twin(model)
    torch.testing.assert_close(model(x), twin(x))
    assert_same_explanations(model, twin, x)


# Kernel calls outside kernel-layer modules --------------------------------------------------

class SoftplusHead(nn.Module):
    """A positive weight made with ``F.linear`` in forward, with no kernel-layer module."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(4, 6)
        self.raw = nn.Parameter(torch.randn(3, 6))

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(F.relu(self.fc1(x)), F.softplus(self.raw))


class SoftplusLinear(nn.Linear):
    """The same layer as an nn.Linear subclass (the rewrite the refusal asks for)."""

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x, F.softplus(self.weight), torch.tanh(self.bias))


@pytest.mark.parametrize("name", PATTERN_ANALYZERS)
def test_a_kernel_call_outside_a_kernel_layer_is_refused_saying_what_to_do(name):
    torch.manual_seed(0)
    model, x = SoftplusHead().eval(), torch.randn(2, 4)
    patterns = PatternComputer(model).fit([x], progress=False)
    with pytest.raises(lx.NotAnalyzableModelError,
                       match=r"linear in the model's own forward is a kernel call outside an "
                             r"nn.Linear.*subclass"):
        lx.create_analyzer(name, model, patterns=patterns).analyze(x)


def test_the_rewritten_layer_explains_as_a_plain_one_with_its_weight_and_bias():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), SoftplusLinear(6, 3)).double().eval()
    twin = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 3)).double().eval()
    with torch.no_grad():
        twin[0].load_state_dict(model[0].state_dict())
        twin[2].weight.copy_(F.softplus(model[2].weight))
        twin[2].bias.copy_(torch.tanh(model[2].bias))
    x = torch.randn(8, 4, dtype=torch.float64)
    torch.testing.assert_close(model(x), twin(x))
    assert_same_explanations(model, twin, x)


def test_loaded_statistics_of_a_layer_that_computes_its_weight_need_one_batch_first():
    torch.manual_seed(0)
    model = cnn(StandardisedConv2d).double().eval()
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    fitted = PatternComputer(model)
    fitted.fit(noisy_batches(x), progress=False)
    restored = PatternComputer(model)
    restored.load_state_dict(fitted.state_dict())
    with pytest.raises(RuntimeError, match="collect one batch"):
        restored.compute()
    restored.update(x)  # the weights it uses are known again: the same patterns as the
    fitted.update(x)  # computer that saw every batch
    expected = fitted.compute()
    for path, pattern in restored.compute().items():
        torch.testing.assert_close(pattern, expected[path])
