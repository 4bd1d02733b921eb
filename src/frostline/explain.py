"""What freezing saves, measured per module: forward, input-gradient (dgrad) and weight-gradient (wgrad) FLOPs,
activations kept for backward, and optimizer state, beside the same model with nothing frozen.

One forward and one backward run on a copy of the model (the model itself, its buffers and gradients are left
untouched) under a dispatch mode that counts the FLOPs of every matrix multiply, convolution and attention op
(``torch.utils.flop_counter``'s formulas; elementwise ops are not counted, as is the convention). Each op is
charged to the innermost module running it: in the forward through module hooks, in the backward through a hook
on every autograd node, which remembers the module whose forward created it. A backward op is a wgrad when it
computes a parameter's gradient and a dgrad when it computes an activation's: ``convolution_backward`` says so in
its ``output_mask``; a matrix multiply in a node with both kinds of inputs is a dgrad when a parameter (or a view
or cast of one) is an operand, since only the input gradient multiplies by the weight.

>>> import torch, torch.nn as nn, frostline
>>> model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 4))
>>> _ = frostline.freeze(model, "2")
>>> e = frostline.explain(model, torch.randn(32, 8))
>>> row = e.row("2")                         # the frozen middle layer: its dgrad stays, its wgrad is gone
>>> row.forward_flops, row.dgrad_flops, row.wgrad_flops
(16384, 16384, 0)
>>> e.unfrozen_row("2").wgrad_flops
16384
"""

from __future__ import annotations

import copy
import functools
import itertools
import os
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, fields
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils import _pytree as pytree
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import flop_registry, sdpa_backward_flop_count, sdpa_flop_count

from ._state import named_logical_parameters, partials_by_name, trainable_count
from ._table import WIDTH, human_bytes, human_count, paragraph, render
from ._tensor import storage_key

__all__ = ["explain", "Explanation", "ModuleCost"]

aten = torch.ops.aten
LOSS = "(loss)"  # ops of the loss function, outside the model
MODEL = "(model)"  # the model's own forward, outside any submodule
INPUTS = "(inputs)"  # the graph that made the example inputs, when they come with one


def _cpu_sdpa(query: Tensor, key: Tensor, value: Tensor, *args: Any, out_val: Any = None, **kwargs: Any) -> int:
    return sdpa_flop_count(query.shape, key.shape, value.shape)


def _cpu_sdpa_backward(grad_out: Tensor, query: Tensor, key: Tensor, value: Tensor, *args: Any, out_val: Any = None,
                       **kwargs: Any) -> int:
    return sdpa_backward_flop_count(grad_out.shape, query.shape, key.shape, value.shape)


# torch's registry lacks the CPU flash-attention kernels that scaled_dot_product_attention dispatches to on CPU
_FORMULAS = {**flop_registry, aten._scaled_dot_product_flash_attention_for_cpu: _cpu_sdpa,
             aten._scaled_dot_product_flash_attention_for_cpu_backward: _cpu_sdpa_backward}
# ops whose output is a copy of their input: a cast or copy of a parameter is still "the weight" in a backward op
_COPIES = {aten._to_copy, aten.clone, aten.contiguous, aten._autocast_to_reduced_precision}
# autograd nodes that only reshape, view or cast their single input: an edge through them still ends at a parameter
_PASS_THROUGH = {"TBackward", "ViewBackward", "UnsafeViewBackward", "TransposeBackward", "PermuteBackward",
                 "ExpandBackward", "AsStridedBackward", "SliceBackward", "SelectBackward", "SqueezeBackward",
                 "UnsqueezeBackward", "AliasBackward", "ReshapeAliasBackward", "ToCopyBackward", "CloneBackward",
                 "NarrowBackward"}


@dataclass
class ModuleCost:
    """One module's share of a training step; FLOPs are multiply-adds x 2, bytes are bytes."""

    name: str
    forward_flops: int = 0
    dgrad_flops: int = 0
    wgrad_flops: int = 0
    activation_bytes: int = 0
    optimizer_state_bytes: int = 0

    @property
    def step_flops(self) -> int:
        return self.forward_flops + self.dgrad_flops + self.wgrad_flops

    def _add(self, other: ModuleCost) -> None:
        for f, value in zip(fields(self)[1:], _figures(other), strict=False):
            setattr(self, f.name, getattr(self, f.name) + value)


