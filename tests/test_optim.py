"""frostline.optim: groups over trainable parameters only, and sync keeping a live optimizer in step."""

import copy
import io
import re

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import frostline
import frostline.partial
from frostline import FrostlineError, SelectionError, freeze, guard, param_groups, sync, unfreeze
from frostline.models import small_cnn, tiny_resnet

OPTIMIZERS = {
    "sgd-momentum": (torch.optim.SGD, {"momentum": 0.9, "nesterov": True}),
    "adam": (torch.optim.Adam, {}),
    "adamw": (torch.optim.AdamW, {}),
    "rmsprop": (torch.optim.RMSprop, {"momentum": 0.5}),
    "adagrad": (torch.optim.Adagrad, {}),
}


class Norms(nn.Module):
    """One of each normalisation layer, plus a third-party-style norm known only by its class name."""

    class MyRMSNorm(nn.Module):
        def __init__(self, dim):
            super().__init__()
            self.scale = nn.Parameter(torch.ones(dim))

        def forward(self, x):
            return x * self.scale

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 4)
        self.ln = nn.LayerNorm(4)
        self.bn = nn.BatchNorm1d(4)
        self.gn = nn.GroupNorm(2, 4)
        self.rms = nn.RMSNorm(4)
        self.custom = self.MyRMSNorm(4)
        self.out = nn.Linear(4, 2, bias=False)

    def forward(self, x):
        return self.out(self.custom(self.rms(self.gn(self.bn(self.ln(self.fc(x)))))))


def names_by_group(groups):
    return {g["name"]: list(g["param_names"]) for g in groups}


def train(model, optimizer, steps=3, seed=0, set_to_none=True):
    torch.manual_seed(seed)
    model.train()
    for _ in range(steps):
        x, y = torch.randn(8, 3, 12, 12), torch.randint(0, 10, (8,))
        optimizer.zero_grad(set_to_none=set_to_none)
        F.cross_entropy(model(x), y).backward()
        optimizer.step()


def test_trainable_only_never_touches_requires_grad_and_names_match_params():
    model = freeze(tiny_resnet(), ["conv1", "layer1"])
    before = {n: p.requires_grad for n, p in model.named_parameters()}
    groups = param_groups(model, lr=0.1, weight_decay=0.01)
    assert {n: p.requires_grad for n, p in model.named_parameters()} == before
    params = dict(model.named_parameters())
    listed = [n for g in groups for n in g["param_names"]]
    assert sorted(listed) == sorted(n for n, p in params.items() if p.requires_grad)  # each trainable once
    for group in groups:
        assert all(p is params[n] for p, n in zip(group["params"], group["param_names"], strict=True))


def test_no_decay_by_module_type_name_and_glob():
    model = Norms()
    groups = names_by_group(param_groups(model, lr=1.0, weight_decay=0.1))
    assert groups["decay"] == ["fc.weight", "out.weight"]
    assert "custom.scale" in groups["no_decay"] and "rms.weight" in groups["no_decay"]
    assert len(groups["no_decay"]) == 1 + 2 + 2 + 2 + 1 + 1  # fc.bias, ln, bn, gn, rms, custom
    everything = names_by_group(param_groups(model, lr=1.0, weight_decay=0.1, no_decay=()))
    assert list(everything) == ["decay"]
    globbed = names_by_group(param_groups(model, lr=1.0, weight_decay=0.1, no_decay=("out.*",)))
    assert globbed["no_decay"] == ["out.weight"]
    with pytest.raises(TypeError, match="sequence of name patterns"):
        param_groups(model, lr=1.0, weight_decay=0.1, no_decay="bias")


def test_bert_no_decay_matches_the_huggingface_recipe(minilm):
    """HF's run_glue groups: no decay for names containing "bias" or "LayerNorm.weight"."""
    groups = names_by_group(param_groups(minilm, lr=1e-4, weight_decay=0.01))
    hf_no_decay = [n for n, _ in minilm.named_parameters() if any(k in n for k in ("bias", "LayerNorm.weight"))]
    assert groups["no_decay"] == hf_no_decay
    assert len(groups["decay"]) + len(groups["no_decay"]) == len(list(minilm.parameters()))


def timm_layer_scales(n_groups, decay):
    """timm.optim._param_groups.param_groups_layer_decay: layer_scales = decay ** (layer_max - i)."""
    layer_max = n_groups - 1
    return [decay ** (layer_max - i) for i in range(n_groups)]


