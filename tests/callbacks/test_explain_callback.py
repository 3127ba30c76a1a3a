"""ExplainCallback in real Trainer runs on the digits demo: what it logs and what it promises."""

from __future__ import annotations

import glob
import os

import lightning as L
import pytest
import torch
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

import lit_explain as lx
from lit_explain.demo import DigitsClassifier, DigitsDataModule


def make_trainer(tmp_path, callbacks=(), logger=False, **kwargs) -> L.Trainer:
    options = dict(max_epochs=2, limit_train_batches=4, limit_val_batches=2,
                   enable_progress_bar=False, enable_model_summary=False,
                   enable_checkpointing=False, default_root_dir=str(tmp_path),
                   accelerator="cpu", devices=1, deterministic=True)
    options.update(kwargs)
    return L.Trainer(callbacks=list(callbacks), logger=logger, **options)


def train(tmp_path, callbacks=(), logger=False, **kwargs) -> tuple[DigitsClassifier, L.Trainer]:
    L.seed_everything(0, verbose=False)
    model = DigitsClassifier(channels=4)
    trainer = make_trainer(tmp_path, callbacks, logger, **kwargs)
    trainer.fit(model, DigitsDataModule(batch_size=32))
    return model, trainer


def image_tags(log_dir: str) -> dict[str, int]:
    (event_file,) = glob.glob(os.path.join(log_dir, "events.out.tfevents.*"))
    events = EventAccumulator(event_file, size_guidance={"images": 0})
    events.Reload()
    return {tag: len(events.Images(tag)) for tag in events.Tags()["images"]}


@pytest.mark.parametrize("grids, pictures", [
    ("combined", {"explain/all"}),  # the default: one picture, a column per analyzer
    ("each", {"explain/gradient", "explain/guided_backprop"}),
    ("both", {"explain/gradient", "explain/guided_backprop", "explain/all"})])
def test_logs_heatmap_grids_to_tensorboard_each_epoch(tmp_path, grids, pictures):
    logger = TensorBoardLogger(str(tmp_path), name="tb")
    callback = lx.ExplainCallback(analyzers=["gradient", "guided_backprop"], num_samples=4,
                                  grids=grids)
    train(tmp_path, [callback], logger)
    tags = image_tags(logger.log_dir)
    assert tags == {**{tag: 2 for tag in pictures},  # each of the two epochs
                    # one drift plot each, at the end of training
                    "explain/gradient/drift": 1, "explain/guided_backprop/drift": 1}
    assert callback.probe.inputs.shape == (4, 1, 8, 8)
    assert callback.probe.targets.shape == (4,)


def test_training_is_unchanged_by_the_callback(tmp_path):
    plain, _ = train(tmp_path / "plain", accumulate_grad_batches=2, val_check_interval=2)
    rng_after_plain = torch.get_rng_state()
    callback = lx.ExplainCallback(analyzers={"smoothgrad": {"augment_by_n": 4}, "random": {},
                                             "deep_lift": {}}, num_samples=3)
    explained, _ = train(tmp_path / "explained", [callback], accumulate_grad_batches=2,
                         val_check_interval=2)
    assert torch.equal(torch.get_rng_state(), rng_after_plain)
    for (name, a), (_, b) in zip(plain.state_dict().items(), explained.state_dict().items(),
                                 strict=True):
        assert torch.equal(a, b), name


def test_works_in_trainer_validate_under_inference_mode(tmp_path):
    callback = lx.ExplainCallback(analyzers=["gradient"], num_samples=2)
    model = DigitsClassifier(channels=4)
    trainer = make_trainer(tmp_path, [callback], CSVLogger(str(tmp_path)))
    trainer.validate(model, DigitsDataModule(batch_size=32))
    pngs = glob.glob(os.path.join(str(tmp_path), "**", "explain", "*.png"), recursive=True)
    # explain_validate/gradient as a PNG file for the CSV logger (one analyzer: no .../all);
    # under validate() the tags are the callback's name + "_validate"
    assert [os.path.basename(p) for p in pngs] == ["explain_validate_gradient_step000000.png"]


