"""LRP and Deep Taylor against iNNvestigate's reference attributions and the papers.

Entries the reference README does not list as departures must match iNNvestigate to 1e-4
of the map's largest value. The departures (alpha-beta bias, input-layer rules that 2.x
skips) are checked against the explicit matrix-form reference written from the papers;
the same reference with iNNvestigate's variant reproduces iNNvestigate's numbers, which
shows the departures are exactly the documented ones.
"""

from __future__ import annotations

import pytest
import torch
from lrp_reference import (
    alpha_beta_rule,
    bounded_rule,
    sequential_lrp,
    w_square_rule,
    z_plus_fast_rule,
    z_rule,
)
from reference_nets import (
    INDEX,
    NETS,
    analyzer_kwargs,
    reference_entries,
    reference_model,
    relative_error,
)
from torch import nn

import lit_explain as lx

ANALYZERS = ("lrp.", "deep_taylor")
TOLERANCE = 1e-4


def departs(net: str, entry: str) -> bool:
    """The reference README's list of entries where lit_explain follows the papers."""
    if entry in ("lrp.alpha_beta", "lrp.alpha_2_beta_1", "lrp.alpha_1_beta_0",
                 "lrp.sequential_preset_a_flat", "lrp.sequential_preset_b_flat",
                 "deep_taylor.bounded"):
        return True
    return net == "cnn_small" and entry in ("lrp.sequential_preset_a",
                                            "lrp.sequential_preset_b")


CASES = [(net, entry, mode) for net in NETS for entry, mode in reference_entries(net)
         if entry.startswith(ANALYZERS)]
MATCHING = [case for case in CASES if not departs(case[0], case[1])]
DEPARTING = [case for case in CASES if departs(case[0], case[1])]


def analyze(net: str, entry: str, mode: str) -> tuple[torch.Tensor, dict]:
    model, x, data = reference_model(net)
    name, kwargs = analyzer_kwargs(data, entry)
    analyzer = lx.create_analyzer(name, model, neuron_selection_mode=mode, **kwargs)
    return analyzer.analyze(x, neuron_selection=INDEX if mode == "index" else None), data


def explicit(net: str, entry: str, mode: str, innvestigate: bool = False) -> torch.Tensor:
    """The explicit matrix-form reference for ``entry`` (iNNvestigate 2.x's variant or
    the papers')."""
    model, x, data = reference_model(net)
    _, kwargs = analyzer_kwargs(data, entry)
    ab = dict(innvestigate_bias=innvestigate)
    dense_epsilon = z_rule(epsilon=0.1)
    kernel_rules = {
        "lrp.z": z_rule(), "lrp.epsilon": z_rule(epsilon=kwargs.get("epsilon", 0.1)),
        "lrp.w_square": w_square_rule, "lrp.flat": "flat",
        "lrp.alpha_beta": alpha_beta_rule(kwargs.get("alpha"), kwargs.get("beta"), **ab),
        "lrp.alpha_2_beta_1": alpha_beta_rule(2, 1, **ab),
        "lrp.alpha_2_beta_1_IB": alpha_beta_rule(2, 1, bias=False),
        "lrp.alpha_1_beta_0": alpha_beta_rule(1, 0, **ab),
        "lrp.alpha_1_beta_0_IB": alpha_beta_rule(1, 0, bias=False),
        "lrp.z_plus": alpha_beta_rule(1, 0, bias=False), "lrp.z_plus_fast": z_plus_fast_rule,
        "deep_taylor": alpha_beta_rule(1, 0, bias=False),
        "deep_taylor.bounded": alpha_beta_rule(1, 0, bias=False),
    }
    conv_rules = {"a": alpha_beta_rule(1, 0, **ab), "b": alpha_beta_rule(2, 1, **ab)}
    first_layer = None
    if not innvestigate and entry.endswith("_flat"):
        first_layer = "flat"
    if not innvestigate and entry == "deep_taylor.bounded":
        first_layer = bounded_rule(kwargs["low"], kwargs["high"])

    def rule_for(index: int, layer: nn.Module):
        if index == 0 and first_layer is not None:
            return first_layer
        if entry.startswith("lrp.sequential_preset_"):
            return dense_epsilon if isinstance(layer, nn.Linear) else conv_rules[entry[22]]
        return kernel_rules[entry]

    logits = model(x).detach().double()
    if entry.startswith("deep_taylor"):
        logits = logits.clamp(min=0)  # iNNvestigate's Deep Taylor explains max(logit, 0)
    maps = []
    for sample in range(len(x)):
        index = INDEX if mode == "index" else int(logits[sample].argmax())
        seed = torch.zeros_like(logits[sample])
        seed[index] = logits[sample, index]
        maps.append(sequential_lrp(model, x[sample], seed, rule_for))
    return torch.stack(maps)


def test_every_lrp_entry_is_checked():
    names = {entry for _, entry, _ in CASES}
    assert {"lrp.z", "lrp.sequential_preset_b_flat", "deep_taylor.bounded"} <= names
    assert len(CASES) == len(MATCHING) + len(DEPARTING) == 68


@pytest.mark.parametrize(("net", "entry", "mode"), MATCHING)
def test_matches_innvestigate(net, entry, mode):
    result, data = analyze(net, entry, mode)
    assert relative_error(result, data[f"{entry}|{mode}"]) < TOLERANCE


@pytest.mark.parametrize(("net", "entry", "mode"), MATCHING)
def test_explicit_reference_matches_innvestigate_where_it_follows_the_papers(net, entry, mode):
    _, _, data = reference_model(net)
    reference = explicit(net, entry, mode)
    assert relative_error(reference.float(), data[f"{entry}|{mode}"]) < TOLERANCE


@pytest.mark.parametrize(("net", "entry", "mode"), DEPARTING)
def test_departures_follow_the_papers(net, entry, mode):
    result, _ = analyze(net, entry, mode)
    assert relative_error(result, explicit(net, entry, mode).numpy()) < TOLERANCE


@pytest.mark.parametrize(("net", "entry", "mode"), DEPARTING)
def test_departures_are_the_documented_ones(net, entry, mode):
    """iNNvestigate's variant (bias in both αβ denominators, no input-layer rule) written
    out explicitly reproduces its numbers, and differs from ours."""
    _, _, data = reference_model(net)
    expected = data[f"{entry}|{mode}"]
    assert relative_error(explicit(net, entry, mode, innvestigate=True).float(),
                          expected) < TOLERANCE
    result, _ = analyze(net, entry, mode)
    if expected.any():  # an all-zero map (negative logit in Deep Taylor) cannot differ
        assert relative_error(result, expected) > 1e-2
