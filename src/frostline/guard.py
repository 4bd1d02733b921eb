"""Prove that frozen means frozen: record every frozen value once, check it later, bit for bit.

A snapshot records every fully frozen parameter, the frozen elements of partially frozen tensors, and every buffer
of a fully frozen module (BatchNorm running statistics, position ids). Nothing runs between ``snapshot`` and
``verify``, so guarding a training loop costs nothing per step. Comparison is on the raw bits, so ``-0.0`` vs
``0.0`` counts as a change and an unchanged NaN does not.

Three modes, by what they hold and what they cost (one CPU core of a shared 2-core EPYC, 256 MiB frozen):

- ``mode="copy"`` (the default) holds a copy of the recorded values on their own device (the bytes of the frozen
  elements, plus one byte per element of a partially frozen tensor for its mask), copies at about 1.2-1.9 GiB/s
  and reports how many elements changed and by how much.
- ``mode="hash"`` holds 32 bytes per tensor (64 for a partial one): a BLAKE2b digest of the raw bytes, keyed with
  a fresh random key per snapshot, so no change, accidental or crafted, passes short of breaking BLAKE2b. It
  hashes on the host: tensors on an accelerator are copied there in 16 MiB pieces (host syncs, fine for a
  snapshot, never done per step); about 0.5-0.9 GiB/s, so a 1 GiB frozen model takes 1-2 s to snapshot and as
  long to verify. It reports which tensors changed.
- ``mode="checksum"`` holds 16 bytes per tensor (32 for a partial one): two fixed, public, linear 64-bit
  weighted sums of the raw bits, on the tensors' own device (about 40 MiB of temporaries; 0.3-1.2 GiB/s here).
  One changed element always alters it and random damage almost surely does, but it is *not* tamper-proof: a
  change crafted to cancel in the sums (12 elements of a few hundred ulp) passes. Use it to catch bugs cheaply
  on an accelerator, not as proof.

>>> import torch, torch.nn as nn, frostline
>>> model = frostline.freeze(nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2), nn.Linear(2, 1)), ["0", "1"])
>>> with frostline.guard(model):
...     model(torch.randn(4, 2)).sum().backward()
>>> snap = frostline.snapshot(model)
>>> with torch.no_grad():
...     model[0].weight[0, 0] += 1.0
>>> snap.verify(model)  # doctest: +ELLIPSIS
Traceback (most recent call last):
  ...
frostline.errors.FrozenParameterChanged: 1 frozen tensor changed: 0.weight (1 of 4 elements, largest |difference| 1)...
"""

from __future__ import annotations

import contextlib
import hashlib
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal, cast

import torch
from torch import Tensor, nn

from ._state import FreezeState, get_partial, hidden_names, named_logical_parameters
from ._table import human_bytes, render
from ._tensor import FingerprintWeights, bits, digest, fingerprint, to_local
from .errors import FrozenParameterChanged

__all__ = ["snapshot", "Snapshot", "guard", "Change"]

Mode = Literal["copy", "hash", "checksum"]
_MODES = ("copy", "hash", "checksum")
_DIGEST = 32  # bytes of a keyed BLAKE2b digest


@dataclass(frozen=True)
class Change:
    """One recorded tensor that changed: elements changed (None in hash mode) of ``total``, the largest
    absolute difference (None in hash mode), and a note when it vanished or changed shape."""

    name: str
    changed: int | None
    total: int
    max_abs_diff: float | None
    note: str = ""


@dataclass
class _Record:
    kind: Literal["param", "buffer"]
    shape: torch.Size
    dtype: torch.dtype
    count: int  # elements recorded (a partial tensor's frozen ones)
    values: Tensor | bytes  # copy: the recorded values (flat for a partial tensor); hash/checksum: their print
    mask: Tensor | bytes | None = None  # partial tensors: the frozen mask (copy) or its print (hash/checksum)


def _digest(t: Tensor, key: bytes) -> bytes:
    return digest(t, key, _DIGEST)


