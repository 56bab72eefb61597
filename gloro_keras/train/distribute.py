"""Distribution for `gloro-train --strategy=...`: tf.distribute on TensorFlow, Keras's own on JAX.

* `make_strategy("mirrored" | "multi_worker" | "default")`: the tf.distribute strategy (TensorFlow).
* `data_parallel("mirrored")`: on JAX, `keras.distribution.DataParallel` over every local device,
  set as Keras's global distribution (each device trains on a slice of every batch; tested against
  one device in tests/test_backends.py).
* `task_info()`: (task type, index, is_chief) from `TF_CONFIG`.
* `multi_worker_fit_fixes(model, element_spec, strategy)` (defined in `gloro_keras._compat`,
  since it patches private Keras names): work-arounds that make `model.fit`/`evaluate` run
  under `MultiWorkerMirroredStrategy` with Keras 3 (see keras-team/keras#20585):

  1. Under a strategy, Keras' TF trainer starts `fit`/`evaluate` by reducing the first
     distributed `(x, y)` batch only to learn its shapes (`_maybe_symbolic_build`);
     `CollectiveAllReduceStrategy.reduce` cannot reduce that tuple. We build from the
     dataset's element spec instead.
  2. The per-step logs (scalars) are reduced with `strategy.reduce("MEAN", v, axis=0)`,
     which fails for rank-0 values. We reduce rank-0 values with `axis=None` (the mean over
     replicas, what one-worker runs compute) and leave everything else to Keras.

  Both are applied only for `MultiWorkerMirroredStrategy`; `MirroredStrategy` works as is.
  Gradient clipping under any strategy: see `gloro_keras.train.optimizers`.
"""
from __future__ import annotations

import json
import os

from gloro_keras._compat import multi_worker_fit_fixes

__all__ = ["data_parallel", "make_strategy", "multi_worker_fit_fixes", "task_info"]


def task_info():
    """(task_type, index, is_chief) from TF_CONFIG; a single process is the chief."""
    try:
        tf_config = json.loads(os.environ.get("TF_CONFIG") or "{}")
    except json.JSONDecodeError as e:
        raise ValueError(f"TF_CONFIG is not valid JSON: {e}") from None
    task = tf_config.get("task") or {}
    kind, index = task.get("type"), int(task.get("index", 0))
    cluster = tf_config.get("cluster") or {}
    chief = kind in (None, "chief") or (kind == "worker" and index == 0 and "chief" not in cluster)
    return kind, index, chief


def data_parallel(name):
    """On JAX, `--strategy=mirrored` means `keras.distribution.DataParallel` over all local
    devices: sets it as the global distribution and returns the device count (0 otherwise)."""
    import keras

    if name != "mirrored" or keras.backend.backend() != "jax":
        return 0
    devices = keras.distribution.list_devices()
    keras.distribution.set_distribution(keras.distribution.DataParallel(devices=devices))
    return len(devices)


def make_strategy(name):
    """The tf.distribute strategy for `--strategy` (None for "default", and for "mirrored" on JAX:
    see `data_parallel`)."""
    if name == "default":
        return None
    import keras

    if keras.backend.backend() == "jax" and name == "mirrored":
        return None
    if keras.backend.backend() != "tensorflow":
        raise ValueError(f"--strategy={name} needs the TensorFlow backend (KERAS_BACKEND=tensorflow)")
    import tensorflow as tf

    if name == "mirrored":
        return tf.distribute.MirroredStrategy()
    if name == "multi_worker":
        if not os.environ.get("TF_CONFIG"):
            raise ValueError("--strategy=multi_worker needs TF_CONFIG (cluster + task) in the environment")
        return tf.distribute.MultiWorkerMirroredStrategy()
    raise ValueError(f"unknown strategy {name!r}")
