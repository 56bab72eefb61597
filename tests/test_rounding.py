"""Certificates about the float32 network as it computes: rounding, ties, batches, ε checks.

Each test is built so that it would fail on a certifier that ignores float32 rounding: the
attacks below break `arithmetic="exact"` certificates on the same networks (asserted), and
must find nothing against the default `arithmetic="float32"`.
"""
import math

import keras
import numpy as np
import pytest

import gloro_keras as gk
from gloro_keras.layers import LipschitzConv2D, LipschitzDense, LLNDense, MinMax
from gloro_keras.metrics import gloro_metrics
from gloro_keras.ops.precision import float64_available, full_precision_kernels
from conftest import input_gradient

BIG = 2.0 ** 27  # ulp(2²⁷) = 16 in float32


def _dense_gloro(kernels, biases, epsilon, relu=True):
    """Input → (LipschitzDense → ReLU)* → LipschitzDense head, weights given explicitly."""
    inp = keras.Input((kernels[0].shape[0],))
    z, layers = inp, []
    for i, (k, b) in enumerate(zip(kernels, biases)):
        layer = LipschitzDense(k.shape[1], name=f"dense{i}")
        z = layer(z)
        layers.append((layer, k, b))
        if i < len(kernels) - 1 and relu:
            z = keras.layers.ReLU(name=f"relu{i}")(z)
    net = keras.Model(inp, z)
    for layer, k, b in layers:
        layer.kernel.assign(np.asarray(k, "float32"))
        layer.bias.assign(np.asarray(b, "float32"))
    return gk.GloroModel(net, epsilon=epsilon)


def _f32_logits(model, x, batch_size=256):
    if len(x) == 0:
        return np.zeros((0, model.num_classes), "float32")
    with full_precision_kernels():
        return np.asarray(model.network.predict(np.asarray(x, "float32"), batch_size=batch_size, verbose=0))


def _violations(model, x, cert_class, radius, directions=64, seed=0):
    """Points strictly within `radius` of each x whose float32 argmax is not `cert_class`.

    Searches, at 40 distances up to radius·(1 − 1e-6), along the input gradient of every
    margin y_i − y_j (the exact linearization: finite differences are useless at the float32
    boundary) and along `directions` random directions; one batched predict."""
    m = model.num_classes
    x, j, r = (np.asarray(a) for a in (x, cert_class, radius))
    keep = (j < m) & (r > 0)
    x, j, r = x[keep].astype("float32"), j[keep], r[keep]
    if not len(x):
        return 0
    n, shape = len(x), x.shape[1:]
    d = int(np.prod(shape))
    rng = np.random.default_rng(seed)
    dirs = [rng.standard_normal((n, directions, d))]
    onehot_j = keras.ops.one_hot(j, m)
    for i in range(m):
        diff = keras.ops.one_hot(np.full(n, i), m) - onehot_j
        g = input_gradient(lambda z: keras.ops.sum(model.network(z) * diff, axis=-1), x)
        dirs.append(g.reshape(n, 1, d))
    dirs = np.concatenate(dirs, axis=1)
    dirs /= np.linalg.norm(dirs, axis=-1, keepdims=True) + 1e-30
    ts = np.concatenate([np.linspace(0.0, 1.0, 41)[1:-1], [1.0 - 1e-6]])
    steps = (r[:, None, None] * ts[None, None, :])[..., None] * dirs[:, :, None, :]  # (n, D, T, d)
    inside = np.linalg.norm(steps, axis=-1) < r[:, None, None]
    pts = (x.reshape(n, 1, 1, d) + steps).astype("float32")
    pred = np.argmax(_f32_logits(model, pts.reshape((-1,) + shape)), axis=1).reshape(inside.shape)
    return int(np.sum((pred != j[:, None, None]) & inside))


