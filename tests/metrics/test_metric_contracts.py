"""Contracts every metric keeps: partial regions, merging, forward, layouts, refusals."""

import math

import pytest
import torch
from torch import nn

import lit_explain.metrics as lm
from lit_explain.metrics._common import RegionGrid


def linear(*weights):
    w = torch.tensor(weights, dtype=torch.float64)
    return lambda z: z.flatten(1).double() @ w


def small_classifier():
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(16, 3))


# --- 1. region_reduce over the real positions of partial border regions -----------------

def test_region_scores_use_only_the_real_positions_of_a_partial_region():
    # 1 x 3 positions in (1, 2) regions: region 0 = [p0, p1], region 1 = [p2, padding].
    grid = RegionGrid((1, 3), (1, 2))
    a = torch.tensor([-1.0, -1.0, -1.5]).view(1, 1, 1, 3)
    assert grid.region_scores(a, "sum").tolist() == [[-2.0, -1.5]]
    assert grid.region_scores(a, "mean").tolist() == [[-1.0, -1.5]]  # not -0.75
    assert grid.region_scores(a, "max").tolist() == [[-1.0, -1.5]]  # not 0 (the padding)


@pytest.mark.parametrize("how", ["mean", "max"])
def test_a_constant_map_scores_every_partial_region_by_that_constant(how):
    grid = RegionGrid((5, 7), (2, 3))  # padding on both axes: partial rows and columns
    scores = grid.region_scores(torch.full((2, 1, 5, 7), -3.0), how)
    assert scores.shape == (2, grid.n_regions) and bool((scores == -3.0).all())


@pytest.mark.parametrize(("a", "how", "curve"), [
    ([-1.0, -1.0, -1.5], "max", [111.0, 100.0]),   # region 0 (max -1) goes first
    ([-1.0, -1.0, -1.5], "mean", [111.0, 100.0]),  # region 0 (mean -1) goes first
    ([1.0, 1.0, 1.5], "mean", [111.0, 11.0]),      # region 1 (mean 1.5) goes first
])
def test_region_perturbation_ranks_partial_regions_by_their_real_positions(a, how, curve):
    m = lm.RegionPerturbation(linear(1, 10, 100), region_shape=(1, 2), steps=1,
                              region_reduce=how)
    m.update(torch.ones(1, 1, 1, 3), torch.tensor(a).view(1, 1, 1, 3))
    assert m.curve().tolist() == curve


# --- 2. merging un-updated metrics; compute() before any update -------------------------

CURVE_METRICS = {
    "pixel_flipping": lambda model: lm.PixelFlipping(model),
    "region_perturbation": lambda model: lm.RegionPerturbation(model, region_shape=2, steps=3),
    "insertion_deletion": lambda model: lm.InsertionDeletion(model),
    "faithfulness_correlation": lambda model: lm.FaithfulnessCorrelation(model, n_subsets=5),
}


def as_dict(value):
    return value if isinstance(value, dict) else {"value": value}


@pytest.mark.filterwarnings("ignore:The ``compute`` method")  # fresh: merged, not updated
@pytest.mark.parametrize("name", CURVE_METRICS)
def test_an_un_updated_metric_merges_in_both_directions(name):
    make, model = CURVE_METRICS[name], small_classifier()
    x, a = torch.randn(4, 1, 4, 4), torch.randn(4, 1, 4, 4)
    updated = make(model)
    updated.update(x, a)
    expected = as_dict(updated.compute())
    fresh = make(model)
    fresh.merge_state(updated)   # a rank that saw nothing receives the states
    updated.merge_state(make(model))   # a rank that saw nothing is merged in
    for merged in (fresh, updated):
        for key, value in as_dict(merged.compute()).items():
            torch.testing.assert_close(value, expected[key])


def test_curves_of_different_lengths_refuse_to_merge():
    model = linear(*range(16))
    four, three = lm.PixelFlipping(model), lm.PixelFlipping(lambda z: z.flatten(1).sum(1))
    four.update(torch.ones(1, 1, 4, 4), torch.randn(1, 1, 4, 4))   # 16 steps
    three.update(torch.ones(1, 1, 3, 3), torch.randn(1, 1, 3, 3))  # 9 steps
    with pytest.raises(ValueError, match=r"\[9, 16\] steps"):
        four.merge_state(three)


