"""Errors raised by the analyzer engine."""


class NotAnalyzableModelError(ValueError):
    """The model contains an operation that the chosen analyzer has no rule for.

    Raised before any result is returned, naming the module path, the module type and the
    operation, so that the user can replace the layer or pick another analyzer. The engine
    never falls back to a plain gradient where a rule was asked for.
    """
