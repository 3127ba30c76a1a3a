"""PatternComputer: the estimator of Kindermans et al. 2018 and its sum/count state."""

from __future__ import annotations

import io

import pytest
import torch
import torch.nn.functional as F
from pattern_helpers import cosine, linear_toy, small_cnn
from torch import nn

import lit_explain as lx
from lit_explain.patterns import PATTERN_TYPES, PatternComputer


def hand_pattern(x, w, b, mask_of_output):
    """The paper's estimator written out for one Linear layer, neuron by neuron."""
    y = x @ w.t()
    mask = mask_of_output(y + b).double()
    patterns = []
    for j in range(w.shape[0]):
        m, n = mask[:, j:j + 1], mask[:, j].sum()
        ex, ey, exy = (x * m).sum(0) / n, (y[:, j:j + 1] * m).sum() / n, \
            (x * y[:, j:j + 1] * m).sum(0) / n
        cov = exy - ex * ey
        patterns.append(cov / (w[j] @ cov))
    return torch.stack(patterns)


def test_linear_pattern_recovers_the_signal_direction():
    x, y, a_s, model = linear_toy()
    pattern = PatternComputer(model, "linear").fit([x], progress=False)[""]
    assert pattern.shape == model.weight.shape
    assert cosine(pattern, a_s) >= 0.99
    torch.testing.assert_close(pattern[0], a_s, atol=0.05, rtol=0.05)
    # the weight itself points elsewhere: it must cancel the distractor
    assert cosine(model.weight, a_s) < 0.9


@pytest.mark.parametrize("pattern_type, mask_of_output", [
    ("linear", lambda out: torch.ones_like(out, dtype=torch.bool)),
    ("relu", lambda out: out > 0),
    ("relu.positive", lambda out: out > 0),
    ("relu.negative", lambda out: out <= 0),
])
def test_masks_follow_the_real_output(pattern_type, mask_of_output):
    torch.manual_seed(0)
    layer = nn.Linear(6, 4)
    with torch.no_grad():
        layer.bias.copy_(torch.tensor([0.5, -0.5, 0.0, 1.0]))
    x = torch.randn(500, 6).double()
    expected = hand_pattern(x, layer.weight.detach().double(), layer.bias.detach().double(),
                            mask_of_output)
    pattern = PatternComputer(layer, pattern_type).fit([x.float()], progress=False)[""]
    torch.testing.assert_close(pattern.double(), expected, atol=1e-4, rtol=1e-4)


def test_conv_statistics_equal_the_patch_sums():
    """Conv statistics run over samples and positions, patches as rows (groups, padding)."""
    model = small_cnn().eval()
    with torch.no_grad():
        bn = model[1]
        bn.running_mean.uniform_(-0.5, 0.5)
        bn.running_var.uniform_(0.5, 2.0)
        bn.weight.uniform_(0.5, 1.5)
        bn.bias.uniform_(-0.3, 0.3)
    x = torch.randn(5, 2, 6, 6)
    computer = PatternComputer(model, "relu")
    computer.update(x)

    conv1, conv2 = model[0], model[3]
    with torch.no_grad():
        out1 = conv1(x)
        hidden = F.relu(bn(out1))
        out2 = conv2(hidden)

    def expected(conv, inputs, output, gate):
        padded = F.pad(inputs, conv._reversed_padding_repeated_twice,
                       mode="constant" if conv.padding_mode == "zeros" else conv.padding_mode)
        patches = F.unfold(padded, conv.kernel_size).transpose(1, 2).double()  # (N, L, C k)
        y = (output - conv.bias[:, None, None]).flatten(2).transpose(1, 2).double()  # (N, L, O)
        mask = (gate.flatten(2).transpose(1, 2) > 0).double()
        per_group = conv.out_channels // conv.groups
        size = patches.shape[-1] // conv.groups
        sum_x, sum_xy = [], []
        for j in range(conv.out_channels):
            g = j // per_group
            rows = patches[..., g * size:(g + 1) * size]
            sum_x.append((rows * mask[..., j:j + 1]).sum((0, 1)))
            sum_xy.append((rows * (y * mask)[..., j:j + 1]).sum((0, 1)))
        return mask.sum((0, 1)), torch.stack(sum_x), (y * mask).sum((0, 1)), torch.stack(sum_xy)

    # conv1 feeds a BatchNorm: its mask is the BatchNorm's output, what the ReLU sees
    for path, conv, inputs, output, gate in [("0", conv1, x, out1, bn(out1)),
                                             ("3", conv2, hidden, out2, out2)]:
        stats = computer.statistics[path]
        count, sum_x, sum_y, sum_xy = expected(conv, inputs, output, gate)
        assert int(stats.rows) == 5 * 36
        torch.testing.assert_close(stats.count, count)
        torch.testing.assert_close(stats.sum_x, sum_x, rtol=1e-5, atol=1e-4)
        torch.testing.assert_close(stats.sum_y, sum_y, rtol=1e-5, atol=1e-4)
        torch.testing.assert_close(stats.sum_xy, sum_xy, rtol=1e-5, atol=1e-4)


