"""Full-precision float32 kernels for certification (no TF32 on Ampere and newer GPUs).

TensorFlow runs float32 matmuls and convolutions in TF32 (10-bit mantissa, u = 2⁻¹¹) by default
on Ampere and newer NVIDIA GPUs, and JAX's default matmul precision may do the same. The rounding
analysis (`gloro_keras.models.rounding`) assumes float32 arithmetic (u = 2⁻²⁴), so every
certification path (`certify`, `certified_radius`, `predict`, `evaluate` of a GloroModel) runs
inside `full_precision_kernels()`. Training is left as the user configured it.
"""
import contextlib

import keras


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
