"""The edges of ``analyze``: per-sample indices in chunks of several copies, outputs without
a batch axis, invalid options and selections, non-finite values, empty batches, unreadable
files and threads."""

from __future__ import annotations

import inspect
import math
import threading

import numpy as np
import pytest
import torch
from torch import nn

import lit_explain as lx

INDICES = [0, 4, 1, 3]  # one output per sample


def mlp(activation: type[nn.Module] = nn.ReLU) -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(12, 16), activation(), nn.Linear(16, 5)).eval()


def batch() -> torch.Tensor:
    torch.manual_seed(1)
    return torch.randn(4, 12)


def gradient_of_selected(model: nn.Module, x: torch.Tensor, indices: list[int]) -> torch.Tensor:
    x = x.clone().requires_grad_(True)
    selected = model(x).gather(1, torch.tensor(indices)[:, None]).sum()
    return torch.autograd.grad(selected, x)[0]


# Per-sample indices repeat for every copy of the batch in a chunk ----------------------

def test_smoothgrad_without_noise_and_per_sample_indices_is_the_gradient():
    # 3 noise-free copies of the batch in one chunk: each copy's gradient is the gradient
    model, x = mlp(), batch()
    smoothgrad = lx.create_analyzer("smoothgrad", model, neuron_selection_mode="index",
                                    augment_by_n=3, noise_scale=0.0)
    torch.testing.assert_close(smoothgrad.analyze(x, INDICES),
                               gradient_of_selected(model, x, INDICES))


def test_integrated_gradients_with_per_sample_indices_is_each_sample_analysed_alone():
    model, x = mlp(), batch()
    ig = lx.create_analyzer("integrated_gradients", model, neuron_selection_mode="index",
                            steps=8)
    alone = torch.cat([ig.analyze(x[i:i + 1], index) for i, index in enumerate(INDICES)])
    torch.testing.assert_close(ig.analyze(x, torch.tensor(INDICES)), alone)


def test_integrated_gradients_with_per_sample_indices_is_complete():
    # Σ map = f(x) − f(0) for each sample's own output (smooth model, many steps)
    model, x = mlp(nn.Softplus), batch()
    ig = lx.create_analyzer("integrated_gradients", model, neuron_selection_mode="index",
                            steps=512)
    selected = torch.tensor(INDICES)[:, None]
    with torch.no_grad():
        difference = (model(x) - model(torch.zeros_like(x))).gather(1, selected).squeeze(1)
    torch.testing.assert_close(ig.analyze(x, INDICES).sum(1), difference, atol=2e-3, rtol=0)