# ---- ties ----------------------------------------------------------------------------------
def test_identical_class_vectors_are_never_certified_on_any_path():
    rng = np.random.default_rng(0)
    w = rng.standard_normal((6, 3)).astype("float32")
    w[:, 1] = w[:, 0]  # K_01 = 0: classes 0 and 1 always tie
    model = _dense_gloro([w], [np.zeros(3)], epsilon=0.1)
    x = rng.standard_normal((200, 6)).astype("float32")
    logits = model.predict_logits(x)
    top01 = np.argmax(logits, 1) <= 1
    assert top01.sum() > 20
    for arithmetic in ("float32", "exact"):
        assert np.all(model.certify(x, arithmetic=arithmetic)[top01] == 3)
        assert np.all(model.certified_radius(x, arithmetic=arithmetic)[top01] == 0)
    model.update_bound_cache()
    out = model.predict(x, verbose=0)
    assert np.all(np.argmax(out, 1)[top01] == 3)
    model.compile(loss="emma", metrics=["vra", "rejection_rate"])
    res = model.evaluate(x[top01], np.argmax(logits, 1)[top01], verbose=0, return_dict=True)
    assert res["vra"] == 0.0 and res["rejection_rate"] == 1.0


def test_large_logits_are_not_certified_where_a_close_point_flips():
    # hidden = x + 2²⁷ rounds to multiples of 16 (of 8 below 2²⁷); logits = hidden − 2²⁷. At
    # x = (−3.99, 8.01) the float32 logits are (0, 16): the exact-arithmetic convention claims
    # radius 16/√2 ≈ 11.3 for class 1, but x' = (−3.99, 7.99), 0.02 away, gives (0, 0) and argmax 0.
    eye = np.eye(2, dtype="float32")
    model = _dense_gloro([eye, eye], [np.full(2, BIG), np.full(2, -BIG)], epsilon=8.0)
    x = np.array([[-3.99, 8.01]], "float32")
    np.testing.assert_array_equal(model.predict_logits(x)[0], [0.0, 16.0])
    assert model.certify(x, arithmetic="exact")[0] == 1  # the published convention: certified...
    assert model.certified_radius(x, arithmetic="exact")[0] == pytest.approx(16 / math.sqrt(2), rel=1e-5)
    assert np.argmax(model.predict_logits(np.array([[-3.99, 7.99]], "float32"))[0]) == 0
    assert _violations(model, x, [1], [8.0]) > 0  # ...and broken within ε = 8
    assert model.certify(x)[0] == 2 and model.certified_radius(x)[0] == 0.0
    for bound in ("power", "current"):
        assert model.certify(x, bound=bound)[0] == 2
    model.update_bound_cache()
    assert np.argmax(model.predict(x, verbose=0)[0]) == 2


def test_float32_bottom_logit_rounding_cannot_certify_a_margin_below_eps_k():
    # margin 16 against ε·K = 20: in float32, y_1 + 20 rounds to y_0 and argmax picked class 0
    w = np.array([[0.5, -0.5]], "float32")
    model = _dense_gloro([w], [np.array([BIG + 16, BIG])], epsilon=20.0)
    x = np.zeros((4, 1), "float32")
    model.update_bound_cache()
    out = model.predict(x, verbose=0)
    assert np.all(np.argmax(out, 1) == 2)
    model.compile(loss="emma", metrics=["vra", "rejection_rate"])
    res = model.evaluate(x, np.zeros(4, "int32"), verbose=0, return_dict=True)
    assert res["vra"] == 0.0 and res["rejection_rate"] == 1.0
    # the training-time metric (no rounding terms) counts a tie with ⊥ as not certified
    tie = keras.ops.convert_to_tensor(np.array([[BIG + 16, BIG, BIG + 16]], "float32"))
    assert float(gloro_metrics.verified_robust_accuracy(np.array([0]), tie)[0]) == 0.0
    assert float(gloro_metrics.rejection_rate(np.array([0]), tie)[0]) == 1.0


# ---- rounding made to bite -------------------------------------------------------------------
def _large_bias_net(bias, seed):
    rng = np.random.default_rng(seed)
    d, h, m = 8, 16, 3
    w2 = rng.standard_normal((h, m)).astype("float32")
    # the head's bias cancels the hidden bias, so the exact logits are w2ᵀ W1ᵀ x
    return _dense_gloro(
        [rng.standard_normal((d, h)), w2],
        [np.full(h, bias), -bias * w2.astype(np.float64).sum(0)], epsilon=1.0,
    ), d


