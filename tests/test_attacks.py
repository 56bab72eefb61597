"""Tests of gloro_keras.attacks on tiny models whose exact answers are known.

Linear model f(x) = W^T x + b:
  * exact distance of x to the decision boundary:  min_{j≠y} (f_y − f_j) / ‖w_y − w_j‖
  * Lipschitz constant of the logits:               ‖W‖₂
  * Lipschitz constant of the margin f_i − f_j:     ‖w_i − w_j‖
"""

import warnings

import keras
import numpy as np
import pytest
from keras import ops

from conftest import PrecisionSpy
from gloro_keras.attacks import (
    apgd_l2,
    CertificationSoundnessError,
    CertificationSoundnessWarning,
    empirical_lipschitz_lower_bound,
    margin_lipschitz_lower_bound,
    pgd_l2,
    soundness_check,
    soundness_check_gloro,
)

D, M, N = 12, 4, 10


def _linear_model(d=D, m=M, seed=0):
    rng = np.random.default_rng(seed)
    W = rng.standard_normal((d, m)).astype(np.float32)
    b = (0.3 * rng.standard_normal(m)).astype(np.float32)
    inp = keras.Input((d,))
    dense = keras.layers.Dense(m)
    model = keras.Model(inp, dense(inp))
    dense.set_weights([W, b])
    return model, W, b


def _exact(x, W, b):
    """Predictions, distance to the boundary, and the closest other class."""
    W64 = W.astype(np.float64)
    f = x.astype(np.float64) @ W64 + b
    y = f.argmax(1)
    n, m = f.shape
    dist = np.full((n, m), np.inf)
    for j in range(m):
        nj = np.linalg.norm(W64[:, y] - W64[:, [j]], axis=0)
        mj = f[np.arange(n), y] - f[:, j]
        dist[:, j] = np.where(y == j, np.inf, mj / np.where(nj > 0, nj, 1.0))
    return y, dist.min(1), dist.argmin(1)


@pytest.fixture(scope="module")
def linear():
    model, W, b = _linear_model()
    x = np.random.default_rng(1).uniform(size=(N, D)).astype(np.float32)
    y, dist, closest = _exact(x, W, b)
    return model, W, b, x, y, dist, closest


@pytest.fixture(scope="module")
def convnet():
    keras.utils.set_random_seed(0)
    inp = keras.Input((8, 8, 1))
    h = keras.layers.Conv2D(4, 3, padding="same", activation="relu")(inp)
    h = keras.layers.Flatten()(h)
    out = keras.layers.Dense(3)(h)
    model = keras.Model(inp, out)
    x = np.random.default_rng(2).uniform(size=(6, 8, 8, 1)).astype(np.float32)
    return model, x


# ----------------------------------------------------------------------------- PGD


def test_pgd_targeted_finds_when_eps_above_distance(linear):
    model, W, b, x, y, dist, closest = linear
    res = pgd_l2(model, x, y, 1.02 * dist, steps=30, clip=None, loss="margin", targets=closest)
    assert res.success.all()
    assert res.robust_accuracy == 0.0
    assert np.all(res.margin < 0)
    assert np.all(res.perturbation_norm <= 1.02 * dist * (1 + 1e-5) + 1e-6)
    # success means the prediction really changed
    pred = np.asarray(model.predict(res.x_adv, verbose=0)).argmax(1)
    assert np.all(pred != y)


def test_pgd_untargeted_binary_finds_when_eps_above_distance():
    model, W, b = _linear_model(m=2, seed=3)
    x = np.random.default_rng(4).uniform(size=(N, D)).astype(np.float32)
    y, dist, _ = _exact(x, W, b)
    for loss in ("margin", "ce"):
        res = pgd_l2(model, x, y, 1.02 * dist, steps=30, clip=None, loss=loss)
        assert res.success.all(), loss


def test_pgd_never_succeeds_below_distance(linear):
    model, W, b, x, y, dist, closest = linear
    eps = 0.98 * dist
    for loss in ("margin", "ce"):
        res = pgd_l2(model, x, y, eps, steps=30, restarts=3, clip=None, loss=loss)
        assert not res.success.any(), loss
        assert res.robust_accuracy == 1.0
    for t in range(1, M):
        targets = (y + t) % M
        res = pgd_l2(model, x, y, eps, steps=30, clip=None, loss="margin", targets=targets)
        assert not res.success.any()
        assert np.all(res.margin > 0)


