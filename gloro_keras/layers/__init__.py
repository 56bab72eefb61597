"""Lipschitz-bounded layers for GloRo networks.

(The original gloro's layer names, `Dense`, `Conv2D`, ...: `gloro_keras.compat.layers`.)
"""
from gloro_keras.layers.bounded_layer import BoundedLayer
from gloro_keras.layers.invertible_downsampling import InvertibleDownsampling
from gloro_keras.layers.lipschitz_conv2d import LipschitzConv2D
from gloro_keras.layers.lipschitz_dense import LipschitzDense
from gloro_keras.layers.lipschitz_layer import LipschitzLayer
from gloro_keras.layers.liresnet_block import LiResNetBlock
from gloro_keras.layers.lln_dense import LLNDense
from gloro_keras.layers.min_max import MinMax
from gloro_keras.layers.resnet_block import ResNetBlock
from gloro_keras.layers.scaling import Scaling

__all__ = [
    "BoundedLayer",
    "InvertibleDownsampling",
    "LLNDense",
    "LiResNetBlock",
    "LipschitzConv2D",
    "LipschitzDense",
    "LipschitzLayer",
    "MinMax",
    "ResNetBlock",
    "Scaling",
]
