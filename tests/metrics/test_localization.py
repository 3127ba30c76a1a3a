"""Localization metrics against hand computations on maps small enough to read."""

from __future__ import annotations

import math

import pytest
import torch

import lit_explain.metrics as lm

# One 3x3 map; the mask is its top-left 2x2 block.
MAP = torch.tensor([[4.0, -1.0, 0.0],
                    [2.0, 3.0, -2.0],
                    [1.0, 5.0, 0.0]])
MASK = torch.tensor([[1, 1, 0],
                     [1, 1, 0],
                     [0, 0, 0]], dtype=torch.bool)


def one(metric, a=MAP, m=MASK) -> float:
    metric.update(a[None, None], m[None])
    return float(metric.compute())


def test_relevance_mass_accuracy_is_the_share_of_relevance_in_the_mask():
    # inside 4 - 1 + 2 + 3 = 8, total 12
    assert one(lm.RelevanceMassAccuracy()) == pytest.approx(8 / 12)
    # positive only: inside 4 + 2 + 3 = 9, total 15; |R|: inside 10, total 18
    assert one(lm.RelevanceMassAccuracy(values="positive")) == pytest.approx(9 / 15)
    assert one(lm.RelevanceMassAccuracy(values="abs")) == pytest.approx(10 / 18)


def test_relevance_rank_accuracy_counts_the_top_k_with_k_the_mask_size():
    # K = 4; the four largest are 5 (outside), 4, 3, 2 (inside): 3 of 4
    assert one(lm.RelevanceRankAccuracy()) == pytest.approx(3 / 4)
    # |R|: 5, 4, 3, then 2 and -2 tie; the earlier one (2, inside) ranks first: 3 of 4
    assert one(lm.RelevanceRankAccuracy(absolute=True)) == pytest.approx(3 / 4)


def test_rank_ties_go_to_the_earlier_position():
    a = torch.tensor([[1.0, 1.0, 1.0, 1.0]])
    first, last = torch.tensor([[True, False, False, False]]), torch.tensor([[False] * 3 + [True]])
    assert one(lm.RelevanceRankAccuracy(), a[0], first[0]) == 1.0
    assert one(lm.RelevanceRankAccuracy(), a[0], last[0]) == 0.0


def test_pointing_game_hits_when_the_maximum_is_in_the_mask():
    assert one(lm.PointingGame()) == 0.0  # the maximum, 5, is at (2, 1)
    assert one(lm.PointingGame(), MAP.clone().fill_diagonal_(9.0)[:, :]) == 1.0  # (0, 0) is in


def test_pointing_game_tolerance_is_a_euclidean_radius():
    a = torch.zeros(7, 7)
    m = torch.zeros(7, 7, dtype=torch.bool)
    m[3, 3] = True
    a[4, 4] = 1.0  # a diagonal neighbour of the mask: distance sqrt(2)
    assert one(lm.PointingGame(tolerance=0), a, m) == 0.0
    assert one(lm.PointingGame(tolerance=1), a, m) == 0.0
    assert one(lm.PointingGame(tolerance=1.5), a, m) == 1.0
    a.zero_()
    a[3, 5] = 1.0  # two pixels to the right
    assert one(lm.PointingGame(tolerance=1.5), a, m) == 0.0
    assert one(lm.PointingGame(tolerance=2), a, m) == 1.0


@pytest.mark.parametrize("mask_shape", ["(N, H, W)", "(N, 1, H, W)"])
def test_pointing_game_tolerance_on_a_map_without_channels(mask_shape):
    # (with a one-channel mask the map was taken for a sequence of H channels: the mask grew
    # along W only, a miss)
    a, m = torch.zeros(1, 5, 5), torch.zeros(1, 5, 5, dtype=torch.bool)
    a[0, 1, 2], m[0, 2, 2] = 1.0, True  # the maximum one pixel above the mask
    masks = m if mask_shape == "(N, H, W)" else m[:, None]
    metric = lm.PointingGame(tolerance=1)
    metric.update(a, masks)
    assert float(metric.compute()) == 1.0


def test_pointing_game_tolerance_on_volumes():
    # (masks of volumes were not grown: a miss at any tolerance)
    a, m = torch.zeros(1, 1, 4, 5, 5), torch.zeros(1, 1, 4, 5, 5, dtype=torch.bool)
    a[0, 0, 1, 2, 2], m[0, 0, 2, 3, 2] = 1.0, True  # distance √2
    for tolerance, hit in ((1, 0.0), (1.5, 1.0)):
        metric = lm.PointingGame(tolerance=tolerance)
        metric.update(a, m)
        assert float(metric.compute()) == hit


def test_pointing_game_counts_any_of_tied_maxima():
    a = torch.zeros(3, 3)
    a[0, 0] = a[2, 2] = 1.0
    assert one(lm.PointingGame(), a) == 1.0


