"""The analysed forward pass: which module runs, which output is explained, and the check
that the analysed forward computes what the model computes.

- **Compiled models.** ``torch.compile(model)`` is analysed through its original module,
  and every analysis runs compiled submodules eagerly (:mod:`lit_explain.compiled`).
- **Activation checkpointing.** ``torch.utils.checkpoint`` runs its function directly
  during an analysis (:func:`without_checkpointing`): a rule must see the forward pass it
  modifies, and a checkpoint recomputes its part of it in the backward pass, outside the
  rules (the αβ rules then failed with ``CheckpointError``) or, reentrant, cannot be
  differentiated with ``torch.autograd.grad`` at all (every analyzer failed). The model's
  own training keeps its checkpoints.
- **Outputs other than a tensor.** :func:`select_output` picks the explained tensor of a
  tuple or mapping output (``output_key``).
- **The guard.** :func:`check_same_forward` compares the output of a rule-based forward
  pass with the model's own and names the first operation where they part;
  :func:`forward_signature` says when an earlier check still holds.
- **A final softmax.** :func:`final_softmax` finds a softmax made in ``forward``.
"""

from __future__ import annotations

import math
import sys
import traceback
import warnings
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.modules import module as module_hooks
from torch.overrides import TorchFunctionMode

from .errors import NotAnalyzableModelError
from .kinds import ALL_KINDS, SOFTMAX, classify
from .operations import OperationRules, Recorded

#: Which output a model's result is explained for: a tuple index or a mapping key.
OutputKey = int | str | None

#: Relative tolerance of :func:`check_same_forward` (float32 reorderings of the same sum,
#: such as a merged BatchNorm, stay far below it; a different function does not).
TOLERANCE = 1e-3


def _run_directly(function: Callable, preserve_rng_state: bool, *args: Any) -> Any:
    return function(*args)


def _no_checkpoint_generator(*args: Any, **kwargs: Any) -> Iterator[None]:
    yield  # what checkpoint does around its function's call: nothing


@contextmanager
def without_checkpointing() -> Iterator[None]:
    """Make ``torch.utils.checkpoint.checkpoint`` (reentrant or not, and so
    ``checkpoint_sequential``) call its function directly while open.

    checkpoint looks both of its variants up at each call (``CheckpointFunction.apply``,
    ``_checkpoint_without_reentrant_generator``); they are swapped here for the call itself
    and put back on exit. Where a torch version has neither, nothing is swapped.
    """
    checkpoint = sys.modules.get("torch.utils.checkpoint")
    swaps = [] if checkpoint is None else [
        (owner, name, value) for owner, name, value in (
            (getattr(checkpoint, "CheckpointFunction", None), "apply",
             staticmethod(_run_directly)),
            (checkpoint, "_checkpoint_without_reentrant_generator", _no_checkpoint_generator))
        if owner is not None and hasattr(owner, name)]
    # (CheckpointFunction inherits apply: on exit the swap is deleted, not set)
    saved = [(owner, name, vars(owner).get(name)) for owner, name, _ in swaps]
    try:
        for owner, name, value in swaps:
            setattr(owner, name, value)
        yield
    finally:
        for owner, name, value in saved:
            if value is None:
                delattr(owner, name)
            else:
                setattr(owner, name, value)


