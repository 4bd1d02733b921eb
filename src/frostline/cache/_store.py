"""Where a :class:`~frostline.FeatureCache` keeps its rows: in memory, or in a memory-mapped file on disk; and the
device-side hashes that tie each stored row to the input it came from."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ..errors import CacheError

_INTS = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}


def _as_ints(t: Tensor) -> Tensor:
    t = t.detach()
    if t.is_complex():
        t = torch.view_as_real(t)
    if t.dtype is torch.bool:
        t = t.view(torch.uint8)
    if t.dtype is not _INTS[t.element_size()]:
        t = t.view(_INTS[t.element_size()])
    return t.long()


class _Hasher:
    """A 64-bit hash per row: the dot product of the row's bits with fixed random odd integers, on its device."""

    def __init__(self) -> None:
        self._weights: dict[tuple[int, torch.device], Tensor] = {}

    def _w(self, n: int, device: torch.device) -> Tensor:
        if (n, device) not in self._weights:  # fixed seed: hashes stored on disk stay comparable after a restart
            g = torch.Generator().manual_seed(0x5EED0000 + n)
            w = torch.randint(-(2**62), 2**62, (n,), generator=g, dtype=torch.int64) | 1
            self._weights[(n, device)] = w.to(device)
        return self._weights[(n, device)]

    def rows(self, tensors: list[Tensor], batch: int, salt: int = 0) -> Tensor:
        h = None
        for t in tensors:
            x = _as_ints(t).reshape(batch, -1)
            part = (x * self._w(x.shape[1], x.device)).sum(1)
            h = part if h is None else h * 1_000_003 + part.to(h.device, non_blocking=True)
        return h + salt

    def content(self, t: Tensor, chunk: int = 4096) -> Tensor:
        """A 64-bit hash of a whole tensor (its values, in order), as a 0-d tensor on its device."""
        x = _as_ints(t).flatten()
        x = torch.cat([x, x.new_zeros(-x.numel() % chunk)]).reshape(-1, chunk)
        sums = (x * self._w(chunk, x.device)).sum(1)
        return (sums * self._w(len(sums), x.device)).sum() + t.numel()


def _index(positions: list[int], device: torch.device) -> Tensor:
    """An index tensor on ``device`` without stalling the host (pinned, non-blocking copy on CUDA)."""
    host = torch.tensor(positions, dtype=torch.int64)
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
                for s, d in zip(self.shapes, self.dtypes)]

    def check(self, rows: list[Tensor]) -> None:
        got = [(tuple(r.shape[1:]), r.dtype) for r in rows]
        if got != list(zip(self.shapes, self.dtypes)):
            raise CacheError(f"this batch's prefix output rows are {got}, the stored ones "
                             f"{list(zip(self.shapes, self.dtypes))}: every sample must give rows of one shape "
                             "and dtype (pad inputs to a fixed length)")


class _MemoryStore:
    """Rows in tensors on the device that computed them, grown by doubling."""

    def __init__(self) -> None:
        self.clear()

    def clear(self) -> None:
        self.index: dict[int, int] = {}
        self.layout: _Layout | None = None
        self.buffers: list[Tensor] = []
        self.hashes: Tensor | None = None

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
        for buf, r in zip(self.buffers, rows):
            buf[start:start + n] = r
        self.hashes[start:start + n] = hashes
        self.index.update((i, start + k) for k, i in enumerate(ids))

    def read(self, slots: list[int], device: torch.device) -> list[Tensor]:
        index = _index(slots, self.buffers[0].device)
        return [b.index_select(0, index) for b in self.buffers]

    def stored_hashes(self, slots: list[int], device: torch.device) -> Tensor:
        return self.hashes.index_select(0, _index(slots, self.hashes.device))

    def nbytes(self) -> int:
        return len(self.index) * sum(self.layout.row_bytes) if self.layout else 0


def _grown(t: Tensor, cap: int, used: int) -> Tensor:
    out = t.new_empty((cap, *t.shape[1:]))
    out[:used] = t[:used]
    return out


