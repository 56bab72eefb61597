"""Labels and predicted classes."""
import numpy as np
from keras import ops


def sparse_labels(y, num_classes):
    """Integer labels (B,) from sparse (B,) / (B, 1) or one-hot (B, m) / (B, m+1) targets."""
    y = ops.convert_to_tensor(y)
    last = y.shape[-1] if len(y.shape) >= 2 else None
    if last is not None and last > 1 and last in (num_classes, num_classes + 1):
        return ops.cast(ops.argmax(y, axis=-1), "int32")
    return ops.cast(ops.reshape(y, (-1,)), "int32")


def finite_argmax(logits):
    """(logits with non-finite rows zeroed, row is finite, argmax per row) as float64 numpy.

    A row with a NaN or ±inf logit has no meaningful argmax: it gets class 0 and
    `finite=False`, and callers never certify it.
    """
    logits = np.asarray(logits, dtype=np.float64)
    finite = np.all(np.isfinite(logits), axis=-1)
    safe = np.where(finite[:, None], logits, 0.0)
    return safe, finite, np.argmax(safe, axis=-1)


def predicted_class(logits):
    """argmax over the logits of each row (0 for rows with a non-finite logit)."""
    return finite_argmax(logits)[2]
