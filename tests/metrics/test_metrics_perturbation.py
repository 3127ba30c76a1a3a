"""RegionPerturbation, PixelFlipping, InsertionDeletion: known answers and contracts."""

import pytest
import torch
from metrics_helpers import SumModel, tiny_cnn
from torch import nn

from lit_explain.metrics import InsertionDeletion, PixelFlipping, RegionPerturbation
from lit_explain.metrics._common import RegionGrid


def aopc(model, x, a, **kw):
    m = PixelFlipping(model, **kw)
    m.update(x, a)
    return m.compute().item()


def test_exact_linear_map_beats_random_in_morf_and_loses_in_lerf(linear_setup):
    model, x, _, exact, random_map = linear_setup
    assert aopc(model, x, exact, steps=16) > aopc(model, x, random_map, steps=16)
    lerf = {"steps": 16, "order": "lerf"}
    assert aopc(model, x, exact, **lerf) < aopc(model, x, random_map, **lerf)


def test_linear_curve_is_logit_minus_removed_contributions(linear_setup):
    # Zeroing feature i removes exactly w_i x_i from the logit: curve[k] = f(x) - top-k sum.
    model, x, target, exact, _ = linear_setup
    m = PixelFlipping(model, steps=10)
    curves = m.sample_curves(x, exact, target)
    top = exact.sort(dim=1, descending=True).values.double()
    expected = model(x).gather(1, target[:, None]).double() - torch.cat(
        [torch.zeros(24, 1, dtype=torch.float64), top[:, :10].cumsum(1)], 1
    )
    torch.testing.assert_close(curves, expected, atol=1e-5, rtol=1e-5)


def test_region_grid_of_a_3x5_image_with_2x2_regions():
    grid = RegionGrid((3, 5), (2, 2))
    assert grid.padding == ((0, 1), (0, 1)) and grid.grid == (2, 3)
    expected = torch.tensor([[0, 0, 1, 1, 2], [0, 0, 1, 1, 2], [3, 3, 4, 4, 5]])
    assert torch.equal(grid.pixel_region(torch.device("cpu")).view(3, 5), expected)
    # Padding 2 rows on a 4-row image with 3-row regions: one before, one after.
    grid = RegionGrid((4, 5), (3, 3))
    assert grid.padding == ((1, 1), (0, 1))
    rows = grid.pixel_region(torch.device("cpu")).view(4, 5)[:, 0]
    assert grid.grid == (2, 2) and rows.tolist() == [0, 0, 2, 2]


def test_hand_computed_2x2_region_perturbation():
    x = torch.arange(1.0, 16.0).view(1, 1, 3, 5)  # regions as in the test above
    a = torch.zeros(1, 1, 3, 5)
    a[0, 0, 2, 4] = 10.0  # region 5
    a[0, 0, 0, 2] = 5.0  # region 1
    a[0, 0, 1, 0] = 3.0  # region 0; regions 2, 3, 4 tie at 0 and keep their order
    m = RegionPerturbation(SumModel(), region_shape=(2, 2), steps=6)
    m.update(x, a)
    # f = sum of pixels; removed: 15, then 3+4+8+9, 1+2+6+7, 5+10, 11+12, 13+14.
    expected = torch.tensor([120.0, 105, 81, 65, 50, 27, 0], dtype=torch.float64)
    torch.testing.assert_close(m.curve(), expected)
    torch.testing.assert_close(m.compute(), torch.tensor(392 / 7, dtype=torch.float64))


def test_lerf_and_region_sums_use_zero_padding():
    x = torch.ones(1, 1, 3, 3)
    a = torch.tensor([[[[1.0, 1, 9], [1, 1, 0], [0, 0, 0]]]])  # sums: 4, 9, 0, 0
    m = RegionPerturbation(SumModel(), region_shape=2, steps=4, order="lerf")
    # lerf: regions 2 (row 2, cols 0-1), 3 (pixel 2,2), then 0 (4 pixels), then 1 (2 pixels).
    torch.testing.assert_close(
        m.sample_curves(x, a)[0], torch.tensor([9.0, 7, 6, 2, 0], dtype=torch.float64)
    )


def test_pixel_flipping_is_region_perturbation_with_single_pixels():
    model, x = tiny_cnn(), torch.rand(5, 3, 8, 8)
    a = torch.randn(5, 8, 8, generator=torch.Generator().manual_seed(3))  # (N, H, W) accepted
    p = PixelFlipping(model, steps=12, regions_per_step=2)
    r = RegionPerturbation(model, region_shape=(1, 1), steps=12, regions_per_step=2)
    p.update(x, a)
    r.update(x, a.unsqueeze(1))
    torch.testing.assert_close(p.curve(), r.curve())


