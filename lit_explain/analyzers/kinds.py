"""Operation kinds: which torch calls an analysis tells apart, and the argument helpers.

Every torch call of an analysed forward pass is sorted into a *kind* (``"kernel"``,
``"relu"``, ``"softmax"``, ...) by :func:`classify`; an analyzer gives each kind a rule
(see :mod:`.operations`). Also here: the in-place calls' out-of-place twins
(:func:`out_of_place`), the metadata queries that need no rule (:data:`QUERIES`), the calls
that read tensor values (:data:`VALUE_READS`), and the walks over call arguments
(:func:`tensors_in`, :func:`replace_tensors`).
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from .attention import DECOMPOSITIONS

Tensor_ = torch.Tensor

# Operation kinds. A handler is chosen by kind; see `classify`.
KERNEL = "kernel"  # linear and convolution layers: the layers LRP rules are written for
#: A matrix product of one differentiable operand with a model weight (``x @ self.W``,
#: ``torch.einsum("...", x, self.W)``): a dense layer written out, a kernel layer to LRP
#: (see :func:`weight_operand` for how a weight is recognised)
WEIGHT_PRODUCT = "weight_product"
BATCH_NORM = "batch_norm"  # an affine layer with running statistics
RELU = "relu"
MAX_POOL = "max_pool"
LINEAR = "linear"  # other operations linear in their one differentiable input, sums included
STRUCTURE = "structure"  # reshapes, selections, concatenation, padding, dropout: no maths
ACTIVATION = "activation"  # elementwise non-linearities other than ReLU
SOFTMAX = "softmax"
PRODUCT = "product"  # products of two differentiable tensors (attention, gating)
#: LayerNorm, RMSNorm, GroupNorm, InstanceNorm, ``F.normalize``: a normalisation by a statistic
#: of the input (or by running statistics)
NORMALIZATION = "normalization"
#: A spread of a tensor along dimensions (``var``, ``std``, ``norm``): what a normalisation
#: written out by hand divides by
STATISTIC = "statistic"
#: Fused attention (``F.scaled_dot_product_attention``, ``F.multi_head_attention_forward``):
#: a handler may run it through its parts (:meth:`OperationCall.decompose`)
ATTENTION = "attention"
#: A call that uses a mask computed from a differentiable tensor with another differentiable
#: tensor, other than as an elementwise function of the tensor the mask was made from (see
#: :mod:`.masks`): no analyzer has a rule for it
DATA_MASK = "data_mask"
UNKNOWN = "unknown"
#: Elementwise operations with constants on the way from the model input to the first kernel
#: layer (an in-forward ``(x - mean) / std``); an analyzer that has no rule for them sees
#: them as ``LINEAR``.
INPUT_PREPROCESSING = "input_preprocessing"
#: Every kind: a plain gradient (no rules) lets all of them pass.
ALL_KINDS = frozenset({KERNEL, WEIGHT_PRODUCT, BATCH_NORM, RELU, MAX_POOL, LINEAR, STRUCTURE,
                       ACTIVATION, SOFTMAX, PRODUCT, NORMALIZATION, STATISTIC, ATTENTION,
                       DATA_MASK, UNKNOWN, INPUT_PREPROCESSING})

_KINDS: dict[Callable, str] = {}


def _register(kind: str, *funcs: Callable) -> None:
    for func in funcs:
        _KINDS[func] = kind


_register(KERNEL, F.linear, torch.conv1d, torch.conv2d, torch.conv3d,
          torch.conv_transpose1d, torch.conv_transpose2d, torch.conv_transpose3d)
_register(BATCH_NORM, F.batch_norm)
_register(RELU, F.relu, F.relu_, torch.relu, torch.relu_, Tensor_.relu, Tensor_.relu_)
_register(MAX_POOL, F.max_pool1d, F.max_pool2d, F.max_pool3d,
          torch.max_pool1d, torch.max_pool2d, torch.max_pool3d, F.adaptive_max_pool1d,
          F.adaptive_max_pool2d, F.adaptive_max_pool3d, torch.amax, Tensor_.amax,
          F.max_pool1d_with_indices, F.max_pool2d_with_indices, F.max_pool3d_with_indices,
          F.adaptive_max_pool1d_with_indices, F.adaptive_max_pool2d_with_indices,
          F.adaptive_max_pool3d_with_indices)
_register(LINEAR, F.avg_pool1d, F.avg_pool2d, F.avg_pool3d, F.adaptive_avg_pool1d,
          F.adaptive_avg_pool2d, F.adaptive_avg_pool3d, torch.add, Tensor_.add, Tensor_.add_,
          Tensor_.__add__, Tensor_.__iadd__, Tensor_.__radd__, torch.sub, Tensor_.sub,
          Tensor_.sub_, Tensor_.__sub__, Tensor_.__isub__, Tensor_.__rsub__, torch.neg,
          Tensor_.neg, Tensor_.neg_, Tensor_.__neg__, torch.sum, Tensor_.sum, torch.mean,
          Tensor_.mean, F.interpolate)
_register(STRUCTURE, Tensor_.view, Tensor_.view_as, Tensor_.reshape, Tensor_.reshape_as,
          torch.reshape, torch.flatten, Tensor_.flatten, torch.permute, Tensor_.permute,
          torch.transpose, Tensor_.transpose, Tensor_.contiguous, torch.squeeze, Tensor_.squeeze,
          torch.unsqueeze, Tensor_.unsqueeze, Tensor_.__getitem__, torch.cat, torch.concat,
          torch.stack, torch.split, Tensor_.split, torch.chunk, Tensor_.chunk, Tensor_.clone,
          torch.clone, Tensor_.to, Tensor_.float, Tensor_.double, Tensor_.half,
          Tensor_.bfloat16, Tensor_.type, Tensor_.type_as,
          Tensor_.cpu, Tensor_.cuda, Tensor_.expand,
          Tensor_.expand_as, F.dropout, F.dropout1d, F.dropout2d, F.dropout3d, F.alpha_dropout,
          F.feature_alpha_dropout, F.pad,
          Tensor_.unflatten, torch.unflatten, F.embedding, Tensor_.__setitem__,
          Tensor_.masked_fill, Tensor_.masked_fill_, torch.masked_fill, torch.where,
          Tensor_.repeat, Tensor_.repeat_interleave, torch.repeat_interleave, torch.unbind,
          Tensor_.unbind, Tensor_.narrow, torch.narrow, torch.t, Tensor_.t, torch.movedim,
          Tensor_.movedim, Tensor_.swapaxes, torch.swapaxes, Tensor_.T.__get__,
          Tensor_.mT.__get__, F.pixel_shuffle, F.pixel_unshuffle, torch.pixel_shuffle,
          torch.pixel_unshuffle, torch.roll, Tensor_.roll, torch.flip, Tensor_.flip,
          torch.fliplr, Tensor_.fliplr, torch.flipud, Tensor_.flipud, torch.rot90,
          Tensor_.rot90, torch.index_select, Tensor_.index_select, torch.tile, Tensor_.tile,
          F.max_unpool1d, F.max_unpool2d, F.max_unpool3d)
_register(ACTIVATION, F.sigmoid, torch.sigmoid, Tensor_.sigmoid, F.tanh, torch.tanh,
          Tensor_.tanh, F.gelu, F.silu, F.elu, F.selu, F.celu, F.leaky_relu, F.softplus,
          F.hardtanh, F.relu6, F.mish, F.hardswish, F.hardsigmoid, F.logsigmoid, F.softsign,
          torch.exp, Tensor_.exp, torch.log, Tensor_.log, torch.abs, Tensor_.abs, torch.sqrt,
          Tensor_.sqrt, torch.square, Tensor_.square, torch.clamp, Tensor_.clamp, torch.pow,
          Tensor_.pow, Tensor_.__pow__, Tensor_.__rpow__,
          Tensor_.sigmoid_, Tensor_.tanh_, Tensor_.exp_, Tensor_.log_, Tensor_.abs_,
          Tensor_.sqrt_, Tensor_.clamp_, torch.clamp_, Tensor_.clamp_min, Tensor_.clamp_min_,
          Tensor_.clamp_max, Tensor_.clamp_max_, torch.clamp_min, torch.clamp_min_,
          torch.clamp_max, torch.clamp_max_, torch.clip, torch.clip_, Tensor_.clip, Tensor_.clip_,
          Tensor_.pow_, F.elu_, F.leaky_relu_, F.prelu, torch.prelu,
          F.hardtanh_, F.threshold, F.rrelu, torch.erf, Tensor_.erf, torch.sin, Tensor_.sin,
          torch.cos, Tensor_.cos, F.tanhshrink, F.softshrink, F.hardshrink, torch.rsqrt,
          Tensor_.rsqrt, torch.reciprocal, Tensor_.reciprocal)
_register(SOFTMAX, F.softmax, torch.softmax, Tensor_.softmax, F.log_softmax, torch.log_softmax,
          Tensor_.log_softmax)
_register(NORMALIZATION, F.layer_norm, F.group_norm, F.rms_norm, F.normalize, F.instance_norm)
_register(STATISTIC, torch.var, Tensor_.var, torch.std, Tensor_.std, torch.norm, Tensor_.norm,
          torch.linalg.vector_norm)
_register(ATTENTION, *DECOMPOSITIONS)
#: Elementwise products (gating); with the matrix products, the products of two
#: differentiable tensors (kind ``PRODUCT``), linear in each when the other is a constant.
ELEMENTWISE_PRODUCTS = frozenset({torch.mul, Tensor_.mul, Tensor_.mul_, Tensor_.__mul__,
                                  Tensor_.__imul__, Tensor_.__rmul__})
#: Division: linear in the dividend, an elementwise non-linearity of a divisor (``1 / t``,
#: kind ``ACTIVATION``); a quotient of two differentiable tensors has no rule.
_QUOTIENTS = {torch.div, Tensor_.div, Tensor_.div_, Tensor_.__truediv__, Tensor_.__itruediv__,
              Tensor_.__rtruediv__}
#: Matrix products: with one differentiable operand, linear in it (kind ``LINEAR``), or a
#: dense layer where the other operand is a model weight (kind ``WEIGHT_PRODUCT``).
MATRIX_PRODUCTS = frozenset({torch.matmul, Tensor_.matmul, Tensor_.__matmul__,
                             Tensor_.__rmatmul__, torch.mm, Tensor_.mm, torch.bmm, Tensor_.bmm,
                             torch.einsum, torch.addmm, Tensor_.addmm})
#: ``addmm(bias, x, W)`` (``bias + x @ W``, Hugging Face's GPT-2 ``Conv1D``): the positions of
#: its two matrices; every other matrix product multiplies its two tensor arguments
ADDMM = frozenset({torch.addmm, Tensor_.addmm})
_PRODUCTS = ELEMENTWISE_PRODUCTS | _QUOTIENTS | MATRIX_PRODUCTS
#: Elementwise products and quotients: where one factor is a statistic (a spread kept
#: broadcastable), a normalisation written out (see :mod:`.provenance`)
ELEMENTWISE_SCALINGS = ELEMENTWISE_PRODUCTS | frozenset(_QUOTIENTS)
#: Spreads of a tensor (kind ``STATISTIC``), and the means and sums that make one of its
#: squares or absolute values (an RMS): with their dimensions kept, what a normalisation
#: divides by. (A sum of exponentials, as in a softmax written out, is none.)
SPREADS = frozenset({torch.var, Tensor_.var, torch.std, Tensor_.std, torch.norm, Tensor_.norm,
                     torch.linalg.vector_norm})
MEANS = frozenset({torch.mean, Tensor_.mean, torch.sum, Tensor_.sum})
_POWERS = frozenset({torch.pow, Tensor_.pow, Tensor_.__pow__})
_MAGNITUDES = frozenset({torch.square, Tensor_.square, torch.abs, Tensor_.abs})


def is_reciprocal(func: Callable, args: tuple) -> bool:
    """Whether an elementwise call makes a reciprocal of its computed tensor (of kind
    ``ACTIVATION``: ``1 / s``, ``torch.div(c, s)``, ``s.reciprocal()``, ``s ** -1``,
    ``s.rsqrt()``)."""
    if func in _QUOTIENTS or func in _RECIPROCALS:
        return True
    return func in _POWERS and len(args) == 2 and isinstance(args[1], (int, float)) and \
        args[1] < 0


_RECIPROCALS = frozenset({torch.reciprocal, Tensor_.reciprocal, torch.rsqrt, Tensor_.rsqrt})


def is_magnitude(func: Callable, args: tuple) -> bool:
    """Whether the call makes squares or absolute values of its input: ``x.pow(2)``,
    ``x ** 2``, ``x.square()``, ``x.abs()``, ``x * x``."""
    if func in _MAGNITUDES:
        return True
    if func in _POWERS:
        return len(args) == 2 and isinstance(args[1], (int, float)) and args[1] == 2
    return func in ELEMENTWISE_PRODUCTS and len(args) == 2 and args[0] is args[1]


#: Elementwise operations that are linear in their one differentiable operand when the other
#: is a constant (``x - mean``, ``x / std``, ``-x``): before the first kernel layer they are
#: input preprocessing (kind ``INPUT_PREPROCESSING``).
ELEMENTWISE_AFFINE = {
    torch.add, Tensor_.add, Tensor_.add_, Tensor_.__add__, Tensor_.__iadd__, Tensor_.__radd__,
    torch.sub, Tensor_.sub, Tensor_.sub_, Tensor_.__sub__, Tensor_.__isub__, Tensor_.__rsub__,
    torch.mul, Tensor_.mul, Tensor_.mul_, Tensor_.__mul__, Tensor_.__imul__, Tensor_.__rmul__,
    torch.div, Tensor_.div, Tensor_.div_, Tensor_.__truediv__, Tensor_.__itruediv__,
    torch.neg, Tensor_.neg, Tensor_.__neg__}
#: Queries of a tensor's metadata (``x.shape``, ``x.dtype``, ``len(x)``, ``x.dim()``): they
#: return no tensor and a third of the calls of a transformer's forward pass are among them;
#: an analysis lets them run at once.
QUERIES = frozenset({
    *(getattr(Tensor_, name).__get__ for name in (
        "shape", "dtype", "device", "layout", "ndim", "requires_grad", "is_leaf", "is_nested",
        "is_cuda", "is_sparse", "is_quantized", "is_meta", "is_mkldnn")),
    Tensor_.__len__, Tensor_.dim, Tensor_.ndimension, Tensor_.size, Tensor_.numel,
    Tensor_.nelement, Tensor_.stride, Tensor_.element_size, Tensor_.is_contiguous,
    Tensor_.is_floating_point, torch.is_floating_point, Tensor_.is_complex, torch.is_complex,
    Tensor_.get_device, Tensor_.data_ptr, torch.numel})

#: Gradient hooks a forward pass may register on a tensor (``h.register_hook(...)``, also
#: from a module's forward hook, as Grad-CAM extractors do): not registered during a
#: rule-based analysis, whose rules define the backward pass (see :mod:`.operations`).
GRADIENT_HOOKS = frozenset({Tensor_.register_hook})

#: Calls that turn tensor values into Python values, with which a forward pass can choose
#: what to compute (``if x.sum() > 0:``), or whose output's shape depends on the values
#: (``nonzero``, ``unique``, a boolean mask's selection): a model that makes one may run
#: other operations for other inputs of the same shape (see :func:`reads_values` and
#: :func:`~.forward.forward_signature`).
VALUE_READS = frozenset({
    Tensor_.__bool__, Tensor_.__int__, Tensor_.__float__, Tensor_.__index__,
    Tensor_.__complex__, Tensor_.item, Tensor_.tolist, Tensor_.numpy, Tensor_.__array__,
    torch.equal, Tensor_.equal, torch.allclose, Tensor_.allclose, torch.is_nonzero,
    Tensor_.is_nonzero,
    torch.nonzero, Tensor_.nonzero, torch.argwhere, Tensor_.argwhere, torch.masked_select,
    Tensor_.masked_select, torch.unique, Tensor_.unique, torch.unique_consecutive,
    Tensor_.unique_consecutive, torch.bincount, Tensor_.bincount,
    Tensor_.__contains__, Tensor_.__repr__, Tensor_.__format__})
_SELECTIONS = {Tensor_.__getitem__, Tensor_.__setitem__, torch.where, torch.repeat_interleave,
               Tensor_.repeat_interleave, torch.tensordot}


def reads_values(func: Callable, args: tuple, kwargs: dict, tensors: list[Tensor]) -> bool:
    """Whether a call reads tensor values into Python or into its output's shape
    (:data:`VALUE_READS`; a selection by a boolean mask ``x[mask]``, ``torch.where(mask)``
    with the mask alone, ``repeat_interleave`` by counts in a tensor), or may turn a
    one-element integer tensor among its arguments (``tensors``) into a size, an index or a
    slice bound (``torch.zeros(n)``, ``x.view(n, -1)``, ``x[:, :n]``, ``tensordot(dims=t)``):
    torch reads such a value in C++, out of the analysis' sight."""
    if func in VALUE_READS:
        return True
    for t in tensors:
        if t.numel() == 1 and not (t.is_floating_point() or t.is_complex()):
            return True
    if func not in _SELECTIONS:
        return False
    if func is torch.where:
        return len(args) + len(kwargs) == 1
    if func is torch.tensordot:
        return isinstance(args[2] if len(args) > 2 else kwargs.get("dims"), Tensor)
    if func is Tensor_.__getitem__ or func is Tensor_.__setitem__:
        index = args[1] if len(args) > 1 else None
        indices = index if isinstance(index, (tuple, list)) else (index,)
        return any(isinstance(i, Tensor) and i.dtype in (torch.bool, torch.uint8)
                   and func is Tensor_.__getitem__ or isinstance(i, slice) and any(
                       isinstance(bound, Tensor) for bound in (i.start, i.stop, i.step))
                   for i in indices)
    repeats = args[1] if len(args) > 1 else kwargs.get("repeats", args[0] if args else None)
    return isinstance(repeats, Tensor)  # (repeat_interleave(counts): the counts alone)


