"""Sound bounds computed on the device (gloro_keras.bounds.device), in JAX and in TensorFlow: the
Cholesky certificate at its boundary, agreement with the host bounds and exact norms, the host
fallback, the models' use. Without a GPU each framework's default device is the CPU: the same
programs as on a GPU."""
import importlib.util

import numpy as np
import pytest

from gloro_keras.bounds import conv2d_spectral_bound, device, sound_bounds
from gloro_keras.bounds import spectral as S
from tests.test_spectral_bounds import check_sound, exact_norm, pad2

FRAMEWORKS = [pytest.param(f, marks=pytest.mark.skipif(importlib.util.find_spec(f) is None, reason=f"no {f}"))
              for f in ("jax", "tensorflow")]


@pytest.fixture(params=FRAMEWORKS)
def framework(request, monkeypatch):
    """Run the device programs in this framework, whatever Keras's backend."""
    monkeypatch.setattr(device, "framework", lambda: request.param)
    return request.param


def hadamard(n):
    h = np.ones((1, 1))
    while h.shape[0] < n:
        h = np.block([[h, h], [h, -h]])
    return h


def exact_spectrum_gram(n, eigenvalues, complex_):
    """A Hermitian matrix whose float64 entries are exact and whose eigenvalues are exactly
    `eigenvalues` (small integers): H diag(λ) Hᵀ / n for a Hadamard H (n a power of two), then
    conjugated by a diagonal of powers of i when complex."""
    h = hadamard(n)
    g = (h * np.asarray(eigenvalues, dtype=np.float64)) @ h.T / n
    if complex_:
        p = 1j ** np.arange(n)
        g = (p[:, None] * g) * np.conj(p)[None, :]
    return g


@pytest.mark.parametrize("complex_", [False, True])
def test_cholesky_certificate_holds_at_the_boundary(complex_, framework):
    """λ_max(G) ≤ t + ε wherever ε is finite, for t from 1e-3 below λ_max to above it, at a
    matrix whose eigenvalues are known exactly; and with *any* factor R (here one of t I - G + c I,
    as a wrong or inaccurate Cholesky routine might return) the residual term covers the gap."""
    n, lam_max = 32, 7.0
    eig = np.concatenate([[lam_max, lam_max], np.arange(1, n - 1) % 6 + 1.0])
    g = exact_spectrum_gram(n, eig, complex_)
    assert np.abs(g - np.conj(g.T)).max() == 0.0
    prog = device._programs(framework)
    with prog.context():
        ts = lam_max * (1.0 - 2.0 ** -np.arange(10, 60, 2, dtype=np.float64))
        ts = np.concatenate([ts, [lam_max, lam_max * (1 + 1e-12), lam_max * 1.01]])
        batch = prog.asarray(np.ascontiguousarray(np.broadcast_to(g, (len(ts), n, n))))
        eps = np.asarray(prog.certify(batch, prog.asarray(ts)), np.float64)
        top = np.asarray(prog.top_eigenvalue(batch[:1]), np.float64)
        # factors of t I - G + c I: R Rᴴ ⪰ 0 but ≠ t I - G; t below λ_max by up to c
        cs = np.array([1e-12, 1e-6, 1e-3, 0.5, 3.0])
        t_wrong = lam_max - cs / 2
        b = t_wrong[:, None, None] * np.eye(n) - g + cs[:, None, None] * np.eye(n)
        r = np.linalg.cholesky(b)
        eps_wrong = np.asarray(prog.with_factor(prog.asarray(np.ascontiguousarray(np.broadcast_to(g, (len(cs), n, n)))),
                                                prog.asarray(t_wrong), prog.asarray(r)), np.float64)
    finite = np.isfinite(eps)
    assert np.all(ts[finite] + eps[finite] >= lam_max), (ts[finite] - lam_max, eps[finite])
    assert finite[-1] and eps[-1] < 1e-10 * lam_max
    # 1e-3 below λ_max there is no Cholesky factor: JAX returns NaN (ε = inf); TensorFlow's
    # complex factor on a CPU came back finite but wrong, and its residual still covers the gap
    assert not finite[0] or ts[0] + eps[0] >= lam_max
    assert top[0] == pytest.approx(lam_max, rel=1e-13)  # the target's eigensolver, in float64
    assert np.all(np.isfinite(eps_wrong))
    assert np.all(t_wrong + eps_wrong >= lam_max), (t_wrong - lam_max, eps_wrong)
    assert np.all(eps_wrong < cs * np.sqrt(n) * 1.01 + 1e-10)  # ‖c I‖_F: not much more than that


