"""Compute a frozen prefix once per sample, then train only the suffix: :class:`FeatureCache`.

The prefix is every module up to and including ``upto`` in forward order. The first time a sample is seen, the
model runs as usual and ``upto``'s output rows are stored under the sample's id. Once every row of a batch is
stored, the prefix is skipped: ``upto`` returns its stored rows and the prefix modules called before it return
placeholders of the right shape, so the model's own forward (attention-mask building, the suffix, the head) runs
unchanged. How the split is found and checked:

* one traced forward records which module calls finish before ``upto`` starts and which parameters and buffers
  the prefix reads; all must be frozen (not partially), and the prefix must not draw random numbers (dropout in
  training mode), use batch statistics (BatchNorm in training mode) or receive a tensor that requires grad;
* the first cached forward of each input shape is compared with the uncached one, so a suffix that reads other
  prefix outputs than ``upto``'s (a skip connection, ``output_hidden_states``) is refused instead of trained on
  placeholders;
* every call compares a fingerprint of the prefix (identity, version counter, data pointer, dtype and
  ``requires_grad`` of each tensor it reads, and the autocast state): a change drops the stored rows, with a
  warning;
* writes that leave all of that as it was (``p.data.mul_(2)``, a numpy view, ``p.data.copy_(ema)``) are caught by
  content (see ``_watch``): every call compares 16 values from the middle of each of up to 16 prefix tensors, in
  turn, with their values when the rows were computed, and every 32nd call hashes the next 65536 values of a
  rolling pass over all of them. A write that changes a whole tensor shows within ``ceil(tensors / 16)`` calls
  (at the next one with up to 16 tensors, or when it changes every tensor, as an EMA update does), any other within
  one pass (32 calls per 65536 values); then the rows are dropped, with a warning that says which tensor and since
  when rows may have been stale. On an accelerator the result is read every ``check_every`` calls;
* every call hashes the input rows on their device (an integer dot product) and compares the hash stored with
  each seen id: augmentation, or a changed input for a seen id, is refused. On CPU the check is immediate; on an
  accelerator the flags accumulate on the device and are read every ``check_every`` calls and after ``fill``.

>>> import torch, torch.nn as nn, frostline
>>> model = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 2))
>>> _ = frostline.freeze(model, ["0", "2"])
>>> cache = frostline.FeatureCache(model, upto="3")
>>> x, ids = torch.randn(4, 8), torch.arange(4)
>>> first = cache(ids, x)                      # computes and stores the prefix output of samples 0-3
>>> torch.allclose(cache(ids, x), model(x))    # now runs only the last Linear
True
>>> len(cache), cache.bytes_per_sample
(4, 128)
"""

from __future__ import annotations

import operator
import os
import sys
import warnings
import zlib
from collections.abc import Iterable, Sized
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, cast

import torch
from torch import Tensor, nn
from torch.utils import _pytree as pytree

from .. import _patch
from ..errors import CacheError
from ._disk import _DiskStore
from ._store import _Hasher, _index, _MemoryStore
from ._trace import _close, _lookup, _Out, _Plan, _rng_state, _same, _set_rng_state, _Trace
from ._watch import _Print, _Watch, watches

if TYPE_CHECKING:
    from ..schedules import Schedule

__all__ = ["FeatureCache", "CacheError", "with_ids"]

_MISSING = object()
_TRAINING, _TRAINING_ITEM = operator.attrgetter("training"), operator.itemgetter("training")


class _Stop(Exception):
    """Raised from ``upto``'s hook by ``fill``: the suffix need not run."""


def with_ids(dataset: Any) -> _WithIds:
    """Wrap a map-style dataset so item ``i`` becomes ``(i, *item)`` (or ``(i, item)``): the sample ids a
    :class:`FeatureCache` keys rows by, batched by any ``DataLoader``.

    >>> ds = with_ids([(10, "a"), (20, "b")])
    >>> ds[1], len(ds)
    ((1, 20, 'b'), 2)
    """
    return _WithIds(dataset)


class _WithIds(torch.utils.data.Dataset):
    def __init__(self, dataset: Any) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> tuple:
        item = self.dataset[index]
        return (index, *item) if isinstance(item, tuple) else (index, item)


# -- inputs: ids, row hashes, shapes ------------------------------------------------------------------------------
_CALL = ("FeatureCache is called as cache(sample_ids, *model_args): one integer id per row first (a dataset "
         "index, see frostline.with_ids), then what the model takes, e.g. cache(ids, x) where model(x) was")


