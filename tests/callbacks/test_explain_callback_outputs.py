"""What ExplainCallback logs beyond the pictures: metrics, drift, plots, other loggers."""

from __future__ import annotations

import glob
import os
import sys

import lightning as L
import numpy as np
import pytest
import torch
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from test_explain_callback import image_tags, make_trainer, train
from torch import nn

import lit_explain as lx
from lit_explain.callbacks.probe import ProbeCollector
from lit_explain.demo import DigitsClassifier, DigitsDataModule


def scalar_series(log_dir: str, steps: bool = False) -> dict[str, list[float]]:
    """Each scalar's values (``steps``: the steps they were logged at)."""
    (event_file,) = glob.glob(os.path.join(log_dir, "events.out.tfevents.*"))
    events = EventAccumulator(event_file)
    events.Reload()
    return {tag: [e.step if steps else e.value for e in events.Scalars(tag)]
            for tag in events.Tags()["scalars"]}


# (4 training batches an epoch: Lightning logs epoch k's validation at step 4k + 3)
@pytest.mark.parametrize("curves_every_n_epochs, curve_steps", [
    (None, [11]),    # the default: the last epoch's curve, once, at the end of training
    (2, [3, 11]),    # epochs 0 and 2; the last is not plotted twice
    (1, [3, 7, 11])])
def test_metrics_drift_and_their_plots_reach_tensorboard(tmp_path, curves_every_n_epochs,
                                                         curve_steps):
    logger = TensorBoardLogger(str(tmp_path), name="tb")
    callback = lx.ExplainCallback(
        analyzers=["gradient"], num_samples=4, curves_every_n_epochs=curves_every_n_epochs,
        metrics={"pixel_flipping": {"steps": 16}, "sparseness": {}})
    train(tmp_path, [callback], logger, max_epochs=3)
    scalars = scalar_series(logger.log_dir)
    assert len(scalars["explain/gradient/pixel_flipping"]) == 3
    assert all(0 <= g <= 1 for g in scalars["explain/gradient/sparseness"])
    # drift exists from the second explained epoch on; against "first" at epoch 1 equals
    # against "previous"
    previous = scalars["explain/gradient/drift_previous_spearman"]
    first = scalars["explain/gradient/drift_first_spearman"]
    assert len(previous) == 2 and len(first) == 2
    assert previous[0] == pytest.approx(first[0])
    assert all(-1 <= value <= 1 for value in previous)
    # at the steps of the validation they explain (they were one later: on the next epoch)
    steps = scalar_series(logger.log_dir, steps=True)
    assert steps["explain/gradient/pixel_flipping"] == steps["val_loss"] == [3, 7, 11]
    assert steps["explain/gradient/drift_first_spearman"] == [7, 11]
    tags = image_tags(logger.log_dir)
    (event_file,) = glob.glob(os.path.join(logger.log_dir, "events.out.tfevents.*"))
    events = EventAccumulator(event_file, size_guidance={"images": 0})
    events.Reload()
    assert [e.step for e in events.Images("explain/gradient/pixel_flipping_curve")] == curve_steps
    assert tags["explain/gradient/drift"] == 1  # one plot at the end of training
    assert "explain/all" not in tags  # one analyzer: its own picture is the whole picture


def test_identical_maps_have_no_drift(tmp_path):
    # learning rate 0: the weights never change, so neither do the maps
    callback = lx.ExplainCallback(analyzers=["gradient"], num_samples=4)
    L.seed_everything(0, verbose=False)
    model = DigitsClassifier(channels=4, learning_rate=0.0)
    make_trainer(tmp_path, [callback], max_epochs=3).fit(model, DigitsDataModule(batch_size=32))
    assert callback.drift.history["gradient"]["drift_previous_spearman"] == pytest.approx(
        [1.0, 1.0])
    assert callback.drift.history["gradient"]["drift_first_topk_intersection"] == pytest.approx(
        [1.0, 1.0])


def stratified(batches, seed=0) -> ProbeCollector:
    collector = ProbeCollector(6, "stratified", seed=seed)
    for inputs, labels in batches:
        collector.add(inputs, labels)
    collector.finish()
    return collector


def test_stratified_probe_goes_round_robin_over_the_classes():
    labels = torch.tensor([0, 0, 0, 0, 1, 1, 2, 0, 0, 1])
    inputs = torch.arange(10.0)[:, None]
    batches = [(inputs[:5], labels[:5]), (inputs[5:], labels[5:])]
    collector = stratified(batches)
    # rounds: (0, 1, 2), (0, 1), (0): three zeros, two ones, one two, sorted by label
    assert collector.targets.tolist() == [0, 0, 0, 1, 1, 2]
    assert torch.equal(labels[collector.inputs[:, 0].long()], collector.targets)
    assert torch.equal(stratified(batches).inputs, collector.inputs)  # seeded
    seeds = {tuple(stratified(batches, seed).inputs[:, 0].tolist()) for seed in range(8)}
    assert len(seeds) > 1  # the seed does choose among the candidates


