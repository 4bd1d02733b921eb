"""The partial-freezing strategies by name, filled by the strategy classes themselves (``@register``).

A strategy module registers its class when imported; :mod:`frostline.partial` imports the built-in ones (``mask``,
``delta``, ``split``). ``freeze(..., strategy=)`` accepts ``"auto"`` and every registered name; ``auto`` picks
among the built-in strategies only, unless a registered one sets ``auto_pick = True`` (see
:func:`frostline.partial.choose`).
"""

from __future__ import annotations

from typing import TypeVar

from .._registry import Registry
from ..errors import FreezeError
from ._base import Strategy

STRATEGIES: Registry[str, type[Strategy]] = Registry("partial-freezing strategy")
S = TypeVar("S", bound=type[Strategy])


def register(cls: S) -> S:
    """Register a strategy class under its ``strategy`` name (a class decorator: returns ``cls``).

    A strategy is one file: a subclass of :class:`frostline.partial.Strategy` (the interface its docstring lists)
    decorated with ``@register``; importing the file makes ``freeze(..., strategy=<its name>)`` use it. Set
    ``auto_pick = True`` on it to let ``strategy="auto"`` pick it wherever its ``why_not`` allows.

    Raises:
        FreezeError: ``cls`` is not a subclass of :class:`frostline.partial.Strategy`, its ``strategy`` is not a
            name (or is ``"auto"``), or another class is registered under that name.

    Example: mask's storage under a name of its own (``tests/toy_strategy.py`` is a whole one, from scratch).
        >>> import torch.nn as nn, frostline
        >>> from frostline.partial import get_partial, register, unregister
        >>> from frostline.partial.mask import Mask
        >>> @register
        ... class Masked(Mask):
        ...     strategy = "masked"
        >>> lin = frostline.freeze(nn.Linear(4, 4), "weight", rows=[0], strategy="masked")
        >>> get_partial(lin, "weight").strategy, "masked" in frostline.partial.STRATEGIES
        ('masked', True)
        >>> unregister("masked") is Masked, "masked" in frostline.partial.STRATEGIES
        (True, False)
    """
    if not (isinstance(cls, type) and issubclass(cls, Strategy)):
        raise FreezeError(f"register takes a subclass of frostline.partial.Strategy, got {cls!r}")
    name = cls.__dict__.get("strategy")
    if not isinstance(name, str) or not name or name == "auto":
        raise FreezeError(f"{cls.__qualname__} must set its own class attribute strategy = '<name>' (a non-empty "
                          f"string other than 'auto': freeze(..., strategy='<name>') asks for it), got {name!r}")
    if name in STRATEGIES and STRATEGIES[name] is not cls:
        raise FreezeError(f"strategy {name!r} is registered already, by {STRATEGIES[name].__qualname__}; choose "
                          f"another name or frostline.partial.unregister({name!r}) first")
    STRATEGIES.add(name, cls)
    return cls


def auto_pickable() -> list[type[Strategy]]:
    """The registered strategies that say ``strategy="auto"`` may pick them (in registration order)."""
    return [cls for cls in STRATEGIES.values() if cls.auto_pick]
