"""Every Numba kernel against the NumPy reference op it replaces (ops.py is the spec)."""

from __future__ import annotations

import time

import numba
import numpy as np
import pytest
from numba import njit

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


# The micro-kernel at every vector width it may be compiled for (16: AVX-512, 8: AVX2, 4: elsewhere), whatever
# this machine has (LLVM splits vectors wider than the host's), against its plain-loop version and NumPy.
@njit
def _tile_16(a, a_start, row_stride, k_stride, rows, panels, w_start, K, c, c_start):
    gemm.tile_kernel(a, a_start, row_stride, k_stride, rows, panels, w_start, K, c, c_start, 16)


@njit
def _tile_8(a, a_start, row_stride, k_stride, rows, panels, w_start, K, c, c_start):
    gemm.tile_kernel(a, a_start, row_stride, k_stride, rows, panels, w_start, K, c, c_start, 8)


@njit
def _tile_4(a, a_start, row_stride, k_stride, rows, panels, w_start, K, c, c_start):
    gemm.tile_kernel(a, a_start, row_stride, k_stride, rows, panels, w_start, K, c, c_start, 4)


@pytest.mark.parametrize("vw, kernel", [(16, _tile_16), (8, _tile_8), (4, _tile_4)])
@pytest.mark.parametrize("rows, K", [(gemm.MR, 37), (1, 5), (gemm.MR - 1, 1), (3, 300)])
def test_tile_kernel_matches_loops_and_numpy(vw, kernel, rows, K):
    nr = gemm.NV * vw
    M_total, N = rows + 3, nr - 3  # A has rows beyond the tile (never read); the panel's last 3 columns are padding
    a, w = randn(M_total, K), randn(N, K)
    panels = gemm.pack(w, nr)  # [1, K, nr]
    assert panels.shape == (1, K, nr) and np.all(panels[0, :, N:] == 0)
    c0 = randn(gemm.MR * nr + 5)  # the tile starts at offset 5 and is accumulated into
    for row_stride, k_stride, source in ((K, 1, a), (1, gemm.MR, None)):  # A's rows in place, then packed
        if source is None:  # [K, MR] micro-panel of rows 2..2+rows (the last one repeated), as pack_rows makes
            source = np.stack([a[2 + min(r, rows - 1)] for r in range(gemm.MR)], axis=1).copy()
            start = 0
        else:
            start = 2 * K
        got, expected_loops = c0.copy(), c0.copy()
        kernel(source, start, row_stride, k_stride, rows, panels, 0, K, got, 5)
        gemm.tile_reference(source, start, row_stride, k_stride, rows, panels, 0, K, expected_loops, 5)
        np.testing.assert_allclose(got, expected_loops, rtol=1e-5, atol=1e-5 * np.sqrt(K))
        tile = got[5:].reshape(gemm.MR, nr)
        rows_used = a[[2 + min(r, rows - 1) for r in range(gemm.MR)]]
        expected = c0[5:].reshape(gemm.MR, nr) + rows_used @ np.concatenate([w, np.zeros((nr - N, K), np.float32)]).T
        np.testing.assert_allclose(tile, expected, rtol=1e-4, atol=1e-4 * np.sqrt(K))
        assert got[:5].tolist() == c0[:5].tolist()  # nothing written before the tile


def test_tile_kernel_uses_the_hosts_vector_width():
    features = gemm._host_features()
    assert gemm.VECTOR_WIDTH == gemm._vector_width(features) and gemm.NR == gemm.NV * gemm.VECTOR_WIDTH
    assert gemm._vector_width("+sse2,+avx,+avx2,-avx512f") == 8 and gemm._vector_width("+neon") == 4
    assert gemm._vector_width("+avx2,+avx512f") == 16


@pytest.fixture(params=[1, 2], ids=["1 thread", "2 threads"])
def threads(request):
    before = numba.get_num_threads()
    nbo.set_threads(request.param)
    yield request.param
    numba.set_num_threads(before)