def test_skips_the_sanity_check(tmp_path):
    callback = lx.ExplainCallback(analyzers=["gradient"], num_samples=2)
    train(tmp_path, [callback], num_sanity_val_steps=2, max_epochs=1, limit_val_batches=0)
    assert not callback.probe.ready  # sanity batches are never used as probe samples


def test_bad_configuration_fails_at_construction():
    with pytest.raises(KeyError, match="integrated_gradients"):
        lx.ExplainCallback(analyzers=["integrated_gradient"])
    with pytest.raises(TypeError, match="steps"):
        lx.ExplainCallback(analyzers={"integrated_gradients": {"stepz": 3}})
    with pytest.raises(ValueError, match=r"on_error='ignore'.*'warn', 'raise'"):
        lx.ExplainCallback(on_error="ignore")
    with pytest.raises(ValueError, match="num_samples=0"):
        lx.ExplainCallback(num_samples=0)
    with pytest.raises(KeyError, match=r"pixel_flip'.*pixel_flipping.*sparseness"):
        lx.ExplainCallback(metrics=["pixel_flip"])
    with pytest.raises(ValueError, match=r"drift='last'.*'previous', 'first'"):
        lx.ExplainCallback(drift=["last"])
    with pytest.raises(ValueError, match=r"cmap='jet'.*seismic"):
        lx.ExplainCallback(cmap="jet")
    with pytest.raises(ValueError, match="seed='a' is not valid"):
        lx.ExplainCallback(seed="a")
    with pytest.raises(TypeError, match=r"input_key=None.*tuple index \(int\) or a mapping"):
        lx.ExplainCallback(input_key=None)
    with pytest.raises(TypeError, match=r"target_key=\[1\] is not valid"):
        lx.ExplainCallback(target_key=[1])
    with pytest.raises(TypeError, match="output_key=True is not valid"):
        lx.ExplainCallback(output_key=True)
    with pytest.raises(TypeError, match="class_names='abc' is not valid; give a list"):
        lx.ExplainCallback(class_names="abc")
    with pytest.raises(TypeError, match="token_names=3 is not valid"):
        lx.ExplainCallback(token_names=3)
    with pytest.raises(ValueError, match="overlay='yes' is not valid"):
        lx.ExplainCallback(overlay="yes")
    for bad in (None, 5, [3]):
        with pytest.raises(TypeError, match=r"analyzers=.* is not valid; give analyzer names.*"
                                            r"valid names: \['deconvnet'"):
            lx.ExplainCallback(analyzers=bad)
    with pytest.raises(TypeError, match="analyzer 'gradient': parameters must be a mapping"):
        lx.ExplainCallback(analyzers={"gradient": 3})
    with pytest.raises(ValueError, match=r"'lrp.z': neuron_selection_mode='index' needs"):
        lx.ExplainCallback(analyzers={"lrp.z": {"neuron_selection_mode": "index"}})
    # (an analyzer named twice was merged into one without a word; a metric name in a list
    # failed with Python's "unhashable type: 'list'")
    with pytest.raises(ValueError, match=r"analyzers lists \['gradient'\] more than once"):
        lx.ExplainCallback(analyzers=["gradient", "lrp.z", "gradient"])
    with pytest.raises(TypeError, match=r"metrics=\[\['pixel_flipping'\]\] is not valid; give "
                                        r"metric names .* valid names: \["):
        lx.ExplainCallback(metrics=[["pixel_flipping"]])


def test_numpy_integers_are_options_and_become_ints():
    import numpy as np

    callback = lx.ExplainCallback(num_samples=np.int64(4), every_n_epochs=np.int32(2),
                                  analysis_batch_size=np.int16(8),
                                  curves_every_n_epochs=np.int64(3))
    values = (callback.probe.num_samples, callback.every_n_epochs, callback.analysis_batch_size,
              callback.curves_every_n_epochs)
    assert values == (4, 2, 8, 3) and all(type(v) is int for v in values)


