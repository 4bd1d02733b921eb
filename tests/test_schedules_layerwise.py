"""frostline.schedules.LayerwiseSampling (LISA): the draws, exactness, optimizer state, resume in a new process,
and the places the popular versions break: the HF Trainer's own optimizer (LMFlow#726) and Lightning."""

from __future__ import annotations

import copy
import json
import logging
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import frostline
from frostline.errors import FrostlineError
from frostline.partial import get_partial
from frostline.schedules import LayerwiseSampling
from frostline.schedules.layerwise import repeated_blocks

pytestmark = pytest.mark.usefixtures("one_thread")


class Tiny(nn.Module):
    """Embedding, ``n`` residual blocks (Linear, LayerNorm, GELU, Dropout) in a ModuleList, and a head."""

    def __init__(self, n: int = 4, width: int = 8, vocab: int = 12, dropout: float = 0.1):
        super().__init__()
        self.embed = nn.Embedding(vocab, width)
        self.blocks = nn.ModuleList(
            nn.Sequential(nn.Linear(width, width), nn.LayerNorm(width), nn.GELU(), nn.Dropout(dropout))
            for _ in range(n))
        self.head = nn.Linear(width, vocab)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        x = self.embed(ids)
        for block in self.blocks:
            x = x + block(x)
        return self.head(x)


def tiny(n: int = 4, **kwargs) -> Tiny:
    torch.manual_seed(0)
    return Tiny(n, **kwargs)


def block_names(model: Tiny, i: int) -> list[str]:
    return [f"blocks.{i}.{n}" for n, _ in model.blocks[i].named_parameters()]


def train_step(model: nn.Module, optimizer: torch.optim.Optimizer, step: int) -> None:
    g = torch.Generator().manual_seed(step)
    ids = torch.randint(0, 12, (4, 6), generator=g)
    torch.manual_seed(1000 + step)  # dropout draws depend on the step only: runs can be compared bit for bit
    optimizer.zero_grad()
    F.cross_entropy(model(ids[:, :-1]).flatten(0, 1), ids[:, 1:].flatten()).backward()
    optimizer.step()