_INPLACE_OPERATORS = {Tensor_.__iadd__: Tensor_.__add__, Tensor_.__isub__: Tensor_.__sub__,
                      Tensor_.__imul__: Tensor_.__mul__, Tensor_.__itruediv__: Tensor_.__truediv__}


@functools.cache
def _inplace_parameter(func: Callable) -> int | None:
    """Position of ``func``'s ``inplace`` parameter (``F.relu(x, inplace=True)``), if any."""
    try:
        names = list(inspect.signature(func).parameters)
    except (TypeError, ValueError):
        return None
    return names.index("inplace") if "inplace" in names else None


def out_of_place(func: Callable, args: tuple,
                 kwargs: dict) -> tuple[Callable, tuple, dict] | None:
    """For an in-place call, the out-of-place call computing the same value (``add_`` →
    ``add``, ``F.relu(x, inplace=True)`` → ``inplace=False``) as ``(func, args, kwargs)``;
    ``None`` for a call that is not in place."""
    if func in _INPLACE_OPERATORS:
        return _INPLACE_OPERATORS[func], args, kwargs
    name = getattr(func, "__name__", "")
    if name.endswith("_") and not name.startswith("_"):
        # (F.elu_, F.hardtanh_ and F.leaky_relu_ are torch._C._nn's, with no torch.elu)
        owner = next((o for o in (Tensor_, torch._C._nn) if getattr(o, name, None) is func),
                     torch)
        twin = getattr(owner, name[:-1], None)
        return (twin, args, kwargs) if twin is not None else None
    index = _inplace_parameter(func)
    if index is None:
        return None
    if kwargs.get("inplace"):
        return func, args, {**kwargs, "inplace": False}
    if len(args) > index and args[index] is True:
        return func, (*args[:index], False, *args[index + 1:]), kwargs
    return None


