"""Relaxed robustness (Leino & Fredrikson, "Relaxing Local Robustness", NeurIPS 2021).

With the top-K classes j_1..j_K of an input (ranked by logit, ties to the lower index) and
S_k' = {j_1..j_k'}, the input is *certified top-k' robust* at radius ε when every class of
S_k' beats every class outside it throughout the ε-ball:

    M_k' = min_{l ≤ k', i ∉ S_k'} (y_{j_l} − ŷ_{l,i}) > 0,   ŷ_{l,i} ≥ y_i + ε·K_{j_l,i},

(ŷ: the threshold, with the floating-point error terms where the certificate is about the
float32 network). Then every point of the ball has the same top-k' set, so its prediction
is one of the k' classes. *Relaxed top-K* (RTK) robustness: certified for some k' ≤ K;
*affinity* robustness: certified for some k' whose set S_k' lies inside one of the given
affinity sets. ⊥ = max y − max_k' M_k', so argmax over [y, ⊥] is a class iff some k' is
certified, and the class is the top prediction.

A tie across the boundary of S_k' leaves M_k' ≤ 0: never certified.
"""
import ast
import re

import numpy as np
from keras import ops

from gloro_keras.ops.certificate import margin_slack_rate
from gloro_keras.ops.labels import finite_argmax
from gloro_keras.ops.margins import gloro_outputs

RELAXATIONS = ("topk", "affinity")


class Relaxation:
    """Which relaxed robustness a model certifies: `TopK(k)` or `Affinity(sets)`.

    `Relaxation.get("topk:5")`, `Relaxation.get("affinity:[0,2][1][3]")` parse the string form
    (`str(relaxation)` gives it back).
    """

    k = None

    @staticmethod
    def get(identifier, num_classes=None):
        if identifier is None or isinstance(identifier, Relaxation):
            return identifier
        if isinstance(identifier, dict):
            kind = identifier.get("kind")
            if kind == "topk":
                return TopK(identifier["k"])
            if kind == "affinity":
                return Affinity(identifier["sets"], num_classes=identifier.get("num_classes", num_classes))
        if isinstance(identifier, str):
            kind, _, arg = identifier.partition(":")
            kind = kind.strip().lower()
            if kind == "topk" and arg.strip().isdigit():
                return TopK(int(arg))
            if kind == "affinity" and arg.strip():
                return Affinity(arg, num_classes=num_classes)
        raise ValueError(
            "A relaxation is 'topk:K' (relaxed top-K robustness), 'affinity:[0,2][1][3]' (affinity "
            f"sets of class indices), a TopK/Affinity object or its config. Received: {identifier!r}")

    def check(self, num_classes):
        """Raise if the relaxation does not fit a model of `num_classes` classes."""
        if not 1 <= self.k < num_classes:
            raise ValueError(f"{self}: k must be in [1, {num_classes - 1}] for a model of {num_classes} "
                             f"classes. Received: k={self.k}")

    def set_mask(self, num_classes):
        """(S, m) 0/1 float32 array of the affinity sets, or None (top-K: any set)."""
        return None

    def get_config(self):
        raise NotImplementedError


class TopK(Relaxation):
    """Relaxed top-K robustness: certified for some k' ≤ k."""

    def __init__(self, k):
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
            raise ValueError(f"TopK needs an integer k >= 1. Received: k={k!r}")
        self.k = int(k)

    def __str__(self):
        return f"topk:{self.k}"

    def __repr__(self):
        return f"TopK({self.k})"

    def __eq__(self, other):
        return isinstance(other, TopK) and other.k == self.k

    def get_config(self):
        return {"kind": "topk", "k": self.k}


_SET = re.compile(r"\[([^\[\]]*)\]")


