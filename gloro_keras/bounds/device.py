"""Sound convolution bounds on a JAX GPU: Gram matrices certified by Cholesky factors.

The host bounds (`spectral`) take one LAPACK ``eigvalsh`` per torus frequency; on a GPU machine
that host work outlasted a training epoch (216 % of one at L18W256 on an H200). Here every step
is a batched product or Cholesky factorization in float64 / complex128 on JAX's default device,
and no eigensolver is needed or trusted.

Certificate. For a Hermitian ``G`` (a computed Gram matrix, n×n) and a float ``t``, let
``B = fl(t I - G)`` (only the diagonal rounds), ``R`` *any* matrix the device's Cholesky returns
for ``B`` and ``D = fl(B - fl(R R^H))``. As ``R R^H ⪰ 0``:

    λ_max(G) ≤ t + ‖B - R R^H‖₂ + u max_i |b_ii|,
    ‖B - R R^H‖₂ ≤ ‖D‖_F (1 + 2u) + 8 (n + 4) u ‖R‖_F²

(the last term bounds the product's rounding for any summation order, 3M complex
multiplication included; the Frobenius norms carry a factor 1 + 1e-6 for their own rounding).
Nothing is assumed of the Cholesky routine: a failed or inaccurate factor only yields a large or
non-finite residual, and that matrix is then bounded on the host (`spectral`). ``t`` is shared
by a torus's frequencies: bisected, to relative `TOLERANCE`, between the largest Rayleigh
quotient after `POWER_STEPS` power iterations and an upper bracket, the test being whether the
Cholesky factors of ``t I - G`` are finite for the `BISECT_ON` matrices with the largest
quotients (several candidates per device call). The bound is then within about 5e-7 relative of
the one with exact eigenvalues (1e-7 in the tests), plus the rounding terms.

The rest is the host analysis (`spectral`): the Gram matrix's rounding
(``8 (c + 4) u ‖S‖_F²`` here, generous for any GPU product), the symbol's (twice
``spectral._symbol_abs_err``: the phase factors are computed on the host as there, the
contractions on the device), the exact power-of-two scaling and the torus geometry.
``effort="low"`` evaluates the periodic torus of minimal size; "medium" and "high" all four
{0, π}-twisted tori of that size (the host's "medium" evaluates two of them).
"""
from __future__ import annotations

import collections
import functools
import math

import numpy as np

from gloro_keras.bounds import spectral as sp

_U = 2.0 ** -53
TOLERANCE = 1e-6  # relative width to which t is bisected
POWER_STEPS = 32  # power iterations for the lower end of t's bracket
BISECT_ON = 8  # matrices of a batch (largest Rayleigh quotients) whose factors decide the bisection
_CHUNK_BYTES = 2 ** 27  # per array of the batch (~6 such arrays live at once)


def jax_gpu():
    """Whether Keras runs on JAX with a GPU as JAX's default device (GPUs have float64
    arithmetic; TPUs do not, so they keep the host bounds)."""
    import keras

    if keras.backend.backend() != "jax":
        return False
    import jax

    return jax.default_backend() == "gpu"


Programs = collections.namedtuple("Programs", "symbol_grams gram_rayleigh chol_ok certify with_factor")