def test_layer_decay_matches_timm_on_bert(minilm):
    groups = frostline.layer_groups(minilm)
    scales = timm_layer_scales(len(groups), 0.75)
    lr_of = {n: g["lr"] for g in param_groups(minilm, lr=1e-3, layer_decay=0.75) for n in g["param_names"]}
    for i, names in enumerate(groups):
        assert all(lr_of[n] == pytest.approx(1e-3 * scales[i], rel=1e-12) for n in names), i
    assert lr_of["pooler.dense.weight"] == 1e-3 and lr_of["embeddings.word_embeddings.weight"] < 1e-3 * 0.75 ** 6


def test_lr_mult_multiplies_and_selects_by_spec():
    model = tiny_resnet()
    groups = param_groups(model, lr=1.0, lr_mult={"layer1": 0.1, "layer1.0": 0.5, nn.BatchNorm2d: 2.0})
    lr_of = {n: g["lr"] for g in groups for n in g["param_names"]}
    assert lr_of["layer1.1.conv1.weight"] == pytest.approx(0.1)
    assert lr_of["layer1.0.conv1.weight"] == pytest.approx(0.05)
    assert lr_of["layer1.0.bn1.weight"] == pytest.approx(0.1)
    assert lr_of["bn1.weight"] == 2.0 and lr_of["fc.weight"] == 1.0
    with pytest.raises(SelectionError, match="closest"):
        param_groups(model, lr=1.0, lr_mult={"layr1": 0.1})


@pytest.mark.parametrize("kwargs, message", [({"lr": -1.0}, "lr must be"), ({"layer_decay": 0.0}, "layer_decay"),
                                             ({"lr_mult": {"fc": -2}}, "lr_mult"), ({"weight_decay": "x"}, "weight")])
def test_bad_arguments_say_what_is_wrong(kwargs, message):
    with pytest.raises(ValueError, match=message):
        param_groups(tiny_resnet(), **{"lr": 0.1, **kwargs})


def test_tied_parameter_listed_once(tied_lm):
    groups = param_groups(tied_lm, lr=0.1, weight_decay=0.1)
    ids = [id(p) for g in groups for p in g["params"]]
    assert len(ids) == len(set(ids)) == len(list(tied_lm.parameters()))


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_optimizer_trains_the_head_and_keeps_the_frozen_part_bit_identical(name):
    cls, kwargs = OPTIMIZERS[name]
    torch.manual_seed(0)
    model = freeze(small_cnn(), "features")
    opt = frostline.optimizer(model, cls, lr=0.05, weight_decay=0.01 if name != "adagrad" else 0.0, **kwargs)
    assert {id(p) for g in opt.param_groups for p in g["params"]} == {id(p) for p in model.head.parameters()}
    head = copy.deepcopy(model.head.state_dict())
    with frostline.guard(model):
        train(model, opt, set_to_none=False)  # zeroed, not None, grads: still nothing to move
    assert not torch.equal(model.head[1].weight, head["1.weight"])


def test_optimizer_errors():
    with pytest.raises(FrostlineError, match="nothing to optimize"):
        frostline.optimizer(freeze(small_cnn()), torch.optim.SGD, lr=0.1)
    with pytest.raises(TypeError, match="Rprop has no weight decay"):
        frostline.optimizer(small_cnn(), torch.optim.Rprop, lr=0.1, weight_decay=0.1)


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_sync_after_freeze_frees_state_and_keeps_the_rest(name):
    cls, kwargs = OPTIMIZERS[name]
    model = small_cnn()
    opt = cls(model.parameters(), lr=0.01, **kwargs)
    train(model, opt, steps=1)
    kept = {id(p): {k: v for k, v in opt.state[p].items()} for p in model.head.parameters()}
    freeze(model, "features")
    report = sync(opt, model)
    assert report.removed == [n for n, _ in model.features.named_parameters(prefix="features")]
    assert report.state_freed == report.removed and report.freed_bytes > 0
    assert all(p not in opt.state for p in model.features.parameters())
    for p in model.head.parameters():  # the very same state tensors, not a rebuild
        assert all(opt.state[p][k] is v for k, v in kept[id(p)].items())
    assert not sync(opt, model) and str(sync(opt, model)) == "no change"  # idempotent
    features = copy.deepcopy(model.features.state_dict())
    train(model, opt, set_to_none=False)
    assert all(torch.equal(v, features[k]) for k, v in model.features.state_dict().items())


