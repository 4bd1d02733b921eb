"""How a :class:`~frostline.FeatureCache` finds the frozen prefix: one traced forward records the module calls
that finish before ``upto`` starts and the tensors they read (:class:`_Trace` into a :class:`_Plan`), plus the
helpers that rebuild ``upto``'s output and compare runs."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode
from torch.utils import _pytree as pytree

from .. import _patch


@dataclass
class _Out:
    """The structure, shapes and dtypes a module call returned (not its values): placeholders are built from it."""

    spec: pytree.TreeSpec
    leaves: list[tuple]  # ("rows", row shape, dtype, device) | ("tensor", shape, dtype, device) | ("value", v)
    _zeros: dict[int, Any] = field(default_factory=dict)

    @staticmethod
    def of(output: Any, batch: int) -> _Out:
        values, spec = pytree.tree_flatten(output)
        leaves: list[tuple] = []
        for v in values:
            if not isinstance(v, Tensor):
                leaves.append(("value", v))
            elif v.dim() and v.shape[0] == batch:
                leaves.append(("rows", tuple(v.shape[1:]), v.dtype, v.device))
            else:
                leaves.append(("tensor", tuple(v.shape), v.dtype, v.device))
        return _Out(spec, leaves)

    def build(self, batch: int, rows: list[Tensor] | None = None) -> Any:
        """This structure holding ``rows`` (in order, for the batched leaves), else zeros (made once per batch size:
        the suffix never reads them, which the first cached forward checks)."""
        if rows is None and batch in self._zeros:
            return self._zeros[batch]
        if rows is not None and len(self.leaves) == 1 and self.spec.is_leaf():  # one tensor: nothing to build
            return rows[0]
        it = iter(rows or [])
        values = [leaf[1] if leaf[0] == "value" else next(it) if rows is not None else
                  torch.zeros((batch, *leaf[1]) if leaf[0] == "rows" else leaf[1], dtype=leaf[2], device=leaf[3])
                  for leaf in self.leaves]
        built = pytree.tree_unflatten(values, self.spec)
        if rows is None:
            self._zeros[batch] = built
        return built


@dataclass
class _Call:
    module: nn.Module
    parent: _Call | None
    rng: list[Tensor]
    out: _Out | None = None


class _Trace(TorchFunctionMode):
    """Watches one forward: the module calls that finish before ``upto`` starts under one of its ancestors (the
    prefix's roots) and what they return, and every parameter or buffer read until ``upto`` returns."""

    def __init__(self, model: nn.Module, upto: nn.Module, batch: int, device: torch.device):
        super().__init__()
        self.upto, self.batch, self.device = upto, batch, device
        self.drew: nn.Module | None = None  # the innermost module whose call drew random numbers
        self.owner: dict[int, tuple[str, nn.Module, str, bool]] = {}
        for module_name, module in model.named_modules(remove_duplicate=False):
            for is_param, tensors in ((True, module._parameters), (False, module._buffers)):
                for local, t in tensors.items():
                    if t is not None:
                        self.owner.setdefault(id(t), (f"{module_name}.{local}".lstrip("."), module, local, is_param))
        self.read: dict[str, tuple[str, nn.Module, str, bool]] = {}
        # modules with hooks or a forward of their own before this trace adds its hooks (see _Plan)
        self.hooked = frozenset(id(m) for m in model.modules() if _hooked(m))
        self.open: list[_Call] = []
        self.done: list[_Call] = []
        self.roots: list[_Call] | None = None
        self.reading = True

    def __torch_function__(self, func: Callable[..., Any], types: Any, args: tuple = (),
                           kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        if self.reading:
            for t in pytree.tree_leaves((args, kwargs)):
                if isinstance(t, Tensor) and id(t) in self.owner:
                    entry = self.owner[id(t)]
                    self.read[entry[0]] = entry
        return func(*args, **kwargs)

    def pre(self, module: nn.Module, args: Any) -> None:
        if module is self.upto and self.roots is None:
            ancestors = {id(c) for c in self.open}
            self.roots = [c for c in self.done if id(c.parent) in ancestors]
        self.open.append(_Call(module, self.open[-1] if self.open else None, _rng_state(self.device)))

    def post(self, module: nn.Module, args: Any, output: Any) -> None:
        call = self.open.pop()
        if self.drew is None and not _same(call.rng, _rng_state(self.device)):
            self.drew = module
        if self.roots is None:
            call.out = _Out.of(output, self.batch)
            self.done.append(call)
        if module is self.upto:
            self.reading = False


@dataclass
class _Plan:
    """How to run the model without its prefix, for one input signature."""

    roots: list[tuple[nn.Module, list[_Out]]]  # prefix modules called before upto, and what each call returned
    upto_out: _Out
    tensors: list[tuple[str, nn.Module, str, bool]]  # what the prefix owns or reads: name, owner, local, param?
    modules: list[tuple[str, nn.Module]]  # the prefix's modules
    verified: bool = False  # a cached forward matched the uncached one
    patched: Any = None  # the cache's _Patched for this plan, made once
    hooked: frozenset = frozenset()  # ids of the modules the user hooked, when traced

    def __post_init__(self) -> None:
        # typed by value Any: Parameter dicts and buffer dicts side by side (torch types them apart)
        self.dicts: list[dict[str, Any]] = [o._parameters if p else o._buffers for _, o, _, p in self.tensors]
        self.locals = [local for _, _, local, _ in self.tensors]
        # the modules whose training flag can change what the prefix computes: all but plain instances of torch
        # layers whose forward never reads it (no hook, no forward of their own when traced); read from __dict__
        matter = [m for _, m in self.modules if type(m) not in _MODE_FREE or id(m) in self.hooked]
        plain = [m for m in matter if not hasattr(type(m), "training")]  # no class-level property to honour
        self.mode_modules = plain + [m for m in matter if hasattr(type(m), "training")]
        self.mode_dicts = [m.__dict__ for m in plain]
        self.mode_others = self.mode_modules[len(plain):]


# torch.nn layers whose forward ignores self.training (not Dropout, BatchNorm, RReLU, MultiheadAttention ...)
_MODE_FREE = frozenset(getattr(nn, name) for name in (
    "Linear", "Bilinear", "Embedding", "EmbeddingBag", "LayerNorm", "GroupNorm", "RMSNorm", "Conv1d", "Conv2d",
    "Conv3d", "ConvTranspose1d", "ConvTranspose2d", "ConvTranspose3d", "ReLU", "ReLU6", "GELU", "SiLU", "Mish",
    "Tanh", "Sigmoid", "Softmax", "LogSoftmax", "LeakyReLU", "ELU", "Identity", "Flatten", "Unflatten",
    "MaxPool1d", "MaxPool2d", "MaxPool3d", "AvgPool1d", "AvgPool2d", "AvgPool3d", "AdaptiveAvgPool1d",
    "AdaptiveAvgPool2d", "AdaptiveAvgPool3d", "Sequential", "ModuleList", "ModuleDict") if hasattr(nn, name))


def _hooked(m: nn.Module) -> bool:
    """A hook or a user's instance ``forward`` may read the training flag where the layer itself does not
    (frostline's own forwards, lean or partial, compute what the class's does)."""
    return _patch.owner(m, "forward") == "user" or any((m._forward_hooks, m._forward_pre_hooks, m._backward_hooks,
                                            m._backward_pre_hooks))


def _lookup(owner: nn.Module, local: str, is_param: bool) -> Tensor | None:
    return (owner._parameters if is_param else owner._buffers).get(local)


def _rng_state(device: torch.device) -> list[Tensor]:
    states = [torch.random.get_rng_state()]
    backend = getattr(torch, device.type, None) if device.type != "cpu" else None
    if backend is not None and hasattr(backend, "get_rng_state"):
        states.append(backend.get_rng_state(device))  # generator state lives on the host: no device sync
    return states


def _same(a: list[Tensor], b: list[Tensor]) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a, b, strict=False))


def _set_rng_state(states: list[Tensor], device: torch.device) -> None:
    torch.random.set_rng_state(states[0])
    if len(states) > 1:
        getattr(torch, device.type).set_rng_state(states[1], device)


def _close(a: Any, b: Any) -> bool:
    if isinstance(a, Tensor) and isinstance(b, Tensor):
        if a.shape != b.shape or a.dtype != b.dtype:
            return False
        a, b = a.detach(), b.detach()
        return bool(torch.allclose(a, b, rtol=1e-4, atol=1e-5)) if a.is_floating_point() else bool(torch.equal(a, b))
    return isinstance(a, Tensor) == isinstance(b, Tensor) and (isinstance(a, Tensor) or a == b)
