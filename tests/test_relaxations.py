"""Relaxed robustness (top-K and affinity sets): the certificate against its definition, against
the float32 network over the whole ε-ball, in-graph against `certify`, and gloro's relaxed
models ported by changing imports."""
import keras
import numpy as np
import pytest

import gloro_keras as gk
from gloro_keras.layers import LipschitzDense, MinMax
from gloro_keras.ops.relaxations import (
    Affinity,
    Relaxation,
    RelaxedCertificate,
    TopK,
    lifted_thresholds,
    relaxed_margins,
    top_classes,
)


def _brute_force_guarantee(logits, kmat, eps, k, sets=None):
    """Column k'−1: every class among the k' largest beats every other class by more than ε·K."""
    n, m = logits.shape
    out = np.zeros((n, k), bool)
    for row in range(n):
        ranked = sorted(range(m), key=lambda c: (-logits[row, c], c))
        for kp in range(1, k + 1):
            top = ranked[:kp]
            ok = all(logits[row, l] - logits[row, i] > eps * kmat[l, i]
                     for l in top for i in range(m) if i not in top)
            if sets is not None:
                ok &= any(set(top) <= set(s) for s in sets)
            out[row, kp - 1] = ok
    return out


@pytest.mark.parametrize("relaxation", ["topk:3", "affinity:[0,2][1][3,4,5]"])
def test_certificate_is_the_definition(relaxation):
    rng = np.random.default_rng(7)
    m = 6
    logits = rng.normal(size=(300, m)) * 2.0
    w = rng.normal(size=(8, m))
    kmat = 0.7 * np.linalg.norm(w[:, :, None] - w[:, None, :], axis=0)
    relax = Relaxation.get(relaxation, m)
    cert = RelaxedCertificate.build(logits, kmat, relax)
    sets = relax.sets if isinstance(relax, Affinity) else None
    for eps in (0.0, 0.05, 0.2):
        expected = _brute_force_guarantee(logits, kmat, eps, relax.k, sets)
        np.testing.assert_array_equal(cert.guarantee(eps), expected)
        assert 0 < expected[:, 1:].sum()  # the test sees certified sets beyond the top class
    # the radius is where the last certified set stops being certified
    r = cert.radius()
    assert np.any(r > 0)
    inside, outside = cert.certified_k(r * (1 - 1e-9)), cert.certified_k(r * (1 + 1e-9))
    assert np.all(inside[r > 0] > 0) and np.all(outside == 0)


def test_ties_across_the_set_boundary_are_never_certified():
    logits = np.array([[3.0, 2.0, 2.0, 0.0], [3.0, 3.0, 1.0, 0.0]], np.float32)
    kmat = np.ones((4, 4), np.float32) - np.eye(4, dtype=np.float32)
    cert = RelaxedCertificate.build(logits, kmat, TopK(2))
    # row 0: {0} is certified at ε = 0 but {0, 1} ties with class 2; row 1: {0} ties with class 1
    np.testing.assert_array_equal(cert.guarantee(0.0), [[True, False], [False, True]])
    x = keras.ops.convert_to_tensor(logits)
    order = top_classes(x, 2)
    margins = keras.ops.convert_to_numpy(relaxed_margins(x, order, lifted_thresholds(x, order, kmat, 0.0)))
    np.testing.assert_array_equal(margins > 0, [[True, False], [False, True]])


def _blobs(n=100, seed=0):
    """Six Gaussian blobs on a circle in 2-D; neighbours overlap, so many points are certified
    top-2 or top-3 but not top-1."""
    rng = np.random.default_rng(seed)
    centres = np.stack([np.cos(np.arange(6) * np.pi / 3), np.sin(np.arange(6) * np.pi / 3)], 1) * 2.0
    y = np.repeat(np.arange(6), n)
    x = centres[y] + rng.normal(scale=0.55, size=(6 * n, 2))
    p = rng.permutation(6 * n)
    return x[p].astype("float32"), y[p].astype("int32")


def _network():
    x = keras.Input((2,))
    z = MinMax()(LipschitzDense(64)(x))
    z = MinMax()(LipschitzDense(64)(z))
    return keras.Model(x, LipschitzDense(6)(z))


@pytest.fixture(scope="module")
def relaxed_model():
    keras.utils.set_random_seed(11)
    x, y = _blobs()
    model = gk.RelaxedGloroModel(_network(), epsilon=0.25, relaxation="topk:3")
    model.compile(optimizer=keras.optimizers.Adam(3e-3), loss="gloro_crossentropy",
                  metrics=["clean_acc", "vra", "relaxed_vra", "top_k_clean_acc:3"])
    model.fit(x, y, epochs=12, batch_size=32, verbose=0)
    return model, x, y


