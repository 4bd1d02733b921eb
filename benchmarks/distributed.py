"""Data parallel with frozen parameters (issue 8): bytes communicated per step and step time, 2 processes.

    torchrun --nproc_per_node=2 benchmarks/distributed.py [--rounds 4] [--steps 3] [--batch 8] [--seq 64]

Model: the pretrained all-MiniLM-L6-v2 (22.7M parameters), its pooled output into a 2-way linear head; each rank
gets its own batch of random token ids; AdamW; DistributedDataParallel on gloo, CPU, one thread per process.

Variants (frozen with frostline before wrapping; ``find_unused_parameters=False`` throughout):

- ``full``: everything trains.
- ``frozen backbone``: embeddings, encoder and pooler frozen; only the head trains.
- ``partial <strategy>``: the backbone frozen except 512 rows of the word embeddings (new tokens, say), plus the
  head; once under a plain ``DistributedDataParallel`` and once under ``frostline.distributed.ddp``.

Per step, per rank: **gradient bytes** all-reduced (a DDP comm hook adds up the bucket buffers it is handed),
**buffer bytes** DDP broadcasts before each forward (``broadcast_buffers=True``, the default; counted by wrapping the
wrapper's broadcast method, a private DDP method, in this script only), and **step time** (forward, backward,
optimizer step, zero_grad: the slower rank's time for each step; 2 warm-up steps, then rounds in which every
variant runs ``--steps`` steps in turn, so a slow spell of the machine hits all variants alike; median).
Bytes are payload per rank; a ring all-reduce moves about twice that over the wire.

Rank 0 prints a table and writes benchmarks/results/distributed.json and distributed.md.
"""

from __future__ import annotations

import argparse
import copy
import gc
import json
import os
import statistics
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402
from torch import nn  # noqa: E402
from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import allreduce_hook  # noqa: E402
from torch.nn.parallel import DistributedDataParallel  # noqa: E402

import frostline  # noqa: E402
import frostline.distributed  # noqa: E402
from frostline._table import human_bytes, render  # noqa: E402
from frostline.models import load_model  # noqa: E402

RESULTS = Path(__file__).parent / "results"
NEW_TOKENS = range(512)  # the word-embedding rows that train in the partial variants


class Classifier(nn.Module):
    def __init__(self, encoder: nn.Module):
        super().__init__()
        self.encoder = encoder
        self.head = nn.Linear(encoder.config.hidden_size, 2)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(input_ids=ids).pooler_output)


def variants(base: Classifier) -> list[tuple[str, Classifier, object]]:
    full = copy.deepcopy(base)
    frozen = frostline.freeze(copy.deepcopy(base), "encoder")
    out = [("full", full, DistributedDataParallel), ("frozen backbone", frozen, DistributedDataParallel)]
    for strategy in ("delta", "mask"):
        for wrap in (DistributedDataParallel, frostline.distributed.ddp):
            model = frostline.freeze(copy.deepcopy(base), ["encoder", "!encoder.embeddings.word_embeddings"])
            frostline.freeze(model, "encoder.embeddings.word_embeddings.weight",
                             rows=range(NEW_TOKENS.stop, base.encoder.config.vocab_size), strategy=strategy)
            name = "DDP" if wrap is DistributedDataParallel else "frostline.distributed.ddp"
            out.append((f"partial {strategy}, {name}", model, wrap))
    return out


def batch_ids(model: Classifier, batch: int, seq: int, generator: torch.Generator, step: int) -> torch.Tensor:
    """Random token ids for this rank; every batch also uses one of the trainable rows."""
    ids = torch.randint(0, model.encoder.config.vocab_size, (batch, seq), generator=generator)
    ids[:, 1] = step % len(NEW_TOKENS)
    return ids


def timed_step(forward, optimizer: torch.optim.Optimizer, ids: torch.Tensor) -> float:
    """One training step; the slower rank's seconds (the max is taken outside the timed region)."""
    start = time.perf_counter()
    nn.functional.cross_entropy(forward(ids), torch.zeros(len(ids), dtype=torch.long)).backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    elapsed = torch.tensor([time.perf_counter() - start])
    dist.all_reduce(elapsed, op=dist.ReduceOp.MAX)
    return float(elapsed)


