"""trainable_state_dict / load_trainable_state_dict: only trainable values, their key format, safetensors."""

from __future__ import annotations

import re

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import frostline
from frostline import FrostlineError, load_trainable_state_dict, trainable_state_dict
from frostline.partial import STRATEGIES, get_partial

pytestmark = pytest.mark.usefixtures("one_thread")


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.emb = nn.Embedding(20, 4)
        self.conv = nn.Conv1d(4, 6, 2)
        self.bn = nn.BatchNorm1d(6)
        self.head = nn.Linear(12, 3)

    def forward(self, ids):
        return self.head(torch.relu(self.bn(self.conv(self.emb(ids).transpose(1, 2)))).flatten(1))


IDS = torch.randint(0, 20, (8, 3), generator=torch.Generator().manual_seed(0))
Y = torch.randint(0, 3, (8,), generator=torch.Generator().manual_seed(1))


def _frozen(strategy="auto"):
    """The pretrained model, frozen: 16 of 20 token rows, 3 of 6 filters, about half the head's weights, and the
    conv bias whole."""
    model = Net()
    frostline.freeze(model, "emb.weight", rows=range(16), strategy="delta" if strategy == "split" else strategy)
    frostline.freeze(model, "conv.weight", rows=[0, 2, 4], strategy=strategy if strategy != "delta" else "split")
    frostline.freeze(model, "head.weight", mask=torch.rand(3, 12, generator=torch.Generator().manual_seed(2)) > 0.5,
                     strategy="mask" if strategy == "split" else strategy)
    frostline.freeze(model, "conv.bias")
    return model


def _train(model, steps=3):
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=0.1, weight_decay=0.1)
    for _ in range(steps):
        opt.zero_grad()
        F.cross_entropy(model(IDS), Y).backward()
        opt.step()
    return model


def test_key_format():
    sd = trainable_state_dict(_frozen())
    assert sorted(sd) == ["bn.bias", "bn.num_batches_tracked", "bn.running_mean", "bn.running_var", "bn.weight",
                          "conv.weight@rows0", "conv.weight@values", "emb.weight@rows0", "emb.weight@values",
                          "head.bias", "head.weight@elements", "head.weight@values"]
    assert sd["emb.weight@rows0"].tolist() == [16, 17, 18, 19] and sd["emb.weight@values"].shape == (4, 4)
    assert sd["conv.weight@rows0"].tolist() == [1, 3, 5] and sd["conv.weight@values"].shape == (3, 4, 2)
    assert sd["head.weight@elements"].dtype == torch.int64 and sd["head.weight@values"].dim() == 1
    assert sd["head.weight@values"].numel() == sd["head.weight@elements"].numel()
    assert "bn.running_mean" not in trainable_state_dict(_frozen(), buffers=False)


def test_frozen_modules_buffers_are_left_out():
    model = Net()
    frostline.freeze(model, ["emb", "conv", "bn"])
    assert sorted(trainable_state_dict(model)) == ["head.bias", "head.weight"]


@pytest.mark.parametrize("strategy", ["auto", *STRATEGIES])
def test_round_trip_restores_the_trained_model(strategy):
    trained = _train(_frozen(strategy))
    fresh = _frozen(strategy)
    assert not torch.equal(fresh.state_dict()["emb.weight"], trained.state_dict()["emb.weight"])
    assert load_trainable_state_dict(fresh, trainable_state_dict(trained)) == ([], [])
    for key, value in trained.state_dict().items():
        assert torch.equal(fresh.state_dict()[key], value), key
    before = {k: v.clone() for k, v in fresh.state_dict().items()}
    _train(fresh, steps=1)  # still trains, still exact, after loading
    mask = get_partial(fresh, "emb.weight").frozen_mask()
    assert torch.equal(fresh.state_dict()["emb.weight"][mask], before["emb.weight"][mask])
    assert not torch.equal(fresh.state_dict()["emb.weight"][~mask], before["emb.weight"][~mask])


def test_safetensors_file_round_trip(tmp_path):
    safetensors = pytest.importorskip("safetensors.torch")
    trained = _train(_frozen())
    path = tmp_path / "trainable.safetensors"
    safetensors.save_file(trainable_state_dict(trained), str(path))
    fresh = _frozen()
    load_trainable_state_dict(fresh, safetensors.load_file(str(path)))
    assert torch.equal(fresh(IDS), trained(IDS))


def test_a_few_trainable_rows_make_a_small_checkpoint():
    model = frostline.freeze(nn.Embedding(5000, 32), "weight", rows=range(10, 5000))
    nbytes = lambda sd: sum(v.numel() * v.element_size() for v in sd.values())  # noqa: E731
    assert nbytes(trainable_state_dict(model)) == 10 * 32 * 4 + 10 * 8  # values + int64 row indices
    assert nbytes(trainable_state_dict(model)) < 0.003 * nbytes(model.state_dict())


