"""Choosing the module that supplies the ops (linear, layer_norm, attention, activation).

The model code never changes between backends; a backend is a module with the same functions as
ops.py, the NumPy reference, and is tested against it.
"""

from __future__ import annotations

from types import ModuleType

from . import ops

BACKENDS = {"numpy": ops}


def get_backend(name: str) -> ModuleType:
    """"numpy" is the reference; "auto" picks the fastest available (today: the reference)."""
    if name == "auto":
        return ops
    if name not in BACKENDS:
        raise ValueError(f"unknown backend {name!r}; available: {', '.join(['auto', *BACKENDS])}")
    return BACKENDS[name]
