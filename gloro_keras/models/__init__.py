"""GloRo model classes and the paper's network builders."""
from gloro_keras.models.gloro_model import GloroModel
from gloro_keras.models.relaxed_gloro_model import RelaxedGloroModel
from gloro_keras.models.liresnet import GloroConvNet, GloroLiResNet, GloroResNet, liresnet_network

__all__ = ["GloroConvNet", "GloroLiResNet", "GloroModel", "GloroResNet", "RelaxedGloroModel", "liresnet_network"]
