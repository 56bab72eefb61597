"""Conventional (non-linear) residual block, for the paper's Table 3 ablation."""
import keras
import numpy as np
from keras import ops

from gloro_keras.layers.bounded_layer import BoundedLayer
from gloro_keras.layers.lipschitz_conv2d import LipschitzConv2D
from gloro_keras.layers.min_max import MinMax


@keras.saving.register_keras_serializable(package="gloro_keras")
class ResNetBlock(BoundedLayer):
    """`y = x + β ⊙ Conv₂(MinMax(Conv₁(x)))`, β per channel, initialized to 0.

    Bound: `1 + max|β|·K₂·K₁` with K₁, K₂ the convs' spectral-norm bounds. This is the
    loose bound the paper contrasts with LiResNet's single merged convolution.

    Args:
        kernel_size: conv kernel size (default 3, 'same' padding).
        beta_initializer: default 'zeros' (what the paper found best).
        power_iterations: steps per training call for each conv.
    """

    def __init__(self, kernel_size=3, beta_initializer="zeros", power_iterations=10, **kwargs):
        super().__init__(**kwargs)
        self.kernel_size = int(kernel_size)
        self.beta_initializer = keras.initializers.get(beta_initializer)
        self.power_iterations = int(power_iterations)

    def build(self, input_shape):
        if len(input_shape) != 4 or any(d is None for d in input_shape[1:]):
            raise ValueError(
                f"ResNetBlock '{self.name}' needs a static (batch, H, W, C) input shape; "
                f"got {tuple(input_shape)}."
            )
        c = int(input_shape[-1])
        kw = dict(padding="same", power_iterations=self.power_iterations)
        self.conv1 = LipschitzConv2D(c, self.kernel_size, name="conv1", **kw)
        self.activation = MinMax(name="minmax")
        self.conv2 = LipschitzConv2D(c, self.kernel_size, name="conv2", **kw)
        self.conv1.build(input_shape)
        self.activation.build(input_shape)
        self.conv2.build(input_shape)
        self.beta = self.add_weight(name="beta", shape=(c,), initializer=self.beta_initializer)

    def call(self, x):
        return x + self.beta * self.conv2(self.activation(self.conv1(x)))

    def compute_output_shape(self, input_shape):
        return input_shape

    def _combine(self, k1, k2):
        return 1.0 + ops.max(ops.abs(self.beta)) * k1 * k2

    def power_estimate(self, training=False, gradient="last"):
        """`1 + max|β|·K₂·K₁` from the two convs' power-iteration estimates."""
        return self._combine(
            self.conv1.power_estimate(training=training, gradient=gradient),
            self.conv2.power_estimate(training=training, gradient=gradient),
        )

    def converge_iterate(self, max_iterations=500, tolerance=1e-6):
        k1 = self.conv1.converge_iterate(max_iterations=max_iterations, tolerance=tolerance)
        k2 = self.conv2.converge_iterate(max_iterations=max_iterations, tolerance=tolerance)
        return float(ops.convert_to_numpy(self._combine(k1, k2)))

    def sound_bound(self, on_device=False):
        beta = float(np.max(np.abs(ops.convert_to_numpy(self.beta)).astype("float64")))
        return 1.0 + beta * self.conv1.sound_bound(on_device) * self.conv2.sound_bound(on_device)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "kernel_size": self.kernel_size,
                "beta_initializer": keras.initializers.serialize(self.beta_initializer),
                "power_iterations": self.power_iterations,
            }
        )
        return config
