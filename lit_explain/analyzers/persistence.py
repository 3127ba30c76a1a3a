"""Saving and loading analyzers (iNNvestigate's ``save``/``load``/``save_npz``/``load_npz``).

``analyzer.save(path)`` writes the analyzer's registry name, the parameters it was created
with and its fitted state (PatternNet/PatternAttribution: the patterns) with
:func:`torch.save`, as tensors and plain Python types only; :func:`load_analyzer` reads the
file with ``torch.load(weights_only=True)``, so loading never runs pickled code. The model
itself is not saved (save it the usual way): the analyzer is recreated on the model given to
:func:`load_analyzer`, which must have the same layers as the one it was saved from — each
module with parameters, in order, with the same path, type and parameter shapes; the first
difference is an error that names it.

Parameter values are stored as they are when they are ``None``, booleans, numbers, strings,
tensors, or tuples/lists/dicts of these. LRP rule specifications are stored by name: rule
objects (``EpsilonRule(0.25)``) and classes from :mod:`lit_explain.analyzers.lrp`, layer
conditions that are ``torch.nn`` module classes or the provided ``is_dense_layer``,
``is_conv_layer`` and ``is_input_layer``. Anything else (a lambda as a condition, a custom
rule class) cannot be stored safely and :meth:`save` says which parameter holds it.
"""

from __future__ import annotations

import dataclasses
import importlib
import os
import zipfile
from collections.abc import Mapping
from typing import IO, Any

import numpy as np
import torch
from torch import Tensor, nn

from ..compiled import uncompiled
from .base import Analyzer
from .lrp import presets, rules
from .registry import analyzers, create_analyzer

FORMAT = "lit_explain.analyzer"
VERSION = 1


def _rule_types() -> tuple[dict[str, type], dict[str, Any]]:
    classes = {name: cls for name, cls in vars(rules).items()
               if isinstance(cls, type) and issubclass(cls, rules.Rule)}
    conditions = {f.__name__: f for f in (presets.is_dense_layer, presets.is_conv_layer,
                                          presets.is_input_layer)}
    return classes, conditions


