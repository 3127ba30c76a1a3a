"""ExplainCallback in training setups other than the demo's: errors under ``on_error="raise"``,
batches the keys do not fit, validation every other epoch, several validation dataloaders,
and one callback reused for ``validate()`` of other models."""

from __future__ import annotations

import glob
import os
import sys
import warnings
from dataclasses import dataclass

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import TensorBoardLogger
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from test_explain_callback import make_trainer
from torch import nn
from torch.utils.data import DataLoader, Dataset, TensorDataset

import lit_explain as lx


class StepCounter(Callback):
    def __init__(self) -> None:
        self.steps = 0

    def on_train_batch_end(self, *args, **kwargs) -> None:
        self.steps += 1


def batch_parts(batch):
    """A batch's input and label, whatever form the test gives it."""
    if isinstance(batch, dict):
        return batch["x"], batch["y"]
    if isinstance(batch, Pair):
        return batch.x, batch.y
    return batch[0], batch[1]


class Linear(L.LightningModule):
    """A linear classifier of 1 x side x side inputs into 3 classes."""

    def __init__(self, side: int = 4) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(side * side, 3))

    def forward(self, x):
        return self.net(x)

    def training_step(self, batch, batch_idx):
        x, y = batch_parts(batch)
        return F.cross_entropy(self(x), y)

    def validation_step(self, batch, batch_idx, dataloader_idx=0):
        x, y = batch_parts(batch)
        self.log("val_loss", F.cross_entropy(self(x), y))

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def data(n: int = 32, side: int = 4, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(n, 1, side, side, generator=generator), torch.randint(
        0, 3, (n,), generator=generator)


def loader(x, y, **kwargs) -> DataLoader:
    return DataLoader(TensorDataset(x, y), batch_size=8, **kwargs)


def explain_warnings(record) -> list[str]:
    return [str(w.message) for w in record if "ExplainCallback" in str(w.message)
            and "no logger" not in str(w.message)]


# Under on_error="raise" every error names what raised it.

class NeedsScale(Linear):
    """A model whose forward needs a second argument: the callback's model(x) fails."""

    def forward(self, x, scale=None):
        if scale is None:
            raise TypeError("forward() needs scale")
        return self.net(x) * scale

    def training_step(self, batch, batch_idx):
        return F.cross_entropy(self(batch[0], 1.0), batch[1])

    def validation_step(self, batch, batch_idx):
        self.log("val_loss", F.cross_entropy(self(batch[0], 1.0), batch[1]))


@pytest.mark.skipif(sys.version_info < (3, 11), reason="exception notes: Python 3.11+")
def test_under_raise_a_preflight_error_notes_the_analyzer_that_raised_it(tmp_path):
    counter = StepCounter()
    callback = lx.ExplainCallback(analyzers=["gradient"], num_samples=4, on_error="raise")
    x, y = data()
    with pytest.raises(TypeError, match="needs scale") as raised:
        make_trainer(tmp_path, [counter, callback], max_epochs=1).fit(
            NeedsScale(), loader(x, y), loader(x, y))
    assert counter.steps == 0  # the preflight, on the sanity check
    assert raised.value.__notes__ == ["ExplainCallback 'explain': raised by analyzer 'gradient'"]


class NoKernelLayer(Linear):
    """A matrix product with a parameter of its own: no kernel layer to fit patterns for."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Flatten()
        self.weight = nn.Parameter(torch.randn(16, 3))

    def forward(self, x):
        return self.net(x) @ self.weight


@pytest.mark.skipif(sys.version_info < (3, 11), reason="exception notes: Python 3.11+")
def test_under_raise_a_model_without_pattern_layers_notes_the_pattern_analyzers(tmp_path):
    counter = StepCounter()
    callback = lx.ExplainCallback(analyzers=["gradient", "pattern.net"], on_error="raise")
    x, y = data()
    with pytest.raises(ValueError, match="no kernel layer") as raised:
        make_trainer(tmp_path, [counter, callback], max_epochs=1).fit(
            NoKernelLayer(), loader(x, y), loader(x, y))
    assert counter.steps == 0
    assert raised.value.__notes__ == [
        "ExplainCallback 'explain': raised by the pattern analyzers"]


class Sorting(Linear):
    """torch.sort, for which no rule exists: the pattern analyzers refuse the model when they
    first explain it, after an epoch (the preflight cannot try them without patterns)."""

    def forward(self, x):
        return self.net[1](torch.sort(self.net[0](x), dim=1).values)


def test_under_raise_a_later_refusal_names_the_analyzer_that_raised_it(tmp_path):
    counter = StepCounter()
    callback = lx.ExplainCallback(analyzers=["gradient", "pattern.attribution"], num_samples=4,
                                  on_error="raise")
    x, y = data()
    with pytest.raises(lx.NotAnalyzableModelError,
                       match=r"^analyzer 'pattern.attribution': torch.sort"):
        make_trainer(tmp_path, [counter, callback], max_epochs=1).fit(
            Sorting(), loader(x, y), loader(x, y))
    assert counter.steps == 4  # at the first explained epoch, after the first training epoch


# Without a sanity check, the keys are checked on a validation batch too.

class Dicts(Dataset):
    def __init__(self, x, y) -> None:
        self.x, self.y = x, y

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i):
        return {"x": self.x[i], "y": self.y[i]}


class InputsOnly(Linear):
    """Validation batches of the input alone, a 1-tuple (and no labels)."""

    def validation_step(self, batch, batch_idx):
        self.log("val_norm", self(batch[0]).norm())


@pytest.mark.parametrize("validation, model, message", [
    # dict batches in validation: the default input_key 0 fits only the training tuples
    (lambda x, y: DataLoader(Dicts(x, y), batch_size=8), Linear,
     r"^input_key=0 does not fit the validation batch: .*keys are \['x', 'y'\]"),
    # 1-tuples in validation: the default target_key 1 fits only the training pairs
    (lambda x, y: DataLoader(TensorDataset(x), batch_size=8), InputsOnly,
     r"^target_key=1 does not fit the validation batch: .*batch of 1 parts")],
    ids=["dicts", "1-tuples"])
def test_keys_that_fit_only_the_training_batches_raise_at_the_first_validation_batch(
        tmp_path, validation, model, message):
    counter = StepCounter()
    callback = lx.ExplainCallback(analyzers=["gradient"], num_samples=4)
    x, y = data()
    with pytest.raises(ValueError, match=message):
        make_trainer(tmp_path, [counter, callback], max_epochs=2, num_sanity_val_steps=0).fit(
            model(), loader(x, y), validation(x, y))
    assert counter.steps == 4  # the preflight ran on training batch 1; validation after 4


# A batch of another type than a sequence, mapping or tensor.

@dataclass
class Pair:
    x: torch.Tensor
    y: torch.Tensor


def pairs(samples) -> Pair:
    x, y = torch.utils.data.default_collate(samples)
    return Pair(x, y)


def test_a_dataclass_batch_is_refused_naming_the_option_and_the_batch_types(tmp_path):
    counter = StepCounter()
    callback = lx.ExplainCallback(analyzers=["gradient"], input_key="x", target_key="y")
    x, y = data()
    with pytest.raises(ValueError, match=r"^input_key='x' does not fit the validation batch: "
                                         r"the batch is a Pair.*a tuple, list or other "
                                         r"sequence.*a mapping.*"
                                         r"a tensor"):
        make_trainer(tmp_path, [counter, callback]).fit(
            Linear(), loader(x, y, collate_fn=pairs), loader(x, y, collate_fn=pairs))
    assert counter.steps == 0


# curves_every_n_epochs counts as every_n_epochs does, from the last plot.

def image_steps(log_dir: str, tag: str) -> list[int]:
    (event_file,) = glob.glob(os.path.join(log_dir, "events.out.tfevents.*"))
    events = EventAccumulator(event_file, size_guidance={"images": 0})
    events.Reload()
    return [event.step for event in events.Images(tag)]


@pytest.mark.parametrize("every_n_epochs, curves_every_n_epochs, max_epochs, plotted", [
    # validation after epochs 1, 3, 5 (check_val_every_n_epoch=2): each is 2 after the last
    (2, 2, 6, [0, 1, 2]),
    # explained after epochs 1, 3, 5, 7: plotted at 1, at 5 (4 after 1), and 7 at the end
    (2, 4, 8, [0, 2, 3])])
def test_curves_are_plotted_every_k_epochs_of_those_explained(
        tmp_path, every_n_epochs, curves_every_n_epochs, max_epochs, plotted):
    logger = TensorBoardLogger(str(tmp_path), name="tb")
    callback = lx.ExplainCallback(analyzers=["gradient"], num_samples=4,
                                  every_n_epochs=every_n_epochs,
                                  curves_every_n_epochs=curves_every_n_epochs,
                                  metrics={"pixel_flipping": {"steps": 4}})
    x, y = data()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        make_trainer(tmp_path, [callback], logger, max_epochs=max_epochs,
                     check_val_every_n_epoch=2).fit(Linear(), loader(x, y), loader(x, y))
    explained = image_steps(logger.log_dir, "explain/gradient")
    # after epochs 1, 3, ... (8 training batches each): at Lightning's val_loss steps
    assert explained == [8 * (i + 1) - 1 for i in range(max_epochs // 2)]
    curves = image_steps(logger.log_dir, "explain/gradient/pixel_flipping_curve")
    assert curves == [explained[i] for i in plotted]


# Several validation dataloaders: the probe is the first one's samples.

def test_with_several_validation_dataloaders_the_probe_is_the_first_ones_and_says_so(tmp_path):
    callback = lx.ExplainCallback(analyzers=["gradient"], num_samples=8)
    x, y = data(66)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        make_trainer(tmp_path, [callback], max_epochs=1).fit(
            Linear(), loader(x, y), [loader(x[:2], y[:2]), loader(x[2:], y[2:])])
    assert torch.equal(callback.probe.inputs, x[:2])
    assert explain_warnings(record) == [
        "ExplainCallback: the first of the 2 validation dataloaders (the probe set is drawn "
        "from it only) gave 2 samples, fewer than num_samples=8: 2 are explained."]


# validate() of another model starts afresh, as fit does; test() and predict() do not.

def test_validate_of_another_model_explains_its_own_validation_samples(tmp_path):
    callback = lx.ExplainCallback(analyzers=["gradient"], num_samples=4)
    x_a, y_a = data(16, side=8, seed=1)
    x_b, y_b = data(16, side=4, seed=2)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        make_trainer(tmp_path, [callback]).validate(Linear(8), loader(x_a, y_a), verbose=False)
        assert torch.equal(callback.probe.inputs, x_a[:4])
        model_b = Linear(4)
        make_trainer(tmp_path, [callback]).validate(model_b, loader(x_b, y_b), verbose=False)
    assert explain_warnings(record) == []
    assert torch.equal(callback.probe.inputs, x_b[:4])
    assert torch.equal(callback.probe.targets, y_b[:4])
    # validate() of the same model again keeps its probe samples, whatever data it is given
    make_trainer(tmp_path, [callback]).validate(model_b, loader(x_b[8:], y_b[8:]),
                                                verbose=False)
    assert torch.equal(callback.probe.inputs, x_b[:4])


class Tested(Linear):
    def test_step(self, batch, batch_idx):
        x, y = batch_parts(batch)
        self.log("test_loss", F.cross_entropy(self(x), y))


def test_test_of_another_model_leaves_the_run_as_it_was(tmp_path):
    """test() and predict() explain nothing: a test() of another model (one loaded from a
    checkpoint) wiped the fit's probe samples and drift before a validate() of its model."""
    callback = lx.ExplainCallback(analyzers=["gradient"], num_samples=4)
    x, y = data(16)
    model = Tested()
    make_trainer(tmp_path, [callback], max_epochs=2).fit(model, loader(x, y), loader(x, y))
    probe, drift = callback.probe.inputs.clone(), dict(callback.drift.epochs)
    make_trainer(tmp_path, [callback]).test(Tested(), loader(*data(16, seed=3)), verbose=False)
    assert torch.equal(callback.probe.inputs, probe) and callback.drift.epochs == drift
    make_trainer(tmp_path, [callback]).validate(model, loader(*data(16, seed=4)),
                                                verbose=False)
    assert torch.equal(callback.probe.inputs, probe)


class Parts:
    """A batch class of its own, indexed by position (not a registered Sequence)."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor) -> None:
        self.parts = (x, y)

    def __getitem__(self, index: int) -> torch.Tensor:
        return self.parts[index]

    def __len__(self) -> int:
        return 2


class LogsItsBatchSize(Linear):
    def validation_step(self, batch, batch_idx, dataloader_idx=0):
        x, y = batch_parts(batch)
        self.log("val_loss", F.cross_entropy(self(x), y), batch_size=len(x))


def test_a_batch_indexed_by_position_is_read_by_index(tmp_path):
    callback = lx.ExplainCallback(analyzers=["gradient"], num_samples=4)
    x, y = data(16)
    collate = lambda samples: Parts(*torch.utils.data.default_collate(samples))  # noqa: E731
    make_trainer(tmp_path, [callback]).fit(LogsItsBatchSize(), loader(x, y, collate_fn=collate),
                                           loader(x, y, collate_fn=collate))
    assert torch.equal(callback.probe.inputs, x[:4]) and torch.equal(callback.probe.targets,
                                                                     y[:4])


@pytest.mark.parametrize("strategy", ["ddp_spawn", "ddp_fork", "ddp"])
def test_a_validation_in_spawned_processes_says_that_it_starts_afresh(tmp_path, strategy):
    """Under ddp_spawn, what fit() left in the callback stays in fit's processes: a later
    validate() explained other samples and blamed pattern_source for the missing patterns."""
    from lit_explain.demo import DigitsClassifier

    trainer = L.Trainer(accelerator="cpu", devices=2, strategy=strategy, logger=False,
                        enable_progress_bar=False, default_root_dir=str(tmp_path))
    callback = lx.ExplainCallback(analyzers=["gradient"], num_samples=2)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        callback.setup(trainer, DigitsClassifier(channels=4), "validate")
    spawned = [w for w in caught if "runs each stage in new processes" in str(w.message)]
    assert len(spawned) == (strategy != "ddp")


def test_fast_dev_run_writes_no_files(tmp_path):
    """fast_dev_run gives the Trainer Lightning's DummyLogger, which keeps nothing: the
    pictures went to PNG files under default_root_dir as if there were no logger."""
    from lit_explain.demo import DigitsClassifier, DigitsDataModule

    callback = lx.ExplainCallback(analyzers=["gradient"], num_samples=2)
    trainer = L.Trainer(fast_dev_run=True, accelerator="cpu", enable_progress_bar=False,
                        enable_model_summary=False, default_root_dir=str(tmp_path),
                        callbacks=[callback])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.fit(DigitsClassifier(channels=4), DigitsDataModule(batch_size=16))
    assert callback.probe.inputs is not None  # (it explained)
    assert not [p for p in glob.glob(str(tmp_path / "**"), recursive=True) if p.endswith(".png")]
