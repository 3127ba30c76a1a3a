"""ExplainCallback as users meet it (issue 12): the preflight, what it says, and what it never
does (stop ``fit`` under ``on_error="warn"``)."""

from __future__ import annotations

import csv
import glob
import logging
import os
import warnings

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from test_explain_callback import image_tags, make_trainer, train
from torch import nn
from torch.utils.data import DataLoader

import lit_explain as lx
from lit_explain.callbacks.evaluation import ProbeMetrics
from lit_explain.demo import DigitsClassifier, DigitsDataModule


class Gelu(DigitsClassifier):
    """The digits CNN with a GELU, which guided backprop has no rule for."""

    def __init__(self) -> None:
        super().__init__(channels=4)
        self.net[1] = nn.GELU()


class StepCounter(Callback):
    def __init__(self) -> None:
        self.steps = 0

    def on_train_batch_end(self, *args, **kwargs) -> None:
        self.steps += 1


def explain_warnings(record) -> list[str]:
    return [str(w.message) for w in record if "ExplainCallback" in str(w.message)]


# Item 1: under "warn" the preflight drops an unsupported analyzer; fit goes on.

def test_an_unsupported_analyzer_is_dropped_with_one_warning_and_fit_finishes(tmp_path):
    logger = TensorBoardLogger(str(tmp_path), name="tb")
    callback = lx.ExplainCallback(analyzers=["gradient", "guided_backprop"], num_samples=2)
    L.seed_everything(0, verbose=False)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        trainer = make_trainer(tmp_path, [callback], logger, max_epochs=3)
        trainer.fit(Gelu(), DigitsDataModule(batch_size=32))
    assert trainer.current_epoch == 3
    messages = explain_warnings(record)
    assert len(messages) == 1, messages
    assert all(word in messages[0] for word in ("'guided_backprop'", "gelu", "net.1", "dropped",
                                                "Remove", "on_error='raise'",
                                                "is an activation operation",
                                                "pick one with a rule for that operation"))
    tags = image_tags(logger.log_dir)
    assert tags["explain/gradient"] == 3 and "explain/guided_backprop" not in tags


class EvenOrOdd(DigitsClassifier):
    """One logit, squeezed to (N,) for BCEWithLogits: a batch of one gives a 0-d tensor."""

    def __init__(self) -> None:
        super().__init__(channels=4)
        self.net[-1] = nn.Linear(self.net[-1].in_features, 1)

    def forward(self, x):
        return self.net(x).squeeze()

    def training_step(self, batch, batch_idx):
        x, y = batch
        return nn.functional.binary_cross_entropy_with_logits(self(x), (y % 2).float())

    def validation_step(self, batch, batch_idx):
        pass


def test_a_model_squeezing_its_one_logit_keeps_its_analyzers(tmp_path):
    # the preflight's one sample made a 0-d output, and every analyzer was dropped
    callback = lx.ExplainCallback(analyzers=["gradient", "lrp.epsilon"], num_samples=4,
                                  metrics=[])
    L.seed_everything(0, verbose=False)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        trainer = make_trainer(tmp_path, [callback], TensorBoardLogger(str(tmp_path)),
                               max_epochs=1)
        trainer.fit(EvenOrOdd(), DigitsDataModule(batch_size=32))
    assert explain_warnings(record) == []
    assert list(callback._analyzers) == ["gradient", "lrp.epsilon"]
    assert image_tags(trainer.logger.log_dir) == {"explain/all": 1}


# Item 2: each metric alone; defaults fit the input.

def test_a_metric_that_fails_for_one_analyzer_leaves_the_rest_alone():
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 3))
    metrics = ProbeMetrics({"pixel_flipping": {}, "sparseness": {}, "complexity": {}}, model,
                           ["good", "bad"])
    x = torch.randn(4, 1, 8, 8)
    maps = {"good": torch.randn(4, 1, 8, 8), "bad": torch.randn(4, 1, 7, 7)}  # wrong shape
    failures = []
    scores = metrics.evaluate(x, maps, torch.zeros(4, dtype=torch.long), None,
                              lambda m, a, e: failures.append((m, a, type(e))))
    assert failures == [("pixel_flipping", "bad", ValueError)]
    assert set(scores["good"][0]) == {"pixel_flipping", "sparseness", "complexity"}
    assert set(scores["bad"][0]) == {"sparseness", "complexity"}
    # the shared model calls give each analyzer the curve it would get alone
    alone = lx.metrics.PixelFlipping(model)
    alone.update(x, maps["good"], torch.zeros(4, dtype=torch.long))
    assert scores["good"][0]["pixel_flipping"] == pytest.approx(float(alone.compute()))


