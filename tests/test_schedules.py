"""frostline.schedules: each schedule's semantics, optimizer continuity through sync, and exact resume."""

from __future__ import annotations

import copy
import json
import logging
import math
import subprocess
import sys

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import frostline
import frostline.models
from frostline.errors import FrostlineError
from frostline.schedules import (
    SCHEDULES,
    AutoFreeze,
    Change,
    GradualUnfreeze,
    LayerwiseSampling,
    ProgressiveFreeze,
    UnfreezeAt,
    _optim,
)


def mlp(depth: int = 4, width: int = 6) -> nn.Sequential:
    """``depth`` Linear layers: ``depth`` layer groups named "0", "1", ..."""
    torch.manual_seed(0)
    return nn.Sequential(*[nn.Linear(width, width if i < depth - 1 else 2) for i in range(depth)])


def frozen_groups(model: nn.Sequential) -> list[bool]:
    return [not layer.weight.requires_grad for layer in model]


def train_step(model: nn.Module, optimizer: torch.optim.Optimizer, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    x, y = torch.randn(8, 6, generator=g), torch.randint(0, 2, (8,), generator=g)
    optimizer.zero_grad()
    nn.functional.cross_entropy(model(x), y).backward()
    optimizer.step()


def group_names(model: nn.Module, optimizer: torch.optim.Optimizer) -> list[list[str]]:
    names = {id(p): n for n, p in model.named_parameters()}
    return [[names[id(p)] for p in g["params"]] for g in optimizer.param_groups]


def in_optimizer(optimizer: torch.optim.Optimizer) -> set[int]:
    return {id(p) for g in optimizer.param_groups for p in g["params"]}


# -- GradualUnfreeze --------------------------------------------------------------------------------------------
def test_gradual_unfreeze_ulmfit_periods():
    model = mlp(4)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    schedule = GradualUnfreeze()
    seen = []
    for epoch in range(6):
        schedule.step(model, optimizer, epoch=epoch)
        seen.append(frozen_groups(model))
        # the optimizer holds exactly the trainable parameters
        assert in_optimizer(optimizer) == {id(p) for p in model.parameters() if p.requires_grad}
        train_step(model, optimizer, epoch)
    assert seen[:4] == [[True, True, True, False], [True, True, False, False], [True, False, False, False],
                        [False] * 4]
    assert seen[4] == seen[5] == [False] * 4
    assert [len(c.unfrozen) for c in schedule.history] == [0, 2, 2, 2]


def test_gradual_unfreeze_every_and_explicit_groups():
    model = mlp(4)
    schedule = GradualUnfreeze(groups=[["0", "1"], "2", ["3.weight", "3.bias"]], every=2)
    states = []
    for epoch in range(6):
        schedule.step(model, epoch=epoch)
        states.append(frozen_groups(model))
    assert states == [[True, True, True, False]] * 2 + [[True, True, False, False]] * 2 + [[False] * 4] * 2


def test_frozen_stays_bit_identical_and_state_is_kept_across_unfreeze():
    model = mlp(4)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)
    schedule = GradualUnfreeze()
    schedule.step(model, optimizer, epoch=0)
    before = copy.deepcopy(model.state_dict())
    for s in range(3):
        train_step(model, optimizer, s)
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in ("0.weight", "0.bias", "1.weight", "2.bias"))
    assert not torch.equal(before["3.weight"], after["3.weight"])  # something trainable did change
    head_state = {k: v.clone() for k, v in optimizer.state[model[3].weight].items()}
    optimizer_id = id(optimizer)
    change = schedule.step(model, optimizer, epoch=1)
    assert change.unfrozen == ["2.weight", "2.bias"] and change.optimizer is not None
    assert id(optimizer) == optimizer_id  # no rebuild
    kept = optimizer.state[model[3].weight]
    assert all(torch.equal(kept[k], v) for k, v in head_state.items())  # the head's Adam moments survived


def test_lr_divisor_gives_discriminative_rates():
    model = mlp(4)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.26)
    schedule = GradualUnfreeze(lr_divisor=2.6)
    for epoch in range(3):
        schedule.step(model, optimizer, epoch=epoch)
    lr_of = {n: g["lr"] for g, names in zip(optimizer.param_groups, group_names(model, optimizer), strict=False) for n in names}
    assert lr_of["3.weight"] == pytest.approx(0.26)
    assert lr_of["2.weight"] == pytest.approx(0.1)
    assert lr_of["1.bias"] == pytest.approx(0.1 / 2.6)
    assert "0.weight" not in lr_of


