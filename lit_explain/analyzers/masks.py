"""Masks computed from activations: a ReLU (or another elementwise function) written with a
comparison, and the gates a rule must not take for constants.

``torch.where(h > 0, h, 0)``, ``h.masked_fill(h < 0, 0)``, ``h * (h > 0)`` and
``h[h < 0] = 0`` compute ``relu(h)``, but to the engine each is a selection or a product
(kinds structure and linear) by a mask it would hold constant: DeepLIFT lost
summation-to-delta there, Guided Backprop and Deconvnet missed a ReLU, and the flat and w²
rules treated it otherwise than ``F.relu``. :class:`Masks` records the boolean tensors that a
comparison (or ``isfinite``, ``isnan``, ...) makes of one differentiable tensor, and what a
negation or a cast makes of them, so that a call gating a tensor by a mask made from that
same tensor is seen as what it is:

- ``relu(h)`` where it keeps exactly ``h > 0`` (or ``h ≥ 0``) and fills 0: kind ``relu``,
  run as ``torch.relu`` (``torch.relu_`` in place);
- another elementwise function of ``h`` (another threshold, another fill value): kind
  ``activation``, run as a :class:`MaskedGate`;
- any other use of such a mask together with a differentiable tensor (a gate made from
  another tensor, a mask reshaped or combined first): kind ``data_mask``, for which no
  analyzer has a rule, so that an analysis refuses rather than holds the mask constant.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from .kinds import ACTIVATION, DATA_MASK, RELU, differentiable, tensors_in

Tensor_ = torch.Tensor

#: Calls that make a mask of a tensor: comparisons and elementwise tests.
MASK_MAKERS = frozenset({
    torch.gt, Tensor_.gt, Tensor_.__gt__, torch.greater, torch.ge, Tensor_.ge, Tensor_.__ge__,
    torch.greater_equal, torch.lt, Tensor_.lt, Tensor_.__lt__, torch.less, torch.le, Tensor_.le,
    Tensor_.__le__, torch.less_equal, torch.eq, Tensor_.eq, Tensor_.__eq__, torch.ne,
    Tensor_.ne, Tensor_.__ne__, torch.isfinite, Tensor_.isfinite, torch.isnan, Tensor_.isnan,
    torch.isinf, Tensor_.isinf, torch.isposinf, torch.isneginf, torch.signbit,
    Tensor_.signbit})
#: Which side of 0 a comparison with 0 keeps: "positive" (``h > 0``, ``h ≥ 0``) or
#: "negative"; written with the tensor first (``0 < h`` is ``h > 0``).
_SIDES = {func: side for side, funcs in (
    ("positive", (torch.gt, Tensor_.gt, Tensor_.__gt__, torch.greater, torch.ge, Tensor_.ge,
                  Tensor_.__ge__, torch.greater_equal)),
    ("negative", (torch.lt, Tensor_.lt, Tensor_.__lt__, torch.less, torch.le, Tensor_.le,
                  Tensor_.__le__, torch.less_equal))) for func in funcs}
_FLIPPED = {"positive": "negative", "negative": "positive", None: None}
_NEGATIONS = frozenset({Tensor_.__invert__, torch.logical_not, Tensor_.logical_not,
                        torch.bitwise_not, Tensor_.bitwise_not})
#: Casts keep which positions a mask keeps (``mask.float()``, ``mask.to(h.dtype)``).
_CASTS = frozenset({Tensor_.to, Tensor_.float, Tensor_.double, Tensor_.half, Tensor_.bfloat16,
                    Tensor_.bool, Tensor_.type_as, Tensor_.type})
_WHERE = frozenset({torch.where, Tensor_.where})
_MASKED_FILL = frozenset({torch.masked_fill, Tensor_.masked_fill, Tensor_.masked_fill_})
_MULTIPLY = frozenset({torch.mul, Tensor_.mul, Tensor_.mul_, Tensor_.__mul__,
                       Tensor_.__imul__, Tensor_.__rmul__})
_IN_PLACE = frozenset({Tensor_.masked_fill_, Tensor_.mul_, Tensor_.__imul__,
                       Tensor_.__setitem__})


@dataclass
class _Mask:
    """A mask made from ``source`` (at its version ``version``): ``keep(h)`` remakes it from
    a tensor like ``source``; ``side``: the side of 0 it keeps, where it compares with 0.
    Without ``keep`` (reshaped, combined) it can only be refused."""

    source: weakref.ref
    version: int
    keep: Callable[[Tensor], Tensor] | None
    side: str | None


class _Remake:
    """``func(*args)`` with the tensor at ``index`` of ``args`` given anew."""

    def __init__(self, func: Callable, args: tuple, kwargs: dict, index: int) -> None:
        self.func, self.kwargs, self.index = func, kwargs, index
        self.args = (*args[:index], None, *args[index + 1:])  # the source not held

    def __call__(self, h: Tensor) -> Tensor:
        args = (*self.args[:self.index], h, *self.args[self.index + 1:])
        return self.func(*args, **self.kwargs)


class MaskedGate:
    """``h`` where ``keep(h)``, ``fill`` (a number, or a constant tensor broadcast to ``h``)
    elsewhere: an elementwise function of ``h`` that the model wrote with a mask of ``h``;
    named as the call it stands for."""

    def __init__(self, original: Callable, keep: Callable[[Tensor], Tensor],
                 fill: float | Tensor) -> None:
        self.keep, self.fill = keep, fill
        self.__name__ = getattr(original, "__name__", repr(original))
        self.__module__ = getattr(original, "__module__", None) or "torch.Tensor"

    def __call__(self, h: Tensor) -> Tensor:
        return torch.where(self.keep(h), h, torch.as_tensor(self.fill, dtype=h.dtype,
                                                            device=h.device))


@dataclass
class Gate:
    """A call rewritten as what it computes: ``func(*args)`` of kind ``kind``; ``in_place``:
    the model's call changed ``args[0]`` in place (``func`` does not)."""

    func: Callable
    args: tuple
    kwargs: dict
    kind: str
    in_place: bool = False


