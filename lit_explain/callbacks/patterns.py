"""``PatternCallback``: fit PatternNet/PatternAttribution patterns from the batches a Trainer
runs anyway, with no extra pass over the data.

Two sources (Kindermans et al. 2018 fit their patterns offline, after training):

* ``source="train"`` hooks the training forward passes: a whole epoch of data for free, but
  the statistics mix the slightly different weights of the epoch's steps, and the network is
  in train mode (dropout active, BatchNorm on batch statistics).
* ``source="val"`` hooks the validation forward passes: fewer samples, but exact for the
  weights being explained, in eval mode, as an offline fit on the validation set would be.
  Under mixed precision (``precision="16-mixed"``/``"bf16-mixed"``), whose validation
  forward runs in autocast, each outermost call of a module that holds fitted layers is run
  again in float32 for the statistics (:class:`FullPrecisionRerun`): its 16-bit activations
  made the patterns up to 66 % off an offline fit.

:class:`PatternCollector` does the work and is what :class:`~lit_explain.ExplainCallback`
reuses for its pattern analyzers; :class:`PatternCallback` is a thin Lightning wrapper.
"""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_warn
from lightning_utilities.core.apply_func import apply_to_collection
from torch import Tensor, nn
from typing_extensions import override

from ..analyzers.validation import check_choice, check_positive_int
from ..modes import is_explaining, training_untouched, unmaterialized
from ..patterns import PATTERN_TYPES, CollectionHandle, PatternComputer
from ..precision import LOW_PRECISION, full_precision

SOURCES = ("train", "val")
#: ``every_n_batches`` by source when not given: a tenth of the training batches bounds the
#: training-step overhead on the demo (see docs/patterns.md for the measured share,
#: benchmarks/patterns.py); validation is collected whole, so that its patterns are the
#: exact fit.
DEFAULT_EVERY_N_BATCHES = {"train": 10, "val": 1}