def _no_ids(sample_ids: Any, args: tuple, kwargs: dict, leaves_checked: bool = False) -> None:
    """Refuse a call that looks like ``model(...)``: the first argument is not ids, or no model input follows."""
    if isinstance(sample_ids, Tensor) and (sample_ids.dim() != 1 or sample_ids.is_floating_point()
                                           or sample_ids.is_complex()):
        raise CacheError(f"the cache was called without sample ids: its first argument is a {sample_ids.dtype} "
                         f"tensor of shape {tuple(sample_ids.shape)}, not one integer id per row. {_CALL}")
    if isinstance(sample_ids, Tensor) and not leaves_checked and not any(
            isinstance(t, Tensor) for t in pytree.tree_leaves((args, kwargs))):
        raise CacheError(f"the cache was called without sample ids or without model inputs: it got one tensor "
                         f"(shape {tuple(sample_ids.shape)}) and nothing for the model. {_CALL}")


def _id_list(sample_ids: Any, batch: int) -> list[int]:
    if isinstance(sample_ids, Tensor):
        ids = sample_ids.tolist()  # a host sync when the ids live on an accelerator: keep them on the CPU
    else:
        try:
            ids = [operator.index(i) for i in sample_ids]
        except TypeError as exc:
            raise CacheError(f"sample_ids must be integers (one per row: a dataset index, see "
                             f"frostline.with_ids), got {sample_ids!r:.80}") from exc
    if len(ids) != batch:
        raise CacheError(f"{len(ids)} sample ids for a batch of {batch} rows: pass one id per row")
    return ids


def _flat_key(args: tuple, kwargs: dict) -> tuple | None:
    """What ``_describe``'s result depends on when every argument is a tensor (the usual call), else None."""
    values = (*args, *kwargs.values())
    if not all(isinstance(v, Tensor) for v in values):
        return None
    return (tuple(kwargs), *[(v.shape, v.dtype, v.device) for v in values])


def _describe(args: tuple, kwargs: dict) -> tuple[int, list[Tensor], str]:
    """The batch size, the input tensors, and a signature of everything but the rows' values."""
    leaves, spec = pytree.tree_flatten((args, kwargs))
    tensors = [t for t in leaves if isinstance(t, Tensor)]
    if not tensors:
        raise CacheError("the model inputs hold no tensor; FeatureCache keys the rows of batched tensor inputs")
    batch = tensors[0].shape[0] if tensors[0].dim() else 0
    for t in tensors:
        if t.dim() == 0 or t.shape[0] != batch:
            raise CacheError(f"every tensor input must be a batch of {batch} rows (dimension 0), got shape "
                             f"{tuple(t.shape)}; pass per-sample inputs only")
    parts = [f"{tuple(t.shape[1:])}:{t.dtype}:{t.device}" if isinstance(t, Tensor) else repr(t) for t in leaves]
    return batch, tensors, f"{spec}|{';'.join(parts)}"


def _progress_bar(total: int | None, enabled: bool | None, desc: str) -> Any:
    """A tqdm bar on stderr, or None: when asked not to, when stderr is not a terminal, or without tqdm."""
    if enabled is False or (enabled is None and not sys.stderr.isatty()):
        return None
    try:
        from tqdm import tqdm
    except ImportError:
        return None
    return tqdm(total=total, desc=desc, unit="batch", leave=False)


def _unpack(batch: Any) -> tuple[Any, tuple, dict]:
    if not isinstance(batch, (tuple, list)) or len(batch) < 2:
        raise CacheError(f"fill() takes batches of (sample_ids, *model_args[, kwargs dict]), got "
                         f"{type(batch).__name__}; e.g. cache.fill((ids, x) for ids, x, y in loader)")
    rest = list(batch[1:])
    kwargs = rest.pop() if isinstance(rest[-1], dict) else {}  # a trailing dict holds keyword arguments
    return batch[0], tuple(rest), kwargs


