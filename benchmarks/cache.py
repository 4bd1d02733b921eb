"""FeatureCache on the pretrained all-MiniLM-L6-v2 against requires_grad-only freezing (shared/anchors/prefix_cache.py).

Model: the encoder and a linear head on the CLS token, batches of 32 sentences x 64 tokens, AdamW, as in the anchor.
Case 1, linear probe: the whole encoder frozen (``upto="encoder"``). Case 2, top 2 of 6 layers trained: embeddings
and layers 0-3 frozen (``upto="encoder.encoder.layer.3"``). Per case three methods, each on its own copy of the model:

* requires_grad: the frozen parameters get ``requires_grad=False``; the prefix still runs forward every step;
* FeatureCache: ``frostline.freeze`` + ``FeatureCache``, filled by ``cache.fill`` before the timed steps (after the
  first epoch every sample is stored);
* hand-written: the anchor's limit, the prefix output computed once and the head (or layers 4-5) trained on it;
* linear probe only, "FeatureCache, no content check": the same cache with its per-call content check of the prefix
  weights switched off, to show what that check (issue 13, item 7) costs a cached step; ``--check-cost`` measures
  only that, more carefully (see :func:`check_cost`).

Step times are medians over interleaved rounds (every method runs in every round, so a busy machine slows them
alike); ratios are against requires_grad measured in the same run. The anchor's own printed ratios are shown beside.

    python benchmarks/cache.py [--rounds 5] [--steps 3] [--samples 128] [--threads 2] [--quick]
    python benchmarks/cache.py --check-cost 40 --threads 1   # only the content check's cost (issue 13, item 7)

Writes benchmarks/results/cache.json (cache-quick.json with --quick).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import time
from collections.abc import Callable
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402

import frostline  # noqa: E402
from frostline._table import human_bytes, render  # noqa: E402
from frostline.models import minilm_path  # noqa: E402

RESULTS = Path(__file__).parent / "results"
ANCHOR = {"probe": 1600.0, "top2": 1.89}  # speedups over requires_grad the anchor printed when the issue was filed
GOAL = {"probe": 200.0, "top2": 1.7}
TOP2_SPEC = ["encoder.embeddings", "encoder.encoder.layer.[0-3]"]  # frostline.freeze globs
TOP2_PREFIXES = ["encoder.embeddings.", *(f"encoder.encoder.layer.{i}." for i in range(4))]


class Probe(nn.Module):
    """A transformers encoder and a linear head on its CLS token state (the anchor's model)."""

    def __init__(self, encoder: nn.Module, classes: int = 4):
        super().__init__()
        self.encoder = encoder
        self.head = nn.Linear(encoder.config.hidden_size, classes)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state[:, 0])


def adamw(model: nn.Module) -> torch.optim.Optimizer:
    return torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)


def requires_grad_only(pristine: nn.Module, frozen: list[str]) -> Probe:
    """The anchor's freezing: ``requires_grad=False`` on parameters whose names start with ``frozen``."""
    torch.manual_seed(0)
    model = Probe(copy.deepcopy(pristine)).train()
    for name, p in model.named_parameters():
        p.requires_grad_(not name.startswith(tuple(frozen)))
    return model


def cached(pristine: nn.Module, spec: str | list[str]) -> Probe:
    torch.manual_seed(0)
    return frostline.freeze(Probe(copy.deepcopy(pristine)), spec).train()


def prefix_modules(model: Probe, upto: str) -> list[nn.Module]:
    enc = model.encoder
    return [enc] if upto == "encoder" else [enc.embeddings, *enc.encoder.layer[:4]]


def cache_method(pristine: nn.Module, spec, upto: str, data: tuple, batch: int, check: bool = True):
    """freeze + FeatureCache, filled over the whole dataset; its training step (the first call after ``fill`` done:
    it checks the cached forward against the uncached one, once) and notes. ``check=False``: the per-call content
    check of the prefix's values (issue 13, item 7) switched off, to measure its cost."""
    ids, mask, labels = data
    starts = list(range(0, len(ids), batch))
    model = cached(pristine, spec)
    for m in prefix_modules(model, upto):
        m.eval()  # BERT's attention reads its own training flag for dropout: the prefix must be in eval
    cache = frostline.FeatureCache(model, upto=upto)
    opt = adamw(model)
    start = time.perf_counter()
    cache.fill(((torch.arange(b, b + batch), ids[b:b + batch], mask[b:b + batch]) for b in starts), total=len(starts))
    fill_s = time.perf_counter() - start

    def step(b: int) -> None:
        loss = F.cross_entropy(cache(torch.arange(b, b + batch), ids[b:b + batch], mask[b:b + batch]),
                               labels[b:b + batch])
        opt.zero_grad()
        loss.backward()
        opt.step()

    start = time.perf_counter()
    step(0)
    first_s = time.perf_counter() - start
    notes = {"fill_seconds": fill_s, "fill_ms_per_sample": 1e3 * fill_s / len(ids), "first_cached_call_seconds":
             first_s, "cache_bytes": cache.nbytes, "cache_bytes_per_sample": cache.bytes_per_sample,
             "samples": len(cache)}
    if not check:
        cache._watches = []  # made with the first plan only: no plan is made again while nothing changes
    return step, notes, cache