class _DiskStore:
    """Rows in raw memory-mapped files under ``path`` (one per output tensor, plus ids and hashes) and a
    ``meta.json`` that says what they hold; rows written are flushed before ``meta.json`` counts them."""

    def __init__(self, path: Path):
        try:
            import numpy  # noqa: F401
        except ImportError as exc:
            raise CacheError("store='disk' needs numpy: pip install numpy") from exc
        self.path = Path(path)
        self.path.mkdir(parents=True, exist_ok=True)
        meta_file = self.path / "meta.json"
        self.meta: dict[str, Any] = json.loads(meta_file.read_text()) if meta_file.is_file() else {}
        self._open()

    def _open(self) -> None:
        import numpy as np

        self.index, self.maps = {}, []
        leaves = self.meta.get("leaves")
        self.layout = _Layout([tuple(x["shape"]) for x in leaves], [getattr(torch, x["dtype"]) for x in leaves]) \
            if leaves else None
        cap = self.meta.get("capacity", 0)
        if self.layout is None or not cap:
            return
        self.maps = [np.memmap(self.path / f"rows{j}.bin", np.uint8, "r+", shape=(cap, nb))
                     for j, nb in enumerate(self.layout.row_bytes)]
        self.ids = np.memmap(self.path / "ids.bin", np.int64, "r+", shape=(cap,))
        self.hash_map = np.memmap(self.path / "hashes.bin", np.int64, "r+", shape=(cap,))
        self.index = {int(i): slot for slot, i in enumerate(self.ids[:self.meta["count"]])}

    def matches(self, key: dict) -> bool:
        return self.meta.get("key") == key

    def reset(self, key: dict) -> None:
        for f in self.path.glob("*.bin"):
            f.unlink()
        self.maps = []
        self.meta = {"format": 1, "key": key, "count": 0, "capacity": 0, "leaves": []}
        self._write_meta()
        self._open()

    def clear(self) -> None:
        self.reset(self.meta.get("key", {}))

    def _write_meta(self) -> None:
        tmp = self.path / "meta.json.tmp"
        tmp.write_text(json.dumps(self.meta, indent=1))
        os.replace(tmp, self.path / "meta.json")

    def add(self, ids: list[int], hashes: Tensor, rows: list[Tensor]) -> None:
        if self.layout is None:
            self.meta["leaves"] = [{"shape": list(r.shape[1:]), "dtype": str(r.dtype).removeprefix("torch.")}
                                   for r in rows]
            self._open()
        self.layout.check(rows)
        start, n = self.meta["count"], len(ids)
        if start + n > self.meta["capacity"]:
            self._grow(max(start + n, 2 * self.meta["capacity"], 64))
        for mm, r in zip(self.maps, rows):  # a device-to-host copy: filling syncs, cached steps do not
            mm[start:start + n] = r.detach().cpu().contiguous().reshape(n, -1).view(torch.uint8).numpy()
        self.ids[start:start + n] = ids
        self.hash_map[start:start + n] = hashes.cpu().numpy()
        for mm in (*self.maps, self.ids, self.hash_map):
            mm.flush()
        self.meta["count"] = start + n
        self._write_meta()
        self.index.update((i, start + k) for k, i in enumerate(ids))

    def _grow(self, cap: int) -> None:
        files = [f"rows{j}.bin" for j in range(len(self.layout.row_bytes))] + ["ids.bin", "hashes.bin"]
        sizes = [*self.layout.row_bytes, 8, 8]
        self.maps = []
        for name, size in zip(files, sizes):
            with open(self.path / name, "ab") as f:
                f.truncate(cap * size)
        self.meta["capacity"] = cap
        self._open()

    def read(self, slots: list[int], device: torch.device) -> list[Tensor]:
        out = []
        for mm, shape, dtype in zip(self.maps, self.layout.shapes, self.layout.dtypes):
            host = torch.from_numpy(mm[slots]).view(dtype).reshape(len(slots), *shape)
            out.append(host.pin_memory().to(device, non_blocking=True) if device.type == "cuda" else host.to(device))
        return out

    def stored_hashes(self, slots: list[int], device: torch.device) -> Tensor:
        return torch.from_numpy(self.hash_map[slots]).to(device)

    def nbytes(self) -> int:
        return self.meta["count"] * sum(self.layout.row_bytes) if self.layout else 0

