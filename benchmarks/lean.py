"""Lean backward through frozen layers (issue 9): memory kept for backward and step time, lean vs plain freezing.

Case cnn: the seed CNN (``frostline.models.seed_cnn``), batch 128 x 3 x 32 x 32, only the first conv trainable,
          the rest frozen with BatchNorm in eval (``freeze(model, ["*", "!0"])``), SGD on the first conv.
Case minilm: the pretrained all-MiniLM-L6-v2 with trainable embeddings and the six layers (and pooler) frozen,
          batch 8 x 128 tokens, loss on the last hidden state, SGD on the embeddings.

"plain" is PyTorch's own freezing (``lean=False``: requires_grad=False, frozen BatchNorm in eval); "lean" is
``lean=True``. Memory kept for backward is measured two ways that must agree:

1. saved: unique storages seen by ``torch.autograd.graph.saved_tensors_hooks`` during one forward, excluding
   the model's parameters and buffers, which are resident anyway (``frostline.lean.saved_bytes``; the JSON also
   has the count with them);
2. rss: resident memory retained by the graph in a fresh subprocess whose allocator returns freed blocks
   (``MALLOC_MMAP_THRESHOLD_=65536``): RSS with the graph alive after forward minus RSS before the input batch
   was made (median of 3 subprocesses).

Step time (zero_grad, forward, loss, backward, optimizer step): each round is one step of each method back to
back, rotating which goes first; the ratio lean / plain is taken per round and the median over rounds reported,
for wall time and, beside it, process CPU time and the ratio of the fastest steps (the least disturbed ones on a
shared machine). A second plain model is timed the same way: control / plain is the machine's noise floor.

    python benchmarks/lean.py [--rounds 8] [--steps 5] [--threads 2] [--case cnn --case minilm] [--quick]

(rounds x steps interleaved rounds are timed.)

Prints a table and writes benchmarks/results/lean.json (lean-<variant>.json for other threads, --quick, one case
or an OMP_WAIT_POLICY). On a shared machine also run it with OMP_WAIT_POLICY=PASSIVE: when the cores are
oversubscribed, busy-waiting OpenMP threads make every kernel launch cost a scheduler slice, so step time then
measures the number of ops more than their work.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

import frostline  # noqa: E402
from frostline._table import human_bytes, render  # noqa: E402
from frostline.models import minilm_path, seed_cnn  # noqa: E402

RESULTS = Path(__file__).parent / "results"
METHODS = ("plain", "lean")


def build(case: str, method: str, quick: bool):
    """(model, make_batch, loss_fn, optimizer) for a case, frozen the way ``method`` says."""
    torch.manual_seed(0)
    if case == "cnn":
        model = frostline.freeze(seed_cnn(), ["*", "!0"], lean=method == "lean").train()
        batch = 32 if quick else 128

        def make_batch():
            g = torch.Generator().manual_seed(1)
            return (torch.randn(batch, 3, 32, 32, generator=g), torch.randint(0, 10, (batch,), generator=g))

        def loss_fn(m, b):
            return F.cross_entropy(m(b[0]), b[1])
    else:
        from transformers import AutoModel

        model = AutoModel.from_pretrained(str(minilm_path()))
        frostline.freeze(model, ["encoder", "pooler"], lean=method == "lean").train()
        shape = (2, 32) if quick else (8, 128)

        def make_batch():
            g = torch.Generator().manual_seed(1)
            return (torch.randint(1000, 29000, shape, generator=g),)

        def loss_fn(m, b):
            return m(b[0]).last_hidden_state.square().mean()
    params = [p for p in model.parameters() if p.requires_grad]
    return model, make_batch, loss_fn, torch.optim.SGD(params, lr=1e-3)


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def child(case: str, method: str, quick: bool, threads: int) -> None:
    """In a fresh process: RSS retained by one forward's graph (printed as JSON)."""
    torch.set_num_threads(threads)
    model, make_batch, loss_fn, opt = build(case, method, quick)
    for _ in range(2):  # warm up kernels, caches and the allocator's arenas
        opt.zero_grad(set_to_none=True)
        loss_fn(model, make_batch()).backward()
    opt.zero_grad(set_to_none=True)
    before = rss_bytes()
    batch = make_batch()
    loss = loss_fn(model, batch)
    after = rss_bytes()
    loss.backward()
    print(json.dumps({"rss": after - before}))


def rss_in_fresh_process(case: str, method: str, quick: bool, threads: int, repeats: int = 3) -> int:
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536")
    cmd = [sys.executable, __file__, "--child", case, method, "--threads", str(threads)]
    cmd += ["--quick"] if quick else []
    values = []
    for _ in range(repeats):
        out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True).stdout
        values.append(json.loads(out.strip().splitlines()[-1])["rss"])
    return int(statistics.median(values))


def saved(case: str, method: str, quick: bool) -> tuple[int, int, dict[str, int]]:
    """Bytes kept for backward: new storages (the measure), all storages with parameters, and per module."""
    model, make_batch, loss_fn, _ = build(case, method, quick)
    batch = make_batch()
    per_module = frostline.lean.saved_bytes(model, batch[0])  # the model input (a label is for the loss)
    storages: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(batch[0])
    return sum(per_module.values()), sum(storages.values()), per_module


