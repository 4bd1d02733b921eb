"""Freezing schedules against full fine-tuning on one small task: held-out accuracy and wall-time ratio.

Task: sentiment with negation on the pretrained all-MiniLM-L6-v2 (CLS token + linear head). Sentences are
generated from templates ("i thought the film was not dull"); the label flips with a negation, and the
held-out set uses adjectives never seen in training, so it measures how much pretrained knowledge survives.
Each variant trains 4 epochs with AdamW in a plain loop driven by ``schedule.step``; the wall time counts the
training loop only, and its ratio is to full fine-tuning with the same seed, measured in the same run (the
CPU-time ratio is printed beside it: it is less disturbed by other processes on a shared machine).

    python benchmarks/schedules.py [--seeds 3] [--epochs 4] [--threads 1] [--replot]

Writes benchmarks/results/schedules.json, schedules.md and schedules.png.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402

import frostline  # noqa: E402
from frostline._table import render  # noqa: E402
from frostline.models import minilm_path  # noqa: E402
from frostline.schedules import AutoFreeze, GradualUnfreeze, ProgressiveFreeze, UnfreezeAt  # noqa: E402

RESULTS = Path(__file__).parent / "results"
SUBJECTS = ["the movie", "the film", "this show", "the book", "the play", "the album", "the meal", "the hotel",
            "the service", "the game", "the story", "the concert"]
POSITIVE = ["good", "great", "wonderful", "excellent", "enjoyable", "brilliant", "delightful", "superb",
            "charming", "lovely", "fantastic", "pleasant"]
NEGATIVE = ["bad", "awful", "terrible", "boring", "dreadful", "poor", "dull", "horrible", "disappointing",
            "mediocre", "tedious", "unpleasant"]
NEGATIONS = ["", "not ", "never ", "hardly ", "far from "]
FRAMES = ["{s} was {n}{a}", "{s} is {n}{a}", "i thought {s} was {n}{a}", "honestly, {s} was {n}{a}",
          "everyone said {s} is {n}{a}"]


def sentences(adjectives: list[tuple[str, int]], n: int, rng: random.Random) -> list[tuple[str, int]]:
    combos = [(f.format(s=s, n=neg, a=a), label ^ bool(neg))
              for f in FRAMES for s in SUBJECTS for neg in NEGATIONS for a, label in adjectives]
    return rng.sample(combos, n)


def task(seed: int) -> tuple[list[tuple[str, int]], list[tuple[str, int]]]:
    rng = random.Random(seed)
    pos, neg = POSITIVE[:], NEGATIVE[:]
    rng.shuffle(pos), rng.shuffle(neg)
    seen = [(a, 1) for a in pos[:8]] + [(a, 0) for a in neg[:8]]
    unseen = [(a, 1) for a in pos[8:]] + [(a, 0) for a in neg[8:]]
    return sentences(seen, 480, rng), sentences(unseen, 400, rng)


class Classifier(nn.Module):
    def __init__(self, encoder: nn.Module):
        super().__init__()
        self.encoder, self.head = encoder, nn.Linear(encoder.config.hidden_size, 2)

    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(input_ids=ids, attention_mask=mask).last_hidden_state[:, 0])


VARIANTS = {
    "full fine-tuning": lambda steps: None,
    "GradualUnfreeze(lr_divisor=2.6)": lambda steps: GradualUnfreeze(lr_divisor=2.6),
    "UnfreezeAt('encoder', 1, warmup 2)": lambda steps: UnfreezeAt("encoder", epoch=1, warmup_epochs=2),
    "ProgressiveFreeze(t0=0.5, cubic)": lambda steps: ProgressiveFreeze(t0=0.5, schedule="cubic", total_steps=steps),
    "ProgressiveFreeze(t0=0.5, linear)": lambda steps: ProgressiveFreeze(t0=0.5, schedule="linear",
                                                                          total_steps=steps),
    "AutoFreeze(every 1/10 of training)": lambda steps: AutoFreeze(every_n_steps=max(steps // 10, 1)),
}


def run(name: str, seed: int, epochs: int, encoder: nn.Module, tokenizer) -> dict:
    import copy

    train, test = task(seed)
    enc = lambda rows: tokenizer([t for t, _ in rows], padding="max_length", max_length=24, truncation=True,
                                 return_tensors="pt")
    tr, te = enc(train), enc(test)
    ytr, yte = torch.tensor([y for _, y in train]), torch.tensor([y for _, y in test])
    torch.manual_seed(seed)
    model = Classifier(copy.deepcopy(encoder))
    optimizer = frostline.optimizer(model, torch.optim.AdamW, lr=1e-4, weight_decay=0.01)
    batch, per_epoch = 16, len(train) // 16
    schedule = VARIANTS[name](epochs * per_epoch)
    g = torch.Generator().manual_seed(seed)
    model.train()
    elapsed, cpu, step = 0.0, 0.0, 0
    for epoch in range(epochs):
        order = torch.randperm(len(train), generator=g)
        start, start_cpu = time.perf_counter(), time.process_time()
        if schedule is not None and schedule.unit == "epoch":
            schedule.step(model, optimizer, epoch=epoch)
        for b in range(per_epoch):
            if schedule is not None and schedule.unit == "step":
                schedule.step(model, optimizer, epoch=epoch, step=step)
            idx = order[b * batch:(b + 1) * batch]
            loss = F.cross_entropy(model(tr["input_ids"][idx], tr["attention_mask"][idx]), ytr[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            step += 1
        elapsed += time.perf_counter() - start
        cpu += time.process_time() - start_cpu
    model.eval()
    with torch.no_grad():
        accuracy = (model(te["input_ids"], te["attention_mask"]).argmax(-1) == yte).float().mean().item()
    sizes = [(p.numel(), p.requires_grad) for p in model.parameters()]
    frozen = sum(n for n, trains in sizes if not trains) / sum(n for n, _ in sizes)
    return {"variant": name, "seed": seed, "accuracy": accuracy, "seconds": elapsed, "cpu_seconds": cpu,
            "frozen_at_end": frozen,
            "changes": len(schedule.history) if schedule is not None else 0}


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.8))
    for i, r in enumerate(rows):
        color = f"C{i}"
        ax.errorbar(r["time_ratio"], r["accuracy_mean"], yerr=r["accuracy_std"], fmt="o", capsize=3, color=color,
                    label=r["variant"])
        ax.scatter(r["cpu_ratio"], r["accuracy_mean"], facecolors="none", edgecolors=color, s=60)
    ax.set_xlabel("training time / full fine-tuning (filled: wall time, hollow: CPU time; lower is faster)")
    ax.set_ylabel("held-out accuracy (unseen adjectives)")
    ax.set_title("Freezing schedules on all-MiniLM-L6-v2, negation sentiment (CPU)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=130)


def summarize(runs: list[dict], meta: dict) -> tuple[list[dict], str]:
    """Per variant: accuracy mean/sd over seeds, and median time ratios to full fine-tuning of the same seed."""
    full = {r["seed"]: r for r in runs if r["variant"] == "full fine-tuning"}
    rows = []
    for name in dict.fromkeys(r["variant"] for r in runs):
        mine = [r for r in runs if r["variant"] == name]
        acc = [r["accuracy"] for r in mine]
        rows.append({"variant": name, "accuracy_mean": statistics.mean(acc),
                     "accuracy_std": statistics.stdev(acc) if len(acc) > 1 else 0.0,
                     "time_ratio": statistics.median(r["seconds"] / full[r["seed"]]["seconds"] for r in mine),
                     "cpu_ratio": statistics.median(r["cpu_seconds"] / full[r["seed"]]["cpu_seconds"] for r in mine),
                     "seconds_median": statistics.median(r["seconds"] for r in mine),
                     "frozen_at_end": statistics.mean(r["frozen_at_end"] for r in mine)})
    table = render(["variant", "held-out acc (mean ± sd)", "wall s (median)", "wall / full", "CPU / full",
                    "frozen at end"],
                   [[r["variant"], f"{r['accuracy_mean']:.3f} ± {r['accuracy_std']:.3f}", f"{r['seconds_median']:.1f}",
                     f"{r['time_ratio']:.2f}", f"{r['cpu_ratio']:.2f}", f"{100 * r['frozen_at_end']:.1f}%"]
                    for r in rows],
                   title=f"{meta['seeds']} seeds x {meta['epochs']} epochs, 480 train / 400 held-out sentences, "
                         f"batch 16, AdamW lr 1e-4 (frostline.optimizer, wd 0.01), {meta['threads']} CPU thread(s)")
    return rows, table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1: steadier on a shared machine)")
    parser.add_argument("--replot", action="store_true", help="redo the table and plot from schedules.json")
    args = parser.parse_args()
    if args.replot:
        saved = json.loads((RESULTS / "schedules.json").read_text())
        runs, meta = saved["runs"], saved["meta"]
    else:
        torch.set_num_threads(args.threads)
        from transformers import AutoModel, AutoTokenizer

        path = minilm_path()
        tokenizer = AutoTokenizer.from_pretrained(str(path))
        encoder = AutoModel.from_pretrained(str(path), add_pooling_layer=False)
        runs, meta = [], {"seeds": args.seeds, "epochs": args.epochs, "threads": args.threads}
        for seed in range(args.seeds):  # round-robin over variants per seed, so drift hits all variants alike
            for name in VARIANTS:
                runs.append(run(name, seed, args.epochs, encoder, tokenizer))
                print(f"seed {seed}  {name:36s} acc {runs[-1]['accuracy']:.3f}  {runs[-1]['seconds']:6.1f} s wall  "
                      f"{runs[-1]['cpu_seconds']:6.1f} s CPU", flush=True)
    rows, table = summarize(runs, meta)
    print(table)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "schedules.json").write_text(json.dumps({"meta": meta, "rows": rows, "runs": runs}, indent=2) + "\n")
    (RESULTS / "schedules.md").write_text(f"```\n{table}\n```\n")
    plot(rows, RESULTS / "schedules.png")
    print(f"wrote {RESULTS / 'schedules.json'}, schedules.md, schedules.png")


if __name__ == "__main__":
    main()