def test_certified_sets_hold_over_the_whole_ball_for_the_float32_network(relaxed_model):
    model, x, _ = relaxed_model
    eps = model.epsilon
    ks = model.certified_k(x[:200])
    assert np.sum(ks >= 2) >= 10 and np.sum(ks == 1) >= 10
    logits = model.predict_logits(x[:200])
    # 2-D inputs: the ε-ball is covered densely (its boundary, where margins are smallest, and inside)
    angles = np.linspace(0, 2 * np.pi, 720, endpoint=False)
    ring = np.stack([np.cos(angles), np.sin(angles)], 1)
    offsets = np.concatenate([ring * eps * (1 - 1e-6), ring[::4] * eps * 0.5]).astype("float32")
    broken = 0
    for n in np.flatnonzero(ks > 0):
        top = np.argsort(-logits[n], kind="stable")[: ks[n]]
        rest = np.setdiff1d(np.arange(6), top)
        z = np.asarray(model.network(x[n] + offsets), np.float32)
        broken += int(np.sum(z[:, top].min(axis=1) <= z[:, rest].max(axis=1)))
    assert broken == 0


def test_inference_outputs_certify_a_subset_of_certify(relaxed_model):
    model, x, y = relaxed_model
    out = keras.ops.convert_to_numpy(model(x))
    m = 6
    k_graph = out[:, m + 1].astype(int)
    guarantee = model.relaxed_certificate(x).guarantee(model.epsilon)
    rows = np.flatnonzero(k_graph > 0)
    assert len(rows) > 100
    assert np.all(guarantee[rows, k_graph[rows] - 1])
    # argmax over [y, ⊥] is the top class exactly where k* > 0
    np.testing.assert_array_equal(np.argmax(out[:, : m + 1], axis=1) != m, k_graph > 0)
    assert model.predict(x[:5], verbose=0).shape == (5, m + 1)
    # the metrics: standard VRA <= relaxed VRA <= top-3 accuracy, and they match the certificate
    logs = model.evaluate(x, y, verbose=0, return_dict=True)
    assert logs["vra"] <= logs["relaxed_vra"] <= logs["top_3_clean_acc"]
    in_set = model.relaxed_certificate(x).certified_set_contains(y, model.epsilon)
    assert abs(in_set.mean() - logs["relaxed_vra"]) <= 0.02


def test_top1_relaxation_is_standard_certification(relaxed_model):
    model, x, _ = relaxed_model
    standard = gk.GloroModel(model.network, epsilon=model.epsilon)
    top1 = gk.RelaxedGloroModel(model.network, epsilon=model.epsilon, relaxation=TopK(1))
    np.testing.assert_array_equal(top1.certify(x), standard.certify(x))
    np.testing.assert_allclose(top1.certified_radius(x), standard.certified_radius(x), rtol=1e-12)


def test_relaxed_model_round_trips_a_keras_file(relaxed_model, tmp_path):
    model, x, _ = relaxed_model
    path = str(tmp_path / "relaxed.keras")
    model.save(path)
    loaded = keras.models.load_model(path)
    assert isinstance(loaded, gk.RelaxedGloroModel) and loaded.relaxation == model.relaxation
    np.testing.assert_array_equal(loaded.certified_k(x), model.certified_k(x))


def test_affinity_sets_in_every_form():
    from gloro_keras.compat.relaxations import AffinitySet

    expected = ((0, 2), (1,), (3,))
    one_hot = np.array([[1, 0, 1, 0, 0], [0, 1, 0, 0, 0], [0, 0, 0, 1, 0]])
    for form in ([[0, 2], [1], [3]], one_hot, "[0,2][1][3]", " [ [0, 2] [1] [3] ] ", AffinitySet(one_hot)):
        sets = form.mask if isinstance(form, AffinitySet) else form
        assert Affinity(sets, num_classes=5).sets == expected
    assert str(AffinitySet(one_hot)) == "[0,2][1][3]"
    assert AffinitySet.from_string(str(AffinitySet(one_hot)), 5).as_indices() == [[0, 2], [1], [3]]
    for bad, message in [([[0, 7]], "7"), ([[]], "non-empty"), ("0,2", "bracketed"), ([[0, "a"]], "'a'")]:
        with pytest.raises(ValueError, match=message):
            Affinity(bad, num_classes=5)
    # class 4 is in no set: never certified, however large its margin
    logits = np.array([[9.0, 0.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0, 9.0]])
    cert = RelaxedCertificate.build(logits, np.zeros((5, 5)), Affinity(one_hot))
    np.testing.assert_array_equal(cert.certified_k(0.1), [1, 0])  # {0} lies in [0,2]; {4} in no set
    cert = RelaxedCertificate.build(np.array([[9.0, 0.0, 8.0, 0.0, 0.0]]), np.zeros((5, 5)), Affinity(one_hot))
    np.testing.assert_array_equal(cert.certified_k(0.1), [2])


