"""Certificates from logits, margin bounds and rounding terms (float64 numpy)."""
import dataclasses

import numpy as np

from gloro_keras.ops.labels import finite_argmax

# float64 round-off of the final comparison: the margin ŷ_j − ŷ_i of two float32 values and the
# affine threshold are each within a few units of 2⁻⁵³ (relative); these cover it many times over.
_REL = 1e-12
_ABS = 1e-300


def margin_slack_rate(logits, rows, margin_bounds, a=None, b=None):
    """(slack, rate) (N, m) of class `rows[n]` against every class i, float64:

        slack_i = ŷ_j − ŷ_i − a_ji,   rate_i = K_ji + b_ji   (j = rows[n]),

    so j beats i throughout the ε-ball iff slack_i > ε·rate_i; each rounded towards "not
    certified". `logits` must be finite (see `finite_argmax`)."""
    logits = np.asarray(logits, dtype=np.float64)
    n = np.arange(len(rows))
    a = 0.0 if a is None else np.asarray(a, dtype=np.float64)
    b = 0.0 if b is None else np.asarray(b, dtype=np.float64)
    with np.errstate(invalid="ignore", over="ignore"):
        gap = logits[n, rows][:, None] - logits  # exact, or within 2⁻⁵³ of itself
        slack = gap * (1.0 - _REL) - a * (1.0 + _REL) - _ABS
        rate = (np.asarray(margin_bounds)[rows] + b) * (1.0 + _REL)
    return slack, rate


@dataclasses.dataclass
class MarginCertificate:
    """Per input, what certification needs: the predicted class j and, for every class i,

        slack_i = ŷ_j − ŷ_i − a_ji,   rate_i = K_ji + b_ji,

    so that j is certified at radius ε iff slack_i > ε·rate_i for every i ≠ j, and the
    certified radius is min_i slack_i / rate_i. `a`, `b` are the floating-point error terms
    (`gloro_keras.models.rounding`; 0 for exact-arithmetic certificates). Rows with a
    non-finite logit or error term are never certified.

    Example:
    >>> c = MarginCertificate.build(np.array([[2.0, 0.0]]), np.array([[0.0, 4.0], [4.0, 0.0]]))
    >>> c.certify(0.4), c.radius()
    (array([0]), array([0.5]))
    """

    logits: np.ndarray
    predicted: np.ndarray
    slack: np.ndarray
    rate: np.ndarray
    valid: np.ndarray

    @classmethod
    def build(cls, logits, margin_bounds, a=None, b=None):
        safe, finite, j = finite_argmax(logits)
        slack, rate = margin_slack_rate(safe, j, margin_bounds, a, b)
        own = np.arange(safe.shape[1])[None, :] == j[:, None]
        valid = finite & np.all(np.isfinite(slack) | own, axis=-1) & np.all(np.isfinite(rate), axis=-1)
        rows = np.arange(len(j))
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
