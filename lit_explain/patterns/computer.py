"""PatternComputer: stream a model's layer statistics and turn them into patterns.

The statistics are collected by forward hooks on every Linear, ConvNd and ConvTransposeNd
(1-3 d), with no gradient and without touching the model's output; they are sums and counts
(:class:`~lit_explain.patterns.statistics.LayerStatistics`), so batches, epochs, processes
and DDP ranks merge by addition. The pattern is derived from them at :meth:`compute`.

The weight and bias are those the layer's kernel call (``F.linear``, ``torch.convNd``,
``torch.conv_transposeNd``) receives, recorded while its forward runs: a layer that computes
its weight in ``forward`` (weight standardisation, ``torch.nn.utils.parametrizations``) gets
the pattern of the weight it uses, as the analyzers use that weight too; so does a layer run
with parameters other than its own (``torch.func.functional_call``: an EMA teacher, an
ensemble member).

A ``torch.compile``d model is fit through its original module, as the analyzers explain it:
the pattern keys are that module's paths, without ``_orig_mod.``.

The mask of the ``"relu"`` types is read from the layer's real output (bias included). When
that output goes straight into a BatchNorm, the BatchNorm's output is read instead: the value
the following ReLU sees, as if the BatchNorm were folded into the kernel layer (iNNvestigate
1.x likewise searched forward to the next activation).
"""

from __future__ import annotations

import itertools
import weakref
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode

from ..compiled import uncompiled
from ..modes import eval_mode, explaining, is_explaining, unmaterialized
from ..precision import full_precision
from .layers import (
    KERNEL_LAYERS,
    batch_sums,
    current_weight,
    is_batch_norm,
    kernel_layers,
    layout,
    note_normalised_for,
    out_features,
    pre_activation,
    row_size,
    rows_to_weight,
    weight_rows,
)
from .statistics import PATTERN_TYPES, LayerStatistics, neuron_mask


class _Pending:
    """A kernel layer's batch waiting one step for a BatchNorm that may read its output."""

    __slots__ = ("path", "module", "x", "y", "mask", "aliases", "consumed")

    def __init__(self, path: str, module: nn.Module, x: Tensor, y: Tensor,
                 mask: Tensor | None, output: Tensor) -> None:
        self.path, self.module, self.x, self.y, self.mask = path, module, x, y, mask
        #: The layer's output and what carries its values on towards the activation (a
        #: BatchNorm's output, ``output.contiguous()``), kept alive so that no id is reused.
        self.aliases = [output]
        #: Whether an activation read it (a ReLU, in place or not): the mask stays.
        self.consumed = False


#: The calls a kernel layer's forward makes its output with: (input, weight, bias, ...).
KERNEL_CALLS = frozenset({F.linear, torch.conv1d, torch.conv2d, torch.conv3d,
                          torch.conv_transpose1d, torch.conv_transpose2d,
                          torch.conv_transpose3d})


