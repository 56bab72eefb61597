"""Space-to-depth downsampling (a permutation of the values, hence 1-Lipschitz)."""
import keras
from keras import ops

from gloro_keras.ops.padding import as_pair


@keras.saving.register_keras_serializable(package="gloro_keras")
class InvertibleDownsampling(keras.layers.Layer):
    """(N, H, W, C) → (N, H/p₀, W/p₁, p₀·p₁·C): output channel (i·p₁ + j)·C + c at (h, w)
    is input (h·p₀ + i, w·p₁ + j, c), the ordering of `tf.nn.space_to_depth`.

    A permutation of the values: Lipschitz constant 1, no rounding.

    Args:
        pool_size: int or pair (p₀, p₁); H and W must be divisible by it.

    Example:
    >>> InvertibleDownsampling(2)(keras.Input((32, 32, 16))).shape
    (None, 16, 16, 64)
    """

    def __init__(self, pool_size=2, **kwargs):
        super().__init__(**kwargs)
        self.pool_size = as_pair(pool_size, "pool_size")
        if min(self.pool_size) < 1:
            raise ValueError(f"pool_size must be >= 1. Received: pool_size={pool_size}")

    def build(self, input_shape):
        if len(input_shape) != 4 or any(
                d is None or d % p for d, p in zip(input_shape[1:3], self.pool_size)):
            raise ValueError(f"InvertibleDownsampling needs (batch, H, W, C) inputs with H, W divisible by "
                             f"{self.pool_size}; got input shape {tuple(input_shape)}.")

    def call(self, x):
        _, h, w, c = x.shape
        p0, p1 = self.pool_size
        x = ops.reshape(x, (-1, h // p0, p0, w // p1, p1, c))
        x = ops.transpose(x, (0, 1, 3, 2, 4, 5))
        return ops.reshape(x, (-1, h // p0, w // p1, p0 * p1 * c))

    def compute_output_shape(self, input_shape):
        n, h, w, c = input_shape
        p0, p1 = self.pool_size
        return (n, h // p0, w // p1, c * p0 * p1)

    def get_config(self):
        return {**super().get_config(), "pool_size": self.pool_size}