def _boundary_points(model, d, n, seed, scale=50.0):
    """Float32 decision-boundary points by bisection between points of different classes."""
    rng = np.random.default_rng(seed)
    a = rng.uniform(-scale, scale, (n, d)).astype("float32")
    b = rng.uniform(-scale, scale, (n, d)).astype("float32")
    pa, pb = np.argmax(_f32_logits(model, a), 1), np.argmax(_f32_logits(model, b), 1)
    keep = pa != pb
    a, b, pa = a[keep], b[keep], pa[keep]
    for _ in range(60):
        mid = ((a.astype(np.float64) + b) / 2).astype("float32")
        same = np.argmax(_f32_logits(model, mid), 1) == pa
        a = np.where(same[:, None], mid, a)
        b = np.where(same[:, None], b, mid)
    return a


@pytest.mark.parametrize("bias", [1e5, 1e6, 1e7])
def test_large_bias_relu_nets_no_false_certificate_at_the_float32_boundary(bias):
    model, d = _large_bias_net(bias, seed=int(math.log10(bias)))
    rng = np.random.default_rng(1)
    near = _boundary_points(model, d, 40, seed=2)
    far = rng.uniform(-50, 50, (30, d)).astype("float32")
    x = np.concatenate([near, far])
    # the exact-arithmetic certificate is broken next to the boundary (the attack has teeth)
    cls_e, r_e = model.certify(x, epsilon=0.0, arithmetic="exact"), model.certified_radius(x, arithmetic="exact")
    assert _violations(model, near, cls_e[: len(near)], r_e[: len(near)], directions=8) > 0
    # the float32-aware certificate: nothing broken, at the radius or at a fixed ε
    cls, r = model.certify(x, epsilon=0.0), model.certified_radius(x)
    assert _violations(model, x, cls, r, directions=8) == 0
    eps = float(np.median(r[r > 0])) if np.any(r > 0) else 0.0
    if eps > 0:
        c_eps = model.certify(x, epsilon=eps)
        assert _violations(model, x, c_eps, np.where(c_eps < 3, eps, 0.0), directions=8) == 0
        from gloro_keras.attacks import soundness_check_gloro

        report = soundness_check_gloro(model, x, epsilon=eps, steps=30, restarts=1)
        assert report.ok


# ---- the deviation bound against float64 re-evaluation ---------------------------------------
def _float64_twin(network):
    config = network.get_config()
    for layer in config["layers"]:
        layer["config"]["dtype"] = "float64"
    twin = keras.Model.from_config(config)
    twin.set_weights([np.asarray(w, np.float64) for w in network.get_weights()])
    return twin


def _plain_layers_net():
    x = keras.Input((8, 8, 3))
    z = keras.layers.Rescaling(0.7, offset=-0.3)(x)
    z = LipschitzConv2D(8, 3, padding="same", bias_initializer=keras.initializers.RandomNormal(stddev=50.0))(z)
    z = keras.layers.AveragePooling2D(2)(z)
    z = MinMax()(z)
    z = keras.layers.MaxPooling2D(2)(z)
    z = keras.layers.ZeroPadding2D(1)(z)
    z = LipschitzConv2D(6, 2, strides=2, padding="valid")(z)
    z = keras.layers.ReLU()(z)
    z = keras.layers.GlobalAveragePooling2D()(z)
    z = LipschitzDense(16, bias_initializer=keras.initializers.RandomNormal(stddev=1e3))(z)
    z = keras.layers.Activation("relu")(z)
    z = keras.layers.Flatten()(z)
    return gk.GloroModel(keras.Model(x, LLNDense(5)(z)), epsilon=0.1)


def _gloro_layers_net():
    x = keras.Input((8, 8, 3))
    z = LipschitzConv2D(8, 3, padding="same", bias_initializer=keras.initializers.RandomNormal(stddev=50.0))(x)
    z = MinMax(pairing="adjacent")(z)
    z = gk.layers.LiResNetBlock(kernel_size=4, residual_scale=1.7, kernel_initializer="glorot_uniform")(z)
    z = gk.layers.InvertibleDownsampling(2)(z)
    z = gk.layers.Scaling(-3.3)(z)
    z = MinMax(pairing="adjacent")(z)
    z = keras.layers.Flatten()(z)
    return gk.GloroModel(keras.Model(x, LLNDense(5)(z)), epsilon=0.1)