def test_first_selection_keeps_the_first_samples():
    collector = ProbeCollector(3)
    collector.add(torch.arange(2.0)[:, None], torch.tensor([5, 6]))
    collector.add(torch.arange(2.0, 4.0)[:, None], torch.tensor([7, 8]))
    collector.finish()
    assert collector.inputs[:, 0].tolist() == [0.0, 1.0, 2.0]
    assert collector.targets.tolist() == [5, 6, 7]


def test_a_logger_without_images_gets_png_files_and_scalars(tmp_path):
    logger = CSVLogger(str(tmp_path), name="csv")
    callback = lx.ExplainCallback(analyzers=["gradient"], num_samples=2,
                                  metrics=["complexity"])
    train(tmp_path, [callback], logger, max_epochs=2)
    pngs = sorted(os.path.basename(p) for p in glob.glob(
        os.path.join(logger.log_dir, "explain", "*.png")))
    assert pngs == ["explain_gradient_drift_step000007.png", "explain_gradient_step000003.png",
                    "explain_gradient_step000007.png"]
    with open(os.path.join(logger.log_dir, "metrics.csv")) as handle:
        assert "explain/gradient/complexity" in handle.readline()


def test_wandb_offline_gets_uint8_images_with_captions(tmp_path, monkeypatch):
    wandb = pytest.importorskip("wandb")
    from lightning.pytorch.loggers import WandbLogger

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    logger = WandbLogger(save_dir=str(tmp_path), project="lit-explain-test")
    callback = lx.ExplainCallback(analyzers=["gradient"], num_samples=2)
    train(tmp_path, [callback], logger, max_epochs=1)
    wandb.finish()
    media = glob.glob(os.path.join(str(tmp_path), "wandb", "*", "files", "media", "images",
                                   "explain", "*.png"))
    assert media, "no explanation image in the offline W&B run"


def test_nan_maps_warn_once_and_training_finishes(tmp_path):
    class NaNNet(DigitsClassifier):
        def forward(self, x):
            out = super().forward(x)
            return out + (x.sum() * float("nan") if not self.training else 0.0)

    callback = lx.ExplainCallback(analyzers=["gradient"], num_samples=2)
    model = NaNNet(channels=4)
    with pytest.warns(UserWarning, match="NaN") as record:
        make_trainer(tmp_path, [callback], max_epochs=2, num_sanity_val_steps=0).fit(
            model, DigitsDataModule(batch_size=32))
    assert sum("NaN or infinite" in str(w.message) for w in record) == 1


@pytest.mark.skipif(sys.version_info < (3, 11), reason="exception notes: Python 3.11+")
def test_under_raise_the_error_says_which_analyzer_raised_it(tmp_path):
    class NaNNet(DigitsClassifier):
        def forward(self, x):
            out = super().forward(x)
            return out + (x.sum() * float("nan") if not self.training else 0.0)

    callback = lx.ExplainCallback(analyzers=["gradient"], num_samples=2, on_error="raise")
    with pytest.raises(FloatingPointError, match="NaN") as raised:
        make_trainer(tmp_path, [callback], max_epochs=1, num_sanity_val_steps=0).fit(
            NaNNet(channels=4), DigitsDataModule(batch_size=32))
    assert "ExplainCallback 'explain': raised by analyzer 'gradient'" in raised.value.__notes__


def test_a_failing_logger_warns_and_training_finishes(tmp_path):
    class BrokenLogger(CSVLogger):
        def log_metrics(self, metrics, step=None):
            if any(key.startswith("explain/") for key in metrics):
                raise OSError("disk full")
            super().log_metrics(metrics, step)

    callback = lx.ExplainCallback(analyzers=["gradient"], num_samples=2, metrics=["sparseness"])
    healthy = TensorBoardLogger(str(tmp_path), name="tb", prefix="run")
    with pytest.warns(UserWarning, match="logging to BrokenLogger failed.*disk full"):
        _, trainer = train(tmp_path, [callback], [BrokenLogger(str(tmp_path)), healthy],
                           max_epochs=2)
    assert trainer.current_epoch == 2
    # the other logger still gets every value and picture, under its prefix
    assert len(scalar_series(healthy.log_dir)["run-explain/gradient/sparseness"]) == 2
    assert "run-explain/gradient" in image_tags(healthy.log_dir)


