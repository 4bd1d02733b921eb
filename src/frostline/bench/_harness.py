"""How every benchmark case is measured: interleaved steps, ratios to the unfrozen step, exactness, memory.

Timing: each round sets every method up on a fresh model and runs warm-up steps; then, ``steps`` times, every
method runs one training step (forward, backward, optimizer step and whatever fix-up the method does after it)
in turn, the unfrozen baseline first. A method's ratio in such a sweep is its step time divided by the baseline's
step time of the same sweep, and the reported ratio is the median over all sweeps of all rounds. Steps that ran
seconds apart share the machine's load, so the ratios hold up on a busy shared machine where whole-run timings
do not.

Exactness: the values a method promises to keep (its frozen region, read from ``state_dict`` so that partial
strategies show their effective values) must be bit-identical (``torch.equal``) after every step of the first
round. frostline's own methods must in addition pass :func:`frostline.guard`'s check (its snapshot, verified at
the end of the round).

Memory ("step memory"): what one training step holds at its peak, counted on the tensors themselves, so it is
the same on any device and free of allocator noise: parameters and buffers, gradients, optimizer state, tensors
saved for backward (unique storages, seen by ``torch.autograd.graph.saved_tensors_hooks``) and what the method
keeps beside the model (stored copies, masks, cached features). ``tracemalloc`` cannot see torch's allocations
and process RSS is too noisy on a shared machine to compare methods that differ by a few MiB.
"""

from __future__ import annotations

import copy
import gc
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from .._tensor import storage_key
from ..errors import FreezeError, FrozenParameterChanged
from ..guard import snapshot
from ..summary import optimizer_state_bytes


@dataclass
class Trial:
    """One method set up on a fresh model, ready to train.

    ``frozen`` returns the values that must not change (None: the method freezes nothing); ``held`` returns the
    tensors the method keeps beside the model; ``held_bytes`` adds bytes it keeps that are not tensors we can
    reach (a feature cache's store); ``note`` describes the run once it is done.
    """

    model: nn.Module
    step: Callable[[], object]
    optimizer: torch.optim.Optimizer
    frozen: Callable[[], list[Tensor]] | None = None
    held: Callable[[], list[Tensor]] = lambda: []
    held_bytes: Callable[[], int] = lambda: 0
    note: Callable[[], str] = lambda: ""


@dataclass
class Method:
    """A named way of freezing (``by`` is "hand" for the anchors' hand-written methods, "frostline", or
    "baseline" for the unfrozen reference, which must come first)."""

    name: str
    by: str
    setup: Callable[[], Trial]


@dataclass
class Row:
    """The measurements of one method in one case."""

    method: str
    by: str
    ratio: float | None = None  # median over rounds of (median step / unfrozen median step in that round)
    ratios: list[float] = field(default_factory=list)
    step_ms: float | None = None  # median step time over rounds, milliseconds
    exact: bool | None = None  # None: nothing frozen (the baseline) or not run
    optimizer_state_bytes: int | None = None
    memory_bytes: int | None = None
    memory: dict[str, int] = field(default_factory=dict)
    note: str = ""


def train_step(forward: Callable[[], Tensor], optimizer: torch.optim.Optimizer,
               after: Callable[[], None] | None = None) -> Callable[[], None]:
    """A training step: ``loss = forward()``, backward, optimizer step, then ``after`` (a method's fix-up)."""

    def step() -> None:
        loss = forward()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if after is not None:
            after()

    return step


def measure(methods: list[Method], *, rounds: int, steps: int, warmup: int,
            tick: Callable[[], object] = lambda: None, clock: Callable[[], float] = time.perf_counter) -> list[Row]:
    """Run ``methods`` side by side (see the module docstring) and return one :class:`Row` each, in order.

    With ``steps=0`` (a smoke run) the one step each method runs for the memory count is the one timed.
    ``tick`` is called once per method and round (a progress bar's ``update``). ``clock`` reads seconds: wall
    time by default; ``time.process_time`` counts this process's CPU time only (on a machine shared with other
    jobs, with one thread).
    """
    rows = [Row(m.name, m.by) for m in methods]
    times: list[list[float]] = [[] for _ in methods]
    for round_index in range(rounds):
        first = round_index == 0
        trials = [_setup(m, row) for m, row in zip(methods, rows, strict=False)]
        checks = [_Check(t, m.by == "frostline") if first and t else None for m, t in zip(methods, trials, strict=False)]
        for _ in range(warmup):
            for trial in trials:
                if trial is not None:
                    trial.step()
        sweeps = [[_timed(t.step, clock) if t is not None else None for t in trials] for _ in range(steps)]
        if first:
            accounted = [_account(row, t, clock) if t is not None else None
                         for row, t in zip(rows, trials, strict=False)]
            sweeps = sweeps or [accounted]
            for row, trial, check in zip(rows, trials, checks, strict=False):
                if check is not None and trial is not None:  # a check exists only for a set-up trial
                    row.exact, row.note = check.passed(), trial.note()
        for sweep in sweeps:
            for row, spent, seconds in zip(rows, times, sweep, strict=False):
                if seconds is not None and sweep[0] is not None:
                    spent.append(seconds)
                    row.ratios.append(seconds / sweep[0])
        for _ in trials:
            tick()
        del trials, checks
        gc.collect()  # free this round's models before the next round builds its own
    for row, spent in zip(rows, times, strict=False):
        if spent:
            row.ratio = statistics.median(row.ratios)
            row.step_ms = 1e3 * statistics.median(spent)
    return rows


