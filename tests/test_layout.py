"""The package's layout: no module imports another top-level module's private names (it asks the module that owns
the answer through that module's public functions instead)."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "frostline"


def _top(parts: list[str]) -> str:
    return parts[1] if len(parts) > 1 else ""  # ["frostline", "partial", "_base"] -> "partial"


def private_imports_across_modules(package: Path = PACKAGE) -> list[str]:
    found = []
    for path in sorted(package.rglob("*.py")):
        parts = list(path.relative_to(package.parent).with_suffix("").parts)
        here = parts[:-1] if parts[-1] == "__init__" else parts
        package_parts = here if path.name == "__init__.py" else here[:-1]
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.ImportFrom):
                continue
            if node.level:
                target = package_parts[: len(package_parts) - node.level + 1] + (node.module or "").split(".")
                target = [t for t in target if t]
            elif (node.module or "").split(".")[0] == "frostline":
                target = node.module.split(".")
            else:
                continue
            for alias in node.names:
                named = package.parent.joinpath(*target, alias.name)
                is_module = named.with_suffix(".py").exists() or named.is_dir()
                private = alias.name.startswith("_") and not alias.name.startswith("__")
                if private and not is_module and _top(target) != _top(here):
                    found.append(f"{'.'.join(here)}: from {'.'.join(target)} import {alias.name}")
    return found


def test_no_private_names_cross_top_level_modules():
    assert private_imports_across_modules() == []


def test_the_check_sees_a_private_import(tmp_path):
    (tmp_path / "frostline" / "a").mkdir(parents=True)
    (tmp_path / "frostline" / "b.py").write_text("_secret = 1\n")
    (tmp_path / "frostline" / "a" / "__init__.py").write_text("from ..b import _secret\nfrom .. import b\n")
    assert private_imports_across_modules(tmp_path / "frostline") == ["frostline.a: from frostline.b import _secret"]