@dataclass
class Explanation:
    """Per-module costs of one training step with the model as frozen (``rows``) and with nothing frozen
    (``unfrozen``); ``str()`` renders a table."""

    rows: list[ModuleCost]
    unfrozen: list[ModuleCost]
    notes: list[str] = field(default_factory=list)
    kept: dict[str, str] = field(default_factory=dict)  # module -> what its lean form keeps for backward
    status: dict[str, str] = field(default_factory=dict)  # module -> "frozen", "trainable" or "partial"

    @property
    def total(self) -> ModuleCost:
        return _sum(self.rows, "total")

    @property
    def unfrozen_total(self) -> ModuleCost:
        return _sum(self.unfrozen, "unfrozen")

    @property
    def flop_ratio(self) -> float:
        """Step FLOPs as frozen / with nothing frozen: the best-case step-time ratio."""
        full = self.unfrozen_total.step_flops
        return self.total.step_flops / full if full else 1.0

    def row(self, name: str) -> ModuleCost:
        """The frozen model's row for module ``name`` (``"(model)"``: the root's own ops)."""
        return _find(self.rows, name)

    def unfrozen_row(self, name: str) -> ModuleCost:
        return _find(self.unfrozen, name)

    def __str__(self) -> str:
        return self.table()

    def table(self, width: int | None = WIDTH) -> str:
        """The table in at most ``width`` columns: long cells wrap and what lean modules keep goes to a legend
        under it (None: one line per module, everything inline)."""
        before = {r.name: r for r in self.unfrozen}
        body = [[r.name, human_count(r.forward_flops), human_count(r.dgrad_flops), human_count(r.wgrad_flops),
                 human_bytes(r.activation_bytes), human_bytes(r.optimizer_state_bytes), _removed(r, before[r.name])]
                for r in self.rows]
        footer = [[t.name, human_count(t.forward_flops), human_count(t.dgrad_flops), human_count(t.wgrad_flops),
                   human_bytes(t.activation_bytes), human_bytes(t.optimizer_state_bytes), ""]
                  for t in (self.total, self.unfrozen_total)]
        headers = ["module", "forward", "dgrad", "wgrad", "activations", "optimizer state", "removed by freezing"]
        legend: list[str] = []
        if self.kept:  # lean frozen modules: say what they keep instead of their input
            keys = {what: f"[{i}]" for i, what in enumerate(dict.fromkeys(self.kept.values()), 1)}
            headers.append("lean: kept for backward" if width is None else "lean")

            def lean_cell(name: str) -> str:  # what the module keeps, inline or as its legend key
                what = self.kept.get(name)
                return "" if what is None else what if width is None else keys[what]

            body = [line + [lean_cell(r.name)] for line, r in zip(body, self.rows, strict=False)]
            footer = [line + [""] for line in footer]
            if width is not None:
                legend = ["lean: kept for backward", *(paragraph(f"{key} {what}", width, "    ")
                                                       for what, key in keys.items())]
        ratio = self.flop_ratio
        lines = [render(headers, body, footer=footer, width=width,
                        title="one training step, FLOPs and bytes measured (frozen as given vs nothing frozen)"),
                 *legend,
                 f"step FLOPs {ratio:.3f} of unfrozen: at best {1 / ratio:.2f}x faster" if ratio else
                 "step FLOPs: nothing left to compute", *(paragraph(n, width, "  ") for n in self.notes)]
        return "\n".join(lines)

    def plot(self, path: str | os.PathLike | None = None) -> Any:
        """Draw per module the forward, dgrad and wgrad FLOPs and the bytes kept for backward and of optimizer
        state, as frozen (filled bars) beside nothing frozen (outlines), frozen modules shaded; save it to
        ``path`` (PNG, PDF, SVG by its suffix) when given. Needs matplotlib.

        Returns:
            matplotlib.figure.Figure: the figure (not registered with pyplot: nothing to close).

        Example:
            >>> import torch, torch.nn as nn, frostline
            >>> model = frostline.freeze(nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4)), "0")
            >>> fig = frostline.explain(model, torch.randn(32, 8)).plot()    # or .plot("explain.png")
            >>> [t.get_text() for t in fig.axes[0].get_yticklabels()]
            ['0', '1', '2']
        """
        return _plot(self, path)


