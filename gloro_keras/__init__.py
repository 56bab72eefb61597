"""gloro-keras: certifiably robust (GloRo) networks on Keras 3.

    import gloro_keras as gk
    model = gk.GloroLiResNet(L=6, W=128, num_classes=10, input_shape=(32, 32, 3), epsilon=36/255)
    model.compile(optimizer="adamw", loss="emma", metrics=["clean_acc", "vra", "rejection_rate"])
    model.fit(x_train, y_train, epochs=..., batch_size=256)
    model.certify(x_test)           # class per input, or num_classes (⊥) if not certified
"""
from gloro_keras import compat, evaluation, layers, losses, metrics, train
from gloro_keras.evaluation import CertificationReport, certification_report
from gloro_keras.models import (
    GloroConvNet,
    GloroLiResNet,
    GloroModel,
    GloroResNet,
    RelaxedGloroModel,
    liresnet_network,
)
from gloro_keras.ops.relaxations import Affinity, TopK
from gloro_keras.train import (
    ConvergeBounds,
    EpsilonSchedule,
    EpsilonScheduler,
    LearningRateLogger,
    ThreateningClassTracker,
    VRALogger,
    WarmupCosine,
)

__version__ = "0.1.0"

__all__ = [
    "Affinity",
    "CertificationReport",
    "ConvergeBounds",
    "EpsilonSchedule",
    "EpsilonScheduler",
    "LearningRateLogger",
    "ThreateningClassTracker",
    "VRALogger",
    "WarmupCosine",
    "certification_report",
    "compat",
    "evaluation",
    "train",
    "GloroConvNet",
    "GloroLiResNet",
    "GloroModel",
    "GloroResNet",
    "RelaxedGloroModel",
    "TopK",
    "layers",
    "liresnet_network",
    "losses",
    "metrics",
]
