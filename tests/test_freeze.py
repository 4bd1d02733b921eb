import copy
import pickle

import pytest
import torch
import torch.nn.functional as F

from frostline import FreezeError, SelectionError, freeze, frozen_names, is_frozen, unfreeze
from frostline.models import seed_cnn, small_cnn, tiny_resnet


def test_freeze_in_place_keeps_identity_and_clears_grad():
    model = tiny_resnet()
    ids = {n: id(p) for n, p in model.named_parameters()}
    model(torch.randn(2, 3, 8, 8)).sum().backward()
    assert freeze(model, "layer1") is model
    for name, param in model.named_parameters():
        assert id(param) == ids[name]
        if name.startswith("layer1."):
            assert not param.requires_grad and param.grad is None
        else:
            assert param.requires_grad and param.grad is not None
    assert unfreeze(model, "layer1") is model
    assert all(p.requires_grad for p in model.parameters())
    assert {n: id(p) for n, p in model.named_parameters()} == ids


def test_is_frozen_and_frozen_names():
    model = small_cnn()
    freeze(model, "features.0")
    assert is_frozen(model, "features.0.weight") is True
    assert is_frozen(model, "head.1.weight") is False
    assert frozen_names(model) == ["features.0.weight", "features.0.bias"]
    with pytest.raises(SelectionError, match="features.0.weight"):
        is_frozen(model, "features.0.wieght")
    assert is_frozen(model, "features.0") is True and is_frozen(model, "head") is False  # a module: its parameters


def test_strategy_without_rows_is_an_error():
    with pytest.raises(FreezeError, match="partial"):
        freeze(small_cnn(), "head", strategy="mask")


