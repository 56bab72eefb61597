"""Margin bounds and the ⊥ logit (keras.ops for training and inference, numpy float64 for
certification).

For a head with class vectors w_i (columns of W) after a body with Lipschitz bound K, the
margin y_i − y_j is K·‖w_i − w_j‖-Lipschitz; K_ij = K·‖w_i − w_j‖ is the margin-bound matrix.
"""
import numpy as np
from keras import ops

from gloro_keras.ops.norms import TINY

# Relative inflation of float64 certification bounds: covers float64 round-off in the
# Gram-form pairwise distances and products (errors ~1e-15 relative).
FLOAT64_SAFETY = 1e-9


def pairwise_distances(w):
    """(m, m) matrix of ‖w_i − w_j‖ for the columns of w (d, m); NaN-safe."""
    sq = ops.sum(ops.square(w), axis=0)
    d2 = sq[:, None] + sq[None, :] - 2.0 * ops.matmul(ops.transpose(w), w)
    return ops.sqrt(ops.maximum(d2, TINY))


def pairwise_distances_upper(w):
    """Upper bounds on ‖w_i − w_j‖ computed in float32 (Gram-form cancellation covered)."""
    d = w.shape[0]
    sq = ops.sum(ops.square(w), axis=0)
    d2 = sq[:, None] + sq[None, :] - 2.0 * ops.matmul(ops.transpose(w), w)
    err = (2.0 * (d + 4) * 2.0 ** -24) * (sq[:, None] + sq[None, :])
    return ops.sqrt(ops.maximum(d2, 0.0) + err + TINY) * (1.0 + 2.0 ** -20)


def pairwise_distances_np(w):
    """float64 upper bounds on ‖w_i − w_j‖ (0 on the diagonal)."""
    w = np.asarray(w, dtype=np.float64)
    sq = np.sum(w * w, axis=0)
    d2 = sq[:, None] + sq[None, :] - 2.0 * (w.T @ w)
    d = np.sqrt(np.maximum(d2, 0.0))
    np.fill_diagonal(d, 0.0)
    # Gram-form cancellation error is ≤ ~1e-15·(|w_i|²+|w_j|²) in d²: add it back.
    d = np.sqrt(d * d + 4e-15 * (sq[:, None] + sq[None, :])) * (1.0 + FLOAT64_SAFETY)
    np.fill_diagonal(d, 0.0)
    return d


def bottom_logit(logits, margin_bounds, epsilon):
    """y_⊥ = max_{i≠j} (y_i + ε·K_ji), j = argmax y."""
    m = logits.shape[-1]
    j = ops.argmax(logits, axis=-1)
    lifted = logits + epsilon * ops.take(margin_bounds, j, axis=0)
    return ops.max(ops.where(ops.one_hot(j, m) > 0, float("-inf"), lifted), axis=-1)


def strict_bottom_logit(logits, y_bot):
    """y_⊥ raised just above max y where the prediction is not strictly certified, so that
    argmax over [y, y_⊥] is ⊥ on ties (argmax resolves a tie to the lower index)."""
    top = ops.max(logits, axis=-1)
    above = top + ops.abs(top) * 2.0 ** -20 + 2.0 ** -120
    return ops.where(top > y_bot, y_bot, ops.maximum(y_bot, above))


def label_lift(labels, margin_bounds, epsilon):
    """(B, m) lift ε·K_t,: of every non-label logit (0 at the label t): the most each logit
    can gain on the label's within the ε-ball."""
    m = margin_bounds.shape[-1]
    return epsilon * ops.take(margin_bounds, labels, axis=0) * (1.0 - ops.one_hot(labels, m))


def gloro_outputs(logits, margin_bounds, epsilon):
    """[y_1..y_m, y_⊥] (B, m+1) from the m logits."""
    return ops.concatenate([logits, bottom_logit(logits, margin_bounds, epsilon)[:, None]], axis=-1)


__all__ = ["FLOAT64_SAFETY", "bottom_logit", "gloro_outputs", "label_lift", "pairwise_distances",
           "pairwise_distances_np", "pairwise_distances_upper", "strict_bottom_logit"]
