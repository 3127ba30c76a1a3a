"""Models that end in a softmax: detect them, and strip the softmax (``model_wo_softmax``)."""

from __future__ import annotations

from collections import OrderedDict

from torch import nn

_SOFTMAX_MODULES = (nn.Softmax, nn.LogSoftmax, nn.Softmax2d)


def _last_leaf(model: nn.Module) -> nn.Module:
    while isinstance(model, nn.Sequential) and len(model) > 0:
        model = model[-1]
    return model


def ends_with_softmax(model: nn.Module) -> bool:
    """Whether ``model`` is, or is a ``Sequential`` ending in, a softmax module."""
    return isinstance(_last_leaf(model), _SOFTMAX_MODULES)


def check_ends_without_softmax(model: nn.Module) -> None:
    """Raise ``ValueError`` pointing to :func:`model_wo_softmax` for a softmax-ended model."""
    if ends_with_softmax(model):
        raise ValueError(
            f"the model ends in {type(_last_leaf(model)).__name__}; analyzers explain logits. "
            "Pass lit_explain.model_wo_softmax(model) instead.")


def model_wo_softmax(model: nn.Module) -> nn.Module:
    """Return ``model`` without its trailing softmax (iNNvestigate's ``model_wo_softmax``).

    A bare softmax module becomes ``nn.Identity``; a ``Sequential`` (nested ones too) whose
    last module is a softmax becomes a new ``Sequential`` sharing all other modules, so the
    weights stay the very same tensors and the module names are kept. A model without a
    trailing softmax module is returned as is (a softmax called inside ``forward`` must be
    removed from the model's code). A ``Sequential`` subclass with a ``forward`` of its own
    that ends in a softmax module is refused (``ValueError``): a plain ``Sequential`` of its
    modules would drop that forward.
    """
    if isinstance(model, _SOFTMAX_MODULES):
        return nn.Identity()
    if isinstance(model, nn.Sequential) and len(model) > 0 and ends_with_softmax(model):
        if type(model).forward is not nn.Sequential.forward:
            raise ValueError(
                f"{type(model).__name__} is an nn.Sequential with a forward of its own, which "
                f"a plain Sequential of its modules would not run: remove the trailing softmax "
                f"module from the model (or from the code of its forward) and pass that")
        *body, (name, last) = list(model.named_children())
        stripped = model_wo_softmax(last)
        if not isinstance(stripped, nn.Identity):
            body.append((name, stripped))
        stripped = nn.Sequential(OrderedDict(body))
        stripped.training = model.training  # (its modules keep theirs)
        return stripped
    return model
