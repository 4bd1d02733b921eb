"""Partial freezing: frostline's strategies beside the hand-written methods of ``shared/anchors/seed_methods.py``.

Case A: the seed CNN (batch 64x3x32x32), half the filters of every conv frozen, AdamW(wd=0.01).
Case B: a 30522x384 embedding + linear head (batch 32x128 tokens), 64 trainable rows, AdamW(wd=0.01).
Case C: a 4096x4096 Linear with 1% of its elements trainable (optimizer state against dense AdamW).

Every method trains the same model from the same seed; its step time (forward, backward, optimizer step and any
after-step work) is a median over steps, divided by the unfrozen step measured in the same round; rounds are
interleaved and the table shows the median ratio. "exact" says whether every frozen element was bit-identical
after the run; "opt state" is what the optimizer holds.

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
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

import frostline
from frostline._table import human_bytes, render
from frostline.models import seed_cnn
from frostline.summary import optimizer_state_bytes

RESULTS = Path(__file__).parent / "results"
VOCAB, DIM, ROWS = 30522, 384, torch.arange(0, 30522, 30522 // 64)[:64]
AdamW = lambda params: torch.optim.AdamW(params, lr=1e-3, weight_decay=0.01)  # noqa: E731


# A method takes a fresh model and returns (optimizer, after_step or None, frozen_values or None); frozen_values()
# returns the tensors that must stay bit-identical.
Setup = Callable[[nn.Module], tuple]


def _convs(model: nn.Module) -> list[nn.Conv2d]:
    return [m for m in model.modules() if isinstance(m, nn.Conv2d)]


def _half(conv: nn.Conv2d) -> torch.Tensor:
    return conv.weight[: conv.weight.shape[0] // 2]


def _trainable(model: nn.Module) -> list[nn.Parameter]:
    return [p for p in model.parameters() if p.requires_grad]


# -- case A: the anchor's hand-written methods --------------------------------------------------------------------
def a_unfrozen(m):
    return AdamW(m.parameters()), None, None


def a_requires_grad_none(m):  # lower bound: every conv weight frozen whole (trains none of them)
    for c in _convs(m):
        c.weight.requires_grad_(False)
    return AdamW(_trainable(m)), None, lambda: [c.weight for c in _convs(m)]


def a_store_restore(m):
    cs = _convs(m)
    saved = [_half(c).detach().clone() for c in cs]

    def after():
        with torch.no_grad():
            for c, s in zip(cs, saved, strict=False):
                _half(c).copy_(s)
    return AdamW(m.parameters()), after, lambda: [_half(c) for c in cs]


def a_grad_mask(m):
    cs = _convs(m)
    for c in cs:
        keep = torch.ones(c.weight.shape[0], 1, 1, 1)
        keep[: c.weight.shape[0] // 2] = 0
        c.weight.register_hook(lambda g, k=keep: g * k)
    return AdamW(m.parameters()), None, lambda: [_half(c) for c in cs]


def a_frostline(strategy: str) -> Setup:
    def setup(m):
        for name, c in m.named_modules():
            if isinstance(c, nn.Conv2d):
                frostline.freeze(m, f"{name}.weight", rows=range(c.weight.shape[0] // 2), strategy=strategy)
        return AdamW(_trainable(m)), None, lambda: [_half(c) for c in _convs(m)]
    return setup


# -- case B ---------------------------------------------------------------------------------------------------------
class Emb(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.emb, self.head = nn.Embedding(VOCAB, DIM), nn.Linear(DIM, 2)

    def forward(self, ids):
        return self.head(self.emb(ids).mean(1))


def _frozen_rows() -> torch.Tensor:
    keep = torch.ones(VOCAB, dtype=torch.bool)
    keep[ROWS] = False
    return keep


def b_unfrozen(m):
    return AdamW(m.parameters()), None, None


def b_requires_grad_none(m):  # lower bound: the whole embedding frozen
    m.emb.weight.requires_grad_(False)
    return AdamW(_trainable(m)), None, lambda: [m.emb.weight]


def b_store_restore(m):
    keep = _frozen_rows()
    saved = m.emb.weight.detach()[keep].clone()

    def after():
        with torch.no_grad():
            m.emb.weight[keep] = saved
    return AdamW(m.parameters()), after, lambda: [m.emb.weight[keep]]


def b_grad_mask(m):
    k = torch.zeros(VOCAB, 1)
    k[ROWS] = 1
    m.emb.weight.register_hook(lambda g: g * k)
    return AdamW(m.parameters()), None, lambda: [m.emb.weight[k.squeeze(1) == 0]]


def b_sparse_delta(m):  # the anchor's hand-written sparse delta (its host syncs included)
    base = m.emb.weight.detach()
    m.emb.weight.requires_grad_(False)
    delta = nn.Parameter(base[ROWS].clone())
    remap = torch.full((VOCAB,), -1)
    remap[ROWS] = torch.arange(64)

    def fwd(ids):
        out = F.embedding(ids, base)
        r = remap[ids]
        hit = r >= 0
        out = out.masked_scatter(hit.unsqueeze(-1), F.embedding(r[hit], delta)) if hit.any() else out
        return m.head(out.mean(1))
    m.forward = fwd
    keep = _frozen_rows()
    return AdamW([delta, *m.head.parameters()]), None, lambda: [base[keep]]


def b_frostline(strategy: str) -> Setup:
    def setup(m):
        frostline.freeze(m, "emb.weight", rows=_frozen_rows().nonzero().flatten(), strategy=strategy)
        keep = _frozen_rows()
        return AdamW(_trainable(m)), None, lambda: [m.emb.weight[keep]]
    return setup


# -- measuring ------------------------------------------------------------------------------------------------------
def measure(make, batch, methods: dict[str, tuple[str, Setup]], rounds: int, steps: int,
            clock: Callable[[], float]) -> list[dict]:
    """Median step time of every method over ``rounds``, each divided by the first method's (the unfrozen step)
    in the same round; the order rotates from round to round so no method always runs first."""
    x, y = batch
    names = list(methods)
    ratios: dict[str, list[float]] = {n: [] for n in names}
    seconds: list[float] = []
    exact: dict[str, bool | None] = {}
    state: dict[str, int] = {}
    for r in range(rounds):
        took = {}
        for name in names[r % len(names):] + names[:r % len(names)]:
            model = make()
            opt, after, frozen = methods[name][1](model)
            before = None if frozen is None else [t.detach().clone() for t in frozen()]
            times = []
            for i in range(steps + 2):
                start = clock()
                loss = F.cross_entropy(model(x), y)
                opt.zero_grad()
                loss.backward()
                opt.step()
                if after:
                    after()
                if i >= 2:
                    times.append(clock() - start)
            took[name] = statistics.median(times)
            if before is not None:
                exact[name] = all(torch.equal(a, b.detach()) for a, b in zip(before, frozen(), strict=False))
            state[name] = optimizer_state_bytes(opt)
        seconds.append(took[names[0]])
        for name in names:
            ratios[name].append(took[name] / took[names[0]])
    return [{"method": n, "by": by, "ratio": statistics.median(ratios[n]), "exact": exact.get(n),
             "optimizer_state_bytes": state[n], "seconds": statistics.median(seconds) * statistics.median(ratios[n])}
            for n, (by, _) in methods.items()]


def split_floor(make, batch, seconds_unfrozen: float, clock: Callable[[], float], repeats: int = 5) -> float:
    """The best split can do on this machine: the unfrozen step minus the weight gradient of the frozen half of
    every conv (timed with the same kernel, on the inputs and output gradients of a real step)."""
    model, seen = make(), []

    def keep(conv, inputs, output):
        output.register_hook(lambda grad: seen.append((conv, inputs[0].detach(), grad)))
    for conv in _convs(model):
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

    torch.manual_seed(1)
    a_batch = (torch.randn(64, 3, 32, 32), torch.randint(0, 10, (64,)))
    a_methods = {"unfrozen": ("anchor", a_unfrozen),
                 "requires_grad (all conv weights)": ("anchor", a_requires_grad_none),
                 "store/restore": ("anchor", a_store_restore), "gradient mask": ("anchor", a_grad_mask),
                 "split (auto)": ("frostline", a_frostline("auto")), "delta": ("frostline", a_frostline("delta")),
                 "mask": ("frostline", a_frostline("mask"))}

    def make_cnn():
        torch.manual_seed(0)
        return seed_cnn()
    a = measure(make_cnn, a_batch, a_methods, args.rounds, args.steps, clock)
    floor = split_floor(make_cnn, a_batch, a[0]["seconds"], clock)

    ids = torch.randint(0, VOCAB, (32, 128))
    ids[:, :4] = ROWS[:4]
    b_batch = (ids, torch.randint(0, 2, (32,)))
    b_methods = {"unfrozen": ("anchor", b_unfrozen),
                 "requires_grad (whole embedding)": ("anchor", b_requires_grad_none),
                 "store/restore": ("anchor", b_store_restore), "gradient mask": ("anchor", b_grad_mask),
                 "sparse delta (hand-written)": ("anchor", b_sparse_delta),
                 "delta (auto)": ("frostline", b_frostline("auto")), "mask": ("frostline", b_frostline("mask"))}
    b = measure(Emb, b_batch, b_methods, args.rounds, args.steps, clock)
    c = case_c(args.threads)

    rows = []
    for case, results in (("A: CNN, half the filters of every conv", a), ("B: embedding, 64 of 30522 rows", b)):
        for r in results:
            exact = "-" if r["exact"] is None else ("yes" if r["exact"] else "NO")
            rows.append([case[:1], r["method"], r["by"], f"{r['ratio']:.3f}x", exact,
                         human_bytes(r["optimizer_state_bytes"])])
    print(render(["case", "method", "by", "step / unfrozen", "exact", "opt state"], rows,
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
