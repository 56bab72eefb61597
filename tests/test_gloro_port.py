"""Original-gloro code ports to gloro-keras by replacing `gloro` with `gloro_keras.compat`
in its imports; gloro-keras's own namespaces keep one name per meaning."""
import keras
import numpy as np
import pytest

import gloro_keras as gk
from conftest import explicit_matrix, spectral_norm


def test_readme_example_ports_by_changing_imports():
    # gloro: from gloro.models import GloroNet; from gloro.layers import Dense; ...
    from keras.layers import Activation
    from gloro_keras.compat.layers import Dense, Input
    from gloro_keras.compat.models import GloroNet
    from gloro_keras.compat.training.callbacks import UpdatePowerIterates
    from gloro_keras.compat.training.losses import Crossentropy, Trades
    from gloro_keras.compat.training.metrics import clean_acc, vra

    x = Input((5,))
    z = Activation("relu")(Dense(6)(x))
    z = Activation("relu")(Dense(7)(z))
    y = Dense(3)(z)
    gloronet = GloroNet(x, y, epsilon=0.5)
    gloronet = GloroNet(model=keras.Model(x, y), epsilon=0.5)
    rng = np.random.default_rng(0)
    X = rng.random((32, 5), dtype="float32")
    Y = rng.integers(0, 3, 32)
    gloronet.compile(optimizer="adam", loss=Crossentropy(), metrics=[clean_acc, vra])
    logs = gloronet.fit(X, Y, epochs=1, batch_size=16, verbose=0,
                        callbacks=[UpdatePowerIterates()]).history
    assert {"clean_acc", "vra", "loss"} <= set(logs)
    gloronet.compile(optimizer="adam", loss=Trades(2.0), metrics=["clean_acc", "vra"])
    gloronet.fit(X, Y, epochs=1, batch_size=16, verbose=0)
    gloronet.refresh_iterates()
    k = gloronet.lipschitz_constant(bound="power")
    assert hasattr(k, "numpy")  # a tensor, as gloro's (its tests call .numpy())
    k = np.asarray(k)
    np.testing.assert_allclose(k[~np.eye(3, dtype=bool)],
                               gloronet.margin_bound_matrix("power")[~np.eye(3, dtype=bool)], rtol=1e-5)
    assert np.all(np.diag(k) == -1) and np.all(k[~np.eye(3, dtype=bool)] > 0)
    np.testing.assert_array_equal(gloronet.predict_clean(X), gloronet.predict_logits(X))
    assert gloronet.f is gloronet.network
    gloronet.freeze_lipschitz_constant("power")
    assert gloronet.cached_bound == pytest.approx(gloronet.lipschitz_bound("power"), rel=1e-6)
    assert gloronet.predict(X, verbose=0).shape == (32, 4)


@pytest.mark.parametrize("name, cls, lam", [
    ("sparse_crossentropy", gk.losses.GloroCrossentropy, None),
    ("crossentropy", gk.losses.GloroCrossentropy, None),
    ("sparse_trades_kl.1.5", gk.losses.TRADES, 1.5),
    ("trades_kl", gk.losses.TRADES, 1.0),
])
def test_gloro_loss_names_resolve_in_compat_only(name, cls, lam):
    from gloro_keras.compat.training import losses
    loss = losses.get(name)
    assert isinstance(loss, cls) and (lam is None or loss.lam == lam)
    with pytest.raises(ValueError):  # gloro-keras's own getter: its own names only
        gk.losses.get(name)


