"""ExplainCallback in training setups people run: training is bit-identical with and without
it (no sanity check, BatchNorm, dropout, random numbers drawn in eval mode), and what it
explains when validation runs on another schedule than every epoch."""

from __future__ import annotations

import random
import warnings

import lightning as L
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from test_explain_callback import make_trainer
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset
from zoo import LoRALinear

import lit_explain as lx
from lit_explain.callbacks.probe import ProbeCollector, class_ids
from lit_explain.demo import Classifier, DigitsDataModule


class Regularised(Classifier):
    """BatchNorm and dropout (``norm="1d"``: a dense net with BatchNorm1d), or dropout drawn
    in eval mode too (``mc_dropout``, as MC-dropout models do), or a jitter drawn from numpy's
    and Python's generators in every mode (``jitter``)."""

    def __init__(self, norm: str = "2d", mc_dropout: bool = False, jitter: bool = False
                 ) -> None:
        super().__init__(3e-3)
        self.mc_dropout, self.jitter = mc_dropout, jitter
        if norm == "1d":
            self.body = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.BatchNorm1d(32),
                                      nn.ReLU())
            self.head = nn.Linear(32, 10)
        else:
            self.body = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4),
                                      nn.ReLU(), nn.Flatten())
            self.head = nn.Linear(4 * 64, 10)

    def forward(self, x: Tensor) -> Tensor:
        h = self.body(x)
        if self.jitter:
            h = h + 1e-3 * (float(np.random.rand()) + random.random())
        return self.head(F.dropout(h, 0.3, training=self.training or self.mc_dropout))


def fit(tmp_path, model_kwargs: dict, callbacks: list, **trainer_kwargs) -> dict[str, Tensor]:
    L.seed_everything(0, verbose=False)
    model = Regularised(**model_kwargs)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        make_trainer(tmp_path, callbacks, **trainer_kwargs).fit(
            model, DigitsDataModule(batch_size=32))
    return {k: v.clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("model_kwargs, trainer_kwargs", [
    ({"norm": "2d"}, {"num_sanity_val_steps": 0}),  # the preflight on a training batch
    ({"norm": "1d"}, {"num_sanity_val_steps": 0}),  # (BatchNorm1d of one sample raised)
    ({"norm": "2d"}, {"limit_val_batches": 0}),
    ({"mc_dropout": True}, {}),  # random numbers drawn by the callback's forward passes
    ({"jitter": True}, {}),  # (numpy's and Python's: their draws moved on, weights 9e-6 off)
], ids=["no-sanity-bn2d", "no-sanity-bn1d", "no-validation", "mc-dropout", "numpy-jitter"])
def test_training_is_bit_identical_with_the_callback(tmp_path, model_kwargs, trainer_kwargs):
    without = fit(tmp_path / "without", model_kwargs, [], **trainer_kwargs)
    draws_without = np.random.rand(), random.random()
    callback = lx.ExplainCallback(analyzers=["gradient", "lrp.epsilon"], num_samples=4,
                                  metrics=["pixel_flipping"])
    with_callback = fit(tmp_path / "with", model_kwargs, [callback], **trainer_kwargs)
    assert all(torch.equal(without[k], with_callback[k]) for k in without)
    # (numpy's and Python's draws after fit are those without the callback)
    assert (np.random.rand(), random.random()) == draws_without


class WithLoRA(Classifier):
    """A dense net whose head is a LoRA layer as loralib writes it (merged in eval mode),
    put back in train mode after validation through its own ``train()``."""

    def __init__(self) -> None:
        super().__init__(3e-3)
        self.body = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU())
        self.head = LoRALinear(32, 10)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.body(x))

    def on_validation_model_train(self) -> None:
        self.train()


def test_a_lora_layer_trains_with_the_callback_as_without(tmp_path):
    """The preflight on the first training batch put the flags back by assignment: the
    adapter stayed merged into the frozen weight and got no gradient for the epoch."""
    trained = []
    for callbacks in ([], [lx.ExplainCallback(analyzers=["gradient"], num_samples=4)]):
        L.seed_everything(0, verbose=False)
        model = WithLoRA()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            make_trainer(tmp_path, callbacks, num_sanity_val_steps=0).fit(
                model, DigitsDataModule(batch_size=32))
        trained.append(model.head)
    without, with_callback = trained
    assert not with_callback.merged
    # (merging and taking the adapter out again rounds the frozen weight in float32)
    for name in ("weight", "lora_A", "lora_B"):
        torch.testing.assert_close(getattr(with_callback, name), getattr(without, name))


def explained_epochs(tmp_path, **trainer_kwargs) -> list[int]:
    callback = lx.ExplainCallback(analyzers=["gradient"], num_samples=2, drift=["first"],
                                  **trainer_kwargs.pop("callback", {}))
    fit(tmp_path, {}, [callback], **trainer_kwargs)
    return [0, *callback.drift.epochs["gradient"]] if callback.drift.first else []