@functools.lru_cache(maxsize=None)
def _programs():
    """The jitted device steps (traced and run under ``jax.enable_x64``)."""
    try:
        import jax
        import jax.numpy as jnp
    except ImportError as e:  # pragma: no cover
        raise ImportError("Sound bounds on the device (on_device=True) need JAX: pip install jax") from e

    def hermitian(g):
        low = jnp.tril(g, -1)
        d = jnp.real(jnp.diagonal(g, axis1=-2, axis2=-1))
        n = g.shape[-1]
        return low + jnp.conj(jnp.swapaxes(low, -1, -2)) + d[..., None] * jnp.eye(n, dtype=d.dtype)

    def rayleigh(g, v0):
        def step(_, v):
            w = jnp.einsum("...ij,...j->...i", g, v)
            nrm = jnp.linalg.norm(w, axis=-1, keepdims=True)
            return jnp.where(nrm > 0, w / jnp.where(nrm > 0, nrm, 1.0), v)

        v = v0 / jnp.linalg.norm(v0, axis=-1, keepdims=True)
        v = jax.lax.fori_loop(0, POWER_STEPS, step, v)
        return jnp.real(jnp.einsum("...i,...ij,...j->...", jnp.conj(v), g, v))

    def sq(x):
        return jnp.real(x) ** 2 + jnp.imag(x) ** 2 if jnp.iscomplexobj(x) else x * x

    @jax.jit
    def symbol_grams(e1, e2, kp, v0):
        """Per frequency: Hermitian Gram G = S S^H of the smaller side, ‖S‖_F², a Rayleigh quotient."""
        s = jnp.einsum("fa,fb,abio->fio", e1, e2, kp)
        if s.shape[1] > s.shape[2]:
            s = jnp.swapaxes(s, 1, 2)
        g = hermitian(jnp.matmul(s, jnp.conj(jnp.swapaxes(s, 1, 2))))
        return g, jnp.sum(sq(s), axis=(1, 2)), rayleigh(g, v0)

    @jax.jit
    def gram_rayleigh(g, v0):
        return rayleigh(hermitian(g), v0)

    def shifted(g, t):
        n = g.shape[-1]
        diag = t[..., None] - jnp.real(jnp.diagonal(g, axis1=-2, axis2=-1))
        return jnp.where(jnp.eye(n, dtype=bool), diag[..., None].astype(g.dtype), -hermitian(g)), diag

    @jax.jit
    def chol_ok(g, t):
        """Whether the Cholesky factor of t I - g is finite (a test, not a certificate)."""
        r = jnp.linalg.cholesky(shifted(g, t)[0], symmetrize_input=False)
        return jnp.all(jnp.isfinite(r), axis=(-2, -1))

    @jax.jit
    def with_factor(g, t, r):
        """ε with λ_max(g) ≤ t + ε for *any* n×n matrix r (module docstring); inf if not finite."""
        n = g.shape[-1]
        b, diag = shifted(g, t)
        d = b - jnp.matmul(r, jnp.conj(jnp.swapaxes(r, -1, -2)))
        fro_d = jnp.sqrt(jnp.sum(sq(d), axis=(-2, -1)))
        fro_r2 = jnp.sum(sq(r), axis=(-2, -1))
        eps = (fro_d * (1 + 2 * _U) + 8 * (n + 4) * _U * fro_r2 + _U * jnp.max(jnp.abs(diag), axis=-1)) * (1 + 1e-6)
        return jnp.where(jnp.isfinite(eps), eps, jnp.inf)

    @jax.jit
    def certify(g, t):
        """`with_factor` for the device's Cholesky factor of t I - g."""
        return with_factor(g, t, jnp.linalg.cholesky(shifted(g, t)[0], symmetrize_input=False))

    return Programs(symbol_grams, gram_rayleigh, chol_ok, certify, with_factor)


def _x64():
    import jax

    return jax.enable_x64(True)


def _start_vectors(batch, n, complex_):
    rng = np.random.default_rng(0)
    v = rng.standard_normal((batch, n))
    if complex_:
        v = v + 1j * rng.standard_normal((batch, n))
    return v


def _top(g, lam, k=None):
    """The ``k`` (default `BISECT_ON`) matrices of the device batch ``g`` with the largest ``lam``."""
    order = np.argsort(np.nan_to_num(lam, nan=-np.inf))[::-1][: k or BISECT_ON]
    return g[order], lam[order]