def values(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def check_intervals(intervals: list[tuple[list[int], dict[str, torch.Tensor]]], end: dict[str, torch.Tensor],
                    blocks: list[list[str]]) -> None:
    """Over each interval: every tensor of a frozen block bit-identical, every tensor of an active block moved."""
    for k, (active, start) in enumerate(intervals):
        stop = intervals[k + 1][1] if k + 1 < len(intervals) else end
        for i, names in enumerate(blocks):
            for name in names:
                same = torch.equal(start[name], stop[name])
                assert same == (i not in active), f"interval {k}: block {i} {'active' if i in active else 'frozen'}, " \
                                                  f"{name} {'unchanged' if same else 'changed'}"


def state_bytes(optimizer: torch.optim.Optimizer, params) -> int:
    return sum(v.numel() * v.element_size() for p in params for v in optimizer.state.get(p, {}).values()
               if torch.is_tensor(v))


# -- finding the blocks -----------------------------------------------------------------------------------------
class Expert(nn.Module):
    def __init__(self):
        super().__init__()
        self.up, self.down = nn.Linear(4, 8), nn.Linear(8, 4)


class MoELayer(nn.Module):
    def __init__(self):
        super().__init__()
        self.attn = nn.Linear(4, 4)
        self.experts = nn.ModuleList(Expert() for _ in range(3))


def test_repeated_blocks_are_the_layers():
    pytest.importorskip("transformers")
    from transformers import LlamaConfig, LlamaForCausalLM

    llama = LlamaForCausalLM(LlamaConfig(vocab_size=50, hidden_size=16, intermediate_size=32, num_hidden_layers=3,
                                         num_attention_heads=2, num_key_value_heads=2))
    blocks = repeated_blocks(llama)
    assert [{n.split(".")[2] for n in b} for b in blocks] == [{"0"}, {"1"}, {"2"}]
    assert all(n.startswith("model.layers.") for b in blocks for n in b)
    assert sum(map(len, blocks)) == sum(1 for n, _ in llama.named_parameters() if ".layers." in n)
    # decoder layers, not the MoE experts inside them (more numerous, deeper)
    moe = nn.Module()
    moe.embed, moe.layers, moe.head = nn.Embedding(5, 4), nn.ModuleList(MoELayer() for _ in range(2)), nn.Linear(4, 5)
    assert [b[0] for b in repeated_blocks(moe)] == ["layers.0.attn.weight", "layers.1.attn.weight"]
    # the same block class in two stacks (an encoder-decoder): both stacks' blocks, in model order
    pair = nn.Module()
    pair.encoder, pair.decoder = nn.ModuleList(Expert() for _ in range(2)), nn.ModuleList(Expert() for _ in range(2))
    assert [b[0] for b in repeated_blocks(pair)] == ["encoder.0.up.weight", "encoder.1.up.weight",
                                                     "decoder.0.up.weight", "decoder.1.up.weight"]
    # composite blocks win over the single layers beside them (stem and head) in one Sequential
    seq = nn.Sequential(nn.Linear(2, 4), Expert(), Expert(), nn.Linear(4, 1))
    assert [b[0] for b in repeated_blocks(seq)] == ["1.up.weight", "2.up.weight"]
    assert [b for b in repeated_blocks(nn.Sequential(nn.Linear(2, 2), nn.ReLU(), nn.Linear(2, 2)))] == \
        [["0.weight", "0.bias"], ["2.weight", "2.bias"]]
    with pytest.raises(FrostlineError, match="no repeated blocks.*groups="):
        repeated_blocks(nn.Sequential(nn.Linear(2, 2), nn.LayerNorm(2)))


def test_repeated_blocks_cost_linear_in_the_model():
    """All blocks are selected in one pass over the model, not one pass per block (issue 14)."""
    from cost import growth

    assert growth(lambda m: lambda: repeated_blocks(m)) < 4.5
    assert growth(lambda m: lambda: LayerwiseSampling(n_active=2, every=1, groups=list(m.layers))._resolve(m)) < 4.5


# -- the draws --------------------------------------------------------------------------------------------------
def _draws(seed: int) -> list[tuple[int, ...]]:
    model, schedule, out = tiny(5), LayerwiseSampling(n_active=2, every=3, seed=seed), []
    for step in range(30):
        schedule.step(model, step=step)
        out.append(tuple(schedule.active))
    return out


def test_draws_are_uniform_without_replacement_from_the_seed():
    model = tiny(5)
    schedule = LayerwiseSampling(n_active=2, every=3, seed=7)
    reference = torch.Generator().manual_seed(7)
    seen = []
    for step in range(30):
        change = schedule.step(model, step=step)
        if step % 3 == 0:
            expected = sorted(torch.randperm(5, generator=reference)[:2].tolist())
        assert schedule.active == expected, step
        assert [any(p.requires_grad for p in b.parameters()) for b in model.blocks] == [i in expected for i in range(5)]
        assert change is None or step % 3 == 0  # the frozen set changes only at a draw
        seen.append(tuple(schedule.active))
    assert _draws(7) == seen and _draws(8) != seen  # the seed alone decides the draws
    # uniform: each block trains in about n/L of the intervals
    counts = torch.zeros(5)
    schedule = LayerwiseSampling(n_active=2, every=1, seed=0)
    schedule._groups = schedule._resolve(tiny(5))
    for interval in range(2000):
        schedule.plan(None, interval)
        counts[schedule.active] += 1
    assert torch.allclose(counts / 2000, torch.full((5,), 0.4), atol=0.04), counts


def test_stepping_back_replays_the_draws():
    model, schedule = tiny(6), LayerwiseSampling(n_active=2, every=2, seed=3)
    first = {}
    for step in range(12):
        schedule.step(model, step=step)
        first[step] = schedule.active
    for step in (5, 0, 11):
        schedule.step(model, step=step)
        assert schedule.active == first[step]


# -- exactness, optimizer state, eval ---------------------------------------------------------------------------
def test_frozen_blocks_stay_bit_identical_and_sampled_ones_train():
    model = tiny(4)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)  # decay would move a frozen one
    schedule = LayerwiseSampling(n_active=2, every=3, seed=1)
    intervals = []
    for step in range(15):
        if schedule.step(model, optimizer, step=step) is not None or step % 3 == 0:
            intervals.append((schedule.active, values(model)))
        assert {id(p) for g in optimizer.param_groups for p in g["params"]} == \
            {id(p) for p in model.parameters() if p.requires_grad}
        train_step(model, optimizer, step)
    blocks = [block_names(model, i) for i in range(4)]
    assert schedule.groups == blocks
    check_intervals(intervals, values(model), blocks)
    assert len({tuple(a) for a, _ in intervals}) > 1  # the active set did change
    start, end = intervals[0][1], values(model)
    assert not torch.equal(start["embed.weight"], end["embed.weight"]) and not torch.equal(start["head.weight"],
                                                                                           end["head.weight"])


