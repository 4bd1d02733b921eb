"""Time to accuracy on real data: how soon does each freezing method reach full fine-tuning's accuracy?

The pretrained all-MiniLM-L6-v2 with mean pooling and a linear head (:class:`frostline.demo.TextClassifier`, its
optimizer :func:`frostline.demo.classifier_optimizer`: AdamW lr 1e-4, head x20, weight decay 0.01) fine-tunes on
fixed stratified subsets of two public datasets (:mod:`frostline.datasets`), 3 seeds each:

* Rotten Tomatoes (fresh/rotten review snippets), and 20 Newsgroups (20 topics, official split), sizes below;
* every method trains the same epochs on the same batches (order and head initialisation fixed by the seed);
* held-out accuracy is measured every ``--eval-every`` optimizer steps and at the end; evaluation is not counted in
  the train time (it is reported apart), nor is anything else outside the training steps.

Methods: full fine-tuning; the frozen encoder with its pooled output cached (a linear probe); embeddings + layers 0-3
frozen with the layer-3 output cached; GradualUnfreeze; UnfreezeAt; ProgressiveFreeze; AutoFreeze; AutoFreeze +
cache. The last one is ``FeatureCache(model, upto=schedule)``: it follows AutoFreeze's frozen prefix, advancing
stored rows through newly frozen blocks instead of recomputing them (before its re-run, this row was measured with
a new cache built by hand each time the prefix grew, refilled from the input).

For each method: held-out accuracy (mean +- sd over seeds); the train time to reach the target, full fine-tuning's
final accuracy (mean over seeds) minus 1 point, read off the seed-mean curve (the first evaluation where the mean
accuracy reaches it; "never" if none does); total train time; peak memory: the largest rise of the process's
resident memory above its level when the run started (sampled every 5 ms during training; CPU PyTorch keeps no
allocator peak), with the optimizer state and cache sizes beside it. Runs go round-robin (seed by seed, every method
in turn), so a machine shared with other work slows every method alike.

    python benchmarks/time_to_accuracy.py [--quick] [--seeds 3] [--dataset NAME] [--method NAME] [--replot] [--merge]

Writes benchmarks/results/time_to_accuracy.json and .png (``-quick`` in the names with ``--quick``). With
``--dataset NAME`` it writes ``time_to_accuracy-NAME.json`` only (two datasets can run as two processes), and
``--merge`` combines those into the results above. With ``--method NAME`` (repeatable) it runs those methods and
full fine-tuning only and writes ``time_to_accuracy-rerun-DATASETS.json``; ``--merge`` puts such a re-run beside
the results: its methods' rows come from it, with ratios against its own full fine-tuning (the main run's runs of
those methods are kept under ``superseded``).
"""

from __future__ import annotations

import argparse
import copy
import ctypes
import gc
import json
import os
import platform
import statistics
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

import frostline  # noqa: E402
from frostline import datasets  # noqa: E402
from frostline._table import human_bytes, render  # noqa: E402
from frostline.demo import FROZEN_PREFIX, TextClassifier, _pretrained, accuracy, classifier_optimizer, encode  # noqa: E402
from frostline.errors import CacheError  # noqa: E402
from frostline.schedules import AutoFreeze, GradualUnfreeze, ProgressiveFreeze, Schedule, UnfreezeAt  # noqa: E402
from frostline.summary import optimizer_state_bytes  # noqa: E402

RESULTS = Path(__file__).parent / "results"


@dataclass(frozen=True)
class Setting:
    """One dataset's subset and training length."""

    loader: Callable[..., datasets.TextSplits]
    n_train: int
    n_test: int
    max_length: int
    epochs: int
    batch_size: int = 16
    eval_every: int = 25  # optimizer steps


# sized for about half an hour of one CPU core in all (8 methods x 3 seeds x 2 datasets = 48 runs)
SETTINGS = {
    "rotten_tomatoes": Setting(datasets.rotten_tomatoes, n_train=400, n_test=300, max_length=32, epochs=3,
                               eval_every=15),
    "newsgroups": Setting(datasets.newsgroups, n_train=400, n_test=300, max_length=32, epochs=3, eval_every=15),
}
QUICK = {name: Setting(s.loader, n_train=48, n_test=24, max_length=16, epochs=2, batch_size=8, eval_every=3)
         for name, s in SETTINGS.items()}


