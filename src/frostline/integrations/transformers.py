"""Hugging Face ``transformers``: a ``TrainerCallback`` that drives a :mod:`frostline.schedules` schedule, and
name-based helpers for transformer models (BERT, GPT-2 and LLaMA-style naming).

>>> from frostline.integrations.transformers import layer_names
>>> from transformers import BertConfig, BertModel
>>> bert = BertModel(BertConfig(hidden_size=32, num_hidden_layers=4, num_attention_heads=2, intermediate_size=64))
>>> names = layer_names(bert, 2)
>>> names[0], names[-1]
('embeddings.word_embeddings.weight', 'encoder.layer.1.output.LayerNorm.bias')
"""

from __future__ import annotations

import functools
import logging
from typing import TYPE_CHECKING, Any, cast

import torch
from torch import nn

try:
    from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments
except ImportError as exc:
    raise ImportError("frostline.integrations.transformers needs transformers (and accelerate for its Trainer): "
                      "pip install 'frostline[transformers]'") from exc

from ..errors import FrostlineError
from ..freeze import freeze
from ..schedules import Schedule
from ..schedules._optim import track_names
from ..selection import Spec, select
from ._common import Hold, as_schedule

if TYPE_CHECKING:
    from transformers import PreTrainedModel

__all__ = ["FreezeCallback", "embedding_names", "layer_names", "freeze_embeddings", "freeze_first_layers",
           "fix_checkpointing"]

log = logging.getLogger("frostline.schedules")

# Last component of an embedding module's name: BERT, GPT-2, LLaMA/Mistral/T5, GPT-NeoX, others.
_EMBEDDINGS = frozenset({"embeddings", "wte", "wpe", "embed_tokens", "embed_positions", "word_embeddings",
                         "position_embeddings", "token_type_embeddings", "embed_in", "tok_embeddings", "shared"})
# Last component of the ModuleList of transformer blocks: BERT encoder.layer, GPT-2 h, LLaMA layers, T5 block.
_BLOCKS = frozenset({"layer", "layers", "h", "blocks", "block"})
STATE_KEY = "frostline"  # the schedule's state inside TrainerState.stateful_callbacks (trainer_state.json)


def embedding_names(model: nn.Module) -> list[str]:
    """Parameter names of the embedding modules, found by name (``embeddings``, ``wte``/``wpe``,
    ``embed_tokens``...) and by ``model.get_input_embeddings()``.

    A tied output head (GPT-2's ``lm_head``) shares the token embedding's weight, so freezing these freezes it
    too; this is logged.

    Raises:
        FrostlineError: no embedding module found.

    Example:
        >>> from transformers import GPT2Config, GPT2Model
        >>> embedding_names(GPT2Model(GPT2Config(n_embd=8, n_layer=1, n_head=2, vocab_size=10, n_positions=8)))
        ['wte.weight', 'wpe.weight']
    """
    roots = [name for name, m in model.named_modules() if name.rpartition(".")[2] in _EMBEDDINGS
             and any(True for _ in m.parameters())]
    specs: list[Any] = [r for r in roots if not any(r.startswith(f"{o}.") for o in roots)]
    get = getattr(model, "get_input_embeddings", None)
    embedding = get() if callable(get) else None
    if isinstance(embedding, nn.Module):
        specs.append(embedding)
    if not specs:
        raise FrostlineError(f"no embedding module found in {type(model).__name__}: none of its modules is named "
                             f"{', '.join(sorted(_EMBEDDINGS))}; select the parameters by name instead")
    names = select(model, specs)
    _log_ties(model, names)
    return names


def _log_ties(model: nn.Module, names: list[str]) -> None:
    chosen = {id(p) for n, p in model.named_parameters() if n in names}
    for name, p in model.named_parameters(remove_duplicate=False):
        if id(p) in chosen and name not in names:
            log.info("%s is tied to an embedding: it is frozen with it", name)


def _blocks(model: nn.Module) -> tuple[str, nn.ModuleList]:
    for name, module in model.named_modules():
        if isinstance(module, nn.ModuleList) and name.rpartition(".")[2] in _BLOCKS and len(module):
            return name, module
    lists = [n for n, m in model.named_modules() if isinstance(m, nn.ModuleList)]
    raise FrostlineError(f"no ModuleList of transformer blocks named {', '.join(sorted(_BLOCKS))} in "
                         f"{type(model).__name__}; its ModuleLists: {', '.join(lists[:8]) or 'none'}")