def test_named_groups_of_frostline_optimizer_stay_consistent():
    model = mlp(4)
    schedule = GradualUnfreeze(lr_divisor=2.6)
    schedule.step(model, epoch=0)  # freeze first, then build over the trainable parameters
    optimizer = frostline.optimizer(model, torch.optim.AdamW, lr=0.1, weight_decay=0.01)
    for epoch in range(5):
        schedule.step(model, optimizer, epoch=epoch)
        train_step(model, optimizer, epoch)
        assert all(g["param_names"] == names for g, names in zip(optimizer.param_groups,
                                                                  group_names(model, optimizer), strict=False))
    lr_of = {n: g["lr"] for g in optimizer.param_groups for n in g["param_names"]}
    assert [lr_of[f"{i}.weight"] for i in range(4)] == pytest.approx([0.1 / 2.6 ** (3 - i) for i in range(4)])
    assert {g["name"] for g in optimizer.param_groups} >= {"decay", "no_decay", "decay/2", "no_decay/0"}
    other = mlp(4)
    fresh = torch.optim.AdamW(other.parameters(), lr=0.1)
    _optim.apply_layout(fresh, other, _optim.layout(optimizer, model))
    fresh.load_state_dict(optimizer.state_dict())  # the layout by name fits the optimizer's own checkpoint
    assert group_names(other, fresh) == group_names(model, optimizer)


def test_a_schedule_never_unfreezes_what_the_user_froze():
    model = mlp(3)
    frostline.freeze(model, "0.bias")
    schedule = GradualUnfreeze()
    for epoch in range(4):
        schedule.step(model, epoch=epoch)
    assert frostline.frozen_names(model) == ["0.bias"]


def test_silent_05_derived_groups_leave_what_the_user_froze_and_say_so(caplog):
    model = mlp(3)
    frostline.freeze(model, "0")  # the user's freeze; GradualUnfreeze's groups come from layer_groups
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    start = copy.deepcopy(model.state_dict())
    schedule = GradualUnfreeze()
    with caplog.at_level(logging.INFO, logger="frostline.schedules"):
        for epoch in range(3):
            schedule.step(model, optimizer, epoch=epoch)
            train_step(model, optimizer, epoch)
    assert frozen_groups(model) == [True, False, False]
    assert all(torch.equal(model.state_dict()[k], start[k]) for k in ("0.weight", "0.bias"))
    assert not torch.equal(model.state_dict()["1.weight"], start["1.weight"])  # the schedule's own group trained
    last = schedule.history[-1]  # epoch 2: the plan trains group 0, the user's freeze holds
    assert (last.epoch, last.unfrozen, last.kept) == (2, [], ["0.weight", "0.bias"])
    assert [c.kept for c in schedule.history[:-1]] == [[], []]  # until then the plan wanted group 0 frozen too
    assert ("GradualUnfreeze epoch 2: no change (0); 3 of 3 groups train; 2 tensors stay frozen: frozen by you, "
            "not by the schedule (it takes over what you froze only when its groups= name it at its first step)"
            in caplog.text)
    assert Change.from_dict(json.loads(json.dumps(last.to_dict()))).kept == last.kept


def test_silent_05_derived_groups_say_which_partially_frozen_tensors_they_leave_alone():
    model = mlp(3)
    frostline.freeze(model, "0.weight", rows=[0, 1])
    schedule = GradualUnfreeze()
    first = schedule.step(model, epoch=0)
    assert first.frozen == ["0.bias", "1.weight", "1.bias"] and first.kept_partial == ["0.weight"]
    assert ("1 of 3 groups train; 1 tensor stays partially frozen: frozen by you, not by the schedule (their "
            "frozen elements never train)") in str(first)


def test_partially_frozen_tensors_are_left_to_their_strategy():
    model = mlp(3)
    frostline.freeze(model, "0.weight", rows=[0, 1])
    before = model[0].weight.detach()[:2].clone()
    optimizer = frostline.optimizer(model, torch.optim.AdamW, lr=1e-2)
    schedule = GradualUnfreeze(lr_divisor=2.6)
    for epoch in range(4):
        schedule.step(model, optimizer, epoch=epoch)
        assert frostline.is_frozen(model, "0.weight") == "partial"
        assert frostline.is_frozen(model, "0.bias") is (epoch < 2)
        train_step(model, optimizer, epoch)
    assert torch.equal(model[0].weight.detach()[:2], before)  # its frozen rows never moved
    assert not torch.equal(model[0].weight.detach()[2:], mlp(3)[0].weight.detach()[2:])  # its other rows trained


