"""GloRo model classes and the paper's network builders."""
from gloro_keras.models.gloro_model import GloroModel, GloroNet
from gloro_keras.models.liresnet import GloroConvNet, GloroLiResNet, GloroResNet, liresnet_network

__all__ = ["GloroConvNet", "GloroLiResNet", "GloroModel", "GloroNet", "GloroResNet", "liresnet_network"]