def test_validation_every_other_epoch_is_explained_with_every_n_epochs_alike(tmp_path):
    # Lightning validates after epochs 1, 3, 5; every_n_epochs=2 explains each of them
    assert explained_epochs(tmp_path, max_epochs=6, check_val_every_n_epoch=2,
                            callback={"every_n_epochs": 2})[1:] == [3, 5]


def test_every_n_epochs_spaces_the_explained_epochs(tmp_path):
    assert explained_epochs(tmp_path, max_epochs=5, callback={"every_n_epochs": 2})[1:] \
        == [2, 4]


def test_several_validations_per_epoch_explain_once_per_epoch_and_say_so(tmp_path):
    callback = lx.ExplainCallback(analyzers=["gradient"], num_samples=2, drift=["first"])
    L.seed_everything(0, verbose=False)
    with pytest.warns(UserWarning, match="explains at the first validation of an epoch only"):
        make_trainer(tmp_path, [callback], max_epochs=3, limit_train_batches=4,
                     val_check_interval=2).fit(Regularised(), DigitsDataModule(batch_size=32))
    assert callback.drift.epochs["gradient"] == [1, 2]


class PaddedText(L.LightningDataModule):
    """Token sequences, each validation batch padded to its own longest sentence."""

    def __init__(self) -> None:
        super().__init__()
        generator = torch.Generator().manual_seed(0)
        self.lengths = torch.randint(3, 9, (48,), generator=generator)
        self.tokens = torch.randint(1, 20, (48, 8), generator=generator)
        self.labels = torch.randint(0, 2, (48,), generator=generator)

    @staticmethod
    def collate(samples):
        longest = max(int(n) for _, n, _ in samples)
        tokens = torch.stack([torch.cat([t[:n], t.new_zeros(longest - n)])[:longest]
                              for t, n, _ in samples])
        return tokens, torch.stack([y for _, _, y in samples])

    def dataloader(self) -> DataLoader:
        data = list(zip(self.tokens, self.lengths, self.labels, strict=True))
        return DataLoader(data, batch_size=6, collate_fn=self.collate)

    train_dataloader = val_dataloader = dataloader


class BagOfWords(Classifier):
    def __init__(self) -> None:
        super().__init__(1e-2)
        self.embedding, self.out = nn.Embedding(20, 8, padding_idx=0), nn.Linear(8, 2)

    def forward(self, tokens: Tensor) -> Tensor:
        return self.out(self.embedding(tokens).mean(1))


@pytest.mark.parametrize("selection", ["first", "stratified"])
def test_batches_padded_to_their_own_length_give_a_probe_of_the_first_shape(tmp_path,
                                                                             selection):
    callback = lx.ExplainCallback(analyzers=["gradient"], num_samples=12,
                                  sample_selection=selection)
    with pytest.warns(UserWarning, match=r"validation samples come in batches shaped "
                                         r"otherwise than the first.*left out"):
        make_trainer(tmp_path, [callback], max_epochs=1, limit_val_batches=8).fit(
            BagOfWords(), PaddedText())
    first_length = callback.probe.inputs.shape[1]
    assert callback.probe.inputs.shape == (callback.probe.inputs.shape[0], first_length)
    assert callback.drift.first["gradient"].shape == callback.probe.inputs.shape


def test_labels_that_name_no_single_class_are_taken_as_they_come():
    assert torch.equal(class_ids(torch.tensor([2, 0, 1])), torch.tensor([2, 0, 1]))
    one_hot = F.one_hot(torch.tensor([2, 0]), 3).float()
    assert torch.equal(class_ids(one_hot), torch.tensor([2, 0]))
    assert class_ids(torch.tensor([[1.0, 1.0, 0.0], [0.0, 1.0, 1.0]])) is None  # multi-hot
    assert class_ids(torch.tensor([0.25, 1.5])) is None  # regression targets
    # a binary classifier's BCE targets, one column: each row sums to 1 where it is 1 (it
    # was read as one-hot, class 0, and the grid drew every correct "positive" as wrong)
    assert torch.equal(class_ids(torch.tensor([[1.0], [0.0], [1.0]])), torch.tensor([1, 0, 1]))
    assert torch.equal(class_ids(torch.ones(2, 1)), torch.tensor([1, 1]))
    assert class_ids(torch.tensor([[0.7], [0.2]])) is None  # soft targets
    probe = ProbeCollector(3, "stratified")
    targets = torch.tensor([[1.0, 1.0, 0.0], [0.0, 0.0, 1.0], [1.0, 0.0, 1.0], [0.0, 1.0, 0.0]])
    probe.add(torch.arange(4.0)[:, None], targets)
    probe.finish()
    assert probe.unstratified
    assert torch.equal(probe.inputs[:, 0], torch.arange(3.0))  # the first three
    assert torch.equal(probe.targets, targets[:3])


