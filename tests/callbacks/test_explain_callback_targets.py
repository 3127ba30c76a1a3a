"""The metrics score the class the maps explain: each sample's prediction, right or wrong."""

from __future__ import annotations

import glob
import os

import lightning as L
import pytest
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch.utils.data import DataLoader, TensorDataset

import lit_explain as lx
import lit_explain.metrics as lm
from lit_explain.demo import DigitsClassifier, load_digits_tensors


class WrongLabels(L.LightningDataModule):
    """The digits with shuffled validation labels: most probe samples are misclassified."""

    def __init__(self) -> None:
        super().__init__()
        x, y = load_digits_tensors()[:2]
        generator = torch.Generator().manual_seed(0)
        self.train = TensorDataset(x[:256], y[:256])
        self.val = TensorDataset(x[256:288], y[256:288][torch.randperm(32, generator=generator)])

    def train_dataloader(self):
        return DataLoader(self.train, batch_size=32)

    def val_dataloader(self):
        return DataLoader(self.val, batch_size=32)


def test_metrics_score_the_predicted_class_even_when_the_label_differs(tmp_path):
    L.seed_everything(0, verbose=False)
    logger = TensorBoardLogger(str(tmp_path), name="tb")
    metric_options = {"steps": 16}
    callback = lx.ExplainCallback(analyzers=["gradient"], num_samples=8, drift=[],
                                  metrics={"pixel_flipping": metric_options})
    model = DigitsClassifier(channels=4)
    L.Trainer(max_epochs=1, limit_train_batches=4, limit_val_batches=1, logger=logger,
              enable_progress_bar=False, enable_model_summary=False,
              enable_checkpointing=False, callbacks=[callback], accelerator="cpu",
              default_root_dir=str(tmp_path)).fit(model, WrongLabels())
    x, labels = callback.probe.inputs, callback.probe.targets
    model.eval()
    with torch.no_grad():
        predicted = model(x).argmax(1)
    assert bool((predicted != labels).any())  # the case this test is about
    maps = lx.create_analyzer("gradient", model).analyze(x)
    expected = lm.PixelFlipping(model, **metric_options)
    expected.update(x, maps, predicted)
    (event_file,) = glob.glob(os.path.join(logger.log_dir, "events.out.tfevents.*"))
    events = EventAccumulator(event_file)
    events.Reload()
    (logged,) = events.Scalars("explain/gradient/pixel_flipping")
    assert logged.value == pytest.approx(float(expected.compute()), rel=1e-4)
    by_label = lm.PixelFlipping(model, **metric_options)
    by_label.update(x, maps, labels)
    assert logged.value != pytest.approx(float(by_label.compute()), rel=1e-4)
