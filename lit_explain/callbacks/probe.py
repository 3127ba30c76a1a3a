"""The probe set: the fixed validation samples an ExplainCallback explains every epoch.

Samples are taken from the validation batches the Trainer runs anyway (no extra pass over
the data), during the first validation epoch that is not the sanity check, and stay the
same for the rest of training (and across a resume, through the checkpoint).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from ..analyzers.validation import check_choice, check_seed

SELECTIONS = ("first", "stratified")


def a(noun: str) -> str:
    """``noun`` with its indefinite article: "a tensor", "an int"."""
    return f"{'an' if noun[:1].lower() in 'aeiou' else 'a'} {noun}"


def pick(batch: Any, key: int | str | None) -> Tensor | None:
    """The part of a batch at ``key``: a tuple/list index or a dict key (``None``: none).

    Raises a ``KeyError`` for a key the batch lacks, and for a batch of another type (an
    object with attributes, such as a dataclass), naming the types it reads.
    """
    if key is None:
        return None
    if isinstance(batch, Tensor):
        if key != 0:
            raise KeyError(f"the batch is a single tensor; key {key!r} must be 0")
        return batch
    if isinstance(batch, Mapping):
        if key not in batch:
            raise KeyError(f"the batch is a mapping without key {key!r}; its keys are "
                           f"{sorted(batch, key=str)}")
        return batch[key]
    if isinstance(batch, (str, bytes)) or not (
            hasattr(batch, "__getitem__") and hasattr(batch, "__len__")):
        raise KeyError(f"the batch is {a(type(batch).__name__)}, which has no parts to select "
                       f"by key: a batch is read as a tuple, list or other sequence indexed by "
                       f"position (key: an index), a mapping (key: a dict key) or a tensor "
                       f"(key: 0); make the DataLoader's collate_fn return one of these")
    if not isinstance(key, int) or not -len(batch) <= key < len(batch):
        raise KeyError(f"index {key!r} is not valid for a batch of {len(batch)} parts "
                       f"(indices 0 to {len(batch) - 1}, or -{len(batch)} to -1)")
    return batch[key]


def check_batch(batch: Any, input_key: int | str, target_key: int | str | None
                ) -> tuple[Tensor, Tensor | None]:
    """The inputs and labels of a real batch, checked; a bad key raises a ``ValueError``
    that names the option and the batch's keys (or parts)."""
    parts = {"input_key": input_key, "target_key": target_key}
    found: dict[str, Any] = {}
    for option, key in parts.items():
        try:
            found[option] = pick(batch, key)
        except KeyError as error:
            raise ValueError(f"{option}={key!r} does not fit the validation batch: "
                             f"{error.args[0]}. Set {option}= to where the "
                             f"{'input' if option == 'input_key' else 'label'} sits"
                             + ("" if option == "input_key" else " (None: no labels)")
                             ) from None
    inputs, targets = found["input_key"], found["target_key"]
    if not isinstance(inputs, Tensor):
        raise ValueError(f"input_key={input_key!r} selects {a(type(inputs).__name__)}, not a "
                         f"tensor; set input_key= to where the input tensor sits")
    if targets is not None and (not isinstance(targets, Tensor) or targets.dim() == 0
                                or len(targets) != len(inputs)):
        what = (f"a tensor of shape {tuple(targets.shape)}" if isinstance(targets, Tensor)
                else a(type(targets).__name__))
        raise ValueError(f"target_key={target_key!r} selects {what}, not one label per "
                         f"sample of the {len(inputs)} inputs; set target_key= to where the "
                         f"labels sit (None: no labels)")
    return inputs, targets


