"""FeatureCache on the pretrained all-MiniLM-L6-v2 against requires_grad-only freezing (shared/anchors/prefix_cache.py).

Model: the encoder and a linear head on the CLS token, batches of 32 sentences x 64 tokens, AdamW, as in the anchor.
Case 1, linear probe: the whole encoder frozen (``upto="encoder"``). Case 2, top 2 of 6 layers trained: embeddings
and layers 0-3 frozen (``upto="encoder.encoder.layer.3"``). Per case three methods, each on its own copy of the model:

* requires_grad: the frozen parameters get ``requires_grad=False``; the prefix still runs forward every step;
* FeatureCache: ``frostline.freeze`` + ``FeatureCache``, filled by ``cache.fill`` before the timed steps (after the
  first epoch every sample is stored);
* hand-written: the anchor's limit, the prefix output computed once and the head (or layers 4-5) trained on it.

Step times are medians over interleaved rounds (every method runs in every round, so a busy machine slows them
alike); ratios are against requires_grad measured in the same run. The anchor's own printed ratios are shown beside.

    python benchmarks/cache.py [--rounds 5] [--steps 3] [--samples 128] [--threads 2] [--quick]

Writes benchmarks/results/cache.json (cache-quick.json with --quick).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import time
from pathlib import Path
from typing import Callable

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
        model = cached(pristine, spec)
        for m in prefix_modules(model, upto):
            m.eval()  # BERT's attention reads its own training flag for dropout: the prefix must be in eval
        cache = frostline.FeatureCache(model, upto=upto)
        opt = adamw(model)
        start = time.perf_counter()
        cache.fill(((torch.arange(b, b + batch), ids[rows(b)], mask[rows(b)]) for b in starts), total=len(starts))
        fill_s = time.perf_counter() - start

        def cache_step(b, m=model, c=cache, o=opt):
            loss = F.cross_entropy(c(torch.arange(b, b + batch), ids[rows(b)], mask[rows(b)]), labels[rows(b)])
            o.zero_grad()
            loss.backward()
            o.step()

        start = time.perf_counter()
        cache_step(0)  # the first call after fill checks the cached forward against the uncached one, once
        first_s = time.perf_counter() - start
        notes[case] = {"fill_seconds": fill_s, "fill_ms_per_sample": 1e3 * fill_s / args.samples,
                       "first_cached_call_seconds": first_s, "cache_bytes": cache.nbytes,
                       "cache_bytes_per_sample": cache.bytes_per_sample, "samples": len(cache)}

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
        label = "linear probe" if case == "probe" else "top 2 of 6 layers"
        for name in methods[case]:
            body.append([label, name, f"{1e3 * t[name]:.3f}", f"{speed[name]:.2f}x",
                         f"{ANCHOR[case]:g}x" if name == "hand-written" else "-",
                         (f">= {GOAL[case]:g}x: {'met' if met else 'NOT met'}") if name == "FeatureCache" else "-"])
    print(render(["case", "method", "step ms", "vs requires_grad", "anchor printed", "goal"], body,
                 title=f"all-MiniLM-L6-v2, batch {batch}x{tokens} tokens, median of {args.rounds} interleaved "
                       f"rounds, {args.threads} threads"))
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
