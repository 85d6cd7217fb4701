"""Backends: the modules that supply the ops the model calls, and the choice between them.

The model (model.py) never changes between backends; a backend is a module with the functions of ops.py,
the NumPy reference, and is tested against it. Backends are imported only when asked for, so
`import miniclip` does not pay for Numba (nor need it: see README "Set-up").
"""

from __future__ import annotations

import importlib
from types import ModuleType

BACKENDS = {  # name -> module
    "numpy": "miniclip.ops",  # the reference: plain NumPy, the spec
    "numba": "miniclip.backends.numba_ops",  # fused CPU kernels
    "cupy": "miniclip.backends.cuda_ops",  # NVIDIA GPU: CuPy + cuBLAS + numba.cuda kernels (docs/cuda.md)
}

# What every backend module defines: the arithmetic the model calls (linear, layer_norm, attention and, for
# return_hidden, attention_probs) and where arrays live (prepare uploads the weights once, to_device moves
# an input, to_host brings a result back as a NumPy array). `name` is what reports print.
REQUIRED = ("name", "linear", "layer_norm", "attention", "attention_probs", "prepare", "to_device", "to_host")


def get_backend(name: str, threads: int | None = None) -> ModuleType:
    """The ops module called `name`; "auto" picks the fastest available: numba when it imports, else the
    NumPy reference. `threads` sets the numba kernels' thread count."""
    if name == "auto":
        try:
            return get_backend("numba", threads)
        except ImportError:
            return get_backend("numpy", threads)
    if name not in BACKENDS:
        raise ValueError(f"unknown backend {name!r}; available: {', '.join(['auto', *BACKENDS])}")
    if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
        raise ValueError(f"threads must be a positive integer, got {threads!r}")
    module = importlib.import_module(BACKENDS[name])
    missing = [op for op in REQUIRED if not hasattr(module, op)]
    if missing:
        raise TypeError(f"backend {name!r} ({module.__name__}) does not define {', '.join(missing)}")
    if threads is not None and hasattr(module, "set_threads"):
        module.set_threads(threads)
    return module
