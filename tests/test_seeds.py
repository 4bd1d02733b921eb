"""Each users' thread in ../shared/seeds/ as a test: frostline prevents or reports what went wrong there."""

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import frostline
from frostline import FrozenParameterChanged, audit, freeze, guard, sync
from frostline.models import tiny_resnet
from frostline.partial import STRATEGIES


def codes(findings):
    return [(f.code, f.severity) for f in findings]


class SeedNet(nn.Module):
    """The network of seed 002."""

    def __init__(self, num_class=10):
        super().__init__()
        self.fc1 = nn.Linear(8, 4)
        self.fc2 = nn.Linear(4, num_class)

    def forward(self, x):
        return self.fc2(self.fc1(x))


def seed_002_loop(model, optimizer, epochs=10):
    torch.manual_seed(1)
    for _ in range(epochs):
        x, label = torch.randn((3, 8)), torch.randint(0, 10, [3]).long()
        loss = nn.CrossEntropyLoss()(model(x), label)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()


# --- seed 000: "update five of the ten filters of a conv layer, keep the rest unchanged" ----------------------------
def seed_000_model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 10, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(10, 2))


def seed_000_steps(model, optimizer, steps=4):
    torch.manual_seed(1)
    for _ in range(steps):
        loss = F.cross_entropy(model(torch.randn(4, 3, 8, 8)), torch.tensor([0, 1, 1, 0]))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()


def test_000_the_gradient_mask_answer_drifts_under_weight_decay():
    model = seed_000_model()
    model[0].weight.register_hook(lambda g: g * (torch.arange(10) >= 5).float().view(10, 1, 1, 1))
    frozen_before = model[0].weight[:5].detach().clone()
    seed_000_steps(model, torch.optim.AdamW(model.parameters(), lr=0.01, weight_decay=0.1))
    assert not torch.equal(model[0].weight[:5], frozen_before)  # what frostline's partial freezing must prevent


@pytest.mark.parametrize("strategy", ["auto", *STRATEGIES])
def test_000_frostline_freezes_five_filters_exactly(strategy):
    model = freeze(seed_000_model(), "0.weight", rows=range(5), strategy=strategy)
    assert frostline.is_frozen(model, "0.weight") == "partial"
    optimizer = frostline.optimizer(model, torch.optim.AdamW, lr=0.01, weight_decay=0.1)
    full_before = model.state_dict()["0.weight"].clone()
    with guard(model) as snap:
        seed_000_steps(model, optimizer)
    assert "0.weight" in snap.names
    after = model.state_dict()["0.weight"]
    assert torch.equal(after[:5], full_before[:5]) and not torch.equal(after[5:], full_before[5:])
    loss = model(torch.randn(2, 3, 8, 8)).sum()
    assert audit(model, optimizer, loss) == []


# --- seed 001: "update only the new first layer; the loss must still reach it through the frozen rest" -----------
def test_001_gradients_flow_through_frozen_layers_to_a_trainable_first_layer():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 3, 3), nn.ReLU(), nn.Conv2d(3, 8, 3), nn.Flatten(), nn.LazyLinear(2))
    model(torch.randn(1, 3, 12, 12))  # materialise the lazy layer
    freeze(model, ["*", "!0.*"])
    opt = frostline.optimizer(model, torch.optim.SGD, lr=0.1, momentum=0.9)
    assert [n for g in opt.param_groups for n in g["param_names"]] == ["0.weight", "0.bias"]
    first = model[0].weight.detach().clone()
    with guard(model):
        for _ in range(3):
            loss = F.cross_entropy(model(torch.randn(4, 3, 12, 12)), torch.tensor([0, 1, 0, 1]))
            assert audit(model, opt, loss) == []  # the first layer is reachable: dgrad flows through frozen layers
            opt.zero_grad()
            loss.backward()
            assert model[0].weight.grad is not None and all(p.grad is None for p in model[2:].parameters())
            opt.step()
    assert not torch.equal(model[0].weight, first)


# --- seed 002: requires_grad vs optimizer filtering ---------------------------------------------------------------
def test_002_mode_1_requires_grad_off_but_everything_in_the_optimizer():
    torch.manual_seed(0)
    model = SeedNet()
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-2)
    plain = [p for n, p in model.named_parameters() if "fc1" in n]
    for p in plain:
        p.requires_grad = False
    found = audit(model, optimizer)
    assert codes(found) == [("frozen-in-optimizer", "info")]  # harmless with plain SGD, but it holds them
    sync(optimizer, model)
    assert audit(model, optimizer) == []
    head = model.fc2.weight.detach().clone()
    with guard(model):
        seed_002_loop(model, optimizer)
    assert not torch.equal(model.fc2.weight, head)  # fc1 held, fc2 trained


def test_002_mode_2_optimizer_filtering_alone_leaves_fc1_computing_gradients():
    torch.manual_seed(0)
    model = SeedNet()
    optimizer = torch.optim.SGD(model.fc2.parameters(), lr=1e-2)
    found = audit(model, optimizer)
    assert codes(found) == [("not-in-optimizer", "error")] and found[0].names == ["fc1.weight", "fc1.bias"]
    seed_002_loop(model, optimizer)
    assert model.fc1.weight.grad is not None  # the wasted weight gradient the thread talks about


