"""examples/vit_digits.py and examples/text_transformer.py with tiny budgets: the callback
explains a transformer every epoch (AttnLRP, CP-LRP and the gradient family) and logs maps."""

from __future__ import annotations

import pytest
from test_examples import load_example, logged_images

TINY = ["--max-epochs", "2", "--limit-train-batches", "2", "--limit-val-batches", "1",
        "--num-samples", "4"]


@pytest.mark.parametrize("name", ["vit_digits", "text_transformer"])
def test_the_transformer_example_logs_every_analyzer_every_epoch(name, tmp_path, capsys):
    if name == "vit_digits":
        pytest.importorskip("sklearn")
    example = load_example(name)
    extra = ["--num-train", "128"] if name == "text_transformer" else []
    with _no_failure_warnings():
        log_dir = example.main([*TINY, *extra, "--save-dir", str(tmp_path)])
    images = logged_images(log_dir)
    # one picture, a column per analyzer, every epoch (no analyzer failed: see above)
    assert [e.step for e in images["explain/all"]] == [1, 3]  # at val_loss's steps
    if name == "text_transformer":
        assert "+" in capsys.readouterr().out  # the words with their relevance
        for analyzer in example.ANALYZERS:  # token deletion scored every map (plotted once,
            # at the end of training)
            assert len(images[f"explain/{analyzer}/pixel_flipping_curve"]) == 1, analyzer


class _no_failure_warnings:
    """Fails if the callback warned that an analyzer or metric failed (on_error='warn')."""

    def __enter__(self):
        import warnings

        self._catch = warnings.catch_warnings(record=True)
        self._records = self._catch.__enter__()
        warnings.simplefilter("always")

    def __exit__(self, *exc):
        self._catch.__exit__(*exc)
        failures = [str(r.message) for r in self._records
                    if "fail" in str(r.message).lower() or "dropped" in str(r.message).lower()]
        assert not failures, failures
