"""Partial freezing: the seed scenario, the API's semantics, validation, checkpoints, copies, dtype and compile."""

from __future__ import annotations

import copy
import functools
import pickle

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import frostline
from frostline import FreezeError
from frostline._state import named_logical_parameters
from frostline.partial import STRATEGIES, get_partial
from frostline.summary import optimizer_state_bytes

STRATS = list(STRATEGIES)  # the registered strategies: a new one runs through every test over STRATS


pytestmark = pytest.mark.usefixtures("one_thread")


def _snap(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _check(model, name, before):
    """Frozen elements bit-identical, and some trainable element moved."""
    mask = get_partial(model, name).frozen_mask()
    now = model.state_dict()[name]
    assert torch.equal(now[mask], before[name][mask]), f"frozen elements of {name} changed"
    assert not torch.equal(now[~mask], before[name][~mask]), f"no trainable element of {name} moved"


def _trainable(model):
    return [p for p in model.parameters() if p.requires_grad]


def _steps(model, opt, x, y, n=3, loss_fn=F.cross_entropy):
    for _ in range(n):
        opt.zero_grad()
        loss_fn(model(x), y).backward()
        opt.step()


def _cnn():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 10, 3, padding=1), nn.BatchNorm2d(10), nn.ReLU(), nn.AdaptiveAvgPool2d(2),
                         nn.Flatten(), nn.Linear(40, 5))


def _tokens():
    torch.manual_seed(0)
    return nn.Sequential(nn.Embedding(30, 6, padding_idx=0), nn.Flatten(), nn.Linear(18, 4))


CNN_BATCH = (torch.randn(8, 3, 6, 6, generator=torch.Generator().manual_seed(1)),
             torch.randint(0, 5, (8,), generator=torch.Generator().manual_seed(2)))
IDS = torch.randint(0, 30, (8, 3), generator=torch.Generator().manual_seed(3))
IDS_Y = torch.randint(0, 4, (8,), generator=torch.Generator().manual_seed(4))


# -- the seed: ten filters, five trained, the rest unchanged ------------------------------------------------------
@pytest.mark.parametrize("strategy", ["auto", *STRATS])
@pytest.mark.parametrize("make_opt", [
    lambda ps: torch.optim.SGD(ps, lr=0.1, momentum=0.9, weight_decay=0.1),
    lambda ps: torch.optim.AdamW(ps, lr=0.05, weight_decay=0.1)], ids=["sgd-momentum-wd", "adamw"])
def test_seed_five_of_ten_filters_stay_unchanged(strategy, make_opt):
    model = _cnn()
    frostline.freeze(model, "0.weight", rows=[0, 2, 4, 6, 8], strategy=strategy)
    assert frostline.is_frozen(model, "0.weight") == "partial"
    before = _snap(model)
    _steps(model, make_opt(_trainable(model)), *CNN_BATCH, n=5)
    _check(model, "0.weight", before)
    assert model[0].weight is dict(model.named_parameters())["0.weight"]


# -- API semantics --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("rows", [[0, 2], range(0, 3, 2), torch.tensor([0, 2]), (-10, 2)])
def test_rows_accept_lists_ranges_tensors_and_negative_indices(rows):
    model = _cnn()
    frostline.freeze(model, "0.weight", rows=rows)
    expected = torch.zeros(10, dtype=torch.bool)
    expected[[0, 2]] = True
    assert torch.equal(get_partial(model, "0.weight").frozen_mask()[:, 0, 0, 0], expected)


def test_calls_combine_and_unfreeze_clears():
    model = _cnn()
    frostline.freeze(model, "0.weight", rows=[0, 1])
    frostline.freeze(model, "0.weight", rows=[1, 5])
    rows = lambda: get_partial(model, "0.weight").frozen_mask()[:, 0, 0, 0].nonzero().flatten().tolist()  # noqa
    assert rows() == [0, 1, 5]
    frostline.unfreeze(model, "0.weight", rows=[1])
    assert rows() == [0, 5]
    mask = torch.zeros(10, 3, 3, 3, dtype=torch.bool)
    mask[3, 0, 0, 0] = True
    frostline.freeze(model, "0.weight", mask=mask)
    frozen = get_partial(model, "0.weight").frozen_mask()
    assert frozen[3, 0, 0, 0] and not frozen[3, 1, 0, 0] and frozen[0].all() and int(frozen.sum()) == 2 * 27 + 1


@pytest.mark.parametrize("strategy", STRATS)
def test_all_unfrozen_turns_back_into_the_original_parameter(strategy):
    model = _cnn()
    original = model[0].weight
    frostline.freeze(model, "0.weight", rows=[1, 3], strategy=strategy)
    opt = torch.optim.SGD(_trainable(model), lr=0.1)
    _steps(model, opt, *CNN_BATCH, n=1)
    effective = model.state_dict()["0.weight"].clone()
    frostline.unfreeze(model, "0.weight", rows=[1, 3])
    assert model[0].weight is original and original.requires_grad and get_partial(model, "0.weight") is None
    assert torch.equal(original, effective)
    assert set(model.state_dict()) == set(_cnn().state_dict())
    assert "forward" not in model[0].__dict__ and "_frostline_partial" not in model[0].__dict__
    assert not model[0]._forward_pre_hooks and not model[0]._state_dict_hooks
    assert not (original._post_accumulate_grad_hooks or {})


def test_all_frozen_becomes_whole_frozen_and_back():
    model = _cnn()
    frostline.freeze(model, "0.weight", rows=range(5))
    frostline.freeze(model, "0.weight", rows=range(5, 10))
    assert frostline.is_frozen(model, "0.weight") is True and model[0].weight.grad is None
    frostline.freeze(model, "0.weight", rows=[1])  # rows of a whole-frozen tensor: nothing to do
    assert frostline.is_frozen(model, "0.weight") is True
    frostline.unfreeze(model, "0.weight", rows=[4])
    assert frostline.is_frozen(model, "0.weight") == "partial"
    assert get_partial(model, "0.weight").frozen_mask()[:, 0, 0, 0].tolist() == [True] * 4 + [False] + [True] * 5
    frostline.unfreeze(model, "0.weight")
    assert frostline.is_frozen(model, "0.weight") is False


