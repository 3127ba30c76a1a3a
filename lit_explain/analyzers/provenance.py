"""What made each tensor of an analysed forward pass, for :class:`~.operations.OperationRules`.

- **Code the analysis cannot see into.** TorchScript (``torch.jit.script``/``trace``), a
  custom ``torch.autograd.Function`` or a C++ extension computes without the rules, with its
  own backward: there the map would silently be another method's. Every differentiable
  tensor a routed call makes is recorded (weakly); a differentiable, computed tensor that
  reaches a call or leaves a submodule without being among them was made out of sight.
- **Values of the input without a gradient** (for DeepLIFT, which must account for every
  difference to the reference): what ``detach()``, a ``torch.no_grad()`` region or an index
  (``argmax``) makes of a differentiable tensor, and what is computed from such values.
  Calls that read only a tensor's shape (``zeros_like``, ``new_ones``) make none.
- **Statistics** (for AttnLRP's normalisation rule on normalisations written out by hand):
  a spread that keeps its dimensions (``var``, ``std``, ``norm``, or the mean or sum of
  squares or absolute values) and what elementwise operations make of statistics alone.
  A statistic that scales another tensor in an elementwise product, or divides it, is held
  constant there, as the rule holds LayerNorm's.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Iterable

import torch
from torch import Tensor

from .kinds import (
    ACTIVATION,
    ELEMENTWISE_AFFINE,
    ELEMENTWISE_PRODUCTS,
    LINEAR,
    MEANS,
    SPREADS,
    differentiable,
    is_magnitude,
    is_reciprocal,
    tensors_in,
)

#: Maxima and minima over axes: what a normalisation by the largest value divides by, as by
#: a sum (``h / h.amax(-1, keepdim=True)``).
_MAXIMA = frozenset({torch.amax, torch.Tensor.amax, torch.amin, torch.Tensor.amin})

#: What a refusal for code out of sight says after naming where.
UNSEEN_CODE = ("TorchScript (torch.jit.script or trace), a custom torch.autograd.Function or "
               "a C++ extension, where the analyzer's rules cannot reach; the map would miss "
               "them. Analyse the model as a plain Python nn.Module (not scripted or traced), "
               "or use a gradient method (gradient, input_t_gradient, smoothgrad, "
               "integrated_gradients), which autograd differentiates through such code.")


class _WeakSet:
    """Tensors by identity, held weakly (an id is only trusted while its tensor lives)."""

    def __init__(self) -> None:
        self._refs: dict[int, weakref.ref] = {}

    def add(self, t: Tensor) -> None:
        self._refs[id(t)] = weakref.ref(t)

    def __contains__(self, t: Tensor) -> bool:
        ref = self._refs.get(id(t))
        return ref is not None and ref() is t

    def __bool__(self) -> bool:
        return bool(self._refs)


#: Calls whose output depends on a tensor's shape, dtype and device only.
SHAPE_ONLY = frozenset({
    torch.zeros_like, torch.ones_like, torch.empty_like, torch.full_like, torch.rand_like,
    torch.randn_like, Tensor.new_zeros, Tensor.new_ones, Tensor.new_empty, Tensor.new_full,
    Tensor.new_tensor})


class Provenance:
    """The tensors routed calls made, the statistics and the squares among them, and the
    values computed from the input without a gradient."""

    def __init__(self) -> None:
        # a tensor made in sight carries this pass's own token (an attribute: cheaper than a
        # weak reference per tensor, and no id of a freed tensor can be mistaken for it)
        self._token = object()
        self._statistics, self._magnitudes, self._held = _WeakSet(), _WeakSet(), _WeakSet()
        self._sums, self._reciprocals = _WeakSet(), _WeakSet()

    def add_made(self, tensors: Iterable[Tensor]) -> None:
        """Record the differentiable ones among ``tensors`` as made in sight."""
        for t in tensors:
            if t.requires_grad:
                t._lit_explain_made = self._token

    def note_detached(self, func: Callable, tensors: list[Tensor],
                      produced: list[Tensor]) -> None:
        """Mark those of ``produced`` that are not differentiable as values of the input
        without a gradient where the call made them from a differentiable tensor or from such
        values (also beside a differentiable output: ``max_pool2d``'s indices)."""
        if not produced or func in SHAPE_ONLY:
            return
        token = self._token
        if any(t.requires_grad or getattr(t, "_lit_explain_detached", None) is token
               for t in tensors):
            for t in produced:
                if not t.requires_grad:
                    t._lit_explain_detached = token

    def detached(self, tensors: Iterable[Tensor]) -> Tensor | None:
        """The first of ``tensors`` that is a value of the input without a gradient."""
        token = self._token
        return next((t for t in tensors
                     if getattr(t, "_lit_explain_detached", None) is token), None)

    def made_unseen(self, tensors: Iterable[Tensor]) -> bool:
        """Whether one of ``tensors`` is differentiable, computed (not a leaf) and made out
        of sight."""
        token = self._token
        for t in tensors:  # (once per call of every analysed forward pass: a plain loop)
            if t.requires_grad and t.grad_fn is not None and getattr(
                    t, "_lit_explain_made", None) is not token:
                return True
        return False

    def hold_statistic(self, func: Callable, args: tuple) -> tuple:
        """``args`` of an elementwise product or quotient (``func``), a statistic that scales
        the other, larger differentiable operand detached (of a quotient: the divisor)."""
        if len(args) != 2 or not all(differentiable(a) for a in args):
            return args
        for i in (0, 1) if func in ELEMENTWISE_PRODUCTS else (1,):
            statistic, other = args[i], args[1 - i]
            if statistic in self._statistics and other not in self._statistics \
                    and statistic.numel() < other.numel():
                held = statistic.detach()
                self._held.add(held)
                return (other, held) if i == 1 else (held, other)
        return args

    def is_held(self, t: Tensor) -> bool:
        """Whether ``t`` is a statistic held constant (a value of the input, no constant)."""
        return t in self._held

    def note_reciprocal(self, func: Callable, kind: str, args: tuple, output: Tensor) -> None:
        """Record ``output`` as a sum where the call sums or averages a computed tensor (or
        shifts or scales such a sum by constants: ``s + eps``), and as the reciprocal of a
        sum where it makes one (``1 / s``, ``s.reciprocal()``, ``s ** -1``, ``s.rsqrt()``,
        also scaled or shifted: ``2 / s``)."""
        operands = [t for t in tensors_in(args) if differentiable(t)]
        if len(operands) != 1:
            return
        if func in MEANS or func in _MAXIMA:
            self._sums.add(output)
        elif kind == ACTIVATION and is_reciprocal(func, args) and operands[0] in self._sums:
            self._reciprocals.add(output)
        elif kind == LINEAR and func in ELEMENTWISE_AFFINE:
            for made in (self._sums, self._reciprocals):
                if operands[0] in made:
                    made.add(output)

    def divides(self, args: tuple) -> bool:
        """Whether an elementwise product of two computed tensors divides one by a sum: one
        factor is the reciprocal of a sum, of fewer elements than the other, which it
        broadcasts over (``e * (1 / e.sum(-1, keepdim=True))``: the quotient
        ``e / e.sum(...)``; a gate ``h * (1 / (1 + exp(-g)))`` is none)."""
        factors = [t for t in tensors_in(args) if differentiable(t)]
        return len(factors) == 2 and any(
            t in self._reciprocals and t.numel() < other.numel()
            for t, other in (factors, factors[::-1]))

    def note_statistic(self, func: Callable, kind: str, args: tuple, output: Tensor) -> None:
        """Record ``output`` of the call as a statistic, or as squares or absolute values."""
        if is_magnitude(func, args):
            self._magnitudes.add(output)
            return
        if not (self._statistics or func in SPREADS or func in MEANS) or not \
                output.requires_grad:
            return  # (most calls: no statistic yet, and none made here)
        operands = [t for t in tensors_in(args) if differentiable(t)]
        if not operands:
            return
        if func in SPREADS or (func in MEANS and operands[0] in self._magnitudes):
            source = operands[0]
            statistic = output.dim() == source.dim() and output.numel() < source.numel()
        else:
            statistic = kind in (ACTIVATION, LINEAR) and all(t in self._statistics
                                                               for t in operands)
        if statistic:
            self._statistics.add(output)
