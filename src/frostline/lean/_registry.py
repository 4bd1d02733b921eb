"""The module classes lean freezing covers, filled by the family modules themselves (``register``).

Each family (``conv.py``, ``norm.py``, ``activation.py``, ``pool.py``, ``native.py``) registers, per module class
it covers, the lean forward (None where PyTorch's own forward already keeps the least: recorded, not replaced)
and what it keeps for backward; :mod:`frostline.lean` imports the families. A module is covered by the registered
class nearest to its own class along its MRO whose ``forward`` it still runs (a subclass with a ``forward`` of its
own is not covered).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

from torch import nn

from .._registry import Registry


class Cover(NamedTuple):
    forward: Callable | None  # called as forward(module, *args, **kwargs); None: PyTorch's own op is the least
    keeps: str  # what the module keeps for backward in its lean form (frostline.lean.keeps)


COVERS: Registry[type[nn.Module], Cover] = Registry("lean cover of")


def register(cls: type[nn.Module], forward: Callable | None, keeps: str) -> None:
    """Cover module class ``cls`` (and subclasses that keep its ``forward``) with ``forward``, keeping ``keeps``."""
    COVERS.add(cls, Cover(forward, keeps))


def covering(cls: type[nn.Module]) -> type[nn.Module] | None:
    """The registered class that covers modules of class ``cls``, or None."""
    for base in cls.__mro__:
        if base in COVERS and cls.forward is getattr(base, "forward", None):
            return base
    return None
