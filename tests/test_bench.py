"""The benchmark's bookkeeping (speed itself is measured by `python -m miniclip.bench`, never by tests)."""

from __future__ import annotations

import numpy as np

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
