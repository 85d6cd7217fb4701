"""Matrix products for the Numba backend: weights packed once into panels, and a vector micro-kernel.

CLIP spends about 80% of its time in C = A @ W^T, A [M, K] activations and W [N, K] weights ([out, in], as
PyTorch stores them). How a product like this gets fast (docs/performance.md has the measurements):

1. Register tile. Each output C[i, j] is a K-long dot product; computed one at a time, every multiply-add
   needs two loads, and memory, not arithmetic, sets the pace. The micro-kernel instead keeps an MR x NR
   block of C (6 x 32 with AVX-512) in vector registers for the whole K loop: 12 accumulators of 16 floats.
   Each step k loads one row of 32 weights (two vectors), broadcasts each of the 6 values A[i, k] to a
   whole vector, and does 12 vector fused multiply-adds: 384 multiply-adds for 2 vector loads and 6 scalar
   ones. The CPU can issue two FMAs per cycle; this keeps them busy.
2. Packing. For that inner step to read the 32 weights of step k with one contiguous load, W must be laid
   out as "panels": for each group of NR output columns, a [K, NR] block, row k holding W[j0:j0+NR, k].
   `pack` does this once (when the model first uses a weight: PackedWeight); the last panel is padded
   with zeros. BLAS libraries pack too, but they cannot know that W is a constant: OpenBLAS re-packs W on
   every call, which at batch 1 (50 image tokens, ~15 caption tokens) costs about as much as the
   arithmetic. A's rows are packed per call (numba_ops.pack_rows) into [K, MR] micro-panels, so that the MR
   values broadcast at step k are adjacent; the kernel also reads A in place (any row and k strides).
3. Explicit vectors. Numba has no vector types, and LLVM does not turn plain loops over 6 x 32 scalars into
   this register tile (tried: 11-19 GFLOP/s). `numba.extending.intrinsic` lets a Numba function emit LLVM
   IR directly, so `tile_kernel` writes the loop with `<16 x float>` values and `llvm.fma`; `tile_reference`
   below is the same loop nest in plain Numba, for reading (and for the tests).
4. Blocking and epilogue (numba_ops.linear_tasks): K is walked in blocks of KC = 256, so a [KC, NR] slice of
   a panel stays in L1 while every row tile of a task uses it; tiles accumulate into the task's [rows, NR]
   block of C, and whatever follows the product (bias, activation, residual) is applied to that block,
   still in cache, as it is written to the output.

The vector width follows the host: 16 floats with AVX-512, 8 with AVX/AVX2, else 4; on other machines LLVM
splits the vectors it cannot hold, which is slower but still correct. On Intel server CPUs LLVM prefers
256-bit vectors and would split the 512-bit ones, so unless NUMBA_CPU_FEATURES is set we append
`-prefer-256-bit` to Numba's CPU features before anything is compiled (it changes all of this process's
Numba code, which then also uses 512-bit vectors; the on-disk cache keys on the features).

The small per-head products of attention use `gemm_block`, a register-tiled kernel in plain Numba (4 x 4
outputs, no packing): at T <= 77 and d = 64 they are too small for packing to pay.
"""

from __future__ import annotations

import threading

import llvmlite.binding as llvm
import numba
import numpy as np
from llvmlite import ir
from numba import njit, prange, types
from numba.core import cgutils
from numba.extending import intrinsic

# Allow LLVM to reorder float sums (needed to vectorize reductions) and to fuse multiply-adds; NaN/inf
# semantics are kept (no "fast" flag), so bad inputs still show up as NaN.
FASTMATH = {"reassoc", "contract", "nsz", "arcp"}


def _host_features() -> str:
    features = llvm.get_host_cpu_features()
    return features.flatten() if hasattr(features, "flatten") else str(features)


def _vector_width(features: str) -> int:  # floats per vector register the host has
    flags = set(features.split(","))
    return 16 if "+avx512f" in flags else 8 if "+avx" in flags else 4


if numba.config.CPU_FEATURES is None and "+avx512f" in _host_features().split(","):
    numba.config.CPU_FEATURES = _host_features() + ",-prefer-256-bit"

VECTOR_WIDTH = _vector_width(_host_features())
MR = 6  # rows of the register tile (rows of A per micro-kernel call)
NV = 2  # vectors per row of the register tile
NR = NV * VECTOR_WIDTH  # columns of the register tile = width of a weight panel


# ---------------------------------------------------------------------------------------------------
# Packed weights

@njit(parallel=True, cache=True)
def pack_panels(w, panels):  # [N, K] -> [P, K, nr] written, P = ceil(N / nr), the tail zero-padded
    N, K = w.shape
    P, _, nr = panels.shape
    for p in prange(P):
        for k in range(K):
            for j in range(nr):
                panels[p, k, j] = w[p * nr + j, k] if p * nr + j < N else np.float32(0.0)