def parse_affinity_sets(sets, num_classes=None):
    """Affinity sets as a tuple of sorted class-index tuples.

    Accepts a list of class-index lists (`[[0, 2], [1], [3]]`), a one-hot array (S, m), or a
    string of bracketed lists (`"[0,2][1][3]"`, spaces and an outer bracket allowed).
    """
    if isinstance(sets, str):
        groups = _SET.findall(sets)
        if not groups:
            raise ValueError(f"Affinity sets as a string are bracketed lists of class indices, e.g. "
                             f"'[0,2][1][3]'. Received: {sets!r}")
        try:
            sets = [[int(t) for t in g.replace(" ", "").split(",") if t] for g in groups]
        except ValueError:
            raise ValueError(f"Affinity sets must hold integer class indices. Received: {sets!r}") from None
    elif isinstance(sets, np.ndarray):
        if sets.ndim != 2:
            raise ValueError(f"Affinity sets as an array are one-hot rows (S, m). Received: shape {sets.shape}")
        if num_classes is not None and sets.shape[1] != num_classes:
            raise ValueError(f"The affinity one-hot array has {sets.shape[1]} columns; the model has "
                             f"{num_classes} classes.")
        num_classes = sets.shape[1]
        sets = [np.flatnonzero(row).tolist() for row in sets]
    if not isinstance(sets, (list, tuple)) or not sets:
        raise ValueError(f"Affinity sets must be a non-empty list of class-index lists, a one-hot array "
                         f"or a string like '[0,2][1][3]'. Received: {sets!r}")
    out = []
    for s in sets:
        if not isinstance(s, (list, tuple, np.ndarray)) or len(s) == 0:
            raise ValueError(f"Each affinity set is a non-empty list of class indices. Received: {s!r}")
        idx = []
        for c in s:
            if isinstance(c, bool) or not isinstance(c, (int, np.integer)) or c < 0 or (
                    num_classes is not None and c >= num_classes):
                bound = f" in [0, {num_classes})" if num_classes is not None else " >= 0"
                raise ValueError(f"Affinity set {list(s)} holds {c!r}; class indices must be integers{bound}.")
            idx.append(int(c))
        out.append(tuple(sorted(set(idx))))
    return tuple(out)


class Affinity(Relaxation):
    """Affinity robustness: certified for some k' whose top-k' set lies inside one of `sets`
    (so k = the largest set's size). A class in no set is never certified."""

    def __init__(self, sets, num_classes=None):
        self.sets = parse_affinity_sets(sets, num_classes)
        self.k = max(len(s) for s in self.sets)
        self.num_classes = num_classes

    def check(self, num_classes):
        parse_affinity_sets(self.sets, num_classes)  # indices in range
        if not 1 <= self.k < num_classes:
            raise ValueError(f"{self}: the largest affinity set must have fewer than the model's "
                             f"{num_classes} classes (it has {self.k}).")

    def set_mask(self, num_classes):
        mask = np.zeros((len(self.sets), num_classes), np.float32)
        for r, s in enumerate(self.sets):
            mask[r, list(s)] = 1.0
        return mask

    def __str__(self):
        return "affinity:" + "".join("[" + ",".join(map(str, s)) + "]" for s in self.sets)

    def __repr__(self):
        return f"Affinity({[list(s) for s in self.sets]})"

    def __eq__(self, other):
        return isinstance(other, Affinity) and other.sets == self.sets

    def get_config(self):
        return {"kind": "affinity", "sets": [list(s) for s in self.sets]}


# -- keras.ops (training and inference) --------------------------------------------------
def top_classes(logits, k):
    """(B, k) int32 indices of the k largest logits, ties to the lower index."""
    return ops.cast(ops.top_k(logits, k, sorted=True)[1], "int32")


def set_membership(order, num_classes):
    """(B, K, m): 1 where class i is in S_k' = the top-(k'+1) classes."""
    return ops.cumsum(ops.one_hot(order, num_classes), axis=1)


