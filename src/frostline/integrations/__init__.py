"""Framework integrations: thin callbacks over :mod:`frostline.schedules`.

Importing this package imports no framework; each submodule imports its own when you first use it, as an
attribute (``frostline.integrations.lightning.FreezeCallback`` after a bare ``import frostline``) or by import:

- :mod:`frostline.integrations.lightning`: ``FreezeCallback`` for a (pytorch-)lightning ``Trainer``.
- :mod:`frostline.integrations.transformers`: ``FreezeCallback`` for a Hugging Face ``Trainer``, and name-based
  helpers for transformer models (embeddings, first layers, gradient checkpointing with frozen embeddings).

>>> import subprocess, sys
>>> code = "import sys, frostline.integrations; print('lightning' in sys.modules, 'transformers' in sys.modules)"
>>> subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout.strip()
'False False'
"""

from types import ModuleType

_FRAMEWORKS = ("lightning", "transformers")


def __getattr__(name: str) -> ModuleType:
    if name in _FRAMEWORKS:  # the framework is imported here, on first use, not with frostline
        import importlib

        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}; the integrations are "
                         f"{', '.join(_FRAMEWORKS)}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_FRAMEWORKS))