# -- UnfreezeAt -------------------------------------------------------------------------------------------------
def test_unfreeze_at_backbone_semantics():
    model = mlp(3)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    schedule = UnfreezeAt(["0", "1"], epoch=2, lr_factor=0.1, warmup_epochs=2)
    lrs = []
    for epoch in range(5):
        schedule.step(model, optimizer, epoch=epoch)
        assert frozen_groups(model) == ([True, True, False] if epoch < 2 else [False] * 3)
        groups = group_names(model, optimizer)
        lrs.append([g["lr"] for g, names in zip(optimizer.param_groups, groups, strict=False) if "0.weight" in names])
    assert lrs[:2] == [[], []]
    assert lrs[2:] == [[pytest.approx(0.01)], [pytest.approx(0.1 * 0.1 ** 0.5)], [pytest.approx(0.1)]]
    assert optimizer.param_groups[0]["lr"] == 0.1  # the head's group keeps the full rate


def test_silent_05_unfreeze_at_unfreezes_what_the_user_froze_before_it(caplog):
    model = mlp(3)
    frostline.freeze(model, "0")  # Lightning's BackboneFinetuning pattern: freeze the backbone, unfreeze it later
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    start = copy.deepcopy(model.state_dict())
    schedule = UnfreezeAt("0", epoch=1, lr_factor=0.1)  # its spec names "0": the schedule owns it now
    with caplog.at_level(logging.INFO, logger="frostline.schedules"):
        for epoch in range(3):
            schedule.step(model, optimizer, epoch=epoch)
            assert frozen_groups(model) == [epoch < 1, False, False]
            train_step(model, optimizer, epoch)
            if epoch == 0:
                assert torch.equal(model.state_dict()["0.weight"], start["0.weight"])
                assert not torch.equal(model.state_dict()["2.weight"], start["2.weight"])
    assert not torch.equal(model.state_dict()["0.weight"], start["0.weight"])  # it trained from epoch 1
    start_change, change = schedule.history  # epoch 0 froze nothing new: the user had; epoch 1 unfroze
    assert (start_change.epoch, start_change.frozen, start_change.unfrozen) == (0, [], [])
    assert (change.epoch, change.unfrozen, change.kept) == (1, ["0.weight", "0.bias"], [])
    assert "UnfreezeAt epoch 0: no change (0); trains from epoch 1" in caplog.text
    assert "UnfreezeAt takes over 2 tensors frozen before it (its spec names them)" in caplog.text
    assert "UnfreezeAt epoch 1: unfroze 2 tensors (0); lr x0.1" in caplog.text
    lr_of = {n: g["lr"] for g, names in zip(optimizer.param_groups, group_names(model, optimizer), strict=False) for n in names}
    assert lr_of["0.weight"] == pytest.approx(0.01) and lr_of["2.weight"] == pytest.approx(0.1)


def test_silent_05_a_schedule_owns_what_its_spec_names_from_epoch_0():
    model = mlp(3)
    frostline.freeze(model, ["0.weight", "2.bias"])  # one inside the spec, one outside it
    schedule = UnfreezeAt(["0", "1"], epoch=0)
    change = schedule.step(model, epoch=0)  # trains from the start: what it owns is trainable at once
    assert change.unfrozen == ["0.weight"] and frostline.frozen_names(model) == ["2.bias"]
    assert schedule.step(model, epoch=1) is None


