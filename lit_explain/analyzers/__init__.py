"""The analyzer engine: torch only, no Lightning.

``create_analyzer(name, model, **kwargs)`` builds an analyzer by iNNvestigate's name;
``analyzers`` (also :data:`lit_explain.analyzer_registry`) maps every name to its class;
``load_analyzer`` reads back what ``Analyzer.save`` wrote; ``conservation_report`` says where
LRP relevance is lost.

The package itself reads as that registry too (``lit_explain.analyzers["gradient"]``,
``sorted(lit_explain.analyzers)``), so that iNNvestigate's ``analyzers`` dict and the
package's submodules (``import lit_explain.analyzers.deep_lift``) live under one name.
"""

import sys
import types

from . import deep_lift, gradient, guided, lrp, pattern  # noqa: F401  (registers the analyzers)
from .base import NEURON_SELECTION_MODES, Analyzer, analysis_context
from .conservation import ConservationReport, conservation_report
from .diagnostics import ReverseOptions
from .errors import NotAnalyzableModelError
from .persistence import load_analyzer
from .registry import analyzers, create_analyzer, register
from .softmax import model_wo_softmax

__all__ = [
    "NEURON_SELECTION_MODES",
    "Analyzer",
    "ConservationReport",
    "NotAnalyzableModelError",
    "ReverseOptions",
    "analysis_context",
    "analyzers",
    "conservation_report",
    "create_analyzer",
    "load_analyzer",
    "model_wo_softmax",
    "register",
]


class _RegistryPackage(types.ModuleType):
    """This package, readable (and writable) as the name -> class registry."""

    def __getitem__(self, name: str) -> type[Analyzer]:
        return analyzers[name]

    def __setitem__(self, name: str, cls: type[Analyzer]) -> None:
        analyzers[name] = cls

    def __delitem__(self, name: str) -> None:
        del analyzers[name]

    def __contains__(self, name: object) -> bool:
        return name in analyzers

    def __iter__(self):
        return iter(analyzers)

    def __len__(self) -> int:
        return len(analyzers)

    def __bool__(self) -> bool:
        return True

    def keys(self):
        return analyzers.keys()

    def values(self):
        return analyzers.values()

    def items(self):
        return analyzers.items()

    def get(self, name: str, default: object = None) -> object:
        return analyzers.get(name, default)


sys.modules[__name__].__class__ = _RegistryPackage