def select_output(output: Any, key: OutputKey = None) -> Tensor:
    """The tensor to explain in a model's ``output``.

    Parameters
    ----------
    output:
        A tensor, a tuple/list or a mapping (such as a ``dict`` or Hugging Face
        ``ModelOutput``).
    key:
        Tuple index or mapping key. ``None``: the tensor itself, the first tensor of a
        tuple, ``"logits"`` of a mapping.
    """
    if isinstance(output, Tensor):
        if key not in (None, 0):
            raise ValueError(f"output_key={key!r}, but the model returns one tensor; leave "
                             f"output_key unset")
        return output
    if isinstance(output, Mapping):
        name = "logits" if key is None else key
        if name not in output:
            raise ValueError(f"output_key={name!r} is not a key of the model's output; "
                             f"valid keys: {list(output)}")
        value = output[name]
    elif isinstance(output, (tuple, list)):
        if key is None:
            value = next((o for o in output if isinstance(o, Tensor)), None)
            if value is None:
                raise ValueError(f"the model returns a {type(output).__name__} without a "
                                 f"tensor in it; give output_key=")
        elif isinstance(key, int) and not isinstance(key, bool) and -len(output) <= key < len(
                output):
            value = output[key]
        else:
            raise ValueError(f"output_key={key!r} is not valid for the model's output, a "
                             f"{type(output).__name__} of {len(output)}; valid: 0.."
                             f"{len(output) - 1}")
    else:
        raise TypeError(f"the model returns a {type(output).__name__}; analyzers explain a "
                        f"tensor, a tuple or a mapping of them (output_key=)")
    if not isinstance(value, Tensor):
        noun = type(value).__name__
        raise TypeError(f"output_key={key!r} selects {'an' if noun[:1] in 'aeiou' else 'a'} "
                        f"{noun}, not a tensor")
    if not value.is_floating_point():
        items = output.items() if isinstance(output, Mapping) else enumerate(output) if \
            isinstance(output, (tuple, list)) else []
        scores = [k for k, v in items if isinstance(v, Tensor) and v.is_floating_point()]
        raise ValueError(
            f"the explained model output{'' if key is None else f' (output_key={key!r})'} is "
            f"a {value.dtype} tensor (predicted classes or decisions?), which has no gradient "
            f"to explain; explain the scores they come from"
            f"{f' with output_key= one of {scores}' if scores else ''}")
    return value


class OutputSelector(nn.Module):
    """``model`` with its output reduced to the explained tensor (:func:`select_output`):
    how metrics and the callback call a model that returns a tuple or a mapping.

    Parameters
    ----------
    model:
        The model (or any callable).
    output_key:
        As for :func:`select_output`.
    """

    def __init__(self, model: Callable[[Tensor], Any], output_key: OutputKey = None) -> None:
        super().__init__()
        self.model = model
        self.output_key = output_key

    def forward(self, x: Tensor) -> Tensor:
        return select_output(self.model(x), self.output_key)


def outputs_close(got: Tensor, expected: Tensor) -> bool:
    """Whether ``got`` equals ``expected`` up to :data:`TOLERANCE` of the largest finite
    value of ``expected``; NaNs and infinities (of one sign) at the same places count as
    equal, so that a non-finite input or weight gets its non-finite map, not an error.
    Integer and boolean tensors (indices, masks) must be equal."""
    if got.shape != expected.shape:
        return False
    expected = expected.detach()
    if not (expected.is_floating_point() or expected.is_complex()):
        return torch.equal(got.detach().to(expected.dtype), expected)
    finite = expected[torch.isfinite(expected)]
    scale = float(finite.abs().max()) if finite.numel() else 0.0
    return bool(torch.allclose(got.detach().to(expected.dtype), expected, rtol=TOLERANCE,
                               atol=TOLERANCE * scale + 1e-30, equal_nan=True))


def _all_close(got: list[Tensor], expected: list[Tensor]) -> bool:
    return len(got) == len(expected) and all(
        outputs_close(g, e) for g, e in zip(got, expected, strict=True))