def tensors_in(*nests: object) -> list[Tensor]:
    """The tensors among call arguments: ``args`` tuples, ``kwargs`` dicts and the lists and
    tuples in them (``torch.cat([a, b])``), one level deep. Cheaper than a pytree walk, which
    matters once per operation of every analysed forward pass."""
    found: list[Tensor] = []
    for nest in nests:
        values = nest.values() if isinstance(nest, dict) else nest if isinstance(
            nest, (list, tuple)) else (nest,)
        for value in values:
            if isinstance(value, Tensor):
                found.append(value)
            elif isinstance(value, (list, tuple)):
                found.extend(v for v in value if isinstance(v, Tensor))
    return found


def replace_tensors(args: tuple, kwargs: dict, replace: Callable[[Tensor], Tensor]
                    ) -> tuple[tuple, dict]:
    """``args`` and ``kwargs`` with every tensor that :func:`tensors_in` finds replaced by
    ``replace(tensor)``."""

    def one(value: object) -> object:
        if isinstance(value, Tensor):
            return replace(value)
        if isinstance(value, (list, tuple)) and any(isinstance(v, Tensor) for v in value):
            items = [replace(v) if isinstance(v, Tensor) else v for v in value]
            return type(value)._make(items) if hasattr(value, "_make") else type(value)(items)
        return value

    return tuple(one(a) for a in args), {k: one(v) for k, v in kwargs.items()}


