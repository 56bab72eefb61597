"""Provably sound upper bounds on the spectral norm of conv / dense layers (pure numpy, float64).

Power iteration converges to ``||A||_2`` from *below*, so a certificate built on it can
over-claim robustness.  The functions here return a float64 number that is guaranteed to be
``>= ||A||_2`` (operator 2-norm of the layer's linear map, bias excluded) and, at the shapes of
the LiResNet models, is within a fraction of a percent of it.

Convolutions (``conv2d_spectral_bound``, method ``"torus"``)
------------------------------------------------------------
Per spatial axis: input length ``n``, zero padding ``(p0, p1)``, kernel ``k``, stride ``s``,
output length ``n_out = floor((n + p0 + p1 - k) / s) + 1``.

1. *Polyphase.*  Split the zero-padded input into ``s`` phases (space-to-depth): polyphase row
   ``u`` of phase ``p`` is padded row ``s*u + p``.  The strided conv becomes a stride-1 valid
   conv with the ``ceil(k/s)``-tap kernel ``K'[a, (p, c), o] = K[s*a + p, c, o]`` (0 when
   ``s*a + p >= k``) on ``s*s*cin`` channels.  Phase ``p`` is *read* on polyphase rows
   ``R_p = [0, e_p)`` and holds input *data* on the rows ``D_p`` (input rows that no output
   reads are dropped: ``A`` vanishes on them).

2. *Twisted-torus dilation (the soundness argument).*  Fix ``N`` and ``|tau| = 1``.  On
   ``tau``-twisted ``N``-periodic signals (``z[r + N] = tau z[r]``) the circular
   cross-correlation ``C`` with ``K'`` has the orthonormal eigenbasis ``exp(i w r)/sqrt(N)``,
   ``w = (2 pi j + arg tau)/N``, so ``||C|| = max_w sigma_max(sum_a K'[a] exp(i w a))``.  If
   ``(D_p + N*m) cap R_p`` is empty for all ``m != 0`` and all phases, and ``N >= n_out``,
   every value a kept output reads on the torus equals the true zero-padded input value:
   ``A = R C E`` with ``E`` an isometric embedding, ``R`` a coordinate restriction, so
   ``||A|| <= ||C||``.  In 2-D the torus is a product and the condition holds per axis
   (stride 1: ``N >= n + max(p0, p1)``).  Every admissible ``(N, tau)`` is sound, so is the min.
   The twist matters: for the 1-D kernel ``[1, 1, 1]`` with padding 1 on ``n`` points the
   anti-periodic torus of size ``n + 1`` gives the exact norm ``1 + 2 cos(pi/(n+1))`` whereas
   every periodic torus gives 3.

3. *Evaluation.*  ``sigma_max`` of the symbol at each torus frequency is computed in float64
   (Gram matrix of the smaller side + LAPACK ``eigvalsh``) and inflated by explicit bounds on
   every rounding error (see ``_gram_sigma_upper`` and ``_symbol_abs_err``).  A real kernel has
   ``sigma(w) = sigma(-w)``, which halves the work for twists ``tau = +-1``.  ``effort`` picks
   how many tori are tried (``conv2d_spectral_bound``); the torus choice only affects
   tightness, never soundness.

Small operators (method ``"explicit"``, chosen by ``"auto"`` when the smaller of
``H*W*cin`` and ``Ho*Wo*cout`` is at most ``_EXPLICIT_MAX_DIM``, e.g. the 32x32x3 stem): the
Gram matrix ``A^T A`` or ``A A^T`` is assembled from per-position kernel blocks and its top
eigenvalue bounded with the same round-off analysis as a dense layer.  This is the exact norm
(+ margin), where the torus bound can be several percent loose on tiny images.  From order
``_CHOLESKY_MIN_DIM`` up, the top eigenvalue is not computed but certified: a Lanczos estimate
``theta`` sets ``t = theta (1 + 1e-8)`` (else ``1 + 1e-5``) and one Cholesky factorization of
``t I - G`` proves ``lambda_max(G) <= t`` up to its rounding (``cholesky_lambda_max``): about
half of ``eigvalsh``'s time at the stem's order 3072.

Dense layers (``dense_spectral_bound``): Gram matrix of the smaller side + ``eigvalsh``,
inflated by an explicit bound on the rounding of the Gram product and of the eigensolver.
"""

from __future__ import annotations

import contextlib
import math
import threading

import numpy as np
from threadpoolctl import threadpool_limits

from gloro_keras.ops.padding import as_pair, explicit_padding

try:  # optional speed-up (half the flops for the Gram matrices); numpy fallback otherwise
    from scipy.linalg.blas import zherk as _zherk
except ImportError:  # pragma: no cover
    _zherk = None

__all__ = [
    "conv2d_spectral_bound",
    "dense_spectral_bound",
    "conv2d_operator_matrix",
    # the steps, public so that they are tested one by one
    "axis_geometry",
    "conv2d_apply",
    "conv2d_apply_transpose",
    "explicit_gram",
    "polyphase_kernel",
    "sigma_points",
]

_U = 2.0 ** -53  # unit round-off of float64

