"""Sound convolution bounds on a GPU (JAX or TensorFlow): Gram matrices certified by Cholesky factors.

The host bounds (`spectral`) take one LAPACK ``eigvalsh`` per torus frequency; on a GPU machine
that host work outlasted a training epoch (216 % of one at L18W256 on an H200). Here the work is
batched products and Cholesky factorizations in float64 / complex128 on the framework's default
device (Keras's backend: TensorFlow, else JAX), and the bound trusts no eigensolver.

Certificate. For a Hermitian ``G`` (a computed Gram matrix, n×n) and a float ``t``, let
``B = fl(t I - G)`` (only the diagonal rounds), ``R`` *any* matrix the framework's Cholesky
returns for ``B`` and ``D = fl(B - fl(R R^H))``. As ``R R^H ⪰ 0``:

    λ_max(G) ≤ t + ‖B - R R^H‖₂ + u max_i |b_ii|,
    ‖B - R R^H‖₂ ≤ ‖D‖_F (1 + 2u) + 8 (n + 4) u ‖R‖_F²

(the last term bounds the product's rounding for any summation order, 3M complex
multiplication included; the Frobenius norms carry a factor 1 + 1e-6 for their own rounding).
Nothing is assumed of the Cholesky routine: a failed (NaN) or inaccurate factor only yields a
large or non-finite residual; such a matrix is retried once at a target of its own, then bounded
on the host (`spectral`). ``t``, one per torus, is a target: `POWER_STEPS` power iterations rank
the frequencies, the framework's eigensolver takes the largest eigenvalue of the `TOP`
highest-ranked ones, and ``t`` is that times ``1 + MARGIN``. The bound is then within about 5e-9
relative of the one with exact eigenvalues, plus the rounding terms. The one large explicit Gram
matrix (order from ``spectral._CHOLESKY_MIN_DIM``, e.g. a 32×32×3 stem's 3072) takes its target
from `Programs.lanczos_top` instead (150 Lanczos steps on the device; ``θ (1 + 1e-8)``, else
``θ (1 + 1e-5)``), where an eigensolver's O(n³) reduction would dominate; its eigensolver remains
the fallback.

Entry points, called by `spectral.conv2d_spectral_bound(..., on_device=True)` after it has
validated the arguments and picked the method: `torus_sigma` and `explicit_bound`.

The rest is the host analysis (`spectral`): the Gram matrix's rounding
(``8 (c + 4) u ‖S‖_F²`` here, generous for any GPU product), the symbol's (twice
``spectral._symbol_abs_err``: the phase factors are computed on the host as there, the
contractions on the device), the exact power-of-two scaling and the torus geometry.
``effort="low"`` evaluates the periodic torus of minimal size; "medium" and "high" all four
{0, π}-twisted tori of that size (the host's "medium" evaluates two of them).
"""
from __future__ import annotations

import collections
import contextlib
import functools
import math

import numpy as np

from gloro_keras.bounds import spectral as sp

_U = 2.0 ** -53
POWER_STEPS = 32  # power iterations that rank a torus's frequencies (Rayleigh quotients)
TOP = 8  # frequencies with the largest quotients whose eigenvalues set the torus's target t
MARGIN = 1e-8  # t = λ_max of those (the framework's eigensolver) × (1 + MARGIN)
RESIDUAL = 1e-7  # a certificate whose residual term exceeds RESIDUAL · t counts as failed
_CHUNK_BYTES = 2 ** 27  # per array of the batch (~6 such arrays live at once)


def gpu_available():
    """Whether Keras's backend (JAX or TensorFlow) has a GPU to compute on (GPUs have float64
    arithmetic; TPUs do not, so they keep the host bounds)."""
    import keras

    backend = keras.backend.backend()
    if backend == "jax":
        import jax

        return jax.default_backend() == "gpu"
    if backend == "tensorflow":
        import tensorflow as tf

        return bool(tf.config.list_logical_devices("GPU"))
    return False


