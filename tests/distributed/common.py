"""What the torchrun workers share: process-group set-up and teardown, small models, cross-rank checks.

Each worker runs its scenarios in order on every rank and prints ``PASS <scenario> rank=<r>`` after each one;
an exception ends the process (torchrun then stops the other rank), and the test reads the output.
"""

from __future__ import annotations

import datetime
import gc
import sys

import torch
import torch.distributed as dist
from torch import nn


def init() -> int:
    torch.set_num_threads(1)
    # A short collective timeout turns a rank that died in the middle of a scenario into an error, not a hang.
    dist.init_process_group("gloo", timeout=datetime.timedelta(seconds=60))
    return dist.get_rank()


def teardown() -> None:
    # Workers drop every wrapper, optimizer and graph before this: with gloo, a DDP reducer still alive when the
    # process group goes away aborts about 3 runs in 10 at exit.
    gc.collect()
    dist.barrier()
    dist.destroy_process_group()


def passed(scenario: str) -> None:
    gc.collect()  # the scenario's wrappers and graphs are gone before the next one starts
    dist.barrier()
    print(f"PASS {scenario} rank={dist.get_rank()}", flush=True)


def run(scenarios: dict, only: list[str]) -> None:
    init()
    for name, scenario in scenarios.items():
        if not only or name in only:
            scenario()
            passed(name)
    teardown()
    sys.exit(0)


def same_on_all_ranks(tensor: torch.Tensor) -> bool:
    """True when every rank holds a bit-identical ``tensor`` (compared as raw bytes on rank 0, result shared)."""
    flat = tensor.detach().contiguous().reshape(-1).view(torch.uint8)
    gathered = [torch.empty_like(flat) for _ in range(dist.get_world_size())]
    dist.all_gather(gathered, flat)
    verdict = torch.tensor([all(torch.equal(gathered[0], g) for g in gathered)], dtype=torch.int32)
    dist.all_reduce(verdict, op=dist.ReduceOp.MIN)
    return bool(verdict.item())


def rank_batch(step: int, n: int = 6, features: int = 6) -> torch.Tensor:
    """Different data on every rank (so unsynchronised training would show), reproducible."""
    generator = torch.Generator().manual_seed(1000 * step + dist.get_rank())
    return torch.randn(n, features, generator=generator)


class Net(nn.Module):
    """A backbone to freeze (Linear + BatchNorm), an auxiliary head the forward never calls, and a head that trains
    (with a BatchNorm of its own, whose statistics DDP keeps broadcasting)."""

    def __init__(self) -> None:
        super().__init__()
        self.backbone = nn.Sequential(nn.Linear(6, 16), nn.BatchNorm1d(16), nn.ReLU())
        self.aux = nn.Linear(16, 3)  # frozen and unused: no find_unused_parameters needed
        self.head = nn.Sequential(nn.Linear(16, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x))


def net() -> Net:
    torch.manual_seed(0)
    return Net()
