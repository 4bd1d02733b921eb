"""The benchmark's outputs: a table per case, one JSON of every measurement, one PNG of the step-time ratios."""

from __future__ import annotations

import json
import platform
import textwrap
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from .._table import human_bytes, render

if TYPE_CHECKING:
    from . import CaseResult

MEMORY = ("step memory: parameters and buffers + gradients + optimizer state + tensors saved for backward "
          "(unique storages) + what the method keeps beside the model, for one training step")


def table(result: CaseResult) -> str:
    """One case as a text table, rows in the order they ran (the unfrozen baseline first)."""
    headers = ["method", "by", "step vs unfrozen", "exact", "optimizer state", "saved for backward", "step memory",
               "note"]
    body = []
    for r in result.rows:
        ratio = "-" if r.ratio is None else f"{r.ratio:.3f}" if r.ratio >= 0.01 else f"{r.ratio:.5f}"
        exact = "-" if r.exact is None else "yes" if r.exact else "NO"
        size = lambda n: "-" if n is None else human_bytes(n)  # noqa: E731
        body.append([r.method, r.by, ratio, exact, size(r.optimizer_state_bytes),
                     size(r.memory.get("saved for backward")), size(r.memory_bytes), r.note or ""])
    return render(headers, body, title=f"{result.title}\n({result.setup})")


def write(results: list[CaseResult], out: Path, *, quick: bool) -> tuple[Path, Path]:
    """Write the results to ``<out>/<stem>.json`` and ``<out>/<stem>.png`` and return both paths.

    The stem is ``bench`` for every case, ``bench-<case>[-<case>...]`` for some, and ends in ``-quick`` for a
    smoke run, so a quick or partial run never overwrites the full results.
    """
    from .. import __version__
    from . import CASES

    names = [r.name for r in results]
    stem = "bench" if sorted(names) == sorted(CASES) else "-".join(["bench", *names])
    stem += "-quick" if quick else ""
    out.mkdir(parents=True, exist_ok=True)

    payload = {
        "frostline": __version__, "torch": torch.__version__, "python": platform.python_version(),
        "machine": platform.machine(), "threads": torch.get_num_threads(), "quick": quick,
        "ratio": "median over rounds of (method's median step time / unfrozen median step time, same round)",
        "step_memory": MEMORY,
        "cases": {r.name: {"title": r.title, "setup": r.setup, "rows": [asdict(row) for row in r.rows]}
                  for r in results},
    }
    json_path, png_path = out / f"{stem}.json", out / f"{stem}.png"
    json_path.write_text(json.dumps(payload, indent=2) + "\n")
    plot(results, png_path)
    return json_path, png_path


def plot(results: list[CaseResult], path: Path) -> None:
    """One panel per case: each method's step-time ratio as a bar from 1 (the unfrozen step) on a log scale, so
    faster methods point left and slower ones right; green when exact, red when frozen values moved."""
    import matplotlib

    matplotlib.use("Agg")  # files only: no display on CI machines
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    heights = [max(len(r.rows), 1) for r in results]
    fig, axes = plt.subplots(len(results), 1, figsize=(9, 1.4 + 0.36 * sum(heights)), squeeze=False,
                             gridspec_kw={"height_ratios": heights})
    for ax, result in zip(axes[:, 0], results, strict=False):
        rows = [r for r in result.rows if r.ratio is not None and r.by != "baseline"]
        ratios = [r.ratio for r in rows if r.ratio is not None]  # all of them: the filter above, again for mypy
        colors = ["#2ca02c" if r.exact else "#d62728" for r in rows]
        ax.barh(range(len(rows)), [abs(r - 1.0) for r in ratios], left=[min(r, 1.0) for r in ratios],
                color=colors, height=0.6)
        ax.set_yticks(range(len(rows)), [f"{r.method} ({r.by})" for r in rows], fontsize=8)
        ax.invert_yaxis()
        low, high = min(ratios + [1.0]), max(ratios + [1.0])
        ax.set_xscale("log")
        # 1-2-5 ticks over a decade or two; over a wider span only the decades, or the labels collide
        ax.xaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0) if high / low < 200 else (1.0,)))
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))  # 0.5, not 5x10^-1
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.axvline(1.0, color="black", linewidth=0.8)
        for i, (ratio, row) in enumerate(zip(ratios, rows, strict=False)):
            moved = row.exact is False  # said in words too: a ratio near 1 leaves no bar to color
            ax.text(ratio, i, f" {ratio:.3g}{' (moved)' if moved else ''} ", va="center",
                    ha="left" if ratio >= 1 else "right", fontsize=7, color="#d62728" if moved else "black")
        ax.set_xlim(low / 3, high * 4)
        ax.set_title(f"{textwrap.fill(result.title, 95)}\n{result.setup}", fontsize=8, loc="left")
    axes[-1, 0].set_xlabel("step time / unfrozen step of the same round (log scale; left of 1 is faster)",
                           fontsize=8)
    fig.legend(handles=[Patch(color="#2ca02c", label="frozen values bit-identical"),
                        Patch(color="#d62728", label="frozen values moved")], loc="upper center", ncol=2,
               fontsize=7, frameon=False)
    fig.tight_layout(rect=(0, 0, 1, 0.96))
    fig.savefig(path, dpi=110)
    plt.close(fig)
