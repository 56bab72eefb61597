"""Last-layer-normalized classification head."""
import keras
from keras import ops

import numpy as np

from gloro_keras.ops.norms import TINY, safe_norm
from gloro_keras.ops.precision import accumulate_float64, affine


@keras.saving.register_keras_serializable(package="gloro_keras")
class LLNDense(keras.layers.Layer):
    """Head with last-layer normalization: `y_i = ⟨x, w_i / ‖w_i‖⟩ + b_i`.

    Each class's weight vector (a column of the kernel) is divided by its ℓ2 norm in the
    forward pass; the bias is kept. In a GloroModel the margin between classes i and j is
    bounded by `K·‖ŵ_i − ŵ_j‖` (≤ 2K).

    Args:
        units: number of classes.
        use_bias: add a bias.
        float64_inference: in inference calls of a float32 layer, normalize the columns and
            accumulate in float64, rounding the logits to float32 once (tighter certificates;
            see `LipschitzDense`). Default False; the LiResNet builders turn it on.

    Example:
    >>> head = LLNDense(10)
    """

    def __init__(self, units, use_bias=True, kernel_initializer="glorot_uniform", float64_inference=False, **kwargs):
        super().__init__(**kwargs)
        self.float64_inference = bool(float64_inference)
        self.units = int(units)
        if self.units < 2:
            raise ValueError(f"LLNDense needs at least 2 classes; got units={units}")
        self.use_bias = bool(use_bias)
        self.kernel_initializer = keras.initializers.get(kernel_initializer)

    def build(self, input_shape):
        if len(input_shape) != 2 or input_shape[-1] is None:
            raise ValueError(
                f"LLNDense '{self.name}' expects (batch, features) inputs; got {tuple(input_shape)}."
            )
        self.kernel = self.add_weight(
            name="kernel", shape=(int(input_shape[-1]), self.units), initializer=self.kernel_initializer
        )
        self.bias = (
            self.add_weight(name="bias", shape=(self.units,), initializer="zeros")
            if self.use_bias
            else None
        )

    def margin_kernel(self):
        """Column-normalized kernel Ŵ (features, classes)."""
        return self.kernel / safe_norm(self.kernel, axis=0, keepdims=True)

    def margin_kernel_np(self):
        """Ŵ in float64 numpy (the reference the certification bounds use)."""
        w = np.asarray(ops.convert_to_numpy(self.kernel), dtype=np.float64)
        return w / np.sqrt(np.maximum(np.sum(w * w, axis=0, keepdims=True), TINY))

    def call(self, x, training=None):
        f64 = accumulate_float64(training, self.float64_inference, self.compute_dtype)
        kernel = ops.cast(self.kernel, "float64") if f64 else self.kernel
        w = kernel / safe_norm(kernel, axis=0, keepdims=True)  # Ŵ, normalized in float64 when f64
        return affine(ops.matmul, x, w, self.bias, self.compute_dtype, float64=f64)

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[:-1]) + (self.units,)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "units": self.units,
                "use_bias": self.use_bias,
                "float64_inference": self.float64_inference,
                "kernel_initializer": keras.initializers.serialize(self.kernel_initializer),
            }
        )
        return config
