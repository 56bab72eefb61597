"""EMMA, GloRo cross-entropy and TRADES against hand-computed values."""
import keras
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


def inputs(logits=LOGITS, kmat=KMAT, eps=EPS):
    """What GloroModel.loss_inputs hands a GloroLoss."""
    return {"logits": np.asarray(logits, "float32"), "margin_bounds": np.asarray(kmat, "float32"),
            "epsilon": np.float32(eps)}


def args(logits=LOGITS, kmat=KMAT, eps=EPS):
    i = inputs(logits, kmat, eps)
    return i["logits"], i["margin_bounds"], i["epsilon"]


def test_emma_matches_hand_computation():
    expected = [ce(LOGITS[b] + EPS * KMAT[LABELS[b]], LABELS[b]) for b in range(2)]  # K_tt = 0
    got = ops.convert_to_numpy(EMMA(reduction=None)(LABELS, inputs()))
    np.testing.assert_allclose(got, expected, rtol=1e-5)
    assert float(EMMA()(LABELS, inputs())) == pytest.approx(np.mean(expected), rel=1e-5)
    np.testing.assert_allclose(ops.convert_to_numpy(emma_loss(LABELS, *args())), expected, rtol=1e-5)
    # sample weights and the reduction are Keras's own
    w = np.array([1.0, 3.0], "float32")
    assert float(EMMA()(LABELS, inputs(), sample_weight=w)) == pytest.approx(np.mean(w * expected), rel=1e-5)


def test_emma_with_zero_epsilon_is_cross_entropy():
    got = ops.convert_to_numpy(emma_loss(LABELS, *args(eps=0.0)))
    np.testing.assert_allclose(got, [ce(LOGITS[b], LABELS[b]) for b in range(2)], rtol=1e-5)


def test_gloro_crossentropy_matches_hand_computation():
    out = hand_outputs()
    expected = [ce(out[b], LABELS[b]) for b in range(2)]
    np.testing.assert_allclose(ops.convert_to_numpy(GloroCrossentropy(reduction=None)(LABELS, inputs())), expected, rtol=1e-5)
    np.testing.assert_allclose(ops.convert_to_numpy(gloro_crossentropy_loss(LABELS, *args())), expected, rtol=1e-5)


@pytest.mark.parametrize("lam", [1.0, 1.5])
def test_trades_matches_hand_computation(lam):
    out = hand_outputs()
    expected = []
    for b in range(2):
        p = np.exp(LOGITS[b] - LOGITS[b].max()); p /= p.sum()
        q = np.exp(out[b] - out[b].max()); q /= q.sum()
        expected.append(ce(LOGITS[b], LABELS[b]) + lam * np.sum(p * (np.log(p) - np.log(q[:3]))))
    np.testing.assert_allclose(ops.convert_to_numpy(TRADES(lam, reduction=None)(LABELS, inputs())), expected, rtol=1e-5)
    np.testing.assert_allclose(ops.convert_to_numpy(trades_loss(LABELS, *args(), lam=lam)), expected, rtol=1e-5)


def test_trades_with_unit_lambda_is_gloro_crossentropy():
    """KL(p‖q) = LSE(m+1 outputs) − LSE(m logits), so CE + 1·KL = LSE(m+1) − y_t: the GloRo CE.
    (Why the Table 2 reproduction's TRADES column at λ = 1 repeats its CE column.)"""
    rng = np.random.default_rng(0)
    logits = rng.normal(scale=3.0, size=(64, 10))
    kmat = rng.uniform(0.5, 4.0, size=(10, 10))
    kmat = (kmat + kmat.T) * (1 - np.eye(10))
    labels = rng.integers(0, 10, size=64)
    a = args(logits, kmat, 0.5)
    np.testing.assert_allclose(ops.convert_to_numpy(trades_loss(labels, *a, lam=1.0)),
                               ops.convert_to_numpy(gloro_crossentropy_loss(labels, *a)), rtol=1e-5, atol=1e-6)
    assert not np.allclose(ops.convert_to_numpy(trades_loss(labels, *a, lam=2.0)),
                           ops.convert_to_numpy(gloro_crossentropy_loss(labels, *a)), rtol=1e-3)


def test_loss_names_resolve():
    assert isinstance(gk.losses.get("emma"), EMMA)
    assert isinstance(gk.losses.get("gloro_crossentropy"), GloroCrossentropy)
    assert isinstance(gk.losses.get("gloro_ce"), GloroCrossentropy)
    assert gk.losses.get("trades.1.5").lam == 1.5
    assert gk.losses.get("trades").lam == 1.0


