"""The collectives that build something: :func:`ddp` (a checked, leaner DDP wrapper) and the rank-0
:func:`trainable_state_dict`."""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

from .._state import kept_in_eval, partial_tensors
from .._tensor import gathered
from ._ranks import _disagreement, _frozen_states, _gather, _ranks
from ._wrap import DistributedFreezeError, _require_process_group, watch

_IGNORE = "_ddp_params_and_buffers_to_ignore"  # the module attribute DDP's constructor reads (and only it)


def _group_of(kwargs: dict[str, Any]) -> dist.ProcessGroup | None:
    if kwargs.get("process_group") is not None:
        return kwargs["process_group"]
    mesh = kwargs.get("device_mesh")
    return mesh.get_group() if mesh is not None else None


def _unchanging_buffers(model: nn.Module) -> list[tuple[str, Tensor]]:
    """Buffers that cannot change while the frozen set stands: those of norms frostline keeps in eval (no
    running-statistics update), and the indices, masks and saved frozen values of partial strategies."""
    out: dict[str, Tensor] = {}
    for module_name, module in model.named_modules():
        prefix = f"{module_name}." if module_name else ""
        locals_ = set(module._buffers) if kept_in_eval(module) else set()
        for local, part in partial_tensors(module).items():
            locals_ |= {local, *part.internal_names()} & set(module._buffers)
        for local in sorted(locals_):
            buffer = module._buffers[local]
            if buffer is not None and buffer.is_contiguous():  # broadcast needs contiguous memory
                out.setdefault(prefix + local, buffer)
    return list(out.items())


def ddp(model: nn.Module, **kwargs: Any) -> DistributedDataParallel:
    """Wrap ``model`` (frozen as it will train) in ``DistributedDataParallel``, with two steps DDP leaves out.

    1. It checks that every rank freezes the same parameters (and the same elements of partially frozen ones).
       DDP does not: mismatched buckets hang or all-reduce unrelated gradients.
    2. Buffers that cannot change while the frozen set stands are broadcast from rank 0 once, here, and left
       out of the buffer broadcast DDP otherwise repeats before every forward (``broadcast_buffers=True``, the
       default): running statistics of norms frostline keeps in eval, and the indices, masks and saved frozen
       values of partial strategies (the ``mask`` strategy saves a copy of every frozen element).

    ``kwargs`` go to ``DistributedDataParallel`` unchanged. A collective: call it on every rank.

    Returns:
        DistributedDataParallel: the wrapper. Later changes to the frozen set need a new one (see the module docs).

    Raises:
        DistributedFreezeError: no process group, or ranks disagree on the frozen set (the message names the
            parameters and ranks).

    Example (one process here; under torchrun every rank runs the same lines):
        >>> import gc, torch, torch.nn as nn, torch.distributed as dist, frostline
        >>> dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
        >>> model = frostline.freeze(nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 1)), "0")
        >>> wrapped = frostline.distributed.ddp(model)
        >>> wrapped(torch.randn(2, 4)).sum().backward()
        >>> model[0].weight.grad is None, model[1].weight.grad is not None   # the frozen layer is in no bucket
        (True, True)
        >>> del wrapped; _ = gc.collect(); dist.destroy_process_group()     # the wrapper first (gloo)
    """
    _require_process_group("frostline.distributed.ddp")
    watch()
    group = _group_of(kwargs)
    disagree = _disagreement(_gather((_frozen_states(model), None), group), _ranks(group))
    if disagree:
        raise DistributedFreezeError(f"{disagree[0].message}.\nfix: {disagree[0].fix}")
    quiet = _unchanging_buffers(model)
    source = dist.get_global_rank(group, 0) if group is not None else 0
    with torch.no_grad():
        for _, buffer in quiet:  # what DDP's constructor would have broadcast, had they not been left out
            dist.broadcast(buffer, src=source, group=group)
    previous = model.__dict__.get(_IGNORE)
    model.__dict__[_IGNORE] = sorted(set(previous or ()) | {n for n, _ in quiet})
    try:
        return DistributedDataParallel(model, **kwargs)
    finally:  # DDP copied the list; restoring it keeps a later plain re-wrap from inheriting a stale one
        if previous is None:
            del model.__dict__[_IGNORE]
        else:
            model.__dict__[_IGNORE] = previous


def trainable_state_dict(model: nn.Module, *, buffers: bool = True, rank: int = 0,
                         cpu_offload: bool = False) -> dict[str, Tensor]:
    """:func:`frostline.trainable_state_dict`, with FSDP2 shards gathered into full tensors on ``rank``.

    Every rank must call it (gathering a sharded tensor is a collective); ``rank`` gets the dictionary, the others
    an empty one. Replicated (DDP) values are taken as they are on ``rank``. To resume, load it with
    :func:`frostline.load_trainable_state_dict` into the model frozen the same way, before ``fully_shard``.

    Args:
        model (nn.Module): the model (FSDP2-sharded, DDP-wrapped or plain).
        buffers (bool): also the persistent buffers of modules that train, as in the one-process version.
        rank (int): the global rank that receives the dictionary.
        cpu_offload (bool): move the gathered tensors to the CPU (typical before saving); otherwise they stay on
            the parameters' device.

    Returns:
        dict[str, Tensor]: full tensors on ``rank``, in the key format of the one-process version.

    Example (one process here; under torchrun every rank calls it, after ``fully_shard``):
        >>> import torch.nn as nn, torch.distributed as dist, frostline
        >>> dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
        >>> model = frostline.freeze(nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 1)), "0")
        >>> _ = frostline.freeze(model, "1.weight", rows=[0], dim=1)   # one input column frozen
        >>> sorted(frostline.distributed.trainable_state_dict(model))
        ['1.bias', '1.weight@rows1', '1.weight@values']
        >>> dist.destroy_process_group()
    """
    from ..checkpoint import trainable_state_dict as local_state_dict

    mine = not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == rank
    out = {}
    for key, value in local_state_dict(model, buffers=buffers).items():
        value = gathered(value)  # a DTensor: an all-gather over its mesh, on every rank in the same order
        if mine:
            out[key] = value.detach().to("cpu") if cpu_offload else value.detach()
    return out
