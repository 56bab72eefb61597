"""gloro-keras: certifiably robust (GloRo) networks on Keras 3.

    import gloro_keras as gk
    model = gk.GloroLiResNet(L=6, W=128, num_classes=10, input_shape=(32, 32, 3), epsilon=36/255)
    model.compile(optimizer="adamw", loss="emma", metrics=["clean_acc", "vra", "rejection_rate"])
    model.fit(x_train, y_train, epochs=..., batch_size=256)
    model.certify(x_test)           # class per input, or num_classes (⊥) if not certified
"""
from gloro_keras import layers, losses, metrics
from gloro_keras.models import (
    GloroConvNet,
    GloroLiResNet,
    GloroModel,
    GloroNet,
    GloroResNet,
    liresnet_network,
)

__version__ = "0.1.0"

__all__ = [
    "GloroConvNet",
    "GloroLiResNet",
    "GloroModel",
    "GloroNet",
    "GloroResNet",
    "layers",
    "liresnet_network",
    "losses",
    "metrics",
]
