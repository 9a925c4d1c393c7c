"""Backends by kind: a plain dict registry filled through ``register()``.

Built-in kinds are registered lazily by module path, so importing the gateway imports none of
them (and none of their heavy dependencies) until a config names the kind. Third-party kinds
call ``register("mykind", MyBackend)`` with a ``Backend`` subclass.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from gateway.backends.base import Backend
    from gateway.config import BackendSpec, GatewayConfig

_BUILTIN: dict[str, str] = {
    "openai": "gateway.backends.openai:OpenAIBackend",
    "ollama": "gateway.backends.ollama:OllamaBackend",
    "local": "gateway.backends.local:LocalBackend",
    "litellm": "gateway.backends.litellm:LiteLLMBackend",
}
_REGISTRY: dict[str, "type[Backend] | str"] = dict(_BUILTIN)


def register(kind: str, cls: "type[Backend]", *, replace: bool = False) -> None:
    """Add a backend kind. Refuses to shadow an existing kind unless ``replace`` is true."""
    from gateway.backends.base import Backend

    if not (isinstance(cls, type) and issubclass(cls, Backend)):
        raise TypeError(f"backend kind {kind!r}: {cls!r} is not a subclass of gateway.backends.base.Backend")
    if kind in _REGISTRY and not replace:
        raise ValueError(f"backend kind {kind!r} is already registered; pass replace=True to override it")
    _REGISTRY[kind] = cls


def known_kinds() -> set[str]:
    return set(_REGISTRY)


def backend_class(kind: str) -> "type[Backend]":
    entry = _REGISTRY[kind]
    if isinstance(entry, str):
        module, _, attr = entry.partition(":")
        entry = getattr(importlib.import_module(module), attr)
        _REGISTRY[kind] = entry
    return entry


def create_backend(spec: "BackendSpec", config: "GatewayConfig") -> "Backend":
    return backend_class(spec.kind)(spec, config)