def test_unfreeze_rows_of_trainable_tensor_is_a_no_op_and_freeze_whole_clears_partial():
    model = _cnn()
    frostline.unfreeze(model, "0.weight", rows=[0])
    assert get_partial(model, "0.weight") is None and model[0].weight.requires_grad
    frostline.freeze(model, "0.weight", rows=[0])
    frostline.freeze(model, "0.weight")
    assert frostline.is_frozen(model, "0.weight") is True and "_frostline_partial" not in model[0].__dict__


def test_module_spec_applies_rows_to_weight_and_bias():
    model = _cnn()
    frostline.freeze(model, "0", rows=[0, 9])
    assert frostline.is_frozen(model, "0.weight") == "partial" == frostline.is_frozen(model, "0.bias")
    assert get_partial(model, "0.bias").frozen_mask().tolist() == [True] + [False] * 8 + [True]


def test_auto_choices_and_summary_shows_them():
    model = nn.ModuleDict({"emb": nn.Embedding(20, 4), "lin": nn.Linear(8, 8), "conv": nn.Conv2d(2, 4, 3),
                           "cols": nn.Linear(8, 8), "dense": nn.Linear(8, 8)})
    frostline.freeze(model, "emb.weight", rows=[1, 2])
    frostline.freeze(model, "lin.weight", rows=[1, 2])
    frostline.freeze(model, "conv.weight", rows=[0])
    frostline.freeze(model, "cols.weight", rows=range(1, 8), dim=1)  # 1 of 8 columns trains
    frostline.freeze(model, "dense.weight", rows=[0], dim=1)  # 7 of 8 columns train
    chosen = {n: get_partial(model, f"{n}.weight").strategy for n in model}
    assert chosen == {"emb": "delta", "lin": "split", "conv": "split", "cols": "delta", "dense": "mask"}
    table = str(frostline.summary(model))
    assert "weight (split)" in table and "weight (delta)" in table and "weight (mask)" in table
    frostline.freeze(model, "lin.weight", mask=torch.eye(8, dtype=torch.bool))  # split cannot serve a mask
    assert get_partial(model, "lin.weight").strategy == "mask"
    frostline.freeze(model, "emb.weight", rows=[3])  # a partial tensor keeps its strategy
    assert get_partial(model, "emb.weight").strategy == "delta"


def test_tied_parameters_use_mask_and_stay_tied(tied_lm):
    frostline.freeze(tied_lm, "embed.weight", rows=range(5, 20), strategy="mask")
    assert get_partial(tied_lm, "embed.weight").strategy == "mask"
    assert frostline.is_frozen(tied_lm, "out.weight") == "partial"
    assert tied_lm.out.weight is tied_lm.embed.weight
    before = _snap(tied_lm)
    opt = torch.optim.Adam(_trainable(tied_lm), lr=0.1)
    ids = torch.randint(0, 20, (4, 5))
    _steps(tied_lm, opt, ids, None, loss_fn=lambda out, _: out.logsumexp(-1).mean())
    _check(tied_lm, "embed.weight", before)


def test_internal_storage_is_hidden_from_selection_but_reaches_optimizers():
    model = _tokens()
    frostline.freeze(model, "0.weight", rows=range(25), strategy="delta")
    names = [n for n, _ in named_logical_parameters(model)]
    assert names == ["0.weight", "2.weight", "2.bias"] == frostline.select(model)
    internal = get_partial(model, "0.weight").trainable_parameters()[0]
    assert any(p is internal for p in _trainable(model)) and not model[0].weight.requires_grad
    assert internal.shape == (5, 6)


# -- validation -----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kwargs, match", [
    ({"rows": [10]}, r"0\.\.9"),
    ({"rows": [0], "dim": 4}, r"dim must be an int in \[-4, 3\]"),
    ({"rows": [3], "dim": 1}, r"rows must lie in 0\.\.2"),
    ({"mask": torch.zeros(10, 3, dtype=torch.bool)}, r"shape \(10, 3, 3, 3\)"),
    ({"mask": torch.zeros(10, 3, 3, 3)}, "bool tensor"),
    ({"rows": [0.5]}, "ints"),
    ({"rows": torch.tensor([True, False])}, "integer tensor"),
    ({"rows": [0], "mask": torch.zeros(10, 3, 3, 3, dtype=torch.bool)}, "not both"),
    ({"mask": torch.zeros(10, 3, 3, 3, dtype=torch.bool), "dim": 1}, "dim= applies to rows="),
    ({"rows": [0], "strategy": "sparse"}, "unknown strategy"),
    ({"rows": [0], "dim": 1, "strategy": "split"}, "along dim 0"),
    ({"mask": torch.rand(10, 3, 3, 3) > 0.5, "strategy": "split"}, "along dim 0"),
])
def test_bad_requests_say_what_was_expected(kwargs, match):
    with pytest.raises(FreezeError, match=match):
        frostline.freeze(_cnn(), "0.weight", **kwargs)


def test_targets_and_layouts_a_strategy_cannot_serve():
    with pytest.raises(FreezeError, match="buffer"):
        frostline.freeze(_cnn(), "1.running_mean", rows=[0])
    with pytest.raises(FreezeError, match="serves the weight of nn.Linear"):
        frostline.freeze(_tokens(), "0.weight", rows=[1], strategy="split")
    with pytest.raises(FreezeError, match="groups=2"):
        frostline.freeze(nn.Conv2d(4, 4, 3, groups=2), "weight", rows=[1], strategy="split")
    with pytest.raises(FreezeError, match="sparse"):
        frostline.freeze(nn.Embedding(5, 2, sparse=True), "weight", rows=[1], strategy="mask")
    with pytest.raises(FreezeError, match="max_norm"):
        frostline.freeze(nn.Embedding(5, 2, max_norm=1.0), "weight", rows=[1])
    with pytest.raises(FreezeError, match="0-d"):
        frostline.freeze(nn.ParameterDict({"s": nn.Parameter(torch.ones(()))}), "s", rows=[0])


