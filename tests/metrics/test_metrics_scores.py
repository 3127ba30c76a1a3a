"""FaithfulnessCorrelation, Sparseness, Complexity, AttributionDrift, the registry."""

import math

import pytest
import torch
from metrics_helpers import tiny_cnn

import lit_explain.metrics as lm
from lit_explain.metrics import (
    AttributionDrift,
    Complexity,
    FaithfulnessCorrelation,
    Sparseness,
    create_metric,
)
from lit_explain.metrics.drift import (
    average_ranks,
    drift_measures,
    spearman,
    ssim,
    topk_intersection,
)


def test_faithfulness_correlation_is_one_for_the_exact_linear_map(linear_setup):
    # Removing a subset S drops the logit by exactly sum_S w_i x_i = sum_S a_i.
    model, x, _, exact, random_map = linear_setup
    m = FaithfulnessCorrelation(model, n_subsets=20, subset_size=8)
    m.update(x, exact)
    torch.testing.assert_close(m.compute(), torch.tensor(1.0, dtype=torch.float64))
    r = FaithfulnessCorrelation(model, n_subsets=20, subset_size=8)
    r.update(x, random_map)
    assert r.compute() < 0.5


def test_faithfulness_correlation_is_seeded_and_batch_size_free():
    model, x, a = tiny_cnn(), torch.rand(4, 3, 8, 8), torch.randn(4, 1, 8, 8)
    values = []
    for batch_size in (3, 500):
        m = FaithfulnessCorrelation(model, n_subsets=10, subset_size=0.2, batch_size=batch_size)
        m.update(x, a)
        values.append(m.compute())
    torch.testing.assert_close(values[0], values[1])
    with pytest.raises(ValueError, match="subset_size"):
        FaithfulnessCorrelation(model, subset_size=1.5)


def test_gini_of_one_hot_constant_and_hand_example():
    n = 100
    one_hot = torch.zeros(2, n)
    one_hot[:, 7] = -3.0
    s = Sparseness()
    s.update(one_hot)
    torch.testing.assert_close(s.compute(), torch.tensor((n - 1) / n, dtype=torch.float64))
    c = Sparseness()
    c.update(torch.full((3, 4, 5), 2.0))
    c.update(torch.zeros(1, 4, 5))  # all-zero maps count as constant
    assert c.compute() == 0
    h = Sparseness()
    h.update(torch.tensor([[0.0, 1.0, 0.0, 1.0]]))  # sum (2i - n - 1) a_(i) / (n sum a) = 4/8
    torch.testing.assert_close(h.compute(), torch.tensor(0.5, dtype=torch.float64))


def test_complexity_entropy_of_one_hot_and_constant_maps():
    one_hot = torch.zeros(1, 3, 4, 4)
    one_hot[0, 1, 2, 2] = 5.0
    m = Complexity()
    m.update(one_hot)
    assert m.compute() == 0
    const = Complexity()
    const.update(torch.ones(2, 3, 4, 4))
    torch.testing.assert_close(const.compute(), torch.tensor(math.log(48), dtype=torch.float64))
    norm = Complexity(normalized=True)
    norm.update(-torch.ones(2, 48))
    torch.testing.assert_close(norm.compute(), torch.tensor(1.0, dtype=torch.float64))
    assert Complexity.higher_is_better is False and Sparseness.higher_is_better is True


def test_identical_maps_have_no_drift():
    maps = torch.randn(5, 3, 9, 9, generator=torch.Generator().manual_seed(0))
    d = AttributionDrift(top_k=0.1)
    d.update(maps, maps.clone())
    for value in d.compute().values():
        torch.testing.assert_close(value, torch.tensor(1.0, dtype=torch.float64))
    assert set(d.per_sample()) == {"spearman", "topk_intersection", "ssim"}
    assert d.per_sample()["ssim"].shape == (5,)


def test_drift_hand_examples():
    assert average_ranks(torch.tensor([[3.0, 1.0, 2.0, 2.0]])).tolist() == [[3.0, 0.0, 1.5, 1.5]]
    a = torch.tensor([[1.0, 2.0, 3.0, 4.0]])
    torch.testing.assert_close(spearman(a, -a), torch.tensor([-1.0], dtype=torch.float64))
    torch.testing.assert_close(spearman(a, a**3), torch.tensor([1.0], dtype=torch.float64))
    b = torch.tensor([[4.0, 0.0, 3.0, 0.0]])  # top-2 of |a|: {2, 3}; of |b|: {0, 2}
    assert topk_intersection(a, b, 2).tolist() == [0.5]
    # Scale does not count, structure does.
    img = torch.randn(2, 1, 12, 12, generator=torch.Generator().manual_seed(1))
    d = AttributionDrift()
    d.update(img, 10 * img)
    torch.testing.assert_close(d.compute()["ssim"], torch.tensor(1.0, dtype=torch.float64))
    other = AttributionDrift()
    other.update(img, torch.randn(2, 1, 12, 12, generator=torch.Generator().manual_seed(2)))
    assert other.compute()["ssim"] < 0.5 and abs(other.compute()["spearman"]) < 0.3


