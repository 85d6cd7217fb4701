"""Matrix products for the Numba backend: BLAS, or a GEMM written in Numba to show how one is made fast.

CLIP spends about 70% of its time in C = A @ W^T with A [M, K] activations and W [N, K] weights stored
row-major, [out, in] as PyTorch keeps them. Both operands are then contiguous along K, so each output is
a dot product of two contiguous rows, and the kernel below is built around that:

1. Register tile: `tile_4x4` computes a 4 x 4 block of C at once. Its 16 running sums stay in registers
   for the whole K loop; each step loads 4 values of A and 4 of W and does 16 multiply-adds, so arithmetic,
   not memory, is the limit. LLVM vectorizes the K loop (8 or 16 k's per instruction) because we allow
   it to reorder the sums (fastmath "reassoc"), which is the only deviation from a naive dot product.
2. Cache blocking: a task owns a block of MB rows of A and NB rows of W. The 4 rows of A in use stay in
   L1 while the tile walks across the NB rows of W, which stay in L2 (64 rows x 768 x 4 B = 192 KiB).
3. Threads: the (row block, column block) tasks are independent, so `prange` spreads them on the cores.

Real BLAS libraries go further (packing panels into the exact order the micro-kernel reads, hand-written
assembly, 512-bit registers, prefetching) and reach 85-95% of the FMA peak. This kernel, which LLVM
compiles with 256-bit vectors, runs CLIP's large products as fast as OpenBLAS's AVX2 kernel and half as
fast as its AVX-512 one, and the small ones of batch 1 at 70-110% of it (docs/performance.md).
`matmul_nt` therefore uses BLAS unless the Numba kernel measured clearly faster on this machine (a BLAS
stuck on a slow kernel): decided once, stored in a small cache file, and overridable with
MINICLIP_GEMM=blas|numba. With few rows (batch 1), the BLAS route computes the transposed product W A^T
and transposes it back, which OpenBLAS runs 1.2-1.5x faster (`blas_matmul_nt`).
"""

from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path

import numba
import numpy as np
from numba import njit, prange

from ..store import cache_dir

FASTMATH = {"reassoc", "contract", "nsz", "arcp"}
MB, NB = 64, 64  # rows of A and of W per parallel task (cache blocking)


@njit(fastmath=FASTMATH, cache=True, inline="always")
def tile_4x4(a, w, c, i0, j0, K):  # c[i0:i0+4, j0:j0+4] = a[i0:i0+4] @ w[j0:j0+4].T
    a0, a1, a2, a3 = a[i0], a[i0 + 1], a[i0 + 2], a[i0 + 3]
    w0, w1, w2, w3 = w[j0], w[j0 + 1], w[j0 + 2], w[j0 + 3]
    s00 = s01 = s02 = s03 = s10 = s11 = s12 = s13 = np.float32(0.0)
    s20 = s21 = s22 = s23 = s30 = s31 = s32 = s33 = np.float32(0.0)
    for k in range(K):
        x0, x1, x2, x3 = a0[k], a1[k], a2[k], a3[k]
        y0, y1, y2, y3 = w0[k], w1[k], w2[k], w3[k]
        s00 += x0 * y0; s01 += x0 * y1; s02 += x0 * y2; s03 += x0 * y3  # noqa: E702
        s10 += x1 * y0; s11 += x1 * y1; s12 += x1 * y2; s13 += x1 * y3  # noqa: E702
        s20 += x2 * y0; s21 += x2 * y1; s22 += x2 * y2; s23 += x2 * y3  # noqa: E702
        s30 += x3 * y0; s31 += x3 * y1; s32 += x3 * y2; s33 += x3 * y3  # noqa: E702
    c[i0, j0], c[i0, j0 + 1], c[i0, j0 + 2], c[i0, j0 + 3] = s00, s01, s02, s03
    c[i0 + 1, j0], c[i0 + 1, j0 + 1], c[i0 + 1, j0 + 2], c[i0 + 1, j0 + 3] = s10, s11, s12, s13
    c[i0 + 2, j0], c[i0 + 2, j0 + 1], c[i0 + 2, j0 + 2], c[i0 + 2, j0 + 3] = s20, s21, s22, s23
    c[i0 + 3, j0], c[i0 + 3, j0 + 1], c[i0 + 3, j0 + 2], c[i0 + 3, j0 + 3] = s30, s31, s32, s33