def test_a_matrix_ranked_too_low_is_certified_at_a_target_of_its_own(framework):
    """The torus's target t comes from the matrices its Rayleigh quotients rank highest; one ranked
    too low (λ_max above t: no Cholesky factor, or a finite wrong one) is certified once more at
    its own eigenvalue, not left at t."""
    n = 16
    eig7, eig8 = np.full(n, 1.0), np.full(n, 1.0)
    eig7[:2], eig8[:3] = 7.0, 8.0
    prog = device._programs(framework)
    with prog.context():
        batch = prog.asarray(np.stack([exact_spectrum_gram(n, eig7, True), exact_spectrum_gram(n, eig8, True)]))
        top, _ = device._top(batch, np.array([7.0, 1.0]), prog, k=1)  # the ranking is wrong
        t = device._target(top, prog)
        assert 7.0 <= t < 7.0 * (1 + 1e-7)
        out = device._certified(batch, t, prog)
    assert 7.0 <= out[0] < 7.0 * (1 + 1e-7)
    assert 8.0 <= out[1] < 8.0 * (1 + 1e-7)


GEOMETRIES = [  # kernel shape, input size, strides, padding, method
    ((3, 3, 4, 6), (8, 8), (1, 1), pad2(1), "torus"),
    ((3, 3, 6, 4), (9, 7), (1, 1), pad2(1), "torus"),
    ((3, 3, 5, 3), (7, 7), (2, 2), pad2(1), "torus"),
    ((4, 2, 3, 5), (6, 8), (2, 1), ((1, 2), (0, 1)), "torus"),
    ((3, 3, 4, 6), (8, 8), (1, 1), pad2(1), "explicit"),
    ((3, 3, 3, 8), (8, 8), (2, 2), pad2(1), "auto"),
]


@pytest.mark.parametrize("kshape,size,strides,padding,method", GEOMETRIES)
def test_device_bound_is_sound_and_as_tight_as_the_hosts(kshape, size, strides, padding, method, framework):
    rng = np.random.default_rng(sum(kshape) + size[0])
    kernel = rng.standard_normal(kshape) * 0.3
    exact = exact_norm(kernel, size, strides, padding)
    for effort in ("low", "medium"):
        host = conv2d_spectral_bound(kernel, size, strides, padding, method=method, effort=effort)
        dev = conv2d_spectral_bound(kernel, size, strides, padding, method=method, effort=effort, on_device=True)
        check_sound(dev, exact)
        # the device's "medium" tries all four {0, π}-twisted tori (the host two): never looser
        # than the host's by more than the target's margin (5e-9) and the rounding terms
        assert dev <= host * (1 + 1e-7), (dev, host)
        if effort == "low" or method == "explicit":  # the same tori: equal but for the host's
            assert dev >= host * (1 - 3e-8), (dev, host)  # eigensolver slack (1e-8)


def test_device_bound_falls_back_to_the_host_where_nothing_is_certified(monkeypatch, framework):
    """A device whose certificates all fail (ε = inf) still yields a sound bound: the host's
    eigenvalue bound for every frequency and for the explicit Gram matrix."""
    kernel = np.random.default_rng(3).standard_normal((3, 3, 4, 5))
    size, padding = (8, 8), pad2(1)
    prog = device._programs(framework)
    monkeypatch.setattr(device, "_programs", lambda: prog._replace(certify=lambda g, t: prog.certify(g, t) * np.inf))
    for method in ("torus", "explicit"):
        host = conv2d_spectral_bound(kernel, size, (1, 1), padding, method=method, effort="low")
        dev = conv2d_spectral_bound(kernel, size, (1, 1), padding, method=method, effort="low", on_device=True)
        check_sound(dev, exact_norm(kernel, size, (1, 1), padding))
        assert dev == pytest.approx(host, rel=2e-8)  # the host rounds its final sqrt up by 1e-8


