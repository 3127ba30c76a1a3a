"""The analyzer engine: torch only, no Lightning.

``create_analyzer(name, model, **kwargs)`` builds an analyzer by iNNvestigate's name;
``analyzers`` maps every name to its class.
"""

from . import deep_lift, gradient, guided, lrp, pattern  # noqa: F401  (registers the analyzers)
from .base import NEURON_SELECTION_MODES, Analyzer, analysis_context
from .errors import NotAnalyzableModelError
from .registry import analyzers, create_analyzer, register
from .softmax import model_wo_softmax

__all__ = [
    "NEURON_SELECTION_MODES",
    "Analyzer",
    "NotAnalyzableModelError",
    "analysis_context",
    "analyzers",
    "create_analyzer",
    "model_wo_softmax",
    "register",
]
