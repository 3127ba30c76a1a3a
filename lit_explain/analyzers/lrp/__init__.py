"""Layer-wise relevance propagation and Deep Taylor decomposition.

Rules (:mod:`.rules`) are short statements of their maths; :mod:`.layers` gives every
kernel layer and BatchNorm the affine form rules are written for; :mod:`.presets` says
which layer gets which rule; :mod:`.analyzer` is the LRP analyzer (with
:mod:`.deferred`, the kernel outputs whose rule waits for their first use), :mod:`.named` and
:mod:`.deep_taylor` register iNNvestigate's analyzer names.
"""

from . import analyzer, deep_taylor, named  # noqa: F401  (registers the analyzers)
from .analyzer import LRP
from .deep_taylor import BoundedDeepTaylor, DeepTaylor
from .presets import Preset, is_conv_layer, is_dense_layer, is_input_layer
from .rules import (
    RULES,
    AlphaBetaRule,
    BoundedRule,
    EpsilonRule,
    FlatRule,
    MagnitudeShareRule,
    Rule,
    WSquareRule,
    ZPlusFastRule,
    ZPlusRule,
    ZRule,
)

__all__ = [
    "LRP",
    "RULES",
    "AlphaBetaRule",
    "BoundedDeepTaylor",
    "BoundedRule",
    "DeepTaylor",
    "EpsilonRule",
    "FlatRule",
    "MagnitudeShareRule",
    "Preset",
    "Rule",
    "WSquareRule",
    "ZPlusFastRule",
    "ZPlusRule",
    "ZRule",
    "is_conv_layer",
    "is_dense_layer",
    "is_input_layer",
]
