"""What both callbacks share: turning ``schedule_or_spec`` into a schedule."""

from __future__ import annotations

from ..schedules import Plan, Schedule
from ..selection import Spec


class Hold(Schedule):
    """Keep the parameters ``spec`` selects frozen for all of training (what a callback does with a bare spec)."""

    unit = "epoch"

    def __init__(self, spec: Spec):
        super().__init__([spec])

    def plan(self, epoch: int | None, step: int | None) -> Plan:
        return Plan(frozenset({0}), reason="frozen for all of training")


def as_schedule(schedule_or_spec: Schedule | Spec) -> Schedule:
    return schedule_or_spec if isinstance(schedule_or_spec, Schedule) else Hold(schedule_or_spec)