def test_sync_places_unfrozen_parameters_by_the_builders_rule():
    model = freeze(tiny_resnet(), ["conv1", "bn1", "layer1", "layer2"])
    opt = frostline.optimizer(model, torch.optim.AdamW, lr=1.0, weight_decay=0.1, layer_decay=0.5)
    before = [g["name"] for g in opt.param_groups]
    assert not any(name.startswith(("depth1/", "depth2/")) for name in before)
    report = sync(opt, unfreeze(model, "layer1"))  # layer groups 1 and 2 of 8 (layer1.0, layer1.1)
    expected = param_groups(model, lr=1.0, weight_decay=0.1, layer_decay=0.5)
    assert [g["name"] for g in opt.param_groups][: len(before)] == before  # existing groups keep their index
    assert names_by_group(opt.param_groups) == names_by_group(expected)
    lr_of = {g["name"]: g["lr"] for g in opt.param_groups}
    assert lr_of == {g["name"]: g["lr"] for g in expected}
    assert lr_of["depth1/decay"] == 0.5 ** 6 and lr_of["depth2/no_decay"] == 0.5 ** 5
    assert report.groups_added == ["depth1/decay", "depth1/no_decay", "depth2/decay", "depth2/no_decay"]
    assert sorted(report.added) == sorted(n for n, _ in model.layer1.named_parameters(prefix="layer1"))


def test_sync_returns_parameters_to_the_group_they_left():
    model = small_cnn()
    opt = torch.optim.SGD([{"params": model.head.parameters(), "lr": 0.1},
                           {"params": model.features.parameters(), "lr": 0.001, "momentum": 0.9}], lr=0.1)
    train(model, opt, steps=1)
    sync(opt, freeze(model, "features"))
    assert opt.param_groups[1]["params"] == []  # emptied, not removed: LR schedulers address groups by index
    report = sync(opt, unfreeze(model, "features"))
    assert [id(p) for p in opt.param_groups[1]["params"]] == [id(p) for p in model.features.parameters()]
    assert set(report.added.values()) == {"group 1"}
    assert "frostline_parked" not in opt.param_groups[1]


def test_sync_lr_factor_adds_a_group_like_lightning():
    model = freeze(small_cnn(), "features")
    opt = torch.optim.SGD(filter(lambda p: p.requires_grad, model.parameters()), lr=0.1, momentum=0.9)
    report = sync(opt, unfreeze(model, "features"), lr_factor=0.1)
    assert len(opt.param_groups) == 2 and report.groups_added == ["group 0/unfrozen"]
    assert "to new group 'group 0/unfrozen'" in str(report)  # not "to group 0": a group of its own
    new = opt.param_groups[1]
    assert new["lr"] == pytest.approx(0.01) and new["momentum"] == 0.9
    assert [id(p) for p in new["params"]] == [id(p) for p in model.features.parameters()]
    with pytest.raises(ValueError, match="lr_factor"):
        sync(opt, model, lr_factor=-1)


def test_sync_lr_factor_without_any_lr_says_so():
    class NoLr(torch.optim.Optimizer):  # an optimizer whose defaults hold no lr (a schedule-free one, say)
        def __init__(self, params):
            super().__init__(params, {})

    model = freeze(small_cnn(), "features")
    opt = NoLr(filter(lambda p: p.requires_grad, model.parameters()))
    with pytest.raises(FrostlineError, match="neither their group nor NoLr's defaults hold an lr"):
        sync(opt, unfreeze(model, "features"), lr_factor=0.1)


def test_sync_keeps_foreign_trainable_parameters():
    model = small_cnn()
    temperature = nn.Parameter(torch.ones(()))
    opt = torch.optim.Adam([*model.parameters(), temperature], lr=0.1)
    report = sync(opt, freeze(model, "features"))
    assert any(p is temperature for p in opt.param_groups[0]["params"])
    assert len(report.removed) == len(list(model.features.parameters()))


