"""lit_explain: iNNvestigate's analyzers for PyTorch, computed while a model trains.

The engine (:mod:`lit_explain.analyzers`) needs only torch; the Lightning callback
(:class:`ExplainCallback`) is imported on first use.
"""

from .analyzers import (
    Analyzer,
    NotAnalyzableModelError,
    conservation_report,
    create_analyzer,
    load_analyzer,
    model_wo_softmax,
)
from .analyzers.registry import analyzers as analyzer_registry
from .patterns import PatternComputer

# ``lit_explain.analyzers`` is the engine package, which also reads as the registry
# (``lx.analyzers["gradient"]``, ``sorted(lx.analyzers)``); ``analyzer_registry`` is the dict.

__version__ = "0.1.0"

__all__ = [
    "Analyzer",
    "ExplainCallback",
    "NotAnalyzableModelError",
    "PatternCallback",
    "PatternComputer",
    "analyzer_registry",
    "analyzers",
    "conservation_report",
    "create_analyzer",
    "load_analyzer",
    "metrics",
    "model_wo_softmax",
    "viz",
]


def __getattr__(name: str):
    # Lightning-dependent and optional parts load lazily, so that the engine stays torch-only.
    if name in ("ExplainCallback", "PatternCallback"):
        from . import callbacks

        return getattr(callbacks, name)
    if name in ("metrics", "viz", "patterns"):
        import importlib

        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module 'lit_explain' has no attribute {name!r}")