def layer_names(model: nn.Module, n: int, *, embeddings: bool = True) -> list[str]:
    """Parameter names of the first ``n`` transformer blocks (``encoder.layer.{i}``, ``h.{i}``,
    ``model.layers.{i}``...; the first such ModuleList in the model, so the encoder of an encoder-decoder),
    and of the embeddings when ``embeddings`` is true: a spec for ``freeze``, ``UnfreezeAt`` or a callback.

    Raises:
        ValueError: ``n`` is negative or larger than the number of blocks.
        FrostlineError: no block list found.
    """
    name, blocks = _blocks(model)
    if not 0 <= n <= len(blocks):
        raise ValueError(f"n must be between 0 and {len(blocks)} (the blocks of {name}), got {n}")
    specs = [f"{name}.{i}" for i in range(n)]
    names = select(model, specs) if specs else []
    return (embedding_names(model) + names) if embeddings else names


def fix_checkpointing(model: nn.Module) -> bool:
    """Keep gradients flowing when gradient (activation) checkpointing runs with frozen input embeddings.

    With reentrant checkpointing, a checkpointed block whose inputs do not require grad passes no gradient to
    its own parameters, so nothing in it trains (transformers#21381). When checkpointing is on and not known to
    be non-reentrant, the input embeddings are frozen and no input-grad hook is installed, this calls
    ``model.enable_input_require_grads()`` and warns. Returns whether it did.

    Example:
        >>> from transformers import BertConfig, BertModel
        >>> bert = BertModel(BertConfig(hidden_size=8, num_hidden_layers=1, num_attention_heads=2, intermediate_size=8))
        >>> fix_checkpointing(bert)  # no checkpointing, nothing to fix
        False
    """
    checkpointed = [m for m in model.modules() if getattr(m, "gradient_checkpointing", False) is True]
    if not checkpointed or all(_non_reentrant(m) for m in checkpointed):
        return False
    get = getattr(model, "get_input_embeddings", None)
    embedding = get() if callable(get) else None
    if not isinstance(embedding, nn.Module) or any(p.requires_grad for p in embedding.parameters()):
        return False
    if getattr(model, "_require_grads_hooks", None) or getattr(model, "_require_grads_hook", None):
        return False
    cast("PreTrainedModel", model).enable_input_require_grads()  # a transformers model: it has both found above
    log.warning("gradient checkpointing with frozen input embeddings: called model.enable_input_require_grads() "
                "so the checkpointed blocks still get gradients. HINT: non-reentrant checkpointing needs no fix "
                "and skips backward through frozen layers: model.gradient_checkpointing_enable("
                "gradient_checkpointing_kwargs={'use_reentrant': False})")
    return True


def _non_reentrant(module: nn.Module) -> bool:
    func = getattr(module, "_gradient_checkpointing_func", None)
    return isinstance(func, functools.partial) and func.keywords.get("use_reentrant") is False


def freeze_embeddings(model: nn.Module) -> nn.Module:
    """Freeze the embeddings (see :func:`embedding_names`), apply :func:`fix_checkpointing`, return ``model``."""
    freeze(model, embedding_names(model))
    fix_checkpointing(model)
    return model


def freeze_first_layers(model: nn.Module, n: int, *, embeddings: bool = True) -> nn.Module:
    """Freeze the first ``n`` blocks (and the embeddings), apply :func:`fix_checkpointing`, return ``model``."""
    names = layer_names(model, n, embeddings=embeddings)
    if names:
        freeze(model, names)
    fix_checkpointing(model)
    return model


def _unwrap(optimizer: Any) -> torch.optim.Optimizer | None:
    """The torch optimizer inside accelerate's ``AcceleratedOptimizer`` (hooks and groups live there)."""
    while isinstance(getattr(optimizer, "optimizer", None), torch.optim.Optimizer):
        optimizer = optimizer.optimizer
    return optimizer


def _given(model: nn.Module | None, event: str) -> nn.Module:
    """The model the Trainer passes to ``event`` (it passes one to every training event)."""
    if model is None:
        raise FrostlineError(f"FreezeCallback.{event} got no model, so it cannot apply the schedule; pass "
                             "model= as the Trainer does")
    return model


