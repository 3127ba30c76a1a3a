"""Lightning callbacks: explanations and pattern statistics computed during training."""

from .explain import ExplainCallback
from .patterns import PatternCallback

__all__ = ["ExplainCallback", "PatternCallback"]
