"""ExplainCallback with ground-truth masks (mask_key): probe masks, localization scalars, checks."""

from __future__ import annotations

import glob
import os

import lightning as L
import pytest
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch.utils.data import TensorDataset

import lit_explain as lx
import lit_explain.metrics as lm
from lit_explain.demo import CleverHansDigits, DigitsClassifier


def fit(tmp_path, callback, data, logger=False, epochs=1):
    L.seed_everything(0, verbose=False)
    trainer = L.Trainer(max_epochs=epochs, limit_train_batches=3, limit_val_batches=2,
                        enable_progress_bar=False, enable_model_summary=False,
                        enable_checkpointing=False, default_root_dir=str(tmp_path),
                        accelerator="cpu", devices=1, logger=logger, callbacks=[callback])
    trainer.fit(DigitsClassifier(channels=4), data)
    return trainer


def test_masks_are_kept_with_the_probe_and_scored_per_analyzer(tmp_path):
    data = CleverHansDigits()
    logger = TensorBoardLogger(str(tmp_path), name="tb")
    callback = lx.ExplainCallback(analyzers=["gradient", "lrp.epsilon"], num_samples=6,
                                  mask_key=2, drift=[])
    fit(tmp_path, callback, data, logger)
    data.setup()
    x, y, m = data.val_set.tensors
    # "first" selection: the first six validation samples, each with its own mask
    assert torch.equal(callback.probe.inputs, x[:6]) and torch.equal(callback.probe.masks, m[:6])
    (event_file,) = glob.glob(os.path.join(logger.log_dir, "events.out.tfevents.*"))
    events = EventAccumulator(event_file)
    events.Reload()
    defaults = {"relevance_mass_accuracy", "relevance_rank_accuracy", "pointing_game",
                "attribution_localisation"}  # (not shortcut_score: it reads the other way)
    expected = {f"explain/{a}/{name}" for a in ("gradient", "lrp.epsilon") for name in defaults}
    assert expected <= set(events.Tags()["scalars"])
    # (a watermark mask read as an object mask: the shortcut model scored the better one)
    assert not any(tag.endswith("/shortcut_score") for tag in events.Tags()["scalars"])
    # the logged value is the metric of the probe maps and masks
    maps = lx.create_analyzer("gradient", callback._analyzers["gradient"].model).analyze(x[:6])
    metric = lm.RelevanceMassAccuracy()
    metric.update(maps, m[:6])
    (logged,) = events.Scalars("explain/gradient/relevance_mass_accuracy")
    assert logged.value == pytest.approx(float(metric.compute()), rel=1e-5)


def test_stratified_probes_keep_their_masks_and_resume_from_the_checkpoint(tmp_path):
    callback = lx.ExplainCallback(analyzers=["gradient"], num_samples=10,
                                  sample_selection="stratified", mask_key=2,
                                  metrics=["pointing_game"], drift=[])
    fit(tmp_path, callback, CleverHansDigits())
    inputs, masks = callback.probe.inputs, callback.probe.masks
    watermarked = inputs[:, 0, 6:, 6:].flatten(1).eq(1).all(1)
    assert torch.equal(masks.flatten(1).any(1), watermarked)  # each sample kept its mask
    path = tmp_path / "state.pt"
    torch.save(callback.state_dict(), path)
    restored = lx.ExplainCallback(analyzers=["gradient"], num_samples=10, mask_key=2)
    restored.load_state_dict(torch.load(path, weights_only=True))
    assert torch.equal(restored.probe.masks, masks)


def test_a_resume_with_mask_key_takes_new_probe_samples_with_masks(tmp_path):
    """A checkpoint's probe without masks was restored into a run that asks for them: no
    localization metric was scored for the whole run, and the warning said "set mask_key"."""
    without = lx.ExplainCallback(analyzers=["gradient"], num_samples=4, drift=[])
    fit(tmp_path, without, CleverHansDigits())
    assert without.probe.masks is None
    with_masks = lx.ExplainCallback(analyzers=["gradient"], num_samples=4, mask_key=2,
                                    metrics=["relevance_mass_accuracy"], drift=[])
    with pytest.warns(UserWarning, match="probe samples have no masks, and mask_key=2"):
        with_masks.load_state_dict(without.state_dict())
    assert not with_masks.probe.ready
    fit(tmp_path, with_masks, CleverHansDigits())
    assert with_masks.probe.masks is not None and len(with_masks.probe.masks) == 4


