"""FSDP2 (``fully_shard``) with frostline-frozen models: 2 ranks, gloo, CPU (see common.py for the protocol).

    torchrun --nproc_per_node=2 tests/distributed/worker_fsdp.py [scenario,...]
"""

from __future__ import annotations

import copy
import sys

import torch
import torch.distributed as dist
from common import rank_batch, run
from torch import nn
from torch.distributed.fsdp import fully_shard

import frostline
from frostline._state import get_partial
from frostline.distributed import DistributedFreezeError, audit_ranks, trainable_state_dict
from frostline.partial._base import _FOLLOWING

# One shard group holds a frozen weight beside its trainable bias, another a frozen LayerNorm beside a trainable
# Linear: FSDP2 shards each parameter on its own, so the mix needs no wrapping policy.
FROZEN = ["blocks.0.0.weight", "blocks.1.1"]
PARTIAL = ["embed.weight", "blocks.blocks.0.0.weight", "blocks.blocks.1.0.weight", "blocks.out.weight",
           "blocks.blocks.0.0.bias", "blocks.blocks.0.1.weight", "blocks.blocks.1.0.bias"]
DENSE = {"blocks.blocks.0.1.weight", "blocks.blocks.1.0.bias"}  # strategy 'mask': dense gradient and state


class Blocks(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(
            nn.Sequential(nn.Linear(6 if i == 0 else 16, 16), nn.LayerNorm(16), nn.ReLU()) for i in range(2))
        self.out = nn.Linear(16, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x)
        return self.out(x)


def sharded() -> tuple[nn.Module, nn.Module]:
    """A frozen model sharded with fully_shard, and an unsharded copy that trains on every rank's batch."""
    torch.manual_seed(0)
    model = frostline.freeze(Blocks(), FROZEN)
    reference = copy.deepcopy(model)
    for block in model.blocks:
        fully_shard(block)
    fully_shard(model)
    return model, reference


def train(model: nn.Module, reference: nn.Module, optimizers: tuple, steps: int, first: int = 0) -> None:
    """FSDP2 averages gradients over ranks; the reference sees the same average of the per-rank losses."""
    world = dist.get_world_size()
    for step in range(first, first + steps):
        batch = rank_batch(step)
        everyone = [torch.empty_like(batch) for _ in range(world)]
        dist.all_gather(everyone, batch)
        model(batch).square().mean().backward()
        sum(reference(b).square().mean() for b in everyone).div(world).backward()
        for optimizer in optimizers:
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)


def full(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.full_tensor() for n, p in model.named_parameters()}  # a collective: same order on every rank


def matches(model: nn.Module, reference: nn.Module) -> bool:
    ours, theirs = full(model), dict(reference.named_parameters())
    return all(torch.allclose(ours[n], theirs[n].detach(), rtol=1e-5, atol=1e-6) for n in ours)


def mixed() -> None:
    """Frozen shards bit-identical, no gradient and no optimizer state for them; training matches the reference."""
    model, reference = sharded()
    start = {n: p.to_local().clone() for n, p in model.named_parameters()}
    optimizer = frostline.optimizer(model, torch.optim.AdamW, lr=0.05, weight_decay=0.1)
    expected = frostline.optimizer(reference, torch.optim.AdamW, lr=0.05, weight_decay=0.1)
    train(model, reference, (optimizer, expected), 3)
    for name, param in model.named_parameters():
        unchanged = torch.equal(param.to_local(), start[name])
        assert unchanged == (not param.requires_grad), name  # frozen: bit-identical; trainable: moved
        assert param.requires_grad or param.grad is None, name
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert {id(p) for p in optimizer.state} == {id(p) for p in trainable}
    held = torch.tensor([sum(s["exp_avg"].to_local().numel() for s in optimizer.state.values())])
    dist.all_reduce(held)  # the shards of all ranks together: exactly the trainable elements
    assert int(held) == sum(p.numel() for p in trainable), int(held)
    assert matches(model, reference)
    assert frostline.audit(model, optimizer) == [] and audit_ranks(model) == []


def unfreeze_after() -> None:
    """Whole-parameter (un)freezing after fully_shard works; partial freezing after it is refused."""
    model, reference = sharded()
    optimizer = frostline.optimizer(model, torch.optim.AdamW, lr=0.05)
    expected = frostline.optimizer(reference, torch.optim.AdamW, lr=0.05)
    train(model, reference, (optimizer, expected), 1)
    for target in (model, reference):
        frostline.unfreeze(target, "blocks.1.1")
        frostline.freeze(target, "out.bias")
    frostline.sync(optimizer, model), frostline.sync(expected, reference)
    frozen_bias, norm = model.out.bias.to_local().clone(), model.blocks[1][1].weight.to_local().clone()
    train(model, reference, (optimizer, expected), 2, first=1)
    assert torch.equal(model.out.bias.to_local(), frozen_bias)
    assert not torch.equal(model.blocks[1][1].weight.to_local(), norm)  # unfrozen after sharding, and it trains
    assert matches(model, reference)
    try:
        frostline.freeze(model, "out.weight", rows=[0])
    except DistributedFreezeError as error:
        assert "after fully_shard" in str(error), str(error)
    else:
        raise AssertionError("partial freezing after fully_shard must raise")