def step_times(case: str, quick: bool, rounds: int, steps: int) -> dict[str, object]:
    """Steps of the methods interleaved one by one (rotating who goes first); ratios per round, median reported.

    A round is one step of each method, so the steps it compares ran within a second of each other: on a shared
    machine load comes and goes in phases longer than that. A second, identical plain model ("control") is timed
    too: its ratio to plain is the noise floor. Wall time is what counts; process CPU time is reported beside
    it, because under contention a descheduled thread stalls every parallel op (and its partner spins), which
    inflates both in proportion to the number of ops rather than their work.
    """
    setups = {"plain": build(case, "plain", quick), "lean": build(case, "lean", quick),
              "control": build(case, "plain", quick)}
    names = list(setups)
    batch = setups["plain"][1]()
    wall: dict[str, list[float]] = {m: [] for m in names}
    cpu: dict[str, list[float]] = {m: [] for m in names}
    load = os.getloadavg()[0]
    for r in range(-2, rounds * steps):  # two warm-up rounds
        for method in names[r % 3:] + names[:r % 3]:
            model, _, loss_fn, opt = setups[method]
            t, c = time.perf_counter(), time.process_time()
            opt.zero_grad(set_to_none=True)
            loss_fn(model, batch).backward()
            opt.step()
            if r >= 0:
                wall[method].append(time.perf_counter() - t)
                cpu[method].append(time.process_time() - c)

    def ratio(series: dict[str, list[float]], a: str) -> float:
        return statistics.median(x / y for x, y in zip(series[a], series["plain"], strict=False))

    return {"ratio": ratio(wall, "lean"), "cpu_ratio": ratio(cpu, "lean"), "control_ratio": ratio(wall, "control"),
            "best_ratio": min(wall["lean"]) / min(wall["plain"]),  # the least disturbed step of each
            "control_cpu_ratio": ratio(cpu, "control"), "wall_s": wall, "cpu_s": cpu,
            "plain_s": statistics.median(wall["plain"]), "lean_s": statistics.median(wall["lean"]),
            "load_avg_before_after": [load, os.getloadavg()[0]]}


def check_exact(case: str, quick: bool) -> float:
    """Largest relative difference between the trainable parameters' gradients, lean vs plain."""
    grads = {}
    for method in METHODS:
        model, make_batch, loss_fn, _ = build(case, method, quick)
        torch.manual_seed(3)  # the same dropout masks
        loss_fn(model, make_batch()).backward()
        grads[method] = [p.grad for p in model.parameters() if p.grad is not None]
    return max(float((a - b).abs().max() / b.abs().max().clamp_min(1e-30))
               for a, b in zip(grads["lean"], grads["plain"], strict=False))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--case", action="append", choices=["cnn", "minilm"], help="default: both")
    parser.add_argument("--quick", action="store_true", help="small batches, for a smoke run")
    parser.add_argument("--child", nargs=2, metavar=("CASE", "METHOD"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(*args.child, args.quick, args.threads)
    torch.set_num_threads(args.threads)
    omp = os.environ.get("OMP_WAIT_POLICY", "")
    rows, report = [], {"torch": torch.__version__, "threads": args.threads, "quick": args.quick,
                        "OMP_WAIT_POLICY": omp or "(unset: busy-wait)", "cases": {}}
    for case in args.case or ["cnn", "minilm"]:
        kept = {m: saved(case, m, args.quick) for m in METHODS}
        rss = {m: rss_in_fresh_process(case, m, args.quick, args.threads) for m in METHODS}
        timing = step_times(case, args.quick, args.rounds, args.steps)
        exact = check_exact(case, args.quick)
        report["cases"][case] = {
            "saved_bytes": {m: kept[m][0] for m in METHODS}, "rss_bytes": rss,
            "saved_bytes_with_parameters": {m: kept[m][1] for m in METHODS},
            "saved_ratio": kept["lean"][0] / kept["plain"][0], "rss_ratio": rss["lean"] / rss["plain"],
            "step": timing, "max_rel_grad_diff": exact,
            "lean_per_module": kept["lean"][2], "plain_per_module": kept["plain"][2]}
        c = report["cases"][case]
        rows.append([case, human_bytes(kept["plain"][0]), human_bytes(kept["lean"][0]), f"1/{1 / c['saved_ratio']:.1f}",
                     human_bytes(rss["plain"]), human_bytes(rss["lean"]), f"1/{1 / c['rss_ratio']:.1f}",
                     f"{timing['plain_s'] * 1e3:.0f} ms", f"{timing['lean_s'] * 1e3:.0f} ms", f"{timing['ratio']:.3f}",
                     f"{timing['cpu_ratio']:.3f}", f"{timing['best_ratio']:.3f}", f"{timing['control_ratio']:.3f}",
                     f"{exact:.1e}"])
        print(f"{case}: {rows[-1]}", flush=True)
    print(render(["case", "saved plain", "saved lean", "ratio", "rss plain", "rss lean", "ratio", "step plain",
                  "step lean", "lean/plain", "CPU lean/plain", "best lean/plain", "control/plain", "grad rel diff"],
                 rows))
    print(f"{args.threads} threads, OMP_WAIT_POLICY={report['OMP_WAIT_POLICY']}; load average "
          f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} cores at the end")
    RESULTS.mkdir(exist_ok=True)
    variant = (f"-{args.threads}t" if args.threads != 2 else "") + ("-quick" if args.quick else "")
    variant += f"-omp-{omp.lower()}" if omp else ""
    variant += "".join(f"-{c}" for c in args.case or [])
    (RESULTS / f"lean{variant}.json").write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