def pack(w: np.ndarray, nr: int = NR) -> np.ndarray:  # [N, K] -> [ceil(N / nr), K, nr]
    w = np.asarray(w, np.float32)
    panels = np.empty((-(-w.shape[0] // nr), w.shape[1], nr), np.float32)
    pack_panels(w, panels)
    return panels


class PackedWeight:
    """A linear layer's weight W [N, K] ([out, in]) in the micro-kernel's panel order, packed on first use.

    Until then it holds the checkpoint's array; packing replaces it (and returns a memory-mapped file's pages
    to the page cache), so memory never holds both for long and loading stays as fast as a memory map.
    `shape` is W's; `reshape(N, -1)` returns the same weight, so the model's conv1.weight [D, 3, P, P] ->
    [D, 3 P P] view works unchanged."""

    ndim = 2
    dtype = np.dtype(np.float32)

    def __init__(self, source: np.ndarray):
        self.shape = (int(source.shape[0]), int(np.prod(source.shape[1:], dtype=np.int64)))
        self.size = self.shape[0] * self.shape[1]
        self.source_shape = tuple(source.shape)  # the checkpoint's, e.g. conv1's [D, 3, P, P]
        self._source: np.ndarray | None = source
        self._panels: np.ndarray | None = None
        self._lock = threading.Lock()

    @property
    def panels(self) -> np.ndarray:  # [ceil(N / NR), K, NR]
        if self._panels is None:
            with self._lock:
                if self._panels is None:
                    from ..safetensors_file import release
                    source = self._source
                    self._panels = pack(source.reshape(self.shape))
                    self._source = None
                    release(source)
        return self._panels

    def take(self, indices: np.ndarray) -> np.ndarray:  # [n] flat indices into W [N, K] -> [n] values
        """W.reshape(-1)[indices], read from wherever W is now: what identifies the weights (the apps'
        model_fingerprint) without unpacking them."""
        indices = np.asarray(indices, dtype=np.int64)
        with self._lock:
            if self._panels is None:
                return np.asarray(self._source).reshape(-1)[indices]
        n, k = np.divmod(indices, self.shape[1])  # row (output) and column (input) of W
        return self._panels[n // NR, k, n % NR]  # panel p holds rows p*NR .. p*NR + NR - 1, as [K, NR]

    def reshape(self, *shape) -> PackedWeight:
        shape = tuple(shape[0]) if len(shape) == 1 and isinstance(shape[0], tuple) else shape
        if len(shape) != 2 or shape[0] != self.shape[0] or shape[1] not in (-1, self.shape[1]):
            raise ValueError(f"a packed weight {list(self.shape)} can only be viewed as [{self.shape[0]}, -1], "
                             f"not {list(shape)}")
        return self

    def __repr__(self) -> str:
        return f"PackedWeight(shape={self.shape}, packed={self._panels is not None})"


# ---------------------------------------------------------------------------------------------------
# The micro-kernel, readable version: what tile_kernel computes, as plain loops.

@njit(fastmath=FASTMATH, cache=True)
def tile_reference(a, a_start, row_stride, k_stride, rows, panels, w_start, K, c, c_start):
    """c[r, j] += sum_k A[r, k] * panel[k, j] for the MR x nr tile of C stored row-major at c.flat[c_start]
    (nr = the panel's width), A[r, k] = a.flat[a_start + r * row_stride + k * k_stride] (A's rows in place:
    row_stride = K, k_stride = 1; packed by numba_ops.pack_rows: 1 and MR), the panel [K, nr] at
    panels.flat[w_start]. Rows r >= rows read row rows - 1 instead, so a ragged tile only reads memory that
    exists (the caller stores the valid rows only)."""
    a, w, c = a.reshape(-1), panels.reshape(-1), c.reshape(-1)
    nr = panels.shape[-1]
    acc = np.zeros((MR, nr), np.float32)  # the registers: MR x NV vectors
    for r in range(MR):
        for j in range(nr):
            acc[r, j] = c[c_start + r * nr + j]
    for k in range(K):
        for r in range(MR):
            x = a[a_start + min(r, rows - 1) * row_stride + k * k_stride]  # broadcast A[r, k] ...
            for j in range(nr):
                acc[r, j] += x * w[w_start + k * nr + j]  # ... times one panel row: NV vector FMAs
    for r in range(MR):
        for j in range(nr):
            c[c_start + r * nr + j] = acc[r, j]


# ---------------------------------------------------------------------------------------------------
# The micro-kernel as LLVM IR.

def _array_data(context, builder, array_type, value):  # float* to an array's first element
    return context.make_array(array_type)(context, builder, value).data


@intrinsic
def tile_kernel(typingctx, a, a_start, row_stride, k_stride, rows, panels, w_start, k_len, c, c_start,
                vector_width):
    """tile_reference with explicit vectors, for VW = vector_width (a compile-time constant) and nr = NV VW:
    MR x NV accumulators <VW x float>, loaded from c, carried through the K loop as phi values (so LLVM keeps
    them in registers), one llvm.fma per accumulator per step with A[r, k] broadcast to all lanes by a
    shufflevector, and stored back to c at the end. No bounds checks: the caller guarantees the extents."""
    if not isinstance(vector_width, types.IntegerLiteral):
        return None
    vw = vector_width.literal_value
    sig = types.void(a, types.intp, types.intp, types.intp, types.intp, panels, types.intp, types.intp, c, types.intp,
                     vector_width)

    def codegen(context, builder, signature, args):
        a_arr, a0, row_stride_, k_stride_, rows_, w_arr, w0, K, c_arr, c0, _ = args
        f32, i32, intp = ir.FloatType(), ir.IntType(32), a0.type
        vec = ir.VectorType(f32, vw)
        vec_ptr = vec.as_pointer()
        fma = cgutils.get_or_insert_function(builder.module, ir.FunctionType(vec, [vec] * 3), f"llvm.fma.v{vw}f32")
        broadcast_mask = ir.Constant(ir.VectorType(i32, vw), [0] * vw)
        one, nr = ir.Constant(intp, 1), ir.Constant(intp, NV * vw)

        a_base = builder.gep(_array_data(context, builder, signature.args[0], a_arr), [a0])
        w_base = builder.gep(_array_data(context, builder, signature.args[5], w_arr), [w0])
        c_base = builder.gep(_array_data(context, builder, signature.args[8], c_arr), [c0])
        c_vec = [[builder.bitcast(builder.gep(c_base, [ir.Constant(intp, (r * NV + v) * vw)]), vec_ptr)
                  for v in range(NV)] for r in range(MR)]
        start = [[builder.load(c_vec[r][v], align=4) for v in range(NV)] for r in range(MR)]  # c += ...
        last = builder.sub(rows_, one)
        row_ptrs = []  # row r of the tile, or the last valid row when r >= rows
        for r in range(MR):
            rr = ir.Constant(intp, r)
            row = builder.select(builder.icmp_signed("<", rr, rows_), rr, last)
            row_ptrs.append(builder.gep(a_base, [builder.mul(row, row_stride_)]))

        entry = builder.block
        header = builder.append_basic_block("tile.k")
        body = builder.append_basic_block("tile.fma")
        done = builder.append_basic_block("tile.store")
        builder.branch(header)

        builder.position_at_end(header)
        k = builder.phi(intp, "k")
        k.add_incoming(ir.Constant(intp, 0), entry)
        acc = [[builder.phi(vec, f"c{r}{v}") for v in range(NV)] for r in range(MR)]
        for r in range(MR):
            for v in range(NV):
                acc[r][v].add_incoming(start[r][v], entry)
        builder.cbranch(builder.icmp_signed("<", k, K), body, done)

        builder.position_at_end(body)
        w_row = builder.gep(w_base, [builder.mul(k, nr)])  # panel row k: 2 VW weights
        a_k = builder.mul(k, k_stride_)
        w_vec = [builder.load(builder.bitcast(builder.gep(w_row, [ir.Constant(intp, v * vw)]), vec_ptr), align=4)
                 for v in range(NV)]
        for r in range(MR):
            x = builder.load(builder.gep(row_ptrs[r], [a_k]), align=4)  # A[r, k]
            xv = builder.shuffle_vector(builder.insert_element(ir.Constant(vec, ir.Undefined), x,
                                                              ir.Constant(i32, 0)),
                                       ir.Constant(vec, ir.Undefined), broadcast_mask)  # A[r, k] in every lane
            for v in range(NV):
                acc[r][v].add_incoming(builder.call(fma, [xv, w_vec[v], acc[r][v]]), body)
        k.add_incoming(builder.add(k, one), body)
        builder.branch(header)

        builder.position_at_end(done)
        for r in range(MR):
            for v in range(NV):
                builder.store(acc[r][v], c_vec[r][v], align=4)
        return context.get_dummy_value()

    return sig, codegen


# ---------------------------------------------------------------------------------------------------
# Attention's small products: a register-tiled kernel in plain Numba.

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
    """4 x 4 register tiles (16 running sums over the K loop, which LLVM vectorizes along k), then the ragged
    edges one output at a time."""
    K = a.shape[1]
    i_full, j_full = i_start + (i_end - i_start) // 4 * 4, j_start + (j_end - j_start) // 4 * 4
    for i0 in range(i_start, i_full, 4):
        for j0 in range(j_start, j_full, 4):
            tile_4x4(a, w, c, i0, j0, K)
    for i in range(i_start, i_end):
        for j in range(j_full if i < i_full else j_start, j_end):
            c[i, j] = dot(a[i], w[j], K)