def test_gloronet_compiles_with_gloro_names_and_round_trips(tmp_path):
    from gloro_keras.compat.layers import Dense, MinMax
    from gloro_keras.compat.models import GloroNet

    x = keras.Input((4,))
    g = GloroNet(x, Dense(3)(MinMax()(Dense(6)(x))), epsilon=0.25)
    g.compile(optimizer="adam", loss="sparse_trades_kl.2", metrics=["clean_acc", "vra"])
    assert g.gloro_loss.lam == 2.0
    X = np.random.default_rng(1).random((16, 4), dtype="float32")
    g.fit(X, np.arange(16) % 3, epochs=1, batch_size=8, verbose=0)
    g.save(tmp_path / "g.keras")
    loaded = keras.models.load_model(tmp_path / "g.keras")
    assert type(loaded) is GloroNet and loaded.gloro_loss.lam == 2.0
    np.testing.assert_array_equal(loaded.certify(X), g.certify(X))


def test_own_namespaces_hold_no_gloro_aliases():
    assert not hasattr(gk.layers, "Dense") and not hasattr(gk.layers, "Conv2D")
    assert not hasattr(gk.losses, "Crossentropy") and not hasattr(gk.losses, "Trades")
    assert not hasattr(gk, "GloroNet") and not hasattr(gk, "UpdatePowerIterates")
    assert not hasattr(gk.GloroModel, "predict_clean") and not hasattr(gk.GloroModel, "refresh_iterates")
    assert not hasattr(gk.layers.BoundedLayer, "lipschitz_bound")


# ----------------------------------------------------------------------------- gloro's layers
from gloro_keras.compat import layers as G  # noqa: E402
from gloro_keras.compat.lc import Eigh, PowerMethod  # noqa: E402


def _built(layer, shape):
    layer(keras.Input(shape))
    return layer


def _sampled_ratio(layer, shape, rng):
    x1, x2 = rng.standard_normal((2, 1, *shape)).astype("float32")
    return float(np.linalg.norm(layer(x1) - layer(x2)) / np.linalg.norm(x1 - x2))


def test_layer_lipschitz_of_known_constants():
    for strategy in (PowerMethod(100), "eigh", Eigh()):
        dense = _built(G.Dense(32, kernel_initializer="orthogonal", lc_strategy=strategy), (32,))
        assert float(dense.lipschitz()) == pytest.approx(1.0, rel=1e-5)
    assert G.AveragePooling2D(2).lipschitz().numpy() == pytest.approx(0.5)
    for init in (4.0, -4.0):
        assert float(_built(G.Scaling(init), (32,)).lipschitz()) == pytest.approx(4.0)
    with pytest.raises(ValueError, match="Eigh only supports 2D"):
        G.Conv2D(4, 3, lc_strategy="eigh")
    with pytest.raises(ValueError, match="unknown Lipschitz computation strategy"):
        G.Dense(4, lc_strategy="svd")


@pytest.mark.parametrize("kernel_size", [1, 3, 4, 5, 6])
def test_liresnet_block_identity(kernel_size):
    block = _built(G.LiResNetBlock(kernel_size, kernel_initializer="zeros", bias_initializer="zeros",
                                   lc_strategy=PowerMethod(100)), (12, 12, 4))
    x = np.random.default_rng(kernel_size).standard_normal((1, 12, 12, 4)).astype("float32")
    np.testing.assert_allclose(block(x), x, atol=1e-6)
    assert float(block.lipschitz()) == pytest.approx(1.0, rel=1e-5)


@pytest.mark.parametrize("make, shape", [
    (lambda: G.Dense(32, bias_initializer="random_normal", lc_strategy=PowerMethod(100)), (32,)),
    (lambda: G.Conv2D(8, 3, padding="same", bias_initializer="random_normal", lc_strategy=PowerMethod(100)), (12, 12, 8)),
    (lambda: G.Conv2D(8, 4, strides=2, padding="same", bias_initializer="random_normal",
                      lc_strategy=PowerMethod(100)), (12, 12, 8)),
    (lambda: G.LiResNetBlock(3, use_affine=False, residual_scale=2.2, bias_initializer="random_normal",
                             lc_strategy=PowerMethod(100)), (12, 12, 8)),
    (lambda: G.LiResNetBlock(3, use_affine=True, residual_scale=2.2, bias_initializer="random_normal",
                             lc_strategy=PowerMethod(100)), (12, 12, 8)),
])
def test_layer_lipschitz_bounds_sampled_ratios(make, shape):
    rng = np.random.default_rng(0)
    for _ in range(3):
        layer = _built(make(), shape)
        if isinstance(layer, G.LiResNetBlock) and layer.use_affine:
            layer.beta.assign(rng.uniform(-2, 2, layer.beta.shape).astype("float32"))
        lc = float(layer.lipschitz())
        assert _sampled_ratio(layer, shape, rng) <= lc <= layer.sound_bound() * (1 + 1e-6)


