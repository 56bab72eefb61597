"""2-D convolution with a tracked spectral-norm bound."""
import keras
from keras import ops

from gloro_keras.ops.conv import conv_kernel_vjp, example_conv, example_conv_transpose, patch_index
from gloro_keras.ops.padding import as_pair, normalize_padding
from gloro_keras.ops.precision import accumulate_float64, affine
from gloro_keras.layers.lipschitz_layer import LipschitzLayer


@keras.saving.register_keras_serializable(package="gloro_keras")
class LipschitzConv2D(LipschitzLayer):
    """Conv2D (channels_last) whose operator norm ‖A‖₂ is bounded for certification.

    `y = conv(zero_pad(x), K, strides) + b`. Power iteration runs on the exact operator
    A and its adjoint Aᵀ (transposed conv with matching output padding, then crop), on an
    iterate shaped like one input example, so the estimate is the norm of the layer at
    its real input size (not of a circular or unpadded surrogate). A strided layer applies
    A and Aᵀ to one example as a gather of its patches and a matmul (`example_conv`), the
    same map, cheaper than a convolution kernel at batch 1 (bench/results/ab_example_conv.md).

    Args:
        filters: output channels.
        kernel_size: int or pair.
        strides: int or pair.
        padding: 'same' (TF convention), 'valid', an int p (p on every side, as in
            PyTorch) or ((top, bottom), (left, right)).
        use_bias: add a bias (does not change the bound).
        kernel_initializer: default 'orthogonal'.
        power_iterations: steps per training call (default 10).
        float64_inference: in inference calls of a float32 layer, convolve in float64 and
            round to float32 once (tighter certificates; see `LipschitzDense`). Default False;
            the LiResNet builders turn it on for the stem and the neck (cheap there).

    Example:
    >>> stem = LipschitzConv2D(128, 5, strides=2, padding=2)   # 32×32 → 16×16
    """

    def __init__(
        self,
        filters,
        kernel_size,
        strides=1,
        padding="same",
        use_bias=True,
        kernel_initializer="orthogonal",
        bias_initializer="zeros",
        power_iterations=10,
        float64_inference=False,
        **kwargs,
    ):
        super().__init__(power_iterations=power_iterations, **kwargs)
        self.filters = int(filters)
        if self.filters <= 0:
            raise ValueError(f"filters must be positive; got {filters}")
        self.kernel_size = as_pair(kernel_size, "kernel_size")
        self.strides = as_pair(strides, "strides")
        self.float64_inference = bool(float64_inference)
        # Strings/ints resolve at build (they depend on the input size); pairs now.
        self.padding = (
            padding if isinstance(padding, (str, int)) else normalize_padding(padding, None, None, None)
        )
        self.use_bias = bool(use_bias)
        self.kernel_initializer = keras.initializers.get(kernel_initializer)
        self.bias_initializer = keras.initializers.get(bias_initializer)

    def build(self, input_shape):
        if len(input_shape) != 4 or any(d is None for d in input_shape[1:]):
            raise ValueError(
                f"{type(self).__name__} '{self.name}' needs a static (batch, H, W, C) input "
                f"shape to size its power-iteration iterate; got {tuple(input_shape)}."
            )
        h, w, cin = input_shape[1:]
        self.input_hw = (int(h), int(w))
        self.pads = normalize_padding(self.padding, self.kernel_size, self.strides, self.input_hw)
        (pt, pb), (pl, pr) = self.pads
        self.padded_hw = (h + pt + pb, w + pl + pr)
        kh, kw = self.kernel_size
        sh, sw = self.strides
        if self.padded_hw[0] < kh or self.padded_hw[1] < kw:
            raise ValueError(
                f"{self.name}: kernel {self.kernel_size} larger than padded input {self.padded_hw}."
            )
        self.output_hw = ((self.padded_hw[0] - kh) // sh + 1, (self.padded_hw[1] - kw) // sw + 1)
        # Fast path: TF 'same' with stride 1 is exactly our symmetric padding.
        self._same_stride1 = self.strides == (1, 1) and self.pads == normalize_padding(
            "same", self.kernel_size, (1, 1), self.input_hw
        )
        self.kernel = self.add_weight(
            name="kernel", shape=(kh, kw, int(cin), self.filters), initializer=self.kernel_initializer
        )
        self.bias = (
            self.add_weight(name="bias", shape=(self.filters,), initializer=self.bias_initializer)
            if self.use_bias
            else None
        )
        # one example of a strided layer (the power iterate) runs as a gather + matmul
        self._patch_index = (patch_index(self.padded_hw, self.kernel_size, self.strides)
                             if self.strides != (1, 1) else None)
        self.build_iterate((1, int(h), int(w), int(cin)))

    def _one_strided_example(self, x):
        return self._patch_index is not None and x.shape[0] == 1

    # A: pad then 'valid' conv; Aᵀ: 'valid' transposed conv to the padded size, then crop.
    def apply_linear(self, x, kernel):
        if self._one_strided_example(x):
            return example_conv(x, kernel, self._patch_index, self.pads, self.output_hw)
        if self._same_stride1:
            return ops.conv(x, kernel, strides=1, padding="same")
        (pt, pb), (pl, pr) = self.pads
        if pt or pb or pl or pr:
            x = ops.pad(x, ((0, 0), (pt, pb), (pl, pr), (0, 0)))
        return ops.conv(x, kernel, strides=self.strides, padding="valid")

    def apply_adjoint(self, v, kernel):
        if self._one_strided_example(v):
            return example_conv_transpose(v, kernel, self._patch_index, self.pads, self.input_hw)
        if self._same_stride1:
            return ops.conv_transpose(v, kernel, strides=1, padding="same")
        kh, kw = self.kernel_size
        sh, sw = self.strides
        ho, wo = self.output_hw
        out_pad = (self.padded_hw[0] - ((ho - 1) * sh + kh), self.padded_hw[1] - ((wo - 1) * sw + kw))
        x = ops.conv_transpose(
            v, kernel, strides=self.strides, padding="valid",
            output_padding=out_pad if any(out_pad) else None,
        )
        (pt, pb), (pl, pr) = self.pads
        h, w = self.input_hw
        return x[:, pt : pt + h, pl : pl + w, :]

    has_kernel_vjp = True

    def kernel_vjp(self, x, g):
        return conv_kernel_vjp(x, g, self.kernel_size, self.strides, self.pads)

    def linear_kernel(self):
        return self.kernel

    def call(self, x, training=None):
        f64 = accumulate_float64(training, self.float64_inference, self.compute_dtype)
        linear = self.training_linear if training else self.apply_linear
        return affine(linear, x, self.kernel, self.bias, self.compute_dtype, float64=f64)

    def compute_output_shape(self, input_shape):
        h, w = input_shape[1:3]
        if h is None or w is None:
            return (input_shape[0], None, None, self.filters)
        pads = normalize_padding(self.padding, self.kernel_size, self.strides, (h, w))
        kh, kw = self.kernel_size
        sh, sw = self.strides
        return (
            input_shape[0],
            (h + sum(pads[0]) - kh) // sh + 1,
            (w + sum(pads[1]) - kw) // sw + 1,
            self.filters,
        )

    def sound_bound(self, on_device=False):
        from gloro_keras.bounds import conv2d_spectral_bound

        return conv2d_spectral_bound(
            ops.convert_to_numpy(self.linear_kernel()).astype("float64"),
            self.input_hw, strides=self.strides, padding=self.pads, on_device=on_device,
        )

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "filters": self.filters,
                "kernel_size": self.kernel_size,
                "strides": self.strides,
                "padding": self.padding,
                "use_bias": self.use_bias,
                "float64_inference": self.float64_inference,
                "kernel_initializer": keras.initializers.serialize(self.kernel_initializer),
                "bias_initializer": keras.initializers.serialize(self.bias_initializer),
            }
        )
        return config
