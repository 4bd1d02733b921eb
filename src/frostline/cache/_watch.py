"""How a :class:`~frostline.FeatureCache` sees its prefix change: the metadata fingerprint (:class:`_Print`) and
the content check (:class:`_Watch`), both run at every call.

The fingerprint holds each prefix tensor, its version counter, data pointer and ``requires_grad``, and the
autocast state: a new tensor, an in-place op, ``.data =``, ``.to()`` or a freeze-state change alters it. A call
reads them in loops that run in C (``map`` over the ~100 tensors of a transformer's prefix) and compares lists,
with no per-tensor Python frame or tuple; which tensor changed is worked out only once something did.

A write that bypasses version counters (``p.data.mul_(2)``, ``p.detach().numpy()[...] *= 2``,
``p.data.copy_(ema)``) leaves every piece of metadata as it was, so calls also compare some of the prefix's values,
on their device, with the values the stored rows were computed from:

* every call: ``_BLOCK`` values from the middle of each of up to ``_GROUP`` tensors, in turn (every tensor's
  every ``ceil(tensors / _GROUP)`` calls), compared exactly with a copy. A write that changes any of them (a write
  to a whole tensor that changes its values) shows within that many calls, at the next one with at most
  ``_GROUP`` tensors;
* every ``_EVERY``-th call: the next slot (about ``_CHUNK`` values) of a rolling pass over every value of every
  tensor, hashed and compared with its hash. Any write shows within one pass, :attr:`_Watch.period` calls.

Reading every value at every call would cost far more than a cached step (a hash of all 22.7M values of
all-MiniLM-L6-v2 takes about 200 ms on one CPU thread, a cached linear-probe step about 1 ms); even reading a few
values of each of its 105 tensors costs a tenth of such a step, mostly in cache misses, hence the turns. On the
CPU a turn's values are compared as bytes, through numpy views made once (no torch op per call); the views are
read only after the fingerprint found every data pointer unchanged, so they never outlive their memory.

The hash of a slot is the sum of its values' bits, read as integers of at most 32 bits, times fixed odd 64-bit
weights, modulo 2**64: a change to one value always changes it (an odd weight times a nonzero difference below
2**32 is no multiple of 2**64); a change to several values leaves it unchanged with probability below 2**-32 (for
changes not crafted against the weights).
"""

from __future__ import annotations

import operator
from typing import Any

import torch
from torch import Tensor

from .._tensor import int_view

_BLOCK = 16  # values of a tensor compared at its turn
_GROUP = 16  # tensors per turn
_CHUNK = 65536  # values per slot of the rolling pass
_EVERY = 32  # calls per slot of the rolling pass
_VERSION, _GRAD = operator.attrgetter("_version"), operator.attrgetter("requires_grad")
_DATA_PTR = Tensor.data_ptr
# one C loop over a list of tensors (private, hence the fallback): a third cheaper than map(requires_grad)
_any_grad = getattr(torch._C, "_any_requires_grad", None) or (lambda ts: any(map(_GRAD, ts)))


def _autocast(device_type: str) -> tuple:
    return torch.is_autocast_enabled(device_type), torch.get_autocast_dtype(device_type)


class _Print:
    """The metadata of the prefix's tensors (``(name, owner dict, key)`` each) and the autocast state when the
    stored rows were computed; :meth:`same` compares them with now."""

    def __init__(self, names: list[str], dicts: list[dict], keys: list[str], device_type: str, none: Tensor):
        self.names, self.dicts, self.keys, self._none = names, dicts, keys, none
        self.tensors = self._now()  # all frozen (a plan is made only then), so one requiring grad now is a change
        self.versions = list(map(_VERSION, self.tensors))
        self.ptrs = list(map(_DATA_PTR, self.tensors))
        self.autocast = _autocast(device_type)

    def _now(self) -> list[Tensor]:
        return [self._none if t is None else t for t in map(dict.get, self.dicts, self.keys)]

    def same(self, device_type: str) -> bool:
        now: list[Any] = list(map(dict.get, self.dicts, self.keys))
        if not all(map(operator.is_, now, self.tensors)):
            now = self._now()  # a tensor set to None when this was made, or a new one
            if not all(map(operator.is_, now, self.tensors)):
                return False
        return (list(map(_VERSION, now)) == self.versions and list(map(_DATA_PTR, now)) == self.ptrs
                and not _any_grad(now) and _autocast(device_type) == self.autocast)

    def changed(self, device_type: str) -> str:
        """What differs (after :meth:`same` said something does)."""
        for name, t, was, version, ptr in zip(self.names, self._now(), self.tensors, self.versions, self.ptrs,
                                              strict=True):
            if t is not was or (t._version, t.data_ptr()) != (version, ptr) or t.requires_grad:
                return f"{name} changed (values, dtype, device or freeze state)"
        return "autocast changed"


