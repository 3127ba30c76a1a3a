"""iNNvestigate's Perturbation and PerturbationAnalysis on tensors."""

import pytest
import torch
from torch import nn

from lit_explain.metrics import Perturbation, PerturbationAnalysis


def test_top_region_is_zeroed():
    x = torch.arange(1.0, 17.0).view(1, 1, 4, 4)
    analysis = torch.zeros(1, 1, 4, 4)
    analysis[0, 0, 3, 0] = 1.0  # bottom-left 2x2 region
    p = Perturbation("zeros", num_perturbed_regions=1, region_shape=(2, 2))
    out = p.perturbate_on_batch(x, analysis)
    expected = x.clone()
    expected[0, 0, 2:, :2] = 0
    assert torch.equal(out, expected) and not torch.equal(x, out)
    p.num_perturbed_regions = 0
    assert torch.equal(p.perturbate_on_batch(x, analysis), x)


def test_reflect_padding_and_region_mean_on_a_3x3_image():
    # 3x3 with 2x2 regions: pad one row/column after, by reflection (row 3 = row 1).
    x = torch.tensor([[[[1.0, 2.0, 3.0], [4.0, 5.0, 6.0], [7.0, 8.0, 9.0]]]])
    analysis = torch.zeros_like(x)
    analysis[0, 0, 2, 2] = 1.0  # the bottom-right region (only pixel 9 is real)
    p = Perturbation("mean", num_perturbed_regions=1, region_shape=2, pad_mode="reflect")
    padded, before = p.pad(x)
    assert before == (0, 0) and padded[0, 0, 3].tolist() == [4.0, 5.0, 6.0, 5.0]
    out = p.perturbate_on_batch(x, analysis)
    expected = x.clone()
    expected[0, 0, 2, 2] = (9 + 8 + 6 + 5) / 4  # mean over the reflected region
    assert torch.equal(out, expected)


def test_ordering_mask_and_region_helpers():
    agg = torch.tensor([[[[0.1, 0.9], [0.5, 0.5]]]])
    ranks = Perturbation.compute_region_ordering(agg)
    assert ranks.tolist() == [[[[3, 0], [1, 2]]]]  # ties keep their order
    assert Perturbation.compute_perturbation_mask(ranks, 2).tolist() == [
        [[[False, True], [True, False]]]
    ]
    p = Perturbation("zeros", region_shape=(2, 3))
    pix = p.expand_regions_to_pixels(agg)
    assert pix.shape == (1, 1, 2, 2, 2, 3)
    img = p.reshape_region_pixels(pix, (1, 1, 4, 6))
    assert img[0, 0, 1, 5] == 0.9 and img[0, 0, 2, 0] == 0.5
    torch.testing.assert_close(p.aggregate_regions(img), agg)


def test_in_place_value_range_invert_and_callables():
    x = torch.rand(2, 3, 4, 4)
    keep = x.clone()
    p = Perturbation("invert", num_perturbed_regions=4, region_shape=2, value_range=(0, 1))
    assert torch.equal(p.perturbate_on_batch(x, torch.rand(2, 3, 4, 4)), torch.zeros_like(x))
    assert torch.equal(x, keep)
    q = Perturbation(
        lambda b: b + 1, num_perturbed_regions=4, region_shape=2, reduce_function=torch.sum,
        aggregation_function="max", in_place=True,
    )  # fmt: skip
    out = q.perturbate_on_batch(x, torch.rand(2, 3, 4, 4))
    assert out is x and torch.allclose(x, keep + 1)
    with pytest.raises(ValueError, match="perturbation_function"):
        Perturbation("salt")
    with pytest.raises(ValueError, match="pad_mode"):
        Perturbation("zeros", pad_mode="mirror")


def test_perturbation_analysis_scores():
    class Brightness(nn.Module):
        """Class 1 when the image is brighter than 0.25 on average."""

        def forward(self, x):
            m = x.flatten(1).mean(1, keepdim=True)
            return torch.cat([0.25 - m, m - 0.25], 1)

    x = torch.full((4, 1, 4, 4), 0.5)
    y = torch.ones(4, dtype=torch.long)
    p = Perturbation("zeros", region_shape=2)
    pa = PerturbationAnalysis(lambda t: t.abs(), Brightness(), [(x[:2], y[:2]), (x[2:], y[2:])],
                              p, steps=4)  # fmt: skip
    # Mean after k of 4 regions zeroed: 0.5 (1 - k/4); accuracy falls once it reaches 0.25.
    assert pa.compute_perturbation_analysis() == [1.0, 1.0, 0.0, 0.0, 0.0]
    assert p.num_perturbed_regions == 0
    again = PerturbationAnalysis(lambda t: t.abs(), Brightness(), [(x, y)], p, steps=2,
                                 recompute_analysis=True, score="cross_entropy")  # fmt: skip
    losses = again.compute_perturbation_analysis()
    assert len(losses) == 3 and losses[0] < losses[1] < losses[2]
    with pytest.raises(ValueError, match="score"):
        PerturbationAnalysis(None, Brightness(), [(x, y, x)], p, score="f1")


def test_perturbation_ranks_a_map_in_its_own_precision():
    # region 1 (columns 2-3) sums 258.5, region 0 257.2: one region apart in bfloat16 only
    # by the map's own float32 precision
    x = torch.ones(1, 1, 2, 4, dtype=torch.bfloat16)
    analysis = torch.tensor([[[[256.0, 0.4, 257.0, 0.5], [0.4, 0.4, 0.5, 0.5]]]])
    p = Perturbation("zeros", num_perturbed_regions=1, region_shape=2)
    out = p.perturbate_on_batch(x, analysis)
    expected = torch.tensor([[[[1.0, 1.0, 0.0, 0.0], [1.0, 1.0, 0.0, 0.0]]]])
    torch.testing.assert_close(out.float(), expected)
