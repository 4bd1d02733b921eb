"""Choose what trains from the weights themselves: Spectrum (Hartford et al. 2024, arXiv 2406.06623).

Spectrum ranks the weight matrices of each *kind* (``model.layers.*.self_attn.q_proj.weight``: the name with
its layer indices replaced by ``*``) by the signal-to-noise ratio of their singular values, and trains the top
fraction of each kind. As in the authors' code (cognitivecomputations/spectrum), for a matrix of shape ``n x m``
with singular values ``s`` (:func:`singular_values`):

- noise scale ``sigma = IQR(s) / 1.349`` (1.349: the interquartile range of a standard normal; robust to spikes);
- Marchenko-Pastur upper edge ``sigma * (1 + sqrt(beta))``, ``beta = min(n, m) / max(n, m)``;
- ``snr = sum(s above the edge) / sum(s at or below it)`` (the denominator 1 when nothing lies below), divided
  by the largest singular value as the authors' code does (so the score also falls as a matrix's scale grows;
  the matrices of one kind usually share a scale).

Only matrices (2-D parameters) are ranked: biases and norms are not, nor 3-D fused expert tensors. Parameters
without a layer index (token embedding, LM head, final norm) are each a kind of one and so are chosen only at
``fraction=1``; Spectrum's scripts train embeddings and LM head too: add them to the list (or only their used
rows, :func:`frostline.train_token_rows`).

Cost: one symmetric eigensolve per ranked matrix, on the device the weights live on; kinds of one are not scored.
A 1.1B-parameter Llama-style model (hidden 2048, 16 layers, MLP 8192, vocab 32000, float32) took 6 minutes on 2
busy CPU cores (4 minutes of CPU time; 112 matrices; ``python benchmarks/llm_memory.py --case spectrum``).

>>> import torch, torch.nn as nn, frostline
>>> _ = torch.manual_seed(0)
>>> blocks = nn.ModuleList(nn.ModuleDict({"attn": nn.Linear(32, 32), "mlp": nn.Linear(32, 64)}) for _ in range(4))
>>> low_rank = torch.randn(32, 4) @ torch.randn(4, 32) / 32
>>> with torch.no_grad():  # block 2's attention becomes low-rank structure plus a little noise
...     _ = blocks[2]["attn"].weight.mul_(0.01).add_(low_rank)
>>> frostline.spectrum(blocks, 0.25)  # one of four per kind
['0.mlp.weight', '2.attn.weight']
>>> frostline.unfreeze(frostline.freeze(blocks), frostline.spectrum(blocks, 0.5)) is blocks
True
"""

from __future__ import annotations

import math
import re

import torch
from torch import Tensor, nn

from ._state import named_logical_parameters
from .selection import Spec, select

__all__ = ["spectrum", "snr", "kind", "singular_values"]

_INDEX = re.compile(r"(?<=\.)\d+(?=\.|$)|^\d+(?=\.|$)")


def kind(name: str) -> str:
    """The kind of a parameter: its name with every layer index (a dotted component of digits) replaced by ``*``.

    Example:
        >>> from frostline.spectrum import kind
        >>> kind("model.layers.12.self_attn.q_proj.weight")
        'model.layers.*.self_attn.q_proj.weight'
    """
    return _INDEX.sub("*", name)


def singular_values(weight: Tensor) -> Tensor:
    """The singular values of a matrix, descending, float64: square roots of the eigenvalues of its smaller Gram
    matrix (``W W^T`` or ``W^T W``), formed in float64.

    They agree with ``torch.linalg.svdvals`` in float32 to about 1e-5 of the largest and, measured on CPU, cost
    15-70% of its time (a wide 2048 x 8192 matrix is svdvals' slow case); this is one product and one symmetric
    eigensolve of the smaller side. Squaring loses the smallest singular values below ~1e-8 of the largest,
    which the score below cannot see.

    Example:
        >>> import torch
        >>> from frostline.spectrum import singular_values
        >>> w = torch.randn(30, 50, generator=torch.Generator().manual_seed(0))
        >>> torch.allclose(singular_values(w), torch.linalg.svdvals(w.double()))
        True
    """
    x = weight.detach().to(torch.float64)
    gram = x @ x.T if x.shape[0] <= x.shape[1] else x.T @ x
    return torch.linalg.eigvalsh(gram).clamp_min(0).sqrt().flip(0)


