"""LayerwiseSampling (LISA) under DDP and FSDP2: 2 ranks, gloo, CPU (see common.py for the protocol).

    torchrun --nproc_per_node=2 tests/distributed/worker_lisa.py [scenario,...]
"""

from __future__ import annotations

import copy
import sys

import torch
import torch.distributed as dist
from common import rank_batch, run, same_on_all_ranks
from torch import nn
from torch.distributed.fsdp import fully_shard
from worker_ddp import bucketed
from worker_fsdp import matches
from worker_fsdp import train as train_with_reference

from frostline.distributed import DistributedFreezeError, audit_ranks, ddp
from frostline.schedules import LayerwiseSampling

STEPS, EVERY = 8, 2


class Stack(nn.Module):
    """A stem, 4 residual blocks in a ModuleList (what LayerwiseSampling samples) and a head."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Linear(6, 16)
        self.blocks = nn.ModuleList(nn.Sequential(nn.Linear(16, 16), nn.LayerNorm(16), nn.ReLU()) for _ in range(4))
        self.out = nn.Linear(16, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        for block in self.blocks:
            x = x + block(x)
        return self.out(x)


def stack() -> Stack:
    torch.manual_seed(0)
    return Stack()


def local(tensor: torch.Tensor) -> torch.Tensor:
    return (tensor.to_local() if hasattr(tensor, "to_local") else tensor).detach().clone()


def check_intervals(model: Stack, intervals: list[tuple[list[int], dict[str, torch.Tensor]]]) -> None:
    """On this rank: over each interval a frozen block's (shard of) every tensor is bit-identical, an active
    block's moved."""
    end = {n: local(p) for n, p in model.named_parameters()}
    for k, (active, start) in enumerate(intervals):
        stop = intervals[k + 1][1] if k + 1 < len(intervals) else end
        for name in start:
            if name.startswith("blocks."):
                same = torch.equal(start[name], stop[name])
                assert same == (int(name.split(".")[1]) not in active), (k, active, name, same)
    assert len({tuple(a) for a, _ in intervals}) > 1, intervals  # the active set did change


def same_draws(schedule: LayerwiseSampling) -> None:
    drawn: list = [None] * dist.get_world_size()
    dist.all_gather_object(drawn, schedule.active)
    assert all(d == drawn[0] for d in drawn), drawn


def ddp_rewrap() -> None:
    """Each draw: drop the wrapper, step the schedule, wrap again; a draw under a live wrapper is refused."""
    model = stack()
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.05, weight_decay=0.1)
    schedule = LayerwiseSampling(n_active=2, every=EVERY, seed=0)
    wrapper, seen, intervals, refused = None, [], [], False
    for step in range(STEPS):
        if schedule.resamples_at(step):
            if wrapper is not None:
                assert set(seen) == {id(p) for p in model.parameters() if p.requires_grad}  # buckets: what trained
                try:
                    schedule.step(model, optimizer, step=step)
                except DistributedFreezeError as error:  # the frozen set cannot change under a live wrapper
                    assert "drop the wrapper" in str(error), str(error)
                    refused = True
            wrapper = None  # drop the wrapper, change the frozen set, wrap again
            schedule.step(model, optimizer, step=step)
            wrapper = ddp(model)  # also checks that every rank froze the same blocks
            seen = bucketed(wrapper)
            same_draws(schedule)
            intervals.append((schedule.active, {n: local(p) for n, p in model.named_parameters()}))
        else:
            schedule.step(model, optimizer, step=step)  # no draw: nothing changes under the live wrapper
        wrapper(rank_batch(step)).square().mean().backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        assert {id(p) for p in optimizer.state} == {id(p) for p in model.parameters() if p.requires_grad}
    assert refused
    check_intervals(model, intervals)
    assert all(same_on_all_ranks(p) for p in model.parameters())
    assert audit_ranks(model) == []
    del wrapper, optimizer


def fsdp2() -> None:
    """fully_shard per block: the schedule needs nothing extra; state per rank only for what trains; training
    matches an unsharded reference that samples the same blocks."""
    model = stack()
    reference = copy.deepcopy(model)
    for block in model.blocks:
        fully_shard(block)
    fully_shard(model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.05, weight_decay=0.1)
    expected = torch.optim.AdamW(reference.parameters(), lr=0.05, weight_decay=0.1)
    schedule, mirror = LayerwiseSampling(2, every=EVERY, seed=0), LayerwiseSampling(2, every=EVERY, seed=0)
    intervals = []
    for step in range(STEPS):
        change = schedule.step(model, optimizer, step=step)
        mirror.step(reference, expected, step=step)
        if change is not None:
            same_draws(schedule)
            intervals.append((schedule.active, {n: local(p) for n, p in model.named_parameters()}))
        train_with_reference(model, reference, (optimizer, expected), 1, first=step)
        trainable = [p for p in model.parameters() if p.requires_grad]
        assert {id(p) for p in optimizer.state} == {id(p) for p in trainable}  # no state for the frozen blocks
        held = torch.tensor([sum(local(s["exp_avg"]).numel() for s in optimizer.state.values())])
        dist.all_reduce(held)  # the shards of all ranks together: exactly the trainable elements
        assert int(held) == sum(p.numel() for p in trainable), (int(held), step)
    check_intervals(model, intervals)
    assert matches(model, reference)
    del optimizer, expected


if __name__ == "__main__":
    run({"ddp": ddp_rewrap, "fsdp2": fsdp2}, sys.argv[1].split(",") if len(sys.argv) > 1 else [])
