"""AttnLRP and CP-LRP in the engine: each rule against its formula written out in float64,
attention through its parts, module and functional forms, conservation, every LRP analyzer.

The references compute relevance layer by layer from the papers' formulas (AttnLRP,
Achtibat et al. 2024: identity Eq. 9, uniform Eq. 7 / Prop. 3.3, softmax Prop. 3.1,
normalisation Prop. 3.4; CP-LRP, Ali et al. 2022), with explicit sums, never with the
engine. LXT parity is in ``test_transformer_lxt.py``.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from transformer_models import PAD, VOCAB, make

import lit_explain as lx
from lit_explain.analyzers.attention import (
    multi_head_attention_forward,
    scaled_dot_product_attention,
)
from lit_explain.analyzers.conservation import conservation_report
from lit_explain.analyzers.lrp.rules import Flow
from lit_explain.analyzers.lrp.transformer import ATTENTION_RULES


def lrp_z(analyzer_kwargs: dict, model: nn.Module, x: Tensor, absolute: bool) -> Tensor:
    """``lrp.z`` (bias in the denominator, no ε) in the chosen relevance flow."""
    analyzer = lx.create_analyzer("lrp.z", model, **analyzer_kwargs)
    if absolute:
        analyzer.flow = Flow()
    return analyzer.analyze(x)


def z_dense(x: Tensor, weight: Tensor, bias: Tensor, r: Tensor) -> Tensor:
    """LRP-z of a dense layer, by its sum: R_i = Σ_j x_i w_ji / z_j · R_j."""
    z = x @ weight.T + bias
    return torch.einsum("ni,ji,nj->ni", x, weight, r / z)


def seed(y: Tensor) -> Tensor:
    """The relevance the backward pass starts from: the largest logit's value, alone."""
    r = torch.zeros_like(y)
    c = y.argmax(1, keepdim=True)
    return r.scatter_(1, c, y.gather(1, c))


class Act(nn.Module):
    def __init__(self, act: nn.Module) -> None:
        super().__init__()
        self.fc1, self.act, self.fc2 = nn.Linear(4, 6), act, nn.Linear(6, 3)

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))


ACTIVATIONS = [nn.GELU(), nn.SiLU(inplace=True), nn.Tanh(), nn.Sigmoid(), nn.ELU(),
               nn.LeakyReLU(0.2, inplace=True), nn.ReLU6(), nn.Softplus(), nn.Hardswish()]


@pytest.mark.parametrize("absolute", [False, True])
@pytest.mark.parametrize("act", ACTIVATIONS, ids=lambda a: type(a).__name__)
def test_identity_rule_on_elementwise_nonlinearities(act, absolute):
    torch.manual_seed(0)
    model, x = Act(act).double().eval(), 2 * torch.randn(5, 4, dtype=torch.float64)
    z1 = F.linear(x, model.fc1.weight, model.fc1.bias)
    h = act.__class__.forward(act, z1.clone())
    r = seed(F.linear(h, model.fc2.weight, model.fc2.bias))
    r_h = z_dense(h, model.fc2.weight, model.fc2.bias, r)
    expected = z_dense(x, model.fc1.weight, model.fc1.bias, r_h)  # R_z1 = R_h: identity
    torch.testing.assert_close(lrp_z({}, model, x, absolute), expected)


class SoftmaxNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(4, 5), nn.Linear(5, 3, bias=False)

    def forward(self, x):
        return self.fc2(torch.softmax(self.fc1(x), dim=-1))


@pytest.mark.parametrize("absolute", [False, True])
def test_softmax_rule(absolute):
    torch.manual_seed(1)
    model, x = SoftmaxNet().double().eval(), torch.randn(4, 4, dtype=torch.float64)
    z = F.linear(x, model.fc1.weight, model.fc1.bias)
    s = z.exp() / z.exp().sum(-1, keepdim=True)
    r = seed(F.linear(s, model.fc2.weight))
    r_s = z_dense(s, model.fc2.weight, torch.zeros(3), r)
    r_z = z * (r_s - s * r_s.sum(-1, keepdim=True))  # Prop. 3.1
    expected = z_dense(x, model.fc1.weight, model.fc1.bias, r_z)
    torch.testing.assert_close(lrp_z({}, model, x, absolute), expected)


@pytest.mark.parametrize("name", ["lrp.flat", "lrp.w_square", "lrp.z"])
def test_a_softmax_output_below_the_smallest_float32_normal_keeps_the_map(name):
    # exp(−89) is a subnormal float32 number, whose reciprocal overflows: the rule divides
    # by no softmax output, so float32 gives the float64 map (it was all NaN)
    torch.manual_seed(1)
    model = SoftmaxNet().eval()
    with torch.no_grad():
        model.fc1.weight.zero_()
        model.fc1.bias.copy_(torch.tensor([0.0, -89.0, -5.0, -1.0, 0.5]))
    x = torch.randn(4, 4)
    with torch.no_grad():
        assert 0 < float(torch.softmax(model.fc1(x), -1)[0, 1]) < torch.finfo(torch.float32).tiny
    single = lx.create_analyzer(name, model).analyze(x)
    double = lx.create_analyzer(name, model.double()).analyze(x.double())
    torch.testing.assert_close(single, double.float(), rtol=1e-4, atol=1e-6)


#: Gates: SwiGLU's SiLU, ReGLU's ReLU, and that ReLU written with a mask of its input.
GATES = {"silu": F.silu, "relu": F.relu, "relu_as_mask": lambda h: h * (h > 0)}


class Gated(nn.Module):
    """SwiGLU: ``down(silu(gate x) ⊙ up x)`` (or another ``activation`` of the gate)."""

    def __init__(self, activation: str = "silu") -> None:
        super().__init__()
        self.gate, self.up = nn.Linear(4, 6), nn.Linear(4, 6)
        self.down = nn.Linear(6, 3)
        self.activation = GATES[activation]

    def forward(self, x):
        return self.down(self.activation(self.gate(x)) * self.up(x))


@pytest.mark.parametrize("activation", sorted(GATES))
@pytest.mark.parametrize("absolute", [False, True])
@pytest.mark.parametrize("rule", ["attnlrp", "cp"])
def test_uniform_rule_on_gating_and_cp_gate(rule, absolute, activation):
    torch.manual_seed(2)
    model, x = Gated(activation).double().eval(), torch.randn(5, 4, dtype=torch.float64)
    a = GATES[activation](F.linear(x, model.gate.weight, model.gate.bias))
    b = F.linear(x, model.up.weight, model.up.bias)
    r = seed(F.linear(a * b, model.down.weight, model.down.bias))
    r_g = z_dense(a * b, model.down.weight, model.down.bias, r)
    if rule == "attnlrp":  # Eq. 7: half to each factor; identity through the activation
        expected = z_dense(x, model.gate.weight, model.gate.bias, r_g / 2) + z_dense(
            x, model.up.weight, model.up.bias, r_g / 2)
    else:  # CP-LRP: the gate is a constant, the other factor takes everything
        expected = z_dense(x, model.up.weight, model.up.bias, r_g)
    torch.testing.assert_close(lrp_z({"attention_rule": rule}, model, x, absolute), expected)


class GatedInPlace(Gated):
    """SwiGLU with the gate's activation, or the product, written in place."""

    def __init__(self, how: str) -> None:
        super().__init__()
        self.how = how

    def forward(self, x):
        if self.how == "activation":
            h = F.silu(self.gate(x), inplace=True) * self.up(x)
        else:
            h = F.silu(self.gate(x))
            h.mul_(self.up(x))
        return self.down(h)


