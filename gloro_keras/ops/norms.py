"""NaN-safe norms (keras.ops)."""
from keras import ops

# The one floor under squared norms in the library: sqrt(max(s, TINY)) keeps values and
# gradients finite at 0 (TINY = (1e-12)², far below any norm a float32 network produces).
TINY = 1e-24


def safe_norm(x, axis=None, keepdims=False):
    """ℓ2 norm `sqrt(max(Σx², TINY))`; finite gradient even when x = 0.

    Example:
    >>> float(safe_norm(keras.ops.zeros((3,))))
    1e-12
    """
    return ops.sqrt(ops.maximum(ops.sum(ops.square(x), axis=axis, keepdims=keepdims), TINY))


def l2_normalize(x, axis=None):
    """`x / ‖x‖₂` over `axis` (all axes by default), NaN-safe at 0."""
    return x / safe_norm(x, axis=axis, keepdims=True)