class TokenModel(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.emb, self.out = nn.Embedding(20, 6), nn.Linear(6, 3)

    def forward(self, tokens):
        return self.out(torch.tanh(self.emb(tokens)).mean(1))


def test_token_model_integrated_gradients_with_per_sample_indices():
    model, tokens, indices = TokenModel().eval(), torch.randint(0, 20, (4, 7)), [0, 2, 1, 0]
    ig = lx.create_analyzer("integrated_gradients", model, neuron_selection_mode="index",
                            steps=8)
    alone = torch.cat([ig.analyze(tokens[i:i + 1], index) for i, index in enumerate(indices)])
    torch.testing.assert_close(ig.analyze(tokens, indices), alone)


# The explained output's first axis must be the samples ---------------------------------

class SequenceFirst(nn.Module):  # (T, N, C), as an RNN with batch_first=False
    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(12, 6)

    def forward(self, x):
        return self.linear(x).reshape(len(x), 2, 3).transpose(0, 1)


class Reduced(nn.Module):  # reduced over the batch: (C,) or a scalar
    def __init__(self, reduce) -> None:
        super().__init__()
        self.linear, self.reduce = nn.Linear(12, 3), reduce

    def forward(self, x):
        return self.reduce(self.linear(x))


@pytest.mark.parametrize("name", ["gradient", "lrp.epsilon"])
@pytest.mark.parametrize(("model", "shape"), [
    (SequenceFirst(), r"\(2, 4, 3\)"),
    (Reduced(lambda y: y.mean(0)), r"\(3,\)"),
    (Reduced(torch.sum), r"\(\)"),
])
def test_an_output_whose_first_axis_is_not_the_samples_is_refused(name, model, shape):
    analyzer = lx.create_analyzer(name, model.eval())
    with pytest.raises(ValueError, match=f"shape {shape} for a batch of 4 samples; its first "
                                         f"axis must be the samples"):
        analyzer.analyze(batch())


class OneLogitSqueezed(nn.Module):  # a binary classifier for BCEWithLogits: (N,) logits
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(nn.Linear(12, 8), nn.ReLU(), nn.Linear(8, 1))

    def forward(self, x):
        return self.net(x).squeeze()


@pytest.mark.parametrize("name", ["gradient", "lrp.epsilon", "integrated_gradients",
                                  "deep_lift"])
def test_a_squeezed_logit_of_one_sample_is_its_logit(name):
    # squeezed to a 0-d tensor for a batch of one: refused as an output reduced over the
    # batch, which dropped every analyzer at the callback's one-sample preflight
    model, x = OneLogitSqueezed().eval(), batch()
    analyzer = lx.create_analyzer(name, model)
    torch.testing.assert_close(analyzer.analyze(x[:1]), analyzer.analyze(x)[:1])
    if name == "gradient":
        leaf = x[:1].clone().requires_grad_(True)
        torch.testing.assert_close(analyzer.analyze(x[:1]),
                                   torch.autograd.grad(model(leaf), leaf)[0])


class Decisions(nn.Module):
    """Returns its decisions (integer classes, bool labels) before the scores."""

    def __init__(self, decide) -> None:
        super().__init__()
        self.linear, self.decide = nn.Linear(12, 3), decide

    def forward(self, x):
        scores = self.linear(x)
        return {"decisions": self.decide(scores), "scores": scores}


@pytest.mark.parametrize("name", ["gradient", "integrated_gradients", "guided_backprop",
                                  "lrp.epsilon", "deep_taylor", "deep_lift"])
@pytest.mark.parametrize(("decide", "dtype"), [(lambda y: y.argmax(1), "int64"),
                                               (lambda y: y > 0, "bool")])
def test_an_integer_or_bool_output_is_refused_naming_the_scores(name, decide, dtype):
    model = Decisions(decide).eval()
    with pytest.raises(ValueError, match=rf"output \(output_key='decisions'\) is a "
                                         rf"torch.{dtype} tensor .* output_key= one of "
                                         rf"\['scores'\]"):
        lx.create_analyzer(name, model, output_key="decisions").analyze(batch())
    # the scores they come from: the plain linear layer's map
    x = batch()
    torch.testing.assert_close(
        lx.create_analyzer(name, model, output_key="scores").analyze(x),
        lx.create_analyzer(name, model.linear).analyze(x))


# Options: checked at construction, naming the value ------------------------------------

NAN, INF = math.nan, math.inf


@pytest.mark.parametrize(("name", "kwargs", "message"), [
    ("lrp.epsilon", {"bias": "False"}, "bias='False' is not valid; expected True or False"),
    ("lrp.epsilon", {"bias": 0}, "bias=0 is not valid"),
    ("lrp.epsilon", {"bias": None}, "bias=None is not valid"),
    ("lrp.epsilon", {"epsilon": NAN}, "epsilon=nan is not valid; expected a finite number"),
    ("lrp.sequential_preset_a", {"epsilon": INF}, "epsilon=inf is not valid"),
    ("lrp.alpha_beta", {"alpha": "2"}, "alpha='2' is not valid"),
    ("lrp.alpha_beta", {"alpha": 0.5}, "alpha=0.5 is not valid; expected a finite number >= 1"),
    ("lrp.alpha_beta", {"beta": NAN}, "beta=nan is not valid"),
    ("smoothgrad", {"noise_scale": NAN}, "noise_scale=nan is not valid"),
    ("smoothgrad", {"noise_scale": INF}, "noise_scale=inf is not valid"),
    ("random", {"stddev": INF}, "stddev=inf is not valid"),
    ("deep_taylor.bounded", {"low": "0", "high": 1}, "low='0' is not valid"),
    ("deep_taylor.bounded", {"low": 0, "high": NAN}, "high=nan is not valid"),
    ("integrated_gradients", {"reference_inputs": NAN}, "reference_inputs=nan is not valid"),
    ("integrated_gradients", {"reference_inputs": None}, "reference_inputs=None is not valid"),
    ("deep_lift", {"reference_inputs": "zero"}, "reference_inputs='zero' is not valid"),
    ("deep_lift", {"reference_inputs": torch.tensor([0.0, INF])}, "not finite"),
    ("smoothgrad", {"seed": None}, "seed=None is not valid; expected an integer"),
    ("smoothgrad", {"seed": "s"}, "seed='s' is not valid"),
    ("smoothgrad", {"seed": 2**70}, f"seed={2**70} is not valid"),
    ("random", {"seed": 1.5}, "seed=1.5 is not valid"),
])
def test_invalid_options_are_refused_at_construction(name, kwargs, message):
    with pytest.raises(ValueError, match=message):
        lx.create_analyzer(name, mlp(), **kwargs)


# Index selections: integers only ---------------------------------------------------------

@pytest.mark.parametrize("selection", [torch.tensor(2), np.int64(2), np.int32(2)])
def test_index_selection_as_a_0d_tensor_or_a_numpy_integer(selection):
    analyzer = lx.create_analyzer("gradient", mlp(), neuron_selection_mode="index")
    x = batch()
    torch.testing.assert_close(analyzer.analyze(x, selection),
                               gradient_of_selected(mlp(), x, [2] * 4))


@pytest.mark.parametrize(("selection", "message"), [
    (torch.tensor([2.7] * 4), r" \(a torch.float32 tensor of shape \(4,\)\)"),
    ([2.7] * 4, r"=\[2.7, 2.7, 2.7, 2.7\]"),
    (True, "=True"),
    (torch.tensor([[2]] * 4), r" \(a torch.int64 tensor of shape \(4, 1\)\)"),
])
def test_index_selection_that_is_not_integers_is_refused(selection, message):
    analyzer = lx.create_analyzer("gradient", mlp(), neuron_selection_mode="index")
    with pytest.raises(ValueError, match=f"neuron_selection{message} is not valid; expected an "
                                         f"int, or one integer index per sample"):
        analyzer.analyze(batch(), selection)


# Non-finite values: the forward guard compares them as equal ---------------------------

RULE_BASED = ["lrp.epsilon", "lrp.alpha_2_beta_1", "guided_backprop", "deep_lift"]


def spoilt(bad: float) -> torch.Tensor:
    """The batch with ``bad`` in sample 0, the sample the forward guard compares."""
    x = batch()
    x[0, 0] = bad
    return x


@pytest.mark.parametrize("name", RULE_BASED)
@pytest.mark.parametrize("bad", [NAN, INF])
def test_a_non_finite_input_gets_a_non_finite_map(name, bad):
    model = mlp()
    result = lx.create_analyzer(name, model).analyze(spoilt(bad))
    assert not bool(torch.isfinite(result[0]).all())
    torch.testing.assert_close(result[1:], lx.create_analyzer(name, model).analyze(batch())[1:])


@pytest.mark.parametrize("name", ["lrp.epsilon", "guided_backprop"])
def test_check_finite_raises_on_a_non_finite_input(name):
    analyzer = lx.create_analyzer(name, mlp(), reverse_check_finite=True)
    with pytest.raises(FloatingPointError, match="not finite"):
        analyzer.analyze(spoilt(NAN))


@pytest.mark.parametrize("name", RULE_BASED)
def test_a_nan_weight_gets_a_non_finite_map(name):
    model = mlp()
    with torch.no_grad():
        model[1].weight[0, 0] = NAN
    assert not bool(torch.isfinite(lx.create_analyzer(name, model).analyze(batch())).all())


# Refusals that name what is wrong -------------------------------------------------------

@pytest.mark.parametrize("name", ["gradient", "integrated_gradients", "smoothgrad",
                                  "lrp.epsilon", "deep_lift"])
def test_an_empty_batch_is_refused(name):
    with pytest.raises(ValueError, match=r"x has no samples \(shape \(0, 12\)\)"):
        lx.create_analyzer(name, mlp()).analyze(torch.zeros(0, 12))


@pytest.mark.parametrize("token", [20, -1])
def test_a_token_id_out_of_the_embedding_is_named(token):
    tokens = torch.full((2, 7), token)
    with pytest.raises(ValueError, match=fr"embedding 'emb' \(20 rows, valid ids 0..19, of "
                                         fr"dtype int64 or int32; the input's token ids, "
                                         fr"torch.int64, range from {token} to {token}\)"
                       ) as info:
        lx.create_analyzer("gradient", TokenModel().eval()).analyze(tokens)
    assert isinstance(info.value.__cause__, IndexError)  # the model's own error


@pytest.mark.parametrize("content", [b"junk", b"", bytes(range(256))])
def test_a_file_that_is_not_a_saved_analyzer_is_named(tmp_path, content):
    path = tmp_path / "junk.pt"
    path.write_bytes(content)
    with pytest.raises(ValueError, match="junk.pt.*is not a saved lit_explain analyzer"):
        lx.load_analyzer(path, mlp())


# Threads: analyses of one model run one at a time ---------------------------------------

@pytest.mark.parametrize("name", ["gradient", "integrated_gradients", "lrp.epsilon",
                                  "deep_lift"])
def test_threads_analysing_one_model_get_the_single_threaded_maps(name):
    # a model left in train mode with dropout: a thread that restored train mode while
    # another analyses would give that one a dropout map
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(12, 64), nn.ReLU(), nn.Dropout(0.5), nn.Linear(64, 5))
    x = batch()
    expected = lx.create_analyzer(name, model).analyze(x)
    shared = lx.create_analyzer(name, model)
    results, errors = [], []

    def work(analyzer) -> None:
        try:
            results.extend(analyzer.analyze(x) for _ in range(50))
        except Exception as error:  # noqa: BLE001 - reported below
            errors.append(error)

    threads = [threading.Thread(target=work, args=(analyzer,)) for analyzer in
               (shared, shared, lx.create_analyzer(name, model),
                lx.create_analyzer(name, model))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert len(results) == 200
    for result in results:
        torch.testing.assert_close(result, expected)
    assert model.training and model[2].training  # as it was


class _Interleaved(nn.Module):
    """A plain forward in thread ``plain`` that starts before an analysis in thread
    ``analysing`` and ends after the analysis' forward has ended, while its hooks are on."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(4, 6), nn.Linear(6, 2)
        self.plain: int | None = None
        self.analysing: int | None = None
        self.plain_started, self.analysis_ended, self.plain_done = (
            threading.Event(), threading.Event(), threading.Event())
        self.register_forward_hook(self._after_the_analysis_forward)

    def _after_the_analysis_forward(self, module, args, output) -> None:
        if threading.get_ident() == self.analysing and not self.analysis_ended.is_set():
            self.analysis_ended.set()
            assert self.plain_done.wait(10)

    def forward(self, x):
        if threading.get_ident() == self.plain and not self.plain_started.is_set():
            self.plain_started.set()
            assert self.analysis_ended.wait(10)
        return self.fc2(torch.relu(self.fc1(x)))


def test_a_plain_forward_in_another_thread_during_an_analysis_is_left_alone():
    # the analysis' module hooks are global: they fire in the other thread's forward too,
    # whose end (after the analysis' forward ended) popped the analysis' empty module stack
    torch.manual_seed(0)
    model = _Interleaved().eval()
    x = torch.rand(3, 4)
    expected = lx.create_analyzer("lrp.epsilon", model).analyze(x)
    errors: list[BaseException] = []

    def plain() -> None:
        model.plain = threading.get_ident()
        try:
            with torch.no_grad():
                model(x)
        except BaseException as error:  # noqa: BLE001  (reported below)
            errors.append(error)
        finally:
            model.plain_done.set()

    other = threading.Thread(target=plain)
    other.start()
    assert model.plain_started.wait(10)
    model.analysing = threading.get_ident()
    result = lx.create_analyzer("lrp.epsilon", model).analyze(x)
    other.join()
    assert errors == []
    torch.testing.assert_close(result, expected)


def test_a_model_on_the_meta_device_is_refused_naming_it():
    model = nn.Linear(4, 2, device="meta")
    for name in ("gradient", "lrp.epsilon"):
        with pytest.raises(ValueError, match="'meta' device"):
            lx.create_analyzer(name, model).analyze(torch.rand(2, 4))


def test_model_wo_softmax_keeps_the_models_eval_flag():
    model = nn.Sequential(nn.Linear(4, 3), nn.Dropout(0.5), nn.Softmax(dim=1)).eval()
    assert not lx.model_wo_softmax(model).training


class NormalisingSequential(nn.Sequential):
    def forward(self, x):
        return super().forward((x - 0.5) / 0.25)


def test_model_wo_softmax_refuses_a_sequential_with_a_forward_of_its_own():
    """It became a plain Sequential of the same modules, without the subclass's forward
    (its logits 1.43 off, with no error)."""
    model = NormalisingSequential(nn.Linear(4, 3), nn.Softmax(dim=1))
    with pytest.raises(ValueError, match="NormalisingSequential is an nn.Sequential with a "
                                         "forward of its own"):
        lx.model_wo_softmax(model)
    plain = nn.Sequential(nn.Linear(4, 3), nn.Softmax(dim=1))  # (Sequential's forward)
    x = torch.randn(5, 4)
    torch.testing.assert_close(lx.model_wo_softmax(plain)(x), plain[0](x))


def test_a_subclass_of_a_registered_analyzer_is_not_saved_as_its_parent(tmp_path):
    class Doubled(type(lx.create_analyzer("gradient", nn.Linear(4, 2)))):
        def _analyze(self, x, neuron_selection):
            return 2 * super()._analyze(x, neuron_selection)

    with pytest.raises(ValueError, match="Doubled is not a registered analyzer"):
        Doubled(nn.Linear(4, 2)).save(tmp_path / "a.pt")


@pytest.mark.parametrize("name", sorted(lx.analyzer_registry))
def test_every_analyzer_class_shows_its_constructor_signature(name):
    """``inspect.signature`` (help(), IDEs, LightningCLI) read ``Analyzer.__new__``'s
    ``(*args, **kwargs)`` for the classes without an ``__init__`` of their own."""
    cls = lx.analyzer_registry[name]
    parameters = list(inspect.signature(cls).parameters)
    assert parameters[0] == "model"
    assert parameters == list(inspect.signature(cls.__init__).parameters)[1:]


@pytest.mark.parametrize("name", ["gradient", "lrp.epsilon"])
def test_a_lazy_module_that_has_not_run_is_named(name):
    model = torch.nn.Sequential(torch.nn.LazyLinear(3), torch.nn.ReLU(), torch.nn.Linear(3, 2))
    with pytest.raises(ValueError, match=r"'0' \(LazyLinear\) is a lazy module that has "
                                         r"not run.*forward pass"):
        lx.create_analyzer(name, model).analyze(torch.randn(2, 4))
