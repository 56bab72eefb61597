"""Arithmetic precision: float64 accumulation and full-precision float32 kernels.

TensorFlow runs float32 matmuls and convolutions in TF32 (10-bit mantissa, u = 2⁻¹¹) by default
on Ampere and newer NVIDIA GPUs, and JAX's default matmul precision may do the same. The rounding
analysis (`gloro_keras.models.rounding`) assumes float32 arithmetic (u = 2⁻²⁴), so every
certification path (`certify`, `certified_radius`, `predict`, `evaluate` of a GloroModel) runs
inside `full_precision_kernels()`. Training is left as the user configured it.
"""
import contextlib

import keras
from keras import ops


@contextlib.contextmanager
def full_precision_kernels():
    """Disable TF32 (TensorFlow) / use "highest" matmul precision (JAX) inside the block."""
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        was = tf.config.experimental.tensor_float_32_execution_enabled()
        tf.config.experimental.enable_tensor_float_32_execution(False)
        try:
            yield
        finally:
            tf.config.experimental.enable_tensor_float_32_execution(was)
    elif backend == "jax":
        import jax

        with jax.default_matmul_precision("highest"):
            yield
    else:
        yield


def float64_available():
    """Whether float64 arithmetic really runs in float64 (JAX needs `jax_enable_x64`)."""
    if keras.backend.backend() == "jax":
        import jax

        return bool(jax.config.jax_enable_x64)
    return True


def accumulate_float64(training, enabled, compute_dtype):
    """Whether an inference call should accumulate its products in float64 (see layers'
    `float64_inference`): not when training, nor when float64 is not available."""
    return bool(enabled) and not training and compute_dtype == "float32" and float64_available()


def affine(linear, x, kernel, bias, compute_dtype, float64=False):
    """`linear(x, kernel) + bias`. With `float64=True` the float32 operands are cast to float64
    (their products are then exact), summed in float64 and rounded to `compute_dtype` once."""
    if float64:
        x, kernel = ops.cast(x, "float64"), ops.cast(kernel, "float64")
        bias = None if bias is None else ops.cast(bias, "float64")
    y = linear(x, kernel)
    if bias is not None:
        y = y + bias
    return ops.cast(y, compute_dtype) if float64 else y
