"""Frozen parameters under ``torch.distributed``: DistributedDataParallel and FSDP2 ``fully_shard``.

**Freeze before wrapping.** DDP builds its gradient buckets from the parameters that require grad when it is
constructed, so frozen parameters never enter a bucket: no bytes are all-reduced for them, and modules that are
entirely frozen need no ``find_unused_parameters=True``. The buckets are fixed from then on. A parameter
unfrozen later would train on each rank's own gradients (the replicas silently drift apart); one frozen later
stalls the reducer ("Expected to have finished reduction in the prior iteration"). So while a live DDP wrapper
covers a parameter, :func:`frostline.freeze` and :func:`frostline.unfreeze` refuse to change whether it trains
and raise :class:`DistributedFreezeError`: drop the wrapper, change the frozen set, wrap again. (A wrapper built
with ``find_unused_parameters=True`` takes parameters that stop getting gradients in its stride, so freezing more
is allowed under it; unfreezing never is.) From frostline's first freezing call on, it sees every DDP being
built (a module-registration hook notices DDP assigning ``self.module``; wrappers built before that call are
found once), so this holds for a plain ``DistributedDataParallel(model)`` as much as for :func:`ddp`.

**FSDP2** (``fully_shard``) shards every parameter on its own, so frozen and trainable parameters mix in one
shard group: frozen ones get no gradient, no reduce-scatter and (with :func:`frostline.optimizer`) no optimizer
state. Whole-parameter (un)freezing after ``fully_shard`` works; call :func:`frostline.sync` afterwards.

Partial freezing (``rows=``/``mask=``) adds or replaces Parameters that a wrapper would not know, so it must
happen before wrapping; frostline refuses it afterwards. Every strategy works under DDP (replicas stay
bit-identical). Under FSDP2 every strategy follows the module's shards: ``delta`` and ``split`` shard their small
trainable storage like any Parameter (optimizer state for the trainable elements only) and merge it into the
frozen base out of place in the forward; ``mask`` zeroes frozen gradients on FSDP's gathered Parameter and writes
each rank's frozen elements back into its own shard after a step. ``state_dict`` and ``trainable_state_dict``
gather partial tensors (collectives).

Functions that talk to other ranks (:func:`ddp`, :func:`audit_ranks`, :func:`trainable_state_dict`) are
collectives: call them on every rank, in the same order. A script run with ``torchrun --nproc_per_node=N``::

    dist.init_process_group()
    model = frostline.freeze(build().to(device), "encoder")    # the same calls on every rank, before wrapping
    ddp_model = frostline.distributed.ddp(model, device_ids=[local_rank])   # or DistributedDataParallel(model)
    optimizer = frostline.optimizer(model, torch.optim.AdamW, lr=1e-4)
    ...                                                          # train with ddp_model
    print(frostline.distributed.audit_ranks(model))             # every rank gets the same findings
    state = frostline.distributed.trainable_state_dict(model)   # full tensors on rank 0, {} elsewhere
    del ddp_model, optimizer; gc.collect(); dist.destroy_process_group()   # wrapper first (gloo aborts otherwise)
"""

from __future__ import annotations

from ..freeze import on_change
from ._ddp import ddp, trainable_state_dict
from ._ranks import audit_ranks
from ._wrap import DistributedFreezeError, check_change

on_change(check_change)  # frostline.freeze/unfreeze run it before changing anything

__all__ = ["DistributedFreezeError", "audit_ranks", "check_change", "ddp", "trainable_state_dict"]