def class_ids(targets: Tensor | None) -> Tensor | None:
    """One class per sample: the labels themselves (N,) or as a column (N, 1) (a binary
    classifier's 0/1 targets, as BCE takes them), or the arg-max of one-hot or probability
    rows (N, C > 1) that sum to 1; ``None`` for anything else (multi-hot labels, soft
    targets, regression targets that are not whole numbers: whole ones, counts or ratings,
    read as class ids, in either shape)."""
    if targets is None:
        return None
    if targets.dim() == 2 and targets.shape[1] == 1:  # (a row [1.0] sums to 1: no one-hot)
        targets = targets[:, 0]
    if targets.dim() == 1:
        whole = not targets.is_floating_point() or bool((targets == targets.round()).all())
        return targets.long() if whole else None
    if targets.dim() == 2 and len(targets) and bool(
            torch.isclose(targets.float().sum(1), torch.ones(())).all()):
        return targets.argmax(1)
    return None


def check_masks(masks: Any, inputs: Tensor, key: int | str) -> None:
    """Check a batch's ground-truth masks against its inputs; raise with what is wrong.

    Masks are boolean or hold only 0 and 1, one per sample, of the input's shape or its
    spatial shape (``(N, *S)`` or ``(N, 1, *S)`` for inputs ``(N, C, *S)``); ``None`` for a
    batch none of whose samples has one (their masks are empty, see :class:`ProbeCollector`).
    """
    if masks is None:
        return
    if not isinstance(masks, Tensor):
        raise TypeError(f"mask_key={key!r} selects {a(type(masks).__name__)}, not a tensor")
    binary = masks.dtype == torch.bool or (
        not masks.is_complex() and bool(((masks == 0) | (masks == 1)).all()))
    if not binary:
        raise ValueError(f"mask_key={key!r}: masks must be boolean or hold only 0 and 1; "
                         f"got dtype {masks.dtype} with other values")
    shape, n = tuple(masks.shape), inputs.shape[0]
    allowed = [tuple(inputs.shape)]
    if inputs.dim() >= 3:
        allowed += [(n, *inputs.shape[2:]), (n, 1, *inputs.shape[2:])]
    if shape not in allowed:
        raise ValueError(f"mask_key={key!r}: masks of shape {shape} do not fit inputs of shape "
                         f"{tuple(inputs.shape)}; expected one of {allowed}")


