"""The reference ops (ops.py) and every CPU backend against values known independently: math.erfc, and
LayerNorm worked out by hand where its epsilon matters. (test_numba_ops.py compares the Numba kernels with
ops.py; these tests check the spec itself, so a mistake made in both places still fails.)"""

from __future__ import annotations

import math

import numpy as np
import pytest

from miniclip import ops
from miniclip.backends import get_backend

CPU_BACKENDS = ["numpy", "numba"]
U = 2.0**-24  # float32's unit roundoff: one correctly rounded float32 operation is off by at most this, relatively
ERFC_FIT = 1.2e-7  # the Numerical Recipes fit's relative error bound, as README and ops.erfc state it


# ---------------------------------------------------------------------------------------------------
# erfc and exact GELU

WIDE = np.concatenate([np.linspace(-6, 26, 320_001), [-1e-30, 0.0, 1e-30, 1e-8, 0.5, 1.0, 3.0]])


def test_erfc_relative_error_is_below_the_stated_bound():
    """ops.erfc against math.erfc from -6 (erfc = 2) to 26 (erfc ~ 6e-296, near float64's smallest), in
    float64, where it is the fit alone: relative error < 1.2e-7 everywhere, as the README says."""
    got = ops.erfc(WIDE)
    assert got.dtype == np.float64
    expected = np.array([math.erfc(v) for v in WIDE])
    rel = np.abs(got - expected) / expected
    assert rel.max() < ERFC_FIT, f"relative error {rel.max():.3g} at x = {WIDE[rel.argmax()]}"


def test_erfc_in_float32_adds_only_the_final_rounding():
    x = WIDE[WIDE < 9].astype(np.float32)  # erfc(9) ~ 4e-37: below, float32 results are denormal
    got = ops.erfc(x)
    assert got.dtype == np.float32
    expected = np.array([math.erfc(float(v)) for v in x])
    rel = np.abs(got.astype(np.float64) - expected) / expected
    assert rel.max() < ERFC_FIT + U, f"relative error {rel.max():.3g} at x = {x[rel.argmax()]}"


def exact_gelu(x: float) -> float:
    return 0.5 * x * math.erfc(-x / math.sqrt(2.0))


def gelu_condition(x: float) -> float:
    """|x Phi'(x) / Phi(x)|: how much a relative error in Phi's argument grows in Phi(x) (~ x^2 for x << 0)."""
    phi, Phi = math.exp(-x * x / 2) / math.sqrt(2 * math.pi), 0.5 * math.erfc(-x / math.sqrt(2.0))
    return abs(x * phi / Phi)


@pytest.mark.parametrize("backend, approximation", [("numpy", ERFC_FIT), ("numba", ERFC_FIT + 3e-7)])
def test_gelu_is_exact_gelu_to_float32_rounding(backend, approximation):
    """GELU(x) = x/2 erfc(-x/sqrt 2) against math.erfc in float64, from -12 (GELU ~ -2e-32) to 30. The
    bound is the error analysis of a float32 GELU, not a fitted number: the approximation's own error
    (erfc's fit; for numba also its polynomial exp, < 3e-7, README), plus the float32 argument x * (1/sqrt 2),
    off by <= 1.3 U (the rounded constant and the product), amplified by GELU's condition number (~ x^2 for
    negative x: any float32 GELU, PyTorch's too, loses those digits there), plus the roundings of the
    result (2). numba computes the exponent -z^2 + P(t) of erfc in float32 too (z = |x|/sqrt 2): rounding
    z^2 ~ cond/2 and the sum adds up to 2 x 0.5 cond U, hence 2.3 in place of 1.3, taken as 2.5 (observed:
    up to 2.2 cond U). A tanh-form GELU is off by 1e-3 to 1 relatively: far outside."""
    x = np.concatenate([np.linspace(-12, 30, 200_000), np.linspace(-1e-3, 1e-3, 2000), [-1e-30, 1e-30]])
    x = x.astype(np.float32).reshape(1, -1)
    got = get_backend(backend).activation(x, "gelu")[0].astype(np.float64)
    expected = np.array([exact_gelu(float(v)) for v in x[0]])
    amplification = 1.3 if backend == "numpy" else 2.5
    bound = approximation + (amplification * np.array([gelu_condition(float(v)) for v in x[0]]) + 2) * U
    rel = np.abs(got - expected) / np.abs(expected)
    worst = int(np.argmax(rel / bound))
    assert np.all(rel <= bound), f"x = {x[0, worst]}: relative error {rel[worst]:.3g} > {bound[worst]:.3g}"
    assert 0.0 not in x and get_backend(backend).activation(np.zeros((1, 1), np.float32), "gelu")[0, 0] == 0.0


# ---------------------------------------------------------------------------------------------------
# LayerNorm where epsilon matters

DELTA = 2.0**-10  # exactly representable, as are 1 +- DELTA and 3 +- DELTA: every row below is exact in float32


def small_variance_rows(D: int) -> np.ndarray:  # [3, D]
    signs = np.where(np.arange(D) % 2 == 0, 1.0, -1.0)  # D even: the mean is exactly the offset
    return np.stack([1.0 + DELTA * signs,   # variance DELTA^2 ~ 1e-6, below eps = 1e-5: eps dominates
                     3.0 + DELTA * signs,   # the same around another mean (cancellation in x - mean)
                     np.full(D, 7.0)]).astype(np.float32)  # variance 0: the output is the bias alone


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("D", [8, 96, 768])
@pytest.mark.parametrize("eps", [1e-5, 1e-3])
def test_layer_norm_of_small_variance_rows_by_hand(backend, D, eps):
    """Rows x = m +- delta: mean m, biased variance delta^2, so LayerNorm gives +- delta / sqrt(delta^2 + eps)
    (1/sqrt(11) = 0.3015 for eps = 1e-5 and delta^2 ~ 1e-6; without eps it would be +- 1), times the weight,
    plus the bias. A constant row gives the bias exactly."""
    ops_ = get_backend(backend)
    x = small_variance_rows(D)
    weight, bias = np.full(D, 2.0, np.float32), np.linspace(-0.5, 0.5, D).astype(np.float32)
    got = ops_.layer_norm(x[None], weight, bias, eps=eps)[0]  # as the model calls it: [B, T, D]
    signs = np.where(np.arange(D) % 2 == 0, 1.0, -1.0)
    normalized = DELTA / math.sqrt(DELTA**2 + eps)
    expected = np.stack([2.0 * normalized * signs + bias, 2.0 * normalized * signs + bias, bias])
    # Everything before the final multiply-add is exact or one rounding away (sums of exact values,
    # sqrt, division): a few U of |2 * normalized| ~ 0.6 (eps 1e-5) at most; 1e-6 is ~10 U there.
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-6)
    np.testing.assert_array_equal(got[2], bias)