def _first_difference(expected: list[Recorded], got: list[Recorded]) -> str:
    """Where two recordings of one forward pass part: the first call whose inputs or
    outputs differ. A call whose input differs is blamed on the call that made that input
    (an LRP kernel layer's rule takes its final form where its output is first used)."""
    for index, (plain, analysed) in enumerate(zip(expected, got, strict=False)):
        if plain.where != analysed.where:
            return f"operation {index}: the model runs {plain.where}, the analysis {analysed.where}"
        values = [value for _, value in analysed.inputs]
        if not _all_close(values, [value for _, value in plain.inputs]):
            differing = {i for (i, value), (_, expected_value) in zip(
                analysed.inputs, plain.inputs, strict=False)
                if not outputs_close(value, expected_value)}
            for earlier in range(index - 1, -1, -1):
                if got[earlier].output_ids & differing:
                    return f"operation {earlier} of the forward pass, {got[earlier].where}"
            return f"the inputs of operation {index} of the forward pass, {plain.where}"
        if not _all_close(analysed.outputs, plain.outputs):
            return f"operation {index} of the forward pass, {plain.where}"
    if len(expected) != len(got):
        return (f"operation {min(len(expected), len(got))}: the model makes {len(expected)} "
                f"calls, the analysis {len(got)}")
    return "no single operation (the model's output depends on the whole batch)"


#: Attribute values recorded as they are (immutable, comparable).
_PLAIN = frozenset({bool, int, float, complex, str, bytes, type(None), torch.dtype,
                    torch.device, torch.layout, torch.memory_format})
#: nn.Module's own attributes (parameters, buffers, submodules and hooks: recorded apart).
_MODULE_INTERNALS = frozenset(nn.Module().__dict__)


def _state(value: object, depth: int = 1) -> object:
    """A comparable record of an attribute's value: plain values as they are, tuples item by
    item, a tensor by its storage and version, a list, dict or object with attributes
    (``self.config``) item by item ``depth`` levels deep, anything else (a function, a
    class, an object deeper down) by its identity."""
    kind = type(value)
    if kind in _PLAIN:
        return value
    if kind is tuple:
        return tuple(_state(item, depth) for item in value)
    if isinstance(value, Tensor):
        return id(value), value.data_ptr(), None if value.is_inference() else value._version
    if depth and isinstance(value, (list, dict)):
        items = value.items() if isinstance(value, dict) else enumerate(value)
    elif depth and not isinstance(value, (type, nn.Module)) and isinstance(
            getattr(value, "__dict__", None), dict) and not callable(value):
        items = vars(value).items()
    else:
        return kind, id(value)
    return kind, id(value), tuple((_state(key, 0), _state(item, depth - 1))
                                  for key, item in items)  # (a key may be a tensor)


def _module_state(module: nn.Module) -> tuple:
    """A module's identity, class (and the class's ``forward``), attributes and hooks."""
    attributes = tuple((name, value if type(value) in _PLAIN else _state(value))
                       for name, value in module.__dict__.items()
                       if name not in _MODULE_INTERNALS)
    # hooks by handle id (never reused; the with-kwargs and always-call tables share them)
    hooks = tuple(module._forward_hooks), tuple(module._forward_pre_hooks)
    # the class's forward as defined (TorchScript's is a descriptor that fails on a class)
    forward = next((vars(c)["forward"] for c in type(module).__mro__ if "forward" in vars(c)),
                   None)
    return id(module), type(module), id(forward), attributes, hooks


def forward_signature(model: nn.Module, x: Tensor) -> tuple | None:
    """What decides which operations a forward pass of ``x`` runs, for a model whose forward
    reads no tensor value into Python or into a shape (no ``if x.sum() > 0:``, see
    :func:`~.kinds.reads_values`): each module (its identity, class, attributes (see
    :func:`_state`) and forward hooks), each parameter and buffer (its storage and its
    version, which most in-place changes raise: an optimizer step, ``load_state_dict``),
    the global module hooks, and the input's shape, strides, dtype and device.

    Equal signatures mean the same operations, so that an analysis whose forward pass was
    checked against the model's (:func:`check_same_forward`) need not be checked again for
    another input of the same signature. Parameter values decide no operation except
    through a value read, which is seen: a change that keeps the version (a fused
    optimizer's step, a write through ``.data``) needs no new check. Not seen: state the forward
    pass reaches otherwise (a global variable, an object two levels down an attribute, what
    a hook or closure holds). ``None`` where a parameter or buffer is an inference tensor
    (made under ``torch.inference_mode()``), which keeps no version."""
    modules = list(model.modules())
    tensors = [t for m in modules for t in (*m._parameters.values(), *m._buffers.values())
               if t is not None]
    if any(t.is_inference() for t in tensors):
        return None
    global_hooks = tuple(tuple(getattr(module_hooks, name))  # (handle ids, never reused)
                         for name in ("_global_forward_hooks", "_global_forward_pre_hooks"))
    return (tuple(_module_state(m) for m in modules),
            tuple((t.data_ptr(), t._version) for t in tensors), global_hooks,
            tuple(x.shape), x.stride(), x.dtype, x.device)


