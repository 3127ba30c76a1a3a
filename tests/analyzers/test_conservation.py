"""The conservation report: output, input and what biases and stabilisers absorbed."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import lit_explain as lx
from lit_explain.demo.models import ResNetStyle


def mlp(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 10), nn.ReLU(), nn.Linear(10, 8), nn.ReLU(),
                         nn.Linear(8, 4)).double()


def test_the_last_layer_absorbs_exactly_its_bias():
    # LRP-z at the top layer: R_i = x_i w_ki / z_k · z_k, so Σ_i R_i = z_k − b_k.
    model = mlp()
    x = torch.randn(5, 6, dtype=torch.float64)
    report = lx.conservation_report(lx.create_analyzer("lrp.z", model), x)
    logits = model(x).detach()
    top = logits.argmax(1)
    torch.testing.assert_close(report.output, logits.amax(1))
    torch.testing.assert_close(report.layers["4"].output, logits.amax(1))
    torch.testing.assert_close(report.layers["4"].absorbed, model[4].bias.detach()[top])


def test_keep_tensors_layer_sums_equal_the_report():
    model = mlp()
    x = torch.randn(5, 6, dtype=torch.float64)
    analyzer = lx.create_analyzer("lrp.epsilon", model, epsilon=0.1, reverse_keep_tensors=True)
    result = analyzer.analyze(x)
    report = lx.conservation_report(analyzer, x)

    assert list(report.layers) == list(analyzer.reversed_tensors) == ["0", "2", "4"]
    for path, relevance in analyzer.reversed_tensors.items():
        torch.testing.assert_close(report.layers[path].input, relevance.flatten(1).sum(1))
    torch.testing.assert_close(report.input, result.sum(1))
    torch.testing.assert_close(report.map, result)
    # layer by layer, the losses add up to the whole; and ε loses relevance here
    torch.testing.assert_close(sum(layer.absorbed for layer in report.layers.values()),
                               report.absorbed)
    assert bool((report.absorbed.abs() > 1e-6).any())


def test_a_conserving_rule_absorbs_nothing():
    model = mlp()
    x = torch.randn(5, 6, dtype=torch.float64)
    report = lx.conservation_report(lx.create_analyzer("lrp.z_IB", model), x)
    torch.testing.assert_close(report.absorbed, torch.zeros(5, dtype=torch.float64))
    torch.testing.assert_close(report.input, model(x).detach().amax(1))


@pytest.mark.parametrize("kind", [list, tuple, "numpy"])
def test_one_index_per_sample_given_as_a_sequence(kind):
    """A list, tuple or numpy array per sample works as in ``analyze``: the report explains
    each sample's own output (the top layer absorbs that output's bias)."""
    model = mlp()
    x = torch.randn(4, 6, dtype=torch.float64)
    chosen = [3, 0, 2, 1]
    selection = np.array(chosen) if kind == "numpy" else kind(chosen)
    analyzer = lx.create_analyzer("lrp.z", model, neuron_selection_mode="index")
    report = lx.conservation_report(analyzer, x, selection)
    rows = torch.arange(4)
    torch.testing.assert_close(report.output, model(x).detach()[rows, chosen])
    torch.testing.assert_close(report.layers["4"].absorbed, model[4].bias.detach()[chosen])
    with pytest.raises(ValueError, match="3 indices for 4 samples"):
        lx.conservation_report(analyzer, x, chosen[:3])


def test_the_report_leaves_the_analyzer_options_as_they_were():
    analyzer = lx.create_analyzer("lrp.z", mlp())
    lx.conservation_report(analyzer, torch.randn(2, 6, dtype=torch.float64))
    assert analyzer.reverse.keep_tensors is False


def test_deep_taylor_starts_from_the_positive_part_and_all_mode_from_the_sum():
    model = mlp()
    x = torch.randn(4, 6, dtype=torch.float64)
    logits = model(x).detach()
    report = lx.conservation_report(
        lx.create_analyzer("deep_taylor", model, neuron_selection_mode="index"), x, 1)
    torch.testing.assert_close(report.output, logits[:, 1].clamp(min=0))
    report = lx.conservation_report(
        lx.create_analyzer("lrp.z", model, neuron_selection_mode="all"), x)
    torch.testing.assert_close(report.output, logits.sum(1))


@pytest.mark.parametrize("canonize", [True, False])
def test_residual_networks_report_every_layer_and_add_up(canonize):
    torch.manual_seed(0)
    model = ResNetStyle(in_channels=1, num_classes=3, width=4).double().eval()
    report = lx.conservation_report(lx.create_analyzer("lrp.epsilon", model, canonize=canonize),
                                    torch.randn(2, 1, 8, 8, dtype=torch.float64))
    # canonized, each BatchNorm is part of the convolution before it: one layer
    layers = (nn.Conv2d, nn.Linear) if canonize else (nn.Conv2d, nn.Linear, nn.BatchNorm2d)
    assert len(report.layers) == sum(isinstance(m, layers) for m in model.modules())
    torch.testing.assert_close(sum(layer.absorbed for layer in report.layers.values()),
                               report.absorbed)
    text = str(report)
    assert "fc" in text and "<model output>" in text


def test_only_relevance_methods_have_a_report():
    with pytest.raises(TypeError, match="'gradient' does not propagate relevance"):
        lx.conservation_report(lx.create_analyzer("gradient", mlp()), torch.randn(2, 6))


@pytest.mark.parametrize("options", [{"reverse_project_bottleneck_layers": True},
                                     {"reverse_clip_values": (-0.01, 0.01)}])
def test_the_report_measures_the_rules_not_the_rescaling_diagnostics(options):
    # a bias-free MLP under lrp.z_IB absorbs nothing; with projection or clipping on, the
    # report counted their rescaling as absorbed relevance (-1.5, or most of the logit)
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(5, 4, bias=False), nn.ReLU(), nn.Linear(4, 3, bias=False))
    x = torch.randn(2, 5, dtype=torch.float64)
    report = lx.conservation_report(lx.create_analyzer("lrp.z_IB", net.double(), **options), x)
    torch.testing.assert_close(report.absorbed, torch.zeros(2, dtype=torch.float64),
                               atol=1e-12, rtol=0)


class _MergedAndSkipped(nn.Module):
    """A convolution's output used by a BatchNorm (merged with it) and by a skip."""

    def __init__(self) -> None:
        super().__init__()
        self.conv, self.bn = nn.Conv2d(2, 3, 3, padding=1), nn.BatchNorm2d(3)
        self.fc = nn.Linear(3 * 2 * 4 * 4, 3, bias=False)
        self.conv.bias = None
        with torch.no_grad():
            self.bn.running_mean.uniform_(-0.3, 0.3)
            self.bn.running_var.uniform_(0.5, 2.0)

    def forward(self, x):
        t = self.conv(x)
        return self.fc(torch.cat([torch.relu(self.bn(t)), torch.relu(t)], 1).flatten(1))


