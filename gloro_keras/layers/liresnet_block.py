"""Linear residual block of LiResNet, run as one convolution."""
import math

import keras
import numpy as np
from keras import ops

from gloro_keras.ops.bias import add_bias
from gloro_keras.ops.conv import conv_kernel_vjp
from gloro_keras.ops.winograd import winograd_applies, winograd_conv3x3, winograd_pays
from gloro_keras.layers.lipschitz_layer import LipschitzLayer


@keras.saving.register_keras_serializable(package="gloro_keras")
class LiResNetBlock(LipschitzLayer):
    """`y = x + (1/√L)·β ⊙ Conv_V(x) + b`, computed as ONE 'same' convolution in training.

    The merged kernel is `K = Δ + R`, `R = (1/√L)·V·diag(β)`, with Δ the identity kernel (1 at
    the centre tap for channel i→i). The block is linear, so its Lipschitz constant is ‖K‖₂
    of the merged operator (tracked by power iteration), which is much tighter than the
    `1 + ‖branch‖` bound of a conventional residual block.

    Inference calls (training falsy) compute the same function as `x + Conv_R(x) + b`: one
    convolution with R and an addition. Its float32 rounding error is ≤ γ_n·|R||x| + γ₂·(|x| +
    |R||x| + |b|) instead of γ_n·|K||x|, so certificates lose far less to rounding
    (docs/soundness.md); the sound bound is taken of Δ + R exactly, in float64.

    Training calls on a CPU run the merged convolution by Winograd F(4×4, 3×3) when it applies
    (`training_linear`): the same function up to ≈ 1e-5 relative rounding, 4× fewer multiply-adds.

    Args:
        num_blocks: L, the number of blocks in the backbone (sets the 1/√L scale).
        kernel_size: kernel size (default 3); an even size pads like TensorFlow's 'same'
            (one more row/column after than before) and puts Δ's tap at (k−1)//2.
        use_bias: add a bias b.
        kernel_initializer: for V; default N(0, 1)/(k²·W) as in the paper.
        power_iterations: steps per training call (default 10).
        residual_scale: the scale of the residual branch, instead of 1/√L.
        use_affine: learn β (default); False fixes β = 1.
        bias_initializer: for b (default zeros).
        winograd: train the merged convolution by Winograd F(4×4, 3×3) where it applies
            (default True; `training_linear`). False keeps the direct convolution: slower on a
            CPU, but a training step needs less memory (300–500 MB less at L6W64 / L6W128).

    Example:
    >>> x = keras.Input((16, 16, 128))
    >>> y = LiResNetBlock(num_blocks=6)(x)          # width taken from the input
    """

    def __init__(
        self,
        num_blocks=1,
        kernel_size=3,
        use_bias=True,
        kernel_initializer=None,
        power_iterations=10,
        residual_scale=None,
        use_affine=True,
        bias_initializer="zeros",
        winograd=True,
        **kwargs,
    ):
        super().__init__(power_iterations=power_iterations, **kwargs)
        self.num_blocks = int(num_blocks)
        if self.num_blocks < 1:
            raise ValueError(f"num_blocks must be >= 1. Received: num_blocks={num_blocks}")
        self.kernel_size = int(kernel_size)
        if self.kernel_size < 1:
            raise ValueError(f"kernel_size must be >= 1. Received: kernel_size={kernel_size}")
        if residual_scale is not None and not math.isfinite(float(residual_scale)):
            raise ValueError(f"residual_scale must be finite. Received: residual_scale={residual_scale}")
        self.residual_scale = None if residual_scale is None else float(residual_scale)
        self.use_affine = bool(use_affine)
        if not isinstance(winograd, (bool, np.bool_)):
            raise ValueError(f"winograd must be True or False. Received: winograd={winograd!r}")
        self.winograd = bool(winograd)
        self.bias_initializer = keras.initializers.get(bias_initializer)
        self.use_bias = bool(use_bias)
        self.kernel_initializer = (
            keras.initializers.get(kernel_initializer) if kernel_initializer is not None else None
        )

    def build(self, input_shape):
        if len(input_shape) != 4 or any(d is None for d in input_shape[1:]):
            raise ValueError(
                f"LiResNetBlock '{self.name}' needs a static (batch, H, W, C) input shape; "
                f"got {tuple(input_shape)}."
            )
        h, w, c = (int(d) for d in input_shape[1:])
        self.width = c
        k = self.kernel_size
        init = self.kernel_initializer or keras.initializers.RandomNormal(stddev=1.0 / (k * k * c))
        self.residual_kernel = self.add_weight(name="residual_kernel", shape=(k, k, c, c), initializer=init)
        self.beta = self.add_weight(name="beta", shape=(c,), initializer="ones", trainable=self.use_affine)
        self.bias = (self.add_weight(name="bias", shape=(c,), initializer=self.bias_initializer)
                     if self.use_bias else None)
        self.build_iterate((1, h, w, c))

    @property
    def pads(self):
        """(before, after) padding of each spatial axis ('same', stride 1)."""
        p = (self.kernel_size - 1) // 2
        return (p, self.kernel_size - 1 - p)

    @property
    def scale(self):
        """The residual branch's scale: `residual_scale`, else 1/√L."""
        return self.residual_scale if self.residual_scale is not None else 1.0 / math.sqrt(self.num_blocks)

    def identity_kernel(self):
        """Δ: (k, k, W, W) with the W×W identity at tap ((k−1)//2, (k−1)//2)."""
        eye = ops.eye(self.width, dtype=self.residual_kernel.dtype)[None, None]
        return ops.pad(eye, (self.pads, self.pads, (0, 0), (0, 0)))

    def residual_merged_kernel(self):
        """R = V·β/√L (or V·β·residual_scale), the kernel of the residual branch."""
        if self.residual_scale is not None:
            return self.residual_kernel * (self.beta * self.residual_scale)
        return self.residual_kernel * (self.beta / math.sqrt(self.num_blocks))

    def linear_kernel(self):
        return self.identity_kernel() + self.residual_merged_kernel()

    def apply_linear(self, u, kernel):
        return ops.conv(u, kernel, strides=1, padding="same")

    def apply_adjoint(self, v, kernel):
        return ops.conv_transpose(v, kernel, strides=1, padding="same")

    has_kernel_vjp = True

    def power_group_key(self):
        return ("LiResNetBlock", self.kernel_size, tuple(self.iterate.shape), self.power_iterations,
                self.residual_kernel.dtype)

    def kernel_vjp(self, x, g):
        k = self.kernel_size
        return conv_kernel_vjp(x, g, (k, k), (1, 1), (self.pads, self.pads))

    def training_linear(self, x, kernel):
        """A(K) x in a training call: by Winograd F(4×4, 3×3) (`ops.winograd_conv3x3`: 4× fewer
        multiply-adds, ≈ 1e-5 relative rounding) for a float32 batch of images whose sides are
        multiples of 4, with more than 32 channels (`ops.winograd_pays`), on CPU, outside a JAX
        `keras.distribution`, unless `winograd=False`. Side by side, it made the
        training step 0.73× (L6W128) and 0.91× (L6W64) as long on TensorFlow and ≈ 0.6–0.7× for the
        block alone on JAX (bench/results/ab_winograd.md). Else `LipschitzLayer.training_linear`.
        Inference calls, bounds and certificates use the direct convolution."""
        if (self.winograd and x.dtype == "float32" and winograd_applies(tuple(x.shape), tuple(kernel.shape))
                and winograd_pays(min(kernel.shape[2:]))):
            return winograd_conv3x3(x, kernel)
        return super().training_linear(x, kernel)

    def call(self, x, training=None):
        if training:
            y = self.training_linear(x, self.linear_kernel())
        else:
            y = x + self.apply_linear(x, self.residual_merged_kernel())
        return add_bias(y, self.bias)

    def compute_output_shape(self, input_shape):
        return input_shape

    def sound_bound(self, on_device=False):
        from gloro_keras.bounds import conv2d_spectral_bound

        p, c = self.pads[0], self.width
        kernel = ops.convert_to_numpy(self.residual_merged_kernel()).astype("float64")
        kernel[p, p] += np.eye(c)  # Δ + R in float64: the function inference computes
        return conv2d_spectral_bound(
            kernel,
            tuple(self.iterate.shape[1:3]), strides=(1, 1), padding=(self.pads, self.pads),
            on_device=on_device,
        )

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "num_blocks": self.num_blocks,
                "kernel_size": self.kernel_size,
                "use_bias": self.use_bias,
                "residual_scale": self.residual_scale,
                "use_affine": self.use_affine,
                "winograd": self.winograd,
                "bias_initializer": keras.initializers.serialize(self.bias_initializer),
                "kernel_initializer": (
                    keras.initializers.serialize(self.kernel_initializer)
                    if self.kernel_initializer is not None
                    else None
                ),
            }
        )
        return config
