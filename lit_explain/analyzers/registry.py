"""The analyzer registry: iNNvestigate's names mapped to analyzer classes."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any, TypeVar

from torch import nn

from .base import Analyzer

analyzers: dict[str, type[Analyzer]] = {}
"""Analyzer name (iNNvestigate's) → analyzer class."""

A = TypeVar("A", bound=type[Analyzer])


def register(name: str) -> Callable[[A], A]:
    """Class decorator: make an analyzer class available under ``name``."""

    def add(cls: A) -> A:
        if name in analyzers:
            raise ValueError(f"analyzer name {name!r} is already registered")
        cls.name = name
        analyzers[name] = cls
        return cls

    return add


def parameters_of(cls: type[Analyzer]) -> dict[str, inspect.Parameter]:
    """The keyword parameters an analyzer class accepts (besides ``model``).

    An ``__init__`` ending in ``**kwargs`` forwards them to its base class: the keyword-only
    parameters of the base's ``__init__`` (e.g. the ``reverse_*`` options of
    :class:`Analyzer`) are accepted too, each with its type and default.
    """
    accepted: dict[str, inspect.Parameter] = {}
    own = True
    for klass in cls.__mro__:
        init = vars(klass).get("__init__")
        if init is None or klass is object:
            continue
        forwards = False
        for name, p in inspect.signature(init).parameters.items():
            if p.kind is inspect.Parameter.VAR_KEYWORD:
                forwards = True
            elif name not in ("self", "model") and p.kind is not inspect.Parameter.VAR_POSITIONAL \
                    and (own or p.kind is inspect.Parameter.KEYWORD_ONLY):
                accepted.setdefault(name, p)
        if not forwards:
            break
        own = False
    return accepted


def create_analyzer(name: str, model: nn.Module, **kwargs: Any) -> Analyzer:
    """Create the analyzer registered as ``name`` for ``model`` (iNNvestigate's entry point).

    Parameters
    ----------
    name:
        An analyzer name, e.g. ``"gradient"`` or ``"lrp.epsilon"``; see ``analyzers``.
    model:
        The model to explain (logits out; see :func:`model_wo_softmax`).
    **kwargs:
        The analyzer's parameters, e.g. ``neuron_selection_mode="index"``.

    Raises
    ------
    KeyError
        For an unknown name; the message lists every valid name.
    TypeError
        For a keyword the analyzer does not take; the message lists those it takes.
    ValueError
        For a parameter value the analyzer cannot use.
    """
    if name not in analyzers:
        raise KeyError(f"unknown analyzer {name!r}; valid names: {sorted(analyzers)}")
    cls = analyzers[name]
    accepted = parameters_of(cls)
    unknown = sorted(set(kwargs) - set(accepted))
    if unknown:
        raise TypeError(f"analyzer {name!r} got unknown parameter(s) {unknown}; "
                        f"it accepts {sorted(accepted)}")
    return cls(model, **kwargs)