# Ragged everywhere: M, N and K not multiples of MR, NR or KC; M = 1; a K past one KC block; N below one panel.
SHAPES = [(1, 5, 3), (1, 768, 97), (7, 13, 5), (13, 300, 70), (50, 40, 2 * gemm.NR + 1), (61, 257, 33),
          (6, 512, gemm.NR)]


@pytest.mark.parametrize("M, K, N", SHAPES)
@pytest.mark.parametrize("epilogue", ["bias", "none", "quick_gelu", "gelu", "residual", "residual, no bias"])
@pytest.mark.parametrize("path", ["serial", "parallel, small tasks"])
def test_packed_linear_and_epilogues_match_numpy(M, K, N, epilogue, path, threads, monkeypatch):
    if path != "serial":  # force the thread pool, with several ragged row blocks per product
        monkeypatch.setattr(nbo, "SERIAL_GEMM_WORK", 0)
        monkeypatch.setattr(nbo, "A_BLOCK_BYTES", 4 * K * 2 * gemm.MR)
    x, w = randn(M, K, scale=2.0), randn(N, K, scale=1 / np.sqrt(K))
    b = None if epilogue in ("none", "residual, no bias") else randn(N)
    act = epilogue if epilogue in ("quick_gelu", "gelu") else None
    r = randn(M, N) if epilogue.startswith("residual") else None
    expected = ops.linear(x, w, b, act=act, residual=r)
    packed = gemm.PackedWeight(w.copy())
    assert_close(nbo.linear(x, packed, b, act=act, residual=r), expected, rtol=1e-4, atol=1e-5)
    assert_close(nbo.linear(x, w, b, act=act, residual=r), expected, rtol=1e-4, atol=1e-5)  # packed per call


def test_packed_weight_packs_once_on_first_use_and_lets_go_of_the_source():
    w = randn(40, 24)
    packed = gemm.PackedWeight(w.reshape(40, 2, 3, 4))  # as conv1.weight [D, 3, P, P]
    assert packed.shape == (40, 24) and packed.reshape(40, -1) is packed and "packed=False" in repr(packed)
    with pytest.raises(ValueError, match="packed weight"):
        packed.reshape(24, 40)
    panels = packed.panels
    assert panels is packed.panels and packed._source is None  # the checkpoint's array is no longer held
    np.testing.assert_array_equal(panels.transpose(0, 2, 1).reshape(-1, 24)[:40], w)
    assert np.all(panels.transpose(0, 2, 1).reshape(-1, 24)[40:] == 0)


def test_prepare_packs_the_linear_weights_and_leaves_the_rest():
    params = {"visual.conv1.weight": randn(8, 3, 2, 2), "visual.proj": randn(8, 4),
              "visual.transformer.resblocks.0.attn.in_proj_weight": randn(24, 8),
              "visual.transformer.resblocks.0.attn.in_proj_bias": randn(24),
              "transformer.resblocks.3.mlp.c_fc.weight": randn(32, 8), "logit_scale": np.float32(4.6)}
    prepared = nbo.prepare(params)
    packed = {n for n, v in prepared.items() if isinstance(v, gemm.PackedWeight)}
    assert packed == {"visual.conv1.weight", "visual.transformer.resblocks.0.attn.in_proj_weight",
                      "transformer.resblocks.3.mlp.c_fc.weight"}
    assert all(prepared[n] is params[n] for n in params.keys() - packed)
    assert not any(isinstance(v, gemm.PackedWeight) for v in params.values())  # the caller's dict is unchanged


def test_first_run_notice_when_compiling_is_slow(monkeypatch, capsys):
    monkeypatch.setattr(nbo, "_noticed", False)
    monkeypatch.setattr(nbo, "_started", set())
    with nbo._first_run("fast op"):
        pass
    with nbo._first_run("slow op"):
        time.sleep(1.5)  # stands for a compilation longer than a second
    with nbo._first_run("another slow op"):
        time.sleep(1.5)
    assert capsys.readouterr().err.count("compiling kernels, first run only") == 1


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