def _train(model, optimizer, steps=5, seed=0):
    torch.manual_seed(seed)
    model.train()
    for _ in range(steps):
        x, y = torch.randn(16, 3, 12, 12), torch.randint(0, 10, (16,))
        loss = F.cross_entropy(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()


@pytest.mark.parametrize("optimizer_cls", [torch.optim.AdamW, torch.optim.SGD])
def test_everything_but_head_stays_bit_identical(optimizer_cls):
    """The core scenario: CNN with BatchNorm and Dropout, everything but the head frozen, 5 steps in train()."""
    torch.manual_seed(0)
    model = small_cnn()
    # All parameters go to the optimizer, as a careless user would do; weight decay > 0.
    kwargs = {"lr": 0.1, "weight_decay": 0.1} | ({"momentum": 0.9} if optimizer_cls is torch.optim.SGD else {})
    optimizer = optimizer_cls(model.parameters(), **kwargs)
    _train(model, optimizer, steps=1)  # the frozen part even has optimizer state already
    freeze(model, "features")
    frozen_before = copy.deepcopy(model.features.state_dict())
    head_before = copy.deepcopy(model.head.state_dict())
    _train(model, optimizer, steps=5, seed=1)
    for key, value in model.features.state_dict().items():  # parameters AND running stats
        assert torch.equal(value, frozen_before[key]), key
    assert not torch.equal(model.head[1].weight, head_before["1.weight"])
    assert model.training and not model.features[1].training and not model.features[3].training


def test_frozen_region_is_deterministic_in_train_mode():
    torch.manual_seed(0)
    model = small_cnn()
    freeze(model, "features")
    model.train()
    x = torch.randn(4, 3, 12, 12)
    assert torch.equal(model.features(x), model.features(x))  # dropout off, BN uses running stats
    assert model.head[0].training  # the head's dropout belongs to a trainable region


def test_eval_frozen_false_keeps_pytorch_default():
    model = small_cnn()
    freeze(model, "features", eval_frozen=False)
    model.train()
    assert model.features[1].training and model.features[3].training


def test_unfreeze_restores_train_mode_behaviour():
    model = small_cnn()
    freeze(model, "features")
    model.train()
    unfreeze(model, "features.1")  # the BN's own params train again: the BN follows model.train()
    assert model.features[1].training
    assert model.features[3].training  # its parent region now trains, so its dropout is live again
    assert not model.features[5].training  # the other BN's own params are still frozen
    unfreeze(model)
    model.eval()
    model.train()
    assert all(m.training for m in model.modules())


def test_freeze_state_survives_deepcopy_and_pickle():
    model = small_cnn()
    freeze(model, "features")
    for clone in (copy.deepcopy(model), pickle.loads(pickle.dumps(model))):
        clone.train()
        assert not clone.features[1].training
        assert frozen_names(clone) == frozen_names(model)
        unfreeze(clone)
        clone.train()
        assert clone.features[1].training
    model.train()
    assert not model.features[1].training  # the original is untouched by changes to its copies


def test_whole_model_freeze_and_state_dict_keys_unchanged():
    model = tiny_resnet()
    keys = list(model.state_dict())
    freeze(model)
    assert list(model.state_dict()) == keys
    assert frozen_names(model) == [n for n, _ in model.named_parameters()]


def test_frozen_bert_is_deterministic_in_train_mode(minilm):
    """BertSelfAttention applies dropout under its own ``self.training``: a fully frozen block stays in eval."""
    freeze(minilm, ["embeddings", "encoder.layer.[0-2]"])
    minilm.train()
    ids = torch.randint(1000, 2000, (2, 12))
    with torch.no_grad():
        first = minilm.encoder.layer[2](minilm.embeddings(input_ids=ids))[0]
        second = minilm.encoder.layer[2](minilm.embeddings(input_ids=ids))[0]
    assert torch.equal(first, second)
    assert not minilm.encoder.layer[0].attention.self.training
    assert minilm.encoder.layer[3].attention.self.training  # the trainable top keeps its dropout
    unfreeze(minilm)
    minilm.train()
    assert all(m.training for m in minilm.modules())


def test_unfreezing_a_fully_frozen_root_restores_its_mode():
    model = small_cnn().train()
    freeze(model)
    model.train()
    assert not any(m.training for m in model.modules())
    unfreeze(model)
    assert all(m.training for m in model.modules())


def test_compiled_model_follows_every_change_of_the_frozen_set():
    """A compiled model re-traces when freezing changes (requires_grad, eval mode, lean forwards, a partial
    strategy's forward): after each change it computes the gradients eager mode does, for exactly the parameters
    that train (pytorch/pytorch#139476: stale frames after requires_grad changes)."""
    torch.manual_seed(0)
    eager = seed_cnn()  # no dropout: eager and compiled runs see the same computation
    compiled_model = copy.deepcopy(eager)
    compiled = torch.compile(compiled_model, backend="aot_eager")
    x, y = torch.randn(4, 3, 16, 16), torch.randint(0, 10, (4,))
    changes = [lambda m: m, lambda m: freeze(m, ["*", "!0", "!7"]), lambda m: unfreeze(m, "4.3"),
               lambda m: freeze(m, "4.3.weight", rows=[0, 1]), lambda m: unfreeze(m)]
    for change in changes:
        change(eager), change(compiled_model)
        for model, run in ((eager, eager), (compiled_model, compiled)):
            model.zero_grad(set_to_none=True)
            F.cross_entropy(run(x), y).backward()
        grads = {n: p.grad for n, p in eager.named_parameters() if p.grad is not None}
        assert grads.keys() == {n for n, p in compiled_model.named_parameters() if p.grad is not None}
        for name, param in compiled_model.named_parameters():
            if param.grad is not None:
                torch.testing.assert_close(param.grad, grads[name], rtol=1e-4, atol=1e-5)


def test_first_hour_is_frozen_answers_for_a_module():
    model = tiny_resnet()
    freeze(model, ["layer1", "layer2.0"])
    freeze(model, "fc.weight", rows=[0, 1])
    assert is_frozen(model, "layer1") is True           # every parameter beneath is frozen
    assert is_frozen(model, "layer3") is False          # every parameter beneath trains
    assert is_frozen(model, "layer2") == "partial"      # mixed
    assert is_frozen(model, "fc") == "partial"          # a partially frozen tensor beneath
    assert is_frozen(model, "layer1.0.bn1.weight") is True and is_frozen(model, "fc.bias") is False
    unfreeze(model, "layer1.1")
    assert is_frozen(model, "layer1") == "partial" and is_frozen(model, "layer1.0") is True
    with pytest.raises(SelectionError, match="closest names"):
        is_frozen(model, "layer7")


@pytest.mark.parametrize("call", [lambda m: freeze(m, "0"), lambda m: freeze(m, "1.weight", rows=[0]),
                                  lambda m: unfreeze(m, "0")], ids=["freeze", "freeze-rows", "unfreeze"])
def test_first_hour_freeze_inside_inference_mode_is_refused(call):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Linear(4, 2))
    with torch.inference_mode(), pytest.raises(FreezeError, match=r"inside torch\.inference_mode\(\)"):
        call(model)
    assert all(p.requires_grad for p in model.parameters()) and frozen_names(model) == []  # nothing half-done
    call(model)  # outside it works, and training then moves exactly what trains
    names = ["0.weight", "0.bias", "1.weight", "1.bias"]
    before = {name: model.get_parameter(name).detach().clone() for name in names}
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    model(torch.randn(3, 4)).sum().backward()
    opt.step()
    for name in names:
        assert torch.equal(model.get_parameter(name).detach(), before[name]) is (is_frozen(model, name) is True), name
    if is_frozen(model, "1.weight") == "partial":
        assert torch.equal(model[1].weight[0].detach(), before["1.weight"][0])


def test_freeze_unfreeze_and_is_frozen_grow_linearly_with_the_model():
    """Counted calls, not time: 4x the blocks costs at most ~4x the work (a scan per name would give ~16x)."""
    from cost import growth

    def freeze_then(call):
        def prepare(model):
            freeze(model, "layers")
            return lambda: call(model)
        return prepare

    assert growth(lambda m: lambda: freeze(m, "layers")) < 4.5
    assert growth(freeze_then(lambda m: unfreeze(m, "layers"))) < 4.5
    assert growth(freeze_then(lambda m: freeze(m, "layers"))) < 4.5  # again: nothing changes, nothing rescanned
    assert growth(freeze_then(lambda m: is_frozen(m, "layers.0"))) < 4.5
    assert growth(freeze_then(frozen_names)) < 4.5