def masked_data(masks: torch.Tensor) -> L.LightningDataModule:
    images = torch.rand(16, 1, 8, 8)
    labels = torch.arange(16) % 10
    return L.LightningDataModule.from_datasets(
        train_dataset=TensorDataset(images, labels, masks),
        val_dataset=TensorDataset(images, labels, masks), batch_size=8)


@pytest.mark.parametrize(("masks", "message"), [
    (torch.zeros(16, 4, 4, dtype=torch.bool), r"masks of shape \(8, 4, 4\) do not fit"),
    (torch.full((16, 8, 8), 2.0), "boolean or hold only 0 and 1"),
])
def test_bad_masks_fail_at_the_preflight_even_with_on_error_warn(tmp_path, masks, message):
    callback = lx.ExplainCallback(analyzers=["gradient"], num_samples=2, mask_key=2)
    with pytest.raises(ValueError, match=message):
        fit(tmp_path, callback, masked_data(masks))


def test_a_mask_key_the_batch_lacks_is_named(tmp_path):
    callback = lx.ExplainCallback(analyzers=["gradient"], num_samples=2, mask_key=3)
    with pytest.raises(ValueError, match=r"mask_key=3 does not fit the validation batch: "
                                         r"index 3 is not valid for a batch of 3 parts "
                                         r"\(indices 0 to 2, or -3 to -1\)"):
        fit(tmp_path, callback, masked_data(torch.zeros(16, 8, 8, dtype=torch.bool)))


def test_localization_metrics_need_a_mask_key():
    with pytest.raises(ValueError, match="set mask_key"):
        lx.ExplainCallback(metrics=["pointing_game"])


def test_masks_are_outlined_on_the_input_column():
    x = torch.zeros(1, 1, 8, 8)
    m = torch.zeros(1, 8, 8, dtype=torch.bool)
    m[0, 6:, 6:] = True
    with_mask = lx.viz.explanation_grid(x, {"g": x}, masks=m, colorbar=False)
    plain = lx.viz.explanation_grid(x, {"g": x}, colorbar=False)
    changed = (with_mask != plain).any(0).nonzero()
    green = torch.tensor(lx.viz.grid.MASK_OUTLINE)
    assert len(changed) > 0
    assert all(torch.allclose(with_mask[:, r, c], green) for r, c in changed.tolist())


def _masks_for_half(items):
    """A batch of dicts whose mask is None where none of its samples has one."""
    x, y, m = (torch.stack(t) for t in zip(*items, strict=True))
    return {"x": x, "y": y, "mask": m if m.any() else None}


@pytest.mark.parametrize("masked_first", [True, False])
@pytest.mark.parametrize("selection", ["first", "stratified"])
def test_samples_of_a_batch_without_masks_get_empty_ones(tmp_path, selection, masked_first):
    """A data set with masks for some samples: a batch whose mask is None stopped fit() with
    a bare TypeError from the probe's concatenation. Its samples get empty masks, which the
    localization metrics skip."""
    from torch.utils.data import DataLoader

    torch.manual_seed(0)
    x, y = torch.rand(16, 1, 8, 8), torch.arange(16) % 4
    masks = torch.zeros(16, 8, 8, dtype=torch.bool)
    masks[:8, 2:5, 2:5] = True  # (the second batch of 8 has none; or the first)
    if not masked_first:  # (the preflight met a batch without masks: a TypeError)
        masks = masks.roll(8, 0)
    loader = DataLoader(TensorDataset(x, y, masks), batch_size=8, collate_fn=_masks_for_half)
    callback = lx.ExplainCallback(analyzers=["gradient"], num_samples=12,
                                  sample_selection=selection, input_key="x", target_key="y",
                                  mask_key="mask", metrics=["relevance_mass_accuracy"], drift=[])

    class Dicts(DigitsClassifier):
        def training_step(self, batch, index):
            return super().training_step((batch["x"], batch["y"]), index)

        def validation_step(self, batch, index):
            return super().validation_step((batch["x"], batch["y"]), index)

    trainer = L.Trainer(max_epochs=1, enable_progress_bar=False, enable_model_summary=False,
                        logger=False, enable_checkpointing=False, accelerator="cpu",
                        default_root_dir=str(tmp_path), callbacks=[callback])
    trainer.fit(Dicts(channels=4), loader, loader)
    probe = callback.probe
    assert probe.masks is not None and len(probe.masks) == len(probe.inputs) == 12
    for sample, mask in zip(probe.inputs, probe.masks, strict=True):
        given = next(i for i in range(16) if torch.equal(x[i], sample))
        assert torch.equal(mask, masks[given])  # (empty where the batch had none)
