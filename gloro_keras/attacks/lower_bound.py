"""Empirical *lower* bounds on Lipschitz constants.

For any pair of inputs ``x ≠ x'``,

    ‖f(x) − f(x')‖₂ / ‖x − x'‖₂  ≤  Lip(f)

so the largest difference quotient found by any search is a valid lower bound
on the ℓ2 Lipschitz constant of the logits ``f`` — and, with a class pair
``(i, j)``, ``|g(x) − g(x')| / ‖x − x'‖`` with ``g = f_i − f_j`` lower-bounds the
margin Lipschitz constant ``K_ij`` a GloRo certificate relies on.  A GloRo
bound ``K`` that comes out *below* such an empirical lower bound is unsound
(e.g. an unconverged power iteration).

The search is gradient ascent on the difference quotient over both points of
every pair, with normalised steps whose length is ``step_size · ‖x − x'‖``
(the quotient is scale-free, so steps are taken relative to the pair's
distance), decayed with a cosine schedule.  The best pair seen during the run
is kept and its quotient is recomputed at the end from the model's outputs in
float64, so the returned value is an actual difference quotient of the model.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import numpy as np
from keras import ops

from gloro_keras.ops.norms import safe_norm

from . import _grad
from .pgd import _expand, _pad_to, _prepare, _num_classes, _safe_norm, _normalize_clip

__all__ = [
    "LipschitzLowerBound",
    "empirical_lipschitz_lower_bound",
    "margin_lipschitz_lower_bound",
]


@dataclass
class LipschitzLowerBound:
    """Result of the lower-bound searches (also readable like a dict).

    Attributes:
        value: the largest difference quotient found (the lower bound).
        per_pair: quotient of the best pair of every search row.
        x, x_prime: the best pair of every row (``value`` is attained by
            ``x[argmax per_pair]``, ``x_prime[argmax per_pair]``).
        point_index: index into the input ``x`` each row started from.
        class_pairs: ``(rows, 2)`` class pair ``(i, j)`` of each row for the
            margin version, else ``None``.
        matrix: ``(m, m)`` best quotient per class pair (symmetric; ``nan``
            where a pair was not searched), margin version only.
    """

    value: float
    per_pair: np.ndarray
    x: np.ndarray
    x_prime: np.ndarray
    point_index: np.ndarray
    class_pairs: Optional[np.ndarray] = None
    matrix: Optional[np.ndarray] = None
    info: dict = field(default_factory=dict)

    def __getitem__(self, key):
        return getattr(self, key)

    def __float__(self):
        return float(self.value)


def _build_fns(pm, use_coef: bool, clip):
    def quotient(xa, xb, state, coef):
        fa = ops.cast(pm.apply(state, xa), "float32")
        fb = ops.cast(pm.apply(state, xb), "float32")
        diff = fa - fb
        if use_coef:
            num = ops.abs(ops.sum(diff * coef, axis=-1))
        else:
            num = safe_norm(diff, axis=-1)
        den = _safe_norm(xa - xb)
        r = num / den
        return ops.sum(r), r

    vg = _grad.value_and_grad(quotient, argnums=(0, 1))

    def step(state, xa, xb, coef, s, best_a, best_b, best_r):
        nd = len(xa.shape)
        (_, r), (ga, gb) = vg(xa, xb, state, coef)
        better = r > best_r
        eb = _expand(better, nd)
        best_a = ops.where(eb, xa, best_a)
        best_b = ops.where(eb, xb, best_b)
        best_r = ops.where(better, r, best_r)
        dist = _expand(_safe_norm(xa - xb), nd)
        ga = ops.cast(ga, xa.dtype)
        gb = ops.cast(gb, xb.dtype)
        xa = xa + s * dist * ga / _expand(_safe_norm(ga), nd)
        xb = xb + s * dist * gb / _expand(_safe_norm(gb), nd)
        if clip is not None:
            xa = ops.clip(xa, clip[0], clip[1])
            xb = ops.clip(xb, clip[0], clip[1])
        return xa, xb, best_a, best_b, best_r

    def final(state, xa, xb, coef, best_a, best_b, best_r):
        _, r = quotient(xa, xb, state, coef)
        better = r > best_r
        eb = _expand(better, len(xa.shape))
        return ops.where(eb, xa, best_a), ops.where(eb, xb, best_b)

    def logits(state, x):
        return ops.cast(pm.apply(state, x), "float32")

    return _grad.compile_fn(step), _grad.compile_fn(final), _grad.compile_fn(logits)


def _unit_directions(rng, n, shape):
    d = int(np.prod(shape))
    v = rng.standard_normal((n, d))
    v /= np.linalg.norm(v, axis=1, keepdims=True)  # Gaussian draws: never 0
    return v.reshape((n,) + tuple(shape))


def _search(pm, xa0, xb0, coef, steps, step_size, clip, batch_size):
    """Run the ascent on rows (xa0, xb0[, coef]); returns (best_a, best_b, quotient64)."""
    use_coef = coef is not None
    clip = _normalize_clip(clip)
    step_fn, final_fn, logits_fn = _grad.cached(
        pm.model, ("lipschitz_lb", use_coef, clip), lambda: _build_fns(pm, use_coef, clip)
    )
    state = pm.state()
    n = xa0.shape[0]
    bs = int(min(batch_size, n))
    out_a = np.empty_like(xa0)
    out_b = np.empty_like(xb0)
    q = np.zeros(n, dtype=np.float64)
    steps = int(steps)
    sched = [
        step_size * (0.02 + 0.98 * 0.5 * (1.0 + np.cos(np.pi * t / max(steps, 1))))
        for t in range(steps)
    ]
    for b0 in range(0, n, bs):
        sl = slice(b0, min(b0 + bs, n))
        k = sl.stop - sl.start
        xa = ops.convert_to_tensor(_pad_to(xa0[sl], bs))
        xb = ops.convert_to_tensor(_pad_to(xb0[sl], bs))
        if use_coef:
            cb = ops.convert_to_tensor(_pad_to(coef[sl], bs))
        else:
            cb = ops.convert_to_tensor(np.zeros((bs, 1), np.float32))
        best_a, best_b = xa, xb
        best_r = ops.convert_to_tensor(np.full(bs, -1.0, np.float32))
        for t in range(steps):
            s = ops.convert_to_tensor(np.float32(sched[t]))
            xa, xb, best_a, best_b, best_r = step_fn(state, xa, xb, cb, s, best_a, best_b, best_r)
        best_a, best_b = final_fn(state, xa, xb, cb, best_a, best_b, best_r)
        a = _grad.to_numpy(best_a)
        b = _grad.to_numpy(best_b)
        fa = _grad.to_numpy(logits_fn(state, best_a)).astype(np.float64)[:k]
        fb = _grad.to_numpy(logits_fn(state, best_b)).astype(np.float64)[:k]
        a, b = a[:k], b[:k]
        diff = fa - fb
        if use_coef:
            num = np.abs(np.sum(diff * coef[sl].astype(np.float64), axis=-1))
        else:
            num = np.linalg.norm(diff, axis=-1)
        den = np.linalg.norm((a.astype(np.float64) - b.astype(np.float64)).reshape(k, -1), axis=1)
        q[sl] = np.where(den > 0, num / np.where(den > 0, den, 1.0), 0.0)
        out_a[sl] = a
        out_b[sl] = b
    return out_a, out_b, q


def _initial_pairs(x, pairs, init_scale, rng, clip):
    n = x.shape[0]
    pairs = int(pairs)
    xa = np.repeat(x, pairs, axis=0)
    point_index = np.repeat(np.arange(n), pairs)
    xb = xa + (init_scale * _unit_directions(rng, xa.shape[0], x.shape[1:])).astype(x.dtype)
    if clip is not None:
        xb = np.clip(xb, clip[0], clip[1])
    return xa, xb, point_index


@_grad.float32_kernels
def empirical_lipschitz_lower_bound(
    logits_model,
    x,
    steps: int = 100,
    step_size: float = 0.1,
    seed: int = 0,
    pairs: int = 1,
    init_scale: float = 0.1,
    clip=None,
    batch_size: int = 256,
) -> LipschitzLowerBound:
    """Lower bound on the ℓ2 Lipschitz constant of the logits ``x ↦ f(x)``.

    Starts ``pairs`` pairs ``(x, x + init_scale·u)`` (``u`` a random unit
    direction) from every input and runs ``steps`` steps of normalised
    gradient ascent on ``‖f(x) − f(x')‖₂ / ‖x − x'‖₂`` over both points
    (relative step ``step_size``, cosine-decayed).

    Args:
        logits_model: keras model / callable ``x -> (B, m)`` logits.
        x: starting inputs ``(N, ...)``.
        clip: optional ``(lo, hi)`` box for both points (``None``: search all of
            ``R^d``, which is the domain the certificate's bound covers).

    Returns:
        :class:`LipschitzLowerBound`; ``.value`` is the bound.
    """
    pm, x = _prepare(logits_model, x)
    rng = np.random.default_rng(seed)
    clip = _normalize_clip(clip)
    xa, xb, point_index = _initial_pairs(x, pairs, init_scale, rng, clip)
    a, b, q = _search(pm, xa, xb, None, steps, step_size, clip, batch_size)
    return LipschitzLowerBound(
        value=float(q.max()) if q.size else 0.0,
        per_pair=q,
        x=a,
        x_prime=b,
        point_index=point_index,
        info=dict(steps=steps, step_size=step_size, pairs=pairs, init_scale=init_scale),
    )


def _resolve_class_pairs(class_pairs, logits, m):
    """Per input point: list of (i, j) rows."""
    n = logits.shape[0]
    if isinstance(class_pairs, str):
        if class_pairs == "top2":
            order = np.argsort(-logits, axis=1)
            return [order[p, :2][None, :] for p in range(n)]
        if class_pairs == "all":
            ii, jj = np.triu_indices(m, k=1)
            allp = np.stack([ii, jj], axis=1)
            return [allp] * n
        raise ValueError(f"class_pairs must be 'top2', 'all' or an array of (i, j), got {class_pairs!r}")
    cp = np.asarray(class_pairs, dtype=np.int64).reshape(-1, 2)
    if np.any(cp < 0) or np.any(cp >= m) or np.any(cp[:, 0] == cp[:, 1]):
        raise ValueError("class pairs must be distinct classes in [0, m)")
    return [cp] * n


@_grad.float32_kernels
def margin_lipschitz_lower_bound(
    logits_model,
    x,
    class_pairs="top2",
    steps: int = 100,
    step_size: float = 0.1,
    seed: int = 0,
    pairs: int = 1,
    init_scale: float = 0.1,
    clip=None,
    batch_size: int = 256,
) -> LipschitzLowerBound:
    """Lower bound on the Lipschitz constants ``K_ij`` of the margins ``f_i − f_j``.

    Args:
        class_pairs: ``"top2"`` (per input, its predicted and runner-up
            classes: the pair that decides its certificate), ``"all"`` (every
            unordered pair; ``m(m−1)/2`` searches per input), or an array of
            ``(i, j)`` pairs searched for every input.
        pairs: search starts per (input, class pair).  The first start of each
            uses the direction of ``∇(f_i − f_j)(x)`` (optimal for a locally
            linear margin), the others random directions.
        Other arguments as :func:`empirical_lipschitz_lower_bound`.

    Returns:
        :class:`LipschitzLowerBound` with ``.value`` = max over everything,
        ``.matrix[i, j]`` the best quotient found for each pair and
        ``.class_pairs`` the pair of every row.
    """
    pm, x = _prepare(logits_model, x)
    rng = np.random.default_rng(seed)
    clip = _normalize_clip(clip)
    m = _num_classes(pm, x)
    state = pm.state()
    # logits at x (batched, eager) to resolve "top2"
    logits = np.concatenate(
        [
            _grad.to_numpy(pm.apply(state, ops.convert_to_tensor(x[i : i + batch_size])))
            for i in range(0, x.shape[0], batch_size)
        ]
    ) if x.shape[0] else np.zeros((0, m))
    per_point = _resolve_class_pairs(class_pairs, logits, m)
    rows_x, rows_cp, rows_pt = [], [], []
    for p, cp in enumerate(per_point):
        for _ in range(int(pairs)):
            rows_x.append(np.repeat(x[p : p + 1], cp.shape[0], axis=0))
            rows_cp.append(cp)
            rows_pt.append(np.full(cp.shape[0], p))
    xa = np.concatenate(rows_x).astype(np.float32)
    cps = np.concatenate(rows_cp)
    point_index = np.concatenate(rows_pt)
    n_rows = xa.shape[0]
    coef = np.zeros((n_rows, m), np.float32)
    coef[np.arange(n_rows), cps[:, 0]] = 1.0
    coef[np.arange(n_rows), cps[:, 1]] = -1.0

    # initial directions: gradient of the margin for the first start, random otherwise
    dirs = _unit_directions(rng, n_rows, x.shape[1:]).astype(np.float32)
    first = np.zeros(n_rows, bool)
    seen = set()
    for r in range(n_rows):
        key = (int(point_index[r]), int(cps[r, 0]), int(cps[r, 1]))
        if key not in seen:
            seen.add(key)
            first[r] = True
    if np.any(first):
        g = _margin_gradients(pm, state, xa[first], coef[first], batch_size)
        gn = np.linalg.norm(g.reshape(g.shape[0], -1), axis=1)
        ok = gn > 0
        gdir = g / np.where(ok, gn, 1.0).reshape((-1,) + (1,) * (g.ndim - 1))
        sub = dirs[first]
        sub[ok] = gdir[ok]
        dirs[first] = sub
    xb = xa + init_scale * dirs
    if clip is not None:
        xb = np.clip(xb, clip[0], clip[1])

    a, b, q = _search(pm, xa, xb, coef, steps, step_size, clip, batch_size)
    matrix = np.full((m, m), np.nan)
    for (i, j), v in zip(cps, q):
        if not (matrix[i, j] >= v):
            matrix[i, j] = matrix[j, i] = v
    return LipschitzLowerBound(
        value=float(q.max()) if q.size else 0.0,
        per_pair=q,
        x=a,
        x_prime=b,
        point_index=point_index,
        class_pairs=cps,
        matrix=matrix,
        info=dict(steps=steps, step_size=step_size, pairs=pairs, init_scale=init_scale,
                  class_pairs=class_pairs if isinstance(class_pairs, str) else "explicit"),
    )


def _margin_gradients(pm, state, x, coef, batch_size):
    def build():
        def obj(xx, st, c):
            f = ops.cast(pm.apply(st, xx), "float32")
            return ops.sum(f * c), f

        vg = _grad.value_and_grad(obj, argnums=0)

        def g(st, xx, c):
            (_, _), gr = vg(xx, st, c)
            return gr

        return _grad.compile_fn(g)

    fn = _grad.cached(pm.model, ("margin_grad",), build)
    n = x.shape[0]
    bs = int(min(batch_size, n))
    out = np.empty_like(x)
    for b0 in range(0, n, bs):
        sl = slice(b0, min(b0 + bs, n))
        k = sl.stop - sl.start
        gr = fn(state, ops.convert_to_tensor(_pad_to(x[sl], bs)), ops.convert_to_tensor(_pad_to(coef[sl], bs)))
        out[sl] = _grad.to_numpy(gr)[:k]
    return out
