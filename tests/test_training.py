"""A short `fit` on real MNIST raises VRA far above chance, and attacks confirm certificates."""
import numpy as np
import pytest

from conftest import MNIST_EPS as EPS


@pytest.mark.xdist_group("trained_mnist")  # one worker trains it, once
def test_short_fit_on_mnist_certifies_far_above_chance(trained_mnist):
    model, xt, yt = trained_mnist
    certified = model.certify(xt)  # sound bound
    vra = float(np.mean(certified == yt))
    clean = float(np.mean(model.predict_logits(xt).argmax(-1) == yt))
    assert vra >= 0.5, vra  # chance is 0.1
    assert clean >= vra
    # the sound bound only ever certifies less than the converged power-iteration estimate
    power = model.certify(xt, bound="power")
    assert np.all((certified == 10) | (certified == power))
    # once they use the same bound, the in-graph outputs certify a subset of what `certify` does
    # (they count the float32 rounding term a_ji twice), and the metrics read them
    model.update_bound_cache("sound")
    in_graph = model.predict(xt, verbose=0).argmax(-1)
    assert np.all((in_graph == 10) | (in_graph == certified))
    logs = model.evaluate(xt, yt, verbose=0, return_dict=True)
    assert logs["vra"] == pytest.approx(float(np.mean(in_graph == yt)), abs=1e-6)
    assert 0 <= np.sum(certified == yt) - np.sum(in_graph == yt) <= 5, (vra, logs["vra"])  # of 1000


@pytest.mark.xdist_group("trained_mnist")  # one worker trains it, once
def test_pgd_finds_no_adversarial_example_on_certified_points(trained_mnist):
    from gloro_keras.attacks import pgd_l2

    model, xt, yt = trained_mnist
    certified = model.certify(xt)
    idx = np.flatnonzero(certified == yt)[:200]
    assert len(idx) >= 100
    result = pgd_l2(model.network, xt[idx], yt[idx], epsilon=EPS, steps=50, restarts=2, clip=None)
    assert int(np.sum(result.success)) == 0
    # the same attack is not toothless: at 4ε it breaks many of these points
    strong = pgd_l2(model.network, xt[idx], yt[idx], epsilon=4 * EPS, steps=50, restarts=1, clip=None)
    assert np.mean(strong.success) > 0.2


@pytest.mark.xdist_group("trained_mnist")  # one worker trains it, once
def test_sound_bound_is_tight_on_trained_kernels(trained_mnist):
    model = trained_mnist[0]
    for layer in model.bounded_layers:
        estimate = layer.converge_iterate(max_iterations=3000, tolerance=1e-10)  # ≤ exact norm
        sound = layer.sound_bound()  # ≥ exact norm
        assert sound >= estimate * (1 - 1e-6), layer.name
        assert sound <= estimate * 1.01, (layer.name, sound / estimate)
