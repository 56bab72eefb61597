"""A learned scalar multiple of the input."""
import keras
import numpy as np
from keras import ops

from gloro_keras.layers.bounded_layer import BoundedLayer, check_gradient


@keras.saving.register_keras_serializable(package="gloro_keras")
class Scaling(BoundedLayer):
    """`y = α·x` with one trainable scalar α; Lipschitz constant |α|.

    Args:
        init: the initial α (default 1).

    Example:
    >>> Scaling(4.0)(np.ones((1, 3)))
    [[4., 4., 4.]]
    """

    def __init__(self, init=1.0, **kwargs):
        super().__init__(**kwargs)
        init = float(init)
        if not np.isfinite(init):
            raise ValueError(f"init must be finite. Received: init={init}")
        self.init = init

    def build(self, input_shape):
        self.alpha = self.add_weight(name="alpha", shape=(), initializer=keras.initializers.Constant(self.init))

    def call(self, x):
        return x * ops.cast(self.alpha, x.dtype)

    def compute_output_shape(self, input_shape):
        return input_shape

    def power_estimate(self, training=False, gradient="last"):
        check_gradient(gradient)
        return ops.abs(self.alpha)

    def converge_iterate(self, max_iterations=500, tolerance=1e-6):
        return float(abs(ops.convert_to_numpy(self.alpha)))

    def sound_bound(self, on_device=False):
        return float(abs(np.float64(ops.convert_to_numpy(self.alpha))))

    def get_config(self):
        return {**super().get_config(), "init": self.init}
