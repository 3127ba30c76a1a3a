"""Every config in ``configs/`` runs through ``lit-explain fit`` and logs explanation images."""

from __future__ import annotations

import glob
import os
import sys
from pathlib import Path

import pytest
import yaml
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from lit_explain.cli import main

CONFIGS = sorted((Path(__file__).resolve().parents[2] / "configs").glob("*.yaml"))
TINY = ["--trainer.max_epochs=1", "--trainer.limit_train_batches=2",
        "--trainer.limit_val_batches=1", "--trainer.enable_progress_bar=false",
        "--trainer.log_every_n_steps=1"]


def image_tags(save_dir: Path) -> dict[str, list[int]]:
    """Image tag -> its steps, across every TensorBoard event file under ``save_dir``."""
    tags: dict[str, list[int]] = {}
    for event_file in glob.glob(os.path.join(save_dir, "**", "events.out.tfevents.*"),
                                recursive=True):
        events = EventAccumulator(event_file, size_guidance={"images": 0})
        events.Reload()
        for tag in events.Tags()["images"]:
            tags.setdefault(tag, []).extend(e.step for e in events.Images(tag))
    return tags


def test_there_is_a_config_per_analyzer_family():
    names = {path.stem for path in CONFIGS}
    assert {"digits", "gradient_family", "lrp_presets", "patterns", "metrics_drift"} <= names


def explain_analyzers(config: Path) -> list[str]:
    """The analyzer names of the config's ExplainCallback."""
    callbacks = yaml.safe_load(config.read_text())["trainer"]["callbacks"]
    (explain,) = [c for c in callbacks if c["class_path"].endswith("ExplainCallback")]
    return list(explain["init_args"]["analyzers"])


@pytest.mark.parametrize("config", CONFIGS, ids=[path.stem for path in CONFIGS])
def test_config_fits_and_logs_explanations(config, tmp_path, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["lit-explain"])  # pytest's own arguments are not ours
    # grids=both: a picture per analyzer as well, so that each analyzer shows it ran
    main(["fit", f"--config={config}", *TINY, f"--trainer.default_root_dir={tmp_path}",
          f"--trainer.logger.init_args.save_dir={tmp_path / 'runs'}",
          "--trainer.callbacks.grids=both"])

    expected = {f"explain/{name}" for name in explain_analyzers(config)} | {"explain/all"}
    tags = image_tags(tmp_path / "runs")
    assert expected <= set(tags), f"missing: {sorted(expected - set(tags))}"
    # one epoch of two steps, explained once, at val_loss's step (the last batch's, 1)
    assert all(tags[tag] == [1] for tag in expected)


def test_fit_without_a_config_trains_the_demo_with_the_callback(tmp_path, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["lit-explain"])
    main(["fit", *TINY, f"--trainer.default_root_dir={tmp_path}",
          "--trainer.callbacks.metrics=[sparseness]"])
    tags = image_tags(tmp_path)
    assert "explain/all" in tags  # one picture, a column per analyzer (grids="combined")


def test_a_configs_callback_gets_the_class_defaults_of_what_it_leaves_unset(tmp_path,
                                                                            monkeypatch):
    """A config's ExplainCallback, first in its list, took the default callback's metrics
    and stratified samples (configs/clever_hans.yaml explained 1 watermarked digit of 16)."""
    import lightning as L

    import lit_explain as lx
    from lit_explain.cli import ExplainCLI

    config = tmp_path / "one.yaml"
    config.write_text("trainer:\n  logger: false\n  callbacks:\n"
                      "    - class_path: lit_explain.ExplainCallback\n"
                      "      init_args:\n        analyzers: [lrp.epsilon]\n")
    monkeypatch.setattr(sys, "argv", ["lit-explain"])
    cli = ExplainCLI(L.LightningModule, L.LightningDataModule, subclass_mode_model=True,
                     subclass_mode_data=True, args=["--config", str(config)], run=False)
    (callback,) = [c for c in cli.trainer.callbacks if isinstance(c, lx.ExplainCallback)]
    expected = lx.ExplainCallback(analyzers=["lrp.epsilon"])
    assert list(callback.analyzer_specs) == ["lrp.epsilon"]
    assert callback.metric_specs == expected.metric_specs == {}
    assert callback._probe_options == expected._probe_options


@pytest.mark.parametrize("argv", [["--help"], ["fit", "--help"]])
def test_help_says_how_to_turn_the_callback_on_and_points_to_configs(argv, capsys,
                                                                     monkeypatch):
    monkeypatch.setattr(sys, "argv", ["lit-explain"])
    with pytest.raises(SystemExit):
        main(argv)
    out = " ".join(capsys.readouterr().out.split())
    assert "ExplainCallback" in out and "--trainer.callbacks.analyzers" in out
    assert "configs/" in out and "lit-explain fit --config configs/digits.yaml" in out
