"""The analyzer base class: neuron selection, one forward and one backward, no side effects."""

from __future__ import annotations

import dataclasses
import inspect
import numbers
import os
import threading
import warnings
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager, nullcontext
from typing import Any, ClassVar

import torch
from torch import Tensor, nn
from torch.nn.modules import module as module_hooks
from torch.nn.parameter import is_lazy

from ..compiled import eager, holds_compiled, uncompiled
from ..modes import eval_mode, explaining, unmaterialized
from ..precision import LOW_PRECISION, full_precision
from .diagnostics import (
    OUTPUT_KEY,
    FirstSampleCopies,
    ReverseOptions,
    ReverseRecorder,
    copies_for,
    project,
)
from .embedding import is_token_input, token_input
from .errors import NotAnalyzableModelError
from .forward import (
    OutputKey,
    check_same_forward,
    final_softmax,
    forward_signature,
    in_compiled_control_flow,
    refusing_compiled_control_flow,
    select_output,
    without_checkpointing,
)
from .operations import Handler, OperationRules, Prepare, tensor_attributes, too_coarse
from .replay import Plan, Replayed
from .softmax import check_ends_without_softmax
from .validation import check_choice

NEURON_SELECTION_MODES = ("max_activation", "index", "all")

NeuronSelection = int | Sequence[int] | Tensor | None
Selector = Callable[[Tensor], Tensor | None]


#: Held while any analysis runs (see :func:`analysis_context`): analyses run one at a time
#: in a process. Reentrant, so that the thread that holds it may start another analysis
#: (the gradient family's, from a forward hook of a gradient analysis, works); not from
#: inside a rule-based analysis' forward pass, whose rules would see the inner analysis'
#: operations (that raises ``NotAnalyzableModelError``). One lock per model let two models
#: that share a submodule (two heads on one backbone) switch its flags under each other (a
#: map 1.4× its size off, BatchNorm statistics updated), and two analyses overlap their
#: switches of torch's process-wide state (checkpointing, the compiler's stance), which the
#: later one then restored wrongly, for good.
ANALYSIS_LOCK = threading.RLock()


@contextmanager
def analysis_context(model: nn.Module) -> Iterator[None]:
    """Run an analysis without changing the model or the caller's autograd state.

    Inside: every module in eval mode, no parameter (nor tensor the model holds as a plain
    attribute, :func:`~.operations.tensor_attributes`) requires grad (so no parameter's
    ``.grad`` can be touched and no weight gradient is computed), grad enabled, inference
    mode off, autocast off (:mod:`~lit_explain.precision`), activation checkpoints run
    directly (see :mod:`.forward`) and compiled submodules never compiled for the analysis
    (see :mod:`~lit_explain.compiled`; a rule-based forward pass runs all compiled code
    eagerly, see :meth:`Analyzer._forward`). The modules' backward hooks
    (``register_full_backward_hook``, ``register_full_backward_pre_hook``,
    ``register_backward_hook``) are set aside: they observe or change the gradients of
    training (a Grad-CAM extractor, gradient logging), and an analysis' backward pass is
    none (its gradients would reach them, and a hook that changes them would change the
    map). On exit every module's train flag, backward hooks and every parameter's
    ``requires_grad`` are put back as they were, also when the analysis raises.

    Analyses are serialised: the context holds :data:`ANALYSIS_LOCK` from before it switches
    the flags until after it has put them back, so that no thread restores train mode (or
    torch's process-wide state) while another one analyses.
    """
    with ANALYSIS_LOCK:
        modules = list(model.modules())
        parameters = [(module, name, param) for module in modules
                      for name, param in module._parameters.items() if param is not None]
        if any(is_lazy(param) for _, _, param in parameters):
            lazy = unmaterialized(model)
            kind = type(model.get_submodule(lazy)).__name__
            raise ValueError(
                (f"'{lazy}' ({kind}) is a lazy module that has not run" if lazy else
                 f"the model ({kind}) is a lazy module that has not run") +
                ": its parameters are uninitialised (made from its first input). Run one "
                "forward pass of the model before analysing it" + (
                    ", or, for a lazy module the forward never runs (a head for another "
                    "task), analyse the submodule that computes the output" if lazy else ""))
        made_in_inference = next((f"{type(module).__name__}.{name}" for module, name, param
                                  in parameters if param.is_inference()), None)
        if made_in_inference is not None:  # (before any flag is switched)
            raise NotAnalyzableModelError(
                f"the model's parameters (such as {made_in_inference}) are inference tensors, "
                f"made or loaded under torch.inference_mode(), which autograd cannot "
                f"differentiate through: build or load the model outside inference mode (or "
                f"clone its parameters there, under torch.no_grad())")
        # (and the weights a model holds as plain tensors: otherwise activations to the rules)
        requires_grad = [param for _, _, param in parameters if param.requires_grad] + [
            t for module in modules for t in tensor_attributes(module) if t.requires_grad]
        backward_hooks = [(module, module._backward_hooks, module._backward_pre_hooks)
                          for module in modules
                          if module._backward_hooks or module._backward_pre_hooks]
        compiled = holds_compiled(modules)
        with eval_mode(model, modules):  # (the flags back after the rest)
            try:
                for param in requires_grad:
                    param.requires_grad_(False)
                for module, _, _ in backward_hooks:  # (their handles hold the dicts: put back)
                    module._backward_hooks = OrderedDict()
                    module._backward_pre_hooks = OrderedDict()
                with torch.inference_mode(False), torch.enable_grad(), full_precision(), \
                        without_checkpointing(), explaining(), \
                        eager("eager_on_recompile") if compiled else nullcontext():
                    yield
            except Exception as error:
                if not compiled or isinstance(error, NotAnalyzableModelError) or \
                        not in_compiled_control_flow(error):
                    raise
                raise NotAnalyzableModelError(
                    "a compiled submodule of the model uses a control-flow operator such as "
                    "torch.cond, which torch runs only compiled, and an analysis runs compiled "
                    "submodules without compiling them for it (recompiling them for every "
                    "analysis used up the compiler's recompile limit, and failed training too): "
                    "analyse the model with that submodule uncompiled (its _orig_mod), which "
                    f"runs torch.cond ({type(error).__name__}: {str(error)[:200]})") from error
            finally:
                for param in requires_grad:
                    param.requires_grad_(True)
                for module, hooks, pre_hooks in backward_hooks:
                    module._backward_hooks, module._backward_pre_hooks = hooks, pre_hooks