def _margin_jacobian_norms(model, x):
    """‖∂(y_j − y_i)/∂x‖ for the predicted j, per input and class (a lower bound on K_ji)."""
    import tensorflow as tf
    x = tf.constant(x)
    with tf.GradientTape(persistent=True) as tape:
        tape.watch(x)
        y = model.network(x)
        j = tf.argmax(y, axis=-1)
        margins = tf.gather(y, j, batch_dims=1)[:, None] - y
    jac = tape.batch_jacobian(margins, x)
    return np.linalg.norm(jac.numpy().reshape(len(x), y.shape[-1], -1), axis=-1)


def test_model_lipschitz_constants():
    from gloro_keras.compat.models import GloroNet
    x = G.Input((32,))
    z = G.MinMax()(G.Dense(32, kernel_initializer="orthogonal", lc_strategy="eigh")(x))
    z = G.MinMax()(G.Dense(32, kernel_initializer="orthogonal", lc_strategy="eigh")(z))
    g = GloroNet(x, G.Dense(4, kernel_initializer="orthogonal", lc_strategy="eigh")(z), 1.0)
    assert g.sub_lipschitz.numpy() == pytest.approx(1.0, rel=1e-5)
    X = np.random.default_rng(0).standard_normal((8, 32)).astype("float32")
    lc = g.lipschitz_constant(X).numpy()
    assert lc.shape == (8, 4) and np.all((lc == -1).sum(axis=1) == 1)
    assert np.all(_margin_jacobian_norms(g, X) <= np.maximum(lc, 0) + 1e-6)

    shared = PowerMethod(25)  # one strategy for every layer: each keeps its own iterate here
    x = G.Input((16, 16, 8))
    z = G.MinMax()(G.Conv2D(8, 3, padding="same", bias_initializer="random_normal", lc_strategy=shared)(x))
    z = G.InvertibleDownsampling(2)(z)
    z = G.MinMax()(G.Conv2D(8, 3, strides=2, padding="same", lc_strategy=shared)(z))
    z = G.MinMax()(G.Dense(16, lc_strategy=shared)(G.Flatten()(z)))
    g = GloroNet(x, G.Dense(4, lc_strategy=shared)(z), 1.0)
    X = np.random.default_rng(1).standard_normal((8, 16, 16, 8)).astype("float32")
    assert np.all(_margin_jacobian_norms(g, X) <= np.maximum(np.asarray(g.lipschitz_constant(X)), 0) + 1e-6)


def _two_moons(n, noise, seed):
    rng = np.random.default_rng(seed)
    t = rng.uniform(0, np.pi, n)
    y = rng.integers(0, 2, n)
    x = np.where(y[:, None] == 0, np.c_[np.cos(t), np.sin(t)], np.c_[1 - np.cos(t), 0.5 - np.sin(t)])
    return (x + rng.normal(0, noise, x.shape)).astype("float32"), y.astype("int32")