class _KernelCalls(TorchFunctionMode):
    """Active while one kernel layer's forward runs: the kernel calls it makes, each as
    ``(output, weight, bias)``."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[Tensor, Tensor, Tensor | None]] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        output = func(*args, **kwargs)
        if func in KERNEL_CALLS:
            weight = args[1] if len(args) > 1 else kwargs["weight"]
            bias = args[2] if len(args) > 2 else kwargs.get("bias")
            self.calls.append((output, weight, bias))
        return output

    def weight_and_bias(self, module: nn.Module, output: Tensor
                        ) -> tuple[Tensor, Tensor | None]:
        """The weight and bias of the call that made ``output`` (the module's own where no
        kernel call made it)."""
        for made, weight, bias in self.calls:
            if made is output:
                return weight, bias
        if not self.calls:
            return current_weight(module), module.bias
        raise ValueError(f"{type(module).__name__}'s output is not the output of one kernel "
                         f"call (it adds {len(self.calls)} calls, as a LoRA adapter does): "
                         f"it has no one weight to fit a pattern to. Fit patterns to the layers "
                         f"it is made of, or merge the adapter into the weight first")


_DIVISIONS = frozenset({torch.div, Tensor.div, Tensor.div_, Tensor.__truediv__,
                        Tensor.__itruediv__})
#: Elementwise affine maps (a BatchNorm written out, ``h * scale + shift``, a layer scale),
#: where one operand is a constant: the mask follows a kernel output through them.
_AFFINE = frozenset({
    torch.add, torch.sub, torch.mul, torch.div, Tensor.add, Tensor.sub, Tensor.mul, Tensor.div,
    Tensor.__add__, Tensor.__radd__, Tensor.__sub__, Tensor.__rsub__, Tensor.__mul__,
    Tensor.__rmul__, Tensor.__truediv__, Tensor.add_, Tensor.sub_, Tensor.mul_, Tensor.div_,
    Tensor.__iadd__, Tensor.__isub__, Tensor.__imul__, Tensor.__itruediv__, torch.neg,
    Tensor.neg, Tensor.__neg__})
#: How many constants a collection holds before it forgets the freed ones.
_CONSTANTS_HELD = 1024
#: Calls that give a kernel output's values as they are (the mask follows them unchanged).
_SAME_VALUES = frozenset({Tensor.detach, torch.detach, Tensor.contiguous, Tensor.clone,
                          torch.clone, Tensor.to, Tensor.float, Tensor.double})
#: Activations: where one reads a kernel output, its mask stays.
_ACTIVATIONS = frozenset({
    F.relu, F.relu_, torch.relu, torch.relu_, Tensor.relu, Tensor.relu_, F.relu6, F.hardtanh,
    F.hardtanh_, F.leaky_relu, F.leaky_relu_, F.elu, F.elu_, F.gelu, F.silu, F.mish,
    torch.sigmoid, Tensor.sigmoid, torch.tanh, Tensor.tanh, torch.clamp, Tensor.clamp,
    Tensor.clamp_, torch.clamp_min, Tensor.clamp_min, Tensor.clamp_min_, F.threshold,
    F.threshold_})


class _Calls(TorchFunctionMode):
    """Active while a :class:`PatternComputer` collects: hands every call that makes a
    tensor to ``on_call(func, args, kwargs, output)``."""

    def __init__(self, on_call: Callable[[Callable, tuple, dict, Tensor], None]) -> None:
        super().__init__()
        self.on_call = on_call

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        output = func(*args, **kwargs)
        if isinstance(output, Tensor):
            self.on_call(func, args, kwargs, output)
        return output


def computes_its_weight(module: nn.Module) -> bool:
    """Whether a kernel layer has a forward of its own (weight standardisation, say), which
    may call its kernel with another weight than ``module.weight``. torch's own forwards
    call it with ``module.weight`` and ``module.bias`` (parametrizations included)."""
    own = type(module)
    base = next(cls for cls in own.__mro__ if cls in KERNEL_LAYERS)
    return own.forward is not base.forward or \
        getattr(own, "_conv_forward", None) is not getattr(base, "_conv_forward", None)


def _leave(mode: TorchFunctionMode) -> None:
    """Take ``mode`` off torch's function-mode stack, wherever it is (modes entered after
    it and still open, a LightningModule's own, stay, in their order)."""
    above = []
    while torch._C._len_torch_function_stack():
        top = torch._C._pop_torch_function_stack()
        if top is mode:
            break
        above.append(top)
    for other in reversed(above):
        torch._C._push_on_torch_function_stack(other)


class CollectionHandle:
    """Returned by :meth:`PatternComputer.attach`; :meth:`remove` detaches the hooks."""

    def __init__(self, computer: PatternComputer, handles: list,
                 calls: _Calls | None = None, nested: bool = False) -> None:
        self._computer = computer
        self._handles = handles
        self._calls = calls
        self._nested = nested
        self._removed = False

    def remove(self) -> None:
        """Finish the last pending layer and remove every hook (idempotent: a handle
        removed once leaves a later collection alone)."""
        if self._nested or self._removed:  # (the outer handle does it)
            return
        self._removed = True
        try:
            self._computer._flush()
        finally:
            for handle in self._handles:
                handle.remove()
            self._handles = []
            if self._calls is not None:
                _leave(self._calls)
                self._calls = None
            self._computer._attached = False
            self._computer._constants = {}


