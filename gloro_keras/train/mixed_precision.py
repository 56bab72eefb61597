"""Which training dtype pays on this machine: `train_dtype="auto"`, `gloro-train`'s default.

bfloat16 training (`GloroModel(train_dtype="bfloat16")`) runs the training forward and backward
pass in bfloat16; the bounds, evaluation and every certificate stay float32. It pays only where
the hardware multiplies bfloat16 natively. Measured (GloRo training step, batch 256, bfloat16 ÷
float32 time): 0.47 at L6W64 and 0.40 at L6W128 on an Intel Xeon with AMX-BF16, oneDNN on
(bench/results/training-2026-12-02-xeon-amx.md); 10.5 at L6W64 on an AMD EPYC with AVX2 only
(bench/results/run-2026-12-02-l6w64-bf16.log). So "auto" means bfloat16 exactly there:

* an NVIDIA GPU of compute capability 8.0 or newer (bfloat16 tensor cores), on any backend;
* with no GPU, a CPU whose flags include `amx_bf16` or `avx512_bf16`, on TensorFlow with its
  oneDNN kernels on (TensorFlow's own bfloat16 kernels emulate the arithmetic);
* float32 everywhere else.

```python
dtype, why = resolve_train_dtype("auto")   # e.g. ("bfloat16", "CPU with amx_bf16, oneDNN on")
model = GloroLiResNet(..., train_dtype=dtype)
```
"""
import keras

from gloro_keras import _compat

__all__ = ["TRAIN_DTYPE_CHOICES", "bfloat16_hardware", "cpu_flags", "resolve_train_dtype"]

TRAIN_DTYPE_CHOICES = ("auto", "float32", "bfloat16")
CPU_BF16_FLAGS = ("amx_bf16", "avx512_bf16")


def cpu_flags(path="/proc/cpuinfo"):
    """The CPU feature flags Linux reports (empty where the file is missing)."""
    try:
        with open(path) as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def _gpu_capabilities():
    """Compute capabilities (major, minor) of the visible NVIDIA GPUs."""
    caps = []
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        for gpu in tf.config.list_physical_devices("GPU"):
            cc = tf.config.experimental.get_device_details(gpu).get("compute_capability")
            if cc:
                caps.append(tuple(cc))
    elif keras.backend.backend() == "jax":
        import jax

        for d in jax.devices():
            cc = getattr(d, "compute_capability", None)
            if d.platform == "gpu" and cc:
                caps.append(tuple(int(v) for v in str(cc).split(".")[:2]))
    return caps


def bfloat16_hardware(flags=None, gpus=None, onednn=None):
    """(True/False, why): whether training in bfloat16 runs on native bfloat16 arithmetic here.

    Args:
        flags: CPU feature flags (default: `cpu_flags()`).
        gpus: compute capabilities of the GPUs, e.g. `[(9, 0)]` (default: the visible ones).
        onednn: whether TensorFlow's oneDNN kernels are on (default: asked from TensorFlow;
            None on another backend).
    """
    gpus = _gpu_capabilities() if gpus is None else list(gpus)
    if gpus:
        ok = all(tuple(cc) >= (8, 0) for cc in gpus)
        names = ", ".join(f"{a}.{b}" for a, b in gpus)
        return ok, f"GPU compute capability {names} ({'>=' if ok else '<'} 8.0)"
    flags = cpu_flags() if flags is None else set(flags)
    onednn = _compat.onednn_enabled() if onednn is None else onednn
    have = [f for f in CPU_BF16_FLAGS if f in flags]
    if not have:
        return False, "CPU without amx_bf16/avx512_bf16"
    if keras.backend.backend() != "tensorflow":
        return False, f"CPU with {have[0]}, but the {keras.backend.backend()} backend's CPU kernels emulate bfloat16"
    if not onednn:
        return False, f"CPU with {have[0]}, but TensorFlow's oneDNN kernels are off (TF_ENABLE_ONEDNN_OPTS=1)"
    return True, f"CPU with {have[0]}, oneDNN on"


def resolve_train_dtype(value, **hardware):
    """(dtype, why) for `train_dtype` value "auto" | "float32" | "bfloat16" (`hardware`: the
    arguments of `bfloat16_hardware`, for tests)."""
    if value not in TRAIN_DTYPE_CHOICES:
        raise ValueError(f"train_dtype must be one of {TRAIN_DTYPE_CHOICES}; Received: {value!r}")
    if value != "auto":
        return value, "asked for"
    ok, why = bfloat16_hardware(**hardware)
    return ("bfloat16" if ok else "float32"), f"auto: {why}"
