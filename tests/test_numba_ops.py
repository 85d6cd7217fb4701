"""Every Numba kernel against the NumPy reference op it replaces (ops.py is the spec)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from miniclip import ops
from miniclip.backends import gemm
from miniclip.backends import numba_ops as nbo

RNG = np.random.default_rng(1234)


def randn(*shape, scale=1.0):
    return (RNG.standard_normal(shape) * scale).astype(np.float32)


def assert_close(actual, expected, rtol=1e-5, atol=1e-5):
    assert actual.dtype == np.float32 and actual.shape == expected.shape
    np.testing.assert_allclose(actual, expected, rtol=rtol, atol=atol)


def test_exp_matches_numpy_to_float32_rounding():
    x = np.concatenate([np.linspace(-87, 88, 100_001, dtype=np.float32), randn(1000, scale=10)])
    bits = np.empty(len(x), np.int32)
    y = x.copy()
    nbo.exp_inplace(y, bits)
    expected = np.exp(x.astype(np.float64))
    assert np.max(np.abs(y - expected) / expected) < 3e-7


def test_exp_saturates_instead_of_overflowing():
    y = np.array([-1000.0, -np.inf, 1000.0], np.float32)
    nbo.exp_inplace(y, np.empty(3, np.int32))
    assert y[0] < 1e-37 and y[1] < 1e-37 and np.isfinite(y[2])


@pytest.mark.parametrize("M, K, N", [(1, 1, 1), (7, 13, 5), (50, 768, 2304), (101, 64, 99), (4, 8, 4),
                                     (gemm.SMALL_M, 40, 33), (gemm.SMALL_M + 1, 40, 33)])
def test_gemm_matches_blas(M, K, N):  # both sides of SMALL_M: the transposed BLAS product and the plain one
    a, w = randn(M, K), randn(N, K)
    assert_close(gemm.numba_matmul_nt(a, w), a @ w.T, rtol=1e-4, atol=1e-4 * np.sqrt(K))
    assert_close(gemm.blas_matmul_nt(a, w), a @ w.T)


@pytest.mark.parametrize("N, M", [(1, 1), (16, 16), (33, 17), (3072, 50), (5, 70)])
def test_transpose_into(N, M):  # ragged blocks at both edges
    ct, c = randn(N, M), np.full((M, N), np.nan, np.float32)
    gemm.transpose_into(ct, c)
    np.testing.assert_array_equal(c, ct.T)


def test_gemm_choice_can_be_forced(monkeypatch):
    monkeypatch.setattr(gemm, "_chosen", None)
    monkeypatch.setenv("MINICLIP_GEMM", "numba")
    assert gemm.choice() == "numba"
    monkeypatch.setattr(gemm, "_chosen", None)
    monkeypatch.setenv("MINICLIP_GEMM", "mkl")
    with pytest.raises(ValueError, match="MINICLIP_GEMM"):
        gemm.choice()


def test_gemm_choice_is_measured_once_and_cached(monkeypatch, tmp_path):
    monkeypatch.setattr(gemm, "_chosen", None)
    monkeypatch.delenv("MINICLIP_GEMM", raising=False)
    monkeypatch.setenv("MINICLIP_HOME", str(tmp_path))
    calls = []
    monkeypatch.setattr(gemm, "measure", lambda: calls.append(1) or {"blas": 1.0, "numba": 2.0})
    assert gemm.choice() == "numba"
    monkeypatch.setattr(gemm, "_chosen", None)
    assert gemm.choice() == "numba" and len(calls) == 1  # second process: read from the cache file
    assert (tmp_path / "cache" / "gemm_choice.json").is_file()
    # another environment (say OPENBLAS_CORETYPE set) is measured apart, and both stay cached
    monkeypatch.setattr(gemm, "_machine_key", lambda: "other")
    monkeypatch.setattr(gemm, "measure", lambda: calls.append(1) or {"blas": 2.0, "numba": 1.0})
    monkeypatch.setattr(gemm, "_chosen", None)
    assert gemm.choice() == "blas" and len(calls) == 2
    monkeypatch.setattr(gemm, "_chosen", None)
    assert gemm.choice() == "blas" and len(calls) == 2
    assert len(json.loads((tmp_path / "cache" / "gemm_choice.json").read_text())) == 2


@pytest.mark.parametrize("act", ["quick_gelu", "gelu", None])
@pytest.mark.parametrize("shape", [(2, 5, 24), (1, 50, 768), (3, 7)])
def test_linear_with_activation(act, shape):
    x = randn(*shape, scale=2.0)
    w, b = randn(37, shape[-1], scale=1 / np.sqrt(shape[-1])), randn(37)
    assert_close(nbo.linear(x, w, b, act=act), ops.linear(x, w, b, act=act))


def test_linear_with_residual_and_without_bias():
    x, w, b, r = randn(2, 9, 16), randn(11, 16), randn(11), randn(2, 9, 11)
    assert_close(nbo.linear(x, w, b, residual=r), ops.linear(x, w, b, residual=r))
    assert_close(nbo.linear(x, w), ops.linear(x, w))
    assert_close(nbo.linear(x, w, residual=r), ops.linear(x, w, residual=r))


def test_linear_accepts_non_contiguous_inputs():
    x = randn(4, 10, 32)[:, ::2]  # strided view, as the model's x[:, keep] produces
    w = randn(8, 32)
    assert_close(nbo.linear(x, w.T.copy().T, None), ops.linear(x, w, None))


@pytest.mark.parametrize("kind", ["quick_gelu", "gelu"])
def test_activation_over_a_wide_range(kind):
    x = np.linspace(-30, 30, 20_001, dtype=np.float32).reshape(3, -1)
    assert_close(nbo.activation(x, kind), ops.activation(x, kind), rtol=2e-6, atol=2e-7)


@pytest.mark.parametrize("shape", [(2, 50, 768), (1, 3, 5), (4, 80)])
def test_layer_norm(shape):
    x, g, b = randn(*shape, scale=3.0) + 5.0, randn(shape[-1]), randn(shape[-1])
    assert_close(nbo.layer_norm(x, g, b, eps=1e-5), ops.layer_norm(x, g, b, eps=1e-5), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("B, T, D, H", [(2, 50, 768, 12), (3, 77, 512, 8), (1, 1, 64, 1), (2, 26, 96, 3),
                                        (1, 13, 80, 2)])
def test_attention(causal, B, T, D, H):
    qkv = randn(B, T, 3 * D, scale=2.0)  # large scores: far from uniform attention
    assert_close(nbo.attention(qkv, H, causal), ops.attention(qkv, H, causal), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("B, H", [(1, 1), (3, 5), (2, 64)])  # fewer, as many and more tasks than chunks
def test_attention_parallel_and_serial_paths_agree(B, H):
    qkv = randn(B, 9, 3 * 16 * H, scale=2.0)
    parallel, serial = (np.full((B, 9, 16 * H), np.nan, np.float32) for _ in range(2))
    nbo.attention_heads(qkv, H, True, parallel, 8)
    nbo.attention_tasks(qkv, H, True, serial, 0, B * H)
    np.testing.assert_array_equal(parallel, serial)  # every task written, by the same code
    assert_close(serial, ops.attention(qkv, H, True), rtol=1e-4, atol=1e-5)


def test_attention_is_causal():
    """Changing a later token must not change an earlier token's output."""
    qkv = randn(1, 10, 3 * 64)
    changed = qkv.copy()
    changed[0, 7:] += 1.0
    a, b = nbo.attention(qkv, 1, True), nbo.attention(changed, 1, True)
    np.testing.assert_array_equal(a[0, :7], b[0, :7])
    assert not np.allclose(a[0, 7:], b[0, 7:])


def test_gemm_choice_keeps_blas_unless_numba_is_clearly_faster(monkeypatch, tmp_path):
    monkeypatch.setattr(gemm, "_chosen", None)
    monkeypatch.delenv("MINICLIP_GEMM", raising=False)
    monkeypatch.setenv("MINICLIP_HOME", str(tmp_path))
    monkeypatch.setattr(gemm, "measure", lambda: {"blas": 1.0, "numba": 1.1})
    assert gemm.choice() == "blas"
