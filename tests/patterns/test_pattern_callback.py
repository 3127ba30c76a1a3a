"""PatternCallback: statistics from the Trainer's own batches, refreshed once per epoch."""

from __future__ import annotations

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import lit_explain as lx
import lit_explain.metrics as lm
from lit_explain.callbacks.patterns import FullPrecisionRerun, PatternCallback, PatternCollector
from lit_explain.patterns import PatternComputer


class Tiny(L.LightningModule):
    def __init__(self, learning_rate: float = 0.05) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.learning_rate = learning_rate
        self.net = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Flatten(),
                                 nn.Linear(4 * 16, 8), nn.ReLU(), nn.Linear(8, 3))

    def forward(self, x):
        return self.net(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return F.cross_entropy(self(x), y)

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log("val_loss", F.cross_entropy(self(x), y))

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=self.learning_rate)


def loaders():
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(96, 1, 4, 4, generator=g), torch.randint(0, 3, (96,), generator=g)
    train = DataLoader(TensorDataset(x[:64], y[:64]), batch_size=16)
    val = DataLoader(TensorDataset(x[64:], y[64:]), batch_size=16)
    return train, val


def fit(model, callbacks, epochs=2, **kwargs):
    trainer = L.Trainer(max_epochs=epochs, callbacks=callbacks, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, accelerator="cpu", devices=1,
                        num_sanity_val_steps=1, **kwargs)
    train, val = loaders()
    trainer.fit(model, train, val)
    return trainer


def test_val_source_equals_an_offline_fit_with_the_final_weights():
    model = Tiny()
    callback = PatternCallback(source="val")
    fit(model, [callback])
    offline = PatternComputer(model).fit(loaders()[1], progress=False)
    assert set(callback.patterns) == {"net.0", "net.3", "net.5"}
    for path, pattern in offline.items():
        torch.testing.assert_close(callback.patterns[path], pattern, rtol=1e-4, atol=1e-6)
    assert callback.collector.refreshed_at == (1, 8)


class NormalisesInPlace(Tiny):
    """Input normalisation in place inside ``forward``."""

    def forward(self, x):
        return self.net(x.sub_(0.5))


def test_val_source_under_mixed_precision_equals_a_full_precision_offline_fit():
    # the validation forward runs in bfloat16 autocast; the statistics come from each call of
    # the model run again in float32 (from the 16-bit activations: 0.3-1.3 % off here)
    model = NormalisesInPlace()
    callback = PatternCallback(source="val")
    fit(model, [callback], precision="bf16-mixed")
    offline = PatternComputer(model)
    for x, _ in loaders()[1]:
        offline.update(x.clone())
    for path, pattern in offline.compute().items():
        torch.testing.assert_close(callback.patterns[path], pattern, rtol=1e-4, atol=1e-6)


class DrawsInEval(NormalisesInPlace):
    """Dropout drawn in eval mode too (MC dropout), after an in-place normalisation."""

    def forward(self, x):
        return self.net(F.dropout(x.sub_(0.5), 0.3, training=True))


def test_the_full_precision_rerun_leaves_training_and_validation_unchanged():
    runs = []
    for callbacks in ([], [PatternCallback(source="val")]):
        torch.manual_seed(1)
        model = DrawsInEval()
        trainer = fit(model, callbacks, precision="bf16-mixed")
        runs.append((model.state_dict(), trainer.callback_metrics["val_loss"]))
    (plain, plain_loss), (watched, watched_loss) = runs
    for (name, a), b in zip(plain.items(), watched.values(), strict=True):
        assert torch.equal(a, b), name
    assert torch.equal(plain_loss, watched_loss)  # (its own input, not one shifted twice)


def offline_val_patterns(model, batches=None):
    offline = PatternComputer(model)
    for batch, (x, _) in enumerate(loaders()[1]):
        if batches is None or batch in batches:
            offline.update(x.clone())
    return offline.compute()