def test_state_dict_round_trip_after_sync_continues_identically():
    torch.manual_seed(0)
    model = small_cnn()
    opt = frostline.optimizer(model, torch.optim.AdamW, lr=0.01, weight_decay=0.1)
    train(model, opt, steps=2)
    sync(opt, freeze(model, "features.0"))
    sync(opt, unfreeze(freeze(model, "features.4"), "features.0"), lr_factor=0.5)
    train(model, opt, steps=1)
    saved = opt.state_dict()
    for group in saved["param_groups"]:
        assert len(group["params"]) == len(group["param_names"])
    assert len(saved["state"]) == sum(p.requires_grad for p in model.parameters())
    buffer = io.BytesIO()
    torch.save(saved, buffer)
    model_b, opt_b = copy.deepcopy((model, opt))
    opt_b.load_state_dict(torch.load(io.BytesIO(buffer.getvalue()), weights_only=True))
    train(model, opt, steps=2, seed=3)
    train(model_b, opt_b, steps=2, seed=3)
    for (name, a), b in zip(model.state_dict().items(), model_b.state_dict().values(), strict=False):
        assert torch.equal(a, b), name


def test_a_fresh_optimizer_loads_a_synced_state_dict():
    model = small_cnn()
    opt = frostline.optimizer(model, torch.optim.AdamW, lr=0.01, weight_decay=0.1)
    train(model, opt, steps=1)
    sync(opt, freeze(model, "features"))
    fresh = frostline.optimizer(model, torch.optim.AdamW, lr=0.01, weight_decay=0.1)
    fresh.load_state_dict(opt.state_dict())
    for p in model.head.parameters():
        assert torch.equal(fresh.state[p]["exp_avg"], opt.state[p]["exp_avg"])


@pytest.mark.parametrize("strategy", ["delta", "split"])
def test_partial_tensors_are_grouped_by_their_logical_name(strategy):
    model = freeze(tiny_resnet(), "fc.weight", rows=[0, 3], strategy=strategy)
    [internal] = frostline.partial.get_partial(model, "fc.weight").trainable_parameters()
    groups = param_groups(model, lr=1.0, weight_decay=0.1, layer_decay=0.5, lr_mult={"fc.weight": 0.1})
    [group] = [g for g in groups if any(p is internal for p in g["params"])]
    assert group["name"] == "depth7/lr_x0.1/decay" and group["param_names"][0].startswith("fc._frostline_")
    assert group["lr"] == pytest.approx(0.1) and group["weight_decay"] == 0.1
    assert not any(n == "fc.weight" for g in groups for n in g["param_names"])  # it no longer requires grad


def test_sync_when_another_tensor_takes_a_parameters_name():
    """The _state protocol also allows a strategy to put a buffer under the original name (tests/fake_partial.py)."""
    from fake_partial import DeltaRows

    model = small_cnn()
    opt = frostline.optimizer(model, torch.optim.AdamW, lr=0.01, weight_decay=0.1)
    train(model, opt, steps=1)
    old = model.head[1].weight
    partial = DeltaRows(model, "head.1.weight", trainable_rows=[2, 5])
    report = sync(opt, model)
    assert report.removed == ["head.1.weight"] and report.state_freed == ["head.1.weight"]
    assert report.added == {"head.1.weight_trainable": "decay"} and old not in opt.state
    decay = next(g for g in opt.param_groups if g["name"] == "decay")
    assert decay["params"][-1] is partial.trainable and decay["param_names"][-1] == "head.1.weight_trainable"
    assert all(p is not old for g in opt.param_groups for p in g["params"])
    assert not sync(opt, model)
    opt.load_state_dict(opt.state_dict())


def conv_net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 10, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(10, 10))