def test_a_layer_output_with_several_uses_keeps_the_relevance_of_all():
    # lrp.z_IB conserves on every layer without a bias: the conv's rows must show nothing
    # absorbed (its output relevance is what both uses send it; the merged BatchNorm's shift
    # is a bias of the fused layer and absorbs its share there)
    torch.manual_seed(11)
    model = _MergedAndSkipped().double().eval()
    x = torch.randn(2, 2, 4, 4, dtype=torch.float64)
    report = lx.conservation_report(lx.create_analyzer("lrp.z_IB", model), x)
    rows = sum(layer.absorbed for layer in report.layers.values())
    torch.testing.assert_close(rows, report.absorbed)


class _Encoder(nn.Module):
    """A transformer encoder layer on (N, L, E) input, batch first or sequence first inside:
    one function, two layouts of every layer's tensors."""

    def __init__(self, batch_first: bool) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.batch_first = batch_first
        self.layer = nn.TransformerEncoderLayer(8, 2, 16, dropout=0.0, batch_first=batch_first)
        self.head = nn.Linear(8, 3)

    def forward(self, x):
        h = self.layer(x if self.batch_first else x.transpose(0, 1))
        return self.head(h.mean(1 if self.batch_first else 0))


@pytest.mark.parametrize("batch", [2, 1])
def test_sequence_first_layers_are_summed_per_sample(batch):
    # (their first axis holds the positions: sums over it were per position, a crash; for a
    # batch of one sample, one row per position)
    x = torch.randn(batch, 5, 8, dtype=torch.double)
    reports = [lx.conservation_report(lx.create_analyzer("lrp.epsilon", _Encoder(first).double()
                                                         .eval()), x)
               for first in (True, False)]
    assert list(reports[0].layers) == list(reports[1].layers)
    for path, layer in reports[0].layers.items():
        torch.testing.assert_close(reports[1].layers[path].absorbed, layer.absorbed)
        assert layer.absorbed.shape == (batch,)
    torch.testing.assert_close(reports[1].absorbed, reports[0].absorbed)


@pytest.mark.parametrize("batch", [2, 1])
def test_projection_scales_each_sample_of_sequence_first_layers(batch):
    # (for one sample, each position was scaled on its own: 0.59 off)
    x = torch.randn(batch, 5, 8, dtype=torch.double)
    maps = [lx.create_analyzer("lrp.epsilon", _Encoder(first).double().eval(),
                               reverse_project_bottleneck_layers=True).analyze(x)
            for first in (True, False)]
    torch.testing.assert_close(maps[1], maps[0])