def framework():
    """The framework the device programs use: Keras's backend where it is TensorFlow, else JAX."""
    import keras

    return "tensorflow" if keras.backend.backend() == "tensorflow" else "jax"


Programs = collections.namedtuple(
    "Programs", "symbol_grams top_eigenvalue lanczos_top certify with_factor asarray take concat context")


class _JaxOps:
    def __init__(self):
        try:
            import jax
            import jax.numpy as jnp
        except ImportError as e:  # pragma: no cover
            raise ImportError("Sound bounds on the device (on_device=True) need JAX or TensorFlow: pip install jax") from e
        self.np, self.jit = jnp, jax.jit
        self.context = lambda: jax.enable_x64(True)
        self.asarray, self.take, self.cast = jnp.asarray, (lambda x, i: x[i]), (lambda x, like: x.astype(like.dtype))
        self.concat = jnp.concatenate
        self.tril_strict = lambda x: jnp.tril(x, -1)
        self.diag = lambda x: jnp.diagonal(x, axis1=-2, axis2=-1)
        self.mT = lambda x: jnp.swapaxes(x, -1, -2)
        self.sum, self.max = jnp.sum, jnp.max
        self.isfinite, self.is_complex = jnp.isfinite, jnp.iscomplexobj
        self.cholesky = lambda b: jnp.linalg.cholesky(b, symmetrize_input=False)
        self.eigvalsh = jnp.linalg.eigvalsh
        self.fori_loop = jax.lax.fori_loop
        self.row = lambda x, i: x[i]
        self.set_row = lambda x, i, v: x.at[i].set(v)


class _TensorFlowOps:
    def __init__(self):
        import tensorflow as tf

        self.np, self.jit, self.context = tf.experimental.numpy, tf.function, contextlib.nullcontext
        self.asarray, self.take, self.cast = tf.convert_to_tensor, tf.gather, (lambda x, like: tf.cast(x, like.dtype))
        self.concat = lambda xs: tf.concat(xs, axis=0)
        self.tril_strict = lambda x: tf.linalg.band_part(x, -1, 0) - tf.linalg.diag(tf.linalg.diag_part(x))
        self.diag, self.mT = tf.linalg.diag_part, tf.linalg.matrix_transpose
        self.sum = lambda x, axis: tf.reduce_sum(x, axis=axis)
        self.max = lambda x, axis: tf.reduce_max(x, axis=axis)
        self.is_complex = lambda x: x.dtype.is_complex
        self.isfinite = lambda x: (tf.math.is_finite(tf.math.real(x)) & tf.math.is_finite(tf.math.imag(x))
                                   if x.dtype.is_complex else tf.math.is_finite(x))
        self.cholesky, self.eigvalsh = tf.linalg.cholesky, tf.linalg.eigvalsh
        self.fori_loop = lambda lo, hi, body, init: tf.while_loop(
            lambda i, _: i < hi, lambda i, state: (i + 1, body(i, state)), (tf.constant(lo), init))[1]
        self.row = tf.gather
        self.set_row = lambda x, i, v: tf.tensor_scatter_nd_update(x, tf.reshape(i, (1, 1)), v[None])