def differentiable(value: object) -> bool:
    """Whether ``value`` is a floating-point or complex tensor that requires grad (a complex
    one has no rule: the call that makes it is refused, not passed with its gradient)."""
    return isinstance(value, Tensor) and value.requires_grad and (
        value.is_floating_point() or value.is_complex())


#: ``torch.max``: a max pooling over a dimension (or all), unless it takes the elementwise
#: maximum of two tensors
_MAXIMA = {torch.max, Tensor_.max}


#: Clamps: with a lower bound of 0 and no upper bound, ``clamp(min=0)`` is a ReLU
_CLAMPS = frozenset({torch.clamp, Tensor_.clamp, torch.clamp_, Tensor_.clamp_, torch.clip,
                     Tensor_.clip, torch.clip_, Tensor_.clip_})
_CLAMPS_MIN = frozenset({torch.clamp_min, Tensor_.clamp_min, torch.clamp_min_,
                         Tensor_.clamp_min_})


#: Elementwise limits to constant bounds, whatever their spelling (with the ReLUs): of the
#: model input, preprocessing.
CLAMPS = frozenset({*_CLAMPS, *_CLAMPS_MIN, torch.clamp_max, Tensor_.clamp_max,
                    torch.clamp_max_, Tensor_.clamp_max_, F.hardtanh, F.hardtanh_, F.relu6})


