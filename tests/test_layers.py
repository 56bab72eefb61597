"""Layer math: MinMax, the merged LiResNet conv, exact adjoints, and bounds vs exact norms."""
import math

import keras
import numpy as np
import pytest
from keras import ops

import gloro_keras as gk
from conftest import explicit_matrix, input_gradient, spectral_norm
from gloro_keras.bounds import conv2d_operator_matrix
from gloro_keras.layers import (
    LiResNetBlock,
    LipschitzConv2D,
    LipschitzDense,
    LLNDense,
    MinMax,
    ResNetBlock,
)

# (input H×W×C, filters, kernel, stride, padding): every conv shape the builders use, small.
CONV_CASES = {
    "same3x3": ((6, 6, 3), 4, 3, 1, "same"),
    "stem32_k5s2p2": ((8, 8, 3), 4, 5, 2, 2),
    "stem64_k7s4p3": ((12, 12, 2), 4, 7, 4, 3),
    "patchify_k4s4": ((8, 8, 3), 6, 4, 4, 0),
    "neck_k4s4_padded": ((6, 6, 4), 4, 4, 4, ((1, 1), (1, 1))),
    "same_stride2_odd": ((7, 7, 2), 3, 3, 2, "same"),
    "valid_k3s2": ((9, 8, 2), 3, 3, 2, "valid"),
    "same3x3_wide": ((5, 5, 20), 6, 3, 1, "same"),  # Cin ≥ PATCH_CHANNELS: a matmul per tap
    "neck_k4s4_wide_rows_unused": ((9, 10, 18), 5, 4, 4, 0),
}


def build(layer, shape):
    x = keras.Input(shape)
    layer(x)
    return layer


def linear_part(layer):
    """The layer's forward map minus its bias (a linear map), through `layer(x)`."""
    def fn(x):
        y = layer(x)
        return y - layer.bias if getattr(layer, "bias", None) is not None else y
    return fn


def test_minmax_pairs_halves_and_rejects_odd_width():
    x = np.array([[1.0, -2.0, 3.0, 0.0]], dtype="float32")
    np.testing.assert_allclose(ops.convert_to_numpy(MinMax()(x)), [[3.0, 0.0, 1.0, -2.0]])
    x4 = np.random.randn(2, 3, 3, 6).astype("float32")
    y4 = ops.convert_to_numpy(MinMax()(x4))
    np.testing.assert_allclose(np.sort(y4, axis=-1), np.sort(x4, axis=-1), rtol=0, atol=0)
    with pytest.raises(ValueError, match="even number of channels"):
        MinMax()(np.zeros((1, 5), dtype="float32"))


def test_minmax_is_norm_preserving_permutation():
    x, z = np.random.randn(2, 16, 10).astype("float32")
    d_in = np.linalg.norm(x - z, axis=-1)
    d_out = np.linalg.norm(ops.convert_to_numpy(MinMax()(x) - MinMax()(z)), axis=-1)
    assert np.all(d_out <= d_in + 1e-5)


