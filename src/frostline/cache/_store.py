"""Where a :class:`~frostline.FeatureCache` keeps its rows in memory (on disk: ``_disk``), and the device-side
hashes that tie each stored row to the input it came from."""

from __future__ import annotations

from array import array
from dataclasses import dataclass

import torch
from torch import Tensor

from .._tensor import int_view, wrap_int64
from ..errors import CacheError


def _as_ints(t: Tensor) -> Tensor:
    return int_view(t).long()


class _Hasher:
    """A 64-bit hash per row: the dot product of the row's bits with fixed random odd integers, on its device."""

    def __init__(self) -> None:
        self._weights: dict[tuple[int, torch.device], Tensor] = {}
        self._cpu: dict[tuple, tuple[Tensor, list[Tensor]]] = {}

    def _w(self, n: int, device: torch.device) -> Tensor:
        if (n, device) not in self._weights:  # fixed seed: hashes stored on disk stay comparable after a restart
            g = torch.Generator().manual_seed(0x5EED0000 + n)
            w = torch.randint(-(2**62), 2**62, (n,), generator=g, dtype=torch.int64) | 1
            self._weights[(n, device)] = w.to(device)
        return self._weights[(n, device)]

    def rows(self, tensors: list[Tensor], batch: int, salt: int = 0) -> Tensor:
        """``h = salt + sum over tensors i of (x_i @ w_i) * 1_000_003 ** (later tensors)``, wrapping int64: for each
        tensor its rows' bits as integers ``x_i``, ``w_i`` the weights of its row width. On the CPU one ``addmv``
        per tensor with the powers folded into the weights (the same value, ints mod 2**64 being a ring)."""
        xs = [(t if t.dtype is torch.int64 and not t.requires_grad else _as_ints(t)) for t in tensors]
        xs = [x if x.dim() == 2 else x.reshape(batch, -1) for x in xs]
        if all(x.device.type == "cpu" and x.shape[1] for x in xs):
            salted, weights = self._folded(tuple(x.shape[1] for x in xs), salt)
            h = torch.addmv(salted, xs[0], weights[0])
            for x, w in zip(xs[1:], weights[1:], strict=True):
                h.addmv_(x, w)
            return h
        found: Tensor | None = None
        for x in xs:
            part = (x * self._w(x.shape[1], x.device)).sum(1)
            if found is None:
                found = part
            else:
                found = found.mul_(1_000_003).add_(
                    part if part.device == found.device else part.to(found.device, non_blocking=True))
        if found is None:
            raise CacheError("a batch without tensors has no rows to hash: pass the model's input tensors")
        return found.add_(salt)

    def _folded(self, widths: tuple[int, ...], salt: int) -> tuple[Tensor, list[Tensor]]:
        """The CPU weights of tensors of these row widths, each times its power of 1_000_003, and the salt as a
        tensor: made once per input signature."""
        key = (widths, salt)
        if key not in self._cpu:
            cpu = torch.device("cpu")
            powers = [wrap_int64(1_000_003 ** (len(widths) - 1 - k)) for k in range(len(widths))]
            self._cpu[key] = (torch.tensor(salt, dtype=torch.int64),
                              [self._w(n, cpu) * p for n, p in zip(widths, powers, strict=True)])
        return self._cpu[key]

    def content(self, t: Tensor, chunk: int = 4096) -> Tensor:
        """A 64-bit hash of a whole tensor (its values, in order), as a 0-d tensor on its device."""
        x = _as_ints(t).flatten()
        x = torch.cat([x, x.new_zeros(-x.numel() % chunk)]).reshape(-1, chunk)
        sums = (x * self._w(chunk, x.device)).sum(1)
        return (sums * self._w(len(sums), x.device)).sum() + t.numel()