def assert_patterns_equal(patterns, expected):
    assert set(patterns) == set(expected)
    for path, pattern in expected.items():
        torch.testing.assert_close(patterns[path], pattern, rtol=1e-4, atol=1e-6)


class ValidatesThroughItsNet(Tiny):
    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log("val_loss", F.cross_entropy(self.net(x), y))


def test_val_source_under_mixed_precision_reruns_the_module_validation_step_calls():
    # (the smallest module holding the layers, self.net, is rerun: also called directly)
    model, callback = ValidatesThroughItsNet(), PatternCallback(source="val")
    fit(model, [callback], precision="bf16-mixed")
    assert_patterns_equal(callback.patterns, offline_val_patterns(model))


def test_two_val_collectors_under_mixed_precision_each_collect_once_per_batch():
    # (nested reruns counted batches again: patterns 24 % off with different samplings)
    model = Tiny()
    every, sampled = PatternCallback(source="val"), PatternCallback(source="val",
                                                                    every_n_batches=2)
    fit(model, [every, sampled], precision="bf16-mixed")
    assert_patterns_equal(every.patterns, offline_val_patterns(model))
    assert_patterns_equal(sampled.patterns, offline_val_patterns(model, batches={0}))


class _StandardisedConv(nn.Conv2d):
    """Weight standardisation: the layer's call gets another weight than ``module.weight``."""

    def forward(self, x):
        w = self.weight
        w = (w - w.mean(dim=(1, 2, 3), keepdim=True)) / (w.std(dim=(1, 2, 3), keepdim=True) + 1e-5)
        return F.conv2d(x, w, self.bias, self.stride, self.padding)


class StandardisedConv(Tiny):
    def __init__(self) -> None:
        super().__init__()
        self.net[0] = _StandardisedConv(1, 4, 3, padding=1)


class LayersInAList(Tiny):
    """Layers held by an nn.ModuleList, which is never called, and a layer called again
    outside the Sequential that holds it."""

    def __init__(self) -> None:
        super().__init__()
        self.blocks = nn.ModuleList([nn.Linear(3, 3), nn.Linear(3, 3)])

    def forward(self, x):
        h = self.net(x)
        for block in self.blocks:
            h = F.relu(block(h))
        return h + self.net[5](F.relu(self.net[3](x.flatten(1).repeat(1, 4))))


@pytest.mark.parametrize("model", [StandardisedConv, LayersInAList])
def test_val_source_under_mixed_precision_on_layers_held_and_called_otherwise(model):
    # (the weight a layer's call got is the rerun's, and every call of a fitted layer is in
    # the rerun of the outermost module call holding it)
    model, callback = model(), PatternCallback(source="val")
    fit(model, [callback], precision="bf16-mixed")
    assert_patterns_equal(callback.patterns, offline_val_patterns(model))


class ExplainsInValidation(Tiny):
    def validation_step(self, batch, batch_idx):
        super().validation_step(batch, batch_idx)
        maps = lx.create_analyzer("integrated_gradients", self.net, steps=4).analyze(batch[0])
        metric = lm.PixelFlipping(self.net, steps=4)  # (its perturbed inputs are no data)
        metric.update(batch[0], maps)


@pytest.mark.parametrize("precision", ["32-true", "bf16-mixed"])
def test_val_statistics_leave_out_the_librarys_own_forward_passes(precision, tmp_path,
                                                                   monkeypatch):
    # (an analysis in validation_step, the ExplainCallback's preflight on the first validation
    # batch after the pattern hooks are on: 120 % and 43 % off)
    monkeypatch.chdir(tmp_path)  # (the callback's pictures, with no logger)
    model = ExplainsInValidation()
    patterns = PatternCallback(source="val")
    explain = lx.ExplainCallback(analyzers=["gradient"], num_samples=4)
    trainer = fit(model, [patterns, explain], epochs=1, precision=precision)
    trainer.validate(model, loaders()[1], verbose=False)
    assert_patterns_equal(patterns.patterns, offline_val_patterns(model))