def test_foreign_instance_forward_leaves_only_mask():
    model = _tokens()
    model[2].forward = lambda x: x  # someone else's
    with pytest.raises(FreezeError, match="forward set on the instance"):
        frostline.freeze(model, "2.weight", rows=[0], strategy="delta")
    frostline.freeze(model, "2.weight", rows=[0])
    assert get_partial(model, "2.weight").strategy == "mask"


# -- state_dict, copies, devices, dtypes ----------------------------------------------------------------------------
@pytest.mark.parametrize("strategy", STRATS)
def test_state_dict_keeps_keys_and_loads_both_ways(strategy):
    frozen, plain = _cnn(), _cnn()
    frostline.freeze(frozen, "5.weight", rows=[0, 2], strategy=strategy)
    _steps(frozen, torch.optim.AdamW(_trainable(frozen), lr=0.1), *CNN_BATCH, n=2)
    sd = frozen.state_dict()
    assert list(sd) == list(plain.state_dict()) and sd["5.weight"].shape == (5, 40)
    plain.load_state_dict(sd)
    assert torch.equal(plain(CNN_BATCH[0]), frozen(CNN_BATCH[0]))
    torch.manual_seed(5)
    other = _cnn()
    with torch.no_grad():
        other[5].weight.normal_()
    frozen.load_state_dict(other.state_dict())  # strict, into the frozen model: the frozen values change too
    assert torch.equal(frozen.state_dict()["5.weight"], other[5].weight)
    assert torch.equal(frozen(CNN_BATCH[0]), other(CNN_BATCH[0]))
    before = _snap(frozen)  # and training after the load keeps the *loaded* frozen values
    _steps(frozen, torch.optim.AdamW(_trainable(frozen), lr=0.1), *CNN_BATCH, n=2)
    _check(frozen, "5.weight", before)


@pytest.mark.parametrize("strategy", STRATS)
@pytest.mark.parametrize("clone", [copy.deepcopy, lambda m: pickle.loads(pickle.dumps(m))], ids=["deepcopy", "pickle"])
def test_copies_train_exactly(strategy, clone):
    model = _cnn()
    frostline.freeze(model, "0.weight", rows=[1, 4], strategy=strategy)
    twin = clone(model)
    before = _snap(twin)
    opt = torch.optim.SGD(_trainable(twin), lr=0.5, momentum=0.9, weight_decay=0.1)
    twin.zero_grad()
    F.cross_entropy(twin(CNN_BATCH[0]), CNN_BATCH[1]).backward()
    if strategy == "mask":  # the grad hook came along: frozen rows get no gradient
        assert twin[0].weight.grad[[1, 4]].abs().sum() == 0 and twin[0].weight.grad.abs().sum() > 0
    opt.step()
    _steps(twin, opt, *CNN_BATCH, n=2)
    _check(twin, "0.weight", before)
    assert torch.equal(model.state_dict()["0.weight"], before["0.weight"])  # the original is untouched


@pytest.mark.parametrize("strategy", STRATS)
def test_to_dtype_moves_everything_together(strategy):
    model = _cnn()
    frostline.freeze(model, "0.weight", rows=[1, 4], strategy=strategy)
    model.to(torch.float64)
    part = get_partial(model, "0.weight")
    assert all(p.dtype == torch.float64 for p in part.trainable_parameters())
    assert all(model[0]._buffers[n].dtype in (torch.float64, torch.bool, torch.int64)
               for n in part.internal_names() if n in model[0]._buffers)
    before = _snap(model)
    _steps(model, torch.optim.Adam(_trainable(model), lr=0.1), CNN_BATCH[0].double(), CNN_BATCH[1])
    _check(model, "0.weight", before)


def test_load_state_dict_assign_rebinds_the_strategy():
    model = _cnn()
    frostline.freeze(model, "0.weight", rows=[1, 4], strategy="mask")
    model.load_state_dict({k: v.clone() for k, v in _cnn().state_dict().items()}, assign=True)
    before = _snap(model)
    _steps(model, torch.optim.AdamW(_trainable(model), lr=0.1, weight_decay=0.1), *CNN_BATCH)
    _check(model, "0.weight", before)


def test_delta_optimizer_state_is_the_trainable_fraction():
    model = nn.Linear(256, 256, bias=False)
    frozen = torch.rand(256, 256, generator=torch.Generator().manual_seed(0)) >= 0.01
    frostline.freeze(model, "weight", mask=frozen, strategy="delta")
    opt = torch.optim.AdamW(_trainable(model), lr=0.1)
    model(torch.randn(2, 256)).sum().backward()
    opt.step()
    dense = 2 * 256 * 256 * 4  # exp_avg + exp_avg_sq
    assert optimizer_state_bytes(opt) <= 0.03 * dense


# -- the lean forwards, guard, compile -------------------------------------------------------------------------
def test_unfreezing_rows_of_a_lean_module_takes_over_its_forward():
    model = _cnn()
    frostline.freeze(model, "0", lean=True)
    assert isinstance(model[0].__dict__.get("forward"), functools.partial)
    frostline.unfreeze(model, "0.weight", rows=[2, 3])
    assert frostline.lean.keeps(model[0]) is None
    before = _snap(model)
    _steps(model, torch.optim.SGD(_trainable(model), lr=0.5, momentum=0.9), *CNN_BATCH)
    _check(model, "0.weight", before)