@njit(fastmath=FASTMATH, cache=True, inline="always")
def dot(x, y, K):  # one output at the ragged edges (M or N not a multiple of 4)
    s = np.float32(0.0)
    for k in range(K):
        s += x[k] * y[k]
    return s


@njit(fastmath=FASTMATH, cache=True)
def gemm_block(a, w, c, i_start, i_end, j_start, j_end):  # c[i_start:i_end, j_start:j_end] = a[...] @ w[...].T
    """One cache block: 4 x 4 tiles, then the ragged edges one output at a time. Also used, whole, for the
    small per-head products of the attention kernel."""
    K = a.shape[1]
    i_full, j_full = i_start + (i_end - i_start) // 4 * 4, j_start + (j_end - j_start) // 4 * 4
    for i0 in range(i_start, i_full, 4):
        for j0 in range(j_start, j_full, 4):
            tile_4x4(a, w, c, i0, j0, K)
    for i in range(i_start, i_end):
        for j in range(j_full if i < i_full else j_start, j_end):
            c[i, j] = dot(a[i], w[j], K)


@njit(parallel=True, fastmath=FASTMATH, cache=True)
def gemm_nt(a, w, c):  # [M, K], [N, K], [M, N] written: c = a @ w.T
    M, N = a.shape[0], w.shape[0]
    n_col_blocks = (N + NB - 1) // NB
    for task in prange(((M + MB - 1) // MB) * n_col_blocks):  # independent blocks of c, one per task
        i_start, j_start = (task // n_col_blocks) * MB, (task % n_col_blocks) * NB
        gemm_block(a, w, c, i_start, min(M, i_start + MB), j_start, min(N, j_start + NB))


def numba_matmul_nt(a: np.ndarray, w: np.ndarray) -> np.ndarray:  # [M, K], [N, K] -> [M, N]
    c = np.empty((a.shape[0], w.shape[0]), np.float32)
    gemm_nt(np.ascontiguousarray(a), np.ascontiguousarray(w), c)
    return c


SMALL_M = 64  # up to this many rows of A, BLAS computes the transposed product (see blas_matmul_nt)
TB = 16  # side of the blocks that transpose_into moves at a time


@njit(fastmath=FASTMATH, cache=True)
def transpose_into(ct, c):  # [N, M], [M, N] written: c = ct.T
    """In the calling thread: it only ever moves <= SMALL_M x N floats (~0.1 ms), and a parallel launch right
    after a BLAS call was measured to stall for milliseconds while BLAS's threads still spin on the cores."""
    N, M = ct.shape
    for i0 in range(0, M, TB):
        for j0 in range(0, N, TB):
            # a TB x TB block: its TB source rows (one cache line each) stay in L1 while the rows of c
            # are written TB contiguous floats at a time
            for i in range(i0, min(M, i0 + TB)):
                for j in range(j0, min(N, j0 + TB)):
                    c[i, j] = ct[j, i]


def blas_matmul_nt(a: np.ndarray, w: np.ndarray) -> np.ndarray:  # [M, K], [N, K] -> [M, N]
    if a.shape[0] > SMALL_M:
        return a @ w.T
    # Few rows (batch 1: 50 image tokens, ~15 text tokens): OpenBLAS is 1.2-1.5x faster on the transposed
    # product C^T = W A^T (measured on CLIP's shapes: docs/performance.md, "Small products"), and
    # transposing the small result back costs far less than that.
    c = np.empty((a.shape[0], w.shape[0]), np.float32)
    transpose_into(w @ a.T, c)
    return c


IMPLEMENTATIONS = {"blas": blas_matmul_nt, "numba": numba_matmul_nt}


def _cache_file() -> Path:
    return cache_dir() / "gemm_choice.json"


def _machine_key() -> str:
    blas = np.__config__.CONFIG.get("Build Dependencies", {}).get("blas", {}) if hasattr(np, "__config__") else {}
    cpu = platform.processor() or platform.machine()
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                   if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return (f"{cpu}|numpy {np.__version__}|{blas.get('name')} {blas.get('version')}|numba {numba.__version__}"
            f"|threads {numba.get_num_threads()}|OPENBLAS_CORETYPE={os.environ.get('OPENBLAS_CORETYPE')}")


NUMBA_MARGIN = 1.25  # how much faster the Numba GEMM must measure to be chosen over BLAS (see _cached_choice)


def measure(M: int = 800, K: int = 768, N: int = 3072, repeats: int = 5) -> dict[str, float]:
    """GFLOP/s of each implementation on one of CLIP's shapes (fc1 of ViT-B at batch 16 by default): best of
    `repeats`, the two alternating so that a burst of load elsewhere on the machine hits both alike."""
    rng = np.random.default_rng(0)
    a, w = rng.standard_normal((M, K), dtype=np.float32), rng.standard_normal((N, K), dtype=np.float32)
    best = {name: np.inf for name in IMPLEMENTATIONS}
    for fn in IMPLEMENTATIONS.values():
        fn(a, w)  # warm-up (and JIT compilation)
    for _ in range(repeats):
        for name, fn in IMPLEMENTATIONS.items():
            best[name] = min(best[name], _timed(fn, a, w))
    return {name: 2 * M * K * N / seconds / 1e9 for name, seconds in best.items()}


def _timed(fn, a, w) -> float:
    t0 = time.perf_counter()
    fn(a, w)
    return time.perf_counter() - t0


_chosen: str | None = None


def choice() -> str:
    """"blas" or "numba": MINICLIP_GEMM if set, else the faster one on this machine (measured once per
    machine, then read from a cache file)."""
    global _chosen
    if _chosen is None:
        forced = os.environ.get("MINICLIP_GEMM")
        if forced:
            if forced not in IMPLEMENTATIONS:
                raise ValueError(f"MINICLIP_GEMM must be one of {list(IMPLEMENTATIONS)}, got {forced!r}")
            _chosen = forced
        else:
            _chosen = _cached_choice()
    return _chosen


def _cached_choice() -> str:
    path, key = _cache_file(), _machine_key()
    try:
        machines = json.loads(path.read_text())  # {machine key: {"choice": ..., "gflops": {...}}}
        machines = {k: v for k, v in machines.items() if isinstance(v, dict) and "choice" in v} \
            if isinstance(machines, dict) else {}
    except (OSError, ValueError):
        machines = {}
    entry = machines.get(key)
    if isinstance(entry, dict) and entry.get("choice") in IMPLEMENTATIONS:
        return entry["choice"]
    gflops = measure()
    # BLAS unless the Numba kernel is clearly faster (a BLAS stuck on a slow kernel): one measurement on a
    # shared machine is noisy, and inside the model a BLAS call also shares the cores better with the other
    # kernels than a parallel Numba one (measured: the Numba GEMM at batch 1 looked 10% faster alone but made
    # the whole model 25% slower).
    chosen = "numba" if gflops["numba"] > NUMBA_MARGIN * gflops["blas"] else "blas"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        machines[key] = {"choice": chosen, "gflops": gflops}  # one entry per machine/BLAS/environment
        tmp.write_text(json.dumps(machines, indent=1))
        os.replace(tmp, path)
    except OSError:
        pass  # a read-only home only means measuring again next time
    return chosen


def matmul_nt(a: np.ndarray, w: np.ndarray) -> np.ndarray:  # [M, K], [N, K] -> [M, N]
    return IMPLEMENTATIONS[choice()](a, w)
