"""The original gloro's metrics (`gloro.training.metrics`): each name a function of
(labels, the m + 1 outputs), logged under that name. Integer and one-hot labels both work
with every variant (`_sparse`, `_cat` are kept for gloro's names)."""
import keras

from gloro_keras import metrics as gk_metrics
from gloro_keras.metrics import (
    clean_accuracy,
    rejection_rate,
    relaxed_verified_robust_accuracy,
    top_k_clean_accuracy,
    verified_robust_accuracy,
)


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


# gloro.relaxations.metrics: they read the relaxed outputs [y, ⊥, k*] of RtkGloroNet / AffinityGloroNet
def _relaxed(name):
    def metric(y_true, y_pred):
        return relaxed_verified_robust_accuracy(y_true, y_pred)

    metric.__name__ = metric.__qualname__ = name
    metric.relaxed_outputs = True
    return keras.saving.register_keras_serializable(package="gloro")(metric)


rtk_vra = _relaxed("rtk_vra")
rtk_vra_sparse = _relaxed("rtk_vra_sparse")
rtk_vra_cat = _relaxed("rtk_vra_cat")
affinity_vra = _relaxed("affinity_vra")
affinity_vra_sparse = _relaxed("affinity_vra_sparse")
affinity_vra_cat = _relaxed("affinity_vra_cat")


def top_k_clean_acc(k, sparse=None):
    """A metric: 1 where the label is among the k largest clean logits, named
    `top_{k}_clean_acc` (`_sparse` / `_cat` with `sparse=True` / `False`; labels may be
    integers or one-hot either way)."""
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"top_k_clean_acc needs an integer k >= 1. Received: k={k!r}")
    suffix = "" if sparse is None else ("_sparse" if sparse else "_cat")
    name = f"top_{k}_clean_acc{suffix}"

    def metric(y_true, y_pred):
        return top_k_clean_accuracy(y_true, y_pred, k=k)

    metric.__name__ = metric.__qualname__ = name
    return keras.saving.register_keras_serializable(package="gloro")(metric)


def top_k_clean_acc_sparse(k):
    return top_k_clean_acc(k, sparse=True)


def top_k_clean_acc_cat(k):
    return top_k_clean_acc(k, sparse=False)


# gloro's names that gloro-keras does not have; "clean_acc", "vra", "rejection_rate" are its own
_BY_NAME = {f.__name__: f for f in (clean_acc_sparse, clean_acc_cat, vra_sparse, vra_cat, rtk_vra, rtk_vra_sparse,
                                    rtk_vra_cat, affinity_vra, affinity_vra_sparse, affinity_vra_cat)}


def get(identifier):
    """A metric by gloro's names (`"vra_sparse"`, `"clean_acc_cat"`, ...), else as
    `gloro_keras.metrics.get`."""
    if isinstance(identifier, str) and identifier in _BY_NAME:
        return _BY_NAME[identifier]
    return gk_metrics.get(identifier)


__all__ = ["affinity_vra", "affinity_vra_cat", "affinity_vra_sparse", "clean_acc", "clean_acc_cat",
           "clean_acc_sparse", "get", "rejection_rate", "rtk_vra", "rtk_vra_cat", "rtk_vra_sparse",
           "top_k_clean_acc", "top_k_clean_acc_cat", "top_k_clean_acc_sparse", "vra", "vra_cat", "vra_sparse"]
