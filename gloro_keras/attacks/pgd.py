"""ℓ2 projected gradient descent (PGD) on a logits model.

This is the attack behind the paper's "PGD accuracy" (empirical robust
accuracy): it can only *find* adversarial examples, so robust accuracy under
PGD is an upper bound on true robust accuracy, and it must never be lower than
the verified-robust accuracy (VRA) of a sound certificate.

Iteration, for every example independently (``δ = x_adv - x``)::

    g      = ∇_x loss(f(x_adv), y)
    x_adv  = x_adv + α · g / sqrt(max(Σ g², tiny))       # normalised ascent step
    x_adv  = x + δ · min(1, ε / ‖δ‖₂)                    # project onto the ℓ2 ball
    x_adv  = clip(x_adv, lo, hi)                          # project onto the box

Clipping after the ball projection keeps ``‖δ‖₂ ≤ ε`` whenever ``x`` itself
lies in the box (clipping to a box containing ``x`` is non-expansive in every
coordinate around ``x``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from keras import ops

from gloro_keras.ops.norms import safe_norm

from . import _grad

__all__ = ["PGDResult", "pgd_l2", "apgd_l2"]

_LOSSES = ("ce", "margin")


@dataclass
class PGDResult:
    """Result of :func:`pgd_l2` (also readable like a dict: ``res["x_adv"]``).

    Attributes:
        x_adv: adversarial inputs (float32, shape of ``x``).  For a successful
            example this is the first iterate found misclassified; otherwise the
            final iterate (PGD) / highest-loss iterate (APGD) of the restart that
            reached the lowest margin.
        success: bool per example, ``argmax f(x_adv) != y``.
        robust_accuracy: ``1 - mean(success)`` (misclassified clean points count
            as successes, so this is the paper's "PGD accuracy").
        margin: ``f_y(x_adv) - max_{j≠y} f_j(x_adv)`` per example (< 0 on success,
            up to ties).
        perturbation_norm: ``‖x_adv - x‖₂`` per example.
    """

    x_adv: np.ndarray
    success: np.ndarray
    robust_accuracy: float
    margin: np.ndarray
    perturbation_norm: np.ndarray
    info: dict = field(default_factory=dict)

    def __getitem__(self, key):
        return getattr(self, key)

    def keys(self):
        return ("x_adv", "success", "robust_accuracy", "margin", "perturbation_norm")


# ---------------------------------------------------------------------------
# keras.ops helpers shared by the attack modules


def _expand(v, ndim):
    """(B,) -> (B, 1, ..., 1) with ``ndim`` dims."""
    return ops.reshape(v, (-1,) + (1,) * (ndim - 1))


def _safe_norm(v):
    """Per-example ℓ2 norm, nan-safe (`gloro_keras.ops.safe_norm` over all but the batch axis)."""
    return safe_norm(v, axis=tuple(range(1, len(v.shape))))


def _margin(logits, y_onehot):
    """f_y - max_{j≠y} f_j, per example."""
    fy = ops.sum(logits * y_onehot, axis=-1)
    others = ops.where(y_onehot > 0, ops.full_like(logits, -np.inf), logits)
    return fy - ops.max(others, axis=-1)


def _attack_loss(logits, y_onehot, t_onehot, loss, targeted):
    """Per-example loss to *maximise*."""
    if loss == "margin":
        if targeted:
            return ops.sum(logits * t_onehot, axis=-1) - ops.sum(logits * y_onehot, axis=-1)
        return -_margin(logits, y_onehot)
    # cross-entropy
    lse = ops.logsumexp(logits, axis=-1)
    if targeted:
        return ops.sum(logits * t_onehot, axis=-1) - lse  # -CE(f, t)
    return lse - ops.sum(logits * y_onehot, axis=-1)  # CE(f, y)


def _project(x_new, x0, eps, clip):
    """Projection onto the ℓ2 ball of radius ``eps`` around ``x0``, then the box."""
    nd = len(x_new.shape)
    delta = x_new - x0
    factor = ops.minimum(1.0, eps / _safe_norm(delta))
    x_new = x0 + delta * _expand(factor, nd)
    if clip is not None:
        x_new = ops.clip(x_new, clip[0], clip[1])
    return x_new


def _record_success(x_adv, logits, y_onehot, best, found):
    """Keep the first misclassified iterate of every example."""
    nd = len(x_adv.shape)
    pred = ops.argmax(logits, axis=-1)
    y = ops.argmax(y_onehot, axis=-1)
    newly = ops.logical_and(ops.not_equal(pred, y), ops.logical_not(found))
    best = ops.where(_expand(newly, nd), x_adv, best)
    return best, ops.logical_or(found, newly)


def _build_pgd_fns(pm: _grad.PureModel, loss: str, targeted: bool, clip):
    """Compiled (pgd_step, apgd_step, evaluate) functions for one configuration."""

    def objective(x_adv, state, y_onehot, t_onehot):
        logits = ops.cast(pm.apply(state, x_adv), "float32")
        per_ex = _attack_loss(logits, y_onehot, t_onehot, loss, targeted)
        return ops.sum(per_ex), (logits, per_ex)

    vg = _grad.value_and_grad(objective, argnums=0)

    def _unit(g, like):
        g = ops.cast(g, like.dtype)
        return g / _expand(_safe_norm(g), len(like.shape))

    def pgd_step(state, x_adv, x0, y_onehot, t_onehot, eps, alpha, best, found):
        nd = len(x_adv.shape)
        (_, (logits, _)), g = vg(x_adv, state, y_onehot, t_onehot)
        best, found = _record_success(x_adv, logits, y_onehot, best, found)
        x_new = x_adv + _expand(alpha, nd) * _unit(g, x_adv)
        return _project(x_new, x0, eps, clip), best, found

    def apgd_step(state, x_k, x_prev, x0, y_onehot, t_onehot, eps, eta, momentum,
                  best, found, x_max, f_max):
        # Auto-PGD (Croce & Hein, 2020), l2 version:
        #   z       = P(x_k + eta * g / |g|)
        #   x_{k+1} = P(x_k + a (z - x_k) + (1 - a)(x_k - x_{k-1}))
        nd = len(x_k.shape)
        (_, (logits, f_k)), g = vg(x_k, state, y_onehot, t_onehot)
        best, found = _record_success(x_k, logits, y_onehot, best, found)
        improved = f_k > f_max
        x_max = ops.where(_expand(improved, nd), x_k, x_max)
        f_max = ops.where(improved, f_k, f_max)
        z = _project(x_k + _expand(eta, nd) * _unit(g, x_k), x0, eps, clip)
        x_next = _project(x_k + momentum * (z - x_k) + (1.0 - momentum) * (x_k - x_prev), x0, eps, clip)
        return x_next, f_k, best, found, x_max, f_max

    def evaluate(state, x_adv, y_onehot, t_onehot):
        logits = ops.cast(pm.apply(state, x_adv), "float32")
        per_ex = _attack_loss(logits, y_onehot, t_onehot, loss, targeted)
        return ops.argmax(logits, axis=-1), _margin(logits, y_onehot), per_ex

    return (
        _grad.compile_fn(pgd_step),
        _grad.compile_fn(apgd_step),
        _grad.compile_fn(evaluate),
    )


def _apgd_checkpoints(steps):
    """Iterations at which APGD may halve its step: w_j = ceil(p_j N)."""
    p = [0.0, 0.22]
    while p[-1] < 1.0:
        p.append(p[-1] + max(p[-1] - p[-2] - 0.03, 0.06))
    w = sorted({int(np.ceil(q * steps)) for q in p if q <= 1.0})
    return [v for v in w if 0 < v < steps]


def _run_pgd_batch(fns, state, x_cur, x0, yb, tb, eb, ab, steps):
    step_fn, _, _ = fns
    best = x_cur
    found = ops.convert_to_tensor(np.zeros(x_cur.shape[0], dtype=bool))
    for _ in range(int(steps)):
        x_cur, best, found = step_fn(state, x_cur, x0, yb, tb, eb, ab, best, found)
    return best, found, x_cur


def _run_apgd_batch(fns, state, x_cur, x0, yb, tb, eb, steps, rho=0.75, momentum=0.75):
    _, step_fn, eval_fn = fns
    bs = x_cur.shape[0]
    nd = len(x_cur.shape)
    eta = 2.0 * _grad.to_numpy(eb).astype(np.float32)
    best = x_cur
    found = ops.convert_to_tensor(np.zeros(bs, dtype=bool))
    x_max = x_cur
    f_max = ops.convert_to_tensor(np.full(bs, -np.inf, np.float32))
    x_prev = x_cur
    checkpoints = set(_apgd_checkpoints(int(steps)))
    last_w = 0
    n_inc = np.zeros(bs, np.int64)
    f_prev = None
    eta_at_w = eta.copy()
    fmax_at_w = np.full(bs, -np.inf, np.float32)
    one = ops.convert_to_tensor(np.float32(1.0))
    mom = ops.convert_to_tensor(np.float32(momentum))
    for k in range(int(steps)):
        x_next, f_k, best, found, x_max, f_max = step_fn(
            state, x_cur, x_prev, x0, yb, tb, eb, ops.convert_to_tensor(eta),
            one if k == 0 else mom, best, found, x_max, f_max,
        )
        f_k = _grad.to_numpy(f_k)
        if f_prev is not None:
            n_inc += f_k > f_prev
        f_prev = f_k
        x_prev, x_cur = x_cur, x_next
        if (k + 1) in checkpoints:
            w = k + 1
            fm = _grad.to_numpy(f_max)
            cond1 = n_inc < rho * (w - last_w)
            cond2 = (eta_at_w == eta) & (fmax_at_w == fm)
            halve = cond1 | cond2
            eta_at_w = eta.copy()
            fmax_at_w = fm
            eta = np.where(halve, eta / 2.0, eta).astype(np.float32)
            if np.any(halve):
                h = ops.convert_to_tensor(halve.reshape((-1,) + (1,) * (nd - 1)))
                x_cur = ops.where(h, x_max, x_cur)
                x_prev = ops.where(h, x_max, x_prev)
            n_inc[:] = 0
            last_w = w
    # the last iterate has not been evaluated yet
    pred, _, f_last = eval_fn(state, x_cur, yb, tb)
    pred = _grad.to_numpy(pred)
    y = _grad.to_numpy(yb).argmax(1)
    found_np = _grad.to_numpy(found)
    best_np = _grad.to_numpy(best)
    x_last = _grad.to_numpy(x_cur)
    newly = (pred != y) & ~found_np
    best_np[newly] = x_last[newly]
    found_np |= newly
    improved = _grad.to_numpy(f_last) > _grad.to_numpy(f_max)
    x_max_np = _grad.to_numpy(x_max)
    x_max_np[improved] = x_last[improved]
    return best_np, found_np, x_max_np


def _as_per_example(v, n, name, dtype=np.float32):
    a = np.asarray(v, dtype=dtype)
    if a.ndim == 0:
        a = np.full((n,), a, dtype=dtype)
    a = a.reshape(-1)
    if a.shape[0] != n:
        raise ValueError(f"{name} must be a scalar or have one entry per example ({n}), got {a.shape}")
    return a


def _random_in_ball(rng, shape, eps):
    """Uniform samples in the ℓ2 ball of radius eps (per example)."""
    n = shape[0]
    d = int(np.prod(shape[1:]))
    v = rng.standard_normal((n, d))
    v /= np.linalg.norm(v, axis=1, keepdims=True)  # Gaussian draws: never 0
    r = eps.astype(np.float64) * rng.uniform(size=n) ** (1.0 / d)
    return (v * r[:, None]).reshape(shape)


def _pad_to(a, size):
    """Pad the first axis of ``a`` to ``size`` by repeating its first row."""
    k = a.shape[0]
    if k == size:
        return a
    reps = np.repeat(a[:1], size - k, axis=0)
    return np.concatenate([a, reps], axis=0)


def _normalize_clip(clip):
    if clip is None:
        return None
    lo, hi = clip
    return (float(lo), float(hi))


def _pgd_core(
    pm,
    x,
    y,
    targets,
    epsilon,
    steps,
    restarts,
    step_size,
    clip,
    batch_size,
    seed,
    loss,
    num_classes,
    x_start=None,
    method="pgd",
):
    """PGD on numpy arrays; returns (x_adv, success, margin).

    ``x_start`` (optional) replaces ``x`` as the starting point of the first run.
    """
    n = x.shape[0]
    eps = _as_per_example(epsilon, n, "epsilon")
    if np.any(eps < 0):
        raise ValueError("epsilon must be non-negative")
    if step_size is None:
        alpha = 2.5 * eps / max(steps, 1)
    else:
        alpha = _as_per_example(step_size, n, "step_size")
    targeted = targets is not None
    clip = _normalize_clip(clip)

    fns = _grad.cached(
        pm.model,
        ("pgd", loss, targeted, clip),
        lambda: _build_pgd_fns(pm, loss, targeted, clip),
    )
    eval_fn = fns[2]
    state = pm.state()
    eye = np.eye(num_classes, dtype=np.float32)
    y_oh = eye[y]
    t_oh = eye[targets] if targeted else y_oh  # t_oh unused when untargeted

    rng = np.random.default_rng(seed)
    x_adv = x.copy()
    success = np.zeros(n, dtype=bool)
    margin = np.full(n, np.inf, dtype=np.float32)
    bs = int(min(batch_size, n)) if n else 1

    for r in range(max(int(restarts), 1)):
        todo = np.flatnonzero(~success)
        if todo.size == 0:
            break
        # draw all random starts of this restart up front (reproducible)
        if r == 0:
            starts = x[todo] if x_start is None else np.asarray(x_start, x.dtype)[todo]
        else:
            starts = x[todo] + _random_in_ball(rng, x[todo].shape, eps[todo]).astype(x.dtype)
            if clip is not None:
                starts = np.clip(starts, clip[0], clip[1])
        for b0 in range(0, todo.size, bs):
            idx = todo[b0 : b0 + bs]
            k = idx.size
            sl = slice(b0, b0 + k)
            xb = _pad_to(x[idx], bs)
            x_cur = ops.convert_to_tensor(_pad_to(starts[sl], bs))
            x0 = ops.convert_to_tensor(xb)
            yb = ops.convert_to_tensor(_pad_to(y_oh[idx], bs))
            tb = ops.convert_to_tensor(_pad_to(t_oh[idx], bs))
            eb = ops.convert_to_tensor(_pad_to(eps[idx], bs))
            ab = ops.convert_to_tensor(_pad_to(alpha[idx], bs))
            if method == "apgd":
                best, found, x_fin = _run_apgd_batch(fns, state, x_cur, x0, yb, tb, eb, steps)
            else:
                best, found, x_fin = _run_pgd_batch(fns, state, x_cur, x0, yb, tb, eb, ab, steps)
            found = _grad.to_numpy(found)[:k]
            best = _grad.to_numpy(best)[:k]
            x_fin = _grad.to_numpy(x_fin)[:k]
            # returned point: first misclassified iterate, else the final one
            x_out = np.where(found.reshape((-1,) + (1,) * (x.ndim - 1)), best, x_fin)
            pred, marg, _ = eval_fn(state, ops.convert_to_tensor(_pad_to(x_out, bs)), yb, tb)
            pred = _grad.to_numpy(pred)[:k]
            marg = _grad.to_numpy(marg)[:k]
            succ = pred != y[idx]
            # keep across restarts: any success, else the lowest margin so far
            better = succ | (marg < margin[idx])
            sel = idx[better]
            x_adv[sel] = x_out[better]
            margin[sel] = marg[better]
            success[idx] = succ
    return x_adv, success, margin


def _unwrap(logits_model):
    """A GloRo model (has ``.network`` and ``.certify``) is attacked through its
    clean-logits ``network``; the m+1 GloRo outputs must not be attacked."""
    net = getattr(logits_model, "network", None)
    if net is not None and hasattr(logits_model, "certify"):
        return net
    return logits_model


def _prepare(logits_model, x):
    logits_model = _unwrap(logits_model)
    x = np.asarray(x, dtype=np.float32)
    pm = _grad.PureModel(logits_model, example_x=x)
    return pm, x


def _num_classes(pm, x):
    logits = pm.apply(pm.state(), ops.convert_to_tensor(x[:1]))
    return int(logits.shape[-1])


@_grad.float32_kernels
def pgd_l2(
    logits_model,
    x,
    y,
    epsilon,
    steps: int = 50,
    restarts: int = 1,
    step_size=None,
    clip=(0.0, 1.0),
    batch_size: int = 256,
    seed: int = 0,
    loss: str = "ce",
    targets=None,
) -> PGDResult:
    """Untargeted (or targeted) ℓ2 PGD.

    Args:
        logits_model: a ``keras.Model`` / layer or any callable ``x -> (B, m)``
            logits (for a GloRo model pass ``model.network``: the *clean* logits).
        x: inputs, numpy array ``(N, ...)`` (images in ``[0, 1]``).
        y: integer labels ``(N,)``.
        epsilon: ℓ2 radius, scalar or one per example.
        steps: gradient steps per restart.
        restarts: number of runs; the first starts at ``x``, the others at a
            point drawn uniformly from the ε-ball (clipped to the box).  Only
            examples not yet broken are re-attacked.
        step_size: α, scalar or per example; default ``2.5 · ε / steps``.
        clip: ``(lo, hi)`` box the adversarial input must stay in, or ``None``.
        batch_size: examples per compiled call (the last batch is padded, so
            there is a single compiled shape).
        seed: seed of the random starts.
        loss: ``"ce"`` (cross-entropy) or ``"margin"`` (``max_{j≠y} f_j - f_y``;
            targeted: ``f_t - f_y``).
        targets: optional integer target class per example (targeted attack;
            success is still "prediction ≠ y").

    Returns:
        :class:`PGDResult` with ``x_adv``, ``success``, ``robust_accuracy``,
        ``margin`` and ``perturbation_norm``.
    """
    return _attack(
        "pgd", logits_model, x, y, epsilon, steps, restarts, step_size, clip,
        batch_size, seed, loss, targets,
    )


@_grad.float32_kernels
def apgd_l2(
    logits_model,
    x,
    y,
    epsilon,
    steps: int = 100,
    restarts: int = 1,
    clip=(0.0, 1.0),
    batch_size: int = 256,
    seed: int = 0,
    loss: str = "ce",
    targets=None,
) -> PGDResult:
    """ℓ2 Auto-PGD (APGD-CE with ``loss="ce"``; Croce & Hein, ICML 2020).

    Step size free: starts at ``2ε`` and is halved per example at the
    checkpoints ``w_j = ⌈p_j N⌉`` (``p_0 = 0, p_1 = 0.22,
    p_{j+1} = p_j + max(p_j − p_{j−1} − 0.03, 0.06)``) when fewer than 75 % of
    the steps since the last checkpoint increased the loss, or when neither the
    step nor the best loss changed; on halving the iterate restarts from the
    best point.  Momentum 0.75.  Arguments and result as :func:`pgd_l2`; for
    unsuccessful examples ``x_adv`` is the highest-loss iterate.
    """
    return _attack(
        "apgd", logits_model, x, y, epsilon, steps, restarts, None, clip,
        batch_size, seed, loss, targets,
    )


def _attack(method, logits_model, x, y, epsilon, steps, restarts, step_size, clip,
            batch_size, seed, loss, targets) -> PGDResult:
    if loss not in _LOSSES:
        raise ValueError(f"loss must be one of {_LOSSES}, got {loss!r}")
    pm, x = _prepare(logits_model, x)
    n = x.shape[0]
    y = np.asarray(y)
    if y.ndim == 2 and n and y.shape[0] == n and y.shape[1] > 1:
        y = y.argmax(axis=1)  # one-hot / probability labels
    y = y.astype(np.int64).reshape(-1)
    if y.shape[0] != n:
        raise ValueError("x and y must have the same number of examples")
    if n == 0:
        return PGDResult(x.copy(), np.zeros(0, bool), float("nan"), np.zeros(0, np.float32), np.zeros(0, np.float32))
    m = _num_classes(pm, x)
    if np.any(y < 0) or np.any(y >= m):
        raise ValueError(f"labels must be in [0, {m})")
    if targets is not None:
        targets = np.asarray(targets).astype(np.int64).reshape(-1)
        if targets.shape[0] != n:
            raise ValueError("targets must have one entry per example")
        if np.any(targets == y):
            raise ValueError("a target class equals the label")
    x_adv, success, margin = _pgd_core(
        pm, x, y, targets, epsilon, steps, restarts, step_size, clip, batch_size, seed, loss, m,
        method=method,
    )
    pert = np.linalg.norm((x_adv.astype(np.float64) - x).reshape(n, -1), axis=1)
    return PGDResult(
        x_adv=x_adv,
        success=success,
        robust_accuracy=float(1.0 - success.mean()),
        margin=margin,
        perturbation_norm=pert.astype(np.float32),
        info=dict(method=method, steps=steps, restarts=restarts, loss=loss,
                  clip=_normalize_clip(clip), targeted=targets is not None),
    )
