"""Cost against model size (issue 14): freeze / unfreeze / select / summary / is_frozen on Llama-style models of
16 to 1024 layers, and a LISA schedule switch against a training step.

Part 1, calls: transformers' ``LlamaForCausalLM`` built under ``torch.device("meta")`` (the default
``LlamaConfig``, Llama-2-7B's shapes, with only ``num_hidden_layers`` changed: 9 tensors per layer plus
embeddings, final norm and head, so 147 tensors at 16 layers and 9,219 at 1024). Nothing is allocated, so only
frostline's own bookkeeping is timed. Each repeat times, in this order, ``freeze(model, "model.layers")``,
``is_frozen(model, "model.layers.0")``, ``summary(model)``, ``select(model, "model.layers")`` and
``unfreeze(model, "model.layers")`` once, and as a control ``list(model.named_parameters())``: one walk of the
model by torch alone, whose growth is what linear Python code gets on this machine (a bigger model also means
more cache misses). One child process per checkout builds every size and interleaves them, a repeat of each size
in turn, so that the growth factors (time at 4x the layers over time before) see the same machine load. The
figure is the median over repeats: ``--repeats`` of them, more (up to 50) while a size has taken under 2 s, none
past ``--budget`` seconds at one size (the old quadratic code needs a minute per repeat at 1024 layers); the
JSON keeps every time. The same calls then run once more under ``sys.setprofile``, counting Python and builtin
function calls (up to 256 layers): a growth measure that the machine's load cannot disturb.

Part 2, schedule switch: a real 32-layer Llama-style model on the CPU (hidden 192, MLP 512, 6 heads, vocabulary
4096, float32), ``frostline.optimizer(model, AdamW, lr=1e-4)``, ``LayerwiseSampling(n_active=8, every=1)`` so
that every step draws 8 of the 32 blocks (the blocks that leave freeze, those that join unfreeze, and the
optimizer follows through ``frostline.optim.sync``). Each step times ``schedule.step(model, optimizer,
step=i)`` and, separately, the training step (zero_grad, forward with labels at batch 8 x 256 tokens, backward,
``optimizer.step()``), one after the other; step 0 (groups resolved, the first 24 blocks frozen) is reported
apart. The ratio is median switch / median training step, both from the same child.

The checkouts: this one (``src/`` beside this file), with ``--baseline SRC`` an older one (a worktree of an
older commit) and with ``--other SRC`` any proposed variant, each in its own child processes, back to back. The
children get ``OMP_WAIT_POLICY=PASSIVE`` unless it is set: on an oversubscribed machine busy-waiting OpenMP
threads make a training step many times slower.

    python benchmarks/scale.py [--layers 16 64 256 1024] [--repeats 5] [--budget 60] [--steps 10] [--threads 2]
                               [--baseline /tmp/old/src] [--other /tmp/variant/src] [--quick]

Prints the tables and writes benchmarks/results/scale.json and scale.md (scale-quick.* with --quick).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

RESULTS = Path(__file__).parent / "results"
HERE_SRC = Path(__file__).resolve().parents[1] / "src"
CALLS = ("freeze", "unfreeze", "select", "summary", "is_frozen", "walk")  # walk: the control, torch alone
SCHEDULE_MODEL = {"num_hidden_layers": 32, "hidden_size": 192, "intermediate_size": 512, "num_attention_heads": 6,
                  "num_key_value_heads": 6, "vocab_size": 4096}
COUNT_UPTO = 256  # operations are counted up to this many layers
QUICK_MODEL = {**SCHEDULE_MODEL, "hidden_size": 64, "intermediate_size": 128, "num_attention_heads": 2,
               "num_key_value_heads": 2, "vocab_size": 512}


# -- children: run under the checkout being measured ---------------------------------------------------------------
def calls_child(sizes: list[int], repeats: int, budget: float) -> list[dict]:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    import frostline

    models = {}
    for layers in sizes:
        with torch.device("meta"):
            models[layers] = LlamaForCausalLM(LlamaConfig(num_hidden_layers=layers))
    gc.collect()
    gc.freeze()  # the models stay: keep the collector from scanning them again in every timed call

    def calls(model):
        return {"freeze": lambda: frostline.freeze(model, "model.layers"),
                "is_frozen": lambda: frostline.is_frozen(model, "model.layers.0"),
                "summary": lambda: frostline.summary(model),
                "select": lambda: frostline.select(model, "model.layers"),
                "unfreeze": lambda: frostline.unfreeze(model, "model.layers"),
                "walk": lambda: list(model.named_parameters())}

    runs = {layers: calls(model) for layers, model in models.items()}
    times = {layers: {name: [] for name in CALLS} for layers in sizes}
    spent = dict.fromkeys(sizes, 0.0)
    done = dict.fromkeys(sizes, 0)

    def wanted(layers: int) -> bool:
        # at least `repeats`, more (up to 50) while under 2 s in all so millisecond calls get a steady median; none
        # past `budget` (the old quadratic code needs a minute per repeat at 1024 layers)
        if spent[layers] > budget:
            return False
        return done[layers] < repeats or (done[layers] < 50 and spent[layers] < 2.0)

    while any(wanted(layers) for layers in sizes):
        for layers in sizes:  # sizes interleaved: their ratios see the same machine load
            if not wanted(layers):
                continue
            for name, call in runs[layers].items():
                gc.collect()
                start = time.perf_counter()
                call()
                elapsed = time.perf_counter() - start
                times[layers][name].append(elapsed)
                spent[layers] += elapsed
            done[layers] += 1
    # the same calls once more, counting operations instead of timing them (deterministic; slow under the profiler,
    # so not at the largest size), as the tests count them (tests/cost.py)
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from cost import operations as counted

    operations = {layers: ({name: counted(call) for name, call in runs[layers].items()}
                           if layers <= COUNT_UPTO else None) for layers in sizes}
    return [{"layers": layers, "tensors": sum(1 for _ in model.parameters()),
             "modules": sum(1 for _ in model.modules()), "seconds": times[layers], "operations": operations[layers],
             "frostline": frostline.__file__}
            for layers, model in models.items()]


def schedule_child(steps: int, threads: int, quick: bool) -> dict:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    import frostline
    from frostline.schedules import LayerwiseSampling

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    dims = QUICK_MODEL if quick else SCHEDULE_MODEL
    batch, seq = (2, 64) if quick else (8, 256)
    model = LlamaForCausalLM(LlamaConfig(**dims, max_position_embeddings=seq, use_cache=False)).train()
    optimizer = frostline.optimizer(model, torch.optim.AdamW, lr=1e-4)
    lisa = LayerwiseSampling(n_active=8, every=1, seed=0)
    ids = torch.randint(dims["vocab_size"], (batch, seq), generator=torch.Generator().manual_seed(0))
    switch, train, changed = [], [], []
    for i in range(steps + 1):
        gc.collect()
        start = time.perf_counter()
        change = lisa.step(model, optimizer, step=i)
        middle = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        model(input_ids=ids, labels=ids).loss.backward()
        optimizer.step()
        end = time.perf_counter()
        switch.append(middle - start)
        train.append(end - middle)
        changed.append(len(change.frozen) + len(change.unfrozen) if change is not None else 0)
    return {"model": dims, "batch": [batch, seq], "threads": threads, "switch_s": switch, "train_s": train,
            "tensors_changed": changed, "parameters": sum(p.numel() for p in model.parameters()),
            "frostline": frostline.__file__}


# -- the parent --------------------------------------------------------------------------------------------------
def in_child(src: Path, args: list[str]) -> dict:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(src), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep))
    env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    out = subprocess.run([sys.executable, __file__, *args], env=env, check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def label(src: Path) -> str:
    try:
        commit = subprocess.run(["git", "-C", str(src), "rev-parse", "--short", "HEAD"], capture_output=True,
                                text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(src), "status", "--porcelain", "--", "."], capture_output=True,
                               text=True, check=True).stdout.strip()
        return commit + ("+changes" if dirty else "")
    except (subprocess.CalledProcessError, FileNotFoundError):
        return str(src)


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def seconds(value: float) -> str:
    return f"{value:.4f}" if value < 1 else f"{value:.2f}"


def call_tables(results: dict[str, list[dict]], trees: list[str]) -> tuple[str, str]:
    from frostline._table import render

    rows = []
    for tree in trees:
        for r in results[tree]:
            rows.append([tree, str(r["layers"]), f"{r['tensors']:,}", f"{r['modules']:,}",
                         *(seconds(median(r["seconds"][c])) for c in CALLS),
                         str(min(len(r["seconds"][c]) for c in CALLS))])
    table = render(["checkout", "layers", "tensors", "modules", *(f"{c} s" for c in CALLS), "repeats"], rows)
    growth = []
    for tree in trees:
        runs = results[tree]
        for before, after in zip(runs, runs[1:], strict=False):
            ratio = after["layers"] / before["layers"]
            growth.append([tree, f"{before['layers']} -> {after['layers']}" + ("" if ratio == 4 else f" (x{ratio:g})"),
                           *(f"x{median(after['seconds'][c]) / median(before['seconds'][c]):.1f}" for c in CALLS)])
    counted = []
    for tree in trees:
        runs = [r for r in results[tree] if r.get("operations")]
        for before, after in zip(runs, runs[1:], strict=False):
            counted.append([tree, f"{before['layers']} -> {after['layers']}",
                            *(f"x{after['operations'][c] / before['operations'][c]:.1f}" for c in CALLS)])
    growth_table = render(["checkout", "growth per 4x layers", *CALLS], growth)
    if counted:
        growth_table += "\n\n" + render(["checkout", "operations per 4x layers", *CALLS], counted)
    return table, growth_table


def schedule_table(results: dict[str, dict], trees: list[str]) -> str:
    from frostline._table import render

    rows = []
    for tree in trees:
        r = results[tree]
        switch, train = median(r["switch_s"][1:]), median(r["train_s"][1:])
        rows.append([tree, f"{r['switch_s'][0]:.3f}", f"{switch:.3f}", f"{train:.3f}", f"{100 * switch / train:.1f}%",
                     f"{100 * min(r['switch_s'][1:]) / min(r['train_s'][1:]):.1f}%",
                     f"{statistics.mean(r['tensors_changed'][1:]):.0f}", str(len(r["switch_s"]) - 1)])
    return render(["checkout", "first switch s", "switch s", "train step s", "switch / step", "fastest / fastest",
                   "tensors changed", "steps"], rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--layers", type=int, nargs="+", default=[16, 64, 256, 1024])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--budget", type=float, default=60.0, help="seconds per model size after which repeats stop")
    parser.add_argument("--steps", type=int, default=10, help="schedule steps timed after the first")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--baseline", type=Path, help="src/ of an older checkout to measure alongside this one")
    parser.add_argument("--other", type=Path, action="append", default=[],
                        help="src/ of a further variant to measure alongside (labelled by its path); repeatable")
    parser.add_argument("--quick", action="store_true", help="16, 64 and 256 layers, 2 repeats, a tiny schedule model")
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        kind, *rest = args.child
        result = (calls_child([int(n) for n in rest], args.repeats, args.budget) if kind == "calls"
                  else schedule_child(args.steps, args.threads, args.quick))
        print(json.dumps(result))
        return
    if args.quick:
        args.layers, args.repeats, args.steps = [n for n in args.layers if n <= 256], 2, 3
    trees = {label(HERE_SRC): HERE_SRC}
    if args.baseline is not None:
        trees = {f"{label(args.baseline)} (before)": args.baseline.resolve(), **trees}
    trees.update({str(src): src.resolve() for src in args.other})
    names = list(trees)
    common = ["--repeats", str(args.repeats), "--budget", str(args.budget), "--steps", str(args.steps),
              "--threads", str(args.threads)] + (["--quick"] if args.quick else [])
    calls: dict[str, list[dict]] = {}
    for name in names:  # one child per checkout, back to back; in it the sizes are interleaved
        calls[name] = in_child(trees[name], ["--child", "calls", *map(str, args.layers), *common])
        for r in calls[name]:
            print(f"{name}, {r['layers']} layers: " + ", ".join(
                f"{c} {median(r['seconds'][c]):.4f} s" for c in CALLS), flush=True)
    schedule = {}
    for name in names:
        schedule[name] = in_child(trees[name], ["--child", "schedule", *common])
        print(f"{name}, schedule: switch {median(schedule[name]['switch_s'][1:]):.3f} s, training step "
              f"{median(schedule[name]['train_s'][1:]):.3f} s", flush=True)
    from frostline._table import WIDTH, paragraph

    table, growth = call_tables(calls, names)
    sched = schedule_table(schedule, names)
    load = os.getloadavg()[0]
    dims = QUICK_MODEL if args.quick else SCHEDULE_MODEL
    batch = "2 x 64" if args.quick else "8 x 256"
    head = ("Llama-style meta models (LlamaConfig defaults, num_hidden_layers varied), sizes interleaved; median "
            "over the repeats counted per call")
    sched_head = (f"LayerwiseSampling(n_active=8, every=1) on a {dims['num_hidden_layers']}-layer Llama (hidden "
                  f"{dims['hidden_size']}, MLP {dims['intermediate_size']}, vocab {dims['vocab_size']}), AdamW, batch "
                  f"{batch} tokens, {args.threads} threads, OMP_WAIT_POLICY="
                  f"{os.environ.get('OMP_WAIT_POLICY', 'PASSIVE')}; medians of {args.steps} steps after the first")
    head, sched_head = paragraph(head, WIDTH), paragraph(sched_head, WIDTH)
    text = f"{head}\n{table}\n\n{growth}\n\n{sched_head}\n{sched}\n(load average {load:.1f} on {os.cpu_count()} cores)"
    print(text)
    RESULTS.mkdir(exist_ok=True)
    stem = "scale-quick" if args.quick else "scale"
    report = {"config": {k: ([str(p) for p in v] if k == "other" else str(v) if isinstance(v, Path) else v)
                         for k, v in vars(args).items() if k != "child"},
              "checkouts": {name: str(path) for name, path in trees.items()}, "load_average_at_end": load,
              "calls": calls, "schedule": schedule}
    (RESULTS / f"{stem}.json").write_text(json.dumps(report, indent=1) + "\n")
    (RESULTS / f"{stem}.md").write_text(f"```\n{text}\n```\n")


if __name__ == "__main__":
    main()