def test_curves_of_one_length_merge_whatever_steps_made_them():
    # (steps=10 keeps 11 points, steps=None 101: torch's bare size error)
    model = lambda z: z.sum(1, keepdim=True)  # noqa: E731
    x, a = torch.rand(3, 10), torch.rand(3, 10)
    explicit, derived, twice = (lm.PixelFlipping(model, steps=10), lm.PixelFlipping(model),
                                lm.PixelFlipping(model, steps=10))
    explicit.update(x, a)
    derived.update(x, a)
    twice.update(x, a)
    twice.update(x, a)
    explicit.merge_state(derived)
    torch.testing.assert_close(explicit.compute(), twice.compute())
    derived.merge_state(lm.PixelFlipping(model, steps=10))  # (one that saw nothing)
    torch.testing.assert_close(derived.compute(), twice.compute())


def model_free(name):
    return name not in CURVE_METRICS


@pytest.mark.parametrize("name", sorted(lm.metrics))
def test_compute_before_any_update_is_nan_for_every_metric(name):
    cls = lm.metrics[name]
    metric = cls() if model_free(name) else cls(linear(1, 2))
    with pytest.warns(UserWarning, match="before the ``update``"):
        values = as_dict(metric.compute())
    assert values and all(math.isnan(float(v)) for v in values.values())


def test_curves_are_empty_before_any_update():
    assert lm.PixelFlipping(linear(1)).curve().numel() == 0
    assert all(c.numel() == 0 for c in lm.InsertionDeletion(linear(1)).curves().values())


# --- 3. forward (metric(x, a)) is update, with the random draws continuing -------------

@pytest.mark.parametrize("make", [
    lambda m: lm.PixelFlipping(m),
    lambda m: lm.InsertionDeletion(m),
    lambda m: lm.PixelFlipping(m, order="random", steps=16),
    lambda m: lm.PixelFlipping(m, perturbation="gaussian", steps=16),
    lambda m: lm.FaithfulnessCorrelation(m, n_subsets=10),
])
def test_calling_the_metric_accumulates_exactly_like_update(make):
    model = small_classifier()
    x, a = torch.randn(4, 1, 4, 4), torch.randn(4, 1, 4, 4)
    by_update, by_call = make(model), make(model)
    for batch in (slice(0, 2), slice(2, 4)):
        by_update.update(x[batch], a[batch])
        by_call(x[batch], a[batch])
    expected = as_dict(by_update.compute())
    for key, value in as_dict(by_call.compute()).items():
        torch.testing.assert_close(value, expected[key])


def test_calling_twice_on_one_batch_draws_new_subsets_until_reset():
    model = small_classifier()
    x, a = torch.randn(2, 1, 4, 4), torch.randn(2, 1, 4, 4)
    m = lm.FaithfulnessCorrelation(model, n_subsets=10)
    first, second = m(x, a), m(x, a)
    assert first != second
    m.reset()
    assert m(x, a) == first  # reset re-seeds


# --- 4. the pointing game's tolerance on maps without a channel axis --------------------

def point_at_origin(shape, mask_at):
    a = torch.zeros(1, *shape)
    a.view(-1)[0] = 1
    m = torch.zeros(1, *shape, dtype=torch.bool)
    m[(0, *mask_at)] = True
    return a, m


@pytest.mark.parametrize(("mask_at", "hit"), [((2, 0), 1.0), ((0, 2), 1.0), ((3, 0), 0.0),
                                              ((2, 2), 0.0)])  # distance 2, 2, 3, 2.83
def test_tolerance_grows_an_image_mask_without_channel_axis_in_both_directions(mask_at, hit):
    a, m = point_at_origin((5, 5), mask_at)
    pg = lm.PointingGame(tolerance=2)
    assert pg.per_sample(a, m).item() == hit
    assert pg.per_sample(a[:, None], m[:, None]).item() == hit  # same as (N, 1, H, W)


@pytest.mark.parametrize(("position", "hit"), [(2, 1.0), (3, 0.0)])
def test_tolerance_runs_along_a_sequence_map(position, hit):
    a, m = point_at_origin((6,), (position,))
    assert lm.PointingGame(tolerance=2).per_sample(a, m).item() == hit


