"""Lightning callbacks: explanations (and pattern statistics) computed during training."""

from .explain import ExplainCallback

__all__ = ["ExplainCallback"]