def test_pgd_projection_ball_and_box(convnet):
    model, x = convnet
    y = np.zeros(len(x), dtype=np.int64)
    eps = np.linspace(0.1, 2.0, len(x)).astype(np.float32)  # per-example radii
    # huge steps so that the projections are active at every iteration
    res = pgd_l2(model, x, y, eps, steps=5, restarts=3, step_size=5.0, clip=(0.0, 1.0), loss="ce")
    assert res.x_adv.shape == x.shape and res.x_adv.dtype == np.float32
    norms = np.linalg.norm((res.x_adv - x).reshape(len(x), -1), axis=1)
    assert np.all(norms <= eps + 1e-5)
    assert res.x_adv.min() >= 0.0 and res.x_adv.max() <= 1.0
    res = pgd_l2(model, x, y, eps, steps=5, step_size=5.0, clip=None, loss="margin")
    norms = np.linalg.norm((res.x_adv - x).reshape(len(x), -1), axis=1)
    assert np.all(norms <= eps + 1e-5)
    assert np.allclose(norms, res.perturbation_norm, atol=1e-5)
    # dict-style access and consistency
    assert res["robust_accuracy"] == pytest.approx(1.0 - res["success"].mean())


def test_pgd_random_starts_stay_in_ball(convnet):
    model, x = convnet
    logits = np.asarray(model.predict(x, verbose=0))
    y = logits.argmax(1)
    # zero steps: the returned points are (clipped) random starts or x itself
    res = pgd_l2(model, x, y, 0.5, steps=0, restarts=4, clip=(0.0, 1.0), seed=1)
    norms = np.linalg.norm((res.x_adv - x).reshape(len(x), -1), axis=1)
    assert np.all(norms <= 0.5 + 1e-5)
    assert res.x_adv.min() >= 0.0 and res.x_adv.max() <= 1.0
    # zero radius: nothing can change
    res = pgd_l2(model, x, y, 0.0, steps=3)
    assert not res.success.any() and np.allclose(res.x_adv, x)


def test_pgd_counts_misclassified_clean_points(convnet):
    model, x = convnet
    y = np.asarray(model.predict(x, verbose=0)).argmax(1)
    wrong = (y + 1) % 3
    res = pgd_l2(model, x, wrong, 0.0, steps=2)
    assert res.success.all() and res.robust_accuracy == 0.0


def test_pgd_plain_callable_and_batching(linear):
    model, W, b, x, y, dist, closest = linear
    Wt, bt = ops.convert_to_tensor(W), ops.convert_to_tensor(b)

    def f(z):
        return ops.matmul(z, Wt) + bt

    a = pgd_l2(f, x, y, 1.02 * dist, steps=30, clip=None, loss="margin", targets=closest, batch_size=3)
    assert a.success.all()
    c = pgd_l2(model, x, y, 1.02 * dist, steps=30, clip=None, loss="margin", targets=closest)
    np.testing.assert_allclose(a.x_adv, c.x_adv, atol=1e-5)


def test_pgd_sees_weight_updates():
    """Compiled steps are cached per model; they must use the current weights."""
    model, W, b = _linear_model(seed=5)
    x = np.random.default_rng(6).uniform(size=(N, D)).astype(np.float32)
    y, dist, closest = _exact(x, W, b)
    assert pgd_l2(model, x, y, 1.02 * dist, steps=20, clip=None, loss="margin", targets=closest).success.all()
    W2 = 0.25 * W  # same bias: predictions and distances change
    model.layers[-1].set_weights([W2, b])
    y2, dist2, closest2 = _exact(x, W2, b)
    assert np.any(y2 != y) or np.any(np.abs(dist2 / dist - 1) > 0.2)
    ok = pgd_l2(model, x, y2, 1.02 * dist2, steps=20, clip=None, loss="margin", targets=closest2)
    assert ok.success.all()
    no = pgd_l2(model, x, y2, 0.98 * dist2, steps=20, clip=None, loss="margin", targets=closest2)
    assert not no.success.any()


def test_apgd_linear_exact_threshold_and_constraints(linear):
    model, W, b, x, y, dist, closest = linear
    res = apgd_l2(model, x, y, 1.02 * dist, steps=20, clip=None, loss="margin", targets=closest)
    assert res.success.all() and res.info["method"] == "apgd"
    res = apgd_l2(model, x, y, 0.98 * dist, steps=20, restarts=2, clip=None, loss="ce")
    assert not res.success.any()
    assert np.all(res.perturbation_norm <= 0.98 * dist * (1 + 1e-5) + 1e-6)
    bm, bW, bb = _linear_model(m=2, seed=3)
    by, bdist, _ = _exact(x, bW, bb)
    assert apgd_l2(bm, x, by, 1.02 * bdist, steps=20, clip=None).success.all()


