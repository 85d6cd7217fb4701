"""The CUDA backend: the ops of ops.py on an NVIDIA GPU, with CuPy arrays, cuBLAS and numba.cuda kernels.

Same functions, same signatures, same results (to float32 rounding) as the NumPy reference in ops.py,
which stays the spec. What runs where:

- matrix products: cuBLAS, through `cupy.matmul`, in float32. TF32 stays off: CuPy uses it only when the
  environment variable CUPY_TF32 is set to a positive number (it is read once, at the first float32
  product); we never set it, and warn at import if the user did (results then differ by ~1e-3).
- everything around them, as numba.cuda kernels written once and run two ways:
    * on a GPU, launched on CuPy's memory through `__cuda_array_interface__`, on CuPy's current stream;
    * without one, in Numba's CUDA simulator (NUMBA_ENABLE_CUDASIM=1, read once when numba.cuda is first
      imported): each GPU thread becomes a Python thread, the arrays are NumPy arrays and `xp`, the
      backend's array module, is NumPy instead of CuPy. Slow, but it runs the kernels' exact code, so the
      tests (tests/test_cuda_ops.py) check every kernel against ops.py on machines without a GPU.
  The kernels: linear's epilogues (y + bias, then QuickGELU or exact GELU, or + residual) in one pass
  over the product, LayerNorm with one block per row, and attention's scaled, causally masked softmax
  with one block per row of scores (the two products of attention are batched cuBLAS calls).

Where arrays live: `prepare(params)` uploads the weights once, `to_device` / `to_host` move inputs and
results. Every op returns a device array when any of its array arguments is one (the model's path,
activations stay on the GPU) and a NumPy array when all are NumPy (handy for tests and one-off calls).
Within `with device_outputs():` `to_host` leaves results on the GPU (CuPy arrays).

Without CuPy or without a GPU, importing this module (i.e. `backend="cupy"`) raises CudaUnavailableError,
which says what is missing. docs/cuda.md maps each kernel to its reference op, line by line for attention.
"""

from __future__ import annotations

import contextlib
import contextvars
import math
import os
import warnings
from collections.abc import Iterator, Mapping
from typing import Any

import numba
import numpy as np
from numba import cuda

from .. import ops
from ..errors import CudaUnavailableError

name = "cupy"


def tf32_requested(environ: Mapping[str, str]) -> bool:
    """Whether CuPy will use TF32 for float32 matrix products: CUPY_TF32 > 0, parsed as CuPy parses it."""
    try:
        return int(environ.get("CUPY_TF32", "0") or "0") > 0
    except ValueError:
        return False


def import_cupy():
    """CuPy, or a CudaUnavailableError saying how to install it."""
    try:
        import cupy
    except ImportError as e:  # not installed, or installed for a CUDA version whose libraries are missing
        raise CudaUnavailableError(
            f"backend='cupy' needs CuPy ({e}). Install it with `pip install 'miniclip[cuda]'` (CuPy for CUDA 12; "
            "other CUDA versions: https://docs.cupy.dev/en/stable/install.html). To run this backend's kernels "
            "without a GPU, slowly, in Numba's CUDA simulator, set NUMBA_ENABLE_CUDASIM=1 before starting Python."
        ) from e
    return cupy


def check_gpu(cupy, cuda_module) -> None:
    """Raise CudaUnavailableError unless CuPy sees a GPU and Numba can compile and launch kernels on it."""
    try:
        count = cupy.cuda.runtime.getDeviceCount()
        reason = "no CUDA device"
    except Exception as e:  # CUDARuntimeError: no driver, driver too old for this CuPy, ...
        count, reason = 0, str(e)
    if count == 0:
        raise CudaUnavailableError(f"backend='cupy' found no usable NVIDIA GPU ({reason}). Use backend='numba' "
                                   "or 'numpy' on this machine.")
    if not cuda_module.is_available():
        raise CudaUnavailableError(f"CuPy sees a GPU but Numba cannot use it: {cuda_module.cuda_error()}")
    try:
        from numba.cuda.cudadrv import nvvm
        has_nvvm = nvvm.is_available()
    except (ImportError, AttributeError):  # another numba.cuda layout: let the first kernel compile tell
        has_nvvm = True
    if not has_nvvm:
        raise CudaUnavailableError(
            "Numba found no libNVVM to compile the CUDA kernels: install a CUDA toolkit (and set CUDA_HOME), "
            "or `pip install 'numba-cuda[cu12]'`, whose numba.cuda brings NVVM along.")


SIMULATOR = bool(numba.config.ENABLE_CUDASIM)  # what numba.cuda was imported as (NUMBA_ENABLE_CUDASIM)

