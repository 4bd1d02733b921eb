"""The schedules frostline ships, by class name, filled by the schedule classes themselves (``@register``).

The name is the one a schedule's ``state_dict()`` records under ``"schedule"``, so a checkpoint names its entry.
:mod:`frostline.schedules` imports each schedule module; a schedule of your own needs no registration (subclass
:class:`frostline.schedules.Schedule`), registering one lists it in ``SCHEDULES`` beside frostline's.
"""

from __future__ import annotations

from typing import TypeVar

from .._registry import Registry
from ..errors import FrostlineError
from ._base import Schedule

SCHEDULES: Registry[str, type[Schedule]] = Registry("schedule")
S = TypeVar("S", bound=type[Schedule])


def register(cls: S) -> S:
    """Register a schedule class under its class name (a class decorator: returns ``cls``).

    Raises:
        FrostlineError: ``cls`` is not a subclass of :class:`frostline.schedules.Schedule`, or another class of that
            name is registered.
    """
    if not (isinstance(cls, type) and issubclass(cls, Schedule)):
        raise FrostlineError(f"register takes a subclass of frostline.schedules.Schedule, got {cls!r}")
    SCHEDULES.add(cls.__name__, cls)
    return cls
