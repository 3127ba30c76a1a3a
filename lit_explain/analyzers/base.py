"""The analyzer base class: neuron selection, one forward and one backward, no side effects."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import ClassVar

import torch
from torch import Tensor, nn

from .operations import Handler, OperationRules
from .softmax import check_ends_without_softmax
from .validation import check_choice

NEURON_SELECTION_MODES = ("max_activation", "index", "all")

NeuronSelection = int | Sequence[int] | Tensor | None
Selector = Callable[[Tensor], Tensor | None]


@contextmanager
def analysis_context(model: nn.Module) -> Iterator[None]:
    """Run an analysis without changing the model or the caller's autograd state.

    Inside: every module in eval mode, no parameter requires grad (so no parameter's
    ``.grad`` can be touched and no weight gradient is computed), grad enabled and
    inference mode off. On exit every module's train flag and every parameter's
    ``requires_grad`` are put back as they were, also when the analysis raises.
    """
    training = {module: module.training for module in model.modules()}
    requires_grad = {param: param.requires_grad for param in model.parameters()}
    try:
        model.eval()
        for param in requires_grad:
            param.requires_grad_(False)
        with torch.inference_mode(False), torch.enable_grad():
            yield
    finally:
        for module, flag in training.items():
            module.training = flag
        for param, flag in requires_grad.items():
            param.requires_grad_(flag)


class Analyzer:
    """Base class of all analyzers: ``analyze(x)`` returns an attribution shaped like ``x``.

    Parameters
    ----------
    model:
        The model to explain; it must return logits (see :func:`model_wo_softmax`).
        Outputs with more than two dimensions are flattened per sample.
    neuron_selection_mode:
        ``"max_activation"`` explains each sample's largest output, ``"index"`` the output
        given to :meth:`analyze`, ``"all"`` all outputs at once (as iNNvestigate).

    Notes
    -----
    An analysis runs the model in eval mode with its parameters frozen, takes gradients with
    :func:`torch.autograd.grad` only, and restores every flag afterwards: no parameter,
    buffer, ``.grad``, ``requires_grad`` or train/eval flag changes. It works inside
    ``torch.no_grad()`` and ``torch.inference_mode()``.
    """

    #: Registry name, set by :func:`register`.
    name: ClassVar[str] = ""
    #: Whether the analyzer explains logits and so refuses a model ending in softmax.
    needs_logits: ClassVar[bool] = True
    #: Whether the backward pass starts from the selected output's value (LRP family) or 1.
    seed_with_value: ClassVar[bool] = False

    def __init__(self, model: nn.Module, neuron_selection_mode: str = "max_activation") -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        check_choice("neuron_selection_mode", neuron_selection_mode, NEURON_SELECTION_MODES)
        if self.needs_logits:
            check_ends_without_softmax(model)
        self.model = model
        self.neuron_selection_mode = neuron_selection_mode

    def analyze(self, x: Tensor, neuron_selection: NeuronSelection = None) -> Tensor:
        """Explain the model's output for the batch ``x``.

        Parameters
        ----------
        x:
            Input batch, first axis the samples.
        neuron_selection:
            Only with ``neuron_selection_mode="index"``: the output to explain, one int for
            all samples or one per sample.

        Returns
        -------
        Tensor
            The attribution, with ``x``'s shape, dtype and device.
        """
        if not isinstance(x, Tensor):
            raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
        self._check_neuron_selection(neuron_selection, len(x))
        with analysis_context(self.model):
            inputs = x.detach()
            if inputs.is_inference():
                inputs = inputs.clone()
            result = self._analyze(inputs, neuron_selection)
        return result.detach().to(dtype=x.dtype)

    def _analyze(self, x: Tensor, neuron_selection: NeuronSelection) -> Tensor:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, mode={self.neuron_selection_mode!r})"

    # Neuron selection ------------------------------------------------------------------

    def _check_neuron_selection(self, neuron_selection: NeuronSelection, batch: int) -> None:
        if self.neuron_selection_mode != "index":
            if neuron_selection is not None:
                raise ValueError(
                    f"neuron_selection={neuron_selection!r} is only used with "
                    f"neuron_selection_mode='index'; this analyzer was created with "
                    f"neuron_selection_mode={self.neuron_selection_mode!r}")
            return
        if neuron_selection is None:
            raise ValueError("neuron_selection_mode='index' needs neuron_selection: an int, "
                             "or one index per sample")
        if not isinstance(neuron_selection, int):
            count = len(neuron_selection)
            if count != batch:
                raise ValueError(f"neuron_selection has {count} indices for {batch} samples; "
                                 f"give one int or one index per sample")

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
        mask = torch.zeros_like(logits)
        mask.scatter_(1, indices[:, None], 1.0)
        return start * mask

    # One forward, one (possibly rule-modified) backward ---------------------------------

    def _backward(self, x: Tensor, select: Selector, handlers: dict[str, Handler] | None = None,
                  passthrough: frozenset[str] = frozenset()) -> Tensor:
        """Forward ``x`` (with the handlers' rules, if any) and return d(selected)/dx."""
        x = x.detach().requires_grad_(True)
        if handlers is None:
            output = self.model(x)
        else:
            with OperationRules(self.model, handlers, passthrough, x).tracking_modules():
                output = self.model(x)
        logits = output.reshape(len(x), -1)
        (grad,) = torch.autograd.grad(logits, x, self._seed(logits, select(logits)))
        return grad