@pytest.mark.parametrize("perturbation", ["zeros", "mean", "gaussian", "invert", "blur", 0.5])
def test_perturbations_on_sequences_tabular_and_images(perturbation):
    g = torch.Generator().manual_seed(0)
    seq = nn.Sequential(nn.Conv1d(2, 3, 3), nn.Flatten(), nn.Linear(30, 4))
    cases = [
        (seq, torch.randn(4, 2, 12, generator=g), 3),
        (nn.Linear(10, 3), torch.randn(4, 10, generator=g), 2),
        (tiny_cnn(), torch.rand(4, 3, 8, 8, generator=g), (2, 4)),
    ]
    for model, x, region in cases:
        m = RegionPerturbation(
            model, region_shape=region, steps=4, perturbation=perturbation, value_range=(-1, 1)
        )
        m.update(x, torch.randn(x.shape, generator=g))
        assert m.curve().shape == (5,) and torch.isfinite(m.compute())
        torch.testing.assert_close(m.curve()[0], m.sample_curves(x, x)[:, 0].mean())


def test_callable_perturbation_gets_regions():
    x = torch.arange(1.0, 17.0).view(1, 1, 4, 4)
    mean = RegionPerturbation(
        SumModel(), region_shape=2, steps=4, perturbation=lambda b: b.mean((-2, -1), keepdim=True)
    )
    curve = mean.sample_curves(x, torch.rand(1, 1, 4, 4))[0]
    # Replacing a region by its own mean keeps the sum.
    torch.testing.assert_close(curve, torch.full((5,), 136.0, dtype=torch.float64))


def test_target_none_is_the_predicted_class_and_int_targets_work(linear_setup):
    model, x, target, exact, _ = linear_setup
    m = PixelFlipping(model, steps=5)
    torch.testing.assert_close(m.sample_curves(x, exact), m.sample_curves(x, exact, target))
    one = m.sample_curves(x[:3], exact[:3], 2)
    torch.testing.assert_close(one, m.sample_curves(x[:3], exact[:3], torch.tensor([2, 2, 2])))


def test_batch_size_bounds_model_calls_and_does_not_change_results():
    seen = []
    model = tiny_cnn()
    model.register_forward_pre_hook(lambda mod, inp: seen.append(inp[0].shape[0]))
    x, a = torch.rand(6, 3, 8, 8), torch.rand(6, 3, 8, 8)
    small = RegionPerturbation(model, region_shape=2, steps=10, batch_size=7, order="random")
    small.update(x, a)
    assert max(seen) <= 7
    big = RegionPerturbation(model, region_shape=2, steps=10, batch_size=1000, order="random")
    big.update(x, a)
    torch.testing.assert_close(small.compute(), big.compute())


def test_training_state_and_global_rng_are_untouched():
    model = tiny_cnn().train()
    model[3].eval()  # a module with its own flag
    flags = [mod.training for mod in model.modules()]
    stats = model[1].running_mean.clone()
    x, a = torch.rand(3, 3, 8, 8), torch.rand(3, 3, 8, 8)
    rng = torch.get_rng_state()
    m = RegionPerturbation(model, region_shape=2, steps=8, order="random", perturbation="gaussian")
    m.update(x, a)
    assert [mod.training for mod in model.modules()] == flags
    assert torch.equal(model[1].running_mean, stats)
    assert torch.equal(torch.get_rng_state(), rng)
    assert all(p.grad is None for p in model.parameters())


def test_seeded_and_reset_reproduces():
    model, x, a = tiny_cnn(), torch.rand(4, 3, 8, 8), torch.rand(4, 3, 8, 8)
    kw = {"region_shape": 2, "steps": 8, "order": "random", "perturbation": "gaussian"}
    m1, m2 = RegionPerturbation(model, seed=1, **kw), RegionPerturbation(model, seed=1, **kw)
    m1.update(x, a)
    m2.update(x, a)
    first = m1.compute()
    torch.testing.assert_close(first, m2.compute())
    m1.reset()
    m1.update(x, a)
    torch.testing.assert_close(m1.compute(), first)
    m3 = RegionPerturbation(model, seed=2, **kw)
    m3.update(x, a)
    assert not torch.allclose(m3.compute(), first)