@pytest.mark.parametrize("kind", ["liresnet", "convnet", "resnet", "plain_layers", "gloro_layers"])
def test_rounding_bound_covers_float64_re_evaluation_every_layer_type(kind):
    keras.utils.set_random_seed(3)
    if kind in ("plain_layers", "gloro_layers"):
        model = _plain_layers_net() if kind == "plain_layers" else _gloro_layers_net()
        x = np.random.default_rng(0).uniform(0, 1, (64, 8, 8, 3)).astype("float32")
    else:
        model = gk.GloroLiResNet(L=3, W=8, num_classes=6, input_shape=(12, 12, 3), epsilon=0.1,
                                 dense_width=16, block=kind)
        for layer in model.bounded_layers:  # make the weights far from their tidy initial values
            for v in layer.trainable_weights:
                v.assign(v + np.random.default_rng(1).normal(0, 0.3, v.shape).astype("float32"))
        x = np.random.default_rng(0).uniform(0, 1, (64, 12, 12, 3)).astype("float32")
    cert = model.margin_certificate(x)
    y32 = cert.logits
    y64 = np.asarray(_float64_twin(model.network).predict(x.astype(np.float64), verbose=0), np.float64)
    rows = np.arange(len(x))
    j = cert.predicted
    d32 = y32[rows, j][:, None] - y32
    d64 = y64[rows, j][:, None] - y64
    a = d32 - cert.slack  # = a_ji (+ a float64 hair), the bound at ε = 0
    off = np.ones_like(a, bool)
    off[rows, j] = False
    dev = np.abs(d32 - d64)[off]
    assert np.all(dev <= a[off])
    assert np.max(dev) > 0  # the check is not vacuous: float32 and float64 do differ
    # and inside the ball: |Δmargin(x') − Δmargin(x)| ≤ r·K_ji + a_ji + b_ji·r (the certificate)
    rng = np.random.default_rng(5)
    r = 0.05
    delta = rng.standard_normal(x.shape)
    delta *= r / np.linalg.norm(delta.reshape(len(x), -1), axis=1)[:, None, None, None]
    y32b = _f32_logits(model, x + delta)
    dropped = d32 - (y32b[rows, j][:, None] - y32b)
    assert np.all(dropped[off] < (r * cert.rate + a)[off])


def test_batch_composition_never_breaks_a_certificate():
    keras.utils.set_random_seed(4)
    model = gk.GloroLiResNet(L=2, W=8, num_classes=5, input_shape=(12, 12, 3), epsilon=0.02, dense_width=16)
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 1, (256, 12, 12, 3)).astype("float32")
    cls = model.certify(x, epsilon=0.0, batch_size=256)
    r = model.certified_radius(x, batch_size=256)
    idx = np.flatnonzero(r > 0)[:16]
    assert len(idx) >= 8
    for bs, fill in ((1, None), (7, 0.5), (256, 1.0)):
        for i in idx:
            batch = np.repeat(x[i : i + 1], bs, axis=0)
            if fill is not None and bs > 1:
                batch[1:] = rng.uniform(0, fill, batch[1:].shape)
            assert np.argmax(_f32_logits(model, batch, batch_size=bs)[0]) == cls[i]
        assert _violations(model, x[idx], cls[idx], r[idx], directions=4) == 0


# ---- reported VRA never above certify ---------------------------------------------------------
@pytest.mark.xdist_group("trained_mnist")  # one worker trains it, once
def test_evaluate_and_predict_never_certify_more_than_certify(trained_mnist):
    model, xt, yt = trained_mnist  # fit's ConvergeBounds cached the sound bound
    cls = model.certify(xt)
    assert np.mean(cls == yt) > 0.2
    out = model.predict(xt, verbose=0)
    pred = np.argmax(out, axis=1)
    inference_certified = pred < 10
    assert np.all(cls[inference_certified] == pred[inference_certified])
    res = model.evaluate(xt, yt, verbose=0, return_dict=True)
    assert res["vra"] <= np.mean(cls == yt) + 1e-7
    assert res["vra"] >= np.mean(cls == yt) - 0.02  # and not far below it
    exact = model.certify(xt, arithmetic="exact")
    assert np.all((cls < 10) <= (exact < 10))  # rounding only ever removes certificates


