"""Backends: the harness's simulation and the real toolchains, behind one small interface.

One registry, name -> :class:`~harness.backends.base.Backend` subclass, so adding a toolchain is one
module and its tests (see ``docs/backends.md``). Importing this package is cheap: toolchains
import their wheels only when a backend is prepared.
"""

from __future__ import annotations

from harness.backends.base import Backend, BackendError, TensorMap
from harness.errors import ConfigError

_REGISTRY: dict[str, type[Backend]] = {}


def register_backend(cls: type[Backend]) -> type[Backend]:
    """Class decorator: make ``cls`` available as ``get_backend(cls.name)``."""
    name = getattr(cls, "name", None)
    if not isinstance(name, str) or not name:
        raise TypeError(f"{cls.__qualname__} needs a non-empty class attribute 'name' to be registered")
    if name in _REGISTRY and _REGISTRY[name] is not cls:
        raise ValueError(f"backend name {name!r} is taken by {_REGISTRY[name].__qualname__}")
    _REGISTRY[name] = cls
    return cls


def backend_names() -> tuple[str, ...]:
    return tuple(sorted(_REGISTRY))


def get_backend(name: str) -> type[Backend]:
    """The backend class registered as ``name``; ConfigError listing the known names otherwise."""
    try:
        return _REGISTRY[name]
    except (KeyError, TypeError):
        raise ConfigError(f"Got backend {name!r}", expected=f"one of {', '.join(backend_names())}",
                          remedy="set [quant] backend to one of those names") from None


# Registration of the bundled backends (their modules import no toolchain at import time).
from harness.backends import simulate as _simulate  # noqa: E402,F401
from harness.backends.ncnn import backend as _ncnn  # noqa: E402,F401

__all__ = ["Backend", "BackendError", "TensorMap", "backend_names", "get_backend", "register_backend"]
