"""delta: only the trainable rows or elements are a Parameter; the original Parameter stops requiring grad.

The trainable values live in ``_frostline_trainable_<name>`` (the trainable slices along ``dim``, or a 1-D vector of
the trainable elements in row-major order, with their indices in a buffer), so an optimizer holds state for them
alone: a fraction ``f`` trainable costs ``f`` of the dense optimizer state plus 8 bytes of index per trainable
slice or element. The original Parameter keeps its name, identity and shape, and holds the effective values:
frostline writes the trainable values into it after every optimizer step (``index_copy_`` of the trainable part
only), and is the truth between steps: an in-place write to it (``nn.init``, ``.data.copy_``, ``mul_`` under
``no_grad``) takes effect for frozen and trainable elements alike, since the trainable storage is re-read from it
before every step (one gather of the trainable part; ``.data`` writes leave no version trace to test instead).

Forward uses the original Parameter through a view whose backward hands the trainable part of the gradient to the
trainable Parameter, so forward costs nothing extra. For an Embedding's token rows the backward never builds the
table-sized gradient either: it accumulates the output gradient of the tokens whose rows train, into the trainable
rows plus one sink row for every frozen token (no host sync, no data-dependent shapes). For ``sparse=True``
that gradient is sparse, as the Embedding's own is, so ``torch.optim.SparseAdam`` trains the trainable rows.

A tied Parameter (an input embedding and its LM head: one tensor, several modules) is served on every module that
uses it, each through its own op, and all feed the one trainable Parameter (their gradients accumulate there):
an Embedding's token rows as above, a Linear's output rows as split computes them (the frozen rows' weight
gradient is never formed), other layouts through the gradient-routing view. So gradient and optimizer state are
the trainable rows' alone. Every such module must be an ``nn.Embedding`` or ``nn.Linear`` running its class's own
forward: what another forward does with the tensor cannot be routed.

Under FSDP2 (``fully_shard`` after freezing) both Parameters are sharded, and during a forward the module holds
FSDP's gathered copies instead. The strategy then follows the module's current tensors: forward merges the
trainable values into the frozen base out of place (``index_copy``, so the gradient reaches the trainable shard and
nothing else), the base is never written in the step path, and ``state_dict``/``full()`` gather what they need
(collectives: every rank calls them, as FSDP2's own ``state_dict`` requires).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, TypeGuard, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .._tensor import gathered, is_dtensor, put, take
from . import _forward
from ._base import Strategy, fsdp_managed
from ._forward import foreign_forward
from ._layout import Layout
from ._registry import register


@register
class Delta(Strategy):
    strategy = "delta"
    needs_forward = True

    @classmethod
    def why_not(cls, module: nn.Module, local: str, layout: Layout,
                tied: Sequence[tuple[str, nn.Module, str]] | bool) -> str | None:
        if tied is True:
            return "the Parameter is shared by several modules (tied), and which ones was not said"
        if tied:
            for name, alias, alias_local in [("it", module, local), *tied]:
                reason = _unroutable(alias, alias_local, layout)
                if reason is not None:
                    where = "its own module" if alias is module else name
                    return (f"the Parameter is tied (shared by several modules), and {where} is {reason}; delta "
                            "routes tied uses of nn.Embedding and nn.Linear with their class's own forward "
                            "(use 'mask')")
        if foreign_forward(module):
            return f"this {type(module).__name__} has a forward set on the instance by other code"
        if isinstance(module, nn.Embedding) and module.sparse and local == "weight" and layout.dim is None:
            return ("the Embedding has sparse=True, and its row-sparse gradient cannot be split into single "
                    "elements; freeze whole rows (rows=) or columns (rows=..., dim=1), or build it with sparse=False")
        return None

    def _setup(self, layout: Layout) -> None:
        module, self.dim = self.module, layout.dim
        index = layout.trainable_index()
        self._add_buffer("index", index)
        self.trainable = self._add_parameter("trainable", take(self.param.detach(), self.dim, index).clone())
        self.param.requires_grad_(False)
        self.param.grad = None
        self._synced = self.trainable._version
        self.owns_forward = _token_rows(module, self.local, self.dim)
        self.padding_rows: list[tuple[nn.Module, int]] = []  # per Embedding that uses the rows (tied: several)
        if self.owns_forward:
            self.padding_row = self._add_use(cast(nn.Embedding, module))  # owns_forward: an Embedding's rows

    def _add_use(self, module: nn.Embedding) -> int:
        """Make ``module``'s token-row forward possible; returns the trainable row of its padding token (or -1)."""
        index = self._get("index")
        if self._name("remap") not in self.module._buffers:  # token id -> its trainable row, or the sink row
            remap = torch.full((self.param.shape[0],), len(index), dtype=torch.int64, device=index.device)
            remap[index] = torch.arange(len(index), device=index.device)
            self._add_buffer("remap", remap)
        pad, remap = module.padding_idx, self._get("remap")
        row = int(remap[pad]) if pad is not None and int(remap[pad]) < len(index) else -1  # once, not per step
        self.padding_rows.append((module, row))
        return row

    def serve(self, module: nn.Module, local: str) -> None:
        super().serve(module, local)
        if _token_rows(module, local, self.dim):
            self._add_use(module)

    def _bind(self) -> None:
        super()._bind()
        self.param.requires_grad_(False)  # also for a Parameter someone put in our place
        self.trainable = cast(nn.Parameter, self.module._parameters[self._name("trainable")])

    def _current(self) -> tuple[nn.Parameter, nn.Parameter]:
        """What the module holds now under the tensor's name and the trainable storage's (both set while this
        strategy stores the tensor; torch types a module's Parameters as optional)."""
        params = self.module._parameters
        return cast(nn.Parameter, params[self.local]), cast(nn.Parameter, params[self._name("trainable")])

    def follows_module(self) -> bool:
        """True when the module's tensors are not ours to rebind to: FSDP2 manages the module (its shards between
        steps, its gathered copies in a forward), or something else replaced both Parameters at once (a user
        replaces one at a time, and ``load_state_dict`` rebinds at once): use what the module holds now."""
        if fsdp_managed(self.module):
            return True
        params = self.module.__dict__.get("_parameters", {})  # absent while deepcopy rebuilds the module
        return (params.get(self.local, self.param) is not self.param
                and params.get(self._name("trainable"), self.trainable) is not self.trainable)

    def check(self) -> None:
        if self.follows_module():
            if fsdp_managed(self.module):
                self.follow()  # after a step: let go of the unsharded originals (hold_shards)
            return  # no version bookkeeping and no collectives in the step path
        if self.module._parameters.get(self._name("trainable")) is not self.trainable:
            self._rebind()
        super().check()
        self.sync()

    def layout(self) -> Layout:
        index = self._get("index")
        frozen = torch.ones(self.param.shape[self.dim] if self.dim is not None else self.param.numel(),
                            dtype=torch.bool, device=index.device)
        frozen[index] = False
        return Layout(self.param.shape, frozen if self.dim is not None else frozen.view(self.param.shape), self.dim)

    def trainable_parameters(self) -> list[nn.Parameter]:
        if fsdp_managed(self.module):
            self.hold_shards()
        return [self._current()[1] if self.follows_module() else self.trainable]

    def _bind_shards(self) -> None:
        self.param, self.trainable = self._current()

    def _stepped(self) -> list[Tensor]:
        return [self.trainable]

    def full(self) -> Tensor:
        if not self.follows_module():
            return super().full()
        base, trainable = (gathered(t.detach()) for t in self._current())
        return _merged(base, trainable, self._get("index").to(base.device), self.dim)

    def before_step(self) -> None:
        if self.follows_module():  # FSDP2's shards of the two tensors do not line up: nothing to re-read
            return
        source, dim = (self.param.detach().reshape(-1), 0) if self.dim is None else (self.param.detach(), self.dim)
        with torch.no_grad():
            torch.index_select(source, dim, self._get("index"), out=self.trainable.detach())
        self._synced = self.trainable._version

    def after_step(self) -> None:
        if self.follows_module():
            return self.hold_shards() if fsdp_managed(self.module) else None  # never a collective in the step
        self._write()  # unconditionally: fused optimizers step without bumping version counters

    def sync(self, force: bool = False) -> None:
        """Write the trainable storage into the Parameter when the storage changed since frostline last did (a
        step the after-step hook did not see); otherwise the Parameter is the truth and keeps what was written
        into it. Under FSDP2 only with ``force`` (a collective)."""
        if self.follows_module():
            if force:
                self._sync_followed()
            return
        if self.trainable._version != self._synced:
            self._write()

    def _write(self) -> None:
        with torch.no_grad():
            put(self.param, self.dim, self._get("index"), self.trainable.detach())
        self._synced = self.trainable._version

    def _sync_followed(self) -> None:
        """Write the trainable values into the module's base tensor; for a DTensor shard, only its own rows."""
        base, trainable = self._current()
        with torch.no_grad():
            if not is_dtensor(base):
                put(base, self.dim, self._get("index"), gathered(trainable.detach()))
                return
            from torch.distributed.tensor import DTensor, distribute_tensor

            shard = cast(DTensor, base)
            full = self.full()  # gathers base and trainable: a collective
            mine = distribute_tensor(full, shard.device_mesh, shard.placements, src_data_rank=None)  # no comms
            shard.to_local().copy_(mine.to_local())

    def internal_values(self, full: Tensor) -> dict[str, Tensor]:
        return {self._name("trainable"): take(full, self.dim, self._get("index").to(full.device))}

    def _reload(self) -> None:
        with torch.no_grad():
            self.trainable.copy_(take(self.param.detach(), self.dim, self._get("index")))
        self._synced = self.trainable._version

    def teardown(self) -> None:
        super().teardown()
        self.param.requires_grad_(True)

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()  # a copy's version counters start afresh: keep whether storage was written
        state["_synced"] = self.trainable._version == self._synced
        return state

    def __setstate__(self, state: dict) -> None:
        synced = state.pop("_synced")
        super().__setstate__(state)
        self._synced = self.trainable._version if synced else -1  # else: write the storage at the next sync

    # -- forward ----------------------------------------------------------------------------------------------
    def forward_tensor(self) -> Tensor:
        if self.follows_module():
            base, trainable = self._current()
            return _merged(base, trainable, self._get("index"), self.dim)
        return _Route.apply(self.param, self.trainable, self._get("index"), self.dim)

    def forward(self, module: nn.Embedding, ids: Tensor) -> Tensor:
        return self._embed(module, ids, self.padding_row)

    def forward_use(self, module: nn.Module, local: str, *args: Any, **kwargs: Any) -> Tensor:
        """Tied: the forward of ``module``, one of the modules that use this Parameter (as ``local``)."""
        if not self.follows_module() and local == "weight" and self.dim == 0:
            if isinstance(module, nn.Embedding):
                (ids,) = args  # nn.Embedding's forward takes the ids alone
                return self._embed(module, ids, next(row for m, row in self.padding_rows if m is module))
            if isinstance(module, nn.Linear):
                from .split import linear_rows  # split builds on this module

                return linear_rows(self, module, *args, **kwargs)
        return _forward.swapped(module, *args, **kwargs)

    def _embed(self, module: nn.Embedding, ids: Tensor, padding_row: int) -> Tensor:
        if self.follows_module():
            return F.embedding(ids, self.forward_tensor(), module.padding_idx, None, 2.0, module.scale_grad_by_freq)
        if not (torch.is_grad_enabled() and self.trainable.requires_grad):
            return F.embedding(ids, self.param, module.padding_idx, None, 2.0, module.scale_grad_by_freq)
        return _EmbeddingRows.apply(ids, self.param, self.trainable, self._get("remap"), padding_row,
                                    module.scale_grad_by_freq, module.sparse)