def test_conv1d_matches_the_same_conv2d():
    torch.manual_seed(0)
    conv1d = nn.Conv1d(3, 5, 3, stride=2, padding=1, dilation=1)
    conv2d = nn.Conv2d(3, 5, (1, 3), stride=(1, 2), padding=(0, 1))
    with torch.no_grad():
        conv2d.weight.copy_(conv1d.weight[:, :, None])
        conv2d.bias.copy_(conv1d.bias)
    x = torch.randn(7, 3, 11)
    p1 = PatternComputer(conv1d).fit([x], progress=False)[""]
    p2 = PatternComputer(conv2d).fit([x[:, :, None]], progress=False)[""]
    torch.testing.assert_close(p1, p2[:, :, 0], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("pattern_type", PATTERN_TYPES)
def test_streaming_in_chunks_equals_one_batch(pattern_type):
    model = small_cnn()
    x = torch.randn(24, 2, 6, 6)
    whole = PatternComputer(model, pattern_type)
    whole.update(x)
    streamed = PatternComputer(model, pattern_type)
    for chunk in x.split(5):
        streamed.update(chunk)
    for path, stats in whole.statistics.items():
        for name, tensor in stats.tensors():
            torch.testing.assert_close(getattr(streamed.statistics[path], name), tensor,
                                       rtol=1e-5, atol=1e-4)
    for path, pattern in whole.compute().items():
        torch.testing.assert_close(streamed.compute()[path], pattern, rtol=1e-4, atol=1e-5)


def test_merged_halves_equal_the_whole():
    model = small_cnn()
    x = torch.randn(20, 2, 6, 6)
    whole, first, second = (PatternComputer(model) for _ in range(3))
    whole.update(x)
    first.update(x[:11])
    second.update(x[11:])
    merged = PatternComputer(model).merge(first).merge(second.state_dict())
    for path, pattern in whole.compute().items():
        torch.testing.assert_close(merged.compute()[path], pattern, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(merged.statistics[path].sum_xy,
                                   whole.statistics[path].sum_xy, rtol=1e-5, atol=1e-4)
    with pytest.raises(ValueError, match="pattern_type"):
        PatternComputer(model, "linear").merge(first)


def test_state_round_trips_through_a_weights_only_checkpoint():
    model = small_cnn()
    computer = PatternComputer(model, "relu.negative")
    computer.update(torch.randn(9, 2, 6, 6))
    buffer = io.BytesIO()
    torch.save(computer.state_dict(), buffer)
    buffer.seek(0)
    state = torch.load(buffer, weights_only=True)
    restored = PatternComputer(model, "relu.negative")
    restored.load_state_dict(state)
    for path, pattern in computer.compute().items():
        torch.testing.assert_close(restored.compute()[path], pattern)
    computer.reset()
    with pytest.raises(RuntimeError, match="no statistics"):
        computer.compute()
    with pytest.raises(ValueError, match="do not match"):
        PatternComputer(nn.Linear(3, 2), "relu.negative").load_state_dict(state)


def test_update_leaves_the_model_as_it_was():
    model = small_cnn().train()
    model[1].momentum = 0.5
    x = torch.randn(6, 2, 6, 6)
    model.eval()
    with torch.no_grad():
        expected = model(x)
    model.train()
    buffers = {name: b.clone() for name, b in model.named_buffers()}
    output = PatternComputer(model).update(x)
    torch.testing.assert_close(output, expected, rtol=0, atol=0)
    assert all(module.training for module in model.modules())
    assert all(p.grad is None for p in model.parameters())
    for name, b in model.named_buffers():
        torch.testing.assert_close(b, buffers[name], rtol=0, atol=0)


def test_fit_reads_tuples_and_stops_after_max_batches():
    model = small_cnn()
    batches = [(torch.randn(4, 2, 6, 6), torch.zeros(4)) for _ in range(5)]
    computer = PatternComputer(model)
    computer.fit(batches, max_batches=2, progress=False)
    assert int(computer.statistics["7"].rows) == 8
    with pytest.raises(ValueError, match="max_batches"):
        computer.fit(batches, max_batches=0)


def test_bad_configuration_fails_at_construction():
    with pytest.raises(ValueError, match=r"pattern_type='relu\.both'.*'relu\.negative'"):
        PatternComputer(nn.Linear(2, 2), "relu.both")
    with pytest.raises(ValueError, match="no kernel layer"):
        PatternComputer(nn.Sequential(nn.ReLU()))


@pytest.mark.parametrize("offset", [1e3, 1e4])
def test_statistics_are_summed_in_float64_for_inputs_far_from_zero(offset):
    # cov(x, y) = E[xy] - E[x]E[y] cancels: per-batch sums in float32 gave this pattern
    # 46 % (offset 1e3) and 720 % (1e4) off numpy's
    generator = torch.Generator().manual_seed(0)
    layer = nn.Linear(3, 2).double()
    x = offset + torch.randn(4096, 3, dtype=torch.float64, generator=generator)
    computer = PatternComputer(layer, "linear")
    computer.fit(x.split(512), progress=False)
    y = (x @ layer.weight.T).detach()
    expected = torch.stack([  # a = cov(x, y) / (wᵀ cov(x, y)), per output neuron
        (cov := ((x - x.mean(0)) * (y[:, [k]] - y[:, k].mean())).mean(0)) / (
            layer.weight[k].detach() @ cov) for k in range(2)])
    torch.testing.assert_close(computer.compute()[""], expected, rtol=1e-5, atol=0)


def test_patterns_computed_in_inference_mode_serve_pattern_net():
    import lit_explain as lx

    model = small_cnn().eval()
    x = torch.randn(4, 2, 6, 6, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():  # as under trainer.validate()
        patterns = PatternComputer(model).fit([x], progress=False)
    for name in ("pattern.net", "pattern.attribution"):
        assert torch.isfinite(lx.create_analyzer(name, model, patterns=patterns).analyze(x)).all()


def test_a_failed_load_or_merge_changes_nothing():
    model = small_cnn().eval()
    computer = PatternComputer(model)
    computer.fit([torch.randn(4, 2, 6, 6, generator=torch.Generator().manual_seed(2))],
                 progress=False)
    before = computer.state_dict()
    state = computer.state_dict()
    last = sorted(state["statistics"])[-1]
    state["statistics"][last]["count"] = torch.zeros(99, dtype=torch.float64)
    for action in (computer.load_state_dict, computer.merge):
        with pytest.raises(ValueError, match=f"layer '{last}' do not fit it: count"):
            action(state)
        after = computer.state_dict()["statistics"]
        assert all(torch.equal(t, after[p][n]) for p, s in before["statistics"].items()
                   for n, t in s.items())


def conv_net(kernel: tuple[int, int], stride: int = 1) -> nn.Module:
    return nn.Sequential(nn.Conv2d(1, 3, kernel, stride=stride), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(3, 2)).eval()


@pytest.mark.parametrize("other", [((1, 9), 1), ((3, 3), 2)], ids=["1x9 kernel", "stride 2"])
def test_statistics_of_another_layer_of_the_same_shape_are_refused(other):
    """A 3×3 convolution's statistics have the shape of a 1×9 one's, and of a strided one's:
    merged or loaded, they made patterns of neither layer."""
    x = torch.randn(4, 1, 9, 9, generator=torch.Generator().manual_seed(0))
    computer, foreign = (PatternComputer(model) for model in (conv_net((3, 3)),
                                                              conv_net(*other)))
    for fitted in (computer, foreign):
        fitted.fit([x], progress=False)
    before = computer.state_dict()
    for action, given in ((computer.merge, foreign), (computer.merge, foreign.state_dict()),
                          (computer.load_state_dict, foreign.state_dict())):
        with pytest.raises(ValueError, match=r"layer '0' are of another layer: \['Conv2d'"):
            action(given)
    after = computer.state_dict()
    assert all(torch.equal(t, after["statistics"][p][n])
               for p, s in before["statistics"].items() for n, t in s.items())
    computer.merge({k: v for k, v in before.items() if k != "layouts"})  # (saved before)


def test_fit_pulls_no_batch_beyond_max_batches():
    pulled = []

    def batches():
        for i in range(10):
            pulled.append(i)
            yield torch.randn(2, 2, 6, 6, generator=torch.Generator().manual_seed(i))

    PatternComputer(small_cnn().eval()).fit(batches(), max_batches=3, progress=False)
    assert pulled == [0, 1, 2]
    with pytest.raises(ValueError, match=r"max_batches=2.5 is not valid"):
        PatternComputer(small_cnn().eval()).fit(batches(), max_batches=2.5, progress=False)


class _Residual(nn.Module):
    """``h + fc(h)`` written in place (``h += fc(h)``) or not: the same function."""

    def __init__(self, in_place: bool) -> None:
        super().__init__()
        self.in_place = in_place
        self.fc0, self.fc, self.head = nn.Linear(4, 6), nn.Linear(6, 6), nn.Linear(6, 2)

    def forward(self, x):
        h = torch.relu(self.fc0(x))
        if self.in_place:
            h += self.fc(h)
        else:
            h = h + self.fc(h)
        return self.head(torch.relu(h))


@pytest.mark.parametrize("pattern_type", PATTERN_TYPES)
def test_a_layer_input_changed_in_place_afterwards_keeps_its_statistics(pattern_type):
    torch.manual_seed(0)
    written_out, in_place = _Residual(False), _Residual(True)
    in_place.load_state_dict(written_out.state_dict())
    x = torch.randn(64, 4)
    expected = PatternComputer(written_out, pattern_type).fit([x], progress=False)
    patterns = PatternComputer(in_place, pattern_type).fit([x], progress=False)
    for path, pattern in expected.items():
        torch.testing.assert_close(patterns[path], pattern)


@pytest.mark.parametrize("pattern_type", PATTERN_TYPES)
def test_compute_while_attached_counts_every_batch_seen(pattern_type):
    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 3)).eval()
    batches = [torch.randn(20, 4) for _ in range(3)]
    attached = PatternComputer(model, pattern_type)
    handle = attached.attach()
    with torch.no_grad():
        for batch in batches:
            model(batch)
    while_attached = attached.compute()
    handle.remove()
    expected = PatternComputer(model, pattern_type).fit(batches, progress=False)
    assert set(while_attached) == set(expected)
    for path, pattern in expected.items():
        torch.testing.assert_close(while_attached[path], pattern)


class _WithAdapter(nn.Linear):
    """A LoRA-style layer: ``W x + b + B(A x)``, two more kernel calls than its own."""

    def __init__(self) -> None:
        super().__init__(4, 3)
        self.a, self.b = nn.Parameter(torch.randn(2, 4)), nn.Parameter(torch.randn(3, 2))

    def forward(self, x):
        return F.linear(x, self.weight, self.bias) + F.linear(F.linear(x, self.a), self.b)


def test_a_layer_adding_several_kernel_calls_is_refused_naming_it():
    model = nn.Sequential(_WithAdapter(), nn.ReLU(), nn.Linear(3, 2))
    with pytest.raises(ValueError, match="_WithAdapter's output is not the output of one kernel"):
        PatternComputer(model, "relu").fit([torch.randn(8, 4)], progress=False)


def test_patterns_read_a_parametrized_weight_without_stepping_spectral_norm():
    """In training mode every read of a spectral_norm weight runs a step of its power
    iteration: fitting patterns from the training stream (the callback collects with
    attach() while the model trains), computing them and creating the analyzers must leave
    its vectors, and so training, as they would be without them."""
    from torch.nn.utils.parametrizations import spectral_norm

    def model() -> nn.Module:
        torch.manual_seed(0)
        return nn.Sequential(nn.Conv2d(2, 4, 3), nn.ReLU(), spectral_norm(nn.Conv2d(4, 4, 3)),
                             nn.ReLU(), nn.Flatten(), nn.Linear(16, 3)).train()

    x = torch.randn(4, 2, 6, 6)
    plain, collected = model(), model()
    plain(x)  # one training forward: one step of the power iteration
    computer = PatternComputer(collected)
    with computer.collecting():
        collected(x)
    patterns = computer.compute()
    for name in ("pattern.net", "pattern.attribution"):
        lx.create_analyzer(name, collected, patterns=patterns)
    for key, value in plain.state_dict().items():
        assert torch.equal(value, collected.state_dict()[key]), key


def test_fitting_under_autocast_gives_the_full_precision_patterns():
    # (the model's forward ran in bfloat16 under a caller's autocast: patterns 1.4 % off)
    model = small_cnn().eval()
    x = [torch.randn(8, 2, 6, 6) for _ in range(2)]
    expected = PatternComputer(model).fit(x, progress=False)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = PatternComputer(model).fit(x, progress=False)
    for path, pattern in expected.items():
        torch.testing.assert_close(got[path], pattern)


def test_the_innvestigate_1x_calls_add_their_data():
    """``compute(X, batch_size)`` and ``compute_generator(generator, steps)`` (iNNvestigate
    1.x's ``PatternComputer``) and an analyzer's ``fit_generator``: the patterns of one
    update on all the data. ``compute(X)`` took X for ``sync`` (a raw torch error, or the
    data ignored for the statistics held: patterns 6.17 off)."""
    model = small_cnn()
    x = torch.randn(24, 2, 6, 6)
    whole = PatternComputer(model)
    whole.update(x)
    expected = whole.compute()
    made = {
        "compute(X)": PatternComputer(model).compute(x, batch_size=5),
        "compute_generator": PatternComputer(model).compute_generator(iter(x.split(7))),
        "fit_generator": lx.create_analyzer("pattern.net", model).fit_generator(
            iter(x.split(7)), progress=False).patterns,
    }
    for patterns in made.values():
        assert patterns.keys() == expected.keys()
        for path, pattern in expected.items():
            torch.testing.assert_close(patterns[path], pattern, rtol=1e-4, atol=1e-5)
    partial = PatternComputer(model).compute_generator(iter(x.split(12)), steps=1)
    first = PatternComputer(model)
    first.update(x[:12])
    torch.testing.assert_close(partial, first.compute())


def test_no_data_and_a_sync_flag_of_another_type_are_named():
    computer = PatternComputer(small_cnn())
    with pytest.raises(ValueError, match="the data held no batches"):
        computer.fit([], progress=False)
    with pytest.raises(ValueError, match="sync=1 is not valid"):
        computer.compute(sync=1)


class ConvBatchNorm(nn.Module):
    """conv → (ReLU →) BatchNorm → ReLU → head, the BatchNorm a module or ``F.batch_norm``
    with the same buffers, the first ReLU in place or not."""

    def __init__(self, relu_first: str | None = None, functional: bool = False,
                 written_out: bool = False) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv, self.norm = nn.Conv2d(2, 4, 3), nn.BatchNorm2d(4)
        self.head = nn.Linear(4 * 16, 3)
        self.relu_first, self.functional = relu_first, functional
        self.written_out = written_out
        with torch.no_grad():
            self.norm.running_mean.uniform_(-1, 1)
            self.norm.running_var.uniform_(0.5, 2)
            self.norm.weight.uniform_(-2, 2)
            self.norm.bias.uniform_(-1, 1)

    def forward(self, x):
        h = self.conv(x)
        if self.relu_first is not None:
            h = F.relu(h, inplace=self.relu_first == "in place")
        n = self.norm
        if self.written_out:  # (torchvision's FrozenBatchNorm2d)
            scale = n.weight / torch.sqrt(n.running_var + n.eps)
            h = h * scale[:, None, None] + (n.bias - n.running_mean * scale)[:, None, None]
        else:
            h = F.batch_norm(h, n.running_mean, n.running_var, n.weight, n.bias, False, 0.0,
                             n.eps) if self.functional else n(h)
        return self.head(F.relu(h).flatten(1))


@pytest.mark.parametrize("inference", [False, True])
@pytest.mark.parametrize(("model", "twin"), [
    (ConvBatchNorm(functional=True), ConvBatchNorm()),
    (ConvBatchNorm(written_out=True), ConvBatchNorm()),
    (ConvBatchNorm(relu_first="in place"), ConvBatchNorm(relu_first="out of place"))],
    ids=["F.batch_norm", "written out", "in-place ReLU before the BatchNorm"])
def test_the_mask_is_read_where_the_relu_after_the_layer_reads(model, twin, inference):
    """A kernel output going straight into ``F.batch_norm`` takes its mask from the
    BatchNorm's output, as from the module's (it was read from the kernel output: the conv's
    pattern 91 % off), and so does one into a BatchNorm written out (19 %); one changed in
    place first (a ReLU) does not (it was read after the BatchNorm: 35 % off), also under
    inference mode, which keeps no version counters (50 % off)."""
    model, twin = model.double().eval(), twin.double().eval()
    x = torch.randn(32, 2, 6, 6, dtype=torch.double)
    torch.testing.assert_close(model(x), twin(x))
    expected = PatternComputer(twin).compute(x)
    computer = PatternComputer(model)
    with torch.inference_mode(inference):  # (no version counters there: trainer.validate())
        computer.update(x)
    for path, pattern in computer.compute().items():
        torch.testing.assert_close(pattern, expected[path])


def test_a_forward_that_raises_before_the_collection_leaves_the_mode_stack_as_it_was():
    """The mode that watches the forward's calls was entered by a pre-hook of the model and
    left by an always-called hook: a pre-hook of the user's that raised first made it leave
    a mode it never entered (the user's torch.device context: "pop from empty mode stack")."""
    from torch.overrides import _get_current_function_mode_stack

    model = small_cnn()

    def refuse(module, args):
        raise ValueError("expected 3 channels")

    model.register_forward_pre_hook(refuse)
    with torch.device("cpu"):
        depth = len(_get_current_function_mode_stack())
        with pytest.raises(ValueError, match="expected 3 channels"):
            PatternComputer(model).update(torch.randn(2, 2, 6, 6))
        assert len(_get_current_function_mode_stack()) == depth


def test_compute_names_a_bool_given_as_data_and_skips_empty_batches():
    computer = PatternComputer(small_cnn())
    with pytest.raises(TypeError, match=r"sync is a keyword: compute\(sync=False\)"):
        computer.compute(False)
    x = torch.randn(8, 2, 6, 6)
    expected = PatternComputer(small_cnn()).compute(x)
    for path, pattern in PatternComputer(small_cnn()).fit(
            [x[:0], x, x[:0]], progress=False).items():  # (a raw reshape error before)
        torch.testing.assert_close(pattern, expected[path])


def test_another_computer_or_a_read_of_the_output_leaves_the_mask_where_it_is_read():
    """A second computer collecting at once (its hooks read the output, its pre-activation
    subtracts the bias: the mask followed that), a pre-hook of the BatchNorm that reads its
    input, and update() while attached sent the mask elsewhere (the conv's pattern 92 % off)."""
    model = ConvBatchNorm().double().eval()
    x = torch.randn(32, 2, 6, 6, dtype=torch.double)
    expected = PatternComputer(model).compute(x)
    first, second = PatternComputer(model), PatternComputer(model)
    with first.collecting(), second.collecting():
        model(x)
    handle = model.norm.register_forward_pre_hook(lambda m, args: args[0].mean() and None)
    read = PatternComputer(model)
    read.update(x)
    handle.remove()
    nested = PatternComputer(model)
    with nested.collecting():
        nested.update(x)
    for computer in (first, second, read, nested):
        for path, pattern in computer.compute().items():
            torch.testing.assert_close(pattern, expected[path])


@pytest.mark.parametrize("written", [
    lambda h, s, b: -(h * -s) + b, lambda h, s, b: torch.add(h * s, other=b),
    lambda h, s, b: h.mul(s).add_(b)], ids=["negations", "other=", "in place"])
@pytest.mark.parametrize("batch", [1, 16])
def test_a_batchnorm_after_a_linear_layer_written_out_any_way(written, batch):
    """``h * scale + shift`` after a Linear layer, spelt three ways, also in batches of one
    (where the scale is as large as the batch: it was taken for an activation, 42 % off):
    the mask is read after it, as from nn.BatchNorm1d."""
    torch.manual_seed(0)
    linear, norm, head = nn.Linear(5, 6), nn.BatchNorm1d(6).eval(), nn.Linear(6, 2)
    with torch.no_grad():
        norm.running_mean.uniform_(-1, 1)
        norm.bias.uniform_(-1, 1)
        norm.weight.uniform_(-2, 2)

    class WrittenOut(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.linear, self.norm, self.head = linear, norm, head

        def forward(self, x):
            n = self.norm
            scale = n.weight / torch.sqrt(n.running_var + n.eps)
            h = written(self.linear(x), scale, n.bias - n.running_mean * scale)
            return self.head(torch.relu(h))

    model = WrittenOut().double().eval()
    module_form = nn.Sequential(linear, norm, nn.ReLU(), head).double().eval()
    x = torch.randn(48, 5, dtype=torch.double)
    torch.testing.assert_close(model(x), module_form(x))
    expected = PatternComputer(module_form).compute(x)
    patterns = PatternComputer(model).compute(x, batch_size=batch)
    torch.testing.assert_close(patterns["linear"], expected["0"])


def test_a_concatenation_of_activations_is_no_constant():
    """torch.cat([h, g]) has its tensors in a list: taken for a call of constants alone, its
    output and what is made of it were constants, and the mask did not follow a BatchNorm
    written out after a convolution of it (99.7 % off)."""
    torch.manual_seed(0)
    convs = [nn.Conv2d(2, 2, 3, padding=1) for _ in range(3)]
    norm = nn.BatchNorm2d(2).eval()
    with torch.no_grad():
        norm.running_mean.uniform_(-1, 1)
        norm.bias.uniform_(-1, 1)

    class Joined(nn.Module):
        def __init__(self, written_out: bool) -> None:
            super().__init__()
            self.a, self.b, self.c, self.norm = *convs, norm
            self.written_out, self.head = written_out, nn.Linear(2 * 36, 2)

        def forward(self, x):
            h = self.c(torch.cat([self.a(x), self.b(x)], dim=1)[:, 1:3])
            if self.written_out:
                n = self.norm
                scale = n.weight / torch.sqrt(n.running_var + n.eps)
                h = h * scale[:, None, None] + (n.bias - n.running_mean * scale)[:, None, None]
            else:
                h = self.norm(h)
            return self.head(torch.relu(h).flatten(1))

    x = torch.randn(32, 2, 6, 6, dtype=torch.double)
    models = [Joined(w).double().eval() for w in (True, False)]
    models[1].head = models[0].head
    torch.testing.assert_close(models[0](x), models[1](x))
    written, module = (PatternComputer(m).compute(x) for m in models)
    torch.testing.assert_close(written["c"], module["c"])


def test_a_handle_removed_twice_leaves_a_later_collection_alone():
    """Removing an old handle again reset the live collection's state: a later attach()
    hooked the model a second time (batches counted twice, a pattern 41 % off)."""
    model, x = small_cnn().eval(), torch.randn(16, 2, 6, 6)
    expected = PatternComputer(model).compute(x)
    computer = PatternComputer(model)
    old = computer.attach()
    old.remove()
    with computer.collecting():
        old.remove()
        model(x[:8])
        with computer.collecting():  # (attached: collects once)
            model(x[8:])
    for path, pattern in computer.compute().items():
        torch.testing.assert_close(pattern, expected[path], rtol=1e-4, atol=1e-5)


def test_a_layer_without_one_weight_is_refused_when_patterns_are_made():
    """A LoRA layer's refusal was raised in the model's forward hook: inside a training step,
    it stopped fit() (also under the callback's on_error="warn")."""
    from zoo import LoRALinear

    model = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), LoRALinear(8, 4))
    computer = PatternComputer(model)
    with computer.collecting():
        model(torch.randn(5, 6))  # (no error in the forward)
    with pytest.raises(ValueError, match="not the output of one kernel call"):
        computer.compute()


