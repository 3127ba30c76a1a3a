"""PatternCallback: statistics from the Trainer's own batches, refreshed once per epoch."""

from __future__ import annotations

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lit_explain.callbacks.patterns import PatternCallback, PatternCollector
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
