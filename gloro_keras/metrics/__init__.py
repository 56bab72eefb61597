"""GloRo metrics: "clean_acc", "vra", "rejection_rate"; "relaxed_vra", "top_k_clean_acc:K"."""
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
from gloro_keras.metrics.relaxed_metrics import (
    OutputColumns,
    RelaxedVerifiedRobustAccuracy,
    TopKCleanAccuracy,
    needs_relaxed_outputs,
    relaxed_verified_robust_accuracy,
    top_k_clean_accuracy,
)

_BY_NAME = {
    "clean_acc": CleanAccuracy,
    "clean_accuracy": CleanAccuracy,
    "vra": VerifiedRobustAccuracy,
    "verified_robust_accuracy": VerifiedRobustAccuracy,
    "rejection_rate": RejectionRate,
    "relaxed_vra": RelaxedVerifiedRobustAccuracy,
}


def get(identifier):
    """Resolve a metric: a GloRo name above or "top_k_clean_acc:K", else whatever `compile`
    accepts."""
    if isinstance(identifier, str) and identifier.lower() in _BY_NAME:
        return _BY_NAME[identifier.lower()]()
    if isinstance(identifier, str) and identifier.lower().startswith("top_k_clean_acc:"):
        return TopKCleanAccuracy(int(identifier.split(":", 1)[1]))
    return identifier


__all__ = [
    "CleanAccuracy",
    "OutputColumns",
    "RejectionRate",
    "RelaxedVerifiedRobustAccuracy",
    "TopKCleanAccuracy",
    "VerifiedRobustAccuracy",
    "clean_acc",
    "clean_accuracy",
    "get",
    "needs_relaxed_outputs",
    "rejection_rate",
    "relaxed_verified_robust_accuracy",
    "top_k_clean_accuracy",
    "verified_robust_accuracy",
    "vra",
]
