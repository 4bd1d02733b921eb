"""Which live DistributedDataParallel wrappers bucket which parameters, and the changes frostline refuses.

DDP is noticed as it is built: a module-registration hook sees DDP's constructor assign ``self.module`` (at that
point DDP has read its ignore list and is about to bucket exactly the parameters that require grad), so a plain
``DistributedDataParallel(model)`` is covered as much as :func:`frostline.distributed.ddp`. The record holds the
wrapper weakly: a wrapper the user drops leaves it by itself.

Nothing is installed at import: the hook goes in at frostline's first freezing call (:func:`watch`). Wrappers built
before then are found once, in the garbage collector's list of objects, and recorded as they are at that moment
(frostline changed nothing before it); without a process group no DDP can exist, so that search is skipped.
"""

from __future__ import annotations

import gc
import weakref
from typing import Any

import torch.distributed as dist
from torch import Tensor, nn
from torch.nn.modules.module import register_module_module_registration_hook
from torch.nn.parallel import DistributedDataParallel
from torch.utils.hooks import RemovableHandle

from .._state import PartialTensor, get_partial, named_logical_parameters, partial_tensors
from .._table import brief
from .._tensor import is_dtensor
from ..errors import FreezeError


class DistributedFreezeError(FreezeError):
    """A freezing request that cannot be carried out under torch.distributed: a live DDP wrapper covers the
    parameters, a sharding wrapper manages them, ranks disagree on what is frozen, or there is no process group."""

    __module__ = "frostline.distributed"  # where users import it from (and where tracebacks should point)


# Every DistributedDataParallel built in this process -> {id: name} of the parameters in its gradient buckets when
# it was built. Weak keys: a wrapper the user drops leaves by itself, and then the frozen set may change again.
_BUCKETED: weakref.WeakKeyDictionary[DistributedDataParallel, dict[int, str]] = weakref.WeakKeyDictionary()


def _on_register(parent: nn.Module, name: str, child: Any) -> None:
    # Runs for every submodule assignment in the process, so the cheapest test comes first. DDP's constructor has
    # read its ignore list when it assigns ``self.module`` and then buckets exactly the parameters recorded here.
    if name == "module" and isinstance(parent, DistributedDataParallel) and isinstance(child, nn.Module):
        ignored = parent.__dict__.get("parameters_to_ignore", ())
        _BUCKETED[parent] = {id(p): n for n, p in child.named_parameters() if p.requires_grad and n not in ignored}


_HOOK: RemovableHandle | None = None


def watch() -> None:
    """Start noticing DDP wrappers as they are built (once per process); record the ones that already exist."""
    global _HOOK
    if _HOOK is not None:
        return
    _HOOK = register_module_module_registration_hook(_on_register)
    if dist.is_available() and dist.is_initialized():
        for obj in gc.get_objects():
            if isinstance(obj, DistributedDataParallel) and obj not in _BUCKETED:
                _on_register(obj, "module", obj.module)


def _live_wrappers() -> list[tuple[DistributedDataParallel, dict[int, str]]]:
    # A wrapper whose constructor failed has no reducer and buckets nothing.
    return [(w, b) for w, b in list(_BUCKETED.items()) if w.__dict__.get("reducer") is not None]


def _sharded(model: nn.Module, name: str, tensors: list[Tensor]) -> bool:
    """Whether FSDP2 manages ``name``: its tensors are DTensors, or ``fully_shard`` was applied above it."""
    if any(is_dtensor(t) for t in tensors):
        return True
    try:
        from torch.distributed.fsdp import FSDPModule
    except ImportError:
        return False
    parts = name.split(".")[:-1]
    return any(isinstance(model.get_submodule(".".join(parts[:i])), FSDPModule) for i in range(len(parts) + 1))


def _storage(tensor: Tensor, partial: PartialTensor | None) -> list[Tensor]:
    return [tensor] + (list(partial.trainable_parameters()) if partial is not None else [])