def test_apgd_projection_ball_and_box(convnet):
    model, x = convnet
    y = np.zeros(len(x), dtype=np.int64)
    eps = np.linspace(0.1, 2.0, len(x)).astype(np.float32)
    res = apgd_l2(model, x, y, eps, steps=12, restarts=2, clip=(0.0, 1.0))
    norms = np.linalg.norm((res.x_adv - x).reshape(len(x), -1), axis=1)
    assert np.all(norms <= eps + 1e-5)
    assert res.x_adv.min() >= 0.0 and res.x_adv.max() <= 1.0


# ---------------------------------------------------------------------- lower bounds


def test_lipschitz_lower_bound_linear(linear):
    model, W, b, x, *_ = linear
    exact = np.linalg.norm(W.astype(np.float64), 2)
    lb = empirical_lipschitz_lower_bound(model, x[:4], steps=60, pairs=2)
    assert lb.value <= exact * (1 + 1e-5)
    assert lb.value >= 0.99 * exact
    assert lb.per_pair.shape == (8,) and lb.x.shape == (8, D)
    # the reported value is the quotient of the reported pair
    k = int(np.argmax(lb.per_pair))
    fa = lb.x[k].astype(np.float64) @ W + b
    fb = lb.x_prime[k].astype(np.float64) @ W + b
    q = np.linalg.norm(fa - fb) / np.linalg.norm(lb.x[k].astype(np.float64) - lb.x_prime[k])
    assert q == pytest.approx(lb.value, rel=1e-4)


def test_margin_lipschitz_lower_bound_linear(linear):
    model, W, b, x, *_ = linear
    W64 = W.astype(np.float64)
    K = np.linalg.norm(W64[:, :, None] - W64[:, None, :], axis=0)
    lb = margin_lipschitz_lower_bound(model, x[:3], class_pairs="all", steps=20)
    off = ~np.eye(M, dtype=bool)
    assert np.all(lb.matrix[off] <= K[off] * (1 + 1e-5))
    assert np.all(lb.matrix[off] >= 0.99 * K[off])
    assert lb.value <= K.max() * (1 + 1e-5) and lb.value >= 0.99 * K.max()
    # top2: one pair per point, the predicted class and the runner-up
    lb2 = margin_lipschitz_lower_bound(model, x[:3], steps=20)
    f = x[:3] @ W + b
    order = np.argsort(-f, axis=1)
    np.testing.assert_array_equal(lb2.class_pairs, order[:, :2])
    np.testing.assert_allclose(lb2.per_pair, K[order[:, 0], order[:, 1]], rtol=1e-2)
    # explicit pairs
    lb3 = margin_lipschitz_lower_bound(model, x[:2], class_pairs=[(0, 1)], steps=10, pairs=2)
    assert lb3.per_pair.shape == (4,) and np.all(lb3.per_pair <= K[0, 1] * (1 + 1e-5))


def test_lipschitz_lower_bound_relu_mlp():
    """On a ReLU MLP the bound stays below ‖W2‖‖W1‖ and beats the random start."""
    keras.utils.set_random_seed(1)
    inp = keras.Input((D,))
    d1 = keras.layers.Dense(16, activation="relu")
    d2 = keras.layers.Dense(M)
    model = keras.Model(inp, d2(d1(inp)))
    x = np.random.default_rng(7).uniform(size=(4, D)).astype(np.float32)
    k1 = ops.convert_to_numpy(d1.kernel * 1.0)
    k2 = ops.convert_to_numpy(d2.kernel * 1.0)
    upper = np.linalg.norm(k1, 2) * np.linalg.norm(k2, 2)
    start = empirical_lipschitz_lower_bound(model, x, steps=0)
    lb = empirical_lipschitz_lower_bound(model, x, steps=40)
    assert 0 < start.value <= lb.value <= upper * (1 + 1e-5)
    mlb = margin_lipschitz_lower_bound(model, x, steps=20)
    assert 0 < mlb.value <= 2 * upper * (1 + 1e-5)


# ------------------------------------------------------------------------- soundness