# -- the cache ----------------------------------------------------------------------------------------------------
class FeatureCache:
    """A drop-in for ``model`` that computes its frozen prefix (every module up to and including ``upto``) once per
    sample and afterwards runs only the trainable suffix.

    ``cache(sample_ids, *args, **kwargs)`` returns what ``model(*args, **kwargs)`` returns; ``sample_ids`` holds
    one integer per row of the batch that names the sample (a dataset index: see :func:`with_ids`). Inputs must
    be per-sample tensors (dimension 0 is the batch) and deterministic per id; pad sequences to a fixed length.

    Args:
        model (nn.Module): the model; everything the prefix computes with must be fully frozen, and the prefix
            deterministic (dropout and BatchNorm in eval behaviour, as :func:`frostline.freeze` keeps them).
        upto (str | Schedule): qualified name of the last prefix module, e.g. ``"encoder.layer.3"`` or
            ``"features"``; or a schedule (``AutoFreeze`` ...) whose frozen prefix the cache follows: it runs the
            model until a prefix is frozen, advances stored rows through the newly frozen blocks (once, not from
            the input) when the prefix grows, and drops the deeper rows when it shrinks (memory store only).
        store (str): ``"memory"`` (tensors on the device that computed them) or ``"disk"`` (memory-mapped files
            under ``path``, reused by a later process when the prefix's weights are the same; processes may fill
            one path together: writers take turns under a file lock, every row read is checked against its
            CRC-32).
        path: the directory of a disk store: empty or new, or one a FeatureCache made (it holds only the files
            its manifest lists, and deletes only those).
        progress (bool): show a progress bar in :meth:`fill` (default: when stderr is a terminal).
        check_every (int): on an accelerator, how many calls may pass before the input-change and content-check
            flags are read (each read waits for the device).

    Raises:
        CacheError: ``upto`` names no submodule; ``path`` holds files the cache did not make, or a damaged
            ``meta.json``; later, at a call: no sample ids, one id for two different inputs, the prefix is not
            fully frozen, not deterministic, cannot be cut at ``upto`` (its output has no batch dimension,
            ``upto`` runs twice, the suffix reads other prefix outputs), a seen sample's input changed, a disk
            store's file is missing, truncated or fails its checksum, or another process held its lock too long.
    """

    def __new__(cls, model: Any = None, upto: Any = None, *args: Any, **kwargs: Any) -> FeatureCache:
        if cls is FeatureCache and callable(getattr(upto, "frozen_upto", None)):  # a schedule: follow its prefix
            from ._follow import _Following

            return super().__new__(_Following)
        return super().__new__(cls)

    upto: str | None  # the last prefix module; None only while a schedule this cache follows has frozen no prefix

    def __init__(self, model: nn.Module, upto: str | Schedule, *, store: Literal["memory", "disk"] = "memory",
                 path: str | os.PathLike | None = None, progress: bool | None = None, check_every: int = 64) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
        if not isinstance(upto, str) or not upto:
            raise CacheError(f"upto must name a submodule of the model (e.g. 'encoder.layer.3'), got {upto!r}")
        names = [n for n, _ in model.named_modules() if n]
        if upto not in names:
            import difflib

            close = difflib.get_close_matches(upto, names, n=5, cutoff=0.3) or names[:5]
            raise CacheError(f"the model has no submodule {upto!r}; closest: {', '.join(close)}")
        if store not in ("memory", "disk"):
            raise ValueError(f"store must be 'memory' or 'disk', got {store!r}")
        if (store == "disk") != (path is not None):
            raise ValueError("store='disk' needs path= (a directory); store='memory' takes no path")
        if check_every < 1:
            raise ValueError(f"check_every must be at least 1, got {check_every}")
        self.model, self.upto, self.store, self.path = model, upto, store, path
        self.progress, self.check_every = progress, check_every
        self.invalidations = 0  # times the prefix changed and the stored rows were dropped
        self._upto = model.get_submodule(upto)
        self._store = _MemoryStore() if path is None else _DiskStore(Path(path))  # path comes with store="disk"
        self._plans: dict[str, _Plan] = {}
        self._modes_ok: set[tuple[bool, ...]] = set()  # training flags of the prefix checked to give the same rows
        self._print: _Print | None = None  # the prefix's fingerprint when the first plan was made
        self._watches: list[_Watch] = []  # and the hashes of its values
        self._stale: dict[int, Tensor] = {}  # content-check flags not read yet, by watch (accelerators)
        self._unread_stale = 0
        self._hasher = _Hasher()
        self._pending: Tensor | None = None  # input-change flags not read yet (accelerators)
        self._unread = 0
        self._sigs: dict[tuple, tuple[int, str, int]] = {}  # input signatures by shapes, dtypes and devices
        self._none = torch.empty(0)  # stands for a prefix tensor set to None, in the fingerprint
        self._below: list[FeatureCache] = []  # shallower caches this one advances rows from (see _follow)

    # -- public -----------------------------------------------------------------------------------------------------
    def __call__(self, sample_ids: Any, *args: Any, **kwargs: Any) -> Any:
        batch, sig, device, ids, hashes, slots = self._lookup(sample_ids, args, kwargs)
        plan = self._plans.get(sig)
        if plan is not None and plan.verified and None not in slots and self._modes(plan) in self._modes_ok:
            self._check_inputs(ids, slots, hashes)
            return self._cached_forward(plan, slots, batch, device, args, kwargs)
        return self._full_forward(ids, slots, hashes, sig, batch, device, args, kwargs)

    def fill(self, batches: Iterable, *, total: int | None = None, progress: bool | None = None) -> int:
        """Compute and store the prefix output of every sample in ``batches`` not stored yet (the suffix does not
        run); return how many were added.

        Each batch is ``(sample_ids, *model_args)``, with an optional trailing dict of keyword arguments, e.g.
        ``cache.fill(((ids, x) for ids, x, y in loader), total=len(loader))``.
        """
        if total is None and isinstance(batches, Sized):
            total = len(batches)
        bar = _progress_bar(total, self.progress if progress is None else progress, f"caching up to {self.upto}")
        added = 0
        try:
            for batch in batches:
                sample_ids, args, kwargs = _unpack(batch)
                added += self._fill_batch(sample_ids, args, kwargs)
                if bar is not None:
                    bar.update(1)
        finally:
            if bar is not None:
                bar.close()
        self._read_flags()
        if self._stale:
            self._read_stale()
        return added

    def clear(self) -> None:
        """Drop every stored row (a disk store's files too)."""
        self._store.clear()
        self._plans.clear()
        self._modes_ok.clear()
        self._print, self._watches, self._stale, self._unread_stale = None, [], {}, 0

    def __len__(self) -> int:
        """Samples stored."""
        return len(self._store.index)

    @property
    def bytes_per_sample(self) -> int:
        """Bytes of prefix output stored per sample (0 before the first)."""
        layout = self._store.layout
        return sum(layout.row_bytes) if layout else 0

    @property
    def nbytes(self) -> int:
        """Bytes of prefix output stored in all (ids and hashes add 16 bytes per sample)."""
        return self._store.nbytes()

    def __repr__(self) -> str:
        from .._table import human_bytes

        where = "'memory'" if self.store == "memory" else f"'disk', path={str(self.path)!r}"
        return (f"FeatureCache(upto={self.upto!r}, store={where}, samples={len(self)}, "
                f"{human_bytes(self.bytes_per_sample)}/sample, {human_bytes(self.nbytes)})")

    # -- checks -----------------------------------------------------------------------------------------------------
    def _fingerprint(self, plan: _Plan, device_type: str) -> _Print:
        # host-side metadata only: a new tensor, an in-place write (version), new storage (.data =, .to(dtype)),
        # or a freeze-state change each alter it
        return _Print([n for n, *_ in plan.tensors], plan.dicts, plan.locals, device_type, self._none)

    def _revalidate(self, device_type: str) -> None:
        """Drop everything stored when a tensor the prefix computes with changed (its metadata, or values the
        content check compares at this call), or the autocast state did."""
        if not self._plans or self._print is None:
            return
        if not self._print.same(device_type):
            return self._drop(self._print.changed(device_type))
        for k, watch in enumerate(self._watches):
            flag = watch.changed()
            if isinstance(flag, Tensor):  # an accelerator's: read every check_every calls, no sync per call
                self._stale[k] = flag | self._stale[k] if k in self._stale else flag
            elif flag:
                return self._drop(self._content_change(watch, late=False))
        if self._stale:
            self._unread_stale += 1
            if self._unread_stale >= self.check_every:
                self._read_stale()

    def _read_stale(self) -> None:
        stale, self._stale, self._unread_stale = self._stale, {}, 0
        for k, watch in enumerate(self._watches):
            flag = stale.get(k)
            if flag is not None and bool(flag):
                return self._drop(self._content_change(watch, late=True), stacklevel=6)

    def _content_change(self, watch: _Watch, late: bool) -> str:
        name, at_once = watch.which() or ("a prefix tensor", False)
        ago = (len(watch.turns) if at_once else watch.period) + (self.check_every if late else 0)
        when = ("since the last call" if ago == 1 else f"up to {ago} calls ago: the calls since may have served "
                "rows of the old values")
        return (f"{name} changed, in place and without a version counter bump (a write through .data, numpy or "
                f"another alias), {when}")

    def _drop(self, what: str, stacklevel: int = 5) -> None:
        warnings.warn(f"FeatureCache(upto={self.upto!r}): {what}; dropping {len(self)} stored samples, they will "
                      "be computed again", stacklevel=stacklevel)
        self.invalidations += 1
        self.clear()

    def _modes(self, plan: _Plan) -> tuple[bool, ...]:
        """The training flags of the prefix's modules whose flag can matter (see ``_Plan.mode_modules``)."""
        try:
            flags = tuple(map(_TRAINING_ITEM, plan.mode_dicts))  # a dict lookup each, not a Module attribute
            return flags + tuple(map(_TRAINING, plan.mode_others)) if plan.mode_others else flags
        except KeyError:  # a flag kept elsewhere than the instance dict
            return tuple(map(_TRAINING, plan.mode_modules))

    def _check_prefix(self, plan: _Plan) -> None:
        from .._state import partial_tensors

        for name, owner, local, is_param in plan.tensors:
            t = _lookup(owner, local, is_param)
            if t is not None and t.requires_grad:
                raise CacheError(f"the prefix up to {self.upto!r} is not fully frozen: {name} trains. Freeze it "
                                 f"(frostline.freeze(model, {name!r})) or cache at an earlier module")
        for name, module in plan.modules:
            if partial_tensors(module):
                raise CacheError(f"the prefix up to {self.upto!r} is not fully frozen: {name} is partially frozen "
                                 f"({', '.join(partial_tensors(module))}); cache at an earlier module")
            if module.training and isinstance(module, nn.modules.dropout._DropoutNd) and module.p > 0:
                raise CacheError(f"the prefix up to {self.upto!r} is stochastic: {name} is a dropout in training "
                                 "mode, so its output changes every epoch. Put the prefix in eval mode (.eval() on "
                                 "it after model.train()), or freeze it with frostline.freeze")
            if isinstance(module, nn.modules.batchnorm._BatchNorm) and (module.training
                                                                        or not module.track_running_stats):
                raise CacheError(f"the prefix up to {self.upto!r} normalizes with batch statistics in {name}, so a "
                                 "sample's output depends on its batch. Put the prefix in eval mode, or freeze it "
                                 "with frostline.freeze")

    def _stochastic(self, plan: _Plan, trace: _Trace | None) -> CacheError:
        names = {id(m): n for n, m in plan.modules}
        if trace is not None and trace.drew is not None:
            drew = trace.drew
            where = (f"{names.get(id(drew)) or 'the model'} ({type(drew).__name__}"
                     f"{', in training mode' if drew.training else ''}) draws random numbers")
        else:
            training = [n for n, m in plan.modules if m.training][:3]
            where = "it draws random numbers" + (f" (in training mode: {', '.join(training)} ...)" if training else "")
        return CacheError(f"the prefix up to {self.upto!r} is stochastic: {where}, so its output changes every "
                          "epoch. Put the prefix in eval mode (.eval() on it after model.train()) to cache it")

    def _check_inputs(self, ids: list[int], slots: list[int], hashes: Tensor) -> None:
        values = self._store.hash_values
        if values is not None and hashes.device.type == "cpu":  # as ints: no index tensor, no torch op
            if hashes.tolist() != list(map(values.__getitem__, slots)):
                raise CacheError(_changed([i for i, a, s in zip(ids, hashes.tolist(), slots, strict=True)
                                           if a != values[s]]))
            return
        stored = self._store.stored_hashes(slots, hashes.device)
        if hashes.device.type == "cpu":
            if not torch.equal(stored, hashes):
                changed = stored != hashes
                bad = [i for i, c in zip(ids, changed.tolist(), strict=False) if c]
                raise CacheError(_changed(bad))
            return
        flag = (stored != hashes).any()  # stays on the device: read every check_every calls
        self._pending = flag if self._pending is None else self._pending | flag
        self._unread += 1
        if self._unread >= self.check_every:
            self._read_flags()

    def _read_flags(self) -> None:
        pending, self._pending, self._unread = self._pending, None, 0
        if pending is not None and bool(pending):
            raise CacheError(_changed(None))

    def _disk_key(self, plan: _Plan) -> dict:
        """What a disk store's rows depend on, content included: compared when a process first traces."""
        named = [(n, t) for n, o, local, p in plan.tensors if (t := _lookup(o, local, p)) is not None]
        digest = [self._hasher.content(t).to(named[0][1].device) for _, t in named]
        return {"upto": self.upto, "model": type(self.model).__qualname__,
                "tensors": [[n, list(t.shape), str(t.dtype)] for n, t in named],
                "content": torch.stack(digest).tolist() if digest else []}  # one sync, once per process

    # -- running the model ------------------------------------------------------------------------------------------
    def _full_forward(self, ids: list[int], slots: list[int | None], hashes: Tensor, sig: str, batch: int,
                      device: torch.device, args: tuple, kwargs: dict) -> Any:
        """The model as usual; ``upto``'s rows of unseen samples are stored on the way."""
        rng = _rng_state(device)
        plan, out = self._watched(ids, slots, hashes, sig, batch, device, args, kwargs, stop=False)
        if not plan.verified:
            self._read_flags()  # a repeated id with two inputs fails the check below, for that reason
            self._verify(plan, ids, batch, device, args, kwargs, out, rng)
        self._modes_ok.add(self._modes(plan))
        return out

    def _lookup(self, sample_ids: Any, args: tuple, kwargs: dict) -> tuple:
        """A batch's size, input signature, device, ids, row hashes and stored slots (None: not stored), after
        dropping everything stored if the prefix changed."""
        key = _flat_key(args, kwargs)
        known = self._sigs.get(key) if key is not None else None
        _no_ids(sample_ids, args, kwargs, leaves_checked=known is not None)
        if known is None:
            batch, tensors, sig = _describe(args, kwargs)
            salt = zlib.crc32(sig.encode())
            if key is not None:
                self._sigs[key] = (batch, sig, salt)  # tensors only: the same shapes give the same signature
        else:
            (batch, sig, salt), tensors = known, [*args, *kwargs.values()]  # the order pytree flattens them in
        ids = _id_list(sample_ids, batch)
        device = tensors[0].device
        self._revalidate(device.type)
        hashes = self._hasher.rows(tensors, batch, salt)
        if len(set(ids)) < len(ids):
            self._check_repeats(ids, hashes)
        return batch, sig, device, ids, hashes, list(map(self._store.index.get, ids))

    def _check_repeats(self, ids: list[int], hashes: Tensor) -> None:
        """An id given to several rows of a batch must name one input (sampling with replacement), not several."""
        first: dict[int, int] = {}
        of = [first.setdefault(i, k) for k, i in enumerate(ids)]
        differ = hashes != hashes[_index(of, hashes.device)]
        if hashes.device.type != "cpu":  # read with the input-change flags
            self._pending = differ.any() if self._pending is None else self._pending | differ.any()
            return
        if bool(differ.any()):
            k = differ.tolist().index(True)
            raise CacheError(f"sample id {ids[k]} names rows {of[k]} and {k} of this batch, which hold different "
                             "inputs: an id must name one sample. Give every distinct input its own id (a dataset "
                             "index, see frostline.with_ids)")

    def _fill_batch(self, sample_ids: Any, args: tuple, kwargs: dict) -> int:
        batch, sig, device, ids, hashes, slots = self._lookup(sample_ids, args, kwargs)
        seen = [k for k, s in enumerate(slots) if s is not None]
        if seen:
            self._check_inputs([ids[k] for k in seen], [slots[k] for k in seen], hashes[_index(seen, hashes.device)])
        todo = list({i: k for k, i in reversed(list(enumerate(ids))) if slots[k] is None}.values())[::-1]
        if not todo:
            return 0
        sub = pytree.tree_map(lambda v: v[_index(todo, v.device)] if isinstance(v, Tensor) else v, (args, kwargs))
        with torch.no_grad():
            self._watched([ids[k] for k in todo], [None] * len(todo), hashes[_index(todo, hashes.device)], sig,
                          len(todo), device, sub[0], sub[1], stop=True)
        return len(todo)

    def _watched(self, ids, slots, hashes, sig, batch, device, args, kwargs, *, stop: bool) -> tuple[_Plan, Any]:
        """Run the model with a hook on ``upto`` that checks the prefix and stores new rows (and with a trace when
        this input signature has no plan yet); with ``stop``, end the forward there."""
        plan = self._plans.get(sig)
        if plan is not None:
            self._check_prefix(plan)
        trace = _Trace(self.model, self._upto, batch, device) if plan is None else None
        found: dict[str, Any] = {} if plan is None else {"plan": plan}  # "plan", and "ran" once upto ran
        rng = _rng_state(device)

        def at_upto(module: nn.Module, inputs: Any, output: Any) -> None:
            if "ran" in found:
                raise CacheError(f"{self.upto!r} runs more than once per forward; cache up to a module that runs "
                                 "once (a shared module cannot end a prefix)")
            found["ran"] = True
            if trace is not None:
                found["plan"] = self._make_plan(trace, output, batch)
                slots[:] = [self._store.index.get(i) for i in ids]  # a disk store of another prefix was reset
            if not _same(rng, _rng_state(device)):
                raise self._stochastic(found["plan"], trace)
            self._take_rows(found["plan"], output, ids, slots, hashes)
            if stop:
                raise _Stop

        handles = []
        try:
            if trace is not None:
                for module in self.model.modules():
                    handles.append(module.register_forward_pre_hook(trace.pre))
                    handles.append(module.register_forward_hook(trace.post))
            handles.append(self._upto.register_forward_hook(at_upto))
            with trace if trace is not None else _nothing():
                out = self.model(*args, **kwargs)
        except _Stop:
            out = None
        finally:
            for handle in handles:
                handle.remove()
        if "ran" not in found:
            raise CacheError(f"{self.upto!r} did not run in the model's forward; name a module the forward calls")
        plan = found["plan"]
        if trace is not None:
            if not self._plans:  # what _revalidate compares with: the first plan's tensors
                self._print = self._fingerprint(plan, device.type)
                self._watches = watches([(n, t) for n, o, local, p in plan.tensors
                                         if (t := _lookup(o, local, p)) is not None])
            self._plans[sig] = plan
        return plan, out

    def _make_plan(self, trace: _Trace, output: Any, batch: int) -> _Plan:
        upto_out = _Out.of(output, batch)
        flat = [leaf for leaf in upto_out.leaves if leaf[0] == "tensor"]
        if flat:
            raise CacheError(f"{self.upto!r} returns a tensor of shape {flat[0][1]} with no batch dimension of "
                             f"{batch} rows; cache up to a module whose outputs are per sample")
        if not any(leaf[0] == "rows" for leaf in upto_out.leaves):
            raise CacheError(f"{self.upto!r} returns no tensor; cache up to a module that returns features")
        names = {id(m): n for n, m in self.model.named_modules()}
        roots: dict[int, tuple[nn.Module, list[_Out]]] = {}
        for call in trace.roots or []:
            roots.setdefault(id(call.module), (call.module, []))[1].append(cast(_Out, call.out))  # set: it returned
        modules = {}
        for top in [*(m for m, _ in roots.values()), self._upto]:
            for sub_name, sub in top.named_modules():
                modules[id(sub)] = (f"{names[id(top)]}.{sub_name}".rstrip("."), sub)
        owned = [entry for entry in trace.owner.values() if id(entry[1]) in modules]
        # a shallower cache's prefix may run as placeholders in this trace: what it reads is this prefix's too
        below = [p for c in self._below for p in c._plans.values()]
        tensors = list({e[0]: e for e in [*owned, *trace.read.values(), *(e for p in below for e in p.tensors)]}
                       .values())
        for p in below:
            modules.update((id(m), (n, m)) for n, m in p.modules)
        plan = _Plan(list(roots.values()), upto_out, tensors, list(modules.values()), hooked=trace.hooked)
        self._check_prefix(plan)
        if isinstance(self._store, _DiskStore):
            dropped = self._store.adopt(self._disk_key(plan))
            if dropped:
                warnings.warn(f"FeatureCache: the disk store at {str(self.path)!r} held {dropped} rows of another "
                              "prefix (other weights, model or upto); starting it over", stacklevel=4)
        return plan

    def _take_rows(self, plan: _Plan, output: Any, ids: list[int], slots: list[int | None], hashes: Tensor) -> None:
        """Check ``upto``'s output, compare seen samples' inputs, store the rows of unseen ones."""
        leaves = pytree.tree_leaves(output)
        rows = [t for t in leaves if isinstance(t, Tensor)]
        if any(t.requires_grad for t in rows):
            raise CacheError(f"{self.upto!r}'s output requires grad: a trainable tensor or an input that requires "
                             "grad feeds the prefix. Freeze everything the prefix computes with")
        seen = [k for k, s in enumerate(slots) if s is not None]
        seen_slots = [s for s in slots if s is not None]  # where those rows are stored, in the same order
        if seen:
            self._check_inputs([ids[k] for k in seen], seen_slots, hashes[_index(seen, hashes.device)])
            if self._modes(plan) not in self._modes_ok:  # first time in this mode: do stored rows still hold?
                stored = self._store.read(seen_slots, rows[0].device)
                fresh = [r[_index(seen, r.device)] for r in rows]
                if not all(_close(a, b) for a, b in zip(fresh, stored, strict=False)):
                    raise CacheError(f"the prefix up to {self.upto!r} now computes other rows for samples it "
                                     "stored, though the tensors it reads did not change: its output depends on "
                                     "the training/eval mode or on state frostline cannot see. Call "
                                     "cache.clear(), or keep the prefix in one mode")
        new = list({ids[k]: k for k in reversed(range(len(ids))) if slots[k] is None}.items())[::-1]
        if new:
            pos = [k for _, k in new]
            self._store.add([i for i, _ in new], hashes[_index(pos, hashes.device)],
                            [r.detach()[_index(pos, r.device)] for r in rows])

    def _verify(self, plan: _Plan, ids: list[int], batch: int, device: torch.device, args: tuple, kwargs: dict,
                out: Any, rng: list[Tensor]) -> None:
        """Run the cached forward once with the RNG and buffers as the uncached one had them; refuse the split
        if the outputs differ (the suffix reads more of the prefix than ``upto``'s output)."""
        after = _rng_state(device)
        buffers = [(b, b._version, b.detach().clone()) for b in self.model.buffers()]
        _set_rng_state(rng, device)
        try:
            with torch.no_grad():
                again = self._cached_forward(plan, [self._store.index[i] for i in ids], batch, device, args, kwargs)
        finally:
            _set_rng_state(after, device)
            with torch.no_grad():
                for b, version, value in buffers:
                    if b._version != version:
                        b.copy_(value)
        flat_out, spec_out = pytree.tree_flatten(out)
        flat_again, spec_again = pytree.tree_flatten(again)
        if spec_out != spec_again or not all(_close(x, y) for x, y in zip(flat_out, flat_again, strict=False)):
            self._plans.clear()
            raise CacheError(f"the model's output depends on more of the prefix than {self.upto!r}'s output (a "
                             "skip connection, output_hidden_states, or a branch on prefix values), so the prefix "
                             "cannot be skipped there; cache up to a later module")
        plan.verified = True

    def _cached_forward(self, plan: _Plan, slots: list[int], batch: int, device: torch.device, args: tuple,
                        kwargs: dict) -> Any:
        """The model with ``upto`` returning stored rows and the prefix modules before it returning placeholders."""
        with self._patched(plan, slots, batch, device):
            return self.model(*args, **kwargs)

    def _patched(self, plan: _Plan, slots: list[int], batch: int, device: torch.device) -> _Patched:
        """Within (``with``): ``upto`` returns these stored rows and the prefix modules before it placeholders (a
        deeper cache of a schedule's prefix runs the model in here to advance rows through the newly frozen
        blocks)."""
        value = plan.upto_out.build(batch, self._store.read(slots, device))
        patched = plan.patched
        if patched is None or patched.previous is not None:  # the first, or the one made is in use
            patched = plan.patched = _Patched(plan, self._upto)
        patched.value, patched.batch, patched.done = value, batch, False
        patched.calls.clear()
        return patched


