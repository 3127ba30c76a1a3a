"""ExplainCallback on the models people train: compiled, holding a compiled network, with
tuple or mapping outputs."""

from __future__ import annotations

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

import lit_explain as lx
from lit_explain.demo import Classifier, DigitsDataModule, digits_cnn

ANALYZERS = ["gradient", "lrp.epsilon", "lrp.sequential_preset_a"]


def fit(model: L.LightningModule | torch.nn.Module, callback: L.Callback | list[L.Callback],
        tmp_path, **trainer_options):
    L.seed_everything(0, verbose=False)
    options = {"max_epochs": 1, "limit_train_batches": 2, "limit_val_batches": 1,
               **trainer_options}
    trainer = L.Trainer(callbacks=callback if isinstance(callback, list) else [callback],
                        enable_progress_bar=False, enable_model_summary=False,
                        enable_checkpointing=False, logger=False, accelerator="cpu",
                        default_root_dir=str(tmp_path), **options)
    trainer.fit(model, DigitsDataModule(batch_size=16))
    return trainer


def explained(callback: lx.ExplainCallback, network: torch.nn.Module) -> dict[str, Tensor]:
    """Maps of the probe samples by analyzers on the plain (uncompiled) network."""
    return {name: lx.create_analyzer(name, network).analyze(callback.probe.inputs)
            for name in ANALYZERS}


class Recording(lx.ExplainCallback):
    """Keeps the last maps the callback computed."""

    def _explain(self, analyzer):
        result = super()._explain(analyzer)
        self.last = {**getattr(self, "last", {}), analyzer.name: result.detach().cpu()}
        return result


class Unlogged(Classifier):
    """The digits CNN with a training step dynamo can compile (no ``self.log``)."""

    def __init__(self) -> None:
        super().__init__(3e-3)
        self.net = digits_cnn(4)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)

    def training_step(self, batch, batch_idx):
        return F.cross_entropy(self(batch[0]), batch[1])

    def validation_step(self, batch, batch_idx):
        return None


def test_a_compiled_lightning_module_is_explained_through_its_code(tmp_path):
    model = Unlogged()
    callback = Recording(analyzers=ANALYZERS, num_samples=4, on_error="raise")
    fit(torch.compile(model, backend="eager"), callback, tmp_path)
    assert model._compiler_ctx is not None  # training ran compiled
    for name, expected in explained(callback, model.net.eval()).items():
        torch.testing.assert_close(callback.last[name], expected)


class HoldsCompiled(Classifier):
    def __init__(self) -> None:
        super().__init__(3e-3)
        self.net = torch.compile(digits_cnn(4), backend="eager")

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


def test_a_module_holding_a_compiled_network(tmp_path):
    model = HoldsCompiled()
    callback = Recording(analyzers=ANALYZERS, num_samples=4, on_error="raise")
    fit(model, callback, tmp_path)
    for name, expected in explained(callback, model.net._orig_mod.eval()).items():
        torch.testing.assert_close(callback.last[name], expected)


class HoldsCompiledWithDropout(HoldsCompiled):
    def forward(self, x: Tensor) -> Tensor:
        return F.dropout(self.net(x), 0.3, training=self.training)


@pytest.mark.parametrize("compiled", ["module", "lightning_module"])
def test_pattern_analyzers_are_refused_on_a_compiled_run_which_trains_unchanged(tmp_path,
                                                                                 compiled):
    """Their statistics come from hooks on the kernel layers while the model trains: on a
    compiled model those made the compiled code recompile, which changed the random numbers
    training drew (weights 0.08 off with dropout) and missed layers."""
    def model() -> L.LightningModule:
        torch.manual_seed(0)
        if compiled == "module":
            return HoldsCompiledWithDropout()
        return torch.compile(Unlogged(), backend="eager")

    def weights(network: L.LightningModule | torch.nn.Module) -> dict[str, Tensor]:
        return {k: v.clone() for k, v in network.state_dict().items()}

    without, with_callback = model(), model()
    fit(without, lx.ExplainCallback(analyzers=["gradient"], num_samples=2), tmp_path / "a")
    callback = lx.ExplainCallback(analyzers=["gradient", "pattern.attribution"], num_samples=2)
    with pytest.warns(UserWarning, match=r"'pattern.attribution'.*runs compiled"):
        fit(with_callback, callback, tmp_path / "b")
    expected = weights(without)
    assert all(torch.equal(v, expected[k]) for k, v in weights(with_callback).items())


class WithAux(Classifier):
    """Returns (logits, features) or {"logits", "features"}, like many real models."""

    def __init__(self, mapping: bool) -> None:
        super().__init__(3e-3)
        self.net, self.mapping = digits_cnn(4), mapping

    def forward(self, x: Tensor):
        logits = self.net(x)
        return {"features": logits.detach() * 0, "logits": logits} if self.mapping \
            else (logits, logits.detach() * 0)

    def training_step(self, batch, batch_idx):
        out = self(batch[0])
        logits = out["logits"] if self.mapping else out[0]
        return F.cross_entropy(logits, batch[1])

    def validation_step(self, batch, batch_idx):
        pass


@pytest.mark.parametrize("mapping", [False, True])
def test_tuple_and_mapping_outputs_explain_the_logits(tmp_path, mapping):
    model = WithAux(mapping)
    callback = Recording(analyzers=ANALYZERS, num_samples=4, on_error="raise",
                         metrics={"pixel_flipping": {"steps": 16}})
    fit(model, callback, tmp_path)
    for name, expected in explained(callback, model.net.eval()).items():
        torch.testing.assert_close(callback.last[name], expected)


