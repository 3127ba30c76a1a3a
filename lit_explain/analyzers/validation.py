"""Argument checks whose error messages name the bad value and the valid ones."""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterable
from typing import Any

#: The seeds ``torch.Generator.manual_seed`` takes.
SEEDS = range(-2**63, 2**64)


def check_choice(name: str, value: Any, choices: Iterable[Any]) -> None:
    """Raise ``ValueError`` unless ``value`` is one of ``choices``."""
    choices = list(choices)
    if value not in choices:
        raise ValueError(f"{name}={value!r} is not valid; expected one of {choices}")


def check_bool(name: str, value: Any) -> None:
    """Raise ``ValueError`` unless ``value`` is ``True`` or ``False`` (not a truthy value)."""
    if not isinstance(value, bool):
        raise ValueError(f"{name}={value!r} is not valid; expected True or False")


def check_positive_int(name: str, value: Any) -> None:
    """Raise ``ValueError`` unless ``value`` is an int ≥ 1."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name}={value!r} is not valid; expected an integer >= 1")


def check_seed(value: Any) -> None:
    """Raise ``ValueError`` unless ``value`` is an integer seed a torch generator takes."""
    # (int() first: `in range` walks the whole range for a numpy integer)
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or \
            int(value) not in SEEDS:
        raise ValueError(f"seed={value!r} is not valid; expected an integer from -2**63 to "
                         f"2**64 - 1")


def is_finite_number(value: Any) -> bool:
    """Whether ``value`` is a finite real number (not a bool, a string or a tensor)."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(
        value)


def check_number(name: str, value: Any, at_least: float | None = None) -> None:
    """Raise ``ValueError`` unless ``value`` is a finite real number (see
    :func:`is_finite_number`), and ``>= at_least`` where that is given."""
    if not is_finite_number(value) or (at_least is not None and value < at_least):
        bound = "" if at_least is None else f" >= {at_least}"
        raise ValueError(f"{name}={value!r} is not valid; expected a finite number{bound}")