class MultiLabel(L.LightningDataModule):
    def dataloader(self) -> DataLoader:
        generator = torch.Generator().manual_seed(0)
        x = torch.randn(40, 1, 8, 8, generator=generator)
        y = (torch.rand(40, 10, generator=generator) > 0.7).float()
        return DataLoader(TensorDataset(x, y), batch_size=8)

    train_dataloader = val_dataloader = dataloader


class MultiLabelClassifier(Regularised):
    def training_step(self, batch, batch_idx):
        return F.binary_cross_entropy_with_logits(self(batch[0]), batch[1])

    def validation_step(self, batch, batch_idx):
        pass


def test_multi_label_targets_with_stratified_selection_warn_and_train(tmp_path):
    callback = lx.ExplainCallback(analyzers=["gradient"], num_samples=4,
                                  sample_selection="stratified")
    with pytest.warns(UserWarning, match="needs one class per sample"):
        make_trainer(tmp_path, [callback], max_epochs=1).fit(MultiLabelClassifier(),
                                                             MultiLabel())
    assert callback.drift.first["gradient"].shape == (4, 1, 8, 8)


class Recurrent(Classifier):
    def __init__(self) -> None:
        super().__init__(1e-2)
        self.lstm, self.out = nn.LSTM(8, 8, batch_first=True), nn.Linear(8, 10)

    def forward(self, x: Tensor) -> Tensor:
        return self.out(self.lstm(x[:, 0])[0][:, -1])


def test_a_pattern_analyzer_that_refuses_the_model_is_dropped_once(tmp_path):
    callback = lx.ExplainCallback(analyzers=["gradient", "pattern.net"], num_samples=2)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        make_trainer(tmp_path, [callback], max_epochs=3).fit(Recurrent(),
                                                             DigitsDataModule(batch_size=32))
    messages = [str(w.message) for w in record if "'pattern.net'" in str(w.message)]
    assert len(messages) == 1 and "dropped" in messages[0], messages
    assert "pattern.net" not in callback._analyzers


@pytest.mark.parametrize("stop", [{"max_steps": 2}, {"max_epochs": 2,
                                                   "check_val_every_n_epoch": 3}])
def test_training_that_ends_before_a_validation_says_nothing_was_explained(tmp_path, stop):
    callback = lx.ExplainCallback(analyzers=["gradient"], num_samples=2)
    with pytest.warns(UserWarning, match="ended before a validation ran "
                                         r"\(check_val_every_n_epoch .*, max_steps.*nothing was "
                                         "explained"):
        make_trainer(tmp_path, [callback], limit_train_batches=4, num_sanity_val_steps=0,
                     **stop).fit(Regularised(), DigitsDataModule(batch_size=32))


def test_class_ids_of_a_label_column_and_of_one_logit():
    from lit_explain.viz.grid import _class_ids

    assert _class_ids(torch.tensor([[3], [1], [4]]), 3, "labels") == [3, 1, 4]
    assert _class_ids(torch.tensor([[1.0], [0.0]]), 2, "labels") == [1, 0]
    assert _class_ids(torch.tensor([[0.7], [-1.3]]), 2, "predictions") == [1, 0]  # logits
    assert _class_ids(torch.tensor([[0.1, 0.9], [0.8, 0.2]]), 2, "predictions") == [1, 0]


class Binary(Classifier):
    """One logit: digit 0 or not."""

    def __init__(self) -> None:
        super().__init__(3e-3)
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(64, 1))

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)

    def training_step(self, batch, batch_idx):
        return F.binary_cross_entropy_with_logits(self(batch[0])[:, 0],
                                                  (batch[1] == 0).float())

    def validation_step(self, batch, batch_idx):
        pass


def test_a_one_logit_model_is_explained_and_scored(tmp_path):
    callback = lx.ExplainCallback(analyzers=["gradient", "lrp.epsilon"], num_samples=4,
                                  metrics=["pixel_flipping"], target_key=None)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        make_trainer(tmp_path, [callback], max_epochs=1).fit(Binary(),
                                                             DigitsDataModule(batch_size=32))
    assert callback.drift.first["lrp.epsilon"].shape == (4, 1, 8, 8)


def test_a_pattern_analyzer_on_a_model_it_cannot_fit_is_dropped_not_fatal(tmp_path):
    """Patterns collected from the training batches of a model with a LoRA layer (no one
    weight to fit a pattern to): the refusal was raised in the training step's forward and
    stopped fit() under on_error="warn"; it is raised where patterns are made, and warned."""
    callback = lx.ExplainCallback(analyzers=["gradient", "pattern.attribution"], num_samples=4,
                                  pattern_source="train", pattern_every_n_batches=1)
    L.seed_everything(0, verbose=False)
    with pytest.warns(UserWarning, match="not the output of one kernel call"):
        make_trainer(tmp_path, [callback], num_sanity_val_steps=0).fit(
            WithLoRA(), DigitsDataModule(batch_size=32))
    assert callback.probe.inputs is not None  # (fit ran to its end, and explained)