def test_train_two_moons_and_gloronet_round_trip(tmp_path):
    from gloro_keras.compat.models import GloroNet
    keras.utils.set_random_seed(0)
    X, Y = _two_moons(200, 0.05, seed=0)
    x = G.Input((2,))
    z = G.MinMax()(G.Dense(100, lc_strategy="eigh")(x))
    z = G.MinMax()(G.Dense(100)(z))
    g = GloroNet(x, G.Dense(2)(z), 0.1)
    g.compile(loss="sparse_crossentropy", optimizer="adam", metrics=["vra", "clean_acc"])
    g.fit(X, Y, epochs=5, batch_size=8, verbose=0)
    loss, vra, clean = g.evaluate(X, Y, batch_size=8, verbose=0)
    assert vra <= clean and vra > 0.75
    assert np.all(_margin_jacobian_norms(g, X[:20]) <= np.maximum(np.asarray(g.lipschitz_constant(X[:20])), 0) + 1e-6)
    g.save(str(tmp_path / "model.gloronet"))
    loaded = GloroNet.load_model(str(tmp_path / "model.gloronet"))
    loaded.compile(loss="sparse_crossentropy", optimizer="adam", metrics=["vra", "clean_acc"])
    np.testing.assert_allclose(loaded.evaluate(X, Y, batch_size=8, verbose=0)[1:], [vra, clean])
    assert isinstance(loaded.network.layers[1], G.Dense)
    assert isinstance(loaded.network.layers[1].lc_strategy, Eigh)  # the strategy is saved too
    np.testing.assert_array_equal(loaded.certify(X), g.certify(X))


# ----------------------------------------------------------------------------- training API
def test_gloro_losses_take_gloro_arguments():
    from gloro_keras.compat.training import losses
    ce = losses.get("sparse_crossentropy")
    assert isinstance(ce, losses.Crossentropy) and ce.sparse
    t = losses.get("trades_ce.1.5")
    assert t.lam == 1.5 and t.robust == "crossentropy" and not t.sparse
    assert losses.get("sparse_trades_kl").robust == "kl" and losses.get("trades_kl.3").lam == 3.0
    logits = np.array([[2.0, 0.5, -1.0], [0.1, 0.3, 0.2]], "float32")
    inputs = {"logits": logits, "margin_bounds": np.ones((3, 3), "float32") - np.eye(3, dtype="float32"),
              "epsilon": np.float32(0.2)}
    y = np.array([0, 2])
    base = float(gk.losses.GloroCrossentropy()(y, inputs))
    scaled = {**inputs, "logits": logits / 2.0, "margin_bounds": inputs["margin_bounds"] / 2.0}
    assert float(losses.Crossentropy(temperature=2.0)(y, inputs)) == pytest.approx(
        float(gk.losses.GloroCrossentropy()(y, scaled)), rel=1e-6)
    assert float(losses.Crossentropy(temperature=2.0)(y, inputs)) != pytest.approx(base)
    kl, ce = losses.Trades(2.0)(y, inputs), losses.Trades(2.0, robust_loss_string="crossentropy")(y, inputs)
    assert float(ce) > float(kl)  # + λ·H(p)
    assert float(losses.Trades(2.0, temperature=3.0)(y, inputs)) == pytest.approx(float(kl) + 2 * np.log(3.0), rel=1e-6)
    restored = losses.Trades.from_config(losses.Trades(0.5, sparse=True, temperature=2.0).get_config())
    assert (restored.lam, restored.sparse, restored.temperature, restored.robust) == (0.5, True, 2.0, "kl")


def test_gloro_metric_names_are_logged_under_those_names():
    from gloro_keras.compat.layers import Dense, Input, MinMax
    from gloro_keras.compat.models import GloroNet
    x = Input((4,))
    g = GloroNet(x, Dense(3)(MinMax()(Dense(6)(x))), epsilon=0.1)
    g.compile(optimizer="adam", loss="crossentropy", metrics=["vra_sparse", "clean_acc_cat", "rejection_rate"])
    X = np.random.default_rng(0).random((16, 4), dtype="float32")
    Y = keras.utils.to_categorical(np.arange(16) % 3, 3)  # one-hot, as gloro's _cat variants expect
    logs = g.fit(X, Y, epochs=1, batch_size=8, verbose=0).history
    assert {"vra_sparse", "clean_acc_cat", "rejection_rate"} <= set(logs)