def test_under_raise_a_model_the_analyzer_cannot_handle_stops_before_training_step_1(tmp_path):
    class Gelu(DigitsClassifier):
        def __init__(self):
            super().__init__(channels=4)
            self.net[1] = nn.GELU()

    model = Gelu()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    callback = lx.ExplainCallback(analyzers=["gradient", "guided_backprop"], on_error="raise")
    with pytest.raises(lx.NotAnalyzableModelError, match=r"guided_backprop.*gelu.*net\.1"):
        make_trainer(tmp_path, [callback], num_sanity_val_steps=0).fit(
            model, DigitsDataModule(batch_size=32))
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())


@pytest.mark.parametrize("source", ["train", "val"])
def test_pattern_analyzers_get_patterns_fit_during_training(tmp_path, source):
    logger = TensorBoardLogger(str(tmp_path), name="tb")
    callback = lx.ExplainCallback(analyzers=["pattern.attribution", "pattern.net"],
                                  num_samples=2, pattern_source=source, grids="each")
    train(tmp_path, [callback], logger, max_epochs=2)
    assert set(callback.patterns.patterns) == {"net.0", "net.2", "net.5", "net.9", "net.11"}
    assert image_tags(logger.log_dir)["explain/pattern.attribution"] == 2
    state = callback.state_dict()
    assert torch.equal(state["patterns"]["patterns"]["net.0"], callback.patterns.patterns["net.0"])


def test_shared_normalization_does_not_saturate_as_the_maps_grow(tmp_path):
    # The digits demo's gradient maps grow about tenfold over the first epochs; a range
    # kept from the first epoch painted every pixel in the colour map's end colours.
    image_module = pytest.importorskip("PIL.Image")
    callback = lx.ExplainCallback(analyzers=["gradient"], num_samples=8, normalization="shared",
                                  cmap="seismic")
    train(tmp_path, [callback], CSVLogger(str(tmp_path)), max_epochs=4, limit_train_batches=8)
    (last, *_) = sorted(glob.glob(os.path.join(str(tmp_path), "**", "explain", "*.png"),
                                  recursive=True), reverse=True)
    pixels = torch.from_numpy(np.asarray(image_module.open(last).convert("RGB"))).float()
    ends = ((pixels - torch.tensor([128.0, 0, 0])).abs().amax(-1) <= 2) | (
        (pixels - torch.tensor([0.0, 0, 76])).abs().amax(-1) <= 2)
    heatmap_pixels = 8 * 64 * 64
    # the range is the 99.5th percentile of |R|: about 0.5 % of the values reach the ends
    assert ends.sum() <= 0.02 * heatmap_pixels
    assert "shared_absmax" not in callback.state_dict()  # a range per epoch, nothing kept


def test_noise_drawing_analyzers_draw_the_same_noise_each_epoch(tmp_path):
    # a model that does not change (learning rate 0): SmoothGrad's maps must not drift, and
    # each is the map a fresh analyzer with the same seed gives
    L.seed_everything(0, verbose=False)
    model = DigitsClassifier(channels=4, learning_rate=0.0)
    logger = TensorBoardLogger(str(tmp_path), name="tb")
    callback = lx.ExplainCallback(analyzers={"smoothgrad": {"augment_by_n": 4}},
                                  num_samples=3)
    make_trainer(tmp_path, [callback], logger, max_epochs=3).fit(
        model, DigitsDataModule(batch_size=32))
    assert scalar_series(logger.log_dir)["explain/smoothgrad/drift_previous_spearman"] == \
        [1.0, 1.0]
    fresh = lx.create_analyzer("smoothgrad", model, augment_by_n=4).analyze(
        callback.probe.inputs)
    torch.testing.assert_close(callback.drift.previous["smoothgrad"], fresh)


def test_curves_are_read_in_a_reduction_of_their_own():
    """``compute()`` reduces the states across processes and puts the local ones back: a
    curve read after it was one process's own while its scalar was all processes' (under DDP
    the plotted curve was rank zero's). The curve is read inside a sync context."""
    from contextlib import contextmanager

    from lit_explain.callbacks.evaluation import _read
    from lit_explain.metrics import create_metric

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 3))
    metric = create_metric("pixel_flipping", model, steps=4)
    x = torch.randn(2, 1, 4, 4)
    metric.update(x, torch.randn(2, 1, 4, 4), torch.tensor([0, 1]))
    depth, read_at = [0], []
    sync_context, curve = metric.sync_context, metric.curve

    @contextmanager
    def spied(**kwargs):
        depth[0] += 1
        with sync_context(**kwargs):
            yield
        depth[0] -= 1

    metric.sync_context = spied
    metric.curve = lambda: read_at.append(depth[0]) or curve()
    scalars, curves = _read("pixel_flipping", metric)
    assert set(read_at) == {1} and "pixel_flipping" in curves and "pixel_flipping" in scalars