@pytest.mark.parametrize("strategy", STRATS)
def test_guard_sees_partial_tensors(strategy):
    model = _cnn()
    frostline.freeze(model, "0.weight", rows=[1, 4], strategy=strategy)
    opt = torch.optim.AdamW(_trainable(model), lr=0.1, weight_decay=0.5)
    before = _snap(model)
    with frostline.guard(model) as snap:
        _steps(model, opt, *CNN_BATCH)
    assert "0.weight" in snap.names
    _check(model, "0.weight", before)  # quiet because frozen elements held, not because nothing trained
    with torch.no_grad():  # writing a frozen element behind frostline's back is caught
        model[0].weight[1, 0, 0, 0] += 1
    with pytest.raises(frostline.FrozenParameterChanged, match="0.weight"):
        snap.verify(model)


def test_compiled_model_trains_exactly_without_graph_breaks_or_recompiles():
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    model = nn.Sequential(nn.Embedding(30, 4), nn.Flatten(), nn.Linear(12, 8), nn.ReLU(), nn.Linear(8, 3))
    frostline.freeze(model, "0.weight", rows=range(20))  # delta (embedding rows)
    frostline.freeze(model, "2.weight", rows=[0, 5])  # split
    frostline.freeze(model, "4.weight", mask=torch.eye(3, 8, dtype=torch.bool))  # mask
    compiled = torch.compile(model, backend="aot_eager")
    before = _snap(model)
    opt = torch.optim.AdamW(_trainable(model), lr=0.1, weight_decay=0.1)
    for _ in range(3):
        opt.zero_grad()
        F.cross_entropy(compiled(IDS), IDS_Y % 3).backward()
        opt.step()
    for name in ("0.weight", "2.weight", "4.weight"):
        _check(model, name, before)
    assert counters["stats"]["unique_graphs"] == 1 and not counters["graph_break"]
    assert torch.allclose(compiled(IDS), model(IDS))


# -- forward paths that must match the unfrozen module ------------------------------------------------------------
@pytest.mark.parametrize("make, x", [
    (lambda: nn.Conv1d(3, 6, 3, stride=2, padding=1), torch.randn(2, 3, 9)),
    (lambda: nn.Conv2d(3, 6, 2, padding="same", dilation=2), torch.randn(2, 3, 7, 7)),
    (lambda: nn.Conv2d(3, 6, 3, padding=1, padding_mode="reflect", bias=False), torch.randn(2, 3, 5, 5)),
    (lambda: nn.Conv3d(2, 4, 2), torch.randn(1, 2, 4, 4, 4)),
    (lambda: nn.Linear(5, 6), torch.randn(2, 3, 5)),
    (lambda: nn.Embedding(9, 4, padding_idx=2, scale_grad_by_freq=True), torch.tensor([[1, 2, 2, 7], [7, 7, 0, 3]])),
], ids=["conv1d", "conv2d-same", "conv2d-reflect", "conv3d", "linear-3d-input", "embedding-pad-freq"])
@pytest.mark.parametrize("strategy", ["auto", "delta", "mask"])
def test_gradients_match_the_unfrozen_module_on_trainable_elements(make, x, strategy):
    torch.manual_seed(0)
    module = make()
    reference = copy.deepcopy(module)
    frozen = torch.zeros(module.weight.shape[0], dtype=torch.bool)
    frozen[[1, 2]] = True
    frostline.freeze(module, "weight", rows=frozen.nonzero().flatten(), strategy=strategy)
    needs_input_grad = x.is_floating_point()
    x1, x2 = x.clone().requires_grad_(needs_input_grad), x.clone().requires_grad_(needs_input_grad)
    out, ref = module(x1), reference(x2)
    assert torch.equal(out, ref)
    weights = torch.randn_like(ref)
    (out * weights).sum().backward()
    (ref * weights).sum().backward()
    part = get_partial(module, "weight")
    (trainable,) = part.trainable_parameters()
    grad = trainable.grad if part.strategy != "mask" else trainable.grad[~frozen]
    torch.testing.assert_close(grad, reference.weight.grad[~frozen], rtol=1e-5, atol=1e-6)
    if needs_input_grad:
        torch.testing.assert_close(x1.grad, x2.grad, rtol=1e-5, atol=1e-6)
    if getattr(module, "bias", None) is not None:
        torch.testing.assert_close(module.bias.grad, reference.bias.grad, rtol=1e-5, atol=1e-6)


def test_registry_lists_one_class_per_strategy():
    assert set(STRATEGIES) == {"mask", "delta", "split"}
    assert {cls.strategy for cls in STRATEGIES.values()} == set(STRATEGIES)


def test_a_registered_strategy_is_accepted_by_name_and_forgotten_after():
    from toy_strategy import Restore, registered

    with registered():
        assert STRATEGIES["restore"] is Restore
        model = frostline.freeze(_cnn(), "0.weight", rows=[0, 2], strategy="restore")
        assert get_partial(model, "0.weight").strategy == "restore"
    assert "restore" not in STRATEGIES
    assert get_partial(model, "0.weight").strategy == "restore"  # what it stores already keeps working
    with pytest.raises(FreezeError, match="unknown strategy 'restore'; choose one of 'auto', 'mask', 'delta', 'split'"):
        frostline.freeze(_cnn(), "0.weight", rows=[0], strategy="restore")


def test_auto_picks_a_registered_strategy_only_when_it_says_so():
    from toy_strategy import Restore, registered

    class Eager(Restore):  # serves Linear weights only, and lets auto pick it there
        strategy, auto_pick = "eager", True

        @classmethod
        def why_not(cls, module, local, layout, tied):
            return None if isinstance(module, nn.Linear) and local == "weight" else "Linear weights only"

    def chosen():
        model = nn.Sequential(nn.Linear(4, 4), nn.Conv1d(4, 4, 1))
        for name in ("0.weight", "1.weight"):
            frostline.freeze(model, name, rows=[0])
        return [get_partial(model, name).strategy for name in ("0.weight", "1.weight")]

    before = chosen()
    with registered():  # restore: not auto_pick, so auto chooses among the built-ins as before
        assert chosen() == before == ["split", "split"]
    frostline.partial.register(Eager)
    try:
        assert chosen() == ["eager", "split"]
    finally:
        frostline.partial.unregister("eager")
    assert chosen() == before


