"""iNNvestigate's colour maps against hand computations."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lit_explain import viz

DARK_BLUE, WHITE, DARK_RED = (0.0, 0.0, 0.3), (1.0, 1.0, 1.0), (0.5, 0.0, 0.0)


def rgb(t):
    return torch.tensor(t, dtype=torch.float32)


def test_seismic_is_matplotlibs_five_anchor_segments():
    # dark blue, blue, white, red, dark red at 0, 1/4, 1/2, 3/4, 1; linear in between
    v = torch.tensor([0.0, 0.125, 0.25, 0.5, 0.625, 0.75, 1.0])
    expected = rgb([DARK_BLUE, (0, 0, 0.65), (0, 0, 1), WHITE, (1, 0.5, 0.5), (1, 0, 0), DARK_RED])
    torch.testing.assert_close(viz.seismic(v), expected)
    torch.testing.assert_close(viz.bwr(torch.tensor([0.0, 0.5, 1.0])),
                               rgb([(0, 0, 1), WHITE, (1, 0, 0)]))
    gray = viz.gray(torch.linspace(0, 1, 5))
    torch.testing.assert_close(gray, torch.linspace(0, 1, 5)[:, None].expand(5, 3))
    # out-of-range values clip to the ends
    torch.testing.assert_close(viz.seismic(torch.tensor([-3.0, 7.0])), rgb([DARK_BLUE, DARK_RED]))


def test_project_maps_minus_absmax_zero_and_absmax_to_the_range():
    x = torch.tensor([[-2.0, 0.0, 1.0, 2.0]])
    torch.testing.assert_close(viz.project(x), torch.tensor([[0.0, 0.5, 0.75, 1.0]]))
    torch.testing.assert_close(viz.project(x, output_range=(0, 255))[0, 2], torch.tensor(191.25))
    positive = viz.project(torch.tensor([[0.0, 1.0, 4.0]]), input_is_positive_only=True)
    torch.testing.assert_close(positive, torch.tensor([[0.0, 0.25, 1.0]]))
    # per sample, and a given absmax (scalar or per sample) replaces it; zero maps stay put
    two = torch.tensor([[1.0, -1.0], [4.0, 2.0]])
    torch.testing.assert_close(viz.project(two), torch.tensor([[1.0, 0.0], [1.0, 0.75]]))
    torch.testing.assert_close(viz.project(two, absmax=torch.tensor([2.0, 8.0])),
                               torch.tensor([[0.75, 0.25], [0.75, 0.625]]))
    torch.testing.assert_close(viz.project(torch.zeros(1, 3)), torch.full((1, 3), 0.5))
    assert torch.equal(two, torch.tensor([[1.0, -1.0], [4.0, 2.0]]))  # input untouched


def test_heatmap_of_positive_negative_and_zero_maps_is_red_blue_white():
    for value, colour in ((1.0, DARK_RED), (-1.0, DARK_BLUE), (0.0, WHITE)):
        out = viz.heatmap(torch.full((1, 1, 2, 2), value))
        assert out.shape == (1, 3, 2, 2)
        torch.testing.assert_close(out[0, :, 0, 0], rgb(colour))
    # one map with all three: -1 dark blue, 0 white, +1 dark red; +0.5 -> red at 3/4
    out = viz.heatmap(torch.tensor([[[[-1.0, 0.0, 0.5, 1.0]]]]))[0, :, 0].T
    torch.testing.assert_close(out, rgb([DARK_BLUE, WHITE, (1, 0, 0), DARK_RED]))


def test_heatmap_sums_channels_and_scales_each_sample_alone():
    maps = torch.stack([torch.ones(3, 2, 2), 10 * torch.ones(3, 2, 2)])
    colours = viz.heatmap(maps)
    assert colours.shape == (2, 3, 2, 2)
    torch.testing.assert_close(colours[0], colours[1])  # per-sample normalization
    shared = viz.heatmap(maps, shared_absmax=30.0)  # channel sums 3 and 30 -> 0.55 and 1
    torch.testing.assert_close(shared[1, :, 0, 0], rgb(DARK_RED))
    torch.testing.assert_close(shared[0, :, 0, 0], rgb((1.0, 0.8, 0.8)))
    # channel sum +1 -1 = 0 is white; "absmax" keeps the signed largest: -3 wins over 2
    mixed = torch.tensor([1.0, -1.0])[None, :, None, None]
    torch.testing.assert_close(viz.heatmap(mixed)[0, :, 0, 0], rgb(WHITE))
    pick = torch.tensor([2.0, -3.0])[None, :, None, None]
    torch.testing.assert_close(viz.heatmap(pick, reduce_op="absmax")[0, :, 0, 0], rgb(DARK_BLUE))
    # normalize=False takes values as they are, in [-1, 1]
    half = viz.heatmap(torch.full((1, 1, 1, 1), 0.5), normalize=False)
    torch.testing.assert_close(half[0, :, 0, 0], rgb((1.0, 0.0, 0.0)))


def test_heatmap_layouts_dtypes_and_numpy():
    assert viz.heatmap(torch.randn(2, 5, 7)).shape == (2, 3, 5, 7)  # (N, H, W)
    assert viz.heatmap(torch.randn(2, 9)).shape == (2, 3, 1, 9)  # (N, F) -> a strip
    assert viz.heatmap(torch.randn(2, 3, 4, 5, 6)).shape == (2, 3, 4, 5, 6)  # (N, C, D, H, W)
    assert viz.heatmap(torch.randn(2, 1, 4, 4), alpha_cmap=True).shape == (2, 4, 4, 4)
    assert viz.heatmap(torch.randn(1, 1, 2, 2, dtype=torch.float64)).dtype == torch.float64
    a = np.random.default_rng(0).normal(size=(2, 1, 3, 3))
    out = viz.heatmap(a)
    assert isinstance(out, np.ndarray) and out.dtype == np.float32 and out.shape == (2, 3, 3, 3)
    assert 0 <= out.min() and out.max() <= 1
    np.testing.assert_allclose(out, viz.heatmap(torch.from_numpy(a)).numpy(), atol=1e-6)
    with pytest.raises(ValueError, match="reduce_op"):
        viz.heatmap(torch.ones(1, 2, 2, 2), reduce_op="max")


def test_graymap_is_monotone_from_black_to_white():
    ramp = torch.linspace(-1, 1, 11).reshape(1, 1, 1, 11)
    gray = viz.graymap(ramp)[0, 0, 0]
    assert bool((gray[1:] > gray[:-1]).all())
    assert gray[0] == 0 and gray[5] == 0.5 and gray[-1] == 1  # signed: zero is mid-grey
    pos = viz.graymap(torch.tensor([[0.0, 2.0, 4.0]]), input_is_positive_only=True)
    torch.testing.assert_close(pos[0, 0, 0], torch.tensor([0.0, 0.5, 1.0]))


def test_gamma_keeps_order_and_sign():
    x = torch.tensor([[-4.0, -1.0, 0.0, 1.0, 4.0]])
    # y = sign(x) * 4 * (|x| / 4) ** 0.5
    torch.testing.assert_close(viz.gamma(x, gamma=0.5), torch.tensor([[-4.0, -2.0, 0.0, 2.0, 4.0]]))
    torch.testing.assert_close(viz.gamma(x, gamma=1.0), x)
    # around minamp = 1 with maxamp = 4: 5 -> 1 + 4, 2 -> 1 + 4 * (1/4) ** 0.5 = 3
    torch.testing.assert_close(viz.gamma(torch.tensor([[5.0, 2.0, 1.0]]), 0.5, minamp=1, maxamp=4),
                               torch.tensor([[5.0, 3.0, 1.0]]))
    # per sample amplitude; an all-zero sample comes back unchanged
    two = viz.gamma(torch.tensor([[1.0, 4.0], [0.0, 0.0]]), 0.5)
    torch.testing.assert_close(two, torch.tensor([[2.0, 4.0], [0.0, 0.0]]))


def test_clip_quantile_clips_to_the_percentiles():
    x = torch.arange(11.0).reshape(1, 11)  # percentiles 10 and 90 are 1 and 9
    torch.testing.assert_close(viz.clip_quantile(x, 10), x.clamp(1, 9))
    torch.testing.assert_close(viz.clip_quantile(x, (0, 50)), x.clamp(0, 5))
    # numpy's linear interpolation: the 25th percentile of 0..4 at 1, of 0, 10 at 2.5
    a = np.array([[0.0, 10.0]])
    np.testing.assert_allclose(viz.clip_quantile(a, 25), [[2.5, 7.5]])
    # per (sample, channel) with channel_axis
    xc = torch.stack([torch.arange(11.0), 10 * torch.arange(11.0)])[None]  # (1, 2, 11)
    out = viz.clip_quantile(xc, 10, channel_axis=1)
    torch.testing.assert_close(out[0, 0], xc[0, 0].clamp(1, 9))
    torch.testing.assert_close(out[0, 1], xc[0, 1].clamp(10, 90))


def test_unknown_colour_map_names_it_and_the_valid_ones():
    with pytest.raises(ValueError, match=r"'jet-ish'.*bwr.*seismic"):
        viz.heatmap(torch.ones(1, 1, 2, 2), cmap_type="jet-ish")
    assert viz.get_cmap(viz.viridis) is viz.viridis
    assert set(viz.cmaps) == {"seismic", "gray", "bwr", "coolwarm", "viridis", "oranges"}


def test_to_uint8_hwc_rounds_clips_and_moves_channels_last():
    img = torch.tensor([0.0, 0.5, 1.0, 2.0]).view(1, 1, 4).expand(3, 1, 4)
    out = viz.to_uint8_hwc(img)
    assert out.dtype == np.uint8 and out.shape == (1, 4, 3)
    assert out[0, :, 0].tolist() == [0, 128, 255, 255]
    assert viz.to_uint8_hwc(torch.zeros(2, 3, 5, 6)).shape == (2, 5, 6, 3)


def test_a_finite_map_whose_channel_sum_overflows_its_dtype_keeps_its_colours():
    # float16 ends at 65504: channel sums of +-90000 are still dark red and dark blue
    for value, dtype in ((30000.0, torch.float16), (2e38, torch.float32)):
        maps = torch.full((1, 3, 2, 2), value, dtype=dtype)
        maps[0, :, 0, 0] = -value
        out = viz.heatmap(maps)
        assert out.dtype == dtype
        expected = rgb([DARK_BLUE, DARK_RED, DARK_RED, DARK_RED]).T.reshape(1, 3, 2, 2)
        torch.testing.assert_close(out.float(), expected.float(), atol=1e-3, rtol=0)


@pytest.mark.parametrize("call, message", [
    (lambda R: viz.project(R, absmax=-1), r"absmax=-1 is not valid; .* of 0 or more"),
    (lambda R: viz.gamma(R, gamma=-1), r"gamma=-1 is not valid; give a finite number above 0"),
    (lambda R: viz.gamma(R, maxamp=float("nan")), r"maxamp=nan is not valid"),
    (lambda R: viz.clip_quantile(R, 1, channel_axis=7),
     r"channel_axis=7 is not valid for values shaped \(2, 3, 4, 4\); give an axis from 1 to 3"),
    (lambda R: viz.clip_quantile(R, 1, channel_axis=0), r"channel_axis=0 is not valid"),
    (lambda R: viz.heatmap(R, reduce_axis=5), r"reduce_axis=5 is not valid .* from 1 to 3"),
    (lambda R: viz.explanation_grid(R, R), r"maps must be a mapping .* got Tensor"),
    (lambda R: viz.explanation_grid(R, {"gradient": R}, cell_size=0),
     r"cell_size=0 is not valid; give a positive int"),
    (lambda R: viz.line_plot([1.0, 2.0]), r"curves must be a mapping .* got list"),
])
def test_bad_values_and_types_are_named(call, message):
    """They were taken without a word (a negative scale, an exponent that blows the values
    up, channel_axis=7 read as 3) or failed with Python's or torch's bare errors."""
    R = torch.randn(2, 3, 4, 4)
    with pytest.raises((ValueError, TypeError), match=message):
        call(R)