def _callback_states(state: TrainerState) -> dict[str, Any]:
    """``state.stateful_callbacks``: a dict by callback name once the state is built (transformers annotates the
    field with the list its constructor also accepts)."""
    return cast(dict[str, Any], state.stateful_callbacks)


class FreezeCallback(TrainerCallback):
    """Apply a schedule (or keep a spec frozen) in a ``transformers.Trainer``; a thin shell over the schedule.

    - ``on_init_end``: an epoch-driven schedule freezes what it wants at epoch 0, so the optimizer the Trainer
      creates holds the trainable parameters only.
    - ``on_train_begin``: fills in ``schedule.total_steps`` from ``state.max_steps``; when resuming, restores
      the schedule from ``trainer_state.json``, the freeze state and the optimizer's groups; applies
      :func:`fix_checkpointing`.
    - ``on_epoch_begin`` (``unit == "epoch"``) / ``on_step_begin`` (``unit == "step"``): ``schedule.step`` with
      the ``model`` and ``optimizer`` the Trainer passes.
    - when the Trainer is about to save, the schedule's ``state_dict`` goes into ``trainer_state.json``.

    Resuming (``trainer.train(resume_from_checkpoint=...)``) restores everything when the Trainer is *given*
    the optimizer (``optimizers=(optimizer, None)``): the Trainer loads optimizer state before any callback
    runs, and a schedule may have changed the optimizer's groups since it was created; the callback makes the
    optimizer's checkpoints record parameter names and rearranges a given optimizer by them when it loads.

    Args:
        schedule_or_spec: a :class:`frostline.schedules.Schedule`, or a selector spec to keep frozen throughout.
    """

    def __init__(self, schedule_or_spec: Schedule | Spec) -> None:
        self.schedule = as_schedule(schedule_or_spec)
        self._given_optimizer = False

    def _step(self, state: TrainerState, model: nn.Module, optimizer: Any) -> None:
        change = self.schedule.step(model, _unwrap(optimizer), epoch=int(state.epoch + 1e-6),
                                    step=state.global_step)
        if change is not None:
            fix_checkpointing(model)

    def on_init_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
                    model: nn.Module | None = None, optimizer: Any = None, **kwargs: Any) -> None:
        if model is None:
            return
        if self.schedule.unit == "epoch":
            self.schedule.step(model, None, epoch=0, step=0)
        optimizer = _unwrap(optimizer)
        if optimizer is not None:
            track_names(optimizer, model)
            self._given_optimizer = True

    def on_train_begin(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
                       model: nn.Module | None = None, optimizer: Any = None, **kwargs: Any) -> None:
        model, optimizer = _given(model, "on_train_begin"), _unwrap(optimizer)
        if self.schedule.total_steps is None and state.max_steps > 0:
            self.schedule.total_steps = state.max_steps
        saved = (_callback_states(state) or {}).get(STATE_KEY) if state.global_step > 0 else None
        if saved is not None:
            self.schedule.load_state_dict(saved)
            self.schedule.restore(model, optimizer)
        if optimizer is not None:
            track_names(optimizer, model)
            if not self._given_optimizer and not isinstance(self.schedule, Hold):
                log.warning("the Trainer created the optimizer: a run resumed from this run's checkpoints cannot "
                            "load it once the schedule has changed its groups. HINT: give the Trainer the optimizer, "
                            "optimizers=(frostline.optim.optimizer(model, torch.optim.AdamW, lr=...), None)")
        fix_checkpointing(model)

    def on_epoch_begin(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
                       model: nn.Module | None = None, optimizer: Any = None, **kwargs: Any) -> None:
        if self.schedule.unit == "epoch":
            self._step(state, _given(model, "on_epoch_begin"), optimizer)

    def on_step_begin(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
                      model: nn.Module | None = None, optimizer: Any = None, **kwargs: Any) -> None:
        if self.schedule.unit == "step":
            self._step(state, _given(model, "on_step_begin"), optimizer)

    def _keep(self, state: TrainerState, control: TrainerControl) -> None:
        if control.should_save:  # the Trainer writes trainer_state.json right after this event
            _callback_states(state)[STATE_KEY] = self.schedule.state_dict()

    def on_step_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
                    **kwargs: Any) -> None:
        self._keep(state, control)

    def on_epoch_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
                     **kwargs: Any) -> None:
        self._keep(state, control)

    def on_train_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
                     **kwargs: Any) -> None:
        close = getattr(self.schedule, "close", None)
        if close is not None:
            close()