def test_attribution_localisation_uses_positive_relevance_and_its_weighted_variant():
    # positive: inside 9 of 15; weighted by |S| / |M| = 9 / 4
    assert one(lm.AttributionLocalisation()) == pytest.approx(9 / 15)
    assert one(lm.AttributionLocalisation(weighted=True)) == pytest.approx(9 / 15 * 9 / 4)
    assert one(lm.AttributionLocalisation(absolute=True)) == pytest.approx(10 / 18)


def test_attribution_localisation_skips_masks_over_max_size():
    metric = lm.AttributionLocalisation(max_size=1 / 3)  # the mask covers 4/9
    metric.update(MAP[None, None], MASK[None])
    assert math.isnan(float(metric.compute())) and int(metric.skipped) == 1


def test_top_k_intersection():
    # top 3: 5 (out), 4, 3 (in) -> 2/3; concept influence x 9/4
    assert one(lm.TopKIntersection(k=3)) == pytest.approx(2 / 3)
    assert one(lm.TopKIntersection(k=3, concept_influence=True)) == pytest.approx(2 / 3 * 9 / 4)
    with pytest.raises(ValueError, match="k=10 exceeds the 9 entries"):
        one(lm.TopKIntersection(k=10))


def test_shortcut_score_is_the_positive_share_outside():
    # positive relevance 15, of which 1 + 5 = 6 outside the mask
    assert one(lm.ShortcutScore()) == pytest.approx(6 / 15)


def test_empty_masks_are_skipped_and_counted_not_nan():
    a = MAP.expand(3, 1, 3, 3)
    masks = torch.stack([MASK, torch.zeros_like(MASK), MASK])
    for name in lm.localization_metrics:
        metric = lm.create_metric(name, **({"k": 3} if name == "top_k_intersection" else {}))
        metric.update(a, masks)
        alone = lm.create_metric(name, **({"k": 3} if name == "top_k_intersection" else {}))
        alone.update(a[:1], masks[:1])
        assert int(metric.count) == 2 and int(metric.skipped) == 1, name
        assert float(metric.compute()) == pytest.approx(float(alone.compute())), name
        assert torch.isnan(metric.per_sample(a, masks)[1]), name
    nothing = lm.RelevanceMassAccuracy()
    nothing.update(a[:1], torch.zeros(1, 3, 3))
    assert math.isnan(float(nothing.compute()))  # no sample could be scored


def test_a_map_without_relevance_is_skipped_by_the_mass_scores():
    metric = lm.ShortcutScore()
    metric.update(-MAP.abs()[None, None], MASK[None])  # no positive relevance at all
    assert int(metric.skipped) == 1 and int(metric.count) == 0


def test_mass_shares_of_maps_near_the_largest_float_are_shares():
    """[1e308, 1e308, 0, 0] with the first in the mask: half of the mass by hand; its sum
    overflowed to inf, and the shares were 0 (1 for the shortcut score)."""
    a = torch.tensor([[1e308, 1e308, 0.0, 0.0]], dtype=torch.float64)
    m = torch.tensor([[True, False, False, False]])
    for metric in (lm.RelevanceMassAccuracy(), lm.AttributionLocalisation(),
                   lm.ShortcutScore()):
        metric.update(a, m)
        assert float(metric.compute()) == 0.5, type(metric).__name__


def test_a_signed_map_whose_relevance_cancels_out_is_skipped_by_the_mass_scores():
    """[0.1, 0.2, -0.3, 0] sums to 5.6e-17 in floats, rounding only: its share was 1.8e15,
    and the mean with a sample of 0.5 was 9e14."""
    metric = lm.RelevanceMassAccuracy()
    metric.update(torch.tensor([[0.1, 0.2, -0.3, 0.0], [1.0, 1.0, 0.0, 0.0]],
                               dtype=torch.float64),
                  torch.tensor([[True, False, False, False]] * 2))
    assert (float(metric.compute()), int(metric.skipped)) == (0.5, 1)


def test_spatial_masks_sum_the_channels_or_broadcast_over_them():
    a = torch.stack([MAP, 2 * MAP, -MAP])[None]  # (1, 3, 3, 3); channel sum is 2 * MAP
    for mask in (MASK[None], MASK[None, None], MASK[None].float()):
        metric = lm.RelevanceRankAccuracy()
        metric.update(a, mask)
        assert float(metric.compute()) == pytest.approx(3 / 4)  # as for MAP itself
    # broadcast over the channels: inside 8 + 16 - 8, total 12 + 24 - 12
    metric = lm.RelevanceMassAccuracy(channel_reduce=None)
    metric.update(a, MASK[None])
    assert float(metric.compute()) == pytest.approx((8 + 16 - 8) / (12 + 24 - 12))
    full = MASK.expand(3, 3, 3).clone()
    full[2] = False  # a full-shape mask is used as it is
    metric = lm.RelevanceMassAccuracy()
    metric.update(a, full[None])
    assert float(metric.compute()) == pytest.approx((8 + 16) / 24)


