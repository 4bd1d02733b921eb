"""frostline.guard: every frozen element and frozen-module buffer recorded, every bit change caught and named."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import frostline
from frostline import FrozenParameterChanged, freeze, guard, snapshot
from frostline.models import small_cnn, tiny_resnet
from frostline.partial import STRATEGIES

MODES = ["copy", "hash", "checksum"]
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def step(model, optimizer, seed=0):
    torch.manual_seed(seed)
    x, y = torch.randn(8, 3, 12, 12), torch.randint(0, 10, (8,))
    device = next(model.parameters()).device
    optimizer.zero_grad()
    F.cross_entropy(model(x.to(device)), y.to(device)).backward()
    optimizer.step()


def flip_lowest_bit(tensor, index=0):
    with torch.no_grad():
        tensor.view(-1).view(torch.int32)[index] ^= 1


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("make", [small_cnn, tiny_resnet])
def test_clean_training_passes_and_the_head_moves(make, device, mode):
    torch.manual_seed(0)
    model = freeze(make(), "*", eval_frozen=True)
    frostline.unfreeze(model, "head" if hasattr(model, "head") else "fc")
    model.to(device).train()
    opt = frostline.optimizer(model, torch.optim.AdamW, lr=0.1, weight_decay=0.1)
    head = [p.detach().clone() for p in model.parameters() if p.requires_grad]
    with guard(model, mode=mode) as snap:
        for i in range(3):
            step(model, opt, seed=i)
    assert any(not torch.equal(a, p) for a, p in zip(head, [p for p in model.parameters() if p.requires_grad], strict=False))
    frozen_params = [n for n, p in model.named_parameters() if not p.requires_grad]
    frozen_modules = {n.rpartition(".")[0] for n in frozen_params}
    bn_buffers = [n for n, _ in model.named_buffers() if n.rpartition(".")[0] in frozen_modules]
    assert snap.names == frozen_params + bn_buffers


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("device", DEVICES)
def test_each_kind_of_change_is_caught_and_named(mode, device):
    model = freeze(small_cnn(), "features").to(device)
    snap = snapshot(model, mode=mode)
    snap.verify(model)
    flip_lowest_bit(model.features[0].weight, 7)  # one bit of one element
    with torch.no_grad():
        model.features[1].running_mean.add_(torch.arange(16.0, device=device))  # a buffer of a frozen module
        model.features[5].num_batches_tracked += 1  # an integer buffer
        model.head[1].weight.add_(1.0)  # trainable: not recorded, so not reported
    with pytest.raises(FrozenParameterChanged) as raised:
        snap.verify(model)
    changes = {c.name: c for c in raised.value.changes}
    assert list(changes) == ["features.0.weight", "features.1.running_mean", "features.5.num_batches_tracked"]
    message = str(raised.value)
    assert all(name in message for name in changes) and "frostline.audit" in message
    if mode == "copy":
        assert (changes["features.0.weight"].changed, changes["features.0.weight"].total) == (1, 432)
        assert 0 < changes["features.0.weight"].max_abs_diff < 1e-6
        running_mean = changes["features.1.running_mean"]
        assert (running_mean.changed, running_mean.max_abs_diff) == (15, 15)
        assert changes["features.5.num_batches_tracked"].max_abs_diff == 1
    else:
        assert all(c.changed is None and c.note == f"{mode} differs" for c in changes.values())


@pytest.mark.parametrize("mode", MODES)
def test_comparison_is_on_bits(mode):
    model = freeze(nn.Linear(3, 3))
    with torch.no_grad():
        model.bias.zero_()
        model.weight[0, 0] = float("nan")
    snap = snapshot(model, mode=mode)
    assert snap.changes(model) == []  # an unchanged NaN is unchanged
    with torch.no_grad():
        model.bias[1] = -0.0  # equal by value, different bits
    assert [c.name for c in snap.changes(model)] == ["bias"]


@pytest.mark.parametrize("mode", ["hash", "checksum"])
def test_hash_catches_one_element_at_the_end_of_a_multi_chunk_tensor_and_a_swap(mode):
    model = freeze(nn.Embedding((1 << 20) // 8 + 3, 8))
    snap = snapshot(model, mode=mode)
    assert snap.nbytes == {"hash": 32, "checksum": 16}[mode]
    flip_lowest_bit(model.weight, model.weight.numel() - 1)
    assert [c.name for c in snap.changes(model)] == ["weight"]
    flip_lowest_bit(model.weight, model.weight.numel() - 1)
    assert snap.changes(model) == []
    with torch.no_grad():
        model.weight[[0, 1]] = model.weight[[1, 0]].clone()  # same values, other places
    assert [c.name for c in snap.changes(model)] == ["weight"]


def test_memory_is_what_the_docs_say():
    model = freeze(tiny_resnet(), ["conv1", "bn1", "layer1"])
    copy_snap, hash_snap = snapshot(model, mode="copy"), snapshot(model, mode="hash")
    checksum_snap = snapshot(model, mode="checksum")
    recorded = dict(model.named_parameters()) | dict(model.named_buffers())
    assert copy_snap.nbytes == sum(recorded[n].numel() * recorded[n].element_size() for n in copy_snap.names)
    assert hash_snap.nbytes == 32 * len(hash_snap.names) and hash_snap.names == copy_snap.names
    assert checksum_snap.nbytes == 16 * len(checksum_snap.names) and checksum_snap.names == copy_snap.names
    assert "bn1.running_var" in copy_snap.names and "layer2.0.bn1.running_var" not in copy_snap.names


def test_buffers_of_fully_frozen_modules_only(minilm):
    freeze(minilm, "embeddings")
    names = snapshot(minilm, mode="hash").names
    assert {"embeddings.position_ids", "embeddings.token_type_ids"} <= set(names)  # BertEmbeddings' own buffers
    assert all(n.startswith("embeddings.") for n in names)
    assert len(names) == len(frostline.frozen_names(minilm)) + len(list(minilm.embeddings.buffers()))


def test_missing_or_reshaped_tensors_are_reported():
    model = freeze(nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2)), "0")
    snap = snapshot(model)
    model[0].weight = nn.Parameter(torch.zeros(3, 2), requires_grad=False)
    del model[0].bias
    model[0].register_parameter("bias", None)
    notes = {c.name: c.note for c in snap.changes(model)}
    assert "(2, 2) became" in notes["0.weight"] and "no param 0.bias" in notes["0.bias"]


def test_guard_lets_an_exception_in_the_block_through():
    model = freeze(small_cnn(), "features")
    with pytest.raises(KeyError):
        with guard(model):
            with torch.no_grad():
                model.features[0].weight.add_(1.0)
            raise KeyError("the block's own error wins")


def test_bad_mode():
    with pytest.raises(ValueError, match="'copy'.*'hash'.*'checksum'"):
        snapshot(small_cnn(), mode="sha256")


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("strategy", STRATEGIES)
def test_partial_tensor_records_its_frozen_elements_only(strategy, mode):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3), nn.Linear(3, 2))
    freeze(model, "1")
    freeze(model, "0.weight", rows=[0, 2], strategy=strategy)
    snap = snapshot(model, mode=mode)  # the strategy's own storage is not listed, the tensor is, once
    assert snap.names == ["0.weight", "1.weight", "1.bias", "1.running_mean", "1.running_var", "1.num_batches_tracked"]
    before = model.state_dict()["0.weight"].clone()
    opt = frostline.optimizer(model, torch.optim.SGD, lr=0.5, momentum=0.9, weight_decay=0.1)
    for _ in range(2):
        opt.zero_grad(set_to_none=False)
        model(torch.randn(8, 4)).square().mean().backward()
        opt.step()
    assert snap.changes(model) == []  # frozen rows 0 and 2 did not move...
    assert not torch.equal(model.state_dict()["0.weight"][1], before[1])  # ...the trainable row 1 did
    with torch.no_grad():
        model[0].weight[2, 3] += 0.5  # the stored effective values, on a frozen element
    [change] = snap.changes(model)
    assert change.name == "0.weight" and change.total == 8
    if mode == "copy":
        assert (change.changed, change.max_abs_diff) == (1, 0.5)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64, torch.int64, torch.uint8, torch.bool,
                                   torch.complex64])
def test_every_dtype_one_element_changed(dtype, mode):
    module = freeze(nn.Linear(2, 2))
    module.register_buffer("extra", torch.zeros(5, 3, dtype=dtype))
    snap = snapshot(module, mode=mode)
    assert "extra" in snap.names
    with torch.no_grad():
        module.extra[4, 2] = True if dtype == torch.bool else 1
    [change] = snap.changes(module)
    assert change.name == "extra" and (mode != "copy" or (change.changed, change.max_abs_diff) == (1, 1.0))


# Twelve changes of at most 698 ulp that cancel in a linear, unkeyed checksum of the raw bits (frostline's old
# mode="hash", now mode="checksum"): found by LLL lattice reduction of its fixed position weights for positions
# 0..11 of a tensor under 2**20 elements. Its weights are public, so anyone can craft such a change.
CRAFTED = [-596, 327, -200, 464, -191, 486, 71, 680, 21, 34, 72, -698]


def _craft(tensor, sign=1):
    with torch.no_grad():
        tensor.view(-1).view(torch.int32)[:12] += sign * torch.tensor(CRAFTED, dtype=torch.int32)


def test_silent_11_hash_mode_catches_a_change_crafted_to_cancel_in_a_linear_sum():
    torch.manual_seed(0)
    model = freeze(nn.Sequential(nn.Linear(8, 8), nn.Linear(8, 2)), "0")
    hashed, copied = snapshot(model, mode="hash"), snapshot(model, mode="copy")
    _craft(model[0].weight)
    [change] = copied.changes(model)  # a real change: 12 elements, a few hundred ulp each
    assert (change.name, change.changed) == ("0.weight", 12) and 0 < change.max_abs_diff < 1e-4
    with pytest.raises(FrozenParameterChanged, match=r"0\.weight \(hash differs\)"):
        hashed.verify(model)
    _craft(model[0].weight, -1)
    assert hashed.changes(model) == [] and copied.changes(model) == []  # back to the recorded bits
    checksum = snapshot(model, mode="checksum")
    _craft(model[0].weight)
    assert checksum.changes(model) == []  # what the checksum's name warns of: a crafted change passes it
    flip_lowest_bit(model[0].weight, 20)
    assert [c.name for c in checksum.changes(model)] == ["0.weight"]  # an accidental one never does


def test_silent_11_hash_mode_is_keyed_per_snapshot():
    model = freeze(nn.Linear(4, 4))
    first, second = snapshot(model, mode="hash"), snapshot(model, mode="hash")
    digests = [[r.values for r in s._records.values()] for s in (first, second)]
    assert digests[0] != digests[1]  # same bytes, another key: nobody can precompute a snapshot's digests
    assert first.changes(model) == [] and second.changes(model) == []
    assert first.nbytes == 32 * 2