def encode(value: Any, where: str) -> Any:
    """``value`` as tensors and plain types; ``where`` names it in errors."""
    rule_classes, conditions = _rule_types()
    if isinstance(value, np.generic) and isinstance(value.item(), (bool, int, float, str)):
        # (np.float32(0.5), which create_analyzer takes as a number; np.float64 and np.str_
        # are floats and strings too, which pickle as numpy's and would not load)
        return value.item()
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, Tensor):  # (a copy: the state must not change with the analyzer)
        return value.detach().to("cpu", copy=True)
    if isinstance(value, (tuple, list)):
        items = [encode(v, f"{where}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if isinstance(value, tuple) else items
    if isinstance(value, Mapping) and all(isinstance(k, str) for k in value):
        # (str keys: np.str_ ones pickle as numpy's and would not load)
        return {str(k): encode(v, f"{where}[{k!r}]") for k, v in value.items()}
    if rule_classes.get(type(value).__name__) is type(value) and dataclasses.is_dataclass(value):
        fields = {f.name: encode(getattr(value, f.name), where)
                  for f in dataclasses.fields(value) if f.init}
        return {"__rule__": type(value).__name__, "fields": fields}
    if isinstance(value, type) and rule_classes.get(value.__name__) is value:
        return {"__rule_class__": value.__name__}
    if isinstance(value, type) and issubclass(value, nn.Module) and value.__module__.startswith(
            "torch.nn"):
        return {"__module_class__": f"{value.__module__}.{value.__qualname__}"}
    if conditions.get(getattr(value, "__name__", None)) is value:
        return {"__condition__": value.__name__}
    raise ValueError(f"cannot save {where}={value!r}: only None, numbers, strings, tensors, "
                     f"their tuples/lists/dicts, lit_explain rules, torch.nn module classes and "
                     f"the conditions {sorted(conditions)} are stored (never pickled objects)")


def decode(value: Any) -> Any:
    """The inverse of :func:`encode`."""
    rule_classes, conditions = _rule_types()
    if isinstance(value, tuple):
        return tuple(decode(v) for v in value)
    if isinstance(value, list):
        return [decode(v) for v in value]
    if not isinstance(value, dict):
        return value
    if "__rule__" in value:
        return _named(rule_classes, value["__rule__"], "LRP rule")(**decode(value["fields"]))
    if "__rule_class__" in value:
        return _named(rule_classes, value["__rule_class__"], "LRP rule")
    if "__condition__" in value:
        return _named(conditions, value["__condition__"], "layer condition")
    if "__module_class__" in value:
        module, _, name = value["__module_class__"].rpartition(".")
        if not module.startswith("torch.nn"):
            raise ValueError(f"refusing to import {value['__module_class__']!r}")
        cls = getattr(importlib.import_module(module), name)
        if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
            raise ValueError(f"{value['__module_class__']!r} is not a torch.nn module class")
        return cls
    return {k: decode(v) for k, v in value.items()}


def _named(known: Mapping[str, Any], name: object, what: str) -> Any:
    if name not in known:
        raise ValueError(f"the saved analyzer names the {what} {name!r}, which this "
                         f"lit_explain does not have; known: {sorted(known)}")
    return known[name]


def layer_signature(model: nn.Module) -> list[tuple[str, str, tuple[tuple[str, tuple], ...]]]:
    """Each module that owns parameters: (path, type name, ((name, shape), ...)), in order."""
    signature = []
    for path, module in model.named_modules():
        own = tuple((name, tuple(p.shape)) for name, p in module.named_parameters(recurse=False))
        if own:
            signature.append((path, type(module).__name__, own))
    return signature


def _describe(layer: tuple) -> str:
    path, kind, shapes = layer
    return f"'{path}' ({kind}, " + ", ".join(f"{n} {tuple(s)}" for n, s in shapes) + ")"


def check_layers(saved: list, model: nn.Module) -> None:
    """Raise ``ValueError`` naming the first layer where ``model`` differs from ``saved``
    (a compiled model: the module it compiled, which its analyzers explain)."""
    current = layer_signature(uncompiled(model))
    for index, (old, new) in enumerate(zip(saved, current, strict=False)):
        old = (old[0], old[1], tuple((n, tuple(s)) for n, s in old[2]))
        if old != new:
            raise ValueError(f"the model's layers do not match the saved analyzer's: layer "
                             f"{index} was {_describe(old)}, the model has {_describe(new)}")
    if len(saved) != len(current):
        index = min(len(saved), len(current))
        what = (f"the saved model had {_describe(saved[index])}, which this model lacks"
                if len(saved) > len(current) else
                f"this model has {_describe(current[index])}, which the saved model lacked")
        raise ValueError(f"the model's layers do not match the saved analyzer's: at layer "
                         f"{index}, {what}")


def analyzer_state(analyzer: Analyzer) -> dict[str, Any]:
    """What :meth:`Analyzer.save` writes: name, parameters, fitted state, layer signature."""
    if not analyzer.name or analyzers.get(analyzer.name) is not type(analyzer):
        raise ValueError(f"{type(analyzer).__name__} is not a registered analyzer (a "
                         f"subclass of one would load as its parent); only analyzers made by "
                         f"name can be saved")
    parameters = {name: encode(value, name) for name, value in analyzer.init_arguments.items()
                  if name not in analyzer.fitted_parameters}
    state = {name: encode(value, name) for name, value in analyzer.fitted_state().items()}
    return {"format": FORMAT, "version": VERSION, "name": analyzer.name,
            "parameters": parameters, "state": state,
            "layers": [list(layer) for layer in layer_signature(uncompiled(analyzer.model))]}


def save_analyzer(analyzer: Analyzer, path: str | os.PathLike | IO[bytes]) -> None:
    """Write :func:`analyzer_state` to ``path`` with :func:`torch.save`."""
    torch.save(analyzer_state(analyzer), path)


def load_analyzer(source: str | os.PathLike | IO[bytes] | Mapping[str, Any],
                  model: nn.Module) -> Analyzer:
    """Recreate a saved analyzer on ``model`` (iNNvestigate's ``load``/``load_npz``).

    Parameters
    ----------
    source:
        A file written by :meth:`Analyzer.save`, or the dict of :func:`analyzer_state`.
    model:
        The model to explain; its layers must match those the analyzer was saved with.

    Returns
    -------
    Analyzer
        The analyzer, with its parameters and fitted state (patterns) restored: a saved
        PatternAttribution gives the same maps on the same model.

    Raises
    ------
    ValueError
        For a file that is not a saved analyzer, or a model whose layers differ (the message
        names the first difference).
    """
    where = "the state given" if isinstance(source, Mapping) else repr(source)
    if isinstance(source, Mapping):
        state = source
    else:
        _check_checksums(source)
        try:
            state = torch.load(source, map_location="cpu", weights_only=True)
        except (FileNotFoundError, IsADirectoryError, PermissionError):
            raise  # a missing or unreadable file: its error names the path
        except Exception as error:  # on other files: OSError, KeyError, EOFError, ...
            raise ValueError(f"{source!r} is not a saved lit_explain analyzer: torch.load "
                             f"cannot read it ({type(error).__name__}: {error})") from error
    if not isinstance(state, Mapping) or state.get("format") != FORMAT:
        raise ValueError(f"{where} is not a saved lit_explain analyzer")
    missing = sorted({"name", "parameters", "state", "layers"} - set(state))
    if missing:
        raise ValueError(f"{where} is not a whole saved lit_explain analyzer: it lacks "
                         f"{missing}")
    if state.get("version") != VERSION:
        raise ValueError(f"saved analyzer format version {state.get('version')!r} is not "
                         f"supported (this lit_explain reads version {VERSION})")
    if state["name"] not in analyzers:
        raise ValueError(f"the saved analyzer {state['name']!r} is not registered; valid "
                         f"names: {sorted(analyzers)}")
    check_layers(state["layers"], model)
    analyzer = create_analyzer(state["name"], model, **decode(state["parameters"]))
    analyzer.load_fitted_state(decode(state["state"]))
    return analyzer


def _check_checksums(source: str | os.PathLike | IO[bytes]) -> None:
    """Raise ``ValueError`` where a member of ``source`` (a zip file, as :func:`torch.save`
    writes) fails its CRC: ``torch.load`` does not check them, and a flipped byte in a pattern
    loaded without a word (maps 1e20 off). Files of another layout are left to it."""
    position = source.tell() if hasattr(source, "tell") else None
    try:
        with zipfile.ZipFile(source) as archive:
            bad = archive.testzip()
    except zipfile.BadZipFile:
        return
    finally:
        if position is not None:
            source.seek(position)
    if bad is not None:
        raise ValueError(f"{source!r} is corrupted: its part {bad!r} fails its checksum")


Analyzer.saver = save_analyzer