def in_compiled_control_flow(error: BaseException) -> bool:
    """Whether ``error`` was raised from within torch's higher-order operators
    (``torch.cond``, ``torch.while_loop``, ``torch.map``): torch compiles or traces them
    whenever a function mode is active, and they fail with whatever error that meets."""
    return any(_HIGHER_ORDER_OPS in frame.filename.replace("\\", "/")
               for frame in traceback.extract_tb(error.__traceback__))


_HIGHER_ORDER_OPS = "/torch/_higher_order_ops/"


@contextmanager
def refusing_compiled_control_flow() -> Iterator[None]:
    """Turn the failure of a control-flow operator that runs only compiled under a function
    mode (see :func:`in_compiled_control_flow`), which every rule-based analysis runs,
    into :class:`NotAnalyzableModelError`."""
    try:
        yield
    except NotAnalyzableModelError:
        raise
    except Exception as error:
        if not in_compiled_control_flow(error):
            raise
        raise NotAnalyzableModelError(
            "the model's forward uses a control-flow operator such as torch.cond or "
            "torch.while_loop, which torch runs only compiled under an analysis; a rule-based "
            "analysis runs the forward pass operation by operation and cannot follow it "
            f"({type(error).__name__}: {str(error)[:200]}). Write the branch in Python "
            "(if/else) for the analysis; the gradient methods (gradient, input_t_gradient, "
            "smoothgrad, integrated_gradients) differentiate it as it is.") from error


def check_same_forward(model: nn.Module, x: Tensor, logits: Tensor,
                       analysed: Callable[[Tensor, list], Tensor],
                       logits_of: Callable[[Any, int], Tensor]) -> None:
    """Raise :class:`NotAnalyzableModelError` unless ``logits`` (from the analysed forward
    pass of ``x``) equal the model's own output.

    The first sample is compared (one small extra forward pass); where it differs, the whole
    batch (for models whose output depends on the batch). If that differs too, both forward
    passes are recorded on the first sample and the first operation whose output differs
    is named. ``analysed(inputs, record)`` reruns the analysed forward pass.

    The model runs as in the analysis: grad enabled and its input requiring grad (a copy of
    a leaf, which it may write in place), so that a forward that branches on either takes
    the branch the analysed forward took (``nn.MultiheadAttention``'s inference fast path,
    taken where nothing requires grad, gives NaN for a query whose keys are all masked, its
    gradient path 0).
    """
    def fed(sample: Tensor) -> Tensor:  # a copy of a leaf that requires grad, as analysed
        return sample.detach().requires_grad_(sample.is_floating_point()).clone()

    def model_output(sample: Tensor) -> Tensor:
        return logits_of(model(fed(sample)), len(sample)).detach()

    try:
        expected = model_output(x[:1])
        if outputs_close(logits[:1], expected):
            _warn_if_inference_differs(model, x[:1], expected, logits_of)
            return
    except Exception:  # one that cannot run a sample alone (one holding a mask for the
        pass  # whole batch fails a torch assertion): the whole batch is compared
    expected = model_output(x)
    if outputs_close(logits, expected):
        _warn_if_inference_differs(model, x, expected, logits_of)
        return
    difference = float((logits.detach() - expected).abs().max())
    where = "an operation not found (neither forward pass could be recorded)"
    # both passes recorded on one sample, or on the batch where either cannot run one alone
    # (DeepLIFT's rules take the input and its reference stacked)
    for sample in (x[:1], x):
        plain: list[Recorded] = []
        recorded: list[Recorded] = []
        try:
            given = fed(sample)
            with OperationRules(model, {}, ALL_KINDS, given, record=plain).tracking_modules():
                logits_of(model(given), len(sample))
            analysed(sample.detach().clone().requires_grad_(x.is_floating_point()), recorded)
        except Exception:  # (as above)
            continue
        where = _first_difference(plain, recorded)
        break
    raise NotAnalyzableModelError(
        f"the analysed forward pass does not compute the model's function (its output differs "
        f"by up to {difference:.3g}); they part at {where}. A map would explain a different "
        f"network, so none is returned. Please report this model with the operation named "
        f"here.")


