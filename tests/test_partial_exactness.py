"""Exactness of partial freezing across optimizers, strategies and layouts.

Frozen elements must be bit-identical after training; trainable elements must match a reference: the same plain
model and optimizer, with the frozen gradients zeroed before clipping and the frozen values written back after
every step (what a careful hand-written loop does, at full cost).

The strategies come from the registry, plus a fourth one written in this folder (``toy_strategy.py``: one file,
registered while this module runs), so a new strategy goes through every test here with no edit to them.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import frostline
from frostline import FreezeError
from frostline.partial import STRATEGIES, get_partial
from toy_strategy import Restore, registered

O = torch.optim


pytestmark = pytest.mark.usefixtures("one_thread")
NAMES = ["auto", *STRATEGIES, Restore.strategy]  # the registered strategies and the toy (registered by `toy`)


@pytest.fixture(scope="module", autouse=True)
def toy():
    """The toy strategy is registered while this module's tests run, and only then."""
    with registered():
        yield
OPTIMIZERS = {
    "sgd": (O.SGD, {"lr": 0.1}),
    "sgd-momentum-wd": (O.SGD, {"lr": 0.1, "momentum": 0.9, "weight_decay": 0.1}),
    "sgd-nesterov": (O.SGD, {"lr": 0.1, "momentum": 0.9, "nesterov": True, "weight_decay": 0.05}),
    "adam": (O.Adam, {"lr": 0.05}),
    "adam-amsgrad-wd": (O.Adam, {"lr": 0.05, "amsgrad": True, "weight_decay": 0.1}),
    "adamw": (O.AdamW, {"lr": 0.05, "weight_decay": 0.1}),
    "adamw-amsgrad": (O.AdamW, {"lr": 0.05, "weight_decay": 0.1, "amsgrad": True}),
    "nadam": (O.NAdam, {"lr": 0.05, "weight_decay": 0.1}),
    "nadam-decoupled": (O.NAdam, {"lr": 0.05, "weight_decay": 0.1, "decoupled_weight_decay": True}),
    "radam": (O.RAdam, {"lr": 0.05, "weight_decay": 0.1}),
    "adamax": (O.Adamax, {"lr": 0.05, "weight_decay": 0.1}),
    "adagrad": (O.Adagrad, {"lr": 0.1, "weight_decay": 0.1}),
    "adadelta": (O.Adadelta, {"lr": 1.0, "weight_decay": 0.1}),
    "rmsprop-centered-momentum": (O.RMSprop, {"lr": 0.01, "momentum": 0.5, "centered": True, "weight_decay": 0.1}),
    "rprop": (O.Rprop, {"lr": 0.01}),
    "asgd": (O.ASGD, {"lr": 0.05, "weight_decay": 0.1}),
}
FUSED_ON_CPU = {"sgd-momentum-wd", "adam-amsgrad-wd", "adamw", "adagrad"}
VARIANTS = [(n, flag) for n in OPTIMIZERS for flag in ("for-loop", "foreach")] + [
    (n, "fused") for n in sorted(FUSED_ON_CPU)]
TARGETS = {  # parameter -> layouts it can take
    "emb.weight": ("rows", "mask"),
    "conv.weight": ("rows", "cols", "mask"),
    "lin.weight": ("rows", "cols", "mask"),
    "lin.bias": ("rows",),
}


