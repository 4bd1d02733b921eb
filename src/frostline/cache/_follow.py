"""A :class:`~frostline.FeatureCache` that follows a schedule's frozen prefix: ``FeatureCache(model, upto=schedule)``.

It keeps one cache per depth the prefix had, shallow to deep, and reads ``schedule.frozen_upto()`` when the
schedule's frozen groups change. Before anything is frozen it runs the model. When the prefix grows, a batch whose
rows are stored at a shallower depth runs the model with that depth's rows served (its prefix skipped) while the
deeper cache stores its rows: only the newly frozen blocks run on the stored rows, with this call's other inputs
(attention mask and so on: the same sample's), once. Rows are never recomputed from the input unless a batch holds
samples no depth has stored. A shallower depth is dropped once the deeper one holds every sample it held; when
the prefix shrinks, the deeper depths' rows are dropped.
"""

from __future__ import annotations

from typing import Any, cast

from torch import nn

from ..errors import CacheError
from . import FeatureCache, _describe, _id_list


class _Following(FeatureCache):
    """``FeatureCache(model, upto=schedule)``: see the module docstring; ``upto`` is the schedule's prefix now."""

    def __init__(self, model: nn.Module, upto: Any, *, store: str = "memory", path: Any = None,
                 progress: bool | None = None, check_every: int = 64) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
        if store != "memory" or path is not None:
            raise ValueError("a FeatureCache that follows a schedule keeps its rows in memory (one store per "
                             f"depth of the prefix): pass store='memory' and no path, got store={store!r}")
        if check_every < 1:
            raise ValueError(f"check_every must be at least 1, got {check_every}")
        self.model, self.schedule, self.store, self.path = model, upto, "memory", None
        self.progress, self.check_every = progress, check_every
        self.upto: str | None = None  # where the schedule's frozen prefix ends now (None: nothing frozen)
        self.advanced = 0  # batches whose rows were advanced from a shallower depth
        self._depths: list[FeatureCache] = []  # shallow to deep; the last ends at self.upto
        self._gone = 0  # invalidations of depths since dropped
        self._key: tuple | None = None
        self._order = {n: k for k, (n, _) in enumerate(model.named_modules())}

    @property
    def invalidations(self) -> int:  # type: ignore[override]
        return self._gone + sum(c.invalidations for c in self._depths)

    def _follow(self) -> None:
        """Bring the depths to the schedule's prefix; reads ``frozen_upto`` only when its frozen groups changed."""
        s = self.schedule
        key = (getattr(s, "_frozen_groups", None), getattr(s, "_groups", None))
        if self._key is not None and key[0] is self._key[0] and key[1] is self._key[1]:
            return
        self._key = key
        upto = s.frozen_upto()
        if upto == self.upto:
            return
        if upto is not None and upto not in self._order:
            raise CacheError(f"the schedule's frozen prefix ends at {upto!r}, which is no module of this model: "
                             "give the cache the model the schedule steps")
        # cast: a depth is a FeatureCache of a module name, never of a schedule
        while self._depths and (upto is None or self._order[cast(str, self._depths[-1].upto)] > self._order[upto]):
            self._pop(-1)  # the prefix shrank: rows of the deeper prefixes are dropped
        self.upto = upto
        if upto is not None and (not self._depths or self._depths[-1].upto != upto):
            deeper = FeatureCache(self.model, upto, progress=self.progress, check_every=self.check_every)
            deeper._below = list(self._depths)
            self._depths.append(deeper)

    def _pop(self, k: int) -> None:
        cache = self._depths.pop(k)
        self._gone += cache.invalidations
        cache.clear()

    def __call__(self, sample_ids: Any, *args: Any, **kwargs: Any) -> Any:
        self._follow()
        if not self._depths:
            return self.model(*args, **kwargs)
        top = self._depths[-1]
        if len(self._depths) == 1:
            return top(sample_ids, *args, **kwargs)
        ids = _id_list(sample_ids, _describe(args, kwargs)[0])
        if all(i in top._store.index for i in ids):
            return top(sample_ids, *args, **kwargs)
        for k in range(len(self._depths) - 2, -1, -1):
            below = self._depths[k]
            if not all(i in below._store.index for i in ids):
                continue
            batch, sig, device, ids, hashes, slots = below._lookup(sample_ids, args, kwargs)
            plan = below._plans.get(sig)
            if plan is None or not plan.verified or None in slots or below._modes(plan) not in below._modes_ok:
                continue
            below._check_inputs(ids, slots, hashes)
            with below._patched(plan, slots, batch, device):  # its prefix skipped: only the new blocks run
                out = top(sample_ids, *args, **kwargs)
            self.advanced += 1
            self._prune()
            return out
        return top(sample_ids, *args, **kwargs)  # samples no depth holds: computed from the input

    def _prune(self) -> None:
        """Drop the shallower depths whose every sample the deepest holds."""
        held = self._depths[-1]._store.index
        for k in range(len(self._depths) - 2, -1, -1):
            index = self._depths[k]._store.index
            if len(index) <= len(held) and all(i in held for i in index):
                self._pop(k)

    def fill(self, batches: Any, *, total: int | None = None, progress: bool | None = None) -> int:
        self._follow()
        if not self._depths:
            raise CacheError("the schedule has frozen no prefix yet, so there is nothing to cache: fill after a "
                             "step that froze the first group, or just call the cache (it runs the model)")
        return self._depths[-1].fill(batches, total=total, progress=progress)

    def clear(self) -> None:
        for cache in self._depths:
            cache.clear()

    def __len__(self) -> int:
        return len(self._depths[-1]) if self._depths else 0

    @property
    def bytes_per_sample(self) -> int:
        return self._depths[-1].bytes_per_sample if self._depths else 0

    @property
    def nbytes(self) -> int:
        return sum(c.nbytes for c in self._depths)

    def __repr__(self) -> str:
        from .._table import human_bytes

        return (f"FeatureCache(upto={type(self.schedule).__name__} (now {self.upto!r}), store='memory', "
                f"samples={len(self)}, depths={len(self._depths)}, {human_bytes(self.nbytes)})")
