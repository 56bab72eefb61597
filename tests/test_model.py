"""GloroModel: ⊥ logit, whole-model bounds vs gradients, API forms, errors, save/load."""

import keras
import numpy as np
import pytest
from keras import ops

import gloro_keras as gk
from conftest import REPO, PrecisionSpy, explicit_matrix, input_gradient, spectral_norm
from gloro_keras.layers import LLNDense, MinMax


def tiny_liresnet(block="liresnet", classes=4, eps=0.1):
    return gk.GloroLiResNet(L=2, W=4, num_classes=classes, input_shape=(8, 8, 1), epsilon=eps,
                            dense_width=8, block=block)


def test_output_is_logits_plus_bottom_logit_by_definition():
    model = tiny_liresnet(eps=0.7)
    x = np.random.rand(16, 8, 8, 1).astype("float32")
    out = ops.convert_to_numpy(model(x))
    logits = model.predict_logits(x)
    kmat = model.margin_bound_matrix("current")
    np.testing.assert_allclose(out[:, :4], logits, rtol=1e-5, atol=1e-6)
    j = logits.argmax(-1)
    expected = np.array([max(logits[b, i] + 0.7 * kmat[j[b], i] for i in range(4) if i != j[b]) for b in range(16)])
    np.testing.assert_allclose(out[:, 4], expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("block", ["liresnet", "convnet", "resnet"])
def test_model_bound_dominates_margin_gradients(block):
    model = tiny_liresnet(block)
    for layer in model.network.layers:  # make the weights less benign than the init
        for v in layer.trainable_weights:
            v.assign(v + 0.3 * np.random.randn(*v.shape).astype("float32"))
    model.converge_bounds(max_iterations=3000, tolerance=1e-9)
    kmat = model.margin_bound_matrix("current")
    x = np.random.rand(64, 8, 8, 1).astype("float32")
    worst = 0.0
    for i in range(4):
        for j in range(4):
            if i != j:
                g = input_gradient(lambda z: model.network(z)[:, i] - model.network(z)[:, j], x)
                ratio = np.linalg.norm(g.reshape(64, -1), axis=1).max() / kmat[i, j]
                worst = max(worst, ratio)
    assert worst <= 1 + 1e-4, worst
    # not vacuous; the conventional block's 1 + |β|K₂K₁ bound is loose by design (paper §3)
    assert worst > (1e-3 if block == "resnet" else 0.05)


def test_product_bound_equals_product_of_exact_layer_norms():
    model = tiny_liresnet()
    model.converge_bounds(max_iterations=5000, tolerance=1e-10)
    exact = 1.0
    for layer in model.bounded_layers:
        shape = tuple(layer.iterate.shape[1:])
        fn = lambda z, l=layer: l.apply_linear(z, l.linear_kernel())
        exact *= spectral_norm(explicit_matrix(fn, shape))
    k = model.lipschitz_bound("current")
    assert abs(k - exact) <= 1e-3 * exact and k <= exact * (1 + 1e-5), (k, exact)


def test_constructor_forms():
    x = keras.Input((6,))
    z = gk.layers.LipschitzDense(8)(x)
    z = MinMax()(z)
    y = gk.layers.LipschitzDense(3)(z)
    for model in (gk.GloroModel(inputs=x, outputs=y, epsilon=0.5), gk.GloroModel(x, y, epsilon=0.5),
                  gk.GloroModel(keras.Model(x, y), epsilon=0.5), gk.GloroModel(keras.Model(x, y), 0.5)):
        assert model.num_classes == 3 and model.epsilon == 0.5
        assert model(np.zeros((2, 6), "float32")).shape == (2, 4)
    seq = keras.Sequential([keras.Input((6,)), gk.layers.LipschitzDense(8), MinMax(), LLNDense(3)])
    assert gk.GloroModel(seq, epsilon=0.1).num_classes == 3


def test_unsupported_layers_are_errors_naming_the_layer():
    x = keras.Input((6,))
    z = keras.layers.Reshape((6, 1))(x)
    z = keras.layers.Conv1D(4, 3, name="plain_conv1d")(z)
    y = LLNDense(3)(keras.layers.Flatten()(z))
    with pytest.raises(ValueError, match="plain_conv1d"):
        gk.GloroModel(x, y, epsilon=0.1)
    z = keras.layers.Conv2D(4, 3, dilation_rate=2, padding="same", name="dilated")(keras.layers.Reshape((3, 2, 1))(x))
    with pytest.raises(ValueError, match="'dilated'.*undilated"):
        gk.GloroModel(x, LLNDense(3)(keras.layers.Flatten()(z)), epsilon=0.1)
    z = keras.layers.BatchNormalization(name="bn")(gk.layers.LipschitzDense(8)(x))
    with pytest.raises(ValueError, match="'bn'"):
        gk.GloroModel(x, LLNDense(3)(z), epsilon=0.1)
    a = gk.layers.LipschitzDense(8)(x)
    z = keras.layers.Add(name="skip")([a, gk.layers.LipschitzDense(8)(x)])
    with pytest.raises(ValueError, match="skip"):
        gk.GloroModel(x, LLNDense(3)(z), epsilon=0.1)
    with pytest.raises(ValueError, match="linear classification head"):
        gk.GloroModel(x, MinMax(name="last")(gk.layers.LipschitzDense(4)(x)), epsilon=0.1)


def _network_dtypes(model):
    return {layer.dtype_policy.name for layer in [model.network, *model.network.layers]}


def _bf16_twins():
    """The same tiny LiResNet (same weights and iterates) with train_dtype bfloat16 and float32."""
    mixed = gk.GloroLiResNet(L=2, W=8, num_classes=4, input_shape=(8, 8, 3), epsilon=0.1,
                             dense_width=16, train_dtype="bfloat16")
    full = gk.GloroLiResNet(L=2, W=8, num_classes=4, input_shape=(8, 8, 3), epsilon=0.1, dense_width=16)
    full.set_weights(mixed.get_weights())
    return mixed, full


def test_bfloat16_training_calls_float32_everything_else():
    """train_dtype='bfloat16': only training calls of the network run in bfloat16; the bound, ⊥
    and every inference path are the float32 network's, so certificates are about it."""
    mixed, full = _bf16_twins()
    assert mixed.train_dtype == "bfloat16" and full.train_dtype == "float32"
    assert _network_dtypes(mixed) == {"float32"} and mixed.compute_dtype == "float32"
    x = np.random.default_rng(0).random((32, 8, 8, 3)).astype("float32")
    out_m = ops.convert_to_numpy(mixed(x, training=True)["outputs"])
    out_f = ops.convert_to_numpy(full(x, training=True)["outputs"])
    assert out_m.dtype == np.float32
    diff = np.abs(out_m[:, :4] - out_f[:, :4]).max()
    assert 1e-5 < diff < 0.05 * np.abs(out_f[:, :4]).max()  # really bfloat16, and close
    # The bound of the training call is float32 math on float32 weights: identical.
    np.testing.assert_array_equal(ops.convert_to_numpy(mixed.body_bound()), ops.convert_to_numpy(full.body_bound()))
    # Back at rest in float32: inference equals the float32 twin.
    assert _network_dtypes(mixed) == {"float32"}
    np.testing.assert_allclose(mixed.predict(x, verbose=0), full.predict(x, verbose=0), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(mixed.predict_logits(x), full.predict_logits(x), rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(mixed.certify(x), full.certify(x))
    np.testing.assert_allclose(mixed.certified_radius(x), full.certified_radius(x), rtol=1e-6)


def test_bfloat16_fit_traces_training_in_bfloat16_and_round_trips(tmp_path):
    mixed, _ = _bf16_twins()
    seen = []
    orig = MinMax.call

    def spy(self, z):
        seen.append(keras.backend.standardize_dtype(z.dtype))
        return orig(self, z)

    x = np.random.default_rng(1).random((64, 8, 8, 3)).astype("float32")
    y = np.random.default_rng(2).integers(0, 4, 64)
    mixed.compile(optimizer=keras.optimizers.Adam(1e-2), loss="emma", metrics=["vra"])
    MinMax.call = spy
    try:
        hist = mixed.fit(x, y, epochs=3, batch_size=16, verbose=0)
        traced_fit = set(seen)
        seen.clear()
        mixed.evaluate(x, y, verbose=0)
        traced_eval = set(seen)
    finally:
        MinMax.call = orig
    assert "bfloat16" in traced_fit and traced_eval == {"float32"}
    assert np.isfinite(hist.history["loss"]).all() and hist.history["loss"][-1] < hist.history["loss"][0]
    assert all(v.dtype == "float32" for v in mixed.weights)
    assert _network_dtypes(mixed) == {"float32"}
    path = str(tmp_path / "bf16.keras")
    mixed.save(path)
    loaded = keras.models.load_model(path)
    assert loaded.train_dtype == "bfloat16" and _network_dtypes(loaded) == {"float32"}
    np.testing.assert_allclose(loaded.predict(x, verbose=0), mixed.predict(x, verbose=0), rtol=1e-6, atol=1e-6)


def test_mixed_bfloat16_global_policy_means_bfloat16_training():
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    try:
        model = tiny_liresnet()
    finally:
        keras.mixed_precision.set_global_policy("float32")
    assert model.train_dtype == "bfloat16" and model.compute_dtype == "float32"
    assert _network_dtypes(model) == {"float32"}
    assert tiny_liresnet().train_dtype == "float32"


@pytest.mark.parametrize("policy", ["bfloat16", "float16", "mixed_float16"])
def test_16bit_variables_or_float16_training_are_clear_errors(policy):
    """16-bit weights or iterates would make certificates unsound; float16 needs loss scaling."""
    from gloro_keras.models.liresnet import liresnet_network

    network = liresnet_network(L=1, W=4, num_classes=3, input_shape=(8, 8, 1), dense_width=8)
    network.get_layer("head").dtype_policy = policy
    with pytest.raises(ValueError, match=f"float32 networks, or mixed_bfloat16.*{policy}"):
        gk.GloroModel(network, epsilon=0.1)
    with pytest.raises(ValueError, match="train_dtype must be one of"):
        gk.GloroLiResNet(L=1, W=4, num_classes=3, input_shape=(8, 8, 1), dense_width=8, train_dtype="float16")


def test_mixed_float16_global_policy_is_a_clear_error():
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        with pytest.raises(ValueError, match="float32 networks, or mixed_bfloat16.*mixed_float16"):
            tiny_liresnet()
    finally:
        keras.mixed_precision.set_global_policy("float32")
    assert tiny_liresnet().compute_dtype == "float32"


@pytest.mark.parametrize("bad", [-0.1, float("nan"), float("inf"), "abc"])
def test_bad_epsilon_is_a_value_error(bad):
    with pytest.raises(ValueError, match="epsilon"):
        tiny_liresnet(eps=bad)
    model = tiny_liresnet()
    with pytest.raises(ValueError, match="epsilon"):
        model.epsilon = bad
    with pytest.raises(ValueError, match="epsilon"):
        model.certify(np.zeros((1, 8, 8, 1), "float32"), epsilon=bad, bound="current")


def test_epsilon_is_a_variable_read_at_run_time():
    model = tiny_liresnet(eps=0.0)
    model.compile(loss="emma")
    x = np.random.rand(8, 8, 8, 1).astype("float32")
    p0 = model.predict(x, verbose=0)
    fn = model.predict_function
    model.epsilon = 5.0
    p1 = model.predict(x, verbose=0)
    assert model.predict_function is fn  # no new function, no retrace
    assert np.all(p1[:, -1] > p0[:, -1])


def test_certify_matches_the_gloro_output_and_rejects_non_finite_inputs():
    model = tiny_liresnet(eps=0.01)
    x = np.random.rand(32, 8, 8, 1).astype("float32")
    x[3, 0, 0, 0] = np.nan
    x[5, 2, 2, 0] = np.inf
    model.update_bound_cache("power")
    certified = model.certify(x, bound="power")
    pred = model.predict(x, verbose=0).argmax(-1)
    assert certified[3] == 4 and certified[5] == 4 and pred[3] == 4 and pred[5] == 4
    agree = np.mean(certified == pred)
    assert agree == 1.0, (certified, pred)
    radius = model.certified_radius(x, bound="power")
    assert radius[3] == 0 and radius[5] == 0
    # certified at ε exactly where the radius exceeds ε
    np.testing.assert_array_equal(certified != 4, radius > 0.01)


def test_sound_bound_is_at_least_the_converged_power_bound():
    pytest.importorskip("gloro_keras.bounds")
    model = tiny_liresnet()
    power = model.lipschitz_bound("power")
    sound = model.lipschitz_bound("sound")
    assert sound >= power * (1 - 1e-7)
    assert sound <= power * 1.5


def test_each_layers_sound_bound_is_computed_once_per_weights():
    # the bound K and the rounding terms share the per-layer sound bounds (they were computed twice)
    from gloro_keras.train import ConvergeBounds

    model = tiny_liresnet()
    calls = []
    for layer in model._plan.bounded:
        original = layer.sound_bound
        object.__setattr__(layer, "sound_bound", lambda original=original, name=layer.name: calls.append(name) or original())
    x = np.random.rand(8, 8, 8, 1).astype("float32")
    model.update_bound_cache("sound")
    model.certify(x)
    assert sorted(calls) == sorted(layer.name for layer in model._plan.bounded)
    # ConvergeBounds before a validation: the sound bound only, no power iteration
    cb = ConvergeBounds()
    cb.set_model(model)
    model.compile(optimizer="sgd", loss="emma")
    model.fit(x, np.arange(8) % 4, epochs=1, verbose=0, converge_bounds=False)
    iterates = [keras.ops.convert_to_numpy(v).copy() for v in model.non_trainable_weights if "iterate" in v.path]
    calls.clear()
    cb.converge()
    assert len(calls) == len(model._plan.bounded)
    after = [keras.ops.convert_to_numpy(v) for v in model.non_trainable_weights if "iterate" in v.path]
    assert all(np.array_equal(a, b) for a, b in zip(iterates, after))
    cb.on_train_end()  # the end of training converges the iterates
    after = [keras.ops.convert_to_numpy(v) for v in model.non_trainable_weights if "iterate" in v.path]
    assert not all(np.array_equal(a, b) for a, b in zip(iterates, after))


def test_bad_inputs_give_clear_errors():
    model = tiny_liresnet()
    model.compile(optimizer="adam", loss="emma")
    with pytest.raises(ValueError, match="(?i)shape|incompatible"):
        model.predict(np.zeros((2, 9, 9, 1), "float32"), verbose=0)
    with pytest.raises(ValueError, match=r"Labels must be integers in \[0, 4\)"):
        model.fit(np.zeros((4, 8, 8, 1), "float32"), np.array([0, 1, 2, 7]), verbose=0)
    with pytest.raises(ValueError, match="even"):
        gk.GloroLiResNet(L=1, W=5, num_classes=3, input_shape=(8, 8, 1))


def test_training_updates_iterates_and_invalidates_the_cache():
    model = tiny_liresnet()
    model.compile(optimizer="adam", loss="emma", metrics=["clean_acc", "vra", "rejection_rate"])
    model.update_bound_cache("power")
    stem = model.network.get_layer("stem")
    before = ops.convert_to_numpy(stem.iterate).copy()
    x = np.random.rand(16, 8, 8, 1).astype("float32")
    y = np.random.randint(0, 4, 16)
    hist = model.fit(x, y, epochs=1, batch_size=8, verbose=0, converge_bounds=False)
    assert set(hist.history) >= {"loss", "clean_acc", "vra", "rejection_rate"}
    assert not np.allclose(ops.convert_to_numpy(stem.iterate), before)
    assert not model.bound_cache_valid
    # by default fit ends by caching the sound bound (rounded up to float32) for inference
    model.fit(x, y, epochs=1, batch_size=8, verbose=0)
    assert model.bound_cache_valid
    cached = model.cached_bound
    assert model.lipschitz_bound("sound") <= cached <= model.lipschitz_bound("sound") * (1 + 1e-6)


def test_bound_and_certificate_hash_the_weights_once_per_call(monkeypatch):
    """`update_bound_cache` and `certify` need K and the layers' bounds of the same weights: one
    fingerprint (a hash of every bounded layer's weights, 40 MB at L18W256) serves both; and a
    changed weight still misses the cache."""
    model = tiny_liresnet()
    calls = []
    real = type(model)._fingerprint
    monkeypatch.setattr(type(model), "_fingerprint", lambda self: calls.append(1) or real(self))
    k = model.update_bound_cache("sound")
    assert len(calls) == 1
    x = np.random.default_rng(0).random((4, 8, 8, 1)).astype("float32")
    model.certify(x)
    assert len(calls) == 2 and model.lipschitz_bound("sound") == k
    stem = model.network.get_layer("stem")
    stem.kernel.assign(2 * ops.convert_to_numpy(stem.kernel))
    assert model.update_bound_cache("sound") > 1.5 * k  # new weights, new bound


@pytest.mark.parametrize("how", ["fit", "train_on_batch"])
def test_training_step_is_traced_once(monkeypatch, how):
    """The optimizer's variables exist before the step is traced, so `fit` and `train_on_batch`
    trace the GloRo step once: one training `power_estimate` per bounded layer, not two (on
    TensorFlow, Keras would create them inside the first trace and `tf.function` would trace again)."""
    from gloro_keras.layers import LipschitzLayer

    traced, original = [], LipschitzLayer.power_estimate

    def spy(self, *args, **kwargs):
        if kwargs.get("training", args[0] if args else False):
            traced.append(self.name)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(LipschitzLayer, "power_estimate", spy)
    model = tiny_liresnet()
    model.compile(optimizer="adam", loss="emma", metrics=["clean_acc", "vra"])
    x, y = np.random.rand(16, 8, 8, 1).astype("float32"), np.arange(16) % 4
    if how == "fit":
        model.fit(x, y, epochs=1, batch_size=8, verbose=0, converge_bounds=False)
    else:
        model.train_on_batch(x[:8], y[:8])
        model.train_on_batch(x[8:], y[8:])
    assert model.optimizer.built and model.optimizer.iterations.numpy() == 2
    assert sorted(traced) == sorted(layer.name for layer in model.bounded_layers)


def test_paper_scale_model_builds():
    model = gk.GloroLiResNet(L=18, W=256, num_classes=10, input_shape=(32, 32, 3))
    assert model.compute_output_shape((None, 32, 32, 3)) == (None, 11)
    assert model.network.output.shape[1:] == (10,)
    assert len(model.bounded_layers) == 18 + 3
    assert model.network.get_layer("stem").output.shape[1:] == (16, 16, 256)
    assert model.network.get_layer("neck_conv").output.shape[1:] == (4, 4, 512)
    tiny = gk.GloroLiResNet(L=1, W=6, num_classes=5, input_shape=(64, 64, 3))
    assert tiny.network.get_layer("stem").output.shape[1:3] == (16, 16)
    big = gk.GloroLiResNet(L=1, W=588, num_classes=5, input_shape=(224, 224, 3), dense_width=16)
    assert big.network.get_layer("stem").kernel_size == (14, 14)
    assert big.network.get_layer("stem").output.shape[1:3] == (16, 16)


def test_save_load_round_trip_and_continue_training(tmp_path):
    model = tiny_liresnet(eps=0.05)
    model.compile(optimizer=keras.optimizers.AdamW(1e-3, weight_decay=1e-4, global_clipnorm=3.0),
                  loss="trades.2", metrics=["clean_acc", "vra"])
    x = np.random.rand(32, 8, 8, 1).astype("float32")
    y = np.random.randint(0, 4, 32)
    model.fit(x, y, epochs=1, batch_size=16, verbose=0)
    model.epsilon_train = 0.03
    path = tmp_path / "m.keras"
    model.save(path)
    loaded = keras.models.load_model(path)
    assert isinstance(loaded, gk.GloroModel)
    assert loaded.epsilon == pytest.approx(0.05) and loaded.epsilon_train == pytest.approx(0.03)
    assert loaded.loss.lam == 2.0
    np.testing.assert_allclose(loaded.predict(x, verbose=0), model.predict(x, verbose=0), rtol=1e-6, atol=1e-6)
    assert loaded.lipschitz_bound("current") == pytest.approx(model.lipschitz_bound("current"), rel=1e-6)
    np.testing.assert_array_equal(loaded.certify(x, bound="current"), model.certify(x, bound="current"))
    loaded.fit(x, y, epochs=1, batch_size=16, verbose=0)  # optimizer state and loss restored
    assert int(ops.convert_to_numpy(loaded.optimizer.iterations)) == 4


def test_inference_on_a_wrong_shape_or_no_inputs_is_clear():
    model = gk.GloroLiResNet(L=1, W=4, num_classes=3, input_shape=(8, 8, 1), epsilon=0.3, dense_width=8)
    for shape in [(2, 8, 8, 3), (8, 8, 1), (2, 9, 9, 1)]:
        x = np.zeros(shape, "float32")
        for method in (model.certify, model.certified_radius, model.predict, model.predict_logits):
            with pytest.raises(ValueError, match=r"expects inputs of shape \(batch, 8, 8, 1\); "
                                                 rf"received shape \({', '.join(map(str, shape))}\)"):
                method(x)
    empty = np.zeros((0, 8, 8, 1), "float32")
    assert model.certify(empty).shape == (0,) and model.certified_radius(empty).shape == (0,)
    assert model.predict(empty).shape == (0, 4) and model.predict_logits(empty).shape == (0, 3)


def test_files_saved_by_gloro_keras_0_1_still_load():
    # saved by the code of commit 4b50d2e (before the gloro names moved to gloro_keras.compat)
    data = REPO / "tests" / "data"
    model = keras.saving.load_model(data / "gloro_keras_0_1_liresnet.keras")
    expected = np.load(data / "gloro_keras_0_1_liresnet_expected.npz")  # computed on TensorFlow
    # the same weights: bit for bit with the kernels that computed them (TensorFlow's own, oneDNN
    # off), within float32 rounding with others (oneDNN, or another backend: other summation orders)
    from gloro_keras._compat import onednn_enabled

    tol = 0 if onednn_enabled() is False else 1e-6
    np.testing.assert_allclose(model.predict_logits(expected["x"]), expected["logits"], rtol=0, atol=tol)
    np.testing.assert_array_equal(model.certify(expected["x"]), expected["certify"])
    assert model.lipschitz_bound("sound") == pytest.approx(float(expected["k"]), rel=1e-12)


def test_inference_runs_with_full_precision_kernels_and_training_as_configured():
    # On GPUs float32 convolutions and matmuls default to TF32 (TensorFlow; JAX's default
    # precision), whose rounding the certificates do not cover: every inference path must
    # compute the float32 network (seen broken on an H200 at JAX's default precision).
    spy = PrecisionSpy()
    inp = keras.Input((6,))
    z = MinMax()(spy(gk.layers.LipschitzDense(8)(inp)))
    model = gk.GloroModel(keras.Model(inp, LLNDense(3)(z)), epsilon=0.1)
    x = np.random.default_rng(0).uniform(size=(32, 6)).astype("float32")
    y = np.arange(32) % 3
    assert not gk.ops.full_precision_active()  # the process default, restored after each call
    spy.seen.clear()
    model(x)
    model(x, training=False)
    model.compile(optimizer="adam", loss="emma")
    # the *_on_batch forms first: they trace the predict / test functions that predict / evaluate
    # reuse, and TensorFlow reads TF32 when those run, not when they are traced
    model.predict_on_batch(x)
    model.test_on_batch(x, y)
    model.predict(x, verbose=0)
    model.evaluate(x, y, verbose=0)
    model.certify(x)
    model.certified_radius(x)
    assert spy.seen and all(spy.seen), spy.seen
    assert not gk.ops.full_precision_active()
    spy.seen.clear()
    model.fit(x, y, epochs=1, batch_size=16, verbose=0, converge_bounds=False)
    model(x, training=True)
    assert spy.seen and not any(spy.seen), spy.seen  # training: as the user configured it


@pytest.mark.skipif(keras.backend.backend() != "jax", reason="JAX's trace-time matmul precision")
def test_jax_inference_traces_every_conv_and_matmul_at_highest_precision():
    import jax
    import jax.extend.core as jax_core
    from jax import lax

    model = tiny_liresnet()
    x = np.zeros((2, 8, 8, 1), "float32")

    def precisions(jaxpr):
        for eqn in jaxpr.eqns:
            if eqn.primitive.name in ("conv_general_dilated", "dot_general"):
                yield eqn.primitive.name, eqn.params.get("precision")
            for sub in jax_core.jaxprs_in_params(eqn.params):
                yield from precisions(sub)

    highest = (lax.Precision.HIGHEST, lax.Precision.HIGHEST)
    tv = [v.value for v in model.trainable_variables]
    ntv = [v.value for v in model.non_trainable_variables]
    for traced in (jax.make_jaxpr(lambda z: model(z))(x),  # as jax.jit(model) traces it
                   jax.make_jaxpr(lambda a, b, z: model.stateless_call(a, b, z)[0])(tv, ntv, x)):  # Keras's predict_step
        found = list(precisions(traced.jaxpr))
        assert {name for name, _ in found} == {"conv_general_dilated", "dot_general"}
        assert all(p == highest for _, p in found), found


def test_grouped_power_iterations_train_the_same_model_and_round_trip(tmp_path):
    """`group_power_iterations=True` (JAX) runs the blocks' power iterations as one vectorized
    computation inside the compiled train step: same weights after `fit` as each block alone.
    The setting is saved; a file saved with True loads on TensorFlow with 'auto'."""
    x = np.random.default_rng(0).random((32, 8, 8, 1)).astype("float32")
    y = np.arange(32) % 4
    grouping = [False, True] if keras.backend.backend() == "jax" else [False, "auto"]
    models = []
    for group in grouping:
        keras.utils.set_random_seed(1)
        model = gk.GloroLiResNet(L=3, W=4, num_classes=4, input_shape=(8, 8, 1), epsilon=0.1, dense_width=8,
                                 power_iterations=3, group_power_iterations=group)
        model.compile(optimizer=keras.optimizers.SGD(0.05), loss="emma")
        model.fit(x, y, epochs=2, batch_size=16, verbose=0, shuffle=False)
        models.append(model)
    for a, b in zip(models[0].weights, models[1].weights):
        if not a.path.endswith("power_iterate"):
            np.testing.assert_allclose(ops.convert_to_numpy(b), ops.convert_to_numpy(a), rtol=1e-4, atol=1e-6,
                                       err_msg=a.path)
    # the near-identity blocks' top singular values nearly coincide, so the iterates' direction
    # amplifies summation-order rounding (measured: 1e-3 in one block, weights within 6e-8);
    # what the iterates are for, the estimate ‖A u‖, agrees
    for a, b in zip(models[0].bounded_layers, models[1].bounded_layers):
        assert float(b.power_estimate()) == pytest.approx(float(a.power_estimate()), rel=1e-5), a.name
    path = tmp_path / "grouped.keras"
    models[1].save(path)
    assert keras.models.load_model(path).group_power_iterations == grouping[1]
    config = models[1].get_config() | {"group_power_iterations": True}
    if keras.backend.backend() == "jax":
        assert gk.GloroModel.from_config(config).group_power_iterations is True
    else:
        with pytest.warns(UserWarning, match="needs the JAX backend"):
            assert gk.GloroModel.from_config(config).group_power_iterations == "auto"
    with pytest.raises(ValueError, match="group_power_iterations must be 'auto', True or False. Received: 'on'"):
        tiny_liresnet().__class__(models[0].network, epsilon=0.1, group_power_iterations="on")