def strategies(probe: nn.Module, **freeze_kwargs: Any) -> tuple[str, ...]:
    """``"auto"`` and every registered partial strategy (:data:`frostline.partial.STRATEGIES`) that can store the
    partial freeze ``freeze_kwargs`` describes on a small stand-in ``probe`` (the others raise FreezeError)."""
    from ..freeze import freeze
    from ..partial import STRATEGIES

    usable = ["auto"]
    for name in STRATEGIES:
        try:
            freeze(copy.deepcopy(probe), strategy=name, **freeze_kwargs)
        except FreezeError:
            continue
        usable.append(name)
    return tuple(usable)


def _setup(method: Method, row: Row) -> Trial | None:
    """A fresh trial of ``method``, or None when it cannot run (the row's note says why)."""
    if row.note.startswith("n/a"):
        return None
    try:
        return method.setup()
    except FreezeError as exc:  # a strategy that cannot serve this layout says so; the row shows why
        row.note = f"n/a: {exc}"
        return None


class _Check:
    """Records a trial's frozen values (and, for frostline's methods, a ``guard`` snapshot) to compare later."""

    def __init__(self, trial: Trial, guarded: bool):
        self.trial = trial
        self.before = [t.detach().clone() for t in trial.frozen()] if trial.frozen else None
        self.snapshot = snapshot(trial.model) if guarded else None

    def passed(self) -> bool | None:
        """True when nothing frozen moved; None when the method freezes nothing."""
        if self.before is None:
            return None
        exact = _still_equal(self.before, self.trial)
        if self.snapshot is not None:
            try:
                self.snapshot.verify(self.trial.model)
            except FrozenParameterChanged:
                exact = False
        return exact


def _timed(step: Callable[[], object], clock: Callable[[], float]) -> float:
    start = clock()
    step()
    return clock() - start


def _still_equal(before: list[Tensor], trial: Trial) -> bool:
    after = trial.frozen() if trial.frozen else []
    return len(before) == len(after) and all(torch.equal(a, b) for a, b in zip(before, after, strict=False))


def _account(row: Row, trial: Trial, clock: Callable[[], float]) -> float:
    """Run one more step with saved-tensor hooks, fill in ``row``'s memory fields (see the module docstring) and
    return the step's duration in seconds."""
    saved: dict[int, tuple[int, Tensor]] = {}

    def pack(t: Tensor) -> Tensor:
        found = storage_key(t)
        if found is not None:  # keep it alive, so a gradient cannot reuse its address before we compare
            saved[found[0]] = (found[1], t)
        return t

    start = clock()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        trial.step()
    spent = clock() - start
    in_optimizer = [p for g in trial.optimizer.param_groups for p in g["params"]]
    model_tensors = [*trial.model.parameters(), *trial.model.buffers(), *in_optimizer]
    counted: dict[int, int] = {}

    def unique(tensors: list[Tensor]) -> int:
        total = 0
        for t in tensors:
            found = storage_key(t)
            if found is not None and found[0] not in counted:
                counted[found[0]] = found[1]
                total += found[1]
        return total

    memory = {"parameters and buffers": unique(model_tensors),
              "gradients": unique([p.grad for p in in_optimizer if p.grad is not None]),
              "optimizer state": optimizer_state_bytes(trial.optimizer),
              "kept by the method": unique(trial.held()) + trial.held_bytes()}
    memory["saved for backward"] = sum(n for ptr, (n, _) in saved.items() if ptr not in counted)
    row.memory = memory
    row.memory_bytes = sum(memory.values())
    row.optimizer_state_bytes = memory["optimizer state"]
    return spent