class _TokenRows(nn.Module):
    """Embedding → a layer on each token → ReLU → mean over the tokens → head. ``rows``: the
    token layer as an ``nn.Linear`` on (N, L, D) (``""``), or on the tokens' rows flattened
    into one axis, samples outer (GPT-2's ``Conv1D``: ``addmm(b, x.view(-1, D), W)``,
    ``"blocks"``) or inner (a sequence-first (L, N, D) flattened, ``"interleaved"``)."""

    def __init__(self, rows: str) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.rows = rows
        self.embedding, self.token, self.head = nn.Embedding(10, 4), nn.Linear(4, 4), \
            nn.Linear(4, 3)

    def forward(self, ids):
        e = self.embedding(ids)
        if self.rows == "blocks":
            h = torch.addmm(self.token.bias, e.reshape(-1, 4), self.token.weight.T)
            h = h.view(*ids.shape, 4)
        elif self.rows == "interleaved":
            h = torch.addmm(self.token.bias, e.transpose(0, 1).reshape(-1, 4),
                            self.token.weight.T)
            h = h.view(ids.shape[1], ids.shape[0], 4).transpose(0, 1)
        else:
            h = self.token(e)
        return self.head(torch.relu(h).mean(1))


@pytest.mark.parametrize("padded", [False, True])
@pytest.mark.parametrize("rows", ["blocks", "interleaved"])
def test_layers_fed_the_samples_rows_flattened_are_summed_per_sample(rows, padded):
    """GPT-2's Conv1D flattens the samples' tokens into one axis: the report and the
    projection find each sample's rows there, in blocks or interleaved, by how copies of the
    first sample repeat (they were refused: "the model mixes its samples"; then, told by the
    first sample's relevance in the batch, padded batches, whose padding rows look alike in
    either layout)."""
    ids = torch.tensor([[5, 0, 0, 0, 0], [3, 7, 0, 0, 0], [2, 0, 0, 0, 0]]) if padded else \
        torch.randint(0, 10, (3, 5))
    flattened, plain = _TokenRows(rows).double().eval(), _TokenRows("").double().eval()
    report = lx.conservation_report(lx.create_analyzer("lrp.epsilon", flattened), ids)
    expected = lx.conservation_report(lx.create_analyzer("lrp.epsilon", plain), ids)
    assert list(report.layers) == ["<model>", "head"]  # (addmm: a layer of the model itself)
    torch.testing.assert_close(report.layers["<model>"].absorbed,
                               expected.layers["token"].absorbed)
    torch.testing.assert_close(report.absorbed, expected.absorbed)
    maps = [lx.create_analyzer("lrp.epsilon", model, reverse_project_bottleneck_layers=True)
            .analyze(ids) for model in (flattened, plain)]
    torch.testing.assert_close(maps[0], maps[1])


@pytest.mark.parametrize("rows", ["blocks", "interleaved"])
def test_clipped_and_projected_flattened_layers_give_each_sample_its_own_map(rows):
    # (clipping after the projection above rescaled the batch's relevance otherwise than the
    # first sample's alone: refused)
    ids = torch.randint(0, 10, (3, 5))
    analyzer = lx.create_analyzer("lrp.epsilon", _TokenRows(rows).double().eval(),
                                  reverse_project_bottleneck_layers=True,
                                  reverse_clip_values=(-0.05, 0.05))
    alone = torch.cat([analyzer.analyze(ids[i:i + 1]) for i in range(len(ids))])
    torch.testing.assert_close(analyzer.analyze(ids), alone)


def test_a_first_sample_whose_rows_look_alike_is_a_clear_error():
    # (one token repeated, and no position embedding: its rows repeat in either layout)
    ids = torch.tensor([[4, 4, 4, 4, 4], [3, 7, 1, 0, 0], [2, 0, 0, 0, 0]])
    analyzer = lx.create_analyzer("lrp.epsilon", _TokenRows("blocks").double().eval())
    with pytest.raises(lx.NotAnalyzableModelError, match=r"the first sample's relevance is "
                                                          r"the same in each of its 5 rows"):
        lx.conservation_report(analyzer, ids)
    lx.conservation_report(analyzer, ids.flip(0))


def test_a_model_sized_for_one_batch_says_why_the_diagnostics_fail():
    # (torch's shape error out of the analysis of copies of the first sample, unexplained)
    class SizedMask(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(4, 3)
            self.register_buffer("keep", torch.tensor([[1.0], [0.0], [1.0]]))

        def forward(self, x):
            return self.fc(x) * self.keep

    analyzer = lx.create_analyzer("lrp.z", SizedMask())
    with pytest.raises(lx.NotAnalyzableModelError, match=r"copies of the first sample.*"
                                                          r"tensor sized for one batch size"):
        lx.conservation_report(analyzer, torch.randn(3, 4))
