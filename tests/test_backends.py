"""Choosing a backend (backend="auto", its fallback without Numba, threads=), the model end to end through
the Numba GEMM, and a text's features not depending on the other texts of its batch, in every backend.

These go through the public seams only (miniclip.load, get_backend, the model's outputs),
so they hold whatever the kernels inside a backend look like.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from conftest import FIXTURES, record
from seeded import ARCHS, TEXTS, seeded_images
from test_cuda_ops import backend_params
from test_model_fixtures import EMBED_RTOL, relative_error

import miniclip
from miniclip.backends import get_backend

REPO = Path(__file__).resolve().parents[1]


def fixture(name: str):
    return np.load(FIXTURES / f"model_{name}.npz")


def run_python(code: str, env: dict[str, str | None] | None = None) -> subprocess.CompletedProcess:
    """`code` in a fresh interpreter (this one, so the same installation), from the repository root, with
    the variables of `env` set (None: removed)."""
    environ = {**os.environ, **(env or {})}
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, cwd=REPO,
                          env={k: v for k, v in environ.items() if v is not None}, timeout=300)


# ---------------------------------------------------------------------------------------------------
# backend="auto" and threads=

def test_auto_is_numba_when_numba_imports(checkpoint):
    assert get_backend("auto").name == "numba"
    model, _ = miniclip.load(checkpoint("odd_oc"), backend="auto")
    assert model.ops.name == "numba"


def test_auto_falls_back_to_numpy_without_numba(checkpoint, tmp_path):
    """In a process where `import numba` fails (as when it is not installed): miniclip, its CLI and apps
    import, "auto" gives the NumPy reference and the model still matches the reference, and asking for
    "numba" by name is an ImportError (which "auto" catches), not something stranger."""
    out = tmp_path / "features.npz"
    result = run_python(f"""
        import sys
        sys.modules["numba"] = None  # every `import numba` now raises ImportError, as when it is absent
        import numpy as np
        import miniclip, miniclip.cli, miniclip.apps.explain, miniclip.apps.index, miniclip.apps.search
        import miniclip.apps.zeroshot
        from miniclip.backends import get_backend
        assert "numba" not in [m.split(".")[0] for m in sys.modules if sys.modules[m] is not None]
        try:
            get_backend("numba")
        except ImportError as exc:
            print("numba by name:", type(exc).__name__, exc)
        else:
            raise AssertionError("get_backend('numba') worked without numba")
        assert get_backend("auto").name == "numpy"
        model, _ = miniclip.load({str(checkpoint("odd_oc"))!r}, backend="auto")
        assert model.ops.name == "numpy"
        sys.path.insert(0, "tests")
        from seeded import ARCHS, seeded_images
        tokens = np.load("tests/fixtures/model_odd_oc.npz")["tokens"].astype(np.int64)
        np.savez({str(out)!r}, image=model.encode_image(seeded_images(ARCHS["odd_oc"])),
                 text=model.encode_text(tokens))
    """)
    assert result.returncode == 0, result.stderr
    assert "numba by name: ModuleNotFoundError" in result.stdout
    got, ref = np.load(out), fixture("odd_oc")
    assert relative_error(got["image"], ref["image_features"]) <= EMBED_RTOL
    assert relative_error(got["text"], ref["text_features"]) <= EMBED_RTOL


def test_threads_sets_the_numba_threads_and_changes_no_result(checkpoint):
    import numba

    before = numba.get_num_threads()
    images = seeded_images(ARCHS["odd_hf"])
    try:
        model, _ = miniclip.load(checkpoint("odd_hf"), backend="numba", threads=1)
        assert numba.get_num_threads() == 1
        one = model.encode_image(images)
        get_backend("auto", threads=10_000)  # more than the pool holds: all of it, not an error
        assert numba.get_num_threads() == numba.config.NUMBA_NUM_THREADS
        # every parallel task computes the same rows whichever thread runs it: the same bits
        np.testing.assert_array_equal(model.encode_image(images), one)
    finally:
        numba.set_num_threads(before)
    assert relative_error(one, fixture("odd_hf")["image_features"]) <= EMBED_RTOL


@pytest.mark.parametrize("threads", [0, -2, 1.5, "2", True])
def test_bad_threads_are_refused(threads, checkpoint):
    with pytest.raises(ValueError, match="threads"):
        miniclip.load(checkpoint("odd_oc"), backend="numba", threads=threads)


# ---------------------------------------------------------------------------------------------------
# A text's features do not depend on its batch-mates

@pytest.mark.parametrize("backend", backend_params())  # "cupy" needs a GPU
@pytest.mark.parametrize("name", ["odd_hf", "odd_oc"])
def test_text_features_do_not_depend_on_the_other_texts(name, backend, checkpoint):
    """The text shortcut cuts every text of a batch at the batch's last end token: each text's features
    must still be those it has alone, whatever its batch-mates (shorter, longer, a full context, itself
    again) and its place in the batch. Alone, no text has a column past its end token; in a batch, the
    shorter ones do, so a pooling or masking mistake shows here."""
    model, _ = miniclip.load(checkpoint(name), backend=backend)
    T = ARCHS[name].config.context_length
    texts = [*TEXTS, "a photo of a red car", " ".join(["word"] * 60)]  # the last one fills the context
    tokens = miniclip.tokenize(texts, context_length=T, truncate=True)
    assert tokens[-1, -1] != 0 and len(set(tokens.argmax(-1).tolist())) == 4  # 4 different lengths
    alone = np.concatenate([model.encode_text(tokens[i:i + 1]) for i in range(len(texts))])
    order = [5, 2, 0, 4, 3, 1, 0]  # every text with others, in another place, one of them twice
    batch = model.encode_text(tokens[order])
    err = relative_error(batch, alone[order])
    record(f"{name} / text features, batch vs alone (rel, {backend})", err)
    # Not bit-identical: a product over a batch of M rows may sum in another order than over one row (BLAS
    # picks its kernel by M). Observed < 1e-6; 1e-5 is ~10x that and ~1000x below a text seeing padding.
    assert err < 1e-5, f"batch-mates change a text's features by {err:.3g}"
    ref = fixture(name)
    assert relative_error(alone[:len(TEXTS)], ref["text_features"]) <= EMBED_RTOL


# ---------------------------------------------------------------------------------------------------
# The model through the packed Numba GEMM; where caches are kept

NUMBA_MODEL_RUN = """
    import sys
    import numpy as np
    import miniclip
    sys.path.insert(0, "tests")
    from seeded import ARCHS, seeded_images
    out = {{}}
    for name, directory in {checkpoints!r}.items():
        model, _ = miniclip.load(directory, backend="numba")
        tokens = np.load(f"tests/fixtures/model_{{name}}.npz")["tokens"].astype(np.int64)
        out[f"{{name}}_image"] = model.encode_image(seeded_images(ARCHS[name]))
        out[f"{{name}}_text"] = model.encode_text(tokens)
        from miniclip.backends.gemm import PackedWeight
        blocks = model.params["visual"]["transformer"]["resblocks"] + model.params["transformer"]["resblocks"]
        weights = [model.params["visual"]["conv1"]["weight"]] + [w for b in blocks for w in (
            b["attn"]["in_proj_weight"], b["attn"]["out_proj"]["weight"], b["mlp"]["c_fc"]["weight"],
            b["mlp"]["c_proj"]["weight"])]
        out[f"{{name}}_unpacked"] = sum(not (isinstance(w, PackedWeight) and "packed=True" in repr(w))
                                       for w in weights)
    np.savez({out!r}, **out)
