"""Metrics of relaxed robustness and top-k accuracy.

A `RelaxedGloroModel` hands its metrics [y_1..y_m, y_⊥, k*] (B, m+2), k* the largest
certified k' (0 where none); metrics marked `relaxed_outputs = True` read all of it, every
other metric is applied to the first m + 1 columns by `OutputColumns`.
"""
import keras
from keras import ops

from gloro_keras.ops.labels import sparse_labels
from gloro_keras.ops.relaxations import label_rank


def relaxed_verified_robust_accuracy(y_true, y_pred):
    """1 where the label is in the largest certified top-k' set (B,); y_pred: (B, m+2)."""
    m = y_pred.shape[-1] - 2
    labels = sparse_labels(y_true, m)
    rank = label_rank(labels, ops.cast(y_pred[:, :m], "float32"))
    return ops.cast(ops.cast(rank, "float32") < y_pred[:, m + 1], "float32")


relaxed_verified_robust_accuracy.relaxed_outputs = True


def top_k_clean_accuracy(y_true, y_pred, k=5):
    """1 where the label is among the k largest of the m clean logits; y_pred: (B, m+1)."""
    m = y_pred.shape[-1] - 1
    labels = sparse_labels(y_true, m)
    return ops.cast(label_rank(labels, ops.cast(y_pred[:, :m], "float32")) < k, "float32")


@keras.saving.register_keras_serializable(package="gloro_keras")
class RelaxedVerifiedRobustAccuracy(keras.metrics.MeanMetricWrapper):
    """Relaxed VRA: fraction whose label lies in a certified top-k' set (relaxed top-K or
    affinity robustness, whichever the `RelaxedGloroModel` certifies). Name: "relaxed_vra".
    Standard VRA ≤ relaxed VRA ≤ top-K clean accuracy."""

    relaxed_outputs = True

    def __init__(self, name="relaxed_vra", dtype=None):
        super().__init__(relaxed_verified_robust_accuracy, name=name, dtype=dtype)

    def get_config(self):
        return {"name": self.name, "dtype": self.dtype}


@keras.saving.register_keras_serializable(package="gloro_keras")
class TopKCleanAccuracy(keras.metrics.MeanMetricWrapper):
    """Fraction whose label is among the k largest clean logits. Name: "top_{k}_clean_acc".

    Args:
        k: how many top classes count, >= 1.
    """

    def __init__(self, k=5, name=None, dtype=None):
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ValueError(f"TopKCleanAccuracy needs an integer k >= 1. Received: k={k!r}")
        self.k = k
        super().__init__(top_k_clean_accuracy, name=name or f"top_{k}_clean_acc", dtype=dtype, k=k)

    def get_config(self):
        return {"k": self.k, "name": self.name, "dtype": self.dtype}


@keras.saving.register_keras_serializable(package="gloro_keras")
class OutputColumns(keras.metrics.Metric):
    """`metric` applied to the first `width` columns of y_pred (a `RelaxedGloroModel` wraps
    its standard metrics in it, so they see [y, ⊥]). Logged under the inner metric's name."""

    def __init__(self, metric, width, name=None, dtype=None):
        if isinstance(metric, dict):
            metric = keras.saving.deserialize_keras_object(metric)
        if not isinstance(metric, keras.metrics.Metric):
            fn = keras.metrics.get(metric)
            metric = keras.metrics.MeanMetricWrapper(fn, name=getattr(fn, "__name__", str(metric)))
        super().__init__(name=name or metric.name, dtype=dtype)
        self.metric = metric
        self.width = int(width)

    def update_state(self, y_true, y_pred, sample_weight=None):
        return self.metric.update_state(y_true, y_pred[..., : self.width], sample_weight=sample_weight)

    def result(self):
        return self.metric.result()

    def reset_state(self):
        self.metric.reset_state()

    def get_config(self):
        return {"metric": keras.saving.serialize_keras_object(self.metric), "width": self.width,
                "name": self.name, "dtype": self.dtype}


def needs_relaxed_outputs(metric):
    """Whether a metric reads the (B, m+2) relaxed outputs."""
    return bool(getattr(metric, "relaxed_outputs", False))
