"""Shared data for the pattern tests: the linear toy of Kindermans et al. 2018 (Fig. 2)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

import lit_explain as lx
from lit_explain import PatternComputer


def linear_toy(n: int = 4000, dims: int = 5, seed: int = 0):
    """x = a_s·y + a_d·ε, and the filter w with w·a_d = 0, w·a_s = 1 (so w·x = y).

    Returns ``(x, y, a_s, model)`` with ``model = nn.Linear(dims, 1, bias=False)`` holding w.
    """
    g = torch.Generator().manual_seed(seed)
    a_s, a_d = torch.randn(dims, generator=g), torch.randn(dims, generator=g)
    w = a_s - (a_s @ a_d) / (a_d @ a_d) * a_d  # orthogonal to the distractor
    w = w / (w @ a_s)
    y, eps = torch.randn(n, generator=g), torch.randn(n, generator=g)
    x = y[:, None] * a_s + eps[:, None] * a_d
    model = nn.Linear(dims, 1, bias=False)
    with torch.no_grad():
        model.weight.copy_(w[None])
    return x, y, a_s, model


def cosine(a: Tensor, b: Tensor) -> float:
    return F.cosine_similarity(a.flatten().double(), b.flatten().double(), dim=0).item()


def small_cnn(seed: int = 0) -> nn.Sequential:
    """Conv-BN-ReLU, grouped conv with reflect padding, Conv1d-free dense head."""
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(2, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
        nn.Conv2d(4, 4, 3, padding=1, groups=2, padding_mode="reflect"), nn.ReLU(),
        nn.MaxPool2d(2), nn.Flatten(), nn.Linear(4 * 3 * 3, 6), nn.ReLU(), nn.Linear(6, 3))


PATTERN_ANALYZERS = ("pattern.net", "pattern.attribution")


def fit_and_explain(model: nn.Module, batches: list[Tensor], x: Tensor):
    """Patterns of ``model`` fit on ``batches``, and per pattern analyzer the analyzer and its
    map of ``x``: ``(patterns, analyzers, maps)``."""
    patterns = PatternComputer(model).fit(batches, progress=False)
    analyzers = {name: lx.create_analyzer(name, model, patterns=patterns)
                 for name in PATTERN_ANALYZERS}
    maps = {name: analyzer.analyze(x) for name, analyzer in analyzers.items()}
    return patterns, analyzers, maps


def assert_relatively_close(actual: Tensor, expected: Tensor, tolerance: float = 1e-5) -> None:
    """``max|actual − expected| ≤ tolerance · max|expected|`` (and the same shape)."""
    assert actual.shape == expected.shape
    error = float((actual - expected).abs().max())
    assert error <= tolerance * float(expected.abs().max()), error
