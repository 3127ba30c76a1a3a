"""ExplainCallback under DDP with two CPU processes (gloo)."""

from __future__ import annotations

import glob
import os
from datetime import timedelta

import lightning as L
import pytest
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.strategies import DDPStrategy
from test_explain_callback import image_tags
from test_explain_callback_outputs import scalar_series

import lit_explain as lx
from lit_explain.demo import DigitsClassifier, DigitsDataModule


class ProcessGroupClosedAtTeardown(L.Callback):
    """Each process closes its gloo process group, together with the other, before it exits.

    Lightning leaves a gloo group to the interpreter's exit, where its threads were once
    torn down while still joinable (``terminate called without an active exception``: the
    spawned process aborted after fit had finished, failing a test that had passed)."""

    def teardown(self, trainer, pl_module, stage):
        if torch.distributed.is_initialized():
            torch.distributed.barrier()
            torch.distributed.destroy_process_group()


def fit_on_two_processes(tmp_path, callback: lx.ExplainCallback, model: L.LightningModule,
                         data: L.LightningDataModule, max_epochs: int) -> str:
    """Fit on two gloo processes with a short process-group timeout (a rank left waiting in
    a reduction fails in a minute, not thirty); the TensorBoard log folder."""
    L.seed_everything(0, verbose=False)
    trainer = L.Trainer(strategy=DDPStrategy(start_method="spawn", timeout=timedelta(seconds=60)),
                        accelerator="cpu", devices=2, max_epochs=max_epochs,
                        limit_train_batches=2, limit_val_batches=2,
                        logger=TensorBoardLogger(str(tmp_path), name="ddp"),
                        callbacks=[callback, ProcessGroupClosedAtTeardown()],
                        enable_progress_bar=False, enable_model_summary=False,
                        enable_checkpointing=False, num_sanity_val_steps=0)
    trainer.fit(model, data)  # returns: no deadlock
    (log_dir,) = {os.path.dirname(p) for p in glob.glob(
        os.path.join(str(tmp_path), "**", "events.out.tfevents.*"), recursive=True)}
    return log_dir


@pytest.mark.slow
def test_two_gloo_processes_log_once_with_metrics_reduced_across_ranks(tmp_path):
    model = DigitsClassifier(channels=4)
    data = DigitsDataModule(batch_size=16)
    callback = lx.ExplainCallback(analyzers=["gradient"], num_samples=2,
                                  metrics=["sparseness"], drift=["previous"])
    log_dir = fit_on_two_processes(tmp_path, callback, model, data, max_epochs=2)
    tags = image_tags(log_dir)
    assert tags["explain/gradient"] == 2 and tags["explain/gradient/drift"] == 1  # rank 0 only

    # each rank explains the first 2 samples of its shard (DistributedSampler without
    # shuffling deals samples round-robin); the logged value is the mean over all four
    data.setup("fit")
    inputs = torch.stack([data.val_set[i][0] for i in (0, 2, 1, 3)])
    maps = lx.create_analyzer("gradient", model.eval()).analyze(inputs)
    sparseness = lx.metrics.Sparseness()
    sparseness.update(maps)
    logged = scalar_series(log_dir)["explain/gradient/sparseness"]
    assert logged[-1] == pytest.approx(float(sparseness.compute()), rel=1e-4)
    rank_zero_only = lx.metrics.Sparseness()
    rank_zero_only.update(maps[:2])
    assert logged[-1] != pytest.approx(float(rank_zero_only.compute()), rel=1e-4)


class GradientNaNOnRankOne(DigitsClassifier):
    """On rank 1 the input gradient is NaN (∂√(0·x)/∂x = ∞ · 0), its output as on rank 0:
    an analyzer that fails on one rank's probe samples only."""

    def forward(self, x):
        output = super().forward(x)
        if torch.distributed.is_initialized() and torch.distributed.get_rank() == 1:
            output = output + torch.sqrt(x[:, :1, 0, 0] * 0.0)
        return output


@pytest.mark.slow
def test_an_analyzer_failing_on_one_rank_is_skipped_on_all_and_training_goes_on(tmp_path):
    """The ranks agree on what succeeded before they reduce metrics and drift: a rank that
    skipped a failed analyzer while the other reduced its metric hung until the process
    group's timeout (thirty minutes by default), then stopped training."""
    callback = lx.ExplainCallback(analyzers=["gradient", "lrp.epsilon"], num_samples=2,
                                  metrics=["sparseness"], drift=["previous"])
    log_dir = fit_on_two_processes(tmp_path, callback, GradientNaNOnRankOne(channels=4),
                                   DigitsDataModule(batch_size=16), max_epochs=2)
    scalars = scalar_series(log_dir)
    assert len(scalars["explain/lrp.epsilon/sparseness"]) == 2  # both epochs: trained on
    assert len(scalars["explain/lrp.epsilon/drift_previous_spearman"]) == 1
    assert not any(tag.startswith("explain/gradient") for tag in scalars)
    assert "explain/gradient" not in image_tags(log_dir)


class _MasksOnRankZeroOnly(DigitsDataModule):
    """Validation masks for the even samples (rank zero's under DistributedSampler) only."""

    def setup(self, stage=None):
        super().setup(stage)

        def with_masks(dataset, odd_empty: bool):
            x, y = dataset.tensors
            masks = torch.zeros(len(x), 8, 8, dtype=torch.bool)
            masks[:, 2:6, 2:6] = True
            if odd_empty:
                masks[1::2] = False
            return torch.utils.data.TensorDataset(x, y, masks)

        self.train_set = with_masks(self.train_set, False)
        self.val_set = with_masks(self.val_set, True)


@pytest.mark.slow
def test_metrics_of_ranks_without_masks_and_curves_reduce_with_the_others(tmp_path):
    """A localization metric on a rank whose probe masks are all empty still reduces its
    states with the others (it skipped the reduction: a hang until the timeout)."""
    callback = lx.ExplainCallback(analyzers=["gradient"], num_samples=2, mask_key=2,
                                  metrics={"relevance_mass_accuracy": {},
                                           "pixel_flipping": {"steps": 8}},
                                  drift=["previous"], curves_every_n_epochs=1)
    log_dir = fit_on_two_processes(tmp_path, callback, DigitsClassifier(channels=4),
                                   _MasksOnRankZeroOnly(batch_size=16), max_epochs=1)
    scalars = scalar_series(log_dir)
    assert len(scalars["explain/gradient/relevance_mass_accuracy"]) == 1
    assert "explain/gradient/pixel_flipping_curve" in image_tags(log_dir)