@pytest.mark.parametrize("stop", [1, 3])
@pytest.mark.parametrize("refreeze", [True, False])
def test_silent_05_a_schedule_owning_what_the_user_froze_resumes_exactly(stop, refreeze):
    def make():
        model = frostline.freeze(mlp(4), "0")  # the user's script freezes the backbone before the schedule runs
        return model, torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1), UnfreezeAt("0", epoch=2)

    model, optimizer, schedule = make()
    start = copy.deepcopy(model.state_dict())
    _run(None, "epoch", 0, 5, model, optimizer, schedule)
    assert frozen_groups(model) == [False] * 4 and not torch.equal(model[0].weight, start["0.weight"])

    first, first_optimizer, first_schedule = make()
    _run(None, "epoch", 0, stop, first, first_optimizer, first_schedule)
    checkpoint = copy.deepcopy({"model": first.state_dict(), "optimizer": first_optimizer.state_dict(),
                                "schedule": json.loads(json.dumps(first_schedule.state_dict()))})
    resumed, resumed_optimizer, resumed_schedule = make()
    if not refreeze:  # a resuming script need not repeat the freeze: the checkpoint says what is frozen
        frostline.unfreeze(resumed, "0")
    resumed.load_state_dict(checkpoint["model"])
    resumed_schedule.load_state_dict(checkpoint["schedule"])
    resumed_schedule.restore(resumed, resumed_optimizer)
    assert frozen_groups(resumed) == frozen_groups(first) == [stop < 2, False, False, False]
    resumed_optimizer.load_state_dict(checkpoint["optimizer"])
    _run(None, "epoch", stop, 5, resumed, resumed_optimizer, resumed_schedule)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), resumed.state_dict().values(), strict=False))
    assert [c.to_dict() for c in resumed_schedule.history] == [c.to_dict() for c in schedule.history]


# -- ProgressiveFreeze ------------------------------------------------------------------------------------------
def test_progressive_freeze_thresholds_match_freezeout():
    cubic = ProgressiveFreeze(t0=0.8, schedule="cubic")
    assert cubic.thresholds(5) == pytest.approx([0.8 ** 3, 0.85 ** 3, 0.9 ** 3, 0.95 ** 3, 1.0])
    assert ProgressiveFreeze(t0=0.5, schedule="linear").thresholds(3) == pytest.approx([0.5, 0.75, 1.0])


def test_progressive_freeze_prefix_cosine_and_backward():
    model = mlp(4)
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
    schedule = ProgressiveFreeze(t0=0.5, schedule="linear", total_steps=120)  # stops at 60, 80, 100, never
    for step in range(120):
        schedule.step(model, optimizer, step=step)
        frozen = frozen_groups(model)
        assert frozen == sorted(frozen, reverse=True)  # always a prefix
        assert frozen == [step >= 60, step >= 80, step >= 100, False]
        if step == 30:
            lr_of = {names[0]: g["lr"] for g, names in zip(optimizer.param_groups, group_names(model, optimizer), strict=False)}
            assert lr_of["0.weight"] == pytest.approx(0.5 * (1 + math.cos(math.pi * 30 / 60)))
            assert lr_of["3.weight"] == pytest.approx(0.5 * (1 + math.cos(math.pi * 30 / 120)))
        train_step(model, optimizer, step)
    # the frozen prefix is out of backward: nothing before the first trainable layer needs grad
    assert not model[:3](torch.randn(2, 6)).requires_grad
    assert all(p.grad is None for p in model[:3].parameters())


def test_progressive_freeze_needs_total_steps():
    with pytest.raises(ValueError, match="total_steps"):
        ProgressiveFreeze().step(mlp(2), step=0)


# -- AutoFreeze -------------------------------------------------------------------------------------------------
def _step_with_norms(model: nn.Sequential, optimizer, norms: list[float]) -> None:
    """One optimizer step whose gradient L1 norm is ``norms[i]`` for layer i (lr 0: weights do not matter)."""
    for layer, norm in zip(model, norms + [1.0], strict=False):
        if layer.weight.requires_grad:
            layer.weight.grad = torch.full_like(layer.weight, norm / layer.weight.numel())
            layer.bias.grad = torch.zeros_like(layer.bias)
    optimizer.step()


def test_autofreeze_freezes_the_prefix_before_the_first_changing_group():
    model = mlp(4)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
    schedule = AutoFreeze(every_n_steps=2)
    plan = [[10, 10, 10]] * 2 + [[9.9, 9, 5]] * 2 + [[9.9, 8.9, 2]] * 2
    for step, norms in enumerate(plan + [[1, 1, 1]]):
        schedule.step(model, optimizer, step=step)
        if step == 4:  # changes 0.01, 0.1, 0.5: median 0.1, first >= it is group 1
            assert frozen_groups(model) == [True, False, False, False]
            assert schedule.frozen_upto() == "0"
        _step_with_norms(model, optimizer, norms)
    # changes of groups 1, 2: 0.011, 0.6: median ~0.31, first >= it is group 2
    assert frozen_groups(model) == [True, True, False, False]
    assert "threshold" in schedule.history[-1].reason