def test_optimizer_holds_state_only_for_active_blocks_and_new_ones_start_fresh():
    model = tiny(4)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    schedule = LayerwiseSampling(n_active=3, every=2, seed=0)  # 3 of 4: some blocks stay active across a draw
    outside = [model.embed.weight, model.head.weight, model.head.bias]
    joined: dict[int, int] = {}  # block -> the step it (last) joined the optimizer
    kept = fresh = 0
    for step in range(16):
        previous = schedule.active
        change = schedule.step(model, optimizer, step=step)
        active = schedule.active
        for i in active:
            if i not in previous:
                joined[i] = step
                fresh += step > 0
            else:
                kept += change is not None
        frozen_params = [p for i in range(4) if i not in active for p in model.blocks[i].parameters()]
        active_params = [p for i in active for p in model.blocks[i].parameters()]
        # state only for what trains (the active blocks and the outside); 0 bytes for the frozen blocks
        assert {id(p) for p in optimizer.state} <= {id(p) for p in active_params + outside}
        assert state_bytes(optimizer, frozen_params) == 0
        if change is not None and step > 0:  # freed at once: Adam's 2 moments and step of each leaving tensor
            left = [p for i in previous if i not in active for p in model.blocks[i].parameters()]
            assert change.optimizer.freed_bytes == sum(2 * p.numel() * 4 + 4 for p in left) > 0
        train_step(model, optimizer, step)
        for i in active:  # a newly active block starts fresh; one that stayed active keeps counting
            steps = {float(optimizer.state[p]["step"]) for p in model.blocks[i].parameters()}
            assert steps == {float(step + 1 - joined[i])}, (step, i, steps)
        assert state_bytes(optimizer, active_params) == sum(2 * p.numel() * 4 + 4 for p in active_params)
    assert kept and fresh  # both cases happened


def test_cpu_option_parks_the_state_and_brings_it_back():
    model = tiny(4)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    schedule = LayerwiseSampling(n_active=2, every=2, seed=0, optimizer_state="cpu")
    when_frozen: dict[str, dict[str, torch.Tensor]] = {}
    names = {id(p): n for n, p in model.named_parameters()}
    returned = 0
    for step in range(20):
        before = {names[id(p)]: {k: v.clone() for k, v in s.items()} for p, s in optimizer.state.items()}
        change = schedule.step(model, optimizer, step=step)
        if change is not None:
            when_frozen.update({n: before[n] for n in change.frozen if n in before})
            for name in change.unfrozen:
                if name in when_frozen:  # it comes back with exactly the state it left with
                    state = optimizer.state[model.get_parameter(name)]
                    assert state.keys() == when_frozen[name].keys()
                    assert all(torch.equal(state[k], v) for k, v in when_frozen.pop(name).items())
                    returned += 1
        trainable = {id(p) for p in model.parameters() if p.requires_grad}
        assert {id(p) for p in optimizer.state} <= trainable  # parked state is not in the optimizer
        train_step(model, optimizer, step)
    assert returned > 0


def test_frozen_blocks_stay_in_eval_dropout_off():
    model = tiny(4).train()
    schedule = LayerwiseSampling(n_active=1, every=1, seed=0)
    for step in range(6):
        schedule.step(model, step=step)
        model.train()
        assert [b[3].training for b in model.blocks] == [i in schedule.active for i in range(4)]
        assert model.embed.training and model.head.training


