"""Original-gloro code ports to gloro-keras by replacing `gloro` with `gloro_keras.compat`
in its imports; gloro-keras's own namespaces keep one name per meaning."""
import keras
import numpy as np
import pytest

import gloro_keras as gk


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
    assert type(loss) is cls and (lam is None or loss.lam == lam)
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
    assert not hasattr(gk.GloroModel, "predict_clean") and not hasattr(gk.GloroModel, "f")
    assert not hasattr(gk.layers.BoundedLayer, "lipschitz_bound")