# --- 5. maps with NaN or infinite values are refused, naming the metric -----------------

def refuse_map(name, bad):
    x = torch.ones(1, 1, 2, 2)
    mask = torch.tensor([1, 0, 0, 0]).view(1, 1, 2, 2)
    if name in CURVE_METRICS:
        CURVE_METRICS[name](linear(1, 2, 3, 4)).update(x, bad)
    elif name in lm.localization_metrics:
        lm.metrics[name]().update(bad, mask)
    elif name == "attribution_drift":
        lm.AttributionDrift().update(torch.ones_like(bad), bad)
    else:
        lm.metrics[name]().update(bad)


@pytest.mark.parametrize("value", [math.nan, math.inf])
@pytest.mark.parametrize("name", sorted(lm.metrics))
def test_every_metric_refuses_a_map_with_nan_or_inf(name, value):
    bad = torch.tensor([4.0, value, 2.0, 1.0]).view(1, 1, 2, 2)
    with pytest.raises(ValueError, match=f"{lm.metrics[name].__name__}: .* NaN or inf"):
        refuse_map(name, bad)


def test_relevance_mass_accuracy_refuses_rather_than_turning_the_batch_nan():
    m = lm.RelevanceMassAccuracy()
    with pytest.raises(ValueError, match="RelevanceMassAccuracy.*1 of 2 samples"):
        m.update(torch.tensor([[1.0, 1.0], [math.nan, 0.0]]), torch.tensor([[1, 0], [1, 0]]))


def test_perturbation_refuses_an_analysis_with_nan():
    x = torch.ones(1, 1, 2, 2)
    with pytest.raises(ValueError, match="Perturbation: analysis"):
        lm.Perturbation("zeros", 1, region_shape=1).perturbate_on_batch(x, x * math.nan)


# --- 6. PerturbationAnalysis labels -----------------------------------------------------

def two_class_analysis(y, score="accuracy"):
    model = lambda z: torch.stack([z.flatten(1).sum(1), -z.flatten(1).sum(1)], 1)  # noqa: E731
    x = torch.stack([torch.ones(1, 2, 2), -torch.ones(1, 2, 2)])  # predicted [0, 1]
    p = lm.Perturbation("zeros", region_shape=1)
    pa = lm.PerturbationAnalysis(None, model, [(x, y, torch.zeros_like(x))], p, score=score)
    return pa.compute_perturbation_analysis()[0]


@pytest.mark.parametrize("y", [torch.tensor([0, 1]), torch.tensor([[0], [1]]),
                               torch.tensor([[1, 0], [0, 1]]),
                               torch.tensor([[0.9, 0.1], [0.2, 0.8]])])
def test_accuracy_reads_indices_columns_and_one_hot_rows_alike(y):
    assert two_class_analysis(y) == 1.0


def test_cross_entropy_of_a_label_column_equals_that_of_the_indices():
    indices = two_class_analysis(torch.tensor([0, 1]), "cross_entropy")
    assert two_class_analysis(torch.tensor([[0], [1]]), "cross_entropy") == indices
    assert two_class_analysis(torch.tensor([[1, 0], [0, 1]]), "cross_entropy") == indices


def test_labels_of_another_shape_are_refused():
    with pytest.raises(ValueError, match=r"labels y of shape \(2, 3\)"):
        two_class_analysis(torch.tensor([[1, 0, 0], [0, 1, 0]]))


# --- 7. one-logit models, targets ---------------------------------------------------------

def test_softmax_on_a_one_logit_model_scores_its_sigmoid():
    # f = 10 * sum - 5 on 2 x 2 ones: deleting one position at a time gives 35, 25, 15, 5, -5.
    m = lm.InsertionDeletion(lambda z: z.flatten(1).sum(1, keepdim=True) * 10 - 5, steps=4)
    m.update(torch.ones(1, 1, 2, 2), torch.tensor([4.0, 3, 2, 1]).view(1, 1, 2, 2))
    expected = torch.tensor([35.0, 25, 15, 5, -5], dtype=torch.float64).sigmoid()
    torch.testing.assert_close(m.curves()["deletion"], expected)


@pytest.mark.parametrize(("target", "match"), [(1.7, "integers"), (True, "bools"),
                                               (5, "out of range"), (-1, "out of range")])