def test_outside_the_blocks_is_left_as_the_user_set_it(caplog):
    model = tiny(4)
    frostline.freeze(model, "head")
    frostline.freeze(model, "embed.weight", rows=[0, 1])  # partially frozen, outside the blocks
    frostline.freeze(model, "blocks.2.1")  # inside a block: the schedule owns it (and says so)
    embed, head = get_partial(model, "embed.weight").full().clone(), model.head.weight.detach().clone()
    optimizer = frostline.optimizer(model, torch.optim.AdamW, lr=1e-2)
    schedule = LayerwiseSampling(n_active=2, every=2, seed=0)
    with caplog.at_level(logging.WARNING, logger="frostline.schedules"):
        schedule.step(model, optimizer, step=0)
    assert "owns its blocks: 2 parameter(s) frozen before it started (blocks.2.1.weight, blocks.2.1.bias)" \
        in caplog.text
    norm_before, trained_norm = model.blocks[2][1].weight.detach().clone(), False
    for step in range(16):
        schedule.step(model, optimizer, step=step)
        assert frostline.is_frozen(model, "head.weight") is True
        assert frostline.is_frozen(model, "embed.weight") == "partial"
        assert frostline.is_frozen(model, "blocks.2.1.weight") is (2 not in schedule.active)
        trained_norm |= 2 in schedule.active
        train_step(model, optimizer, step)
    after = get_partial(model, "embed.weight").full()
    assert torch.equal(model.head.weight, head) and torch.equal(after[:2], embed[:2])  # the user's freezes held
    assert not torch.equal(after[2:], embed[2:])  # the embedding's trainable rows trained
    assert trained_norm and not torch.equal(model.blocks[2][1].weight, norm_before)  # sampled, so it trained


def test_blocks_frozen_by_the_user_train_when_sampled_even_with_every_block_active():
    model = frostline.freeze(tiny(3), "blocks")  # all blocks frozen first, as LMFlow's callback does
    head = model.head.weight.detach().clone()
    optimizer = frostline.optimizer(model, torch.optim.AdamW, lr=1e-2)  # built without any block
    schedule = LayerwiseSampling(n_active=3, every=2)  # all of them: the plan never changes the frozen set
    change = schedule.step(model, optimizer, step=0)
    assert change is not None and len(change.unfrozen) == sum(1 for _ in model.blocks.parameters())
    assert all(p.requires_grad for p in model.blocks.parameters())
    start = values(model)
    train_step(model, optimizer, 0)
    assert all(not torch.equal(start[n], p) for n, p in model.named_parameters())  # every block trained
    assert not torch.equal(model.head.weight, head)


def test_clear_errors():
    for kwargs, match in [({"n_active": 0, "every": 1}, "n_active must be a positive int"),
                          ({"n_active": 2, "every": 0}, "every must be a positive int"),
                          ({"n_active": 2, "every": True}, "every must be a positive int"),
                          ({"n_active": 2, "every": 1, "optimizer_state": "gpu"}, "'fresh'.*'cpu'")]:
        with pytest.raises(ValueError, match=match):
            LayerwiseSampling(**kwargs)
    with pytest.raises(TypeError, match="seed must be an int"):
        LayerwiseSampling(2, 1, seed="0")
    with pytest.raises(FrostlineError, match="n_active=5 but the model has 4 blocks.*n_active <= 4"):
        LayerwiseSampling(5, 1).step(tiny(4), step=0)
    with pytest.raises(ValueError, match="step="):
        LayerwiseSampling(1, 1).step(tiny(4), epoch=0)
    partial = frostline.freeze(tiny(4), "blocks.1.0.weight", rows=[0])
    with pytest.raises(FrostlineError, match="partially frozen.*blocks.1.0.weight.*groups="):
        LayerwiseSampling(1, 1).step(partial, step=0)
    schedule = LayerwiseSampling(2, every=3, seed=0)
    schedule.step(tiny(4), step=0)
    with pytest.raises(FrostlineError, match=r"written by LayerwiseSampling\(n_active=2, every=3, seed=0\).*"
                                             r"is LayerwiseSampling\(n_active=2, every=4, seed=0\)"):
        LayerwiseSampling(2, every=4).load_state_dict(schedule.state_dict())


def test_explicit_groups_are_sampled_among():
    model = tiny(4)
    schedule = LayerwiseSampling(1, every=1, groups=[["blocks.0", "blocks.1"], "blocks.2", "blocks.3"])
    for step in range(6):
        schedule.step(model, step=step)
        trains = [any(p.requires_grad for p in b.parameters()) for b in model.blocks]
        assert trains == [schedule.active == [0]] * 2 + [schedule.active == [1], schedule.active == [2]]


# -- resume in a new process ------------------------------------------------------------------------------------
STEPS, EVERY, CUT = 14, 3, 7  # the cut falls mid-interval: the active set must come back without a new draw


def _start(optimizer_state: str) -> tuple[Tiny, torch.optim.Optimizer, LayerwiseSampling]:
    model = tiny(5)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)
    return model, optimizer, LayerwiseSampling(2, EVERY, seed=11, optimizer_state=optimizer_state)


