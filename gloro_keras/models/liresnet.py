"""Builders for the paper's networks: LiResNet and the ConvNet / ResNet ablations."""
import math

import keras

from gloro_keras.layers import LipschitzConv2D, LipschitzDense, LiResNetBlock, LLNDense, MinMax, ResNetBlock
from gloro_keras.models.gloro_model import GloroModel
from gloro_keras.models.relaxed_gloro_model import RelaxedGloroModel

BLOCKS = ("liresnet", "convnet", "resnet")


def stem_config(input_shape, width):
    """(kernel, stride, padding) of the stem for an input size (paper, appendix A.2).

    ≤ 48 px (CIFAR 32, MNIST 28): k5 s2 p2. ≤ 128 px (Tiny-ImageNet 64): k7 s4 p3.
    Larger (ImageNet 224): patchify, kernel = stride = round(√(W/3)) (14 for W = 588).
    """
    size = max(input_shape[0], input_shape[1])
    if size <= 48:
        return 5, 2, 2
    if size <= 128:
        return 7, 4, 3
    k = max(1, round(math.sqrt(width / 3)))
    return k, k, 0


def _neck_padding(size, k=4):
    total = -(-size // k) * k - size
    return (total // 2, total - total // 2)


def liresnet_network(
    L=6,
    W=128,
    num_classes=10,
    input_shape=(32, 32, 3),
    block="liresnet",
    dense_width=None,
    power_iterations=10,
    name=None,
    winograd=True,
):
    """The certifiable body + LLN head as a functional keras.Model.

    Rescaling(x − 0.5) → stem conv → MinMax → L × (block → MinMax) → neck conv
    (k4 s4, W → 2W) → MinMax → Flatten → Dense(d) → MinMax → LLNDense(classes).
    Stem, neck and head accumulate in float64 at inference (`float64_inference=True`).
    `block`: "liresnet" (merged linear residual conv), "convnet" (plain 3×3 conv) or
    "resnet" (conventional `x + β·Conv(MinMax(Conv(x)))`). `winograd`: whether LiResNet blocks
    train their convolution by Winograd where it applies (`LiResNetBlock`).
    """
    if block not in BLOCKS:
        raise ValueError(f"block must be one of {BLOCKS}; got {block!r}")
    if W % 2:
        raise ValueError(f"W must be even (MinMax pairs channels); got {W}")
    if L < 0:
        raise ValueError(f"L must be >= 0; got {L}")
    input_shape = tuple(int(d) for d in input_shape)
    if len(input_shape) != 3:
        raise ValueError(f"input_shape must be (H, W, C); got {input_shape}")
    if dense_width is None:
        dense_width = 2048 if max(input_shape[:2]) > 128 else 512
    pi = dict(power_iterations=power_iterations)
    # the stem, neck and head accumulate in float64 at inference (cheap there): their float32
    # rounding would otherwise dominate the certificates' rounding terms (docs/soundness.md)
    f64 = dict(float64_inference=True)
    k, s, p = stem_config(input_shape, W)

    x = keras.Input(input_shape, name="image")
    z = keras.layers.Rescaling(1.0, offset=-0.5, name="center")(x)
    z = LipschitzConv2D(W, k, strides=s, padding=p, name="stem", **pi, **f64)(z)
    z = MinMax(name="stem_minmax")(z)
    for i in range(L):
        if block == "liresnet":
            z = LiResNetBlock(num_blocks=L, name=f"block{i}", winograd=winograd, **pi)(z)
        elif block == "convnet":
            z = LipschitzConv2D(W, 3, padding="same", kernel_initializer="orthogonal", name=f"block{i}", **pi)(z)
        else:
            z = ResNetBlock(name=f"block{i}", **pi)(z)
        z = MinMax(name=f"block{i}_minmax")(z)
    h, w = z.shape[1:3]
    z = LipschitzConv2D(2 * W, 4, strides=4, padding=(_neck_padding(h), _neck_padding(w)), name="neck_conv",
                        **pi, **f64)(z)
    z = MinMax(name="neck_minmax")(z)
    z = keras.layers.Flatten(name="flatten")(z)
    z = LipschitzDense(dense_width, name="neck_dense", **pi, **f64)(z)
    z = MinMax(name="neck_dense_minmax")(z)
    y = LLNDense(num_classes, name="head", **f64)(z)
    return keras.Model(x, y, name=name or f"{block}_L{L}W{W}")


def GloroLiResNet(
    L=6,
    W=128,
    num_classes=10,
    input_shape=(32, 32, 3),
    epsilon=36 / 255,
    dense_width=None,
    power_iterations=10,
    bound_gradient="last",
    name=None,
    block="liresnet",
    train_dtype=None,
    relaxation=None,
    winograd=True,
    group_power_iterations="auto",
):
    """A GloRo LiResNet (Hu et al., 2023): `L` linear residual blocks of width `W`.

    Example:
    >>> model = GloroLiResNet(L=18, W=256, num_classes=10, input_shape=(32, 32, 3))
    >>> model.compile(optimizer="adamw", loss="emma", metrics=["clean_acc", "vra"])

    `train_dtype="bfloat16"` trains in mixed precision; bounds and inference stay float32
    (see `GloroModel`). `relaxation="topk:K"` or `"affinity:[..][..]"` gives a
    `RelaxedGloroModel` (relaxed top-K or affinity robustness). `winograd=False` trains the blocks'
    convolutions directly instead of by Winograd F(4×4, 3×3) (slower on a CPU, less memory).
    `group_power_iterations` (see `GloroModel`): the blocks' power iterations as one vectorized
    computation; "auto" does so on JAX with a GPU or TPU.
    """
    network = liresnet_network(L, W, num_classes, input_shape, block, dense_width, power_iterations,
                               winograd=winograd)
    kwargs = dict(epsilon=epsilon, bound_gradient=bound_gradient, train_dtype=train_dtype,
                  group_power_iterations=group_power_iterations, name=name or f"gloro_{network.name}")
    if relaxation is not None:
        return RelaxedGloroModel(network, relaxation=relaxation, **kwargs)
    return GloroModel(network, **kwargs)


def GloroConvNet(L=6, W=128, num_classes=10, input_shape=(32, 32, 3), epsilon=36 / 255, **kwargs):
    """Ablation: the LiResNet with each block replaced by a plain 3×3 conv (Table 2/3)."""
    return GloroLiResNet(L, W, num_classes, input_shape, epsilon, block="convnet", **kwargs)


def GloroResNet(L=6, W=128, num_classes=10, input_shape=(32, 32, 3), epsilon=36 / 255, **kwargs):
    """Ablation: conventional residual blocks `x + β·Conv(MinMax(Conv(x)))` (Table 3)."""
    return GloroLiResNet(L, W, num_classes, input_shape, epsilon, block="resnet", **kwargs)