def _bisect(top, lo, programs):
    """``t`` ≥ λ_max of every matrix of ``top`` (largest Rayleigh quotient ``lo``), in the sense
    that their Cholesky factors of ``t I - top`` are finite, to relative `TOLERANCE`: a bracket,
    not a certificate. Several candidates per device call (fewer round trips: a GPU waits on each)."""
    import jax.numpy as jnp

    k, n = top.shape[0], top.shape[-1]
    m = 15 if n <= 512 else 3  # candidates per call: 16× (4×) narrower each call

    def ok(ts):
        ts = np.asarray(ts, dtype=np.float64)
        res = np.asarray(programs.chol_ok(jnp.tile(top, (len(ts), 1, 1)), jnp.asarray(np.repeat(ts, k))))
        return res.reshape(len(ts), k).all(axis=1)

    lo = max(lo, 1e-300)
    hi = lo * (1.0 + 1e-3)
    for _ in range(8):  # widen the bracket (×4 each time) until every factor exists
        if ok([hi])[0]:
            break
        hi = lo + 4.0 * (hi - lo)
    else:
        return hi
    for _ in range(40):
        if hi - lo <= TOLERANCE * hi:
            break
        cand = lo + (hi - lo) * np.arange(1, m + 1) / (m + 1)
        good = ok(cand)
        first = int(np.argmax(good)) if good.any() else m
        lo, hi = (cand[first - 1] if first > 0 else lo), (cand[first] if first < m else hi)
    return hi


def _certify_at(g, t, programs):
    """Per matrix of the device batch ``g``: a float64 upper bound on λ_max from the certificate
    at ``t`` (module docstring); inf where it fails."""
    import jax.numpy as jnp

    t = sp._round_up(t)
    eps = np.asarray(programs.certify(g, jnp.full((g.shape[0],), t)), dtype=np.float64)
    out = np.full(len(eps), np.inf)
    fin = np.isfinite(eps)
    out[fin] = [sp._round_up((t + e) * (1.0 + 1e-12)) for e in eps[fin]]
    return out