def test_bad_analyzer_parameter_value_fails_at_setup_before_training(tmp_path):
    callback = lx.ExplainCallback(analyzers={"integrated_gradients": {"steps": 0}})
    model = DigitsClassifier(channels=4)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match="analyzer 'integrated_gradients': steps=0"):
        make_trainer(tmp_path, [callback]).fit(model, DigitsDataModule())
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())


class Broken(lx.Analyzer):
    """Always fails, to test the callback's error policy."""

    def _analyze(self, x, neuron_selection):
        raise RuntimeError("broken on purpose")


@pytest.fixture
def broken_analyzer():
    lx.analyzers["test.broken"] = Broken
    Broken.name = "test.broken"
    yield
    del lx.analyzers["test.broken"]


def test_a_failing_analyzer_warns_once_and_training_finishes(tmp_path, broken_analyzer):
    callback = lx.ExplainCallback(analyzers=["test.broken", "gradient"], num_samples=2)
    with pytest.warns(UserWarning, match="test.broken.*broken on purpose") as record:
        _, trainer = train(tmp_path, [callback], max_epochs=3)
    assert trainer.current_epoch == 3
    assert sum("broken on purpose" in str(w.message) for w in record) == 1


def test_on_error_raise_stops_training(tmp_path, broken_analyzer):
    callback = lx.ExplainCallback(analyzers=["test.broken"], on_error="raise")
    with pytest.raises(RuntimeError, match="broken on purpose"):
        train(tmp_path, [callback])


@pytest.mark.parametrize("on_error", ["warn", "raise"])
def test_a_picture_that_cannot_be_drawn(tmp_path, monkeypatch, on_error):
    # The pictures are drawn and logged in a worker thread while the metrics run: a failure
    # there is warned about (the scores are still logged) or stops training, as elsewhere.
    def broken(*args, **kwargs):
        raise RuntimeError("no picture on purpose")

    monkeypatch.setattr(lx.viz, "explanation_grid", broken)
    logger = TensorBoardLogger(str(tmp_path), name="tb")
    callback = lx.ExplainCallback(analyzers=["gradient"], num_samples=2,
                                  metrics={"sparseness": {}}, on_error=on_error)
    if on_error == "raise":
        with pytest.raises(RuntimeError, match="no picture on purpose"):
            train(tmp_path, [callback], logger)
        return
    with pytest.warns(UserWarning, match="picture.*no picture on purpose"):
        train(tmp_path, [callback], logger)
    (event_file,) = glob.glob(os.path.join(logger.log_dir, "events.out.tfevents.*"))
    events = EventAccumulator(event_file, size_guidance={"images": 0, "scalars": 0})
    events.Reload()
    assert events.Tags()["images"] == ["explain/gradient/drift"]  # no grid, the drift plot
    assert len(events.Scalars("explain/gradient/sparseness")) == 2  # both epochs


def test_checkpoint_state_is_tensors_and_resumes_with_weights_only(tmp_path):
    callback = lx.ExplainCallback(analyzers=["gradient"], num_samples=3)
    _, trainer = train(tmp_path, [callback], max_epochs=1)
    path = tmp_path / "last.ckpt"
    trainer.save_checkpoint(path)
    checkpoint = torch.load(path, weights_only=True)
    state = checkpoint["callbacks"][callback.state_key]
    assert torch.equal(state["probe"]["inputs"], callback.probe.inputs)
    resumed = lx.ExplainCallback(analyzers=["gradient"], num_samples=3)
    model = DigitsClassifier(channels=4)
    make_trainer(tmp_path, [resumed], max_epochs=2).fit(model, DigitsDataModule(batch_size=32),
                                                         ckpt_path=path)
    assert torch.equal(resumed.probe.inputs, callback.probe.inputs)


