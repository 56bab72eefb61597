"""The original gloro's layer names (`gloro.layers`)."""
from keras.layers import AveragePooling2D, Flatten, Input, MaxPooling2D, ReLU

from gloro_keras.layers import LiResNetBlock, LipschitzConv2D, LipschitzDense, MinMax, ResNetBlock

Conv2D = LipschitzConv2D
Dense = LipschitzDense

__all__ = [
    "AveragePooling2D",
    "Conv2D",
    "Dense",
    "Flatten",
    "Input",
    "LiResNetBlock",
    "MaxPooling2D",
    "MinMax",
    "ReLU",
    "ResNetBlock",
]