def check_cost(pristine: nn.Module, data: tuple, batch: int, blocks: int, run: int = 32) -> dict:
    """The linear probe's cached step with the content check and without it, in runs of ``run`` consecutive steps
    per cache, the order rotating; medians and means of this thread's CPU time (which other processes on a busy
    machine inflate less than wall time), and the CPU time of the check itself inside those steps.

    Two caches of each kind, built in the order with, without, without, with: where a model's memory lands moves a
    step by a few percent (the first-built is slower), so each kind pools an early and a late one, and the two of a
    kind, compared, show what the comparison can resolve."""
    kinds = ["with", "without", "without", "with"]
    caches = [cache_method(pristine, "encoder", "encoder", data, batch, check=kind == "with") for kind in kinds]
    inner: list[float] = []
    for _, _, cache in caches:
        for watch in cache._watches:
            def timed_changed(changed=watch.changed):
                start = time.thread_time()
                out = changed()
                inner.append(time.thread_time() - start)
                return out

            watch.changed = timed_changed  # this instance only
    starts = list(range(0, len(data[0]), batch))
    times: list[list[float]] = [[] for _ in caches]
    for i in range(blocks):
        for c in [*range(i % 4, 4), *range(i % 4)]:
            for j in range(run):
                start = time.thread_time()
                caches[c][0](starts[j % len(starts)])
                times[c].append(time.thread_time() - start)
    watch = caches[0][2]._watches[0]
    out = {"blocks": blocks, "steps_per_block": run, "content_check_period_calls": watch.period,
           "content_check_turns": len(watch.turns)}
    for stat in ("median", "mean"):  # the rolling pass runs every 32nd call: the mean counts it, the median not
        f = getattr(statistics, stat)
        with_, without = (f([t for c, t in zip(kinds, times, strict=False) if c == kind for t in t]) for kind in ("with", "without"))
        out[stat] = {"with_ms": 1e3 * with_, "without_ms": 1e3 * without, "ratio": with_ / without,
                     "with_built_first_over_last": f(times[0]) / f(times[3]),
                     "without_built_first_over_last": f(times[1]) / f(times[2]),
                     "check_itself_ms": 1e3 * f(inner), "check_itself_share": f(inner) / without}
    return out


class Pooled(nn.Module):
    """The encoder's CLS-token state as a module of its own, so a cache can store the pooled features."""

    def __init__(self, encoder: nn.Module):
        super().__init__()
        self.encoder = encoder

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state[:, 0]


class PooledProbe(nn.Module):
    def __init__(self, encoder: nn.Module, classes: int = 4):
        super().__init__()
        self.pool = Pooled(encoder)
        self.head = nn.Linear(encoder.config.hidden_size, classes)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.head(self.pool(input_ids, attention_mask))