def test_minmax_gradient_is_the_permutation_it_applies():
    """∂ of [a, b] → [max, min] w.r.t. x for upstream g: the same swap of g's halves, from one
    mask; equal to autodiff of maximum/minimum off ties, and a permutation (norm-preserving)
    at ties too, where autodiff of maximum/minimum would hand a both halves of g."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((3, 4, 4, 8)).astype("float32")
    x[0, :, :, 4:] = x[0, :, :, :4]  # example 0: every pair tied
    g = rng.standard_normal(x.shape).astype("float32")
    dx = input_gradient(lambda z: MinMax()(z) * g, x)
    a, b, ga, gb = x[..., :4], x[..., 4:], g[..., :4], g[..., 4:]
    keep = a >= b
    expected = np.concatenate([np.where(keep, ga, gb), np.where(keep, gb, ga)], axis=-1)
    np.testing.assert_array_equal(dx, expected)
    np.testing.assert_allclose(np.linalg.norm(dx.reshape(3, -1), axis=1), np.linalg.norm(g.reshape(3, -1), axis=1),
                               rtol=1e-6)

    def autodiff(z):
        p, q = ops.split(z, 2, axis=-1)
        return ops.concatenate([ops.maximum(p, q), ops.minimum(p, q)], axis=-1) * g

    np.testing.assert_array_equal(dx[1:], input_gradient(autodiff, x)[1:])


@pytest.mark.skipif(keras.backend.backend() != "tensorflow", reason="TensorFlow graphs only")
def test_minmax_in_a_tensorflow_graph_equals_eager():
    """In a tf.function (as in fit) MinMax runs XLA-fused kernels; values and gradients are
    bit-identical to the eager keras.ops path (no arithmetic, only comparisons and copies)."""
    import tensorflow as tf

    rng = np.random.default_rng(1)
    x = rng.standard_normal((4, 5, 5, 16)).astype("float32")
    x[0, ..., 8:] = x[0, ..., :8]
    g = tf.constant(rng.standard_normal(x.shape).astype("float32"))
    layer = MinMax()

    def run(z):
        z = tf.convert_to_tensor(z)
        with tf.GradientTape() as tape:
            tape.watch(z)
            y = layer(z)
        return y, tape.gradient(y, z, output_gradients=g)

    graph = tf.function(run)
    ops_ = graph.get_concrete_function(x).graph.get_operations()
    compiled = [op for op in ops_ if "_XlaMustCompile" in op.node_def.attr and op.get_attr("_XlaMustCompile")]
    assert len(compiled) == 2, [op.type for op in ops_]  # the forward and the gradient
    for eager, fused in zip(run(x), graph(x)):
        np.testing.assert_array_equal(eager.numpy(), fused.numpy())


@pytest.mark.parametrize("L", [1, 6, 18])
def test_liresnet_block_is_one_conv_equal_to_residual_form(L):
    block = build(LiResNetBlock(num_blocks=L), (7, 7, 8))
    block.beta.assign(np.random.uniform(0.5, 2.0, 8).astype("float32"))
    block.bias.assign(np.random.randn(8).astype("float32"))
    block.residual_kernel.assign(np.random.randn(3, 3, 8, 8).astype("float32") * 0.2)
    x = np.random.randn(4, 7, 7, 8).astype("float32")
    conv_v = ops.conv(x, block.residual_kernel, strides=1, padding="same")
    expected = x + (1 / math.sqrt(L)) * block.beta * conv_v + block.bias
    np.testing.assert_allclose(ops.convert_to_numpy(block(x)), ops.convert_to_numpy(expected), atol=1e-5)


def test_liresnet_default_init_follows_the_paper():
    block = build(LiResNetBlock(num_blocks=6), (16, 16, 64))
    v = ops.convert_to_numpy(block.residual_kernel)
    assert abs(v.std() - 1 / (9 * 64)) < 0.1 / (9 * 64)
    np.testing.assert_array_equal(ops.convert_to_numpy(block.beta), np.ones(64))
    k = ops.convert_to_numpy(block.linear_kernel() - block.residual_kernel * block.beta / math.sqrt(6))
    delta = np.zeros((3, 3, 64, 64)); delta[1, 1] = np.eye(64)
    np.testing.assert_allclose(k, delta, atol=1e-6)


@pytest.mark.parametrize("batch", [1, 2])  # one example of a strided layer: gather + matmul
@pytest.mark.parametrize("case", sorted(CONV_CASES))
def test_conv_adjoint_is_exact(case, batch):
    shape, filters, k, s, p = CONV_CASES[case]
    layer = build(LipschitzConv2D(filters, k, strides=s, padding=p), shape)
    x = np.random.randn(batch, *shape).astype("float32")
    ax = layer.apply_linear(x, layer.kernel)
    v = np.random.randn(*ax.shape).astype("float32")
    atv = layer.apply_adjoint(v, layer.kernel)
    assert tuple(atv.shape) == x.shape
    lhs = float(ops.sum(ax * v))
    rhs = float(ops.sum(x * atv))
    assert abs(lhs - rhs) <= 1e-4 * (abs(lhs) + 1.0)
    # the forward map is exactly the conv with explicit zero padding (PyTorch-style padding)
    if not isinstance(p, str):
        pads = ((p, p), (p, p)) if isinstance(p, int) else p
        ref = ops.conv(np.pad(x, ((0, 0), *pads, (0, 0))), layer.kernel, strides=s, padding="valid")
        np.testing.assert_allclose(ops.convert_to_numpy(ax), ops.convert_to_numpy(ref), atol=1e-5)


@pytest.mark.parametrize("case", sorted(c for c in CONV_CASES if CONV_CASES[c][3] != 1))
def test_one_example_of_a_strided_conv_is_the_batched_map(case):
    """A strided layer's one-example A and Aᵀ (`example_conv`, the power iterate's path) are the
    maps its batched convolutions compute, example by example (float64 where the backend has it:
    only the order of the sums differs)."""
    shape, filters, k, s, p = CONV_CASES[case]
    layer = build(LipschitzConv2D(filters, k, strides=s, padding=p), shape)
    kernel = ops.cast(layer.kernel, "float64")
    x = np.random.randn(3, *shape)
    ax = ops.convert_to_numpy(layer.apply_linear(x, kernel))
    v = np.random.randn(*ax.shape)
    atv = ops.convert_to_numpy(layer.apply_adjoint(v, kernel))
    tol = 1e-12 if ax.dtype == np.float64 else 2e-6  # JAX without x64 computes in float32
    for i in range(3):
        one = ops.convert_to_numpy(layer.apply_linear(x[i : i + 1], kernel))
        np.testing.assert_allclose(one, ax[i : i + 1], rtol=0, atol=tol * np.abs(ax).max())
        one = ops.convert_to_numpy(layer.apply_adjoint(v[i : i + 1], kernel))
        np.testing.assert_allclose(one, atv[i : i + 1], rtol=0, atol=tol * np.abs(atv).max())


@pytest.mark.parametrize("shape", [(3, 5, 5, 4), (7, 6), (2, 3, 3, 3, 2)])
def test_add_bias_is_the_broadcast_addition_with_its_gradient(shape):
    """`add_bias` (on TensorFlow the bias gradient of images is a matmul 1ᵀ·ḡ) has the value of
    y + b and the gradient of the broadcast addition, in float64 up to summation order."""
    from gloro_keras.ops import add_bias

    y = np.random.randn(*shape).astype("float32")
    b = np.random.randn(shape[-1]).astype("float32")
    g = np.random.randn(*shape).astype("float32")
    out = ops.convert_to_numpy(add_bias(ops.convert_to_tensor(y), ops.convert_to_tensor(b)))
    gy = input_gradient(lambda t: add_bias(t, ops.convert_to_tensor(b)) * g, y)
    gb = input_gradient(lambda t: add_bias(ops.convert_to_tensor(y), t) * g, b)
    np.testing.assert_array_equal(out, y + b)  # the same single rounding as y + b
    np.testing.assert_array_equal(gy, g)
    want = g.astype("float64").reshape(-1, shape[-1]).sum(axis=0)
    np.testing.assert_allclose(gb, want, rtol=0, atol=1e-5 * np.abs(g).sum(axis=tuple(range(len(shape) - 1))).max())


def _same_conv3x3_np(x, k, g):
    """(y, x̄, K̄) of the 'same' 3×3 correlation y = conv(x, K) for the upstream g, float64, tap by tap."""
    x, k, g = (a.astype("float64") for a in (x, k, g))
    h, w = x.shape[1:3]
    xp = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    gp = np.pad(g, ((0, 0), (1, 1), (1, 1), (0, 0)))
    taps = [(i, j) for i in range(3) for j in range(3)]
    y = sum(xp[:, i:i + h, j:j + w] @ k[i, j] for i, j in taps)
    xbar = sum(gp[:, 2 - i:2 - i + h, 2 - j:2 - j + w] @ k[i, j].T for i, j in taps)
    kbar = np.array([[np.einsum("nhwc,nhwd->cd", xp[:, i:i + h, j:j + w], g) for j in range(3)] for i in range(3)])
    return y, xbar, kbar


@pytest.mark.parametrize("shape,filters", [((2, 8, 12, 5), 6), ((3, 4, 4, 3), 3), ((1, 16, 8, 8), 4)])
def test_winograd_conv_is_the_direct_conv_with_its_gradient(shape, filters):
    """`winograd_conv3x3` (F(4×4, 3×3), gradient by hand) computes the 'same' 3×3 correlation and its
    input and kernel gradients: 1e-12 of the float64 reference in float64, 3e-5 in float32 (its
    transforms round more than a direct convolution), eagerly and in a TensorFlow graph (XLA-fused
    transforms, a dynamic batch axis)."""
    from gloro_keras.ops import winograd_applies, winograd_conv3x3

    x, g = np.random.randn(*shape), np.random.randn(*shape[:3], filters)
    k = np.random.randn(3, 3, shape[-1], filters) / 3
    want = _same_conv3x3_np(x, k, g)
    assert winograd_applies(shape, k.shape) and winograd_applies((None,) + shape[1:], k.shape)
    for dtype, tol in (("float64", 1e-12), ("float32", 3e-5)):
        xd, kd, gd = (a.astype(dtype) for a in (x, k, g))
        got = [ops.convert_to_numpy(winograd_conv3x3(xd, kd)),
               input_gradient(lambda t: winograd_conv3x3(t, kd) * gd, xd),
               input_gradient(lambda t: winograd_conv3x3(xd, t) * gd, kd)]
        if got[0].dtype == np.float32:
            tol = 3e-5  # JAX without x64 computes in float32
        for name, a, b in zip(("y", "x̄", "K̄"), got, want):
            np.testing.assert_allclose(a, b, rtol=0, atol=tol * np.abs(b).max(), err_msg=f"{dtype} {name}")
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        @tf.function(input_signature=[tf.TensorSpec((None,) + shape[1:], "float32")])
        def graph(t):
            with tf.GradientTape() as tape:
                tape.watch(t)
                y = winograd_conv3x3(t, k.astype("float32"))
                loss = tf.reduce_sum(y * g.astype("float32"))
            return y, tape.gradient(loss, t)

        y, xbar = graph(x.astype("float32"))
        for name, a, b in (("graph y", y, want[0]), ("graph x̄", xbar, want[1])):
            np.testing.assert_allclose(a.numpy(), b, rtol=0, atol=3e-5 * np.abs(b).max(), err_msg=name)


def test_winograd_rejects_shapes_it_cannot_tile():
    from gloro_keras.ops import winograd_applies, winograd_conv3x3

    assert not winograd_applies((2, 6, 8, 3), (3, 3, 3, 3))      # H not a multiple of 4
    assert not winograd_applies((2, 8, 8, 3), (5, 5, 3, 3))      # not a 3×3 kernel
    assert not winograd_applies((2, 8, None, 3), (3, 3, 3, 3))   # dynamic width
    with pytest.raises(ValueError, match=r"multiples of 4.*Received: x.shape=\(2, 6, 8, 3\)"):
        winograd_conv3x3(np.zeros((2, 6, 8, 3), "float32"), np.zeros((3, 3, 3, 3), "float32"))


def _spy_on_winograd(monkeypatch):
    """Record the input shape of every `winograd_conv3x3` call of `LiResNetBlock`."""
    from gloro_keras.layers import liresnet_block

    calls, original = [], liresnet_block.winograd_conv3x3

    def spy(x, kernel):
        calls.append(tuple(x.shape))
        return original(x, kernel)

    monkeypatch.setattr(liresnet_block, "winograd_conv3x3", spy)
    return calls


def test_liresnet_block_trains_by_winograd_and_infers_by_direct_conv(monkeypatch):
    """On CPU, a float32 training call of a block with more than 32 channels takes the Winograd path;
    its value is the inference call's (direct convolution of R plus x) within 3e-5, and its kernel
    and input gradients are those of the direct merged-kernel convolution within 3e-5 (relative to
    the max)."""
    from gloro_keras.ops import winograd_pays

    calls = _spy_on_winograd(monkeypatch)
    c = 40
    assert winograd_pays() and winograd_pays(c)  # the test machines are CPUs
    layer = build(LiResNetBlock(num_blocks=2), (8, 8, c))
    layer.residual_kernel.assign(np.random.randn(3, 3, c, c).astype("float32") * 0.3 / np.sqrt(c))
    x = np.random.randn(4, 8, 8, c).astype("float32")
    g = np.random.randn(4, 8, 8, c).astype("float32")
    train = ops.convert_to_numpy(layer(x, training=True))
    assert calls == [(4, 8, 8, c)]
    infer = ops.convert_to_numpy(layer(x, training=False))
    np.testing.assert_allclose(train, infer, rtol=0, atol=3e-5 * np.abs(infer).max())
    kernel = ops.convert_to_numpy(layer.linear_kernel())
    _, want_x, want_k = _same_conv3x3_np(x, kernel, g)
    got_x = input_gradient(lambda t: layer.training_linear(t, ops.convert_to_tensor(kernel)) * g, x)
    got_k = input_gradient(lambda t: layer.training_linear(ops.convert_to_tensor(x), t) * g, kernel)
    np.testing.assert_allclose(got_x, want_x, rtol=0, atol=3e-5 * np.abs(want_x).max())
    np.testing.assert_allclose(got_k, want_k, rtol=0, atol=3e-5 * np.abs(want_k).max())


def test_fit_runs_wide_blocks_by_winograd(monkeypatch):
    """`model.fit` of a GloroLiResNet with 40-channel blocks traces them by Winograd (in a TensorFlow
    graph: XLA-fused transforms, dynamic batch) and trains: the loss is finite, the kernel moves."""
    calls = _spy_on_winograd(monkeypatch)
    model = gk.GloroLiResNet(L=1, W=40, input_shape=(8, 8, 3), dense_width=16, epsilon=0.1)
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="emma")
    block = next(l for l in model.network.layers if isinstance(l, LiResNetBlock))
    before = ops.convert_to_numpy(block.residual_kernel).copy()
    x = np.random.rand(16, 8, 8, 3).astype("float32")
    history = model.fit(x, np.arange(16) % 10, batch_size=8, epochs=1, verbose=0)
    assert calls and all(shape[1:] == (4, 4, 40) for shape in calls)
    assert np.isfinite(history.history["loss"][0])
    assert not np.array_equal(ops.convert_to_numpy(block.residual_kernel), before)


def test_liresnet_block_of_32_channels_or_fewer_trains_by_the_direct_convolution():
    """At 32 channels or fewer the direct convolution is as fast or faster (`ops.winograd_pays`):
    a training call is exactly the merged kernel's direct convolution plus the bias."""
    from gloro_keras.ops import winograd_pays
    from gloro_keras.ops.winograd import MAX_DIRECT_CHANNELS

    assert MAX_DIRECT_CHANNELS == 32 and not winograd_pays(32) and winograd_pays(33)
    layer = build(LiResNetBlock(num_blocks=2), (8, 8, 32))
    x = np.random.randn(4, 8, 8, 32).astype("float32")
    direct = layer.apply_linear(x, layer.linear_kernel()) + layer.bias
    np.testing.assert_array_equal(ops.convert_to_numpy(layer(x, training=True)), ops.convert_to_numpy(direct))