def test_targets_that_are_no_class_index_are_refused(target, match):
    m = lm.PixelFlipping(lambda z: z.flatten(1)[:, :3])
    with pytest.raises(ValueError, match=f"target=.*{match}"):
        m.update(torch.ones(2, 1, 2, 2), torch.randn(2, 1, 2, 2), target)


# --- 8. option values refused with a message naming them ---------------------------------

f = linear(1, 1, 1, 1)
REFUSED = {
    "blur_sigma=0": (lambda: lm.RegionPerturbation(f, blur_sigma=0.0), "blur_sigma=0.0"),
    "blur_sigma<0": (lambda: lm.InsertionDeletion(f, blur_sigma=-2.0), "blur_sigma=-2.0"),
    "noise_std=nan": (lambda: lm.RegionPerturbation(f, noise_std=math.nan), "noise_std=nan"),
    "perturbation=True": (lambda: lm.RegionPerturbation(f, perturbation=True), "perturbation"),
    "perturbation=nan": (lambda: lm.RegionPerturbation(f, perturbation=math.nan),
                         "perturbation=nan"),
    "seed=None": (lambda: lm.RegionPerturbation(f, seed=None), "seed=None"),
    "seed=1.5": (lambda: lm.FaithfulnessCorrelation(f, seed=1.5), "seed=1.5"),
    "region_shape=2.0": (lambda: lm.RegionPerturbation(f, region_shape=2.0), "region_shape"),
    "region_shape=True": (lambda: lm.RegionPerturbation(f, region_shape=True), "region_shape"),
    "value_range=(0,)": (lambda: lm.RegionPerturbation(f, value_range=(0,)), "value_range"),
    "value_range nan": (lambda: lm.RegionPerturbation(f, value_range=(0, math.nan)),
                        "value_range"),
    "steps=True": (lambda: lm.PixelFlipping(f, steps=True), "steps=True"),
    "steps=0": (lambda: lm.PixelFlipping(f, steps=0), "steps=0"),
    "regions_per_step=0": (lambda: lm.RegionPerturbation(f, regions_per_step=0),
                           "regions_per_step=0"),
    "softmax='yes'": (lambda: lm.InsertionDeletion(f, softmax="yes"), "softmax='yes'"),
    "batch_size=True": (lambda: lm.PixelFlipping(f, batch_size=True), "batch_size"),
    "n_subsets=True": (lambda: lm.FaithfulnessCorrelation(f, n_subsets=True), "n_subsets"),
    "tolerance=nan": (lambda: lm.PointingGame(tolerance=math.nan), "tolerance=nan"),
    "tolerance=inf": (lambda: lm.PointingGame(tolerance=math.inf), "tolerance=inf"),
    "max_size='1'": (lambda: lm.AttributionLocalisation(max_size="1"), "max_size='1'"),
    "absolute='no'": (lambda: lm.RelevanceRankAccuracy(absolute="no"), "absolute"),
    "normalized=1": (lambda: lm.Complexity(normalized=1), "normalized"),
    "num_perturbed_regions=-1": (lambda: lm.Perturbation("zeros", num_perturbed_regions=-1),
                                 "num_perturbed_regions=-1"),
    "Perturbation seed": (lambda: lm.Perturbation("zeros", seed=None), "seed=None"),
}


@pytest.mark.parametrize("case", REFUSED)
def test_bad_option_values_are_refused_at_construction_naming_them(case):
    make, name = REFUSED[case]
    with pytest.raises(ValueError, match=name.replace("(", r"\(")):
        make()


@pytest.mark.parametrize(("kwargs", "name"), [({"steps": 0}, "steps=0"),
                                              ({"steps": -1}, "steps=-1"),
                                              ({"regions_per_step": 0}, "regions_per_step=0")])
def test_perturbation_analysis_refuses_counts_below_one(kwargs, name):
    x = torch.ones(2, 1, 2, 2)
    p = lm.Perturbation("zeros", region_shape=1)
    with pytest.raises(ValueError, match=name):
        lm.PerturbationAnalysis(None, f, [(x, torch.tensor([0, 0]), x)], p, **kwargs)


