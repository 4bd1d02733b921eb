"""LLM fine-tuning memory (issue 15): full fine-tuning, LISA as trainers write it, frostline's LISA with vocabulary
rows, and PEFT LoRA, on a Llama-style causal LM built from a config.

Model: ``LlamaForCausalLM(LlamaConfig(vocab_size=30522, hidden_size=256, intermediate_size=688,
num_hidden_layers=8, num_attention_heads=4, tie_word_embeddings=False))`` (30522: the MiniLM tokenizer's vocabulary;
688 / 256 is Llama's MLP ratio), random init, float32. Data: 1,000 "words" of 3 tokens each over 3,000 token ids
drawn from the vocabulary; each sequence is words drawn as from a shuffled deck (so every one of the 3,000 tokens
occurs), 128 tokens per sequence, batch 4, 20 training batches, 4 held-out ones. Within a word the next token
is determined, so the loss floor is about ln(1000) / 3 = 2.3.

Methods (AdamW, lr 1e-3, no weight decay, the same batches in the same order):

- ``full``: every parameter trains.
- ``lisa``: LISA as the popular trainers write it (LMFlow's callback): one optimizer over every parameter,
  ``requires_grad`` toggled every 5 steps so that 2 of the 8 layers train, embeddings, final norm and head train
  in full throughout, and nothing is freed: the state of every layer that ever trained stays.
- ``frostline``: ``frostline.schedules.LayerwiseSampling(2, every=5)`` (the same draws) over the 8 blocks, with
  vocabulary rows: ``train_token_rows(model, token_rows(data))`` trains only the used tokens' rows of the
  embedding (delta) and LM head (split); the final norm trains; the optimizer is ``frostline.optimizer`` and
  follows the draws through ``frostline.sync`` (state freed when a block freezes).
- ``lora``: PEFT LoRA r=16, alpha 32, dropout 0 on every linear layer of the blocks (q k v o gate up down).
- ``frostline_recompute``: ``frostline`` with ``LayerwiseSampling(..., recompute_frozen=True)``: the frozen
  blocks run under activation checkpointing (``frostline.lean.recompute``), keep only their inputs and run their
  forward again in backward; the sampled blocks run plain.

The model is built with ``use_cache=False`` (training needs no KV cache; a cache passed to a frozen block makes it
run plain, since a replay would append to it again). After the memory runs, ``frostline`` and
``frostline_recompute`` are timed once more, interleaved step by step over the same batches (no meter): the
median step time of each and their ratio.

Training memory, per step = gradients (after backward) + optimizer state (after the step) + tensors saved for
backward (unique storages seen by ``torch.autograd.graph.saved_tensors_hooks`` during forward and loss that are
not the model's parameters or buffers), counted from the tensors; the table gives the maximum over the steps and
where the saved tensors of that step came from (innermost module that saved them). Loss: mean cross-entropy on
the held-out batches after training.

    .venv/bin/pip install peft    # benchmarks only, never a frostline dependency (check --dry-run keeps torch)
    python benchmarks/llm_memory.py [--steps 20] [--threads 2] [--quick]
    python benchmarks/llm_memory.py --case experts     # delta's per-forward cost on fused MoE experts
    python benchmarks/llm_memory.py --case spectrum    # frostline.spectrum on a 1.1B-parameter Llama, CPU

Writes benchmarks/results/llm_memory.json and llm_memory.md (llm_memory-<case>.json for the other cases).
"""

from __future__ import annotations

import argparse
import functools
import importlib
import json
import math
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
import torch  # noqa: E402

import frostline  # noqa: E402
from frostline._table import human_bytes, render  # noqa: E402

RESULTS = Path(__file__).parent / "results"
VOCAB, HIDDEN, LAYERS, USED, WORD = 30522, 256, 8, 3000, 3
METHODS = ("full", "lisa", "frostline", "frostline_recompute", "lora")
EXTRA: tuple[str, ...] = ()
LABELS = {"full": "full fine-tuning", "lisa": "LISA as trainers write it (2 of 8, every 5)",
          "frostline": "frostline LayerwiseSampling(2, every=5) + vocabulary rows",
          "lora": "PEFT LoRA r=16, every linear of the blocks",
          "frostline_recompute": "frostline as above, recompute_frozen=True"}