# Relative slack for the LAPACK eigenvalue step.  A backward-stable symmetric/Hermitian
# eigensolver returns the exact eigenvalues of ``G + E`` with ``||E||_2 <= p(n) u ||G||_2`` and
# ``p`` a modest polynomial in the order n (O(n^2) even in pessimistic analyses); 1e-8 covers
# ``p(n) <= 9e7``, i.e. every n below ~9000 even with p(n) = n^2.
_REL_SLACK = 1e-8

# "auto" uses the exact explicit-Gram computation when min(H*W*cin, Ho*Wo*cout) is at most this
# (one float64 Cholesky factorization of that order at a Lanczos target, else eigvalsh: ~1-2 s at
# 3072, which covers the 32x32x3 stem).
_EXPLICIT_MAX_DIM = 3072

_EFFORTS = ("low", "medium", "high")

# Explicit Gram matrices of at least this order have their top eigenvalue certified by a Cholesky
# factorization at a Lanczos target (`_certified_lambda_max`) instead of computed by eigvalsh
# (order 3072, one core: 150 Lanczos steps 0.45 s + a factorization 0.37 s against 2.0 s).
_CHOLESKY_MIN_DIM = 512
# Lanczos steps for the target, and the relative margins of t over the Ritz value tried in turn
# (then eigvalsh). The stems of five L6W64 / L6W128 models after 3-23 training steps: top two
# eigenvalues 2e-3 to 2e-6 apart (a conv's spectrum comes in near pairs); the Ritz value after 60
# steps up to 3.7e-4 below the top one, after 150 within 2e-9 in four, 2.9e-6 in the fifth (stuck
# at the second of a pair that close). A margin costs at most that much tightness.
_LANCZOS_STEPS = 150
_CHOLESKY_MARGINS = (1e-8, 1e-5)

_THREAD = threading.local()


@contextlib.contextmanager
def gil_free_grams():
    """In this thread, form the torus symbols' Gram matrices with numpy's ``matmul``, which
    releases the GIL, instead of scipy's ``zherk`` (half the flops), which holds it: two threads
    of 40 zherk calls (256x256) took 0.86-1.00x the serial time on 2 cores, of matmul 0.53-0.70x
    (`bench/ab_gram_threads.py`). For threads bounding layers side by side
    (`bounds.sound_bounds`), which zherk serializes. The rounding analysis
    (`_gram_sigma_upper`) holds for either."""
    before = getattr(_THREAD, "gil_free", False)
    _THREAD.gil_free = True
    try:
        yield
    finally:
        _THREAD.gil_free = before


# ---------------------------------------------------------------------------------------------
# argument handling and geometry
# ---------------------------------------------------------------------------------------------


def _out_len(n, k, s, p0, p1):
    total = n + p0 + p1
    return 0 if total < k else (total - k) // s + 1


