"""Layerwise importance sampling (LISA: Pan et al., "LISA: Layerwise Importance Sampling for Memory-Efficient
Large Language Model Fine-Tuning", arXiv:2403.17919, 2024): every ``every`` steps, train a random ``n_active``
of the model's repeated blocks and freeze the others."""

from __future__ import annotations

import base64
import logging
import weakref
from collections.abc import Sequence
from typing import Any, Literal

import torch
from torch import nn

from .._state import partials_by_name
from ..errors import FrostlineError
from ..groups import CONTAINERS, has_params, is_leaf
from ..selection import select_each
from ._base import Change, Plan, Schedule, _common_module
from ._registry import register

__all__ = ["LayerwiseSampling", "repeated_blocks"]

log = logging.getLogger("frostline.schedules")

# Keys the optimizer's own state_dict() gets with optimizer_state="cpu": the parked state, by parameter name,
# and which of its entries lived on the parameter's device (the others, like Adam's step, on the CPU).
PARKED_STATE, ON_DEVICE = "frostline_parked_state", "frostline_parked_on_device"


def repeated_blocks(model: nn.Module) -> list[list[str]]:
    """Parameter names of the model's repeated blocks (transformer layers), one list per block, bottom to top.

    A block is a child of a ``ModuleList``/``Sequential`` whose class appears at least twice among that
    container's children with parameters. When several classes qualify, composite blocks win over single layers,
    then the shallowest (decoder layers over the MoE experts inside them), then the most numerous. Every
    instance of the winning class in such containers is a block (a T5's encoder and decoder blocks alike);
    the embeddings, final norm and head are not.

    Raises:
        FrostlineError: the model has no repeated blocks (pass ``groups=`` to the schedule instead).

    Example:
        >>> import torch.nn as nn
        >>> from frostline.schedules.layerwise import repeated_blocks
        >>> block = lambda: nn.Sequential(nn.Linear(4, 4), nn.LayerNorm(4))
        >>> model = nn.Sequential(nn.Linear(2, 4), block(), block(), block(), nn.Linear(4, 1))
        >>> [names[0] for names in repeated_blocks(model)]
        ['1.0.weight', '2.0.weight', '3.0.weight']
    """
    found: dict[type, list[str]] = {}  # class -> names of its repeated instances, in model order
    for name, module in model.named_modules():
        if not isinstance(module, CONTAINERS):
            continue
        by_class: dict[type, list[str]] = {}
        for child_name, child in module.named_children():
            if has_params(child):
                by_class.setdefault(type(child), []).append(f"{name}.{child_name}" if name else child_name)
        for cls, names in by_class.items():
            if len(names) >= 2:
                found.setdefault(cls, []).extend(names)
    if not found:
        containers = [n or "<the model>" for n, m in model.named_modules() if isinstance(m, CONTAINERS)]
        raise FrostlineError(f"{type(model).__name__} has no repeated blocks (one module class at least twice in a "
                             f"ModuleList/Sequential; its containers: {', '.join(containers[:8]) or 'none'}); "
                             "pass groups=[...] (selector specs, one per block) to the schedule")

    def rank(item: tuple[type, list[str]]) -> tuple[bool, int, int]:
        names = item[1]
        return is_leaf(model.get_submodule(names[0])), min(n.count(".") for n in names), -len(names)

    names = min(found.items(), key=rank)[1]  # min keeps the first of equals: model order
    listed = set(names)  # drop blocks nested in another block: a dotted prefix of theirs is listed
    names = [n for n in names if not any(n[:i] in listed for i, c in enumerate(n) if c == ".")]
    return select_each(model, [model.get_submodule(n) for n in names])