class Masks:
    """The masks an analysed forward pass makes of differentiable tensors (held weakly)."""

    def __init__(self) -> None:
        self._masks: dict[int, tuple[weakref.ref, _Mask]] = {}

    def _get(self, t: Tensor) -> _Mask | None:
        entry = self._masks.get(id(t))
        return entry[1] if entry is not None and entry[0]() is t else None

    def note(self, func: Callable, args: tuple, kwargs: dict, output: object) -> None:
        """Record ``output`` of a call if it is a mask of a differentiable tensor or made
        from one (after the call ran)."""
        if not isinstance(output, Tensor) or output.requires_grad:
            return
        if func in MASK_MAKERS:
            tensors = tensors_in(args, kwargs)
            operands = [t for t in tensors if differentiable(t)]
            if len(operands) != 1:
                return
            h = operands[0]
            index = next((i for i, a in enumerate(args) if a is h), None)
            if index is None:  # given by keyword: remade opaquely
                self._add(output, _Mask(weakref.ref(h), h._version, None, None))
                return
            other = args[1 - index] if len(args) == 2 else None
            side = _SIDES.get(func) if isinstance(other, (int, float)) and other == 0 else None
            if side is not None and index == 1:  # 0 < h: h > 0
                side = _FLIPPED[side]
            self._add(output, _Mask(weakref.ref(h), h._version,
                                    _Remake(func, args, kwargs, index), side))
            return
        if not self._masks:
            return
        made_from = next((m for t in tensors_in(args, kwargs) if (m := self._get(t))), None)
        if made_from is None:
            return
        if func in _NEGATIONS and made_from.keep is not None:
            keep = made_from.keep
            self._add(output, _Mask(made_from.source, made_from.version,
                                    lambda h: ~keep(h), _FLIPPED[made_from.side]))
        elif func in _CASTS:
            self._add(output, made_from)
        else:
            self._add(output, _Mask(made_from.source, made_from.version, None, None))

    def _add(self, output: Tensor, mask: _Mask) -> None:
        key = id(output)
        self._masks[key] = (weakref.ref(output), mask)
        weakref.finalize(output, self._masks.pop, key, None)

    def rewrite(self, func: Callable, args: tuple, kwargs: dict) -> Gate | None:
        """The call as what it computes where it uses a recorded mask together with a
        differentiable tensor; ``None`` for every other call."""
        if not self._masks or func in _CASTS:  # (``mask.type_as(h)`` reads h's dtype only)
            return None
        tensors = tensors_in(args, kwargs)
        masks = [(t, m) for t in tensors if (m := self._get(t)) is not None]
        if not masks or not any(differentiable(t) for t in tensors):
            return None
        gate = self._own_gate(func, args, kwargs, masks)
        return gate if gate is not None else Gate(func, args, kwargs, DATA_MASK)

    @staticmethod
    def _own_gate(func: Callable, args: tuple, kwargs: dict,
                  masks: list[tuple[Tensor, _Mask]]) -> Gate | None:
        """The call as an elementwise function of the tensor it gates, where its one mask
        was made from that very tensor (unchanged since)."""
        if kwargs or len(masks) != 1:
            return None
        mask_tensor, mask = masks[0]
        form = _gate_form(func, args, mask_tensor)
        if form is None:
            return None
        h, kept, fill = form  # kept: the mask's True positions are kept (else: the others)
        shapes = [mask_tensor.shape, *([fill.shape] if isinstance(fill, Tensor) else [])]
        if mask.keep is None or mask.source() is not h or h._version != mask.version or \
                torch.broadcast_shapes(h.shape, *shapes) != h.shape:
            return None  # (the output is shaped like h: an elementwise function of h)
        in_place = func in _IN_PLACE
        side = mask.side if kept else _FLIPPED[mask.side]
        if side == "positive" and _is_zero(fill):
            return Gate(torch.relu_ if in_place else torch.relu, (h,), {}, RELU)
        keep = mask.keep if kept else (lambda t, k=mask.keep: ~k(t))
        return Gate(MaskedGate(func, keep, fill), (h,), {}, ACTIVATION, in_place)


