"""A replayed analysis (lit_explain.analyzers.replay) gives the map of a full analysis by a
fresh analyzer, on the models an adversarial probe of the replay found it wrong, raising or
slow on: a kernel output used again after the BatchNorm that merged with it, BatchNorms with
batch statistics, gradient hooks registered in forward, property reads, a data flow a global
flag changes, a changed output_key, value-changing operations before the first layer."""

from __future__ import annotations

import pickle
import types

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

import lit_explain as lx
from lit_explain.analyzers.lrp import EpsilonRule
from lit_explain.demo import TextTransformer, TinyViT

ANALYZERS = [("lrp.alpha_2_beta_1", {}), ("lrp.epsilon", {}), ("lrp.z_plus", {}),
             ("lrp.sequential_preset_a", {}), ("lrp", {"rule": EpsilonRule(epsilon=0.5)}),
             ("guided_backprop", {})]


def _batch_norm(channels: int, track_running_stats: bool = True) -> nn.BatchNorm2d:
    norm = nn.BatchNorm2d(channels, track_running_stats=track_running_stats)
    with torch.no_grad():
        norm.weight.uniform_(0.5, 2.0)
        norm.bias.uniform_(-1.0, 1.0)
        if track_running_stats:
            norm.running_mean.uniform_(-1.0, 1.0)
            norm.running_var.uniform_(0.5, 2.0)
    return norm


class _Net(nn.Module):
    """conv → BatchNorm(s) → head, the conv output used as ``how`` says."""

    def __init__(self, how: str) -> None:
        super().__init__()
        self.how = how
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.bn = _batch_norm(4, track_running_stats=how != "batch_statistics")
        self.bn2 = _batch_norm(4)
        self.fc = nn.Linear(4 * 36, 5)
        self.swap = False

    def forward(self, x: Tensor) -> Tensor:
        if self.how == "rounded":  # a value-changing step before the first layer
            x = x.to(torch.bfloat16).to(x.dtype)
        y = self.conv(x)
        if self.how == "hook" and y.requires_grad:  # a Grad-CAM model keeps a gradient
            y.register_hook(lambda grad: grad * 3.0)
        if self.how == "reused":  # the conv output used again after its BatchNorm
            h = self.bn(y) + y
        elif self.how == "two_norms":  # one conv output, two BatchNorms
            h = self.bn(y) + self.bn2(y)
        elif self.how == "shape":  # property reads, each a new getter object
            h = self.bn(y).reshape(y.shape[0], *y.shape[1:]) * (1.0 if y.requires_grad else 1.0)
        else:
            h = self.bn(y)
        h = F.relu(h)
        return self.fc(h.flatten(1))


@pytest.mark.parametrize("how", ["reused", "two_norms", "batch_statistics", "hook", "shape",
                                 "rounded"])
@pytest.mark.parametrize(("name", "kwargs"), ANALYZERS)
def test_a_replay_gives_the_full_analysis_map(how, name, kwargs):
    torch.manual_seed(0)
    model = _Net(how).eval() if how == "rounded" else _Net(how).double().eval()
    x = torch.randn(2, 3, 6, 6, dtype=next(model.parameters()).dtype)
    analyzer = lx.create_analyzer(name, model, **kwargs)
    analyzer.analyze(x)
    for inputs in (x, x * 0.5):  # a replay (where the rules allow one), then another input
        replayed = analyzer.analyze(inputs)
        fresh = lx.create_analyzer(name, model, **kwargs).analyze(inputs)
        torch.testing.assert_close(replayed, fresh, rtol=1e-6, atol=1e-6 * float(
            fresh.abs().max()))
    if how == "shape":
        assert analyzer.replayed  # (x.shape's getter is a new object at every read)


