"""Saving and loading analyzers: round trips, a safe format, layer mismatches named."""

from __future__ import annotations

import io
import pickle
import zipfile

import numpy as np
import pytest
import torch
from torch import nn

import lit_explain as lx
from lit_explain.analyzers.lrp import EpsilonRule, ZPlusRule, is_dense_layer, is_input_layer
from lit_explain.analyzers.persistence import analyzer_state


def cnn(width: int = 4, seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(1, width, 3), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                         nn.Linear(width * 16, 8), nn.ReLU(), nn.Linear(8, 3))


def round_trip(analyzer: lx.Analyzer, model: nn.Module, tmp_path) -> lx.Analyzer:
    path = tmp_path / "analyzer.pt"
    analyzer.save(path)
    return lx.load_analyzer(path, model)


def test_a_saved_pattern_attribution_gives_identical_maps(tmp_path):
    model = cnn()
    data = torch.randn(64, 1, 10, 10)
    analyzer = lx.create_analyzer("pattern.attribution", model, pattern_type="linear",
                                  neuron_selection_mode="index").fit(data, progress=False)
    loaded = round_trip(analyzer, model, tmp_path)

    assert type(loaded) is type(analyzer) and loaded.pattern_type == "linear"
    assert loaded.neuron_selection_mode == "index"
    assert set(loaded.patterns) == set(analyzer.patterns)
    assert all(torch.equal(loaded.patterns[k], analyzer.patterns[k]) for k in analyzer.patterns)
    x = data[:5]
    assert torch.equal(loaded.analyze(x, neuron_selection=2), analyzer.analyze(x, 2))


def test_a_pattern_analyzer_loads_onto_a_fresh_copy_of_the_model(tmp_path):
    model = cnn()
    analyzer = lx.create_analyzer("pattern.net", model).fit(torch.randn(32, 1, 10, 10),
                                                            progress=False)
    path = tmp_path / "analyzer.pt"
    analyzer.save(path)
    copy = cnn()
    copy.load_state_dict(model.state_dict())
    x = torch.randn(3, 1, 10, 10)
    assert torch.equal(lx.load_analyzer(path, copy).analyze(x), analyzer.analyze(x))


def test_the_file_is_tensors_and_plain_types_only(tmp_path):
    model = cnn()
    analyzer = lx.create_analyzer("pattern.attribution", model).fit(
        torch.randn(32, 1, 10, 10), progress=False)
    analyzer.save(tmp_path / "a.pt")
    state = torch.load(tmp_path / "a.pt", weights_only=True)  # no pickled objects
    assert state["name"] == "pattern.attribution"
    assert set(state["state"]["patterns"]) == {"0", "4", "6"}
    assert state["parameters"]["pattern_type"] == "relu"


@pytest.mark.parametrize("name, kwargs", [
    ("lrp.epsilon", {"epsilon": 0.25, "bias": False, "input_layer_rule": (-1.0, 1.0)}),
    ("lrp.alpha_beta", {"alpha": 3.0}),
    ("lrp.sequential_preset_b_flat_until_idx", {"until_layer_idx": 1}),
    ("lrp", {"rule": [(is_input_layer, "Flat"), (is_dense_layer, EpsilonRule(0.5)),
                      (nn.Conv2d, ZPlusRule)], "bn_layer_rule": "Z"}),
    ("deep_taylor.bounded", {"low": -3.0, "high": 3.0}),
    ("integrated_gradients", {"steps": 5, "reference_inputs": torch.full((1, 10, 10), 0.5)}),
    ("smoothgrad", {"augment_by_n": 3, "noise_scale": 0.2, "postprocess": "square"}),
    ("guided_backprop", {"reverse_clip_values": (-1.0, 1.0)}),
    ("gradient", {"neuron_selection_mode": "all", "postprocess": "abs"}),
])
def test_parameters_survive_a_round_trip(name, kwargs, tmp_path):
    model = cnn()
    analyzer = lx.create_analyzer(name, model, **kwargs)
    loaded = round_trip(analyzer, model, tmp_path)
    assert loaded.name == name
    for key, value in kwargs.items():
        saved = loaded.init_arguments[key]
        if isinstance(value, torch.Tensor):
            assert torch.equal(saved, value)
        else:
            assert saved == value, key
    x = torch.randn(2, 1, 10, 10)
    torch.testing.assert_close(loaded.analyze(x), lx.create_analyzer(
        name, model, **kwargs).analyze(x))