class ProbeCollector:
    """Collects ``num_samples`` probe samples from the validation stream.

    Parameters
    ----------
    num_samples:
        How many samples to keep.
    selection:
        ``"first"``: the first samples seen. ``"stratified"``: as many of each class as
        possible, round-robin over the classes in label order, drawn with the collector's
        own generator from the samples of the first validation epoch (at most
        ``num_samples`` candidates kept per class, so memory stays bounded). Labels that
        name no single class per sample (multi-hot, regression targets) are taken as they
        come, as with ``"first"`` (``unstratified`` says so).
    seed:
        Seed of the generator used by ``"stratified"``.

    Samples are kept from batches of the first batch's shape only: where every batch is
    padded to its own longest sequence, the others are left out (``left_out`` counts them).
    """

    def __init__(self, num_samples: int, selection: str = "first", seed: int = 0) -> None:
        check_choice("sample_selection", selection, SELECTIONS)
        self.num_samples = num_samples
        self.selection = selection
        check_seed(seed)
        self.seed = seed
        self.inputs: Tensor | None = None
        self.targets: Tensor | None = None
        self.masks: Tensor | None = None
        self._candidates: dict[int, list[tuple[Tensor, Tensor, Tensor | None]]] = {}
        self._first: list[tuple[Tensor, Tensor | None, Tensor | None]] = []
        self._shape: tuple[int, ...] | None = None  # of one sample, from the first batch
        #: Samples of batches shaped otherwise than the first, left out.
        self.left_out = 0
        #: Whether ``"stratified"`` took the samples as they came (no class per sample).
        self.unstratified = False

    @property
    def ready(self) -> bool:
        """Whether the probe set is fixed."""
        return self.inputs is not None

    def add(self, inputs: Tensor, targets: Tensor | None, masks: Tensor | None = None) -> None:
        """Offer a validation batch (only used until the probe set is fixed).

        ``masks`` (ground-truth masks, one per sample) stay with their samples.
        """
        if self.ready:
            return
        if self._shape is None:
            self._shape = tuple(inputs.shape[1:])
        if tuple(inputs.shape[1:]) != self._shape:
            self.left_out += len(inputs)
            return
        inputs = inputs.detach().cpu()
        targets = None if targets is None else targets.detach().cpu()
        masks = None if masks is None else masks.detach().cpu()
        classes = None if self.selection == "first" else class_ids(targets)
        if self.selection == "stratified" and targets is not None and classes is None:
            self.unstratified = True
        if classes is None:
            have = sum(len(x) for x, _, _ in self._first)
            take = self.num_samples - have
            if take > 0:
                self._first.append((inputs[:take].clone(),
                                    None if targets is None else targets[:take].clone(),
                                    None if masks is None else masks[:take].clone()))
            return
        for label in classes.unique().tolist():
            chosen = self._candidates.setdefault(int(label), [])
            room = self.num_samples - sum(len(x) for x, _, _ in chosen)
            mask = classes == label
            if room > 0:
                chosen.append((inputs[mask][:room].clone(), targets[mask][:room].clone(),
                               None if masks is None else masks[mask][:room].clone()))

    def finish(self) -> None:
        """Fix the probe set at the end of the first validation epoch."""
        if self.ready:
            return
        if self._candidates and self._first:  # labels of both kinds: as they came
            self._first += [part for parts in self._candidates.values() for part in parts]
            self._candidates = {}
        _fill_missing_masks([self._first, *self._candidates.values()])
        if self._candidates:
            self.inputs, self.targets, self.masks = self._stratified()
        elif self._first:
            self.inputs = torch.cat([x for x, _, _ in self._first])
            has_targets = self._first[0][1] is not None
            self.targets = torch.cat([y for _, y, _ in self._first]) if has_targets else None
            has_masks = self._first[0][2] is not None
            self.masks = torch.cat([m for _, _, m in self._first]) if has_masks else None
        self._candidates, self._first = {}, []

    def _stratified(self) -> tuple[Tensor, Tensor, Tensor | None]:
        generator = torch.Generator().manual_seed(self.seed)
        pools: dict[int, list[tuple[Tensor, Tensor, Tensor | None]]] = {}
        for label in sorted(self._candidates):
            parts = self._candidates[label]
            inputs = torch.cat([x for x, _, _ in parts])
            targets = torch.cat([y for _, y, _ in parts])
            masks = None if parts[0][2] is None else torch.cat([m for _, _, m in parts])
            order = torch.randperm(len(inputs), generator=generator)
            pools[label] = [(inputs[i], targets[i], None if masks is None else masks[i])
                            for i in order.tolist()]
        chosen: list[tuple[int, tuple[Tensor, Tensor, Tensor | None]]] = []
        while len(chosen) < self.num_samples and any(pools.values()):
            for label in sorted(pools):
                if pools[label] and len(chosen) < self.num_samples:
                    chosen.append((label, pools[label].pop(0)))
        chosen.sort(key=lambda item: item[0])  # (stable: in drawing order within a class)
        samples = [sample for _, sample in chosen]
        masks = None if not samples or samples[0][2] is None else torch.stack(
            [m for _, _, m in samples])
        return (torch.stack([x for x, _, _ in samples]),
                torch.stack([y for _, y, _ in samples]), masks)

    def state_dict(self) -> dict[str, Any]:
        return {"inputs": self.inputs, "targets": self.targets, "masks": self.masks}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.inputs = state.get("inputs")
        self.targets = state.get("targets")
        self.masks = state.get("masks")


def _fill_missing_masks(lists: list[list[tuple[Tensor, Tensor | None, Tensor | None]]]
                        ) -> None:
    """Give the samples of batches without masks (``None``, where other batches have them:
    a data set with masks for some samples) empty masks, in the lists of parts in place: the
    localization metrics skip them, as they skip any empty mask."""
    given = next((m for parts in lists for _, _, m in parts if m is not None), None)
    if given is None:
        return
    for parts in lists:
        for i, (x, y, m) in enumerate(parts):
            if m is None:
                parts[i] = (x, y, given.new_zeros((len(x), *given.shape[1:])))