@functools.lru_cache(maxsize=None)
def _programs(name=None):
    """The compiled device steps in framework `name` (default `framework()`), traced and run in
    its float64 context."""
    name = name or framework()
    o = _TensorFlowOps() if name == "tensorflow" else _JaxOps()
    xp = o.np

    def real(x):
        return xp.real(x) if o.is_complex(x) else x

    def sq(x):
        return xp.real(x) ** 2 + xp.imag(x) ** 2 if o.is_complex(x) else x * x

    def hermitian(g):
        low = o.tril_strict(g)
        d = real(o.diag(g))
        return low + xp.conj(o.mT(low)) + o.cast(d[..., None] * xp.eye(g.shape[-1], dtype=d.dtype), g)

    def rayleigh(g, v):
        v = v / o.cast(xp.sqrt(o.sum(sq(v), -1))[..., None], v)
        for _ in range(POWER_STEPS):
            w = xp.einsum("...ij,...j->...i", g, v)
            nrm = xp.sqrt(o.sum(sq(w), -1))[..., None]
            v = xp.where(nrm > 0, w / o.cast(xp.where(nrm > 0, nrm, 1.0), w), v)
        return real(xp.einsum("...i,...ij,...j->...", xp.conj(v), g, v))

    def shifted(g, t):
        diag = t[..., None] - real(o.diag(g))
        eye = xp.eye(g.shape[-1], dtype=bool)
        return xp.where(eye, o.cast(diag[..., None], g), -hermitian(g)), diag

    @o.jit
    def symbol_grams(e1, e2, kp, v0):
        """Per frequency: Hermitian Gram G = S S^H of the smaller side, ‖S‖_F², a Rayleigh quotient."""
        s = xp.einsum("fa,fb,abio->fio", e1, e2, kp)
        if s.shape[1] > s.shape[2]:
            s = o.mT(s)
        g = hermitian(xp.matmul(s, xp.conj(o.mT(s))))
        return g, o.sum(sq(s), (1, 2)), rayleigh(g, v0)

    @o.jit
    def top_eigenvalue(g):
        """λ_max of each matrix by the framework's eigensolver: a target for `certify`, not a bound."""
        return real(o.eigvalsh(hermitian(g))[..., -1])

    @o.jit
    def lanczos_top(g, v0):
        """`spectral.lanczos_top` on the device: the largest Ritz value of the real symmetric g
        after len(v0) - 1 Lanczos steps from v0 (full reorthogonalization; a target, not a bound)."""
        steps = v0.shape[0] - 1
        basis = xp.zeros((steps + 1, v0.shape[1]), dtype=g.dtype)
        basis = o.set_row(basis, 0, v0[0] / xp.sqrt(o.sum(v0[0] * v0[0], -1)))
        coef = xp.zeros((2, steps), dtype=g.dtype)  # the tridiagonal's diagonal and off-diagonal

        def step(j, state):
            basis, coef = state
            q = o.row(basis, j)
            w = xp.matmul(g, q[:, None])[:, 0]
            a = o.sum(q * w, -1)
            for _ in range(2):  # classical Gram-Schmidt, twice; rows past j are still zero
                w = w - xp.matmul(o.mT(basis), xp.matmul(basis, w[:, None]))[:, 0]
            b = xp.sqrt(o.sum(w * w, -1))
            alive = b > 1e-12 * xp.abs(a)  # else an invariant subspace: the Ritz values are exact
            basis = o.set_row(basis, j + 1, xp.where(alive, w / xp.where(alive, b, 1.0), 0.0 * w))
            coef = o.set_row(coef, 0, o.set_row(o.row(coef, 0), j, a))
            coef = o.set_row(coef, 1, o.set_row(o.row(coef, 1), j, xp.where(alive, b, 0.0 * b)))
            return basis, coef

        _, coef = o.fori_loop(0, steps, step, (basis, coef))
        diag, off = o.row(coef, 0), o.row(coef, 1)  # the band's last row is zero: off[-1] unused
        band = xp.eye(steps, steps, 1, dtype=g.dtype)
        tri = diag[:, None] * xp.eye(steps, dtype=g.dtype) + off[:, None] * band + o.mT(off[:, None] * band)
        return o.eigvalsh(tri)[-1]

    @o.jit
    def with_factor(g, t, r):
        """ε with λ_max(g) ≤ t + ε for *any* n×n matrix r (module docstring); inf if not finite."""
        n = g.shape[-1]
        b, diag = shifted(g, t)
        d = b - xp.matmul(r, xp.conj(o.mT(r)))
        fro_d = xp.sqrt(o.sum(sq(d), (-2, -1)))
        fro_r2 = o.sum(sq(r), (-2, -1))
        eps = (fro_d * (1 + 2 * _U) + 8 * (n + 4) * _U * fro_r2 + _U * o.max(xp.abs(diag), -1)) * (1 + 1e-6)
        return xp.where(o.isfinite(eps), eps, np.inf)

    @o.jit
    def certify(g, t):
        """`with_factor` for the framework's Cholesky factor of t I - g."""
        return with_factor(g, t, o.cholesky(shifted(g, t)[0]))

    return Programs(symbol_grams, top_eigenvalue, lanczos_top, certify, with_factor, o.asarray, o.take,
                    o.concat, o.context)