class Net(nn.Module):
    """An Embedding, a Conv1d and a Linear: every strategy's forward path, in one small model."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.emb, self.conv, self.lin = nn.Embedding(12, 4), nn.Conv1d(4, 6, 2), nn.Linear(12, 3)

    def forward(self, ids):
        return self.lin(torch.relu(self.conv(self.emb(ids).transpose(1, 2))).flatten(1))


def _batches(n, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randint(0, 12, (6, 3), generator=g), torch.randint(0, 3, (6,), generator=g)) for _ in range(n)]


def _optimizer(name, flag, params):
    cls, kwargs = OPTIMIZERS[name]
    extra = {} if flag == "for-loop" else {flag: True}
    return cls(params, **kwargs, **extra)


def _layout_mask(shape, layout, bits):
    """A frozen mask of ``shape`` from ``bits``: rows (dim 0), cols (dim 1) or single elements."""
    if layout == "mask":
        return torch.tensor(bits[: torch.Size(shape).numel()], dtype=torch.bool).view(shape)
    dim = 0 if layout == "rows" else 1
    rows = torch.tensor(bits[: shape[dim]], dtype=torch.bool)
    view = [1] * len(shape)
    view[dim] = shape[dim]
    return rows.view(view).expand(shape).clone()


def _freeze(model, name, layout, frozen, strategy):
    if layout == "mask":
        frostline.freeze(model, name, mask=frozen, strategy=strategy)
    else:
        dim = 0 if layout == "rows" else 1
        rows = frozen.movedim(dim, 0).reshape(frozen.shape[dim], -1)[:, 0].nonzero().flatten()
        frostline.freeze(model, name, rows=rows, dim=dim, strategy=strategy)


def _train(model, opt, frozen, *, steps=3, accumulate=2, clip=0.5, scaler=None, autocast=False, seed=0):
    """Train; with ``frozen`` given ({name: mask}) this is the reference loop: zero frozen grads, write frozen
    values back after each step."""
    params = dict(model.named_parameters())
    saved = {n: params[n].detach()[m].clone() for n, m in frozen.items()}
    batches = _batches(steps * accumulate, seed)
    for step in range(steps):
        opt.zero_grad()
        for ids, y in batches[step * accumulate:(step + 1) * accumulate]:
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
                loss = F.cross_entropy(model(ids), y) / accumulate
            (scaler.scale(loss) if scaler else loss).backward()
        for n, m in frozen.items():
            params[n].grad[m] = 0
        if scaler:
            scaler.unscale_(opt)
        if clip:
            torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.grad is not None], clip)
        if scaler:
            scaler.step(opt)
            scaler.update()
        else:
            opt.step()
        with torch.no_grad():
            for n, m in frozen.items():
                params[n][m] = saved[n]


def _run(opt_name, flag, strategy, plan, **train_kwargs):
    """Freeze ``plan`` ({name: (layout, mask)}) with ``strategy``, train, compare with the reference."""
    model, reference = Net(), Net()
    for name, (layout, frozen) in plan.items():
        _freeze(model, name, layout, frozen, strategy)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    _train(model, _optimizer(opt_name, flag, [p for p in model.parameters() if p.requires_grad]), {}, **train_kwargs)
    masks = {name: m for name, (_, m) in plan.items()}
    _train(reference, _optimizer(opt_name, flag, list(reference.parameters())), masks, **train_kwargs)
    after, expected = model.state_dict(), reference.state_dict()
    for name, frozen in masks.items():
        assert torch.equal(get_partial(model, name).frozen_mask(), frozen)
        assert torch.equal(after[name][frozen], before[name][frozen]), f"{name}: a frozen element changed"
    moved = [not torch.equal(after[n][~m], before[n][~m]) for n, m in masks.items()]
    assert any(moved), "no trainable element of a partially frozen tensor moved"
    tol = {"rtol": 2e-2, "atol": 2e-2} if train_kwargs.get("autocast") else {"rtol": 1e-4, "atol": 1e-5}
    for name in expected:
        torch.testing.assert_close(after[name], expected[name], **tol, msg=lambda m, name=name: f"{name}: {m}")
    twin = Net()  # checkpoints: the original keys, effective values, into a plain model (strict)
    twin.load_state_dict(model.state_dict())
    ids = _batches(1, seed=9)[0][0]
    assert torch.equal(twin(ids), model(ids))


def _serves(strategy, name, layout, frozen):
    """Whether ``strategy`` can store ``name`` frozen that way (split, say, serves output rows of the conv and the
    Linear only): what freezing a fresh model so does or refuses."""
    try:
        _freeze(Net(), name, layout, frozen, strategy)
    except FreezeError as error:
        if "cannot serve" not in str(error):
            raise
        return False
    return True


# -- every optimizer, every variant, every strategy (a fixed plan) ----------------------------------------------
def _fixed_plan(strategy):
    plan = {"conv.weight": ("rows", _layout_mask((6, 4, 2), "rows", [1, 0, 1, 1, 0, 0])),
            "lin.weight": ("rows", _layout_mask((3, 12), "rows", [0, 1, 0])),
            "emb.weight": ("rows", _layout_mask((12, 4), "rows", [1] * 9 + [0] * 3)),
            "lin.bias": ("rows", _layout_mask((3,), "rows", [1, 0, 0]))}
    return {name: (layout, frozen) for name, (layout, frozen) in plan.items()
            if _serves(strategy, name, layout, frozen)}


@pytest.mark.parametrize("strategy", NAMES)
@pytest.mark.parametrize("opt_name, flag", VARIANTS, ids=[f"{n}-{f}" for n, f in VARIANTS])
def test_every_optimizer_keeps_frozen_exact_and_matches_reference(opt_name, flag, strategy):
    _run(opt_name, flag, strategy, _fixed_plan(strategy))


# -- hypothesis: random layouts, strategies and optimizers --------------------------------------------------------
@st.composite
def plans(draw):
    strategy = draw(st.sampled_from(NAMES))
    plan = {}
    for name in draw(st.lists(st.sampled_from(sorted(TARGETS)), min_size=1, max_size=3, unique=True)):
        layout = draw(st.sampled_from(TARGETS[name]))
        shape = dict(Net().named_parameters())[name].shape
        size = shape.numel() if layout == "mask" else shape[0 if layout == "rows" else 1]
        bits = draw(st.lists(st.booleans(), min_size=size, max_size=size).filter(lambda b: 0 < sum(b) < len(b)))
        plan[name] = (layout, _layout_mask(shape, layout, bits))
    if not all(_serves(strategy, n, lay, frozen) for n, (lay, frozen) in plan.items()):
        strategy = "auto"
    return strategy, plan


@settings(max_examples=100, deadline=None)
@given(plans(), st.sampled_from(VARIANTS), st.sampled_from([0.0, 0.5]), st.sampled_from([1, 2]))
def test_random_layouts_stay_exact(strategy_plan, variant, clip, accumulate):
    strategy, plan = strategy_plan
    _run(*variant, strategy, plan, clip=clip, accumulate=accumulate)


@settings(max_examples=25, deadline=None)
@given(plans())
def test_autocast_with_grad_scaler(strategy_plan):
    strategy, plan = strategy_plan
    _run("adamw", "for-loop", strategy, plan, autocast=True, scaler=torch.amp.GradScaler("cpu"))


# -- elements that had optimizer state before they were frozen ---------------------------------------------------
@pytest.mark.parametrize("opt_name", ["sgd-momentum-wd", "adamw", "rmsprop-centered-momentum", "adadelta"])
def test_mask_keeps_the_optimizer_and_its_state_exact(opt_name):
    model = Net()
    opt = _optimizer(opt_name, "for-loop", list(model.parameters()))
    _train(model, opt, {}, steps=2, seed=1)  # momentum, moments, accumulators now exist for every element
    reference = copy.deepcopy(model)
    ref_opt = _optimizer(opt_name, "for-loop", list(reference.parameters()))
    ref_opt.load_state_dict(copy.deepcopy(opt.state_dict()))  # loading alone would share the state tensors
    frozen = _layout_mask((6, 4, 2), "rows", [1, 1, 0, 1, 0, 0])
    frostline.freeze(model, "conv.weight", rows=[0, 1, 3], strategy="mask")  # the optimizer is kept as it is
    before = model.conv.weight.detach().clone()
    _train(model, opt, {}, steps=3, seed=2)
    _train(reference, ref_opt, {"conv.weight": frozen}, steps=3, seed=2)
    assert torch.equal(model.conv.weight[frozen], before[frozen])
    assert not torch.equal(model.conv.weight[~frozen], before[~frozen])
    torch.testing.assert_close(model.state_dict(), reference.state_dict(), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("strategy", ["delta", "split"])
def test_delta_and_split_after_sync_of_an_existing_optimizer(strategy):
    model = Net()
    opt = _optimizer("adamw", "for-loop", list(model.parameters()))
    _train(model, opt, {}, steps=2, seed=1)
    frostline.freeze(model, "conv.weight", rows=[0, 1, 3], strategy=strategy)
    report = frostline.sync(opt, model)  # the old tensor's state goes; the trainable rows join
    assert report.removed and report.added
    frozen = get_partial(model, "conv.weight").frozen_mask()
    before = model.conv.weight.detach().clone()
    _train(model, opt, {}, steps=3, seed=2)
    assert torch.equal(model.conv.weight[frozen], before[frozen])
    assert not torch.equal(model.conv.weight[~frozen], before[~frozen])


def test_split_refuses_what_it_cannot_serve_in_the_test_model():
    with pytest.raises(FreezeError):
        frostline.freeze(Net(), "emb.weight", rows=[0], strategy="split")