class _Patched(_patch.Swap):
    """Instance ``forward``s set on ``upto`` (returning ``value``) and on the prefix's root modules (placeholders
    built from what they returned when traced), removed on exit (:class:`frostline._patch.Swap`)."""

    def __init__(self, plan: _Plan, upto: nn.Module):
        self.value: Any = None
        self.batch, self.done = 0, False
        self.calls: dict[int, int] = {}  # calls of each placeholder module so far
        super().__init__([(m, self._placeholder(m, outs)) for m, outs in plan.roots] + [(upto, self._stored)])

    def _placeholder(self, module: nn.Module, outs: list[_Out]) -> Any:
        def forward(*a: Any, **k: Any) -> Any:
            if self.done:  # a prefix module the suffix calls again: its own forward (as it was on entry)
                return self.own[id(module)](*a, **k)
            n = self.calls[id(module)] = self.calls.get(id(module), -1) + 1
            return outs[min(n, len(outs) - 1)].build(self.batch)

        return forward

    def _stored(self, *a: Any, **k: Any) -> Any:
        self.done = True
        return self.value

    def __enter__(self) -> None:
        if len(self.pairs) > 1:
            self.own = {id(m): m.forward for m, _ in self.pairs}
        super().__enter__()

    def __exit__(self, *exc: Any) -> None:
        self.value = None  # rows not kept alive past the call
        super().__exit__(*exc)


class _nothing:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: Any) -> None:
        return None


def _changed(ids: list[int] | None) -> str:
    which = f"samples {ids[:5]}{' ...' if len(ids) > 5 else ''}" if ids else "a stored sample (in the last calls)"
    return (f"the input of {which} differs from when its prefix output was stored: random augmentation, or ids "
            "that do not name samples. Cache only deterministic inputs (augmentation belongs after the cached "
            "prefix), or give every distinct input its own id")