def test_liresnet_block_winograd_false_trains_by_the_direct_convolution():
    """`winograd=False` (less memory) keeps the merged kernel's direct convolution in training calls,
    round-trips through the config and reaches the blocks from `GloroLiResNet`; a non-bool is refused."""
    layer = build(LiResNetBlock(num_blocks=2, winograd=False), (8, 8, 6))
    layer.residual_kernel.assign(np.random.randn(3, 3, 6, 6).astype("float32") * 0.3)
    x = np.random.randn(4, 8, 8, 6).astype("float32")
    direct = layer.apply_linear(x, layer.linear_kernel()) + layer.bias
    np.testing.assert_array_equal(ops.convert_to_numpy(layer(x, training=True)), ops.convert_to_numpy(direct))
    assert LiResNetBlock.from_config(layer.get_config()).winograd is False
    assert LiResNetBlock.from_config({k: v for k, v in layer.get_config().items() if k != "winograd"}).winograd
    model = gk.GloroLiResNet(L=2, W=8, input_shape=(16, 16, 3), dense_width=16, winograd=False)
    assert [l.winograd for l in model.network.layers if isinstance(l, LiResNetBlock)] == [False, False]
    with pytest.raises(ValueError, match="Received: winograd='no'"):
        LiResNetBlock(winograd="no")


