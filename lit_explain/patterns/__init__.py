"""PatternNet/PatternAttribution patterns: streaming statistics with sum/count states.

``PatternComputer(model, pattern_type)`` fits one pattern per kernel layer (Kindermans et al.
2018); the analyzers ``pattern.net`` and ``pattern.attribution`` use them.
"""

from .computer import CollectionHandle, PatternComputer
from .layers import KERNEL_LAYERS, kernel_layers
from .statistics import PATTERN_TYPES, LayerStatistics

__all__ = [
    "KERNEL_LAYERS",
    "PATTERN_TYPES",
    "CollectionHandle",
    "LayerStatistics",
    "PatternComputer",
    "kernel_layers",
]
