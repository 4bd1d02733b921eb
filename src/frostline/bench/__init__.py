"""``frostline bench``: frostline's freezing against the hand-written methods, side by side in one process.

Cases (``--case NAME``): ``filters`` (case A: half of every conv's filters in the seed CNN), ``rows`` (case B:
64 trainable rows of a 30522x384 embedding), ``prefix`` (all-MiniLM-L6-v2 with a frozen prefix, with and
without frostline's feature cache) and ``layers`` (whole-layer freezing of all-MiniLM-L6-v2). Each prints a
table: step time as a ratio to the unfrozen step of the same round (median over interleaved rounds), whether the
frozen values stayed bit-identical, optimizer-state bytes and step memory (defined in
:mod:`frostline.bench._harness`). :func:`write` saves one JSON of every
measurement and one PNG plot.

>>> from frostline.bench import CASES
>>> list(CASES)
['filters', 'rows', 'prefix', 'layers']
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

from ..errors import FrostlineError
from . import filters, layers, prefix, rows
from ._harness import Method, Row, measure
from ._report import table, write

__all__ = ["CASES", "CaseResult", "Method", "Row", "measure", "run", "table", "write"]

CASES: dict[str, ModuleType] = {"filters": filters, "rows": rows, "prefix": prefix, "layers": layers}
FULL = {"rounds": 5, "steps": 6, "warmup": 2}  # the anchors' settings; a case may set its own SETTINGS
QUICK = {"rounds": 1, "steps": 0, "warmup": 0}  # a smoke run: one (accounted) step per method, timings meaningless


@dataclass
class CaseResult:
    """One case: its name, a title, the setup measured, and one :class:`Row` per method."""

    name: str
    title: str
    setup: str
    rows: list[Row]


def run(cases: list[str] | None = None, *, quick: bool = False, model_path: Path | None = None,
        progress: bool = True) -> list[CaseResult]:
    """Run the benchmark cases (all by default) and return their results.

    Args:
        cases: names from :data:`CASES`.
        quick: a smoke run (one round of one step on small inputs): checks that everything runs, in seconds.
        model_path: a transformers model directory for the transformer cases (default: all-MiniLM-L6-v2).
        progress: show a progress bar per case (only when stderr is a terminal).

    Raises:
        FrostlineError: an unknown case name.
    """
    names = list(CASES) if not cases else cases
    unknown = [n for n in names if n not in CASES]
    if unknown:
        raise FrostlineError(f"unknown case {unknown[0]!r}; the cases are: {', '.join(CASES)}")
    results = []
    for name in names:
        module = CASES[name]
        settings = QUICK if quick else getattr(module, "SETTINGS", FULL)
        setup, methods = module.methods(quick, model_path)
        bar = _bar(len(methods) * settings["rounds"], name, progress)
        try:
            measured = measure(methods, **settings, tick=bar.update)
        finally:
            bar.close()
        results.append(CaseResult(name, module.TITLE, setup, measured))
    return results


def _bar(total: int, name: str, enabled: bool) -> Any:  # a tqdm bar
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=f"bench {name}", unit="run", leave=False,
                disable=not enabled or not sys.stderr.isatty())