def test_autofreeze_feeds_a_feature_cache():
    model = mlp(4)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
    schedule, cache, built = AutoFreeze(every_n_steps=2), None, []
    x, ids = torch.randn(8, 6), torch.arange(8)
    plan = [[10, 10, 10]] * 2 + [[9.9, 9, 5]] * 2 + [[9.9, 8.9, 2]] * 2 + [[1, 1, 1]]
    for step, norms in enumerate(plan):
        if schedule.step(model, optimizer, step=step) is not None and schedule.frozen_upto():
            cache = frostline.FeatureCache(model, upto=schedule.frozen_upto())  # rebuilt where the prefix ends
            built.append(schedule.frozen_upto())
        out = cache(ids, x) if cache is not None else model(x)
        assert torch.allclose(out, model(x))
        _step_with_norms(model, optimizer, norms)
    assert built == ["0", "1"] and len(cache) == 8


def test_frozen_upto_ends_a_group_of_sibling_layers_at_its_last_layer():
    model = frostline.models.tiny_resnet()
    schedule = GradualUnfreeze()
    schedule.step(model, epoch=0)
    assert schedule.frozen_upto() == "layer3.1"  # every group but the last (fc) is frozen
    stem = GradualUnfreeze(groups=[["conv1", "bn1"], "layer1", "fc"])
    stem.step(frostline.models.tiny_resnet(), epoch=1)
    assert stem.frozen_upto() == "bn1"


@settings(max_examples=30, deadline=None)
@given(st.lists(st.lists(st.floats(0.01, 100), min_size=4, max_size=4), min_size=2, max_size=8))
def test_autofreeze_never_freezes_above_a_trainable_group(intervals):
    model = mlp(5)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
    schedule = AutoFreeze(every_n_steps=1)
    for step, norms in enumerate(intervals):
        schedule.step(model, optimizer, step=step)
        frozen = frozen_groups(model)
        assert frozen == sorted(frozen, reverse=True) and not frozen[-1]
        _step_with_norms(model, optimizer, norms)


# -- every registered schedule: checkpoints resume exactly, changes are logged ------------------------------------
ARGUMENTS = {  # a registered schedule missing here is built with its defaults: SCHEDULES[name]()
    "GradualUnfreeze": lambda: GradualUnfreeze(lr_divisor=2.6),
    "UnfreezeAt": lambda: UnfreezeAt("0", epoch=2, warmup_epochs=2),
    "ProgressiveFreeze": lambda: ProgressiveFreeze(t0=0.3, total_steps=12),
    "AutoFreeze": lambda: AutoFreeze(every_n_steps=2),
    "LayerwiseSampling": lambda: LayerwiseSampling(n_active=2, every=3, seed=1),
}


def _maker(kind):
    """The factory of schedule ``kind`` and the counter it is driven by."""
    return ARGUMENTS.get(kind, SCHEDULES[kind]), SCHEDULES[kind].unit


def _run(make, unit, start, stop, model, optimizer, schedule):
    for i in range(start, stop):  # one "epoch" = 2 optimizer steps
        if unit == "epoch":
            schedule.step(model, optimizer, epoch=i)
        for j in range(2):
            if unit == "step":
                schedule.step(model, optimizer, epoch=i, step=2 * i + j)
            train_step(model, optimizer, 2 * i + j)


@pytest.mark.parametrize("kind", SCHEDULES)
def test_resume_continues_exactly(kind):
    make, unit = _maker(kind)
    model, schedule = mlp(4), make()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)
    _run(make, unit, 0, 6, model, optimizer, schedule)

    first, first_schedule = mlp(4), make()
    first_optimizer = torch.optim.AdamW(first.parameters(), lr=1e-2, weight_decay=0.1)
    _run(make, unit, 0, 3, first, first_optimizer, first_schedule)
    checkpoint = {"model": copy.deepcopy(first.state_dict()), "optimizer": copy.deepcopy(first_optimizer.state_dict()),
                  "schedule": json.loads(json.dumps(first_schedule.state_dict()))}  # plain JSON values

    resumed, resumed_schedule = mlp(4), make()
    resumed_optimizer = torch.optim.AdamW(resumed.parameters(), lr=1e-2, weight_decay=0.1)
    resumed.load_state_dict(checkpoint["model"])
    resumed_schedule.load_state_dict(checkpoint["schedule"])
    resumed_schedule.restore(resumed, resumed_optimizer)
    assert group_names(resumed, resumed_optimizer) == group_names(first, first_optimizer)
    assert frozen_groups(resumed) == frozen_groups(first)
    resumed_optimizer.load_state_dict(checkpoint["optimizer"])
    _run(make, unit, 3, 6, resumed, resumed_optimizer, resumed_schedule)

    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), resumed.state_dict().values(), strict=False))
    assert group_names(resumed, resumed_optimizer) == group_names(model, optimizer)
    assert [g["lr"] for g in resumed_optimizer.param_groups] == [g["lr"] for g in optimizer.param_groups]
    assert [c.to_dict() for c in resumed_schedule.history] == [c.to_dict() for c in schedule.history]


