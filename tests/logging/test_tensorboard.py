"""What TensorBoard gets: scalars of one call in one event, under the tags and values that
Lightning's own ``TensorBoardLogger.log_metrics`` writes; pictures as PNG that decode to
the logged pixels. Other loggers get ``log_metrics``."""

from __future__ import annotations

import csv
import glob
import io
import math
import os

import numpy as np
import pytest
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from PIL import Image
from tensorboard.backend.event_processing import event_file_loader
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from lit_explain.logging import log_images, log_scalars

VALUES = {"explain/gradient/sparseness": 0.25, "explain/gradient/drift_first_ssim": -0.5,
          "explain/time_s": 0.0123, "explain/lrp.epsilon/pixel_flipping": 3.0,
          "explain/x/nan": math.nan}


def _events(log_dir: str) -> tuple[str, list]:
    (event_file,) = glob.glob(os.path.join(log_dir, "events.out.tfevents.*"))
    return event_file, [e for e in event_file_loader.EventFileLoader(event_file).Load()
                        if e.HasField("summary")]


def _scalars(event_file: str) -> dict[str, list[tuple[int, float]]]:
    events = EventAccumulator(event_file)
    events.Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)]
            for tag in events.Tags()["scalars"]}


@pytest.mark.parametrize("prefix", ["", "run1"])
def test_tensorboard_gets_every_value_in_one_event_as_log_metrics_would(tmp_path, prefix):
    ours = TensorBoardLogger(str(tmp_path), name="ours", prefix=prefix)
    lightning = TensorBoardLogger(str(tmp_path), name="lightning", prefix=prefix)
    for step in (3, 7):
        log_scalars([ours], {k: v * step for k, v in VALUES.items()}, step)
        lightning.log_metrics({k: v * step for k, v in VALUES.items()}, step=step)
    ours.finalize("success")
    lightning.finalize("success")

    ours_file, ours_events = _events(ours.log_dir)
    lightning_file, lightning_events = _events(lightning.log_dir)
    assert len(ours_events) == 2 and len(lightning_events) == 2 * len(VALUES)
    assert [len(e.summary.value) for e in ours_events] == [len(VALUES)] * 2
    got, expected = _scalars(ours_file), _scalars(lightning_file)
    tags = {(f"{prefix}-{k}" if prefix else k) for k in VALUES}
    assert set(got) == set(expected) == tags
    for tag in tags:
        assert [s for s, _ in got[tag]] == [s for s, _ in expected[tag]] == [3, 7]
        for (_, a), (_, b) in zip(got[tag], expected[tag], strict=True):
            assert (math.isnan(a) and math.isnan(b)) or a == b
    assert [v for _, v in got["explain/time_s" if not prefix else "run1-explain/time_s"]] == [
        pytest.approx(0.0123 * 3), pytest.approx(0.0123 * 7)]


def test_other_loggers_get_log_metrics(tmp_path):
    logger = CSVLogger(str(tmp_path), name="csv")
    log_scalars([logger], {"explain/a": 1.5, "explain/b": 2.0}, 4)
    logger.save()
    with open(os.path.join(logger.log_dir, "metrics.csv")) as f:
        rows = list(csv.DictReader(f))
    assert rows == [{"explain/a": "1.5", "explain/b": "2.0", "step": "4"}]


def test_tensorboard_images_decode_to_the_logged_pixels(tmp_path):
    logger = TensorBoardLogger(str(tmp_path), name="tb")
    rng = np.random.default_rng(0)
    flat = np.repeat(np.repeat(rng.integers(0, 256, (9, 7, 3), dtype=np.uint8), 8, 0), 8, 1)
    noisy = rng.integers(0, 256, (40, 33, 3), dtype=np.uint8)
    log_images([logger], "explain/all", [flat], 5)
    log_images([logger], "explain/pair", [noisy, flat], 6)
    logger.finalize("success")
    event_file, _ = _events(logger.log_dir)
    events = EventAccumulator(event_file, size_guidance={"images": 0})
    events.Reload()
    for tag, step, expected in [("explain/all", 5, flat), ("explain/pair/0", 6, noisy),
                                ("explain/pair/1", 6, flat)]:
        (image,) = events.Images(tag)
        assert image.step == step and (image.height, image.width) == expected.shape[:2]
        decoded = np.asarray(Image.open(io.BytesIO(image.encoded_image_string)))
        assert np.array_equal(decoded, expected)