def test_relaxed_models_refuse_what_they_cannot_certify():
    net = _network()
    with pytest.raises(ValueError, match=r"k must be in \[1, 5\]"):
        gk.RelaxedGloroModel(net, epsilon=0.1, relaxation="topk:6")
    with pytest.raises(ValueError, match="topk:K"):
        gk.RelaxedGloroModel(net, epsilon=0.1, relaxation="top5")
    model = gk.RelaxedGloroModel(net, epsilon=0.1, relaxation="topk:2")
    with pytest.raises(ValueError, match="'emma' trains standard robustness"):
        model.compile(optimizer="adam", loss="emma")
    with pytest.raises(ValueError, match="relaxed robustness"):
        gk.GloroModel(net, epsilon=0.1).compile(optimizer="adam", loss="emma", metrics=["relaxed_vra"])


def _four_clusters(seed):
    """Four classes in 2-D: two well-separated clusters and two that overlap each other."""
    rng = np.random.default_rng(seed)
    centres = np.array([[-2.0, 0.0], [2.0, 0.0], [0.0, 2.2], [0.4, 2.6]])
    y = np.repeat(np.arange(4), 100).astype("int32")
    x = centres[y] + rng.normal(scale=0.35, size=(400, 2))
    p = rng.permutation(400)
    return x[p].astype("float32"), y[p]


@pytest.mark.parametrize("kind", ["rtk", "affinity"])
def test_gloro_relaxed_models_port_by_changing_imports(kind, tmp_path):
    # gloro: from gloro import RtkGloroNet, AffinityGloroNet; from gloro.layers import Dense, Input, MinMax
    from gloro_keras.compat import AffinityGloroNet, RtkGloroNet
    from gloro_keras.compat.layers import Dense, Input, MinMax as GloroMinMax
    from gloro_keras.compat.training.callbacks import LrScheduler

    X, Y = _four_clusters(3)
    x = Input((2,))
    z = GloroMinMax()(Dense(64)(x))
    z = GloroMinMax()(Dense(64)(z))
    y = Dense(4)(z)
    if kind == "rtk":
        g, cls, metric = RtkGloroNet(x, y, 0.2, k=2), RtkGloroNet, "rtk_vra"
    else:
        g, cls, metric = AffinityGloroNet(x, y, 0.2, affinity_sets="[0][1][2,3]"), AffinityGloroNet, "affinity_vra"
    g.compile(loss="sparse_crossentropy", optimizer="adam", metrics=["clean_acc", "vra", metric])
    g.fit(X, Y, epochs=4, batch_size=8, verbose=0, callbacks=[LrScheduler("[1.]-cos-[0.]", verbose=False)])
    loss, clean, vra, relaxed = g.evaluate(X, Y, batch_size=32, verbose=0)
    assert vra <= relaxed and vra <= clean
    assert vra > 0.45 and relaxed > vra + 0.1  # the overlapping pair is certified as a set
    pred, guarantee = g.predict_with_guarantee(X[:16])
    assert pred.shape == (16, 5) and guarantee.shape == (16, 2)
    _, loosest = g.predict_with_loosest_guarantee(X[:16])
    _, strictest = g.predict_with_strictest_guarantee(X[:16])
    assert np.all((loosest >= strictest) & ((loosest == -1) == (strictest == -1)))
    path = str(tmp_path / "relaxed.gloronet")
    g.save(path)
    g2 = cls.load_model(path)
    g2.compile(loss="sparse_crossentropy", optimizer="adam", metrics=["clean_acc", "vra", metric])
    np.testing.assert_allclose(g2.evaluate(X, Y, batch_size=32, verbose=0)[1:], [clean, vra, relaxed])
    if kind == "rtk":
        g.k = 1  # traced again: top-1 relaxed robustness is standard robustness
        _, _, vra1, relaxed1 = g.evaluate(X, Y, batch_size=32, verbose=0)
        assert relaxed1 == pytest.approx(vra1)
    else:
        with pytest.raises(ValueError):
            g.k = 3


def test_top_k_clean_accuracy_counts_ranks():
    from gloro_keras.compat.training.metrics import top_k_clean_acc

    y_pred = np.array([[0.1, 0.5, 0.4, 0.0, 9.0], [1.0, 1.0, 0.0, 2.0, 0.0]], np.float32)  # last column ⊥
    for k, expected in [(1, [0.0, 0.0]), (2, [1.0, 0.0]), (3, [1.0, 1.0])]:
        metric = top_k_clean_acc(k)
        assert metric.__name__ == f"top_{k}_clean_acc"
        np.testing.assert_array_equal(np.asarray(metric(np.array([2, 1]), y_pred)), expected)
