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

from ..analyzers.validation import check_choice

SELECTIONS = ("first", "stratified")


def pick(batch: Any, key: int | str | None) -> Tensor | None:
    """The part of a batch at ``key``: a tuple/list index or a dict key (``None``: none)."""
    if key is None:
        return None
    if isinstance(batch, Tensor):
        if key != 0:
            raise KeyError(f"the batch is a single tensor; key {key!r} must be 0")
        return batch
    if isinstance(batch, Mapping):
        if key not in batch:
            raise KeyError(f"batch has no key {key!r}; its keys are {sorted(batch)}")
        return batch[key]
    if not isinstance(key, int) or not -len(batch) <= key < len(batch):
        raise KeyError(f"batch index {key!r} is not valid for a batch of {len(batch)} parts")
    return batch[key]


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
        ``num_samples`` candidates kept per class, so memory stays bounded).
    seed:
        Seed of the generator used by ``"stratified"``.
    """

    def __init__(self, num_samples: int, selection: str = "first", seed: int = 0) -> None:
        check_choice("sample_selection", selection, SELECTIONS)
        self.num_samples = num_samples
        self.selection = selection
        self.seed = seed
        self.inputs: Tensor | None = None
        self.targets: Tensor | None = None
        self._candidates: dict[int, list[tuple[Tensor, Tensor]]] = {}
        self._first: list[tuple[Tensor, Tensor | None]] = []

    @property
    def ready(self) -> bool:
        """Whether the probe set is fixed."""
        return self.inputs is not None

    def add(self, inputs: Tensor, targets: Tensor | None) -> None:
        """Offer a validation batch (only used until the probe set is fixed)."""
        if self.ready:
            return
        inputs = inputs.detach().cpu()
        targets = None if targets is None else targets.detach().cpu()
        if self.selection == "first" or targets is None:
            have = sum(len(x) for x, _ in self._first)
            take = self.num_samples - have
            if take > 0:
                self._first.append((inputs[:take].clone(),
                                    None if targets is None else targets[:take].clone()))
            return
        for label in targets.unique().tolist():
            chosen = self._candidates.setdefault(int(label), [])
            room = self.num_samples - sum(len(x) for x, _ in chosen)
            mask = targets == label
            if room > 0:
                chosen.append((inputs[mask][:room].clone(), targets[mask][:room].clone()))

    def finish(self) -> None:
        """Fix the probe set at the end of the first validation epoch."""
        if self.ready:
            return
        if self._candidates:
            self.inputs, self.targets = self._stratified()
        elif self._first:
            self.inputs = torch.cat([x for x, _ in self._first])
            has_targets = self._first[0][1] is not None
            self.targets = torch.cat([y for _, y in self._first]) if has_targets else None
        self._candidates, self._first = {}, []

    def _stratified(self) -> tuple[Tensor, Tensor]:
        generator = torch.Generator().manual_seed(self.seed)
        pools = {}
        for label in sorted(self._candidates):
            inputs = torch.cat([x for x, _ in self._candidates[label]])
            targets = torch.cat([y for _, y in self._candidates[label]])
            order = torch.randperm(len(inputs), generator=generator)
            pools[label] = list(zip(inputs[order], targets[order], strict=True))
        chosen: list[tuple[Tensor, Tensor]] = []
        while len(chosen) < self.num_samples and any(pools.values()):
            for label in sorted(pools):
                if pools[label] and len(chosen) < self.num_samples:
                    chosen.append(pools[label].pop(0))
        order = sorted(range(len(chosen)), key=lambda i: int(chosen[i][1]))
        return (torch.stack([chosen[i][0] for i in order]),
                torch.stack([chosen[i][1] for i in order]))

    def state_dict(self) -> dict[str, Any]:
        return {"inputs": self.inputs, "targets": self.targets}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.inputs = state.get("inputs")
        self.targets = state.get("targets")
