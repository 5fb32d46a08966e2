"""Model registry: one small entry function per variant, looked up by name (the timm pattern)."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

__all__ = ["is_model", "list_models", "model_entrypoint", "register_model"]

_ENTRYPOINTS: dict[str, Callable] = {}
F = TypeVar("F", bound=Callable)


def register_model(fn: F) -> F:
    """Register ``fn`` under its function name; it builds the variant from ``num_classes`` and overrides."""
    if fn.__name__ in _ENTRYPOINTS:
        raise ValueError(f"model {fn.__name__!r} is registered twice")
    _ENTRYPOINTS[fn.__name__] = fn
    return fn


def list_models() -> list[str]:
    """Registered model names, sorted."""
    return sorted(_ENTRYPOINTS)


def is_model(name: str) -> bool:
    return name in _ENTRYPOINTS


def model_entrypoint(name: str) -> Callable:
    """The entry function of a registered model; unknown names raise ``ValueError`` listing the known ones."""
    if name not in _ENTRYPOINTS:
        raise ValueError(f"unknown model {name!r}; registered models: {list_models()}")
    return _ENTRYPOINTS[name]
