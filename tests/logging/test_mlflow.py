"""ExplainCallback with Lightning's MLFlowLogger against a local store (SQLite tracking
database and an artifact folder, no server), read back through MLflow's own client."""

from __future__ import annotations

import io

import lightning as L
import numpy as np
import pytest

import lit_explain as lx
from lit_explain.demo import DigitsClassifier, DigitsDataModule

mlflow = pytest.importorskip("mlflow", reason="MLflow is optional: pip install lit-explain[mlflow]")


def test_images_become_mlflow_images_and_scalars_mlflow_metrics(tmp_path):
    from lightning.pytorch.loggers import MLFlowLogger
    from PIL import Image

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    logger = MLFlowLogger(experiment_name="explain", tracking_uri=uri,
                          artifact_location=str(tmp_path / "artifacts"))
    callback = lx.ExplainCallback(analyzers=["gradient", "lrp.epsilon"], num_samples=2,
                                  metrics=["sparseness"])
    L.seed_everything(0, verbose=False)
    trainer = L.Trainer(max_epochs=2, limit_train_batches=2, limit_val_batches=1,
                        logger=logger, callbacks=[callback], enable_progress_bar=False,
                        enable_model_summary=False, enable_checkpointing=False,
                        accelerator="cpu", default_root_dir=str(tmp_path))
    trainer.fit(DigitsClassifier(channels=4), DigitsDataModule(batch_size=32))

    client = mlflow.MlflowClient(tracking_uri=uri)
    run_id = logger.run_id
    history = client.get_metric_history(run_id, "explain/gradient/sparseness")
    # at the steps of Lightning's own validation metrics (2 training batches an epoch)
    assert [m.step for m in history] == [m.step for m in client.get_metric_history(
        run_id, "val_loss")] == [1, 3] and all(0 <= m.value <= 1 for m in history)
    assert len(client.get_metric_history(run_id, "explain/time_s")) == 2
    # the grid of each epoch, as images with key and step: MLflow stores them as
    # images/<key with "/" as "~">+step+<step>+timestamp+...png (plus a compressed preview)
    files = [f.path for f in client.list_artifacts(run_id, "images")]
    grids = sorted(p for p in files if p.startswith("images/explain~all+step+") and
                   p.endswith(".png"))
    assert [p.split("+")[2] for p in grids] == ["1", "3"], files
    local = client.download_artifacts(run_id, grids[0], str(tmp_path / "down"))
    picture = np.asarray(Image.open(io.BytesIO(open(local, "rb").read())).convert("RGB"))
    assert picture.ndim == 3 and picture.shape[0] > 2 * 64 and picture.shape[1] > 3 * 64