def snr(weight: Tensor) -> float:
    """Spectrum's score of one matrix: the signal-to-noise ratio of its singular values against the
    Marchenko-Pastur edge, over its largest singular value (see the module docstring). 0 for a zero matrix.

    Example:
        >>> import torch
        >>> from frostline.spectrum import snr
        >>> g = torch.Generator().manual_seed(0)
        >>> noise = torch.randn(64, 64, generator=g)
        >>> low_rank = torch.randn(64, 4, generator=g) @ torch.randn(4, 64, generator=g)
        >>> snr(noise) < snr(low_rank + 0.1 * noise)
        True
    """
    if weight.dim() != 2:
        raise ValueError(f"snr scores a matrix (2-D tensor), got shape {tuple(weight.shape)}")
    s = singular_values(weight)
    top = float(s[0])  # once per matrix: this is an analysis, not a training step
    if top == 0.0 or not math.isfinite(top):
        return 0.0
    q75, q25 = torch.quantile(s, s.new_tensor([0.75, 0.25])).tolist()
    n, m = weight.shape
    edge = (q75 - q25) / 1.349 * (1 + math.sqrt(min(n, m) / max(n, m)))
    signal = s[s > edge].sum()
    below = s <= edge
    noise = s[below].sum() if bool(below.any()) else s.new_tensor(1.0)
    return float(signal / noise) / top if float(noise) > 0 else math.inf


def spectrum(model: nn.Module, fraction: float = 0.25, spec: Spec = "*") -> list[str]:
    """The names of the weight matrices Spectrum would train: the top ``fraction`` of each kind by :func:`snr`.

    Args:
        model (nn.Module): the model (partially frozen tensors are scored on their effective values).
        fraction (float): in (0, 1]; each kind of ``n`` matrices keeps ``floor(n * fraction)`` of them (the
            authors' rounding), the highest scores first, ties broken by model order.
        spec: which parameters to consider (see :func:`frostline.select`); default all.

    Returns:
        list[str]: parameter names in model order; a spec for ``freeze``/``unfreeze``. Deterministic: the
        same weights give the same list.

    Raises:
        ValueError: ``fraction`` outside (0, 1], or it keeps no matrix of any kind (the message gives the least
            fraction that keeps one).

    Example:
        >>> import torch.nn as nn, frostline
        >>> model = nn.Sequential(nn.Linear(16, 16), nn.Linear(16, 16))
        >>> frostline.spectrum(model, 1.0)       # kinds of one: chosen only at fraction 1
        ['0.weight', '1.weight']
    """
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0 < fraction <= 1:
        raise ValueError(f"fraction must be a number in (0, 1] (the share of each kind to train), got {fraction!r}")
    wanted = set(select(model, spec))
    tensors = dict(named_logical_parameters(model))
    order = {name: position for position, name in enumerate(tensors)}
    kinds: dict[str, list[tuple[int, str]]] = {}
    for name, tensor in tensors.items():
        if name in wanted and tensor.dim() == 2:
            kinds.setdefault(kind(name), []).append((order[name], name))
    chosen: list[str] = []
    for members in kinds.values():
        keep = math.floor(len(members) * fraction + 1e-9)
        if 0 < keep < len(members):  # scores matter only when some of the kind are chosen and some not
            ranked = sorted((-snr(tensors[name]), position, name) for position, name in members)
            chosen += [name for *_, name in ranked[:keep]]
        else:
            chosen += [name for _, name in members[:keep]]
    if not chosen:
        if not kinds:
            raise ValueError("spec selects no weight matrix (2-D parameter) to rank")
        largest = max(len(m) for m in kinds.values())
        raise ValueError(f"fraction={fraction} keeps no matrix: the largest kind has {largest} matrices, so a "
                         f"fraction of at least 1/{largest} = {1 / largest:.3g} keeps one of each such kind")
    return sorted(chosen, key=order.__getitem__)
