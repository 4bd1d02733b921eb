"""Partial freezing: frostline's strategies beside the hand-written methods of ``shared/anchors/seed_methods.py``.

Case A: the seed CNN (batch 64x3x32x32), half the filters of every conv frozen, AdamW(wd=0.01).
Case B: a 30522x384 embedding + linear head (batch 32x128 tokens), 64 trainable rows, AdamW(wd=0.01).
Case C: a 4096x4096 Linear with 1% of its elements trainable (optimizer state against dense AdamW).

Cases A and B are ``frostline bench``'s (``--case filters`` and ``--case rows``: the models, batches and methods
of ``frostline.bench.filters`` and ``frostline.bench.rows``, measured by its harness); this script runs the
methods below under these names and adds the floor for split and case C. Every method trains the same model from
the same seed; after two warm-up steps, every method runs one training step in turn (forward, backward, optimizer
step and any after-step work), the unfrozen one first, and a method's ratio is its step time over the unfrozen
step of the same turn; the table shows the median over all turns of all rounds. "exact" says whether every
frozen element was bit-identical after the first round (frostline's methods must also pass ``guard``); "opt
state" is what the optimizer holds.

    python benchmarks/partial.py [--rounds 5] [--steps 6] [--threads 2] [--clock wall|cpu]

On a machine shared with other jobs, wall-clock ratios mostly measure the scheduler; ``--threads 1 --clock cpu``
measures this process's work instead. Writes benchmarks/results/partial.json (and partial-<clock>.json).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

import frostline
from frostline._table import human_bytes, render
from frostline.bench import Method, Row, filters, measure, rows
from frostline.summary import optimizer_state_bytes

RESULTS = Path(__file__).parent / "results"
AdamW = lambda params: torch.optim.AdamW(params, lr=1e-3, weight_decay=0.01)  # noqa: E731

# (name, by, setup): setup(batch) returns a frostline.bench Trial
CASE_A = [("unfrozen", "anchor", filters.unfrozen),
          ("requires_grad (all conv weights)", "anchor", filters.convs_requires_grad),  # lower bound: trains none
          ("store/restore", "anchor", filters.half_restore), ("gradient mask", "anchor", filters.half_gradmask),
          ("split (auto)", "frostline", partial(filters.half_frostline, strategy="auto")),
          ("delta", "frostline", partial(filters.half_frostline, strategy="delta")),
          ("mask", "frostline", partial(filters.half_frostline, strategy="mask"))]
CASE_B = [("unfrozen", "anchor", rows.unfrozen),
          ("requires_grad (whole embedding)", "anchor", rows.emb_requires_grad),  # lower bound: trains no row
          ("store/restore", "anchor", rows.restore), ("gradient mask", "anchor", rows.gradmask),
          ("sparse delta (hand-written)", "anchor", rows.sparse_delta),
          ("delta (auto)", "frostline", partial(rows.strategy, name="auto")),
          ("mask", "frostline", partial(rows.strategy, name="mask"))]


def run_case(case: list, batch, rounds: int, steps: int, clock: Callable[[], float]) -> list[dict]:
    """Every method of ``case`` on ``batch`` through frostline.bench's harness, as rows of the report."""
    methods = [Method(name, by, partial(setup, batch)) for name, by, setup in case]
    measured: list[Row] = measure(methods, rounds=rounds, steps=steps, warmup=2, clock=clock)
    return [{"method": r.method, "by": r.by, "ratio": r.ratio, "exact": r.exact,
             "optimizer_state_bytes": r.optimizer_state_bytes,
             "seconds": None if r.step_ms is None else r.step_ms / 1e3} for r in measured]