@pytest.mark.parametrize("how", ["activation", "product"])
@pytest.mark.parametrize("rule", ["attnlrp", "cp"])
def test_a_gate_written_in_place_is_held_as_written_out_of_place(rule, how):
    """CP-LRP holds the gate constant also where its activation, or the product, runs in
    place (the tensor the model holds is the gate; CP's map was 0.41 off)."""
    torch.manual_seed(2)
    model, x = Gated().double().eval(), torch.randn(5, 4, dtype=torch.float64)
    in_place = GatedInPlace(how).double().eval()
    in_place.load_state_dict(model.state_dict())
    expected = lx.create_analyzer("lrp.epsilon", model, attention_rule=rule).analyze(x)
    analyzer = lx.create_analyzer("lrp.epsilon", in_place, attention_rule=rule)
    for _ in range(2):  # a full analysis, then its replay
        torch.testing.assert_close(analyzer.analyze(x), expected)
    assert analyzer.replayed


def assert_cp_holds_the_gate(model: nn.Module, held: nn.Module, x: Tensor,
                             replayed: bool = True) -> None:
    """LRP-0 under CP-LRP on ``model`` is Input×Gradient of ``held`` (the same weights, its
    gates detached: constants), in a full analysis and in its replay (``replayed``; else in
    a second full analysis)."""
    held.load_state_dict(model.state_dict())
    expected = lx.create_analyzer("input_t_gradient", held).analyze(x)
    analyzer = lx.create_analyzer("lrp.z", model, attention_rule="cp")
    for _ in range(2):  # a full analysis, then its replay
        torch.testing.assert_close(analyzer.analyze(x), expected)
    assert analyzer.replayed == replayed


class HeadGated(nn.Module):
    """Per-head output gates: ``sigmoid(g x)``, one per head, reshaped onto the head's
    features after (``form``: ``unsqueeze(-1)``, ``[..., None]``, ``view``) or before the
    non-linearity; bias-free, so that LRP-0 is Input×Gradient with the gate held."""

    def __init__(self, form: str, hold: bool = False) -> None:
        super().__init__()
        self.form, self.hold = form, hold
        self.v, self.g, self.head = (nn.Linear(8, 8, bias=False), nn.Linear(8, 2, bias=False),
                                     nn.Linear(8, 3, bias=False))

    def forward(self, x):
        v = self.v(x).view(*x.shape[:-1], 2, 4)
        g = self.g(x)
        gate = {"before": lambda: torch.sigmoid(g.unsqueeze(-1)),
                "unsqueeze": lambda: torch.sigmoid(g).unsqueeze(-1),
                "index": lambda: torch.sigmoid(g)[..., None],
                "view": lambda: torch.sigmoid(g).view(*g.shape, 1)}[self.form]()
        gate = gate.detach() if self.hold else gate
        return self.head((gate * v).flatten(-2).mean(1))


@pytest.mark.parametrize("form", ["before", "unsqueeze", "index", "view"])
def test_cp_holds_a_gate_reshaped_after_its_non_linearity(form):
    """A view of a gate is the gate (CP's map was 6× its size off where the gate was
    reshaped after the sigmoid): LRP-0 under CP is Input×Gradient with the gate detached."""
    torch.manual_seed(0)
    assert_cp_holds_the_gate(HeadGated(form).double().eval(),
                             HeadGated(form, hold=True).double().eval(),
                             torch.randn(3, 5, 8, dtype=torch.float64))


class FusedGated(nn.Module):
    """ReGLU/SwiGLU from one fused projection: value and gate are halves of one tensor, the
    gate's activation in place on its half (bias-free, so LRP-0 is Input×Gradient with the
    gate held)."""

    def __init__(self, activation: nn.Module, hold: bool = False) -> None:
        super().__init__()
        self.activation, self.hold = activation, hold
        self.both, self.down = nn.Linear(6, 16, bias=False), nn.Linear(8, 4, bias=False)

    def forward(self, x):
        h = self.both(x)
        value, gate = h[:, :8], self.activation(h[:, 8:])
        return self.down(value * (gate.detach() if self.hold else gate))


@pytest.mark.parametrize("activation", [nn.SiLU, nn.ReLU])
def test_cp_holds_a_gate_made_in_place_on_half_of_a_tensor_and_not_the_other_half(activation):
    """The value half shares the gate's storage; taken for a gate too (its map 34–169 % off),
    the product got the uniform rule."""
    torch.manual_seed(0)
    assert_cp_holds_the_gate(FusedGated(activation(inplace=True)).double().eval(),
                             FusedGated(activation(), hold=True).double().eval(),
                             torch.randn(3, 6, dtype=torch.float64))


class SplitGates(nn.Module):
    """One sigmoid made into two gates by chunking (as LSTM-style code does), each gating
    a value; or a gate multiplied into in place, after which it is a gate no more."""

    def __init__(self, how: str, hold: bool = False) -> None:
        super().__init__()
        self.how, self.hold = how, hold
        self.g, self.v, self.w = (nn.Linear(6, 8, bias=False), nn.Linear(6, 4, bias=False),
                                  nn.Linear(6, 4, bias=False))
        self.down = nn.Linear(4, 3, bias=False)

    def forward(self, x):
        gates = torch.sigmoid(self.g(x))
        gates = gates.detach() if self.hold else gates
        if self.how == "chunk":
            i, f = gates.chunk(2, -1)
            return self.down(i * self.v(x) + f * self.w(x))
        i = gates[:, :4]
        h = i * self.v(x) if self.how == "out of place" else i.mul_(self.v(x))
        return self.down(h * self.w(x))


def test_cp_holds_the_chunks_of_a_gate():
    """A gate chunked after its sigmoid was no gate (maps 276 % off)."""
    torch.manual_seed(0)
    assert_cp_holds_the_gate(SplitGates("chunk").double().eval(),
                             SplitGates("chunk", True).double().eval(),
                             torch.randn(3, 6, dtype=torch.float64))


def test_a_gate_multiplied_into_in_place_is_no_gate_after():
    """The in-place product's result counted as the gate for the next product (42 % off)."""
    torch.manual_seed(0)
    model, twin = SplitGates("in place").double().eval(), SplitGates("out of place").double(
        ).eval()
    twin.load_state_dict(model.state_dict())
    x = torch.randn(3, 6, dtype=torch.float64)
    torch.testing.assert_close(
        lx.create_analyzer("lrp.z", model, attention_rule="cp").analyze(x),
        lx.create_analyzer("lrp.z", twin, attention_rule="cp").analyze(x))


#: Copies of a gate: new storage holding the gate's values (or some of them, the rest
#: constants).
MASK = torch.tensor([True, False, True, True, False, True, True, False])
GATE_COPIES = {
    "clone": lambda g: g.clone(),
    "contiguous": lambda g: g.t().contiguous().t(),
    "reshape of a transpose": lambda g: g.t().reshape(-1).view(g.shape[1], -1).t(),
    "index": lambda g: g[:, torch.arange(g.shape[1] - 1, -1, -1)],
    "cast": lambda g: g.float().double(),
    "cat of its halves": lambda g: torch.cat(g.chunk(2, -1)[::-1], -1),
    "written into zeros": lambda g: written_into_zeros(g),
    "masked_fill": lambda g: g.masked_fill(~MASK, 0.0),
    "where": lambda g: torch.where(MASK, g, 0.0),
    "times a mask": lambda g: g * MASK,
    "scaled by a tensor": lambda g: g / MASK.double().add(1.0),
}


def written_into_zeros(gate: Tensor) -> Tensor:
    copy = gate.new_zeros(gate.shape)
    copy[:, 1:] = gate[:, 1:]
    return copy


class CopiedGate(nn.Module):
    """SwiGLU whose gate is copied between its SiLU (in place or not) and the product
    (``copy``); bias-free, so that LRP-0 is Input×Gradient with the gate held."""

    def __init__(self, copy: Callable[[Tensor], Tensor], in_place: bool,
                 hold: bool = False) -> None:
        super().__init__()
        self.copy, self.in_place, self.hold = copy, in_place, hold
        self.g, self.v = nn.Linear(6, 8, bias=False), nn.Linear(6, 8, bias=False)
        self.down = nn.Linear(8, 3, bias=False)

    def forward(self, x):
        gate = F.silu(self.g(x), inplace=self.in_place)
        gate = self.copy(gate.detach() if self.hold else gate)
        return self.down(gate * self.v(x))