def _clamps_at_zero(func: Callable, args: tuple, kwargs: dict) -> bool:
    low = args[1] if len(args) > 1 else kwargs.get("min")
    high = None if func in _CLAMPS_MIN else args[2] if len(args) > 2 else kwargs.get("max")
    return isinstance(low, (int, float)) and not isinstance(low, bool) and low == 0 \
        and high is None


def classify(func: Callable, args: tuple, kwargs: dict) -> str:
    """The kind of a torch call: which rule family it belongs to."""
    kind = _KINDS.get(func)
    if kind == ACTIVATION and (func in _CLAMPS or func in _CLAMPS_MIN):
        return RELU if _clamps_at_zero(func, args, kwargs) else kind
    if kind is not None:
        return kind
    if func in ADDMM and (kwargs.get("alpha", 1) != 1 or kwargs.get("beta", 1) != 1):
        return UNKNOWN  # (scaled: no layer form here)
    if func in _MAXIMA:
        elementwise = (len(args) > 1 and isinstance(args[1], Tensor)) or "other" in kwargs
        return UNKNOWN if elementwise else MAX_POOL
    if func in _PRODUCTS:
        operands = [a for a in tensors_in(args, kwargs) if differentiable(a)]
        if len(operands) == 1 and func in _QUOTIENTS and operands[0] is not _dividend(
                func, args, kwargs):
            return ACTIVATION  # (c / t: an elementwise non-linearity of t, as t.reciprocal())
        if len(operands) <= 1:
            return LINEAR
        return UNKNOWN if func in _QUOTIENTS else PRODUCT
    return UNKNOWN