def _figures(row: ModuleCost) -> list[int]:
    return [getattr(row, f.name) for f in fields(row)[1:]]


def _find(rows: list[ModuleCost], name: str) -> ModuleCost:
    for r in rows:
        if r.name == name:
            return r
    raise KeyError(f"no row {name!r}; rows: {', '.join(r.name for r in rows[:8])}{', ...' if len(rows) > 8 else ''}")


def _sum(rows: Iterable[ModuleCost], name: str) -> ModuleCost:
    total = ModuleCost(name)
    for r in rows:
        total._add(r)
    return total


def _removed(now: ModuleCost, before: ModuleCost) -> str:
    parts = [(label, b - a, fmt) for label, a, b, fmt in (
        ("dgrad", now.dgrad_flops, before.dgrad_flops, human_count),
        ("wgrad", now.wgrad_flops, before.wgrad_flops, human_count),
        ("act.", now.activation_bytes, before.activation_bytes, human_bytes),
        ("opt.", now.optimizer_state_bytes, before.optimizer_state_bytes, human_bytes))]
    return ", ".join(f"{label} {fmt(d)}" for label, d, fmt in parts if d > 0) or "-"


_KINDS = (("forward", "forward_flops", "#4c72b0"), ("dgrad", "dgrad_flops", "#dd8452"),
          ("wgrad", "wgrad_flops", "#55a868"))
_MEMORY = (("kept for backward", "activation_bytes", "#8172b3"),
           ("optimizer state", "optimizer_state_bytes", "#937860"))
_SHADE = {"frozen": "#d6e6f5", "partial": "#edf3fa"}  # frost blue behind frozen modules, paler for partial ones
_LABEL = {"frozen": "#1f5a96", "partial": "#4a7fb5", "trainable": "black"}


def _tick(value: float, fmt: Callable[[float], str]) -> str:
    """A short axis label: 10K, 4 KiB, 1.5M (human_count and human_bytes without trailing zeros)."""
    text = fmt(value)
    found = re.fullmatch(r"([-\d.]+)\s*(\D*)", text)
    if found is None:
        return text
    return f"{float(found[1]):g}" + (f" {found[2]}" if " " in text else found[2])


