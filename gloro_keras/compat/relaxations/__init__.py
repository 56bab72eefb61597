"""gloro's relaxed robustness (`gloro.relaxations`): relaxed top-k and affinity GloRo nets."""
from gloro_keras.compat.relaxations import affinity_sets, metrics, models
from gloro_keras.compat.relaxations.affinity_sets import AffinitySet
from gloro_keras.compat.relaxations.models import AffinityGloroNet, RtkGloroNet

__all__ = ["AffinityGloroNet", "AffinitySet", "RtkGloroNet", "affinity_sets", "metrics", "models"]
