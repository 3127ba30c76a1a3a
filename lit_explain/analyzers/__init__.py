"""The analyzer engine: torch only, no Lightning.

``create_analyzer(name, model, **kwargs)`` builds an analyzer by iNNvestigate's name;
``analyzers`` maps every name to its class; ``load_analyzer`` reads back what
``Analyzer.save`` wrote; ``conservation_report`` says where LRP relevance is lost.
"""

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