def split_floor(batch, seconds_unfrozen: float, clock: Callable[[], float], repeats: int = 5) -> float:
    """The best split can do on this machine: the unfrozen step minus the weight gradient of the frozen half of
    every conv (timed with the same kernel, on the inputs and output gradients of a real step of case A)."""
    model, seen = filters.model(), []

    def keep(conv, inputs, output):
        output.register_hook(lambda grad: seen.append((conv, inputs[0].detach(), grad)))
    for _, conv in filters.convs(model):
        conv.register_forward_hook(keep)
    F.cross_entropy(model(batch[0]), batch[1]).backward()
    times = []
    for _ in range(repeats):
        start = clock()
        for conv, x, grad in seen:
            half = conv.out_channels // 2
            torch.ops.aten.convolution_backward(grad[:, :half], x, conv.weight[:half], None, conv.stride, conv.padding,
                                                conv.dilation, False, [0, 0], 1, [False, True, False])
        times.append(clock() - start)
    return 1 - statistics.median(times) / seconds_unfrozen


def case_c(threads: int) -> list[dict]:
    """4096x4096 Linear, 1% of elements trainable: optimizer state of delta against dense AdamW."""
    out = []
    for label in ("unfrozen", "delta", "mask"):
        torch.manual_seed(0)
        model = nn.Linear(4096, 4096)
        frozen = torch.rand(4096, 4096) >= 0.01
        if label != "unfrozen":
            frostline.freeze(model, "weight", mask=frozen, strategy=label)
        opt = AdamW([model.weight] if label == "unfrozen" else
                    frostline.partial.get_partial(model, "weight").trainable_parameters())
        model.bias.requires_grad_(False)
        model(torch.randn(8, 4096)).sum().backward()
        opt.step()
        out.append({"method": label, "optimizer_state_bytes": optimizer_state_bytes(opt),
                    "trainable": int((~frozen).sum()) if label != "unfrozen" else frozen.numel()})
    dense = out[0]["optimizer_state_bytes"]
    for row in out:
        row["fraction_of_dense"] = row["optimizer_state_bytes"] / dense
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                        help="cpu: this process's CPU time, robust on a shared machine (use with --threads 1)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    clock = time.perf_counter if args.clock == "wall" else time.process_time

    a_batch = filters.batch(quick=False)
    a = run_case(CASE_A, a_batch, args.rounds, args.steps, clock)
    floor = split_floor(a_batch, a[0]["seconds"], clock)
    b = run_case(CASE_B, rows.batch(quick=False), args.rounds, args.steps, clock)
    c = case_c(args.threads)

    table = []
    for case, results in (("A: CNN, half the filters of every conv", a), ("B: embedding, 64 of 30522 rows", b)):
        for r in results:
            exact = "-" if r["exact"] is None else ("yes" if r["exact"] else "NO")
            ratio = "-" if r["ratio"] is None else f"{r['ratio']:.3f}x"
            size = "-" if r["optimizer_state_bytes"] is None else human_bytes(r["optimizer_state_bytes"])
            table.append([case[:1], r["method"], r["by"], ratio, exact, size])
    print(render(["case", "method", "by", "step / unfrozen", "exact", "opt state"], table,
                 title=f"partial freezing, AdamW, {args.threads} threads, {args.clock} clock, median of "
                       f"{args.rounds} rounds x {args.steps} steps"))
    print(f"case A floor for split on this machine: {floor:.3f}x (the unfrozen step minus the frozen half's weight "
          "gradient)\n")
    print(render(["case C: 4096x4096 Linear, 1% elements trainable", "trainable", "opt state", "of dense"],
                 [[r["method"], f"{r['trainable']:,}", human_bytes(r["optimizer_state_bytes"]),
                   f"{100 * r['fraction_of_dense']:.2f}%"] for r in c]))
    RESULTS.mkdir(exist_ok=True)
    report = json.dumps(
        {"threads": args.threads, "clock": args.clock, "rounds": args.rounds, "steps": args.steps,
         "torch": torch.__version__,
         "case_a": a, "case_a_split_floor": floor, "case_b": b, "case_c": c}, indent=2)
    (RESULTS / "partial.json").write_text(report)
    (RESULTS / f"partial-{args.clock}.json").write_text(report)


if __name__ == "__main__":
    main()