def _run(model, optimizer, schedule, start: int, stop: int) -> None:
    for step in range(start, stop):
        schedule.step(model, optimizer, step=step)
        train_step(model, optimizer, step)


def resume_main(folder: str) -> None:
    """The second halves, in a fresh process: load each checkpoint, run to the end, save the parameters."""
    torch.set_num_threads(1)
    for optimizer_state in ("fresh", "cpu"):
        model, optimizer, schedule = _start(optimizer_state)
        saved = torch.load(Path(folder) / f"{optimizer_state}.pt", weights_only=False)
        model.load_state_dict(saved["model"])
        schedule.load_state_dict(json.loads(saved["schedule"]))
        schedule.restore(model, optimizer)  # freeze state and optimizer groups by name, before the optimizer state
        optimizer.load_state_dict(saved["optimizer"])
        _run(model, optimizer, schedule, CUT, STEPS)
        torch.save({"params": values(model), "history": [c.to_dict() for c in schedule.history]},
                   Path(folder) / f"{optimizer_state}.out.pt")


def test_kill_and_resume_in_a_new_process_ends_bit_identical(tmp_path):
    straight = {}
    for optimizer_state in ("fresh", "cpu"):  # "cpu": the parked optimizer state must come back too
        straight[optimizer_state] = _start(optimizer_state)
        _run(*straight[optimizer_state], 0, STEPS)
        model, optimizer, schedule = _start(optimizer_state)
        _run(model, optimizer, schedule, 0, CUT)
        assert bool(schedule._parked) == (optimizer_state == "cpu")  # there is parked state to carry over
        torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                    "schedule": json.dumps(schedule.state_dict())}, tmp_path / f"{optimizer_state}.pt")  # JSON values
        del model, optimizer, schedule  # "killed"

    code = (f"import sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); import test_schedules_layerwise as t; "
            f"t.resume_main({str(tmp_path)!r})")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-3000:]
    for optimizer_state, (model, _, schedule) in straight.items():
        resumed, expected = torch.load(tmp_path / f"{optimizer_state}.out.pt"), values(model)
        assert resumed["params"].keys() == expected.keys()
        assert all(torch.equal(resumed["params"][n], expected[n]) for n in expected), optimizer_state  # every bit
        assert resumed["history"] == [c.to_dict() for c in schedule.history]
        assert sum(c.step > CUT for c in schedule.history) >= 2  # draws that changed blocks after the cut


# -- where the popular versions break: the HF Trainer's own optimizer, Lightning ---------------------------------
class Snapshots:
    """Records, at each draw, the active blocks and every parameter's value (each framework calls ``take``)."""

    def __init__(self, every: int):
        self.every, self.intervals = every, []

    def take(self, schedule: LayerwiseSampling, model: nn.Module, step: int) -> None:
        if step % self.every == 0:
            self.intervals.append((schedule.active, values(model)))


def _llama_trainer(tmp_path, callback_for, steps: int):
    pytest.importorskip("transformers")
    pytest.importorskip("accelerate")
    from transformers import LlamaConfig, LlamaForCausalLM, Trainer, TrainerCallback, TrainingArguments

    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=40, hidden_size=16, intermediate_size=32, num_hidden_layers=4,
                                         num_attention_heads=2, num_key_value_heads=2, tie_word_embeddings=False))
    g = torch.Generator().manual_seed(0)
    data = [{"input_ids": ids, "labels": ids} for ids in torch.randint(0, 40, (2 * steps, 8), generator=g)]
    frostline.freeze(model, "model.layers")  # as LMFlow's LISA callback does before the Trainer exists
    start = values(model)
    freezer, recorder_hook = callback_for(model)

    class Recorder(TrainerCallback):
        def __init__(self):
            self.in_optimizer, self.built_with = [], set()

        def on_train_begin(self, args, state, control, optimizer=None, **kwargs):
            self.built_with = {id(p) for group in optimizer.param_groups for p in group["params"]}

        def on_step_begin(self, args, state, control, model=None, optimizer=None, **kwargs):
            recorder_hook(model, state.global_step)
            held = {id(p) for group in optimizer.param_groups for p in group["params"]}
            self.in_optimizer.append(held == {id(p) for p in model.parameters() if p.requires_grad})

    recorder = Recorder()
    args = TrainingArguments(output_dir=str(tmp_path), max_steps=steps, per_device_train_batch_size=2,
                             learning_rate=1e-2, weight_decay=0.1, save_strategy="no", logging_strategy="no",
                             report_to=[], use_cpu=True, seed=0, disable_tqdm=True, dataloader_num_workers=0)
    trainer = Trainer(model=model, args=args, train_dataset=data, callbacks=[freezer, recorder])
    trainer.train()
    return model, start, recorder.built_with, recorder


