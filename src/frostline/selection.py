"""Selectors: say which parameters you mean, by name, pattern, module type, module object or predicate.

>>> import torch.nn as nn, frostline
>>> model = nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4), nn.Linear(4, 2))
>>> frostline.select(model, "0")
['0.weight', '0.bias']
>>> frostline.select(model, ["*.weight", "!2.*"])
['0.weight', '1.weight']
>>> frostline.select(model, nn.BatchNorm1d)
['1.weight', '1.bias']
"""

from __future__ import annotations

import difflib
import fnmatch
import re
from collections.abc import Callable, Sequence
from typing import Any, Union

from torch import Tensor, nn

from ._state import named_logical_parameters
from .errors import SelectionError

__all__ = ["select", "select_each", "Spec"]

Spec = Union[
    str,
    "re.Pattern[str]",
    type,
    tuple,
    nn.Module,
    Tensor,
    Callable[[str, Tensor], bool],
    Sequence["Spec"],
]


class _Universe:
    """Every logical parameter of a model, under each of its names, keyed by identity, with the indexes that
    let each spec be answered without a scan of every name (a list of exact names stays linear in the model)."""

    def __init__(self, model: nn.Module):
        self.model = model
        self.aliases = list(named_logical_parameters(model, remove_duplicate=False))
        # id -> (position in model order, canonical name): a tied tensor's first name, as named_logical_parameters
        # without duplicates gives it (derived here from the same walk)
        self.canonical: dict[int, tuple[int, str]] = {}
        for name, tensor in self.aliases:
            if id(tensor) not in self.canonical:
                self.canonical[id(tensor)] = (len(self.canonical), name)
        self.named: dict[str, set[int]] = {}  # a parameter name (canonical or an alias) -> its tensor
        self.beneath: dict[str, set[int]] = {}  # a module name -> the tensors beneath it (modules with some only)
        for name, tensor in self.aliases:
            self.named.setdefault(name, set()).add(id(tensor))
            dot = name.find(".")
            while dot != -1:
                self.beneath.setdefault(name[:dot], set()).add(id(tensor))
                dot = name.find(".", dot + 1)
        self._paths: dict[int, list[str]] | None = None

    def every(self) -> set[int]:
        return set(self.canonical)

    def paths(self, module: nn.Module) -> list[str]:
        """Every name ``module`` has in the model ("" for the model itself); empty when it is not part of it."""
        if self._paths is None:
            self._paths = {}
            for name, m in self.model.named_modules(remove_duplicate=False):
                self._paths.setdefault(id(m), []).append(name)
        return self._paths.get(id(module), [])

    def ordered(self, ids: set[int]) -> list[str]:
        return [name for _, name in sorted(self.canonical[key] for key in ids)]

    def closest(self, text: str) -> list[str]:
        module_names = [name for name, _ in self.model.named_modules(remove_duplicate=False) if name]
        pool = list(dict.fromkeys([n for n, _ in self.aliases] + module_names))
        probe = text.replace("*", "").replace("?", "")
        close = difflib.get_close_matches(probe, pool, n=5, cutoff=0.3)
        if not close:  # fall back to names sharing the longest dotted prefix
            close = sorted(pool, key=lambda n: -len(_common_prefix(n, probe)))[:5]
        return close


def _common_prefix(a: str, b: str) -> str:
    i = 0
    while i < min(len(a), len(b)) and a[i] == b[i]:
        i += 1
    return a[:i]


def _by_name(universe: _Universe, matches: Callable[[str], bool]) -> set[int]:
    """Parameters whose full name matches, or that live beneath a module whose name matches."""
    hit: set[int] = set()
    for index in (universe.named, universe.beneath):
        for name, ids in index.items():
            if matches(name):
                hit |= ids
    return hit


def _by_exact_name(universe: _Universe, name: str) -> set[int]:
    """:func:`_by_name` for a glob without wildcards (it matches only itself): two lookups instead of a scan."""
    return universe.named.get(name, set()) | universe.beneath.get(name, set())


def _beneath(universe: _Universe, roots: list[nn.Module]) -> set[int]:
    hit: set[int] = set()
    for root in roots:
        for path in universe.paths(root):
            hit |= universe.every() if path == "" else universe.beneath.get(path, set())
    return hit