def test_mismatched_freeze_state_is_refused_with_a_reason():
    sd = trainable_state_dict(_train(_frozen()))
    other_rows = Net()
    frostline.freeze(other_rows, "emb.weight", rows=range(15))
    with pytest.raises(FrostlineError, match="other elements of emb.weight"):
        load_trainable_state_dict(other_rows, sd, strict=False)
    whole = Net()
    with pytest.raises(FrostlineError, match="trains part of emb.weight .* but the model trains it whole"):
        load_trainable_state_dict(whole, sd, strict=False)
    frozen_head = _frozen()
    frostline.freeze(frozen_head, "head.bias")
    with pytest.raises(FrostlineError, match="trains head.bias whole but the model freezes it whole"):
        load_trainable_state_dict(frozen_head, sd)


def test_strict_reports_missing_and_unexpected():
    sd = trainable_state_dict(_frozen())
    del sd["head.bias"]
    sd["extra"] = torch.zeros(1)
    with pytest.raises(FrostlineError, match=r"missing keys \['head.bias'\], unexpected keys \['extra'\]"):
        load_trainable_state_dict(_frozen(), sd)
    assert load_trainable_state_dict(_frozen(), sd, strict=False) == (["head.bias"], ["extra"])


def _bn_then_linear():
    torch.manual_seed(0)
    return nn.Sequential(nn.BatchNorm1d(4), nn.Linear(4, 2))


@pytest.mark.parametrize("key, wrong", [("1.weight", torch.ones(1, 4)), ("1.bias", torch.tensor(5.0)),
                                        ("0.running_mean", torch.ones(1)), ("1.weight", torch.ones(4, 2))])
def test_silent_06_a_whole_tensor_of_another_shape_is_refused_not_broadcast(key, wrong):
    trained = _bn_then_linear()
    with torch.no_grad():
        for t in trained.state_dict().values():
            t.add_(1)  # the checkpoint's values differ from a fresh model's everywhere
    sd = trainable_state_dict(trained)
    model = _bn_then_linear()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    expected = tuple(model.state_dict()[key].shape)
    with pytest.raises(FrostlineError, match=rf"size mismatch for '{key}': the checkpoint holds shape "
                                             rf"{re.escape(str(tuple(wrong.shape)))}, the model's .* shape "
                                             rf"{re.escape(str(expected))}"):
        load_trainable_state_dict(model, {**sd, key: wrong})
    for k, v in model.state_dict().items():  # refused before anything was copied: nothing half-loaded
        assert torch.equal(v, before[k]), k
    assert load_trainable_state_dict(model, sd) == ([], [])  # the right shapes load, and every value changes
    for k, v in model.state_dict().items():
        assert torch.equal(v, trained.state_dict()[k]) and not torch.equal(v, before[k]), k


@pytest.mark.parametrize("layout, wrong", [("rows", (1, 3)), ("rows", (2, 4)), ("rows", (4,)), ("rows", (1, 1)),
                                           ("elements", (8,)), ("elements", (9, 1)), ("elements", (3, 3))])
def test_silent_06_partial_values_of_another_shape_are_a_frostline_error(layout, wrong):
    def make():
        torch.manual_seed(0)
        frozen = dict(rows=[0, 2]) if layout == "rows" else dict(mask=torch.eye(3, 4, dtype=torch.bool))
        return frostline.freeze(nn.Linear(4, 3), "weight", **frozen)

    trained = _train_linear(make())
    sd = trainable_state_dict(trained)
    expected = tuple(sd["weight@values"].shape)
    model = make()
    before = model.weight.detach().clone()
    with pytest.raises(FrostlineError, match=rf"size mismatch for 'weight@values': the checkpoint holds shape "
                                             rf"{re.escape(str(wrong))}, the model's trainable part of weight "
                                             rf"\(weight@(rows0|elements)\) has shape {re.escape(str(expected))}"):
        load_trainable_state_dict(model, {**sd, "weight@values": torch.zeros(wrong)})
    assert torch.equal(model.weight.detach(), before)
    load_trainable_state_dict(model, sd)
    frozen = get_partial(model, "weight").frozen_mask()
    assert torch.equal(model.weight.detach()[frozen], before[frozen])  # frozen elements untouched by loading
    assert torch.equal(model.weight.detach(), trained.weight.detach()) and not torch.equal(model.weight, before)


def _train_linear(model, steps=2):
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5)
    for _ in range(steps):
        opt.zero_grad()
        model(torch.randn(8, 4, generator=torch.Generator().manual_seed(3))).square().mean().backward()
        opt.step()
    return model