def test_gloro_schedules():
    from gloro_keras.compat.training.schedules import Schedule
    assert Schedule("linear", 10, 2.0).as_list() == pytest.approx([0.2 * e for e in range(10)])
    assert Schedule("linear_half", 10).as_list()[:6] == pytest.approx([0, 0.2, 0.4, 0.6, 0.8, 1.0])
    assert Schedule("decay_to_0.1", 10)[1] == pytest.approx(0.001 ** 0.1)  # gloro: any "decay…" decays to 0.001×
    assert Schedule("[1.]-cos-[0.]", 4).as_list() == pytest.approx([1.0, 0.5 + 0.5 * np.cos(np.pi / 4), 0.5,
                                                                     0.5 + 0.5 * np.cos(3 * np.pi / 4)])
    assert Schedule("fixed", 10, 3.0)[7] == 3.0
    with pytest.raises(ValueError, match="middle section needs a time"):
        Schedule("[0.]-[1.]-[2.]", 10)


def test_gloro_schedulers_move_epsilon_lambda_and_lr():
    from gloro_keras.compat.layers import Dense, Input, MinMax
    from gloro_keras.compat.models import GloroNet
    from gloro_keras.compat.training.callbacks import EpsilonScheduler, LrScheduler, TradesScheduler
    from gloro_keras.compat.training.losses import Trades

    class Record(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.seen = []

        def on_train_batch_begin(self, batch, logs=None):
            self.seen.append((float(self.model.epsilon_train), self.model.gloro_loss.lam,
                              float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate))))

    x = Input((4,))
    g = GloroNet(x, Dense(3)(MinMax()(Dense(6)(x))), epsilon=0.5)
    loss = Trades(2.0)
    g.compile(optimizer=keras.optimizers.Adam(0.01), loss=loss, metrics=["vra"])
    X = np.random.default_rng(0).random((16, 4), dtype="float32")
    rec = Record()
    g.fit(X, np.arange(16) % 3, epochs=4, batch_size=8, verbose=0,
          callbacks=[EpsilonScheduler("linear", verbose=False), TradesScheduler("linear_decay", verbose=False),
                     LrScheduler("[1.]-cos-[0.]", verbose=False), rec])
    eps, lam, lr = np.array(rec.seen).T
    # schedule[e] = 0.5·e/4; batch b of epoch e: schedule[e-1] + (schedule[e] − schedule[e-1])·b/2 (gloro's lag)
    np.testing.assert_allclose(eps, [0.0, 0.0, 0.0, 0.0625, 0.125, 0.1875, 0.25, 0.3125], atol=1e-6)
    assert g.epsilon == pytest.approx(0.5)  # the certification radius is not scheduled
    assert lam[0] == pytest.approx(2.0) and np.all(np.diff(lam) <= 1e-9) and lam[-1] < 2.0
    assert lr[0] == pytest.approx(0.01) and lr[-1] < lr[0]
    assert loss.lam == pytest.approx(lam[-1])
    with pytest.raises(ValueError, match="invalid schedule string"):
        EpsilonScheduler("[bogus")