def test_the_in_memory_state_loads_too():
    # iNNvestigate's save()/load(): a dict instead of a file
    from lit_explain.analyzers.persistence import analyzer_state

    model = cnn()
    state = analyzer_state(lx.create_analyzer("lrp.epsilon", model, epsilon=0.5))
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    assert lx.load_analyzer(buffer, model).init_arguments["epsilon"] == 0.5
    assert lx.load_analyzer(state, model).init_arguments["epsilon"] == 0.5


def test_loading_onto_different_layers_names_the_first_mismatch(tmp_path):
    path = tmp_path / "a.pt"
    lx.create_analyzer("lrp.z", cnn(width=4)).save(path)

    with pytest.raises(ValueError, match=r"layer 0 was '0' \(Conv2d, weight \(4, 1, 3, 3\), "
                                         r"bias \(4,\)\), the model has '0' \(Conv2d, weight "
                                         r"\(5, 1, 3, 3\)"):
        lx.load_analyzer(path, cnn(width=5))
    shorter = nn.Sequential(*list(cnn())[:5])
    with pytest.raises(ValueError, match=r"at layer 2, the saved model had '6' \(Linear"):
        lx.load_analyzer(path, shorter)
    renamed = nn.Sequential()
    for index, module in enumerate(cnn()):
        renamed.add_module(f"layer{index}", module)
    with pytest.raises(ValueError, match=r"layer 0 was '0' .* the model has 'layer0'"):
        lx.load_analyzer(path, renamed)


def test_what_cannot_be_stored_safely_is_refused_by_name(tmp_path):
    model = cnn()
    analyzer = lx.create_analyzer("lrp", model, rule=[(lambda call: True, "Z")])
    with pytest.raises(ValueError, match=r"cannot save rule\[0\]\[0\]=<function"):
        analyzer.save(tmp_path / "a.pt")


def test_files_that_are_not_saved_analyzers_are_refused(tmp_path):
    torch.save({"weights": torch.zeros(2)}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="not a saved lit_explain analyzer"):
        lx.load_analyzer(tmp_path / "other.pt", cnn())
    # a file holding a reference to a function: never unpickled
    torch.save({"format": "lit_explain.analyzer", "name": print}, tmp_path / "evil.pt")
    with pytest.raises(ValueError, match="evil.pt.*not a saved lit_explain analyzer") as info:
        lx.load_analyzer(tmp_path / "evil.pt", cnn())
    assert isinstance(info.value.__cause__, pickle.UnpicklingError)


def test_damaged_and_partial_files_are_refused_saying_so(tmp_path):
    path = tmp_path / "analyzer.pt"
    lx.create_analyzer("pattern.attribution", cnn()).fit(torch.randn(8, 1, 10, 10),
                                                          progress=False).save(path)
    data = path.read_bytes()
    (tmp_path / "cut.pt").write_bytes(data[:-10])  # (a bare OSError)
    with pytest.raises(ValueError, match="cut.pt.*not a saved lit_explain analyzer"):
        lx.load_analyzer(tmp_path / "cut.pt", cnn())
    largest = max(zipfile.ZipFile(path).infolist(), key=lambda info: info.file_size)
    flipped = bytearray(data)  # a byte of the patterns changed (loaded, maps 1e20 off)
    flipped[largest.header_offset + 30 + len(largest.filename) + 100] ^= 0xFF
    (tmp_path / "flipped.pt").write_bytes(bytes(flipped))
    with pytest.raises(ValueError, match="flipped.pt.*fails its checksum"):
        lx.load_analyzer(tmp_path / "flipped.pt", cnn())
    state = torch.load(path, weights_only=True)
    for key in ("name", "layers"):  # (bare KeyErrors)
        with pytest.raises(ValueError, match=rf"lacks \['{key}'\]"):
            lx.load_analyzer({k: v for k, v in state.items() if k != key}, cnn())


