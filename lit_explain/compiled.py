"""Compiled models: their original module, and running them eagerly.

``torch.compile(model)`` is analysed through its original module (:func:`uncompiled`).
Every analysis of a model holding compiled submodules (:func:`holds_compiled`), and every
rule-based forward pass, runs under ``torch.compiler.set_stance("force_eager")``
(:func:`eager`), so that compiled code runs as Python: where the rules are, and without a
compiled graph made for the analysis' settings. The gradient methods ran compiled
submodules compiled, and each analysis (its parameters frozen, its batch of interpolation
points) recompiled them: a submodule compiled with ``fullgraph=True`` then failed on the
recompile limit, in the user's next training step too, and one without ran uncompiled from
then on. (Not every analysis: ``torch.cond`` runs only compiled, and fails under that
stance.) Training stays compiled.
"""

from __future__ import annotations

import sys
import threading
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn


def holds_compiled(model: nn.Module) -> bool:
    """Whether a submodule of ``model`` is ``torch.compile``d (an ``OptimizedModule``)."""
    if "torch._dynamo" not in sys.modules:  # (nothing can have been compiled)
        return False
    from torch._dynamo.eval_frame import OptimizedModule

    return any(isinstance(module, OptimizedModule) for module in model.modules())


def uncompiled(model: nn.Module) -> nn.Module:
    """The original module of a ``torch.compile``d model (the model itself otherwise)."""
    while isinstance(getattr(model, "_orig_mod", None), nn.Module):
        model = model._orig_mod
    return model


#: How many :func:`eager` contexts are open (in any thread), and the stance they set.
_eager_depth = 0
_eager_stance: Any = None
_eager_lock = threading.Lock()


@contextmanager
def eager() -> Any:
    """Run compiled modules and functions eagerly (their Python code) while open.

    The compiler's stance is process-wide: the first context to open sets it, the last to
    close puts back what was before, whichever threads open and close them (the training
    callback's and a standalone analysis' overlap; each putting back what it found restored
    the wrong stance, for good). Where dynamo was never imported nothing can have been
    compiled, and nothing is done: importing it only for this costs about a second and
    starts its machinery in every process (DDP workers included).
    """
    global _eager_depth, _eager_stance
    if "torch._dynamo" not in sys.modules:
        yield
        return
    with _eager_lock:
        if _eager_depth == 0:
            _eager_stance = torch.compiler.set_stance("force_eager")  # (set as made)
        _eager_depth += 1
    try:
        yield
    finally:
        with _eager_lock:
            _eager_depth -= 1
            if _eager_depth == 0:
                _eager_stance.__exit__(None, None, None)  # (the stance before the first)
                _eager_stance = None