def _plot(e: Explanation, path: str | os.PathLike | None) -> Any:
    try:
        from matplotlib.figure import Figure
        from matplotlib.patches import Patch
        from matplotlib.ticker import FuncFormatter, LogLocator, NullLocator
    except ImportError as exc:
        raise ImportError("Explanation.plot needs matplotlib: pip install matplotlib "
                          "(or pip install 'frostline[bench]')") from exc
    n = len(e.rows)
    fig = Figure(figsize=(14, 2.2 + 0.34 * n), layout="constrained")
    flops_ax, memory_ax = fig.subplots(1, 2, sharey=True, width_ratios=(3, 2))
    for ax, series, fmt, what in ((flops_ax, _KINDS, human_count, "FLOPs"),
                                  (memory_ax, _MEMORY, human_bytes, "bytes")):
        height = 0.8 / len(series)
        for j, (label, attr, colour) in enumerate(series):
            y = [i - 0.4 + height * (j + 0.5) for i in range(n)]
            ax.barh(y, [getattr(r, attr) for r in e.rows], height, color=colour, label=f"{label}, as frozen")
            ax.barh(y, [getattr(r, attr) for r in e.unfrozen], height, facecolor="none", edgecolor=colour,
                    linewidth=1.2, zorder=3, label=f"{label}, nothing frozen")  # outline: what freezing removed
        values = [getattr(r, a) for _, a, _ in series for r in (*e.rows, *e.unfrozen)]
        positive = [v for v in values if v > 0]
        if positive and max(positive) > 100 * min(positive):  # spans of decades: log, else small bars vanish
            ax.set_xscale("log")
            ax.set_xlim(left=min(positive) / 2, right=max(positive) * 1.5)
            if what == "bytes":  # ticks at powers of 2 (1 KiB, 16 KiB, ...) rather than at 9.8 KiB
                ax.xaxis.set_major_locator(LogLocator(base=2, numticks=7))
            ax.xaxis.set_minor_locator(NullLocator())
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _, fmt=fmt: _tick(v, fmt)))
        ax.set_xlabel(f"{what} per module, one training step" + (" (log scale)" if ax.get_xscale() == "log" else ""))
        ax.grid(axis="x", alpha=0.3)
        for i, r in enumerate(e.rows):
            if e.status.get(r.name) in _SHADE:
                ax.axhspan(i - 0.5, i + 0.5, color=_SHADE[e.status[r.name]], zorder=0, linewidth=0)
    flops_ax.set_title("compute: forward, input gradient (dgrad), weight gradient (wgrad)", loc="left")
    memory_ax.set_title("memory: kept for backward, optimizer state", loc="left")
    flops_ax.set_yticks(range(n), [r.name for r in e.rows], fontsize=8)
    flops_ax.set_ylim(n - 0.5, -0.5)  # first module at the top
    for tick, r in zip(flops_ax.get_yticklabels(), e.rows, strict=False):
        tick.set_color(_LABEL.get(e.status.get(r.name, ""), "#555555"))
    kinds = [Patch(color=c, label=label) for label, _, c in (*_KINDS, *_MEMORY)]
    looks = [Patch(facecolor="#777777", label="filled: as frozen"),
             Patch(facecolor="none", edgecolor="#777777", label="outline: nothing frozen"),
             Patch(facecolor=_SHADE["frozen"], edgecolor=_LABEL["frozen"], label="frozen module"),
             Patch(facecolor=_SHADE["partial"], edgecolor=_LABEL["partial"], label="partially frozen module"),
             Patch(facecolor="white", edgecolor="black", label="trainable module")]
    if not any(e.status.get(r.name) == "partial" for r in e.rows):
        del looks[3]
    handles = [h for pair in itertools.zip_longest(kinds, looks) for h in pair if h is not None]
    fig.legend(handles=handles, loc="outside lower center", ncols=len(kinds), fontsize=9,
               frameon=False)  # filled column by column: the kinds on the first line
    ratio = e.flop_ratio
    fig.suptitle(f"one training step as frozen vs nothing frozen: step FLOPs {ratio:.3f} of unfrozen"
                 + (f", at best {1 / ratio:.2f}x faster" if ratio else ""), fontsize=12)
    if path is not None:
        fig.savefig(path, dpi=110)
    return fig


# ---------------------------------------------------------------------------------------------------------------
def _nodes(tensors: Iterable[Any]) -> list:
    return [t.grad_fn for t in tensors if isinstance(t, Tensor) and t.grad_fn is not None]