@pytest.mark.parametrize(("name", "options"), [
    ("region_perturbation", {"perturbation": "gaussian"}), ("pixel_flipping", {"order": "random"}),
    ("insertion_deletion", {"deletion_baseline": "gaussian"})])
def test_random_draws_of_a_metric_are_each_maps_own(name, options):
    """A metric that draws (noise, a random order) gives each analyzer's map the value it
    gets alone: the stacked maps drew one stream, so the value depended on the other
    analyzers configured and their order (0.0763 alone, 0.0588 behind another)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 3))
    x = torch.randn(4, 1, 8, 8)
    maps = {"first": torch.randn(4, 1, 8, 8), "second": torch.randn(4, 1, 8, 8)}
    targets = torch.zeros(4, dtype=torch.long)
    scores = ProbeMetrics({name: options}, model, list(maps)).evaluate(
        x, maps, targets, None, lambda m, a, e: pytest.fail(f"{m} {a} {e}"))
    for analyzer, attribution in maps.items():
        alone = lx.metrics.metrics[name](model, **options)
        alone.update(x, attribution, targets)
        value = alone.compute()
        expected = {name: float(value)} if isinstance(value, torch.Tensor) else {
            f"{name}/{key}": float(v) for key, v in value.items()}
        assert scores[analyzer][0] == pytest.approx(expected)


def test_a_metric_that_cannot_run_is_dropped_at_the_preflight_naming_it(tmp_path):
    logger = CSVLogger(str(tmp_path))
    callback = lx.ExplainCallback(analyzers=["gradient"], num_samples=2,
                                  metrics={"pixel_flipping": {"steps": 1000}, "sparseness": {}})
    with pytest.warns(UserWarning, match=r"metric 'pixel_flipping'.*dropped.*steps=1000") as record:
        train(tmp_path, [callback], logger)
    assert sum("pixel_flipping" in m for m in explain_warnings(record)) == 1
    rows = list(csv.DictReader(open(os.path.join(logger.log_dir, "metrics.csv"))))
    assert sum(bool(r.get("explain/gradient/sparseness")) for r in rows) == 2
    assert not any("pixel_flipping" in key for key in rows[0])


def test_default_metrics_score_the_demo_every_epoch(tmp_path):
    logger = CSVLogger(str(tmp_path))
    callback = lx.ExplainCallback(analyzers=["gradient", "lrp.epsilon"], num_samples=2,
                                  metrics=["pixel_flipping", "region_perturbation",
                                           "insertion_deletion", "sparseness"])
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        train(tmp_path, [callback], logger)
    assert explain_warnings(record) == []
    rows = list(csv.DictReader(open(os.path.join(logger.log_dir, "metrics.csv"))))
    for key in ("pixel_flipping", "region_perturbation", "insertion_deletion/deletion_auc"):
        assert sum(bool(r.get(f"explain/lrp.epsilon/{key}")) for r in rows) == 2, key


# Item 3: keys, metric keywords and analyzers are checked before training step 1.

class DictDigits(DigitsDataModule):
    """The digits as dict batches {"image", "label"}."""

    @staticmethod
    def collate(samples):
        x, y = torch.utils.data.default_collate(samples)
        return {"image": x, "label": y}

    def train_dataloader(self):
        return DataLoader(self.train_set, batch_size=self.batch_size, collate_fn=self.collate)

    def val_dataloader(self):
        return DataLoader(self.val_set, batch_size=self.batch_size, collate_fn=self.collate)


class DictClassifier(DigitsClassifier):
    def training_step(self, batch, batch_idx):
        return super().training_step((batch["image"], batch["label"]), batch_idx)

    def validation_step(self, batch, batch_idx):
        return super().validation_step((batch["image"], batch["label"]), batch_idx)


@pytest.mark.parametrize("sanity", [0, 2])
def test_a_wrong_target_key_stops_fit_at_the_first_validation_batch(tmp_path, sanity):
    # with a sanity check, before training step 1; without one, at the first validation:
    # the training batches may be shaped otherwise (the next test)
    counter = StepCounter()
    callback = lx.ExplainCallback(analyzers=["gradient"], target_key=2)
    with pytest.raises(ValueError, match=r"target_key=2 .*2 parts"):
        make_trainer(tmp_path, [counter, callback], num_sanity_val_steps=sanity).fit(
            DigitsClassifier(channels=4), DigitsDataModule(batch_size=32))
    assert counter.steps == 0 if sanity else counter.steps > 0


class TrainOnDicts(DictDigits):
    """Dict batches in training (as a CombinedLoader of two loaders gives), tuples in
    validation."""

    def val_dataloader(self):
        return DataLoader(self.val_set, batch_size=self.batch_size)


class TrainOnDictsClassifier(DictClassifier):
    def validation_step(self, batch, batch_idx):
        return DigitsClassifier.validation_step(self, batch, batch_idx)


def test_training_batches_shaped_otherwise_than_validation_ones_do_not_stop_fit(tmp_path):
    callback = lx.ExplainCallback(analyzers=["gradient"], num_samples=2)
    trainer = make_trainer(tmp_path, [callback], max_epochs=1, num_sanity_val_steps=0)
    trainer.fit(TrainOnDictsClassifier(channels=4), TrainOnDicts(batch_size=32))
    assert callback.drift.first["gradient"].shape == (2, 1, 8, 8)


def test_a_dict_batch_with_the_default_keys_names_the_option_and_the_keys(tmp_path):
    counter = StepCounter()
    callback = lx.ExplainCallback(analyzers=["gradient"])
    with pytest.raises(ValueError, match=r"input_key=0 .*\['image', 'label'\]"):
        make_trainer(tmp_path, [counter, callback]).fit(DictClassifier(channels=4),
                                                        DictDigits(batch_size=32))
    assert counter.steps == 0
    right = lx.ExplainCallback(analyzers=["gradient"], input_key="image", target_key="label",
                               num_samples=2)
    make_trainer(tmp_path, [right], max_epochs=1).fit(DictClassifier(channels=4),
                                                      DictDigits(batch_size=32))
    assert right.drift.first["gradient"].shape == (2, 1, 8, 8)


def test_messages_use_the_right_article():
    from lit_explain.callbacks.probe import check_batch

    with pytest.raises(ValueError, match="input_key='n' selects an int, not a tensor"):
        check_batch({"n": 3, "y": torch.zeros(2)}, "n", "y")
    with pytest.raises(ValueError, match="target_key='y' selects a str"):
        check_batch({"x": torch.zeros(2, 3), "y": "label"}, "x", "y")


def test_a_bad_metric_keyword_fails_at_construction_naming_the_metric():
    with pytest.raises(ValueError, match=r"metric 'pixel_flipping'.*stepz.*'steps'"):
        lx.ExplainCallback(metrics={"pixel_flipping": {"stepz": 3}})
    with pytest.raises(ValueError, match=r"metric 'region_perturbation'.*steps=0"):
        lx.ExplainCallback(metrics={"region_perturbation": {"steps": 0}})


# Item 4: nothing silent, each warning once.

def warned(tmp_path, callback, logger=False, **kwargs) -> list[str]:
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        train(tmp_path, [callback], logger, **kwargs)
    return explain_warnings(record)


def test_no_validation_warns_once_that_nothing_is_explained(tmp_path):
    messages = warned(tmp_path, lx.ExplainCallback(), CSVLogger(str(tmp_path)),
                      limit_val_batches=0)
    assert len(messages) == 1 and "runs no validation" in messages[0]


def test_a_small_validation_set_warns_once_how_many_are_explained(tmp_path):
    callback = lx.ExplainCallback(num_samples=50)
    messages = warned(tmp_path, callback, CSVLogger(str(tmp_path)), limit_val_batches=1)
    assert len(messages) == 1 and "gave 32 samples" in messages[0]
    assert len(callback.probe.inputs) == 32


def test_stratified_without_labels_warns_once_and_takes_the_first_samples(tmp_path):
    callback = lx.ExplainCallback(num_samples=3, sample_selection="stratified", target_key=None)
    messages = warned(tmp_path, callback, CSVLogger(str(tmp_path)))
    assert len(messages) == 1 and "needs labels" in messages[0]
    assert callback.probe.targets is None and len(callback.probe.inputs) == 3


def test_no_logger_warns_once_where_the_pictures_go(tmp_path):
    messages = warned(tmp_path, lx.ExplainCallback(num_samples=2), max_epochs=2)
    assert len(messages) == 1 and os.path.join(str(tmp_path), "explain") in messages[0]
    assert glob.glob(os.path.join(str(tmp_path), "explain", "*.png"))


# Item 5: validate() after fit.

def test_validate_after_fit_logs_under_its_own_tags_and_leaves_drift_alone(tmp_path):
    logger = TensorBoardLogger(str(tmp_path), name="tb")
    callback = lx.ExplainCallback(analyzers=["gradient"], num_samples=2)
    model, trainer = train(tmp_path, [callback], logger)
    history = {k: list(v) for k, v in callback.drift.history["gradient"].items()}
    previous = callback.drift.previous["gradient"].clone()
    trainer.validate(model, DigitsDataModule(batch_size=32), verbose=False)
    assert callback.drift.history["gradient"] == history
    assert torch.equal(callback.drift.previous["gradient"], previous)
    tags: dict[str, int] = {}
    for event_file in glob.glob(os.path.join(logger.log_dir, "events.out.tfevents.*")):
        events = EventAccumulator(event_file, size_guidance={"images": 0})
        events.Reload()
        for tag in events.Tags()["images"]:
            tags[tag] = tags.get(tag, 0) + len(events.Images(tag))
    assert tags["explain/gradient"] == 2 and tags["explain_validate/gradient"] == 1


# Item 6: resume with a changed configuration.

def test_resume_keeps_the_state_of_analyzers_still_configured_and_names_the_rest(tmp_path):
    first = lx.ExplainCallback(analyzers=["gradient", "deep_lift"], num_samples=3)
    _, trainer = train(tmp_path, [first], max_epochs=1)
    trainer.save_checkpoint(tmp_path / "last.ckpt")
    resumed = lx.ExplainCallback(analyzers=["gradient", "input_t_gradient"], num_samples=3)
    with pytest.warns(UserWarning, match=r"\['deep_lift'\].*no longer configured.*"
                                         r"Kept: \['gradient'\]; new: \['input_t_gradient'\]"):
        make_trainer(tmp_path, [resumed], max_epochs=2).fit(
            DigitsClassifier(channels=4), DigitsDataModule(batch_size=32),
            ckpt_path=tmp_path / "last.ckpt")
    assert torch.equal(resumed.probe.inputs, first.probe.inputs)
    assert torch.equal(resumed.drift.first["gradient"], first.drift.first["gradient"])
    assert "deep_lift" not in resumed.drift.first
    assert resumed.drift.epochs["gradient"] == [1]  # drift against epoch 0's saved maps


def test_resume_with_other_probe_samples_starts_drift_again(tmp_path):
    first = lx.ExplainCallback(analyzers=["gradient"], num_samples=3)
    _, trainer = train(tmp_path, [first], max_epochs=2)
    trainer.save_checkpoint(tmp_path / "last.ckpt")
    resumed = lx.ExplainCallback(analyzers=["gradient"], num_samples=5)
    with pytest.warns(UserWarning, match="new ones are taken, and drift starts again"):
        make_trainer(tmp_path, [resumed], max_epochs=4).fit(
            DigitsClassifier(channels=4), DigitsDataModule(batch_size=32),
            ckpt_path=tmp_path / "last.ckpt")
    assert len(resumed.probe.inputs) == 5
    assert resumed.drift.first["gradient"].shape[0] == 5  # the new samples' first maps
    assert resumed.drift.epochs["gradient"] == [3]  # drift of epoch 3 against epoch 2


# Item 8: says what it does and what it costs.

def test_time_scalar_and_one_log_line_per_explained_epoch(tmp_path, caplog):
    logger = CSVLogger(str(tmp_path))
    callback = lx.ExplainCallback(analyzers=["gradient", "lrp.epsilon"], num_samples=2,
                                  metrics=["sparseness"], every_n_epochs=2)
    with caplog.at_level(logging.INFO):
        train(tmp_path, [callback], logger, max_epochs=3)
    lines = [r.getMessage() for r in caplog.records if "ExplainCallback 'explain'" in
             r.getMessage()]
    assert len(lines) == 2  # epochs 0 and 2
    assert "2 analyzers (gradient, lrp.epsilon) x 2 samples" in lines[0]
    rows = list(csv.DictReader(open(os.path.join(logger.log_dir, "metrics.csv"))))
    times = [float(r["explain/time_s"]) for r in rows if r.get("explain/time_s")]
    metric_times = [float(r["explain/metrics_time_s"]) for r in rows
                    if r.get("explain/metrics_time_s")]
    assert len(times) == 2 and all(t > 0 for t in times)
    assert all(0 < m <= t for m, t in zip(metric_times, times, strict=True))