def _check_against_exact(layer, shape):
    """Converged power iteration vs SVD of the explicit operator of the real forward map."""
    exact = spectral_norm(explicit_matrix(linear_part(layer), shape))
    est = layer.converge_iterate(max_iterations=5000, tolerance=1e-9, check_every=50)
    # Power iteration approaches from below: within 1e-3, never above exact beyond round-off.
    assert est <= exact * (1 + 1e-5), (est, exact)
    assert est >= exact * (1 - 1e-3), (est, exact)
    return est, exact


@pytest.mark.parametrize("case", sorted(CONV_CASES))
def test_conv_power_iteration_matches_exact_norm(case):
    shape, filters, k, s, p = CONV_CASES[case]
    layer = build(LipschitzConv2D(filters, k, strides=s, padding=p, kernel_initializer="glorot_normal"), shape)
    _check_against_exact(layer, shape)


def test_liresnet_block_power_iteration_matches_exact_norm():
    layer = build(LiResNetBlock(num_blocks=2), (6, 6, 4))
    layer.residual_kernel.assign(np.random.randn(3, 3, 4, 4).astype("float32") * 0.3)
    layer.beta.assign(np.random.uniform(0.5, 1.5, 4).astype("float32"))
    _check_against_exact(layer, (6, 6, 4))


def test_dense_power_iteration_matches_exact_norm():
    layer = build(LipschitzDense(7, kernel_initializer="glorot_normal"), (12,))
    est, exact = _check_against_exact(layer, (12,))
    np.testing.assert_allclose(exact, np.linalg.norm(ops.convert_to_numpy(layer.kernel), 2), rtol=1e-6)


def _bound_with_gradient(layer, gradient):
    """(σ, ∂σ/∂kernel, iterate used) of one training call of `layer.lipschitz_bound`."""
    if keras.backend.backend() == "jax":
        import jax

        def f(kernel):
            with keras.StatelessScope(state_mapping=[(layer.kernel, kernel)]) as scope:
                sigma = layer.power_estimate(training=True, gradient=gradient)
            return sigma, scope.get_current_value(layer.iterate)

        (sigma, u), grad = jax.value_and_grad(f, has_aux=True)(layer.kernel.value)
        return float(sigma), np.asarray(grad), np.asarray(u)
    import tensorflow as tf

    with tf.GradientTape() as tape:
        sigma = layer.power_estimate(training=True, gradient=gradient)
    grad = tape.gradient(sigma, layer.kernel)
    return float(sigma), grad.numpy(), ops.convert_to_numpy(layer.iterate)


def _dense_for_gradients(power_iterations):
    layer = build(LipschitzDense(5, power_iterations=power_iterations), (8,))
    layer.kernel.assign(np.random.default_rng(0).normal(size=(8, 5)).astype("float32"))
    return layer


@pytest.mark.parametrize("gradient", ["full", "last"])
def test_bound_gradient_at_a_converged_iterate_is_the_top_singular_pair(gradient):
    """d‖W‖₂/dW = u₁v₁ᵀ. From a converged iterate both modes return it: `last` is the
    spectral-normalization gradient; in `full` the terms through the iterations vanish at the
    fixed point (∂σ/∂u is radial, the normalized iterate only moves tangentially)."""
    layer = _dense_for_gradients(power_iterations=10)
    layer.converge_iterate(max_iterations=5000, tolerance=1e-9, check_every=50)
    u, s, vt = np.linalg.svd(ops.convert_to_numpy(layer.kernel).astype("float64"))
    sigma, grad, _ = _bound_with_gradient(layer, gradient)
    assert sigma == pytest.approx(s[0], rel=1e-5)
    np.testing.assert_allclose(grad, np.outer(u[:, 0], vt[0]), atol=2e-4)