def _start_vectors(batch, n, complex_):
    rng = np.random.default_rng(0)
    v = rng.standard_normal((batch, n))
    if complex_:
        v = v + 1j * rng.standard_normal((batch, n))
    return v


def _top(g, lam, programs, k=TOP):
    """The ``k`` matrices of the device batch ``g`` with the largest ``lam``, and their ``lam``."""
    order = np.argsort(np.nan_to_num(lam, nan=-np.inf))[::-1][:k]
    return programs.take(g, programs.asarray(order)), lam[order]


def _target(top, programs):
    """``t`` just above the largest eigenvalue of the matrices ``top`` (the framework's solver,
    times 1 + `MARGIN`): where the Cholesky factors exist, and a target, not a bound."""
    lam = np.asarray(programs.top_eigenvalue(top), dtype=np.float64)
    return max(float(np.nanmax(lam)) if np.isfinite(lam).any() else 0.0, 1e-300) * (1.0 + MARGIN)


def _certify_at(g, t, programs):
    """Per matrix of the device batch ``g``: a float64 upper bound on λ_max from the certificate
    at ``t`` (module docstring); inf where it fails or its residual exceeds `RESIDUAL` · t (a
    backward-stable Cholesky factor leaves about n·u·t; more means no factor: TensorFlow's complex
    Cholesky on a CPU can return a finite one for a matrix that is not positive definite)."""
    t = sp._round_up(t)
    eps = np.asarray(programs.certify(g, programs.asarray(np.full(g.shape[0], t))), dtype=np.float64)
    out = np.full(len(eps), np.inf)
    fin = np.isfinite(eps) & (eps <= RESIDUAL * t)
    out[fin] = [sp._round_up((t + e) * (1.0 + 1e-12)) for e in eps[fin]]
    return out


def _certified(g, t, programs):
    """`_certify_at` at ``t``; the matrices it leaves uncertified (an eigenvalue above ``t``: their
    Rayleigh quotients ranked them too low) once more at a target of their own; inf where that
    fails too."""
    out = _certify_at(g, t, programs)
    bad = np.flatnonzero(~np.isfinite(out))
    if len(bad):
        sub = programs.take(g, programs.asarray(bad))
        out[bad] = _certify_at(sub, max(_target(sub, programs), t), programs)
    return out