def test_register_refuses_what_is_not_a_strategy_and_taken_names():
    from toy_strategy import Restore

    class Nameless(Restore):
        pass

    class Auto(Restore):
        strategy = "auto"

    class Second(Restore):
        strategy = "mask"

    for bad, match in [(nn.Linear, "subclass of frostline.partial.Strategy"), (Nameless, "class attribute strategy"),
                       (Auto, "other than 'auto'"), (Second, "'mask' is registered already, by Mask")]:
        with pytest.raises(FreezeError, match=match):
            frostline.partial.register(bad)
    with pytest.raises(FreezeError, match="built into frostline"):
        frostline.partial.unregister("mask")
    with pytest.raises(FreezeError, match=r"no strategy 'restore' is registered \(registered: 'mask', 'delta'"):
        frostline.partial.unregister("restore")
    assert set(STRATEGIES) == {"mask", "delta", "split"}


@pytest.mark.parametrize("strategy", STRATS)
def test_a_parameter_put_in_place_is_adopted_with_its_values(strategy):
    model = _cnn()
    frostline.freeze(model, "0.weight", rows=[1, 4], strategy=strategy)
    replacement = nn.Parameter(torch.randn(10, 3, 3, 3))
    model[0].weight = replacement
    out = model[0](CNN_BATCH[0])  # the check before forward adopts it
    assert torch.equal(out, F.conv2d(CNN_BATCH[0], replacement, model[0].bias, padding=1))
    before = _snap(model)
    assert torch.equal(before["0.weight"], replacement.detach())
    _steps(model, torch.optim.AdamW(_trainable(model), lr=0.1, weight_decay=0.1), *CNN_BATCH)
    _check(model, "0.weight", before)
    assert model[0].weight is replacement


# -- nothing silent (issue 13): optimizers, accumulation and writes across partial-freeze changes -----------------
def _mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 3))


MLP_BATCHES = [(torch.randn(5, 4, generator=torch.Generator().manual_seed(s)),
                torch.randint(0, 3, (5,), generator=torch.Generator().manual_seed(s + 50))) for s in range(4)]


def _loss(model, k):
    x, y = MLP_BATCHES[k]
    return F.cross_entropy(model(x), y)


@pytest.mark.parametrize("strategy", ["auto", *STRATS])
def test_silent_01_an_optimizer_built_before_a_partial_freeze_trains_it_or_refuses_to_step(strategy):
    model, reference = _mlp(), _mlp()
    opt = torch.optim.AdamW(model.parameters(), lr=0.1)  # built before freezing: it holds the original Parameter
    frostline.freeze(model, "0.weight", rows=[0, 1, 2], strategy=strategy)
    frostline.freeze(reference, "0.weight", rows=[0, 1, 2], strategy=strategy)
    ref_opt = torch.optim.AdamW(_trainable(reference), lr=0.1)  # built after: what training must equal
    before = _snap(model)
    _loss(model, 0).backward()
    if get_partial(model, "0.weight").strategy == "mask":  # the Parameter keeps training in place
        opt.step()
    else:  # its trainable rows live in a Parameter the optimizer does not hold: refuse, before anything moves
        with pytest.raises(frostline.FrostlineError, match=r"0\.weight.*frostline\.sync\(optimizer, model\)"):
            opt.step()
        assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items()), "a refused step moved"
        frostline.sync(opt, model)
        opt.step()  # the gradient of the refused step is still there
    for k in range(1, 3):
        opt.zero_grad()
        _loss(model, k).backward()
        opt.step()
    for k in range(3):
        ref_opt.zero_grad()
        _loss(reference, k).backward()
        ref_opt.step()
    _check(model, "0.weight", before)
    for name, value in reference.state_dict().items():
        assert torch.equal(model.state_dict()[name], value), name


@pytest.mark.parametrize("strategy", ["delta", "split"])
@pytest.mark.parametrize("change", ["freeze-more", "unfreeze-some", "unfreeze-all", "from-whole-frozen"])
def test_silent_01_rows_changed_without_sync_refuse_the_step_until_synced(strategy, change):
    model = _mlp()
    if change == "from-whole-frozen":
        frostline.freeze(model, "0.weight")
    else:
        frostline.freeze(model, "0.weight", rows=[0, 1], strategy=strategy)
    # with the frozen original when it is frozen whole (legal: it gets no gradient); without it otherwise, since an
    # optimizer holding it trains it once it is whole again
    opt = torch.optim.SGD(model.parameters() if change == "from-whole-frozen" else _trainable(model), lr=0.5)
    head_opt = torch.optim.SGD(model[2].parameters(), lr=0.5)  # holds nothing of 0.weight: never bothered
    _loss(model, 0).backward()
    opt.step()
    head_opt.step()
    if change == "freeze-more":
        frostline.freeze(model, "0.weight", rows=[2], strategy=strategy)
    elif change == "unfreeze-some":
        frostline.unfreeze(model, "0.weight", rows=[1])
    elif change == "unfreeze-all":
        frostline.unfreeze(model, "0.weight")
    else:
        frostline.unfreeze(model, "0.weight", rows=[3, 4, 5])
        frostline.freeze(model, "0.weight", rows=[0], strategy=strategy)
    before = _snap(model)
    opt.zero_grad()
    _loss(model, 1).backward()
    with pytest.raises(frostline.FrostlineError, match=r"0\.weight.*frostline\.sync\(optimizer, model\)"):
        opt.step()
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items()), "a refused step moved"
    head_opt.step()  # an optimizer that holds nothing of it steps as always
    assert not torch.equal(model[2].weight, before["2.weight"])
    frostline.sync(opt, model)
    opt.step()
    trains = ~get_partial(model, "0.weight").frozen_mask() if change != "unfreeze-all" else torch.ones(6, 4).bool()
    now = model.state_dict()["0.weight"]
    assert torch.equal(now[~trains], before["0.weight"][~trains])
    assert (now != before["0.weight"])[trains].any(), "nothing of 0.weight trained after sync"


