"""Griffe extension for the API reference: frostline's docstrings are written for ``help()`` and doctest, so
before mkdocstrings renders them this

- fences each doctest run (``>>>`` lines and their output) as a ``pycon`` code block, so Markdown does not read
  ``>>>`` as nested quotes;
- turns Sphinx roles (``:func:`sync```, ``:class:`~frostline.FeatureCache```) into cross-references, resolved
  the way Sphinx does (the object's class, then its module, then absolute). A role naming nothing is a warning,
  so ``mkdocs build --strict`` fails on a stale reference. An existing target that the site does not render (a
  private helper) stays plain code.
"""

from __future__ import annotations

import re
from typing import Any

import griffe

_ROLE = re.compile(r":(?:py:)?(func|meth|class|mod|attr|data|exc|obj):`(~?)([\w.]+)`")
_FENCE = re.compile(r"^\s*(```|~~~)")


def _fence_doctests(text: str) -> str:
    out: list[str] = []
    lines = text.split("\n")
    i, fenced = 0, False
    while i < len(lines):
        line = lines[i]
        if _FENCE.match(line):
            fenced = not fenced
        if fenced or not line.lstrip().startswith(">>>"):
            out.append(line)
            i += 1
            continue
        indent = line[: len(line) - len(line.lstrip())]
        out.append(f"{indent}```pycon")
        while i < len(lines) and lines[i].strip():
            out.append(lines[i])
            i += 1
        out.append(f"{indent}```")
    return "\n".join(out)


def _scopes(obj: griffe.Object) -> list[griffe.Object]:
    scopes, current = [], obj if obj.is_module or obj.is_class else obj.parent
    while current is not None:
        scopes.append(current)
        current = current.parent
    return scopes


def _final(obj: griffe.Object | griffe.Alias) -> griffe.Object | None:
    try:
        return obj.final_target if obj.is_alias else obj
    except (griffe.AliasResolutionError, griffe.CyclicAliasError):
        return None  # an import from outside frostline (torch, lightning)


def _lookup(scope: griffe.Object, dotted: str) -> str | None:
    """The path ``dotted`` names from ``scope``, following imports and inherited members; None if nothing."""
    current: griffe.Object | None = scope
    for part in dotted.split("."):
        members = current.all_members if current.is_class else current.members
        if part not in members:
            return None
        found = members[part]
        current = _final(found)
        if current is None:
            return found.target_path if found.is_alias else None
    # a re-export of a private module's object (frostline.schedules.Schedule) is documented under the public name
    return found.path if found.is_alias and _private(current.path) else current.path


def _private(path: str) -> bool:
    return any(part.startswith("_") and not part.startswith("__") for part in path.split("."))


def _resolve(loader: griffe.GriffeLoader, obj: griffe.Object, target: str) -> str | None:
    for scope in _scopes(obj):
        if (path := _lookup(scope, target)) is not None:
            return path
    head = target.partition(".")[0]
    if head in loader.modules_collection.members:
        return _lookup(loader.modules_collection.members[head], target.partition(".")[2]) if "." in target \
            else loader.modules_collection.members[head].path
    return None


class SphinxRolesAndDoctests(griffe.Extension):
    def on_package(self, *, pkg: griffe.Module, loader: griffe.GriffeLoader, **kwargs: Any) -> None:
        self._visit(pkg, loader)

    def _visit(self, obj: griffe.Object, loader: griffe.GriffeLoader) -> None:
        if obj.docstring is not None:
            obj.docstring.value = self._rewrite(obj, loader, _fence_doctests(obj.docstring.value))
        for member in obj.members.values():
            if not member.is_alias:
                self._visit(member, loader)

    def _rewrite(self, obj: griffe.Object, loader: griffe.GriffeLoader, text: str) -> str:
        def replace(match: re.Match) -> str:
            role, short, target = match.groups()
            path = _resolve(loader, obj, target)
            title = target.rpartition(".")[2] if short else target
            if path is None:
                griffe.logger.warning(f"{obj.path}: :{role}:`{target}` names nothing (no such object)")
                return f"`{title}`"
            # optional: an object that exists but that the site does not render (a private helper) stays plain
            return f'<autoref identifier="{path}" optional><code>{title}</code></autoref>'

        return _ROLE.sub(replace, text)
