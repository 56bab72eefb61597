"""Provably sound spectral-norm upper bounds, in float64: numpy/LAPACK on the host
(`spectral`), or JAX on a GPU (`device`)."""

from gloro_keras.bounds.parallel import sound_bounds, usable_cpus
from gloro_keras.bounds.spectral import (
    conv2d_operator_matrix,
    conv2d_spectral_bound,
    dense_spectral_bound,
)

__all__ = [
    "conv2d_spectral_bound",
    "dense_spectral_bound",
    "conv2d_operator_matrix",
    "sound_bounds",
    "usable_cpus",
]