@pytest.mark.parametrize("strategy", frostline.partial.STRATEGIES)
@pytest.mark.parametrize("name", ["sgd-momentum", "adamw"])
def test_sync_follows_partial_freezing_there_and_back(strategy, name):
    cls, kwargs = OPTIMIZERS[name]
    model = conv_net()
    opt = frostline.optimizer(model, cls, lr=0.05, weight_decay=0.1, **kwargs)
    train(model, opt, steps=1)
    weight = model[0].weight
    freeze(model, "0.weight", rows=[0, 2, 4, 6, 8], strategy=strategy)
    report = sync(opt, model)
    held = {id(p) for g in opt.param_groups for p in g["params"]}
    assert held == {id(p) for p in model.parameters() if p.requires_grad}
    keeps_parameter = any(p is weight for p in frostline.partial.get_partial(model, "0.weight").trainable_parameters())
    if frostline.partial.STRATEGIES[strategy] in frostline.partial.BUILT_IN:  # delta, split: the rows move apart
        assert keeps_parameter == (strategy == "mask")
    if keeps_parameter:  # mask: the Parameter keeps training; its frozen rows are restored after each step
        assert not report
    else:  # the Parameter stops requiring grad; a new Parameter of its trainable rows takes its place, and state
        [(internal, group)] = report.added.items()
        assert internal.startswith("0._frostline_") and group == "decay"
        assert report.removed == ["0.weight"] and weight not in opt.state and not report.state_freed
        assert report.state_kept == {"0.weight": internal}  # of the rows that train on
    before = model.state_dict()["0.weight"].clone()
    with guard(model):
        train(model, opt, steps=2, set_to_none=False)
    after = model.state_dict()["0.weight"]
    assert torch.equal(after[0::2], before[0::2]) and not torch.equal(after[1::2], before[1::2])
    report = sync(opt, unfreeze(model, "0.weight"))  # whole again: the original Parameter comes back
    assert all(p.requires_grad for p in model.parameters())
    assert {id(p) for g in opt.param_groups for p in g["params"]} == {id(p) for p in model.parameters()}
    if not keeps_parameter:
        assert report.removed == [internal] and report.added == {"0.weight": "decay"}
    assert not sync(opt, model)
    opt.load_state_dict(opt.state_dict())
    train(model, opt, steps=1)


@pytest.mark.parametrize("value", [1.5, 0.0, -0.5, True, "0.75"])
def test_first_hour_layer_decay_outside_0_1_is_an_error(value):
    with pytest.raises(ValueError, match=rf"layer_decay must be a number in \(0, 1\] .* got {re.escape(repr(value))}"):
        param_groups(tiny_resnet(), lr=0.1, layer_decay=value)
    assert {g["lr"] for g in param_groups(tiny_resnet(), lr=0.1, layer_decay=1)} == {0.1}  # 1 is allowed: no decay


def test_first_hour_an_optimizer_instance_instead_of_its_class():
    model = small_cnn()
    with pytest.raises(TypeError, match=r"pass the optimizer class, e\.g\. torch\.optim\.AdamW.*got an instance of "
                                        r"AdamW.*frostline\.sync\(optimizer, model\)"):
        frostline.optimizer(model, torch.optim.AdamW(model.parameters(), lr=1e-3))
    with pytest.raises(TypeError, match=r"pass the optimizer class, e\.g\. torch\.optim\.AdamW.*got 'adamw'"):
        frostline.optimizer(model, "adamw", lr=1e-3)


def test_first_hour_weight_decay_defaults_to_the_optimizer_classes_own():
    model = freeze(small_cnn(), "features")
    adamw = frostline.optimizer(model, torch.optim.AdamW, lr=1e-3)  # AdamW's own default: 0.01
    assert {g["name"]: g["weight_decay"] for g in adamw.param_groups} == {"decay": 0.01, "no_decay": 0.0}
    sgd = frostline.optimizer(model, torch.optim.SGD, lr=0.1)  # SGD's: 0
    assert [(g["name"], g["weight_decay"]) for g in sgd.param_groups] == [("default", 0.0)]
    given = frostline.optimizer(model, torch.optim.AdamW, lr=1e-3, weight_decay=0.0)  # given wins
    assert [(g["name"], g["weight_decay"]) for g in given.param_groups] == [("default", 0.0)]
    lean = frostline.optimizer(model, torch.optim.SparseAdam, lr=1e-3)  # no weight_decay at all: none is passed
    assert [g["name"] for g in lean.param_groups] == ["default"]
    lr = frostline.optimizer(model, torch.optim.Adam)  # lr too comes from the class unless given
    assert lr.param_groups[0]["lr"] == 1e-3
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    model(torch.randn(4, 3, 8, 8)).sum().backward()
    adamw.step()
    for name, param in model.named_parameters():
        assert torch.equal(param.detach(), before[name]) is name.startswith("features."), name


def _rows_net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 3))