@pytest.mark.parametrize("steps", [6, None])
def test_states_merge_by_addition_like_ddp(steps):
    # DDP stacks the ranks' states and applies each state's dist_reduce_fx; a third rank
    # that saw no batch must change nothing.
    model, x, a = tiny_cnn(), torch.rand(8, 3, 8, 8), torch.randn(8, 3, 8, 8)
    whole = RegionPerturbation(model, region_shape=2, steps=steps)
    whole.update(x, a)
    ranks = [RegionPerturbation(model, region_shape=2, steps=steps) for _ in range(3)]
    ranks[0].update(x[:3], a[:3])
    ranks[1].update(x[3:], a[3:])
    merged = RegionPerturbation(model, region_shape=2, steps=steps)
    for name, reduce in merged._reductions.items():
        assert reduce is not None, name
        setattr(merged, name, reduce(torch.stack([getattr(r, name) for r in ranks])))
    merged._update_count = 1
    torch.testing.assert_close(merged.compute(), whole.compute())
    ranks[0].merge_state(ranks[1])
    torch.testing.assert_close(ranks[0].compute(), whole.compute())


def test_insertion_deletion_on_the_linear_model(linear_setup):
    model, x, target, exact, random_map = linear_setup

    def run(a):
        m = InsertionDeletion(model, steps=8, softmax=False, insertion_baseline="zeros")
        m.update(x, a, target)
        return m.compute(), m.curves()

    good, curves = run(exact)
    bad, _ = run(random_map)
    assert good["deletion_auc"] < bad["deletion_auc"]
    assert good["insertion_auc"] > bad["insertion_auc"]
    assert curves["fraction"][0] == 0 and curves["fraction"][-1] == 1
    logit = model(x).gather(1, target[:, None]).mean().double()
    torch.testing.assert_close(curves["deletion"][0], logit)
    torch.testing.assert_close(curves["insertion"][-1], logit)


def test_insertion_deletion_areas_of_inputs_of_two_sizes_are_each_on_its_own_axis():
    """3 and 4 features, steps=2: fractions (0, 2/3, 1) and (0, 1/2, 1). By hand, on the sum
    of the features with the features as the map, deletion's curves are (6, 1, 0) and
    (10, 3, 0), areas 2.5 and 4; insertion's (0, 5, 6) and (0, 7, 10), areas 3.5 and 6. The
    area under the mean curve over the mean fraction was 0.2–0.4 % off."""
    def model(z):
        return torch.stack([z.sum(1), torch.zeros(len(z), dtype=z.dtype)], 1)

    small, large = torch.tensor([[3.0, 2.0, 1.0]]), torch.tensor([[4.0, 3.0, 2.0, 1.0]])
    expected = {"insertion_auc": (3.5 + 6.0) / 2, "deletion_auc": (2.5 + 4.0) / 2}

    def metric():
        return InsertionDeletion(model, steps=2, softmax=False, insertion_baseline="zeros")

    together, apart = metric(), [metric(), metric()]
    for x, alone in ((small, apart[0]), (large, apart[1])):
        together.update(x, x, 0)
        alone.update(x, x, 0)
    apart[0].merge_state(apart[1])
    for m in (together, apart[0]):
        assert {k: float(v) for k, v in m.compute().items()} == pytest.approx(expected)


def test_insertion_deletion_defaults_on_images():
    m = InsertionDeletion(tiny_cnn(), steps=4)
    m.update(torch.rand(3, 3, 8, 8), torch.rand(3, 1, 8, 8))
    out = m.compute()
    assert set(out) == {"insertion_auc", "deletion_auc"}
    assert all(0 <= v <= 1 for v in out.values())


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"order": "best"}, "order"),
        ({"perturbation": "noise"}, "perturbation"),
        ({"steps": 0}, "steps"),
        ({"region_shape": 0}, "region_shape"),
        ({"channel_reduce": "median"}, "channel_reduce"),
        ({"value_range": (1, 0)}, "value_range"),
        ({"regions_per_step": 0}, "regions_per_step"),
    ],
)
def test_bad_options_name_the_parameter(kwargs, name):
    with pytest.raises(ValueError, match=name):
        RegionPerturbation(SumModel(), **kwargs)