def test_bound_gradient_modes_differ_away_from_convergence():
    """`last` holds the iterate constant; `full` differentiates through the iterations too."""
    grads = {}
    for gradient in ("full", "last"):
        layer = _dense_for_gradients(power_iterations=2)
        layer.iterate.assign(np.ones((1, 8), "float32"))
        _, grads[gradient], u_used = _bound_with_gradient(layer, gradient)
        if gradient == "last":  # ∂‖u W‖/∂W with u fixed = uᵀ(uW)/‖uW‖ for the iterate u actually used
            v = u_used @ ops.convert_to_numpy(layer.kernel)
            np.testing.assert_allclose(grads["last"], u_used.T @ v / np.linalg.norm(v), rtol=1e-4, atol=1e-6)
    assert np.abs(grads["full"] - grads["last"]).max() > 1e-3


def _value_and_grads(layer, fn):
    """(fn(), [∂fn/∂w for w in layer.trainable_variables]) on the current backend."""
    weights = layer.trainable_variables
    if keras.backend.backend() == "jax":
        import jax

        def f(values):
            with keras.StatelessScope(state_mapping=list(zip(weights, values))):
                return fn()

        value, grads = jax.value_and_grad(f)([w.value for w in weights])
        return float(value), [np.asarray(g) for g in grads]
    import tensorflow as tf

    with tf.GradientTape() as tape:
        value = fn()
    grads = tape.gradient(value, weights)
    return float(value), [np.zeros(w.shape, "float32") if g is None else g.numpy() for g, w in zip(grads, weights)]


def _unrolled_full_bound(layer):
    """Reference: autodiff straight through the unrolled power-iteration steps."""
    from gloro_keras.ops.norms import l2_normalize, safe_norm

    kernel = layer.linear_kernel()
    u = l2_normalize(ops.convert_to_tensor(layer.iterate))
    for _ in range(layer.power_iterations):  # u ← AᵀAu / ‖AᵀAu‖, written out independently
        w = layer.apply_adjoint(layer.apply_linear(u, kernel), kernel)
        u = w / safe_norm(w)
    return safe_norm(layer.apply_linear(u, kernel))


BATCHED_GRADIENT_CASES = {
    "dense": (lambda: LipschitzDense(7, power_iterations=4), (12,)),
    "conv same": (lambda: LipschitzConv2D(6, 3, padding="same", power_iterations=4), (7, 7, 4)),
    "stem k5 s2 p2": (lambda: LipschitzConv2D(6, 5, strides=2, padding=2, power_iterations=4), (9, 9, 3)),
    "neck k4 s4": (lambda: LipschitzConv2D(8, 4, strides=4, padding=((0, 1), (1, 0)), power_iterations=4),
                   (7, 7, 4)),
    "even kernel same": (lambda: LipschitzConv2D(4, 4, padding="same", power_iterations=4), (6, 6, 3)),
    "liresnet block": (lambda: LiResNetBlock(num_blocks=3, power_iterations=4), (6, 6, 4)),
}


@pytest.mark.parametrize("case", list(CONV_CASES))
def test_conv_kernel_vjp_is_the_kernel_gradient(case):
    """The batched kernel gradient (Σ of tap matmuls) equals autodiff of ⟨g, conv(x, K)⟩ summed
    over the batch, for every conv shape the builders use (strides that leave rows unused too)."""
    from gloro_keras.ops.conv import conv_kernel_vjp

    shape, filters, kernel, stride, padding = CONV_CASES[case]
    layer = build(LipschitzConv2D(filters, kernel, strides=stride, padding=padding, use_bias=False), shape)
    rng = np.random.default_rng(2)
    x = rng.standard_normal((3,) + shape).astype("float32")
    g = rng.standard_normal((3,) + tuple(layer.compute_output_shape((3,) + shape)[1:])).astype("float32")
    args = (layer.kernel_size, layer.strides, layer.pads)
    got = ops.convert_to_numpy(conv_kernel_vjp(ops.convert_to_tensor(x), ops.convert_to_tensor(g), *args))
    _, (auto,) = _value_and_grads(layer, lambda: ops.sum(layer(ops.convert_to_tensor(x)) * g))
    np.testing.assert_allclose(got, auto, rtol=1e-5, atol=1e-5 * np.abs(auto).max())


def _grads_wrt(fn, *tensors):
    """[∂fn/∂t for t in tensors] on the current backend (fn returns a scalar)."""
    if keras.backend.backend() == "jax":
        import jax

        return [np.asarray(g) for g in jax.grad(fn, argnums=tuple(range(len(tensors))))(*tensors)]
    import tensorflow as tf

    with tf.GradientTape() as tape:
        tape.watch(tensors)
        value = fn(*tensors)
    return [g.numpy() for g in tape.gradient(value, list(tensors))]


@pytest.mark.parametrize("case", [*CONV_CASES, "liresnet block"])
def test_linear_by_hand_has_the_autodiff_gradient(case):
    """`linear_by_hand` (x̄ = Aᵀḡ, K̄ summed over chunks of the batch by ops.scan) gives autodiff's
    gradients of A(K)x, for every conv shape the builders use; chunks of 2 examples out of 6."""
    if case == "liresnet block":
        shape, layer = (6, 6, 4), LiResNetBlock(num_blocks=3)
    else:
        shape, filters, kernel, stride, padding = CONV_CASES[case]
        layer = LipschitzConv2D(filters, kernel, strides=stride, padding=padding, use_bias=False)
    build(layer, shape)
    out_shape = tuple(layer.compute_output_shape((6,) + shape))
    layer.kernel_gradient_rows = 2 * math.prod(out_shape[1:-1])
    rng = np.random.default_rng(5)
    x = ops.convert_to_tensor(rng.standard_normal((6,) + shape).astype("float32"))
    g = ops.convert_to_tensor(rng.standard_normal(out_shape).astype("float32"))
    kernel = ops.convert_to_tensor(ops.convert_to_numpy(layer.linear_kernel()))
    np.testing.assert_array_equal(ops.convert_to_numpy(layer.linear_by_hand(x, kernel)),
                                  ops.convert_to_numpy(layer.apply_linear(x, kernel)))
    got = _grads_wrt(lambda x, k: ops.sum(layer.linear_by_hand(x, k) * g), x, kernel)
    auto = _grads_wrt(lambda x, k: ops.sum(layer.apply_linear(x, k) * g), x, kernel)
    for a, b in zip(got, auto):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5 * np.abs(b).max())


