"""Accuracy metrics over GloRo outputs (m logits + ⊥)."""
import keras
from keras import ops

from gloro_keras.ops.labels import sparse_labels


def _split(y_true, y_pred):
    m = y_pred.shape[-1] - 1
    return sparse_labels(y_true, m), y_pred, m


def clean_accuracy(y_true, y_pred):
    """1 where argmax of the m clean logits equals the label."""
    labels, y_pred, m = _split(y_true, y_pred)
    return ops.cast(ops.equal(ops.cast(ops.argmax(y_pred[:, :m], axis=-1), "int32"), labels), "float32")


def _strict_top(y_pred):
    """True where the largest of the m + 1 outputs is strictly above all others (a tie,
    which argmax would resolve to the lower index, is never a certificate)."""
    top2 = ops.top_k(y_pred, 2)[0]
    return top2[:, 0] > top2[:, 1]


def verified_robust_accuracy(y_true, y_pred):
    """1 where the label's output is strictly the largest of all m + 1 (correct and certified)."""
    labels, y_pred, _ = _split(y_true, y_pred)
    hit = ops.equal(ops.cast(ops.argmax(y_pred, axis=-1), "int32"), labels) & _strict_top(y_pred)
    return ops.cast(hit, "float32")


def rejection_rate(y_true, y_pred):
    """1 where no class output is strictly the largest of all m + 1 (⊥, or a tie)."""
    _, y_pred, m = _split(y_true, y_pred)
    certified = ops.not_equal(ops.argmax(y_pred, axis=-1), m) & _strict_top(y_pred)
    return 1.0 - ops.cast(certified, "float32")


# Original gloro names (Keras names a metric function by its __name__).
def clean_acc(y_true, y_pred):
    """Clean accuracy (original gloro metric function)."""
    return clean_accuracy(y_true, y_pred)


def vra(y_true, y_pred):
    """Verified-robust accuracy (original gloro metric function)."""
    return verified_robust_accuracy(y_true, y_pred)


class _GloroMetric(keras.metrics.MeanMetricWrapper):
    fn = None
    default_name = None

    def __init__(self, name=None, dtype=None):
        super().__init__(type(self).fn, name=name or self.default_name, dtype=dtype)

    def get_config(self):
        return {"name": self.name, "dtype": self.dtype}


@keras.saving.register_keras_serializable(package="gloro_keras")
class CleanAccuracy(_GloroMetric):
    """Accuracy of the clean prediction (first m outputs). Name: "clean_acc"."""

    fn = staticmethod(clean_accuracy)
    default_name = "clean_acc"


@keras.saving.register_keras_serializable(package="gloro_keras")
class VerifiedRobustAccuracy(_GloroMetric):
    """VRA: fraction both correct and certified at the model's ε. Name: "vra"."""

    fn = staticmethod(verified_robust_accuracy)
    default_name = "vra"


@keras.saving.register_keras_serializable(package="gloro_keras")
class RejectionRate(_GloroMetric):
    """Fraction of inputs whose prediction is ⊥ (not certified). Name: "rejection_rate"."""

    fn = staticmethod(rejection_rate)
    default_name = "rejection_rate"
