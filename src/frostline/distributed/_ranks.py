"""What no single rank can see: the frozen set and the replicas' values compared across ranks (``audit_ranks``).

Each rank describes its model in a small table (per logical parameter: frozen, trainable, or partial with a
fingerprint of its mask; for DDP-replicated models also a fingerprint of the values); one ``all_gather_object``
brings every table to every rank, so all ranks compute, and return, the same findings.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

from .._state import get_partial, named_logical_parameters
from .._tensor import FingerprintWeights, fingerprint, is_dtensor
from ._wrap import _require_process_group, _wrappers_of

if TYPE_CHECKING:
    from ..audit import Finding, Findings, Severity


def _prints(tensors: list[Tensor]) -> list[str]:
    """A short hex fingerprint of each tensor's bits (:func:`frostline._tensor.fingerprint`: ``-0.0`` differs from
    ``0.0``, an unchanged NaN does not), fetched with one host sync (audits only, never the step path)."""
    if not tensors:
        return []
    weights = FingerprintWeights()
    sums = torch.stack([fingerprint(t, weights).to(tensors[0].device) for t in tensors]).tolist()
    return ["".join(f"{v & (2**64 - 1):016x}" for v in pair) for pair in sums]


def _frozen_states(model: nn.Module) -> dict[str, str]:
    """Per logical parameter: ``"frozen"``, ``"trainable"`` or ``"partial (<strategy>, mask <fingerprint>)"``."""
    states, masks = {}, []
    for name, tensor in named_logical_parameters(model):
        found = get_partial(model, name)
        if found is not None:
            masks.append((name, found))
        states[name] = "trainable" if tensor.requires_grad else "frozen"
    for (name, found), mask in zip(masks, _prints([m.frozen_mask() for _, m in masks]), strict=False):
        states[name] = f"partial ({found.strategy}, mask {mask[:12]})"
    return states


def _value_prints(model: nn.Module) -> dict[str, str]:
    """Fingerprints of the replicated (not sharded) logical parameters' values."""
    named = [(n, t, get_partial(model, n)) for n, t in named_logical_parameters(model) if not is_dtensor(t)]
    return dict(zip([n for n, _, _ in named], _prints([p.full() if p is not None else t for _, t, p in named]), strict=False))


def _gather(payload: Any, group: dist.ProcessGroup | None) -> list[Any]:
    gathered: list[Any] = [None] * dist.get_world_size(group)
    dist.all_gather_object(gathered, payload, group=group)
    return gathered


def _ranks(group: dist.ProcessGroup | None) -> list[int]:
    return dist.get_process_group_ranks(group) if group is not None else list(range(dist.get_world_size()))


def _differing(tables: list[dict[str, str]], ranks: list[int],
               label: Callable[[str], str] = str) -> tuple[list[str], str]:
    """Names whose entry differs between ranks, and up to three examples ("name: x on ranks 0, y on rank 1")."""
    names = list(dict.fromkeys(n for t in tables for n in t))
    differing = [n for n in names if len({t.get(n, "absent") for t in tables}) > 1]
    examples = []
    for name in differing[:3]:
        by_value: dict[str, list[str]] = {}
        for rank, table in zip(ranks, tables, strict=False):
            by_value.setdefault(table.get(name, "absent"), []).append(str(rank))
        sides = [f"{label(v)} on rank{'s' if len(r) > 1 else ''} {', '.join(r)}"
                 for v, r in by_value.items()]
        examples.append(f"{name}: {' vs '.join(sides)}")
    return differing, "; ".join(examples)


def _disagreement(gathered: list[Any], ranks: list[int]) -> list[Finding]:
    from ..audit import Finding

    differing, examples = _differing([states for states, _ in gathered], ranks)
    if not differing:
        return []
    return [Finding("ranks-disagree", "error", differing,
                    f"ranks disagree on what is frozen for {len(differing)} parameters ({examples}): DDP would "
                    "build different gradient buckets on each rank (a hang, or gradients of one parameter "
                    "averaged with another's), and the replicas would not train the same model",
                    "run the same frostline.freeze calls on every rank, before wrapping (look for rank-dependent "
                    "code or configuration); frostline.distributed.ddp checks this when it wraps")]