@register
class LayerwiseSampling(Schedule):
    """LISA: at step 0 and every ``every`` steps, sample ``n_active`` of the ``L`` blocks uniformly without
    replacement; they train until the next draw, the other blocks are frozen.

    Everything outside the blocks (embeddings, final norm, head) is left as you set it: trainable, frozen or
    partially frozen. The schedule *owns* its blocks: a block parameter you froze before its first step is
    trained whenever its block is sampled (a warning names such parameters; pass ``groups=`` to leave them
    out). Partially frozen tensors inside a block are refused, since freezing the block whole would lose their mask.

    At each draw that changes the active set, through :func:`frostline.optim.sync` (no optimizer rebuild, so
    an optimizer built by a trainer before the first draw is followed, and every sampled block trains):

    - newly frozen blocks leave the optimizer and their optimizer state is freed at once, so the optimizer
      holds state for the active blocks (and whatever trains outside them) only;
    - newly active blocks join it with fresh state (the paper's choice), or with the state they had when
      they were last frozen, kept on the CPU in between, with ``optimizer_state="cpu"``;
    - blocks that stay active keep their state.

    Frozen blocks stay in eval (dropout off) even under ``model.train()``, as everywhere in frostline, and
    return to the mode they had once sampled again.

    The draws come from a CPU ``torch.Generator`` seeded with ``seed`` (the same on every rank), one per
    interval ``step // every`` reached, so the blocks at a step depend only on ``seed`` and the step. Its state
    checkpoints with the schedule: a run resumed from ``state_dict`` samples the same blocks and ends
    bit-identical to an uninterrupted one. With ``optimizer_state="cpu"`` the parked state travels in the
    optimizer's own ``state_dict()`` (state-dict hooks), so load that after :meth:`restore`; a trainer that
    loads the optimizer earlier (the transformers ``Trainer``) loses it, and a warning says so when those blocks
    return (they start fresh).

    Under DDP every draw that changes the frozen set needs a new wrapper (see :mod:`frostline.distributed`):
    when :meth:`resamples_at` the next step, drop the wrapper, call ``step``, wrap again. A trainer that wraps
    DDP itself cannot do that, so there the draw raises ``DistributedFreezeError`` rather than train replicas
    apart; FSDP2 (``fully_shard`` per block) needs nothing extra.

    Args:
        n_active (int): blocks trained at a time (the paper's gamma: 2 to 8 of 32).
        every (int): optimizer steps between draws (the paper's K).
        seed (int): seed of the draws.
        groups: selector specs or name lists, one per block; default :func:`repeated_blocks`.
        optimizer_state (str): ``"fresh"`` (default) or ``"cpu"``: what a block's optimizer state does while
            it is frozen (freed; or moved to the CPU, one copy at each draw, and brought back when it returns).
        recompute_frozen (bool): run the frozen blocks under activation checkpointing
            (:func:`frostline.lean.recompute`): each keeps only its inputs for backward and runs its forward again
            in backward (exact gradients; one more forward per frozen block and step). Blocks that train run
            plain. Each group must be one module's parameters (the default groups are). A transformers model
            must train without a KV cache (``model.config.use_cache = False``): a block given one runs plain.

    Example:
        >>> import torch, torch.nn as nn
        >>> from frostline.schedules import LayerwiseSampling
        >>> block = lambda: nn.Sequential(nn.Linear(4, 4), nn.LayerNorm(4), nn.Dropout(0.1))
        >>> model = nn.Sequential(nn.Embedding(10, 4), *[block() for _ in range(4)], nn.Linear(4, 10))
        >>> opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
        >>> lisa = LayerwiseSampling(n_active=2, every=3)
        >>> print(lisa.step(model, opt, step=0))
        step 0: froze 8 tensors (3, 4); blocks 0, 1 of 4 train (1, 2); optimizer: removed 8
        >>> [next(m.parameters()).requires_grad for m in model], len(opt.param_groups[0]["params"])
        ([True, True, True, False, False, True], 11)
        >>> _ = model.train(); model[3][2].training, model[1][2].training   # a frozen block's dropout is off
        (False, True)
        >>> lisa.resamples_at(2), lisa.resamples_at(3)
        (False, True)
    """

    unit = "step"

    def __init__(self, n_active: int, every: int, seed: int = 0, *, groups: Sequence[Any] | None = None,
                 optimizer_state: Literal["fresh", "cpu"] = "fresh", recompute_frozen: bool = False) -> None:
        super().__init__(groups)
        for label, value in (("n_active", n_active), ("every", every)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{label} must be a positive int, got {value!r}")
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise TypeError(f"seed must be an int, got {seed!r}")
        if optimizer_state not in ("fresh", "cpu"):
            raise ValueError(f"optimizer_state must be 'fresh' (the paper: state freed when a block freezes) or "
                             f"'cpu' (kept on the CPU until the block returns), got {optimizer_state!r}")
        if not isinstance(recompute_frozen, bool):
            raise TypeError(f"recompute_frozen must be True or False, got {recompute_frozen!r}")
        self.n_active, self.every, self.seed, self.optimizer_state = n_active, every, seed, optimizer_state
        self.recompute_frozen = recompute_frozen
        self._generator = torch.Generator().manual_seed(seed)
        self._interval = -1  # the last interval (step // every) drawn for
        self._active: list[int] = []
        self._reason: tuple[int, str] = (-1, "")
        self._parked: dict[str, dict[str, tuple[Any, bool]]] = {}  # name -> key -> (CPU value, on param device)
        self._expected: set[str] = set()  # parked names a checkpoint listed; warned about if they never arrive
        self._hooked: weakref.WeakSet = weakref.WeakSet()

    @property
    def active(self) -> list[int]:
        """Indices (into ``groups``) of the blocks that train in the current interval, ascending."""
        return list(self._active)

    def resamples_at(self, step: int) -> bool:
        """Whether ``step(..., step=step)`` draws new blocks (and may change the frozen set): under DDP, drop
        the wrapper before that call and wrap again after it."""
        return self._pending is not None or step // self.every != self._interval

    def plan(self, epoch: int | None, step: int | None) -> Plan:
        step = self._counter(epoch, step)
        target = step // self.every
        if target < self._interval:  # stepped back without a checkpoint: replay the draws from the seed
            self._generator.manual_seed(self.seed)
            self._interval = -1
        while self._interval < target:
            drawn = torch.randperm(len(self.groups), generator=self._generator)[:self.n_active]
            self._active = sorted(drawn.tolist())  # a CPU tensor: no device sync
            self._interval += 1
        if self._reason[0] != self._interval:  # built once per interval, not on every step
            labels = self._labels()
            self._reason = (self._interval, f"blocks {', '.join(map(str, self._active))} of {len(self.groups)} "
                                            f"train ({', '.join(labels[i] for i in self._active)})")
        return Plan(frozenset(range(len(self.groups))) - frozenset(self._active), reason=self._reason[1])

    def step(self, model: nn.Module, optimizer: torch.optim.Optimizer | None = None, *,
             epoch: int | None = None, step: int | None = None) -> Change | None:
        """:meth:`Schedule.step`, with ``step=`` required: draws when a new interval starts, and with
        ``optimizer_state="cpu"`` parks the state of blocks that freeze and brings back that of blocks that return."""
        parking = optimizer if self.optimizer_state == "cpu" else None  # the optimizer whose state blocks park
        if parking is not None:
            self._hook(parking)
        # state of the block parameters that train now, held before sync frees it, in case their block freezes
        held = self._held(model, parking) if parking is not None and step is not None and self.resamples_at(step) \
            else None
        change = super().step(model, optimizer, epoch=epoch, step=step)
        if change is not None and parking is not None:
            self._park(model, parking, held or {}, change.frozen, change.unfrozen)
        if change is not None and self.recompute_frozen:
            self._recompute(model)
        return change

    def restore(self, model: nn.Module, optimizer: torch.optim.Optimizer | None = None) -> None:
        if optimizer is not None and self.optimizer_state == "cpu":
            self._hook(optimizer)  # before the optimizer's state_dict is loaded, so it hands back the parked state
        restoring = self._pending is not None
        super().restore(model, optimizer)
        if restoring and self.recompute_frozen:
            self._recompute(model)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Load a :meth:`state_dict` (see :meth:`Schedule.load_state_dict`).

        Raises:
            FrostlineError: the checkpoint was written by another schedule class, or with other ``n_active``,
                ``every`` or ``seed`` (it would not continue the same draws).
        """
        saved = state.get("state") or {}
        mine = {"n_active": self.n_active, "every": self.every, "seed": self.seed}
        theirs = {k: saved.get(k) for k in mine}
        if state.get("schedule") == type(self).__name__ and theirs != mine:
            raise FrostlineError(f"this checkpoint was written by LayerwiseSampling({_args(theirs)}), this schedule "
                                 f"is LayerwiseSampling({_args(mine)}); build it with the checkpoint's arguments")
        super().load_state_dict(state)

    # -- internals ----------------------------------------------------------------------------------------------
    def _resolve(self, model: nn.Module) -> list[list[str]]:
        groups = repeated_blocks(model) if self._group_specs is None else super()._resolve(model)
        if self.n_active > len(groups):
            raise FrostlineError(f"n_active={self.n_active} but the model has {len(groups)} blocks "
                                 f"({_module_span(groups)}); choose n_active <= {len(groups)}")
        if self.recompute_frozen:
            for i, names in enumerate(groups):
                path = _common_module(names)
                held = {f"{path}.{n}" if path else n for n, _ in model.get_submodule(path).named_parameters()}
                if not path or held != set(names):
                    raise FrostlineError(f"recompute_frozen=True recomputes whole blocks, but group {i} "
                                         f"({', '.join(names[:2])}{', ...' if len(names) > 2 else ''}) is not all "
                                         f"the parameters of one module (their deepest common module, "
                                         f"{path or 'the model'}, holds {len(held)}); pass groups that are "
                                         "modules, or recompute_frozen=False")
        return groups

    def _recompute(self, model: nn.Module) -> None:
        """Frozen blocks recompute in backward, active ones run plain (they need their activations anyway)."""
        from ..lean import recompute

        active = set(self._active)
        for i, names in enumerate(self.groups):
            recompute(model.get_submodule(_common_module(names)), i not in active)

    def _claim(self, model: nn.Module) -> int:
        """The blocks are the schedule's, found or given (the base class calls this at the first step and at a
        restore): refuse partially frozen tensors in them, take over what the user froze; the number taken."""
        names = [n for g in self.groups for n in g]
        partials = partials_by_name(model)
        partial = [n for n in names if n in partials]
        if partial:
            raise FrostlineError(f"{len(partial)} tensor(s) inside the blocks are partially frozen "
                                 f"({', '.join(partial[:3])}); LayerwiseSampling freezes and unfreezes blocks whole, "
                                 "which would drop their masks. Leave them out with groups=[...], or unfreeze them")
        params = dict(model.named_parameters())
        adopted = [n for n in names if n in params and not params[n].requires_grad and n not in self._mine]
        if adopted:
            log.warning("LayerwiseSampling owns its blocks: %d parameter(s) frozen before it started (%s%s) will "
                        "train whenever their block is sampled. HINT: pass groups=[...] without them to keep "
                        "them frozen", len(adopted), ", ".join(adopted[:3]), ", ..." if len(adopted) > 3 else "")
            self._mine |= set(adopted)
        return len(adopted)

    def _held(self, model: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, dict[str, Any]]:
        params = dict(model.named_parameters())
        blocks = [n for g in self._groups for n in g] if self._groups is not None else list(params)
        return {n: optimizer.state[params[n]] for n in blocks if n in params and params[n] in optimizer.state}

    def _park(self, model: nn.Module, optimizer: torch.optim.Optimizer, held: dict[str, dict[str, Any]],
              frozen: list[str], unfrozen: list[str]) -> None:
        params = dict(model.named_parameters())
        for name in frozen:  # sync has freed this state on the device; a CPU copy stays
            if held.get(name):
                self._parked[name] = {k: (v.to("cpu") if torch.is_tensor(v) else v,
                                          torch.is_tensor(v) and v.device == params[name].device)
                                      for k, v in held[name].items()}
        missing = []
        for name in unfrozen:
            saved = self._parked.pop(name, None)
            if saved is not None:
                optimizer.state[params[name]] = {k: v.to(params[name].device) if on_device else v
                                                 for k, (v, on_device) in saved.items()}
            elif name in self._expected:
                missing.append(name)
            self._expected.discard(name)
        if missing:
            log.warning("the optimizer state LayerwiseSampling parked on the CPU for %d parameter(s) (%s, ...) was "
                        "not in the optimizer checkpoint loaded, so they start fresh. HINT: load the optimizer's "
                        "state_dict after schedule.restore(model, optimizer)", len(missing), missing[0])

    def _hook(self, optimizer: torch.optim.Optimizer) -> None:
        """Make ``optimizer.state_dict()`` carry the parked state by name, and ``load_state_dict`` take it back."""
        if optimizer in self._hooked:
            return
        me = weakref.ref(self)

        def save(opt: torch.optim.Optimizer, state: dict[str, Any]) -> None:
            schedule = me()
            if schedule is not None and schedule._parked:
                parked = schedule._parked
                state[PARKED_STATE] = {n: {k: v for k, (v, _) in s.items()} for n, s in parked.items()}
                state[ON_DEVICE] = {n: [k for k, (_, on) in s.items() if on] for n, s in parked.items()}

        def load(opt: torch.optim.Optimizer, state: dict[str, Any]) -> dict[str, Any] | None:
            schedule = me()
            if schedule is None or PARKED_STATE not in state:
                return None
            state = dict(state)
            saved, on_device = state.pop(PARKED_STATE), state.pop(ON_DEVICE, {})
            schedule._parked = {n: {k: (v, k in on_device.get(n, ())) for k, v in s.items()}
                                for n, s in saved.items()}
            return state

        optimizer.register_state_dict_post_hook(save)
        optimizer.register_load_state_dict_pre_hook(load)
        self._hooked.add(optimizer)

    def _extra_state(self) -> dict[str, Any]:
        rng = base64.b64encode(self._generator.get_state().numpy().tobytes()).decode("ascii")
        return {"n_active": self.n_active, "every": self.every, "seed": self.seed, "interval": self._interval,
                "active": list(self._active), "rng": rng, "parked": sorted(self._parked)}

    def _load_extra_state(self, state: dict[str, Any]) -> None:
        self._interval, self._active = state["interval"], list(state["active"])
        self._generator.set_state(torch.frombuffer(bytearray(base64.b64decode(state["rng"])), dtype=torch.uint8))
        self._expected = set(state.get("parked", [])) - set(self._parked)


def _args(values: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v!r}" for k, v in values.items())


def _module_span(groups: list[list[str]]) -> str:
    first, last = groups[0][0].rpartition(".")[0], groups[-1][0].rpartition(".")[0]
    return first if len(groups) == 1 else f"{first} ... {last}"