@dataclass(frozen=True)
class Method:
    """How one method trains: what is frozen from the start, what is cached, which schedule drives it."""

    name: str
    frozen: tuple[str, ...] = ()  # selector specs frozen before training
    cache_upto: str | None = None  # a fixed frozen prefix, cached
    schedule: Callable[[int, int], Schedule] | None = None  # (total steps, steps per epoch) -> schedule
    follow: bool = False  # rebuild the cache where the schedule's frozen prefix ends whenever it grows


METHODS = [
    Method("full fine-tuning"),
    Method("encoder frozen + cached probe", frozen=("backbone",), cache_upto="pool"),
    Method("layers 0-3 frozen + cache", frozen=tuple(FROZEN_PREFIX), cache_upto="backbone.encoder.layer.3"),
    Method("GradualUnfreeze(lr_divisor=2.6)", schedule=lambda total, per_epoch: GradualUnfreeze(lr_divisor=2.6)),
    Method("UnfreezeAt(backbone, epoch 1)",
           schedule=lambda total, per_epoch: UnfreezeAt("backbone", epoch=1, warmup_epochs=1)),
    Method("ProgressiveFreeze(t0=0.5, cubic)", schedule=lambda total, per_epoch: ProgressiveFreeze(
        t0=0.5, schedule="cubic", total_steps=total)),
    Method("AutoFreeze(every 1/10)", schedule=lambda total, per_epoch: AutoFreeze(every_n_steps=max(total // 10, 1))),
    Method("AutoFreeze(every 1/10) + cache",
           schedule=lambda total, per_epoch: AutoFreeze(every_n_steps=max(total // 10, 1)), follow=True),
]


# -- memory ------------------------------------------------------------------------------------------------------
class PeakRSS:
    """The largest rise of this process's resident memory above its level at start, sampled in a thread, less
    ``offset`` (the held-out rows kept for evaluation) and not while ``paused`` (during evaluation)."""

    def __init__(self, every: float = 0.005):
        self.every, self.peak, self.paused, self.offset = every, 0, False, 0
        self._page = os.sysconf("SC_PAGE_SIZE")
        self._stop = threading.Event()

    def _rss(self) -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * self._page

    def __enter__(self) -> PeakRSS:
        gc.collect()
        try:  # give freed heap back to the system, so the baseline is what this run starts with
            ctypes.CDLL("libc.so.6").malloc_trim(0)
        except OSError:
            pass
        self.base = self._rss()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()
        return self

    def _watch(self) -> None:
        while not self._stop.wait(self.every):
            if not self.paused:
                self.peak = max(self.peak, self._rss() - self.base - self.offset)

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


# -- one run -----------------------------------------------------------------------------------------------------
def _follow(upto: str | None, model: torch.nn.Module, cache: frostline.FeatureCache | None):
    """A cache of the frozen prefix that ends at ``upto``: the same one while the prefix is unchanged."""
    if upto is None:
        return None
    if cache is not None and cache.upto == upto:
        return cache
    return frostline.FeatureCache(model, upto=upto)


class _HeldOut:
    """Held-out accuracy, through a cache of the frozen prefix where there is one (only to make evaluation, which
    the train time does not count, cheaper: the same logits, checked by the cache). Ids are held-out row numbers."""

    def __init__(self, model: torch.nn.Module, test: tuple[torch.Tensor, ...]):
        self.model, self.test, self.cache = model, test, None

    def __call__(self, upto: str | None) -> float:
        if upto == "backbone":  # the encoder's output is a ModelOutput, not a tensor: cut after pooling instead
            upto = "pool"
        self.cache = _follow(upto, self.model, self.cache)
        try:
            return accuracy(self.model, *self.test, self.cache)
        except CacheError:  # cannot be cut there: evaluate the model itself
            self.cache = None
            return accuracy(self.model, *self.test)

    @property
    def nbytes(self) -> int:
        return self.cache.nbytes if self.cache is not None else 0


def _cache_state(cache) -> tuple | None:
    """Rows stored and batches advanced; None while nothing is cached (no cache, or no prefix frozen yet)."""
    if cache is None or cache.upto is None:
        return None
    return len(cache), getattr(cache, "advanced", 0)


def run(method: Method, seed: int, setting: Setting, pristine, train, test, num_classes: int) -> dict:
    ids, mask, labels = train
    torch.manual_seed(seed)
    model = TextClassifier(copy.deepcopy(pristine), num_classes).train()
    if method.frozen:
        frostline.freeze(model, list(method.frozen))
    optimizer = classifier_optimizer(model)
    per_epoch = -(-len(ids) // setting.batch_size)
    total = setting.epochs * per_epoch
    schedule = method.schedule(total, per_epoch) if method.schedule is not None else None
    cache = frostline.FeatureCache(model, upto=method.cache_upto) if method.cache_upto else None
    held_out = _HeldOut(model, test)
    clock = cpu = eval_seconds = 0.0
    caches_built = int(cache is not None)
    curve = []
    step = served = 0
    with PeakRSS() as memory:
        for epoch in range(setting.epochs):
            order = torch.randperm(len(ids), generator=torch.Generator().manual_seed(seed * 100 + epoch))
            torch.manual_seed(seed * 1000 + epoch)  # the same dropout draws for every method
            for batch in order.split(setting.batch_size):
                before = _cache_state(cache)
                start, start_cpu = time.perf_counter(), time.process_time()
                if schedule is not None and (schedule.unit == "step" or step % per_epoch == 0):
                    schedule.step(model, optimizer, epoch=epoch, step=step)
                    if method.follow and cache is None:  # one cache, following the schedule's frozen prefix
                        cache, caches_built = frostline.FeatureCache(model, upto=schedule), 1
                x, m, y = ids[batch], mask[batch], labels[batch]
                logits = cache(batch, x, m) if cache is not None else model(x, m)
                loss = F.cross_entropy(logits, y)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                clock += time.perf_counter() - start
                cpu += time.process_time() - start_cpu
                served += before is not None and before == _cache_state(cache)  # no row added, none advanced
                step += 1
                if step % setting.eval_every == 0 or step == total:
                    memory.paused = True
                    t = time.perf_counter()
                    acc = held_out(method.cache_upto or (schedule.frozen_upto() if schedule else None))
                    eval_seconds += time.perf_counter() - t
                    memory.offset, memory.paused = held_out.nbytes, False
                    curve.append({"step": step, "seconds": clock, "cpu_seconds": cpu, "accuracy": acc})
    if schedule is not None and hasattr(schedule, "close"):
        schedule.close()
    sizes = [(p.numel(), p.requires_grad) for p in model.parameters()]
    return {"method": method.name, "seed": seed, "accuracy": curve[-1]["accuracy"], "seconds": clock,
            "cpu_seconds": cpu, "eval_seconds": eval_seconds, "peak_rss_rise": memory.peak,
            "optimizer_state_bytes": optimizer_state_bytes(optimizer),
            "cache_bytes": cache.nbytes if cache is not None else 0, "caches_built": caches_built,
            "advanced_batches": getattr(cache, "advanced", 0),  # rows moved to a deeper prefix, not recomputed
            "served_steps": served,  # steps whose whole batch came from stored rows (the prefix skipped)
            "frozen_at_end": sum(n for n, trains in sizes if not trains) / sum(n for n, _ in sizes),
            "schedule_changes": len(schedule.history) if schedule is not None else 0, "curve": curve}


# -- summary -----------------------------------------------------------------------------------------------------
def _sd(values: list[float]) -> float:
    return statistics.stdev(values) if len(values) > 1 else 0.0


def summarize(runs: list[dict]) -> dict:
    """Per method: accuracy mean/sd, the seed-mean curve, time to the target, totals; the target itself."""
    full = [r for r in runs if r["method"] == METHODS[0].name]
    target = statistics.mean(r["accuracy"] for r in full) - 0.01
    full_seconds = statistics.mean(r["seconds"] for r in full)
    full_cpu = statistics.mean(r["cpu_seconds"] for r in full)
    rows = []
    for name in dict.fromkeys(r["method"] for r in runs):
        mine = [r for r in runs if r["method"] == name]
        points = list(zip(*(r["curve"] for r in mine), strict=False))  # evaluation k of every seed (same steps for each)
        curve = [{"step": p[0]["step"], "seconds": statistics.mean(q["seconds"] for q in p),
                  "cpu_seconds": statistics.mean(q["cpu_seconds"] for q in p),
                  "accuracy": statistics.mean(q["accuracy"] for q in p)} for p in points]
        reached = next((c for c in curve if c["accuracy"] >= target - 1e-9), None)
        rows.append({
            "method": name, "accuracy_mean": statistics.mean(r["accuracy"] for r in mine),
            "accuracy_sd": _sd([r["accuracy"] for r in mine]), "curve": curve,
            "time_to_target": reached["seconds"] if reached else None,
            "cpu_time_to_target": reached["cpu_seconds"] if reached else None,
            "step_to_target": reached["step"] if reached else None,
            "seconds_mean": statistics.mean(r["seconds"] for r in mine),
            "seconds_sd": _sd([r["seconds"] for r in mine]),
            "cpu_seconds_mean": statistics.mean(r["cpu_seconds"] for r in mine),
            "eval_seconds_mean": statistics.mean(r["eval_seconds"] for r in mine),
            "peak_rss_rise_max": max(r["peak_rss_rise"] for r in mine),
            "optimizer_state_bytes": max(r["optimizer_state_bytes"] for r in mine),
            "cache_bytes_max": max(r["cache_bytes"] for r in mine),
            "caches_built_mean": statistics.mean(r["caches_built"] for r in mine),
            "served_steps_mean": statistics.mean(r.get("served_steps", 0) for r in mine),
            "advanced_batches_mean": statistics.mean(r.get("advanced_batches", 0) for r in mine),
            "frozen_at_end": statistics.mean(r["frozen_at_end"] for r in mine),
            "speedup_vs_full_total": full_seconds / reached["seconds"] if reached else None,
            "cpu_speedup_vs_full_total": full_cpu / reached["cpu_seconds"] if reached else None,
        })
    full_row = rows[0]
    for row in rows:
        row["speedup_vs_full_time_to_target"] = (full_row["time_to_target"] / row["time_to_target"]
                                                 if row["time_to_target"] and full_row["time_to_target"] else None)
    best = max((r for r in rows[1:] if r["speedup_vs_full_total"]), key=lambda r: r["speedup_vs_full_total"],
               default=None)
    return {"target": target, "full_seconds": full_seconds, "full_cpu_seconds": full_cpu, "rows": rows,
            "best": None if best is None else {"method": best["method"], "speedup": best["speedup_vs_full_total"],
                                               "cpu_speedup": best["cpu_speedup_vs_full_total"],
                                               "goal_met": best["speedup_vs_full_total"] >= 2.5}}


def add_rerun(results: dict, rerun: dict, file: str) -> None:
    """Put a ``--method`` run into ``results``: per dataset, its runs (full fine-tuning and the methods it re-ran)
    go under ``rerun``, summarized apart (ratios only within one run), and the main run's runs of those methods
    move to ``superseded`` (kept, not summarized)."""
    again = [m for m in rerun["meta"]["methods"] if m != METHODS[0].name]
    for name, d in rerun["datasets"].items():
        base = results["datasets"].get(name)
        if base is None:
            raise SystemExit(f"{file} re-ran {name}, which the results do not hold; run every method on it first")
        differ = {k: (base["setting"][k], v) for k, v in d["setting"].items() if base["setting"].get(k) != v}
        if differ:
            raise SystemExit(f"{file} ran {name} with another setting than the results (results, re-run): {differ}")
        base.setdefault("superseded", []).extend(r for r in base["runs"] if r["method"] in again)
        base["runs"] = [r for r in base["runs"] if r["method"] not in again]
        base["rerun"] = {"file": file, "methods": rerun["meta"]["methods"], "meta": rerun["meta"],
                         "runs": d["runs"]}


def best_line(summary: dict) -> str:
    best = summary["best"]
    return (f"best frostline recipe: {best['method']}, at the target in 1/{best['speedup']:.2f} of full "
            f"fine-tuning's train time (1/{best['cpu_speedup']:.2f} of its CPU time; goal 2.5x: "
            f"{'met' if best['goal_met'] else 'not met'})\n" if best else "no frostline recipe reached the target\n")


def table(name: str, setting: dict, summary: dict, seeds: int) -> str:
    rows = [[r["method"], f"{100 * r['accuracy_mean']:.1f} ± {100 * r['accuracy_sd']:.1f}",
             "never" if r["time_to_target"] is None else f"{r['time_to_target']:.0f}s (step {r['step_to_target']})",
             "-" if r["speedup_vs_full_total"] is None else f"{r['speedup_vs_full_total']:.2f}x",
             "-" if r["cpu_speedup_vs_full_total"] is None else f"{r['cpu_speedup_vs_full_total']:.2f}x",
             f"{r['seconds_mean']:.0f}s", f"{r['cpu_seconds_mean']:.0f}s", human_bytes(r["peak_rss_rise_max"]),
             human_bytes(r["optimizer_state_bytes"]), human_bytes(r["cache_bytes_max"]) if r["cache_bytes_max"]
             else "-"] for r in summary["rows"]]
    title = (f"{name}: {setting['n_train']} train / {setting['n_test']} held out, {setting['max_length']} tokens, "
             f"{setting['epochs']} epochs of batch {setting['batch_size']}, {seeds} seeds, "
             f"{setting['threads']} threads; target = full fine-tuning's accuracy - 1 point = "
             f"{100 * summary['target']:.1f}%")
    return render(["method", "held-out acc % (mean ± sd)", "time to target", "full time / that",
                   "same in CPU time", "train time", "CPU time", "peak RSS rise", "optimizer state", "cache"], rows,
                  title=title)


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(results["datasets"])
    fig, axes = plt.subplots(1, len(names), figsize=(7 * len(names), 5), squeeze=False)
    for ax, name in zip(axes[0], names, strict=False):
        summary = results["datasets"][name]["summary"]
        for i, row in enumerate(summary["rows"]):
            ax.plot([c["seconds"] for c in row["curve"]], [c["accuracy"] for c in row["curve"]],
                    marker=".", color=f"C{i}", label=row["method"])
        rerun = results["datasets"][name].get("rerun")
        for i, row in enumerate(rerun["summary"]["rows"] if rerun else []):  # another run: its own full curve
            ax.plot([c["seconds"] for c in row["curve"]], [c["accuracy"] for c in row["curve"]], marker="x",
                    ls="--", color="black" if i == 0 else f"C{len(summary['rows']) + i}",
                    label=f"{row['method']} (re-run)")
        ax.axhline(summary["target"], color="grey", ls="--", lw=1, label="full fine-tuning - 1 point")
        ax.axvline(0.4 * summary["full_seconds"], color="grey", ls=":", lw=1, label="40% of full's train time")
        ax.set_xlabel("train time, s (mean of seeds; evaluation not counted)")
        ax.set_ylabel("held-out accuracy (mean of seeds)")
        ax.set_title(f"{name}, all-MiniLM-L6-v2, CPU")
        ax.grid(alpha=0.3)
    axes[0][-1].legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny subsets, 1 seed: a smoke run (minutes)")
    parser.add_argument("--seeds", type=int, default=None, help="seeds (default 3; 1 with --quick)")
    parser.add_argument("--dataset", action="append", choices=list(SETTINGS), help="only this dataset (repeatable)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (default 1: on a shared machine, more threads wait on each other)")
    parser.add_argument("--replot", action="store_true", help="redo the tables and plot from the JSON")
    parser.add_argument("--merge", action="store_true", help="combine the per-dataset JSON files (--dataset runs) "
                        "and the re-runs of some methods (--method runs) into the results")
    parser.add_argument("--method", action="append", choices=[m.name for m in METHODS], metavar="NAME",
                        help="only this method (repeatable; full fine-tuning is always run too, since ratios are "
                             "taken against it in the same run); writes a re-run file that --merge adds")
    args = parser.parse_args()
    stem = "time_to_accuracy" + ("-quick" if args.quick else "")
    methods = [m for m in METHODS if m is METHODS[0] or m.name in (args.method or [m.name])]
    if args.replot:
        results = json.loads((RESULTS / f"{stem}.json").read_text())
    elif args.merge:
        parts = [json.loads((RESULTS / f"{stem}-{name}.json").read_text()) for name in SETTINGS
                 if (RESULTS / f"{stem}-{name}.json").is_file()]
        if parts:
            results = {"meta": parts[0]["meta"], "datasets": {k: v for p in parts for k, v in p["datasets"].items()}}
            results["meta"]["benchmark_seconds"] = [p["meta"]["benchmark_seconds"] for p in parts]
        else:  # no new run of every method: the re-runs below go into the results as they are
            results = json.loads((RESULTS / f"{stem}.json").read_text())
        for path in sorted(RESULTS.glob(f"{stem}-rerun-*.json")):
            add_rerun(results, json.loads(path.read_text()), path.name)
    else:
        torch.set_num_threads(args.threads)
        seeds = args.seeds or (1 if args.quick else 3)
        settings = QUICK if args.quick else SETTINGS
        pristine, tokenizer = _pretrained(None)
        results = {"meta": {"model": "all-MiniLM-L6-v2", "torch": torch.__version__, "threads":
                            torch.get_num_threads(), "cpu": platform.processor() or platform.machine(),
                            "seeds": seeds, "quick": args.quick,
                            "timing": "train steps only (perf_counter); evaluation excluded, reported apart"},
                   "datasets": {}}
        started = time.perf_counter()
        for name in args.dataset or list(settings):
            s = settings[name]
            data = s.loader(n_train=s.n_train, n_test=s.n_test, seed=0)
            train, test = encode(tokenizer, data.train, s.max_length), encode(tokenizer, data.test, s.max_length)
            runs = []
            for seed in range(seeds):  # round-robin: every method once per seed, in turn
                for method in methods:
                    runs.append(run(method, seed, s, pristine, train, test, len(data.classes)))
                    r = runs[-1]
                    print(f"{name} seed {seed}  {method.name:34s} acc {r['accuracy']:.3f}  {r['seconds']:6.1f}s "
                          f"train  {r['cpu_seconds']:6.1f}s CPU  {r['eval_seconds']:5.1f}s eval  "
                          f"{human_bytes(r['peak_rss_rise'])}", flush=True)
            setting = {"n_train": len(data.train), "n_test": len(data.test), "classes": len(data.classes),
                       "max_length": int(train[0].shape[1]), "epochs": s.epochs, "batch_size": s.batch_size,
                       "eval_every": s.eval_every, "threads": torch.get_num_threads()}
            results["datasets"][name] = {"setting": setting, "summary": summarize(runs), "runs": runs}
        results["meta"]["benchmark_seconds"] = time.perf_counter() - started
    for name, d in results["datasets"].items():
        d["summary"] = summarize(d["runs"])  # from the runs, so that --replot/--merge pick up a changed summary
        print(table(name, d["setting"], d["summary"], results["meta"]["seeds"]))
        print(best_line(d["summary"]))
        if "rerun" in d:
            d["rerun"]["summary"] = summarize(d["rerun"]["runs"])
            print(table(f"{name}, re-run of {', '.join(d['rerun']['methods'][1:])} beside full fine-tuning "
                        f"({d['rerun']['file']})", d["setting"], d["rerun"]["summary"], results["meta"]["seeds"]))
            print(best_line(d["rerun"]["summary"]))
    RESULTS.mkdir(exist_ok=True)
    if args.method and not (args.replot or args.merge):
        results["meta"]["methods"] = [m.name for m in methods]
        path = RESULTS / f"{stem}-rerun-{'-'.join(results['datasets'])}.json"
        path.write_text(json.dumps(results, indent=1) + "\n")
        print(f"wrote {path}; --merge adds it to the results")
        return
    if args.dataset and not (args.replot or args.merge):
        path = RESULTS / f"{stem}-{'-'.join(args.dataset)}.json"
        path.write_text(json.dumps(results, indent=1) + "\n")
        print(f"wrote {path}; --merge combines the datasets' files")
        return
    (RESULTS / f"{stem}.json").write_text(json.dumps(results, indent=1) + "\n")
    plot(results, RESULTS / f"{stem}.png")
    print(f"wrote {RESULTS / stem}.json and .png")


if __name__ == "__main__":
    main()