def _masked_grads(model, k, frozen):
    """The gradient of micro-batch ``k`` on a plain model, zero where ``frozen`` (the layout at that time)."""
    (grad,) = torch.autograd.grad(_loss(model, k), [model[0].weight])
    return grad.masked_fill(frozen, 0)


def _row_mask(rows):
    frozen = torch.zeros(6, 4, dtype=torch.bool)
    frozen[rows] = True
    return frozen


@pytest.mark.parametrize("strategy", STRATS)
@pytest.mark.parametrize("first, change", [
    (None, ("freeze", [0, 1])),  # whole -> partial
    ([0, 1], ("freeze", [2, 3])),  # partial -> more frozen
    ([0, 1, 2], ("unfreeze", [1])),  # partial -> less frozen
    ([0, 1], ("unfreeze", [0, 1])),  # partial -> whole
], ids=["whole-to-partial", "freeze-more", "unfreeze-some", "unfreeze-all"])
def test_silent_02_gradient_accumulation_across_a_partial_freeze_change_keeps_micro_batch_1(strategy, first, change):
    model, plain = _mlp(), _mlp()
    if first is not None:
        frostline.freeze(model, "0.weight", rows=first, strategy=strategy)
    opt = torch.optim.SGD(_trainable(model), lr=0.5)
    start = model[0].weight.detach().clone()
    frozen_1 = _row_mask(first or [])
    _loss(model, 0).backward()  # micro-batch 1
    verb, rows = change
    getattr(frostline, verb)(model, "0.weight", rows=rows, **({"strategy": strategy} if verb == "freeze" else {}))
    frostline.sync(opt, model)
    part = get_partial(model, "0.weight")
    frozen_2 = part.frozen_mask() if part is not None else torch.zeros(6, 4, dtype=torch.bool)
    _loss(model, 1).backward()  # micro-batch 2
    opt.step()
    expected = start - 0.5 * (_masked_grads(plain, 0, frozen_1 | frozen_2) + _masked_grads(plain, 1, frozen_2))
    now = model[0].weight.detach()
    assert torch.equal(now[frozen_2], start[frozen_2])
    assert not torch.equal(now[~frozen_2], start[~frozen_2])
    torch.testing.assert_close(now, expected, rtol=1e-5, atol=1e-6)


WRITES = {
    "nn.init.zeros_": lambda w: nn.init.zeros_(w),
    ".data.copy_": lambda w: w.data.copy_(torch.randn(w.shape, generator=torch.Generator().manual_seed(7))),
    "no_grad-mul_": lambda w: _no_grad(w.mul_, 0.5),
}


def _no_grad(fn, *args):
    with torch.no_grad():
        return fn(*args)