def test_tabular_and_sequence_maps():
    a = torch.tensor([[3.0, -1.0, 2.0, 0.5]])
    m = torch.tensor([[True, False, True, False]])
    assert one(lm.RelevanceMassAccuracy(), a[0], m[0]) == pytest.approx(5 / 4.5)
    metric = lm.PointingGame(tolerance=1)
    metric.update(torch.tensor([[[0.0, 0.0, 0.0, 1.0]]]), torch.tensor([[[0, 0, 1, 0]]]))
    assert float(metric.compute()) == 1.0  # sequences (N, C, L): a tolerance along L


def test_bad_masks_fail_with_the_shapes_named():
    with pytest.raises(ValueError, match="only 0 and 1"):
        lm.RelevanceMassAccuracy().update(MAP[None, None], 2 * MASK[None].float())
    with pytest.raises(ValueError, match=r"masks of shape \(1, 2, 2\) do not fit"):
        lm.RelevanceMassAccuracy().update(MAP[None, None], MASK[None, :2, :2])
    with pytest.raises(ValueError, match="values='relu'"):
        lm.RelevanceMassAccuracy(values="relu")
    with pytest.raises(ValueError, match="tolerance"):
        lm.PointingGame(tolerance=-1)


def test_states_are_sums_and_counts_that_merge_by_addition():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(10, 1, 6, 6, generator=g)
    m = torch.rand(10, 6, 6, generator=g) < 0.3
    whole, parts = lm.RelevanceRankAccuracy(), lm.RelevanceRankAccuracy()
    whole.update(a, m)
    parts.update(a[:4], m[:4])
    merged = lm.RelevanceRankAccuracy()
    merged.update(a[4:], m[4:])
    parts.merge_state(merged)
    assert float(parts.compute()) == pytest.approx(float(whole.compute()))
    assert all(fx == "sum" or getattr(fx, "__name__", "") == "dim_zero_sum"
               for fx in whole._reductions.values())
    per = whole.per_sample(a, m)
    assert float(whole.compute()) == pytest.approx(float(per[~per.isnan()].mean()))


def test_a_channel_less_map_takes_a_mask_with_one_channel_and_array_masks():
    torch.manual_seed(3)
    a = torch.rand(2, 4, 5)
    m = torch.rand(2, 4, 5) > 0.6
    expected = lm.RelevanceMassAccuracy().per_sample(a, m)
    torch.testing.assert_close(lm.RelevanceMassAccuracy().per_sample(a, m[:, None]), expected)
    torch.testing.assert_close(lm.RelevanceMassAccuracy().per_sample(a, m.numpy()), expected)


def test_odd_inputs_get_named_errors_or_their_numeric_meaning():
    flags = torch.tensor([[True, False, True, True]])
    torch.testing.assert_close(lm.Complexity()(flags), lm.Complexity()(flags.double()))
    metric = lm.PixelFlipping(lambda z: z @ torch.ones(3, 2))
    with pytest.raises(ValueError, match="target='a' is not valid"):
        metric.update(torch.randn(2, 3), torch.randn(2, 3), "a")


def test_masks_given_as_lists_are_read_as_tensors():
    """The pointing game read ``masks.shape`` of a list (an AttributeError), and every metric
    did for a list of a wrong shape instead of the ValueError naming both shapes."""
    a = torch.tensor([[[[1.0, 0.0], [0.0, 0.0]]], [[[0.0, 0.0], [0.0, 2.0]]]])
    masks = [[[1, 0], [0, 0]], [[1, 0], [0, 0]]]
    pointing = lm.PointingGame()
    torch.testing.assert_close(pointing.per_sample(a, masks),
                               pointing.per_sample(a, torch.tensor(masks)))
    assert pointing.per_sample(a, masks).tolist() == [1.0, 0.0]
    with pytest.raises(ValueError, match=r"masks of shape \(2, 2\) do not fit"):
        lm.RelevanceMassAccuracy().update(a, [[1, 0], [0, 1]])


def test_shortcut_score_takes_no_values_option():
    """It always scores the positive relevance: ``values=`` raised a TypeError about a
    private base class getting it "multiple" times, and the callback listed it as accepted."""
    from lit_explain.callbacks.evaluation import build_metric

    with pytest.raises(ValueError, match="values"):
        lm.ShortcutScore(values="abs")
    with pytest.raises(ValueError, match=r"it accepts \['channel_reduce'\]"):
        build_metric("shortcut_score", torch.nn.Identity(), {"values": "abs"})
