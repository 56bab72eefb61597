"""Arithmetic precision: float64 accumulation and full-precision float32 kernels.

TensorFlow runs float32 matmuls and convolutions in TF32 (10-bit mantissa, u = 2⁻¹¹) by default
on Ampere and newer NVIDIA GPUs, and JAX's default matmul precision may do the same. The rounding
analysis (`gloro_keras.models.rounding`) assumes float32 arithmetic (u = 2⁻²⁴), so every
inference path of a GloroModel (`model(x)`, `predict`, `evaluate`, the `*_on_batch`
forms, `certify`, `certified_radius`) and every attack (`gloro_keras.attacks`) runs inside
`full_precision_kernels()`, and a GloroModel's inference call is traced under
`full_precision_trace()`. Training is left as the user configured it.

Seen on an NVIDIA H200 with JAX 0.11.2 (bench/results/gpu_check-2026-12-04-h200.md): at JAX's
default precision, an attack on large-bias nets broke float32 certificates by margins of 90–1500
(TF32 rounding), and found nothing at "highest".

oneDNN (TensorFlow's CPU kernels) can be told to run float32 convolutions and matmuls in
bfloat16 ("fpmath mode"); on a CPU with AMX/AVX512-BF16 a float32 3x3 conv then came out with a
relative error of 2.3e-3 instead of 7.6e-7 (measured here, TF 2.21). No context manager can undo
it once TensorFlow runs, so `full_precision_kernels()` refuses to certify under it
(`check_float32_math`).
"""
import contextlib
import os
import threading

import keras
from keras import ops

from gloro_keras.ops.bias import add_bias


# Environment variables that let oneDNN lower float32 arithmetic, and the value that does not.
REDUCED_PRECISION_VARIABLES = ("TF_SET_ONEDNN_FPMATH_MODE", "ONEDNN_DEFAULT_FPMATH_MODE",
                               "DNNL_DEFAULT_FPMATH_MODE")
_FAST_MATH_VARIABLES = ("DNNL_ACL_ENABLE_FAST_MATH",)  # Arm Compute Library: bf16 kernels if set

# TensorFlow's TF32 switch is process-wide: blocks of `full_precision_kernels` in several threads
# (or exited out of order) share it, and the setting from before the first is restored by the last.
_TF32_LOCK = threading.Lock()
_TF32_STATE = {"holders": 0, "was": None}


class ReducedPrecisionError(RuntimeError):
    """The process runs float32 kernels in a lower precision, so certificates would not hold."""


def check_float32_math(environ=None):
    """Raise `ReducedPrecisionError` if the environment lets oneDNN run float32 in lower precision.

    Args:
        environ: the environment to check (default `os.environ`).
    """
    environ = os.environ if environ is None else environ
    bad = [f"{k}={environ[k]}" for k in REDUCED_PRECISION_VARIABLES
           if environ.get(k, "").strip() and environ[k].strip().upper() != "STRICT"]
    bad += [f"{k}={environ[k]}" for k in _FAST_MATH_VARIABLES
            if environ.get(k, "").strip().lower() not in ("", "0", "false", "no", "off")]
    if bad:
        raise ReducedPrecisionError(
            f"{', '.join(bad)} lets oneDNN run float32 convolutions and matmuls in lower precision "
            "(bfloat16 on CPUs that have it: relative error ~1e-3 instead of ~1e-7), so certificates, "
            "which assume float32 arithmetic, would not hold for the network as it computes. "
            "Certify in a process without it (unset, or STRICT)."
        )


@contextlib.contextmanager
def full_precision_kernels(check=True):
    """Disable TF32 (TensorFlow) / use "highest" matmul precision (JAX) inside the block.

    Safe in several threads at once: TensorFlow's switch stays off until the last block exits
    (JAX's setting is per thread).

    Args:
        check: raise `ReducedPrecisionError` first when oneDNN is set to lower float32
            (`check_float32_math`).
    """
    if check:
        check_float32_math()
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        with _TF32_LOCK:
            if _TF32_STATE["holders"] == 0:
                _TF32_STATE["was"] = tf.config.experimental.tensor_float_32_execution_enabled()
                tf.config.experimental.enable_tensor_float_32_execution(False)
            _TF32_STATE["holders"] += 1
        try:
            yield
        finally:
            with _TF32_LOCK:
                _TF32_STATE["holders"] -= 1
                if _TF32_STATE["holders"] == 0:
                    tf.config.experimental.enable_tensor_float_32_execution(_TF32_STATE["was"])
    else:
        with full_precision_trace():
            yield


@contextlib.contextmanager
def full_precision_trace():
    """Full-precision float32 kernels for the ops *traced* inside the block.

    On JAX the matmul precision is read when an op is traced, so "highest" set here holds in
    every jitted function that traces the block, wherever that function later runs. TensorFlow's
    TF32 is a process-wide switch read when a kernel runs, which a traced graph cannot set: there
    `full_precision_kernels()` must surround the execution, and this is a no-op.
    """
    if keras.backend.backend() == "jax":
        import jax

        with jax.default_matmul_precision("highest"):
            yield
    else:
        yield


def full_precision_active():
    """Whether float32 kernels run here at full precision: TF32 off (TensorFlow), or "highest" /
    "float32" matmul precision set for what is traced here (JAX)."""
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        return not tf.config.experimental.tensor_float_32_execution_enabled()
    if backend == "jax":
        import jax

        return str(jax.config.jax_default_matmul_precision).lower() in ("highest", "float32")
    return True


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
    y = add_bias(linear(x, kernel), bias)
    return ops.cast(y, compute_dtype) if float64 else y