def _token_rows(module: nn.Module, local: str, dim: int | None) -> TypeGuard[nn.Embedding]:
    """Whether ``module.<local>`` along ``dim`` are an Embedding's token rows, run by nn.Embedding's own forward."""
    return (isinstance(module, nn.Embedding) and type(module).forward is nn.Embedding.forward and local == "weight"
            and dim == 0)


def _unroutable(module: nn.Module, local: str, layout: Layout) -> str | None:
    """Why delta cannot serve a tied use, ``module.<local>``, with its own op; None when it can."""
    kind = next((c for c in (nn.Embedding, nn.Linear) if isinstance(module, c)), None)
    if kind is None or type(module).forward is not kind.forward:
        return f"a {type(module).__name__} that runs its own forward"
    if foreign_forward(module):
        return f"a {type(module).__name__} with a forward set on the instance by other code"
    if kind is nn.Embedding and module.max_norm is not None:
        return f"an Embedding(max_norm={module.max_norm}), which rescales rows in place during forward"
    if kind is nn.Embedding and module.sparse and layout.dim is None:
        return "an Embedding with sparse=True, whose row-sparse gradient cannot be split into single elements"
    return None


def _merged(base: Tensor, trainable: Tensor, index: Tensor, dim: int | None) -> Tensor:
    """The effective tensor, out of place: ``base`` with ``trainable`` at ``index`` (differentiable in both)."""
    if dim is None:
        return base.reshape(-1).index_copy(0, index, trainable.reshape(-1)).view_as(base)
    return base.index_copy(dim, index, trainable)


