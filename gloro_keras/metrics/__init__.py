"""GloRo metrics: "clean_acc", "vra", "rejection_rate"."""
from gloro_keras.metrics.gloro_metrics import (
    CleanAccuracy,
    RejectionRate,
    VerifiedRobustAccuracy,
    clean_acc,
    clean_accuracy,
    rejection_rate,
    verified_robust_accuracy,
    vra,
)

_BY_NAME = {
    "clean_acc": CleanAccuracy,
    "clean_accuracy": CleanAccuracy,
    "vra": VerifiedRobustAccuracy,
    "verified_robust_accuracy": VerifiedRobustAccuracy,
    "rejection_rate": RejectionRate,
}


def get(identifier):
    """Resolve a metric: a GloRo name above, else whatever `compile` accepts."""
    if isinstance(identifier, str) and identifier.lower() in _BY_NAME:
        return _BY_NAME[identifier.lower()]()
    return identifier


__all__ = [
    "CleanAccuracy",
    "RejectionRate",
    "VerifiedRobustAccuracy",
    "clean_acc",
    "clean_accuracy",
    "get",
    "rejection_rate",
    "verified_robust_accuracy",
    "vra",
]