def _chunk(n_items, item_bytes):
    return max(1, min(n_items, int(_CHUNK_BYTES // max(item_bytes, 1))))


def _torus_max(kp, n1, n2, phi1, phi2, programs):
    """Upper bound on max_w σ_max(computed symbol) over the (φ1, φ2)-twisted n1×n2 torus,
    before the symbol's own rounding (the caller adds it): the frequencies' Gram matrices in
    chunks, one ``t`` bisected for the whole torus, each chunk certified at it; frequencies the
    device cannot certify are bounded on the host (`spectral.sigma_points`)."""
    import jax.numpy as jnp

    w1, w2 = _torus_frequencies(n1, n2, phi1, phi2)
    a1, a2, cin, cout = kp.shape
    r, c = min(cin, cout), max(cin, cout)
    size = _chunk(-(-len(w1) // 32) * 32, r * max(r, c) * 16)  # multiples of 32: few compilations
    kp_dev = jnp.asarray(kp)
    chunks, tops, top_lams = [], [], []
    for s0 in range(0, len(w1), size):
        idx = np.arange(s0, s0 + size).clip(max=len(w1) - 1)  # the last chunk repeats its end
        e1 = np.exp(1j * np.outer(w1[idx], np.arange(a1)))
        e2 = np.exp(1j * np.outer(w2[idx], np.arange(a2)))
        g, fro2, lam = programs.symbol_grams(jnp.asarray(e1), jnp.asarray(e2), kp_dev,
                                             jnp.asarray(_start_vectors(size, r, True)))
        chunks.append((idx, g, np.asarray(fro2, np.float64)))
        top, top_lam = _top(g, np.asarray(lam, np.float64))
        tops.append(top)
        top_lams.append(top_lam)
    top, top_lam = _top(jnp.concatenate(tops), np.concatenate(top_lams))
    t = _bisect(top, float(np.nanmax(top_lam)) if np.isfinite(top_lam).any() else 0.0, programs)
    best = 0.0
    for idx, g, fro2 in chunks:
        lam_up = _certify_at(g, t, programs)
        sig = np.sqrt(lam_up + 8.0 * (c + 4) * _U * fro2 * (1.0 + 1e-6)) * (1.0 + 4 * _U)
        bad = ~np.isfinite(sig)
        if bad.any():  # the host's eigenvalue bound for what the device could not certify
            sig[bad] = sp.sigma_points(kp, w1[idx[bad]], w2[idx[bad]])
        best = max(best, float(np.max(sig)))
    return best


def _torus_frequencies(n1, n2, phi1, phi2):
    """The frequency pairs of the twisted torus, one of each ±w pair (twists in {0, π}: the
    symbol of a real kernel has σ(−w) = σ(w))."""
    k1, k2 = np.meshgrid(np.arange(n1), np.arange(n2), indexing="ij")
    j1, j2 = int(phi1 == np.pi), int(phi2 == np.pi)
    p1, p2 = (-k1 - j1) % n1, (-k2 - j2) % n2
    keep = k1 * n2 + k2 <= p1 * n2 + p2
    return ((2.0 * np.pi * k1 + phi1) / n1)[keep], ((2.0 * np.pi * k2 + phi2) / n2)[keep]


def conv2d_spectral_bound_device(kernel, input_size, strides=(1, 1), padding=((0, 0), (0, 0)), *,
                                 method="auto", effort="medium"):
    """`spectral.conv2d_spectral_bound(..., on_device=True)`, which validates the arguments and
    calls this: the eigenproblems on JAX's default device, certified by Cholesky factors (module
    docstring). input_size, strides: pairs; padding: ((top, bottom), (left, right)); the kernel
    is finite and not zero."""
    kernel = np.asarray(kernel, dtype=np.float64)
    H, W = input_size
    sh, sw = strides
    (pt, pb), (pl, pr) = padding
    kh, kw, cin, cout = kernel.shape
    ho, a1, n1 = sp.axis_geometry(H, kh, sh, pt, pb)
    wo, a2, n2 = sp.axis_geometry(W, kw, sw, pl, pr)
    if a1 == 1 and a2 == 1:  # one polyphase tap: a small dense bound on the host
        return sp.conv2d_spectral_bound(kernel, input_size, strides, padding, method=method, effort=effort)
    if method == "auto":
        method = "explicit" if min(H * W * cin, ho * wo * cout) <= sp._EXPLICIT_MAX_DIM else "torus"
    with _x64():
        programs = _programs()
        if method == "explicit":
            return _explicit_bound(kernel, (H, W), (sh, sw), ((pt, pb), (pl, pr)), programs)
        scale = sp._pow2_scale(kernel)
        kp = sp.polyphase_kernel(kernel * scale, (sh, sw))
        n1, n2 = (1 if a1 == 1 else n1), (1 if a2 == 1 else n2)
        twists = [(0.0, 0.0)]
        if effort != "low":
            twists = [(np.pi * j1, np.pi * j2) for j1 in range(2 if n1 > 1 else 1) for j2 in range(2 if n2 > 1 else 1)]
        sigma = min(_torus_max(kp, n1, n2, p1, p2, programs) for p1, p2 in twists)
    up = (sigma * (1.0 + 4 * _U) + 2.0 * sp._symbol_abs_err(kp)) / scale
    return sp._round_up(up)


def _explicit_bound(kernel, size, strides, padding, programs):
    """The explicit Gram matrix (assembled on the host, as `spectral.explicit_gram`) certified on
    the device; `spectral._gram_to_bound`'s analysis with the certificate in place of eigvalsh."""
    import jax.numpy as jnp

    gram_rayleigh = programs.gram_rayleigh
    scale = sp._pow2_scale(kernel)
    g, contraction = sp.explicit_gram(kernel * scale, size, strides, padding)
    n = g.shape[0]
    g_dev = jnp.asarray(g[None])
    lam = np.asarray(gram_rayleigh(g_dev, jnp.asarray(_start_vectors(1, n, False))), np.float64)
    lam_up = float(_certify_at(g_dev, _bisect(g_dev, float(lam[0]), programs), programs)[0])
    if not math.isfinite(lam_up):
        return sp._explicit_bound(kernel, size, strides, padding)
    gamma = (contraction + 2) * _U / (1.0 - (contraction + 2) * _U)
    fro2 = float(np.trace(g)) * (1.0 + gamma) * (1.0 + (n + 2) * _U)
    bound = math.sqrt((lam_up + 1.01 * gamma * fro2) * (1.0 + 1e-12)) * (1.0 + 4 * _U)
    return sp._round_up(sp._round_up(bound) / scale)