def test_drift_on_tabular_maps_has_no_ssim_and_merges_like_ddp():
    g = torch.Generator().manual_seed(0)
    ref, cur = torch.randn(6, 20, generator=g), torch.randn(6, 20, generator=g)
    whole = AttributionDrift(top_k=5)
    whole.update(ref, cur)
    assert set(whole.compute()) == {"spearman", "topk_intersection"}
    parts = [AttributionDrift(top_k=5), AttributionDrift(top_k=5)]
    parts[0].update(ref[:2], cur[:2])
    parts[1].update(ref[2:], cur[2:])
    merged = AttributionDrift(top_k=5)
    for name in merged._reductions:
        a, b = getattr(parts[0], name), getattr(parts[1], name)
        setattr(merged, name, a + b)  # sums add, "cat" lists concatenate
    merged._update_count = 1
    for key, value in whole.compute().items():
        torch.testing.assert_close(merged.compute()[key], value)
    torch.testing.assert_close(merged.per_sample()["spearman"], whole.per_sample()["spearman"])


def test_registry_and_create_metric(linear_setup):
    model = linear_setup[0]
    assert set(lm.metrics) == {
        "pixel_flipping",
        "region_perturbation",
        "insertion_deletion",
        "faithfulness_correlation",
        "sparseness",
        "complexity",
        "attribution_drift",
        "relevance_mass_accuracy",
        "relevance_rank_accuracy",
        "pointing_game",
        "attribution_localisation",
        "top_k_intersection",
        "shortcut_score",
    }
    assert isinstance(create_metric("pixel_flipping", model, steps=3), lm.PixelFlipping)
    assert isinstance(create_metric("sparseness"), Sparseness)
    with pytest.raises(KeyError, match="attribution_drift"):
        create_metric("pixelflipping")
    for cls in lm.metrics.values():
        assert cls.full_state_update is False
        assert "higher_is_better" in cls.__doc__ or "lower is better" in cls.__doc__.lower()


def test_drift_tracker_update_all_equals_each_metric_alone_and_keeps_the_references():
    from lit_explain.callbacks.evaluation import DriftTracker

    g = torch.Generator().manual_seed(5)
    tracker = DriftTracker(("previous", "first"))
    epochs = [{"a": torch.randn(4, 1, 8, 8, generator=g), "b": torch.randn(4, 1, 8, 8, generator=g),
               "flat": torch.randn(4, 30, generator=g)} for _ in range(4)]
    got_by_epoch = []
    for epoch, maps in enumerate(epochs):
        got = tracker.update_all(maps, epoch, on_failure=pytest.fail)
        got_by_epoch.append(got)
        if epoch == 0:
            assert got == {}  # nothing to compare with yet
        else:
            assert set(got) == set(maps)
        for name, current in maps.items():
            expected = {}
            for reference, index in (("previous", epoch - 1), ("first", 0)):
                if epoch == 0:
                    continue
                alone = AttributionDrift()  # this analyzer and reference on their own
                alone.update(epochs[index][name], current)
                expected.update({f"drift_{reference}_{measure}": float(value)
                                 for measure, value in alone.compute().items()})
            assert list(got.get(name, {})) == list(expected)  # same keys, same order
            for key, value in expected.items():
                assert got[name][key] == pytest.approx(value, rel=1e-12, abs=1e-12)
            assert torch.equal(tracker.previous[name], current)
            assert torch.equal(tracker.first[name], epochs[0][name])
    assert tracker.epochs == {"a": [1, 2, 3], "b": [1, 2, 3], "flat": [1, 2, 3]}
    assert tracker.history["a"]["drift_first_ssim"] == [
        got_by_epoch[e]["a"]["drift_first_ssim"] for e in (1, 2, 3)]
    assert "drift_first_ssim" not in tracker.history["flat"]  # no SSIM of flat maps



def test_drift_tracker_skips_only_the_analyzer_whose_maps_cannot_be_measured(monkeypatch):
    from lit_explain.callbacks import evaluation
    from lit_explain.callbacks.evaluation import DriftTracker

    def measures(reference, current, *args, **kwargs):  # one that fails on infinite values
        if not bool(torch.isfinite(current).all()):
            raise ValueError("not finite")
        return drift_measures(reference, current, *args, **kwargs)

    monkeypatch.setattr(evaluation, "drift_measures", measures)
    g = torch.Generator().manual_seed(6)
    tracker = DriftTracker(("previous",))
    first = {name: torch.randn(3, 1, 6, 6, generator=g) for name in ("good", "bad")}
    tracker.update_all(first, 0, on_failure=pytest.fail)
    failures = []
    second = {"good": torch.randn(3, 1, 6, 6, generator=g),
              "bad": torch.full((3, 1, 6, 6), float("inf"))}
    got = tracker.update_all(second, 1, on_failure=lambda name, error: failures.append(name))
    assert failures == ["bad"] and set(got) == {"good"}
    assert torch.equal(tracker.previous["good"], second["good"])
    assert torch.equal(tracker.previous["bad"], first["bad"])  # not kept
    alone = AttributionDrift()
    alone.update(first["good"], second["good"])
    for measure, value in alone.compute().items():
        assert got["good"][f"drift_previous_{measure}"] == pytest.approx(float(value))

