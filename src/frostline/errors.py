"""The exceptions frostline raises for user errors (never ``assert``)."""

from __future__ import annotations

__all__ = ["FrostlineError", "SelectionError", "FreezeError", "FrozenParameterChanged", "CacheError",
           "ModelLoadError"]


class FrostlineError(ValueError):
    """Base class of every error frostline raises for bad input."""


class SelectionError(FrostlineError):
    """A selector spec matched no parameter, or has a form frostline does not know."""


class FreezeError(FrostlineError):
    """A freeze request cannot be carried out as asked (bad rows, mask, dim, strategy or target)."""


class FrozenParameterChanged(AssertionError):
    """A frozen element or a buffer of a fully frozen module changed (raised by ``Snapshot.verify``/``guard``)."""


class CacheError(FrostlineError):
    """The feature cache cannot serve this model or input as asked (the message says why and what to do)."""


class ModelLoadError(FrostlineError):
    """A model named by an import path (``package.module:callable``) cannot be imported or built as asked."""