class PatternCollector:
    """Collect pattern statistics during ``fit``/``validate`` and refresh the patterns.

    Parameters
    ----------
    pattern_type:
        ``"linear"``, ``"relu"`` (= ``"relu.positive"``) or ``"relu.negative"``.
    source:
        ``"train"`` (training forward passes) or ``"val"`` (validation forward passes).
    every_n_batches:
        Collect from every n-th batch of the source only, to bound the cost (``None``: 10
        for ``"train"``, 1 for ``"val"``; see :data:`DEFAULT_EVERY_N_BATCHES`).
    module:
        Dotted path of the submodule to fit (``""``: the LightningModule itself). Pattern
        keys are module paths relative to it: give analyzers that same module.

    The driver calls :meth:`batch_start`/:meth:`batch_end` around each batch,
    :meth:`epoch_start` when its source's epoch starts, and :meth:`refresh` (a collective
    under DDP: on every rank) to turn the statistics gathered so far into ``patterns``.
    """

    def __init__(self, pattern_type: str = "relu", source: str = "train",
                 every_n_batches: int | None = None, module: str = "") -> None:
        check_choice("pattern_type", pattern_type, PATTERN_TYPES)
        check_choice("source", source, SOURCES)
        if every_n_batches is None:
            every_n_batches = DEFAULT_EVERY_N_BATCHES[source]
        check_positive_int("every_n_batches", every_n_batches)
        if not isinstance(module, str):
            raise TypeError(f"module must be a dotted submodule path (str), got {module!r}")
        self.pattern_type = pattern_type
        self.source = source
        self.every_n_batches = every_n_batches
        self.module = module
        self.computer: PatternComputer | None = None
        self.patterns: dict[str, Tensor] = {}
        self.refreshed_at: tuple[int, int] | None = None  # (epoch, global step)
        self._handle: CollectionHandle | FullPrecisionRerun | None = None
        self._scratch: PatternComputer | None = None  # (for FullPrecisionRerun)
        self._lazy_warned: str | None = None  # (the lazy module last warned about)

    def target(self, pl_module: nn.Module) -> nn.Module:
        """The module whose kernel layers get patterns."""
        try:
            return pl_module.get_submodule(self.module) if self.module else pl_module
        except AttributeError as error:
            raise ValueError(f"module={self.module!r} is not a submodule of "
                             f"{type(pl_module).__name__}") from error

    def setup(self, pl_module: nn.Module) -> None:
        """Create the computer for ``pl_module`` (fails early for a model without kernels, or
        one that runs compiled: see :func:`compiled_part`); none yet while a lazy module of
        it has not run (no shapes)."""
        compiled = compiled_part(pl_module)
        if compiled is not None:
            raise ValueError(
                f"{compiled} runs compiled (torch.compile), and the pattern statistics are "
                f"collected by hooks on its kernel layers while it runs: they make the compiled "
                f"code recompile, which changes the random numbers training draws (and so the "
                f"trained weights), and miss layers. Leave the pattern analyzers out of a "
                f"compiled run, or fit the patterns with lit_explain.PatternComputer on the "
                f"uncompiled module and analyse with them there")
        target = self.target(pl_module)
        if (self.computer is None or self.computer.model is not target) and \
                unmaterialized(target) is None:  # (a lazy module: its first forward gives
            self.computer = PatternComputer(target, self.pattern_type)  # its shapes; later)

    def batch_start(self, trainer: L.Trainer, pl_module: nn.Module, stage: str,
                    batch_idx: int) -> None:
        """Hook the model for this batch if it belongs to the source and is sampled."""
        self.batch_end()
        if stage != self.source or trainer.sanity_checking or batch_idx % self.every_n_batches:
            return
        self.setup(pl_module)
        if self.computer is None:  # (not yet: see setup)
            lazy = unmaterialized(self.target(pl_module))
            if lazy != self._lazy_warned:  # (once per module: another may be the one left)
                self._lazy_warned = lazy
                rank_zero_warn(f"pattern statistics wait for the lazy module '{lazy}', which "
                               f"has not run (its parameters are uninitialised): the batches "
                               f"before its first forward, that one included, add nothing "
                               f"(a lazy module the forward never runs keeps them waiting)")
            return
        if stage == "val" and str(trainer.precision).endswith("-mixed"):
            if self._scratch is None or self._scratch.model is not self.computer.model:
                self._scratch = PatternComputer(self.computer.model, self.pattern_type)
            self._handle = FullPrecisionRerun(self.computer, self._scratch)
        else:
            self._handle = self.computer.attach()

    def batch_end(self, finished: bool = False) -> None:
        """Remove the hooks (idempotent); ``finished``: the batch ended normally (not by an
        exception, nor unsampled)."""
        if self._handle is not None:
            handle, self._handle = self._handle, None
            if isinstance(handle, FullPrecisionRerun):
                handle.remove(finished)
            else:
                handle.remove()

    def epoch_start(self, trainer: L.Trainer, stage: str) -> None:
        """Start a new window of statistics when the source's epoch starts."""
        if stage == self.source and not trainer.sanity_checking and self.computer is not None:
            self.computer.reset()

    def refresh(self, trainer: L.Trainer) -> dict[str, Tensor] | None:
        """Sum the statistics over ranks and recompute ``patterns`` (``None``: no data yet).

        A collective under DDP: call it on every rank, at the same point.
        """
        self.batch_end()
        if self.computer is None:
            return None
        statistics = self.computer.synced_statistics()
        if all(int(s.rows) == 0 for s in statistics.values()):
            return None
        with torch.inference_mode(False):  # (normal tensors, also under trainer.validate())
            self.patterns = self.computer.patterns_from(statistics)
        self.refreshed_at = (trainer.current_epoch, trainer.global_step)
        return self.patterns

    def state_dict(self) -> dict[str, Any]:
        """Patterns and settings: tensors and plain types only."""
        return {"pattern_type": self.pattern_type, "source": self.source,
                "patterns": {path: p.detach().cpu().clone() for path, p in self.patterns.items()},
                "refreshed_at": None if self.refreshed_at is None else list(self.refreshed_at)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`; missing keys keep their defaults."""
        if state.get("pattern_type", self.pattern_type) != self.pattern_type:
            return  # patterns of another type are not ours to resume
        self.patterns = dict(state.get("patterns") or {})
        refreshed = state.get("refreshed_at")
        self.refreshed_at = None if refreshed is None else tuple(refreshed)


class FullPrecisionRerun:
    """Collects the statistics of a validation forward in autocast from the model's own
    float32 computation: every outermost call of a module that holds fitted layers (the
    fitted module, the ``self.net`` a ``validation_step`` calls directly, a layer called on
    its own) is run again first, in float32 (autocast off), and only that run is collected.

    The rerun gets copies of the call's tensors (a forward may change its input in place; in
    float32 where autocast made them 16-bit: a layer called on its own gets its input so),
    runs without gradients, with torch's, numpy's and Python's random number generators
    forked, into ``scratch`` (a computer of the same model and pattern type, merged once the
    rerun succeeded); calls made inside a rerun, ours or another collector's, are not run
    again. A rerun that fails adds nothing, with a warning (once per process), as does a
    validation batch that calls none of the fitted layers."""

    running = False  # (a rerun in progress, of any collector)
    warned: set[str] = set()

    def __init__(self, computer: PatternComputer, scratch: PatternComputer) -> None:
        self.computer, self.scratch = computer, scratch
        self.calls, self._depth = 0, 0  # (reruns; holders' calls open now)
        handles = []
        for module in holders(computer.model, list(computer.layers)):
            handles.append(module.register_forward_pre_hook(self._enter, with_kwargs=True,
                                                            prepend=True))
            handles.append(module.register_forward_hook(self._leave, always_call=True))
        self._handles = handles

    def _enter(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        if FullPrecisionRerun.running or is_explaining():  # (a call of a rerun, ours or
            return  # another collector's, or of the library's own work: no data)
        if not self._depth:  # (the outermost call: its rerun covers the calls inside it)
            self._rerun(module, args, kwargs)
        self._depth += 1

    def _leave(self, module: nn.Module, args: tuple, output: object) -> None:
        if not (FullPrecisionRerun.running or is_explaining()):
            self._depth -= 1

    def _rerun(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        self.calls += 1
        FullPrecisionRerun.running = True
        try:
            with torch.no_grad():  # (copies; float32 where autocast made 16-bit tensors)
                args, kwargs = apply_to_collection((args, kwargs), Tensor, _float32_copy)
            self.scratch.reset()
            with training_untouched(module), torch.no_grad(), full_precision(), \
                    self.scratch.collecting():
                module(*args, **kwargs)
            self.computer.merge(self.scratch)
        except Exception as error:  # (training goes on: the batch adds nothing)
            self._warn("failed", f"the float32 rerun of a call of {type(module).__name__} "
                                 f"for the pattern statistics raised ({type(error).__name__}: "
                                 f"{error}): such a call adds nothing to them")
        finally:
            FullPrecisionRerun.running = False

    def remove(self, finished: bool = False) -> None:
        """Remove the hooks; where the validation batch ``finished`` without calling any
        fitted layer, warn (once per process)."""
        for handle in self._handles:
            handle.remove()
        if finished and not self.calls:
            self._warn("not called", "pattern statistics from validation under mixed "
                                     "precision come from the fitted layers' calls run again "
                                     "in float32, and a validation batch called none of them: "
                                     "it adds nothing")

    @classmethod
    def _warn(cls, what: str, message: str) -> None:
        if what not in cls.warned:
            cls.warned.add(what)
            rank_zero_warn(message)


def _float32_copy(t: Tensor) -> Tensor:
    return t.float() if t.dtype in LOW_PRECISION else t.clone()


def holders(model: nn.Module, paths: list[str]) -> list[nn.Module]:
    """``model`` and every module on the way to the modules at ``paths``, those included."""
    found = {"": model}
    for path in paths:
        parts = path.split(".")
        for end in range(1, len(parts) + 1):
            prefix = ".".join(parts[:end])
            if prefix not in found:
                found[prefix] = model.get_submodule(prefix)
    return list({id(module): module for module in found.values()}.values())


def compiled_part(pl_module: nn.Module) -> str | None:
    """Which part of ``pl_module`` runs compiled, named (``None``: none): a submodule made by
    ``torch.compile`` (it holds the original as ``_orig_mod``), or the LightningModule itself,
    compiled by Lightning (``from_compiled`` leaves ``_compiler_ctx`` on it)."""
    if getattr(pl_module, "_compiler_ctx", None):
        return f"the model ({type(pl_module).__name__})"
    for path, module in pl_module.named_modules():
        if isinstance(getattr(module, "_orig_mod", None), nn.Module):
            return f"module '{path}'" if path else f"the model ({type(pl_module).__name__})"
    return None


class PatternCallback(Callback):
    """Fit PatternNet/PatternAttribution patterns while the model trains.

    Statistics come from the forward passes the Trainer already runs (see the module
    docstring for the two sources); they are summed over DDP ranks and turned into patterns
    once per epoch of the source. ``callback.patterns`` then feeds
    ``create_analyzer("pattern.attribution", pl_module, patterns=callback.patterns)``.
    The patterns (not the statistics of an unfinished epoch) are kept in the checkpoint.

    Parameters
    ----------
    pattern_type:
        ``"linear"``, ``"relu"`` (default, the paper's choice for ReLU networks),
        ``"relu.positive"`` or ``"relu.negative"``.
    source:
        ``"train"``: every training epoch's forward passes (much data; weights move within
        the epoch; dropout and batch statistics active). ``"val"``: each validation run's
        forward passes (exact for the weights being explained).
    every_n_batches:
        Collect from every n-th batch only, to bound the cost. ``None``: every 10th training
        batch (about +22% training-step overhead on the demo's CNN on one CPU thread, where
        collecting from every batch costs about +216%: ``docs/patterns.md``), every
        validation batch.
    module:
        Dotted path of the submodule to fit; ``""`` fits the LightningModule itself.

    Notes
    -----
    Training is unchanged: the hooks read the forward's inputs and outputs without gradient
    and return nothing. Statistics accumulate in float64 on the model's device, out of
    autocast.
    """

    def __init__(self, pattern_type: str = "relu", source: str = "train",
                 every_n_batches: int | None = None, module: str = "") -> None:
        super().__init__()
        self.collector = PatternCollector(pattern_type, source, every_n_batches, module)

    @property
    def patterns(self) -> dict[str, Tensor]:
        """Module path → pattern, from the last refresh (empty before the first)."""
        return self.collector.patterns

    @property
    @override
    def state_key(self) -> str:
        c = self.collector
        return self._generate_state_key(pattern_type=c.pattern_type, source=c.source,
                                        every_n_batches=c.every_n_batches, module=c.module)

    @override
    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self.collector.setup(pl_module)

    @override
    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.collector.epoch_start(trainer, "train")

    @override
    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule,
                             batch: Any, batch_idx: int) -> None:
        self.collector.batch_start(trainer, pl_module, "train", batch_idx)

    @override
    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule,
                           outputs: Any, batch: Any, batch_idx: int) -> None:
        self.collector.batch_end()

    @override
    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.collector.source == "train":
            self.collector.refresh(trainer)

    @override
    def on_validation_epoch_start(self, trainer: L.Trainer,
                                  pl_module: L.LightningModule) -> None:
        self.collector.epoch_start(trainer, "val")

    @override
    def on_validation_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule,
                                  batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        self.collector.batch_start(trainer, pl_module, "val", batch_idx)

    @override
    def on_validation_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule,
                                outputs: Any, batch: Any, batch_idx: int,
                                dataloader_idx: int = 0) -> None:
        self.collector.batch_end(finished=True)

    @override
    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.collector.source == "val" and not trainer.sanity_checking:
            self.collector.refresh(trainer)

    @override
    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule,
                     exception: BaseException) -> None:
        self.collector.batch_end()

    @override
    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self.collector.batch_end()

    @override
    def state_dict(self) -> dict[str, Any]:
        return self.collector.state_dict()

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.collector.load_state_dict(state_dict)