def _host_bytes(views: list[Tensor]) -> tuple[list[Any], list[Any]] | None:
    """Buffers over CPU tensors' memory: memoryviews of contiguous ones, numpy views of the others (read with
    ``tobytes``); None without numpy or for a tensor numpy cannot view."""
    try:
        import numpy  # noqa: F401  (an optional dependency)

        arrays = [v.numpy() for v in views]
    except Exception:  # noqa: BLE001  (no numpy, or a tensor it cannot view: the torch comparison runs)
        return None
    return ([memoryview(a) for a in arrays if a.flags.c_contiguous],  # type: ignore[arg-type]
            [a for a in arrays if not a.flags.c_contiguous])


def _int_view(t: Tensor) -> Tensor:
    """``t``'s bits as integers of at most 32 bits, at least 1-D: a view, so later writes show through it."""
    ints = int_view(t, widest=4)
    return ints if ints.dim() else ints.view(1)


class _Part:
    """One tensor as integers, cut in units: values of its flat order when contiguous, else rows of dimension 0
    (a slice there is still a view)."""

    def __init__(self, name: str, t: Tensor):
        self.name, self.ints = name, _int_view(t)
        self.flat = self.ints.view(-1) if self.ints.is_contiguous() else None
        self.per_unit = 1 if self.flat is not None else self.ints[0].numel()
        self.units = len(self.flat) if self.flat is not None else len(self.ints)

    def piece(self, a: int, b: int) -> Tensor:
        return self.flat[a:b] if self.flat is not None else self.ints[a:b].reshape(-1)

    def ranges(self, values: int) -> list[tuple[int, int]]:
        step = max(1, values // self.per_unit)
        return [(a, min(a + step, self.units)) for a in range(0, self.units, step)]

    def middle(self, values: int) -> tuple[int, int]:
        """The middle one of :meth:`ranges` (without listing them all: an embedding has ~10^6 blocks of 16)."""
        step = max(1, values // self.per_unit)
        a = (-(-self.units // step) // 2) * step
        return a, min(a + step, self.units)


class _Watch:
    """Copies and hashes of the prefix tensors' values when the stored rows were computed, and the check of one
    call; one device (see :func:`watches`)."""

    def __init__(self, named: list[tuple[str, Tensor]]):
        self.parts = [_Part(n, t) for n, t in named if t.numel()]
        self.device = self.parts[0].ints.device
        mids = [(part, *part.middle(_BLOCK)) for part in self.parts]
        self._mids = [(part, a, b, part.piece(a, b).clone()) for part, a, b in mids]
        turns = -(-len(mids) // _GROUP)
        self.turns = [mids[t::turns] for t in range(turns)]  # each turn: views made once, others sliced each time
        self._views = [[p.piece(a, b) for p, a, b in turn if p.flat is not None] for turn in self.turns]
        self._copies = [[(p, a, b) for p, a, b in turn if p.flat is None] for turn in self.turns]
        self._snaps = [self._block(t).clone() for t in range(turns)]
        self._host = None  # per turn, buffers over the compared values and their bytes now (CPU only)
        if self.device.type == "cpu":
            host = [_host_bytes([p.ints[a:b] if p.flat is None else p.piece(a, b) for p, a, b in turn])
                    for turn in self.turns]
            found = [h for h in host if h is not None]
            if len(found) == len(host):
                self._host = [(*h, _joined(*h)) for h in found]
        self.slots: list[list[tuple[_Part, int, int]]] = [[]]  # small tensors share a slot
        for part in self.parts:
            for a, b in part.ranges(_CHUNK):
                if sum((y - x) * p.per_unit for p, x, y in self.slots[-1]) + (b - a) * part.per_unit > _CHUNK:
                    self.slots.append([])
                self.slots[-1].append((part, a, b))
        self.slots = [slot for slot in self.slots if slot]
        self._every = _EVERY
        self.period = _EVERY * len(self.slots)  # calls per pass over every value
        self._calls = 0
        g = torch.Generator().manual_seed(0xF120)
        longest = max(sum((b - a) * p.per_unit for p, a, b in slot) for slot in self.slots)
        self._w = (torch.randint(-(2**63), 2**63 - 1, (longest,), generator=g) | 1).to(self.device)
        self._expected = torch.stack([self._hash(k) for k in range(len(self.slots))]).tolist()  # one sync, here
        self._by_tensor = [self._shares(k) for k in range(len(self.slots))]  # to name a change

    def _block(self, t: int) -> Tensor:
        return torch.cat([*self._views[t], *(p.piece(a, b) for p, a, b in self._copies[t])])

    def _hash(self, k: int) -> Tensor:
        x = torch.cat([p.piece(a, b) for p, a, b in self.slots[k]])
        return (x * self._w[:len(x)]).sum()

    def _shares(self, k: int) -> list[int]:
        """Each tensor's share of slot ``k``'s hash (the weights it meets there)."""
        out, at = [], 0
        for p, a, b in self.slots[k]:
            x = p.piece(a, b)
            out.append((x * self._w[at:at + len(x)]).sum())
            at += len(x)
        return torch.stack(out).tolist()

    def changed(self) -> bool | Tensor:
        """Did a value this call compares change? On the CPU a bool; elsewhere a 0-d bool tensor on the device,
        so that the check does not wait for it."""
        calls, self._calls = self._calls, self._calls + 1
        turn = calls % len(self.turns)
        slot = calls // self._every % len(self.slots) if calls % self._every == 0 else None
        if self.device.type == "cpu":
            if self._host is not None:
                flat, strided, before = self._host[turn]
                differ = _joined(flat, strided) != before
            else:
                differ = not torch.equal(self._block(turn), self._snaps[turn])
            return differ or (
                slot is not None and bool(self._hash(slot) != self._expected[slot]))
        flag = (self._block(turn) != self._snaps[turn]).any()
        return flag if slot is None else flag | (self._hash(slot) != self._expected[slot])

    def which(self) -> tuple[str, bool] | None:
        """The name of a tensor whose values changed and whether its middle values did (then the change happened
        at most ``len(self.turns)`` calls ago), by a full pass: only once a change was seen. None: no change."""
        for part, a, b, before in self._mids:
            if not torch.equal(part.piece(a, b), before):
                return part.name, True
        for k, slot in enumerate(self.slots):
            if bool(self._hash(k) != self._expected[k]):
                changed = [p.name for (p, _, _), now, then in zip(slot, self._shares(k), self._by_tensor[k], strict=False)
                           if now != then]
                return (changed or [slot[0][0].name])[0], False
        return None


def _joined(flat: list[Any], strided: list[Any]) -> bytes:
    return b"".join([*flat, *(a.tobytes() for a in strided)]) if strided else b"".join(flat)


def watches(named: list[tuple[str, Tensor]]) -> list[_Watch]:
    """One :class:`_Watch` per device the tensors live on (tensors with no values need no watch)."""
    by_device: dict[torch.device, list[tuple[str, Tensor]]] = {}
    for name, t in named:
        if t.numel():
            by_device.setdefault(t.device, []).append((name, t))
    return [_Watch(group) for group in by_device.values()]