# ---- ε, TF32 ---------------------------------------------------------------------------------
@pytest.mark.parametrize("bad", [-1.0, float("nan"), float("inf"), "x"])
def test_every_entry_point_rejects_a_bad_epsilon(bad, tmp_path):
    from gloro_keras.cli import certify as certify_cli
    from gloro_keras.cli import train_config

    model = _dense_gloro([np.eye(2, dtype="float32")], [np.zeros(2)], epsilon=0.1)
    x = np.zeros((2, 2), "float32")
    with pytest.raises(ValueError, match="epsilon"):
        model.certify(x, epsilon=bad)
    with pytest.raises(ValueError, match="epsilon"):
        gk.evaluation.certification_report(model, x, np.zeros(2, "int64"), epsilon=bad)
    with pytest.raises(ValueError, match="epsilon"):
        gk.train.EpsilonScheduler(epsilon=bad)
    with pytest.raises(ValueError, match="epsilon"):
        gk.GloroModel(model.network, epsilon=bad)
    with pytest.raises(certify_cli.CertifyError, match="epsilon"):
        certify_cli.certify({"model": str(tmp_path / "missing.keras"), "epsilon": bad, "dataset": "quickstart"})
    cfg = dict(train_config.DEFAULTS, dataset="quickstart", epsilon=bad)
    with pytest.raises(train_config.ConfigError, match="epsilon"):
        train_config.validate_config(cfg)


@pytest.mark.skipif(keras.backend.backend() != "tensorflow", reason="TensorFlow's TF32 switch")
def test_certification_runs_with_tf32_off_and_restores_the_setting():
    import tensorflow as tf

    tf.config.experimental.enable_tensor_float_32_execution(True)
    try:
        with full_precision_kernels():
            assert not tf.config.experimental.tensor_float_32_execution_enabled()
        assert tf.config.experimental.tensor_float_32_execution_enabled()
    finally:
        tf.config.experimental.enable_tensor_float_32_execution(True)


@pytest.mark.skipif(keras.backend.backend() != "tensorflow", reason="TensorFlow's process-wide TF32 switch")
def test_tf32_stays_off_until_the_last_of_overlapping_blocks_exits():
    # Two threads' inference calls overlap: the first to finish must not turn TF32 back on
    # under the other (on a GPU its kernels would then round like TF32).
    import threading

    import tensorflow as tf

    tf.config.experimental.enable_tensor_float_32_execution(True)
    a_inside, b_inside, a_done, seen = threading.Event(), threading.Event(), threading.Event(), []

    def a():
        with full_precision_kernels():
            a_inside.set()
            b_inside.wait(30)
        a_done.set()

    def b():
        a_inside.wait(30)
        with full_precision_kernels():
            b_inside.set()
            a_done.wait(30)
            seen.append(tf.config.experimental.tensor_float_32_execution_enabled())

    threads = [threading.Thread(target=f) for f in (a, b)]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert seen == [False]  # still off inside b after a exited
        assert tf.config.experimental.tensor_float_32_execution_enabled()  # restored by the last
    finally:
        tf.config.experimental.enable_tensor_float_32_execution(True)