def _gate_form(func: Callable, args: tuple, mask: Tensor
               ) -> tuple[Tensor, bool, float | Tensor] | None:
    """``(h, kept, fill)`` of a call that keeps ``h`` where ``mask`` (``kept``) or where not,
    and puts the constant ``fill`` elsewhere; ``None`` for any other call."""
    if func in _WHERE:
        if func is Tensor_.where and len(args) == 3:  # h.where(mask, fill)
            args = (args[1], args[0], args[2])
        if len(args) != 3 or args[0] is not mask:
            return None
        _, a, b = args
        if differentiable(a) and _constant(b) is not None:
            return a, True, _constant(b)
        if differentiable(b) and _constant(a) is not None:
            return b, False, _constant(a)
        return None
    if func in _MASKED_FILL or func is Tensor_.__setitem__:  # h[mask] = fill
        if len(args) == 3 and args[1] is mask and isinstance(args[0], Tensor) and \
                _constant(args[2]) is not None:
            return args[0], False, _constant(args[2])
        return None
    if func in _MULTIPLY and len(args) == 2:
        if args[1] is mask:
            h = args[0]
        elif args[0] is mask and func not in _IN_PLACE:  # (mask *= h would change the mask)
            h = args[1]
        else:
            return None
        return (h, True, 0.0) if isinstance(h, Tensor) else None
    return None


def _constant(value: object) -> float | Tensor | None:
    """A fill value: a Python number or a tensor that needs no gradient; else None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, Tensor) and not value.requires_grad:
        return value
    return None


def _is_zero(fill: float | Tensor) -> bool:
    return not bool(fill.any()) if isinstance(fill, Tensor) else fill == 0
