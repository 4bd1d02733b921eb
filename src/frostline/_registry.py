"""Registries: the partial strategies, lean families and schedules frostline knows, filled by those classes.

Each is a read-only mapping (a strategy's name, a module class or a schedule's class name -> what was registered
under it), in registration order, that everything listing or validating them reads. Only the owning package's
``register``/``unregister`` change it, and a second entry under a taken key is refused instead of silently
replacing the first.

>>> from frostline._registry import Registry
>>> colours = Registry("colour")
>>> colours.add("red", 1); colours.add("red", 1)   # the same again: nothing changes
>>> colours.add("red", 2)
Traceback (most recent call last):
  ...
frostline.errors.FrostlineError: colour 'red' is registered already (as 1); unregister it first or choose another name
>>> dict(colours), colours.remove("red"), len(colours)
({'red': 1}, 1, 0)
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Generic, TypeVar

from .errors import FrostlineError

K = TypeVar("K")  # hashable: a dict key
V = TypeVar("V")


class Registry(Mapping[K, V], Generic[K, V]):
    """Keys to registered values, in registration order; ``what`` names an entry in error messages."""

    def __init__(self, what: str):
        self.what = what
        self._entries: dict[K, V] = {}

    def add(self, key: K, value: V) -> None:
        """Register ``value`` under ``key``; the same value again does nothing, another one is refused."""
        if key in self._entries and self._entries[key] != value:
            raise FrostlineError(f"{self.what} {_show(key)} is registered already (as {_show(self._entries[key])}); "
                                 "unregister it first or choose another name")
        self._entries[key] = value

    def remove(self, key: K) -> V:
        """Forget ``key``; returns what was registered under it."""
        if key not in self._entries:
            known = ", ".join(map(_show, self._entries)) or "none"
            raise FrostlineError(f"no {self.what} {_show(key)} is registered (registered: {known})")
        return self._entries.pop(key)

    def __getitem__(self, key: K) -> V:
        return self._entries[key]

    def __iter__(self) -> Iterator[K]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:
        return f"Registry({self.what!r}: {', '.join(map(_show, self._entries))})"


def _show(thing: object) -> str:
    """A class by its qualified name (its repr names the module too), anything else by its repr."""
    return thing.__qualname__ if isinstance(thing, type) else repr(thing)