def _match(universe: _Universe, spec: Any) -> set[int]:  # Any: whatever the user passed, checked here
    if isinstance(spec, str):
        if spec.startswith("!"):
            raise SelectionError(f"exclusion {spec!r} needs a list beside what it excludes from, e.g. ['*', {spec!r}]")
        if _GLOB.search(spec):
            hit = _by_name(universe, lambda name: fnmatch.fnmatchcase(name, spec))
        else:  # a plain name: fnmatch would match it only to itself
            hit = _by_exact_name(universe, spec)
        what = f"pattern {spec!r}"
        empty = [] if hit else [f"{n} ({type(m).__name__})" for n, m in universe.model.named_modules()
                                if n and fnmatch.fnmatchcase(n, spec) and not any(True for _ in m.parameters())]
        if empty:
            raise SelectionError(f"{what} matches only modules without parameters: {', '.join(empty[:5])}; "
                                 "there is nothing to freeze there (buffers of frozen norms are handled with them)")
    elif isinstance(spec, re.Pattern):
        hit = _by_name(universe, lambda name: spec.fullmatch(name) is not None)
        what, spec = f"regex {spec.pattern!r}", spec.pattern
    elif isinstance(spec, type) or (isinstance(spec, tuple) and spec and all(isinstance(t, type) for t in spec)):
        roots = [m for m in universe.model.modules() if isinstance(m, spec)]
        hit = _beneath(universe, roots)
        names = spec.__name__ if isinstance(spec, type) else ", ".join(t.__name__ for t in spec)
        if not hit:
            kinds = sorted({type(m).__name__ for m in universe.model.modules() if any(True for _ in m.parameters(False))})
            raise SelectionError(f"no module of type {names} with parameters in the model; module types with "
                                 f"parameters: {', '.join(kinds[:12])}")
        return hit
    elif isinstance(spec, nn.Module):
        hit = _beneath(universe, [spec])
        if not hit:
            raise SelectionError(f"module {type(spec).__name__} is not part of the model, or has no parameters; "
                                 "pass a submodule of the model (e.g. model.fc)")
        return hit
    elif isinstance(spec, Tensor):
        if id(spec) not in universe.canonical:
            raise SelectionError("the tensor given is not a parameter of the model (membership is by identity)")
        return {id(spec)}
    elif callable(spec):
        hit = {id(t) for n, t in universe.aliases if spec(n, t)}
        if not hit:
            raise SelectionError(f"predicate {getattr(spec, '__name__', spec)!r} matched no parameter")
        return hit
    elif isinstance(spec, (list, tuple, set, frozenset)):
        return _match_list(universe, list(spec))
    else:
        raise SelectionError(f"cannot select with a {type(spec).__name__}; use a glob string, a list of them, a "
                             "compiled regex, a module class, a module, a parameter or a (name, param) -> bool callable")
    if not hit:
        advice = ""
        if what.startswith("pattern") and _looks_like_regex(universe, spec):
            advice = f"; this looks like a regular expression; pass re.compile(r'{spec}') to match by regex"
        raise SelectionError(f"{what} matches no parameter; closest names: {', '.join(universe.closest(spec))}"
                             f"{advice}")
    return hit


_GLOB = re.compile(r"[*?[]")  # what makes fnmatch more than string equality

# Regex syntax a glob never needs: parameter names hold no backslash, and fnmatch has no anchors, groups,
# alternation or repetition counts.
_REGEX_ONLY = re.compile(r"\\|[+^$(){}|]")


def _looks_like_regex(universe: _Universe, spec: str) -> bool:
    """True when a glob that matched nothing reads as a regex: regex-only syntax, or as a regex it would match."""
    if _REGEX_ONLY.search(spec):
        return True
    try:
        pattern = re.compile(spec)
    except re.error:
        return False
    return bool(_by_name(universe, lambda name: pattern.fullmatch(name) is not None))


def _match_list(universe: _Universe, specs: list) -> set[int]:
    if not specs:
        raise SelectionError("an empty list selects nothing; use '*' for every parameter")
    include = [s for s in specs if not (isinstance(s, str) and s.startswith("!"))]
    exclude = [s[1:] for s in specs if isinstance(s, str) and s.startswith("!")]
    hit: set[int] = set()
    if include:
        for spec in include:
            hit |= _match(universe, spec)
    else:
        hit = universe.every()
    for spec in exclude:
        hit -= _match(universe, spec)
    if not hit:
        raise SelectionError(f"{specs!r} excludes everything it includes; nothing is left to select")
    return hit


def select(model: nn.Module, spec: Spec = "*") -> list[str]:
    """Return the names of the parameters that ``spec`` selects, in model order, each parameter once.

    Args:
        model (nn.Module): the model to select from.
        spec: one of
            - a glob over full dotted parameter names, anchored (``"encoder.layer.*"``, ``"*.bias"``); a glob that
              matches a module name selects every parameter beneath it (``"layer1"`` means ``layer1.*``);
            - a compiled regex, matched in full against parameter and module names;
            - a module class or tuple of classes (every parameter of such modules, e.g. ``nn.BatchNorm2d``);
            - a module object of the model (``model.fc``), or a parameter tensor of it (by identity);
            - a callable ``(name, param) -> bool``;
            - a list of any of these: their union, minus entries written ``"!pattern"``.

    Tied parameters are one parameter: selected once, under their first name. Partially frozen tensors are
    selected under their original name. Membership is by identity, never by value.

    Returns:
        list[str]: canonical parameter names.

    Raises:
        SelectionError: when a spec (or an entry of a list) matches nothing; the message names up to five
            closest real names, and suggests ``re.compile`` when a glob that matched nothing reads as a regex.

    Example:
        >>> import torch.nn as nn, frostline
        >>> model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
        >>> frostline.select(model, ["*", "!0.bias"])
        ['0.weight', '2.weight', '2.bias']
        >>> frostline.select(model, "3.weight")
        Traceback (most recent call last):
        ...
        frostline.errors.SelectionError: pattern '3.weight' matches no parameter; closest names: 2.weight, 0.weight
    """
    universe = _Universe(model)
    return universe.ordered(_match(universe, spec))


def select_each(model: nn.Module, specs: Sequence[Spec]) -> list[list[str]]:
    """``[select(model, spec) for spec in specs]``, with one walk of the model for all of them.

    For callers that select many groups at once (a schedule's blocks): each :func:`select` walks the whole model,
    so selecting every block of a deep model one by one costs the number of blocks times the model.

    Example:
        >>> import torch.nn as nn
        >>> from frostline.selection import select_each
        >>> model = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 2))
        >>> select_each(model, ["0", model[1]])
        [['0.weight', '0.bias'], ['1.weight', '1.bias']]
    """
    universe = _Universe(model)
    return [universe.ordered(_match(universe, spec)) for spec in specs]

