"""MinMax activation."""
import keras
from keras import ops


@keras.saving.register_keras_serializable(package="gloro_keras")
class MinMax(keras.layers.Layer):
    """Sorts channel pairs: splits the last axis into halves a, b → [max(a, b), min(a, b)].

    1-Lipschitz and gradient-norm preserving (a permutation on each pair).
    Requires an even number of channels.

    Example:
    >>> MinMax()(np.array([[1., -2., 3., 0.]]))   # pairs (1, 3), (-2, 0)
    [[3., 0., 1., -2.]]
    """

    def build(self, input_shape):
        c = input_shape[-1]
        if c is None or c % 2:
            raise ValueError(
                f"MinMax needs an even number of channels on the last axis; got {c} "
                f"(input shape {tuple(input_shape)})."
            )

    def call(self, x):
        a, b = ops.split(x, 2, axis=-1)
        return ops.concatenate([ops.maximum(a, b), ops.minimum(a, b)], axis=-1)

    def compute_output_shape(self, input_shape):
        return input_shape
