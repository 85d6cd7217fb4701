"""The linear probe (miniclip/probe.py): the objective's gradient, the L-BFGS optimizer and its line search,
logistic regression against independent answers, the stratified split, and `miniclip probe` end to end."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

import miniclip
from miniclip.apps.probe import (
    fit_probe,
    lbfgs,
    logistic_loss,
    select_C,
    stratified_split,
    wolfe_line_search,
)
from miniclip.cli import main


def blobs(n_per_class, centers, spread, seed):
    rng = np.random.default_rng(seed)
    X = np.concatenate([c + spread * rng.normal(size=(n_per_class, len(c))) for c in centers])
    y = np.repeat(np.arange(len(centers)), n_per_class)
    return X, y


def test_gradient_matches_finite_differences():
    rng = np.random.default_rng(1)
    X, y = rng.normal(size=(20, 5)), rng.integers(0, 4, size=20)
    W, b, C = rng.normal(size=(5, 4)), rng.normal(size=4), 0.7
    _, gW, gb = logistic_loss(W, b, X, y, C)
    h = 1e-6
    for index in np.ndindex(W.shape):
        E = np.zeros_like(W)
        E[index] = h
        numeric = (logistic_loss(W + E, b, X, y, C)[0] - logistic_loss(W - E, b, X, y, C)[0]) / (2 * h)
        assert gW[index] == pytest.approx(numeric, abs=1e-8)
    for k in range(4):
        e = np.zeros(4)
        e[k] = h
        numeric = (logistic_loss(W, b + e, X, y, C)[0] - logistic_loss(W, b - e, X, y, C)[0]) / (2 * h)
        assert gb[k] == pytest.approx(numeric, abs=1e-8)


def test_loss_is_stable_for_huge_logits():
    X, y = np.array([[1000.0], [-1000.0]]), np.array([0, 1])
    loss, gW, gb = logistic_loss(np.array([[5.0, -5.0]]), np.zeros(2), X, y, 1.0)
    assert np.isfinite(loss) and np.all(np.isfinite(gW)) and np.all(np.isfinite(gb))


def test_line_search_returns_a_strong_wolfe_step():
    def phi(a):  # f(x) = (x - 3)^4 + x along p = 1 from x = 0: needs expansion then zoom
        return (a - 3.0) ** 4 + a, 4 * (a - 3.0) ** 3 + 1.0

    f0, d0 = phi(0.0)
    for start in (0.01, 1.0, 50.0):
        alpha = wolfe_line_search(phi, f0, d0, alpha=start)
        f, d = phi(alpha)
        assert f <= f0 + 1e-4 * alpha * d0 and abs(d) <= 0.9 * abs(d0)
    assert wolfe_line_search(phi, f0, 1.0) is None  # not a descent direction


def test_lbfgs_minimizes_rosenbrock():
    def rosenbrock(x):
        f = 100 * (x[1] - x[0] ** 2) ** 2 + (1 - x[0]) ** 2
        return f, np.array([-400 * x[0] * (x[1] - x[0] ** 2) - 2 * (1 - x[0]), 200 * (x[1] - x[0] ** 2)])

    result = lbfgs(rosenbrock, np.array([-1.2, 1.0]), gtol=1e-9)
    np.testing.assert_allclose(result.x, [1.0, 1.0], atol=1e-6)
    assert result.n_iter < 100


def test_tiny_problem_matches_brute_force():
    """Two classes, one feature: the probe's (w1 - w0, b1 - b0) must be the minimizer found by searching a
    grid, refined around its best point, of the equivalent binary objective
    mean(log(1 + exp(-s (d x + c)))) + d^2 / (4 C n)  (W's columns sum to zero at the optimum)."""
    x = np.array([-2.0, -1.0, -0.5, 0.3, 0.1, 1.0, 1.5, 2.5])
    y = np.array([0, 0, 0, 0, 1, 1, 1, 1])  # not separable (0.3 vs 0.1)
    C, n = 2.0, len(x)
    probe = fit_probe(x[:, None], y, C, gtol=1e-10)
    d, c = probe.W[0, 1] - probe.W[0, 0], probe.b[1] - probe.b[0]

    sign = np.where(y == 1, 1.0, -1.0)

    def objective(D, Cc):  # on grids
        margins = sign[:, None, None] * (D[None] * x[:, None, None] + Cc[None])
        return np.logaddexp(0, -margins).mean(axis=0) + D ** 2 / (4 * C * n)

    center, width = np.array([0.0, 0.0]), 10.0
    for _ in range(12):
        D, Cc = np.meshgrid(np.linspace(center[0] - width, center[0] + width, 81),
                            np.linspace(center[1] - width, center[1] + width, 81), indexing="ij")
        values = objective(D, Cc)
        i = np.unravel_index(values.argmin(), values.shape)
        center, width = np.array([D[i], Cc[i]]), width / 8
    np.testing.assert_allclose([d, c], center, atol=1e-5)
    assert probe.result.fun == pytest.approx(float(objective(np.array(d), np.array(c)).item()), abs=1e-12)


def test_separable_data_is_fit_perfectly_and_converges():
    X, y = blobs(30, [(4, 0, 0), (0, 4, 0), (0, 0, 4)], 0.5, seed=2)
    train, test = stratified_split(y, 0.3, seed=0)
    for C in (1.0, 1e3):  # with almost no regularization the optimum is far out, yet finite
        probe = fit_probe(X[train], y[train], C)
        assert probe.result.converged, probe.result.message
        assert (probe.predict(X[train]) == y[train]).all() and (probe.predict(X[test]) == y[test]).all()
    probs = probe.predict_proba(X[test])
    np.testing.assert_allclose(probs.sum(axis=1), 1.0)
    assert probs.max(axis=1).min() > 0.99


def test_non_separable_data_reaches_the_optimum():
    X, y = blobs(100, [(1, 0), (0, 1), (-1, -1)], 1.0, seed=3)
    probe = fit_probe(X, y, C=0.5, gtol=1e-9)
    assert probe.result.converged
    # At the optimum of the convex objective the gradient vanishes, and no nearby point is lower.
    loss, gW, gb = logistic_loss(probe.W, probe.b, X, y, 0.5)
    assert np.abs(gW).max() < 1e-8 and np.abs(gb).max() < 1e-8
    rng = np.random.default_rng(0)
    for _ in range(20):
        dW, db = 1e-3 * rng.normal(size=probe.W.shape), 1e-3 * rng.normal(size=3)
        assert logistic_loss(probe.W + dW, probe.b + db, X, y, 0.5)[0] > loss
    assert 0.55 < (probe.predict(X) == y).mean() < 0.95  # better than chance, but truly overlapping
    # Stronger regularization shrinks the weights.
    assert np.linalg.norm(fit_probe(X, y, C=0.01).W) < np.linalg.norm(probe.W)


def newton_probe(X, y, C, K):
    """The probe's optimum by Newton's method in float64 with the full Hessian (small problems only): an
    independent solver, converging quadratically to the float64 floor. Returns W and mean-centred b (the
    objective does not change when one constant is added to every bias, so b is unique up to that)."""
    n, d = X.shape
    Z = np.hstack([X, np.ones((n, 1))])  # [n, d + 1]: the bias as a last feature
    T = np.zeros((d + 1, K))
    penalty = np.zeros((d + 1, K))
    penalty[:d] = 1.0 / (C * n)  # the Hessian of ||W||^2 / (2 C n); the bias is not penalized
    for _ in range(200):
        loss, gW, gb = logistic_loss(T[:d], T[d], X, y, C)
        G = np.vstack([gW, gb])
        z = Z @ T
        P = np.exp(z - z.max(axis=1, keepdims=True))
        P /= P.sum(axis=1, keepdims=True)
        S = P[:, :, None] * np.eye(K) - P[:, :, None] * P[:, None, :]  # [n, K, K] softmax Jacobians
        H = np.einsum("ia,ib,ikl->akbl", Z, Z, S) / n + np.diag(penalty.ravel()).reshape(d + 1, K, d + 1, K)
        H = H.reshape((d + 1) * K, (d + 1) * K)
        step = -np.linalg.lstsq(H, G.ravel(), rcond=None)[0].reshape(d + 1, K)  # singular along b + c 1
        decrement = -(G * step).sum()  # the Newton decrement squared: f - f* on the quadratic model, x2
        if decrement < 1e-22:
            break
        t = 1.0  # backtracking (Armijo), until f's rounding hides any decrease
        while logistic_loss(T[:d] + t * step[:d], T[d] + t * step[d], X, y, C)[0] > loss - 1e-4 * t * decrement:
            t /= 2
            if t < 1e-6:
                return T[:d], T[d] - T[d].mean()
        T = T + t * step
    return T[:d], T[d] - T[d].mean()


@pytest.mark.parametrize("C", [1e-2, 1e4, 1e6])  # the ends of select_C's grid, and where 1e-6 fell short
@pytest.mark.parametrize("problem", ["separable", "overlapping"])
def test_probe_is_the_optimum_at_the_ends_of_the_grid(C, problem):
    rng = np.random.default_rng(0)
    n, d, K = (120, 10, 4) if problem == "separable" else (600, 6, 3)
    X = rng.normal(size=(n, d))
    X /= np.linalg.norm(X, axis=1, keepdims=True)  # unit rows, as CLIP embeddings
    truth = rng.normal(size=(d, K)) * (4.0 if problem == "separable" else 1.0)
    y = (X @ truth + rng.gumbel(size=(n, K))).argmax(axis=1)
    probe = fit_probe(X, y, C)
    W, b = newton_probe(X, y, C, K)
    assert probe.result.converged, probe.result.message
    if problem == "separable" and C >= 1e4:
        assert (probe.predict(X) == y).all()  # far out along a separating direction, yet finite
    scale = max(1.0, np.abs(W).max())
    np.testing.assert_allclose(probe.W, W, rtol=0, atol=1e-6 * scale)
    np.testing.assert_allclose(probe.b - probe.b.mean(), b, rtol=0, atol=1e-6 * scale)
    unseen = rng.normal(size=(5000, d))
    unseen /= np.linalg.norm(unseen, axis=1, keepdims=True)
    np.testing.assert_array_equal(probe.predict(unseen), (unseen @ W + b).argmax(axis=1))


def test_stratified_split():
    y = np.array([0] * 10 + [1] * 4 + [2] * 2 + [3])
    train, test = stratified_split(y, 0.25, seed=5)
    assert sorted(np.concatenate([train, test])) == list(range(len(y)))
    assert [int((y[test] == k).sum()) for k in range(4)] == [2, 1, 1, 0]  # round(2.5) = 2; class 3: train only
    again = stratified_split(y, 0.25, seed=5)
    assert all((a == b).all() for a, b in zip((train, test), again, strict=True))
    assert not (stratified_split(y, 0.25, seed=6)[1] == test).all()
    with pytest.raises(miniclip.MiniclipError, match="between 0 and 1"):
        stratified_split(y, 1.5)


def test_select_C_picks_from_the_grid_by_validation_accuracy():
    X, y = blobs(20, [(2, 0), (0, 2)], 0.7, seed=4)
    C, scores = select_C(X, y, grid=(1e-3, 1.0, 100.0))
    assert list(scores) == [1e-3, 1.0, 100.0] and C in scores
    assert scores[C] == max(scores.values()) and scores[C] >= 0.8


def make_color_classes(root, per_class=6):
    rng = np.random.default_rng(0)
    for name, base in {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (30, 40, 220)}.items():
        folder = root / name
        folder.mkdir(parents=True)
        for i in range(per_class):
            color = tuple(int(np.clip(v + rng.integers(-30, 31), 0, 255)) for v in base)
            Image.new("RGB", (80 + 7 * i, 80 + 3 * i), color).save(folder / f"{name}{i}.png")


def test_probe_command_end_to_end(tmp_path, checkpoint, capsys):
    root = tmp_path / "colors"
    make_color_classes(root)
    (root / "green" / "broken.jpg").write_bytes(b"nope")
    weights = str(checkpoint("odd_oc"))
    assert main(["probe", str(root), "--weights", weights, "--C", "10", "--test-fraction", "0.5"]) == 0
    captured = capsys.readouterr()
    out = captured.out
    assert "classes: blue (6), green (6), red (6)" in out
    assert "split: 9 train / 9 test images" in out and "C = 10 (given)" in out
    assert "skipped green/broken.jpg" in captured.err

    # the reported accuracy is what the API computes on the same split
    model, preprocess = miniclip.load(weights)
    X, y = [], []
    for k, name in enumerate(["blue", "green", "red"]):
        for path in sorted((root / name).glob("*.png")):
            feats = model.encode_image(preprocess(Image.open(path))[None])[0]
            X.append(feats / np.linalg.norm(feats))
            y.append(k)
    X, y = np.array(X), np.array(y)
    train, test = stratified_split(y, 0.5, seed=0)
    probe = fit_probe(X[train], y[train], 10.0)
    accuracy = (probe.predict(X[test]) == y[test]).mean()
    assert f"held-out accuracy: {accuracy:7.2%} ({int(round(accuracy * 9))}/9" in out
    assert accuracy == 1.0  # three clearly different colors are linearly separable even in a random model

    assert main(["probe", str(root), "--weights", weights]) == 0  # C chosen automatically
    assert "chosen by validation accuracy" in capsys.readouterr().out


def test_probe_command_errors(tmp_path, checkpoint, capsys):
    weights = str(checkpoint("odd_oc"))
    root = tmp_path / "one"
    (root / "only").mkdir(parents=True)
    assert main(["probe", str(root), "--weights", weights]) == 1
    assert "at least two classes" in capsys.readouterr().err
    root = tmp_path / "few"
    make_color_classes(root, per_class=2)
    for path in list((root / "red").glob("*.png"))[1:]:
        path.unlink()
    assert main(["probe", str(root), "--weights", weights]) == 1
    err = capsys.readouterr().err
    assert "at least 2 readable images" in err and "too few in: red (1)" in err
    assert main(["probe", str(root), "--C", "lots", "--weights", weights]) == 1  # checked before embedding
    assert "--C must be a positive number or 'auto', got 'lots'" in capsys.readouterr().err
