"""The sound bounds of many layers at once: on a GPU, or one host thread per layer."""
import inspect
import os
import warnings
from concurrent.futures import ThreadPoolExecutor

from threadpoolctl import threadpool_limits

from gloro_keras.bounds.spectral import gil_free_grams


def usable_cpus():
    """CPUs this process may run on (its affinity mask where the OS has one)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def sound_bounds(layers, workers=None, on_device="auto"):
    """`[float(layer.sound_bound()) for layer in layers]`, on a GPU or in host threads.

    on_device: True computes the convolutions' bounds on the default device of Keras's backend
    (TensorFlow, else JAX), one layer after another (`gloro_keras.bounds.device`: batched Gram
    matrices certified by Cholesky factors; as sound, within ~1e-8 of the host's values);
    "auto" (default) does so where that backend has a GPU (`device.gpu_available()`), where the
    host eigenproblems outlasted a training epoch, and falls back to the host, with a warning, if
    that fails; False never.

    Otherwise each bound is a float64 numpy/LAPACK computation (`conv2d_spectral_bound`,
    `dense_spectral_bound`) whose LAPACK calls release the GIL and already run on one BLAS
    thread, so `workers` threads (default: the usable CPUs, at most one per layer) run that many
    layers at a time, with BLAS held to one thread per call so they do not oversubscribe the
    cores, and the Gram matrices formed by GIL-free `matmul` (`spectral.gil_free_grams`; scipy's
    zherk would serialize the threads: on 16 host threads the layers took 0.26 of their sequential
    time at L18W256, about what zherk's share of the work allows). The values are the sequential
    ones up to the rounding of those products and, with more BLAS threads, of the stem's one large
    factorization (equal at L6W128 here; 1e-15 relative at most seen): all sound. Used before every
    validation inside `fit` (`ConvergeBounds`), which waits for it.
    """
    layers = list(layers)
    if on_device not in (True, False, "auto"):
        raise ValueError(f"on_device must be True, False or 'auto'. Received: on_device={on_device!r}")
    if on_device:
        from gloro_keras.bounds.device import gpu_available

        if on_device is True or gpu_available():
            try:
                return [float(layer.sound_bound(on_device=True) if _takes_on_device(layer) else layer.sound_bound())
                        for layer in layers]
            except Exception as e:  # "auto" must never cost a validation: e.g. out of device memory
                if on_device is True:
                    raise
                warnings.warn(f"Sound bounds on the GPU failed ({type(e).__name__}: {e}); computing them on "
                              "the host instead.", RuntimeWarning, stacklevel=2)
    workers = min(len(layers), usable_cpus() if workers is None else int(workers))
    if workers <= 1:
        return [float(layer.sound_bound()) for layer in layers]
    with threadpool_limits(limits=1, user_api="blas"), ThreadPoolExecutor(workers, "sound-bound") as pool:
        return list(pool.map(_bound_gil_free, layers))


def _bound_gil_free(layer):
    with gil_free_grams():
        return float(layer.sound_bound())


def _takes_on_device(layer):
    return "on_device" in inspect.signature(layer.sound_bound).parameters
