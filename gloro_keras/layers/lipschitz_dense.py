"""Dense layer with a tracked spectral-norm bound."""
import keras
from keras import ops

from gloro_keras.ops.precision import accumulate_float64, affine
from gloro_keras.layers.lipschitz_layer import LipschitzLayer


@keras.saving.register_keras_serializable(package="gloro_keras")
class LipschitzDense(LipschitzLayer):
    """`y = x W + b` with ‖W‖₂ bounded by power iteration on WᵀW (iterate: one input row).

    Also usable as the head of a GloroModel: the margin between classes i, j is then
    bounded by `K·‖w_i − w_j‖` with `w_i` the i-th column of W.

    Args:
        units: output size.
        use_bias: add a bias.
        kernel_initializer: default 'orthogonal'.
        power_iterations: steps per training call (default 10).
        float64_inference: in inference calls (training falsy) of a float32 layer, accumulate
            `x W + b` in float64 and round the result to float32 once: the float32 products
            are exact in float64, so the rounding error is ≤ 2⁻²⁴·(|x||W| + |b|) instead of
            γ_n·(|x||W| + |b|), which keeps certificates tight (docs/soundness.md). Training
            calls are unchanged. Default False (plain float32, as any float32 evaluator
            computes it); the LiResNet builders turn it on.

    Example:
    >>> neck = LipschitzDense(512)
    """

    def __init__(
        self,
        units,
        use_bias=True,
        kernel_initializer="orthogonal",
        bias_initializer="zeros",
        power_iterations=10,
        float64_inference=False,
        **kwargs,
    ):
        super().__init__(power_iterations=power_iterations, **kwargs)
        self.float64_inference = bool(float64_inference)
        self.units = int(units)
        if self.units <= 0:
            raise ValueError(f"units must be positive; got {units}")
        self.use_bias = bool(use_bias)
        self.kernel_initializer = keras.initializers.get(kernel_initializer)
        self.bias_initializer = keras.initializers.get(bias_initializer)

    def build(self, input_shape):
        if input_shape[-1] is None:
            raise ValueError(f"{self.name}: the last input dimension must be known.")
        if len(input_shape) != 2:
            raise ValueError(
                f"{type(self).__name__} '{self.name}' expects (batch, features) inputs; got "
                f"{tuple(input_shape)}. Add a Flatten layer first."
            )
        din = int(input_shape[-1])
        self.kernel = self.add_weight(
            name="kernel", shape=(din, self.units), initializer=self.kernel_initializer
        )
        self.bias = (
            self.add_weight(name="bias", shape=(self.units,), initializer=self.bias_initializer)
            if self.use_bias
            else None
        )
        self.build_iterate((1, din))

    def linear_kernel(self):
        return self.kernel

    def apply_linear(self, u, kernel):
        return ops.matmul(u, kernel)

    def apply_adjoint(self, v, kernel):
        return ops.matmul(v, ops.transpose(kernel))

    has_kernel_vjp = True

    def kernel_vjp(self, x, g):
        return ops.matmul(ops.transpose(x), g)

    def margin_kernel(self):
        """(features, classes) matrix W of the logits `xW + b` (used when this is a head)."""
        return self.kernel

    def call(self, x, training=None):
        f64 = accumulate_float64(training, self.float64_inference, self.compute_dtype)
        return affine(ops.matmul, x, self.kernel, self.bias, self.compute_dtype, float64=f64)

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[:-1]) + (self.units,)

    def sound_bound(self, on_device=False):
        from gloro_keras.bounds import dense_spectral_bound

        return dense_spectral_bound(ops.convert_to_numpy(self.kernel).astype("float64"))

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "units": self.units,
                "use_bias": self.use_bias,
                "float64_inference": self.float64_inference,
                "kernel_initializer": keras.initializers.serialize(self.kernel_initializer),
                "bias_initializer": keras.initializers.serialize(self.bias_initializer),
            }
        )
        return config