class LayerByLayer(Tiny):
    def validation_step(self, batch, batch_idx):
        x, y = batch
        for layer in self.net:
            x = layer(x)
        self.log("val_loss", F.cross_entropy(x, y))


def test_val_source_under_mixed_precision_reruns_layers_called_on_their_own():
    # (each layer's call is the outermost: rerun in float32 on its input as the autocast
    # forward made it, bfloat16 activations of the layers before)
    model, callback = LayerByLayer(), PatternCallback(source="val")
    fit(model, [callback], precision="bf16-mixed")
    expected = offline_val_patterns(model)
    assert set(callback.patterns) == set(expected)
    for path, pattern in expected.items():
        torch.testing.assert_close(callback.patterns[path], pattern, rtol=0.05, atol=0.05 * float(
            pattern.abs().max()))


class _AutocastOnly(nn.ReLU):
    def forward(self, x):
        if not torch.is_autocast_enabled("cpu"):
            raise RuntimeError("a bfloat16-only kernel")
        return super().forward(x)


class FailsInFloat32(Tiny):
    def __init__(self) -> None:
        super().__init__()
        self.net[1] = _AutocastOnly()


class ValidatesWithoutTheModel(Tiny):
    def validation_step(self, batch, batch_idx):
        self.log("val_loss", batch[0].mean())


@pytest.mark.parametrize(("model", "message"), [
    (ValidatesWithoutTheModel, r"a validation batch called none of them"),
    (FailsInFloat32, r"rerun of a call of FailsInFloat32.*RuntimeError: a bfloat16-only kernel")])
def test_val_source_under_mixed_precision_warns_where_it_collects_nothing(monkeypatch, model,
                                                                         message):
    monkeypatch.setattr(FullPrecisionRerun, "warned", set())
    callback = PatternCallback(source="val")
    with pytest.warns(UserWarning, match=message):
        fit(model(), [callback], precision="bf16-mixed")  # (training goes on)
    assert callback.patterns == {}


def test_val_patterns_after_validate_are_normal_tensors():
    model, callback = Tiny(), PatternCallback(source="val")
    trainer = fit(model, [callback], epochs=1)
    trainer.validate(model, loaders()[1], verbose=False)  # (under torch.inference_mode())
    assert not any(p.is_inference() for p in callback.patterns.values())


def test_train_source_with_fixed_weights_equals_an_offline_fit_on_the_training_data():
    model = Tiny(learning_rate=0.0)
    callback = PatternCallback(pattern_type="linear", source="train", every_n_batches=1)
    fit(model, [callback])
    offline = PatternComputer(model, "linear").fit(loaders()[0], progress=False)
    for path, pattern in offline.items():  # one epoch's window: reset at each epoch start
        torch.testing.assert_close(callback.patterns[path], pattern, rtol=1e-4, atol=1e-6)


def test_every_n_batches_samples_the_training_batches():
    model = Tiny()
    callback = PatternCallback(source="train", every_n_batches=2)
    fit(model, [callback], epochs=3)
    # the last epoch's window: batches 0 and 2 of 4, 16 samples each
    assert int(callback.collector.computer.statistics["net.5"].rows) == 2 * 16
    assert callback.collector.refreshed_at == (2, 12)
    assert all(torch.isfinite(p).all() for p in callback.patterns.values())


def test_training_is_unchanged_by_the_callback():
    plain, watched = Tiny(), Tiny()
    fit(plain, [])
    fit(watched, [PatternCallback(source="train", every_n_batches=1),
                  PatternCallback(source="val")])
    for (name, a), b in zip(plain.state_dict().items(), watched.state_dict().values(),
                            strict=True):
        assert torch.equal(a, b), name