def test_examples_per_chunk_divides_the_batch():
    from gloro_keras.ops.conv import examples_per_chunk

    assert examples_per_chunk(256, 256) == 8  # 16×16 outputs, 2048 rows
    assert examples_per_chunk(80, 256) == 8 and examples_per_chunk(7, 256) == 7 and examples_per_chunk(7, 512) == 1
    assert examples_per_chunk(256, 16) == 128 and examples_per_chunk(3, 4096) == 1


@pytest.mark.skipif(keras.backend.backend() != "jax", reason="the written-out gradient is JAX's path")
def test_training_convolutions_take_the_gradient_by_hand_on_jax():
    """On JAX a training call of a conv layer, or of a LiResNet block of 32 channels or fewer, runs
    `linear_by_hand` (its kernel gradient is a scan over chunks); a wider block's runs Winograd (no
    convolution at all); an inference call and a dense layer keep autodiff."""
    import jax

    for layer, shape in ((LiResNetBlock(num_blocks=2), (8, 8, 40)),
                         (LiResNetBlock(num_blocks=2, name="narrow_block"), (8, 8, 4)),
                         (LipschitzConv2D(4, 3, strides=2, padding="same"), (8, 8, 3)),
                         (LipschitzDense(5), (12,))):
        build(layer, shape)
        layer.kernel_gradient_rows = 1  # chunks of one example
        x = np.ones((4,) + shape, "float32")
        weights = layer.trainable_variables

        def jaxpr(training):
            def f(values):
                with keras.StatelessScope(state_mapping=list(zip(weights, values))):
                    return ops.sum(layer(x, training=training))

            return str(jax.make_jaxpr(jax.grad(f))([w.value for w in weights]))

        if isinstance(layer, LiResNetBlock) and shape[-1] > 32:
            assert "conv_general_dilated" not in jaxpr(True) and "scan" not in jaxpr(True)
            assert "conv_general_dilated" in jaxpr(False)
        else:
            by_hand = isinstance(layer, (LipschitzConv2D, LiResNetBlock))
            assert ("scan" in jaxpr(True)) == by_hand, layer.name
        assert "scan" not in jaxpr(False), layer.name


@pytest.mark.parametrize("case", list(BATCHED_GRADIENT_CASES))
def test_full_bound_gradient_equals_autodiff_through_the_unrolled_steps(case):
    """The hand-written backward of `gradient="full"` (one batched kernel gradient) gives the same
    value and gradient as autodiff through every step, away from convergence."""
    make, shape = BATCHED_GRADIENT_CASES[case]
    layer = build(make(), shape)
    rng = np.random.default_rng(1)
    for w in layer.trainable_variables:
        w.assign((w.numpy() if hasattr(w, "numpy") else ops.convert_to_numpy(w))
                 + 0.3 * rng.normal(size=w.shape).astype("float32"))
    layer.iterate.assign(rng.normal(size=layer.iterate.shape).astype("float32"))
    start = ops.convert_to_numpy(layer.iterate).copy()
    ref, ref_grads = _value_and_grads(layer, lambda: _unrolled_full_bound(layer))
    layer.iterate.assign(start)
    got, grads = _value_and_grads(layer, lambda: layer.power_estimate(training=True, gradient="full"))
    assert got == pytest.approx(ref, rel=1e-5)
    for g, r, w in zip(grads, ref_grads, layer.trainable_variables):
        scale = np.abs(r).max()
        if w.name == "bias":
            assert scale == 0 and np.abs(g).max() == 0
            continue
        assert scale > 1e-3, w.name
        np.testing.assert_allclose(g, r, atol=2e-5 * scale, rtol=0, err_msg=w.name)


def test_full_bound_gradient_through_a_restart_is_finite_and_matches_autodiff():
    layer = build(LipschitzConv2D(4, 3, power_iterations=3), (5, 5, 2))
    layer.kernel.assign(np.zeros((3, 3, 2, 4), dtype="float32"))
    ref, ref_grads = _value_and_grads(layer, lambda: _unrolled_full_bound(layer))
    got, grads = _value_and_grads(layer, lambda: layer.power_estimate(training=True, gradient="full"))
    assert got == pytest.approx(ref, abs=1e-9)
    for g, r in zip(grads, ref_grads):
        assert np.all(np.isfinite(g))
        np.testing.assert_allclose(g, r, atol=1e-6)


def test_training_calls_iterate_and_store_the_iterate():
    layer = build(LipschitzConv2D(4, 3, power_iterations=3), (5, 5, 2))
    before = ops.convert_to_numpy(layer.iterate).copy()
    s0 = float(layer.power_estimate(training=False))
    np.testing.assert_array_equal(ops.convert_to_numpy(layer.iterate), before)  # inference: no update
    s1 = float(layer.power_estimate(training=True))
    assert not np.allclose(ops.convert_to_numpy(layer.iterate), before)
    assert s1 >= s0 * (1 - 1e-6)  # iterating moves the estimate up toward ‖A‖


def test_power_iteration_is_nan_safe_for_a_zero_kernel():
    layer = build(LipschitzConv2D(4, 3, power_iterations=5), (5, 5, 2))
    layer.kernel.assign(np.zeros((3, 3, 2, 4), dtype="float32"))
    assert float(layer.power_estimate(training=True)) == pytest.approx(0.0, abs=1e-6)
    assert np.all(np.isfinite(ops.convert_to_numpy(layer.iterate)))
    # after the kernel becomes non-zero the estimate recovers (restarted iterate)
    layer.kernel.assign(np.random.randn(3, 3, 2, 4).astype("float32"))
    assert layer.converge_iterate(max_iterations=200) > 0.1


