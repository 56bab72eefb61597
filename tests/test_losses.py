"""EMMA, GloRo cross-entropy and TRADES against hand-computed values."""
import numpy as np
import pytest
from keras import ops

import gloro_keras as gk
from gloro_keras.losses import EMMA, TRADES, GloroCrossentropy, emma_loss, gloro_crossentropy_loss, trades_loss

LOGITS = np.array([[2.0, 0.5, -1.0], [0.1, 0.2, 0.3]])
KMAT = np.array([[0.0, 1.5, 2.0], [1.5, 0.0, 1.0], [2.0, 1.0, 0.0]])
LABELS = np.array([0, 2])
EPS = 0.4


def ce(z, t):
    z = z - z.max()
    return -(z[t] - np.log(np.exp(z).sum()))


def hand_outputs():
    bots = []
    for row in LOGITS:
        j = row.argmax()
        bots.append(max(row[i] + EPS * KMAT[j, i] for i in range(3) if i != j))
    return np.concatenate([LOGITS, np.array(bots)[:, None]], axis=1)


def stacked():
    lift = EPS * KMAT[LABELS] * (1 - np.eye(3)[LABELS])
    return np.stack([hand_outputs(), np.concatenate([lift, np.zeros((2, 1))], 1)], axis=1).astype("float32")


def test_emma_matches_hand_computation():
    expected = [ce(LOGITS[b] + EPS * KMAT[LABELS[b]], LABELS[b]) for b in range(2)]  # K_tt = 0
    got = ops.convert_to_numpy(EMMA(reduction=None)(LABELS, stacked()))
    np.testing.assert_allclose(got, expected, rtol=1e-5)
    assert float(EMMA()(LABELS, stacked())) == pytest.approx(np.mean(expected), rel=1e-5)


def test_emma_with_zero_epsilon_is_cross_entropy():
    got = ops.convert_to_numpy(emma_loss(LABELS, LOGITS.astype("float32"), np.zeros((2, 3), "float32")))
    np.testing.assert_allclose(got, [ce(LOGITS[b], LABELS[b]) for b in range(2)], rtol=1e-5)


def test_gloro_crossentropy_matches_hand_computation():
    out = hand_outputs()
    expected = [ce(out[b], LABELS[b]) for b in range(2)]
    np.testing.assert_allclose(ops.convert_to_numpy(GloroCrossentropy(reduction=None)(LABELS, stacked())), expected, rtol=1e-5)
    np.testing.assert_allclose(ops.convert_to_numpy(gloro_crossentropy_loss(LABELS, out.astype("float32"))), expected, rtol=1e-5)


@pytest.mark.parametrize("lam", [1.0, 1.5])
def test_trades_matches_hand_computation(lam):
    out = hand_outputs()
    expected = []
    for b in range(2):
        p = np.exp(LOGITS[b] - LOGITS[b].max()); p /= p.sum()
        q = np.exp(out[b] - out[b].max()); q /= q.sum()
        expected.append(ce(LOGITS[b], LABELS[b]) + lam * np.sum(p * (np.log(p) - np.log(q[:3]))))
    np.testing.assert_allclose(ops.convert_to_numpy(TRADES(lam, reduction=None)(LABELS, stacked())), expected, rtol=1e-5)
    np.testing.assert_allclose(ops.convert_to_numpy(trades_loss(LABELS, out.astype("float32"), lam)), expected, rtol=1e-5)


def test_trades_with_unit_lambda_is_gloro_crossentropy():
    """KL(p‖q) = LSE(m+1 outputs) − LSE(m logits), so CE + 1·KL = LSE(m+1) − y_t: the GloRo CE.
    (Why the Table 2 reproduction's TRADES column at λ = 1 repeats its CE column.)"""
    rng = np.random.default_rng(0)
    out = rng.normal(scale=3.0, size=(64, 11)).astype("float32")
    labels = rng.integers(0, 10, size=64)
    np.testing.assert_allclose(ops.convert_to_numpy(trades_loss(labels, out, 1.0)),
                               ops.convert_to_numpy(gloro_crossentropy_loss(labels, out)), rtol=1e-5, atol=1e-6)
    assert not np.allclose(ops.convert_to_numpy(trades_loss(labels, out, 2.0)),
                           ops.convert_to_numpy(gloro_crossentropy_loss(labels, out)), rtol=1e-3)


def test_loss_names_resolve_like_the_original_gloro():
    assert isinstance(gk.losses.get("emma"), EMMA)
    assert isinstance(gk.losses.get("sparse_crossentropy"), GloroCrossentropy)
    assert gk.losses.get("sparse_trades_kl.1.5").lam == 1.5
    assert gk.losses.get("trades").lam == 1.0


def test_gloro_loss_without_bounds_is_a_clear_error():
    with pytest.raises(ValueError, match="GloroModel.compile"):
        EMMA()(LABELS, hand_outputs().astype("float32"))


@pytest.mark.parametrize("loss", ["emma", "gloro_crossentropy", "trades"])
def test_model_loss_equals_functional_form(loss):
    model = gk.GloroLiResNet(L=1, W=4, num_classes=3, input_shape=(8, 8, 1), epsilon=0.3, dense_width=6)
    model.compile(loss=loss)
    x = np.random.rand(5, 8, 8, 1).astype("float32")
    y = np.array([0, 1, 2, 1, 0])
    value = model.evaluate(x, y, verbose=0, return_dict=True)["loss"]
    out = model.predict(x, verbose=0)
    kmat = ops.convert_to_numpy(model.margin_bounds(training=False))
    logits = out[:, :3]
    if loss == "emma":
        ref = np.mean([ce(logits[b] + 0.3 * kmat[y[b]] * (np.arange(3) != y[b]), y[b]) for b in range(5)])
    elif loss == "gloro_crossentropy":
        ref = np.mean([ce(out[b], y[b]) for b in range(5)])
    else:
        ref = float(np.mean(ops.convert_to_numpy(trades_loss(y, out, 1.0))))
    assert value == pytest.approx(ref, rel=1e-4)