def overhead(pristine: nn.Module, data: tuple, batch: int, runs: int, run: int = 16) -> dict:
    """Issue 16, item 4: the linear probe's cached step against a hand-written step over precomputed features
    (``bank[ids]``), for the token-level ``last_hidden_state`` cached (``upto="encoder"``; the hand-written step
    indexes a bank of the same token-level rows and takes the CLS token) and for the pooled CLS features cached
    (``upto="pool"``; the hand-written step indexes a bank of them). ``runs`` rounds of ``run`` steps per method,
    the order rotating; medians of this thread's CPU time. Then ``runs`` more rounds of each cached step with its
    per-call checks timed: the prefix check (metadata fingerprint of every prefix tensor and the content check) and
    the input check (row hashes compared with the stored ones), what keeps its rows exact."""
    ids, mask, labels = data
    starts = list(range(0, len(ids), batch))
    steps: dict[str, Callable[[int], None]] = {}
    caches: dict[str, frostline.FeatureCache] = {}
    for case, upto in (("token", "encoder"), ("pooled", "pool")):
        torch.manual_seed(0)
        model = Probe(copy.deepcopy(pristine)) if case == "token" else PooledProbe(copy.deepcopy(pristine))
        frostline.freeze(model, "encoder" if case == "token" else "pool").train()
        model.get_submodule(upto).eval()
        cache = frostline.FeatureCache(model, upto=upto)
        cache.fill((torch.arange(b, b + batch), ids[b:b + batch], mask[b:b + batch]) for b in starts)
        caches[case] = cache
        with torch.no_grad():
            bank = model.get_submodule(upto)(input_ids=ids, attention_mask=mask)
            bank = (bank.last_hidden_state if case == "token" else bank).clone()
        hand = copy.deepcopy(model.head)
        for name, head, forward in (
                ("FeatureCache", model.head, lambda b, c=cache: c(torch.arange(b, b + batch), ids[b:b + batch],
                                                                   mask[b:b + batch])),
                ("hand-written", hand, (lambda b, f=bank, h=hand: h(f[torch.arange(b, b + batch)][:, 0]))
                 if case == "token" else (lambda b, f=bank, h=hand: h(f[torch.arange(b, b + batch)])))):
            opt = torch.optim.AdamW(head.parameters(), lr=1e-4)

            def step(b, forward=forward, opt=opt):
                loss = F.cross_entropy(forward(b), labels[b:b + batch])
                opt.zero_grad()
                loss.backward()
                opt.step()

            step(0)  # the cache's one-time check of the cached forward against the uncached one
            steps[f"{case}: {name}"] = step
    names = list(steps)
    times: dict[str, list[float]] = {n: [] for n in names}
    for i in range(runs):
        for n in names[i % len(names):] + names[:i % len(names)]:
            for j in range(run):
                start = time.thread_time()
                steps[n](starts[j % len(starts)])
                times[n].append(time.thread_time() - start)
    ms = {n: 1e3 * statistics.median(t) for n, t in times.items()}
    checks = {case: checks_ms(cache, steps[f"{case}: FeatureCache"], starts, runs * run) for case, cache in caches.items()}
    return {"step_ms": ms, "ratio": {case: ms[f"{case}: FeatureCache"] / ms[f"{case}: hand-written"]
                                     for case in ("token", "pooled")},
            "checks_ms": checks, "prefix_tensors": {case: len(c._print.tensors) if c._print else 0
                                                    for case, c in caches.items()},
            "bound": 1.25, "runs": runs, "per_run": run}


def checks_ms(cache: frostline.FeatureCache, step: Callable[[int], None], starts: list[int], n: int) -> dict:
    """Median CPU time per call of the cache's per-call checks, over ``n`` steps with them timed (wrapped as
    instance attributes, removed after)."""
    spent: dict[str, list[float]] = {"prefix": [], "hash": [], "compare": []}

    def timed(f: Callable, key: str) -> Callable:
        def run(*a, **k):
            start = time.thread_time()
            out = f(*a, **k)
            spent[key].append(time.thread_time() - start)
            return out
        return run

    cache._revalidate = timed(cache._revalidate, "prefix")  # type: ignore[method-assign]
    cache._hasher.rows = timed(cache._hasher.rows, "hash")  # type: ignore[method-assign]
    cache._check_inputs = timed(cache._check_inputs, "compare")  # type: ignore[method-assign]
    try:
        for j in range(n):
            step(starts[j % len(starts)])
    finally:
        del cache._revalidate, cache._hasher.rows, cache._check_inputs
    inputs = [a + b for a, b in zip(spent["hash"], spent["compare"], strict=True)]
    return {"prefix": 1e3 * statistics.median(spent["prefix"]), "inputs": 1e3 * statistics.median(inputs)}