class _Route(torch.autograd.Function):
    """Forward: the Parameter as it is (it holds the effective values). Backward: its gradient's trainable part."""

    @staticmethod
    def forward(ctx, base: Tensor, trainable: Tensor, index: Tensor, dim: int | None) -> Tensor:
        ctx.save_for_backward(index)
        ctx.dim = dim
        return base.view_as(base)

    @staticmethod
    def backward(ctx, grad: Tensor):
        (index,) = ctx.saved_tensors
        return None, take(grad, ctx.dim, index), None, None


class _EmbeddingRows(torch.autograd.Function):
    """``F.embedding`` over the whole table, with a gradient for the trainable rows only (sparse when asked)."""

    @staticmethod
    def forward(ctx, ids: Tensor, weight: Tensor, trainable: Tensor, remap: Tensor, padding_row: int,
                scale_grad_by_freq: bool, sparse: bool) -> Tensor:
        ctx.save_for_backward(ids, remap)
        ctx.rows, ctx.padding_row, ctx.scale, ctx.sparse = trainable.shape[0], padding_row, scale_grad_by_freq, sparse
        return F.embedding(ids, weight, None, None, 2.0, scale_grad_by_freq)

    @staticmethod
    def backward(ctx, grad: Tensor):
        ids, remap = ctx.saved_tensors
        rows = remap[ids]
        if not ctx.sparse:
            rows = torch.ops.aten.embedding_dense_backward(grad, rows, ctx.rows + 1, ctx.padding_row, ctx.scale)
            return None, None, rows[: ctx.rows], None, None, None, None
        sink = ctx.rows  # frozen tokens and the padding token go to the sink row, which the sparse backward drops
        if ctx.padding_row >= 0:
            rows = rows.masked_fill(rows == ctx.padding_row, sink)
        rows = torch.ops.aten.embedding_sparse_backward(grad, rows, sink + 1, sink, ctx.scale)
        shape = (ctx.rows, *rows.shape[1:])
        grad_rows = torch.sparse_coo_tensor(rows._indices(), rows._values(), shape, check_invariants=False)
        return None, None, grad_rows, None, None, None, None