@pytest.mark.parametrize("in_place", [False, True], ids=["silu", "silu in place"])
@pytest.mark.parametrize("copy", GATE_COPIES.values(), ids=GATE_COPIES.keys())
def test_cp_holds_a_copy_of_a_gate(copy, in_place):
    """A gate copied to new storage, or masked, was no gate: CP's map was AttnLRP's, 21–61 %
    off (a replay finds gates by storage, so these analyses run in full each time)."""
    torch.manual_seed(0)
    assert_cp_holds_the_gate(CopiedGate(copy, in_place).double().eval(),
                             CopiedGate(copy, in_place, hold=True).double().eval(),
                             torch.randn(3, 6, dtype=torch.float64), replayed=False)


class PartlyGate(nn.Module):
    """A gate (in place or not) mixed with other values (``mix``), then multiplied
    (``product``) or fed to a linear layer."""

    def __init__(self, mix: str, product: bool) -> None:
        super().__init__()
        self.mix, self.product = mix, product
        width = 4 if mix == "where" else 8
        self.g, self.v, self.u = nn.Linear(6, 4), nn.Linear(6, 4), nn.Linear(6, width)
        self.down = nn.Linear(width, 3)

    def forward(self, x):
        gate = self.g(x).sigmoid_() if self.mix == "cat in place" else torch.sigmoid(self.g(x))
        mixed = torch.where(MASK[:4], gate, self.v(x)) if self.mix == "where" else torch.cat(
            [gate, self.v(x)], -1)
        return self.down(mixed * self.u(x) if self.product else mixed)


@pytest.mark.parametrize("mix", ["cat", "cat in place", "where"])
def test_cp_refuses_a_product_with_a_factor_partly_a_gate(mix):
    """CP would hold part of the factor constant: refused, naming the product; the same
    values into a linear layer are no product and are analysed."""
    x = torch.randn(3, 6)
    with pytest.raises(lx.NotAnalyzableModelError, match=r"mul .* both a gate's values"):
        lx.create_analyzer("lrp.epsilon", PartlyGate(mix, product=True),
                           attention_rule="cp").analyze(x)
    assert torch.isfinite(lx.create_analyzer("lrp.epsilon", PartlyGate(mix, product=False),
                                             attention_rule="cp").analyze(x)).all()


class TopKAttention(nn.Module):
    """Sparse attention: each query keeps its 3 top scores, the others masked with −inf by a
    mask of the scores themselves (``masked_fill`` or ``torch.where``), or by the same mask
    detached (the same function: a mask is a constant)."""

    def __init__(self, form: str, detached: bool = False) -> None:
        super().__init__()
        self.form, self.detached = form, detached
        self.q, self.k, self.v, self.head = (nn.Linear(8, 8), nn.Linear(8, 8), nn.Linear(8, 8),
                                             nn.Linear(8, 3))

    def forward(self, x):
        s = self.q(x) @ self.k(x).transpose(-2, -1)
        source = s.detach() if self.detached else s
        kept = source >= s.detach().topk(3, dim=-1).values[..., -1:]
        s = s.masked_fill(~kept, -math.inf) if self.form == "masked_fill" else torch.where(
            kept, s, -math.inf)
        return self.head((torch.softmax(s, -1) @ self.v(x)).mean(1))


@pytest.mark.parametrize("form", ["masked_fill", "where"])
@pytest.mark.parametrize("absolute", [False, True])
def test_scores_masked_by_their_own_top_k_give_the_map_of_a_constant_mask(form, absolute):
    """The masked (−inf) scores carry no relevance; per unit of tensor their ratio made the
    0 they get NaN, and the whole map with it."""
    torch.manual_seed(0)
    model, held = TopKAttention(form).double().eval(), TopKAttention(form, True).double().eval()
    held.load_state_dict(model.state_dict())
    x = torch.randn(2, 6, 8, dtype=torch.float64)
    expected = lrp_z({}, held, x, absolute=False)
    torch.testing.assert_close(lrp_z({}, model, x, absolute), expected)
    assert expected.abs().sum() > 0


class Scores(nn.Module):
    """Attention scores ``(X Wq)(X Wk)ᵀ`` read by a dense head."""

    def __init__(self, tokens: int = 3, dim: int = 4) -> None:
        super().__init__()
        self.q, self.k = nn.Linear(dim, dim, bias=False), nn.Linear(dim, dim, bias=False)
        self.head = nn.Linear(tokens * tokens, 2)

    def forward(self, x):
        return self.head((self.q(x) @ self.k(x).transpose(1, 2)).flatten(1))


@pytest.mark.parametrize("absolute", [False, True])
def test_uniform_rule_on_a_matrix_product(absolute):
    torch.manual_seed(3)
    model, x = Scores().double().eval(), torch.randn(4, 3, 4, dtype=torch.float64)
    q, k = x @ model.q.weight.T, x @ model.k.weight.T
    s = torch.einsum("nik,njk->nij", q, k)
    r = seed(F.linear(s.flatten(1), model.head.weight, model.head.bias))
    r_s = z_dense(s.flatten(1), model.head.weight, model.head.bias, r).reshape(s.shape)
    # Prop. 3.3: the z-rule over the sum Σ_k q_ik k_jk, then half of each term to each factor
    terms = torch.einsum("nik,njk,nij->nijk", q, k, r_s / s) / 2
    r_q, r_k = terms.sum(2), terms.sum(1)
    expected = x * ((r_q / q) @ model.q.weight + (r_k / k) @ model.k.weight)
    torch.testing.assert_close(lrp_z({}, model, x, absolute), expected)


class ComputedWeight(nn.Module):
    """A layer whose weight the forward computes from the input (a hypernetwork; one sample,
    whose weight it is), as ``F.linear`` or as the matrix product it is."""

    def __init__(self, functional: bool) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.functional = functional
        self.make, self.head = nn.Linear(4, 12, bias=False), nn.Linear(3, 2, bias=False)

    def forward(self, x):
        weight = self.make(x).view(3, 4)
        return self.head(F.linear(x, weight) if self.functional else x @ weight.T)


@pytest.mark.parametrize("name", ["lrp.z", "lrp.epsilon", "lrp.alpha_2_beta_1",
                                  "lrp.sequential_preset_a"])
def test_a_kernel_call_with_a_computed_weight_is_a_product_of_activations(name):
    """``F.linear(x, W(x))`` is the product ``x @ W(x).T``: the uniform rule, the same map. As
    a kernel layer it gave all its relevance to the input and, through the weight's own
    gradient, to the weight as well: twice the logit in all (lrp.z)."""
    x = torch.randn(1, 4, dtype=torch.float64)
    maps = [lx.create_analyzer(name, ComputedWeight(functional).double().eval()).analyze(x)
            for functional in (True, False)]
    torch.testing.assert_close(maps[0], maps[1])
    if name == "lrp.z":  # (bias-free: conserved)
        logit = ComputedWeight(True).double().eval()(x).max()
        torch.testing.assert_close(maps[0].sum(), logit.detach())


class Normed(nn.Module):
    def __init__(self, norm: nn.Module, dim: int = 6) -> None:
        super().__init__()
        self.fc1, self.norm, self.fc2 = nn.Linear(4, dim), norm, nn.Linear(dim, 3)
        with torch.no_grad():
            for p in norm.parameters():
                p.uniform_(0.5, 1.5)

    def forward(self, x):
        return self.fc2(self.norm(self.fc1(x)))


