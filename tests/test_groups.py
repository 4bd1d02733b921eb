import pytest

import frostline
from frostline import freeze_to, frozen_names, layer_groups
from frostline.models import seed_cnn, small_cnn, tiny_resnet


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
    freeze_to(model, 100)
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