def test_a_callback_reused_for_another_run_explains_that_run(tmp_path):
    """Cross-validation folds, sweeps: one callback, several fits. Each fit is a run of its
    own (probe samples, drift references, what the preflight dropped); before, the second
    run explained nothing, silently, as its epochs came before the first run's last."""
    callback = lx.ExplainCallback(analyzers=["gradient"], num_samples=2, drift=["first"])
    first, _ = train(tmp_path / "one", [callback], max_epochs=3)
    logger = TensorBoardLogger(str(tmp_path), name="two")
    second, _ = train(tmp_path / "two", [callback], logger, max_epochs=2)
    assert image_tags(logger.log_dir)["explain/gradient"] == 2  # both epochs
    assert callback.drift.epochs == {"gradient": [1]}  # against the second run's first epoch
    expected = lx.create_analyzer("gradient", second).analyze(callback.probe.inputs)
    torch.testing.assert_close(callback.drift.previous["gradient"], expected)


def test_two_callbacks_with_the_same_settings_live_on_one_trainer_by_name(tmp_path):
    logger = TensorBoardLogger(str(tmp_path), name="tb")
    first = lx.ExplainCallback(analyzers=["gradient"], num_samples=2)
    second = lx.ExplainCallback(analyzers=["gradient"], num_samples=2, name="second")
    assert first.state_key != second.state_key
    with pytest.raises(RuntimeError, match="state_key"):  # Lightning refuses equal keys
        make_trainer(tmp_path, [first, lx.ExplainCallback(analyzers=["gradient"])])
    _, trainer = train(tmp_path, [first, second], logger, max_epochs=1)
    tags = image_tags(logger.log_dir)
    assert tags["explain/gradient"] == 1 and tags["second/gradient"] == 1
    trainer.save_checkpoint(tmp_path / "two.ckpt")
    states = torch.load(tmp_path / "two.ckpt", weights_only=True)["callbacks"]
    assert {first.state_key, second.state_key} <= set(states)
    with pytest.raises(ValueError, match="name='a b'"):
        lx.ExplainCallback(name="a b")


def test_a_named_callbacks_warnings_say_its_name(tmp_path):
    """Two callbacks on one Trainer warned alike ("ExplainCallback: ..."), whichever warned."""
    named = lx.ExplainCallback(analyzers=["gradient"], num_samples=2, name="second")
    with pytest.warns(UserWarning, match="ExplainCallback 'second': the Trainer has no logger"):
        train(tmp_path, [named], max_epochs=1)
    with pytest.warns(UserWarning, match="ExplainCallback: the Trainer has no logger"):
        train(tmp_path, [lx.ExplainCallback(analyzers=["gradient"], num_samples=2)],
              max_epochs=1)


CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.mark.parametrize(("accelerator", "precision"), [
    ("cpu", "bf16-mixed"), pytest.param("cuda", "32-true", marks=CUDA),
    pytest.param("cuda", "16-mixed", marks=CUDA)])
def test_explains_on_the_device_and_in_the_precision_the_model_trains_in(tmp_path, accelerator,
                                                                         precision):
    names = ["gradient", "lrp.epsilon", "smoothgrad"]
    callback = lx.ExplainCallback(analyzers=names, num_samples=4, metrics=["pixel_flipping"])
    model, _ = train(tmp_path, [callback], accelerator=accelerator, precision=precision,
                     deterministic=False)
    assert set(callback.drift.history) == set(names)
    # the last epoch's maps (no training step after it) are the model's maps in its own
    # precision, float32, whatever autocast the training ran under
    inputs = callback.probe.inputs.to(model.device)
    for name in ("gradient", "lrp.epsilon"):
        expected = lx.create_analyzer(name, model).analyze(inputs).cpu()
        assert callback.drift.previous[name].dtype == torch.float32
        torch.testing.assert_close(callback.drift.previous[name], expected)


def test_numpy_numbers_hashable_keys_and_name_mappings_are_accepted():
    import enum

    import numpy as np

    class Part(enum.Enum):
        IMAGE = "image"

    callback = lx.ExplainCallback(seed=np.int64(3), input_key=np.int64(0), target_key=Part.IMAGE,
                                  class_names={0: "zero", 2: "two"})
    assert callback.probe.seed == 3
    assert callback.class_names == ["zero", "1", "two"]
    analyzer = lx.create_analyzer("smoothgrad", torch.nn.Linear(3, 2), seed=np.int64(3))
    assert analyzer.generators.seed == 3