def test_lln_head_normalizes_class_vectors_and_keeps_bias():
    head = build(LLNDense(5), (8,))
    head.bias.assign(np.arange(5, dtype="float32"))
    w = ops.convert_to_numpy(head.kernel)
    x = np.random.randn(3, 8).astype("float32")
    expected = x @ (w / np.linalg.norm(w, axis=0)) + np.arange(5)
    np.testing.assert_allclose(ops.convert_to_numpy(head(x)), expected, rtol=1e-5, atol=1e-5)


def test_resnet_block_bound_dominates_its_empirical_lipschitz_ratio():
    block = build(ResNetBlock(), (6, 6, 4))
    block.beta.assign(np.random.uniform(-1, 1, 4).astype("float32"))
    bound = block.converge_iterate(max_iterations=2000, tolerance=1e-9)
    x = np.random.randn(64, 6, 6, 4).astype("float32")
    z = x + 0.01 * np.random.randn(*x.shape).astype("float32")
    num = np.linalg.norm(ops.convert_to_numpy(block(x) - block(z)).reshape(64, -1), axis=1)
    den = np.linalg.norm((x - z).reshape(64, -1), axis=1)
    assert np.max(num / den) <= bound * (1 + 1e-4)
    # the converged bound is 1 + max|β|·‖A₁‖·‖A₂‖ with the convs' exact spectral norms
    norms = [spectral_norm(explicit_matrix(lambda u, c=c: c.apply_linear(u, c.linear_kernel()), (6, 6, 4)))
             for c in (block.conv1, block.conv2)]
    beta = float(np.max(np.abs(ops.convert_to_numpy(block.beta))))
    assert bound == pytest.approx(1.0 + beta * norms[0] * norms[1], rel=1e-3)


@pytest.mark.parametrize(
    "layer, shape",
    [
        (lambda: LipschitzConv2D(4, 5, strides=2, padding=2, power_iterations=3), (8, 8, 3)),
        (lambda: LipschitzDense(6, use_bias=False), (5,)),
        (lambda: LiResNetBlock(num_blocks=4, power_iterations=2), (4, 4, 6)),
        (lambda: ResNetBlock(), (4, 4, 2)),
        (lambda: LLNDense(3), (4,)),
        (lambda: MinMax(), (4,)),
    ],
)
def test_layer_config_round_trip(layer, shape):
    original = build(layer(), shape)
    clone = type(original).from_config(original.get_config())
    build(clone, shape)
    assert clone.get_config() == original.get_config()
    restored = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(original))
    assert type(restored) is type(original)


def test_bad_layer_arguments_are_clear():
    with pytest.raises(ValueError, match="power_iterations"):
        LipschitzConv2D(4, 3, power_iterations=-1)
    with pytest.raises(ValueError, match="kernel_size must be >= 1. Received: kernel_size=0"):
        LiResNetBlock(kernel_size=0)
    with pytest.raises(ValueError, match="residual_scale must be finite"):
        LiResNetBlock(residual_scale=float("nan"))
    with pytest.raises(ValueError, match="padding"):
        build(LipschitzConv2D(4, 3, padding="reflect"), (5, 5, 2))
    with pytest.raises(ValueError, match="static"):
        build(LipschitzConv2D(4, 3), (None, None, 2))


# ----------------------------------------------------------------------------- gloro's layers
def test_min_max_pairings():
    x = np.array([[1.0, -2.0, 3.0, 0.0]], "float32")
    np.testing.assert_array_equal(MinMax()(x), [[3.0, 0.0, 1.0, -2.0]])
    np.testing.assert_array_equal(MinMax(pairing="adjacent")(x), [[-2.0, 1.0, 0.0, 3.0]])
    img = np.random.default_rng(0).normal(size=(2, 3, 3, 2)).astype("float32")  # pairs = the 2 channels
    out = keras.ops.convert_to_numpy(MinMax(pairing="adjacent")(img))
    np.testing.assert_array_equal(out, np.stack([img.min(-1), img.max(-1)], -1))
    with pytest.raises(ValueError, match="even number of values"):
        MinMax(pairing="adjacent")(keras.Input((3, 3, 1)))
    with pytest.raises(ValueError, match="pairing must be one of"):
        MinMax(pairing="random")


def test_invertible_downsampling_is_space_to_depth():
    import tensorflow as tf
    x = np.random.default_rng(1).normal(size=(2, 8, 6, 3)).astype("float32")
    for pool in (2, (2, 3), (4, 1)):
        got = keras.ops.convert_to_numpy(gk.layers.InvertibleDownsampling(pool)(x))
        p0, p1 = (pool, pool) if isinstance(pool, int) else pool
        want = np.concatenate([x[:, i::p0, j::p1, :] for i in range(p0) for j in range(p1)], axis=-1)
        np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(gk.layers.InvertibleDownsampling(2)(x), tf.nn.space_to_depth(x, 2))
    with pytest.raises(ValueError, match="divisible"):
        gk.layers.InvertibleDownsampling(4)(keras.Input((6, 6, 3)))


@pytest.mark.parametrize("kernel_size", [1, 3, 4, 5, 6])
def test_liresnet_block_with_a_zero_kernel_is_the_identity(kernel_size):
    block = LiResNetBlock(kernel_size=kernel_size, residual_scale=2.2, kernel_initializer="zeros")
    x = np.random.default_rng(2).normal(size=(1, 8, 8, 4)).astype("float32")
    np.testing.assert_allclose(block(x, training=False), x, atol=1e-6)
    # A training call of a 3×3 block runs Winograd F(4×4, 3×3), whose transforms round (≈ 1e-5 relative)
    tol = 3e-5 * np.abs(x).max() if kernel_size == 3 else 1e-6
    np.testing.assert_allclose(block(x, training=True), x, atol=tol)
    assert 1.0 <= block.sound_bound() <= 1.0 + 1e-7


