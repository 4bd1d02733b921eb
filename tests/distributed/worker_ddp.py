"""DistributedDataParallel with frostline-frozen models: 2 ranks, gloo, CPU (see common.py for the protocol).

    torchrun --nproc_per_node=2 tests/distributed/worker_ddp.py [scenario,...]
"""

from __future__ import annotations

import sys

import torch
import torch.distributed as dist
from common import net, rank_batch, run, same_on_all_ranks
from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import allreduce_hook
from torch.nn.parallel import DistributedDataParallel as DDP

import frostline
from frostline.distributed import DistributedFreezeError, audit_ranks, ddp, trainable_state_dict
from frostline.partial import STRATEGIES, get_partial

FROZEN = ["backbone", "aux"]


def bucketed(wrapper: DDP) -> list[int]:
    """Record the ids of the parameters in every gradient bucket DDP all-reduces (a comm hook sees them all)."""
    seen: list[int] = []

    def hook(state, bucket):
        seen.extend(id(p) for p in bucket.parameters())
        return allreduce_hook(state, bucket)

    wrapper.register_comm_hook(None, hook)
    return seen


def train(wrapper: DDP, optimizer: torch.optim.Optimizer, steps: int, first: int = 0) -> None:
    for step in range(first, first + steps):
        wrapper(rank_batch(step)).square().mean().backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)


def raises(call, pattern: str) -> None:
    try:
        call()
    except DistributedFreezeError as error:
        assert pattern in str(error), str(error)
    else:
        raise AssertionError(f"expected DistributedFreezeError ({pattern!r})")


def whole() -> None:
    """Frozen parameters never enter a bucket; find_unused_parameters is not needed for the frozen, unused aux."""
    model = frostline.freeze(net(), FROZEN)
    start = {n: p.detach().clone() for n, p in model.named_parameters()}
    wrapper = DDP(model)  # find_unused_parameters=False
    seen = bucketed(wrapper)
    optimizer = frostline.optimizer(model, torch.optim.AdamW, lr=0.05, weight_decay=0.1)
    with frostline.guard(model):  # per rank: frozen weights and frozen BatchNorm statistics, bit for bit
        train(wrapper, optimizer, 3)
    trainable = {id(p): n for n, p in model.named_parameters() if p.requires_grad}
    assert set(seen) == set(trainable) and len(seen) == 3 * len(trainable), (len(seen), len(trainable))
    assert all(not torch.equal(start[n], p) for n, p in model.named_parameters() if p.requires_grad)
    assert all(same_on_all_ranks(p) for p in model.parameters())
    assert same_on_all_ranks(model.backbone[1].running_var)
    assert frostline.audit(model, optimizer) == [] and audit_ranks(model) == [] and audit_ranks(wrapper) == []


def partial() -> None:
    """Each strategy, under plain DDP and frostline's ddp(): replicas bit-identical, frozen rows as at the start."""
    for strategy in STRATEGIES:
        for wrap in (DDP, ddp):
            model = frostline.freeze(net(), "aux")
            frostline.freeze(model, "backbone.0.weight", rows=range(12), strategy=strategy)  # 12 of 16 rows
            part = get_partial(model, "backbone.0.weight")
            frozen, before = part.frozen_mask(), part.full().clone()
            wrapper = wrap(model)
            seen = bucketed(wrapper)
            optimizer = frostline.optimizer(model, torch.optim.AdamW, lr=0.05, weight_decay=0.1)
            with frostline.guard(model):
                train(wrapper, optimizer, 3)
            after = part.full()
            assert torch.equal(after[frozen], before[frozen]) and not torch.equal(after[~frozen], before[~frozen])
            assert same_on_all_ranks(after) and all(same_on_all_ranks(p) for p in model.parameters())
            if strategy != "mask":  # only the 4 trainable rows are a Parameter, and only they are all-reduced
                assert id(model.backbone[0].weight) not in seen and id(part.trainable) in seen
            strategy_buffers = {id(b) for n, b in model.named_buffers() if "_frostline_" in n}
            broadcast = {id(b) for b in wrapper.modules_buffers}
            assert bool(strategy_buffers & broadcast) == (wrap is DDP), strategy  # ddp() leaves them out
            assert audit_ranks(model) == [] and frostline.audit(model, optimizer) == []
            gathered, local = trainable_state_dict(model), frostline.trainable_state_dict(model)
            assert gathered.keys() == (local.keys() if dist.get_rank() == 0 else set())
            assert all(torch.equal(gathered[k], local[k]) for k in gathered)
            del wrapper, optimizer


