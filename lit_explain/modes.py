"""A model's train/eval flags, switched for a piece of work and put back as they were.

An analysis, a metric's forward passes, the pattern statistics and the callback's own work run
the model in eval mode (BatchNorm running statistics, dropout off). They switch it with
``model.eval()``, through each module's ``train(False)``, which a module may override to do
more than set its flag: a LoRA layer written as ``loralib`` writes it merges its adapter into
the frozen weight there, and unmerges it in ``train(True)``. Putting the flags back by
assignment alone left such a layer merged, and its adapter got no gradient in training.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

from torch import nn


@contextmanager
def eval_mode(model: nn.Module, modules: Sequence[nn.Module] | None = None
              ) -> Iterator[None]:
    """Every module of ``model`` in eval mode while open; afterwards each module's flag as
    it was, the modules that were in train mode and override ``train`` having run their own
    ``train(True)`` again. A model already in eval mode is not touched. ``modules``: the
    model's modules, where the caller has listed them already."""
    flags = [(module, module.training) for module in (
        model.modules() if modules is None else modules)]
    if not any(flag for _, flag in flags):
        yield
        return
    model.eval()
    try:
        yield
    finally:
        for module, flag in flags:
            if flag and type(module).train is not nn.Module.train:
                module.train(True)  # (recursive: the flags are set exactly below)
        for module, flag in flags:
            module.training = flag