def _index(positions: list[int], device: torch.device) -> Tensor:
    """An index tensor on ``device`` without stalling the host (pinned, non-blocking copy on CUDA)."""
    # from an array's buffer: a fifth of torch.tensor(list)'s cost, which a cached step pays once
    host = torch.frombuffer(array("q", positions), dtype=torch.int64) if positions else torch.empty(0, dtype=torch.int64)
    if device.type == "cuda":
        return host.pin_memory().to(device, non_blocking=True)
    return host.to(device)


# -- where rows live ----------------------------------------------------------------------------------------------
@dataclass
class _Layout:
    shapes: list[tuple[int, ...]]
    dtypes: list[torch.dtype]

    @property
    def row_bytes(self) -> list[int]:
        return [torch.Size(s).numel() * torch.empty((), dtype=d).element_size()
                for s, d in zip(self.shapes, self.dtypes, strict=False)]

    def check(self, rows: list[Tensor]) -> None:
        got = [(tuple(r.shape[1:]), r.dtype) for r in rows]
        if got != list(zip(self.shapes, self.dtypes, strict=False)):
            raise CacheError(f"this batch's prefix output rows are {got}, the stored ones "
                             f"{list(zip(self.shapes, self.dtypes, strict=False))}: every sample must give rows of one shape "
                             "and dtype (pad inputs to a fixed length)")


class _MemoryStore:
    """Rows in tensors on the device that computed them, grown by doubling."""

    def __init__(self) -> None:
        self.clear()

    def clear(self) -> None:
        self.index: dict[int, int] = {}
        self.layout: _Layout | None = None
        self.buffers: list[Tensor] = []
        self.hashes = torch.empty(0, dtype=torch.int64)  # the first add puts it on the rows' device
        self.hash_values: array | None = array("q")  # the hashes again while they live on the CPU: compared as ints
        self._last: dict[torch.device, tuple[list[int], Tensor]] = {}

    def add(self, ids: list[int], hashes: Tensor, rows: list[Tensor]) -> None:
        if self.layout is None:
            self.layout = _Layout([tuple(r.shape[1:]) for r in rows], [r.dtype for r in rows])
            self.buffers = [r.new_empty((0, *r.shape[1:])) for r in rows]
            self.hashes = hashes.new_empty(0)
        self.layout.check(rows)
        start, n = len(self.index), len(ids)
        if start + n > len(self.hashes):
            cap = max(start + n, 2 * len(self.hashes), 64)
            self.buffers = [_grown(b, cap, start) for b in self.buffers]
            self.hashes = _grown(self.hashes, cap, start)
        for buf, r in zip(self.buffers, rows, strict=False):
            buf[start:start + n] = r
        self.hashes[start:start + n] = hashes
        if self.hash_values is not None:
            if hashes.device.type == "cpu":
                self.hash_values[start:] = array("q", hashes.tolist())
            else:
                self.hash_values = None
        self.index.update((i, start + k) for k, i in enumerate(ids))

    def _slot_index(self, slots: list[int], device: torch.device) -> Tensor:
        """The index tensor of ``slots`` on ``device``, remembered: a call reads the rows and the hashes of the
        same slots, and a loop without shuffling repeats its batches."""
        last = self._last.get(device)
        if last is None or last[0] != slots:
            last = self._last[device] = (list(slots), _index(slots, device))
        return last[1]

    def read(self, slots: list[int], device: torch.device) -> list[Tensor]:
        index = self._slot_index(slots, self.buffers[0].device)
        return [b.index_select(0, index) for b in self.buffers]

    def stored_hashes(self, slots: list[int], device: torch.device) -> Tensor:
        return self.hashes.index_select(0, self._slot_index(slots, self.hashes.device))

    def nbytes(self) -> int:
        return len(self.index) * sum(self.layout.row_bytes) if self.layout else 0


def _grown(t: Tensor, cap: int, used: int) -> Tensor:
    out = t.new_empty((cap, *t.shape[1:]))
    out[:used] = t[:used]
    return out
