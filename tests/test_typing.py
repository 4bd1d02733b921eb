"""The public API is fully typed: every function, method and class in ``__all__`` of frostline and of its public
modules annotates every parameter and its return (mypy's ``--disallow-untyped-defs`` rule: an ``__init__`` with
annotated parameters may leave out ``-> None``). mypy itself (``mypy src/frostline``) checks that the annotations
are right; this test keeps new public names from arriving without them."""

from __future__ import annotations

import importlib
import inspect
import pkgutil

import pytest

import frostline

_OPTIONAL = ("lightning", "transformers")  # integrations whose framework may be absent


def _public_modules() -> list[str]:
    names = ["frostline"]
    for info in pkgutil.walk_packages(frostline.__path__, "frostline."):
        if not any(part.startswith("_") for part in info.name.split(".")[1:]):
            names.append(info.name)
    return names


def _untyped(qualname: str, fn: object, method: bool) -> list[str]:
    fn = inspect.unwrap(fn)
    if not inspect.isfunction(fn) or not fn.__code__.co_filename.endswith(".py"):  # generated (dataclass, ...)
        return []
    params = list(inspect.signature(fn).parameters.values())
    if method and params and params[0].name in ("self", "cls", "_cls"):
        params = params[1:]
    missing = [f"{qualname}: parameter {p.name}" for p in params if p.name not in fn.__annotations__]
    implied_none = fn.__name__ == "__init__" and params and not missing
    if "return" not in fn.__annotations__ and not implied_none:
        missing.append(f"{qualname}: return")
    return missing


def _untyped_class(qualname: str, cls: type) -> list[str]:
    missing = []
    for name, member in vars(cls).items():
        if name.startswith("_") and name not in ("__init__", "__new__", "__call__"):
            continue
        if isinstance(member, (staticmethod, classmethod)):
            missing += _untyped(f"{qualname}.{name}", member.__func__,
                                isinstance(member, classmethod) or name == "__new__")
        elif isinstance(member, property):
            missing += [m for f in (member.fget, member.fset) if f is not None
                        for m in _untyped(f"{qualname}.{name}", f, True)]
        elif inspect.isfunction(member):
            missing += _untyped(f"{qualname}.{name}", member, True)
    return missing


def test_public_api_is_fully_annotated():
    missing: list[str] = []
    for module_name in _public_modules():
        try:
            module = importlib.import_module(module_name)
        except ImportError:
            if module_name.rpartition(".")[2] in _OPTIONAL:
                continue
            raise
        for name in getattr(module, "__all__", []):
            obj = getattr(module, name)
            if getattr(obj, "__module__", "").split(".")[0] != "frostline":
                continue
            if inspect.isclass(obj):
                missing += _untyped_class(f"{module_name}.{name}", obj)
            elif inspect.isfunction(obj):
                missing += _untyped(f"{module_name}.{name}", obj, False)
    assert not missing, "public names without full annotations:\n" + "\n".join(sorted(set(missing)))


@pytest.mark.parametrize("source", ["def f(x, y: int) -> int: ...", "def f(x: int): ..."])
def test_the_check_finds_a_missing_annotation(source):
    namespace: dict = {}
    exec(compile(source, "example.py", "exec"), namespace)
    assert _untyped("f", namespace["f"], False)