class _Meter(TorchDispatchMode):
    """Counts FLOPs per (module, kind) and saved-tensor bytes per module during one forward and backward."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.costs: dict[str, ModuleCost] = {}
        self.stack = [MODEL]
        self.calls = [MODEL]
        self.backward: tuple[str, frozenset[str]] | None = None  # (module, edge kinds) of the node running
        self.in_backward = False
        self.node_module: dict[Any, str] = {}
        self.param_ids = {id(p) for p in model.parameters()}
        self.weights = {k[0] for p in model.parameters() if (k := storage_key(p))}  # params, and copies of them
        self.resident = self.weights | {k[0] for b in model.buffers() if (k := storage_key(b))}
        self.saved: set[int] = set()
        self.keep_alive: list[Tensor] = []  # copies of weights, so their storage is not reused while we look

    def cost(self, name: str) -> ModuleCost:
        return self.costs.setdefault(name, ModuleCost(name))

    # -- which module runs ----------------------------------------------------------------------------------------
    def claim(self, roots: Iterable[Any], name: str) -> None:
        """Charge the not yet claimed autograd nodes reachable from ``roots`` to module ``name``."""
        todo = [n for n in roots if n is not None and n not in self.node_module]
        while todo:
            node = todo.pop()
            if node in self.node_module:
                continue
            self.node_module[node] = name
            todo.extend(fn for fn, _ in node.next_functions if fn is not None and fn not in self.node_module)

    def enter(self, name: str, module: nn.Module, args: tuple, kwargs: dict) -> None:
        self.claim(_nodes(pytree.tree_leaves((args, kwargs))), self.stack[-1])  # the caller's glue before the call
        self.stack.append(name)
        self.calls.append(name)

    def leave(self, module: nn.Module, args: tuple, kwargs: dict, output: Any) -> None:
        self.claim(_nodes(pytree.tree_leaves(output)), self.stack.pop())

    def arm_backward(self) -> None:
        """Hook every claimed node so backward ops are charged to the module that created the node."""
        self.in_backward = True
        for node, name in self.node_module.items():
            kinds = frozenset(self.edge_kind(fn) for fn, _ in node.next_functions if fn is not None)
            node.register_prehook(functools.partial(self._node_starts, (name, kinds)))
            node.register_hook(self._node_ends)

    def _node_starts(self, what: tuple[str, frozenset[str]], grad_outputs: Any) -> None:
        self.backward = what

    def _node_ends(self, grad_inputs: Any, grad_outputs: Any) -> None:
        self.backward = None

    def edge_kind(self, fn: Any) -> str:  # fn: an autograd graph node, or None
        """"param" when a gradient edge ends, through views and casts, at a model parameter; else "act"."""
        while fn is not None:
            name = type(fn).__name__
            if name == "AccumulateGrad":
                return "param" if id(fn.variable) in self.param_ids else "act"
            nxt = [f for f, _ in fn.next_functions if f is not None]
            if name.rstrip("0123456789") not in _PASS_THROUGH or len(nxt) != 1:
                return "act"
            fn = nxt[0]
        return "act"

    # -- what each op costs ---------------------------------------------------------------------------------------
    def pack(self, t: Tensor) -> Tensor:
        key = storage_key(t)
        if key is not None and key[0] not in self.resident and key[0] not in self.saved:
            self.saved.add(key[0])
            self.cost(self.stack[-1]).activation_bytes += key[1]
        return t

    def __torch_dispatch__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        packet = func._overloadpacket
        if not self.in_backward:
            if packet in _COPIES and self._touches_weight(args):
                copies = [t for t in pytree.tree_leaves(out) if isinstance(t, Tensor)]
                self.keep_alive.extend(copies)
                self.weights |= {k[0] for t in copies if (k := storage_key(t))}
            if packet in _FORMULAS:
                self.cost(self.stack[-1]).forward_flops += _FORMULAS[packet](*args, **kwargs, out_val=out)
            return out
        if packet not in _FORMULAS or self.backward is None:
            return out
        name, kinds = self.backward
        row = self.cost(name)
        if packet is aten.convolution_backward:  # output_mask = (input grad, weight grad, bias grad)
            mask = list(args[10])
            for slot, attr in ((0, "dgrad_flops"), (1, "wgrad_flops")):
                if mask[slot]:
                    only = [i == slot for i in range(3)]
                    flops = _FORMULAS[packet](*args[:10], only, *args[11:], **kwargs, out_val=out)
                    setattr(row, attr, getattr(row, attr) + flops)
            return out
        flops = _FORMULAS[packet](*args, **kwargs, out_val=out)
        if kinds == {"param"} or (len(kinds) == 2 and not self._touches_weight(args)):
            row.wgrad_flops += flops
        else:
            row.dgrad_flops += flops
        return out

    def _touches_weight(self, args: tuple) -> bool:
        return any(isinstance(t, Tensor) and (k := storage_key(t)) is not None and k[0] in self.weights
                   for t in pytree.tree_leaves(args))


def _default_loss(output: Any) -> Tensor:
    leaves = [t for t in pytree.tree_leaves(output) if isinstance(t, Tensor) and t.is_floating_point()]
    if not leaves:
        raise TypeError(f"the model returned no floating-point tensor ({type(output).__name__}); pass loss_fn= "
                        "to turn its output into a scalar loss")
    return sum((t.float().sum() for t in leaves[1:]), leaves[0].float().sum())


def _measure(model: nn.Module, args: tuple, kwargs: dict,
             loss_fn: Callable[[Any], Tensor]) -> tuple[dict[str, ModuleCost], list[str]]:
    """Costs per module of one forward and backward, and the modules in the order they were called."""
    meter = _Meter(model)
    meter.claim(_nodes(pytree.tree_leaves((args, kwargs))), INPUTS)
    handles = []
    try:
        for name, module in model.named_modules():
            if name:
                handles.append(module.register_forward_pre_hook(functools.partial(meter.enter, name),
                                                                with_kwargs=True))
                handles.append(module.register_forward_hook(meter.leave, with_kwargs=True, always_call=True))
        with meter, torch.autograd.graph.saved_tensors_hooks(meter.pack, lambda t: t):
            output = model(*args, **kwargs)
            meter.claim(_nodes(pytree.tree_leaves(output)), MODEL)
            meter.stack[-1] = LOSS
            loss = loss_fn(output)
            if not isinstance(loss, Tensor) or loss.numel() != 1:
                raise TypeError(f"loss_fn must return a scalar tensor, got {type(loss).__name__}"
                                f"{'' if not isinstance(loss, Tensor) else f' of shape {tuple(loss.shape)}'}")
            meter.claim(_nodes([loss]), LOSS)
            meter.arm_backward()
            if loss.requires_grad:
                loss.backward()
    finally:
        for handle in handles:
            handle.remove()
    return meter.costs, list(dict.fromkeys(meter.calls))


def _state_layout(optimizer: torch.optim.Optimizer) -> list[tuple[bool, int, int]] | None:
    """How the optimizer's state for one parameter is made: ``(param-shaped, element size, bytes)`` per tensor."""
    for param, state in optimizer.state.items():
        tensors = [v for v in state.values() if torch.is_tensor(v)]
        return [(v.shape == param.shape, v.element_size(), v.numel() * v.element_size()) for v in tensors]
    return None


