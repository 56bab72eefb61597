"""Margin bounds and the ⊥ logit, in keras.ops (training) and float64 numpy (certification)."""
import dataclasses
import math

import numpy as np
from keras import ops

from gloro_keras.layers._ops import TINY

# Relative inflation of float64 certification bounds: covers float64 round-off in the
# Gram-form pairwise distances and products (errors ~1e-15 relative).
FLOAT64_SAFETY = 1e-9


def check_epsilon(value, name="epsilon"):
    """ε as a float; a clear error for non-numbers, NaN, ±inf and negative values."""
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number; got {value!r}") from None
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"{name} must be finite and >= 0; got {value}")
    return value


def sparse_labels(y, num_classes):
    """Integer labels (B,) from sparse (B,) / (B, 1) or one-hot (B, m) / (B, m+1) targets."""
    y = ops.convert_to_tensor(y)
    if len(y.shape) >= 2 and y.shape[-1] is not None and y.shape[-1] in (num_classes, num_classes + 1) and y.shape[-1] > 1:
        return ops.cast(ops.argmax(y, axis=-1), "int32")
    return ops.cast(ops.reshape(y, (-1,)), "int32")


def pairwise_distances(w):
    """(m, m) matrix of ‖w_i − w_j‖ for the columns of w (d, m); NaN-safe."""
    sq = ops.sum(ops.square(w), axis=0)
    d2 = sq[:, None] + sq[None, :] - 2.0 * ops.matmul(ops.transpose(w), w)
    return ops.sqrt(ops.maximum(d2, TINY))


def bottom_logit(logits, margin_bounds, epsilon):
    """y_⊥ = max_{i≠j} (y_i + ε·K_ji), j = argmax y."""
    m = logits.shape[-1]
    j = ops.argmax(logits, axis=-1)
    lifted = logits + epsilon * ops.take(margin_bounds, j, axis=0)
    return ops.max(ops.where(ops.one_hot(j, m) > 0, float("-inf"), lifted), axis=-1)


def pairwise_distances_upper(w):
    """Upper bounds on ‖w_i − w_j‖ computed in float32 (Gram-form cancellation covered)."""
    d = w.shape[0]
    sq = ops.sum(ops.square(w), axis=0)
    d2 = sq[:, None] + sq[None, :] - 2.0 * ops.matmul(ops.transpose(w), w)
    err = (2.0 * (d + 4) * 2.0 ** -24) * (sq[:, None] + sq[None, :])
    return ops.sqrt(ops.maximum(d2, 0.0) + err + TINY) * (1.0 + 2.0 ** -20)


def strict_bottom_logit(logits, y_bot):
    """y_⊥ raised just above max y where the prediction is not strictly certified, so that
    argmax over [y, y_⊥] is ⊥ on ties (argmax resolves a tie to the lower index)."""
    top = ops.max(logits, axis=-1)
    above = top + ops.abs(top) * 2.0 ** -20 + 2.0 ** -120
    return ops.where(top > y_bot, y_bot, ops.maximum(y_bot, above))


# ---- float64 numpy side (certification) ----------------------------------------------
def pairwise_distances_np(w):
    w = np.asarray(w, dtype=np.float64)
    sq = np.sum(w * w, axis=0)
    d2 = sq[:, None] + sq[None, :] - 2.0 * (w.T @ w)
    d = np.sqrt(np.maximum(d2, 0.0))
    np.fill_diagonal(d, 0.0)
    # Gram-form cancellation error is ≤ ~1e-15·(|w_i|²+|w_j|²) in d²: add it back.
    d = np.sqrt(d * d + 4e-15 * (sq[:, None] + sq[None, :])) * (1.0 + FLOAT64_SAFETY)
    np.fill_diagonal(d, 0.0)
    return d


def _predicted(logits):
    logits = np.asarray(logits, dtype=np.float64)
    finite = np.all(np.isfinite(logits), axis=-1)
    safe = np.where(finite[:, None], logits, 0.0)
    return safe, finite, np.argmax(safe, axis=-1)


def predicted_class(logits):
    """argmax over the logits of each row (0 for rows with a non-finite logit)."""
    return _predicted(logits)[2]


# float64 round-off of the final comparison: the margin ŷ_j − ŷ_i of two float32 values and the
# affine threshold are each within a few units of 2⁻⁵³ (relative); these cover it many times over.
_REL = 1e-12
_ABS = 1e-300


@dataclasses.dataclass
class MarginCertificate:
    """Per input, what certification needs: the predicted class j and, for every class i,

        slack_i = ŷ_j − ŷ_i − a_ji,   rate_i = K_ji + b_ji,

    so that j is certified at radius ε iff slack_i > ε·rate_i for every i ≠ j, and the
    certified radius is min_i slack_i / rate_i. `a`, `b` are the floating-point error terms
    (`gloro_keras.models.rounding`; 0 for exact-arithmetic certificates). Rows with a
    non-finite logit or error term are never certified.
    """

    logits: np.ndarray
    predicted: np.ndarray
    slack: np.ndarray
    rate: np.ndarray
    valid: np.ndarray

    @classmethod
    def build(cls, logits, margin_bounds, a=None, b=None):
        safe, finite, j = _predicted(logits)
        rows = np.arange(len(j))
        top = safe[rows, j][:, None]
        a = 0.0 if a is None else np.asarray(a, dtype=np.float64)
        b = 0.0 if b is None else np.asarray(b, dtype=np.float64)
        with np.errstate(invalid="ignore", over="ignore"):
            gap = top - safe  # exact, or within 2⁻⁵³ of itself
            slack = gap * (1.0 - _REL) - a * (1.0 + _REL) - _ABS
            rate = (margin_bounds[j] + b) * (1.0 + _REL)
        valid = finite & np.all(np.isfinite(slack) | (np.arange(safe.shape[1])[None, :] == j[:, None]), axis=-1)
        valid &= np.all(np.isfinite(rate), axis=-1)
        slack[rows, j] = np.inf
        rate[rows, j] = 0.0
        return cls(np.asarray(logits, dtype=np.float64), j, slack, rate, valid)

    @classmethod
    def concatenate(cls, parts):
        return cls(*(np.concatenate([getattr(p, f.name) for p in parts]) for f in dataclasses.fields(cls)))

    @property
    def num_classes(self):
        return self.logits.shape[-1]

    def certify(self, epsilon):
        """Certified class per input, or m (⊥)."""
        with np.errstate(invalid="ignore"):
            ok = np.all(self.slack > epsilon * self.rate, axis=-1) & self.valid
        return np.where(ok, self.predicted, self.num_classes).astype(np.int64)

    def radius(self):
        """Largest r such that the prediction is certified for every ε < r (0 if none)."""
        with np.errstate(divide="ignore", invalid="ignore"):
            r = np.where(self.rate > 0, self.slack / np.where(self.rate > 0, self.rate, 1.0),
                         np.where(self.slack > 0, np.inf, 0.0))
        r = np.min(r, axis=-1)
        return np.where(self.valid & (r > 0), r, 0.0)


def certify_np(logits, margin_bounds, epsilon):
    """Exact-arithmetic certificate from clean logits: class per row if
    `y_j > max_{i≠j}(y_i + ε·K_ji)`, else m (⊥). Non-finite rows and ties → ⊥."""
    return MarginCertificate.build(logits, margin_bounds).certify(epsilon)


def certified_radius_np(logits, margin_bounds):
    """Exact-arithmetic min_{i≠j} (y_j − y_i) / K_ji per row (0 if not robust or non-finite)."""
    return MarginCertificate.build(logits, margin_bounds).radius()
