"""Sound spectral-norm upper bounds (gloro_keras.bounds): soundness, tightness, conventions."""

import itertools

import numpy as np
import pytest

from gloro_keras.bounds import (
    conv2d_operator_matrix,
    conv2d_spectral_bound,
    dense_spectral_bound,
)
from gloro_keras.bounds import spectral as S

SOUND_TOL = 1e-12  # the bound may never be below the exact norm by more than this (relative)


def exact_norm(kernel, size, strides=(1, 1), padding=((0, 0), (0, 0))):
    mat = conv2d_operator_matrix(kernel, size, strides, padding)
    if mat.size == 0:
        return 0.0
    return float(np.linalg.svd(mat, compute_uv=False)[0])


def check_sound(bound, exact):
    assert bound >= exact * (1.0 - SOUND_TOL), (bound, exact)


def pad2(p):
    return ((p, p), (p, p))


# --------------------------------------------------------------------------------------------
# kernels
# --------------------------------------------------------------------------------------------


def random_kernel(rng, kh, kw, cin, cout):
    return rng.standard_normal((kh, kw, cin, cout))


def identity_plus_small(rng, c, scale, k=3):
    kern = scale * rng.standard_normal((k, k, c, c)) / np.sqrt(k * k * c)
    kern[k // 2, k // 2] += np.eye(c)
    return kern


def big_centre(rng, c, k=3):
    kern = rng.standard_normal((k, k, c, c))
    kern[k // 2, k // 2] += 5 * np.eye(c)
    return kern


def checkerboard(c=1):
    """Top singular direction is the highest frequency (pi, pi)."""
    s = np.array([[1.0, -1.0, 1.0], [-1.0, 1.0, -1.0], [1.0, -1.0, 1.0]])
    return np.einsum("ab,co->abco", s, np.eye(c))


def laplacian(c=1):
    """Cancels on smooth inputs; the top singular direction is the (pi, pi) frequency."""
    s = np.array([[1.0, 1.0, 1.0], [1.0, -8.0, 1.0], [1.0, 1.0, 1.0]])
    return np.einsum("ab,co->abco", s, np.eye(c))


def corner_heavy(rng, c, k=3):
    """Dominant off-centre (corner) tap: with large padding the outputs on the border read a
    single input pixel through it, which is where wrap-around from a too-small torus would
    show up first."""
    kern = 0.3 * rng.standard_normal((k, k, c, c))
    kern[0, 0] += 4 * np.eye(c)
    kern[k - 1, k - 1] -= 3 * np.eye(c)
    return kern


def sparse_heavy_tailed(rng, kh, kw, cin, cout):
    kern = rng.standard_cauchy((kh, kw, cin, cout))
    kern[rng.random(kern.shape) < 0.6] = 0.0
    return kern


# --------------------------------------------------------------------------------------------
# conventions: explicit matrix vs TensorFlow / keras.ops.conv, and the numpy reference conv
# --------------------------------------------------------------------------------------------

CONV_CONFIGS = [
    # kernel (kh, kw, cin, cout), input (H, W), strides, padding
    ((3, 3, 2, 3), (6, 5), (1, 1), ((1, 1), (1, 1))),
    ((3, 2, 1, 2), (7, 6), (2, 1), ((0, 2), (1, 0))),
    ((5, 5, 3, 4), (12, 12), (2, 2), ((2, 2), (2, 2))),  # stem 32x32 at reduced size
    ((7, 7, 3, 2), (16, 16), (4, 4), ((3, 3), (3, 3))),  # stem 64x64 at reduced size
    ((4, 4, 2, 4), (8, 8), (4, 4), ((0, 0), (0, 0))),  # neck / patchify
    ((2, 2, 2, 2), (7, 5), (3, 2), ((0, 0), (0, 0))),  # unread trailing rows
    ((1, 1, 3, 2), (4, 4), (1, 1), ((0, 0), (0, 0))),
]


@pytest.mark.parametrize("kshape,size,strides,padding", CONV_CONFIGS)
def test_operator_matrix_matches_tensorflow(kshape, size, strides, padding):
    tf = pytest.importorskip("tensorflow")
    rng = np.random.default_rng(0)
    kernel = rng.standard_normal(kshape)
    x = rng.standard_normal((2,) + tuple(size) + (kshape[2],))
    xp = np.pad(x, ((0, 0),) + tuple(padding) + ((0, 0),))
    y_tf = tf.nn.conv2d(
        tf.constant(xp), tf.constant(kernel), strides=(1,) + tuple(strides) + (1,), padding="VALID"
    ).numpy()
    mat = conv2d_operator_matrix(kernel, size, strides, padding)
    y_mat = np.stack([mat @ xi.ravel() for xi in x]).reshape(y_tf.shape)
    np.testing.assert_allclose(y_mat, y_tf, rtol=1e-10, atol=1e-10)
    # keras.ops.conv (what the layers call) agrees as well
    try:
        from keras import ops
    except ImportError:  # pragma: no cover
        return
    y_k = ops.convert_to_numpy(ops.conv(xp, kernel, strides=strides, padding="valid"))
    np.testing.assert_allclose(y_mat, y_k, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("kshape,size,strides,padding", CONV_CONFIGS)
def test_numpy_conv_and_adjoint_match_matrix(kshape, size, strides, padding):
    rng = np.random.default_rng(1)
    kernel = rng.standard_normal(kshape)
    mat = conv2d_operator_matrix(kernel, size, strides, padding)
    x = rng.standard_normal(tuple(size) + (kshape[2],))
    y = S.conv2d_apply(x, kernel, strides, padding)
    np.testing.assert_allclose(y.ravel(), mat @ x.ravel(), rtol=1e-12, atol=1e-12)
    v = rng.standard_normal(y.shape)
    xt = S.conv2d_apply_transpose(v, kernel, size, strides, padding)
    np.testing.assert_allclose(xt.ravel(), mat.T @ v.ravel(), rtol=1e-12, atol=1e-12)


# --------------------------------------------------------------------------------------------
# the soundness argument itself: A = R C E on the minimal twisted torus
# --------------------------------------------------------------------------------------------


def torus_dilation(kernel, size, strides, padding, tau, shrink=(0, 0)):
    """Explicit (R C E) for the minimal torus of `axis_geometry` with twists tau=(t1, t2)
    (made smaller by `shrink` to show that the minimum is needed)."""
    H, W = size
    (pt, pb), (pl, pr) = padding
    kh, kw, cin, cout = kernel.shape
    sh, sw = strides
    ho, a1, n1 = S.axis_geometry(H, kh, sh, pt, pb)
    wo, a2, n2 = S.axis_geometry(W, kw, sw, pl, pr)
    n1, n2 = n1 - shrink[0], n2 - shrink[1]
    kp = S.polyphase_kernel(kernel, strides)
    cp = kp.shape[2]
    # E: input -> torus (n1, n2, cp); only data that some output reads is embedded
    E = np.zeros((n1, n2, cp, H, W, cin), dtype=complex)
    read = np.abs(conv2d_operator_matrix(kernel, size, strides, padding)).sum(axis=0) > 0
    read = read.reshape(H, W, cin).any(axis=2)
    for h, w, c in itertools.product(range(H), range(W), range(cin)):
        if not read[h, w]:
            continue
        u, p = divmod(h + pt, sh)
        v, q = divmod(w + pl, sw)
        if shrink == (0, 0):
            assert u < n1 and v < n2
        u, v = u % n1, v % n2
        E[u, v, (p * sw + q) * cin + c, h, w, c] = 1.0
    E = E.reshape(n1 * n2 * cp, H * W * cin)
    # C: twisted circular cross-correlation on the torus, output (n1, n2, cout)
    C = np.zeros((n1, n2, cout, n1, n2, cp), dtype=complex)
    for i, j, a, b in itertools.product(range(n1), range(n2), range(a1), range(a2)):
        q1, r1 = divmod(i + a, n1)
        q2, r2 = divmod(j + b, n2)
        C[i, j, :, r1, r2, :] += (tau[0] ** q1) * (tau[1] ** q2) * kp[a, b].T
    C = C.reshape(n1 * n2 * cout, n1 * n2 * cp)
    # R: keep the outputs (ho, wo)
    keep = np.zeros((n1, n2), dtype=bool)
    keep[:ho, :wo] = True
    R = np.repeat(keep.ravel(), cout)
    return C[R] @ E, C, (n1, n2), kp


@pytest.mark.parametrize("kshape,size,strides,padding", CONV_CONFIGS)
def test_twisted_torus_dilation_is_exact(kshape, size, strides, padding):
    rng = np.random.default_rng(2)
    kernel = rng.standard_normal(kshape)
    A = conv2d_operator_matrix(kernel, size, strides, padding)
    for tau in [(1.0, 1.0), (-1.0, 1.0), (np.exp(0.7j), np.exp(-2.1j))]:
        RCE, C, (n1, n2), kp = torus_dilation(kernel, size, strides, padding, tau)
        np.testing.assert_allclose(RCE, A, atol=1e-12)
        # ||C|| equals the max of the symbol over the twisted frequency grid
        if C.shape[0] * C.shape[1] <= 4e6:
            phi = (np.angle(tau[0]) % (2 * np.pi), np.angle(tau[1]) % (2 * np.pi))
            w1 = (2 * np.pi * np.arange(n1) + phi[0]) / n1
            w2 = (2 * np.pi * np.arange(n2) + phi[1]) / n2
            g1, g2 = np.meshgrid(w1, w2, indexing="ij")
            sym = S.sigma_points(kp, g1, g2).max()
            top = np.linalg.svd(C, compute_uv=False)[0]
            assert top <= sym <= top * (1 + 2e-8)  # sigma_points includes the round-off slack


def test_minimal_torus_sizes():
    """The admissible minimum of the soundness argument for the shapes that matter."""
    H = 6
    _, _, n1 = S.axis_geometry(H, 3, 1, 1, 1)
    assert n1 == H + 1
    _, _, n1 = S.axis_geometry(H, 3, 1, 2, 0)
    assert n1 == H + 2
    _, _, n1 = S.axis_geometry(16, 4, 4, 0, 0)  # neck: 4 outputs, one polyphase tap
    assert n1 == 4
    _, _, n1 = S.axis_geometry(32, 5, 2, 2, 2)  # stem 32 -> 16
    assert n1 == 17


@pytest.mark.parametrize("kshape,size,strides,padding", CONV_CONFIGS[:4])
def test_smaller_torus_breaks_the_dilation(kshape, size, strides, padding):
    rng = np.random.default_rng(15)
    kernel = rng.standard_normal(kshape)
    A = conv2d_operator_matrix(kernel, size, strides, padding)
    for shrink in ((1, 0), (0, 1)):
        RCE = torus_dilation(kernel, size, strides, padding, (1.0, 1.0), shrink)[0]
        assert np.abs(RCE - A).max() > 1e-3


# --------------------------------------------------------------------------------------------
# soundness and tightness at small shapes
# --------------------------------------------------------------------------------------------


def small_cases():
    rng = np.random.default_rng(4)
    cases = []
    for size in [(5, 5), (6, 7), (8, 8)]:
        for c in [1, 2, 4]:
            cases.append(("random", random_kernel(rng, 3, 3, c, c), size, (1, 1), pad2(1)))
            cases.append(("id+small", identity_plus_small(rng, c, 0.3), size, (1, 1), pad2(1)))
            cases.append(("id+tiny", identity_plus_small(rng, c, 0.02), size, (1, 1), pad2(1)))
            cases.append(("bigcentre", big_centre(rng, c), size, (1, 1), pad2(1)))
        cases.append(("checker", checkerboard(2), size, (1, 1), pad2(1)))
        cases.append(("laplacian", laplacian(1), size, (1, 1), pad2(1)))
        cases.append(("corner", corner_heavy(rng, 2), size, (1, 1), pad2(2)))
        cases.append(("corner asym", corner_heavy(rng, 2), size, (1, 1), ((0, 2), (2, 1))))
        cases.append(("ones", np.ones((3, 3, 1, 1)), size, (1, 1), pad2(1)))
        cases.append(("heavy", sparse_heavy_tailed(rng, 3, 3, 2, 3), size, (1, 1), pad2(1)))
        cases.append(("pad2", random_kernel(rng, 3, 3, 2, 2), size, (1, 1), pad2(2)))
        cases.append(("valid", random_kernel(rng, 3, 3, 2, 3), size, (1, 1), pad2(0)))
        cases.append(("asym", random_kernel(rng, 3, 2, 2, 1), size, (1, 2), ((0, 2), (1, 0))))
    # stems / neck / patchify at reduced sizes
    cases.append(("stem k5s2p2", random_kernel(rng, 5, 5, 3, 4), (8, 8), (2, 2), pad2(2)))
    cases.append(("stem k5s2p2", random_kernel(rng, 5, 5, 3, 8), (12, 12), (2, 2), pad2(2)))
    cases.append(("stem k7s4p3", random_kernel(rng, 7, 7, 3, 4), (16, 16), (4, 4), pad2(3)))
    cases.append(("stem k7s4p3", random_kernel(rng, 7, 7, 2, 3), (12, 12), (4, 4), pad2(3)))
    cases.append(("neck k4s4", random_kernel(rng, 4, 4, 2, 4), (8, 8), (4, 4), pad2(0)))
    cases.append(("patch k3s3", random_kernel(rng, 3, 3, 3, 5), (9, 9), (3, 3), pad2(0)))
    cases.append(("patch k3s3 ragged", random_kernel(rng, 3, 3, 1, 2), (10, 11), (3, 3), pad2(0)))
    cases.append(("k4s3p1", random_kernel(rng, 4, 4, 2, 2), (9, 8), (3, 3), pad2(1)))
    cases.append(("k2s2p1", random_kernel(rng, 2, 2, 2, 2), (7, 7), (2, 2), pad2(1)))
    cases.append(("1x1", random_kernel(rng, 1, 1, 3, 2), (5, 5), (1, 1), pad2(0)))
    cases.append(("1x1 pad", random_kernel(rng, 1, 1, 3, 2), (5, 5), (1, 1), pad2(2)))
    return cases


SMALL = small_cases()


@pytest.mark.parametrize("idx", range(len(SMALL)), ids=[c[0] for c in SMALL])
def test_sound_at_small_shapes(idx):
    name, kernel, size, strides, padding = SMALL[idx]
    exact = exact_norm(kernel, size, strides, padding)
    auto = conv2d_spectral_bound(kernel, size, strides, padding)
    check_sound(auto, exact)
    assert auto <= exact * (1 + 1e-7) + 1e-300  # small => exact explicit computation
    for effort in ("low", "medium", "high"):
        b = conv2d_spectral_bound(kernel, size, strides, padding, method="torus", effort=effort)
        check_sound(b, exact)
        assert b <= exact * 1.3, (name, effort, b / exact)
    b = conv2d_spectral_bound(kernel, size, strides, padding, method="torus")
    assert b <= exact * 1.2, (name, b / exact)  # tiny images: boundary effects O(1/N^2)


def test_efforts_are_ordered():
    rng = np.random.default_rng(5)
    kernel = random_kernel(rng, 3, 3, 3, 3)
    vals = [
        conv2d_spectral_bound(kernel, (8, 8), padding=pad2(1), method="torus", effort=e)
        for e in ("low", "medium", "high")
    ]
    assert vals[0] >= vals[1] >= vals[2]


def test_random_search_for_counterexamples():
    """Many tiny random configurations (kernel, stride, padding, size); none may break."""
    rng = np.random.default_rng(6)
    for _ in range(120):
        kh, kw = rng.integers(1, 5, size=2)
        sh, sw = rng.integers(1, 4, size=2)
        H, W = rng.integers(2, 8, size=2)
        pads = tuple(tuple(int(v) for v in rng.integers(0, 3, size=2)) for _ in range(2))
        cin, cout = rng.integers(1, 3, size=2)
        kind = rng.integers(3)
        kernel = random_kernel(rng, kh, kw, cin, cout)
        if kind == 1:
            kernel = sparse_heavy_tailed(rng, kh, kw, cin, cout)
        elif kind == 2:
            kernel = np.sign(kernel)  # +-1 patterns (e.g. high frequencies)
        exact = exact_norm(kernel, (H, W), (sh, sw), pads)
        b = conv2d_spectral_bound(kernel, (H, W), (sh, sw), pads, method="torus", effort="low")
        check_sound(b, exact)
        if exact == 0.0:
            assert b == 0.0


def test_known_exact_cases():
    # 1-D "same" conv with [1, 1, 1]: the anti-periodic torus is exact
    k = np.ones((1, 3, 1, 1))
    for n in (5, 16):
        exact = 1 + 2 * np.cos(np.pi / (n + 1))
        b = conv2d_spectral_bound(k, (1, n), padding=((0, 0), (1, 1)), method="torus")
        assert exact <= b <= exact * (1 + 1e-7)
    # kernel == stride, no padding: block diagonal, exact
    rng = np.random.default_rng(7)
    k = rng.standard_normal((4, 4, 3, 8))
    exact = np.linalg.svd(k.reshape(-1, 8), compute_uv=False)[0]
    b = conv2d_spectral_bound(k, (16, 16), strides=(4, 4), method="torus")
    assert exact <= b <= exact * (1 + 1e-7)
    # identity kernel: norm exactly 1
    k = np.zeros((3, 3, 4, 4))
    k[1, 1] = np.eye(4)
    b = conv2d_spectral_bound(k, (16, 16), padding=pad2(1), method="torus")
    assert 1.0 <= b <= 1.0 + 1e-7


def test_degenerate_inputs():
    k = np.zeros((3, 3, 2, 2))
    assert conv2d_spectral_bound(k, (5, 5), padding=pad2(1)) == 0.0
    k = np.ones((5, 5, 1, 1))
    assert conv2d_spectral_bound(k, (2, 2)) == 0.0  # no output
    assert dense_spectral_bound(np.zeros((3, 4))) == 0.0
    assert conv2d_spectral_bound(np.full((3, 3, 1, 1), np.nan), (5, 5)) == np.inf


@pytest.mark.parametrize("scale", [1e-200, 1e-20, 1.0, 1e20, 1e200])
def test_extreme_scales(scale):
    rng = np.random.default_rng(8)
    k = rng.standard_normal((3, 3, 2, 2))
    exact = exact_norm(k, (6, 6), padding=pad2(1))
    for method in ("torus", "explicit"):
        b = conv2d_spectral_bound(k * scale, (6, 6), padding=pad2(1), method=method)
        assert np.isfinite(b)
        check_sound(b / scale, exact)
        assert b / scale <= exact * 1.1
    d = rng.standard_normal((7, 3))
    b = dense_spectral_bound(d * scale)
    s = np.linalg.svd(d, compute_uv=False)[0]
    check_sound(b / scale, s)
    assert b / scale <= s * (1 + 1e-7)


def test_tight_at_16x16():
    """At the backbone resolution the torus bound is within 1 % (here: a few channels)."""
    rng = np.random.default_rng(9)
    for kernel in (random_kernel(rng, 3, 3, 4, 4), identity_plus_small(rng, 4, 0.3)):
        exact = exact_norm(kernel, (16, 16), padding=pad2(1))
        b = conv2d_spectral_bound(kernel, (16, 16), padding=pad2(1), method="torus")
        check_sound(b, exact)
        assert b <= exact * 1.01, b / exact


def test_matrix_free_reference_at_moderate_width():
    """16x16x32 with the LiResNet kernel: compare with a float64 Lanczos (svds)."""
    sla = pytest.importorskip("scipy.sparse.linalg")
    rng = np.random.default_rng(10)
    c, L = 32, 18
    kernel = rng.standard_normal((3, 3, c, c)) / np.sqrt(9 * c) / np.sqrt(L)
    kernel[1, 1] += np.eye(c)
    size, pad = (16, 16), pad2(1)
    n = 16 * 16 * c
    op = sla.LinearOperator(
        (n, n),
        matvec=lambda v: S.conv2d_apply(v.reshape(16, 16, c), kernel, (1, 1), pad).ravel(),
        rmatvec=lambda v: S.conv2d_apply_transpose(
            v.reshape(16, 16, c), kernel, size, (1, 1), pad
        ).ravel(),
        dtype=np.float64,
    )
    ref = sla.svds(op, k=1, tol=1e-12, return_singular_vectors=False, random_state=0)[0]
    b = conv2d_spectral_bound(kernel, size, padding=pad)
    check_sound(b, ref)
    assert b <= ref * 1.005, b / ref


# --------------------------------------------------------------------------------------------
# dense
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(1, 1), (5, 3), (3, 5), (64, 64), (300, 10), (10, 300)])
def test_dense_sound_and_tight(shape):
    rng = np.random.default_rng(11)
    for k in (
        rng.standard_normal(shape),
        np.outer(rng.standard_normal(shape[0]), rng.standard_normal(shape[1])),  # rank 1
        np.linalg.qr(rng.standard_normal((max(shape), max(shape))))[0][: shape[0], : shape[1]],
    ):
        s = np.linalg.svd(k, compute_uv=False)[0]
        b = dense_spectral_bound(k)
        check_sound(b, s)
        assert b <= s * (1 + 1e-7)


def test_dense_accepts_float32_and_lists():
    k = np.arange(6, dtype=np.float32).reshape(2, 3)
    s = np.linalg.svd(k.astype(np.float64), compute_uv=False)[0]
    assert s <= dense_spectral_bound(k) <= s * (1 + 1e-7)
    assert s <= dense_spectral_bound(k.tolist()) <= s * (1 + 1e-7)


@pytest.mark.parametrize("kshape,size,strides,padding", CONV_CONFIGS)
def test_explicit_gram_matches_operator_matrix(kshape, size, strides, padding):
    rng = np.random.default_rng(12)
    kernel = rng.standard_normal(kshape)
    A = conv2d_operator_matrix(kernel, size, strides, padding)
    g, _ = S.explicit_gram(kernel, size, strides, padding)
    ref = A.T @ A if A.shape[1] <= A.shape[0] else A @ A.T
    np.testing.assert_allclose(g, ref, rtol=1e-12, atol=1e-12)


def test_numpy_fallback_without_scipy(monkeypatch):
    """The library module works with numpy alone (scipy's zherk is only a speed-up)."""
    rng = np.random.default_rng(13)
    kernel = identity_plus_small(rng, 3, 0.5)
    with_blas = conv2d_spectral_bound(kernel, (8, 8), padding=pad2(1), method="torus")
    monkeypatch.setattr(S, "_zherk", None)
    without = conv2d_spectral_bound(kernel, (8, 8), padding=pad2(1), method="torus")
    np.testing.assert_allclose(with_blas, without, rtol=1e-12)


def test_public_api_and_argument_forms():
    rng = np.random.default_rng(14)
    kernel = rng.standard_normal((3, 3, 2, 2)).astype(np.float32)
    b1 = conv2d_spectral_bound(kernel, (6, 6), (1, 1), ((1, 1), (1, 1)))
    b2 = conv2d_spectral_bound(kernel, [6, 6], 1, 1)  # scalar stride / padding shorthands
    b3 = conv2d_spectral_bound(kernel.tolist(), (6, 6), strides=[1, 1], padding=[[1, 1], [1, 1]])
    assert b1 == b2 == b3
    with pytest.raises(ValueError):
        conv2d_spectral_bound(kernel, (6, 6), method="power")
    with pytest.raises(ValueError):
        conv2d_spectral_bound(kernel, (6, 6), effort="max")
    with pytest.raises(ValueError):
        conv2d_spectral_bound(kernel[0], (6, 6))
    with pytest.raises(ValueError):
        dense_spectral_bound(kernel)


def test_sound_bounds_in_parallel_threads_equal_the_sequential_ones():
    """`bounds.sound_bounds` (what a GloroModel's sound bound and `ConvergeBounds` use) runs the
    layers in threads: the sequential values up to the rounding of the Gram products (matmul in
    threads, zherk alone), whatever the number of workers."""
    import keras

    import gloro_keras as gk
    from gloro_keras.bounds import sound_bounds

    keras.utils.set_random_seed(5)
    model = gk.GloroLiResNet(L=3, W=8, num_classes=4, input_shape=(8, 8, 3), epsilon=0.1, dense_width=16)
    rng = np.random.default_rng(5)
    for w in model.network.trainable_weights:  # away from the initial, near-identity blocks
        w.assign(w.value + 0.05 * rng.standard_normal(w.shape).astype("float32"))
    layers = model.bounded_layers
    sequential = [float(layer.sound_bound()) for layer in layers]
    assert len(set(sequential)) == len(layers)
    for workers in (None, 2, 3, len(layers)):  # threads form the Gram matrices by matmul, not zherk
        assert sound_bounds(layers, workers=workers) == pytest.approx(sequential, rel=1e-14)
    assert sound_bounds([], workers=4) == []
    from gloro_keras.ops import FLOAT64_SAFETY

    k, constant = model.lipschitz_bound("sound"), model._plan.constant  # the body's parameter-free layers
    assert k == pytest.approx(constant * (1.0 + FLOAT64_SAFETY) * np.prod(sequential), rel=1e-14)


def test_threads_form_gram_matrices_without_holding_the_gil(monkeypatch):
    """Inside `gil_free_grams` (each `sound_bounds` worker thread) the Gram matrices come from
    numpy's matmul, not scipy's zherk (which holds the GIL and serializes the threads); the
    bound is the same up to the products' rounding."""
    from gloro_keras.bounds import sound_bounds

    kernel = np.random.default_rng(2).standard_normal((3, 3, 6, 6))
    alone = conv2d_spectral_bound(kernel, (8, 8), padding=pad2(1), method="torus")

    def held(*args, **kwargs):
        raise AssertionError("zherk called inside gil_free_grams")

    monkeypatch.setattr(S, "_zherk", held)
    with S.gil_free_grams():
        assert conv2d_spectral_bound(kernel, (8, 8), padding=pad2(1), method="torus") == pytest.approx(alone, rel=1e-14)
    with pytest.raises(AssertionError, match="zherk"):
        conv2d_spectral_bound(kernel, (8, 8), padding=pad2(1), method="torus")

    class Layer:
        def sound_bound(self):
            return conv2d_spectral_bound(kernel, (8, 8), padding=pad2(1), method="torus")

    assert sound_bounds([Layer(), Layer()], workers=2, on_device=False) == pytest.approx([alone] * 2, rel=1e-14)


# --------------------------------------------------------------------------------------------
# the explicit method's Cholesky certificate (orders >= S._CHOLESKY_MIN_DIM)
# --------------------------------------------------------------------------------------------

STEM = ((5, 5, 3, 16), (16, 16), (2, 2), pad2(2))  # a strided stem: input side of order 768


def _stem_kernels(rng):
    q = np.linalg.qr(rng.standard_normal((75, 75)))[0][:, :16].reshape(5, 5, 3, 16)
    return {
        "random": rng.standard_normal(STEM[0]),
        "orthonormal columns (clustered spectrum)": q,
        "rank 1": np.einsum("abc,o->abco", rng.standard_normal((5, 5, 3)), rng.standard_normal(16)),
    }


@pytest.mark.parametrize("name", ["random", "orthonormal columns (clustered spectrum)", "rank 1"])
def test_explicit_bound_by_cholesky_is_sound_and_as_tight_as_eigvalsh(name, monkeypatch):
    """The stem's exact norm (the explicit method) certified by one Cholesky factorization at a
    Lanczos target: above the exact norm (SVD of the operator matrix), within 6e-6 of it (the
    target's margin: 1e-5 in lambda) and of the eigvalsh value the smaller orders keep."""
    kernel = _stem_kernels(np.random.default_rng(21))[name]
    _, size, strides, padding = STEM
    assert min(size[0] * size[1] * 3, 8 * 8 * 16) >= S._CHOLESKY_MIN_DIM
    exact = exact_norm(kernel, size, strides, padding)
    calls = []
    real = S.cholesky_lambda_max
    monkeypatch.setattr(S, "cholesky_lambda_max", lambda g, t: calls.append(t) or real(g, t))
    by_cholesky = conv2d_spectral_bound(kernel, size, strides, padding)
    assert calls, "the Cholesky certificate did not run"
    monkeypatch.setattr(S, "_CHOLESKY_MIN_DIM", 10 ** 9)
    by_eigvalsh = conv2d_spectral_bound(kernel, size, strides, padding)
    check_sound(by_cholesky, exact)
    assert by_cholesky <= exact * (1 + 6e-6), by_cholesky / exact
    assert by_cholesky == pytest.approx(by_eigvalsh, rel=6e-6)


def test_cholesky_certificate_needs_a_target_above_lambda_max():
    """`cholesky_lambda_max` proves nothing below the top eigenvalue (the factorization fails),
    nor exactly at it (a zero pivot); just above it, it returns a bound within 1e-7 of it."""
    rng = np.random.default_rng(22)
    a = rng.standard_normal((700, 600))
    g = a.T @ a
    lam = float(np.linalg.eigvalsh(g)[-1])
    assert S.cholesky_lambda_max(g, lam * (1 - 1e-6)) is None
    assert S.cholesky_lambda_max(g, 0.0) is None
    up = S.cholesky_lambda_max(g, lam * (1 + 1e-8))
    assert up is not None and lam <= up <= lam * (1 + 1e-7)
    eye = 3.0 * np.eye(600)  # lambda_max exactly at t: B is the zero matrix
    assert S.cholesky_lambda_max(eye, 3.0) is None
    assert 3.0 <= S.cholesky_lambda_max(eye, 3.0 * (1 + 1e-12)) <= 3.0 * (1 + 1e-9)
    low = np.tril(g)  # only one triangle is read, and the bound holds for the matrix with either
    skew = low + np.triu(g, 1) * (1 + 1e-9 * rng.standard_normal(g.shape))
    up = S.cholesky_lambda_max(skew, lam * (1 + 1e-7))
    for sym in (np.tril(skew) + np.tril(skew, -1).T, np.triu(skew) + np.triu(skew, 1).T):
        assert up >= float(np.linalg.eigvalsh(sym)[-1])


def test_failed_cholesky_targets_fall_back_to_eigvalsh(monkeypatch):
    """A Lanczos target below the top eigenvalue (here: forced to half of it) fails at every
    margin; the bound is then eigvalsh's, as sound as ever."""
    kernel = _stem_kernels(np.random.default_rng(23))["random"]
    _, size, strides, padding = STEM
    exact = exact_norm(kernel, size, strides, padding)
    attempts = []
    real = S.lanczos_top
    monkeypatch.setattr(S, "lanczos_top", lambda g, steps: attempts.append(steps) or 0.5 * real(g, steps))
    bound = conv2d_spectral_bound(kernel, size, strides, padding)
    assert attempts == [S._LANCZOS_STEPS]
    check_sound(bound, exact)
    monkeypatch.setattr(S, "_CHOLESKY_MIN_DIM", 10 ** 9)
    assert bound == conv2d_spectral_bound(kernel, size, strides, padding)


def test_lanczos_target_is_below_and_near_the_top_eigenvalue():
    rng = np.random.default_rng(24)
    a = rng.standard_normal((900, 800))
    g = a.T @ a
    lam = float(np.linalg.eigvalsh(g)[-1])
    theta = S.lanczos_top(g, 60)
    assert lam * (1 - 1e-6) <= theta <= lam * (1 + 1e-12)
    assert S.lanczos_top(np.diag([1.0, 2.0, 5.0]), 10) == pytest.approx(5.0, rel=1e-14)  # steps > order