if SIMULATOR:
    xp: Any = np
    # Every simulated thread is a Python thread: launch few and small blocks (the kernels loop over any
    # size with grid- and block-strided loops, so the same code is exercised, including those loops).
    ELEMENT_THREADS, ROW_THREADS, MAX_BLOCKS = 32, 8, 2
else:
    xp = import_cupy()
    check_gpu(xp, cuda)
    if tf32_requested(os.environ):
        warnings.warn("CUPY_TF32 is set: CuPy's float32 matrix products use TF32 (10-bit mantissas), and results "
                      "differ from the float32 reference by ~1e-3, beyond miniclip's fidelity tolerances. Unset "
                      "CUPY_TF32 for float32 products.", stacklevel=2)
    ELEMENT_THREADS, ROW_THREADS, MAX_BLOCKS = 256, 64, 65535
    # Small batches launch few blocks on purpose (one per row); Numba would warn about occupancy each time.
    from numba.core.errors import NumbaPerformanceWarning
    warnings.filterwarnings("ignore", message="Grid size", category=NumbaPerformanceWarning)


# ---------------------------------------------------------------------------------------------------
# Where arrays live

_KEEP_ON_DEVICE = contextvars.ContextVar("miniclip_cuda_keep_on_device", default=False)


def on_device(a: object) -> bool:
    return not SIMULATOR and isinstance(a, xp.ndarray)


def to_device(a) -> Any:
    """A float32 device array (a CuPy array; the same NumPy array under the simulator)."""
    return xp.asarray(a, dtype=np.float32)


def to_host(a) -> Any:
    """A NumPy array (copied from the GPU, which waits for the computation), or, inside `device_outputs()`,
    `a` itself."""
    if _KEEP_ON_DEVICE.get():
        return a
    return xp.asnumpy(a) if on_device(a) else np.asarray(a)


@contextlib.contextmanager
def device_outputs() -> Iterator[None]:
    """Within this block, `to_host` returns device arrays as they are: encode_image / encode_text give CuPy
    arrays, for callers that keep computing on the GPU (synchronize before timing them)."""
    token = _KEEP_ON_DEVICE.set(True)
    try:
        yield
    finally:
        _KEEP_ON_DEVICE.reset(token)


def prepare(params: Mapping[str, np.ndarray]) -> dict[str, Any]:
    """Upload the weights once, as float32 device arrays. 0-d values (logit_scale) stay NumPy: the model
    combines them with results already on the host."""
    return {n: (w if np.ndim(w) == 0 else to_device(w)) for n, w in params.items()}


def _contiguous(a) -> Any:  # kernels are compiled for C-contiguous float32 arrays only
    return xp.ascontiguousarray(xp.asarray(a, dtype=np.float32))


def _result(y, *inputs) -> Any:  # on the device if any input was, else back to NumPy
    return y if any(on_device(a) for a in inputs) else (np.asarray(y) if SIMULATOR else xp.asnumpy(y))


# ---------------------------------------------------------------------------------------------------
# Launching: Numba sees CuPy's memory without copying it, and runs on CuPy's current stream, so kernels
# and cuBLAS calls stay in order without waiting on the host.

_streams: dict[int, Any] = {}


def _stream() -> Any:
    if SIMULATOR:
        return 0
    ptr = xp.cuda.get_current_stream().ptr
    if ptr == 0:  # CuPy's default (legacy null) stream is also Numba's stream 0
        return 0
    if ptr not in _streams:
        _streams[ptr] = cuda.external_stream(ptr)
    return _streams[ptr]


def _launch(kernel, blocks: int, threads: int, *args) -> None:
    if SIMULATOR:
        # The simulator copies NumPy arguments in and back out; cuda.In skips the copy back, which would
        # fail on read-only inputs (weights memory-mapped from their file).
        args = tuple(cuda.In(a) if isinstance(a, np.ndarray) and not a.flags.writeable else a for a in args)
    else:
        # sync=False: Numba would otherwise synchronize CuPy's stream before every launch; ordering is
        # already guaranteed by launching on that same stream
        args = tuple(cuda.as_cuda_array(a, sync=False) if isinstance(a, xp.ndarray) else a for a in args)
    kernel[max(1, blocks), threads, _stream()](*args)


