"""The CUDA backend (miniclip/cuda_ops.py): every kernel against the NumPy reference op it replaces (ops.py
is the spec), the backend end to end on the small seeded models, and its errors, with or without a GPU.

Where the kernel tests run. numba.cuda is either the real GPU target or Numba's CUDA simulator, chosen
once per process when it is first imported (NUMBA_ENABLE_CUDASIM=1), so the two cannot share a process:

- with a GPU (CuPy sees one), the kernel tests run on it, in this process;
- without one (CI), they are not collected in this process (see runs_kernels), and
  test_kernels_in_the_cuda_simulator runs this file again in a child pytest with NUMBA_ENABLE_CUDASIM=1,
  where they run in the simulator. Nothing in this process switches numba.cuda to the simulator, so no
  other test (miniclip verify, the fixture tests) ever sees a simulated "GPU" under backend="cupy".

Also without a GPU: the clear errors when CuPy or a GPU is missing, and (where a CUDA toolkit's NVVM is
found) every kernel compiled for the real GPU target, sm_90, which the simulator cannot check: it runs
the kernels as Python and never types or compiles them.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import textwrap
import types
from pathlib import Path

import numpy as np
import pytest
from conftest import FIXTURES, record
from seeded import ARCHS, seeded_images

import miniclip
from miniclip import ops
from miniclip.backends import BACKENDS, get_backend
from miniclip.errors import MiniclipError
from miniclip.model import normalize

SIMULATED = os.environ.get("NUMBA_ENABLE_CUDASIM", "0") not in ("", "0")
REPO = Path(__file__).resolve().parents[1]


def gpu_available() -> bool:
    """CuPy imports and sees a CUDA device (never checked under the simulator, which needs neither)."""
    if SIMULATED or importlib.util.find_spec("cupy") is None:
        return False
    try:
        import cupy

        return cupy.cuda.runtime.getDeviceCount() > 0
    except Exception:  # CuPy without its CUDA libraries, no driver, ...
        return False


GPU = gpu_available()
KERNELS_RUN_HERE = SIMULATED or GPU


def backend_params() -> list:
    """miniclip.backends.BACKENDS for the full-size fixture tests (test_model_fixtures.py), "cupy" skipped
    without a GPU: there it is tested here, in the simulator, on the small models only."""
    no_gpu = pytest.mark.skipif(not GPU, reason="no GPU: backend 'cupy' is tested in the CUDA simulator by "
                                                "tests/test_cuda_ops.py")
    return [pytest.param(name, marks=no_gpu) if name == "cupy" else name for name in BACKENDS]


def runs_kernels(test):
    """Collect `test` only where the kernels can run: on a GPU, or in the child process of
    test_kernels_in_the_cuda_simulator (anywhere else it could only be skipped: noise in every run)."""
    test.__test__ = KERNELS_RUN_HERE
    return test


@pytest.fixture(scope="module")
def co():
    """The backend module (collected tests only ask for it where it imports: see runs_kernels)."""
    interval = sys.getswitchinterval()
    if SIMULATED:
        # Simulated threads are Python threads that meet at every cuda.syncthreads(); with the default 5 ms
        # switch interval each meeting costs ~6 ms, with 0.1 ms about 0.5 ms (this is a test-only process).
        sys.setswitchinterval(1e-4)
    from miniclip.backends import cuda_ops

    yield cuda_ops
    sys.setswitchinterval(interval)


RNG = np.random.default_rng(4321)


def randn(*shape, scale=1.0):
    return (RNG.standard_normal(shape) * scale).astype(np.float32)


def assert_close(actual, expected, rtol=1e-5, atol=1e-5):
    assert isinstance(actual, np.ndarray), "NumPy in, NumPy out"
    assert actual.dtype == np.float32 and actual.shape == expected.shape
    np.testing.assert_allclose(actual, expected, rtol=rtol, atol=atol)


# ---------------------------------------------------------------------------------------------------
# Kernels against the reference. Sizes are small (the simulator runs ~100k array accesses a second) but
# chosen to exercise every loop: more elements than one launch's threads (grid-stride loops), rows both
# shorter and longer than a block (ROW_THREADS: 8 simulated, 64 on a GPU).

@runs_kernels
@pytest.mark.parametrize("act", ["quick_gelu", "gelu", None])
@pytest.mark.parametrize("shape", [(2, 5, 24), (3, 7)])
def test_linear_with_activation(co, act, shape):
    x = randn(*shape, scale=2.0)
    w, b = randn(37, shape[-1], scale=1 / np.sqrt(shape[-1])), randn(37)
    assert_close(co.linear(x, w, b, act=act), ops.linear(x, w, b, act=act))


@runs_kernels
def test_linear_with_residual_and_without_bias(co):
    x, w, b, r = randn(2, 9, 16), randn(11, 16), randn(11), randn(2, 9, 11)
    assert_close(co.linear(x, w, b, residual=r), ops.linear(x, w, b, residual=r))
    assert_close(co.linear(x, w), ops.linear(x, w))
    assert_close(co.linear(x, w, residual=r), ops.linear(x, w, residual=r))
    assert_close(co.linear(x[:, ::2], w, b, residual=r[:, ::2]), ops.linear(x[:, ::2], w, b, residual=r[:, ::2]))


@runs_kernels
@pytest.mark.parametrize("kind", ["quick_gelu", "gelu"])
def test_activation_keeps_relative_accuracy_in_the_tails(co, kind):
    """Far left both activations are tiny (quick_gelu's exponent is clipped at 88, gelu needs erfc)."""
    x = np.array([[-100, -30, -10, -3, -0.5, 0, 0.5, 3, 10, 30, 100]], np.float32)
    assert_close(co.activation(x, kind), ops.activation(x, kind), rtol=1e-5, atol=0)
    y = np.linspace(-8, 8, 301, dtype=np.float32).reshape(7, 43)
    assert_close(co.activation(y, kind), ops.activation(y, kind), rtol=2e-6, atol=2e-7)


@runs_kernels
@pytest.mark.parametrize("shape", [(2, 5, 24), (3, 96), (4, 7)])
def test_layer_norm(co, shape):
    x, g, b = randn(*shape, scale=3.0) + 5.0, randn(shape[-1]), randn(shape[-1])  # offset: two-pass variance
    assert_close(co.layer_norm(x, g, b, eps=1e-5), ops.layer_norm(x, g, b, eps=1e-5), rtol=1e-4, atol=1e-5)
    assert_close(co.layer_norm(x[..., ::-1], g, b), ops.layer_norm(x[..., ::-1], g, b), rtol=1e-4, atol=1e-5)


@runs_kernels
def test_softmax_subtracts_the_max(co):
    x = randn(3, 5, 11, scale=40.0)  # e^x alone would overflow float32
    assert_close(co.softmax(x), ops.softmax(x), rtol=1e-5, atol=1e-7)


@runs_kernels
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("B, T, H, d", [(2, 7, 2, 8), (1, 20, 3, 4), (1, 70, 1, 4), (1, 1, 1, 8)])
def test_attention(co, causal, B, T, H, d):
    qkv = randn(B, T, 3 * H * d, scale=2.0)  # large scores: far from uniform attention
    assert_close(co.attention(qkv, H, causal), ops.attention(qkv, H, causal), rtol=1e-4, atol=1e-5)
    q, k, _ = ops.split_heads(qkv, H)
    assert_close(co.attention_probs(q, k, causal), ops.attention_probs(q, k, causal), rtol=1e-4, atol=1e-6)


@runs_kernels
def test_attention_is_causal(co):
    """Changing a later token must not change an earlier token's output."""
    qkv = randn(1, 10, 3 * 8)
    changed = qkv.copy()
    changed[0, 7:] += 1.0
    a, b = co.attention(qkv, 2, True), co.attention(changed, 2, True)
    np.testing.assert_array_equal(a[0, :7], b[0, :7])
    assert not np.allclose(a[0, 7:], b[0, 7:])


# ---------------------------------------------------------------------------------------------------
# Where arrays live

@runs_kernels
def test_weights_are_uploaded_once_and_scalars_stay_on_the_host(co):
    params = {"w": randn(4, 3), "logit_scale": np.array(np.log(100.0), np.float32)}
    prepared = co.prepare(params)
    assert prepared["logit_scale"] is params["logit_scale"]  # combined with host arrays by CLIP.__call__
    assert co.on_device(prepared["w"]) == GPU
    np.testing.assert_array_equal(co.to_host(prepared["w"]), params["w"])
    # ops take prepared (device) weights with host inputs, and keep the result on the device
    y = co.linear(randn(2, 3), prepared["w"])
    assert co.on_device(y) == GPU
    assert isinstance(co.to_host(y), np.ndarray)


@runs_kernels
def test_device_outputs_leaves_results_on_the_device(co):
    y = co.to_device(randn(2, 3))
    with co.device_outputs():
        assert co.to_host(y) is y
    assert isinstance(co.to_host(y), np.ndarray)


@runs_kernels
def test_tf32_is_detected_as_cupy_reads_it(co):
    assert not co.tf32_requested({}) and not co.tf32_requested({"CUPY_TF32": "0"})
    assert co.tf32_requested({"CUPY_TF32": "1"})
    assert not co.tf32_requested({"CUPY_TF32": ""}) and not co.tf32_requested({"CUPY_TF32": "yes"})


# ---------------------------------------------------------------------------------------------------
# The backend end to end: public API, seeded weights from their files, against the PyTorch fixtures

EMBED_RTOL, LOGIT_ATOL = 1e-4, 1e-3  # as tests/test_model_fixtures.py


def relative_error(actual: np.ndarray, expected: np.ndarray) -> float:  # worst row: |a - e| / |e|
    return float((np.linalg.norm(actual - expected, axis=-1) / np.linalg.norm(expected, axis=-1)).max())


@runs_kernels
@pytest.mark.parametrize("name", ["odd_oc", "odd_hf"])  # exact GELU / QuickGELU; odd sizes, 2 and 3 layers
def test_backend_end_to_end_matches_reference(co, name, checkpoint):
    model, _ = miniclip.load(checkpoint(name), backend="cupy")
    assert model.ops is co
    ref, arch = np.load(FIXTURES / f"model_{name}.npz"), ARCHS[name]
    images, tokens = seeded_images(arch), ref["tokens"].astype(np.int64)
    # one forward pass per tower (the simulator is slow); the logits as CLIP.__call__ forms them
    image_features, text_features = model.encode_image(images), model.encode_text(tokens)
    logits = np.exp(model.logit_scale) * normalize(image_features) @ normalize(text_features).T
    assert image_features.dtype == np.float32 and isinstance(text_features, np.ndarray)
    errors = {
        "image_features (rel)": relative_error(image_features, ref["image_features"]),
        "text_features (rel)": relative_error(text_features, ref["text_features"]),
        "logits_per_image (abs)": float(np.abs(logits - ref["logits_per_image"]).max()),
    }
    where = "CUDA simulator" if SIMULATED else "GPU"
    for quantity, value in errors.items():
        record(f"{name} ({arch.layout}, cupy, {where}) / {quantity}", value)
        limit = EMBED_RTOL if "features" in quantity else LOGIT_ATOL
        assert value <= limit, f"{name}: {quantity} = {value:.3g} exceeds {limit}"


# ---------------------------------------------------------------------------------------------------
# Without a GPU: errors, the simulator run, and compiling for the real GPU target

needs_real_numba_cuda = pytest.mark.skipif(SIMULATED, reason="numba.cuda is the simulator in this process")


@needs_real_numba_cuda
@pytest.mark.parametrize("missing", ["cupy", "gpu", "numba"])
def test_backend_without_cupy_or_gpu_raises_a_clear_error(missing, monkeypatch, checkpoint):
    monkeypatch.delitem(sys.modules, "miniclip.backends.cuda_ops", raising=False)  # import it afresh
    if missing == "cupy":
        monkeypatch.setitem(sys.modules, "cupy", None)  # `import cupy` raises ImportError
        expected = r"needs CuPy .*pip install 'miniclip\[cuda\]'.*NUMBA_ENABLE_CUDASIM=1"
    else:
        def device_count():
            if missing == "gpu":
                raise RuntimeError("cudaErrorNoDevice: no CUDA-capable device is detected")
            return 1

        fake_cupy = types.SimpleNamespace(cuda=types.SimpleNamespace(runtime=types.SimpleNamespace(
            getDeviceCount=device_count)))
        monkeypatch.setitem(sys.modules, "cupy", fake_cupy)
        from numba import cuda

        monkeypatch.setattr(cuda, "is_available", lambda: False)
        monkeypatch.setattr(cuda, "cuda_error", lambda: "CUDA driver library cannot be found")
        expected = "found no usable NVIDIA GPU .*cudaErrorNoDevice" if missing == "gpu" else \
            "Numba cannot use it: CUDA driver library cannot be found"
    with pytest.raises(MiniclipError, match=expected) as error:
        get_backend("cupy")
    assert isinstance(error.value, ImportError)  # so that backend="auto" and `miniclip verify` skip it
    with pytest.raises(MiniclipError, match=expected):
        miniclip.load(checkpoint("odd_oc"), backend="cupy")


def test_importing_miniclip_imports_neither_cupy_nor_numba_cuda():
    code = "import sys, miniclip; print(sorted(m for m in ('cupy', 'numba.cuda') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


@pytest.mark.skipif(SIMULATED or GPU, reason="the kernels run here directly")
def test_kernels_in_the_cuda_simulator():
    """This file again, in a child pytest where numba.cuda is the simulator (see the module docstring).
    Its worst errors against the fixtures are recorded here too, for the end-of-run summary."""
    env = {**os.environ, "NUMBA_ENABLE_CUDASIM": "1"}
    out = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(Path(__file__))],
                         cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, f"in the CUDA simulator:\n{out.stdout[-8000:]}\n{out.stderr[-2000:]}"
    lines = out.stdout.splitlines()
    assert "passed" in lines[-1] and "failed" not in lines[-1], lines[-1]
    start = next(i for i, line in enumerate(lines) if "worst errors observed" in line)  # conftest's summary
    worst = [line.rsplit(maxsplit=1) for line in lines[start + 1:start + 20] if "CUDA simulator" in line]
    assert len(worst) == 6, "the end-to-end tests did not all run"  # 2 models x 3 quantities
    for key, value in worst:
        record(key.strip(), float(value))