def time_steps(step: Callable[[int], None], batches: list[int]) -> float:
    times = []
    for b in batches:
        start = time.perf_counter()
        step(b)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=3, help="timed steps per method per round (x10 for cheap ones)")
    parser.add_argument("--samples", type=int, default=128, help="dataset size (a multiple of 32)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="smoke run: 1 round, 1 step, 64 samples, 16 tokens")
    parser.add_argument("--check-cost", type=int, metavar="RUNS", default=0,
                        help="only time the linear probe's cached step with and without the content check of the "
                             "prefix's values, in RUNS runs of 32 steps per cache; writes results/cache-check.json")
    parser.add_argument("--overhead", type=int, metavar="RUNS", default=0,
                        help="only the cached linear-probe step against a hand-written step over precomputed "
                             "features (issue 16, item 4), in RUNS rounds; writes results/cache-overhead.json")
    args = parser.parse_args()
    if args.quick:
        args.rounds, args.steps, args.samples = 1, 1, 64
    torch.set_num_threads(args.threads)
    tokens, batch = (16, 32) if args.quick else (64, 32)

    from transformers import AutoModel
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    pristine = AutoModel.from_pretrained(str(minilm_path()))
    torch.manual_seed(0)
    ids = torch.randint(1000, 30000, (args.samples, tokens))
    mask = torch.ones_like(ids)
    labels = torch.randint(0, 4, (args.samples,))
    starts = list(range(0, args.samples, batch))
    rows = lambda b: slice(b, b + batch)  # noqa: E731
    if args.overhead:
        res = {"setup": {"model": "all-MiniLM-L6-v2", "batch": batch, "tokens": tokens, "samples": args.samples,
                         "threads": args.threads, "torch": torch.__version__},
               **overhead(pristine, (ids, mask, labels), batch, args.overhead)}
        for case, what in (("token", "token-level last_hidden_state cached"), ("pooled", "pooled CLS cached")):
            c = res["checks_ms"][case]
            print(f"linear probe, {what}: cached step {res['step_ms'][f'{case}: FeatureCache']:.3f} ms, hand-written "
                  f"bank[ids] step {res['step_ms'][f'{case}: hand-written']:.3f} ms: x{res['ratio'][case]:.2f} "
                  f"(target <= x1.25; CPU-time medians of {args.overhead} rounds); its per-call checks: prefix "
                  f"({res['prefix_tensors'][case]} tensors) {1e3 * c['prefix']:.0f} us, inputs {1e3 * c['inputs']:.0f} us")
        RESULTS.mkdir(parents=True, exist_ok=True)
        (RESULTS / "cache-overhead.json").write_text(json.dumps(res, indent=1))
        return
    if args.check_cost:
        cost = {"setup": {"model": "all-MiniLM-L6-v2", "batch": batch, "tokens": tokens, "samples": args.samples,
                          "threads": args.threads, "torch": torch.__version__}, **check_cost(
                              pristine, (ids, mask, labels), batch, args.check_cost)}
        for stat in ("median", "mean"):
            c = cost[stat]
            print(f"linear probe, cached step, CPU time, {stat} of {args.check_cost} runs of 32 steps per cache: "
                  f"{c['with_ms']:.3f} ms with the content check, {c['without_ms']:.3f} ms without: x{c['ratio']:.3f} "
                  f"(bound x1.05; same kind, built first over built last: x{c['with_built_first_over_last']:.3f}, "
                  f"x{c['without_built_first_over_last']:.3f}); the check itself {1e3 * c['check_itself_ms']:.1f} "
                  f"us = {100 * c['check_itself_share']:.1f}% of a step without it")
        print(f"content check: every prefix tensor's middle values every {cost['content_check_turns']} calls, every "
              f"value every {cost['content_check_period_calls']} calls")
        RESULTS.mkdir(parents=True, exist_ok=True)
        (RESULTS / "cache-check.json").write_text(json.dumps(cost, indent=1))
        return

    methods: dict[str, dict[str, Callable[[int], None]]] = {}
    notes: dict[str, dict] = {}
    for case, frozen, spec, upto in (("probe", ["encoder."], "encoder", "encoder"),
                                     ("top2", TOP2_PREFIXES, TOP2_SPEC, "encoder.encoder.layer.3")):
        # requires_grad only (train mode, as the anchor runs it)
        base = requires_grad_only(pristine, frozen)
        base_opt = adamw(base)

        def base_step(b, m=base, o=base_opt):
            loss = F.cross_entropy(m(ids[rows(b)], mask[rows(b)]), labels[rows(b)])
            o.zero_grad()
            loss.backward()
            o.step()

        # frostline: freeze + FeatureCache, filled over the whole dataset first
        cache_step, notes[case], _ = cache_method(pristine, spec, upto, (ids, mask, labels), batch)

        # hand-written limit (the anchor's logic): the prefix output computed once, the rest trained on it
        hand = requires_grad_only(pristine, frozen)
        hand_opt = adamw(hand)
        with torch.no_grad():
            hand.eval()
            if case == "probe":
                feats = hand.encoder(input_ids=ids, attention_mask=mask).last_hidden_state[:, 0].clone()
            else:
                h = hand.encoder.embeddings(input_ids=ids)
                for layer in hand.encoder.encoder.layer[:4]:
                    out = layer(h, attention_mask=None)
                    h = out[0] if isinstance(out, tuple) else out
                feats = h.clone()
            hand.train()

        def hand_step(b, m=hand, o=hand_opt, f=feats, case=case):
            if case == "probe":
                logits = m.head(f[rows(b)])
            else:
                h = f[rows(b)]
                for layer in m.encoder.encoder.layer[4:]:
                    out = layer(h, attention_mask=None)
                    h = out[0] if isinstance(out, tuple) else out
                logits = m.head(h[:, 0])
            loss = F.cross_entropy(logits, labels[rows(b)])
            o.zero_grad()
            loss.backward()
            o.step()

        methods[case] = {"requires_grad": base_step, "FeatureCache": cache_step, "hand-written": hand_step}
        if case == "probe":  # the same cache without the content check of the prefix's values (item 7's cost)
            methods[case]["FeatureCache, no content check"] = cache_method(pristine, spec, upto, (ids, mask, labels),
                                                                           batch, check=False)[0]
        for step in methods[case].values():
            step(0)  # warm-up

    medians: dict[tuple[str, str], list[float]] = {}
    for r in range(args.rounds):
        for case, steps in methods.items():
            for name, step in steps.items():
                cheap = name != "requires_grad" and case == "probe"
                n = args.steps * (10 if cheap else 1)
                order = [starts[(r * n + i) % len(starts)] for i in range(n)]
                medians.setdefault((case, name), []).append(time_steps(step, order))
        print(f"round {r + 1}/{args.rounds} done", flush=True)

    result: dict = {"setup": {"model": "all-MiniLM-L6-v2", "batch": batch, "tokens": tokens, "samples": args.samples,
                              "rounds": args.rounds, "threads": args.threads, "torch": torch.__version__},
                    "cases": {}}
    body = []
    for case in methods:
        t = {name: statistics.median(medians[(case, name)]) for name in methods[case]}
        speed = {name: t["requires_grad"] / t[name] for name in t}
        met = speed["FeatureCache"] >= GOAL[case]
        result["cases"][case] = {"step_seconds": t, "speedup_over_requires_grad": speed, "goal": GOAL[case],
                                 "goal_met": met, "anchor_printed_speedup": ANCHOR[case], **notes[case]}
        if "FeatureCache, no content check" in t:
            with_, without = t["FeatureCache"], t["FeatureCache, no content check"]
            result["cases"][case]["content_check"] = {
                "cached_step_seconds_with": with_, "cached_step_seconds_without": without,
                "ratio": with_ / without, "bound": 1.05, "bound_met": with_ / without <= 1.05}
        label = "linear probe" if case == "probe" else "top 2 of 6 layers"
        for name in methods[case]:
            body.append([label, name, f"{1e3 * t[name]:.3f}", f"{speed[name]:.2f}x",
                         f"{ANCHOR[case]:g}x" if name == "hand-written" else "-",
                         (f">= {GOAL[case]:g}x: {'met' if met else 'NOT met'}") if name == "FeatureCache" else "-"])
    print(render(["case", "method", "step ms", "vs requires_grad", "anchor printed", "goal"], body,
                 title=f"all-MiniLM-L6-v2, batch {batch}x{tokens} tokens, median of {args.rounds} interleaved "
                       f"rounds, {args.threads} threads"))
    for case, r in result["cases"].items():
        if "content_check" in r:
            c = r["content_check"]
            print(f"{case}: content check of the prefix's values: cached step {1e3 * c['cached_step_seconds_with']:.3f}"
                  f" ms with it, {1e3 * c['cached_step_seconds_without']:.3f} ms without: x{c['ratio']:.3f} (bound "
                  f"x1.05: {'met' if c['bound_met'] else 'NOT met'}); one pass over every value takes "
                  f"{r['content_check_period_calls']} calls")
    for case, n in notes.items():
        print(f"{case}: cache {human_bytes(n['cache_bytes'])} for {n['samples']} samples "
              f"({human_bytes(n['cache_bytes_per_sample'])}/sample); fill {n['fill_seconds']:.2f} s "
              f"({n['fill_ms_per_sample']:.1f} ms/sample); first cached call (one-time check) "
              f"{n['first_cached_call_seconds']:.2f} s")
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"cache{'-quick' if args.quick else ''}.json"
    out.write_text(json.dumps(result, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
