"""The sound bounds of many layers at once: on JAX's accelerator, or one host thread per layer."""
import inspect
import os
from concurrent.futures import ThreadPoolExecutor

from threadpoolctl import threadpool_limits


def usable_cpus():
    """CPUs this process may run on (its affinity mask where the OS has one)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def sound_bounds(layers, workers=None, on_device="auto"):
    """`[float(layer.sound_bound()) for layer in layers]`, on the accelerator or in host threads.

    on_device: True computes the convolutions' bounds on JAX's default device, one layer after
    another (`gloro_keras.bounds.device`: batched Gram matrices certified by Cholesky factors;
    as sound, within ~5e-7 of the host's values); "auto" (default) does so where Keras runs on
    JAX with a GPU or TPU (`device.jax_accelerator()`), where the host eigenproblems outlasted a
    training epoch; False never.

    Otherwise each bound is a float64 numpy/LAPACK computation (`conv2d_spectral_bound`,
    `dense_spectral_bound`) that releases the GIL in its LAPACK calls and already runs them with
    one BLAS thread, so `workers` threads (default: the usable CPUs, at most one per layer) run
    that many layers at a time; BLAS is held to one thread per call meanwhile, so they do not
    oversubscribe the cores. The values are the sequential ones with one BLAS thread, bit for bit
    (each layer's arithmetic does not depend on the others); a sequential run with more BLAS threads
    may round the one large eigenproblem of the explicit method (a stem) differently, within its
    error bound (1e-15 relative at L6W128): both are sound. Used before every validation inside
    `fit` (`ConvergeBounds`), which waits for it.
    """
    layers = list(layers)
    if on_device == "auto":
        from gloro_keras.bounds.device import jax_accelerator

        on_device = jax_accelerator()
    if on_device:
        return [float(layer.sound_bound(on_device=True) if _takes_on_device(layer) else layer.sound_bound())
                for layer in layers]
    workers = min(len(layers), usable_cpus() if workers is None else int(workers))
    if workers <= 1:
        return [float(layer.sound_bound()) for layer in layers]
    with threadpool_limits(limits=1, user_api="blas"), ThreadPoolExecutor(workers, "sound-bound") as pool:
        return list(pool.map(lambda layer: float(layer.sound_bound()), layers))


def _takes_on_device(layer):
    return "on_device" in inspect.signature(layer.sound_bound).parameters