def check_change(model: nn.Module, names: list[str], *, freezing: bool, partial: bool) -> None:
    """Refuse a change to the trainable set that a live wrapper could not follow; called by freeze/unfreeze.

    Runs before anything changes. Freezing what is already frozen (or unfreezing what trains) is no change and
    passes, so schedules may repeat themselves under DDP; so does freezing under a wrapper built with
    ``find_unused_parameters=True``.

    Raises:
        DistributedFreezeError: a live DistributedDataParallel covers a parameter whose trainability (or storage,
            for partial freezing) would change; or partial freezing touches a parameter FSDP2 already shards.
    """
    watch()
    wrappers = _live_wrappers() if _BUCKETED else []
    if not wrappers and not partial and not any(partial_tensors(m) for m in model.modules()):
        return  # the single-process common case: nothing could go stale
    tensors = dict(named_logical_parameters(model, remove_duplicate=False))
    changing: dict[str, list[Tensor]] = {}
    restructured = []  # names whose Parameters a strategy would add, replace or remove
    for name in names:
        tensor, found = tensors[name], get_partial(model, name)
        if found is None and tensor.requires_grad != freezing:
            continue  # already as asked, whole; so is any part of it
        changing[name] = _storage(tensor, found)
        if partial or found is not None:
            restructured.append(name)
    sharded = [n for n in restructured if _sharded(model, n, changing[n])]
    if sharded:
        raise DistributedFreezeError(
            f"cannot change the partial freezing of {brief(sharded, noun='parameter')} after fully_shard: the "
            "strategy adds or replaces Parameters that FSDP2 would not shard or reduce. Freeze rows/masks before "
            "fully_shard (whole-parameter freeze/unfreeze after fully_shard is fine)")
    for wrapper, _ in wrappers:
        # A wrapper built with find_unused_parameters=True treats a parameter that gets no gradient as unused, so
        # freezing whole parameters is safe under it (they keep their bucket space until the next wrap).
        tolerant = freezing and wrapper.find_unused_parameters
        covered = {id(t) for t in wrapper.module.parameters()} | {id(t) for t in wrapper.module.buffers()}
        hit = [n for n, ts in changing.items()
               if (n in restructured or not tolerant) and any(id(t) in covered for t in ts)]
        if hit:
            raise DistributedFreezeError(_wrapped_message(hit, freezing, any(n in restructured for n in hit)))


def _wrapped_message(hit: list[str], freezing: bool, restructured: bool) -> str:
    if restructured:
        verb, why = "partially freeze or restore", ("the strategy adds or replaces Parameters that DDP's buckets do "
                                                    "not hold, so their gradients would never be all-reduced")
    elif freezing:
        verb, why = "freeze", ("DDP would wait for their gradients forever (RuntimeError 'Expected to have "
                               "finished reduction in the prior iteration' on the next step; a wrapper built "
                               "with find_unused_parameters=True would accept it)")
    else:
        verb, why = "unfreeze", ("they would train on this rank's gradients alone, never all-reduced, and the "
                                 "replicas would silently drift apart")
    return (f"cannot {verb} {brief(hit, noun='parameter')}: a live DistributedDataParallel wrapper fixed its "
            f"gradient buckets when it was built, and {why}.\nOn every rank: drop the wrapper (del ddp_model, and "
            "anything else holding it), change the frozen set, wrap again (DistributedDataParallel(model, ...) or "
            "frostline.distributed.ddp(model, ...)), then frostline.sync(optimizer, model).")


def _wrappers_of(model: nn.Module) -> list[tuple[DistributedDataParallel, dict[int, str] | None]]:
    watch()
    ids = {id(p) for p in model.parameters()}
    out: list[tuple[DistributedDataParallel, dict[int, str] | None]] = [
        (w, b) for w, b in _live_wrappers() if any(id(p) in ids for p in w.module.parameters())]
    if isinstance(model, DistributedDataParallel) and all(w is not model for w, _ in out):
        out.append((model, None))  # built before frostline was imported: no record of its buckets
    return out


def _require_process_group(what: str) -> None:
    if not (dist.is_available() and dist.is_initialized()):
        raise DistributedFreezeError(f"{what} needs torch.distributed: call torch.distributed.init_process_group() "
                                     "first (torchrun sets the environment it reads)")