class Snapshot:
    """Frozen values recorded by :func:`snapshot`; ``verify(model)`` checks them."""

    def __init__(self, mode: Mode, records: dict[str, _Record], key: bytes = b""):
        self.mode = mode
        self._records = records
        self._key = key  # hash mode: this snapshot's BLAKE2b key

    @property
    def names(self) -> list[str]:
        """Names of the recorded tensors (parameters under their logical name, then buffers)."""
        return list(self._records)

    @property
    def nbytes(self) -> int:
        """Bytes this snapshot holds."""
        held = [t for r in self._records.values() for t in (r.values, r.mask) if t is not None]
        return sum(len(t) if isinstance(t, bytes) else t.numel() * t.element_size() for t in held)

    def __repr__(self) -> str:
        return f"Snapshot(mode={self.mode!r}, tensors={len(self._records)}, holds {human_bytes(self.nbytes)})"

    def changes(self, model: nn.Module) -> list[Change]:
        """Every recorded tensor whose recorded values differ in ``model`` now (empty when nothing changed).

        For a partially frozen tensor, copy mode compares the elements that were frozen at snapshot time; hash
        and checksum modes compare the elements frozen now, and report a change when that set differs from the
        recorded one.
        """
        params = {name: to_local(t) for name, t in named_logical_parameters(model, remove_duplicate=False)}
        buffers = dict(model.named_buffers(remove_duplicate=False))
        found: dict[str, Change] = {}
        weights = FingerprintWeights()
        pending: list[tuple[str, _Record, Tensor]] = []
        for name, record in self._records.items():
            now = params.get(name) if record.kind == "param" else buffers.get(name)
            partial = get_partial(model, name) if record.kind == "param" and now is not None else None
            if partial is not None:
                now = partial.full()  # the effective values (gathered, for a tensor sharded by FSDP2)
            if now is None:
                found[name] = Change(name, None, record.count, None, f"the model has no {record.kind} {name} now")
            elif now.shape != record.shape or now.dtype != record.dtype:
                found[name] = Change(name, None, record.count, None, f"{record.dtype} {tuple(record.shape)} "
                                                                      f"became {now.dtype} {tuple(now.shape)}")
            else:
                current = now.detach()
                if record.mask is not None and self.mode != "copy":
                    mask = _frozen_mask(model, name, now)
                    if not self._same(self._print(mask, weights), record.mask):
                        found[name] = Change(name, None, record.count, None, "its set of frozen elements changed")
                        continue
                    current = current[mask]
                elif record.mask is not None:
                    current = current[cast(Tensor, record.mask)]  # copy mode: the mask itself
                pending.append((name, record, current))
        differs: list[bool] = []
        if self.mode == "hash":  # hashed on the host, one tensor after another
            differs = [_digest(now, self._key) != record.values for _, record, now in pending]
        elif pending:  # one host sync for all tensors, details only for the ones that changed
            differs = torch.stack([self._differs(record, now, weights) for _, record, now in pending]).tolist()
        for (name, record, now), changed in zip(pending, differs, strict=False):
            if changed:
                found[name] = self._describe(name, record, now)
        return [found[name] for name in self._records if name in found]

    def _print(self, t: Tensor, weights: FingerprintWeights) -> Tensor | bytes:
        return _digest(t, self._key) if self.mode == "hash" else fingerprint(t, weights)

    @staticmethod
    def _same(a: Tensor | bytes, b: Tensor | bytes) -> bool:
        return torch.equal(a, b) if isinstance(a, Tensor) and isinstance(b, Tensor) else a == b

    def _differs(self, record: _Record, now: Tensor, weights: FingerprintWeights) -> Tensor:
        values = cast(Tensor, record.values)  # checksum: its fingerprint; copy: the values (hash: bytes, not here)
        if self.mode == "checksum":
            return (fingerprint(now, weights) != values).any()
        return (bits(now) != bits(values)).any()

    def _describe(self, name: str, record: _Record, now: Tensor) -> Change:
        if self.mode != "copy":
            return Change(name, None, record.count, None, f"{self.mode} differs")
        old = cast(Tensor, record.values)  # copy mode: the values
        changed = (bits(now) != bits(old)).any(1).reshape(now.shape)
        if now.dtype == torch.bool:
            diff = 1.0
        else:
            wide = torch.complex128 if now.is_complex() else torch.float64
            diff = float((now[changed].to(wide) - old[changed].to(wide)).abs().max())
        return Change(name, int(changed.sum()), record.count, diff)

    def verify(self, model: nn.Module) -> None:
        """Raise :class:`frostline.FrozenParameterChanged` listing each recorded tensor that changed.

        The exception's ``changes`` attribute holds the list of :class:`Change`.
        """
        changes = self.changes(model)
        if changes:
            error = FrozenParameterChanged(_message(changes))
            error.changes = changes  # type: ignore[attr-defined]
            raise error


def _frozen_mask(model: nn.Module, name: str, tensor: Tensor) -> Tensor:
    partial = get_partial(model, name)
    if partial is not None:
        return partial.frozen_mask()
    return torch.full(tensor.shape, not tensor.requires_grad, dtype=torch.bool, device=tensor.device)