def test_patterns_are_kept_in_a_weights_only_checkpoint(tmp_path):
    model = Tiny()
    callback = PatternCallback(source="val")
    trainer = fit(model, [callback], epochs=1)
    path = tmp_path / "last.ckpt"
    trainer.save_checkpoint(path)
    checkpoint = torch.load(path, weights_only=True)
    state = checkpoint["callbacks"][callback.state_key]
    restored = PatternCallback(source="val")
    restored.load_state_dict(state)
    for key, pattern in callback.patterns.items():
        torch.testing.assert_close(restored.patterns[key], pattern)
    PatternCallback(source="val").load_state_dict({})  # tolerates missing keys


def test_collector_for_a_submodule_uses_its_own_paths():
    collector = PatternCollector(module="net")
    assert collector.every_n_batches == 10 and PatternCollector(source="val").every_n_batches == 1
    model = Tiny()
    collector.setup(model)
    assert set(collector.computer.layers) == {"0", "3", "5"}
    with pytest.raises(ValueError, match="not a submodule"):
        PatternCollector(module="body").setup(model)


@pytest.mark.parametrize("kwargs, message", [
    ({"source": "test"}, r"source='test'.*\['train', 'val'\]"),
    ({"pattern_type": "positive"}, "pattern_type='positive'"),
    ({"every_n_batches": 0}, "every_n_batches=0"),
])
def test_bad_configuration_fails_at_construction(kwargs, message):
    with pytest.raises(ValueError, match=message):
        PatternCallback(**kwargs)


class WithBatchNorms(Tiny):
    """Convolutions followed by an F.batch_norm call, by a ReLU in place and a BatchNorm
    module, and by a BatchNorm written out (h * scale + shift); the steps call ``self.net``
    (not ``self(x)``)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        norms = [nn.BatchNorm2d(4) for _ in range(3)]
        for norm in norms:
            with torch.no_grad():
                norm.running_mean.uniform_(-1, 1)
                norm.running_var.uniform_(0.5, 2)
                norm.bias.uniform_(-1, 1)
        self.net = _Blocks(norms)

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log("val_loss", F.cross_entropy(self.net(x), y))


class _Blocks(nn.Module):
    def __init__(self, norms: list[nn.BatchNorm2d]) -> None:
        super().__init__()
        self.a, self.b, self.c = (nn.Conv2d(1 if i == 0 else 4, 4, 3, padding=1)
                                  for i in range(3))
        self.norm_a, self.norm_b, self.norm_c = norms
        self.head = nn.Linear(4 * 16, 3)

    def forward(self, x):
        n = self.norm_a
        h = F.relu(F.batch_norm(self.a(x), n.running_mean, n.running_var, n.weight, n.bias,
                                False, 0.0, n.eps))
        h = F.relu(self.norm_b(F.relu(self.b(h), inplace=True)))
        n = self.norm_c
        scale = n.weight / torch.sqrt(n.running_var + n.eps)
        shift = n.bias - n.running_mean * scale
        h = F.relu(self.c(h) * scale[:, None, None] + shift[:, None, None])
        return self.head(h.flatten(1))


def test_val_source_reads_the_masks_an_offline_fit_reads():
    """Under trainer.validate()'s inference mode an in-place ReLU before a BatchNorm went
    unseen (no version counter: the conv's pattern 50 % off an offline fit), and F.batch_norm
    calls were seen only when the step called the LightningModule itself (56 % off). (That
    the offline fit reads each mask where the ReLU does: test_pattern_computer.)"""
    model = WithBatchNorms().eval()
    callback = PatternCallback(source="val")
    trainer = L.Trainer(callbacks=[callback], logger=False, enable_progress_bar=False,
                        enable_model_summary=False, accelerator="cpu", devices=1)
    trainer.validate(model, loaders()[1], verbose=False)
    callback.collector.refresh(trainer)
    offline = PatternComputer(model).fit(loaders()[1], progress=False)
    assert set(callback.patterns) == set(offline)
    for path, pattern in offline.items():
        torch.testing.assert_close(callback.patterns[path], pattern, rtol=1e-4, atol=1e-6)