@pytest.mark.parametrize("kernel_size", [2, 4])
def test_even_liresnet_kernels_bound_their_operator(kernel_size):
    block = LiResNetBlock(kernel_size=kernel_size, residual_scale=0.7, use_affine=False,
                          kernel_initializer="glorot_uniform")
    block.build((None, 6, 6, 2))
    assert not block.beta.trainable
    k = keras.ops.convert_to_numpy(block.residual_merged_kernel()).astype("float64")
    k[block.pads[0], block.pads[0]] += np.eye(2)  # Δ + R: what inference computes
    operator = conv2d_operator_matrix(k, (6, 6), (1, 1), (block.pads, block.pads))
    x = np.random.default_rng(4).normal(size=(1, 6, 6, 2)).astype("float32")
    np.testing.assert_allclose(block(x) - block.bias, (operator @ x.ravel()).reshape(x.shape), atol=1e-6)
    exact = np.linalg.norm(operator, 2)
    assert exact <= block.sound_bound() <= exact * (1 + 1e-6)
    assert block.converge_iterate(max_iterations=5000, tolerance=1e-9) == pytest.approx(exact, rel=1e-5)


def test_gloro_layers_certify_in_a_gloro_model():
    x = keras.Input((8, 8, 2))
    z = LipschitzConv2D(4, 3)(x)
    z = MinMax(pairing="adjacent")(z)
    z = gk.layers.InvertibleDownsampling(2)(z)
    z = gk.layers.Scaling(-0.5)(z)
    z = keras.layers.Flatten()(z)
    model = gk.GloroModel(x, LLNDense(3)(z), epsilon=0.1)
    xs = np.random.default_rng(3).uniform(size=(16, 8, 8, 2)).astype("float32")
    radius = model.certified_radius(xs)
    assert radius.shape == (16,) and np.all(radius >= 0)
    k = model.lipschitz_bound("sound")
    conv = model.network.layers[1]
    assert conv.sound_bound() * 0.5 <= k <= conv.sound_bound() * 0.5 * (1 + 1e-8)  # |α| = 0.5


def _estimates_and_gradients(layers, gradient, group):
    """(σ per layer, ∂(Σ log σ)/∂ each layer's trainable weights, stored iterates) of one training
    call of `power_estimates`, from the layers' current iterates (restored afterwards)."""
    from gloro_keras.layers.power_groups import power_estimates

    start = [ops.convert_to_numpy(layer.iterate) for layer in layers]
    weights = [w for layer in layers for w in layer.trainable_weights]

    def objective():
        sigmas = power_estimates(layers, training=True, gradient=gradient, group=group)
        return ops.sum(ops.log(ops.stack(sigmas))), sigmas

    if keras.backend.backend() == "jax":
        import jax

        def f(values):
            with keras.StatelessScope(state_mapping=list(zip(weights, values))) as scope:
                total, sigmas = objective()
                stored = [scope.get_current_value(layer.iterate) for layer in layers]
            return total, (sigmas, stored)

        (_, (sigmas, stored)), grads = jax.value_and_grad(f, has_aux=True)([w.value for w in weights])
    else:
        import tensorflow as tf

        with tf.GradientTape() as tape:
            _, sigmas = objective()
            total = ops.sum(ops.log(ops.stack(sigmas)))
        grads = tape.gradient(total, weights)
        stored = [layer.iterate.value for layer in layers]
    out = ([float(s) for s in sigmas], [ops.convert_to_numpy(g) for g in grads],
           [ops.convert_to_numpy(u) for u in stored])
    for layer, u in zip(layers, start):
        layer.iterate.assign(u)
    return out


def _mixed_bounded_layers():
    """Three same-shaped LiResNet blocks (one group), one narrower block, a dense layer."""
    rng = np.random.default_rng(3)
    layers = [LiResNetBlock(num_blocks=3, power_iterations=4) for _ in range(3)]
    layers += [LiResNetBlock(num_blocks=3, power_iterations=4), LipschitzDense(5, power_iterations=4)]
    for layer, shape in zip(layers, [(None, 6, 6, 8)] * 3 + [(None, 6, 6, 4), (None, 7)]):
        layer.build(shape)
        for w in layer.trainable_weights:
            w.assign(w.value + 0.1 * rng.standard_normal(w.shape).astype("float32"))
    return layers


@pytest.mark.skipif(keras.backend.backend() != "jax", reason="grouping is JAX's (jax.vmap)")
@pytest.mark.parametrize("gradient", ["full", "last"])
def test_grouped_power_iterations_equal_each_layer_alone(gradient):
    """`power_estimates(group=True)` runs the three same-shaped blocks as one vectorized
    computation: same estimates, gradients and stored iterates as each layer alone."""
    layers = _mixed_bounded_layers()
    assert len({layer.power_group_key() for layer in layers[:3]}) == 1
    assert layers[3].power_group_key() != layers[0].power_group_key() and layers[4].power_group_key() is None
    alone = _estimates_and_gradients(layers, gradient, group=False)
    grouped = _estimates_and_gradients(layers, gradient, group=True)
    np.testing.assert_allclose(grouped[0], alone[0], rtol=1e-5)
    for got, want in zip(grouped[1] + grouped[2], alone[1] + alone[2]):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5 * np.abs(want).max())
    assert max(np.abs(u1 - u0).max() for u1, u0 in zip(alone[2], [ops.convert_to_numpy(l.iterate) for l in layers])) > 1e-3


def test_power_grouping_is_validated_and_auto_keeps_cpus_ungrouped():
    from gloro_keras.layers.power_groups import check_grouping, grouping_pays, power_estimates

    with pytest.raises(ValueError, match="Received: 'yes'"):
        check_grouping("yes")
    with pytest.raises(ValueError, match="Received: 1"):
        check_grouping(1)
    assert not grouping_pays()  # the tests run on CPUs
    layers = _mixed_bounded_layers()
    auto = _estimates_and_gradients(layers, "full", group="auto")
    alone = _estimates_and_gradients(layers, "full", group=False)
    assert auto[0] == alone[0]
    if keras.backend.backend() != "jax":
        with pytest.raises(ValueError, match="needs the JAX backend"):
            check_grouping(True)