def test_hf_trainer_own_optimizer_every_sampled_block_trains(tmp_path, caplog):
    """LMFlow#726: the Trainer builds its optimizer from what trains at the start (here: no layer at all), so
    with a callback that only flips requires_grad, layers sampled later never train. Through frostline's
    callback every block, when sampled, trains, and is bit-identical while it is frozen."""
    pytest.importorskip("transformers")
    from transformers import TrainerCallback

    from frostline.integrations.transformers import FreezeCallback

    steps, every = 8, 2
    snapshots = Snapshots(every)
    lisa = LayerwiseSampling(n_active=2, every=every, seed=1)
    with caplog.at_level(logging.WARNING, logger="frostline.schedules"):
        model, start, built_with, recorder = _llama_trainer(
            tmp_path, lambda m: (FreezeCallback(lisa), lambda mm, s: snapshots.take(lisa, mm, s)), steps)
    assert "LayerwiseSampling owns its blocks" in caplog.text
    layers = [[n for n, _ in model.named_parameters() if n.startswith(f"model.layers.{i}.")] for i in range(4)]
    assert not built_with & {id(model.get_parameter(n)) for b in layers for n in b}  # built without any layer
    check_intervals(snapshots.intervals, values(model), layers)  # active: every tensor moved; frozen: identical
    assert {i for active, _ in snapshots.intervals for i in active} == {0, 1, 2, 3}  # every block was sampled
    assert all(recorder.in_optimizer)  # the Trainer's optimizer holds exactly what trains, at every step
    assert not torch.equal(start["lm_head.weight"], model.lm_head.weight)

    # the same run with an LMFlow-style callback (requires_grad flips only): blocks sampled later never move
    class Naive(TrainerCallback):
        def __init__(self, model):
            self.layers, self.active = model.model.layers, []

        def on_step_begin(self, args, state, control, **kwargs):
            if state.global_step % every == 0:
                self.active = sorted(torch.randperm(4)[:2].tolist())
                for i, layer in enumerate(self.layers):
                    layer.requires_grad_(i in self.active)

    naive: list[Naive] = []
    plain = Snapshots(every)

    def naive_for(m):
        naive.append(Naive(m))
        return naive[0], lambda mm, s: plain.take(naive[0], mm, s)

    model, start, _, recorder = _llama_trainer(tmp_path, naive_for, steps)
    assert all(torch.equal(start[n], p) for n, p in model.named_parameters() if ".layers." in n)  # none trained
    assert not all(recorder.in_optimizer)