@pytest.mark.parametrize("strategy", ["delta", "split"])
@pytest.mark.parametrize("name, make", [
    ("adamw", lambda ps: torch.optim.AdamW(ps, lr=0.05, weight_decay=0.1, amsgrad=True)),
    ("sgd-momentum", lambda ps: torch.optim.SGD(ps, lr=0.1, momentum=0.9)),
    ("rprop", lambda ps: torch.optim.Rprop(ps, lr=0.01)),  # fresh state is not zeros: step_size starts at lr
])
def test_silent_03_sync_after_a_partial_change_keeps_the_state_of_rows_that_stay_trainable(strategy, name, make):
    """Compared with mask, which keeps one dense state: rows that train on keep their state, rows frozen from the
    start that begin to train start from the state an element that only ever saw zero gradients has."""
    model, reference = _rows_net(), _rows_net()
    freeze(model, "0.weight", rows=[0, 1], strategy=strategy)
    freeze(reference, "0.weight", rows=[0, 1], strategy="mask")
    opt, ref_opt = make([p for p in model.parameters() if p.requires_grad]), make(list(reference.parameters()))
    g = torch.Generator().manual_seed(3)
    batches = [(torch.randn(8, 4, generator=g), torch.randint(0, 3, (8,), generator=g)) for _ in range(6)]

    def steps(k):
        for net, optim in ((model, opt), (reference, ref_opt)):
            for x, y in batches[k:k + 2]:
                optim.zero_grad()
                F.cross_entropy(net(x), y).backward()
                optim.step()

    steps(0)
    freeze(model, "0.weight", rows=[2])  # a partial tensor keeps its strategy
    freeze(reference, "0.weight", rows=[2])
    report = sync(opt, model)
    [internal] = frostline.partial.get_partial(model, "0.weight").trainable_parameters()
    assert report.state_kept == {"0.weight": "0._frostline_trainable_weight"}  # a plain optimizer: no names
    assert not report.state_freed and set(opt.state[internal]) == set(ref_opt.state[reference[0].weight])
    ref_state = ref_opt.state[reference[0].weight]
    for key, value in opt.state[internal].items():
        expected = ref_state[key][3:] if value.dim() else ref_state[key]
        assert torch.equal(value, expected), key
    before = model[0].weight.detach().clone()
    steps(2)
    assert torch.equal(model[0].weight[:3], before[:3]) and not torch.equal(model[0].weight[3:], before[3:])
    unfreeze(model, "0.weight", rows=[0])  # row 0 was frozen from the start
    unfreeze(reference, "0.weight", rows=[0])
    sync(opt, model)
    steps(4)
    torch.testing.assert_close(model.state_dict(), reference.state_dict(), rtol=1e-5, atol=1e-6)
    assert not torch.equal(model[0].weight[0], before[0])


@pytest.mark.parametrize("strategy", ["delta", "split"])
def test_silent_03_whole_to_partial_and_back_keeps_the_state_of_what_trains_throughout(strategy):
    model = _rows_net()
    opt = frostline.optimizer(model, torch.optim.AdamW, lr=0.05, weight_decay=0.1)
    weight = model[0].weight
    F.cross_entropy(model(torch.randn(8, 4)), torch.randint(0, 3, (8,))).backward()
    opt.step()
    moments = opt.state[weight]["exp_avg"].clone()
    freeze(model, "0.weight", rows=[0, 1], strategy=strategy)
    report = sync(opt, model)
    [internal] = frostline.partial.get_partial(model, "0.weight").trainable_parameters()
    assert report.removed == ["0.weight"] and report.state_kept == {"0.weight": "0._frostline_trainable_weight"}
    assert weight not in opt.state and torch.equal(opt.state[internal]["exp_avg"], moments[2:])
    assert "kept the state of 1" in str(report)
    report = sync(opt, unfreeze(model, "0.weight"))
    assert report.state_kept == {"0._frostline_trainable_weight": "0.weight"}
    assert torch.equal(opt.state[weight]["exp_avg"][2:], moments[2:])
    assert torch.equal(opt.state[weight]["exp_avg"][:2], torch.zeros(2, 4))  # frozen meanwhile: freed, fresh again



def test_sync_cost_linear_in_the_model():
    """Syncing after every block froze, then after they all came back: work linear in the model (issue 14)."""
    from cost import operations, stack

    def work(blocks: int) -> int:
        model = stack(blocks)
        opt = frostline.optimizer(model, torch.optim.AdamW, lr=1e-3)
        frostline.freeze(model, "layers")
        leaving = operations(lambda: frostline.sync(opt, model))
        frostline.unfreeze(model, "layers")
        returning = operations(lambda: frostline.sync(opt, model))
        assert not any("frostline_parked" in g for g in opt.param_groups)  # every parked name came back
        return leaving + returning

    work(2)  # first-call costs (imports) out of the way
    assert work(64) / work(16) < 4.5
