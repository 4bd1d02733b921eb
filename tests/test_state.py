"""One rule for "fully frozen", read by every subsystem (freeze's eval marks, guard, checkpoints, audit, lean)."""

from __future__ import annotations

import subprocess
import sys

import torch
from torch import nn

import frostline
from frostline._state import FreezeState


def _model() -> nn.Sequential:
    # an affine-free BatchNorm (buffers, no parameters) inside a block, and one at the root beside trainable layers
    return nn.Sequential(
        nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4, affine=False), nn.ReLU()),
        nn.BatchNorm2d(4, affine=False),
        nn.Conv2d(4, 4, 3, padding=1),
    )


def test_parameter_free_modules_follow_their_nearest_ancestor_with_parameters():
    model = frostline.freeze(_model(), "0")
    state = FreezeState(model)
    assert state.frozen["0"] and state.frozen["0.1"] and state.frozen["0.2"]  # inside the frozen block
    assert not state.frozen["1"]  # its ancestor (the root) still trains
    assert not state.frozen[""] and not state.frozen["2"]
    assert state.frozen_modules() == ["0", "0.0", "0.1", "0.2"]


def test_every_subsystem_agrees_on_the_affine_free_batchnorm():
    model = frostline.freeze(_model(), "0")
    model.train()
    inside, outside = model[0][1], model[1]
    # kept in eval: the one inside the frozen block, not the one the root decides
    assert not inside.training and outside.training
    snap = frostline.snapshot(model)
    assert "0.1.running_mean" in snap.names and "1.running_mean" not in snap.names  # guard
    keys = frostline.trainable_state_dict(model).keys()
    assert "0.1.running_mean" not in keys and "1.running_mean" in keys  # checkpoint
    assert frostline.lean.keeps(inside) is not None  # lean runs it (eval-form BatchNorm)
    model(torch.randn(2, 3, 5, 5)).sum().backward()
    snap.verify(model)  # nothing frozen moved...
    assert not torch.equal(outside.running_mean, torch.zeros(4))  # ...while the root's BatchNorm updated its stats
    assert [f.code for f in frostline.audit(model)] == []


def test_a_frozen_block_stays_frozen_when_its_parameters_are_tied_elsewhere():
    shared = nn.Linear(2, 2)
    model = nn.Sequential(nn.Sequential(shared, nn.Dropout()), nn.Sequential(shared, nn.Linear(2, 2)))
    frostline.freeze(model, "0")
    state = FreezeState(model)
    assert state.frozen["0"] and state.frozen["0.1"]
    assert not state.frozen["1"]  # the tied Linear is frozen, its sibling trains
    assert frostline.unfreeze(model, "1.1") is model and FreezeState(model).frozen["0"]


def test_partial_tensors_are_not_frozen_whole():
    model = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2))
    frostline.freeze(model, "0.weight", rows=[0, 1])
    frostline.freeze(model, "0.bias")
    state = FreezeState(model)
    assert not state.frozen["0"]
    frostline.freeze(model, "0")
    assert FreezeState(model).frozen["0"]


def test_import_installs_no_process_wide_hook():
    code = (
        "import torch\n"
        "from torch.nn.modules import module\n"
        "from torch.optim import optimizer\n"
        "import frostline\n"
        "print(len(optimizer._global_optimizer_pre_hooks), len(optimizer._global_optimizer_post_hooks),\n"
        "      len(module._global_module_registration_hooks))\n"
        "m = frostline.freeze(torch.nn.Linear(2, 2), 'bias')\n"
        "print(len(optimizer._global_optimizer_pre_hooks), len(module._global_module_registration_hooks))\n"
        "frostline.freeze(m, 'weight', rows=[0])\n"
        "print(len(optimizer._global_optimizer_pre_hooks), len(optimizer._global_optimizer_post_hooks))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split("\n")
    assert out[0] == "0 0 0"  # import: nothing
    assert out[1] == "0 1"  # the first freeze: the DDP watch; no optimizer hook while no strategy exists
    assert out[2] == "1 1"  # the first partial strategy: the two optimizer hooks
