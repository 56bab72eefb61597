"""The original gloro's metric names (`gloro.training.metrics`)."""
from gloro_keras import metrics as gk_metrics
from gloro_keras.metrics import clean_acc, rejection_rate, vra


def get(identifier):
    """Resolve a metric by gloro's names too; otherwise as `gloro_keras.metrics.get`."""
    return gk_metrics.get(identifier)


__all__ = ["clean_acc", "get", "rejection_rate", "vra"]
