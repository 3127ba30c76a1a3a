"""Parity with Quantus 0.6's localisation metrics on the same maps and masks.

Quantus lives in a separate environment (it pins its own dependencies); this module skips
when it is not importable. Run it there::

    PYTHONPATH=. /work/venv-quantus/bin/python -m pytest tests/metrics/test_localization_quantus.py

Quantus scores one-channel maps ``(N, 1, H, W)`` against ``(N, 1, H, W)`` masks and
normalises each map by its maximum (a positive factor, which none of these scores see).
Where Quantus deviates from the papers the comparison stays inside the inputs on which
both definitions agree (documented in docs/metrics.md): continuous maps (no ties), no
empty masks, the unweighted attribution localisation.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

import lit_explain.metrics as lm

quantus = pytest.importorskip("quantus")


@pytest.fixture(scope="module")
def batch():
    """Signed maps, images and masks of varied sizes (boxes, blobs, single pixels)."""
    rng = np.random.default_rng(0)
    n, h, w = 48, 20, 24
    x = rng.random((n, 3, h, w)).astype(np.float32)
    a = rng.normal(size=(n, 1, h, w)).astype(np.float32)
    a[: n // 2] += 0.5  # half of the maps mostly positive, half centred
    s = np.zeros((n, 1, h, w), dtype=np.float32)
    for i in range(n):
        y0, x0 = rng.integers(0, h - 2), rng.integers(0, w - 2)
        s[i, 0, y0 : y0 + rng.integers(1, 9), x0 : x0 + rng.integers(1, 9)] = 1
    s[::7] = (rng.random((len(s[::7]), 1, h, w)) < 0.2).astype(np.float32)  # scattered
    # the pointing game: make a third of the maxima land in the mask
    for i in range(0, n, 3):
        ys, xs = np.nonzero(s[i, 0])
        a[i, 0, ys[0], xs[0]] = a[i].max() + 1.0
    return x, np.zeros(n, dtype=int), a, s


def quantus_scores(metric, batch) -> np.ndarray:
    x, y, a, s = batch
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a float64 copy: both sides do the sums in float64
        scores = metric(model=None, x_batch=x, y_batch=y, a_batch=a.astype(np.float64),
                        s_batch=s)
    return np.asarray(scores, dtype=np.float64)


CASES = [
    ("relevance_mass_accuracy", {}, quantus.RelevanceMassAccuracy, {}),
    ("relevance_mass_accuracy", {"values": "abs"}, quantus.RelevanceMassAccuracy, {"abs": True}),
    ("relevance_rank_accuracy", {}, quantus.RelevanceRankAccuracy, {}),
    ("relevance_rank_accuracy", {"absolute": True}, quantus.RelevanceRankAccuracy,
     {"abs": True}),
    ("pointing_game", {}, quantus.PointingGame, {}),
    # Quantus's default takes |R|; Kohlbrenner et al.'s definition (ours) the positive part
    ("attribution_localisation", {"absolute": True}, quantus.AttributionLocalisation, {}),
    ("attribution_localisation", {}, quantus.AttributionLocalisation,
     {"abs": False, "positive_attributions": True}),
    ("top_k_intersection", {"k": 25}, quantus.TopKIntersection, {"k": 25}),
    ("top_k_intersection", {"k": 40, "concept_influence": True}, quantus.TopKIntersection,
     {"k": 40, "concept_influence": True}),
]


@pytest.mark.parametrize(("name", "ours_kwargs", "theirs", "theirs_kwargs"), CASES,
                         ids=[f"{c[0]}-{i}" for i, c in enumerate(CASES)])
def test_matches_quantus_per_sample_and_in_the_mean(batch, name, ours_kwargs, theirs,
                                                      theirs_kwargs):
    expected = quantus_scores(theirs(disable_warnings=True, display_progressbar=False,
                                     **theirs_kwargs), batch)
    _, _, a, s = batch
    metric = lm.create_metric(name, **ours_kwargs)
    a_t, s_t = torch.from_numpy(a), torch.from_numpy(s)
    got = metric.per_sample(a_t, s_t).numpy()
    assert np.isfinite(expected).all() and np.isfinite(got).all()
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-6)
    for chunk in range(0, len(a), 20):  # sum/count states over uneven batches
        metric.update(a_t[chunk : chunk + 20], s_t[chunk : chunk + 20])
    assert abs(float(metric.compute()) - expected.mean()) < 1e-6
    if name == "pointing_game":  # the fixture makes both outcomes occur
        assert 0 < expected.mean() < 1
