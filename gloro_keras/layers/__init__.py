"""Lipschitz-bounded layers for GloRo networks.

`Conv2D` and `Dense` alias the bounded layers so that models written for the original
`gloro` (Keras 2) port by changing imports.
"""
from gloro_keras.layers.bounded_layer import BoundedLayer
from gloro_keras.layers.lipschitz_conv2d import LipschitzConv2D
from gloro_keras.layers.lipschitz_dense import LipschitzDense
from gloro_keras.layers.lipschitz_layer import LipschitzLayer
from gloro_keras.layers.liresnet_block import LiResNetBlock
from gloro_keras.layers.lln_dense import LLNDense
from gloro_keras.layers.min_max import MinMax
from gloro_keras.layers.resnet_block import ResNetBlock

Conv2D = LipschitzConv2D
Dense = LipschitzDense

__all__ = [
    "BoundedLayer",
    "Conv2D",
    "Dense",
    "LLNDense",
    "LiResNetBlock",
    "LipschitzConv2D",
    "LipschitzDense",
    "LipschitzLayer",
    "MinMax",
    "ResNetBlock",
]