def _chunk(n_items, item_bytes):
    return max(1, min(n_items, int(_CHUNK_BYTES // max(item_bytes, 1))))


def _torus_max(kp, n1, n2, phi1, phi2, programs):
    """Upper bound on max_w σ_max(computed symbol) over the (φ1, φ2)-twisted n1×n2 torus,
    before the symbol's own rounding (the caller adds it): the frequencies' Gram matrices in
    chunks, one ``t`` for the whole torus (`_target` of the `TOP` largest Rayleigh quotients), each
    chunk certified at it; frequencies the device cannot certify are bounded on the host
    (`spectral.sigma_points`)."""
    asarray = programs.asarray
    w1, w2, keep, _, _ = sp.torus_grid(n1, n2, phi1, phi2)
    w1, w2 = w1[keep], w2[keep]
    a1, a2, cin, cout = kp.shape
    r, c = min(cin, cout), max(cin, cout)
    size = _chunk(-(-len(w1) // 32) * 32, r * max(r, c) * 16)  # multiples of 32: few compilations
    kp_dev = asarray(kp)
    chunks, tops, top_lams = [], [], []
    for s0 in range(0, len(w1), size):
        idx = np.arange(s0, s0 + size).clip(max=len(w1) - 1)  # the last chunk repeats its end
        e1 = np.exp(1j * np.outer(w1[idx], np.arange(a1)))
        e2 = np.exp(1j * np.outer(w2[idx], np.arange(a2)))
        g, fro2, lam = programs.symbol_grams(asarray(e1), asarray(e2), kp_dev, asarray(_start_vectors(size, r, True)))
        chunks.append((idx, g, np.asarray(fro2, np.float64)))
        top, top_lam = _top(g, np.asarray(lam, np.float64), programs)
        tops.append(top)
        top_lams.append(top_lam)
    if len(tops) > 1:  # the largest of every chunk's largest
        top, _ = _top(programs.concat(tops), np.concatenate(top_lams), programs)
    t = _target(top, programs)
    best = 0.0
    for idx, g, fro2 in chunks:
        lam_up = _certified(g, t, programs)
        sig = np.sqrt(lam_up + 8.0 * (c + 4) * _U * fro2 * (1.0 + 1e-6)) * (1.0 + 4 * _U)
        bad = ~np.isfinite(sig)
        if bad.any():  # the host's eigenvalue bound for what the device could not certify
            sig[bad] = sp.sigma_points(kp, w1[idx[bad]], w2[idx[bad]])
        best = max(best, float(np.max(sig)))
    return best


def torus_sigma(kp, n1, n2, effort):
    """Upper bound on max_w σ_max(computed symbol of the polyphase kernel ``kp``) over the
    tori `effort` picks (`spectral.conv2d_spectral_bound`, which adds the symbol's rounding):
    "low" the periodic n1×n2 torus, else all four {0, π}-twisted ones; the minimum."""
    programs = _programs()
    twists = [(0.0, 0.0)]
    if effort != "low":
        twists = [(np.pi * j1, np.pi * j2) for j1 in range(2 if n1 > 1 else 1) for j2 in range(2 if n2 > 1 else 1)]
    with programs.context():
        sigma = min(_torus_max(kp, n1, n2, p1, p2, programs) for p1, p2 in twists)
    return sigma * (1.0 + 4 * _U)  # the sqrt's rounding


def _explicit_target(g, g_dev, programs):
    """Device certificates of the explicit Gram matrix ``g`` (on the device as ``g_dev``, shape
    (1, n, n)) at targets ``θ(1 + margin)`` (θ from the device's Lanczos, `spectral`'s margins in
    turn) from order `spectral._CHOLESKY_MIN_DIM`, where an eigensolver's O(n³) reduction is the
    slow part; below it, or if they fail, at the device eigensolver's target. inf if all fail."""
    if g.shape[0] >= sp._CHOLESKY_MIN_DIM:
        v0 = np.zeros((min(sp._LANCZOS_STEPS, g.shape[0]) + 1, g.shape[0]))
        v0[0] = sp.lanczos_start(g.shape[0])
        theta = float(np.asarray(programs.lanczos_top(g_dev[0], programs.asarray(v0))))
        if math.isfinite(theta) and theta > 0:
            for margin in sp._CHOLESKY_MARGINS:
                lam = float(_certify_at(g_dev, theta * (1.0 + margin), programs)[0])
                if math.isfinite(lam):
                    return lam
    return float(_certified(g_dev, _target(g_dev, programs), programs)[0])


def explicit_bound(kernel, size, strides, padding):
    """`spectral._explicit_bound` with the explicit Gram matrix's top eigenvalue certified on the
    device (`spectral.explicit_gram` assembles it on the host; `_explicit_target`); eigvalsh on
    the host where the certificate fails."""
    programs = _programs()
    scale = sp._pow2_scale(kernel)
    g, contraction = sp.explicit_gram(kernel * scale, size, strides, padding)
    with programs.context():
        g_dev = programs.asarray(g[None])
        lam = _explicit_target(g, g_dev, programs)
    return sp._round_up(sp._gram_to_bound(g, contraction, lam if math.isfinite(lam) else None) / scale)
