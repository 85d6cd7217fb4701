"""The Numba backend: the ops of ops.py, fused into fewer passes over memory and run on all cores.

Same functions, same signatures, same results (to float32 rounding) as the NumPy reference in ops.py,
which stays the spec; tests/test_numba_ops.py checks every kernel against it. What changes is *how*:

- `linear` runs its own matrix product (gemm.py): the weights are packed once, on first use, into the
  micro-kernel's panel order (`prepare` wraps them as gemm.PackedWeight), each parallel task packs its rows
  of A, and a register tile written in LLVM IR does the multiply-adds. The bias and the activation or the
  residual are applied to each tile while it is in L1, as it is stored: no extra pass over the output.
  No BLAS call remains in the forward pass, so one thread pool (Numba's) runs everything.
- the activations use `exp` written as 2^n * e^r (below), which LLVM vectorizes; Numba's `math.exp`
  without Intel's SVML library is a scalar call per element and would be slower than NumPy.
- `attention` works on one (batch item, head) pair at a time, reading q, k and v in place from the
  stacked [B, T, 3D] projection and writing its [T, d] slice of the [B, T, D] output: no head split or
  merge copies, and the [T, T] scores of one head live in cache instead of a [B, H, T, T] array.

Kernels compile on first use (never at import) and are cached on disk (`cache=True`), so only the first
process on a machine pays the compilation (several seconds: one line on stderr says so).

Threads: the count follows NUMBA_NUM_THREADS, or `set_threads` (the `threads=` argument of miniclip.load).
Unless NUMBA_THREADING_LAYER is set we choose the "workqueue" layer: Numba's OpenMP layer spins between
launches, which made the model 1.7x slower when OpenBLAS's threads shared the cores with it (see
docs/performance.md, "Thread pools"). A workqueue launch costs ~0.1 ms, so tiny products and tiny attention
(a short text at batch 1) run in the calling thread instead.
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading

import numba
import numpy as np
from numba import njit, prange

from ..ops import attention_probs, to_device, to_host  # noqa: F401  (same as the reference)
from . import gemm

name = "numba"

if "NUMBA_THREADING_LAYER" not in os.environ:
    numba.config.THREADING_LAYER = "workqueue"

FASTMATH = gemm.FASTMATH  # one set of float liberties for every kernel of the backend (see gemm.py)
ACTIVATIONS = {"quick_gelu": 0, "gelu": 1}
ROWS_PER_TASK = 8  # rows of a [M, N] array handled by one parallel task (scratch buffers are per task)


_noticed = False


@contextlib.contextmanager
def _first_run(op: str):
    """Around an op's first call in this process: if compiling (or loading from Numba's cache) takes over a
    second, one line on stderr says why nothing seems to happen. Later calls cost nothing."""
    global _noticed
    if op in _started or _noticed:
        yield
        return
    _started.add(op)

    def notice():
        global _noticed
        if not _noticed:
            _noticed = True
            print("miniclip: compiling kernels, first run only (cached on disk afterwards)", file=sys.stderr,
                  flush=True)

    timer = threading.Timer(1.0, notice)
    timer.daemon = True
    timer.start()
    try:
        yield
    finally:
        timer.cancel()


_started: set[str] = set()


def set_threads(n: int) -> None:
    """Threads for the Numba kernels (at most NUMBA_NUM_THREADS, the pool's size)."""
    numba.set_num_threads(max(1, min(int(n), numba.config.NUMBA_NUM_THREADS)))


# ---------------------------------------------------------------------------------------------------
# exp, vectorizable: e^v = 2^n * e^r with n = round(v / ln 2) and r = v - n ln 2 in [-ln2/2, ln2/2].
# e^r is a degree-7 Taylor polynomial (error r^8/8! < 6e-9, below float32's rounding); 2^n is built
# directly as the bits of a float32 (exponent field n + 127), so no call to a scalar exp is needed.

LOG2E = np.float32(1.4426950408889634)
LN2_HI = np.float32(0.693359375)  # ln 2 = LN2_HI + LN2_LO, split so that n * LN2_HI is exact (Cody-Waite)
LN2_LO = np.float32(-2.12194440e-4)


@njit(fastmath=FASTMATH, cache=True)
def exp_inplace(v, bits):  # v: float32[n] (overwritten with e^v), bits: int32[>= n] scratch
    for i in range(v.shape[0]):
        x = min(max(v[i], np.float32(-87.0)), np.float32(88.0))  # e^x stays a normal float32
        n = np.floor(x * LOG2E + np.float32(0.5))
        r = x - n * LN2_HI - n * LN2_LO
        p = np.float32(1 / 5040)
        p = p * r + np.float32(1 / 720)
        p = p * r + np.float32(1 / 120)
        p = p * r + np.float32(1 / 24)
        p = p * r + np.float32(1 / 6)
        p = p * r + np.float32(0.5)
        p = p * r + np.float32(1.0)
        v[i] = p * r + np.float32(1.0)
        bits[i] = (np.int32(n) + 127) << 23
    two_n = bits.view(np.float32)  # the same bits read as floats: 2^n
    for i in range(v.shape[0]):
        v[i] *= two_n[i]


# ---------------------------------------------------------------------------------------------------
# Epilogues of linear: y = act(y + bias) or y = residual + (y + bias), in place on the GEMM output.

# erfc(z) = t exp(-z^2 + P(t)), t = 1 / (1 + z/2), z >= 0: the same Numerical Recipes fit as ops.erfc
ERFC_C = np.array([-1.26551223, 1.00002368, 0.37409196, 0.09678418, -0.18628806,
                   0.27886807, -1.13520398, 1.48851587, -0.82215223, 0.17087277], dtype=np.float32)


@njit(fastmath=FASTMATH, cache=True)
def activate(v, kind, e, t, bits):  # v: float32[n] in place; kind 0 = quick_gelu, 1 = gelu; scratch >= n
    n = v.shape[0]
    c = ERFC_C
    if kind == 0:  # quick_gelu: x * sigmoid(1.702 x) = x / (1 + e^(-1.702 x))
        for j in range(n):
            e[j] = np.float32(-1.702) * v[j]
        exp_inplace(e[:n], bits)
        for j in range(n):
            v[j] = v[j] / (np.float32(1.0) + e[j])
    else:  # gelu: x * Phi(x) = x/2 * erfc(-x / sqrt 2)
        for j in range(n):
            z = abs(v[j]) * np.float32(0.7071067811865476)
            tj = np.float32(1.0) / (np.float32(1.0) + np.float32(0.5) * z)
            p = c[9]
            for k in range(8, -1, -1):
                p = c[k] + tj * p
            t[j] = tj
            e[j] = -z * z + p
        exp_inplace(e[:n], bits)
        for j in range(n):
            erfc_abs = t[j] * e[j]  # erfc(|x| / sqrt 2)
            phi2 = erfc_abs if v[j] < 0 else np.float32(2.0) - erfc_abs  # 2 Phi(x)
            v[j] = np.float32(0.5) * v[j] * phi2


@njit(parallel=True, fastmath=FASTMATH, cache=True)
def bias_activation(y, bias, kind):  # [M, N] in place, [N], 0 = quick_gelu / 1 = gelu
    M, N = y.shape
    for task in prange((M + ROWS_PER_TASK - 1) // ROWS_PER_TASK):
        e = np.empty(N, np.float32)  # per-task scratch: exp arguments, then their exp
        t = np.empty(N, np.float32)
        bits = np.empty(N, np.int32)
        for i in range(task * ROWS_PER_TASK, min(M, (task + 1) * ROWS_PER_TASK)):
            row = y[i]
            for j in range(N):
                row[j] += bias[j]
            activate(row, kind, e, t, bits)


# ---------------------------------------------------------------------------------------------------
# linear: the packed GEMM of gemm.py, with the bias and what follows applied to each tile as it is stored.

RESIDUAL, BIAS_ONLY = 2, 3  # the epilogues after ACTIVATIONS' 0 (quick_gelu) and 1 (gelu)
MR, NR, VECTOR_WIDTH = gemm.MR, gemm.NR, gemm.VECTOR_WIDTH
# Rows of A one task packs and keeps in L2 while it walks across its weight panels (each [K, NR] panel is
# read once per task): 1 MiB, half of a 2 MiB L2 (336 rows at K = 768, 84 at K = 3072).
A_BLOCK_BYTES = 1024 * 1024
KC = 256  # depth of one pass over a panel: 256 x NR floats = 32 KiB with AVX-512, inside L1
SERIAL_GEMM_WORK = 2_000_000  # multiply-adds below which a product runs in the calling thread (launch ~0.1 ms)


@njit(fastmath=FASTMATH, cache=True)
def pack_rows(a, i_start, i_end, out):  # a[i_start:i_end] [m, K] -> out as [ceil(m / MR), K, MR]
    """A's rows in micro-panels: the MR values the micro-kernel broadcasts at step k become adjacent (one
    cache line, not MR). A ragged last panel repeats the last row; those outputs are never stored."""
    K = a.shape[1]
    for i0 in range(i_start, i_end, MR):
        base = (i0 - i_start) * K  # micro-panel (i0 - i_start) / MR, of K * MR floats
        for r in range(MR):
            row = a[min(i0 + r, i_end - 1)]
            for k in range(K):
                out[base + k * MR + r] = row[k]


@njit(fastmath=FASTMATH, cache=True)
def linear_tasks(a, a_packed, panels, bias, kind, residual, y, rows_per_task, panels_per_task, first, last):
    """Tasks first .. last-1 of y = epilogue(a @ W^T + bias), in this thread. A task is a block of rows_per_task
    rows of a [M, K] times panels_per_task panels of W ([P, K, NR]); bias is padded to P * NR. If all rows are
    one block, a_packed holds them packed already (by the caller, once for all tasks); else it is empty."""
    M, K = a.shape
    N = y.shape[1]
    P = panels.shape[0]
    n_col_tasks = (P + panels_per_task - 1) // panels_per_task
    rows_cap = (rows_per_task + MR - 1) // MR * MR
    prepacked = a_packed.size > 0
    if not prepacked:
        a_packed = np.empty(rows_cap * K, np.float32)  # the task's rows of A as [rows_cap / MR, K, MR] micro-panels
    block = np.empty(rows_cap * NR, np.float32)  # C[i_start:i_end, j0:j0 + NR] of this task, row-major
    e = np.empty(MR * NR, np.float32)  # scratch of the activations
    t = np.empty(MR * NR, np.float32)
    bits = np.empty(MR * NR, np.int32)
    packed_rows = -1
    for task in range(first, last):
        i_start = (task // n_col_tasks) * rows_per_task
        i_end = min(M, i_start + rows_per_task)
        if not prepacked and i_start != packed_rows:  # consecutive tasks share their rows: pack them once
            pack_rows(a, i_start, i_end, a_packed)
            packed_rows = i_start
        p_start = (task % n_col_tasks) * panels_per_task
        for p in range(p_start, min(P, p_start + panels_per_task)):
            j0 = p * NR
            cols = min(NR, N - j0)
            block[:] = 0.0
            for k0 in range(0, K, KC):  # KC rows of the panel (KC x NR floats) stay in L1 for all row tiles
                kc = min(KC, K - k0)
                for i0 in range(i_start, i_end, MR):
                    gemm.tile_kernel(a_packed, (i0 - i_start) * K + k0 * MR, 1, MR, MR, panels, (p * K + k0) * NR,
                                     kc, block, (i0 - i_start) * NR, VECTOR_WIDTH)
            # epilogue, on each tile while in L1: bias, then the activation or the residual, then store
            for i0 in range(i_start, i_end, MR):
                rows = min(MR, i_end - i0)
                tile = block[(i0 - i_start) * NR:(i0 - i_start + MR) * NR]
                for r in range(MR):
                    for j in range(NR):
                        tile[r * NR + j] += bias[j0 + j]
                if kind < RESIDUAL:
                    activate(tile, kind, e, t, bits)
                for r in range(rows):
                    out = y[i0 + r]
                    if kind == RESIDUAL:
                        res = residual[i0 + r]
                        for j in range(cols):
                            out[j0 + j] = res[j0 + j] + tile[r * NR + j]
                    else:
                        for j in range(cols):
                            out[j0 + j] = tile[r * NR + j]


@njit(parallel=True, fastmath=FASTMATH, cache=True)
def linear_parallel(a, a_packed, panels, bias, kind, residual, y, rows_per_task, panels_per_task, n_tasks,
                    n_chunks):
    """All n_tasks tasks, in n_chunks contiguous chunks spread over the threads (scratch allocated per chunk)."""
    for chunk in prange(n_chunks):
        linear_tasks(a, a_packed, panels, bias, kind, residual, y, rows_per_task, panels_per_task,
                     chunk * n_tasks // n_chunks, (chunk + 1) * n_tasks // n_chunks)


def prepare(params: dict) -> dict:  # {name: array} -> {name: array or PackedWeight}
    """The weights of every linear layer the model runs (q/k/v, out_proj, the MLP, the patch embedding) as
    gemm.PackedWeight, packed into the micro-kernel's panels on first use; the rest as they are. The given
    dict is not changed (the NumPy reference can keep using it)."""
    return {name: gemm.PackedWeight(w) if name.endswith(PACKED) else w for name, w in params.items()}


PACKED = (".attn.in_proj_weight", ".attn.out_proj.weight", ".mlp.c_fc.weight", ".mlp.c_proj.weight",
          "visual.conv1.weight")


def linear(x, weight, bias=None, *, act=None, residual=None):  # [..., D_in], [D_out, D_in], [D_out] -> [..., D_out]
    D_out, K = weight.shape
    a = np.ascontiguousarray(x.reshape(-1, K), dtype=np.float32)  # [M, K]
    M = a.shape[0]
    # weights the model prepared are packed once; others (the small final projections, tests) here
    panels = weight.panels if isinstance(weight, gemm.PackedWeight) else gemm.pack(weight)
    P = panels.shape[0]
    padded_bias = np.zeros(P * NR, np.float32)
    if bias is not None:
        padded_bias[:D_out] = bias
    kind = ACTIVATIONS[act] if act is not None else RESIDUAL if residual is not None else BIAS_ONLY
    res = np.ascontiguousarray(residual.reshape(-1, D_out), dtype=np.float32) if residual is not None else a[:0]
    y = np.empty((M, D_out), np.float32)
    if M == 0:
        return y.reshape(*x.shape[:-1], D_out)
    threads = numba.get_num_threads()
    rows_per_task = max(MR, min(-(-M // MR) * MR, A_BLOCK_BYTES // (4 * K) // MR * MR))
    n_row_tasks = -(-M // rows_per_task)
    panels_per_task = -(-P // max(1, -(-4 * threads // n_row_tasks)))  # >= 4 tasks per thread when possible
    n_tasks = n_row_tasks * -(-P // panels_per_task)
    with _first_run("linear"):
        if threads == 1 or M * D_out * K < SERIAL_GEMM_WORK:
            linear_tasks(a, np.empty(0, np.float32), panels, padded_bias, kind, res, y, rows_per_task,
                         panels_per_task, 0, n_tasks)
        else:
            # few rows (batch 1): every task would pack the same rows of A, so pack them once, here
            a_packed = np.empty(-(-M // MR) * MR * K, np.float32) if n_row_tasks == 1 else np.empty(0, np.float32)
            if n_row_tasks == 1:
                pack_rows(a, 0, M, a_packed)
            linear_parallel(a, a_packed, panels, padded_bias, kind, res, y, rows_per_task, panels_per_task,
                            n_tasks, min(n_tasks, 4 * threads))
    return y.reshape(*x.shape[:-1], D_out)


# ---------------------------------------------------------------------------------------------------
# LayerNorm: one pass for the mean, one for the variance, one to normalize, per row while in cache.

@njit(parallel=True, fastmath=FASTMATH, cache=True)
def layer_norm_rows(x, weight, bias, eps, out):  # [M, D], [D], [D], float, [M, D]
    M, D = x.shape
    for i in prange(M):
        row = x[i]
        mean = np.float32(0.0)
        for j in range(D):
            mean += row[j]
        mean /= D
        var = np.float32(0.0)
        for j in range(D):
            var += (row[j] - mean) * (row[j] - mean)
        rstd = np.float32(1.0) / np.sqrt(var / D + np.float32(eps))
        for j in range(D):
            out[i, j] = (row[j] - mean) * rstd * weight[j] + bias[j]


def layer_norm(x, weight, bias, eps=1e-5):  # [..., D], [D], [D] -> [..., D]
    x2 = np.ascontiguousarray(x.reshape(-1, x.shape[-1]))
    out = np.empty_like(x2)
    with _first_run("layer_norm"):
        layer_norm_rows(x2, weight, bias, eps, out)
    return out.reshape(x.shape)


# ---------------------------------------------------------------------------------------------------
# Attention, one (batch item, head) per task, in numbered passes as in ops.attention.

@njit(fastmath=FASTMATH, cache=True)
def attention_tasks(qkv, n_head, causal, out, first, last):  # [B, T, 3D], int, bool, [B, T, D] written, task range
    """(batch item, head) pairs first .. last-1 (task = b * n_head + h), one after the other, in this thread."""
    B, T, three_D = qkv.shape
    D = three_D // 3
    d = D // n_head
    Tp = (T + 7) // 8 * 8  # T rounded up: padded rows/keys are zeros, so every 4 x 4 tile is full
    scale = np.float32(1.0 / np.sqrt(d))
    src, dst = qkv.reshape(-1), out.reshape(-1)  # flat views: plain integer offsets vectorize best
    q = np.zeros((Tp, d), np.float32)  # scratch, reused by every task of this call
    k = np.zeros((Tp, d), np.float32)
    vt = np.zeros((d, Tp), np.float32)
    scores = np.empty((Tp, Tp), np.float32)
    o = np.empty((Tp, d), np.float32)
    bits = np.empty(Tp, np.int32)
    for task in range(first, last):
        b, h = task // n_head, task % n_head
        # 1. gather this head's q (pre-scaled by 1/sqrt d), k and v^T from the stacked projection into
        #    small contiguous buffers (T x d each: cheap next to the T x T x d products below)
        for t in range(T):
            row = (b * T + t) * three_D + h * d  # offset of q[t] in qkv; k[t] and v[t] follow at +D, +2D
            for c in range(d):
                q[t, c] = src[row + c] * scale
                k[t, c] = src[row + D + c]
                vt[c, t] = src[row + 2 * D + c]
        # 2. scores = q @ k^T: [Tp, Tp], with the register-tiled kernel of gemm.py
        gemm.gemm_block(q, k, scores, 0, Tp, 0, Tp)
        for i in range(T):
            s = scores[i]
            # 3. causal mask: query i sees keys 0..i only (and never the padding keys)
            n_keys = i + 1 if causal else T
            # 4. softmax over the visible keys; the others get probability exactly 0
            m = s[0]
            for j in range(1, n_keys):
                m = max(m, s[j])
            for j in range(Tp):
                s[j] = s[j] - m if j < n_keys else np.float32(-100.0)
            exp_inplace(s, bits)
            total = np.float32(0.0)
            for j in range(n_keys):
                total += s[j]
            inv = np.float32(1.0) / total
            for j in range(Tp):
                s[j] = s[j] * inv if j < n_keys else np.float32(0.0)
        # 5. out = probabilities @ v: [T, d], written straight into this head's columns of [B, T, D]
        gemm.gemm_block(scores, vt, o, 0, Tp, 0, d)
        for t in range(T):
            row = (b * T + t) * D + h * d
            for c in range(d):
                dst[row + c] = o[t, c]


@njit(parallel=True, fastmath=FASTMATH, cache=True)
def attention_heads(qkv, n_head, causal, out, n_chunks):  # [B, T, 3D], int, bool, [B, T, D] written, int
    """All B * n_head (batch item, head) pairs, in n_chunks contiguous chunks spread over the threads (each
    chunk allocates its scratch once)."""
    n_tasks = qkv.shape[0] * n_head
    n_chunks = max(1, min(n_tasks, n_chunks))
    for chunk in prange(n_chunks):
        attention_tasks(qkv, n_head, causal, out, chunk * n_tasks // n_chunks, (chunk + 1) * n_tasks // n_chunks)


# Below this many multiply-adds per product (B * heads * T^2 * d), attention runs in the calling thread: a
# parallel launch costs ~0.1 ms, more than it saves there (measured: batch-1 text, 14 tokens, 0.04 ms in
# this thread vs 0.16 ms launched on two).
SERIAL_ATTENTION_WORK = 1_000_000


def attention(qkv, n_head, causal):  # [B, T, 3D] -> [B, T, D]
    qkv = np.ascontiguousarray(qkv)
    B, T, three_D = qkv.shape
    out = np.empty((B, T, three_D // 3), np.float32)
    with _first_run("attention"):
        if B * T * T * three_D // 3 < SERIAL_ATTENTION_WORK:
            attention_tasks(qkv, n_head, causal, out, 0, B * n_head)
        else:
            attention_heads(qkv, n_head, causal, out, 4 * numba.get_num_threads())  # a few chunks per thread
    return out


def activation(x, kind):  # [...] -> [...]
    y = np.array(x, dtype=np.float32, order="C")
    y2 = y.reshape(-1, y.shape[-1]) if y.ndim else y.reshape(1, 1)
    bias_activation(y2, np.zeros(y2.shape[1], np.float32), ACTIVATIONS[kind])
    return y
