"""Token models: analyze from the output of the input embedding.

A model whose input is integer token ids (text, categorical features) starts with an
``nn.Embedding`` or ``nn.EmbeddingBag``; relevance cannot flow to an integer. As in
iNNvestigate's sentiment example, the analysis starts at the embedding's output: the
per-token vectors ``e`` (N, L, D) are the differentiable input, every analyzer explains the
model as a function of them, and its map (N, L, D) is summed over the embedding axis into
one value per token (N, L) — Σ_d of the gradient for ``gradient``, Σ_d e·gradient
(the tokens' relevance) for Input×Gradient and LRP, the attribution of the embedded token
for Integrated Gradients and DeepLIFT (whose reference is then a zero embedding).

How: :func:`token_input` finds the first ``Embedding``/``EmbeddingBag`` call the forward
pass applies to the tokens themselves (not a position or token-type embedding of other ids,
whichever runs first, see :func:`find_input_embedding`), reads its per-token output, then,
while the analysis runs, the model is called with ``e`` in place of the tokens: a forward
pre-hook on the model hands the *tokens* to its ``forward`` (so masks and other token logic
still see integers) and a forward hook on the embedding replaces by ``e`` the output of
that call, and of any later call of it on ids equal to the tokens (a second use of them,
whose relevance was lost), not of others, on other ids. Another embedding table given the
tokens themselves is refused: its relevance would be lost. An ``EmbeddingBag`` over a 2-D
``(N, L)`` input is reduced from ``e`` as it reduces (``"sum"``, ``"mean"`` or ``"max"``,
``per_sample_weights`` and ``padding_idx`` honoured), so each token keeps its own share.
Batches of several stacked copies of ``e`` (Integrated Gradients' path, SmoothGrad's
noise, DeepLIFT's reference) get the tokens repeated alike, and the vectors of the first
samples (the forward guard's one-sample pass) the first samples' tokens. Integer tensors
never reach ``requires_grad_``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode

from .errors import NotAnalyzableModelError
from .kinds import tensors_in

EMBEDDINGS = (nn.Embedding, nn.EmbeddingBag)


def is_token_input(x: Tensor) -> bool:
    """Whether ``x`` holds ids (integers or bools) rather than values."""
    return not (x.is_floating_point() or x.is_complex())


class _Found(Exception):
    """Stops the search forward at the embedding of the input tokens."""


@dataclass
class InputEmbedding:
    """The model's input embedding, as found in one forward pass.

    Attributes
    ----------
    path, module:
        The embedding module and its path in the model.
    call:
        Which call of the module is the input's (0: its first in the forward pass): the
        call whose output ``e`` replaces, also where an earlier call gets equal ids.
    vectors:
        Its per-token output ``e`` for the tokens analyzed, ``tokens.shape + (D,)``.
    reduce:
        Maps ``e`` (any number of stacked copies) to the module's output.
    """

    path: str
    module: nn.Module
    vectors: Tensor
    reduce: Callable[[Tensor, Tensor], Tensor]
    call: int = 0


def find_input_embedding(model: nn.Module, tokens: Tensor) -> InputEmbedding:
    """The first ``nn.Embedding``/``nn.EmbeddingBag`` call the forward applies to ``tokens``
    themselves: ids made from them by calls that keep every id where it is (a cast, a copy,
    a reshape, a view of all of them such as ``t[:, :512]``, an elementwise guard such as
    ``t.clamp(max=V - 1)``, see :class:`_IdsAsGiven`) and equal to them; where no call gets
    such ids, the first whose ids equal the tokens. Position and token-type embeddings
    applied to other ids, before or after it, are not the input's, even where their ids
    equal the tokens (all zeros).

    Raises ``NotAnalyzableModelError`` for an embedding that renormalises with ``max_norm``:
    every forward pass writes to its weight.
    """
    for path, module in model.named_modules():
        if isinstance(module, EMBEDDINGS) and module.max_norm is not None:
            raise NotAnalyzableModelError(
                f"'{path}' ({type(module).__name__}) renormalises with max_norm, which writes "
                f"to its weight in every forward pass (and so during an analysis); analyze a "
                f"copy without max_norm (after one forward pass the rows it renormalised "
                f"keep their norm, and the copy computes the same function)")
    called: list[tuple[str, nn.Module, tuple, dict, Tensor]] = []
    entered: list[tuple[str, nn.Module]] = []  # embeddings called, finished or not

    def enter(path: str) -> Callable:
        return lambda module, args: entered.append((path, module))

    as_given = _IdsAsGiven(tokens)

    def hook(path: str) -> Callable:
        def record(module: nn.Module, args: tuple, kwargs: dict, output: Tensor) -> None:
            called.append((path, module, args, kwargs, output))
            ids = args[0] if args else kwargs.get("input")
            if as_given.holds(ids):
                raise _Found

        return record

    embeddings = [(p, m) for p, m in model.named_modules()
                  if isinstance(m, EMBEDDINGS) and m is not model]
    handles = [m.register_forward_hook(hook(p), with_kwargs=True) for p, m in embeddings]
    handles += [m.register_forward_pre_hook(enter(p)) for p, m in embeddings]
    failure: Exception | None = None
    try:
        with torch.no_grad(), as_given:
            model(tokens)
    except _Found:
        pass
    except Exception as error:  # e.g. a linear layer fed integers: say why below
        failure = error
    finally:
        for handle in handles:
            handle.remove()
    if not called and entered:  # the embedding itself failed: an id out of its range, ...
        path, module = entered[-1]
        raise ValueError(f"the model's forward failed in its embedding '{path}' "
                         f"({module.num_embeddings} rows, valid ids 0.."
                         f"{module.num_embeddings - 1}, of dtype int64 or int32; the input's "
                         f"token ids, {tokens.dtype}, range from {int(tokens.min())} to "
                         f"{int(tokens.max())}): "
                         f"{type(failure).__name__}: {failure}") from failure
    if not called and failure is not None and embeddings:
        raise TypeError(f"the model's forward, called with the input's token ids alone "
                        f"(model(x), {tokens.dtype} {tuple(tokens.shape)}), raised before "
                        f"applying its embedding ({', '.join(repr(p) for p, _ in embeddings)})"
                        f": {type(failure).__name__}: {failure}. Analyzers call the model "
                        f"with one input; for a forward that needs more (an attention mask), "
                        f"analyze a module whose forward takes the ids alone and makes the "
                        f"rest from them") from failure
    if not called:
        raise TypeError(f"the input has dtype {tokens.dtype} (token ids), but "
                        f"{type(model).__name__}'s forward applies no nn.Embedding or "
                        f"nn.EmbeddingBag to it; give a floating-point input, or a model that "
                        f"embeds its tokens") from failure

    def ids_of(entry: tuple) -> Tensor:
        args, kwargs = entry[2], entry[3]
        return args[0] if args else kwargs["input"]

    position = next((i for i, e in enumerate(called) if as_given.holds(ids_of(e))), None)
    if position is None:  # (ids made otherwise that equal the tokens)
        position = next((i for i, e in enumerate(called) if _same_ids(ids_of(e), tokens)),
                        None)
    if position is None:
        seen = ", ".join(f"'{path}' ({type(module).__name__}) ids of shape "
                         f"{tuple(ids_of((path, module, args, kwargs, out)).shape)}"
                         for path, module, args, kwargs, out in called)
        raise ValueError(f"no embedding receives the input's ids as they are, shape "
                         f"{tuple(tokens.shape)} (seen: {seen}); per-token maps need the "
                         f"embedding applied to the input as it is")
    path, module, args, kwargs, output = called[position]
    ids = ids_of(called[position])
    found = InputEmbedding(path, module, output.detach(), lambda e, ids: e) if isinstance(
        module, nn.Embedding) else _bag(path, module, ids, args, kwargs)
    found.call = sum(1 for entry in called[:position] if entry[1] is module)
    return found


#: Calls that keep every id where it is: casts, copies, views and reshapes that keep the
#: order, and elementwise functions (``t.clamp(max=V - 1)``, ``t % V``, ``torch.where``,
#: ``masked_fill``, ``t + 0``). What they make of the input's ids holds those ids as they
#: are wherever its values equal them.
_KEEPING_PLACES = frozenset({
    Tensor.long, Tensor.int, Tensor.to, Tensor.type, Tensor.clone, torch.clone,
    Tensor.contiguous, Tensor.detach, torch.detach, Tensor.view, Tensor.reshape,
    torch.reshape, Tensor.view_as, Tensor.reshape_as, Tensor.flatten, torch.flatten,
    Tensor.unflatten, Tensor.squeeze, torch.squeeze, Tensor.unsqueeze, torch.unsqueeze,
    Tensor.cpu, Tensor.cuda, Tensor.type_as, Tensor.__getitem__, Tensor.clamp, torch.clamp,
    Tensor.clip, torch.clip, Tensor.clamp_min, torch.clamp_min, Tensor.abs, torch.abs,
    Tensor.__abs__, Tensor.absolute, torch.absolute,
    Tensor.clamp_max, torch.clamp_max, Tensor.__mod__, Tensor.remainder, torch.remainder,
    Tensor.fmod, torch.fmod, torch.where, Tensor.where, Tensor.masked_fill,
    torch.masked_fill, Tensor.__add__, Tensor.__radd__, Tensor.__sub__, Tensor.add,
    torch.add, Tensor.sub, torch.sub, Tensor.__mul__, Tensor.__rmul__, Tensor.mul,
    torch.mul})


class _IdsAsGiven(TorchFunctionMode):
    """While open, tracks the tensors made from the input's ids by calls that keep every id
    where it is (:data:`_KEEPING_PLACES`; an index only where it views every element).
    Ids made otherwise (``zeros_like(t)``, ``arange(L)``, ``t.roll(1)``) are other ids,
    whatever their values."""

    def __init__(self, tokens: Tensor) -> None:
        super().__init__()
        self.tokens = tokens
        self.kept: dict[int, Tensor] = {id(tokens): tokens}

    def _tracked(self, t: object) -> bool:
        return isinstance(t, Tensor) and self.kept.get(id(t)) is t

    def holds(self, ids: object) -> bool:
        """Whether ``ids`` are the input's ids as they are: made from them by calls that keep
        every id where it is, and (now, after any write in place) equal to them."""
        return self._tracked(ids) and _same_ids(ids, self.tokens)

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        output = func(*args, **kwargs)
        if func in _KEEPING_PLACES and isinstance(output, Tensor) and \
                output.numel() == self.tokens.numel() and any(
                    self._tracked(t) for t in tensors_in(args, kwargs)) and (
                func is not Tensor.__getitem__ or _views_everything(args[0], output)):
            self.kept[id(output)] = output
        return output


def _views_everything(source: Tensor, output: Tensor) -> bool:
    """Whether an index of ``source`` (``t[:, :]``, ``t[:, :512]`` on a shorter ``t``,
    ``t[None]``) is a view of all its elements, in place."""
    with torch._C.DisableTorchFunction():
        return output.numel() == source.numel() and output.data_ptr() == source.data_ptr() \
            and output.untyped_storage().data_ptr() == source.untyped_storage().data_ptr()


def _bag(path: str, bag: nn.EmbeddingBag, ids: Tensor, args: tuple,
         kwargs: dict) -> InputEmbedding:
    offsets = args[1] if len(args) > 1 else kwargs.get("offsets")
    weights = args[2] if len(args) > 2 else kwargs.get("per_sample_weights")
    if ids.dim() != 2 or offsets is not None:
        raise ValueError(f"'{path}' (EmbeddingBag) gets a 1-D input with offsets; per-token "
                         f"maps need a 2-D (N, L) input, one bag per row")
    vectors = F.embedding(ids, bag.weight.detach())
    keep = torch.ones_like(ids, dtype=vectors.dtype)
    if bag.padding_idx is not None:
        keep = keep * (ids != bag.padding_idx).to(vectors.dtype)
    if weights is not None:
        keep = keep * weights.detach().to(vectors.dtype)
    mode = bag.mode

    def reduce(e: Tensor, ids: Tensor) -> Tensor:
        copies = len(e) // len(keep)
        mask = keep.repeat(copies, 1)[..., None]
        if mode == "max":  # max-pooling over the tokens: the winner takes the relevance
            if bag.padding_idx is not None:  # padding never wins (no LRP rule for this)
                e = e.masked_fill(mask == 0, float("-inf"))
            return F.max_pool1d(e.transpose(1, 2), e.shape[1]).squeeze(-1)
        total = (e * mask).sum(dim=1)
        if mode == "sum":
            return total
        count = (mask != 0).to(e.dtype).sum(dim=1).clamp(min=1)
        return total / count

    return InputEmbedding(path, bag, vectors, reduce)


def _same_ids(ids: object, tokens: Tensor) -> bool:
    """Whether an embedding call's ``ids`` are the tokens the model was given: that tensor,
    or one of the same shape and values."""
    if ids is tokens:
        return True
    with torch._C.DisableTorchFunction():  # (no value read an analysis would see)
        return isinstance(ids, Tensor) and ids.shape == tokens.shape and bool(
            torch.equal(ids.to(tokens.device), tokens))


@contextmanager
def token_input(model: nn.Module, tokens: Tensor) -> Iterator[InputEmbedding]:
    """While open, ``model(e)`` means ``model(tokens)`` with the input embedding's output
    replaced by ``e`` (stacked copies allowed); yields the input embedding, whose
    ``vectors`` are the tokens' own ``e``."""
    embedding = find_input_embedding(model, tokens)
    state: dict[str, Tensor | bool] = {}

    def take_vectors(module: nn.Module, args: tuple) -> tuple:
        (e,) = args
        if not isinstance(e, Tensor) or not e.is_floating_point() or e.dim() != tokens.dim() + 1 \
                or (len(e) > len(tokens) and len(e) % len(tokens)):
            raise TypeError(f"during a token-model analysis the model is called with embedding "
                            f"vectors shaped {tuple(tokens.shape)} + (D,), possibly stacked, or "
                            f"those of the first samples; got {type(e).__name__} "
                            f"{tuple(getattr(e, 'shape', ()))}")
        given = tokens[:len(e)] if len(e) < len(tokens) else tokens.repeat(  # (the forward
            len(e) // len(tokens), *([1] * (tokens.dim() - 1)))  # guard's first samples)
        state["vectors"], state["tokens"], state["calls"] = e, given, 0
        return (given,)

    def give_vectors(module: nn.Module, args: tuple, kwargs: dict,
                     output: Tensor) -> Tensor | None:
        ids = args[0] if args else kwargs.get("input")
        call = state.get("calls")
        if call is None:  # (not in a forward pass of the analysis)
            return None
        state["calls"] = call + 1
        if call < embedding.call:
            return None  # other ids (a previous token's, found so)
        if call > embedding.call:  # the tokens again (a second use): the same vectors
            return embedding.reduce(state["vectors"], ids) if _same_ids(
                ids, state["tokens"]) else None
        if not _same_ids(ids, state["tokens"]):  # (the vectors would enter nowhere)
            raise ValueError(
                f"the embedding '{embedding.path}' ({type(module).__name__}) got the input's "
                f"ids in its call {call} when it was found, and other ids in an analysis' "
                f"forward pass: the forward must apply it to the input's ids alike for "
                f"every input of this shape")
        return embedding.reduce(state["vectors"], ids)

    def refuse_another_table(path: str, module: nn.Module, args: tuple, kwargs: dict,
                             output: Tensor) -> None:
        ids = args[0] if args else kwargs.get("input")
        if state.get("calls") is not None and ids is state["tokens"]:
            raise NotAnalyzableModelError(
                f"the model embeds the input's ids with '{path}' ({type(module).__name__}) "
                f"besides '{embedding.path}': an analysis starts at one embedding's output, "
                f"and the other's relevance would be lost. Embed the ids with one table (an "
                f"nn.Embedding as wide as both, its output split where the model uses them)")

    others = [(path, module) for path, module in model.named_modules()
              if isinstance(module, EMBEDDINGS) and module is not embedding.module]
    handles = [model.register_forward_pre_hook(take_vectors),
               embedding.module.register_forward_hook(give_vectors, with_kwargs=True),
               *(module.register_forward_hook(partial(refuse_another_table, path),
                                              with_kwargs=True) for path, module in others)]
    try:
        yield embedding
    finally:
        for handle in handles:
            handle.remove()
