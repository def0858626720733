"""Name -> object registries with lazy imports and helpful errors.

Entries are "module:attribute" strings so that listing names never imports heavy modules
and a registry can name objects defined in files that import the registry themselves.
"""
from __future__ import annotations

import difflib
import importlib

from jaxnets.errors import UserError


class Registry:
    def __init__(self, kind: str, entries: dict[str, str]):
        self.kind = kind
        self._entries = dict(entries)

    def names(self) -> list[str]:
        return sorted(self._entries)

    def register(self, name: str, target: str) -> None:
        self._entries[name] = target

    def get(self, name: str):
        if name not in self._entries:
            close = difflib.get_close_matches(name, self.names(), n=3, cutoff=0.5)
            hint = f" Did you mean {', '.join(map(repr, close))}?" if close else ""
            raise UserError(
                f"Unknown {self.kind} {name!r}.{hint} Known {self.kind}s: {', '.join(self.names())}. "
                "Run `jaxnets list` to see everything that is registered."
            )
        module, attr = self._entries[name].split(":")
        return getattr(importlib.import_module(module), attr)


def lazy_module_getattr(module_name: str, exports: dict[str, str]):
    """A module-level __getattr__ that imports `exports[name]` ("module:attr") on first use."""

    def __getattr__(name: str):
        if name not in exports:
            raise AttributeError(f"module {module_name!r} has no attribute {name!r}")
        module, attr = exports[name].split(":")
        return getattr(importlib.import_module(module), attr)

    return __getattr__