def _warn_if_inference_differs(model: nn.Module, x: Tensor, output: Tensor,
                               logits_of: Callable[[Any, int], Tensor]) -> None:
    """Warn where the model's output for ``x`` under ``torch.no_grad()`` is not ``output``,
    its output with gradients, which every analysis explains."""
    try:
        with torch.no_grad():
            inference = logits_of(model(x.detach().clone()), len(x))
    except Exception:  # (a forward that runs with gradients only: nothing to compare)
        return
    if outputs_close(inference, output):
        return
    difference = float((inference - output).abs().nan_to_num(nan=float("inf")).max())
    apart = f"up to {difference:.3g} apart" if math.isfinite(difference) else \
        "one of them NaN or infinite where the other is a number"
    warnings.warn(
        f"the model computes another output under torch.no_grad() than with gradients "
        f"({apart}): a branch on torch.is_grad_enabled() or on its input's "
        f"requires_grad, or a fast path torch takes in inference (nn.MultiheadAttention's "
        f"and nn.TransformerEncoder's with masks: NaN or 0 for padding). The map explains "
        f"the output with gradients, as every gradient method does.", UserWarning,
        stacklevel=7)  # (the caller of analyze)


class _SoftmaxOutputs(TorchFunctionMode):
    def __init__(self) -> None:
        super().__init__()
        self.outputs: dict[int, Tensor] = {}

    def __torch_function__(self, func, types, args=(), kwargs=None):
        output = func(*args, **(kwargs or {}))
        if classify(func, args, kwargs or {}) == SOFTMAX and isinstance(output, Tensor):
            self.outputs[id(output)] = output
        return output


def final_softmax(model: nn.Module, x: Tensor, logits_of: Callable[[Any, int], Tensor]) -> bool:
    """Whether the explained output of ``model`` on ``x`` is made by a softmax (or
    log-softmax) call, possibly reshaped or sliced (one forward pass of ``x``)."""
    try:
        with torch.no_grad(), _SoftmaxOutputs() as mode:
            output = logits_of(model(x), len(x))
    except Exception as error:  # (torch.cond cannot run under the mode: not found)
        if in_compiled_control_flow(error):
            return False
        raise
    return any(same_storage(output, t) for t in mode.outputs.values())


def storage_key(t: Tensor) -> int | None:
    """What ``t`` and every view of it share: its storage's address; ``None`` for an empty
    tensor. No call an analysis would see."""
    with torch._C.DisableTorchFunction():
        return t.untyped_storage().data_ptr() if t.numel() else None


def values_key(t: Tensor) -> tuple[int, int] | None:
    """What ``t`` and every view of it that holds all its values and no others (a reshape,
    an added axis, a transpose, an expansion) share: the address of its first element and
    the number of distinct elements; ``None`` for an empty tensor. A slice, or another part
    of the same storage, differs. No call an analysis would see."""
    with torch._C.DisableTorchFunction():
        if not t.numel():
            return None
        distinct = math.prod(size for size, stride in zip(t.shape, t.stride(), strict=True)
                             if stride)
        return t.data_ptr(), distinct


def same_storage(a: Tensor, b: Tensor) -> bool:
    """Whether ``a`` and ``b`` are views of one storage (a softmax output and a slice of it);
    no call an analysis would see."""
    key = storage_key(a)
    return key is not None and key == storage_key(b)