def test_plain_keras_dense_and_conv2d_are_bounded(tmp_path):
    # gloro bounded native Keras Dense / Conv2D by power iteration; so does GloroModel now
    x = keras.Input((8, 8, 2))
    z = keras.layers.Conv2D(6, 3, strides=2, padding="same", name="conv")(x)
    z = gk.layers.MinMax()(z)
    z = keras.layers.AveragePooling2D(3, strides=1, name="pool")(z)  # overlapping windows
    z = keras.layers.Flatten()(z)
    z = keras.layers.Dense(12, activation="relu", name="fc")(z)
    y = keras.layers.Dense(3, name="head")(z)
    f = keras.Model(x, y)
    model = gk.GloroModel(f, epsilon=0.1)
    xs = np.random.default_rng(0).random((16, 8, 8, 2), dtype="float32")
    np.testing.assert_allclose(model.predict_logits(xs), f.predict(xs, verbose=0), rtol=1e-5, atol=1e-6)
    names = [type(l).__name__ for l in model.bounded_layers]
    assert names == ["LipschitzConv2D", "LipschitzDense"]
    # the sound bound of each replaced layer covers its exact spectral norm
    conv, fc = f.get_layer("conv"), f.get_layer("fc")
    exact_conv = spectral_norm(explicit_matrix(lambda v: keras.ops.conv(v, conv.kernel, strides=2, padding="same"),
                                               (8, 8, 2)))
    exact_fc = float(np.linalg.norm(np.asarray(fc.kernel), 2))
    bounds = [float(l.sound_bound()) for l in model.bounded_layers]
    assert exact_conv <= bounds[0] <= exact_conv * 1.05 and exact_fc <= bounds[1] <= exact_fc * 1.05
    from gloro_keras.compat.lc import LipschitzComputationStrategy
    assert exact_conv <= LipschitzComputationStrategy.for_layer(conv)() <= exact_conv * 1.05
    # overlapping average pooling: √(⌈3/1⌉²/9) = 1 covers its norm
    pool = keras.layers.AveragePooling2D(3, strides=1)
    exact_pool = spectral_norm(explicit_matrix(pool, (4, 4, 1)))
    assert exact_pool <= gk.models.network_analysis.constant_lipschitz(pool) == 1.0
    # it trains, certifies soundly against float64 re-evaluation, and saves
    model.compile(optimizer="adam", loss="emma", metrics=["vra"])
    ys = np.arange(16) % 3
    model.fit(xs, ys, epochs=2, batch_size=8, verbose=0)
    assert not np.allclose(np.asarray(model.network.get_layer("fc").get_layer("fc_bounded").kernel), np.asarray(fc.kernel))
    radius = model.certified_radius(xs)
    path = str(tmp_path / "plain.keras")
    model.save(path)
    np.testing.assert_array_equal(keras.models.load_model(path).certified_radius(xs), radius)


def test_gloro_bound_freezing_and_fit_without_iterate_updates():
    # issue points 2, 4 and 9: freeze_lc / unfreeze_lc / run_lc_to_convergence, fit(update_iterates=False),
    # and gloro's MinMax function
    from gloro_keras.compat.layers import Dense, Input, MinMax as GloroMinMax
    from gloro_keras.compat.models import GloroNet

    np.testing.assert_array_equal(np.asarray(GloroMinMax()(np.array([[1.0, -2.0, 3.0, 0.0]], "float32"))),
                                  [[-2.0, 1.0, 0.0, 3.0]])
    x = Input((4,))
    g = GloroNet(x, Dense(3)(GloroMinMax()(Dense(8)(x))), 0.2)
    g.compile(optimizer="adam", loss="sparse_crossentropy", metrics=["vra"])
    X = np.random.default_rng(0).random((32, 4), dtype="float32")
    Y = np.arange(32) % 3
    g.fit(X, Y, epochs=1, batch_size=8, verbose=0, update_iterates=False)
    assert not g.lc_frozen  # no UpdatePowerIterates: nothing froze the bound
    g.fit(X, Y, epochs=1, batch_size=8, verbose=0)
    assert g.lc_frozen  # the default callback froze it at the end of training
    assert float(g.sub_lipschitz) == pytest.approx(g.lipschitz_bound("sound"), rel=1e-6)
    assert g.unfreeze_lc() is g and not g.lc_frozen
    assert g.run_lc_to_convergence() is g
    assert float(g.sub_lipschitz) == pytest.approx(g.lipschitz_bound("power"), rel=1e-3)
    assert g.freeze_lc() is g and g.lc_frozen
    assert g.predict(X, verbose=0).shape == (32, 4)
