"""A Lightning ``Callback`` that drives a :mod:`frostline.schedules` schedule (imports ``lightning``, or
``pytorch_lightning`` when only that is installed).

>>> import lightning.pytorch as pl
>>> from frostline.integrations.lightning import FreezeCallback
>>> from frostline.schedules import GradualUnfreeze
>>> callback = FreezeCallback(GradualUnfreeze(lr_divisor=2.6))
>>> isinstance(callback, pl.Callback), callback.schedule.unit
(True, 'epoch')
"""

from __future__ import annotations

import logging
import math
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:  # one package's types: the older one's classes have the same names and roles
    from lightning.pytorch import Callback, LightningModule, Trainer
else:
    try:
        from lightning.pytorch import Callback, LightningModule, Trainer
    except ImportError:  # only the older package name may be installed
        try:
            from pytorch_lightning import Callback, LightningModule, Trainer
        except ImportError as exc:
            raise ImportError("frostline.integrations.lightning needs lightning: pip install "
                              "'frostline[lightning]'") from exc

from ..schedules import Schedule
from ..selection import Spec
from ._common import as_schedule

__all__ = ["FreezeCallback"]

log = logging.getLogger("frostline.schedules")


class FreezeCallback(Callback):
    """Apply a schedule (or keep a spec frozen) during ``Trainer.fit``; a thin shell over the schedule.

    - ``setup``: an epoch-driven schedule freezes what it wants at epoch 0, so ``configure_optimizers`` may
      build the optimizer from the trainable parameters only (it may also include everything: the schedule's
      ``sync`` takes frozen parameters out).
    - ``on_fit_start``: fills in ``schedule.total_steps`` from ``trainer.estimated_stepping_batches`` and, when
      resuming (``ckpt_path=...``), restores the freeze state and the optimizer's param groups by name before
      Lightning loads the optimizer state.
    - ``on_train_epoch_start`` (``unit == "epoch"``) / ``on_train_batch_start`` (``unit == "step"``):
      ``schedule.step(pl_module, trainer.optimizers[0], epoch=trainer.current_epoch, step=trainer.global_step)``.
    - ``state_dict``/``load_state_dict``: the schedule's, keyed by parameter names.

    Args:
        schedule_or_spec: a :class:`frostline.schedules.Schedule`, or a selector spec to keep frozen throughout.

    Only the first optimizer is driven; with several, the others are left alone (a warning says so).
    """

    def __init__(self, schedule_or_spec: Schedule | Spec) -> None:
        self.schedule = as_schedule(schedule_or_spec)
        self._warned = False

    @property
    def state_key(self) -> str:
        return self._generate_state_key(schedule=type(self.schedule).__name__)

    def _optimizer(self, trainer: Trainer) -> torch.optim.Optimizer | None:
        optimizers = trainer.optimizers
        if len(optimizers) > 1 and not self._warned:
            log.warning("FreezeCallback drives trainer.optimizers[0] only; %d more are left alone",
                        len(optimizers) - 1)
            self._warned = True
        return optimizers[0] if optimizers else None

    def _step(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.schedule.step(pl_module, self._optimizer(trainer), epoch=trainer.current_epoch,
                           step=trainer.global_step)

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if stage == "fit" and self.schedule.unit == "epoch":
            self.schedule.step(pl_module, None, epoch=trainer.current_epoch, step=trainer.global_step)

    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self.schedule.total_steps is None:
            total = trainer.estimated_stepping_batches
            if math.isfinite(total):
                self.schedule.total_steps = int(total)
        self.schedule.restore(pl_module, self._optimizer(trainer))  # a no-op unless a checkpoint was loaded

    def on_train_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self.schedule.unit == "epoch":
            self._step(trainer, pl_module)

    def on_train_batch_start(self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int) -> None:
        if self.schedule.unit == "step":
            self._step(trainer, pl_module)

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        close = getattr(self.schedule, "close", None)
        if close is not None:
            close()

    def state_dict(self) -> dict[str, Any]:
        return self.schedule.state_dict()

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.schedule.load_state_dict(state_dict)
