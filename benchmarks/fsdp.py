"""FSDP2 (``fully_shard``) with frozen parameters (issue 8): bytes communicated, optimizer state and step time.

    torchrun --nproc_per_node=2 benchmarks/fsdp.py [--rounds 4] [--steps 3] [--batch 8] [--seq 64]

Model: the pretrained all-MiniLM-L6-v2 and a 2-way linear head, as in benchmarks/distributed.py; ``fully_shard`` on
every encoder layer, then on the whole model; gloo, CPU, one thread per process; each rank its own random batch;
AdamW built by ``frostline.optimizer``.

Variants (frozen with frostline before ``fully_shard``):

- ``full``: everything trains.
- ``frozen backbone``: the encoder frozen; only the head trains.
- ``partial delta``: the encoder frozen except 512 rows of the word embeddings (new tokens, say), plus the head,
  with ``strategy="delta"``: the trainable rows are their own small sharded Parameter.
- ``partial mask``: the same rows with ``strategy="mask"``: the whole table trains densely, frozen rows written back
  into each rank's shard after a step.

Per step and rank: **all-gathered** bytes (parameters, forward and backward) and **reduce-scattered** bytes
(gradients), counted by wrapping ``dist.all_gather_single``/``dist.reduce_scatter_single`` (what FSDP2 calls) in
this script only; **optimizer state** bytes held by this rank; **step time** (forward, backward, optimizer step,
zero_grad; the slower rank's time per step; 2 warm-up steps, then rounds in which every variant runs ``--steps``
steps in turn; median). Frozen elements are checked bit-identical to the start after the run.

Rank 0 prints a table and writes benchmarks/results/fsdp.json and fsdp.md.
"""

from __future__ import annotations

import copy
import gc
import json
import os
import statistics

os.environ.setdefault("HF_HUB_OFFLINE", "1")
import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402
from torch.distributed.fsdp import fully_shard  # noqa: E402

import frostline  # noqa: E402

# benchmarks/distributed.py, beside this file
from distributed import (  # noqa: E402
    NEW_TOKENS,
    RESULTS,
    Classifier,
    arguments,
    batch_ids,
    interleave,
    timed_step,
)
from frostline._table import human_bytes, render  # noqa: E402
from frostline.models import load_model  # noqa: E402
from frostline.summary import optimizer_state_bytes  # noqa: E402

WORD_ROWS = "encoder.embeddings.word_embeddings.weight"
SENT = {"gather": 0, "scatter": 0}


def _counting(collective, key: str, which: int, name: str):
    def wrapped(*args, **kwargs):
        tensor = args[which] if len(args) > which else kwargs[name]
        SENT[key] += tensor.numel() * tensor.element_size()
        return collective(*args, **kwargs)

    return wrapped


# all-gather: count the gathered output (full parameters); reduce-scatter: the input (full gradients)
dist.all_gather_single = _counting(dist.all_gather_single, "gather", 0, "output_tensor")
dist.reduce_scatter_single = _counting(dist.reduce_scatter_single, "scatter", 1, "input")


def variants(base: Classifier) -> list[tuple[str, Classifier]]:
    out = [("full", copy.deepcopy(base)), ("frozen backbone", frostline.freeze(copy.deepcopy(base), "encoder"))]
    for strategy in ("delta", "mask"):
        partial = frostline.freeze(copy.deepcopy(base), ["encoder", "!encoder.embeddings.word_embeddings"])
        frostline.freeze(partial, WORD_ROWS, rows=range(NEW_TOKENS.stop, base.encoder.config.vocab_size),
                         strategy=strategy)
        out.append((f"partial {strategy} (512 rows)", partial))
    return out


class Run:
    def __init__(self, model: Classifier, batch: int, seq: int):
        self.start = {n: t.clone() for n, t in model.state_dict().items()}
        self.model, self.batch, self.seq = model, batch, seq
        for layer in model.encoder.encoder.layer:
            fully_shard(layer)
        fully_shard(model)
        self.optimizer = frostline.optimizer(model, torch.optim.AdamW, lr=1e-4)
        self.generator = torch.Generator().manual_seed(dist.get_rank())
        self.times: list[float] = []
        self.sent = {"gather": 0, "scatter": 0}
        self.steps = 0

    def step(self, record: bool) -> None:
        ids = batch_ids(self.model, self.batch, self.seq, self.generator, self.steps)
        before = dict(SENT)
        elapsed = timed_step(self.model, self.optimizer, ids)
        if record:
            self.times.append(elapsed)
            self.steps += 1
            for key in SENT:
                self.sent[key] += SENT[key] - before[key]

    def frozen_identical(self) -> bool:
        """Frozen values as at the start: whole frozen parameters, and the frozen rows of the partial tensor."""
        now = {n: t.full_tensor() if hasattr(t, "full_tensor") else t for n, t in self.model.state_dict().items()}
        trainable = {n for n, p in self.model.named_parameters() if p.requires_grad}
        same = all(torch.equal(now[n], self.start[n]) for n in now if n not in trainable and n != WORD_ROWS)
        if WORD_ROWS in now and WORD_ROWS not in trainable:
            frozen_rows = slice(NEW_TOKENS.stop, None)
            same = same and torch.equal(now[WORD_ROWS][frozen_rows], self.start[WORD_ROWS][frozen_rows])
        return same

    def result(self) -> dict[str, float]:
        return {"trainable": frostline.summary(self.model).trainable,
                "all_gather_bytes": self.sent["gather"] / self.steps,
                "reduce_scatter_bytes": self.sent["scatter"] / self.steps,
                "optimizer_state_bytes_rank": optimizer_state_bytes(self.optimizer),
                "step_ms": 1000 * statistics.median(self.times)}


def main() -> None:
    args = arguments(__doc__)
    base = Classifier(load_model("minilm"))
    runs = {name: Run(model, args.batch, args.seq) for name, model in variants(base)}
    interleave(runs, args.rounds, args.steps)
    results = {name: {**run.result(), "frozen_identical": run.frozen_identical()} for name, run in runs.items()}
    full_ms = results["full"]["step_ms"]
    rows = [[name, f"{r['trainable']:,}", human_bytes(r["all_gather_bytes"]), human_bytes(r["reduce_scatter_bytes"]),
             human_bytes(r["optimizer_state_bytes_rank"]), f"{r['step_ms']:.0f}", f"{r['step_ms'] / full_ms:.2f}",
             "-" if name == "full" else ("yes" if r["frozen_identical"] else "NO")]
            for name, r in results.items()]
    title = (f"all-MiniLM-L6-v2 + head, FSDP2 fully_shard per layer on gloo, {dist.get_world_size()} processes x 1 "
             f"thread, batch {args.batch} x {args.seq} tokens per rank, median of {args.rounds} x {args.steps} steps")
    table = render(["variant", "trainable", "all-gathered/step", "reduce-scattered/step", "optimizer state/rank",
                    "step ms", "time / full", "frozen exact"], rows, title=title)
    if dist.get_rank() == 0:
        print(table)
        RESULTS.mkdir(exist_ok=True)
        (RESULTS / "fsdp.json").write_text(json.dumps({"config": vars(args), "results": results}, indent=1))
        (RESULTS / "fsdp.md").write_text(f"```\n{table}\n```\n")
    del base, runs
    gc.collect()
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