def relaxed_margins(logits, order, thresholds, set_mask=None):
    """(B, K) M_k' (module docstring); -inf where S_k' lies in no affinity set.

    logits: (B, m); order: (B, K) top classes; thresholds: (B, K, m), ŷ_{l,i} for the l-th
    class of the ranking; set_mask: (S, m) 0/1 affinity sets, or None.
    """
    m, k = logits.shape[-1], order.shape[-1]
    top = ops.take_along_axis(logits, order, axis=-1)  # (B, K)
    gap = top[:, :, None] - thresholds  # (B, K, m)
    member = set_membership(order, m)
    margins = []
    for kp in range(k):
        inside = member[:, kp, :][:, None, :] > 0.5
        margins.append(ops.min(ops.where(inside, float("inf"), gap[:, : kp + 1, :]), axis=(1, 2)))
    margins = ops.stack(margins, axis=-1)
    if set_mask is not None:
        outside = ops.matmul(member, ops.transpose(1.0 - ops.convert_to_tensor(set_mask, "float32")))
        allowed = ops.any(outside < 0.5, axis=-1)  # (B, K): S_k' inside some set
        margins = ops.where(allowed, margins, float("-inf"))
    return margins


def lifted_thresholds(logits, order, margin_bounds, epsilon):
    """(B, K, m) y_i + ε·K_{j_l,i}: exact-arithmetic thresholds for the ranked classes."""
    return logits[:, None, :] + epsilon * ops.take(margin_bounds, order, axis=0)


def relaxed_bottom_logit(logits, margins):
    """⊥ = max y − max_k' M_k' (B,)."""
    return ops.max(logits, axis=-1) - ops.max(margins, axis=-1)


def certified_k(margins):
    """(B,) float32: the largest certified k' (0 where none), from M (B, K)."""
    k = margins.shape[-1]
    ranks = ops.arange(1, k + 1, dtype="float32")
    return ops.max(ops.where(margins > 0, ranks[None, :], 0.0), axis=-1)


def relaxed_outputs(logits, margin_bounds, epsilon, relaxation):
    """(B, m+2) [y, ⊥, certified k] in exact arithmetic (training calls)."""
    order = top_classes(logits, relaxation.k)
    margins = relaxed_margins(logits, order, lifted_thresholds(logits, order, margin_bounds, epsilon),
                              relaxation.set_mask(logits.shape[-1]))
    return ops.concatenate([logits, relaxed_bottom_logit(logits, margins)[:, None],
                            certified_k(margins)[:, None]], axis=-1)


def outputs_with_bottom(logits, margin_bounds, epsilon, relaxation=None):
    """[y, ⊥] (B, m+1) with the standard ⊥ (`relaxation=None`) or the relaxed one."""
    if relaxation is None:
        return gloro_outputs(logits, margin_bounds, epsilon)
    return relaxed_outputs(logits, margin_bounds, epsilon, relaxation)[:, :-1]


def label_rank(labels, logits):
    """0-based rank of the label's logit (ties to the lower index, as `top_classes`)."""
    m = logits.shape[-1]
    own = ops.take_along_axis(logits, labels[:, None], axis=-1)
    index = ops.arange(m, dtype="int32")[None, :]
    ahead = (logits > own) | ((logits == own) & (index < labels[:, None]))
    return ops.sum(ops.cast(ahead, "int32"), axis=-1)


# -- numpy float64 (certification) -----------------------------------------------------
def top_classes_np(logits, k):
    """(N, k) indices of the k largest logits, ties to the lower index."""
    return np.argsort(-np.asarray(logits, np.float64), axis=-1, kind="stable")[:, :k]