def test_an_unknown_rule_and_a_numpy_number_are_handled_by_name(tmp_path):
    state = analyzer_state(lx.create_analyzer("lrp", cnn(), rule=EpsilonRule(0.25)))
    state["parameters"]["rule"]["__rule__"] = "NewRule"
    with pytest.raises(ValueError, match="the LRP rule 'NewRule', which this lit_explain"):
        lx.load_analyzer(state, cnn())
    integrated = lx.create_analyzer("integrated_gradients", cnn(),
                                    reference_inputs=np.float32(0.5))
    x = torch.randn(2, 1, 10, 10)
    torch.testing.assert_close(round_trip(integrated, cnn(), tmp_path).analyze(x),
                               integrated.analyze(x))


@pytest.mark.parametrize(("name", "kwargs"), [
    ("lrp.epsilon", {"epsilon": np.float64(0.25)}),
    ("integrated_gradients", {"reference_inputs": np.float64(0.5)}),
    ("lrp", {"rule": np.str_("Epsilon")})])
def test_numpy_floats_and_strings_save_as_plain_values(tmp_path, name, kwargs):
    """``np.float64`` and ``np.str_`` are floats and strings: they were saved as pickled
    numpy objects, which loading refused as "not a saved lit_explain analyzer"."""
    analyzer = lx.create_analyzer(name, cnn(), **kwargs)
    x = torch.randn(2, 1, 10, 10)
    torch.testing.assert_close(round_trip(analyzer, cnn(), tmp_path).analyze(x),
                               analyzer.analyze(x))


def test_patterns_keyed_by_numpy_strings_save_as_plain_keys(tmp_path):
    """Keys read from a numpy array are np.str_: they saved as numpy objects, which loading
    refused."""
    model = cnn()
    patterns = lx.PatternComputer(model).compute(torch.randn(32, 1, 10, 10))
    analyzer = lx.create_analyzer("pattern.attribution", model,
                                  patterns={np.str_(k): v for k, v in patterns.items()})
    x = torch.randn(2, 1, 10, 10)
    torch.testing.assert_close(round_trip(analyzer, cnn(), tmp_path).analyze(x),
                               analyzer.analyze(x))


def test_a_compiled_model_saves_and_loads_as_the_module_it_compiled(tmp_path):
    model = cnn()
    compiled = torch.compile(model)  # (never run: its analyzers explain the module)
    for saved_from in (model, compiled):
        analyzer = lx.create_analyzer("lrp.epsilon", saved_from)
        for target in (model, compiled):
            assert round_trip(analyzer, target, tmp_path).name == "lrp.epsilon"


# Training the iNNvestigate way: fit(data) -----------------------------------------------

def test_pattern_fit_takes_a_tensor_or_a_loader_and_returns_the_analyzer():
    from torch.utils.data import DataLoader, TensorDataset

    model = cnn()
    data = torch.randn(40, 1, 10, 10)
    from_tensor = lx.create_analyzer("pattern.attribution", model).fit(data, batch_size=16,
                                                                      progress=False)
    loader = DataLoader(TensorDataset(data, torch.zeros(40)), batch_size=16)
    from_loader = lx.create_analyzer("pattern.attribution", model).fit(loader, progress=False)
    offline = lx.PatternComputer(model).fit([data], progress=False)

    assert isinstance(from_tensor, lx.Analyzer)
    for path, pattern in offline.items():
        torch.testing.assert_close(from_tensor.patterns[path], pattern)
        torch.testing.assert_close(from_loader.patterns[path], pattern)
    x = data[:2]
    torch.testing.assert_close(from_loader.analyze(x), from_tensor.analyze(x))


def test_fit_on_an_analyzer_that_needs_no_training_warns_and_does_nothing():
    analyzer = lx.create_analyzer("lrp.epsilon", cnn())
    with pytest.warns(UserWarning, match="'lrp.epsilon' needs no training"):
        assert analyzer.fit(torch.randn(4, 1, 10, 10)) is analyzer
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        analyzer.fit(torch.randn(4, 1, 10, 10), disable_no_training_warning=True)