def _dividend(func: Callable, args: tuple, kwargs: dict) -> object:
    """The dividend of a division call (``c / t`` calls ``t.__rtruediv__(c)``)."""
    if func is Tensor_.__rtruediv__:
        return args[1] if len(args) > 1 else None
    return args[0] if args else kwargs.get("input")


def weight_operand(func: Callable, args: tuple, kwargs: dict,
                   is_weight: Callable[[Tensor], bool]) -> int | None:
    """Where ``args`` (of a matrix product ``func``) hold a model weight (``is_weight``: a
    parameter or buffer, a view of one such as ``W.T``, or a tensor computed from them
    alone) multiplied by a differentiable tensor: its position, or ``None``. Only top-level
    tensor arguments count (``torch.einsum(eq, x, W)``); ``addmm`` only with its default
    ``alpha`` and ``beta``."""
    if func in ADDMM:
        if kwargs.get("alpha", 1) != 1 or kwargs.get("beta", 1) != 1 or len(args) != 3:
            return None
        positions = [1, 2]
    else:
        positions = [i for i, a in enumerate(args) if isinstance(a, Tensor)]
    if len(positions) != 2 or not any(differentiable(args[i]) for i in positions):
        return None
    for i in positions:
        if not args[i].requires_grad and is_weight(args[i]):
            return i
    return None


def operation_name(func: Callable) -> str:
    """A readable name for a torch callable, e.g. ``torch.nn.functional.gelu``; a tensor
    property's getter by the property (``torch.Tensor.real``)."""
    module = getattr(func, "__module__", None) or "torch.Tensor"
    name = getattr(func, "__name__", repr(func))
    if name == "__get__":  # (a property: the getter of its descriptor)
        name = getattr(getattr(func, "__self__", None), "__name__", name)
    return f"{module}.{name}"


def map_differentiable(fn: Callable[[Tensor], Tensor], args: tuple, kwargs: dict
                       ) -> tuple[tuple, dict]:
    """``args`` and ``kwargs`` with ``fn`` applied to every differentiable tensor among them."""
    return replace_tensors(args, kwargs, lambda t: fn(t) if differentiable(t) else t)