def test_soundness_exact_radii_no_violation(linear):
    model, W, b, x, y, dist, closest = linear
    preds = y.copy()
    preds[0] = M  # "not certified" (⊥): skipped
    radii = dist.copy()
    radii[1] = 0.0  # radius 0: skipped
    with warnings.catch_warnings():
        warnings.simplefilter("error", CertificationSoundnessWarning)
        rep = soundness_check(model, x, preds, radii, steps=30, restarts=2)
    assert rep.ok and rep.num_violations == 0 and rep.violating_indices.size == 0
    assert rep.num_checked == N - 2
    assert not rep.checked[0] and not rep.checked[1]
    assert rep.min_adv_margin >= 0.0
    # the attack really pushed the margins towards 0: drop close to the clean margin
    c = rep.checked
    assert np.all(rep.adv_margin[c] < 0.05 * rep.clean_margin[c] + 1e-6)
    assert rep.max_margin_drop > 0
    # the implied margin Lipschitz lower bound cannot exceed max_ij ‖w_i − w_j‖
    W64 = W.astype(np.float64)
    Kmax = np.linalg.norm(W64[:, :, None] - W64[:, None, :], axis=0).max()
    assert 0 < rep.empirical_margin_lipschitz <= Kmax * (1 + 1e-4)


def test_soundness_inflated_radii_are_violations(linear):
    model, W, b, x, y, dist, closest = linear
    with pytest.warns(CertificationSoundnessWarning, match="CERTIFICATION BUG"):
        rep = soundness_check(model, x, y, 2.0 * dist, steps=30, restarts=1)
    assert rep.num_violations == N and not rep.ok
    np.testing.assert_array_equal(rep.violating_indices, np.arange(N))
    assert rep.min_adv_margin < 0
    norms = np.linalg.norm((rep.x_adv - x).reshape(N, -1), axis=1)
    assert np.all(norms <= 2.0 * dist * (1 + 1e-5))
    with pytest.raises(CertificationSoundnessError):
        soundness_check(model, x[:3], y[:3], 2.0 * dist[:3], steps=30, raise_on_violation=True)


def test_soundness_wrong_prediction_is_violation(linear):
    model, W, b, x, y, dist, closest = linear
    preds = y.copy()
    preds[2] = (y[2] + 1) % M  # a certificate for a class that is not even predicted
    with pytest.warns(CertificationSoundnessWarning):
        rep = soundness_check(model, x, preds, 1e-3 * dist, steps=5, restarts=1, num_targets=0)
    assert rep.violating_indices.tolist() == [2]


def test_soundness_check_gloro_on_a_real_gloro_model(linear):
    import gloro_keras as gk

    model, W, b, x, y, dist, closest = linear
    gloro = gk.GloroModel(model, epsilon=0.1)  # head only: K_ij = ‖w_i − w_j‖ (sound)
    radii = gloro.certified_radius(x)
    # the float32 rounding terms make the certified radius a little smaller than the exact
    # distance to the boundary, never larger
    assert np.all(radii < dist) and np.all(radii > dist - 1e-5)
    rep = soundness_check_gloro(gloro, x, steps=20, restarts=1)
    assert rep.ok and rep.num_checked == N
    eps = float(np.median(radii))
    rep = soundness_check_gloro(gloro, x, epsilon=eps, steps=20, restarts=1)
    assert rep.ok and rep.num_checked == int(np.sum(radii > eps))
    np.testing.assert_allclose(rep.attack_radius[rep.checked], eps * (1 - 1e-6))


def test_attacks_evaluate_the_network_with_full_precision_kernels(linear):
    # Certificates are about float32 arithmetic; on GPUs the default is TF32 (TensorFlow, JAX's
    # default precision), where an attack on large-bias nets "broke" float32 certificates by
    # margins of 90-1500 (H200, JAX 0.11.2). Every attack must evaluate the float32 network.
    from gloro_keras.ops import full_precision_active

    _, W, b, x, y, dist, _ = linear
    inp = keras.Input((D,))
    dense, spy = keras.layers.Dense(M), PrecisionSpy()
    model = keras.Model(inp, spy(dense(inp)))
    dense.set_weights([W, b])
    seen = spy.seen
    seen.clear()
    pgd_l2(model, x, y, 0.1, steps=2)
    apgd_l2(model, x, y, 0.1, steps=2)
    empirical_lipschitz_lower_bound(model, x, steps=2)
    margin_lipschitz_lower_bound(model, x, steps=2)
    soundness_check(model, x, y, dist * 0.5, steps=2, restarts=1, num_targets=1)
    assert seen and all(seen), seen
    assert not full_precision_active()  # restored
