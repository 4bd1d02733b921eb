import pytest
import torch
from torch import nn

import frostline
from frostline import freeze_to, frozen_names, layer_groups
from frostline.models import BasicBlock, seed_cnn, small_cnn, tiny_resnet
from frostline.schedules import GradualUnfreeze


def _flat(groups):
    return [n for g in groups for n in g]


@pytest.mark.parametrize("make", [seed_cnn, small_cnn, tiny_resnet])
def test_every_parameter_once(make):
    model = make()
    assert sorted(_flat(layer_groups(model))) == sorted(n for n, _ in model.named_parameters())


def test_sequential_cnn_groups():
    groups = layer_groups(seed_cnn())
    assert [g[0] for g in groups] == ["0.weight", "2.0.weight", "3.0.weight", "4.0.weight", "7.weight"]


def test_resnet_groups():
    groups = layer_groups(tiny_resnet())
    heads = [g[0] for g in groups]
    assert heads[0] == "conv1.weight" and groups[0] == ["conv1.weight", "bn1.weight", "bn1.bias"]
    assert heads[1:-1] == [f"layer{i}.{b}.conv1.weight" for i in (1, 2, 3) for b in (0, 1)]
    assert groups[-1] == ["fc.weight", "fc.bias"]


def test_bert_groups(minilm):
    groups = layer_groups(minilm)
    assert len(groups) == 8
    assert all(n.startswith("embeddings.") for n in groups[0])
    for i in range(6):
        assert all(n.startswith(f"encoder.layer.{i}.") for n in groups[1 + i])
    assert all(n.startswith("pooler.") for n in groups[-1])


def test_freeze_to_fastai_semantics():
    model = tiny_resnet()
    groups = layer_groups(model)
    freeze_to(model, -1)
    assert frozen_names(model) == _flat(groups[:-1])
    freeze_to(model, 2)
    assert frozen_names(model) == _flat(groups[:2])
    freeze_to(model, 0)
    assert frozen_names(model) == []
    freeze_to(model, len(groups))
    assert frozen_names(model) == _flat(groups)


def test_freeze_to_keeps_bert_head_training(minilm):
    freeze_to(minilm, -2)
    assert frostline.is_frozen(minilm, "encoder.layer.4.output.dense.weight") is True
    assert frostline.is_frozen(minilm, "encoder.layer.5.output.dense.weight") is False
    assert not minilm.encoder.layer[0].attention.self.dropout.training or not minilm.training


def test_a_body_and_a_head_are_two_groups():
    """A plain Module whose children are a body and a head (no repeated blocks) splits into the two, as fastai's
    body/head split does; freeze_to(-1) then trains only the head."""
    model = small_cnn()
    groups = frostline.layer_groups(model)
    assert [g[0] for g in groups] == ["features.0.weight", "head.1.weight"]
    frostline.freeze_to(model, -1)
    assert frostline.frozen_names(model) == groups[0]


class _Stages(nn.Module):
    """A ResNet written by hand: a stem (conv1, bn1), stages layer1..layer4 (one block each) and, with a head, fc."""

    def __init__(self, head: bool = True, width: int = 4):
        super().__init__()
        self.conv1, self.bn1, self.relu = nn.Conv2d(3, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU()
        for i in range(1, 5):
            setattr(self, f"layer{i}", nn.Sequential(BasicBlock(width, width)))
        self.fc = nn.Linear(width, 3) if head else None

    def forward(self, x):
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(x.mean((2, 3))) if self.fc is not None else x


class _BodyAndHead(nn.Module):
    def __init__(self):
        super().__init__()
        self.body, self.fc = _Stages(head=False), nn.Linear(4, 3)

    def forward(self, x):
        return self.fc(self.body(x).mean((2, 3)))


class _Wrapper(nn.Module):  # e.g. a LightningModule holding the network
    def __init__(self):
        super().__init__()
        self.net = _Stages()

    def forward(self, x):
        return self.net(x)


_STAGES = ["stem", "layer1", "layer2", "layer3", "layer4", "fc"]


def _stage(name):
    part = [p for p in name.split(".") if p in _STAGES[1:]]
    return part[0] if part else "stem"


@pytest.mark.parametrize("make, prefix", [(_Stages, ""), (_BodyAndHead, "body."), (_Wrapper, "net.")],
                         ids=["stem-layers-fc", "body-and-head", "wrapped"])
def test_first_hour_hand_written_resnet_has_one_group_per_stage(make, prefix):
    model = make()
    groups = layer_groups(model)
    assert [sorted({_stage(n) for n in g}) for g in groups] == [[s] for s in _STAGES]
    assert groups[0] == [f"{prefix}conv1.weight", f"{prefix}bn1.weight", f"{prefix}bn1.bias"]
    assert sorted(_flat(groups)) == sorted(n for n, _ in model.named_parameters())


def test_first_hour_gradual_unfreeze_and_layer_decay_go_stage_by_stage():
    torch.manual_seed(0)
    model = _BodyAndHead()
    lr_of = {n: g["lr"] for g in frostline.param_groups(model, lr=1.0, layer_decay=0.5) for n in g["param_names"]}
    assert {_stage(n): lr for n, lr in lr_of.items()} == {s: 0.5 ** (5 - i) for i, s in enumerate(_STAGES)}
    schedule = GradualUnfreeze()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    x = torch.randn(2, 3, 6, 6)
    for epoch in range(6):
        schedule.step(model, optimizer, epoch=epoch)
        training = [s for s in _STAGES if frostline.is_frozen(model, "fc" if s == "fc" else
                                                              "body." + ("conv1" if s == "stem" else s)) is False]
        assert training == _STAGES[len(_STAGES) - 1 - epoch:]  # one more stage from the top each epoch
        before = {n: p.detach().clone() for n, p in model.named_parameters()}
        optimizer.zero_grad()
        model(x).sum().backward()
        optimizer.step()
        for name, param in model.named_parameters():  # frozen stages bit-identical, training ones moved
            assert torch.equal(param.detach(), before[name]) is (_stage(name) not in training), (epoch, name)


@pytest.mark.parametrize("n", [9, -10, 100])
def test_first_hour_freeze_to_past_the_last_group_is_an_error(n):
    model = tiny_resnet()  # 8 groups: stem, 6 blocks, fc
    with pytest.raises(ValueError, match=rf"freeze_to\(model, {n}\): the model has 8 layer groups; n must be in "
                                         r"-8\.\.8 \(8 freezes every group, -1 trains only the last\)"):
        freeze_to(model, n)
    assert frozen_names(model) == []  # nothing was changed
    freeze_to(model, -8)
    assert frozen_names(model) == []


def test_layer_groups_cost_linear_in_the_model():
    """Each name finds its group by its own module prefixes, not by a test of every group (issue 14)."""
    from cost import growth, stack

    assert growth(lambda m: lambda: layer_groups(m)) < 4.5
    firsts = [g[0] for g in layer_groups(stack(3))]
    assert firsts == ["embed.weight", "layers.0.attn.q.weight", "layers.1.attn.q.weight", "layers.2.attn.q.weight",
                      "norm.weight"]
