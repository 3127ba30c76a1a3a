"""Each script in ``examples/`` runs end to end on a tiny budget and logs its explanations."""

from __future__ import annotations

import glob
import importlib.util
import os
import struct
import sys
from pathlib import Path
from types import ModuleType

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
CURVE_METRICS = ("pixel_flipping", "region_perturbation")
TINY = ["--max-epochs", "2", "--limit-train-batches", "2", "--limit-val-batches", "1"]


def load_example(name: str) -> ModuleType:
    """Import ``examples/<name>.py`` as a module (``examples/`` is not a package)."""
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # LightningModules defined there must be importable
    spec.loader.exec_module(module)
    return module


def logged_images(log_dir: str) -> dict[str, list]:
    """Tag -> the image events (``encoded_image_string``, ``width``, ``height``, ``step``)."""
    (event_file,) = glob.glob(os.path.join(log_dir, "events.out.tfevents.*"))
    events = EventAccumulator(event_file, size_guidance={"images": 0})
    events.Reload()
    return {tag: events.Images(tag) for tag in events.Tags()["images"]}


def logged_scalars(log_dir: str) -> set[str]:
    """The scalar tags of a run."""
    (event_file,) = glob.glob(os.path.join(log_dir, "events.out.tfevents.*"))
    events = EventAccumulator(event_file)
    events.Reload()
    return set(events.Tags()["scalars"])


def png_size(data: bytes) -> tuple[int, int]:
    """(width, height) from a PNG's IHDR chunk."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", data[16:24])


@pytest.mark.parametrize("name", ["digits_demo", "resnet_synthetic", "tabular_mlp"])
def test_example_logs_one_grid_per_analyzer_and_epoch(name, tmp_path, capsys):
    example = load_example(name)
    extra = ["--every-n-epochs", "1"] if name == "tabular_mlp" else []
    extra += ["--num-train", "128"] if name == "resnet_synthetic" else []
    log_dir = example.main([*TINY, *extra, "--num-samples", "3", "--save-dir", str(tmp_path)])

    assert Path(log_dir).is_relative_to(tmp_path)
    assert log_dir in capsys.readouterr().out  # the script says where to look
    images = logged_images(log_dir)
    grids = {"explain/all"}  # one picture, a column per analyzer
    curves = {f"explain/{a}/{m}_curve" for a in example.ANALYZERS for m in example.METRICS
              if m in CURVE_METRICS}
    drifts = {f"explain/{a}/drift" for a in example.ANALYZERS}  # drift is on by default
    assert set(images) == grids | curves | drifts
    for tag in grids:
        # each epoch (of two batches), at val_loss's step (the epoch's last batch)
        assert [e.step for e in images[tag]] == [1, 3], tag
    for tag in curves | drifts:
        # once, at the end of training, at the last explained epoch's step
        assert [e.step for e in images[tag]] == [3], tag
    for events in images.values():
        for event in events:
            assert png_size(event.encoded_image_string) == (event.width, event.height)
    scalars = logged_scalars(log_dir)
    assert {f"explain/{a}/{m}" for a in example.ANALYZERS for m in example.METRICS} <= scalars
