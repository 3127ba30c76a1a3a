"""A model's train/eval flags, switched for a piece of work and put back as they were.

An analysis, a metric's forward passes, the pattern statistics and the callback's own work run
the model in eval mode (BatchNorm running statistics, dropout off). They switch it with
``model.eval()``, through each module's ``train(False)``, which a module may override to do
more than set its flag: a LoRA layer written as ``loralib`` writes it merges its adapter into
the frozen weight there, and unmerges it in ``train(True)``. Putting the flags back by
assignment alone left such a layer merged, and its adapter got no gradient in training.
:func:`training_untouched` also forks the random number generators, for work done in the
middle of a training loop; :func:`explaining` marks the forward passes that are the library's
own work; :func:`unmaterialized` finds a lazy module that has not run yet.
"""

from __future__ import annotations

import random
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import numpy as np
import torch
from torch import nn
from torch.nn.parameter import is_lazy


@contextmanager
def eval_mode(model: nn.Module, modules: Sequence[nn.Module] | None = None
              ) -> Iterator[None]:
    """Every module of ``model`` in eval mode while open; afterwards each module's flag and
    each parameter's ``requires_grad`` as they were, the outermost modules that override
    ``train`` and were in train mode having run their own ``train(True)`` again, and then
    the submodules of theirs that were in eval mode their own ``train(False)`` (a LoRA layer
    the user keeps merged inside a DDP wrapper stays merged; one training with its dropout
    in eval mode unmerges). A model already in eval mode is not touched. ``modules``: the
    model's modules, where the caller has listed them already."""
    modules = list(model.modules()) if modules is None else modules
    training = {module: module.training for module in modules}
    if not any(training.values()):
        yield
        return
    requires_grad = [(p, p.requires_grad) for p in model.parameters()]
    try:
        model.eval()
        yield
    finally:
        try:
            _train_again(model, training)
        finally:  # (exactly, also where a train(True) raised; a train() may freeze too)
            for module, flag in training.items():
                module.training = flag
            for param, flag in requires_grad:
                param.requires_grad_(flag)


def _train_again(module: nn.Module, training: dict[nn.Module, bool]) -> None:
    """Run ``train(True)`` of the outermost modules under ``module`` that override it and
    were in train mode, then ``train(False)`` of the outermost submodules of theirs that
    were in eval mode (its recursion reached them)."""
    if training.get(module, False) and type(module).train is not nn.Module.train:
        module.train(True)
        _eval_again(module, training)
        return
    for child in module.children():
        _train_again(child, training)


def _eval_again(module: nn.Module, training: dict[nn.Module, bool]) -> None:
    for child in module.children():
        if training.get(child, False):
            _eval_again(child, training)
        else:  # (and the modules in train mode inside it again: its recursion reached them)
            child.train(False)
            _train_again(child, training)


@contextmanager
def training_untouched(module: nn.Module) -> Iterator[None]:
    """Work done in the middle of a training loop leaves training as it was: ``module`` in
    eval mode (BatchNorm statistics and dropout untouched, also when the work runs on a
    training batch), every module's flag put back, and the random number generators forked:
    torch's of the CPU and of the module's GPU, numpy's and Python's (a model drawing random
    numbers in eval mode, MC dropout or a jitter drawn with ``np.random``, would otherwise
    draw other numbers in training)."""
    device = next((p.device for p in module.parameters()), torch.device("cpu"))
    numpy_state, python_state = np.random.get_state(), random.getstate()
    try:
        with eval_mode(module), torch.random.fork_rng(
                devices=[device] if device.type == "cuda" else []):
            yield
    finally:
        np.random.set_state(numpy_state)
        random.setstate(python_state)


_explaining = threading.local()


@contextmanager
def explaining(own_work: bool = True) -> Iterator[None]:
    """While open (in this thread), forward passes are the library's own work (``own_work``):
    an analysis, the callback's explaining, a metric's perturbed inputs. Pattern statistics
    leave them out: their hooks stay on the model for a whole validation batch, in which the
    callback's preflight, or an analysis or metric the user runs in ``validation_step``, makes
    forward passes of other inputs (a preflight's made the patterns 43 % off, Integrated
    Gradients' 120 %). ``own_work=False`` marks data again inside such work
    (:meth:`~lit_explain.PatternComputer.update` called from an analysed forward)."""
    depth = getattr(_explaining, "depth", 0)
    _explaining.depth = depth + 1 if own_work else 0
    try:
        yield
    finally:
        _explaining.depth = depth


def is_explaining() -> bool:
    """Whether :func:`explaining` is open in this thread."""
    return getattr(_explaining, "depth", 0) > 0


def unmaterialized(model: nn.Module) -> str | None:
    """The path of a module of ``model`` whose parameters are uninitialised (a lazy module
    takes its shapes from its first input), if any."""
    return next((path for path, module in model.named_modules()
                 if any(is_lazy(p) for p in module.parameters(recurse=False))), None)