class Run:
    """One variant, wrapped and instrumented: counts what DDP sends and times each step."""

    def __init__(self, model: Classifier, wrap, batch: int, seq: int):
        self.model, self.batch, self.seq = model, batch, seq
        self.wrapper = wrap(model)
        self.sent = {"grad": 0, "buffers": 0}
        self.wrapper.register_comm_hook(None, self._count_bucket)
        self._broadcast = self.wrapper._distributed_broadcast_coalesced
        self.wrapper._distributed_broadcast_coalesced = self._count_broadcast
        self.optimizer = frostline.optimizer(model, torch.optim.AdamW, lr=1e-4)
        self.generator = torch.Generator().manual_seed(dist.get_rank())
        self.times: list[float] = []
        self.steps = 0

    def _count_bucket(self, state, bucket):
        self.sent["grad"] += bucket.buffer().numel() * bucket.buffer().element_size()
        return allreduce_hook(state, bucket)

    def _count_broadcast(self, tensors, buffer_size, authoritative_rank=0):
        self.sent["buffers"] += sum(t.numel() * t.element_size() for t in tensors)
        return self._broadcast(tensors, buffer_size, authoritative_rank)

    def step(self, record: bool) -> None:
        ids = batch_ids(self.model, self.batch, self.seq, self.generator, self.steps)
        sent = dict(self.sent)
        elapsed = timed_step(self.wrapper, self.optimizer, ids)
        if record:
            self.times.append(elapsed)
            self.steps += 1
        else:  # warm-up (DDP rebuilds its buckets after the first step): its bytes do not count
            self.sent = sent

    def result(self) -> dict[str, float]:
        return {"trainable": frostline.summary(self.model).trainable,  # elements (a mask Parameter is larger)
                "grad_bytes": self.sent["grad"] / self.steps, "buffer_bytes": self.sent["buffers"] / self.steps,
                "step_ms": 1000 * statistics.median(self.times)}


def arguments(doc: str) -> argparse.Namespace:
    """The options both 2-process benchmarks take (this one and fsdp.py); sets up one thread and the group."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--steps", type=int, default=3, help="steps per variant per round")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq", type=int, default=64)
    args = parser.parse_args()
    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    torch.manual_seed(0)
    return args


def interleave(runs: dict, rounds: int, steps: int) -> None:
    """2 warm-up steps each, then ``rounds`` in which every run takes ``steps`` steps in turn, so a slow spell of
    the machine hits every variant alike."""
    for run in runs.values():
        for _ in range(2):
            run.step(record=False)
    for _ in range(rounds):
        for run in runs.values():
            for _ in range(steps):
                run.step(record=True)


def main() -> None:
    args = arguments(__doc__)
    base = Classifier(load_model("minilm"))
    runs = {name: Run(model, wrap, args.batch, args.seq) for name, model, wrap in variants(base)}
    interleave(runs, args.rounds, args.steps)
    results = {name: run.result() for name, run in runs.items()}
    rows = [[name, f"{got['trainable']:,}", human_bytes(got["grad_bytes"]), human_bytes(got["buffer_bytes"]),
             f"{got['step_ms']:.0f}", f"{got['step_ms'] / results['full']['step_ms']:.2f}"]
            for name, got in results.items()]
    title = (f"all-MiniLM-L6-v2 + head, DDP on gloo, {dist.get_world_size()} processes x 1 thread, "
             f"batch {args.batch} x {args.seq} tokens per rank, median of {args.rounds} x {args.steps} steps")
    table = render(["variant", "trainable", "grad all-reduced/step", "buffers broadcast/step", "step ms",
                    "time / full"], rows, title=title)
    if dist.get_rank() == 0:
        print(table)
        RESULTS.mkdir(exist_ok=True)
        (RESULTS / "distributed.json").write_text(json.dumps({"config": vars(args), "results": results}, indent=1))
        (RESULTS / "distributed.md").write_text(f"```\n{table}\n```\n")
    del base, runs  # wrappers (their reducers), optimizers and models go before the process group
    gc.collect()
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
