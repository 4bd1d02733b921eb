"""The module hooks of a module that owns partially frozen tensors: module-level functions, so ``deepcopy`` and
pickling carry them, registered once per module and removed with its last partial tensor.

- before forward (eager only: it reads version counters): adopt replaced Parameters, bring storage in step (on
  every module of a tied tensor: any of them may run first);
- ``state_dict``: write trainable values into the Parameter first, then drop the strategies' internal keys, so a
  checkpoint has the original keys and shapes;
- ``load_state_dict``: derive the internal Parameters' values from the loaded full tensor (so checkpoints of plain
  models load strictly), and afterwards refresh what strategies derived from the old values.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from .._state import PARTIAL_ATTR
from ._base import Strategy, strategies


def _check_before_forward(module: nn.Module, args: tuple) -> None:
    if torch.compiler.is_compiling():  # compiled graphs rely on the after-step hook alone
        return
    for part in set(strategies(module).values()):  # a tied tensor's other modules check its storage too
        part.check()


def _sync_before_state_dict(module: nn.Module, prefix: str, keep_vars: bool) -> None:
    for part in strategies(module).values():
        part.sync(force=True)


def _drop_internal_keys(module: nn.Module, state_dict: dict, prefix: str, local_metadata: dict) -> None:
    for part in strategies(module).values():
        for name in part.internal_names():
            state_dict.pop(prefix + name, None)


def _fill_internal_keys(module: nn.Module, state_dict: dict, prefix: str, local_metadata: dict, strict: bool,
                        missing_keys: list, unexpected_keys: list, error_msgs: list) -> None:
    # load_state_dict works on its own copy of the dict, so adding keys here leaves the caller's alone
    for local, part in strategies(module).items():
        full = state_dict.get(prefix + local)
        if part.module is module and isinstance(full, Tensor) and full.shape == part.param.shape:
            for name, value in part.internal_values(full).items():
                state_dict[prefix + name] = value


def _after_load(module: nn.Module, incompatible_keys: Any) -> None:
    for part in set(strategies(module).values()):
        if part.module is module:
            part.after_load()


_MODULE_HOOKS = (
    ("_forward_pre_hooks", "register_forward_pre_hook", _check_before_forward),
    ("_state_dict_pre_hooks", "register_state_dict_pre_hook", _sync_before_state_dict),
    ("_state_dict_hooks", "register_state_dict_post_hook", _drop_internal_keys),
    ("_load_state_dict_pre_hooks", "register_load_state_dict_pre_hook", _fill_internal_keys),
    ("_load_state_dict_post_hooks", "register_load_state_dict_post_hook", _after_load),
)


def _ours(hooks: dict, fn: Any) -> list[int]:
    return [key for key, hook in hooks.items() if getattr(hook, "hook", hook) is fn]


def attach(module: nn.Module, local: str, part: Strategy) -> None:
    """Record ``part`` as ``module.<local>`` and make sure the module carries frostline's hooks."""
    module.__dict__.setdefault(PARTIAL_ATTR, {})[local] = part
    for attr, register, fn in _MODULE_HOOKS:
        if not _ours(getattr(module, attr), fn):
            getattr(module, register)(fn)


def detach(module: nn.Module, local: str) -> None:
    """Forget ``module.<local>``'s strategy; drop the hooks when it was the module's last partial tensor."""
    parts = strategies(module)
    parts.pop(local, None)
    if parts:
        return
    module.__dict__.pop(PARTIAL_ATTR, None)
    for attr, _, fn in _MODULE_HOOKS:
        hooks = getattr(module, attr)
        for key in _ours(hooks, fn):
            del hooks[key]