def test_ssim_is_the_mean_over_gaussian_windows_of_the_ssim_formula():
    # Wang et al. 2004, eq. 13, with a 7x7 Gaussian window (sigma 1.5) at every position
    # where it fits, on channel-summed maps divided by their largest |value| (data range 2)
    g = torch.Generator().manual_seed(4)
    a, b = torch.randn(3, 2, 10, 9, generator=g), torch.randn(3, 2, 10, 9, generator=g)
    t = torch.arange(7, dtype=torch.float64) - 3
    w = torch.exp(-0.5 * (t / 1.5) ** 2)
    w = torch.outer(w, w) / torch.outer(w, w).sum()
    expected = []
    for i in range(3):
        x, y = a[i].double().sum(0), b[i].double().sum(0)
        x, y = x / x.abs().max(), y / y.abs().max()
        values = []
        for r in range(10 - 6):
            for c in range(9 - 6):
                px, py = x[r:r + 7, c:c + 7], y[r:r + 7, c:c + 7]
                mx, my = (w * px).sum(), (w * py).sum()
                vx, vy = (w * px * px).sum() - mx**2, (w * py * py).sum() - my**2
                cxy = (w * px * py).sum() - mx * my
                c1, c2 = 0.02**2, 0.06**2
                values.append((2 * mx * my + c1) * (2 * cxy + c2)
                              / ((mx**2 + my**2 + c1) * (vx + vy + c2)))
        expected.append(torch.stack(values).mean())
    torch.testing.assert_close(ssim(a, b), torch.stack(expected), rtol=1e-12, atol=1e-12)


def test_spearman_with_known_ranks_equals_spearman_alone():
    g = torch.Generator().manual_seed(6)
    a = torch.randn(5, 40, generator=g).round(decimals=1)  # ties
    b = torch.randn(5, 40, generator=g)
    b[0] = a[0]
    expected = spearman(a, b)
    ra, rb = average_ranks(a.double()), average_ranks(b.double())
    torch.testing.assert_close(spearman(a, b, ra, rb), expected, rtol=0, atol=0)
    torch.testing.assert_close(spearman(a, b, ranks_b=rb), expected, rtol=0, atol=0)
    assert expected[0] == 1.0


def test_topk_intersection_breaks_ties_by_row_major_position():
    # one-hot at (0, 0) against the same plus an entry at (0, 1); the other 4094 entries tie
    # at 0: the top 1024 are the first row-major positions in both, sharing all but one
    a = torch.zeros(1, 64, 64)
    a[0, 0, 0] = 1.0
    b = a.clone()
    b[0, 0, 1] = 0.5
    assert topk_intersection(a, b, 0.25).tolist() == [1.0]
    b[0, 63, 63] = 0.5  # now in b's top 1024, not in a's (which ends at row-major 1023)
    assert topk_intersection(a, b, 0.25).tolist() == [1023 / 1024]


def test_sparseness_and_complexity_hold_up_to_float64s_largest_values():
    # Gini: one-hot (n-1)/n; sorted a_i = i * c: sum (2i - 5) i c / (4 * 10 c) = 10/40;
    # entropy of a constant map: log n, whatever the constant
    big = torch.float64
    one_hot = torch.tensor([[0.0, 0.0, 0.0, 1e308]], dtype=big)
    ramp = torch.tensor([[4e307, 1e307, 3e307, 2e307]], dtype=big)
    for maps, gini in ((one_hot, 0.75), (ramp, 0.25)):
        s = Sparseness()
        s.update(maps)
        torch.testing.assert_close(s.compute(), torch.tensor(gini, dtype=big))
    c, normalized = Complexity(), Complexity(normalized=True)
    for metric in (c, normalized):
        metric.update(torch.full((2, 4), 1e308, dtype=big))
    torch.testing.assert_close(c.compute(), torch.tensor(math.log(4), dtype=big))
    torch.testing.assert_close(normalized.compute(), torch.tensor(1.0, dtype=big))


def test_drift_of_boolean_maps_is_the_drift_of_their_0_1_values():
    a = torch.tensor([[True, False, True, False]])
    b = torch.tensor([[True, True, False, False]])
    # top 2 of a: {0, 2}; of b: {0, 1}; they share position 0
    assert topk_intersection(a, b, 2).tolist() == [0.5]
    g = torch.Generator().manual_seed(0)
    a, b = torch.rand(3, 1, 6, 6, generator=g) > 0.5, torch.rand(3, 1, 6, 6, generator=g) > 0.5
    as_bool, as_float = AttributionDrift(top_k=0.25), AttributionDrift(top_k=0.25)
    as_bool.update(a, b)
    as_float.update(a.double(), b.double())
    assert as_bool.compute() == as_float.compute()
