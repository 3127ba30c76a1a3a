"""Compiled models: their original module, and running them without compiling.

``torch.compile(model)`` is analysed through its original module (:func:`uncompiled`).
Every rule-based forward pass runs under ``torch.compiler.set_stance("force_eager")``
(:func:`eager`), so that compiled code runs as Python, where the rules are. Every other
analysis of a model holding compiled submodules (:func:`holds_compiled`) runs under
``"eager_on_recompile"``: compiled code the training made runs where it holds for the
analysis' inputs, and the rest runs eagerly, never compiled for the analysis. The gradient
methods ran compiled submodules as training does, and each analysis (its parameters
frozen, its batch of interpolation points) recompiled them: a submodule compiled with
``fullgraph=True`` then failed on the recompile limit, in the user's next training step too,
and one without ran uncompiled from then on. (Not ``force_eager`` for them: ``torch.cond``
runs only compiled, and fails under it.) Training stays compiled.
"""

from __future__ import annotations

import sys
import threading
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn


def holds_compiled(modules: list[nn.Module]) -> bool:
    """Whether one of ``modules`` (a model's) is compiled: wrapped by ``torch.compile`` (an
    ``OptimizedModule``) or compiled in place (``module.compile()``)."""
    if "torch._dynamo" not in sys.modules:  # (nothing can have been compiled)
        return False
    wrapper = sys.modules["torch._dynamo"].eval_frame.OptimizedModule
    return any(isinstance(module, wrapper) or getattr(module, "_compiled_call_impl", None)
               is not None for module in modules)


def uncompiled(model: nn.Module) -> nn.Module:
    """The original module of a ``torch.compile``d model (the model itself otherwise)."""
    while isinstance(getattr(model, "_orig_mod", None), nn.Module):
        model = model._orig_mod
    return model


#: The stances :func:`eager` sets, the strongest first, with how many contexts (in any
#: thread) are open for each; the stance object whose exit puts back the one found before
#: the first context opened; the stance set now.
_STANCES = ("force_eager", "eager_on_recompile")
_open = dict.fromkeys(_STANCES, 0)
_found: Any = None
_current: str | None = None
_lock = threading.Lock()


@contextmanager
def eager(stance: str = "force_eager") -> Any:
    """Run compiled modules and functions under compiler ``stance`` while open:
    ``"force_eager"``, their Python code; ``"eager_on_recompile"``, compiled code where it
    holds, else their Python code.

    The compiler's stance is process-wide: the strongest stance open holds, and the last
    context to close puts back what was there before the first opened, whichever threads
    open and close them (the training callback's and a standalone analysis' overlap; each
    putting back what it found restored the wrong stance, for good). Where dynamo was never
    imported nothing can have been compiled, and nothing is done: importing it only for
    this costs about a second and starts its machinery in every process (DDP workers
    included).
    """
    if "torch._dynamo" not in sys.modules:
        yield
        return
    with _lock:
        _open[stance] += 1
        _apply()
    try:
        yield
    finally:
        with _lock:
            _open[stance] -= 1
            _apply()


def _apply() -> None:
    """Set the strongest stance open (or put back the one found)."""
    global _found, _current
    wanted = next((stance for stance in _STANCES if _open[stance]), None)
    if wanted == _current:
        return
    if wanted is None:
        _found.__exit__(None, None, None)  # (the stance before the first)
        _found = None
    elif _found is None:
        _found = torch.compiler.set_stance(wanted)  # (set as made; remembers the one found)
    else:
        torch.compiler.set_stance(wanted)
    _current = wanted