def test_a_data_flow_that_a_global_flag_changes_is_not_replayed_wrongly():
    torch.manual_seed(0)

    class Swapped(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b = nn.Conv2d(3, 4, 3, padding=1), nn.Conv2d(3, 4, 3, padding=1)
            self.norm_a, self.norm_b = _batch_norm(4), _batch_norm(4)
            self.fc = nn.Linear(8 * 36, 5)

        def forward(self, x: Tensor) -> Tensor:
            a, b = self.a(x), self.b(x)
            if SWAP[0]:  # (state the forward signature does not see)
                a, b = b, a
            return self.fc(F.relu(torch.cat([self.norm_a(a), self.norm_b(b)], 1)).flatten(1))

    model = Swapped().double().eval()
    x = torch.randn(2, 3, 6, 6, dtype=torch.double)
    for name, kwargs in ANALYZERS[:4]:
        SWAP[0] = False
        analyzer = lx.create_analyzer(name, model, **kwargs)
        analyzer.analyze(x)
        SWAP[0] = True
        torch.testing.assert_close(analyzer.analyze(x),
                                   lx.create_analyzer(name, model, **kwargs).analyze(x))
    SWAP[0] = False


SWAP = [False]


class _Skipping(nn.Module):
    """A bias-free ReLU net whose second layer reads the input or the first layer's output,
    as a flag out of the forward signature's sight says (a config two levels down, a
    global): the same calls either way, another data flow."""

    def __init__(self) -> None:
        super().__init__()
        self.first, self.second = nn.Linear(6, 6, bias=False), nn.Linear(6, 6, bias=False)
        self.head = nn.Linear(6, 3, bias=False)
        self.config = types.SimpleNamespace(model=types.SimpleNamespace(skip=False))

    def forward(self, x: Tensor) -> Tensor:
        hidden = F.relu(self.first(x))
        hidden = self.second(x if self.config.model.skip else hidden)
        return self.head(F.relu(hidden))


@pytest.mark.parametrize(("name", "kwargs"), [*ANALYZERS, ("lrp.z", {}), ("deep_taylor", {}), (
    "lrp.epsilon", {"input_layer_rule": "Flat"})])
def test_a_flag_that_routes_the_input_past_a_layer_is_not_replayed(name, kwargs):
    """The replay checks where each call's tensors come from: it applied the plan of the
    other data flow (the input layer's rule and the input boundary where they were), maps
    0.26-1.5 off."""
    torch.manual_seed(1)
    model, x = _Skipping().double().eval(), torch.randn(4, 6, dtype=torch.double)
    analyzer = lx.create_analyzer(name, model, **kwargs)
    analyzer.analyze(x)
    model.config.model.skip = True
    result = analyzer.analyze(x * 0.5)
    assert not analyzer.replayed
    torch.testing.assert_close(result, lx.create_analyzer(name, model, **kwargs).analyze(x * 0.5))
    if name == "lrp.z":  # (LRP-0 of a bias-free ReLU net is Input × Gradient)
        inputs = (x * 0.5).requires_grad_(True)
        logits = model(inputs)
        (grad,) = torch.autograd.grad(logits.max(1).values.sum(), inputs)
        torch.testing.assert_close(result, (inputs * grad).detach())
    analyzer.analyze(x * 2.0)  # (the new data flow, replayed)
    assert analyzer.replayed or name == "guided_backprop"


class _SwiGLU(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.gate, self.up, self.out = nn.Linear(4, 8), nn.Linear(4, 8), nn.Linear(8, 3)

    def forward(self, x: Tensor) -> Tensor:
        gate, up = F.silu(self.gate(x)), self.up(x)
        return self.out(up * gate if SWAP[0] else gate * up)  # (the same calls either way)


def test_cp_gates_that_a_global_flag_moves_are_not_replayed_wrongly():
    """CP-LRP holds a gate by its position among a product's factors: a replay checks that
    the factor there is the gate the recorded call made (it held ``up`` instead: 1.9 off)."""
    torch.manual_seed(0)
    model, x = _SwiGLU().double().eval(), torch.randn(3, 4, dtype=torch.double)
    analyzer = lx.create_analyzer("lrp.epsilon", model, attention_rule="cp")
    analyzer.analyze(x)
    SWAP[0] = True
    try:
        torch.testing.assert_close(analyzer.analyze(x), lx.create_analyzer(
            "lrp.epsilon", model, attention_rule="cp").analyze(x))
        assert not analyzer.replayed
    finally:
        SWAP[0] = False


AUTOCAST = [False]


class _AutocastBehindAFlag(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.first, self.second = nn.Linear(8, 16), nn.Linear(16, 3)

    def forward(self, x: Tensor) -> Tensor:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=AUTOCAST[0]):
            h = F.relu(self.first(x))
        return self.second(h.float())


@pytest.mark.parametrize("name", ["lrp.epsilon", "guided_backprop"])
def test_an_autocast_region_a_global_flag_opens_is_not_replayed(name):
    """A replay of a plan recorded with the region closed ran the layer in bfloat16 with no
    error (a map 5e-4 off); the full analysis refuses it, as a fresh analyzer does."""
    torch.manual_seed(0)
    model, x = _AutocastBehindAFlag().eval(), torch.randn(4, 8)
    analyzer = lx.create_analyzer(name, model)
    analyzer.analyze(x)
    AUTOCAST[0] = True
    try:
        with pytest.raises(lx.NotAnalyzableModelError, match="bfloat16"):
            analyzer.analyze(x)
    finally:
        AUTOCAST[0] = False
    analyzer.analyze(x)
    assert analyzer.replayed is False  # (recorded again after the refusal)
    analyzer.analyze(x)
    assert analyzer.replayed


class _TwoOutputs(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.first, self.second = nn.Linear(6, 3), nn.Linear(6, 3)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        h = F.relu(x)
        return self.first(h), self.second(h)


def test_output_key_is_part_of_what_a_replay_holds_for():
    torch.manual_seed(0)
    model = _TwoOutputs().double().eval()
    x = torch.randn(4, 6, dtype=torch.double)
    for name in ("lrp.alpha_2_beta_1", "lrp.z_plus", "lrp.w_square"):
        analyzer = lx.create_analyzer(name, model)
        analyzer.analyze(x)
        analyzer.output_key = 1
        torch.testing.assert_close(analyzer.analyze(x), lx.create_analyzer(
            name, model, output_key=1).analyze(x))


def test_an_analyzer_pickles_after_an_analysis():
    torch.manual_seed(0)
    model = _Net("plain").double().eval()
    analyzer = lx.create_analyzer("lrp.epsilon", model)
    x = torch.randn(2, 3, 6, 6, dtype=torch.double)
    expected = analyzer.analyze(x)
    copy = pickle.loads(pickle.dumps(analyzer))  # (its replay plan holds local functions)
    torch.testing.assert_close(copy.analyze(x), expected)


class _ProjectedAttention(nn.Module):
    """A linear embedding feeding attention directly: sequence-first ``nn.MultiheadAttention``
    (``"mha"``) or ``F.scaled_dot_product_attention`` on Q, K, V straight from linear
    layers (``"sdpa"``)."""

    def __init__(self, how: str) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.how = how
        self.embed = nn.Linear(2, 8)
        self.attention = nn.MultiheadAttention(8, 2)
        self.q, self.k, self.v = (nn.Linear(8, 8) for _ in range(3))
        self.out = nn.Linear(8, 3)

    def forward(self, x: Tensor) -> Tensor:
        if self.how == "mha":  # (sequence first: the embedding's output goes in as it is)
            h = self.embed(x.view(len(x), 4, 2).transpose(0, 1))
            a = self.attention(h, h, h, need_weights=False)[0]
            return self.out((a + h).mean(0))
        h = self.embed(x.view(len(x), 4, 2))
        a = F.scaled_dot_product_attention(self.q(h), self.k(h), self.v(h))
        return self.out((a + h).mean(1))


@pytest.mark.parametrize("how", ["mha", "sdpa"])
@pytest.mark.parametrize(("name", "kwargs"), [("lrp.epsilon", {}), (
    "lrp.epsilon", {"attention_rule": "cp"}), ("lrp.alpha_2_beta_1", {}), ("lrp.z_plus", {})])
def test_attention_fed_by_kernel_outputs_is_replayed(how, name, kwargs):
    """Attention's parts get the kernel outputs the analysis resolved for them, which a
    replay's steps give at once: the same sources (the replay stopped at every call)."""
    model, x = _ProjectedAttention(how).double().eval(), torch.randn(3, 8, dtype=torch.double)
    analyzer = lx.create_analyzer(name, model, **kwargs)
    analyzer.analyze(x)
    replayed = analyzer.analyze(x * 0.5)
    assert analyzer.replayed
    torch.testing.assert_close(replayed, lx.create_analyzer(name, model, **kwargs).analyze(
        x * 0.5))


ATTENTION_ANALYZERS = [("lrp.epsilon", {}), ("lrp.epsilon", {"attention_rule": "cp"}),
                       ("lrp.alpha_2_beta_1", {}), ("lrp.z_plus", {}),
                       ("lrp.sequential_preset_a", {}), ("lrp.sequential_preset_a_flat", {})]


@pytest.mark.parametrize(("name", "kwargs"), ATTENTION_ANALYZERS)
@pytest.mark.parametrize("model_name", ["TinyViT", "TextTransformer", "projected"])
def test_multi_head_attention_replayed_directly_gives_the_full_analysis_map(
        model_name, name, kwargs):
    """A replay runs nn.MultiheadAttention's parts as plain torch, its projections and its
    attention core by their steps (the text encoder's first projection crossing the input
    boundary), where no other part has a rule (relevance as itself, which the flat rule
    needs, runs the attention core through its parts, with rules: replayed one by one)."""
    torch.manual_seed(0)
    if model_name == "TinyViT":
        model, x = TinyViT().eval(), torch.rand(3, 1, 8, 8)
    elif model_name == "TextTransformer":
        model, x = TextTransformer().eval(), torch.randint(1, 40, (3, 16))
        x[:, 12:] = 0
    else:
        model, x = _ProjectedAttention("mha").eval(), torch.randn(3, 8)
    analyzer = lx.create_analyzer(name, model, **kwargs)
    analyzer.analyze(x)
    plan = analyzer._plan
    assert [d.direct(plan) is not None for d in plan.parts.values()] == [
        not name.endswith("_flat")] * len(plan.parts)
    other = x.flip(0)
    replayed = analyzer.analyze(other)
    assert analyzer.replayed
    torch.testing.assert_close(replayed, lx.create_analyzer(name, model, **kwargs).analyze(
        other), rtol=1e-5, atol=1e-6 * float(replayed.abs().max()))


class _WeightsBehindAFlag(nn.Module):
    """Attention whose arguments a global flag changes (need_weights), and with them the calls
    its decomposition makes."""

    def __init__(self) -> None:
        super().__init__()
        self.embed, self.out = nn.Linear(2, 8), nn.Linear(8, 3)
        self.attention = nn.MultiheadAttention(8, 2, batch_first=True)

    def forward(self, x: Tensor) -> Tensor:
        h = self.embed(x.view(len(x), 4, 2))
        a = self.attention(h, h, h, need_weights=FLAG[0])[0]
        return self.out((a + h).mean(1))


FLAG = [False]


@pytest.mark.parametrize(("name", "kwargs"), ATTENTION_ANALYZERS[:3])
def test_attention_whose_arguments_a_global_flag_changes_is_not_replayed_wrongly(name, kwargs):
    torch.manual_seed(0)
    model, x = _WeightsBehindAFlag().double().eval(), torch.randn(3, 8, dtype=torch.double)
    FLAG[0] = False
    analyzer = lx.create_analyzer(name, model, **kwargs)
    analyzer.analyze(x)
    FLAG[0] = True
    try:
        torch.testing.assert_close(analyzer.analyze(x),
                                   lx.create_analyzer(name, model, **kwargs).analyze(x))
    finally:
        FLAG[0] = False


class _MaskedStack(nn.Module):
    """A float mask held as a buffer, given to attention twice and used again after it; a
    two-layer nn.TransformerEncoder, which hands one float mask to every layer."""

    def __init__(self, how: str) -> None:
        super().__init__()
        self.how = how
        self.embed, self.out = nn.Linear(3, 8), nn.Linear(8, 4)
        self.attention = nn.MultiheadAttention(8, 2, batch_first=True)
        self.encoder = nn.TransformerEncoder(nn.TransformerEncoderLayer(
            8, 2, 16, dropout=0.0, batch_first=True), 2, enable_nested_tensor=False)
        self.register_buffer("mask", torch.randn(5, 5))
        self.register_buffer("causal", torch.ones(5, 5, dtype=torch.bool).triu(1))

    def forward(self, x: Tensor) -> Tensor:
        h = self.embed(x)
        if self.how == "encoder":
            return self.out(self.encoder(h, mask=self.causal, is_causal=True).mean(1))
        a = self.attention(h, h, h, need_weights=False, attn_mask=self.mask)[0]
        a = self.attention(a, a, a, need_weights=False, attn_mask=self.mask)[0]
        return self.out(torch.relu(a + self.mask.mean()).mean(1))


@pytest.mark.parametrize("how", ["twice", "encoder"])
def test_a_mask_attention_passes_on_unchanged_keeps_the_replay(how):
    """Attention's parts return a float mask as it is (its ``.to(dtype)``); a direct replay of
    them, which sees no part, still gives the mask the source the recording saw (a replay lost
    at the next use of the mask: every analysis was a full one again)."""
    torch.manual_seed(0)
    model, x = _MaskedStack(how).double().eval(), torch.randn(3, 5, 3, dtype=torch.double)
    analyzer = lx.create_analyzer("lrp.epsilon", model)
    analyzer.analyze(x)
    replayed = analyzer.analyze(x.flip(0))
    assert analyzer.replayed
    torch.testing.assert_close(replayed, lx.create_analyzer("lrp.epsilon", model).analyze(
        x.flip(0)))