def test_a_wrong_output_key_is_a_configuration_error_before_training(tmp_path):
    """As a wrong input_key: each analyzer was dropped with a warning to remove it (the
    key was the fault), and the run explained nothing."""
    callback = lx.ExplainCallback(analyzers=["gradient", "lrp.epsilon"], num_samples=4,
                                  output_key="probs")
    model = WithAux(mapping=True)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match=r"output_key='probs' is not a key of the model's "
                                         r"output; valid keys: \['features', 'logits'\]"):
        fit(model, callback, tmp_path)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())  # untrained


class _BuiltLate(Classifier):
    """Its network is made in ``configure_model``, which Lightning calls after the
    callbacks' ``setup``."""

    def __init__(self) -> None:
        super().__init__(learning_rate=1e-2)
        self.net: torch.nn.Module | None = None

    def configure_model(self) -> None:
        if self.net is None:
            self.net = digits_cnn(channels=4)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


class _Functional(Classifier):
    """Parameters used by ``F.linear`` directly: no kernel layer module for patterns."""

    def __init__(self) -> None:
        super().__init__(learning_rate=1e-2)
        self.weight = torch.nn.Parameter(0.1 * torch.randn(10, 64))

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x.flatten(1), self.weight)


def assert_gradient_and_patterns_explain(model: L.LightningModule, tmp_path) -> None:
    """Both analyzers explain every epoch of a fit (their maps reach the drift)."""
    callback = lx.ExplainCallback(analyzers=["gradient", "pattern.attribution"], num_samples=2,
                                  pattern_source="val")
    fit(model, callback, tmp_path)
    assert set(callback.drift.previous) == {"gradient", "pattern.attribution"}


def test_pattern_analyzers_on_a_model_built_in_configure_model(tmp_path):
    assert_gradient_and_patterns_explain(_BuiltLate(), tmp_path)


def test_val_patterns_under_mixed_precision_are_the_full_precision_fit(tmp_path):
    # (the validation forward runs in bfloat16 autocast: see PatternCallback's test)
    callback = lx.ExplainCallback(analyzers=["pattern.attribution"], num_samples=2,
                                  pattern_source="val")
    model = _BuiltLate()
    fit(model, callback, tmp_path, limit_val_batches=2, precision="bf16-mixed")
    data = DigitsDataModule(batch_size=16)
    data.setup("fit")
    offline = lx.PatternComputer(model)
    for batch, (x, _) in enumerate(data.val_dataloader()):
        if batch == 2:
            break
        offline.update(x)
    fitted = offline.compute()
    assert set(callback.patterns.patterns) == set(fitted)
    for path, pattern in fitted.items():
        torch.testing.assert_close(callback.patterns.patterns[path], pattern, rtol=1e-4,
                                   atol=1e-6)


class _Lazy(Classifier):
    """A lazy layer, which takes its shapes from its first input (no forward yet)."""

    def __init__(self) -> None:
        super().__init__(learning_rate=1e-2)
        self.net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.LazyLinear(16),
                                       torch.nn.ReLU(), torch.nn.Linear(16, 10))

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


def test_a_lazy_module_is_explained_once_it_has_run(tmp_path):
    # (the preflight on the first batch, before any forward, dropped every analyzer with
    # torch's error; the pattern statistics stopped fit)
    assert_gradient_and_patterns_explain(_Lazy(), tmp_path)


class _UnusedLazyHead(_Lazy):
    def __init__(self) -> None:
        super().__init__()
        self.head = torch.nn.LazyLinear(3)  # (for another task: never run here)


def test_a_lazy_module_that_never_runs_is_named_where_the_callbacks_wait(tmp_path):
    callback = lx.ExplainCallback(analyzers=["gradient"], num_samples=2)
    patterns = lx.PatternCallback(source="train", every_n_batches=1)
    with pytest.warns(UserWarning) as record:
        fit(_UnusedLazyHead(), [callback, patterns], tmp_path, max_epochs=2,
            limit_val_batches=2)
    messages = [str(w.message) for w in record]
    assert any("lazy module 'head' has not run in" in m for m in messages)
    waits = [m for m in messages if m.startswith("pattern statistics wait")]
    assert waits and "'head'" in waits[-1]  # (net.1 ran in the sanity check's forward)
    assert patterns.patterns == {}


def test_pattern_analyzers_without_kernel_layers_are_dropped_not_fatal(tmp_path):
    callback = lx.ExplainCallback(analyzers=["gradient", "pattern.net"], num_samples=2)
    with pytest.warns(UserWarning, match="'pattern.net' cannot explain this model.*no kernel"):
        fit(_Functional(), callback, tmp_path)
    assert set(callback.drift.previous) == {"gradient"}
    assert callback.patterns is None  # nothing is collected for no analyzer


def test_a_failing_training_step_leaves_no_pattern_hooks(tmp_path):
    class Failing(_BuiltLate):
        def training_step(self, batch, batch_idx):
            if batch_idx == 1:
                raise RuntimeError("a bug in the step")
            return super().training_step(batch, batch_idx)

    model = Failing()
    callback = lx.ExplainCallback(analyzers=["pattern.net"], num_samples=2,
                                  pattern_every_n_batches=1)
    with pytest.raises(RuntimeError, match="a bug in the step"):
        fit(model, callback, tmp_path)
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())