def _held(norm: nn.Module, z: Tensor) -> Tensor:
    """The normalisation with its statistic held constant, as a function of z (written out)."""
    if isinstance(norm, nn.LayerNorm):
        sigma = (z.var(-1, unbiased=False, keepdim=True) + norm.eps).sqrt()
        return lambda t: (t - t.mean(-1, keepdim=True)) / sigma * norm.weight + norm.bias
    if isinstance(norm, nn.RMSNorm):
        rms = (z.square().mean(-1, keepdim=True) + torch.finfo(z.dtype).eps).sqrt()
        return lambda t: t / rms * norm.weight
    groups = z.reshape(len(z), norm.num_groups, -1)
    sigma = (groups.var(-1, unbiased=False, keepdim=True) + norm.eps).sqrt()
    return lambda t: ((t.reshape(groups.shape) - t.reshape(groups.shape).mean(
        -1, keepdim=True)) / sigma).reshape(t.shape) * norm.weight + norm.bias


@pytest.mark.parametrize("absolute", [False, True])
@pytest.mark.parametrize("norm", [nn.LayerNorm(6), nn.RMSNorm(6), nn.GroupNorm(2, 6)],
                         ids=lambda n: type(n).__name__)
def test_normalisation_rule(norm, absolute):
    torch.manual_seed(4)
    model, x = Normed(norm).double().eval(), torch.randn(5, 4, dtype=torch.float64)
    z = F.linear(x, model.fc1.weight, model.fc1.bias)
    held = _held(norm, z)
    y = held(z)
    r = seed(F.linear(y, model.fc2.weight, model.fc2.bias))
    r_y = z_dense(y, model.fc2.weight, model.fc2.bias, r)
    # z-rule on the affine map that remains: R_z_j = Σ_i z_j ∂y_i/∂z_j R_y_i / y_i, per sample
    jac = torch.stack([torch.autograd.functional.jacobian(held, z)[n, :, n] for n in range(5)])
    r_z = z * torch.einsum("nij,ni->nj", jac, r_y / y)
    if isinstance(norm, nn.RMSNorm):  # no bias: the identity rule
        torch.testing.assert_close(r_z, r_y)
    expected = z_dense(x, model.fc1.weight, model.fc1.bias, r_z)
    torch.testing.assert_close(lrp_z({}, model, x, absolute), expected)


# Attention through its parts -----------------------------------------------------------------

class _Attention(nn.Module):
    """Q, K, V from the input or constants (``computed``), one SDPA call, one head layer; a
    causal mask, or a float mask computed from the input (a learned attention bias)."""

    def __init__(self, computed: str, mask: bool | str) -> None:
        super().__init__()
        self.computed, self.mask = computed, mask
        self.project = nn.ModuleDict({n: nn.Linear(4, 4) for n in "qkv"})
        self.bias = nn.Linear(4, 5)
        self.memory = nn.Parameter(torch.randn(6, 4))
        self.head = nn.Linear(4, 3)

    def forward(self, x: Tensor) -> Tensor:
        def heads(name: str, length: int) -> Tensor:
            source = x if name in self.computed else self.memory[:length].expand(len(x), -1, -1)
            return self.project[name](source).unflatten(-1, (2, 2)).transpose(1, 2)

        mask = (torch.ones(x.shape[1], x.shape[1], dtype=torch.bool, device=x.device).tril()
                if self.mask is True else self.bias(x).unsqueeze(1) if self.mask else None)
        out = F.scaled_dot_product_attention(heads("q", x.shape[1]), heads("k", x.shape[1]),
                                             heads("v", x.shape[1]), attn_mask=mask)
        return self.head(out.transpose(1, 2).flatten(2)).sum(1)


@pytest.mark.parametrize("computed", ["qkv", "q", "kv", "v", "qk"])
@pytest.mark.parametrize("mask", [False, True, "computed"])
@pytest.mark.parametrize("device", [
    "cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(),
                                                         reason="needs a CUDA device"))])
def test_attention_as_gradient_equals_its_parts(computed, mask, device):
    # AttnLRP and CP-LRP run F.scaled_dot_product_attention as one operation, Q, K and V's
    # gradients scaled by their shares; the reverse-pass diagnostics make it run through its
    # parts (matmuls, softmax: the rules checked against LXT). Both must give one map,
    # whichever of Q, K, V are computed from the input (the shares depend on it).
    torch.manual_seed(0)
    model, x = _Attention(computed, mask).double().eval(), torch.randn(2, 5, 4).double()
    model, x = model.to(device), x.to(device)  # CPU: plain torch parts; CUDA: torch's kernel
    for rule in ATTENTION_RULES:
        fused = lx.create_analyzer("lrp.epsilon", model, attention_rule=rule).analyze(x)
        parts = lx.create_analyzer("lrp.epsilon", model, attention_rule=rule,
                                   reverse_check_finite=True).analyze(x)
        # (under CP-LRP only V takes relevance: none where V is a constant)
        assert (fused.abs().sum() > 0) == (rule != "cp" or "v" in computed)
        torch.testing.assert_close(fused, parts, rtol=1e-9, atol=1e-12)


def test_scaled_dot_product_attention_parts_equal_torch():
    torch.manual_seed(5)
    q, k, v = (torch.randn(2, 4, 5, 8, dtype=torch.float64) for _ in range(3))
    keep = torch.rand(2, 1, 5, 5) > 0.3
    keep[..., 0] = True
    float_mask = torch.randn(5, 5, dtype=torch.float64)
    for kwargs in ({}, {"is_causal": True}, {"attn_mask": keep}, {"attn_mask": float_mask},
                   {"scale": 0.3}):
        torch.testing.assert_close(scaled_dot_product_attention(q, k, v, **kwargs),
                                   F.scaled_dot_product_attention(q, k, v, **kwargs))
    kv = torch.randn(2, 2, 5, 8, dtype=torch.float64)
    torch.testing.assert_close(scaled_dot_product_attention(q, kv, kv, enable_gqa=True),
                               F.scaled_dot_product_attention(q, kv, kv, enable_gqa=True))


def test_a_query_that_attends_to_no_key_gets_zero_as_in_torch():
    """Left padding under a causal mask blocks every key of the padded queries: torch's
    attention gives them 0 (and no gradient), where a softmax of -inf alone gives NaN."""
    torch.manual_seed(5)
    q, k, v = (torch.randn(2, 4, 5, 8, dtype=torch.float64, requires_grad=True)
               for _ in range(3))
    keep = torch.ones(2, 5, dtype=torch.bool)
    keep[0, :2] = False  # sample 0 is left-padded by two tokens
    bool_mask = keep[:, None, None, :] & torch.ones(5, 5, dtype=torch.bool).tril()
    float_mask = torch.zeros(bool_mask.shape, dtype=torch.float64).masked_fill(
        ~bool_mask, float("-inf"))
    for mask in (bool_mask, float_mask):
        ours = scaled_dot_product_attention(q, k, v, attn_mask=mask)
        theirs = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        torch.testing.assert_close(ours, theirs)
        assert bool((ours[0, :, :2] == 0).all())
        seed = torch.randn_like(ours)
        torch.testing.assert_close(torch.autograd.grad(ours, (q, k, v), seed),
                                   torch.autograd.grad(theirs, (q, k, v), seed))


