"""Empirical soundness check of robustness certificates.

A certificate "x is robust at radius r" claims that ``argmax f(x')`` equals the
certified prediction for *every* ``x'`` with ``‖x' − x‖₂ ≤ r``.  This module
attacks every certified point inside (just under) its certified radius with
strong ℓ2 attacks — untargeted margin PGD with random restarts, margin
Auto-PGD, and targeted margin PGD towards the runner-up classes — *without* a box constraint (the
certificate does not assume one).  An attack can never succeed against a
sound certificate, so any success is a **certification bug** (a Lipschitz
bound that is too small, e.g. an unconverged power iteration, or a wrong
radius formula).  Passing the check is evidence, not proof, of soundness.
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass, field
from typing import Optional

import numpy as np
from keras import ops

from . import _grad
from .pgd import (
    _as_per_example,
    _normalize_clip,
    _num_classes,
    _pgd_core,
    _prepare,
    _random_in_ball,
)

__all__ = [
    "SoundnessReport",
    "CertificationSoundnessWarning",
    "CertificationSoundnessError",
    "soundness_check",
    "soundness_check_gloro",
]

logger = logging.getLogger("gloro_keras.attacks")


class CertificationSoundnessWarning(RuntimeWarning):
    """An attack changed the prediction of a certified point: a certification bug."""


class CertificationSoundnessError(AssertionError):
    """Raised by :func:`soundness_check` with ``raise_on_violation=True``."""


@dataclass
class SoundnessReport:
    """Result of :func:`soundness_check` (also readable like a dict).

    Attributes:
        num_checked: certified points attacked (``radii > 0`` and a class
            prediction).
        num_violations: certified points whose prediction the attack changed.
        violating_indices: their indices into ``x``.
        max_margin_drop: max over checked points of
            ``margin(x) − margin(x_adv)`` where
            ``margin = f_pred − max_{j≠pred} f_j``.
        min_adv_margin: smallest margin reached at an attacked point (< 0 only
            for violations).
        empirical_margin_lipschitz: max over checked points of
            ``(margin(x) − margin(x_adv)) / ‖x_adv − x‖`` — a lower bound on the
            Lipschitz constant of the margin function, i.e. on ``max_j K_pred,j``.
        checked: bool mask of the checked points.
        clean_margin, adv_margin: per point (``nan`` where not checked).
        x_adv: attacked inputs (equal to ``x`` where not checked).
        attack_radius: the radius each point was attacked at (0 if unchecked).
    """

    num_checked: int
    num_violations: int
    violating_indices: np.ndarray
    max_margin_drop: float
    min_adv_margin: float
    empirical_margin_lipschitz: float
    checked: np.ndarray
    clean_margin: np.ndarray
    adv_margin: np.ndarray
    x_adv: np.ndarray
    attack_radius: np.ndarray
    info: dict = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.num_violations == 0

    def __getitem__(self, key):
        return getattr(self, key)

    def summary(self) -> str:
        status = "OK" if self.ok else "CERTIFICATION BUG"
        return (
            f"soundness check [{status}]: {self.num_violations} violation(s) among "
            f"{self.num_checked} certified points; max margin drop {self.max_margin_drop:.6g}, "
            f"min adversarial margin {self.min_adv_margin:.6g}, empirical margin "
            f"Lipschitz >= {self.empirical_margin_lipschitz:.6g}"
        )


def _margins(logits, labels):
    idx = np.arange(logits.shape[0])
    fy = logits[idx, labels]
    other = logits.copy()
    other[idx, labels] = -np.inf
    return fy - other.max(axis=1)


def _logits_np(pm, x, batch_size):
    state = pm.state()
    out = []
    for i in range(0, x.shape[0], batch_size):
        out.append(_grad.to_numpy(pm.apply(state, ops.convert_to_tensor(x[i : i + batch_size]))))
    return np.concatenate(out).astype(np.float64)


@_grad.float32_kernels
def soundness_check(
    logits_model,
    x,
    predictions,
    radii,
    steps: int = 100,
    restarts: int = 3,
    clip=None,
    num_targets: int = 9,
    shrink: float = 1e-6,
    atol: float = 0.0,
    batch_size: int = 256,
    seed: int = 0,
    raise_on_violation: bool = False,
    step_size: Optional[float] = None,
    use_apgd: bool = True,
) -> SoundnessReport:
    """Attack every certified point within its certified radius.

    Args:
        logits_model: the model's *clean* logits (``GloroModel.network``), a
            keras model or callable ``x -> (B, m)``.
        x: inputs ``(N, ...)``.
        predictions: certified class per point; entries outside ``[0, m)``
            (e.g. ``m``, GloRo's "not certified"/⊥) are skipped.
        radii: certified radius per point (or a scalar, e.g. the ε of a
            fixed-radius certificate); points with radius ``<= 0`` are skipped.
        steps: PGD steps per run.
        restarts: untargeted margin-PGD runs (first from ``x``, then random
            starts in the ball).
        clip: box for the attack; ``None`` (default) because the certificate
            holds on the whole ball, not only inside ``[0, 1]^d``.
        num_targets: additionally run targeted margin PGD towards each of the
            ``num_targets`` highest-scoring other classes (at ``x``).
        shrink: attack radius is ``radii · (1 − shrink)`` (stay strictly inside).
        atol: a point is a violation if another class beats the certified one
            by more than ``atol`` at the attacked point (``0``: strictly beats).
        raise_on_violation: raise :class:`CertificationSoundnessError` instead of
            only warning.
        step_size: PGD step, default ``2.5 · radius / steps``.
        use_apgd: also run one untargeted Auto-PGD (margin loss) from ``x``.

    Returns:
        :class:`SoundnessReport`.  Violations are also reported with
        ``warnings.warn(..., CertificationSoundnessWarning)`` and
        ``logging.error`` — a violation means the certificate is **unsound**.
    """
    pm, x = _prepare(logits_model, x)
    n = x.shape[0]
    m = _num_classes(pm, x) if n else 0
    pred = np.asarray(predictions).astype(np.int64).reshape(-1)
    if pred.shape[0] != n:
        raise ValueError("predictions must have one entry per example")
    r = _as_per_example(radii, n, "radii", dtype=np.float64)
    checked = (r > 0) & np.isfinite(r) & (pred >= 0) & (pred < m)
    idx = np.flatnonzero(checked)
    attack_radius = np.where(checked, r * (1.0 - shrink), 0.0)

    clean_margin = np.full(n, np.nan)
    adv_margin = np.full(n, np.nan)
    x_adv = x.copy()
    if idx.size:
        xs = x[idx]
        ys = pred[idx]
        eps = attack_radius[idx].astype(np.float32)
        logits = _logits_np(pm, xs, batch_size)
        cm = _margins(logits, ys)
        clean_margin[idx] = cm
        best_m = cm.copy()
        best_x = xs.copy()

        def absorb(xa):
            nonlocal best_m, best_x
            mm = _margins(_logits_np(pm, xa, batch_size), ys)
            better = mm < best_m
            best_m = np.where(better, mm, best_m)
            best_x[better] = xa[better]

        # 1) untargeted margin PGD: first from x, then from random points of
        #    the ball; every run goes to completion on every point (we want the
        #    lowest margin, not only a first success)
        rng = np.random.default_rng(seed)
        for rr in range(max(int(restarts), 1)):
            start = None
            if rr > 0:
                start = xs + _random_in_ball(rng, xs.shape, eps).astype(xs.dtype)
                if clip is not None:
                    start = np.clip(start, *_normalize_clip(clip))
            xa, _, _ = _pgd_core(
                pm, xs, ys, None, eps, steps, 1, step_size, clip, batch_size, seed,
                "margin", m, x_start=start,
            )
            absorb(xa)
        # 2) step-size-free Auto-PGD on the margin loss
        if use_apgd:
            xa, _, _ = _pgd_core(
                pm, xs, ys, None, eps, steps, 1, None, clip, batch_size, seed,
                "margin", m, method="apgd",
            )
            absorb(xa)
        # 3) targeted margin PGD towards the runner-up classes
        k = int(min(max(num_targets, 0), m - 1))
        if k > 0:
            masked = logits.copy()
            masked[np.arange(len(ys)), ys] = -np.inf
            order = np.argsort(-masked, axis=1)[:, :k]
            for t in range(k):
                xa, _, _ = _pgd_core(
                    pm, xs, ys, order[:, t], eps, steps, 1, step_size, clip,
                    batch_size, seed, "margin", m,
                )
                absorb(xa)
        adv_margin[idx] = best_m
        x_adv[idx] = best_x

    viol_mask = checked & (adv_margin < -atol)
    violating = np.flatnonzero(viol_mask)
    drop = clean_margin - adv_margin
    pert = np.linalg.norm((x_adv.astype(np.float64) - x).reshape(n, -1), axis=1) if n else np.zeros(0)
    with np.errstate(divide="ignore", invalid="ignore"):
        lip = np.where(checked & (pert > 0), drop / np.where(pert > 0, pert, 1.0), np.nan)
    report = SoundnessReport(
        num_checked=int(idx.size),
        num_violations=int(violating.size),
        violating_indices=violating,
        max_margin_drop=float(np.nanmax(drop)) if idx.size else 0.0,
        min_adv_margin=float(np.nanmin(adv_margin)) if idx.size else float("inf"),
        empirical_margin_lipschitz=float(np.nanmax(lip)) if np.any(np.isfinite(lip)) else 0.0,
        checked=checked,
        clean_margin=clean_margin,
        adv_margin=adv_margin,
        x_adv=x_adv,
        attack_radius=attack_radius,
        info=dict(steps=steps, restarts=restarts, num_targets=num_targets, shrink=shrink,
                  clip=_normalize_clip(clip), atol=atol, use_apgd=use_apgd),
    )
    if report.num_violations:
        shown = ", ".join(str(i) for i in violating[:20])
        more = " ..." if violating.size > 20 else ""
        msg = (
            "!!! CERTIFICATION BUG: the prediction of "
            f"{report.num_violations}/{report.num_checked} CERTIFIED points changed inside "
            f"their certified l2 radius (indices {shown}{more}; lowest adversarial margin "
            f"{report.min_adv_margin:.6g}). A sound certificate can never be broken by an "
            "attack: the Lipschitz bound is too small (e.g. unconverged power iteration) "
            "or the radius/epsilon is wrong. !!!"
        )
        logger.error(msg)
        if raise_on_violation:
            raise CertificationSoundnessError(msg)
        warnings.warn(msg, CertificationSoundnessWarning, stacklevel=2)
    else:
        logger.info(report.summary())
    return report


@_grad.float32_kernels
def soundness_check_gloro(model, x, epsilon=None, **kwargs) -> SoundnessReport:
    """:func:`soundness_check` for a GloRo model (duck-typed).

    Uses ``model.network`` (clean logits) and either ``model.certified_radius(x)``
    (``epsilon=None``: per-point radii, prediction = clean argmax) or
    ``model.certify(x, epsilon)`` (fixed radius ``epsilon``; points certified as
    ``m``/⊥ are skipped).
    """
    x = np.asarray(x, dtype=np.float32)
    network = model.network
    if epsilon is None:
        radii = np.asarray(model.certified_radius(x), dtype=np.float64).reshape(-1)
        pm = _grad.PureModel(network, example_x=x)
        preds = _logits_np(pm, x, kwargs.get("batch_size", 256)).argmax(axis=1)
    else:
        preds = np.asarray(model.certify(x, epsilon=epsilon)).astype(np.int64).reshape(-1)
        radii = np.where(preds < int(model.num_classes), float(epsilon), 0.0)
    return soundness_check(network, x, preds, radii, **kwargs)