def nvvm_home(tmp_path: Path) -> Path | None:
    """A CUDA_HOME for Numba's NVVM search: CUDA_HOME itself when it has nvvm/lib64, else a folder of links
    in that layout to a toolkit that keeps libnvvm elsewhere (CUDA 13's lib/); None when there is none."""
    for home in filter(None, [os.environ.get("CUDA_HOME"), "/usr/local/cuda"]):
        home = Path(home)
        libdevice = home / "nvvm" / "libdevice"
        libs = [p for d in ("nvvm/lib64", "lib64", "lib") for p in sorted((home / d).glob("libnvvm.so*"))]
        if not libs or not libdevice.is_dir():
            continue
        if libs[0].parent == home / "nvvm" / "lib64":
            return home
        (tmp_path / "nvvm" / "lib64").mkdir(parents=True)
        (tmp_path / "nvvm" / "lib64" / "libnvvm.so").symlink_to(libs[0])
        (tmp_path / "nvvm" / "libdevice").symlink_to(libdevice)
        return tmp_path
    return None


COMPILE_FOR_SM90 = """
import sys, types
from numba import cuda
import numba.cuda.dispatcher

# Only compiling: no driver or GPU here, so CuPy, the device check and the current device are stand-ins.
sys.modules["cupy"] = types.SimpleNamespace(cuda=types.SimpleNamespace(
    runtime=types.SimpleNamespace(getDeviceCount=lambda: 1)), ndarray=type("ndarray", (), {}))
cuda.is_available = lambda: True
numba.cuda.dispatcher.get_current_device = lambda: types.SimpleNamespace(compute_capability=(9, 0))
from miniclip.backends import cuda_ops as co

flat, rows = "float32[::1]", "float32[:, ::1]"
for kernel, signature in [(co.bias_act_kernel, f"void({flat}, {flat}, int64)"),
                          (co.bias_residual_kernel, f"void({flat}, {flat}, {flat})"),
                          (co.layer_norm_kernel, f"void({rows}, {flat}, {flat}, float32, {rows})"),
                          (co.softmax_kernel, f"void({rows}, float32, boolean)")]:
    ptx, _ = cuda.compile_ptx(kernel.py_func, signature, cc=(9, 0))
    f64 = [line.strip() for line in ptx.splitlines() if ".f64" in line]
    print(kernel.py_func.__name__, "sm_90", "float64 instructions:", f64)
"""


@pytest.mark.skipif(SIMULATED or GPU, reason="the kernels are compiled and run on the GPU here")
def test_kernels_compile_for_the_gpu(tmp_path):
    """The simulator runs the kernels as Python; this types and compiles them with the real CUDA target
    (NVVM, to PTX for sm_90, the H100), and checks that they compute in float32 as the reference does."""
    home = nvvm_home(tmp_path)
    if home is None:
        pytest.skip("no CUDA toolkit with libNVVM found (set CUDA_HOME)")
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_ENABLE_CUDASIM"} | {"CUDA_HOME": str(home)}
    out = subprocess.run([sys.executable, "-c", textwrap.dedent(COMPILE_FOR_SM90)], cwd=REPO, env=env,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-4000:]
    lines = out.stdout.strip().splitlines()
    assert len(lines) == 4 and all(line.endswith("float64 instructions: []") for line in lines), out.stdout