def refuse() -> None:
    """Changing the trainable set under a live wrapper raises; after the wrapper is dropped, it works again."""
    model = frostline.freeze(net(), FROZEN)
    wrapper = DDP(model)
    optimizer = frostline.optimizer(model, torch.optim.SGD, lr=0.1)
    train(wrapper, optimizer, 1)
    frozen = frostline.frozen_names(model)
    raises(lambda: frostline.unfreeze(model, "backbone"),  # one wording for a list of names (frostline._table.brief)
           "cannot unfreeze 4 parameters (backbone.0.weight, backbone.0.bias, backbone.1.weight, ... (+1)):")
    raises(lambda: frostline.freeze(model, "head.0"), "cannot freeze 2 parameters")
    raises(lambda: frostline.freeze(model, "head.0.weight", rows=[0]), "cannot partially freeze")
    raises(lambda: frostline.unfreeze(wrapper, "module.backbone.0"), "cannot unfreeze")  # the wrapper itself
    assert frostline.frozen_names(model) == frozen
    frostline.freeze(model, "backbone")  # already frozen, already trainable: no change, no error
    frostline.unfreeze(model, "head")
    del wrapper
    frostline.unfreeze(model, "backbone")  # the wrapper is gone: allowed
    frostline.sync(optimizer, model)
    wrapper = DDP(model)
    seen = bucketed(wrapper)
    before = model.backbone[0].weight.detach().clone()
    train(wrapper, optimizer, 2, first=1)
    assert id(model.backbone[0].weight) in seen and not torch.equal(before, model.backbone[0].weight)
    assert all(same_on_all_ranks(p) for p in model.parameters())
    assert audit_ranks(model) == []


def progressive() -> None:
    """Under find_unused_parameters=True, freezing more as training goes is allowed (never unfreezing)."""
    model = frostline.freeze(net(), FROZEN)
    wrapper = DDP(model, find_unused_parameters=True)
    optimizer = frostline.optimizer(model, torch.optim.SGD, lr=0.1, momentum=0.9)
    train(wrapper, optimizer, 1)
    frostline.freeze(model, "head.0")
    frostline.sync(optimizer, model)
    start = {n: p.detach().clone() for n, p in model.named_parameters()}
    train(wrapper, optimizer, 2, first=1)
    for name, param in model.named_parameters():
        assert torch.equal(start[name], param) == (not param.requires_grad), name
    assert all(same_on_all_ranks(p) for p in model.parameters())
    raises(lambda: frostline.unfreeze(model, "head.0"), "cannot unfreeze 2 parameters")
    findings = audit_ranks(model)  # head.0 keeps its bucket space: a warning, and the find_unused note
    assert [(f.code, f.severity) for f in findings] == [("ddp-stale-buckets", "warning"),
                                                        ("ddp-find-unused-parameters", "info")], findings


def disagree() -> None:
    """Ranks that freeze differently get the same finding on every rank, and ddp() refuses to wrap (no hang)."""
    rank = dist.get_rank()
    model = frostline.freeze(net(), FROZEN)
    if rank == 1:
        frostline.freeze(model, "head.3.bias")
    findings = audit_ranks(model)
    assert [(f.code, f.names) for f in findings] == [("ranks-disagree", ["head.3.bias"])], findings
    assert "frozen on rank 1 vs trainable on rank 0" in findings[0].message or \
        "trainable on rank 0 vs frozen on rank 1" in findings[0].message, findings[0].message
    raises(lambda: ddp(model), "ranks disagree on what is frozen")
    model = frostline.freeze(net(), "backbone.0.weight", rows=[rank])  # same tensor, different rows
    assert [(f.code, f.names) for f in audit_ranks(model)] == [("ranks-disagree", ["backbone.0.weight"])]


def stale() -> None:
    """requires_grad set behind frostline's back: audit_ranks names the stale buckets, then the drifting replica."""
    model = frostline.freeze(net(), FROZEN)
    wrapper = DDP(model)
    model.backbone[0].weight.requires_grad_(True)  # plain PyTorch: DDP's buckets do not follow
    assert [(f.code, f.names) for f in audit_ranks(model)] == [("ddp-stale-buckets", ["backbone.0.weight"])]
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    train(wrapper, optimizer, 1)
    codes = {f.code: f.names for f in audit_ranks(model)}
    assert codes == {"ddp-stale-buckets": ["backbone.0.weight"], "replicas-differ": ["backbone.0.weight"]}, codes
    del wrapper, optimizer
    model = frostline.freeze(net(), FROZEN)
    wrapper = DDP(model, find_unused_parameters=True)
    assert [f.code for f in audit_ranks(wrapper)] == ["ddp-find-unused-parameters"]


def buffers() -> None:
    """ddp() broadcasts frozen BatchNorm statistics once and leaves them out of the per-forward broadcast."""
    model = net()
    with torch.no_grad():
        model.backbone[1].running_mean.fill_(float(dist.get_rank()))  # ranks start apart
    frostline.freeze(model, FROZEN)
    wrapper = ddp(model)
    assert not hasattr(model, "_ddp_params_and_buffers_to_ignore")  # not left behind for a later plain DDP
    broadcast = {id(b) for b in wrapper.modules_buffers}
    assert not broadcast & {id(b) for b in model.backbone[1].buffers()}
    assert {id(b) for b in model.head[1].buffers()} <= broadcast  # the trainable BatchNorm's still are
    assert same_on_all_ranks(model.backbone[1].running_mean) and not model.backbone[1].running_mean.any()
    optimizer = frostline.optimizer(model, torch.optim.SGD, lr=0.1)
    train(wrapper, optimizer, 2)
    assert all(same_on_all_ranks(p) for p in model.parameters())


if __name__ == "__main__":
    run({"whole": whole, "partial": partial, "refuse": refuse, "progressive": progressive, "disagree": disagree,
         "stale": stale, "buffers": buffers}, sys.argv[1].split(",") if len(sys.argv) > 1 else [])
