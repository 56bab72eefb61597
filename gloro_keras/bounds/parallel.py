"""The sound bounds of many layers at once, one host thread per layer."""
import os
from concurrent.futures import ThreadPoolExecutor

from threadpoolctl import threadpool_limits


def usable_cpus():
    """CPUs this process may run on (its affinity mask where the OS has one)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def sound_bounds(layers, workers=None):
    """`[float(layer.sound_bound()) for layer in layers]`, the layers in parallel threads.

    Each bound is a float64 numpy/LAPACK computation (`conv2d_spectral_bound`,
    `dense_spectral_bound`) that releases the GIL in its LAPACK calls and already runs them with
    one BLAS thread, so `workers` threads (default: the usable CPUs, at most one per layer) run
    that many layers at a time; BLAS is held to one thread per call meanwhile, so they do not
    oversubscribe the cores. The values are the sequential ones with one BLAS thread, bit for bit
    (each layer's arithmetic does not depend on the others); a sequential run with more BLAS threads
    may round the one large eigenproblem of the explicit method (a stem) differently, within its
    error bound (1e-15 relative at L6W128): both are sound. Used before every validation inside
    `fit` (`ConvergeBounds`), where on an accelerator this host work is what the epoch waits for.
    """
    layers = list(layers)
    workers = min(len(layers), usable_cpus() if workers is None else int(workers))
    if workers <= 1:
        return [float(layer.sound_bound()) for layer in layers]
    with threadpool_limits(limits=1, user_api="blas"), ThreadPoolExecutor(workers, "sound-bound") as pool:
        return list(pool.map(lambda layer: float(layer.sound_bound()), layers))