"""


def test_the_numba_model_runs_every_linear_layer_through_its_packed_gemm(checkpoint, tmp_path):
    """backend="numba" in a fresh process: every linear layer's weight ends up in the packed GEMM's panel
    order (so the products went through the micro-kernel, not BLAS) and the outputs match the PyTorch
    references."""
    checkpoints = {name: str(checkpoint(name)) for name in ("odd_hf", "odd_oc")}
    out = tmp_path / "numba.npz"
    result = run_python(NUMBA_MODEL_RUN.format(checkpoints=checkpoints, out=str(out)))
    assert result.returncode == 0, result.stderr
    got = np.load(out)
    for name in checkpoints:
        assert int(got[f"{name}_unpacked"]) == 0, f"{name}: linear weights left unpacked after a forward pass"
        ref = fixture(name)
        for tower in ("image", "text"):
            err = relative_error(got[f"{name}_{tower}"], ref[f"{tower}_features"])
            record(f"{name} (numba, packed GEMM) / {tower}_features (rel)", err)
            assert err <= EMBED_RTOL, f"{name}: {tower} features off by {err:.3g}"


def test_the_caches_are_kept_under_miniclip_home(miniclip_home):
    """The whole test session runs with a temporary $MINICLIP_HOME (conftest.py), inherited by the child
    processes the tests start: nothing a test computes or downloads lands in the real home."""
    from miniclip.store import cache_dir, weights_dir

    assert cache_dir() == miniclip_home / "cache" and weights_dir() == miniclip_home
    result = run_python("import os; print(os.environ['MINICLIP_HOME'])")
    assert result.stdout.strip() == str(miniclip_home)
