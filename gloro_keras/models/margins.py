"""Margin bounds and the ⊥ logit, in keras.ops (training) and float64 numpy (certification)."""
import numpy as np
from keras import ops

from gloro_keras.layers._ops import TINY

# Relative inflation of float64 certification bounds: covers float64 round-off in the
# Gram-form pairwise distances and products (errors ~1e-15 relative).
FLOAT64_SAFETY = 1e-9


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


def certify_np(logits, margin_bounds, epsilon):
    """Class per row if `y_j > max_{i≠j}(y_i + ε·K_ji)`, else m (⊥). Non-finite rows → ⊥."""
    safe, finite, j = _predicted(logits)
    m = safe.shape[-1]
    lifted = safe + epsilon * margin_bounds[j]
    lifted[np.arange(len(j)), j] = -np.inf
    certified = (safe[np.arange(len(j)), j] > lifted.max(axis=-1)) & finite
    return np.where(certified, j, m).astype(np.int64)


def certified_radius_np(logits, margin_bounds):
    """min_{i≠j} (y_j − y_i) / K_ji per row (0 if not robust or non-finite)."""
    safe, finite, j = _predicted(logits)
    rows = np.arange(len(j))
    gaps = safe[rows, j][:, None] - safe
    k = margin_bounds[j]
    with np.errstate(divide="ignore", invalid="ignore"):
        r = np.where(k > 0, gaps / np.where(k > 0, k, 1.0), np.where(gaps > 0, np.inf, 0.0))
    r[rows, j] = np.inf
    r = np.min(r, axis=-1)
    return np.where(finite, np.maximum(r, 0.0), 0.0)
