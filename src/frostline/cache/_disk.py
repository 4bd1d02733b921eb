"""A :class:`~frostline.FeatureCache`'s rows on disk, which other processes may read and fill at the same time.

Files in the store's directory, all listed in ``meta.json`` (the manifest: nothing else is ever deleted, and a
directory holding other files is refused):

* ``meta.json``: what the rows depend on (the prefix's key), their layout, how many are committed, the files;
* ``rows{j}-{g}.bin`` (one per output tensor), ``ids-{g}.bin``, ``hashes-{g}.bin`` (input hashes), and
  ``sums-{g}.bin``: a CRC-32 of every row of every rows file, and of its id and input hash; ``g`` counts the
  times the store started over, so a process still reading the old files never sees them shrink or vanish;
* ``frostline.lock``: an advisory ``flock``. Writers hold it exclusively; a process opens the files holding it
  shared.

A row is written, then its checksums, then the files are flushed, and only then does ``meta.json`` count it, so a
reader, which reads only counted rows, never sees a torn one; every row read is checked against its checksums.
Files are mapped read-only and never grown, shrunk or rewritten on open.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ..errors import CacheError
from ._store import _Layout

_META, _LOCK = "meta.json", "frostline.lock"
_OURS = {_META, _META + ".tmp", _LOCK}  # names the cache may leave beside the files its manifest lists
_WRITER = "frostline.FeatureCache"


class _DiskStore:
    """Rows in memory-mapped files under ``path`` (see the module docstring)."""

    lock_timeout = 60.0  # seconds a process waits for another one's lock before it refuses
    hash_values = None  # input hashes are read through stored_hashes, which checks their CRC-32

    def __init__(self, path: Path):
        try:
            import numpy  # noqa: F401
        except ImportError as exc:
            raise CacheError("store='disk' needs numpy: pip install numpy") from exc
        try:
            import fcntl  # noqa: F401
        except ImportError as exc:
            raise CacheError("store='disk' needs POSIX file locks (fcntl), which this platform lacks; use "
                             "store='memory'") from exc
        self.path = Path(path)
        self.path.mkdir(parents=True, exist_ok=True)
        if _META not in os.listdir(self.path):  # no cache was here: refuse anything else before making the lock
            self._refuse_foreign({})
        with self._locked(exclusive=False):  # no writer between reading the manifest and the listing
            meta = self._read_meta()
            self._refuse_foreign(meta)
            self._load(meta)

    # -- files ------------------------------------------------------------------------------------------------------
    def _read_meta(self) -> dict[str, Any]:
        file = self.path / _META
        try:
            text = file.read_text()
        except FileNotFoundError:
            return {}
        try:
            meta = json.loads(text)
        except ValueError as exc:
            raise CacheError(f"the disk store's {file} is damaged (not valid JSON: {exc}); its rows cannot be "
                             f"trusted. Delete {self.path} (it holds only the cache's files) or use another "
                             "path") from None
        if not isinstance(meta, dict) or (meta.get("writer") != _WRITER and not _legacy(meta)):
            raise CacheError(f"{file} was not written by frostline's FeatureCache; store='disk' needs an empty "
                             "or new directory (or one an earlier FeatureCache made)")
        return meta

    def _refuse_foreign(self, meta: dict) -> None:
        foreign = sorted(set(os.listdir(self.path)) - _OURS - set(_files(meta)))
        if foreign:
            more = f" and {len(foreign) - 5} more" if len(foreign) > 5 else ""
            raise CacheError(f"{self.path} holds files the feature cache did not create ({', '.join(foreign[:5])}"
                             f"{more}); it deletes what it made there, so it refuses a directory holding "
                             "anything else. Pass an empty or new directory as path=")

    def _write_meta(self) -> None:
        tmp = self.path / (_META + ".tmp")
        tmp.write_text(json.dumps(self.meta, indent=1))
        os.replace(tmp, self.path / _META)

    def _names(self, meta: dict | None = None) -> list[str]:
        """The data files of the current generation: rows per leaf, ids, hashes, sums."""
        meta = self.meta if meta is None else meta
        g = meta.get("generation", 0)
        return [f"rows{j}-{g}.bin" for j in range(len(meta.get("leaves", [])))] + \
            [f"ids-{g}.bin", f"hashes-{g}.bin", f"sums-{g}.bin"]

    def _sizes(self) -> list[int]:
        row_bytes = self._stored_layout().row_bytes
        return [*row_bytes, 8, 8, 4 * (len(row_bytes) + 1)]

    def _stored_layout(self) -> _Layout:
        """The rows' layout, known once the first rows were stored (the files exist only from then on)."""
        if self.layout is None:
            raise CacheError(f"the disk store at {self.path} holds no rows yet, so it has no files to size or "
                             "read; store rows first")
        return self.layout

    @contextlib.contextmanager
    def _locked(self, exclusive: bool) -> Iterator[None]:
        import fcntl

        fd = os.open(self.path / _LOCK, os.O_RDWR | os.O_CREAT, 0o644)
        deadline = time.monotonic() + self.lock_timeout
        try:
            while True:
                try:
                    fcntl.flock(fd, (fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH) | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() >= deadline:
                        raise CacheError(f"the disk store at {self.path} stayed locked ({self.path / _LOCK}) by "
                                         f"another process for {self.lock_timeout:g} s: another process is "
                                         "writing to it, or is stuck. Wait for it to finish, or give this "
                                         "process its own path") from None
                    time.sleep(0.005)
            yield
        finally:
            os.close(fd)  # releases the lock

    # -- opening ----------------------------------------------------------------------------------------------------
    def _load(self, meta: dict, known: int = 0) -> None:
        """Take ``meta`` (read under the lock) as the state: layout, maps of its files (read-only), and the index,
        of which rows ``[0, known)`` are already in ``self.index``."""
        import numpy as np

        if not known:
            self.index: dict[int, int] = {}  # sample id -> row
        self.meta, self.maps = meta, []
        leaves = meta.get("leaves") if not _legacy(meta) else None
        self.layout = _Layout([tuple(x["shape"]) for x in leaves], [getattr(torch, x["dtype"]) for x in leaves]) \
            if leaves else None
        cap = meta.get("capacity", 0)
        if self.layout is None or not cap:
            return
        count = meta["count"]
        maps = []
        for name, size in zip(self._names(), self._sizes(), strict=False):
            file = self.path / name
            try:
                found = file.stat().st_size
            except FileNotFoundError:
                raise CacheError(f"the disk store's {file} is missing: {self.path / _META} counts {count} rows "
                                 f"in it. Delete {self.path} (it holds only the cache's files) or use another "
                                 "path") from None
            if found < cap * size:
                raise CacheError(f"the disk store's {file} is truncated: expected at least {cap * size} bytes, "
                                 f"found {found}. Delete {self.path} (it holds only the cache's files) or use "
                                 "another path")
            maps.append(np.memmap(file, np.uint8, "r", shape=(cap, size)))
        *self.maps, ids, hashes, sums = maps
        self.ids, self.hashes = ids.view(np.int64)[:, 0], hashes.view(np.int64)[:, 0]
        self.sums = sums.view(np.uint32)
        self.index.update((int(i), known + k) for k, i in enumerate(self.ids[known:count]))

    def adopt(self, key: dict) -> int:
        """Use the rows on disk if they were computed for ``key``, else start over; return how many rows of
        another prefix were dropped."""
        with self._locked(exclusive=True):
            meta = self._read_meta()
            if meta.get("key") == key and not _legacy(meta):
                self._load(meta)
                return 0
            self._reset(meta, key)
            return meta.get("count", 0)

    def clear(self) -> None:
        with self._locked(exclusive=True):
            self._reset(self._read_meta(), self.meta.get("key", {}))

    def _reset(self, meta: dict, key: dict) -> None:
        """Start over with a new generation; delete the old files, and only them (under the lock)."""
        old = _files(meta)
        self.meta = {"writer": _WRITER, "format": 2, "key": key, "generation": meta.get("generation", 0) + 1,
                     "count": 0, "capacity": 0, "leaves": [], "files": old}
        self._write_meta()  # the old files stay listed until they are gone
        for name in old:
            (self.path / name).unlink(missing_ok=True)
        self.meta["files"] = []
        self._write_meta()
        self._load(self.meta)

    # -- writing ----------------------------------------------------------------------------------------------------
    def add(self, ids: list[int], hashes: Tensor, rows: list[Tensor]) -> None:
        import numpy as np

        host = [r.detach().cpu().contiguous().reshape(len(ids), -1).view(torch.uint8).numpy() for r in rows]
        host_hashes = hashes.cpu().numpy()  # device-to-host copies: filling syncs, cached steps do not
        with self._locked(exclusive=True):
            self._refresh()
            if self.layout is None:
                self.meta["leaves"] = [{"shape": list(r.shape[1:]), "dtype": str(r.dtype).removeprefix("torch.")}
                                       for r in rows]
                self._load(self.meta)
            self._stored_layout().check(rows)
            seen = set(self.index)  # rows another process stored meanwhile are not stored twice
            keep = []
            for k, i in enumerate(ids):
                if i not in seen:
                    seen.add(i)
                    keep.append(k)
            if not keep:
                return
            start, n = self.meta["count"], len(keep)
            if start + n > self.meta["capacity"]:
                self._grow(max(start + n, 2 * self.meta["capacity"], 64))
            sel = np.asarray(keep)
            data = [h[sel] for h in host]
            new_ids = np.asarray([ids[k] for k in keep], dtype=np.int64)
            new_hashes = host_hashes[sel].astype(np.int64)
            sums = np.column_stack([*([zlib.crc32(row) for row in d] for d in data),
                                    _key_sums(new_ids, new_hashes)]).astype(np.uint32)
            for name, size, block in zip(self._names(), self._sizes(), [*data, new_ids, new_hashes, sums], strict=False):
                fd = os.open(self.path / name, os.O_RDWR)
                try:
                    os.pwrite(fd, np.ascontiguousarray(block).tobytes(), start * size)  # sums after the rows
                    os.fsync(fd)
                finally:
                    os.close(fd)
            self.meta["count"] = start + n
            self._write_meta()  # only now is any of them counted
            self.index.update((int(i), start + k) for k, i in enumerate(new_ids))

    def _refresh(self) -> None:
        """Under the lock: take in what other processes did since this one last looked."""
        meta = self._read_meta()
        if meta.get("generation") != self.meta.get("generation") or meta.get("key") != self.meta.get("key"):
            if meta.get("key") != self.meta.get("key"):
                raise CacheError(f"another process started the disk store at {self.path} over for another prefix "
                                 "(other weights, model or upto) while this one used it; give each prefix its own "
                                 "path")
            self._load(meta)  # started over for this prefix: its rows are the ones that count now
        elif meta.get("count", 0) != self.meta.get("count", 0) or meta.get("capacity") != self.meta.get("capacity"):
            self._load(meta, known=self.meta.get("count", 0))  # rows another process added

    def _grow(self, cap: int) -> None:
        """Under the lock: list the files in the manifest, make or lengthen them (never shorten), then count."""
        names = self._names()
        self.meta["files"] = sorted(set(self.meta["files"]) | set(names))
        self._write_meta()
        for name, size in zip(names, self._sizes(), strict=False):
            fd = os.open(self.path / name, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                if os.fstat(fd).st_size < cap * size:
                    os.ftruncate(fd, cap * size)
            finally:
                os.close(fd)
        self.meta["capacity"] = cap
        self._write_meta()
        self._load(self.meta, known=self.meta["count"])

    # -- reading ----------------------------------------------------------------------------------------------------
    def read(self, slots: list[int], device: torch.device) -> list[Tensor]:
        out = []
        layout = self._stored_layout()
        for j, (mm, shape, dtype) in enumerate(zip(self.maps, layout.shapes, layout.dtypes, strict=False)):
            block = mm[slots]
            self._verify(slots, j, [zlib.crc32(row) for row in block], str(self.path / self._names()[j]))
            host = torch.from_numpy(block).view(dtype).reshape(len(slots), *shape)
            out.append(host.pin_memory().to(device, non_blocking=True) if device.type == "cuda" else host.to(device))
        return out

    def stored_hashes(self, slots: list[int], device: torch.device) -> Tensor:
        hashes = self.hashes[slots]
        names = self._names()
        self._verify(slots, len(self.maps), _key_sums(self.ids[slots], hashes),
                     f"{self.path / names[-3]} or {names[-2]} (sample ids and input hashes)")
        return torch.from_numpy(hashes).to(device)

    def _verify(self, slots: list[int], column: int, sums: list[int], what: str) -> None:
        import numpy as np

        bad = np.flatnonzero(self.sums[slots, column] != np.asarray(sums, dtype=np.uint32))
        if len(bad):
            slot = slots[bad[0]]
            raise CacheError(f"the disk store is damaged: {what}, row {slot} (sample id "
                             f"{int(self.ids[slot])}), does not match its checksum in {self._names()[-1]} "
                             f"({len(bad)} of the {len(slots)} rows read): the files were changed outside "
                             "frostline or the disk is failing. Call cache.clear() to compute the rows again, or "
                             f"delete {self.path}")

    def nbytes(self) -> int:
        return self.meta.get("count", 0) * sum(self.layout.row_bytes) if self.layout else 0


def _key_sums(ids: Any, hashes: Any) -> list[int]:
    """A CRC-32 of each row's id and input hash."""
    import numpy as np

    return [zlib.crc32(row) for row in np.column_stack([ids, hashes]).astype(np.int64)]


def _legacy(meta: dict) -> bool:
    """A store an earlier FeatureCache wrote (format 1: no checksums, no manifest): its rows are never served."""
    return meta.get("format") == 1 and "key" in meta and "writer" not in meta


def _files(meta: dict) -> list[str]:
    if _legacy(meta):  # format 1 named its files so: they are the cache's to delete
        return [f"rows{j}.bin" for j in range(len(meta.get("leaves", [])))] + ["ids.bin", "hashes.bin"]
    return list(meta.get("files", []))