@pytest.mark.parametrize("strategy", STRATS)
@pytest.mark.parametrize("write", WRITES)
def test_silent_04_in_place_writes_to_a_partially_frozen_weight_take_effect(strategy, write):
    model = _mlp()
    frostline.freeze(model, "0.weight", rows=[1, 4], strategy=strategy)
    frozen = get_partial(model, "0.weight").frozen_mask()
    opt = torch.optim.SGD(_trainable(model), lr=0.5)
    _loss(model, 0).backward()
    opt.step()  # some history: the trainable storage is ahead of the original values
    WRITES[write](model[0].weight)
    written = model[0].weight.detach().clone()
    assert torch.equal(model.state_dict()["0.weight"], written)  # the visible Parameter is the truth
    assert torch.equal(frostline.partial.get_partial(model, "0.weight").full(), written)
    plain = _mlp()
    plain.load_state_dict(model.state_dict())
    assert torch.equal(model(MLP_BATCHES[1][0]), plain(MLP_BATCHES[1][0]))  # the forward uses the written values
    opt.zero_grad()
    _loss(model, 1).backward()
    opt.step()
    (grad,) = torch.autograd.grad(_loss(plain, 1), [plain[0].weight])
    now = model[0].weight.detach()
    assert torch.equal(now[frozen], written[frozen]), "the write to frozen elements was undone"
    assert not torch.equal(now[~frozen], written[~frozen])
    torch.testing.assert_close(now[~frozen], (written - 0.5 * grad)[~frozen], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(model.state_dict()["0.weight"], now, rtol=0, atol=0)


@pytest.mark.parametrize("strategy", STRATS)
def test_silent_04_a_live_guard_reports_a_write_to_frozen_elements(strategy):
    model = _mlp()
    frostline.freeze(model, "0.weight", rows=[1, 4], strategy=strategy)
    opt = torch.optim.AdamW(_trainable(model), lr=0.1)
    before = _snap(model)
    with pytest.raises(frostline.FrozenParameterChanged, match="0.weight"):
        with frostline.guard(model):
            nn.init.ones_(model[0].weight)
            for k in range(2):
                opt.zero_grad()
                _loss(model, k).backward()
                opt.step()
    now = model.state_dict()["0.weight"]
    assert torch.equal(now[[1, 4]], torch.ones(2, 4))  # the frozen rows hold what was written
    assert not torch.equal(now[[0, 2, 3, 5]], torch.ones(4, 4))  # and the rest trained from it
    assert not torch.equal(now, before["0.weight"])


def _sparse_reference_grad(weight, frozen_rows):
    """A plain sparse Embedding's gradient without the frozen rows (what must reach the trainable rows)."""
    grad = weight.grad.coalesce()
    keep = ~torch.isin(grad.indices()[0], torch.tensor(frozen_rows))
    weight.grad = torch.sparse_coo_tensor(grad.indices()[:, keep], grad.values()[keep], grad.shape,
                                          check_invariants=True)


@pytest.mark.parametrize("strategy", ["auto", "delta"])
def test_silent_sparse_embedding_rows_train_with_sparse_adam(strategy):
    torch.manual_seed(0)
    emb = nn.Embedding(12, 4, padding_idx=3, sparse=True)
    plain = copy.deepcopy(emb)
    frozen_rows = [0, 1, 2, 5, 7]
    frostline.freeze(emb, "weight", rows=frozen_rows, strategy=strategy)
    assert get_partial(emb, "weight").strategy == "delta"
    opt = torch.optim.SparseAdam(_trainable(emb), lr=0.1)
    ref_opt = torch.optim.SparseAdam(plain.parameters(), lr=0.1)
    before = emb.weight.detach().clone()
    g = torch.Generator().manual_seed(11)
    for _ in range(3):
        ids = torch.randint(0, 12, (6, 5), generator=g)
        targets = torch.randn(6, 5, 4, generator=g)
        for module, optim in ((emb, opt), (plain, ref_opt)):
            optim.zero_grad()
            (module(ids) - targets).square().mean().backward()
            if module is plain:
                _sparse_reference_grad(plain.weight, frozen_rows)
            else:
                (trainable,) = get_partial(emb, "weight").trainable_parameters()
                assert trainable.grad.is_sparse
            optim.step()
    now = emb.weight.detach()
    assert torch.equal(now[frozen_rows], before[frozen_rows])
    assert torch.equal(now[3], before[3])  # the padding row trains but gets no gradient, as in the plain module
    assert not torch.equal(now[[4, 6, 8]], before[[4, 6, 8]])
    torch.testing.assert_close(now, plain.weight.detach(), rtol=1e-6, atol=1e-7)


def test_silent_sparse_embedding_columns_train_and_single_elements_are_refused_with_advice():
    emb = nn.Embedding(12, 4, sparse=True)
    frostline.freeze(emb, "weight", rows=[0, 2], dim=1)
    opt = torch.optim.SparseAdam(_trainable(emb), lr=0.1)
    before = emb.weight.detach().clone()
    for _ in range(2):
        opt.zero_grad()
        emb(torch.tensor([[1, 4, 5]])).square().sum().backward()
        opt.step()
    now = emb.weight.detach()
    assert torch.equal(now[:, [0, 2]], before[:, [0, 2]]) and not torch.equal(now[:, [1, 3]], before[:, [1, 3]])
    mask = torch.zeros(12, 4, dtype=torch.bool)
    mask[0, 0] = True
    for strategy in ("auto", "delta", "mask"):
        with pytest.raises(FreezeError, match=r"sparse=True.*rows=.*sparse=False"):
            frostline.freeze(nn.Embedding(12, 4, sparse=True), "weight", mask=mask, strategy=strategy)


# -- tied Parameters with delta (issue 15 item 3): one trainable storage for every module that uses the tensor -----
TIED_IDS = torch.randint(0, 20, (4, 5), generator=torch.Generator().manual_seed(5))
TIED_ROWS = [1, 4, 7, 9, 12, 16]  # 6 of 20 rows train


def _tied_loss(model, ids=TIED_IDS):
    return model(ids).logsumexp(-1).mean()


def _tied_delta(tied_lm, name="embed.weight"):
    frostline.freeze(tied_lm, name, rows=[r for r in range(20) if r not in TIED_ROWS])
    part = get_partial(tied_lm, "embed.weight")
    assert part.strategy == "delta" and get_partial(tied_lm, "out.weight") is part
    return part


def test_tied_auto_picks_delta_when_at_most_half_trains_else_mask(tied_lm):
    part = _tied_delta(tied_lm)
    assert part.strategy == "delta" and get_partial(tied_lm, "out.weight") is part  # both names, one strategy
    assert tied_lm.out.weight is tied_lm.embed.weight
    frostline.unfreeze(tied_lm, "embed.weight")
    frostline.freeze(tied_lm, "out.weight", rows=range(15, 20))  # 15 of 20 train: dense is cheaper
    assert get_partial(tied_lm, "embed.weight").strategy == "mask"
    assert get_partial(tied_lm, "out.weight") is get_partial(tied_lm, "embed.weight")  # one strategy for both names
    frostline.unfreeze(tied_lm, "embed.weight")
    frostline.freeze(tied_lm, "out.weight", rows=range(4, 20))  # named by the head: the same single strategy
    assert get_partial(tied_lm, "embed.weight").strategy == "delta"
    assert get_partial(tied_lm, "out.weight") is get_partial(tied_lm, "embed.weight")


@pytest.mark.parametrize("name", ["embed.weight", "out.weight"])
def test_tied_delta_trains_exactly_with_gradient_and_state_for_the_rows_only(tied_lm, name):
    part = _tied_delta(tied_lm, name)
    before = _snap(tied_lm)
    opt = torch.optim.AdamW(_trainable(tied_lm), lr=0.05, weight_decay=0.1)
    _steps(tied_lm, opt, TIED_IDS, None, loss_fn=lambda out, _: out.logsumexp(-1).mean())
    _check(tied_lm, "embed.weight", before)
    assert torch.equal(tied_lm.state_dict()["out.weight"], tied_lm.state_dict()["embed.weight"])
    assert tied_lm.out.weight is tied_lm.embed.weight and tied_lm.embed.weight.grad is None
    (trainable,) = part.trainable_parameters()
    assert trainable.shape == trainable.grad.shape == (len(TIED_ROWS), 8)
    assert optimizer_state_bytes(opt, [trainable]) == 2 * len(TIED_ROWS) * 8 * 4 + 4  # exp_avg(_sq), step


def test_tied_delta_gradient_is_the_sum_of_both_uses_on_the_trainable_rows(tied_lm):
    reference = copy.deepcopy(tied_lm)  # the whole tied weight trains; its frozen rows' gradient masked out
    part = _tied_delta(tied_lm)
    _tied_loss(tied_lm).backward()
    _tied_loss(reference).backward()
    (trainable,) = part.trainable_parameters()
    expected = reference.embed.weight.grad[TIED_ROWS]
    assert expected.abs().sum() > 0 and reference.out.weight is reference.embed.weight
    # float32, summed in another order (rows of the head's gradient computed apart): rtol 1e-5, atol 1e-6
    torch.testing.assert_close(trainable.grad, expected, rtol=1e-5, atol=1e-6)
    for other in ("body.weight", "body.bias"):
        torch.testing.assert_close(tied_lm.get_parameter(other).grad, reference.get_parameter(other).grad,
                                   rtol=1e-5, atol=1e-6)


def test_tied_delta_keeps_keys_and_tie_copies_and_unfreezes_to_the_one_parameter(tied_lm):
    keys, weight = list(tied_lm.state_dict()), tied_lm.embed.weight
    _tied_delta(tied_lm)
    assert list(tied_lm.state_dict()) == keys
    twin = copy.deepcopy(tied_lm)
    assert twin.out.weight is twin.embed.weight and get_partial(twin, "out.weight") is get_partial(twin, "embed.weight")
    before, original = _snap(twin), _snap(tied_lm)
    opt = torch.optim.AdamW(_trainable(twin), lr=0.05)
    _steps(twin, opt, TIED_IDS, None, loss_fn=lambda out, _: out.logsumexp(-1).mean())
    _check(twin, "embed.weight", before)
    assert all(torch.equal(v, original[k]) for k, v in tied_lm.state_dict().items()), "the copy moved the original"
    trained = twin.embed.weight.detach().clone()
    frostline.unfreeze(twin, "out.weight")
    assert frostline.is_frozen(twin, "embed.weight") is False and frostline.is_frozen(twin, "out.weight") is False
    assert twin.out.weight is twin.embed.weight and twin.embed.weight.requires_grad
    assert torch.equal(twin.embed.weight, trained) and list(twin.state_dict()) == keys
    assert "forward" not in twin.out.__dict__ and "forward" not in twin.embed.__dict__
    frostline.unfreeze(tied_lm, "embed.weight")
    assert tied_lm.embed.weight is weight is tied_lm.out.weight and list(tied_lm.state_dict()) == keys


def test_tied_delta_refuses_an_optimizer_built_before_and_sync_carries_its_state(tied_lm):
    opt = torch.optim.AdamW(tied_lm.parameters(), lr=0.05)
    _tied_loss(tied_lm).backward()
    opt.step()
    moments = opt.state[tied_lm.embed.weight]["exp_avg"][TIED_ROWS].clone()
    part = _tied_delta(tied_lm)
    before = _snap(tied_lm)
    opt.zero_grad()
    _tied_loss(tied_lm).backward()
    with pytest.raises(frostline.FrostlineError, match=r"embed\.weight.*frostline\.sync\(optimizer, model\)"):
        opt.step()
    assert all(torch.equal(v, before[k]) for k, v in tied_lm.state_dict().items()), "a refused step moved"
    frostline.sync(opt, tied_lm)
    (trainable,) = part.trainable_parameters()
    assert torch.equal(opt.state[trainable]["exp_avg"], moments)  # the rows that train on keep their state
    opt.step()
    _check(tied_lm, "embed.weight", before)


def test_tied_delta_in_place_writes_through_either_name_take_effect(tied_lm):
    part = _tied_delta(tied_lm)
    frozen = part.frozen_mask()
    opt = torch.optim.SGD(_trainable(tied_lm), lr=0.5)
    _tied_loss(tied_lm).backward()
    opt.step()
    with torch.no_grad():
        tied_lm.out.weight.mul_(2.0)  # through the head's name: frozen and trainable rows alike
    written = tied_lm.embed.weight.detach().clone()
    plain = copy.deepcopy(tied_lm)
    frostline.unfreeze(plain, "embed.weight")
    assert torch.equal(tied_lm(TIED_IDS), plain(TIED_IDS))  # both uses see the written values
    opt.zero_grad()
    _tied_loss(tied_lm).backward()
    opt.step()
    (grad,) = torch.autograd.grad(_tied_loss(plain), [plain.embed.weight])
    now = tied_lm.embed.weight.detach()
    assert torch.equal(now[frozen], written[frozen]), "the write to frozen rows was undone"
    assert not torch.equal(now[~frozen], written[~frozen])
    torch.testing.assert_close(now[~frozen], (written - 0.5 * grad)[~frozen], rtol=1e-5, atol=1e-6)


def test_tied_delta_refuses_an_alias_it_cannot_route_and_auto_falls_back_to_mask(tied_lm):
    tied_lm.out.forward = lambda x: x @ tied_lm.out.weight.t()  # someone else's forward on the head
    with pytest.raises(FreezeError, match=r"strategy='delta' cannot serve embed\.weight: .*out.*Linear.*forward set "
                                          r"on the instance"):
        frostline.freeze(tied_lm, "embed.weight", rows=range(5, 20), strategy="delta")
    frostline.freeze(tied_lm, "embed.weight", rows=range(5, 20))
    assert get_partial(tied_lm, "embed.weight").strategy == "mask"
    shared = nn.ModuleDict({"a": nn.Embedding(4, 4), "b": _Doubled(4, 4)})
    shared.b.weight = shared.a.weight
    with pytest.raises(FreezeError, match=r"tied.*_Doubled.*own forward"):
        frostline.freeze(shared, "a.weight", rows=[0], strategy="delta")


class _Doubled(nn.Linear):
    def forward(self, x):
        return 2 * super().forward(x)