def test_a_region_shape_reflect_padding_cannot_reach_is_refused_naming_both():
    x = torch.rand(2, 1, 2, 2)
    p = lm.Perturbation("zeros", num_perturbed_regions=1, region_shape=5)
    with pytest.raises(ValueError, match="region_shape=5 with pad_mode='reflect'"):
        p.perturbate_on_batch(x, x)


def test_an_empty_batch_and_maps_without_entries_are_refused():
    with pytest.raises(ValueError, match="PixelFlipping: x of shape .* no samples"):
        lm.PixelFlipping(f).update(torch.zeros(0, 1, 2, 2), torch.zeros(0, 1, 2, 2))
    with pytest.raises(ValueError, match=r"Complexity: attributions of shape \(2, 0\)"):
        lm.Complexity().update(torch.ones(2, 0))


class TokenSum(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(10, 1)

    def forward(self, ids):
        return self.embed(ids).sum((1, 2))


def test_a_mask_token_id_outside_the_vocabulary_or_the_id_dtype_is_named():
    ids, a = torch.tensor([[3, 5, 7, 2]]), torch.tensor([[0.1, 0.5, 0.9, 0.2]])
    with pytest.raises(ValueError, match="mask_token_id=99.*vocabulary"):
        lm.PixelFlipping(TokenSum(), mask_token_id=99).update(ids, a)
    with pytest.raises(ValueError, match="mask_token_id=300 does not fit .*uint8"):
        lm.PixelFlipping(lambda z: z.double().sum(1), mask_token_id=300).update(
            ids.to(torch.uint8), a)


@pytest.mark.parametrize("cls", [lm.Sparseness, lm.Complexity])
def test_an_empty_batch_adds_nothing_to_sparseness_and_complexity(cls):
    # as in the localization metrics and AttributionDrift: no sample, no value
    metric, alone = cls(), cls()
    assert math.isnan(metric(torch.zeros(0, 1, 4, 4)))  # the batch's own value: no samples
    one_hot = torch.zeros(2, 1, 4, 4)
    one_hot[:, 0, 1, 2] = 1.0  # Gini (n-1)/n = 15/16, entropy 0
    metric.update(one_hot)
    alone.update(one_hot)
    metric.update(torch.zeros(0, 1, 4, 4))
    assert metric.compute() == alone.compute() == (15 / 16 if cls is lm.Sparseness else 0.0)


@pytest.mark.parametrize("make, sample", [
    (lambda m: lm.PixelFlipping(m, order="random", steps=16), "sample_curves"),
    (lambda m: lm.PixelFlipping(m, perturbation="gaussian", steps=16), "sample_curves"),
    (lambda m: lm.InsertionDeletion(m, insertion_baseline="gaussian"), "sample_curves"),
    (lambda m: lm.FaithfulnessCorrelation(m, n_subsets=10), "sample_correlations"),
])
def test_per_sample_values_leave_the_metric_and_its_draws_untouched(make, sample):
    # docs: sample_curves returns the curves "without touching the metric"
    model = small_classifier()
    x, a = torch.randn(4, 1, 4, 4), torch.randn(4, 1, 4, 4)
    looked, alone = make(model), make(model)
    for _ in range(2):  # before the first update (no generator yet) and after it
        first = getattr(looked, sample)(x, a)
        second = getattr(looked, sample)(x, a)  # the same draws: those of the next update
        for key, value in as_dict(first).items():
            torch.testing.assert_close(as_dict(second)[key], value)
        looked.update(x, a)
        alone.update(x, a)
    for key, value in as_dict(alone.compute()).items():
        torch.testing.assert_close(as_dict(looked.compute())[key], value)


def test_create_metric_names_the_metric_and_what_it_accepts_for_an_unknown_keyword():
    """torchmetrics' own message named neither: 'Unexpected keyword arguments: `foo`'."""
    with pytest.raises(ValueError, match=r"metric 'top_k_intersection': .*`foo`.* \(it "
                                         r"accepts \['absolute', 'channel_reduce', "
                                         r"'concept_influence', 'k'\]\)"):
        lm.create_metric("top_k_intersection", foo=1)
    assert lm.metric_parameters("top_k_intersection") == [
        "absolute", "channel_reduce", "concept_influence", "k"]
    with pytest.raises(ValueError, match=r"metric 'sparseness': .*\(it accepts no parameters\)"):
        lm.create_metric("sparseness", foo=1)
