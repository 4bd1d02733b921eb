"""One place installs and removes frostline's instance attributes, in a fixed order, and shows them."""

from __future__ import annotations

import copy
import functools
import pickle

import torch
from torch import nn

import frostline
from frostline import _patch


def test_patched_lists_every_instance_attribute_and_unfreeze_removes_them_all():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Conv2d(4, 4, 3), nn.Linear(4, 4))
    frostline.freeze(model, ["0", "2"])
    frostline.freeze(model, "3.weight", rows=[0], strategy="split")
    seen = frostline.patched(model)
    assert seen["0"] == {"train": "eval", "forward": "lean", "extra_repr": "repr"}
    assert seen["3"] == {"forward": "partial", "extra_repr": "repr"}
    # what the record says is exactly what the instances hold
    for name, slots in seen.items():
        module = model.get_submodule(name)
        assert set(slots) <= set(module.__dict__)
    assert "(3): Linear(in_features=4, out_features=4, bias=True, frostline: weight partially frozen (split))" in repr(model)
    frostline.unfreeze(model)
    assert frostline.patched(model) == {}
    assert not any(slot in m.__dict__ for m in model.modules() for slot in ("forward", "train", "extra_repr"))


def test_a_users_own_forward_is_never_replaced():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Conv2d(4, 4, 3))
    mine = model[0].forward
    model[0].forward = mine  # an instance forward frostline did not put there
    frostline.freeze(model)
    assert model[0].__dict__["forward"] is mine and _patch.owner(model[0], "forward") == "user"
    assert frostline.patched(model)["1"]["forward"] == "lean"
    assert "forward" not in frostline.patched(model)["0"]


def test_stronger_owner_displaces_weaker_and_the_weaker_returns():
    conv = nn.Conv2d(3, 4, 3)

    def a(module, x):  # stand-ins for two owners' forwards
        return type(module).forward(module, x)

    def b(module, x):
        return type(module).forward(module, x)

    assert _patch.install(conv, "forward", "lean", a)
    assert _patch.install(conv, "forward", "partial", b)  # the stronger owner takes the slot
    assert not _patch.install(conv, "forward", "lean", a)  # the weaker waits
    assert _patch.holds(conv, "forward", "partial", b)
    _patch.remove(conv, "forward", "lean")  # not the holder: nothing happens
    assert _patch.owner(conv, "forward") == "partial"
    _patch.remove(conv, "forward", "partial")
    assert _patch.install(conv, "forward", "lean", a) and _patch.owner(conv, "forward") == "lean"
    assert isinstance(conv.__dict__["forward"], functools.partial)


def test_patches_survive_deepcopy_and_pickle():
    model = frostline.freeze(nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Conv2d(4, 4, 3)), "0")
    x = torch.randn(2, 3, 8, 8)
    for twin in (copy.deepcopy(model), pickle.loads(pickle.dumps(model))):
        assert frostline.patched(twin) == frostline.patched(model)
        assert twin[0].__dict__["forward"].args[0] is twin[0]  # bound to the copy, not the original
        assert torch.equal(twin(x), model(x))
        assert "frostline: frozen" in repr(twin)
    frostline.unfreeze(model)
    assert frostline.patched(model) == {}