class LeftPaddedDecoder(nn.Module):
    """Token embedding, causal attention with a key padding mask, a head on the last token
    (no position embedding: the padding moves no token's function)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.embedding = nn.Embedding(VOCAB, 8, padding_idx=PAD)
        self.qkv, self.mlp, self.head = nn.Linear(8, 24), nn.Linear(8, 8), nn.Linear(8, 3)

    def forward(self, tokens):
        h = self.embedding(tokens)
        keep = (tokens != PAD)[:, None, None, :]
        causal = torch.ones(tokens.shape[1], tokens.shape[1], dtype=torch.bool).tril()
        q, k, v = self.qkv(h).unsqueeze(1).chunk(3, dim=-1)
        h = h + F.scaled_dot_product_attention(q, k, v, attn_mask=keep & causal).squeeze(1)
        return self.head(F.gelu(self.mlp(h))[:, -1])


@pytest.mark.parametrize("rule", ["attnlrp", "cp"])
@pytest.mark.parametrize("name", ["lrp.epsilon", "lrp.alpha_2_beta_1"])
def test_a_left_padded_sequence_has_the_map_of_its_tokens(name, rule):
    """The padded queries attend to no key; the tokens' map is that of the unpadded sequence
    and the padding gets none (it was NaN for every LRP analyzer)."""
    model = LeftPaddedDecoder().double()
    short = torch.tensor([[4, 7, 2, 9]])
    padded = torch.tensor([[PAD, PAD, 4, 7, 2, 9]])
    maps = [lx.create_analyzer(name, model, attention_rule=rule).analyze(x)
            for x in (short, padded)]
    torch.testing.assert_close(maps[1][:, 2:], maps[0])
    assert bool((maps[1][:, :2] == 0).all())


class PaddedEncoder(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.embedding = nn.Embedding(VOCAB, 8, padding_idx=PAD)
        self.layer = nn.TransformerEncoderLayer(8, 2, 16, dropout=0.0, batch_first=True)
        self.head = nn.Linear(8, 3)

    def forward(self, tokens):
        return self.head(self.layer(self.embedding(tokens),
                                    src_key_padding_mask=tokens == PAD).sum(1))


@pytest.mark.parametrize("name", ["lrp.epsilon", "lrp.z"])
def test_a_batch_led_by_a_sequence_of_padding_only_is_analysed(name):
    """A sequence of padding only attends to no key: 0 where gradients flow, NaN in
    ``nn.MultiheadAttention``'s inference fast path, which the forward check took (it
    refused every such batch whose first sample was all padding)."""
    model = PaddedEncoder().double().eval()
    tokens = torch.tensor([[PAD] * 4, [5, 4, 7, 2]])
    with pytest.warns(UserWarning, match=r"another output under torch.no_grad\(\)"):
        result = lx.create_analyzer(name, model).analyze(tokens)
    torch.testing.assert_close(result[1:], lx.create_analyzer(name, model).analyze(tokens[1:]))
    assert bool((result[0] == 0).all())


@pytest.mark.parametrize("batch_first", [True, False])
def test_multi_head_attention_parts_equal_torch(batch_first):
    torch.manual_seed(6)
    mha = nn.MultiheadAttention(8, 2, batch_first=batch_first).double().eval()
    x = torch.randn(3, 5, 8, dtype=torch.float64)  # (N, L, E)
    x = x if batch_first else x.transpose(0, 1)
    padding = torch.zeros(3, 5, dtype=torch.bool)
    padding[1, 3:] = True
    causal = torch.ones(5, 5, dtype=torch.bool).triu(1)
    for kwargs in ({}, {"key_padding_mask": padding}, {"attn_mask": causal},
                   {"attn_mask": causal, "key_padding_mask": padding, "need_weights": False},
                   {"average_attn_weights": False}):
        expected = mha(x, x, x, **kwargs)
        inputs = x if not batch_first else x.transpose(0, 1)
        # self-attention (one packed projection), key is value (two), all distinct (three)
        copy = inputs.clone()
        for key, value in ((inputs, inputs), (copy, copy), (copy, copy.clone())):
            ours = multi_head_attention_forward(
                inputs, key, value, 8, 2, mha.in_proj_weight, mha.in_proj_bias, None, None,
                False, 0.0, mha.out_proj.weight, mha.out_proj.bias, training=False,
                key_padding_mask=kwargs.get("key_padding_mask"),
                need_weights=kwargs.get("need_weights", True),
                attn_mask=kwargs.get("attn_mask"),
                average_attn_weights=kwargs.get("average_attn_weights", True))
            output = ours[0].transpose(0, 1) if batch_first else ours[0]
            torch.testing.assert_close(output, expected[0])
            if expected[1] is not None:
                torch.testing.assert_close(ours[1], expected[1])


class Attention(nn.Module):
    """``nn.MultiheadAttention`` on one tensor (``"self"``), on a query and one copy as key
    and value (``"key is value"``), or on three tensors (``"distinct"``)."""

    FORMS = ("self", "key is value", "distinct")

    def __init__(self, form: str, kdim: int | None = None) -> None:
        super().__init__()
        self.form = form
        self.norm, self.head = nn.LayerNorm(8), nn.Linear(8, 3)
        self.attn = nn.MultiheadAttention(8, 2, batch_first=True, kdim=kdim, vdim=kdim)

    def forward(self, x: Tensor) -> Tensor:
        n = self.norm(x)
        key = n if self.form == "self" else n.clone()
        value = n.clone() if self.form == "distinct" else key
        return self.head(self.attn(n, key, value, need_weights=False)[0].mean(1))


@pytest.mark.parametrize("form", Attention.FORMS[1:])
@pytest.mark.parametrize("name", ["lrp.epsilon", "lrp.alpha_2_beta_1", "lrp.w_square",
                                  "lrp.sequential_preset_a"])
def test_packed_projections_give_the_maps_of_separate_ones(name, form):
    # An LRP rule is one per output neuron: the Q, K, V projections as one layer of 3E
    # outputs (self-attention, as torch computes it) or two (key is value) must give the
    # relevance of three layers of E.
    torch.manual_seed(8)
    packed = Attention("self").double().eval()
    other = Attention(form).double().eval()
    other.load_state_dict(packed.state_dict())
    x = torch.randn(4, 5, 8, dtype=torch.float64)
    torch.testing.assert_close(lx.create_analyzer(name, packed).analyze(x),
                               lx.create_analyzer(name, other).analyze(x))


@pytest.mark.parametrize(("form", "kdim"), [*((f, None) for f in Attention.FORMS),
                                            ("distinct", 8)])
def test_the_kernel_layers_are_the_linear_calls_torch_makes(monkeypatch, form, kdim):
    # torch projects self-attention with one linear call and key-is-value attention with
    # two: a rule list, one rule per kernel layer, counts those calls
    model = Attention(form, kdim).double().eval()
    x = torch.randn(2, 5, 8, dtype=torch.float64)
    calls = []
    linear = F.linear
    monkeypatch.setattr(F, "linear", lambda *a, **k: calls.append(1) or linear(*a, **k))
    model(x)
    monkeypatch.setattr(F, "linear", linear)
    layers = len(calls)  # the projections, the output projection and the head
    assert layers == {"self": 3, "key is value": 4, "distinct": 5}[form]
    lx.create_analyzer("lrp", model, rule=["Epsilon"] * layers).analyze(x)
    with pytest.raises(ValueError, match=f"rule= lists {layers - 1} rules"):
        lx.create_analyzer("lrp", model, rule=["Epsilon"] * (layers - 1)).analyze(x)


# The three transformers ------------------------------------------------------------------------

LRP_ANALYZERS = sorted(n for n in lx.analyzers if n.startswith(("lrp", "deep_taylor")))
KWARGS = {"lrp": {"rule": "Epsilon"}, "lrp.alpha_beta": {"alpha": 2.0},
          "deep_taylor.bounded": {"low": 0.0, "high": 1.0}}


@pytest.mark.parametrize("rule", ["attnlrp", "cp"])
@pytest.mark.parametrize("name", ["vit", "text", "decoder"])
def test_module_and_functional_forms_give_the_same_maps(name, rule):
    model, x = make(name, dtype=torch.float64)
    functional, _ = make(name, functional=True, dtype=torch.float64)
    for analyzer in ("lrp.epsilon", "lrp.sequential_preset_a", "lrp.flat"):
        maps = [lx.create_analyzer(analyzer, m, attention_rule=rule).analyze(x)
                for m in (model, functional)]
        torch.testing.assert_close(maps[1], maps[0], rtol=1e-7, atol=1e-9)


@pytest.mark.parametrize("name", ["vit", "text", "decoder"])
def test_both_relevance_flows_agree(name):
    model, x = make(name, dtype=torch.float64)
    for rule in ("attnlrp", "cp"):
        relative = lx.create_analyzer("lrp.epsilon", model, attention_rule=rule)
        absolute = lx.create_analyzer("lrp.epsilon", model, attention_rule=rule)
        absolute.flow = Flow()
        torch.testing.assert_close(absolute.analyze(x), relative.analyze(x))


class AttentionOnTheInput(nn.Module):
    """The model input straight into attention: ``nn.MultiheadAttention``, or
    ``F.scaled_dot_product_attention`` of the input itself."""

    def __init__(self, form: str) -> None:
        super().__init__()
        self.form = form
        self.attn = nn.MultiheadAttention(8, 2, batch_first=True)
        self.head = nn.Linear(8, 3)

    def forward(self, x: Tensor) -> Tensor:
        if self.form == "module":
            h = self.attn(x, x, x, need_weights=False)[0]
        else:
            h = F.scaled_dot_product_attention(x, x, x)
        return self.head(h.mean(1))


@pytest.mark.parametrize("form", ["module", "sdpa"])
@pytest.mark.parametrize("input_rule", ["ZPlus", "Alpha2Beta1", "Flat"])
def test_an_input_layer_rule_reaches_attention_on_the_model_input(form, input_rule):
    # relevance per unit of tensor turns into relevance where the input enters attention's
    # parts: the projection (the input layer) gets the input layer rule in either flow
    torch.manual_seed(9)
    model = AttentionOnTheInput(form).double().eval()
    x = torch.randn(3, 5, 8, dtype=torch.float64)
    relative = lx.create_analyzer("lrp.epsilon", model, input_layer_rule=input_rule)
    absolute = lx.create_analyzer("lrp.epsilon", model, input_layer_rule=input_rule)
    absolute.flow = Flow()
    torch.testing.assert_close(relative.analyze(x), absolute.analyze(x))
    if form == "module":  # (SDPA of the input has no kernel layer before it)
        plain = lx.create_analyzer("lrp.epsilon", model).analyze(x)
        assert (relative.analyze(x) - plain).abs().max() > 1e-3


@pytest.mark.parametrize("rule", ["attnlrp", "cp"])
@pytest.mark.parametrize("name", ["text", "decoder"])
def test_conservation_report_accounts_for_what_the_rules_absorb(name, rule):
    model, x = make(name, dtype=torch.float64)
    analyzer = lx.create_analyzer("lrp.epsilon", model, epsilon=1e-12, attention_rule=rule)
    report = conservation_report(analyzer, x)
    layers = sum(layer.absorbed for layer in report.layers.values())
    torch.testing.assert_close(report.absorbed, layers, rtol=0, atol=1e-10)
    logits = model(x)
    torch.testing.assert_close(report.output, logits.max(1).values)
    if name == "decoder" and rule == "cp":  # no bias anywhere, no softmax path: all of it
        torch.testing.assert_close(report.input, report.output)


@pytest.mark.parametrize("name", ["vit", "text", "decoder"])
@pytest.mark.parametrize("analyzer", LRP_ANALYZERS)
def test_every_lrp_analyzer_gives_a_map(name, analyzer):
    model, x = make(name, batch=2)
    result = lx.create_analyzer(analyzer, model, **KWARGS.get(analyzer, {})).analyze(x)
    assert result.shape == x.shape and bool(torch.isfinite(result).all())


@pytest.mark.parametrize("form", ["modules", "functional"])
@pytest.mark.parametrize("name", ["vit", "text", "decoder"])
@pytest.mark.parametrize("analyzer", LRP_ANALYZERS)
def test_a_replayed_transformer_analysis_gives_the_full_analysis_map(name, form, analyzer):
    """AttnLRP's and CP-LRP's rules are functions of their call alone (a gate held constant
    by its position among a product's factors; attention through parts whose calls the plan
    holds): the second analysis replays the first."""
    model, x = make(name, functional=form == "functional", batch=2, dtype=torch.float64)
    _, other = make(name, batch=2, seed=1, dtype=torch.float64)
    for rule in ("attnlrp", "cp"):
        kwargs = {**KWARGS.get(analyzer, {}), "attention_rule": rule}
        explainer = lx.create_analyzer(analyzer, model, **kwargs)
        explainer.analyze(x)
        for inputs in (x, other):
            replayed = explainer.analyze(inputs)
            fresh = lx.create_analyzer(analyzer, model, **kwargs).analyze(inputs)
            torch.testing.assert_close(replayed, fresh, rtol=1e-9, atol=1e-12)
            assert explainer.replayed


@pytest.mark.parametrize("analyzer", ["guided_backprop", "deconvnet"])
def test_relu_only_methods_refuse_transformers_naming_the_operation(analyzer):
    model, x = make("vit", batch=2)
    with pytest.raises(lx.NotAnalyzableModelError, match="in module 'blocks.0"):
        lx.create_analyzer(analyzer, model).analyze(x)


def test_attention_rule_is_checked():
    with pytest.raises(ValueError, match=r"attention_rule='softmax'.*\['attnlrp', 'cp'\]"):
        lx.create_analyzer("lrp.epsilon", nn.Linear(2, 2), attention_rule="softmax")


def test_cp_differs_from_attnlrp_only_through_attention():
    model, x = make("vit", dtype=torch.float64)
    maps = {rule: lx.create_analyzer("lrp.z", model, attention_rule=rule).analyze(x)
            for rule in ("attnlrp", "cp")}
    assert not torch.allclose(maps["attnlrp"], maps["cp"], rtol=1e-2)
    assert math.isfinite(float(maps["cp"].sum()))


class _Normalised(nn.Module):
    """Linear → a normalisation (``form``) → ReLU → Linear, or with ``of_input`` the
    normalisation of the input first, then Linear → ReLU → Linear (the first Linear is the
    input layer in every written form). The ``F`` forms and the same normalisations written
    out by hand, as LLaMA's RMSNorm and many LayerNorms are."""

    FORMS = {
        "rms_norm": lambda h, w, b: F.rms_norm(h, (16,), w, 1e-6),
        "rms_norm by hand": lambda h, w, b: w * (h * torch.rsqrt(
            h.pow(2).mean(-1, keepdim=True) + 1e-6)),
        "rms_norm by hand, square": lambda h, w, b: w * (
            h / (h.square().mean(-1, keepdim=True) + 1e-6).sqrt()),
        "layer_norm": lambda h, w, b: F.layer_norm(h, (16,), w, b, 1e-6),
        "layer_norm by hand, var": lambda h, w, b: (h - h.mean(-1, keepdim=True)) / torch.sqrt(
            h.var(-1, keepdim=True, unbiased=False) + 1e-6) * w + b,
        "layer_norm by hand, mean of squares": lambda h, w, b: _centred_scaled(h) * w + b,
        "normalize": lambda h, w, b: F.normalize(h, dim=-1),
        "normalize by hand": lambda h, w, b: h / h.norm(dim=-1, keepdim=True).clamp_min(1e-12),
        # a softmax or a sum-normalisation written out divides by a sum, no spread: refused
        "softmax by hand": lambda h, w, b: torch.exp(h) / torch.exp(h).sum(-1, keepdim=True),
        "sum normalisation": lambda h, w, b: (h.exp() + 1) / (h.exp() + 1).sum(-1, keepdim=True),
    }

    def __init__(self, form: str, of_input: bool = False) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.form, self.of_input = form, of_input
        self.first = nn.Linear(16, 8) if of_input else nn.Linear(8, 16)
        self.last = nn.Linear(8, 3) if of_input else nn.Linear(16, 3)
        self.weight = nn.Parameter(torch.rand(16) + 0.5)
        self.bias = nn.Parameter(0.1 * torch.randn(16))

    def forward(self, x: Tensor) -> Tensor:
        normalise = self.FORMS[self.form]
        if self.of_input:
            return self.last(torch.relu(self.first(normalise(x, self.weight, self.bias))))
        return self.last(torch.relu(normalise(self.first(x), self.weight, self.bias)))


