"""The benchmark's bookkeeping (speed itself is measured by `python -m miniclip.bench`, never by tests)."""

from __future__ import annotations

import numpy as np
import pytest

from miniclip import bench
from miniclip.config import ARCHITECTURES
from miniclip.weights import expected_shapes


def test_flop_counts_match_the_published_figures():
    cfg = ARCHITECTURES["ViT-B-32"]
    assert round(bench.flops_per_image(cfg) / 1e9, 2) == 8.82  # as stated in the Numba issue
    assert round(bench.flops_per_text(cfg) / 1e9, 2) == 5.96


def test_random_params_have_every_tensor_of_the_architecture():
    cfg = ARCHITECTURES["ViT-B-32"]
    params = bench.random_params(cfg)
    assert {n: p.shape for n, p in params.items()} == expected_shapes(cfg)
    assert all(p.dtype == np.float32 for p in params.values())


def test_inputs_are_shared_and_captions_are_5_to_20_words():
    cfg = ARCHITECTURES["ViT-B-32"]
    a, b = bench.bench_inputs(cfg, 8), bench.bench_inputs(cfg, 8)
    np.testing.assert_array_equal(a["image"], b["image"])
    assert a["captions"] == b["captions"] and all(5 <= len(c.split()) <= 20 for c in a["captions"])


def test_ratio_table(capsys):
    rows = [{"backend": "numba", "kind": "image", "batch": 32, "items_per_s": 30.0},
            {"backend": "torch", "kind": "image", "batch": 32, "items_per_s": 20.0}]
    bench._print_ratios(rows, "numba")
    assert "| image | 32 | 1.50x |" in capsys.readouterr().out
    bench._print_ratios(rows, "cupy")  # not in the run: nothing printed
    assert capsys.readouterr().out == ""


def test_profile_labels_and_sums():
    """--profile's bookkeeping on a tiny seeded model: every op of the seam is labelled, and the per-op times
    plus the rest add up to the pass's total."""
    import miniclip.ops as ops

    timed = bench.TimedOps(ops)
    x, w, b = np.ones((2, 3, 4), np.float32), np.ones((5, 4), np.float32), np.zeros(5, np.float32)
    y = timed.linear(x, w, b, act="quick_gelu")
    timed.linear(y, weight=np.ones((4, 5), np.float32), bias=None, residual=x)
    timed.layer_norm(x, np.ones(4, np.float32), np.zeros(4, np.float32))
    assert timed.calls == {"linear 4->5 + quick_gelu": 1, "linear 5->4 + residual": 1, "layer_norm": 1}
    assert timed.split_heads is ops.split_heads  # everything else passes through untimed
    np.testing.assert_allclose(y, ops.linear(x, w, b, act="quick_gelu"))


def test_profile_of_a_small_architecture(monkeypatch):
    from miniclip.config import CLIPConfig

    small = CLIPConfig(embed_dim=16, image_size=32, patch_size=16, vision_width=32, vision_layers=2,
                       vision_heads=2, vision_mlp_dim=64, context_length=32, vocab_size=49408, text_width=32,
                       text_layers=2, text_heads=2, text_mlp_dim=64)
    monkeypatch.setitem(bench.ARCHITECTURES, "small", small)
    rows = bench.bench_profile("small", "numpy", batch=2, repeats=2)
    for kind in ("image", "captions"):
        mine = [r for r in rows if r["kind"] == kind]
        assert abs(sum(r["ms"] for r in mine) - mine[0]["total_ms"]) < 1e-6
        assert {r["op"] for r in mine} >= {"layer_norm", "attention", "linear 32->96"}
        assert sum(r["calls"] for r in mine if r["op"] == "attention") == 2  # one per block


TINY = dict(embed_dim=16, image_size=32, patch_size=16, vision_width=32, vision_layers=1, vision_heads=1,
            vision_mlp_dim=64, context_length=16, vocab_size=49408, text_width=32, text_layers=1, text_heads=1,
            text_mlp_dim=64)


@pytest.mark.parametrize("mode, header", [
    ("--gemm", "| product (batch) | threads | OpenBLAS GFLOP/s | packed Numba GEMM GFLOP/s | Numba / OpenBLAS |"),
    ("--load", "| model | layout | file dtype | file MiB | load s |"),
    ("--cold", "| model | contender | cold start s | peak RSS MiB |"),
])
def test_bench_commands_run_on_a_tiny_model(mode, header, monkeypatch, capsys):
    """Smoke: the commands docs/performance.md cites (`python -m miniclip.bench --gemm / --load / --cold`) run
    to the end and print their table, on a model small enough to take seconds. Their child processes
    (loading, cold start) are real; only the repeats are cut to one, as speed is not tested here."""
    from miniclip.config import CLIPConfig

    monkeypatch.setitem(bench.ARCHITECTURES, "tiny", CLIPConfig(**TINY))
    timer, cold = bench._time, bench.bench_cold
    monkeypatch.setattr(bench, "_time", lambda fn, **kwargs: timer(fn, min_repeats=1, min_seconds=0.0))
    monkeypatch.setattr(bench, "bench_cold", lambda model, contenders: cold(model, contenders, repeats=1))
    # --cold with the NumPy backend only: a Numba child process spends ~4 s loading its compiled kernels,
    # and what differs for it is only the backend's name, which miniclip.load checks everywhere else
    backends = ["--backend", "numpy"] if mode == "--cold" else []
    # --gemm times each product in a child process per thread count, which knows only the registered
    # architectures: ViT-B-32's four products at batch 1, one thread (about 10 s)
    model = ["--model", "ViT-B-32", "--threads", "1"] if mode == "--gemm" else ["--model", "tiny"]
    bench.main([mode, *model, "--batch", "1", *backends])
    out = capsys.readouterr().out
    assert header in out
    rows = [line for line in out.splitlines() if line.startswith("| ") and "---" not in line][1:]
    expected = {"--gemm": 4, "--load": 4, "--cold": 1}[mode]  # 4 products; 2 layouts x 2 dtypes; 1 backend
    assert len(rows) == expected, out
    assert all("tiny" in row for row in rows if mode != "--gemm") and "nan" not in out
