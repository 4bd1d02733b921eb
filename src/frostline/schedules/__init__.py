"""Freezing schedules: plain objects that freeze and unfreeze groups of parameters as training goes on.

Each one is driven by ``schedule.step(model, optimizer, epoch=..., step=...)`` at the start of each epoch
(``unit == "epoch"``) or before each optimizer step (``unit == "step"``), brings the optimizer along with
:func:`frostline.optim.sync` (no rebuild: parameters that stay trainable keep their state), logs what it changed
(logger ``frostline.schedules``) and returns it as a :class:`Change`, and checkpoints by parameter name with
``state_dict``/``load_state_dict``/``restore``.

- :class:`GradualUnfreeze`: ULMFiT, top group first, one more group each period, optional lr divisor 2.6.
- :class:`UnfreezeAt`: a backbone frozen until an epoch, then trained at a lower lr (Lightning semantics).
- :class:`ProgressiveFreeze`: FreezeOut, per-group cosine lr to zero, then frozen, bottom first.
- :class:`AutoFreeze`: freeze leading groups whose gradient norms stopped changing.
- :class:`LayerwiseSampling`: LISA, a random few of the repeated blocks train, resampled every few steps.

Each registers itself in ``SCHEDULES`` (class name -> class, the name its ``state_dict`` records). The Lightning
and transformers callbacks in :mod:`frostline.integrations` are thin shells over these.

>>> import torch, torch.nn as nn
>>> from frostline.schedules import GradualUnfreeze
>>> model = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 8), nn.Linear(8, 2))
>>> optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
>>> schedule = GradualUnfreeze()
>>> for epoch in range(3):
...     change = schedule.step(model, optimizer, epoch=epoch)
...     print(change.groups, len(change.frozen), len(change.unfrozen))
['0', '2'] 4 0
['2'] 0 2
['0'] 0 2
"""

from ._base import Change, Plan, Schedule
from ._registry import SCHEDULES
from .autofreeze import AutoFreeze  # each schedule module registers its class in SCHEDULES
from .gradual import GradualUnfreeze
from .layerwise import LayerwiseSampling
from .progressive import ProgressiveFreeze
from .unfreeze_at import UnfreezeAt

__all__ = ["AutoFreeze", "Change", "GradualUnfreeze", "LayerwiseSampling", "Plan", "ProgressiveFreeze", "SCHEDULES",
           "Schedule", "UnfreezeAt"]
