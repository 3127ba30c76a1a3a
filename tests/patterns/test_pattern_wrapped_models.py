"""PatternComputer on models wrapped the way training code wraps them: ``torch.compile`` and
``torch.func.functional_call``. The truth is the same network fit directly."""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
from torch import nn
from torch.func import functional_call
from torch.nn.utils.parametrizations import weight_norm

import lit_explain as lx
from lit_explain.patterns import PatternComputer

PATTERN_ANALYZERS = ["pattern.net", "pattern.attribution"]


def mlp(weight_normed: bool = False) -> nn.Sequential:
    model = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3))
    if weight_normed:
        model[0] = weight_norm(model[0])
    return model.eval()


class Teacher(nn.Module):
    """Runs ``arch`` (the student's modules) with parameters of its own, as an EMA teacher
    does."""

    def __init__(self, arch: nn.Module, parameters: dict[str, torch.Tensor]) -> None:
        super().__init__()
        self.arch = arch
        self.names = list(parameters)
        self.own = nn.ParameterList(nn.Parameter(p.detach().clone())
                                    for p in parameters.values())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return functional_call(self.arch, dict(zip(self.names, self.own, strict=True)), (x,))


def test_a_compiled_model_gets_the_patterns_and_maps_of_its_original_module():
    # (the keys were '_orig_mod.0', '_orig_mod.2', which the analyzers, explaining the
    # original module, refused as "not a module with a weight")
    torch.manual_seed(0)
    model, data, x = mlp(), torch.randn(64, 6), torch.randn(4, 6)
    compiled = torch.compile(model, backend="eager")
    expected = PatternComputer(model).fit([data], progress=False)
    patterns = PatternComputer(compiled).fit([data], progress=False)
    assert sorted(patterns) == sorted(expected) == ["0", "2"]
    for path in expected:
        torch.testing.assert_close(patterns[path], expected[path], rtol=0, atol=0)
    for name in PATTERN_ANALYZERS:
        torch.testing.assert_close(
            lx.create_analyzer(name, compiled, patterns=patterns).analyze(x),
            lx.create_analyzer(name, model, patterns=expected).analyze(x))


def test_patterns_keyed_by_the_compiled_wrapper_are_refused_naming_the_prefix():
    model = mlp()
    patterns = {"_orig_mod.0": torch.zeros(8, 6)}
    with pytest.raises(ValueError, match=r"'_orig_mod\.0'.*kernel layers: \['0', '2'\].*"
                                         r"without '_orig_mod\.'"):
        lx.create_analyzer("pattern.attribution", torch.compile(model, backend="eager"),
                           patterns=patterns)


@pytest.mark.parametrize("weight_normed", [False, True], ids=["plain", "weight_norm"])
def test_layers_run_by_functional_call_get_the_patterns_of_the_weights_they_ran_with(
        weight_normed):
    # (the statistics came from the teacher's weights and the normalisation from the
    # student's stored ones: patterns 20-28x off, PatternAttribution's map 728x off, and a
    # "weight changed" warning that refitting could not silence)
    torch.manual_seed(0)
    student, teacher = mlp(weight_normed), mlp(weight_normed)
    wrapped = Teacher(copy.deepcopy(student), dict(teacher.named_parameters())).eval()
    data, x = torch.randn(256, 6), torch.randn(4, 6)
    with torch.no_grad():
        torch.testing.assert_close(wrapped(data), teacher(data), rtol=0, atol=0)
    expected = PatternComputer(teacher).fit([data], progress=False)
    patterns = PatternComputer(wrapped).fit([data], progress=False)
    assert sorted(patterns) == sorted("arch." + path for path in expected)
    for path in expected:
        torch.testing.assert_close(patterns["arch." + path], expected[path])
    for name in PATTERN_ANALYZERS:
        reference = lx.create_analyzer(name, teacher, patterns=expected).analyze(x)
        with warnings.catch_warnings():
            warnings.simplefilter("error", UserWarning)  # (the weights did not change)
            given = lx.create_analyzer(name, wrapped, patterns=patterns).analyze(x)
            fitted = lx.create_analyzer(name, wrapped).fit(data, progress=False).analyze(x)
        torch.testing.assert_close(given, reference)
        torch.testing.assert_close(fitted, reference)


def test_a_teacher_updated_after_the_fit_is_a_stale_pattern_warning():
    # (the weight the call receives is the one checked, not the student's stored one)
    torch.manual_seed(0)
    student, teacher = mlp(), mlp()
    wrapped = Teacher(copy.deepcopy(student), dict(teacher.named_parameters())).eval()
    data = torch.randn(64, 6)
    analyzer = lx.create_analyzer("pattern.attribution", wrapped).fit(data, progress=False)
    with torch.no_grad():
        wrapped.own[0].mul_(3.0)  # an EMA update of the teacher's first weight
    with pytest.warns(UserWarning, match=r"the weight of 'arch\.0' changed"):
        analyzer.analyze(data[:4])