def _diverged(gathered: list[Any], ranks: list[int]) -> list[Finding]:
    from ..audit import Finding

    prints = [values for _, values in gathered]
    if any(p is None for p in prints):
        return []
    differing, examples = _differing(prints, ranks, lambda v: f"values {v[:12]}")
    if not differing:
        return []
    return [Finding("replicas-differ", "error", differing,
                    f"{len(differing)} parameters differ between the data-parallel replicas ({examples}); DDP keeps "
                    "them bit-identical unless something trains outside its buckets (made trainable after "
                    "wrapping) or changes them on one rank only",
                    "change the frozen set only with frostline.freeze/unfreeze, before wrapping; a new wrapper "
                    "broadcasts rank 0's parameters, which brings the replicas back together")]


def _stale_buckets(wrappers: list[tuple[DistributedDataParallel, dict[int, str] | None]]) -> list[Finding]:
    from ..audit import Finding

    found = []
    for wrapper, bucketed in wrappers:
        if bucketed is None:
            continue
        named = {id(p): n for n, p in wrapper.module.named_parameters()}
        training = {id(p) for p in wrapper.module.parameters() if p.requires_grad}
        outside = [n for i, n in named.items() if i in training and i not in bucketed]
        stalled = [n for i, n in bucketed.items() if i not in training]
        if not outside and not stalled:
            continue
        parts = []
        if outside:
            parts.append(f"{len(outside)} parameters train but are in no gradient bucket, so each replica trains "
                         "them on its own gradients and the replicas drift apart")
        if stalled:
            parts.append(f"{len(stalled)} parameters are in a bucket but no longer train"
                         + ("" if wrapper.find_unused_parameters else
                            ", so the next step fails with 'Expected to have finished reduction'"))
        severity: Severity = "error" if outside or not wrapper.find_unused_parameters else "warning"
        found.append(Finding("ddp-stale-buckets", severity, outside + stalled,
                             f"the trainable set changed after DistributedDataParallel was built: {'; '.join(parts)}",
                             "drop the wrapper and wrap again (DDP buckets what trains when it is built); "
                             "frostline.freeze/unfreeze refuse such changes while a wrapper is alive"))
    return found


def _unused_search(model: nn.Module, wrappers: list[tuple[DistributedDataParallel, Any]]) -> list[Finding]:
    from ..audit import Finding

    searching = [w for w, _ in wrappers if w.find_unused_parameters]
    frozen = [n for n, t in named_logical_parameters(model) if not t.requires_grad]
    if not searching or not frozen:
        return []
    return [Finding("ddp-find-unused-parameters", "info", frozen,
                    "DistributedDataParallel was built with find_unused_parameters=True, which walks the autograd "
                    "graph after every forward; frozen parameters are in no bucket and never need it",
                    "build it with find_unused_parameters=False, unless some trainable parameter is really unused")]


def audit_ranks(model: nn.Module, group: dist.ProcessGroup | None = None) -> Findings:
    """Check, across ranks, what no single rank can see; every rank gets the same findings. A collective.

    Findings (``code``): ``ranks-disagree`` (ranks freeze different parameters or elements), ``replicas-differ``
    (a DDP-wrapped model whose parameters are no longer bit-identical across ranks), ``ddp-stale-buckets`` (the
    trainable set changed behind a live DDP wrapper's back, e.g. by setting ``requires_grad`` directly),
    ``ddp-find-unused-parameters`` (info: frozen parameters never need it). Per-rank checks stay with
    :func:`frostline.audit` and :func:`frostline.guard`, run on each rank.

    Args:
        model (nn.Module): the model on this rank (the DDP wrapper, or the module it wraps).
        group: the process group to compare over; default the whole world.

    Returns:
        Findings: a list of :class:`frostline.Finding`, errors first; ``str()`` is a table.

    Raises:
        DistributedFreezeError: torch.distributed is not initialized.

    Example (one process here; under torchrun every rank calls it and gets the same findings):
        >>> import torch.nn as nn, torch.distributed as dist, frostline
        >>> dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
        >>> model = frostline.freeze(nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 1)), "0")
        >>> frostline.distributed.audit_ranks(model)
        []
        >>> dist.destroy_process_group()
    """
    from ..audit import Findings

    _require_process_group("frostline.distributed.audit_ranks")
    wrappers = _wrappers_of(model)
    gathered = _gather((_frozen_states(model), _value_prints(model) if wrappers else None), group)
    ranks = _ranks(group)
    found = _disagreement(gathered, ranks) + _diverged(gathered, ranks) + _stale_buckets(wrappers) \
        + _unused_search(model, wrappers)
    order = {"error": 0, "warning": 1, "info": 2}
    return Findings(sorted(found, key=lambda f: order[f.severity]))
