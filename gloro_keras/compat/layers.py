"""The original gloro's layers (`gloro.layers`), with its constructors and `lipschitz()`.

Each layer is a gloro-keras layer underneath (power iteration with persistent iterates for
training, a sound float64 bound and a rounding model for certification), so a `GloroNet`
built from them certifies like any `GloroModel`. Differences from gloro, all on the safe
side: `Dense(..., activation=...)` is refused (put the activation in its own layer, where
its constant is known); `Scaling.lipschitz()` is |α|; pooling with overlapping windows gets
its true bound, not 1.
"""
import abc

import keras
from keras import ops

from gloro_keras.compat import lc as lc_lib
from gloro_keras.layers import InvertibleDownsampling as _InvertibleDownsampling
from gloro_keras.layers import LiResNetBlock as _LiResNetBlock
from gloro_keras.layers import LipschitzConv2D, LipschitzDense
from gloro_keras.layers import MinMax as _MinMax
from gloro_keras.layers import Scaling as _Scaling
from gloro_keras.models.network_analysis import constant_lipschitz

Input = keras.layers.Input
PACKAGE = "gloro"


class GloroLayer(keras.layers.Layer, metaclass=abc.ABCMeta):
    """gloro's layer interface: `lipschitz()`, an estimate (while training) of the layer's ℓ2
    Lipschitz constant, as a float or a scalar tensor."""

    @abc.abstractmethod
    def lipschitz(self):
        """The layer's Lipschitz constant (estimate)."""


class _StrategyLayer(GloroLayer):
    """A bounded linear layer whose training estimate follows an `lc_strategy`."""

    def _set_strategy(self, lc_strategy):
        self._lc_strategy = lc_lib.LipschitzComputationStrategy.get(lc_strategy)

    @property
    def lc_strategy(self):
        return self._lc_strategy

    def lipschitz(self):
        return self._lc_strategy.estimate(self, training=True)

    def power_estimate(self, training=False, gradient="last"):
        if isinstance(self._lc_strategy, lc_lib.Eigh):
            return self._lc_strategy.estimate(self, training)
        return super().power_estimate(training=training, gradient=gradient)

    def converge_iterate(self, max_iterations=500, tolerance=1e-6, **kwargs):
        if isinstance(self._lc_strategy, lc_lib.Eigh):
            return float(ops.convert_to_numpy(self._lc_strategy.estimate(self, False)))
        return super().converge_iterate(max_iterations=max_iterations, tolerance=tolerance, **kwargs)

    def _strategy_config(self, config):
        config["lc_strategy"] = lc_lib.serialize(self._lc_strategy)
        return config


def _iterations(strategy):
    return strategy.iterations if isinstance(strategy, lc_lib.PowerMethod) else 10


def _no_activation(layer, activation):
    if activation not in (None, "linear"):
        raise ValueError(f"{layer}(activation={activation!r}) is not supported: put the activation in its own "
                         "layer (MinMax, ReLU), where its Lipschitz constant is known.")


@keras.saving.register_keras_serializable(package=PACKAGE)
class Dense(_StrategyLayer, LipschitzDense):
    """gloro's `Dense(units, ..., lc_strategy=None)`: keras `Dense` arguments, a bounded kernel."""

    def __init__(self, units, activation=None, use_bias=True, kernel_initializer="glorot_uniform",
                 bias_initializer="zeros", lc_strategy=None, **kwargs):
        _no_activation("Dense", activation)
        strategy = lc_lib.deserialize(lc_strategy)
        kwargs.setdefault("power_iterations", _iterations(strategy))
        LipschitzDense.__init__(self, units, use_bias=use_bias, kernel_initializer=kernel_initializer,
                                bias_initializer=bias_initializer, **kwargs)
        self._set_strategy(strategy)

    def get_config(self):
        return self._strategy_config(LipschitzDense.get_config(self))


@keras.saving.register_keras_serializable(package=PACKAGE)
class Conv2D(_StrategyLayer, LipschitzConv2D):
    """gloro's `Conv2D(filters, kernel_size, strides=1, padding='valid', ..., lc_strategy=None)`."""

    def __init__(self, filters, kernel_size, strides=(1, 1), padding="valid", activation=None, use_bias=True,
                 kernel_initializer="glorot_uniform", bias_initializer="zeros", lc_strategy=None, **kwargs):
        _no_activation("Conv2D", activation)
        strategy = lc_lib.deserialize(lc_strategy)
        if isinstance(strategy, lc_lib.Eigh):
            raise ValueError("Eigh only supports 2D (dense) kernels; use PowerMethod for Conv2D.")
        kwargs.setdefault("power_iterations", _iterations(strategy))
        LipschitzConv2D.__init__(self, filters, kernel_size, strides=strides, padding=padding, use_bias=use_bias,
                                 kernel_initializer=kernel_initializer, bias_initializer=bias_initializer, **kwargs)
        self._set_strategy(strategy)

    def get_config(self):
        return self._strategy_config(LipschitzConv2D.get_config(self))