def _elementwise_blocks(n: int) -> int:
    return min(MAX_BLOCKS, (n + ELEMENT_THREADS - 1) // ELEMENT_THREADS)


# ---------------------------------------------------------------------------------------------------
# Kernels. Constants are float32 so that the GPU computes in float32, as the reference does (a Python
# float literal would make Numba compute in float64). No min()/max() of scalars: Numba 0.68's CUDA target
# resolves them to its iterable overload and fails to compile; comparisons say the same.

ZERO, HALF, ONE = np.float32(0.0), np.float32(0.5), np.float32(1.0)
NEG_INF = np.float32(-np.inf)
QUICK_GELU_SLOPE = np.float32(-1.702)  # ops.quick_gelu: x / (1 + e^(-1.702 x)), exponent clipped at 88
EXP_CLIP = np.float32(88.0)
INV_SQRT2 = np.float32(1 / np.sqrt(2.0))  # ops.gelu: x/2 * erfc(-x / sqrt 2)
NO_ACT, QUICK_GELU, GELU = 0, 1, 2
ACTIVATIONS = {None: NO_ACT, "quick_gelu": QUICK_GELU, "gelu": GELU}


@cuda.jit(cache=True)
def bias_act_kernel(y, bias, act):  # y: [M * N] flat, in place; bias: [N]: y = act(y + bias)
    N = bias.shape[0]
    for k in range(cuda.grid(1), y.shape[0], cuda.gridsize(1)):  # grid-stride: any size, any grid
        v = y[k] + bias[k % N]
        if act == QUICK_GELU:
            z = QUICK_GELU_SLOPE * v
            v = v / (ONE + math.exp(z if z < EXP_CLIP else EXP_CLIP))
        elif act == GELU:
            v = HALF * v * math.erfc(-v * INV_SQRT2)
        y[k] = v


@cuda.jit(cache=True)
def bias_residual_kernel(y, bias, residual):  # y: [M * N] flat, in place: y = residual + (y + bias)
    N = bias.shape[0]
    for k in range(cuda.grid(1), y.shape[0], cuda.gridsize(1)):
        y[k] = residual[k] + (y[k] + bias[k % N])


# Row kernels: one block of ROW_THREADS threads per row (grid-strided over the rows). A row's sum (or max)
# is found in two steps: each thread reduces every ROW_THREADS-th element, then every thread adds up the
# ROW_THREADS partial results from shared memory, in the same order, so all get the same total. Each
# reduction needs a single barrier because consecutive reductions alternate between two shared arrays:
# a thread can only write into one after the barrier of the other, which every thread reaches after it
# has finished reading the first. (Few barriers also keep the simulator, where each one costs
# milliseconds, fast enough for tests.)

@cuda.jit(device=True)
def block_sum(value, partial):  # the sum of `value` over the block's threads, given to every thread
    partial[cuda.threadIdx.x] = value
    cuda.syncthreads()
    total = ZERO
    for i in range(ROW_THREADS):
        total += partial[i]
    return total


@cuda.jit(device=True)
def block_max(value, partial):  # the max of `value` over the block's threads, given to every thread
    partial[cuda.threadIdx.x] = value
    cuda.syncthreads()
    total = NEG_INF
    for i in range(ROW_THREADS):
        total = partial[i] if partial[i] > total else total
    return total


@cuda.jit(cache=True)
def layer_norm_kernel(x, weight, bias, eps, out):  # [M, D], [D], [D], float32, [M, D]
    M, D = x.shape
    partial_a = cuda.shared.array(ROW_THREADS, numba.float32)
    partial_b = cuda.shared.array(ROW_THREADS, numba.float32)
    t = cuda.threadIdx.x
    for row in range(cuda.blockIdx.x, M, cuda.gridDim.x):
        s = ZERO
        for j in range(t, D, ROW_THREADS):
            s += x[row, j]
        mean = block_sum(s, partial_a) / numba.float32(D)
        # biased variance from the deviations (two passes, as the reference: no cancellation)
        s = ZERO
        for j in range(t, D, ROW_THREADS):
            deviation = x[row, j] - mean
            s += deviation * deviation
        std = math.sqrt(block_sum(s, partial_b) / numba.float32(D) + eps)
        for j in range(t, D, ROW_THREADS):
            out[row, j] = (x[row, j] - mean) / std * weight[j] + bias[j]


@cuda.jit(cache=True)
def softmax_kernel(scores, sqrt_d, causal):  # [R, T] in place, R = B*H*T rows of T keys
    R, T = scores.shape
    partial_a = cuda.shared.array(ROW_THREADS, numba.float32)
    partial_b = cuda.shared.array(ROW_THREADS, numba.float32)
    t = cuda.threadIdx.x
    for row in range(cuda.blockIdx.x, R, cuda.gridDim.x):
        # causal mask: the query at position i = row % T sees keys 0..i only; the others get probability 0
        # (the reference adds -inf above the diagonal, whose exp is 0)
        n_keys = row % T + 1 if causal else T
        # scores scaled as q @ k^T / sqrt(d); their max is subtracted before exp to avoid overflow
        m = NEG_INF
        for j in range(t, n_keys, ROW_THREADS):
            m_j = scores[row, j] / sqrt_d
            m = m_j if m_j > m else m
        m = block_max(m, partial_a)
        s = ZERO
        for j in range(t, n_keys, ROW_THREADS):
            e = math.exp(scores[row, j] / sqrt_d - m)
            scores[row, j] = e
            s += e
        total = block_sum(s, partial_b)
        for j in range(t, T, ROW_THREADS):  # each thread rewrites only the elements it wrote above
            scores[row, j] = scores[row, j] / total if j < n_keys else ZERO


# ---------------------------------------------------------------------------------------------------
# The ops

def _bias_act(y, bias, act: str | None) -> None:  # y: [M, N] contiguous, in place
    _launch(bias_act_kernel, _elementwise_blocks(y.size), ELEMENT_THREADS, y.reshape(-1), bias, ACTIVATIONS[act])


def linear(x, weight, bias=None, *, act=None, residual=None):  # [..., D_in], [D_out, D_in], [D_out] -> [..., D_out]
    """ops.linear: one cuBLAS product for all leading axes, then at most two fused epilogue passes."""
    inputs = (x, weight, bias, residual)
    x, weight = xp.asarray(x, dtype=np.float32), xp.asarray(weight, dtype=np.float32)
    D_out = weight.shape[0]
    y = xp.matmul(x.reshape(-1, x.shape[-1]), weight.T)  # [M, D_out]; weight.T is a view, cuBLAS transposes
    bias = _contiguous(bias) if bias is not None else None
    if act is not None or (bias is not None and residual is None):
        _bias_act(y, bias if bias is not None else xp.zeros(D_out, np.float32), act)
        bias = None  # added
    if residual is not None:
        _launch(bias_residual_kernel, _elementwise_blocks(y.size), ELEMENT_THREADS, y.reshape(-1),
                bias if bias is not None else xp.zeros(D_out, np.float32), _contiguous(residual).reshape(-1))
    return _result(y.reshape(*x.shape[:-1], D_out), *inputs)


def layer_norm(x, weight, bias, eps=1e-5):  # [..., D], [D], [D] -> [..., D]
    """ops.layer_norm: one block of ROW_THREADS threads per row."""
    inputs = (x, weight, bias)
    x2 = _contiguous(xp.asarray(x).reshape(-1, x.shape[-1]))
    out = xp.empty_like(x2)
    _launch(layer_norm_kernel, min(MAX_BLOCKS, x2.shape[0]), ROW_THREADS, x2, _contiguous(weight), _contiguous(bias),
            np.float32(eps), out)
    return _result(out.reshape(x.shape), *inputs)


def attention_probs(q, k, causal):  # [B, H, T, d], [B, H, T, d] -> [B, H, T, T]
    """ops.attention_probs: the scores by one batched cuBLAS product, then their scaling by 1/sqrt(d), the
    causal mask and the softmax by softmax_kernel, in place (a block per row of scores)."""
    inputs = (q, k)
    q, k = xp.asarray(q, dtype=np.float32), xp.asarray(k, dtype=np.float32)
    T, d = q.shape[-2:]
    scores = xp.matmul(q, k.transpose(0, 1, 3, 2))  # [B, H, T, T], not yet scaled; new and contiguous
    _launch(softmax_kernel, min(MAX_BLOCKS, scores.size // T), ROW_THREADS, scores.reshape(-1, T),
            np.float32(math.sqrt(d)), bool(causal))
    return _result(scores, *inputs)


def attention(qkv, n_head, causal):  # [B, T, 3D] -> [B, T, D]
    """ops.attention, step for step (the two products batched over batch x heads by cuBLAS)."""
    inputs = (qkv,)
    qkv = xp.asarray(qkv, dtype=np.float32)
    B, T, three_D = qkv.shape
    q, k, v = ops.split_heads(qkv, n_head)  # 1. split q, k, v and the heads: 3 x [B, H, T, d] (views)
    probs = attention_probs(q, k, causal)  # 2.-4. scores, causal mask, softmax: [B, H, T, T]
    out = xp.matmul(probs, v)  # 5. weighted average of the values: [B, H, T, d]
    return _result(out.transpose(0, 2, 1, 3).reshape(B, T, three_D // 3), *inputs)  # 6. merge the heads


def softmax(x):  # [..., N] -> [..., N]: ops.softmax, by the attention kernel without scale or mask
    inputs = (x,)
    x2 = _contiguous(xp.asarray(x).reshape(-1, x.shape[-1])).copy()
    _launch(softmax_kernel, min(MAX_BLOCKS, x2.shape[0]), ROW_THREADS, x2, np.float32(1.0), False)
    return _result(x2.reshape(x.shape), *inputs)


def activation(x, kind):  # [...] -> [...]: ops.activation
    inputs = (x,)
    y = _contiguous(x).copy()
    y2 = y.reshape(-1, y.shape[-1]) if y.ndim else y.reshape(1, 1)
    _bias_act(y2, xp.zeros(y2.shape[1], np.float32), kind)
    return _result(y, *inputs)
