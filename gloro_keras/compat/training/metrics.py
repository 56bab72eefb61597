"""The original gloro's metrics (`gloro.training.metrics`): each name a function of
(labels, the m + 1 outputs), logged under that name. Integer and one-hot labels both work
with every variant (`_sparse`, `_cat` are kept for gloro's names)."""
from gloro_keras import metrics as gk_metrics
from gloro_keras.metrics import clean_accuracy, rejection_rate, verified_robust_accuracy


def clean_acc(y_true, y_pred):
    return clean_accuracy(y_true, y_pred)


def clean_acc_sparse(y_true, y_pred):
    return clean_accuracy(y_true, y_pred)


def clean_acc_cat(y_true, y_pred):
    return clean_accuracy(y_true, y_pred)


def vra(y_true, y_pred):
    return verified_robust_accuracy(y_true, y_pred)


def vra_sparse(y_true, y_pred):
    return verified_robust_accuracy(y_true, y_pred)


def vra_cat(y_true, y_pred):
    return verified_robust_accuracy(y_true, y_pred)


_BY_NAME = {f.__name__: f for f in (clean_acc, clean_acc_sparse, clean_acc_cat, vra, vra_sparse, vra_cat,
                                    rejection_rate)}


def get(identifier):
    """A metric by gloro's names (`"vra_sparse"`, `"clean_acc_cat"`, ...), else as
    `gloro_keras.metrics.get`."""
    if isinstance(identifier, str) and identifier in _BY_NAME:
        return _BY_NAME[identifier]
    return gk_metrics.get(identifier)


__all__ = ["clean_acc", "clean_acc_cat", "clean_acc_sparse", "get", "rejection_rate", "vra", "vra_cat",
           "vra_sparse"]