class RelaxedCertificate:
    """Relaxed certificate of a batch (float64): for every input its ranked top-K classes and,
    per rank l and class i, slack_li = ŷ_{j_l} − ŷ_i − a (the rounding terms), rate_li =
    K_{j_l,i} + b; S_k' is certified at ε iff slack > ε·rate for all l ≤ k', i ∉ S_k'.

    Example:
    >>> c = RelaxedCertificate.build(np.array([[3.0, 2.9, 0.0]]), np.full((3, 3), 1.0) - np.eye(3),
    ...                              TopK(2))
    >>> c.certified_k(0.5)
    array([2])
    """

    def __init__(self, logits, order, slack, rate, valid, relaxation):
        self.logits, self.order, self.slack, self.rate = logits, order, slack, rate
        self.valid, self.relaxation = valid, relaxation

    @classmethod
    def build(cls, logits, margin_bounds, relaxation, error_terms=None):
        """error_terms(rows) → (a, b) (N, m) for the classes `rows` (N,), or None (exact)."""
        safe, finite, _ = finite_argmax(logits)
        order = top_classes_np(safe, relaxation.k)
        slack, rate = [], []
        for r in range(relaxation.k):
            rows = order[:, r]
            a, b = (None, None) if error_terms is None else error_terms(rows)
            s, t = margin_slack_rate(safe, rows, margin_bounds, a, b)
            slack.append(s)
            rate.append(t)
        slack, rate = np.stack(slack, axis=1), np.stack(rate, axis=1)
        valid = finite & np.all(np.isfinite(slack), axis=(1, 2)) & np.all(np.isfinite(rate), axis=(1, 2))
        return cls(np.asarray(logits, np.float64), order, slack, rate, valid, relaxation)

    @property
    def num_classes(self):
        return self.logits.shape[-1]

    def guarantee(self, epsilon):
        """(N, K) bool: S_k' certified at radius ε (column k'−1); ε a scalar or one per input."""
        n, k = self.order.shape
        m = self.num_classes
        member = np.cumsum(np.eye(m, dtype=bool)[self.order], axis=1) > 0  # (N, K, m)
        eps = np.asarray(epsilon, dtype=np.float64)
        eps = eps.reshape(-1, 1, 1) if eps.ndim else eps
        with np.errstate(invalid="ignore"):
            beats = self.slack > eps * self.rate  # (N, K, m)
        out = np.zeros((n, k), bool)
        for kp in range(k):
            out[:, kp] = np.all(beats[:, : kp + 1, :] | member[:, kp, None, :], axis=(1, 2))
        mask = self.relaxation.set_mask(m)
        if mask is not None:
            inside = ~np.any(member[:, :, None, :] & (mask[None, None, :, :] < 0.5), axis=-1)  # (N, K, S)
            out &= np.any(inside, axis=-1)
        return out & self.valid[:, None]

    def certified_k(self, epsilon):
        """(N,) the largest certified k' (0 where none)."""
        g = self.guarantee(epsilon)
        ks = np.arange(1, g.shape[1] + 1)
        return np.max(np.where(g, ks[None, :], 0), axis=1)

    def radius(self):
        """(N,) r such that some k' is certified for every ε < r (0 where none)."""
        n, k = self.order.shape
        m = self.num_classes
        member = np.cumsum(np.eye(m, dtype=bool)[self.order], axis=1) > 0
        with np.errstate(divide="ignore", invalid="ignore"):
            r = np.where(self.rate > 0, self.slack / np.where(self.rate > 0, self.rate, 1.0),
                         np.where(self.slack > 0, np.inf, 0.0))
        radii = np.stack([np.min(np.where(member[:, kp, None, :], np.inf, r[:, : kp + 1, :]), axis=(1, 2))
                          for kp in range(k)], axis=1)
        mask = self.relaxation.set_mask(m)
        if mask is not None:
            inside = ~np.any(member[:, :, None, :] & (mask[None, None, :, :] < 0.5), axis=-1)
            radii = np.where(np.any(inside, axis=-1), radii, 0.0)
        best = np.max(radii, axis=1)
        return np.where(self.valid & (best > 0), best, 0.0)

    def certify(self, epsilon):
        """The top prediction where some k' is certified, else m (⊥)."""
        return np.where(self.certified_k(epsilon) > 0, self.order[:, 0], self.num_classes).astype(np.int64)

    def certified_set_contains(self, labels, epsilon):
        """(N,) bool: the label is in the largest certified set S_k'."""
        g = self.certified_k(epsilon)
        labels = np.asarray(labels).reshape(-1)
        rank = np.argmax(self.order == labels[:, None], axis=1)
        present = np.any(self.order == labels[:, None], axis=1)
        return present & (rank < g)


__all__ = ["Affinity", "RELAXATIONS", "Relaxation", "RelaxedCertificate", "TopK", "certified_k", "label_rank",
           "lifted_thresholds", "outputs_with_bottom", "parse_affinity_sets", "relaxed_bottom_logit", "relaxed_margins",
           "relaxed_outputs", "set_membership", "top_classes", "top_classes_np"]
