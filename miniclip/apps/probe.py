"""Linear probes: multinomial logistic regression on frozen CLIP image features, in NumPy.

A linear probe measures how much a frozen representation already "knows" about a labelled task: train
only a linear classifier on the features and report held-out accuracy. The CLIP paper (section 3.2 and
appendix A.3) fits scikit-learn's L-BFGS logistic regression with an L2 penalty whose strength it picks
by a sweep on a validation split; this module does the same with an L-BFGS written here:

    probe = fit_probe(train_features, train_labels, C=10.0)
    accuracy = (probe.predict(test_features) == test_labels).mean()

The objective, for n examples x_i with labels y_i, weights W [d, K] and biases b [K], is

    f(W, b) = 1/n sum_i [ logsumexp(x_i W + b) - (x_i W + b)_{y_i} ] + ||W||^2 / (2 C n)

i.e. scikit-learn's ``C * sum(loss) + ||W||^2 / 2`` divided by ``C n``: the same minimizer, with the
loss per example of order one whatever n is. The bias is not penalized (also as scikit-learn). The
objective is smooth and, for finite C, strictly convex in W, so L-BFGS finds its unique minimum even on
separable data, where the unregularized loss has none.

The features are the L2-normalized embeddings from ``model.encode_image``. (The paper's probes on CLIP-ViT
use the class token before the final projection; the normalized joint-space embedding is what miniclip's
other tools use, and it is what the probe measures here.)
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from ..errors import MiniclipError
from ..ops import softmax

__all__ = [
    "DEFAULT_C_GRID",
    "LinearProbe",
    "OptimizeResult",
    "fit_probe",
    "lbfgs",
    "logistic_loss",
    "select_C",
    "stratified_split",
    "wolfe_line_search",
]

#: Regularization strengths tried by ``select_C``: one per decade, a coarse version of the paper's 96
#: log-spaced values between 1e-6 and 1e6 (appendix A.3); below 1e-2 a probe on unit-norm features predicts
#: the class prior.
DEFAULT_C_GRID: tuple[float, ...] = tuple(10.0 ** k for k in range(-2, 7))


# --------------------------------------------------------------------------------------------------
# The optimizer: L-BFGS with a strong-Wolfe line search (Nocedal & Wright, Numerical Optimization,
# 2nd ed., algorithms 3.5, 3.6 and 7.4)
# --------------------------------------------------------------------------------------------------


@dataclass
class OptimizeResult:
    x: np.ndarray  # the minimizer found
    fun: float  # f(x)
    grad: np.ndarray  # the gradient at x
    n_iter: int
    n_eval: int  # function + gradient evaluations
    converged: bool  # True when the gradient test passed
    message: str


def _cubic_min(a: float, fa: float, da: float, b: float, fb: float, db: float) -> float | None:
    """The minimizer of the cubic through (a, fa) and (b, fb) with slopes da, db (Nocedal & Wright 3.59),
    or None when that cubic has no minimum."""
    d1 = da + db - 3.0 * (fa - fb) / (a - b)
    disc = d1 * d1 - da * db
    if not np.isfinite(disc) or disc < 0:
        return None
    d2 = np.copysign(np.sqrt(disc), b - a)
    denom = db - da + 2.0 * d2
    if denom == 0 or not np.isfinite(denom):
        return None
    return b - (b - a) * (db + d2 - d1) / denom


def wolfe_line_search(phi: Callable[[float], tuple[float, float]], f0: float, d0: float, alpha: float = 1.0,
                      c1: float = 1e-4, c2: float = 0.9, max_evals: int = 40, f_noise: float = 0.0) -> float | None:
    """A step length satisfying the strong Wolfe conditions along a descent direction, or None.

    ``phi(alpha)`` returns (f(x + alpha p), directional derivative there); ``f0``/``d0`` are those at 0
    (``d0 < 0``). Sufficient decrease: f(alpha) <= f0 + c1 alpha d0; curvature: |phi'(alpha)| <= c2 |d0|.
    ``f_noise`` is how much f's rounding may hide: within it, sufficient decrease is judged from the slope
    (Hager & Zhang's approximate Wolfe conditions, SIAM J. Optim. 16(1), 2005) and smaller f differences
    do not count as increases; 0 (the default) gives the exact conditions.
    The curvature condition is what keeps L-BFGS's curvature pairs positive (s^T y > 0), so the inverse
    Hessian estimate stays positive definite. Bracketing phase, then ``zoom`` (algorithms 3.5 and 3.6).
    """
    if not d0 < 0:
        return None
    evals = 0

    def decreased(a: float, f: float, d: float) -> bool:
        # Sufficient decrease; or, where f's rounding (f_noise) hides it, Hager & Zhang's (2005)
        # "approximate Wolfe" test from the slope: phi'(a) <= (2 c1 - 1) phi'(0) means a decrease of
        # about the same size on a quadratic.
        return f <= f0 + c1 * a * d0 or (f <= f0 + f_noise and d <= (2 * c1 - 1) * d0)

    def zoom(lo, f_lo, d_lo, hi, f_hi, d_hi):
        nonlocal evals
        while evals < max_evals:
            width = hi - lo
            trial = _cubic_min(lo, f_lo, d_lo, hi, f_hi, d_hi)
            # Safeguard: stay well inside the bracket, else bisect (guarantees the bracket shrinks).
            if trial is None or not (min(lo, hi) + 0.1 * abs(width) <= trial <= max(lo, hi) - 0.1 * abs(width)):
                trial = lo + 0.5 * width
            f, d = phi(trial)
            evals += 1
            if not decreased(trial, f, d) or f >= f_lo + f_noise:
                hi, f_hi, d_hi = trial, f, d
            else:
                if abs(d) <= -c2 * d0:
                    return trial
                if d * (hi - lo) >= 0:
                    hi, f_hi, d_hi = lo, f_lo, d_lo
                lo, f_lo, d_lo = trial, f, d
            if abs(hi - lo) <= 1e-14 * max(1.0, abs(lo)):
                break
        # Out of evaluations: `lo` always satisfies sufficient decrease; accept it if it moved at all.
        return lo if lo > 0 else None

    prev, f_prev, d_prev = 0.0, f0, d0
    while evals < max_evals:
        f, d = phi(alpha)
        evals += 1
        if not np.isfinite(f):  # overflow far along the direction: step back
            alpha = prev + 0.5 * (alpha - prev)
            continue
        if not decreased(alpha, f, d) or (prev > 0 and f >= f_prev + f_noise):
            return zoom(prev, f_prev, d_prev, alpha, f, d)
        if abs(d) <= -c2 * d0:
            return alpha
        if d >= 0:
            return zoom(alpha, f, d, prev, f_prev, d_prev)
        prev, f_prev, d_prev = alpha, f, d
        alpha *= 2.0
    return None


def lbfgs(fun: Callable[[np.ndarray], tuple[float, np.ndarray]], x0: np.ndarray, *, max_iter: int = 1000,
          gtol: float = 1e-6, memory: int = 10) -> OptimizeResult:
    """Minimize a smooth function with L-BFGS (Nocedal & Wright algorithm 7.4/7.5).

    ``fun(x)`` returns (f, gradient). Stops when max|gradient| <= gtol * max(1, max|gradient at x0|), or
    after ``max_iter`` iterations, or when the line search can make no more progress (at the limits of
    float64). The inverse Hessian is approximated from the last ``memory`` steps s and gradient changes y
    with the two-loop recursion, starting from the scaled identity (s^T y / y^T y) I of eq. 7.20.

    Near a flat minimum, f changes by less than its own rounding long before the gradient is small (a
    step that shrinks the gradient 10x may change f by 1e-18); the line search then judges decrease from
    the slope (``f_noise``), so a tight ``gtol`` is reachable instead of stalling.
    """
    x = np.asarray(x0, dtype=np.float64).copy()
    f, g = fun(x)
    n_eval = 1
    threshold = gtol * max(1.0, float(np.max(np.abs(g))) if g.size else 0.0)
    pairs: list[tuple[np.ndarray, np.ndarray, float]] = []  # (s, y, 1 / y^T s)
    n_iter = 0
    while True:
        if not g.size or np.max(np.abs(g)) <= threshold:
            message = "gradient below tolerance"
            break
        if n_iter >= max_iter:
            message = f"reached max_iter={max_iter}"
            break
        n_iter += 1
        # Two-loop recursion: p = -H g.
        q = g.copy()
        alphas = []
        for s, y, rho in reversed(pairs):
            a = rho * (s @ q)
            q -= a * y
            alphas.append(a)
        if pairs:
            s, y, rho = pairs[-1]
            q *= (s @ y) / (y @ y)
        else:
            q /= max(1.0, float(np.linalg.norm(g)))  # first step: at most unit length
        for (s, y, rho), a in zip(pairs, reversed(alphas), strict=True):
            q += s * (a - rho * (y @ q))
        p = -q
        d0 = float(g @ p)
        if not d0 < 0:  # numerical trouble in the estimate: restart from steepest descent
            pairs.clear()
            p = -g / max(1.0, float(np.linalg.norm(g)))
            d0 = float(g @ p)

        cache: dict[float, tuple[float, np.ndarray]] = {}

        def phi(alpha: float, x=x, p=p, cache=cache) -> tuple[float, float]:
            fa, ga = fun(x + alpha * p)
            cache[alpha] = (fa, ga)
            return fa, float(ga @ p)

        alpha = wolfe_line_search(phi, f, d0, f_noise=1e-12 * max(1.0, abs(f)))
        n_eval += len(cache)
        if alpha is None:
            if pairs:  # the curvature memory may be stale: retry once along steepest descent
                pairs.clear()
                continue
            message = "line search could not decrease the objective further"
            break
        f_new, g_new = cache[alpha]
        s, y = alpha * p, g_new - g
        sy = float(s @ y)
        if sy > 1e-12 * float(np.linalg.norm(s) * np.linalg.norm(y)):  # keep H positive definite
            pairs.append((s, y, 1.0 / sy))
            if len(pairs) > memory:
                pairs.pop(0)
        x, f, g = x + s, f_new, g_new
    converged = bool(not g.size or np.max(np.abs(g)) <= threshold)
    return OptimizeResult(x, float(f), g, n_iter, n_eval, converged, message)


# --------------------------------------------------------------------------------------------------
# Multinomial logistic regression
# --------------------------------------------------------------------------------------------------


def logistic_loss(W: np.ndarray, b: np.ndarray, X: np.ndarray, y: np.ndarray, C: float
                  ) -> tuple[float, np.ndarray, np.ndarray]:
    """The probe's objective (see the module docstring) and its gradients with respect to W [d, K] and b [K].

    With P the softmax probabilities and Y the one-hot labels: dF/dW = X^T (P - Y) / n + W / (C n),
    dF/db = column sums of (P - Y) / n.
    """
    n = X.shape[0]
    z = X @ W + b  # [n, K] logits
    z_max = z.max(axis=1, keepdims=True)
    log_norm = z_max[:, 0] + np.log(np.exp(z - z_max).sum(axis=1))  # logsumexp, without overflow
    loss = float((log_norm - z[np.arange(n), y]).mean() + (W * W).sum() / (2.0 * C * n))
    residual = np.exp(z - log_norm[:, None])  # P
    residual[np.arange(n), y] -= 1.0  # P - Y
    return loss, X.T @ residual / n + W / (C * n), residual.mean(axis=0)


@dataclass
class LinearProbe:
    """A fitted probe: class probabilities softmax(x W + b) over ``classes``."""

    W: np.ndarray  # [d, K]
    b: np.ndarray  # [K]
    classes: list[str]
    C: float
    result: OptimizeResult

    def logits(self, features: np.ndarray) -> np.ndarray:  # [n, d] -> [n, K]
        return np.asarray(features, dtype=np.float64) @ self.W + self.b

    def predict_proba(self, features: np.ndarray) -> np.ndarray:  # [n, d] -> [n, K]
        return softmax(self.logits(features))

    def predict(self, features: np.ndarray) -> np.ndarray:  # [n, d] -> [n] class indices
        return self.logits(features).argmax(axis=1)


def fit_probe(features: np.ndarray, labels: Sequence[int] | np.ndarray, C: float = 1.0, *,
              classes: Sequence[str] | None = None, max_iter: int = 1000, gtol: float = 1e-6,
              init: LinearProbe | None = None) -> LinearProbe:
    """Fit multinomial logistic regression with penalty ||W||^2 / (2 C n) (larger C: weaker penalty).

    ``labels`` are integers 0..K-1 (K = len(classes) if given, else max label + 1). ``init`` warm-starts
    from another probe of the same shape (``select_C`` uses it along its grid).

    The optimizer stops when every gradient component is below ``gtol / max(1, C)`` (relative to the
    first gradient when that is larger than 1). Why scaled by C: the penalty is the only curvature the
    objective is sure to have, 1 / (C n) in every direction of W, so a gradient g can leave W as far as
    about C n |g| from the optimum. With an unscaled 1e-6, a probe at C = 1e4 stopped with coefficients
    1e-2 away from the optimum and 1.7% of its predictions different; scaled, the coefficients of the
    tests' problems agree with Newton's method to better than 1e-6 from C = 1e-2 to 1e6 (tests/test_probe.py).
    """
    X = np.asarray(features, dtype=np.float64)
    y = np.asarray(labels)
    if X.ndim != 2 or y.shape != (X.shape[0],) or X.shape[0] == 0:
        raise MiniclipError(f"fit_probe expects features [n, d] and n labels, got {list(X.shape)} and {list(y.shape)}")
    if not np.issubdtype(y.dtype, np.integer) or y.min() < 0:
        raise MiniclipError("labels must be integer class indices 0..K-1")
    if not C > 0:
        raise MiniclipError(f"C must be positive, got {C}")
    if not np.all(np.isfinite(X)):
        raise MiniclipError("features contain NaN or infinity")
    K = len(classes) if classes is not None else int(y.max()) + 1
    if y.max() >= K:
        raise MiniclipError(f"label {y.max()} is out of range for {K} classes")
    d = X.shape[1]

    def fun(theta: np.ndarray) -> tuple[float, np.ndarray]:
        W, b = theta[:d * K].reshape(d, K), theta[d * K:]
        loss, gW, gb = logistic_loss(W, b, X, y, C)
        return loss, np.concatenate([gW.ravel(), gb])

    theta0 = np.zeros(d * K + K) if init is None else np.concatenate([init.W.ravel(), init.b])
    result = lbfgs(fun, theta0, max_iter=max_iter, gtol=gtol / max(1.0, C))
    W, b = result.x[:d * K].reshape(d, K), result.x[d * K:]
    names = list(classes) if classes is not None else [str(k) for k in range(K)]
    return LinearProbe(W, b, names, float(C), result)


def stratified_split(labels: Sequence[int] | np.ndarray, test_fraction: float = 0.25, seed: int = 0
                     ) -> tuple[np.ndarray, np.ndarray]:
    """(train indices, test indices) holding out ``test_fraction`` of every class, rounded, at least one
    example per class on each side when the class has two or more (a class with one example is train-only).
    Deterministic for a given seed."""
    if not 0 < test_fraction < 1:
        raise MiniclipError(f"the test fraction must be between 0 and 1, got {test_fraction}")
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    train, test = [], []
    for k in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == k))
        n_test = 0 if len(members) < 2 else min(max(1, round(len(members) * test_fraction)), len(members) - 1)
        test.extend(members[:n_test])
        train.extend(members[n_test:])
    return np.sort(np.array(train, dtype=np.int64)), np.sort(np.array(test, dtype=np.int64))


def select_C(features: np.ndarray, labels: np.ndarray, grid: Sequence[float] = DEFAULT_C_GRID, *,
             validation_fraction: float = 0.25, seed: int = 0) -> tuple[float, dict[float, float]]:
    """Pick C by accuracy on a stratified validation split of the given (training) data, as the paper's
    hyper-parameter sweep does (appendix A.3). Returns (best C, {C: validation accuracy}); ties go to the
    smallest C, the strongest regularization, which generalizes no worse on the evidence available."""
    labels = np.asarray(labels)
    fit_idx, val_idx = stratified_split(labels, validation_fraction, seed)
    if len(val_idx) == 0:
        raise MiniclipError("too few examples per class to hold out a validation split for choosing C")
    K = int(labels.max()) + 1
    scores: dict[float, float] = {}
    previous = None
    for C in sorted(grid):  # increasing C, each fit warm-started from the previous (more regularized) one
        previous = fit_probe(features[fit_idx], labels[fit_idx], C, classes=[str(k) for k in range(K)],
                             init=previous)
        scores[C] = float((previous.predict(features[val_idx]) == labels[val_idx]).mean())
    best = max(scores.values())
    return min(C for C, s in scores.items() if s == best), scores