def test_002_optimal_way_is_one_call_each():
    torch.manual_seed(0)
    model = freeze(SeedNet(), "fc1")
    optimizer = frostline.optimizer(model, torch.optim.SGD, lr=1e-2)
    fc2 = model.fc2.weight.detach().clone()
    assert audit(model, optimizer) == []
    with guard(model):
        seed_002_loop(model, optimizer)
    assert model.fc1.weight.grad is None and not torch.equal(model.fc2.weight, fc2)


# --- seed 003: zeroed-not-None grads plus momentum / weight decay move a "frozen" parameter -------------------------
def seed_003_model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 3, 3), nn.Conv2d(3, 3, 3), nn.Conv2d(3, 3, 3))


def seed_003_steps(model, optimizer, steps=3):
    torch.manual_seed(1)
    for _ in range(steps):
        optimizer.zero_grad(set_to_none=False)  # the pre-2.0 default the thread warns about
        model(torch.randn(1, 3, 24, 24)).mean().backward()
        optimizer.step()


@pytest.mark.parametrize("momentum, weight_decay", [(0.9, 0.0), (0.0, 0.1), (0.9, 0.1)])
def test_003_plain_pytorch_drifts_and_frostline_reports_and_catches_it(momentum, weight_decay):
    model = seed_003_model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=momentum, weight_decay=weight_decay)
    seed_003_steps(model, optimizer, steps=1)  # trained a while, momentum populated
    model[1].weight.requires_grad = False
    model[1].bias.requires_grad = False
    found = audit(model, optimizer)
    assert ("frozen-in-optimizer", "error") in codes(found) and ("stale-grad", "error") in codes(found)
    with pytest.raises(FrozenParameterChanged, match="1.weight"):
        with guard(model):
            seed_003_steps(model, optimizer)


@pytest.mark.parametrize("momentum, weight_decay", [(0.9, 0.0), (0.0, 0.1), (0.9, 0.1)])
def test_003_frostline_freeze_and_sync_keep_it_bit_identical(momentum, weight_decay):
    model = seed_003_model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=momentum, weight_decay=weight_decay)
    seed_003_steps(model, optimizer, steps=1)
    freeze(model, "1")
    report = sync(optimizer, model)
    assert report.removed == ["1.weight", "1.bias"] and (report.state_freed == report.removed) == (momentum > 0)
    assert audit(model, optimizer) == []
    first = model[0].weight.detach().clone()
    with guard(model):
        seed_003_steps(model, optimizer)
    assert not torch.equal(model[0].weight, first)


# --- seed 004: two ways to freeze, requires_grad and lr = 0 --------------------------------------------------------
def test_004_lr_zero_is_reported_and_freezing_skips_the_weight_gradient():
    torch.manual_seed(0)
    model = tiny_resnet()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    optimizer.param_groups.clear()
    for name, param in model.named_parameters():  # one group per parameter, as in the post
        optimizer.add_param_group({"params": param, "lr": 0.1, "name": name})
    for group in optimizer.param_groups:
        if group["name"] == "fc.weight":
            group["lr"] = 0
    found = audit(model, optimizer)
    assert codes(found) == [("lr-zero", "warning")] and found[0].names == ["fc.weight"]
    assert "(fc.weight) has lr 0" in found[0].message
    p1 = model.fc.weight.detach().clone()
    loss = F.cross_entropy(model(torch.rand(1, 3, 32, 32)), torch.randint(10, (1,)))
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    assert torch.equal(p1, model.fc.weight) and model.fc.weight.grad is not None  # unchanged, but paid for
    freeze(model, "fc.weight")  # the fix the finding suggests
    sync(optimizer, model)
    assert model.fc.weight.grad is None and audit(model, optimizer) == []


def test_004_requires_grad_only_on_two_tensors_with_momentum():
    model = tiny_resnet()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    for name, p in model.named_parameters():
        p.requires_grad = name in ("conv1.weight", "fc.weight")
    model.eval()  # the post trains in train mode; BN running stats are the next finding, not this one
    found = audit(model, optimizer)
    assert codes(found) == [("frozen-in-optimizer", "info")]  # momentum, but no buffer for them yet: held, not moved
    assert len(found[0].names) == len(list(model.parameters())) - 2
    model(torch.rand(1, 3, 32, 32)).sum().backward()
    optimizer.step()
    for p in model.parameters():  # unfreeze-train-refreeze: now they carry momentum buffers
        p.requires_grad = True
    model(torch.rand(1, 3, 32, 32)).sum().backward()
    optimizer.step()
    for name, p in model.named_parameters():
        p.requires_grad = name in ("conv1.weight", "fc.weight")
    found = audit(model, optimizer)
    drifting = next(f for f in found if f.code == "frozen-in-optimizer")
    assert drifting.severity == "error" and "momentum state (momentum_buffer)" in drifting.message
    assert ("stale-grad", "error") in codes(found)  # and the last backward's grads are still on them
    model.train()
    assert ("frozen-norm-in-train-mode", "error") in codes(audit(model, optimizer))
    fixed = freeze(copy.deepcopy(model), ["*", "!conv1.weight", "!fc.weight"])
    assert audit(fixed.train(), frostline.optimizer(fixed, torch.optim.SGD, lr=0.1, momentum=0.9)) == []