def test_onednn_reduced_precision_modes_are_refused_before_certifying(monkeypatch):
    # TF_SET_ONEDNN_FPMATH_MODE=BF16 makes oneDNN run float32 convolutions in bfloat16 on CPUs
    # with AMX/AVX512-BF16 (measured relative error 2.3e-3 instead of 7.6e-7): the rounding
    # analysis assumes float32, so no certificate may be given in such a process.
    from gloro_keras.ops.precision import ReducedPrecisionError, check_float32_math

    for env in ({}, {"TF_SET_ONEDNN_FPMATH_MODE": "STRICT"}, {"ONEDNN_DEFAULT_FPMATH_MODE": "strict"},
                {"DNNL_ACL_ENABLE_FAST_MATH": "0"}):
        check_float32_math(env)
    for env in ({"TF_SET_ONEDNN_FPMATH_MODE": "BF16"}, {"ONEDNN_DEFAULT_FPMATH_MODE": "any"},
                {"DNNL_DEFAULT_FPMATH_MODE": "tf32"}, {"DNNL_ACL_ENABLE_FAST_MATH": "1"}):
        with pytest.raises(ReducedPrecisionError, match=next(iter(env))):
            check_float32_math(env)
    model = gk.GloroLiResNet(L=1, W=4, num_classes=3, input_shape=(8, 8, 1), epsilon=0.1, dense_width=8)
    model.compile(optimizer="sgd", loss="emma", metrics=["vra"])
    x, y = np.random.rand(16, 8, 8, 1).astype("float32"), np.arange(16) % 3
    model.certify(x, bound="power")
    monkeypatch.setenv("TF_SET_ONEDNN_FPMATH_MODE", "BF16")
    before = [w.copy() for w in model.get_weights()]
    for call in (lambda: model.certify(x, bound="power"), lambda: model.certified_radius(x, bound="power"),
                 lambda: model.predict(x, verbose=0), lambda: model.evaluate(x, y, verbose=0),
                 lambda: model.fit(x, y, validation_data=(x, y), epochs=1, verbose=0)):
        with pytest.raises(ReducedPrecisionError, match="TF_SET_ONEDNN_FPMATH_MODE=BF16"):
            call()
    assert all(np.array_equal(a, b) for a, b in zip(before, model.get_weights()))  # refused before training
    model.fit(x, y, epochs=1, verbose=0)  # training alone certifies nothing: allowed


def test_unsupported_layers_refuse_float32_certification_with_the_layer_name():
    x = keras.Input((4,))
    z = keras.layers.Activation("tanh", name="squash")(LipschitzDense(4)(x))
    model = gk.GloroModel(keras.Model(x, LipschitzDense(2)(z)), epsilon=0.1)
    with pytest.raises(ValueError, match="squash"):
        model.certify(np.zeros((1, 4), "float32"))
    assert model.certify(np.zeros((1, 4), "float32"), arithmetic="exact").shape == (1,)


def test_float64_twin_certificates_hold_for_the_float64_network():
    from gloro_keras.ops.precision import float64_available, full_precision_kernels

    if not float64_available():
        pytest.skip("float64 is not enabled on this backend")
    keras.utils.set_random_seed(5)
    model = gk.GloroLiResNet(L=2, W=8, num_classes=5, input_shape=(12, 12, 3), epsilon=0.02, dense_width=16)
    x = np.random.default_rng(0).uniform(0, 1, (64, 12, 12, 3)).astype("float32")
    c32 = model.margin_certificate(x)
    c64 = model.margin_certificate(x, arithmetic="float64")
    r32, r64 = c32.radius(), c64.radius()
    assert np.all(r64 >= r32 * (1 - 1e-6))  # float64 loses (almost) nothing to rounding
    twin = model.float64_network()
    y64 = np.asarray(twin.predict(x.astype(np.float64), verbose=0))
    np.testing.assert_array_equal(np.argmax(y64, 1), c64.predicted)
    # the twin follows the weights
    layer = model.bounded_layers[0]
    layer.kernel.assign(layer.kernel * 1.5)
    assert model.float64_network() is not twin
    with pytest.raises(ValueError, match="sound"):
        model.certify(x, arithmetic="float64", bound="power")


@pytest.mark.parametrize("strides,pads", [((1, 1), ((1, 1), (1, 1))), ((2, 2), ((2, 2), (2, 2))), ((4, 4), ((0, 0), (0, 0)))])
def test_schur_bounds_dominate_the_exact_norm_of_the_absolute_operator(strides, pads):
    from gloro_keras.bounds import conv2d_operator_matrix
    from gloro_keras.models.rounding import schur_bound_conv, schur_bound_dense

    rng = np.random.default_rng(0)
    k = np.abs(rng.standard_normal((4, 4, 3, 5)) if strides == (4, 4) else rng.standard_normal((3, 3, 3, 5)))
    a = conv2d_operator_matrix(k, (8, 8), strides=strides, padding=pads)
    exact = np.linalg.svd(a, compute_uv=False)[0]
    assert exact <= schur_bound_conv(k, strides) <= 1.5 * exact
    w = np.abs(rng.standard_normal((12, 7)))
    assert np.linalg.svd(w, compute_uv=False)[0] <= schur_bound_dense(w)
