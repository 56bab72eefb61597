"""The original gloro's metrics (`gloro.training.metrics`): each name a function of
(labels, the m + 1 outputs), logged under that name. Integer and one-hot labels both work
with every variant (`_sparse`, `_cat` are kept for gloro's names)."""
import keras

from gloro_keras import metrics as gk_metrics
from gloro_keras.metrics import clean_accuracy, rejection_rate, verified_robust_accuracy


def _named(fn, name):
    """`fn` under gloro's metric `name` (Keras logs a metric function by its __name__),
    registered so that a compiled model saved with it loads again."""
    def metric(y_true, y_pred):
        return fn(y_true, y_pred)

    metric.__name__ = metric.__qualname__ = name
    return keras.saving.register_keras_serializable(package="gloro")(metric)


clean_acc = _named(clean_accuracy, "clean_acc")
clean_acc_sparse = _named(clean_accuracy, "clean_acc_sparse")
clean_acc_cat = _named(clean_accuracy, "clean_acc_cat")
vra = _named(verified_robust_accuracy, "vra")
vra_sparse = _named(verified_robust_accuracy, "vra_sparse")
vra_cat = _named(verified_robust_accuracy, "vra_cat")

# gloro's names that gloro-keras does not have; "clean_acc", "vra", "rejection_rate" are its own
_BY_NAME = {f.__name__: f for f in (clean_acc_sparse, clean_acc_cat, vra_sparse, vra_cat)}


def get(identifier):
    """A metric by gloro's names (`"vra_sparse"`, `"clean_acc_cat"`, ...), else as
    `gloro_keras.metrics.get`."""
    if isinstance(identifier, str) and identifier in _BY_NAME:
        return _BY_NAME[identifier]
    return gk_metrics.get(identifier)


__all__ = ["clean_acc", "clean_acc_cat", "clean_acc_sparse", "get", "rejection_rate", "vra", "vra_cat",
           "vra_sparse"]