LR, N_ACTIVE, EVERY, SEED = 1e-3, 2, 5, 0


# -- model and data ----------------------------------------------------------------------------------------------
def build_model():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(SEED)
    config = LlamaConfig(vocab_size=VOCAB, hidden_size=HIDDEN, intermediate_size=688, num_hidden_layers=LAYERS,
                         num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=256,
                         tie_word_embeddings=False, use_cache=False)
    config._attn_implementation = "sdpa"
    return LlamaForCausalLM(config).train()


def make_data(steps: int, batch: int, seq: int, held_out: int = 4) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Training and held-out batches of token ids: 3-token words over ``USED`` ids, drawn from shuffled decks."""
    g = torch.Generator().manual_seed(1)
    ids = torch.randperm(VOCAB - 1, generator=g)[:USED] + 1  # 3,000 ids of the vocabulary (never 0)
    words = ids.view(-1, WORD)

    def stream(n_tokens: int) -> torch.Tensor:
        decks = [torch.randperm(len(words), generator=g) for _ in range(math.ceil(n_tokens / USED) + 1)]
        return words[torch.cat(decks)].reshape(-1)[:n_tokens]

    def batches(n: int) -> list[torch.Tensor]:
        return [b.clone() for b in stream(n * batch * seq).view(n, batch, seq)]  # own storages: counted as such

    return batches(steps), batches(held_out)


# -- what each method trains ---------------------------------------------------------------------------------------
class Method:
    """A model set up for one method, its optimizer, and what it does before each step."""

    def __init__(self, name: str, train: list[torch.Tensor]):
        self.name, self.model = name, build_model()
        self.before_step = lambda step: None
        model = self.model
        if name == "full":
            self.optimizer = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=0.0)
        elif name == "lisa":
            self.optimizer = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=0.0)
            self.generator = torch.Generator().manual_seed(SEED)  # LayerwiseSampling's draws, for the same layers
            self.before_step = self._toggle
        elif name in ("frostline", "frostline_recompute"):
            from frostline.schedules import LayerwiseSampling

            self.rows = frostline.token_rows(train, vocab_size=VOCAB)
            frostline.train_token_rows(model, self.rows)
            self.schedule = LayerwiseSampling(N_ACTIVE, every=EVERY, seed=SEED,
                                              recompute_frozen=name == "frostline_recompute")
            self.schedule.step(model, step=0)  # the first draw, so the optimizer is built over what trains
            self.optimizer = frostline.optimizer(model, torch.optim.AdamW, lr=LR, weight_decay=0.0)
            self.before_step = lambda step: self.schedule.step(model, self.optimizer, step=step)
        elif name == "lora":
            from peft import LoraConfig, get_peft_model

            config = LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, bias="none", task_type="CAUSAL_LM",
                                target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj",
                                                "down_proj"])
            self.model = model = get_peft_model(model, config)
            self.optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=LR,
                                               weight_decay=0.0)
        else:
            raise ValueError(f"unknown method {name!r}; choose from {', '.join(METHODS)}")

    def _toggle(self, step: int) -> None:
        """LMFlow's DynamicLayerActivationCallback: every ``EVERY`` steps, freeze all layers, then let
        ``N_ACTIVE`` random ones train; the optimizer keeps everything it ever held."""
        if step % EVERY:
            return
        active = set(torch.randperm(LAYERS, generator=self.generator)[:N_ACTIVE].tolist())
        for i, layer in enumerate(self.model.model.layers):
            layer.requires_grad_(i in active)

    def trainable(self) -> int:
        return frostline.summary(self.model).trainable


# -- counting memory from the tensors ------------------------------------------------------------------------------
def _storage(t: torch.Tensor) -> tuple[int, int] | None:
    try:
        s = t.untyped_storage()
    except (RuntimeError, NotImplementedError):
        return None
    return s.data_ptr(), s.nbytes()


def _unique_bytes(tensors) -> int:
    seen: dict[int, int] = {}
    for t in tensors:
        key = _storage(t)
        if key is not None:
            seen[key[0]] = key[1]
    return sum(seen.values())


def _where(name: str) -> str:
    """Group a module name for the saved-tensor breakdown."""
    parts = name.split(".")
    if "layers" in parts:
        return f"layer {parts[parts.index('layers') + 1]}"
    if "embed_tokens" in parts:
        return "embedding"
    if "lm_head" in parts:
        return "lm_head"
    if "norm" in parts or "rotary_emb" in parts:
        return "norm/rotary"
    return "loss (logits, log-softmax)"


class SavedMeter:
    """Unique storages saved for backward during one forward (+ loss), by the innermost module saving them."""

    def __init__(self, model: torch.nn.Module):
        self.model, self.stack, self.handles = model, [""], []
        for name, module in model.named_modules():
            if name:
                self.handles.append(module.register_forward_pre_hook(functools.partial(self._enter, name)))
                self.handles.append(module.register_forward_hook(self._leave, always_call=True))

    def _enter(self, name, module, args):
        self.stack.append(name)

    def _leave(self, module, args, output):
        self.stack.pop()

    def __enter__(self):
        self.resident = {k[0] for t in [*self.model.parameters(), *self.model.buffers()] if (k := _storage(t))}
        self.seen: dict[int, tuple[int, str]] = {}
        self.hooks = torch.autograd.graph.saved_tensors_hooks(self._pack, lambda t: t)
        self.hooks.__enter__()
        return self

    def __exit__(self, *exc):
        self.hooks.__exit__(*exc)

    def _pack(self, t: torch.Tensor) -> torch.Tensor:
        key = _storage(t)
        if key is not None and key[0] not in self.resident and key[0] not in self.seen:
            self.seen[key[0]] = (key[1], _where(self.stack[-1]))
        return t

    def total(self) -> int:
        return sum(n for n, _ in self.seen.values())

    def by_place(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for n, place in self.seen.values():
            out[place] = out.get(place, 0) + n
        return out

    def close(self) -> None:
        for h in self.handles:
            h.remove()


def optimizer_state_bytes(optimizer: torch.optim.Optimizer) -> int:
    return _unique_bytes(v for state in optimizer.state.values() for v in state.values() if torch.is_tensor(v))


def run(name: str, train: list[torch.Tensor], held_out: list[torch.Tensor]) -> dict:
    method = Method(name, train)
    model, optimizer = method.model, method.optimizer
    meter = SavedMeter(model)
    steps, start = [], time.perf_counter()
    for step, ids in enumerate(train):
        method.before_step(step)
        optimizer.zero_grad(set_to_none=True)
        with meter:
            loss = model(input_ids=ids, labels=ids).loss
        saved, places = meter.total(), meter.by_place()
        loss.backward()
        grads = _unique_bytes(p.grad for p in model.parameters() if p.grad is not None)
        optimizer.step()
        state = optimizer_state_bytes(optimizer)
        steps.append({"step": step, "loss": float(loss.detach()), "saved": saved, "grads": grads, "state": state,
                      "total": saved + grads + state, "saved_by_place": places, "trainable": method.trainable()})
        del loss
    seconds = time.perf_counter() - start
    meter.close()
    model.eval()
    with torch.no_grad():
        held = statistics.fmean(float(model(input_ids=ids, labels=ids).loss) for ids in held_out)
    peak = max(steps, key=lambda s: s["total"])
    result = {"method": name, "label": LABELS[name], "peak": peak, "max_total": peak["total"],
              "max_saved": max(s["saved"] for s in steps), "max_grads": max(s["grads"] for s in steps),
              "max_state": max(s["state"] for s in steps), "held_out_loss": held, "last_train_loss": steps[-1]["loss"],
              "seconds": seconds, "steps": steps}
    if name.startswith("frostline"):
        result["rows"] = int(method.rows.numel())
    return result


def interleaved_times(names: list[str], train: list[torch.Tensor]) -> dict[str, float]:
    """Median seconds per training step of each method, the methods stepping in turn over the same batches (so
    machine load hits them alike); the first ``EVERY`` steps are warm-up."""
    methods = {name: Method(name, train) for name in names}
    times: dict[str, list[float]] = {name: [] for name in names}
    for step, ids in enumerate(train):
        for name in (names if step % 2 == 0 else names[::-1]):
            method = methods[name]
            start = time.perf_counter()
            method.before_step(step)
            method.optimizer.zero_grad(set_to_none=True)
            method.model(input_ids=ids, labels=ids).loss.backward()
            method.optimizer.step()
            if step >= EVERY:
                times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def memory_case(args) -> dict:
    train, held_out = make_data(args.steps, args.batch, args.seq)
    results = {}
    for name in args.methods:
        print(f"running {name} ...", file=sys.stderr, flush=True)
        results[name] = run(name, train, held_out)
    lora = results.get("lora", {}).get("max_total")
    table = []
    for r in results.values():
        p = r["peak"]
        table.append([r["label"], human_bytes(r["max_total"]), f"{r['max_total'] / lora:.2f}" if lora else "-",
                      human_bytes(p["grads"]), human_bytes(p["state"]), human_bytes(p["saved"]),
                      f"{r['held_out_loss']:.3f}"])
    headers = ["method", "training memory", "x LoRA", "gradients", "optimizer state", "saved for backward",
               "held-out loss"]
    setup = (f"Llama-style LM, vocab {VOCAB}, {LAYERS} layers, hidden {HIDDEN}, untied head; {USED} tokens used; "
             f"{args.steps} steps of {args.batch}x{args.seq} tokens, AdamW lr {LR}, {args.threads} thread(s); "
             "memory = max over steps of gradients + optimizer state + saved for backward")
    text = render(headers, table, title=setup)
    timing = None
    if {"frostline", "frostline_recompute"} <= results.keys() and args.steps > EVERY:
        print("timing frostline and frostline_recompute, interleaved ...", file=sys.stderr, flush=True)
        medians = interleaved_times(["frostline", "frostline_recompute"], train)
        timing = {"median_step_s": medians, "ratio": medians["frostline_recompute"] / medians["frostline"]}
        text += (f"\nstep time, interleaved, median of steps {EVERY}-{args.steps - 1}: frostline "
                 f"{medians['frostline'] * 1e3:.0f} ms, recompute_frozen=True {medians['frostline_recompute'] * 1e3:.0f}"
                 f" ms ({timing['ratio']:.2f}x)")
    return {"setup": setup, "table": text, "headers": headers, "rows": table, "results": results, "timing": timing,
            "command": "python benchmarks/llm_memory.py " + " ".join(sys.argv[1:])}


# -- fused experts: what delta costs per forward -------------------------------------------------------------------
def experts_case(args) -> dict:
    """Forward and backward of one Qwen3-MoE experts module (8 experts, hidden 512, moe_intermediate 256, 512 tokens,
    top-2): bytes allocated by the ops (new storages, counted by a dispatch mode) and time, every expert trainable
    vs experts 0-5 frozen with delta and with mask."""
    from torch.utils import _pytree as pytree
    from torch.utils._python_dispatch import TorchDispatchMode
    from transformers import Qwen3MoeConfig
    from transformers.models.qwen3_moe.modeling_qwen3_moe import Qwen3MoeExperts

    class Allocated(TorchDispatchMode):
        """Sums the storages ops create (outputs that are not views of their inputs), each op's once."""

        def __init__(self):
            super().__init__()
            self.bytes, self.largest = 0, 0

        def __torch_dispatch__(self, func, types, args_=(), kwargs=None):
            out = func(*args_, **(kwargs or {}))
            inputs = {k[0] for t in pytree.tree_leaves((args_, kwargs)) if isinstance(t, torch.Tensor)
                      and (k := _storage(t))}
            new = {k for t in pytree.tree_leaves(out) if isinstance(t, torch.Tensor) and (k := _storage(t))
                   and k[0] not in inputs}
            for _, nbytes in new:
                self.bytes += nbytes
                self.largest = max(self.largest, nbytes)
            return out

    results = {}
    for implementation in ("grouped_mm", "eager"):
        config = Qwen3MoeConfig(hidden_size=512, moe_intermediate_size=256, num_experts=8, num_experts_per_tok=2)
        config._experts_implementation = implementation
        g = torch.Generator().manual_seed(0)
        x = torch.randn(512, 512, generator=g, requires_grad=True)
        weights, index = torch.topk(torch.randn(512, 8, generator=g).softmax(-1), 2)
        rows = {}
        for kind in ("trainable", "delta", "mask"):
            torch.manual_seed(0)
            experts = Qwen3MoeExperts(config)
            for p in experts.parameters():
                torch.nn.init.normal_(p, std=0.02)
            if kind != "trainable":
                frostline.freeze(experts, rows=range(6), strategy=kind)
            forward, backward = Allocated(), Allocated()
            with forward:
                out = experts(x, index, weights)
            loss = out.square().sum()
            with backward:
                loss.backward()
            grads = _unique_bytes(p.grad for p in experts.parameters() if p.grad is not None)
            times = []
            for _ in range(args.rounds):
                x.grad = None
                for p in experts.parameters():
                    p.grad = None
                t0 = time.perf_counter()
                experts(x, index, weights).square().sum().backward()
                times.append(time.perf_counter() - t0)
            rows[kind] = {"forward_bytes": forward.bytes, "forward_largest": forward.largest,
                          "backward_bytes": backward.bytes, "backward_largest": backward.largest,
                          "gradient_bytes_kept": grads, "fwd_bwd_ms_median": 1e3 * statistics.median(times)}
        tensor = 8 * 512 * 512 * 4 + 8 * 512 * 256 * 4
        results[implementation] = {"expert_tensors_bytes": tensor, "rows": rows}
    lines = []
    for implementation, r in results.items():
        for kind, v in r["rows"].items():
            lines.append([implementation, kind, human_bytes(v["forward_bytes"]), human_bytes(v["backward_bytes"]),
                          human_bytes(v["backward_largest"]), human_bytes(v["gradient_bytes_kept"]),
                          f"{v['fwd_bwd_ms_median']:.1f}"])
    text = render(["implementation", "experts 0-5", "forward allocates", "backward allocates", "largest in backward",
                   "gradient kept", "fwd+bwd ms"], lines,
                  title="Qwen3-MoE experts, 8 x (512x512 + 512x256) fp32 = 12 MiB of expert tensors; 512 tokens, "
                        "top-2; experts 6-7 train")
    return {"table": text, "results": results, "command": "python benchmarks/llm_memory.py " + " ".join(sys.argv[1:])}