def test_lightning_every_sampled_block_trains():
    pl = pytest.importorskip("lightning.pytorch")
    from frostline.integrations.lightning import FreezeCallback

    every = 2
    lisa, snapshots = LayerwiseSampling(n_active=1, every=every, seed=4), Snapshots(every)

    class Module(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.net = tiny(3)

        def training_step(self, batch, batch_idx):
            snapshots.take(lisa, self.net, self.global_step)
            held = {id(p) for g in self.trainer.optimizers[0].param_groups for p in g["params"]}
            assert held == {id(p) for p in self.parameters() if p.requires_grad}
            (ids,) = batch
            return F.cross_entropy(self.net(ids[:, :-1]).flatten(0, 1), ids[:, 1:].flatten())

        def configure_optimizers(self):  # everything; the schedule's sync takes the frozen blocks out
            return torch.optim.AdamW(self.parameters(), lr=1e-2, weight_decay=0.1)

    module = Module()
    data = torch.utils.data.TensorDataset(torch.randint(0, 12, (16, 6), generator=torch.Generator().manual_seed(0)))
    trainer = pl.Trainer(max_epochs=2, accelerator="cpu", devices=1, logger=False, callbacks=[FreezeCallback(lisa)],
                         enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False,
                         num_sanity_val_steps=0)
    trainer.fit(module, torch.utils.data.DataLoader(data, batch_size=4))
    blocks = [[f"blocks.{i}.{n}" for n, _ in module.net.blocks[i].named_parameters()] for i in range(3)]
    check_intervals(snapshots.intervals, values(module.net), blocks)
    assert len(snapshots.intervals) == 4 and len({tuple(a) for a, _ in snapshots.intervals}) > 1


# -- recompute_frozen: frozen blocks keep only their inputs (issue 15 item 6) ----------------------------------
def test_recompute_frozen_trains_bit_identical_and_recomputes_only_the_frozen_blocks():
    from frostline.lean._recompute import recomputes

    runs = {}
    for recompute in (False, True):
        model = tiny(4)
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
        schedule = LayerwiseSampling(n_active=2, every=3, seed=1, recompute_frozen=recompute)
        intervals = []
        for step in range(12):
            if schedule.step(model, optimizer, step=step) is not None:
                intervals.append((schedule.active, values(model)))
            assert [recomputes(b) for b in model.blocks] == [recompute and i not in schedule.active
                                                             for i in range(4)]
            if recompute and step == 0:  # frozen blocks keep their input only; sampled ones their activations
                kept = frostline.lean.saved_bytes(model, torch.randint(0, 12, (4, 5)))
                for i in range(4):
                    assert (f"blocks.{i}" in kept) == (i not in schedule.active)
                    assert (f"blocks.{i}.2" in kept) == (i in schedule.active)  # the GELU's input
            train_step(model, optimizer, step)
        assert len({tuple(a) for a, _ in intervals}) > 1  # the draws did switch blocks
        check_intervals(intervals, values(model), [block_names(model, i) for i in range(4)])
        runs[recompute] = values(model)
    for name, value in runs[False].items():
        assert torch.equal(value, runs[True][name]), name


def test_recompute_frozen_on_a_llama_is_exact_and_survives_a_restore():
    pytest.importorskip("transformers")
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    base = LlamaForCausalLM(LlamaConfig(vocab_size=50, hidden_size=16, intermediate_size=32, num_hidden_layers=4,
                                        num_attention_heads=2, num_key_value_heads=2, use_cache=False)).train()
    ids = torch.randint(0, 50, (2, 9))
    runs = {}
    for recompute in (False, True):
        model = copy.deepcopy(base)
        schedule = LayerwiseSampling(1, every=2, seed=0, recompute_frozen=recompute)
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
        losses = []
        for step in range(6):
            schedule.step(model, optimizer, step=step)
            optimizer.zero_grad()
            loss = model(input_ids=ids, labels=ids).loss
            loss.backward()
            optimizer.step()
            losses.append(loss.detach())
        runs[recompute] = losses, values(model), schedule, model
    assert all(torch.equal(a, b) for a, b in zip(runs[False][0], runs[True][0], strict=False))
    assert all(torch.equal(v, runs[True][1][n]) for n, v in runs[False][1].items())
    assert not torch.equal(runs[True][1]["model.embed_tokens.weight"], base.model.embed_tokens.weight)
    schedule, model = runs[True][2], runs[True][3]
    kept = frostline.lean.saved_bytes(model, input_ids=ids, labels=ids)
    for i in range(4):
        frozen = i not in schedule.active
        assert (kept.get(f"model.layers.{i}") == 2 * 9 * 16 * 4) == frozen  # the hidden state it was given
        assert (f"model.layers.{i}.mlp" in kept) == (not frozen)
    # a resumed schedule puts the recomputing forward back on the frozen blocks
    resumed = LayerwiseSampling(1, every=2, seed=0, recompute_frozen=True)
    resumed.load_state_dict(schedule.state_dict())
    fresh = copy.deepcopy(base)
    resumed.restore(fresh)
    assert [frostline.lean.keeps(layer) is not None for layer in fresh.model.layers] == \
        [i not in schedule.active for i in range(4)]


def test_recompute_frozen_needs_groups_that_are_modules():
    with pytest.raises(TypeError, match="recompute_frozen must be True or False"):
        LayerwiseSampling(1, 1, recompute_frozen="yes")
    schedule = LayerwiseSampling(1, 1, groups=[["blocks.0.0.weight"], "blocks.1", "blocks.2"], recompute_frozen=True)
    with pytest.raises(FrostlineError, match=r"group 0 \(blocks.0.0.weight\) is not all the parameters of one "
                                             r"module.*blocks.0.0.*holds 2.*recompute_frozen=False"):
        schedule.step(tiny(4), step=0)