def test_gloro_loss_without_bounds_is_a_clear_error():
    with pytest.raises(ValueError, match="GloroModel.compile"):
        EMMA()(LABELS, hand_outputs().astype("float32"))
    with pytest.raises(ValueError, match="margin_bounds"):
        TRADES()(LABELS, {"logits": LOGITS.astype("float32")})


@pytest.mark.parametrize("loss", ["emma", "gloro_crossentropy", "trades"])
def test_model_loss_equals_functional_form(loss):
    model = gk.GloroLiResNet(L=1, W=4, num_classes=3, input_shape=(8, 8, 1), epsilon=0.3, dense_width=6)
    model.compile(loss=loss)
    x = np.random.rand(5, 8, 8, 1).astype("float32")
    y = np.array([0, 1, 2, 1, 0])
    value = model.evaluate(x, y, verbose=0, return_dict=True)["loss"]
    logits = model.predict_logits(x)
    kmat = ops.convert_to_numpy(model.margin_bounds(training=False)).astype("float64")
    j = logits.argmax(1)
    bot = np.array([max(logits[b, i] + 0.3 * kmat[j[b], i] for i in range(3) if i != j[b]) for b in range(5)])
    out = np.concatenate([logits, bot[:, None]], 1)
    if loss == "emma":
        ref = np.mean([ce(logits[b] + 0.3 * kmat[y[b]] * (np.arange(3) != y[b]), y[b]) for b in range(5)])
    elif loss == "gloro_crossentropy":
        ref = np.mean([ce(out[b], y[b]) for b in range(5)])
    else:
        p = np.exp(logits - logits.max(1, keepdims=True)); p /= p.sum(1, keepdims=True)
        q = np.exp(out - out.max(1, keepdims=True)); q /= q.sum(1, keepdims=True)
        ref = np.mean([ce(logits[b], y[b]) + np.sum(p[b] * (np.log(p[b]) - np.log(q[b, :3]))) for b in range(5)])
    assert value == pytest.approx(ref, rel=1e-4)


def test_training_call_hands_the_loss_its_inputs():
    """A training call returns what the loss needs (this step's K and ε_train); the loss fit
    minimizes is the pure function of those values."""
    model = gk.GloroLiResNet(L=1, W=4, num_classes=3, input_shape=(8, 8, 1), epsilon=0.3, dense_width=6)
    model.compile(loss="emma")
    model.epsilon_train = 0.2
    x = np.random.default_rng(1).random((6, 8, 8, 1)).astype("float32")
    y = np.array([0, 1, 2, 1, 0, 2])
    out = model(x, training=True)
    assert set(out) == {"outputs", "logits", "margin_bounds", "epsilon"}
    assert float(out["epsilon"]) == pytest.approx(0.2)
    assert tuple(out["outputs"].shape) == (6, 4) and tuple(out["margin_bounds"].shape) == (3, 3)
    loss = float(model.compute_loss(x, y, out))
    ref = np.mean(ops.convert_to_numpy(emma_loss(y, out["logits"], out["margin_bounds"], out["epsilon"])))
    assert loss == pytest.approx(float(ref), rel=1e-6)
    # evaluation: the cached bound and the test radius
    inputs = model.loss_inputs(model(x))
    assert float(inputs["epsilon"]) == pytest.approx(0.3)


@pytest.mark.skipif(keras.backend.backend() == "jax", reason="JAX fixes λ when the train step is traced (TRADES doc)")
def test_trades_lambda_set_after_compile_changes_training():
    keras.utils.set_random_seed(0)
    x = np.random.default_rng(0).uniform(size=(16, 6)).astype("float32")
    y = np.arange(16) % 3
    inp = keras.Input((6,))
    net = keras.Model(inp, gk.layers.LLNDense(3)(gk.layers.MinMax()(gk.layers.LipschitzDense(8)(inp))))
    model = gk.GloroModel(net, epsilon=0.5)
    loss = TRADES(lam=1.0)
    model.compile(optimizer=keras.optimizers.SGD(0.0), loss=loss)
    first = model.train_on_batch(x, y)
    loss.lam = 0.0  # after compile and after the step was traced
    clean = model.train_on_batch(x, y)
    ce = float(np.mean(keras.ops.convert_to_numpy(keras.losses.sparse_categorical_crossentropy(
        y, model.predict_logits(x), from_logits=True))))
    assert clean == pytest.approx(ce, rel=1e-4) and first > clean + 1e-3
