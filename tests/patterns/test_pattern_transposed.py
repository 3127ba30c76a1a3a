"""Transposed convolutions: their statistics and patterns against a hand computation."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import lit_explain as lx
from lit_explain.patterns import PatternComputer


def hand_rows(layer: nn.ConvTranspose2d, x: torch.Tensor):
    """Per output neuron (channel j, position p): its input row and its output, by loops.

    Output ``p`` of channel ``j`` reads ``x[c, i]`` with weight ``W[c, j', k]`` wherever
    ``p = i·stride − padding + k·dilation`` (``j'`` = ``j`` within its group).
    """
    weight = layer.weight.detach().double()
    cin, cout_g, kh, kw = weight.shape
    g = layer.groups
    cin_g = cin // g
    out = layer(x).detach().double()
    n, cout, oh, ow = out.shape
    rows = {j: [] for j in range(cout)}
    ys = {j: [] for j in range(cout)}
    for b in range(n):
        for j in range(cout):
            group, jj = divmod(j, cout_g)
            for p in range(oh):
                for q in range(ow):
                    row = torch.zeros(cin_g, kh, kw, dtype=torch.float64)
                    for c in range(cin_g):
                        for a in range(kh):
                            for e in range(kw):
                                ih = p + layer.padding[0] - a * layer.dilation[0]
                                iw = q + layer.padding[1] - e * layer.dilation[1]
                                if ih % layer.stride[0] or iw % layer.stride[1]:
                                    continue
                                ih, iw = ih // layer.stride[0], iw // layer.stride[1]
                                if 0 <= ih < x.shape[2] and 0 <= iw < x.shape[3]:
                                    row[c, a, e] = x[b, group * cin_g + c, ih, iw]
                    w = weight[group * cin_g:(group + 1) * cin_g, jj]
                    y = (w * row).sum()
                    bias = 0 if layer.bias is None else layer.bias[j].item()
                    assert abs(y + bias - out[b, j, p, q]) < 1e-4  # the loops are the layer
                    rows[j].append(row.flatten())
                    ys[j].append(y + bias)  # real output; the bias is removed below
    return ({j: torch.stack(r) for j, r in rows.items()},
            {j: torch.stack(v) for j, v in ys.items()})


@pytest.mark.parametrize("groups, stride, padding, output_padding, dilation", [
    (1, 2, 1, 1, 1), (2, 2, 0, 0, 1), (1, 1, 1, 0, 2)])
def test_transposed_conv_statistics_and_pattern_by_hand(groups, stride, padding,
                                                        output_padding, dilation):
    torch.manual_seed(0)
    layer = nn.ConvTranspose2d(4, 6, 3, stride, padding, output_padding, groups=groups,
                               dilation=dilation)
    x = torch.randn(3, 4, 4, 5) + 0.3
    computer = PatternComputer(layer, "relu")
    computer.update(x)
    stats = computer.statistics[""]
    rows, outs = hand_rows(layer, x)
    weight = layer.weight.detach().double()
    cin_g, cout_g = 4 // groups, 6 // groups
    expected_pattern = torch.zeros_like(weight)
    for j in range(6):
        r, out = rows[j].double(), outs[j]
        y = out - layer.bias[j].item()
        m = (out > 0).double()  # "relu": rows where the real output is positive
        count = m.sum()
        ex, ey, exy = (m[:, None] * r).sum(0), (m * y).sum(), (m[:, None] * y[:, None] * r).sum(0)
        torch.testing.assert_close(stats.count[j], count)
        torch.testing.assert_close(stats.sum_y[j], ey, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(stats.sum_x[j], ex, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(stats.sum_xy[j], exy, rtol=1e-5, atol=1e-5)
        # the paper's estimator: a = cov(x, y) / (wᵀ cov(x, y)), E over the masked rows
        cov = exy / count - (ex / count) * (ey / count)
        group, jj = divmod(j, cout_g)
        w = weight[group * cin_g:(group + 1) * cin_g, jj]
        a = cov / (w.flatten() @ cov)
        expected_pattern[group * cin_g:(group + 1) * cin_g, jj] = a.reshape(w.shape)
    pattern = computer.compute()[""]
    assert pattern.shape == layer.weight.shape
    torch.testing.assert_close(pattern.double(), expected_pattern, rtol=1e-4, atol=1e-5)
    # wᵀa = 1 for every output channel
    for j in range(6):
        group, jj = divmod(j, cout_g)
        block = slice(group * cin_g, (group + 1) * cin_g)
        assert abs((weight[block, jj] * pattern[block, jj].double()).sum() - 1) < 1e-4


def test_transposed_conv_with_output_size_in_forward():
    """``layer(x, output_size=...)`` changes the output padding: the sums follow the output."""
    torch.manual_seed(1)
    layer = nn.ConvTranspose2d(2, 3, 3, stride=2, padding=1)
    x = torch.randn(2, 2, 3, 3)

    class Wrapper(nn.Module):
        def __init__(self):
            super().__init__()
            self.up = layer

        def forward(self, inputs):
            return self.up(inputs, output_size=[6, 6])

    computer = PatternComputer(Wrapper(), "linear")
    computer.update(x)
    rows, _ = hand_rows_with_output_size(layer, x)
    torch.testing.assert_close(computer.statistics["up"].sum_x, rows, rtol=1e-5, atol=1e-5)


def hand_rows_with_output_size(layer, x):
    layer.output_padding = (1, 1)  # what output_size=[6, 6] means for this layer
    try:
        rows, outs = hand_rows(layer, x)
    finally:
        layer.output_padding = (0, 0)
    return torch.stack([r.sum(0) for r in rows.values()]).double(), outs


@pytest.mark.parametrize("name", ["pattern.net", "pattern.attribution"])
def test_transposed_conv_model_is_analyzed(name):
    torch.manual_seed(2)
    model = nn.Sequential(nn.Conv2d(1, 4, 3, stride=2, padding=1), nn.ReLU(),
                          nn.ConvTranspose2d(4, 2, 2, stride=2), nn.ReLU(), nn.Flatten(),
                          nn.Linear(2 * 8 * 8, 3))
    data = torch.randn(64, 1, 8, 8)
    patterns = PatternComputer(model).fit([data], progress=False)
    assert set(patterns) == {"0", "2", "5"}
    assert patterns["2"].shape == model[2].weight.shape
    result = lx.create_analyzer(name, model, patterns=patterns).analyze(data[:4])
    assert result.shape == (4, 1, 8, 8) and torch.isfinite(result).all()
    assert result.abs().sum() > 0