@pytest.mark.parametrize("kind", SCHEDULES)
def test_every_change_is_logged_and_recorded(kind, caplog):
    make, unit = _maker(kind)
    model, schedule = mlp(4), make()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    with caplog.at_level(logging.INFO, logger="frostline.schedules"):
        _run(make, unit, 0, 6, model, optimizer, schedule)
    assert schedule.history, f"{kind} changed nothing in 6 epochs (12 steps): pick arguments that do (ARGUMENTS)"
    logged = [r.getMessage() for r in caplog.records if r.name == "frostline.schedules"]
    for change in schedule.history:
        assert f"{kind} {change}" in logged
    assert all(isinstance(change, Change) for change in schedule.history)


def test_the_registry_lists_each_schedule_by_the_name_its_checkpoint_records():
    assert set(SCHEDULES) == {"AutoFreeze", "GradualUnfreeze", "LayerwiseSampling", "ProgressiveFreeze", "UnfreezeAt"}
    for name, cls in SCHEDULES.items():
        assert cls.__name__ == name and _maker(name)[0]().state_dict()["schedule"] == name


# -- errors, logging, import hygiene ----------------------------------------------------------------------------
def test_clear_errors():
    with pytest.raises(ValueError, match="every"):
        GradualUnfreeze(every=0)
    with pytest.raises(ValueError, match="lr_factor"):
        UnfreezeAt("0", epoch=1, lr_factor=0)
    with pytest.raises(ValueError, match="schedule"):
        ProgressiveFreeze(schedule="quadratic")
    with pytest.raises(ValueError, match="epoch="):
        GradualUnfreeze().step(mlp(2))
    with pytest.raises(FrostlineError, match="one group"):
        GradualUnfreeze(groups=["0", "0.weight"]).step(mlp(2), epoch=0)
    with pytest.raises(FrostlineError, match="GradualUnfreeze"):
        UnfreezeAt("0", epoch=1).load_state_dict(GradualUnfreeze().state_dict())
    with pytest.raises(frostline.SelectionError):
        UnfreezeAt("backbone", epoch=1).step(mlp(2), epoch=0)


def test_changes_are_logged_and_recorded(caplog):
    model = mlp(3)
    schedule = GradualUnfreeze()
    with caplog.at_level(logging.INFO, logger="frostline.schedules"):
        first = schedule.step(model, epoch=0)
        assert schedule.step(model, epoch=0) is None  # nothing new to do
        schedule.step(model, epoch=1)
    assert isinstance(first, Change) and first.frozen == ["0.weight", "0.bias", "1.weight", "1.bias"]
    assert "epoch 1: unfroze 2 tensors (1)" in caplog.text
    assert len(schedule.history) == 2 and "GradualUnfreeze(1/3 groups frozen, epoch=1)" == repr(schedule)


def test_importing_schedules_imports_no_framework():
    code = ("import sys, frostline, frostline.schedules, frostline.integrations; "
            "print(sorted(m for m in ('lightning', 'pytorch_lightning', 'transformers') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_first_hour_the_change_names_the_group_a_parameter_really_joined() -> None:
    # GradualUnfreeze with lr_divisor puts each newly trainable group in a group of its own; the log must say so
    # (it said "to group 0", where sync first put them, before the lr split moved them)
    model = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 4), nn.Linear(4, 2))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    schedule = GradualUnfreeze(lr_divisor=2.6)
    schedule.step(model, optimizer, epoch=0)
    change = schedule.step(model, optimizer, epoch=1)
    where = {id(p): i for i, g in enumerate(optimizer.param_groups) for p in g["params"]}
    index = where[id(model[1].weight)]
    assert index != 0 and optimizer.param_groups[index]["lr"] < 1e-3
    assert change.optimizer.added["1.weight"] == f"group {index}"
    assert f"1.weight to group {index}" in str(change)
