"""Token inputs in the perturbation metrics: a token is deleted by replacing its id.

A token model takes integer ids ``(N, L)``; the analyzers give it one relevance value per
token. A float baseline (zeros, a mean, noise, a blur) means nothing for an id, so the
perturbation curves treat integer inputs apart:

- a *region* is one token by default (``region_shape=None``; an explicit ``region_shape``
  is a window of that many consecutive tokens);
- *deleting* a token replaces its id by ``mask_token_id`` (a ``[MASK]`` id, or the padding
  id for a model that ignores padding), so deletion (pixel flipping, region perturbation,
  the deletion curve, faithfulness correlation) replaces the most relevant tokens first;
- *insertion* starts from the sentence of ``mask_token_id`` only and puts the tokens back,
  most relevant first.

The float options (``perturbation``, ``insertion_baseline``, ``deletion_baseline``,
``value_range``) apply to float inputs only; integer inputs without a ``mask_token_id``
are refused with a message naming it. Removing a word from a sentence would shift every
later position; replacing it keeps the positions and the length, so every curve point is an
input of the model's shape and the curves of all analyzers batch together.
"""

from __future__ import annotations

import re

import torch
from torch import Tensor

__all__ = ["check_mask_token_id", "is_token_input", "token_replacement"]


def is_token_input(x: Tensor) -> bool:
    """Whether ``x`` holds token ids: an integer or bool tensor (ids 0 and 1), as the
    analyzers read it."""
    return not (x.is_floating_point() or x.is_complex())


def check_mask_token_id(value: object) -> int | None:
    """``None`` or a non-negative int; anything else raises ``ValueError`` naming it."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"mask_token_id={value!r} is not valid; use the non-negative id that "
                         f"replaces a deleted token (a [MASK] or padding id), or None")
    return value


def token_replacement(x_nc: Tensor, mask_token_id: int | None, metric: str) -> Tensor:
    """What every token of ``x_nc`` becomes once deleted: ``mask_token_id``, same dtype
    (``metric``: the class name of the metric that asks, for the errors' example).

    Called for integer inputs and whenever ``mask_token_id`` is set. Raises ``ValueError``
    naming the option when integer inputs come without one, or when ``mask_token_id`` is
    given for float inputs (where it would silently do nothing).
    """
    if not is_token_input(x_nc):
        raise ValueError(
            f"mask_token_id={mask_token_id} applies to token inputs (integer tensors); "
            f"these inputs are {x_nc.dtype}: leave mask_token_id=None and choose the "
            f"float replacement with perturbation= (or insertion_baseline=/"
            f"deletion_baseline=)")
    if mask_token_id is None:
        name = re.sub(r"(?<!^)(?=[A-Z])", "_", metric).lower()  # (the callback's name for it)
        raise ValueError(
            f"token inputs ({x_nc.dtype} ids) cannot be perturbed by a float baseline; set "
            f"mask_token_id= to the id that replaces a deleted token (a [MASK] or the "
            f"padding id), e.g. {metric}(..., mask_token_id=0), or "
            f"metrics={{'{name}': {{'mask_token_id': 0}}}} in ExplainCallback")
    largest = 1 if x_nc.dtype == torch.bool else torch.iinfo(x_nc.dtype).max
    if mask_token_id > largest:
        raise ValueError(
            f"mask_token_id={mask_token_id} does not fit the inputs' id dtype {x_nc.dtype} "
            f"(largest id {largest}); use an id of the model's vocabulary")
    return torch.full_like(x_nc, mask_token_id)