def _message(changes: list[Change]) -> str:
    def what(c: Change) -> str:
        if c.changed is None:
            return c.note
        return f"{c.changed} of {c.total} elements, largest |difference| {c.max_abs_diff:.4g}"

    head = f"{len(changes)} frozen tensor{'s' if len(changes) > 1 else ''} changed"
    hint = "frostline.audit(model, optimizer) names the usual causes"
    if len(changes) == 1:
        return f"{head}: {changes[0].name} ({what(changes[0])}); {hint}"
    rows = [[c.name, "-" if c.changed is None else str(c.changed), str(c.total),
             c.note if c.changed is None else f"{c.max_abs_diff:.4g}"] for c in changes]
    return f"{head}; {hint}:\n" + render(["tensor", "changed", "of", "largest |difference|"], rows)


def _records(model: nn.Module) -> dict[str, tuple[Literal["param", "buffer"], Tensor, Tensor | None]]:
    """What a snapshot records: (kind, tensor, frozen mask or None) by name, in model order."""
    out: dict[str, tuple[Literal["param", "buffer"], Tensor, Tensor | None]] = {}
    for name, tensor in named_logical_parameters(model):
        tensor = to_local(tensor)
        partial = get_partial(model, name)
        if partial is not None:
            out[name] = ("param", partial.full(), partial.frozen_mask())
        elif not tensor.requires_grad:
            out[name] = ("param", tensor, None)
    state = FreezeState(model)
    for module_name, module in state.modules.items():
        if not state.frozen[module_name]:
            continue
        internal = hidden_names(module)
        for local, buffer in module._buffers.items():
            full_name = f"{module_name}.{local}" if module_name else local
            if buffer is not None and local not in internal and full_name not in out:
                out[full_name] = ("buffer", buffer, None)
    return out


def snapshot(model: nn.Module, mode: Mode = "copy") -> Snapshot:
    """Record every frozen element of ``model`` and every buffer of its fully frozen modules.

    Args:
        model (nn.Module): the model, frozen as it will be trained.
        mode (str): ``"copy"`` (exact report: how many elements changed and by how much; memory = the recorded
            bytes), ``"hash"`` (keyed BLAKE2b: 32 bytes per tensor, hashed on the host, reports which tensors
            changed) or ``"checksum"`` (16 bytes per tensor on its device; catches accidents, not a change
            crafted to cancel). See the module docstring for what each costs.

    Returns:
        Snapshot: call ``.verify(model)`` later; ``.names`` and ``.nbytes`` say what it holds.

    Raises:
        ValueError: an unknown ``mode``.

    Example:
        >>> import torch.nn as nn, frostline
        >>> model = frostline.freeze(nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2)), "0")
        >>> frostline.snapshot(model, mode="hash")
        Snapshot(mode='hash', tensors=2, holds 64 B)
    """
    if mode not in _MODES:
        raise ValueError(f"mode must be 'copy' (exact diffs, holds a copy), 'hash' (keyed BLAKE2b, "
                         f"{_DIGEST} bytes per tensor) or 'checksum' (fast, catches accidents, not tampering), "
                         f"got {mode!r}")
    records, weights = {}, FingerprintWeights()
    key = secrets.token_bytes(hashlib.blake2b.MAX_KEY_SIZE) if mode == "hash" else b""
    for name, (kind, tensor, mask) in _records(model).items():
        values = tensor.detach() if mask is None else tensor.detach()[mask]
        stored: Tensor | bytes
        stored_mask: Tensor | bytes | None
        if mode == "copy":
            stored = values.clone() if mask is None else values  # indexing with a mask already copied
            stored_mask = None if mask is None else mask.clone()
        elif mode == "hash":
            stored = _digest(values, key)
            stored_mask = None if mask is None else _digest(mask, key)
        else:
            stored = fingerprint(values, weights)
            stored_mask = None if mask is None else fingerprint(mask, weights)
        records[name] = _Record(kind, tensor.shape, tensor.dtype, values.numel(), stored, stored_mask)
    return Snapshot(mode, records, key)


@contextlib.contextmanager
def guard(model: nn.Module, mode: Mode = "copy") -> Iterator[Snapshot]:
    """Snapshot ``model`` on entry and verify it on a normal exit (an exception inside is left to propagate).

    Example:
        >>> import torch, torch.nn as nn, frostline
        >>> model = frostline.freeze(nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 1)), "0")
        >>> opt = frostline.optimizer(model, torch.optim.AdamW, lr=0.1, weight_decay=0.1)
        >>> with frostline.guard(model, mode="hash") as snap:
        ...     model(torch.randn(3, 2)).sum().backward(); opt.step()
        >>> snap.names
        ['0.weight', '0.bias']
    """
    recorded = snapshot(model, mode)
    yield recorded
    recorded.verify(model)