@keras.saving.register_keras_serializable(package=PACKAGE)
class LiResNetBlock(_StrategyLayer, _LiResNetBlock):
    """gloro's `LiResNetBlock(kernel_size, use_bias=True, use_affine=True, residual_scale=1.,
    lc_strategy=None, kernel_initializer='glorot_uniform', bias_initializer='zeros')`:
    `y = conv(x, Δ + residual_scale·affine·K) + b`, the channel count kept."""

    def __init__(self, kernel_size=3, use_bias=True, use_affine=True, residual_scale=1.0, lc_strategy=None,
                 kernel_initializer="glorot_uniform", bias_initializer="zeros", **kwargs):
        kwargs.pop("num_blocks", None)
        strategy = lc_lib.deserialize(lc_strategy)
        kwargs.setdefault("power_iterations", _iterations(strategy))
        _LiResNetBlock.__init__(self, num_blocks=1, kernel_size=kernel_size, use_bias=use_bias,
                                kernel_initializer=kernel_initializer, residual_scale=residual_scale,
                                use_affine=use_affine, bias_initializer=bias_initializer, **kwargs)
        self._set_strategy(strategy)

    def get_config(self):
        return self._strategy_config(_LiResNetBlock.get_config(self))


class _ConstantLayer(GloroLayer):
    def lipschitz(self):
        """The layer's fixed Lipschitz constant, as a scalar tensor (as gloro's layers gave it)."""
        constant = constant_lipschitz(self)
        if constant is None:
            raise ValueError(f"No Lipschitz bound is known for '{self.name}' with this configuration.")
        return ops.convert_to_tensor(constant, "float32")


@keras.saving.register_keras_serializable(package=PACKAGE)
class AveragePooling2D(_ConstantLayer, keras.layers.AveragePooling2D):
    """keras `AveragePooling2D` with `lipschitz()`: √(⌈p₀/s₀⌉⌈p₁/s₁⌉/(p₀p₁)) for 'valid' pooling
    (1/√(p₀p₁) for non-overlapping windows), a sound bound where gloro estimated by power iteration."""


@keras.saving.register_keras_serializable(package=PACKAGE)
class MaxPooling2D(_ConstantLayer, keras.layers.MaxPooling2D):
    """keras `MaxPooling2D` with `lipschitz()`: √(⌈p₀/s₀⌉⌈p₁/s₁⌉) for 'valid' pooling (1 for
    non-overlapping windows)."""


@keras.saving.register_keras_serializable(package=PACKAGE)
class Flatten(_ConstantLayer, keras.layers.Flatten):
    """keras `Flatten` with `lipschitz()` = 1."""


@keras.saving.register_keras_serializable(package=PACKAGE)
class ReLU(_ConstantLayer, keras.layers.ReLU):
    """keras `ReLU` with `lipschitz()` = 1."""


@keras.saving.register_keras_serializable(package=PACKAGE)
class MinMax(_ConstantLayer, _MinMax):
    """gloro's `MinMax`: consecutive values (2t, 2t+1) of each flattened example become
    (min, max) (`gloro_keras.layers.MinMax(pairing="adjacent")`)."""

    def __init__(self, pairing="adjacent", **kwargs):
        _MinMax.__init__(self, pairing=pairing, **kwargs)


@keras.saving.register_keras_serializable(package=PACKAGE)
class InvertibleDownsampling(_ConstantLayer, _InvertibleDownsampling):
    """gloro's `InvertibleDownsampling(pool_size=2)` (space-to-depth), `lipschitz()` = 1."""


@keras.saving.register_keras_serializable(package=PACKAGE)
class Scaling(GloroLayer, _Scaling):
    """gloro's `Scaling(init=1.)`: `y = α·x`; `lipschitz()` = |α| (gloro returned α)."""

    def lipschitz(self):
        return ops.abs(self.alpha)


__all__ = [
    "AveragePooling2D",
    "Conv2D",
    "Dense",
    "Flatten",
    "GloroLayer",
    "Input",
    "InvertibleDownsampling",
    "LiResNetBlock",
    "MaxPooling2D",
    "MinMax",
    "ReLU",
    "Scaling",
]