def axis_geometry(n, k, s, p0, p1):
    """``(n_out, k_poly, n_min)`` for one spatial axis: output length, polyphase taps and the
    smallest admissible torus size (module docstring, step 2)."""
    if n <= 0 or k <= 0 or s <= 0:
        raise ValueError("input sizes, kernel sizes and strides must be positive")
    n_out = _out_len(n, k, s, p0, p1)
    k_poly = -(-k // s)
    if n_out == 0:
        return 0, k_poly, 1
    n_min = n_out
    for p in range(min(s, k)):
        a_p = -(-(k - p) // s)  # taps of phase p: s*a + p < k
        e_p = n_out + a_p - 1  # phase p is read on polyphase rows [0, e_p)
        lo = max(0, -(-(p0 - p) // s))  # rows u with 0 <= s*u + p - p0 < n (input data) ...
        hi = min(e_p - 1, (p0 + n - 1 - p) // s)  # ... that are also read
        if lo > hi:
            continue
        # no shift by a non-zero multiple of N maps a data row onto a read row:
        # hi - N < 0 and lo + N >= e_p
        n_min = max(n_min, hi + 1, e_p - lo)
    return n_out, k_poly, n_min


def polyphase_kernel(kernel, strides):
    """The stride-1 kernel ``(⌈kh/sh⌉, ⌈kw/sw⌉, sh·sw·cin, cout)`` on the space-to-depth input
    that computes the strided convolution (module docstring, step 1)."""
    kh, kw, cin, cout = kernel.shape
    sh, sw = strides
    ah, aw = -(-kh // sh), -(-kw // sw)
    padded = np.zeros((ah * sh, aw * sw, cin, cout), dtype=np.float64)
    padded[:kh, :kw] = kernel
    # [a, p, b, q, c, o] -> [a, b, (p, q, c), o]
    kp = padded.reshape(ah, sh, aw, sw, cin, cout).transpose(0, 2, 1, 3, 4, 5)
    return np.ascontiguousarray(kp.reshape(ah, aw, sh * sw * cin, cout))


# ---------------------------------------------------------------------------------------------
# numerics
# ---------------------------------------------------------------------------------------------


def _round_up(x, ulps=4):
    x = float(x)
    for _ in range(ulps):
        x = float(np.nextafter(x, np.inf))
    return x


def _pow2_scale(a):
    """Exact power-of-two factor bringing max|a| into [0.5, 1)."""
    amax = float(np.max(np.abs(a)))
    return 2.0 ** (-math.frexp(amax)[1])


def _gram_sigma_upper(mats):
    """Per matrix of a (B, r, c) complex/real stack, an upper bound on ``sigma_max`` of the
    *stored* matrix (rounding of the computation included).

    With ``G = fl(M M^H)`` (contraction length c): ``|G - M M^H| <= 2 (c + 4) u |M| |M|^H``
    entrywise for any summation order (complex products add at most ``sqrt(2) gamma_2``), so
    ``||G - M M^H||_2 <= 2 (c + 4) u ||M||_F^2``; ``eigvalsh`` returns the exact eigenvalues
    of ``G + E``, ``||E|| <= _REL_SLACK ||G||``.  Hence ``sigma_max(M)^2 <= lam_hat (1 + slack)
    + 2 (c + 4) u ||M||_F^2 (1 + 1e-6)`` (the last factor covers the rounding of ||M||_F^2 and
    of this formula); the final sqrt is rounded up by the caller.
    """
    b, r, c = mats.shape
    if r > c:
        mats = np.swapaxes(mats, 1, 2)
        r, c = c, r
    mats = np.asarray(mats, dtype=np.complex128)
    # lower triangle of M M^H (zherk: half the flops of a full product); eigvalsh reads only it
    if _zherk is not None and not getattr(_THREAD, "gil_free", False):
        g = np.empty((b, r, r), dtype=np.complex128)
        for i in range(b):
            g[i] = _zherk(1.0, mats[i], trans=0, lower=1)
    else:
        g = np.matmul(mats, np.conj(np.swapaxes(mats, 1, 2)))
    lam = np.linalg.eigvalsh(g, UPLO="L")[:, -1]
    fro2 = np.sum(mats.real ** 2 + mats.imag ** 2, axis=(1, 2))
    lam_up = np.maximum(lam, 0.0) * (1.0 + _REL_SLACK) + 2.0 * (c + 4) * _U * fro2 * (1.0 + 1e-6)
    return np.sqrt(lam_up)


def _symbol_abs_err(kp):
    """Absolute bound on ``||S_computed(w) - S_exact(w)||_2`` for the symbol of ``kp``.

    ``S(w) = sum_{a,b} K'[a, b] e1(a) e2(b)`` with ``e1(a) = exp(i w1 a)``, ``|w| <= 4 pi``.
    ``w`` carries <= 4 roundings (``(2 pi j + phi) / N``), so the phase ``w a`` is accurate to
    ``4 pi (5 a + 1) u <= 63 (a + 1) u`` absolutely and ``exp`` adds ~1 u: each tap's factor
    ``e1(a) e2(b)`` is off by at most ``(63 (a1 + a2 + 2) + 4) u``.  The two contractions (real x
    complex over b, complex x complex over a; any summation order) add at most
    ``2 (a1 + a2 + 6) u`` relative per term.  With ``c`` the sum of both,
    ``||dS||_2 <= ||dS||_F <= c u sum_tap ||K'[tap]||_F`` (to first order); we return 4 times it.
    """
    a1, a2 = kp.shape[:2]
    c = 63 * (a1 + a2 + 2) + 4 + 2 * (a1 + a2 + 6)
    tap_norms = np.sqrt(np.sum(kp * kp, axis=(2, 3)))
    return 4.0 * c * _U * float(np.sum(tap_norms)) * (1.0 + 1e-6)


def sigma_points(kp, w1, w2, chunk_bytes=32 * 2 ** 20):
    """Upper bounds (up to the symbol's own rounding, ``_symbol_abs_err``) of
    ``sigma_max(sum_{a,b} kp[a, b] exp(i (w1 a + w2 b)))`` at the frequency pairs
    ``(w1[n], w2[n])``.  Chunked to bound memory."""
    a1, a2, cin, cout = kp.shape
    w1 = np.asarray(w1, dtype=np.float64).ravel()
    w2 = np.asarray(w2, dtype=np.float64).ravel()
    out = np.empty(len(w1))
    items = max(1, int(chunk_bytes // (cin * cout * 16 * 3)))
    for s0 in range(0, len(w1), items):
        sl = slice(s0, min(len(w1), s0 + items))
        e1 = np.exp(1j * np.outer(w1[sl], np.arange(a1)))  # (n, a1)
        e2 = np.exp(1j * np.outer(w2[sl], np.arange(a2)))  # (n, a2)
        n = e1.shape[0]
        t = np.tensordot(e2, kp, axes=([1], [1]))  # (n, a1, cin, cout), sum over b
        s = np.matmul(e1[:, None, :], t.reshape(n, a1, cin * cout))  # sum over a
        out[sl] = _gram_sigma_upper(s.reshape(n, cin, cout))
    return out


def torus_grid(n1, n2, phi1, phi2):
    """The ``n1 x n2`` torus with twists ``(phi1, phi2)`` in {0, pi}: its frequency grids
    ``w1, w2`` (``(2 pi k + phi) / n``), the mask ``keep`` of one point of each ``±w`` pair, and
    each point's partner ``(p1, p2)`` (a real kernel has ``sigma(-w) = sigma(w)``)."""
    k1, k2 = np.meshgrid(np.arange(n1), np.arange(n2), indexing="ij")
    j1, j2 = int(phi1 == np.pi), int(phi2 == np.pi)
    # -(2 pi k + pi j) / n == (2 pi k' + pi j) / n  (mod 2 pi)  with  k' = -k - j  (mod n)
    p1, p2 = (-k1 - j1) % n1, (-k2 - j2) % n2
    keep = k1 * n2 + k2 <= p1 * n2 + p2
    return (2.0 * np.pi * k1 + phi1) / n1, (2.0 * np.pi * k2 + phi2) / n2, keep, p1, p2


def _torus_values(kp, n1, n2, phi1=0.0, phi2=0.0):
    """Symbol sigma_max bounds on the ``n1 x n2`` torus with twists ``(phi1, phi2)``, shape
    ``(n1, n2)``, index ``k`` <-> frequency ``(2 pi k + phi) / n``.  For twists in {0, pi} the
    grid is closed under ``w -> -w`` and, the kernel being real, ``sigma(-w) = sigma(w)``:
    only one point of each pair is computed."""
    if not (phi1 in (0.0, np.pi) and phi2 in (0.0, np.pi)):
        k1, k2 = np.meshgrid(np.arange(n1), np.arange(n2), indexing="ij")
        return sigma_points(kp, (2.0 * np.pi * k1 + phi1) / n1, (2.0 * np.pi * k2 + phi2) / n2).reshape(n1, n2)
    w1, w2, keep, p1, p2 = torus_grid(n1, n2, phi1, phi2)
    vals = np.empty((n1, n2))
    vals[keep] = sigma_points(kp, w1[keep], w2[keep])
    vals[~keep] = vals[p1[~keep], p2[~keep]]
    return vals


def _probe_cosets(kp, n1, n2, base, top=8):
    """Cheap look at the three other {0, pi}-twisted tori near the peaks of the periodic one:
    partial maxima (lower estimates of their torus norms), shape (2, 2)."""
    m1, m2 = (1 if n1 == 1 else 2), (1 if n2 == 1 else 2)
    order = np.argsort(base, axis=None)[::-1][:top]
    pts = {}
    for idx in order:
        k1, k2 = np.unravel_index(idx, base.shape)
        for d1 in range(-(m1 - 1), m1):
            for d2 in range(-(m2 - 1), m2):
                if d1 or d2:
                    pts[((m1 * k1 + d1) % (m1 * n1), (m2 * k2 + d2) % (m2 * n2))] = None
    est = np.full((2, 2), np.inf)
    est[0, 0] = float(base.max())
    if not pts:
        return est
    f = np.array(list(pts.keys()))
    vals = sigma_points(kp, 2 * np.pi * f[:, 0] / (m1 * n1), 2 * np.pi * f[:, 1] / (m2 * n2))
    part = np.full((2, 2), -np.inf)
    for (q1, q2), v in zip(f, vals):
        c = (q1 % m1, q2 % m2)
        part[c] = max(part[c], v)
    for c in ((0, 1), (1, 0), (1, 1)):
        if part[c] > -np.inf:
            est[c] = part[c]
    return est


def _torus_bound(kp, n1, n2, effort):
    """min over admissible (twisted) tori of the torus norm; every candidate is sound."""
    if n1 == 1 and n2 == 1:
        return float(sigma_points(kp, [0.0], [0.0])[0])
    base = _torus_values(kp, n1, n2)  # periodic torus of the minimal size
    best = float(base.max())
    if effort == "low":
        return best
    if effort == "medium":
        # evaluate in full only the most promising other {0, pi}-twisted torus
        est = _probe_cosets(kp, n1, n2, base)
        est[0, 0] = np.inf
        c = np.unravel_index(np.argmin(est), est.shape)
        if est[c] < best:
            best = min(best, float(_torus_values(kp, n1, n2, np.pi * c[0], np.pi * c[1]).max()))
        return best
    # "high": all four {0, pi} twists for three torus sizes per axis, then a twist search
    best_cfg = None
    for d1 in range(3 if n1 > 1 else 1):
        for d2 in range(3 if n2 > 1 else 1):
            N1, N2 = n1 + d1, n2 + d2
            for j1 in range(2 if N1 > 1 else 1):
                for j2 in range(2 if N2 > 1 else 1):
                    v = _torus_values(kp, N1, N2, np.pi * j1, np.pi * j2)
                    if v.max() < best or best_cfg is None:
                        best = min(best, float(v.max()))
                        best_cfg = (N1, N2, np.pi * j1, np.pi * j2, v)
    return min(best, _search_twist(kp, best, *best_cfg))


def _search_twist(kp, best, N1, N2, phi1, phi2, _vals):
    """Local search over continuous twists (each evaluated value is a sound torus bound)."""
    cur = (phi1, phi2)
    step1 = np.pi / 2 if N1 > 1 else 0.0
    step2 = np.pi / 2 if N2 > 1 else 0.0
    for _ in range(3):
        improved = False
        for d1, d2 in ((step1, 0.0), (-step1, 0.0), (0.0, step2), (0.0, -step2)):
            if d1 == 0.0 and d2 == 0.0:
                continue
            c = ((cur[0] + d1) % (2 * np.pi), (cur[1] + d2) % (2 * np.pi))
            v = float(_torus_values(kp, N1, N2, *c).max())
            if v < best:
                best, cur, improved = v, c, True
        if not improved:
            step1, step2 = step1 / 2, step2 / 2
    return best


# ---------------------------------------------------------------------------------------------
# public API
# ---------------------------------------------------------------------------------------------


def conv2d_spectral_bound(
    kernel,
    input_size,
    strides=(1, 1),
    padding=((0, 0), (0, 0)),
    *,
    method="auto",
    effort="medium",
    on_device=False,
):
    """Guaranteed upper bound on ``||A||_2``, ``A: x (H, W, cin) -> conv_valid(zero_pad(x,
    padding), kernel, strides)``.

    kernel: array (kh, kw, cin, cout), cross-correlation exactly like ``tf.nn.conv2d`` /
    ``keras.ops.conv`` with channels_last and padding='VALID' applied to the explicitly
    zero-padded input.  input_size: (H, W).  padding: ((top, bottom), (left, right)) zero
    padding.  strides: (sh, sw).

    Soundness (method "torus"): after a polyphase split, ``A = R C E`` with ``E`` an isometric
    embedding of the input into a twisted torus large enough that no wrap-around reaches a
    kept output, ``C`` the circular conv there and ``R`` a coordinate restriction, so
    ``||A|| <= ||C|| = max over the torus frequencies of sigma_max(kernel symbol)``; each
    sigma_max is computed in float64 and inflated by explicit round-off bounds.  Any admissible
    torus is sound, so the minimum over the tori tried is returned.

    method: "auto" (default) = "explicit" when min(H*W*cin, Ho*Wo*cout) <= 3072 (unless the
      polyphase kernel is a single tap, where "torus" is already exact), else "torus";
      "explicit" = exact norm via the explicit Gram matrix of the smaller side (+ round-off
      margin; cost ~ that dimension cubed); "torus" = the torus bound.
    effort (torus only; N ~ the padded size, e.g. 17 for 16x16 with padding 1):
      "low" = periodic torus of the minimal size (~N^2/2 symbol eigenproblems);
      "medium" (default) = also probe the three {0, pi}-twisted tori of that size near the
      peaks of the first and evaluate the most promising one in full (~N^2);
      "high" = all four {0, pi}-twisted tori of three sizes per axis plus a local search over
      continuous twists (~30 N^2).  Each step typically gains 0-0.5 % at 16x16.
    on_device: the eigenproblems on the default device of Keras's backend (TensorFlow, else JAX)
      instead, certified by Cholesky factors (`gloro_keras.bounds.device`; float64 there;
      "medium"/"high" = the four {0, pi}-twisted tori of minimal size): as sound, within ~1e-8
      of this host bound.

    A stride-s conv whose kernel equals its stride and has no padding (patchify / neck) has a
    frequency-independent polyphase symbol, so the bound is the exact norm (+ margin).  At
    16x16 and above the torus bound is typically within 0.5 % of the exact norm; on tiny
    images (5x5 - 8x8) it can be 1-15 % loose (boundary effects ~ 1/N^2), which "auto"
    avoids by computing the exact norm there.
    """
    if method not in ("auto", "explicit", "torus"):
        raise ValueError(f"unknown method {method!r}")
    if effort not in _EFFORTS:
        raise ValueError(f"effort must be one of {_EFFORTS}, got {effort!r}")
    kernel = np.asarray(kernel, dtype=np.float64)
    if kernel.ndim != 4:
        raise ValueError(f"kernel must be (kh, kw, cin, cout), got shape {kernel.shape}")
    H, W = as_pair(input_size, "input_size")
    sh, sw = as_pair(strides, "strides")
    (pt, pb), (pl, pr) = explicit_padding(padding)
    kh, kw, cin, cout = kernel.shape
    ho, a1, n1 = axis_geometry(H, kh, sh, pt, pb)
    wo, a2, n2 = axis_geometry(W, kw, sw, pl, pr)
    if ho == 0 or wo == 0 or not np.any(kernel):
        return 0.0
    if not np.all(np.isfinite(kernel)):
        return float("inf")

    if method == "auto":
        # one polyphase tap per axis (e.g. kernel == stride, no padding): the torus bound is
        # already exact and costs a single small SVD
        single_tap = a1 == 1 and a2 == 1
        small = min(H * W * cin, ho * wo * cout) <= _EXPLICIT_MAX_DIM
        method = "explicit" if small and not single_tap else "torus"
    if method == "explicit":
        if on_device:
            from gloro_keras.bounds.device import explicit_bound

            return explicit_bound(kernel, (H, W), (sh, sw), ((pt, pb), (pl, pr)))
        return _explicit_bound(kernel, (H, W), (sh, sw), ((pt, pb), (pl, pr)))

    if a1 == 1 and a2 == 1:
        # single polyphase tap: the symbol is the same real (s*s*cin, cout) matrix at every
        # frequency, so ||A|| <= its sigma_max (equality e.g. for kernel == stride, no padding:
        # A is block diagonal with that block)
        return dense_spectral_bound(polyphase_kernel(kernel, (sh, sw))[0, 0])
    scale = _pow2_scale(kernel)  # exact; keeps the Gram products far from over/underflow
    kp = polyphase_kernel(kernel * scale, (sh, sw))
    # an axis with a single polyphase tap has a frequency-independent symbol
    if a1 == 1:
        n1 = 1
    if a2 == 1:
        n2 = 1
    if on_device:
        from gloro_keras.bounds.device import torus_sigma

        # the device's contractions may run in any algorithm: twice the symbol's rounding
        return _round_up((torus_sigma(kp, n1, n2, effort) + 2.0 * _symbol_abs_err(kp)) / scale)
    # many small LAPACK calls: one BLAS thread each is faster than an oversubscribed pool (L6W128
    # block, 2 cores: 0.28-0.49 s with one thread, 0.74-1.36 s with two); the explicit method's
    # single large factorization keeps every thread (stem, order 3072: 0.44-0.70 s with two, 0.90
    # with one; by eigvalsh 1.18 / 2.0 s)
    with threadpool_limits(limits=1, user_api="blas"):
        sigma = _torus_bound(kp, n1, n2, effort)
    # sigma bounds sigma_max of the *computed* symbols up to the rounding of the final sqrt
    # (covered by the relative slack); add the symbol's own rounding, then undo the scaling.
    up = (sigma * (1.0 + _REL_SLACK) + _symbol_abs_err(kp)) / scale
    return _round_up(up)


def _output_taps(n, k, s, p0, n_out):
    """For one axis: list over outputs i of [(tap a, input index h)] with h = s i + a - p0
    inside the input."""
    return [
        [(a, s * i + a - p0) for a in range(k) if 0 <= s * i + a - p0 < n] for i in range(n_out)
    ]


def explicit_gram(kernel, size, strides, padding):
    """Gram matrix of the smaller side of A, assembled blockwise, and its contraction length.

    Input side: ``A^T A = sum_{outputs (i,j)} P_ij^T (K_ij K_ij^T) P_ij`` with ``K_ij`` the rows
    of the (taps*cin, cout) kernel matrix for the taps that hit the input.  Output side:
    ``A A^T = sum_{pixels (h,w)} Q_hw (M_hw M_hw^T) Q_hw^T`` with ``M_hw`` the stacked
    ``K[a, b]^T`` of the outputs that read pixel (h, w).  Each entry is a sum of products of
    entries of A (at most ``contraction`` of them), so the rounding analysis of a dense Gram
    applies (``dense_spectral_bound``).
    """
    H, W = size
    (pt, pb), (pl, pr) = padding
    kh, kw, cin, cout = kernel.shape
    sh, sw = strides
    ho, wo = _out_len(H, kh, sh, pt, pb), _out_len(W, kw, sw, pl, pr)
    rows, cols = _output_taps(H, kh, sh, pt, ho), _output_taps(W, kw, sw, pl, wo)
    n_in, n_out = H * W * cin, ho * wo * cout
    if n_in <= n_out:
        g = np.zeros((n_in, n_in))
        for i in range(ho):
            for j in range(wo):
                taps = [(a, b, h, w) for a, h in rows[i] for b, w in cols[j]]
                if not taps:
                    continue
                km = np.concatenate([kernel[a, b] for a, b, _, _ in taps], axis=0)
                idx = np.concatenate([(h * W + w) * cin + np.arange(cin) for _, _, h, w in taps])
                g[np.ix_(idx, idx)] += km @ km.T
        return g, ho * wo * cout
    g = np.zeros((n_out, n_out))
    readers_r = [[] for _ in range(H)]
    for i in range(ho):
        for a, h in rows[i]:
            readers_r[h].append((i, a))
    readers_c = [[] for _ in range(W)]
    for j in range(wo):
        for b, w in cols[j]:
            readers_c[w].append((j, b))
    for h in range(H):
        for w in range(W):
            rd = [(i, j, a, b) for i, a in readers_r[h] for j, b in readers_c[w]]
            if not rd:
                continue
            mm = np.concatenate([kernel[a, b].T for _, _, a, b in rd], axis=0)
            idx = np.concatenate([(i * wo + j) * cout + np.arange(cout) for i, j, _, _ in rd])
            g[np.ix_(idx, idx)] += mm @ mm.T
    return g, H * W * cin


def _explicit_bound(kernel, size, strides, padding):
    scale = _pow2_scale(kernel)
    g, contraction = explicit_gram(kernel * scale, size, strides, padding)
    return _round_up(_gram_to_bound(g, contraction, _certified_lambda_max(g)) / scale)


def lanczos_start(n):
    """The fixed start vector of `lanczos_top` (and of the device's, `bounds.device`)."""
    return np.random.default_rng(0).standard_normal(n)


def lanczos_top(g, steps):
    """Largest Ritz value of the symmetric ``g`` (as stored) after ``steps`` Lanczos steps with
    full reorthogonalization, from a fixed start vector.
    At most lambda_max(g) in exact arithmetic and close to it: a *target* for
    `cholesky_lambda_max`, never a bound."""
    n = g.shape[0]
    steps = max(1, min(int(steps), n))
    q = lanczos_start(n)
    basis = np.empty((steps + 1, n))
    basis[0] = q / np.linalg.norm(q)
    alpha, beta = np.zeros(steps), np.zeros(steps)
    for j in range(steps):
        w = g @ basis[j]
        alpha[j] = basis[j] @ w
        for _ in range(2):  # classical Gram-Schmidt, twice
            w -= basis[:j + 1].T @ (basis[:j + 1] @ w)
        beta[j] = np.linalg.norm(w)
        if not beta[j] > 1e-12 * max(abs(alpha[j]), 1e-300):  # an invariant subspace: exact Ritz values
            steps = j + 1
            break
        basis[j + 1] = w / beta[j]
    tri = np.diag(alpha[:steps]) + np.diag(beta[:steps - 1], 1) + np.diag(beta[:steps - 1], -1)
    return float(np.linalg.eigvalsh(tri)[-1])


def cholesky_lambda_max(g, t):
    """A float64 upper bound on lambda_max of the symmetric matrix with ``g``'s lower (or upper)
    triangle, proved by LAPACK's Cholesky factorization of ``B = fl(t I - g)``; None if it fails (``t`` below
    lambda_max, or too close).

    If the factorization completes, its computed factor satisfies ``L L^T = B + dB`` with
    ``|dB| <= gamma |L| |L|^T`` for any order of the inner products (Higham, *Accuracy and
    Stability of Numerical Algorithms*, Thm 10.3: ``gamma_{n+1}``; we take ``gamma = 4 (n + 2) u /
    (1 - 4 (n + 2) u)``, which also covers a division done as a multiplication by a rounded
    reciprocal). So ``lambda_min(B) >= -gamma ||L||_F^2 >= -gamma trace(B) / (1 - gamma)``, and B
    differs from ``t I - g`` only on the diagonal, by at most ``u max|b_ii|``:
    ``lambda_max(g) <= t + gamma trace|B| / (1 - gamma) + u max|b_ii|`` (times 1 + 1e-6 for the
    rounding of the trace and this formula). At order 3072 the terms add ~1e-9 t."""
    g = np.asarray(g, dtype=np.float64)
    n = g.shape[0]
    t = float(t)
    # LAPACK reads one triangle of b (numpy's: the lower); either is -g's there, and the Gram
    # rounding analysis (`_gram_to_bound`) holds entry by entry, so for either symmetric matrix
    b = np.negative(g)
    diag = t - np.diagonal(g)
    b[np.diag_indices(n)] = diag
    try:
        factor = np.linalg.cholesky(b)
    except np.linalg.LinAlgError:
        return None
    if not np.all(np.isfinite(np.diagonal(factor))):
        return None
    gamma = 4.0 * (n + 2) * _U / (1.0 - 4.0 * (n + 2) * _U)
    absd = np.abs(diag)
    up = t + (gamma / (1.0 - gamma) * float(np.sum(absd)) + _U * float(np.max(absd))) * (1.0 + 1e-6)
    return _round_up(up * (1.0 + 4 * _U))


def _certified_lambda_max(g):
    """An upper bound on lambda_max(g) by `cholesky_lambda_max` at targets ``theta (1 + margin)``
    (`lanczos_top`'s theta, `_CHOLESKY_MARGINS` in turn), for orders from `_CHOLESKY_MIN_DIM`;
    None (the caller's eigvalsh) below that or if every target fails. At most 1e-8 looser (relative,
    in lambda) than the top eigenvalue where the Ritz value converged, 1e-5 where not."""
    if g.shape[0] < _CHOLESKY_MIN_DIM:
        return None
    theta = lanczos_top(g, _LANCZOS_STEPS)
    if not (math.isfinite(theta) and theta > 0):
        return None
    for margin in _CHOLESKY_MARGINS:
        lam = cholesky_lambda_max(g, theta * (1.0 + margin))
        if lam is not None:
            return lam
    return None


def _gram_to_bound(g, contraction, lam_max=None):
    """Upper bound on sqrt(lambda_max(G_exact)) from a computed Gram matrix ``g``.

    ``|g - G_exact| <= gamma_{T+2} |A|^T |A|`` entrywise (T = contraction length, any
    summation order), so ``||g - G_exact||_2 <= gamma_{T+2} ||A||_F^2`` with
    ``||A||_F^2 = trace(G_exact) <= trace(g) (1 + gamma_{T+2}) (1 + n u)``; ``eigvalsh``
    returns the exact eigenvalues of ``g + E``, ``||E|| <= _REL_SLACK ||g||``. ``lam_max``: an
    upper bound on lambda_max(g) already certified (`bounds.device`), in place of eigvalsh.
    """
    n = g.shape[0]
    if lam_max is None:
        lam_max = max(float(np.linalg.eigvalsh(g)[-1]), 0.0) * (1.0 + _REL_SLACK)
    gamma = (contraction + 2) * _U / (1.0 - (contraction + 2) * _U)
    fro2 = float(np.trace(g)) * (1.0 + gamma) * (1.0 + (n + 2) * _U)
    lam_up = lam_max + 1.01 * gamma * fro2
    return _round_up(math.sqrt(lam_up) * (1.0 + 4 * _U))


def dense_spectral_bound(kernel):
    """Guaranteed upper bound on the largest singular value of a (din, dout) matrix.

    Soundness: ``G = fl(K^T K)`` on the smaller side (contraction length m) satisfies
    ``||G - K^T K||_2 <= gamma_{m+2} ||K||_F^2`` for any summation order, and ``eigvalsh``
    returns the exact eigenvalues of ``G + E``, ``||E|| <= _REL_SLACK ||G||``, hence
    ``sigma_max^2 <= lam_hat (1 + slack) + gamma_{m+2} ||K||_F^2`` (formula rounding covered
    by extra factors and upward rounding; ``_gram_to_bound``).  Power-of-two scaling is exact.
    """
    k = np.asarray(kernel, dtype=np.float64)
    if k.ndim != 2:
        raise ValueError(f"dense kernel must be 2-D, got shape {k.shape}")
    if k.size == 0 or not np.any(k):
        return 0.0
    if not np.all(np.isfinite(k)):
        return float("inf")
    if k.shape[0] < k.shape[1]:
        k = k.T  # (m, n) with m >= n; the Gram matrix is n x n
    scale = _pow2_scale(k)  # exact; keeps the Gram product away from over/underflow
    ks = k * scale
    return _round_up(_gram_to_bound(ks.T @ ks, k.shape[0]) / scale)


def conv2d_operator_matrix(kernel, input_size, strides=(1, 1), padding=((0, 0), (0, 0))):
    """The explicit matrix of A (rows: flattened output (Ho, Wo, cout), cols: flattened input
    (H, W, cin)), for tests at small shapes."""
    kernel = np.asarray(kernel, dtype=np.float64)
    H, W = as_pair(input_size, "input_size")
    sh, sw = as_pair(strides, "strides")
    (pt, pb), (pl, pr) = explicit_padding(padding)
    kh, kw, cin, cout = kernel.shape
    ho = _out_len(H, kh, sh, pt, pb)
    wo = _out_len(W, kw, sw, pl, pr)
    mat = np.zeros((ho, wo, cout, H, W, cin))
    for i in range(ho):
        for j in range(wo):
            for a in range(kh):
                h = sh * i + a - pt
                if not 0 <= h < H:
                    continue
                for b in range(kw):
                    w = sw * j + b - pl
                    if 0 <= w < W:
                        mat[i, j, :, h, w, :] = kernel[a, b].T  # each (i, j, h, w) hit once
    return mat.reshape(ho * wo * cout, H * W * cin)


def conv2d_apply(x, kernel, strides=(1, 1), padding=((0, 0), (0, 0))):
    """numpy reference of the layer's linear map on one (H, W, cin) array (float64)."""
    x = np.asarray(x, dtype=np.float64)
    kernel = np.asarray(kernel, dtype=np.float64)
    sh, sw = as_pair(strides, "strides")
    (pt, pb), (pl, pr) = explicit_padding(padding)
    kh, kw, cin, cout = kernel.shape
    H, W = x.shape[:2]
    xp = np.pad(x, ((pt, pb), (pl, pr), (0, 0)))
    ho = _out_len(H, kh, sh, pt, pb)
    wo = _out_len(W, kw, sw, pl, pr)
    y = np.zeros((ho, wo, cout))
    for a in range(kh):
        for b in range(kw):
            patch = xp[a : a + sh * (ho - 1) + 1 : sh, b : b + sw * (wo - 1) + 1 : sw]
            y += patch @ kernel[a, b]
    return y


def conv2d_apply_transpose(y, kernel, input_size, strides=(1, 1), padding=((0, 0), (0, 0))):
    """Adjoint of ``conv2d_apply``: maps (Ho, Wo, cout) -> (H, W, cin)."""
    y = np.asarray(y, dtype=np.float64)
    kernel = np.asarray(kernel, dtype=np.float64)
    H, W = as_pair(input_size, "input_size")
    sh, sw = as_pair(strides, "strides")
    (pt, pb), (pl, pr) = explicit_padding(padding)
    kh, kw, cin, cout = kernel.shape
    ho, wo = y.shape[:2]
    xp = np.zeros((H + pt + pb, W + pl + pr, cin))
    for a in range(kh):
        for b in range(kw):
            xp[a : a + sh * (ho - 1) + 1 : sh, b : b + sw * (wo - 1) + 1 : sw] += y @ kernel[a, b].T
    return xp[pt : pt + H, pl : pl + W]
