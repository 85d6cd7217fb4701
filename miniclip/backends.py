"""Choosing the module that supplies the ops (linear, layer_norm, attention, activation).

The model code never changes between backends; a backend is a module with the same functions as
ops.py, the NumPy reference, and is tested against it. Backends are imported only when asked for, so
`import miniclip` does not pay for Numba.
"""

from __future__ import annotations

import importlib
from types import ModuleType

BACKENDS = {  # name -> module
    "numpy": "miniclip.ops",  # the reference: plain NumPy, the spec
    "numba": "miniclip.numba_ops",  # fused CPU kernels
    "cupy": "miniclip.cuda_ops",  # NVIDIA GPU: CuPy + cuBLAS + numba.cuda kernels (docs/cuda.md)
}


def get_backend(name: str, threads: int | None = None) -> ModuleType:
    """"auto" picks the fastest available: numba when it imports, else the NumPy reference."""
    if name == "auto":
        try:
            return get_backend("numba", threads)
        except ImportError:
            return get_backend("numpy", threads)
    if name not in BACKENDS:
        raise ValueError(f"unknown backend {name!r}; available: {', '.join(['auto', *BACKENDS])}")
    module = importlib.import_module(BACKENDS[name])
    if threads is not None and hasattr(module, "set_threads"):
        module.set_threads(threads)
    return module
