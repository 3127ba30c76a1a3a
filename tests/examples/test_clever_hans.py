"""The Clever-Hans demo: the confounded model comes to rely on the watermark, the control not."""

from __future__ import annotations

import lightning as L
import pytest
import torch

import lit_explain as lx
from lit_explain.demo import CleverHansDigits, DigitsClassifier, stamp_watermark


def test_the_watermark_is_confounded_with_one_class_only_in_the_confounded_data():
    for confounded in (True, False):
        data = CleverHansDigits(confounded=confounded)
        data.setup()
        x, y, m = data.train_set.tensors
        stamped = m.flatten(1).any(1)
        assert torch.equal(x[:, 0, 6:, 6:][stamped], torch.ones(int(stamped.sum()), 2, 2))
        rate_8, rate_other = stamped[y == 8].float().mean(), stamped[y != 8].float().mean()
        if confounded:
            assert rate_8 > 0.9 and rate_other < 0.05
        else:
            assert abs(rate_8 - rate_other) < 0.1
        clean_x, clean_y = data.val_clean.tensors
        assert torch.equal(stamp_watermark(clean_x, data.val_set.tensors[2].flatten(1).any(1))[0],
                           data.val_set.tensors[0])  # the same images, unstamped


def share_after_training(confounded: bool, root, epochs: int = 4) -> float:
    L.seed_everything(0, verbose=False)
    callback = lx.ExplainCallback(analyzers=["lrp.sequential_preset_a"], num_samples=16,
                                  mask_key=2, drift=[],
                                  metrics={"relevance_mass_accuracy": {"values": "abs"}})
    trainer = L.Trainer(max_epochs=epochs, logger=False, enable_progress_bar=False,
                        enable_model_summary=False, enable_checkpointing=False,
                        accelerator="cpu", devices=1, deterministic=True, callbacks=[callback],
                        default_root_dir=str(root))  # the pictures go there as PNG files
    model = DigitsClassifier(channels=16, learning_rate=3e-3)
    trainer.fit(model, CleverHansDigits(confounded=confounded))
    maps = callback._analyzers["lrp.sequential_preset_a"].analyze(callback.probe.inputs)
    share = lx.metrics.RelevanceMassAccuracy(values="abs")
    share.update(maps, callback.probe.masks)
    assert int(share.skipped) == 0  # the probe images all carry the watermark
    return float(share.compute())


@pytest.mark.slow
def test_confounded_run_puts_three_times_the_control_s_relevance_on_the_watermark(tmp_path):
    confounded = share_after_training(True, tmp_path / "confounded")
    control = share_after_training(False, tmp_path / "control")
    assert confounded >= 3 * control, (confounded, control)