# -- Spectrum on a 1B-parameter model, CPU -------------------------------------------------------------------------
def spectrum_case(args) -> dict:
    from transformers import LlamaConfig, LlamaForCausalLM

    spectrum_module = importlib.import_module("frostline.spectrum")  # the attribute is the function

    config = LlamaConfig(vocab_size=32000, hidden_size=2048, intermediate_size=8192, num_hidden_layers=16,
                         num_attention_heads=32, num_key_value_heads=8, tie_word_embeddings=False)
    torch.manual_seed(0)
    with torch.device("cpu"):
        model = LlamaForCausalLM(config)
    params = sum(p.numel() for p in model.parameters())
    per_shape: dict[str, float] = {}
    scored = 0
    original = spectrum_module.snr

    def timed(weight):  # the time of each matrix, by shape
        nonlocal scored
        t0 = time.perf_counter()
        value = original(weight)
        key = "x".join(map(str, weight.shape))
        per_shape[key] = per_shape.get(key, 0.0) + time.perf_counter() - t0
        scored += 1
        return value

    spectrum_module.snr = timed
    try:
        wall0, cpu0 = time.perf_counter(), time.process_time()
        chosen = frostline.spectrum(model, args.fraction)
        wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    finally:
        spectrum_module.snr = original
    text = (f"frostline.spectrum(model, {args.fraction}) on a {params / 1e9:.2f}B-parameter Llama (hidden 2048, "
            f"16 layers, MLP 8192, vocab 32000, float32, random init), {args.threads} CPU thread(s): {scored} matrices scored "
            f"in {wall:.0f} s wall ({cpu:.0f} s CPU); {len(chosen)} chosen")
    return {"table": text, "params": params, "wall_s": wall, "cpu_s": cpu, "scored": scored, "chosen": chosen,
            "seconds_by_shape": per_shape,
            "command": "python benchmarks/llm_memory.py " + " ".join(sys.argv[1:])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--case", choices=("memory", "experts", "spectrum"), default="memory")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=15, help="timed rounds (experts case)")
    parser.add_argument("--fraction", type=float, default=0.25, help="spectrum case")
    parser.add_argument("--method", dest="methods", action="append", choices=METHODS + EXTRA)
    parser.add_argument("--quick", action="store_true", help="a smoke run: 3 steps of 2x32 tokens")
    args = parser.parse_args()
    args.methods = args.methods or list(METHODS)
    if args.quick:
        args.steps, args.batch, args.seq = 3, 2, 32
    torch.set_num_threads(args.threads)
    report = {"memory": memory_case, "experts": experts_case, "spectrum": spectrum_case}[args.case](args)
    print(report["table"])
    RESULTS.mkdir(exist_ok=True)
    stem = "llm_memory" if args.case == "memory" else f"llm_memory-{args.case}"
    if args.quick:
        stem += "-quick"
    elif args.case == "memory" and (args.steps, args.batch, args.seq) != (20, 4, 128):
        stem += f"-{args.steps}x{args.batch}x{args.seq}"
    if args.case == "memory" and tuple(args.methods) != METHODS:
        stem += "-" + "+".join(args.methods)
    (RESULTS / f"{stem}.json").write_text(json.dumps(report, indent=1, default=str) + "\n")
    if args.case == "memory" and stem == "llm_memory":
        (RESULTS / "llm_memory.md").write_text(note(report))


def note(report: dict) -> str:
    """The markdown note: the table, where each method's saved tensors come from, and the variant runs found."""
    mib = lambda n: f"{n / 2**20:.1f}"  # noqa: E731
    lines = ["# LLM fine-tuning memory (issue 15)", "", f"`{report['command'].strip()}`", "", "```",
             report["table"], "```", "", "Saved for backward at each method's peak step, by the module that saved it "
             "(MiB; layers bottom to top):", "", "| method | embedding | layers 0-7 | lm_head | final norm, rotary "
             "| loss (logits, log-softmax) |", "|---|---|---|---|---|---|"]
    for r in report["results"].values():
        places = r["peak"]["saved_by_place"]
        layers = " ".join(mib(places.get(f"layer {i}", 0)) for i in range(LAYERS))
        lines.append(f"| {r['label']} | {mib(places.get('embedding', 0))} | {layers} | {mib(places.get('lm_head', 0))} "
                     f"| {mib(places.get('norm/rotary', 0))} | {mib(places.get('loss (logits, log-softmax)', 0))} |")
    lora = report["results"].get("lora", {}).get("max_total")
    variants = []
    for path in sorted(RESULTS.glob("llm_memory-*.json")):
        if "quick" in path.name or "experts" in path.name or "spectrum" in path.name:
            continue
        other = json.loads(path.read_text())
        results = other["results"]
        base = results.get("lora", {}).get("max_total") or lora
        figures = "; ".join(f"{r['label']}: {mib(r['max_total'])} MiB ({r['max_total'] / base:.2f}x LoRA"
                            f"{'' if 'lora' in results else ' of the table'}), held-out loss {r['held_out_loss']:.3f}"
                            for r in results.values())
        timing = other.get("timing")
        if timing:
            ms = {k: f"{v * 1e3:.0f} ms" for k, v in timing["median_step_s"].items()}
            figures += (f"; median step time, interleaved: {ms['frostline']} vs {ms['frostline_recompute']} "
                        f"with recompute_frozen ({timing['ratio']:.2f}x)")
        variants.append(f"- `{other['command'].strip()}`: {figures}")
    if variants:
        lines += ["", "Variant runs:", "", *variants]
    for case in ("experts", "spectrum"):
        path = RESULTS / f"llm_memory-{case}.json"
        if path.exists():
            other = json.loads(path.read_text())
            lines += ["", f"`{other['command'].strip()}`:", "", "```", other["table"], "```"]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