def _optimizer_bytes(model: nn.Module, optimizer: torch.optim.Optimizer | None,
                     layout: list[tuple[bool, int, int]] | None) -> dict[str, int]:
    """Optimizer-state bytes per owning module: measured in ``optimizer``; without one, what an optimizer with
    this per-parameter ``layout`` holds for the trainable parameters (default: AdamW's two moments)."""
    out: dict[str, int] = {}
    for name, param in model.named_parameters():
        owner = name.rpartition(".")[0] or MODEL
        if optimizer is not None:
            state = optimizer.state.get(param, {})
            size = sum(v.numel() * v.element_size() for v in state.values() if torch.is_tensor(v))
        elif not param.requires_grad:
            size = 0
        elif layout is not None:
            size = sum(param.numel() * es if shaped else nbytes for shaped, es, nbytes in layout)
        else:
            size = 2 * param.numel() * param.element_size()
        out[owner] = out.get(owner, 0) + size
    return out


def explain(model: nn.Module, *example_inputs: Any, loss_fn: Callable[[Any], Tensor] | None = None,
            optimizer: torch.optim.Optimizer | None = None, **example_kwargs: Any) -> Explanation:
    """Measure one training step of ``model`` per module, as frozen now and with nothing frozen.

    Runs ``loss_fn(model(*example_inputs, **example_kwargs)).backward()`` once on a deep copy of the model and once
    on a deep copy with everything unfrozen; the model itself (parameters, gradients, buffers) is not touched.

    Args:
        model (nn.Module): the model, frozen as you train it (train or eval mode as you train it).
        *example_inputs: a representative batch; FLOPs and activation bytes scale with it.
        loss_fn: turns the output into a scalar loss (default: the sum of every floating-point output tensor).
        optimizer: report the bytes of state it holds per module (take one step first); without it, report what
            AdamW would hold: two moments per trainable element. The unfrozen figure scales the measured bytes per
            trainable element to every element.
        **example_kwargs: keyword inputs of the model (``attention_mask=...``).

    Returns:
        Explanation: ``.rows`` (one :class:`ModuleCost` per module that ran ops or owns parameters, in the order
        they ran; ``"(model)"`` is the root's own ops, ``"(loss)"`` the loss function's), ``.unfrozen``, ``.total``,
        ``.unfrozen_total``, ``.flop_ratio``, ``.kept`` (what each lean frozen module keeps for backward, see
        :mod:`frostline.lean`); ``str()`` is a table.

    Raises:
        TypeError: ``loss_fn`` did not return a scalar tensor, or the output holds no floating-point tensor.

    Example:
        >>> import torch, frostline
        >>> from frostline.models import seed_cnn
        >>> model = frostline.freeze(seed_cnn(), ["0", "2"])       # stem and first block: a frozen prefix
        >>> e = frostline.explain(model, torch.randn(2, 3, 32, 32))
        >>> e.row("2.0").dgrad_flops, e.row("2.0").wgrad_flops, e.row("2.0").activation_bytes
        (0, 0, 0)
        >>> e.flop_ratio < 1
        True
    """
    from .freeze import unfreeze

    loss_fn = loss_fn or _default_loss
    frozen_copy = copy.deepcopy(model)
    costs, calls = _measure(frozen_copy, example_inputs, example_kwargs, loss_fn)
    unfrozen_copy = unfreeze(copy.deepcopy(model)) if any(True for _ in model.parameters()) else frozen_copy
    full_costs, full_calls = _measure(unfrozen_copy, example_inputs, example_kwargs, loss_fn)

    notes: list[str] = []
    opt_now = _optimizer_bytes(model, optimizer, None)
    layout = None if optimizer is None else _state_layout(optimizer)
    if optimizer is None:
        notes.append("optimizer state: what AdamW would hold, 2 moments per trainable element")
    elif layout is None:
        notes.append(f"the {type(optimizer).__name__} holds no state yet (take a step first): it shows 0 bytes; "
                     "unfrozen: what AdamW would hold")
    else:
        notes.append(f"optimizer state measured in the {type(optimizer).__name__}; unfrozen: the same state per "
                     "parameter for every parameter")
    opt_full = _optimizer_bytes(unfrozen_copy, None, layout)

    order = list(dict.fromkeys([*calls, *full_calls, *costs, *full_costs, *opt_full]))
    order = [n for n in order if n != LOSS] + ([LOSS] if LOSS in order else [])
    rows, unfrozen = [], []
    for name in order:
        now, full = costs.get(name, ModuleCost(name)), full_costs.get(name, ModuleCost(name))
        now.optimizer_state_bytes, full.optimizer_state_bytes = opt_now.get(name, 0), opt_full.get(name, 0)
        if not any(_figures(now) + _figures(full)):  # containers that only call their children
            continue
        rows.append(now)
        unfrozen.append(full)
    from .lean import keeps

    kept = {name: what for name, module in model.named_modules() if (what := keeps(module)) is not None}
    return Explanation(rows, unfrozen, notes, kept, _status(model))


def _status(model: nn.Module) -> dict[str, str]:
    """Per module: "frozen", "trainable" or "partial", by all its parameters; a module without any takes its
    nearest ancestor's (a ReLU inside a frozen block is frozen)."""
    counts: dict[str, list[int]] = {}
    partials = partials_by_name(model)
    for name, tensor in named_logical_parameters(model):
        trained = trainable_count(tensor, partials.get(name))
        parts = name.split(".")[:-1]
        for owner in [".".join(parts[:k]) for k in range(len(parts) + 1)]:
            count = counts.setdefault(owner or MODEL, [0, 0])
            count[0] += trained
            count[1] += tensor.numel()
    status = {owner: "frozen" if trained == 0 else "trainable" if trained == total else "partial"
              for owner, (trained, total) in counts.items()}
    for name, _ in model.named_modules():
        ancestor = name
        while ancestor and name not in status:
            ancestor = ancestor.rpartition(".")[0]
            if (ancestor or MODEL) in status:
                status[name] = status[ancestor or MODEL]
    return status
