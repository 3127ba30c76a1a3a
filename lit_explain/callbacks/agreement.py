"""Which outcomes of the processes of a DDP run hold on all of them.

Under DDP every rank explains its own probe samples, and an analyzer, a metric or a drift
measure can fail on one rank's samples only (a map of NaN there). The metrics and the drift
reduce their states across the ranks, a collective that every rank must enter with the same
tensors: a rank that skipped what failed on it while the others went on made them wait in the
reduction until the process group timed out (thirty minutes by default), and then stopped
training. Before each such reduction the ranks agree on what succeeded on all of them, and
what failed anywhere is skipped everywhere.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Mapping

import torch
import torch.distributed as dist

#: ``agree(outcomes) -> outcomes``: what holds on every process (see :func:`agreed`).
Agree = Callable[[Mapping[Hashable, bool]], dict[Hashable, bool]]


class FailedElsewhere(RuntimeError):
    """What this process skips because it failed on another one (its own warning: not one
    of this process's own failures of the same kind)."""


def distributed() -> bool:
    """Whether a process group of more than one process is running."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def agreed(outcomes: Mapping[Hashable, bool], device: torch.device | str = "cpu"
           ) -> dict[Hashable, bool]:
    """Each outcome, true only where it is true on every process: one ``all_reduce`` (MIN)
    of one flag per key, which every process must call with the same keys in the same order
    (``device``: where the process group's backend takes tensors, the GPU for NCCL). Without
    a process group, the outcomes themselves."""
    if not distributed():
        return dict(outcomes)
    flags = torch.tensor([1.0 if value else 0.0 for value in outcomes.values()], device=device)
    dist.all_reduce(flags, op=dist.ReduceOp.MIN)
    return dict(zip(outcomes, (bool(flag) for flag in flags.tolist()), strict=True))


def local(outcomes: Mapping[Hashable, bool]) -> dict[Hashable, bool]:
    """The outcomes of this process alone (no agreement: one process, or no reduction)."""
    return dict(outcomes)