def test_models_sound_bounds_on_device_match_the_hosts(framework):
    """`sound_bounds(on_device=True)`: the convolutions on the device, the rest on the host, close
    to the host values; "auto" stays on the host without a GPU; a layer whose `sound_bound` takes
    no `on_device` is asked the old way."""
    import keras

    import gloro_keras as gk

    keras.utils.set_random_seed(7)
    model = gk.GloroLiResNet(L=2, W=8, num_classes=4, input_shape=(8, 8, 3), epsilon=0.1, dense_width=16)
    rng = np.random.default_rng(7)
    for w in model.network.trainable_weights:
        w.assign(w.value + 0.05 * rng.standard_normal(w.shape).astype("float32"))
    layers = model.bounded_layers

    class OldStyle:
        def sound_bound(self):
            return 2.5

    host = sound_bounds(layers, on_device=False)
    dev = sound_bounds(layers + [OldStyle()], on_device=True)
    assert dev[-1] == 2.5
    for d, h in zip(dev, host):
        assert d == pytest.approx(h, rel=1e-7)
    assert any(d != h for d, h in zip(dev, host))  # the convolutions did run on the device path
    assert sound_bounds(layers) == (dev[:-1] if device.gpu_available() else host)  # "auto"
    with pytest.raises(ValueError, match="on_device"):
        sound_bounds(layers, on_device="yes")


def test_auto_falls_back_to_the_host_when_the_device_fails(monkeypatch):
    """On a GPU "auto" must never cost a validation: a device failure (e.g. out of memory) warns
    and the host computes the bounds; on_device=True raises it."""
    from gloro_keras.bounds import spectral

    kernel = np.random.default_rng(4).standard_normal((3, 3, 4, 4))

    class Layer:
        def sound_bound(self, on_device=False):
            return conv2d_spectral_bound(kernel, (8, 8), padding=pad2(1), on_device=on_device)

    def broken(*args, **kwargs):
        raise RuntimeError("RESOURCE_EXHAUSTED: out of memory")

    monkeypatch.setattr(device, "gpu_available", lambda: True)
    monkeypatch.setattr(device, "torus_sigma", broken)
    monkeypatch.setattr(device, "explicit_bound", broken)
    with pytest.warns(RuntimeWarning, match="out of memory"):
        values = sound_bounds([Layer(), Layer()], workers=1)
    assert values == [spectral.conv2d_spectral_bound(kernel, (8, 8), padding=pad2(1))] * 2
    with pytest.raises(RuntimeError, match="out of memory"):
        sound_bounds([Layer()], on_device=True)


def test_device_bound_refuses_what_the_host_refuses():
    kernel = np.ones((3, 3, 2, 2))
    with pytest.raises(ValueError):
        conv2d_spectral_bound(kernel, (6, 6), effort="max", on_device=True)
    assert conv2d_spectral_bound(kernel * 0, (6, 6), on_device=True) == 0.0
    assert conv2d_spectral_bound(kernel * np.inf, (6, 6), on_device=True) == float("inf")
    # a single polyphase tap is a small dense bound, computed on the host either way
    assert conv2d_spectral_bound(kernel, (6, 6), (3, 3), on_device=True) == conv2d_spectral_bound(kernel, (6, 6), (3, 3))
    assert S._EXPLICIT_MAX_DIM >= 3072


def test_device_lanczos_target_matches_the_hosts(framework):
    """The device's Lanczos (the explicit Gram matrix's target from order 512) gives the host's
    Ritz value: below the top eigenvalue and within 1e-6 of it here."""
    rng = np.random.default_rng(31)
    a = rng.standard_normal((700, 600))
    g = a.T @ a
    lam = float(np.linalg.eigvalsh(g)[-1])
    prog = device._programs(framework)
    v0 = np.zeros((61, 600))
    v0[0] = np.random.default_rng(0).standard_normal(600)
    with prog.context():
        theta = float(np.asarray(prog.lanczos_top(prog.asarray(g), prog.asarray(v0))))
    assert theta == pytest.approx(S.lanczos_top(g, 60), rel=1e-10)
    assert lam * (1 - 1e-6) <= theta <= lam * (1 + 1e-12)


def test_device_explicit_bound_of_a_stem_certifies_at_the_lanczos_target(monkeypatch, framework):
    """A strided stem's explicit Gram matrix (order 768) on the device: certified at the Lanczos
    target, no eigensolver call; sound against the SVD and within 6e-6 of the host's bound."""
    from tests.test_spectral_bounds import STEM, _stem_kernels

    _, size, strides, padding = STEM
    prog = device._programs(framework)
    monkeypatch.setattr(device, "_programs", lambda: prog._replace(top_eigenvalue=None))  # must not be needed
    for name, kernel in _stem_kernels(np.random.default_rng(32)).items():
        exact = exact_norm(kernel, size, strides, padding)
        dev = conv2d_spectral_bound(kernel, size, strides, padding, on_device=True)
        host = conv2d_spectral_bound(kernel, size, strides, padding)
        check_sound(dev, exact)
        assert dev == pytest.approx(host, rel=6e-6), name