def _centred_scaled(h: Tensor) -> Tensor:
    centred = h - h.mean(-1, keepdim=True)
    return centred * ((centred ** 2).mean(-1, keepdim=True) + 1e-6).rsqrt()


@pytest.mark.parametrize("attention_rule", ["attnlrp", "cp"])
@pytest.mark.parametrize("name", ["lrp.z", "lrp.epsilon", "lrp.alpha_2_beta_1",
                                  "lrp.w_square", "lrp.sequential_preset_a"])
@pytest.mark.parametrize(("form", "function"), [
    ("rms_norm by hand", "rms_norm"), ("rms_norm by hand, square", "rms_norm"),
    ("layer_norm by hand, var", "layer_norm"),
    ("layer_norm by hand, mean of squares", "layer_norm"),
    ("normalize by hand", "normalize")])
def test_a_normalisation_written_out_gets_the_rule_of_its_functional_form(
        form, function, name, attention_rule):
    # the statistic it divides by is held constant, as the normalisation rule holds it; before,
    # LLaMA's RMSNorm got the product rule (its map 39 % off F.rms_norm's) and a LayerNorm
    # dividing by its standard deviation was refused
    x = torch.randn(4, 8)
    expected = lx.create_analyzer(name, _Normalised(function).eval(),
                                  attention_rule=attention_rule).analyze(x)
    result = lx.create_analyzer(name, _Normalised(form).eval(),
                                attention_rule=attention_rule).analyze(x)
    torch.testing.assert_close(result, expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(("name", "kwargs"), [
    ("lrp.sequential_preset_a_flat", {}), ("deep_taylor.bounded", {"low": -4.0, "high": 4.0}),
    ("lrp", {"rule": "Epsilon", "input_layer_rule": "WSquare"})])
@pytest.mark.parametrize(("form", "function"), [
    ("rms_norm by hand", "rms_norm"), ("layer_norm by hand, var", "layer_norm")])
def test_a_normalisation_of_the_input_written_out_leaves_the_input_layer_where_it_is(
        form, function, name, kwargs):
    # the statistic held constant is no constant: the written-out form was taken for input
    # preprocessing and moved the input layer's rule onto the next layer (maps 68-81 % apart)
    x = torch.randn(4, 16)
    expected = lx.create_analyzer(name, _Normalised(function, of_input=True).eval(),
                                  **kwargs).analyze(x)
    result = lx.create_analyzer(name, _Normalised(form, of_input=True).eval(),
                                **kwargs).analyze(x)
    torch.testing.assert_close(result, expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("form", ["softmax by hand", "sum normalisation"])
def test_a_division_by_a_sum_is_no_normalisation_and_stays_refused(form):
    with pytest.raises(lx.NotAnalyzableModelError, match="div"):
        lx.create_analyzer("lrp.epsilon", _Normalised(form).eval()).analyze(torch.randn(2, 8))


class LearnedQueryPooling(nn.Module):
    """Attention pooling with a learned query, written three ways: ``h @ q``, ``h @ (q / s)``
    and ``F.scaled_dot_product_attention`` on the expanded query."""

    def __init__(self, form: str) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.form = form
        self.fc, self.head = nn.Linear(8, 8, bias=False), nn.Linear(8, 3, bias=False)
        self.query = nn.Parameter(torch.randn(8))

    def forward(self, x: Tensor) -> Tensor:
        h = F.gelu(self.fc(x))
        if self.form == "sdpa":
            query = self.query.expand(len(h), 1, 1, -1)
            pooled = F.scaled_dot_product_attention(query, h[:, None], h[:, None])[:, 0, 0]
            return self.head(pooled)
        scores = h @ self.query / math.sqrt(8) if self.form == "weight" else \
            h @ (self.query / math.sqrt(8))
        return self.head((torch.softmax(scores, dim=1)[..., None] * h).sum(1))


# SDPA scales the query before the product, as h @ (q / s) does; h @ q / s scales after it,
# which changes what ε is added to: only the rules without ε compare with that form
@pytest.mark.parametrize(("name", "form"), [
    *((name, "sdpa") for name in ("lrp.epsilon", "lrp.z_plus", "lrp.alpha_2_beta_1",
                                  "lrp.sequential_preset_a")),
    ("lrp.z_plus", "weight"), ("lrp.alpha_2_beta_1", "weight")])
def test_a_learned_query_is_a_weight_however_it_is_written(name, form):
    x = torch.randn(4, 5, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    expected = lx.create_analyzer(name, LearnedQueryPooling("scaled weight").double()).analyze(x)
    result = lx.create_analyzer(name, LearnedQueryPooling(form).double()).analyze(x)
    torch.testing.assert_close(result, expected, rtol=1e-6, atol=1e-9)


#: GELU as Hugging Face writes it (GPT-2's NewGELUActivation, BERT's gelu_python), and the
#: torch function each equals.
HAND_GELUS = {
    "new_gelu": (lambda x: 0.5 * x * (1.0 + torch.tanh(
        math.sqrt(2.0 / math.pi) * (x + 0.044715 * torch.pow(x, 3.0)))),
        lambda x: F.gelu(x, approximate="tanh")),
    "gelu_python": (lambda x: x * 0.5 * (1.0 + torch.erf(x / math.sqrt(2.0))), F.gelu),
    "silu": (lambda x: x * torch.sigmoid(x), F.silu),
}


class _MLP(nn.Module):
    def __init__(self, activation) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.activation = activation
        self.up, self.down = nn.Linear(6, 12, bias=False), nn.Linear(12, 3, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.down(self.activation(self.up(x)))


@pytest.mark.parametrize("attention_rule", ["attnlrp", "cp"])
@pytest.mark.parametrize("name", ["lrp.epsilon", "lrp.alpha_2_beta_1", "lrp.w_square",
                                  "lrp.sequential_preset_a"])
@pytest.mark.parametrize("form", sorted(HAND_GELUS))
def test_an_activation_written_out_is_one_elementwise_function(form, name, attention_rule):
    # 0.5 * x * (1 + tanh(...)) is a product of two functions of x: it got the uniform rule,
    # and the constant 1 absorbed relevance (GPT-2's map 14-1160 % off F.gelu's; 0.18 off
    # LXT's, which applies the identity rule to the whole activation)
    hand, function = HAND_GELUS[form]
    x = torch.randn(5, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    kwargs = {"attention_rule": attention_rule}
    result = lx.create_analyzer(name, _MLP(hand).double(), **kwargs).analyze(x)
    expected = lx.create_analyzer(name, _MLP(function).double(), **kwargs).analyze(x)
    torch.testing.assert_close(result, expected, rtol=1e-7, atol=1e-10)


@pytest.mark.parametrize("form", sorted(HAND_GELUS))
def test_deep_lift_rescales_an_activation_written_out_as_one_function(form):
    # DeepLIFT refused the product as a "product operation"; its rescale rule covers the
    # whole elementwise function, as it does F.gelu's / F.silu's
    hand, function = HAND_GELUS[form]
    x = torch.randn(5, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    result = lx.create_analyzer("deep_lift", _MLP(hand).double()).analyze(x)
    expected = lx.create_analyzer("deep_lift", _MLP(function).double()).analyze(x)
    torch.testing.assert_close(result, expected, rtol=1e-9, atol=1e-12)


class _SwappedSums(nn.Module):
    """x → silu → the sum of both units → silu: for the reference x₀ = x with its two
    features swapped, the sum is the same, and DeepLIFT takes the slope there."""

    def __init__(self, activation) -> None:
        super().__init__()
        self.activation = activation

    def forward(self, x: Tensor) -> Tensor:
        return 3.0 * self.activation(self.activation(x).sum(1, keepdim=True))


def test_deep_lift_takes_the_slope_of_an_activation_written_out_where_it_needs_one():
    hand, function = HAND_GELUS["silu"]
    x = torch.tensor([[0.7, -1.3], [2.0, 0.4]], dtype=torch.float64)
    reference = x.flip(1)
    result = lx.create_analyzer("deep_lift", _SwappedSums(hand),
                                reference_inputs=reference).analyze(x)
    # by hand: the outer silu's Δ is 0, its multiplier silu'(s); the inner one's the secant
    s = F.silu(x).sum(1, keepdim=True)
    outer = torch.sigmoid(s) * (1 + s * (1 - torch.sigmoid(s)))
    secant = (F.silu(x) - F.silu(reference)) / (x - reference)
    torch.testing.assert_close(result, (x - reference) * secant * 3.0 * outer)
    expected = lx.create_analyzer("deep_lift", _SwappedSums(function),
                                  reference_inputs=reference).analyze(x)
    torch.testing.assert_close(result, expected, rtol=1e-12, atol=1e-15)


#: Non-linearities written with numbers added, before or after, and the call each equals.
WITH_NUMBERS = {
    "sigmoid": (lambda t: 1 / (1 + torch.exp(-t)), torch.sigmoid),
    "highway": (lambda t: 1 - torch.sigmoid(t), lambda t: torch.sigmoid(-t)),
    "hard_sigmoid": (lambda t: F.relu6(t + 3) / 6, F.hardsigmoid),
    "tanh_sigmoid": (lambda t: (1 + torch.tanh(t)) / 2, lambda t: torch.sigmoid(2 * t)),
    "scaled_gate": (lambda t: 2 * torch.sigmoid(t) / 2, torch.sigmoid),
}


class _GatedByHand(nn.Module):
    """``o(f(g x) * a x)``: the gate ``f(g x)`` is a non-linearity's output (held under
    CP-LRP), and ``f`` alone ends in a kernel layer too (``r``; only that without the gate,
    a product of activations, which DeepLIFT refuses)."""

    def __init__(self, f, gated: bool = True) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.f, self.gated = f, gated
        self.g, self.a, self.o = nn.Linear(6, 8), nn.Linear(6, 8), nn.Linear(8, 3)
        self.r = nn.Linear(8, 3)

    def forward(self, x: Tensor) -> Tensor:
        alone = self.r(self.f(self.a(x)))
        return self.o(self.f(self.g(x)) * self.a(x)) + alone if self.gated else alone


@pytest.mark.parametrize("name", ["lrp.epsilon", "lrp.sequential_preset_a", "deep_lift"])
@pytest.mark.parametrize("attention_rule", ["attnlrp", "cp"])
@pytest.mark.parametrize("form", sorted(WITH_NUMBERS))
def test_a_non_linearity_written_with_numbers_is_one_function(form, attention_rule, name):
    # the numbers added took relevance as a bias does (sigmoid written out: 51 % off, the
    # map's sum 0.057 for 0.454), and a gate scaled or subtracted from 1 was no gate under
    # CP-LRP (179 % off)
    if name == "deep_lift" and attention_rule == "cp":
        pytest.skip("DeepLIFT has no attention rule")
    hand, function = WITH_NUMBERS[form]
    kwargs = {} if name == "deep_lift" else {"attention_rule": attention_rule}
    x = torch.randn(5, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    gated = name != "deep_lift"
    result = lx.create_analyzer(name, _GatedByHand(hand, gated).double(), **kwargs).analyze(x)
    expected = lx.create_analyzer(name, _GatedByHand(function, gated).double(),
                                  **kwargs).analyze(x)
    torch.testing.assert_close(result, expected, rtol=1e-7, atol=1e-10)


class _BiasAfterSigmoid(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Linear(3, 1, bias=False)
        self.b = nn.Parameter(torch.tensor(0.5))
        self.v = nn.Linear(1, 1, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.v(torch.sigmoid(self.w(x)) + self.b)


def test_a_tensor_added_after_a_non_linearity_keeps_its_share():
    # a model weight is no number of the function: the add's z-rule gives it its share
    model = _BiasAfterSigmoid().double()
    x = torch.randn(4, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    relevance = lx.create_analyzer("lrp.epsilon", model, epsilon=1e-12).analyze(x)
    with torch.no_grad():  # by hand: R_s = s / (s + b) · out, then the identity and z-rules
        h = model.w(x)
        s = torch.sigmoid(h)
        share = s / (s + model.b) * model(x)
        expected = model.w.weight * x / h * share
    torch.testing.assert_close(relevance, expected, rtol=1e-9, atol=1e-12)


def test_an_activation_written_out_conserves_relevance():
    model = _MLP(HAND_GELUS["new_gelu"][0]).double()
    x = torch.randn(5, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    relevance = lx.create_analyzer("lrp.epsilon", model, epsilon=1e-12).analyze(x)
    logits = model(x).detach()
    torch.testing.assert_close(relevance.sum(1), logits.max(1).values, rtol=1e-8, atol=1e-10)


class _SoftmaxByHand(nn.Module):
    """Single-head attention whose softmax is written out: a quotient, or a product with the
    reciprocal of the sum; or a gate by a reciprocal of its own shape."""

    def __init__(self, how: str) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.how, self.qk, self.v, self.head = how, nn.Linear(6, 12), nn.Linear(6, 6), \
            nn.Linear(6, 2)

    def forward(self, x):
        q, k = self.qk(x).chunk(2, dim=-1)
        e = torch.exp(q @ k.transpose(-2, -1))
        s = e.sum(-1, keepdim=True)
        weights = {"e / s": lambda: e / s, "e * (1 / s)": lambda: e * (1 / s),
                   "e * s.reciprocal()": lambda: e * s.reciprocal(),
                   "e * (1 / e.amax())": lambda: e * (1 / e.amax(-1, keepdim=True)),
                   "gate": lambda: e * (1 / (1 + e)),
                   "squeeze-excitation gate": lambda: e * (1 / (1 + torch.exp(-s)))}[self.how]()
        return self.head((weights @ self.v(x)).mean(1))


@pytest.mark.parametrize("attention_rule", ["attnlrp", "cp"])
@pytest.mark.parametrize("how", ["e / s", "e * (1 / s)", "e * s.reciprocal()",
                                 "e * (1 / e.amax())"])
def test_a_division_by_a_sum_written_as_a_product_is_refused_as_the_quotient(
        how, attention_rule):
    """``e * (1 / e.sum())`` got the uniform rule of a product (its map 25 % off F.softmax's,
    and not blocked under CP-LRP), where ``e / e.sum()`` is refused: no normalisation."""
    model = _SoftmaxByHand(how).eval()
    analyzer = lx.create_analyzer("lrp.epsilon", model, attention_rule=attention_rule)
    with pytest.raises(lx.NotAnalyzableModelError, match="unknown operation"):
        analyzer.analyze(torch.randn(3, 4, 6))


@pytest.mark.parametrize("how", ["gate", "squeeze-excitation gate"])
def test_a_gate_by_a_reciprocal_is_no_quotient(how):
    """A gate written as a reciprocal (a sigmoid by hand), as large as the other factor or
    broadcast over it (a squeeze-excitation gate, refused by the first version of the
    quotient check), is a product of two activations (the uniform rule): only the
    reciprocal of a sum is a division."""
    model = _SoftmaxByHand(how).double().eval()
    x = torch.randn(3, 4, 6, dtype=torch.double)
    relevance = lx.create_analyzer("lrp.z", model, neuron_selection_mode="index").analyze(x, 0)
    assert torch.isfinite(relevance).all() and relevance.abs().sum() > 0