class PatternComputer:
    """Fit PatternNet/PatternAttribution patterns from a stream of batches.

    Implements the signal estimators of Kindermans et al. 2018, "Learning how to explain
    neural networks: PatternNet and PatternAttribution" (ICLR), with iNNvestigate 1.x's
    names (``innvestigate.tools.PatternComputer``).

    Parameters
    ----------
    model:
        The model whose kernel layers (``nn.Linear``, ``nn.Conv1d/2d/3d``,
        ``nn.ConvTranspose1d/2d/3d``) get patterns; convolutions are fit over their input
        patches, transposed convolutions per output channel over every output position. A
        ``torch.compile``d model is fit through its original module (kept as
        :attr:`model`), whose module paths key the patterns, as the analyzers explain it.
    pattern_type:
        ``"linear"`` (every row counts), ``"relu"`` = ``"relu.positive"`` (rows where the
        layer's output is positive: the paper's two-component estimator, the right one for
        ReLU networks) or ``"relu.negative"`` (rows where it is ≤ 0).

    Notes
    -----
    ``E[y]`` is taken over the same masked rows as ``E[x]`` and ``E[xy]``, as in the
    paper's estimator; iNNvestigate 1.x averaged ``y`` over all rows for the relu types.
    Under DDP, :meth:`compute` sums the statistics of all ranks with
    ``torch.distributed.all_reduce`` (every rank must call it); the local state is unchanged.

    Examples
    --------
    >>> pc = PatternComputer(model, pattern_type="relu")
    >>> patterns = pc.fit(train_loader)               # or: pc.update(x) per batch
    >>> an = create_analyzer("pattern.attribution", model, patterns=patterns)
    """

    def __init__(self, model: nn.Module, pattern_type: str = "relu") -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        if pattern_type not in PATTERN_TYPES:  # (no import from the analyzers: a layer below)
            raise ValueError(f"pattern_type={pattern_type!r} is not valid; expected one of "
                             f"{list(PATTERN_TYPES)}")
        self.model = uncompiled(model)
        self.pattern_type = pattern_type
        lazy = unmaterialized(self.model)
        if lazy is not None:
            raise ValueError(f"'{lazy}' ({type(self.model.get_submodule(lazy)).__name__}) has "
                             f"uninitialised parameters (a lazy module takes its shapes from "
                             f"its first input): run one forward pass before fitting patterns")
        self.layers = kernel_layers(self.model)
        if not self.layers:
            raise ValueError(f"{type(model).__name__} has no kernel layer (nn.Linear, "
                             f"nn.ConvNd, nn.ConvTransposeNd): there is nothing to fit "
                             f"patterns for")
        self.statistics: dict[str, LayerStatistics] = {
            path: LayerStatistics.zeros(out_features(m), row_size(m), current_weight(m).device)
            for path, m in self.layers.items()}
        self._pending: dict[int, _Pending] = {}
        self._attached = False
        #: Layers whose calls have no one weight (a LoRA adapter): their error, raised when
        #: patterns are made, not in the model's forward (a training step's).
        self._failures: dict[str, ValueError] = {}
        #: While collecting: the parameters, buffers and tensors made of them alone, by id
        #: (weakly: a collection may run for many steps).
        self._constants: dict[int, weakref.ref] = {}
        #: module path -> the kernel calls of its forward, while it runs (layers with a
        #: forward of their own only: see :func:`computes_its_weight`)
        self._kernel_calls: dict[str, _KernelCalls] = {}
        #: module path -> the weight its kernel call received in the last collected forward,
        #: and the parameters the layer held during that call
        self._calls_seen: dict[str, tuple[Tensor, tuple[Tensor, ...]]] = {}

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(pattern_type={self.pattern_type!r}, "
                f"layers={len(self.layers)})")

    # Collecting ---------------------------------------------------------------------------

    def attach(self) -> CollectionHandle:
        """Hook the model: every forward pass until ``handle.remove()`` adds statistics.

        The model's mode and output are untouched, so this is what a training loop uses to
        collect from the forward passes it runs anyway. Attached already, it collects once
        (the returned handle removes nothing).
        """
        if self._attached:
            return CollectionHandle(self, [], nested=True)
        handles = []
        for path, module in self.layers.items():
            if computes_its_weight(module):
                handles.append(module.register_forward_pre_hook(
                    lambda m, args, path=path: self._on_kernel_start(path)))
            handles.append(module.register_forward_hook(
                lambda m, args, out, path=path: self._on_kernel(path, m, args, out),
                always_call=True))  # (also when forward raises: it ends _on_kernel_start's mode)
        calls = None
        if self.pattern_type != "linear":  # (modules that call no F.batch_norm: SyncBatchNorm)
            handles += [module.register_forward_hook(self._on_batch_norm)
                        for module in self.model.modules() if is_batch_norm(module)]
            self._constants = {id(t): weakref.ref(t) for t in (*self.model.parameters(),
                                                               *self.model.buffers())}
            calls = _Calls(self._on_call)  # (F.batch_norm calls, BatchNorms written out)
            calls.__enter__()
        self._attached = True
        return CollectionHandle(self, handles, calls)

    @contextmanager
    def collecting(self) -> Iterator[PatternComputer]:
        """Context manager form of :meth:`attach`."""
        handle = self.attach()
        try:
            yield self
        finally:
            handle.remove()

    def update(self, x: Tensor) -> Tensor:
        """Add the statistics of one batch; returns the model's (unchanged) output.

        The forward runs in eval mode (the model as it is analyzed) without gradients and in
        full precision (autocast off); the train/eval flags are restored afterwards.
        """
        # (in full precision, as the statistics: under autocast the model's bfloat16
        # activations made patterns 1.4 % off)
        with eval_mode(self.model), torch.no_grad(), full_precision(), explaining(False), \
                self.collecting():  # (its data, also inside an analysis: see modes)
            return self.model(x)

    def fit(self, dataloader: Iterable[Any], max_batches: int | None = None,
            progress: bool = True) -> dict[str, Tensor]:
        """One pass over ``dataloader`` (adding to the current state), then :meth:`compute`.

        Parameters
        ----------
        dataloader:
            Batches: a tensor, or a tuple/list/dict whose first element is the input.
        max_batches:
            Stop after this many batches (``None``: the whole loader).
        progress:
            Show a tqdm progress bar.
        """
        from tqdm.auto import tqdm

        if max_batches is not None and (isinstance(max_batches, bool) or not isinstance(
                max_batches, int) or max_batches < 1):
            raise ValueError(f"max_batches={max_batches!r} is not valid; expected an integer "
                             f">= 1 or None")
        try:
            total = len(dataloader)  # type: ignore[arg-type]
        except TypeError:
            total = None
        if max_batches is not None:
            total = max_batches if total is None else min(total, max_batches)
        batches = dataloader if max_batches is None else itertools.islice(dataloader,
                                                                          max_batches)
        bar = tqdm(batches, total=total, desc="fitting patterns", disable=not progress,
                   leave=False)
        for batch in self._batches(bar):  # (islice pulls no batch beyond max_batches)
            self.update(batch)
        bar.close()
        return self.compute()

    def compute_generator(self, generator: Iterable[Any], steps: int | None = None
                          ) -> dict[str, Tensor]:
        """iNNvestigate 1.x's ``compute_generator``: :meth:`fit` on the batches of
        ``generator`` (``steps`` of them at most; ``None``: all)."""
        return self.fit(generator, max_batches=steps)

    def _batches(self, batches: Iterable[Any]) -> Iterator[Tensor]:
        """The inputs of ``batches`` on the model's device; a ``ValueError`` where there are
        none and no statistics were added before."""
        device = next(iter(self.model.parameters())).device
        empty = True
        for batch in batches:
            inputs = _first_input(batch)
            if len(inputs):  # (an empty batch adds nothing)
                empty = False
                yield inputs.to(device)
        if empty and all(int(s.rows) == 0 for s in self.statistics.values()):
            raise ValueError("the data held no batches, and PatternComputer has no statistics "
                             "yet: give it a tensor of inputs or a non-empty DataLoader")

    # Hooks ----------------------------------------------------------------------------------

    def _on_kernel_start(self, path: str) -> None:
        if is_explaining():  # (the library's own forward passes are no data: see modes)
            return
        calls = _KernelCalls()
        calls.__enter__()
        self._kernel_calls[path] = calls

    def _on_kernel(self, path: str, module: nn.Module, args: tuple,
                   output: Tensor | None) -> None:
        calls = self._kernel_calls.pop(path, None)
        if calls is not None:
            calls.__exit__(None, None, None)
        if output is None or is_explaining():  # the forward raised, or is none of the data
            return
        try:
            weight, bias = (current_weight(module), module.bias) if calls is None else \
                calls.weight_and_bias(module, output)
        except ValueError as error:  # (raised by the patterns, not in the model's forward,
            self._failures.setdefault(path, error)  # which may be a training step's)
            return
        self._calls_seen[path] = (weight.detach(), tuple(module.parameters()))
        self._flush()
        # (out of sight of the function modes of other computers collecting at once: a
        # computation of this one is no call of the model's)
        with torch.no_grad(), torch._C.DisableTorchFunction():
            y = pre_activation(module, output, bias)
            mask = neuron_mask(self.pattern_type, output.detach())
            x = args[0]
            if self.pattern_type != "linear":  # held until the next layer or BatchNorm runs,
                x = x.detach().clone()  # which the model may change before (h += fc(h))
        self._pending[id(output)] = _Pending(path, module, x, y, mask, output)
        if self.pattern_type == "linear":
            self._flush()

    def _on_batch_norm(self, module: nn.Module, args: tuple, output: Tensor) -> None:
        if is_explaining():
            return
        pending = self._pending_of(args[0])
        if pending is not None:
            self._follow(pending, output)

    def _pending_of(self, t: object) -> _Pending | None:
        """The pending layer whose values ``t`` carries (its output or an alias of it)."""
        if not isinstance(t, Tensor):
            return None
        entry = self._pending.get(id(t))
        return entry if entry is not None and any(a is t for a in entry.aliases) else None

    def _on_call(self, func: Callable, args: tuple, kwargs: dict, output: Tensor) -> None:
        """A call while collecting. Tensors made from parameters, buffers and numbers alone
        are constants. Where a call uses a pending kernel output, the mask follows it into
        ``F.batch_norm`` or an elementwise affine map with a constant (a BatchNorm written
        out, ``h * scale + shift``), and stays where an activation reads it (a ReLU, in place
        or not); copies carry it on; other calls (a statistic, a residual add) leave it."""
        if is_explaining():
            return
        operands = [t for a in (*args, *kwargs.values()) for t in (
            a if isinstance(a, (list, tuple)) else (a,)) if isinstance(t, Tensor)]
        if all(self._constant(t) for t in operands):  # (torch.cat([h, g]): h and g's)
            if len(self._constants) > _CONSTANTS_HELD:  # (a long collection: the dead)
                self._constants = {k: r for k, r in self._constants.items()
                                   if r() is not None}
            self._constants[id(output)] = weakref.ref(output)
            return
        pending, source = next(((p, t) for t in operands
                                if (p := self._pending_of(t)) is not None), (None, None))
        if pending is None:
            return
        others = [a for a in (*args, *kwargs.values()) if a is not source]
        if func is F.batch_norm or (func in _AFFINE and len(others) <= 1 and all(
                self._constant(o) for o in others) and (
                func not in _DIVISIONS or args[0] is source)):
            self._follow(pending, output)
        elif func in _SAME_VALUES and output.shape == source.shape and not pending.consumed:
            self._alias(pending, output)
        elif func in _ACTIVATIONS:
            pending.consumed = True

    def _constant(self, value: object) -> bool:
        """Whether ``value`` is a number or a tensor made of parameters and buffers alone."""
        if isinstance(value, Tensor):
            held = self._constants.get(id(value))
            return held is not None and held() is value
        return isinstance(value, (int, float)) and not isinstance(value, bool)

    def _follow(self, pending: _Pending, output: Tensor) -> None:
        """Read the mask of ``pending``'s layer from ``output``, what its output became."""
        if pending.consumed or output.shape != pending.aliases[0].shape:
            return
        with torch.no_grad(), torch._C.DisableTorchFunction():
            pending.mask = neuron_mask(self.pattern_type, output.detach())
        self._alias(pending, output)

    def _alias(self, pending: _Pending, output: Tensor) -> None:
        if not any(a is output for a in pending.aliases):
            pending.aliases.append(output)
            self._pending[id(output)] = pending

    def _flush(self) -> None:
        pending = list({id(entry): entry for entry in self._pending.values()}.values())
        self._pending = {}
        for entry in pending:  # (statistics in full precision; out of sight, as above)
            with torch.no_grad(), full_precision(), torch._C.DisableTorchFunction():
                sums = batch_sums(entry.module, entry.x, entry.y, entry.mask)
                stats = self.statistics[entry.path] = self.statistics[entry.path].to(
                    entry.y.device)
                stats.add_batch_(*sums)

    # Patterns and state -------------------------------------------------------------------

    def compute(self, data: Tensor | Iterable[Any] | None = None, batch_size: int = 32, *,
                sync: bool = True) -> dict[str, Tensor]:
        """The patterns: module path → tensor shaped like that module's weight.

        Layers that saw no data are left out. With ``sync`` and an initialized process group,
        the statistics of all ranks are summed first (a collective: call it on every rank).
        ``data`` (iNNvestigate 1.x's ``compute(X, batch_size)``): inputs whose statistics
        are added first, a tensor cut into batches of ``batch_size`` or an iterable of
        batches (as :meth:`fit`, with no progress bar).
        """
        if isinstance(data, bool):
            raise TypeError(f"compute(data={data}): data are inputs (a tensor or batches); "
                            f"sync is a keyword: compute(sync={data})")
        if data is not None:
            if isinstance(data, Tensor):
                if isinstance(batch_size, bool) or not isinstance(batch_size, int) or \
                        batch_size < 1:
                    raise ValueError(f"batch_size={batch_size!r} is not valid; expected an "
                                     f"integer >= 1")
                data = data.split(batch_size)
            for batch in self._batches(data):
                self.update(batch)
        if not isinstance(sync, bool):
            raise ValueError(f"sync={sync!r} is not valid; expected True or False (the data "
                             f"to add are compute's first argument)")
        self._flush()  # (a batch the hooks hold for a BatchNorm that has not come)
        if self._failures:
            raise next(iter(self._failures.values()))
        statistics = self.synced_statistics() if sync else self.statistics
        if all(int(s.rows) == 0 for s in statistics.values()):
            raise RuntimeError("PatternComputer has no statistics yet: call update(x) or "
                               "fit(dataloader) first")
        with torch.inference_mode(False):  # (normal tensors, also under trainer.validate())
            return self.patterns_from(statistics)

    def patterns_from(self, statistics: Mapping[str, LayerStatistics]) -> dict[str, Tensor]:
        """The patterns of given statistics (layers with data), each normalised against the
        weight its layer's kernel call receives (see :meth:`_normalising_weight`). Raises
        the ``ValueError`` of a layer that has no one weight to fit a pattern to."""
        if self._failures:
            raise next(iter(self._failures.values()))
        patterns = {}
        for path, module in self.layers.items():
            if int(statistics[path].rows) == 0:
                continue
            weight = self._normalising_weight(path, module)
            pattern = rows_to_weight(module, statistics[path].pattern(weight_rows(module, weight)))
            note_normalised_for(pattern, module, weight)  # (a pattern analyzer checks it)
            patterns[path] = pattern
        return patterns

    def _normalising_weight(self, path: str, module: nn.Module) -> Tensor:
        """The weight the kernel call of layer ``path`` receives: ``module.weight`` as it is
        now (steps taken since the forward passes count), or the weight its call received
        in the last forward pass this computer collected from where that differs: a layer
        with a forward of its own (:func:`computes_its_weight`), or one that ran with
        parameters other than those it holds now (``torch.func.functional_call``)."""
        seen = self._calls_seen.get(path)
        if seen is None:  # (statistics loaded or merged, no forward collected)
            if computes_its_weight(module):
                raise RuntimeError(
                    f"layer '{path}' ({type(module).__name__}) has a forward of its own, which "
                    f"may call its kernel with another weight than module.weight, and this "
                    f"computer has not seen it run (its statistics were loaded or merged): "
                    f"collect one batch (update(x)) before computing the patterns")
            return current_weight(module)
        weight, parameters = seen
        held = tuple(module.parameters())
        ran_with_its_own = len(held) == len(parameters) and all(
            now is then for now, then in zip(held, parameters, strict=True))
        if ran_with_its_own and not computes_its_weight(module):
            return current_weight(module)
        return weight

    def synced_statistics(self) -> dict[str, LayerStatistics]:
        """The statistics summed over all DDP ranks (the local ones without a process group).

        One ``all_reduce`` of one flat buffer; the local state is not changed (except that a
        batch the hooks still hold is added to it first).
        """
        self._flush()
        if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
            return self.statistics
        paths = sorted(self.statistics)
        # the model's device: a layer that never ran on this rank still has CPU statistics
        device = current_weight(next(iter(self.layers.values()))).device
        tensors = [t for p in paths for _, t in self.statistics[p].tensors()]
        with torch.inference_mode(False), torch.no_grad():
            flat = torch.cat([t.reshape(-1).to(device) for t in tensors])
            dist.all_reduce(flat, op=dist.ReduceOp.SUM)
            pieces = iter(flat.split([t.numel() for t in tensors]))
            return {p: LayerStatistics(**{name: next(pieces).view_as(t).to(t.device)
                                          for name, t in self.statistics[p].tensors()})
                    for p in paths}

    def reset(self) -> None:
        """Forget all statistics (the hooks, if attached, stay)."""
        self._pending, self._failures = {}, {}
        with torch.inference_mode(False):
            for stats in self.statistics.values():
                stats.zero_()

    def merge(self, other: PatternComputer | Mapping[str, Any]) -> PatternComputer:
        """Add another computer's statistics (or its :meth:`state_dict`) into this one; from
        a computer also the failures it met (layers with no one weight) and, where it
        collected from this computer's model, the weight each layer's call received (see
        :meth:`_normalising_weight`), its forward passes being the last collected."""
        state = other
        if isinstance(other, PatternComputer):  # (its tensors themselves: added, not kept)
            other._flush()
            state = {"pattern_type": other.pattern_type,
                     "statistics": {path: dict(s.tensors()) for path, s in
                                    other.statistics.items()}}
            if other.model is not self.model:  # (the same model's layers are these)
                state["layouts"] = other._layouts()
        statistics = self._check_state(state)
        if isinstance(other, PatternComputer):
            self._failures.update(other._failures)
            if other.model is self.model:  # (another model's calls got its own weights)
                self._calls_seen.update(other._calls_seen)
        with torch.inference_mode(False):
            for path, stats in statistics.items():
                self.statistics[path].add_(stats)
        return self

    def state_dict(self) -> dict[str, Any]:
        """The state as plain types and tensors (``torch.load(weights_only=True)`` safe)."""
        self._flush()
        return {"pattern_type": self.pattern_type,
                "statistics": {path: {name: t.detach().clone() for name, t in s.tensors()}
                               for path, s in self.statistics.items()},
                "layouts": self._layouts()}

    def _layouts(self) -> dict[str, list]:
        """Each layer's :func:`~.layers.layout`, by path."""
        return {path: layout(module) for path, module in self.layers.items()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Replace the statistics by those of :meth:`state_dict`."""
        statistics = self._check_state(state)
        with torch.inference_mode(False):
            for path, stats in statistics.items():
                self.statistics[path].zero_().add_(stats)

    def _check_state(self, state: Mapping[str, Any]) -> dict[str, LayerStatistics]:
        if state.get("pattern_type") != self.pattern_type:
            raise ValueError(f"statistics of pattern_type={state.get('pattern_type')!r} cannot "
                             f"be combined with pattern_type={self.pattern_type!r}")
        layers = state.get("statistics", {})
        if set(layers) != set(self.layers):
            raise ValueError(f"statistics for layers {sorted(layers)} do not match this "
                             f"model's kernel layers {sorted(self.layers)}")
        given = state.get("layouts")  # (none: this model's, or saved before they were kept)
        layouts = {} if given is None else self._layouts()
        for path, layer in (given or {}).items():
            if layer != layouts.get(path):
                raise ValueError(f"the statistics of layer '{path}' are of another layer: "
                                 f"{layer} (class, weight shape, convolution geometry), this "
                                 f"model's is {layouts.get(path)}")
        statistics = {path: LayerStatistics(**layers[path]) for path in self.layers}
        for path, stats in statistics.items():  # all checked before any is changed
            for name, tensor in self.statistics[path].tensors():
                given = getattr(stats, name)
                if given.shape != tensor.shape:
                    raise ValueError(f"the statistics of layer '{path}' do not fit it: {name} "
                                     f"has shape {tuple(given.shape)}, expected "
                                     f"{tuple(tensor.shape)}")
        return statistics


def _first_input(batch: Any) -> Tensor:
    if isinstance(batch, Tensor):
        return batch
    if isinstance(batch, Mapping):
        return _first_input(next(iter(batch.values())))
    if isinstance(batch, (list, tuple)) and batch:
        return _first_input(batch[0])
    raise TypeError(f"cannot find the input tensor in a batch of type {type(batch).__name__}; "
                    f"give batches as a tensor or a tuple/list/dict whose first item is it")
