"""Shared math at the bottom of the library: norms, padding, labels, margins, certificates,
precision, sorting pairs, bias addition, convolutions as matmuls, Winograd convolution. Imports only
Keras and NumPy (TensorFlow lazily, for XLA-fused kernels on that backend); every other gloro_keras module may
import it.

    from gloro_keras.ops import bottom_logit, check_epsilon, MarginCertificate
"""
from gloro_keras.ops.bias import add_bias
from gloro_keras.ops.certificate import MarginCertificate, certified_radius_np, certify_np, margin_slack_rate
from gloro_keras.ops.conv import conv_kernel_vjp
from gloro_keras.ops.epsilon import check_epsilon
from gloro_keras.ops.labels import finite_argmax, predicted_class, sparse_labels
from gloro_keras.ops.margins import (
    FLOAT64_SAFETY,
    bottom_logit,
    gloro_outputs,
    label_lift,
    pairwise_distances,
    pairwise_distances_np,
    pairwise_distances_upper,
    strict_bottom_logit,
)
from gloro_keras.ops.norms import TINY, l2_normalize, safe_norm
from gloro_keras.ops.pairs import sort_halves
from gloro_keras.ops.padding import as_pair, explicit_padding, normalize_padding
from gloro_keras.ops.precision import (
    ReducedPrecisionError,
    accumulate_float64,
    affine,
    check_float32_math,
    float64_available,
    full_precision_active,
    full_precision_kernels,
    full_precision_trace,
)
from gloro_keras.ops.relaxations import Affinity, Relaxation, RelaxedCertificate, TopK
from gloro_keras.ops.winograd import winograd_applies, winograd_conv3x3, winograd_pays

__all__ = [
    "Affinity", "FLOAT64_SAFETY", "MarginCertificate", "ReducedPrecisionError", "Relaxation", "RelaxedCertificate", "TINY", "TopK",
    "accumulate_float64", "add_bias", "affine", "as_pair", "bottom_logit", "certified_radius_np", "certify_np", "check_epsilon", "check_float32_math",
    "conv_kernel_vjp", "explicit_padding", "finite_argmax", "float64_available", "full_precision_active", "full_precision_kernels", "full_precision_trace",
    "gloro_outputs", "l2_normalize", "label_lift", "margin_slack_rate", "normalize_padding", "pairwise_distances",
    "pairwise_distances_np", "pairwise_distances_upper", "predicted_class", "safe_norm", "sort_halves", "sparse_labels",
    "strict_bottom_logit", "winograd_applies", "winograd_conv3x3", "winograd_pays",
]