def test_too_many_steps_and_bad_shapes_raise():
    m = RegionPerturbation(SumModel(), region_shape=4, steps=10)
    with pytest.raises(ValueError, match="exceeds the 4 regions"):
        m.update(torch.rand(1, 1, 8, 8), torch.rand(1, 1, 8, 8))
    with pytest.raises(ValueError, match="do not match"):
        m.update(torch.rand(1, 1, 8, 8), torch.rand(1, 1, 4, 8))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu():
    model, x, a = tiny_cnn(), torch.rand(4, 3, 8, 8), torch.randn(4, 3, 8, 8)
    kw = {"region_shape": 2, "steps": 8, "order": "random", "perturbation": "blur"}
    cpu = RegionPerturbation(model, **kw)
    cpu.update(x, a)
    gpu_model = tiny_cnn().cuda()
    gpu = RegionPerturbation(gpu_model, **kw).cuda()
    gpu.update(x.cuda(), a.cuda())
    assert gpu.curve().device.type == "cuda"
    # Random orders come from a CUDA generator: compare the deterministic parts only.
    det = RegionPerturbation(gpu_model, region_shape=2, steps=8).cuda()
    det.update(x.cuda(), a.cuda())
    ref = RegionPerturbation(model, region_shape=2, steps=8)
    ref.update(x, a)
    torch.testing.assert_close(det.compute().cpu(), ref.compute(), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("per_sample_from", [1, 10**9])  # each path of perturbation_curves
@pytest.mark.parametrize("batch_size", [7, 256])  # batches that split samples, and not
def test_curves_of_large_inputs_are_the_model_on_each_perturbed_input(monkeypatch,
                                                                      per_sample_from,
                                                                      batch_size):
    import lit_explain.metrics._curves as curves

    monkeypatch.setattr(curves, "PER_SAMPLE_FROM", per_sample_from)
    g = torch.Generator().manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Flatten(),
                          nn.Linear(4 * 6 * 6, 5)).eval()
    x = torch.randn(3, 3, 6, 6, generator=g)
    a = torch.randn(3, 3, 6, 6, generator=g)
    target = torch.tensor([0, 3, 4])
    metric = RegionPerturbation(model, region_shape=2, steps=9, batch_size=batch_size)
    got = metric.sample_curves(x, a, target)
    # by hand: the 9 2x2 regions ranked by their channel-summed relevance, most relevant
    # first; after j steps the j first are zero
    region_sums = a.sum(1).reshape(3, 3, 2, 3, 2).sum((2, 4)).reshape(3, 9)
    with torch.no_grad():
        for s in range(3):
            order = region_sums[s].sort(descending=True, stable=True).indices
            for j in range(10):
                xs = x[s].clone()
                for r in order[:j].tolist():
                    xs[:, (r // 3) * 2:(r // 3) * 2 + 2, (r % 3) * 2:(r % 3) * 2 + 2] = 0
                expected = model(xs[None])[0, target[s]].double()
                torch.testing.assert_close(got[s, j], expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("make", [lambda m: PixelFlipping(m, steps=8),
                                  lambda m: InsertionDeletion(m, steps=8)])
def test_update_with_precomputed_curves_is_an_update(make, linear_setup, recwarn):
    # The callback computes the curves of several analyzers' maps in shared model calls and
    # credits each metric with its part: that is an update like any other (same value, and
    # torchmetrics does not warn that compute() came before update()).
    model, x, target, exact, _ = linear_setup
    direct, precomputed = make(model), make(model)
    direct.update(x, exact, target)
    precomputed.update(curves=precomputed.sample_curves(x, exact, target))
    assert not [w for w in recwarn if "before the ``update``" in str(w.message)]
    first, second = direct.compute(), precomputed.compute()
    assert not [w for w in recwarn if "before the ``update``" in str(w.message)]
    if isinstance(first, dict):
        for key in first:
            torch.testing.assert_close(second[key], first[key])
    else:
        torch.testing.assert_close(second, first)
    with pytest.raises(TypeError, match="curves="):
        make(model).update(x)


@pytest.mark.parametrize(("input_dtype", "attributions"), [
    (torch.bfloat16, torch.tensor([[1.000, 1.003]])),  # a tie in bfloat16
    (torch.float16, torch.tensor([[7e4, 8e4]])),  # infinite in float16
    (torch.float32, torch.tensor([[1.0, 1.0 + 1e-12]], dtype=torch.float64)),  # a float32 tie
])
def test_a_map_is_ranked_in_its_own_precision_not_the_inputs(input_dtype, attributions):
    # score x0 + 10·x1: the map ranks feature 1 first, so deleting it leaves 1 of 11
    weight = torch.tensor([[1.0, 10.0]], dtype=input_dtype)
    x = torch.ones(1, 2, dtype=input_dtype)
    metric = PixelFlipping(lambda v: v @ weight.T, steps=1)
    metric.update(x, attributions)
    torch.testing.assert_close(metric.curve().float(), torch.tensor([11.0, 1.0]))