class _Standardised(nn.Linear):
    """A layer whose call gets another weight than ``module.weight``."""

    def forward(self, x):
        w = self.weight
        return F.linear(x, (w - w.mean(1, keepdim=True)) / w.std(1, keepdim=True), self.bias)


def test_a_merge_takes_the_weights_calls_got_from_its_own_model_only():
    torch.manual_seed(0)
    model, other = (nn.Sequential(_Standardised(4, 3), nn.ReLU()) for _ in range(2))
    x = torch.randn(30, 4)
    own, theirs = PatternComputer(model), PatternComputer(other)
    own.update(x[:15])
    theirs.update(x[15:])
    # a computer of the same model that has seen no forward takes the calls' weights along
    # (a layer with a forward of its own needs them); another model's are not this model's
    fresh = PatternComputer(model).merge(own)
    torch.testing.assert_close(fresh.compute()["0"], own.compute()["0"])
    expected = PatternComputer(model)
    expected.update(x[:15])
    expected.merge(theirs.state_dict())  # (statistics only)
    torch.testing.assert_close(own.merge(theirs).compute()["0"], expected.compute()["0"])


def test_a_lazy_module_that_has_not_run_is_named():
    model = nn.Sequential(nn.LazyLinear(3), nn.ReLU(), nn.Linear(3, 2))
    with pytest.raises(ValueError, match=r"'0' \(LazyLinear\) has uninitialised parameters"):
        PatternComputer(model)
    model(torch.randn(2, 4))
    assert set(PatternComputer(model).layers) == {"0", "2"}


def test_an_update_called_inside_an_analysis_collects():
    # (the analysis' own forward passes are no data, the update's are)
    model = small_cnn()
    other = torch.randn(8, 2, 6, 6)
    computer, expected = PatternComputer(model), PatternComputer(model)
    expected.update(other)
    analysed = nn.Sequential(nn.Linear(3, 3))

    def collect(module, args, output):
        computer.update(other)

    analysed.register_forward_hook(collect)
    lx.create_analyzer("gradient", analysed).analyze(torch.randn(2, 3))
    for path, pattern in expected.compute().items():
        torch.testing.assert_close(computer.compute()[path], pattern)