def state_dict() -> None:
    """trainable_state_dict gathered on rank 0: full tensors of what trains, loadable into an unsharded copy."""
    model, reference = sharded()
    optimizer = frostline.optimizer(model, torch.optim.AdamW, lr=0.05)
    train(model, reference, (optimizer,), 1)
    gathered = trainable_state_dict(model)
    now = full(model)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    if dist.get_rank() != 0:
        assert gathered == {}
        return
    assert sorted(gathered) == sorted(trainable) and all(type(v) is torch.Tensor for v in gathered.values())
    assert all(torch.equal(gathered[n], now[n]) for n in trainable)
    fresh = copy.deepcopy(reference)  # unsharded, frozen the same way, untrained
    assert not any(torch.equal(p, now[n]) for n, p in fresh.named_parameters() if p.requires_grad)
    frostline.load_trainable_state_dict(fresh, gathered)
    assert all(torch.equal(p, now[n]) for n, p in fresh.named_parameters())  # frozen: as they always were


class Tokens(nn.Module):
    """An embedding and a Linear head: partial freezing of token rows, output rows, columns and elements."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(10, 6)
        self.blocks = Blocks()

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.blocks(self.embed(ids).mean(1))


def partially_frozen() -> nn.Module:
    torch.manual_seed(0)
    model = Tokens()
    frostline.freeze(model, "embed.weight", rows=[0, 2, 3, 5, 7, 8, 9], strategy="delta")  # 3 token rows train
    frostline.freeze(model, "blocks.blocks.0.0.weight", rows=range(12), strategy="split")  # 4 output rows train
    frostline.freeze(model, "blocks.blocks.1.0.weight", rows=range(0, 16, 2), dim=1, strategy="delta")  # columns
    frostline.freeze(model, "blocks.out.weight", mask=torch.rand(2, 16) < 0.8, strategy="delta")  # elements
    frostline.freeze(model, "blocks.blocks.0.0.bias", rows=range(0, 16, 3), strategy="delta")  # beside split
    frostline.freeze(model, "blocks.blocks.0.1.weight", rows=range(0, 16, 3), strategy="mask")  # mask: rows
    frostline.freeze(model, "blocks.blocks.1.0.bias", mask=torch.rand(16) < 0.5, strategy="mask")  # elements
    frostline.freeze(model, "blocks.blocks.1.1")
    return model


def train_tokens(model: nn.Module, reference: nn.Module, optimizers: tuple, steps: int,
                 clip: float | None = None) -> None:
    """Each rank its own token batch; the unsharded reference trains on the average over every rank's batch.
    With ``clip``, gradients are clipped to that norm first (frozen gradients must not count)."""
    for step in range(steps):
        ids = torch.randint(0, 10, (4, 5), generator=torch.Generator().manual_seed(step * 7 + dist.get_rank()))
        everyone = [torch.empty_like(ids) for _ in range(dist.get_world_size())]
        dist.all_gather(everyone, ids)
        model(ids).square().mean().backward()
        sum(reference(i).square().mean() for i in everyone).div(len(everyone)).backward()
        for clipped in (model, reference) if clip is not None else ():
            torch.nn.utils.clip_grad_norm_([p for p in clipped.parameters() if p.grad is not None], clip)
        for optimizer in optimizers:
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)


def hsdp() -> None:
    """A 2-D mesh (replicate x shard, as HSDP uses): every strategy still exact, state_dict keys unchanged."""
    from torch.distributed.device_mesh import init_device_mesh

    mesh = init_device_mesh("cpu", (1, dist.get_world_size()), mesh_dim_names=("replicate", "shard"))
    model = partially_frozen()
    reference = copy.deepcopy(model)
    start = {n: t.clone() for n, t in reference.state_dict().items()}
    masks = {n: get_partial(reference, n).frozen_mask() for n in PARTIAL}
    fully_shard(model, mesh=mesh)
    optimizer = frostline.optimizer(model, torch.optim.AdamW, lr=0.05, weight_decay=0.1, no_decay=())
    expected = frostline.optimizer(reference, torch.optim.AdamW, lr=0.05, weight_decay=0.1, no_decay=())
    train_tokens(model, reference, (optimizer, expected), steps=2)
    ours = {n: t.full_tensor() if hasattr(t, "full_tensor") else t for n, t in model.state_dict().items()}
    theirs = reference.state_dict()
    assert sorted(ours) == sorted(start)
    for name, mask in masks.items():
        assert torch.equal(ours[name][mask], start[name][mask]), name  # frozen elements: bit-identical
        assert not torch.equal(ours[name][~mask], start[name][~mask]), name  # trainable ones moved
    for name in ours:
        assert torch.allclose(ours[name], theirs[name], rtol=1e-5, atol=1e-6), name
    del optimizer, expected


def partial() -> None:
    """Every strategy under fully_shard: frozen elements bit-identical to the start, training (with gradient
    clipping, which sees only trainable gradients) as the unsharded model does."""
    model = partially_frozen()
    reference = copy.deepcopy(model)  # the same partial freezing, unsharded, trained on every rank's batch
    start = {n: t.clone() for n, t in reference.state_dict().items()}
    masks = {n: get_partial(reference, n).frozen_mask() for n in PARTIAL}
    for block in model.blocks.blocks:
        fully_shard(block)
    fully_shard(model)
    # weight decay on every tensor (biases too): a frozen element a step could move must be written back
    optimizer = frostline.optimizer(model, torch.optim.AdamW, lr=0.05, weight_decay=0.1, no_decay=())
    expected = frostline.optimizer(reference, torch.optim.AdamW, lr=0.05, weight_decay=0.1, no_decay=())
    trainable = sum(m.numel() if n in DENSE else int((~m).sum()) for n, m in masks.items()) + sum(
        p.numel() for n, p in reference.named_parameters() if p.requires_grad and n not in PARTIAL
        and "_frostline_" not in n)
    train_tokens(model, reference, (optimizer, expected), steps=3, clip=0.05)  # a bound that bites
    held = torch.tensor([sum(s["exp_avg"].to_local().numel() for s in optimizer.state.values())])
    dist.all_reduce(held)  # optimizer state of every rank's shards: the trainable elements, nothing more
    assert int(held) == trainable, (int(held), trainable)
    for name in PARTIAL:  # no strategy keeps the unsharded original alive (a full copy on every rank)
        part = get_partial(model, name)
        assert all(hasattr(t, "to_local") for t in (part.param, *part.trainable_parameters())), name
        assert part not in _FOLLOWING, name  # found by its shards from now on: the step hook scans nothing
    state = model.state_dict()  # a collective: delta writes its trainable values into the base shards first
    ours = {n: t.full_tensor() if hasattr(t, "full_tensor") else t for n, t in state.items()}
    assert sorted(ours) == sorted(start), sorted(set(ours) ^ set(start))  # the original keys, nothing added
    theirs = reference.state_dict()
    for name, mask in masks.items():
        assert torch.equal(ours[name][mask], start[name][mask]), name  # frozen elements: bit-identical
        assert not torch.equal(ours[name][~mask], start[name][~mask]), name  # trainable ones moved
    for name in ours:
        assert torch.allclose(ours[name], theirs[name], rtol=1e-5, atol=1e-6), name
    assert torch.equal(ours["blocks.blocks.1.1.weight"], start["blocks.blocks.1.1.weight"])
    gathered = trainable_state_dict(model)  # rank 0 gets the trainable values, in the one-process key format
    if dist.get_rank() == 0:
        assert gathered.keys() == frostline.trainable_state_dict(reference).keys()
        fresh = partially_frozen()
        frostline.load_trainable_state_dict(fresh, gathered)
        for name, value in fresh.state_dict().items():
            assert torch.allclose(value, theirs[name], rtol=1e-5, atol=1e-6), name
    assert frostline.audit(model, optimizer) == []
    assert audit_ranks(model) == []
    del optimizer, expected


def guard() -> None:
    """frostline.guard per rank on FSDP2 shards: quiet while frozen values hold, and names one that moved."""
    model, reference = sharded()
    optimizer = frostline.optimizer(model, torch.optim.AdamW, lr=0.05, weight_decay=0.1)
    head = model.out.weight.full_tensor()
    with frostline.guard(model):
        train(model, reference, (optimizer,), 1)
    assert not torch.equal(model.out.weight.full_tensor(), head)  # quiet, and not because nothing trained
    partly = partially_frozen()
    for block in partly.blocks.blocks:
        fully_shard(block)
    fully_shard(partly)
    partial_optimizer = frostline.optimizer(partly, torch.optim.AdamW, lr=0.05, weight_decay=0.1)
    embed = get_partial(partly, "embed.weight").full()
    with frostline.guard(partly):  # partial tensors: their frozen elements, gathered (a collective)
        partly(torch.arange(10).view(2, 5)).square().mean().backward()
        partial_optimizer.step()
    assert not torch.equal(get_partial(partly, "embed.weight").full(), embed)  # its trainable rows moved
    recorded = frostline.snapshot(model)
    if dist.get_rank() == 1:
        with torch.no_grad():
            model.blocks[0][0].weight.to_local()[0, 0] += 1.0  # a frozen value moves on this rank's shard only
    try:
        recorded.verify(model)
        caught = ""
    except frostline.FrozenParameterChanged as error:
        caught = str(error)
    assert ("blocks.0.0.weight" in caught) == (dist.get_rank() == 1), caught
    del optimizer, partial_optimizer


if __name__ == "__main__":
    run({"mixed": mixed, "unfreeze_after": unfreeze_after, "state_dict": state_dict, "guard": guard,
         "partial": partial, "hsdp": hsdp},
        sys.argv[1].split(",") if len(sys.argv) > 1 else [])
