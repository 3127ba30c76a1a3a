"""Where a replayed AttnLRP analysis spends its forward pass, on the demo transformers.

    python benchmarks/replay_phases.py [--rounds 200] [--analyzer lrp.epsilon]

A replay (:mod:`lit_explain.analyzers.replay`) runs the model's own forward under a torch
function mode that checks every call against the recorded plan (its function and where its
tensors came from) and runs the calls that have rules by their steps. To tell the checks'
cost from the rules', each round times, on the same input, in turn:

- the model's own forward pass;
- the same under a function mode that only calls each function (what intercepting costs);
- a replay that trusts the plan: no checks, no rule steps (attention as the model runs
  it, fused, not through its parts);
- a replay that trusts the plan: no checks, every rule (attention through its parts);
- the replay itself (checks and rules), as ``analyze`` runs it.

Best of ``--rounds`` rounds of each, in CPU time of the one thread torch is given (so that a
busy shared machine, which steals time from the process, disturbs the figures less).
Glibc's allocator should keep its memory, as for ``benchmarks/analyzers.py``:
``MALLOC_MMAP_THRESHOLD_=1000000000 MALLOC_TRIM_THRESHOLD_=10000000000``.
"""

from __future__ import annotations

import argparse
import contextlib
import time
from collections.abc import Callable

import torch
from torch.overrides import TorchFunctionMode

import lit_explain as lx
from lit_explain.analyzers.base import Analyzer
from lit_explain.analyzers.replay import Plan, Replayed, crossed
from lit_explain.demo import TextTransformer, TinyViT


class Intercepted(TorchFunctionMode):
    """Every torch call intercepted and run as it is."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        return func(*args, **(kwargs or {}))


class Trusted(Replayed):
    """A replay that checks nothing: each call by its step or as written, the input boundary
    crossed where the plan says, attention through its parts with their rules (``rules``;
    else every call as written, attention fused)."""

    rules = True

    def __torch_function__(self, func, types, args=(), kwargs=None):
        index, plan, kwargs = self.index, self.plan, kwargs or {}
        self.index = index + 1
        crossing = plan.crossings.get(index)
        if crossing is not None:
            args, kwargs = crossed(args, kwargs, crossing, plan.boundary)
        if index in plan.parts:
            if self.rules:
                return self._through_parts(plan.parts[index], args, kwargs)
            self.index = plan.parts[index].end
        step = plan.steps.get(index) if self.rules else None
        return func(*args, **kwargs) if step is None else step(func, args, kwargs)


class TrustedWithoutRules(Trusted):
    rules = False


def phase_times(analyzer: Analyzer, x: torch.Tensor, rounds: int) -> dict[str, float]:
    """The best CPU seconds of each phase (see the module's docstring) over ``rounds``
    replayed analyses of ``x``."""
    best: dict[str, float] = {}
    replay = Analyzer._replay

    def timed(label: str, run: Callable[[], torch.Tensor]) -> torch.Tensor:
        start = time.thread_time()
        result = run()
        best[label] = min(best.get(label, float("inf")), time.thread_time() - start)
        return result

    def phases(self: Analyzer, inputs: torch.Tensor, plan: Plan) -> torch.Tensor:
        def forward(mode: TorchFunctionMode | None = None) -> torch.Tensor:
            copy = inputs.clone()
            with mode or contextlib.nullcontext():
                return self.logits(self.model(copy), len(copy))

        timed("model forward", forward)
        timed("intercepted, run as written", lambda: forward(Intercepted()))
        timed("trusted plan, no rules", lambda: forward(TrustedWithoutRules(plan, inputs)))
        timed("trusted plan, rules", lambda: forward(Trusted(plan, inputs)))
        return timed("replay (checks and rules)", lambda: replay(self, inputs, plan))

    analyzer.analyze(x)  # the full analysis, which records the plan
    Analyzer._replay = phases
    try:
        for _ in range(rounds):
            analyzer.analyze(x)
            assert analyzer.replayed, "the analysis was not replayed"
    finally:
        Analyzer._replay = replay
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=200)
    parser.add_argument("--analyzer", default="lrp.epsilon")
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    tokens = torch.randint(1, 40, (16, 16))
    tokens[:, 12:] = 0
    cases = {"TinyViT": (TinyViT().eval(), torch.rand(16, 1, 8, 8)),
             "TextTransformer": (TextTransformer().eval(), tokens)}
    for name, (model, x) in cases.items():
        for p in model.parameters():
            p.requires_grad_(False)
        best = phase_times(lx.create_analyzer(args.analyzer, model), x, args.rounds)
        base = best["model forward"]
        print(f"\n{name}, {args.analyzer}, batch {len(x)}, 1 thread, best of {args.rounds}")
        for label, seconds in best.items():
            print(f"  {label:30s} {seconds * 1e3:7.2f} ms  {seconds / base:5.2f}x")


if __name__ == "__main__":
    main()