class Analyzer:
    """Base class of all analyzers: ``analyze(x)`` returns an attribution shaped like ``x``.

    Parameters
    ----------
    model:
        The model to explain; it must return logits (see :func:`model_wo_softmax`).
        Outputs with more than two dimensions are flattened per sample. A
        ``torch.compile``d model is analysed through its original module.
    neuron_selection_mode:
        ``"max_activation"`` explains each sample's largest output, ``"index"`` the output
        given to :meth:`analyze`, ``"all"`` all outputs at once (as iNNvestigate).
    reverse_keep_tensors, reverse_check_finite, reverse_clip_values, \
reverse_check_min_max_values, reverse_project_bottleneck_layers:
        iNNvestigate's reverse-pass diagnostics (keyword only), for analyzers whose map is
        one modified backward pass; see :class:`~.diagnostics.ReverseOptions`. Kept layer
        relevances are in :attr:`reversed_tensors` after each :meth:`analyze`, min/max
        values in :attr:`reversed_min_max`.
    output_key:
        Which output to explain where the model returns a tuple (an index) or a mapping (a
        key), keyword only. ``None``: the first tensor of a tuple, ``"logits"`` of a mapping.

    Notes
    -----
    An analysis runs the model in eval mode with its parameters frozen, takes gradients with
    :func:`torch.autograd.grad` only, and restores every flag afterwards: no parameter,
    buffer, ``.grad``, ``requires_grad`` or train/eval flag changes. It works inside
    ``torch.no_grad()`` and ``torch.inference_mode()``.

    Threads: analyses run one at a time in a process (each holds :data:`ANALYSIS_LOCK`, see
    :func:`analysis_context`), whether they share an analyzer or a model or not: models may
    share submodules, and an analysis switches torch's process-wide state (checkpointing,
    the compiler's stance) while it runs. Training the same model in another thread while it
    is analysed is not supported: the analysis switches it to eval mode and freezes its
    parameters.

    Token models: an integer input (token ids) is analyzed from the output of the model's
    input ``nn.Embedding``/``nn.EmbeddingBag`` and the map summed over the embedding axis,
    so it has the input's shape (see :mod:`~.embedding`).
    """

    #: Registry name, set by :func:`register`.
    name: ClassVar[str] = ""
    #: What :meth:`save` calls; :mod:`.persistence` sets it (base does not import it).
    saver: ClassVar[Callable[[Analyzer, Any], None] | None] = None
    #: Whether the analyzer explains logits and so refuses a model ending in softmax.
    needs_logits: ClassVar[bool] = True
    #: Whether the backward pass starts from the selected output's value (LRP family) or 1.
    seed_with_value: ClassVar[bool] = False
    #: Whether the analysis runs the forward pass under operation rules (:meth:`_forward`),
    #: which is checked against the model's own (the gradient methods run the model as is).
    rule_based: ClassVar[bool] = False

    #: Constructor parameters that the fitted state replaces when an analyzer is saved.
    fitted_parameters: ClassVar[frozenset[str]] = frozenset()

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls.__signature__ = _constructor_signature(cls)

    def __new__(cls, *args: Any, **kwargs: Any) -> Analyzer:
        # Remember the constructor's arguments (those given and the defaults), so that
        # :meth:`save` can store what the analyzer was made with, however it was made.
        self = super().__new__(cls)
        self.init_arguments = {}
        try:
            bound = inspect.signature(cls.__init__).bind(self, *args, **kwargs)
        except TypeError:  # __init__ will say what is wrong; copy/pickle call __new__ bare
            return self
        bound.apply_defaults()
        arguments: dict[str, Any] = {}
        for name, value in list(bound.arguments.items())[2:]:  # not self, model
            kind = inspect.signature(cls.__init__).parameters[name].kind
            if kind is inspect.Parameter.VAR_KEYWORD:
                arguments.update(value)
            elif kind is not inspect.Parameter.VAR_POSITIONAL:
                arguments[name] = value
        self.init_arguments = arguments
        return self

    def __init__(self, model: nn.Module, neuron_selection_mode: str = "max_activation", *,
                 reverse_keep_tensors: bool = False, reverse_check_finite: bool = False,
                 reverse_clip_values: tuple[float, float] | None = None,
                 reverse_check_min_max_values: bool = False,
                 reverse_project_bottleneck_layers: bool = False,
                 output_key: OutputKey = None) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        check_choice("neuron_selection_mode", neuron_selection_mode, NEURON_SELECTION_MODES)
        model = uncompiled(model)
        if self.needs_logits:
            check_ends_without_softmax(model)
        if output_key is not None and not isinstance(output_key, (int, str)):
            raise TypeError(f"output_key={output_key!r} is not valid; expected a tuple index "
                            f"(int), a mapping key (str) or None")
        self.model = model
        self.output_key = output_key
        self.neuron_selection_mode = neuron_selection_mode
        self._softmax_checked = False
        #: The :func:`~.forward.forward_signature` of the model and input being analysed.
        self._signature: tuple | None = None
        #: The :func:`~.forward.forward_signature` of the last forward pass found to compute
        #: the model's output (see :meth:`_forward`).
        self._checked_forward: tuple | None = None
        #: Whether the last rule-based forward pass read a tensor value into Python or a
        #: shape (:func:`~.kinds.reads_values`): it may branch on the batch it was given.
        self._forward_read_values = False
        self.reverse = ReverseOptions(reverse_keep_tensors, reverse_check_finite,
                                      reverse_clip_values, reverse_check_min_max_values,
                                      reverse_project_bottleneck_layers)
        #: With ``reverse_keep_tensors``: module path → relevance at that layer's input, from
        #: the last :meth:`analyze` (forward order).
        self.reversed_tensors: dict[str, Tensor] = {}
        #: With ``reverse_check_min_max_values``: module path → (min, max) of that relevance.
        self.reversed_min_max: dict[str, tuple[float, float]] = {}
        self._reversed_outputs: dict[str, Tensor] = {}
        #: Every layer's relevance for copies of the first sample (see :meth:`analyze`).
        self._copies: FirstSampleCopies | None = None
        #: The replay plan of the last analysis, where it was replayable (see :meth:`_forward`).
        self._plan: Plan | None = None
        #: Whether the last rule-based forward pass was a replay of a plan.
        self.replayed = False

    def analyze(self, x: Tensor, neuron_selection: NeuronSelection = None) -> Tensor:
        """Explain the model's output for the batch ``x``.

        Parameters
        ----------
        x:
            Input batch, first axis the samples.
        neuron_selection:
            Only with ``neuron_selection_mode="index"``: the output to explain, one int for
            all samples (also a numpy integer or a 0-d integer tensor) or one per sample (a
            list or a 1-D integer tensor). Integers only: floats and bools are refused.

        Returns
        -------
        Tensor
            The attribution, with ``x``'s shape, dtype and device.
        """
        if not isinstance(x, Tensor):
            raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
        if x.dim() == 0 or len(x) == 0:
            raise ValueError(f"x has no samples (shape {tuple(x.shape)}); give a batch, first "
                             f"axis the samples")
        if x.is_complex():
            raise TypeError(f"x is complex ({x.dtype}); analyzers explain real inputs (or "
                            f"integer token ids)")
        if x.is_meta or next((p.is_meta for p in self.model.parameters()), False):
            raise ValueError("the model or x is on the 'meta' device, which holds no values: "
                             "give the model real weights (model.to_empty(device=...), then "
                             "load them) and x on that device before analysing")
        neuron_selection = self._checked_selection(neuron_selection, len(x))
        self._copies = None
        if self.reverse.project_bottleneck_layers and len(x) > 1:  # (per sample: which axis)
            self._copies = self.first_sample_copies(x, neuron_selection)
        with analysis_context(self.model), ExitStack() as stack:
            self.reversed_tensors, self.reversed_min_max, self._reversed_outputs = {}, {}, {}
            # a private copy: the model may modify its input in place (x.sub_(mean)), and the
            # caller's tensor must not change; also an inference tensor becomes a normal one
            inputs = x.detach().clone()
            # (taken before the analysis adds hooks of its own: the model as the user has it;
            # forgotten after it, so that no other call finds it)
            if self.rule_based:
                self._signature = forward_signature(self.model, inputs)
                stack.callback(setattr, self, "_signature", None)
            try:
                if is_token_input(inputs):  # analyze from the embedding; one value per token
                    embedding = stack.enter_context(token_input(self.model, inputs))
                    inputs = embedding.vectors
                    if self.rule_based and self._signature is not None:
                        # (chosen by the ids' values: where relevance enters the rules)
                        self._signature = (self._signature, embedding.path, embedding.call)
                    result = self._analyze(inputs, neuron_selection).sum(dim=-1)
                else:
                    result = self._analyze(inputs, neuron_selection)
            except RuntimeError as error:  # (torch's own, naming an operation: say why)
                self._refuse_inference_buffers(error)
                self._note_dtypes(error, x)
                raise
        if self.reverse.project_bottleneck_layers:
            result = project(result)
        if self.reverse.check_finite and not bool(torch.isfinite(result).all()):
            raise FloatingPointError("the map at the model input is not finite")
        return result.detach().to(dtype=inputs.dtype)

    def _refuse_inference_buffers(self, error: RuntimeError) -> None:
        """Raise a clear error for ``error`` where autograd met a buffer made under
        ``torch.inference_mode()`` (statistics for an in-forward normalisation computed
        there): training never differentiates with respect to the input, so the model
        trains with it, but an analysis does."""
        if "Inference tensors cannot be saved for backward" not in str(error):
            return
        made = [f"{type(module).__name__}.{name}" for module in self.model.modules()
                for name, buffer in module._buffers.items()
                if buffer is not None and buffer.is_inference()]
        if made:
            raise NotAnalyzableModelError(
                f"the model's buffers {made} are inference tensors, made or loaded under "
                f"torch.inference_mode(), and the analysis differentiates through them with "
                f"respect to the input, which autograd cannot: make them outside inference "
                f"mode (or replace them by clones made there, under torch.no_grad())"
            ) from error

    def _note_dtypes(self, error: RuntimeError, x: Tensor) -> None:
        """Add to ``error`` that ``x`` and the model's parameters differ in dtype, where so."""
        parameter = next((p for p in self.model.parameters() if p.is_floating_point()), None)
        if x.is_floating_point() and parameter is not None and parameter.dtype != x.dtype:
            error.add_note(f"x has dtype {x.dtype} and the model's parameters "
                           f"{parameter.dtype}: give x in the model's dtype "
                           f"(x.to({parameter.dtype}))")

    def first_sample_copies(self, x: Tensor, neuron_selection: NeuronSelection = None
                            ) -> FirstSampleCopies:
        """Every layer's input and output relevance (see :mod:`~.diagnostics`) when a batch
        of copies of the first sample of ``x`` is analysed: against them, the per-sample
        diagnostics find which sample each element of a layer's tensors belongs to
        (:func:`~.diagnostics.sample_index`)."""
        # (checked here too: a list per sample becomes the tensor of which the first is taken,
        # and a bad one is the caller's ValueError, not the model's failure below)
        neuron_selection = self._checked_selection(neuron_selection, len(x))
        options = self.reverse
        self.reverse = dataclasses.replace(options, keep_tensors=True,
                                           project_bottleneck_layers=False)
        count = copies_for(len(x))
        selection = neuron_selection[:1].repeat(count) if isinstance(
            neuron_selection, Tensor) and neuron_selection.dim() else neuron_selection
        try:
            self.analyze(x[:1].repeat(count, *[1] * (x.dim() - 1)), selection)
            return FirstSampleCopies(dict(self.reversed_tensors),
                                     dict(self._reversed_outputs), count)
        except NotAnalyzableModelError:
            raise
        except (RuntimeError, ValueError, TypeError) as error:  # (the model's own)
            raise NotAnalyzableModelError(
                f"the per-sample diagnostics (reverse_project_bottleneck_layers, "
                f"conservation_report) analyse a batch of {count} copies of the first sample "
                f"to find which sample each element of a layer's tensors belongs to, and the "
                f"model fails on it (does it hold a tensor sized for one batch size, a mask "
                f"of {len(x)}?): {type(error).__name__}: {error}") from error
        finally:
            self.reverse = options

    # iNNvestigate's training and saving interface ----------------------------------------

    def fit(self, data: Tensor | Iterable[Any] | None = None, batch_size: int = 32,
            max_batches: int | None = None, progress: bool = True,
            disable_no_training_warning: bool = False) -> Analyzer:
        """Train the analyzer on data (iNNvestigate's ``fit``); returns the analyzer.

        Analyzers that need training (PatternNet, PatternAttribution) override this. For all
        others it does nothing and warns that they need no training, unless
        ``disable_no_training_warning=True``.
        """
        if not disable_no_training_warning:
            warnings.warn(f"analyzer {self.name or type(self).__name__!r} needs no training; "
                          f"fit() does nothing", UserWarning, stacklevel=2)
        return self

    def fit_generator(self, generator: Iterable[Any], steps_per_epoch: int | None = None,
                      progress: bool = True, disable_no_training_warning: bool = False
                      ) -> Analyzer:
        """iNNvestigate 1.x's ``fit_generator``: :meth:`fit` on the batches of ``generator``
        (``steps_per_epoch`` of them at most; ``None``: all)."""
        return self.fit(generator, max_batches=steps_per_epoch, progress=progress,
                        disable_no_training_warning=disable_no_training_warning)

    def save(self, path: str | os.PathLike) -> None:
        """Save the analyzer's name, parameters and fitted state to ``path`` (tensors and
        plain types only; :func:`~lit_explain.load_analyzer` reads it back onto a model)."""
        if Analyzer.saver is None:  # set by .persistence, which imports this module
            raise RuntimeError("saving needs lit_explain.analyzers.persistence: import "
                               "lit_explain.analyzers")
        Analyzer.saver(self, path)

    def fitted_state(self) -> dict[str, Any]:
        """The state learnt by :meth:`fit` (tensors and plain types); empty if none."""
        return {}

    def load_fitted_state(self, state: Mapping[str, Any]) -> None:
        """Restore what :meth:`fitted_state` returned."""
        if state:
            raise ValueError(f"{self.name}: this analyzer has no fitted state, got "
                             f"{sorted(state)}")

    def _analyze(self, x: Tensor, neuron_selection: NeuronSelection) -> Tensor:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, mode={self.neuron_selection_mode!r})"

    # Neuron selection ------------------------------------------------------------------

    def _checked_selection(self, neuron_selection: NeuronSelection, batch: int
                           ) -> int | Tensor | None:
        """``neuron_selection`` checked against the mode and the batch size: ``None`` (not
        mode ``"index"``), one int, or a 1-D integer tensor with one index per sample.
        Integers only: a float or bool would be truncated to an index nobody asked for."""
        if self.neuron_selection_mode != "index":
            if neuron_selection is not None:
                raise ValueError(
                    f"neuron_selection={neuron_selection!r} is only used with "
                    f"neuron_selection_mode='index'; this analyzer was created with "
                    f"neuron_selection_mode={self.neuron_selection_mode!r}")
            return None
        if neuron_selection is None:
            raise ValueError("neuron_selection_mode='index' needs neuron_selection: an int, "
                             "or one index per sample")
        if isinstance(neuron_selection, numbers.Integral) and not isinstance(
                neuron_selection, bool):  # an int or a numpy integer
            if not -2 ** 63 <= int(neuron_selection) < 2 ** 63:
                raise ValueError(f"neuron_selection={neuron_selection!r} is out of range; "
                                 f"give the index of an output")
            return int(neuron_selection)
        try:
            indices = torch.as_tensor(neuron_selection)
        except (TypeError, ValueError, RuntimeError):  # a string, a ragged list, ...
            indices = None
        if indices is None or indices.dim() > 1 or indices.dtype == torch.bool or (
                indices.is_floating_point() or indices.is_complex()):
            given = (f" (a {neuron_selection.dtype} tensor of shape "
                     f"{tuple(neuron_selection.shape)})" if isinstance(neuron_selection, Tensor)
                     else f"={neuron_selection!r}")
            raise ValueError(f"neuron_selection{given} is not valid; expected an int, or one "
                             f"integer index per sample (a list or a 1-D integer tensor of "
                             f"{batch})")
        if indices.dim() == 0:
            return int(indices)
        if len(indices) != batch:
            raise ValueError(f"neuron_selection has {len(indices)} indices for {batch} "
                             f"samples; give one int or one index per sample")
        return indices

    def selector(self, neuron_selection: NeuronSelection) -> Selector:
        """Map a batch's flattened outputs (N, K) to the indices to explain (None: all)."""
        mode = self.neuron_selection_mode

        def select(logits: Tensor) -> Tensor | None:
            if mode == "all":
                return None
            if mode == "max_activation":
                return logits.detach().argmax(dim=1)
            indices = torch.as_tensor(neuron_selection, device=logits.device, dtype=torch.long)
            indices = indices.expand(len(logits)) if indices.dim() == 0 else indices
            outputs = logits.shape[1]
            if bool(((indices < 0) | (indices >= outputs)).any()):
                raise ValueError(f"neuron_selection={neuron_selection!r} is out of range for a "
                                 f"model with {outputs} outputs (valid: 0..{outputs - 1})")
            return indices

        return select

    def _seed(self, logits: Tensor, indices: Tensor | None) -> Tensor:
        """The gradient the backward pass starts from: 1 or the output's value."""
        start = logits.detach() if self.seed_with_value else torch.ones_like(logits)
        if indices is None:
            return start
        selected = torch.zeros_like(logits, dtype=torch.bool).scatter_(1, indices[:, None], True)
        return torch.where(selected, start, 0.0)  # (an infinite output not selected: 0, no NaN)

    # One forward, one (possibly rule-modified) backward ---------------------------------

    def _relevance_scale(self, tensor: Tensor) -> Tensor | None:
        """``m`` with relevance at ``tensor`` = ``m ⊙ gradient`` (``None``: m = 1), for the
        reverse-pass diagnostics; analyzers that carry relevance differently override it."""
        return None

    def logits(self, output: Any, batch: int) -> Tensor:
        """The explained output (see ``output_key``) of a model output, as (batch, K).

        Its first axis must be the samples: any other (a sequence-first (T, N, C) output, an
        output reduced over the batch) would mix samples when flattened per sample. A batch
        of one may have one number (``logits.squeeze()`` of a one-logit model)."""
        selected = select_output(output, self.output_key)
        if selected.dim() == 0 and batch == 1:  # (its sample's logit, whatever made it)
            return selected.reshape(1, 1)
        if selected.dim() == 0 or len(selected) != batch:
            raise ValueError(
                f"the explained model output has shape {tuple(selected.shape)} for a batch of "
                f"{batch} samples; its first axis must be the samples (N, ...). Choose an "
                f"output with output_key=, or wrap the model so that it returns the samples first")
        return selected.reshape(batch, -1)

    def _backward(self, x: Tensor, select: Selector, handlers: dict[str, Handler] | None = None,
                  passthrough: frozenset[str] = frozenset(), *, prepare: Prepare | None = None,
                  input_boundary: Callable[[Tensor], Tensor] | None = None,
                  self_observed: frozenset[str] = frozenset()) -> Tensor:
        """Forward ``x`` (with the handlers' rules, if any) and return d(selected)/dx.

        ``prepare`` and ``input_boundary`` go to :class:`~.operations.OperationRules`;
        ``self_observed``: kinds whose handlers apply the diagnostics' output observer
        themselves (:meth:`~.diagnostics.ReverseRecorder.wrap`)."""
        x = x.detach().requires_grad_(True)
        recorder = self.reverse.recorder(self._relevance_scale)
        if recorder is not None:  # observe every layer; nothing is inserted otherwise
            recorder.copies = self._copies
            handlers, passthrough = recorder.wrap(handlers, passthrough, self_observed)
        if handlers is None:
            self._warn_on_final_softmax(x)
            logits = self.logits(self.model(x.clone()), len(x))
        else:
            logits = self._forward(x, handlers, passthrough, prepare=prepare,
                                   input_boundary=input_boundary)
        seed = self._seed(logits, select(logits))
        if recorder is not None:
            logits = recorder.observe(logits, OUTPUT_KEY, recorder.on_model_output)
        grad = None
        if logits.requires_grad:  # parameters are frozen: only x can make it require grad
            (grad,) = torch.autograd.grad(logits, x, seed, allow_unused=True)
        if grad is None:
            grad = self._no_path_to_input(x)
        if recorder is not None:
            self._keep(recorder)
        return grad

    def _no_path_to_input(self, x: Tensor) -> Tensor:
        """The map when the explained output has no differentiable path to the input: zeros,
        with a warning that says why (:meth:`_why_no_path`).

        Zero is the answer, not a failure: the gradient of an output that does not depend on
        the input (through operations with a gradient) is zero, and so is every map built
        from it (Input×Gradient, Integrated Gradients, SmoothGrad). Under CP-LRP it is zero by
        the method's definition: CP-LRP (Ali et al., ICML 2022) holds the attention weights
        (softmax) and non-linear gates constant, so no relevance flows through them, and an
        output that reaches the input only through them gets no relevance at the input.
        An error would instead stop a training run (or every epoch of the callback) for a
        model the rule set handles as specified."""
        warnings.warn(f"{self.name or type(self).__name__}: {self._why_no_path()}; the map is "
                      f"all zeros", UserWarning, stacklevel=4)
        return torch.zeros_like(x)

    def _why_no_path(self) -> str:
        """Why the explained output may not reach the input (overridden where a rule set
        blocks paths on purpose)."""
        return ("the explained output has no differentiable path to the input (it is "
                "constant in the input, or the model detaches or discretises it on the way)")

    def _forward(self, x: Tensor, handlers: dict[str, Handler], passthrough: frozenset[str], *,
                 prepare: Prepare | None = None,
                 input_boundary: Callable[[Tensor], Tensor] | None = None,
                 refuse_detached: bool = False) -> Tensor:
        """The explained output (batch, K) of a forward pass of ``x`` with the handlers'
        rules, checked against the model's own output (:func:`~.forward.check_same_forward`).
        The model gets a copy of ``x`` (it may modify its input in place). Refused in 16-bit
        floating point (see :data:`~lit_explain.precision.LOW_PRECISION`), as is a
        forward pass that computes a rule's operation in it (a 16-bit model casting its
        float32 input, an autocast region inside forward).

        The check is made once per :func:`~.forward.forward_signature` (the model's modules,
        parameters and buffers as they are, the input's shape, dtype and device): a later
        analysis with the same signature runs the same operations on the same parameters.
        It is made for every analysis of a model whose forward pass reads a tensor value
        into Python (``if x.sum() > 0:``), which may run other operations for other inputs.

        An analysis whose rules depend each on its call alone records its forward pass in a
        :class:`~.replay.Plan`; the next one with the same signature, reverse-pass options and
        settings replays it (:mod:`~.replay`, :attr:`replayed`): the same map, without the
        routing of every call.
        """
        if x.dtype in LOW_PRECISION:
            raise too_coarse(f"{self.name or type(self).__name__} would run its rules in",
                             x.dtype)

        if module_hooks._global_backward_hooks or module_hooks._global_backward_pre_hooks:
            raise NotAnalyzableModelError(
                "a global module backward hook is registered (torch.nn.modules.module."
                "register_module_full_backward_hook or _pre_hook): it wraps the output of every "
                "module in a function of its own, which the rules cannot see through, and would "
                "receive their relevance as gradients. Remove it while a rule-based analyzer "
                "runs (module hooks of the model itself are set aside), or use a gradient "
                "method (gradient, input_t_gradient, smoothgrad, integrated_gradients).")
        reads_values = False

        def analysed(inputs: Tensor, record: list | None = None, plan: Plan | None = None
                     ) -> Tensor:
            nonlocal reads_values
            rules = OperationRules(self.model, handlers, passthrough, inputs, prepare=prepare,
                                   input_boundary=input_boundary, record=record,
                                   refuse_detached=refuse_detached, plan=plan)
            with rules.tracking_modules(), refusing_compiled_control_flow():
                # (the reshape too: it may use a rule's output)
                logits = self.logits(self.model(inputs), len(inputs))
            reads_values = reads_values or rules.reads_values
            return rules.output(logits)

        key = (self._signature, self.reverse, self.output_key, self._settings())
        with eager():  # compiled submodules through their Python code, where the rules are
            plan = self._plan
            self.replayed = plan is not None and self._signature is not None and plan.key == key
            if self.replayed:
                try:
                    return self._replay(x, plan)
                except Exception:  # (another call than recorded, Diverged, or the model's
                    # own error, which the full analysis meets again)
                    self._plan, self.replayed = None, False
            recording = None if refuse_detached or self.reverse.active or \
                self._signature is None else Plan()
            logits = analysed(x.clone(), plan=recording)
            self._forward_read_values = reads_values
            signature = None if reads_values else self._signature
            if signature is None or signature != self._checked_forward:
                check_same_forward(self.model, x.detach(), logits, analysed, self.logits)
                self._checked_forward = signature
            self._plan = recording if recording is not None and recording.replayable and \
                signature is not None else None
            if self._plan is not None:
                self._plan.key = key
        return logits

    def _replay(self, x: Tensor, plan: Plan) -> Tensor:
        """The explained output of a forward pass of ``x`` run by ``plan`` (see
        :mod:`~.replay`)."""
        inputs = x.clone()  # (the copy is no call of the forward)
        replayed = Replayed(plan, inputs)
        with replayed, refusing_compiled_control_flow():
            logits = self.logits(self.model(inputs), len(inputs))
        return replayed.finish(logits)

    def __getstate__(self) -> dict[str, Any]:
        # (a replay plan holds local functions, which do not pickle: it is made again)
        return {**self.__dict__, "_plan": None}

    def _settings(self) -> tuple:
        """What decides the rules an analysis applies besides the model, the input and the
        reverse-pass options (a replay plan holds for them, see :meth:`_forward`)."""
        return ()

    def _warn_on_final_softmax(self, x: Tensor) -> None:
        if self._softmax_checked:
            return
        self._softmax_checked = True
        if final_softmax(self.model, x.detach().clone(), self.logits):
            warnings.warn(
                f"{self.name or type(self).__name__}: the model's output is made by a softmax "
                f"in its forward, so this explains probabilities, not logits. To explain the "
                f"logits, remove the softmax from forward (or pass "
                f"lit_explain.model_wo_softmax(model) for a trailing nn.Softmax).",
                UserWarning, stacklevel=4)

    def _keep(self, recorder: ReverseRecorder) -> None:
        self.reversed_tensors.update(recorder.in_forward_order(recorder.inputs))
        self.reversed_min_max.update(recorder.in_forward_order(recorder.min_max))
        self._reversed_outputs.update(recorder.in_forward_order(recorder.outputs))
        if OUTPUT_KEY in recorder.outputs:
            self._reversed_outputs[OUTPUT_KEY] = recorder.outputs[OUTPUT_KEY]


def _constructor_signature(cls: type) -> inspect.Signature:
    """The signature of ``cls(...)``: its ``__init__``'s without ``self`` (inspect would
    read :meth:`Analyzer.__new__`'s ``*args, **kwargs``, which record the arguments)."""
    signature = inspect.signature(cls.__init__)
    return signature.replace(parameters=list(signature.parameters.values())[1:])


Analyzer.__signature__ = _constructor_signature(Analyzer)
