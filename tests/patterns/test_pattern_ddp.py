"""Two CPU processes (gloo) fit the same patterns as one process on the same data."""

from __future__ import annotations

import sys

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from pattern_helpers import small_cnn

from lit_explain.patterns import PatternComputer

DATA_SEED = 3


def data() -> torch.Tensor:
    return torch.randn(24, 2, 6, 6, generator=torch.Generator().manual_seed(DATA_SEED))


def worker(rank: int, world_size: int, store_path: str, out_path: str) -> None:
    torch.set_num_threads(1)
    store = dist.FileStore(store_path, world_size)
    dist.init_process_group("gloo", store=store, rank=rank, world_size=world_size)
    try:
        computer = PatternComputer(small_cnn(), "relu")
        for batch in data().chunk(world_size)[rank].split(5):  # each rank its own shard
            computer.update(batch)
        patterns = computer.compute()  # all_reduce inside
        local = computer.compute(sync=False)
        if rank == 0:
            torch.save({"patterns": patterns, "local": local}, out_path)
    finally:
        dist.destroy_process_group()


@pytest.mark.skipif(not dist.is_available() or sys.platform == "win32",
                    reason="needs torch.distributed with gloo")
@pytest.mark.slow  # two fresh interpreters import torch: several seconds
def test_two_gloo_ranks_give_the_patterns_of_one_process(tmp_path):
    out_path = str(tmp_path / "patterns.pt")
    # spawn, not fork: forking a parent that has used OpenMP threads can hang the children
    mp.spawn(worker, args=(2, str(tmp_path / "store"), out_path), nprocs=2, join=True)
    result = torch.load(out_path, weights_only=True)

    single = PatternComputer(small_cnn(), "relu")
    single.update(data())
    expected = single.compute()
    assert set(result["patterns"]) == set(expected)
    for path, pattern in expected.items():
        torch.testing.assert_close(result["patterns"][path], pattern, rtol=1e-3, atol=1e-5)
    # the reduction is of a copy: rank 0's own statistics are still its half
    assert any(not torch.allclose(result["local"][p], expected[p]) for p in expected)
