"""tf.distribute helpers for `gloro-train --strategy=...` (TensorFlow backend only).

* `make_strategy("mirrored" | "multi_worker" | "default")`.
* `task_info()`: (task type, index, is_chief) from `TF_CONFIG`.
* `multi_worker_fit_fixes(model, element_spec, strategy)`: work-arounds that make
  `model.fit`/`evaluate` run under `MultiWorkerMirroredStrategy` with Keras 3 (checked with
  Keras 3.15 / TF 2.21; see keras-team/keras#20585):

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

import contextlib
import json
import os

__all__ = ["make_strategy", "multi_worker_fit_fixes", "task_info"]


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


def make_strategy(name):
    """The tf.distribute strategy for `--strategy` (None for "default")."""
    if name == "default":
        return None
    import keras

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


def is_multi_worker(strategy):
    import tensorflow as tf

    return isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy)


@contextlib.contextmanager
def multi_worker_fit_fixes(model, element_spec, strategy):
    """Context manager: inside it, `model.fit`/`evaluate` work under MultiWorkerMirroredStrategy."""
    if strategy is None or not is_multi_worker(strategy):
        yield
        return
    from keras.src.backend.tensorflow import trainer as tf_trainer

    # (1) shapes from the element spec instead of reducing a distributed batch
    def _maybe_symbolic_build(iterator=None, data_batch=None):
        with strategy.scope():
            model._symbolic_build(data_batch=element_spec)

    # (2) rank-0 logs: mean over replicas without an axis
    original = tf_trainer.reduce_per_replica

    def reduce_per_replica(values, strategy_, reduction):
        if reduction not in ("auto", "mean") or not is_multi_worker(strategy_):
            return original(values, strategy_, reduction)

        def one(v):
            local = strategy_.experimental_local_results(v) if tf_trainer._is_per_replica_instance(v) else [v]
            if local and getattr(local[0], "shape", None) is not None and local[0].shape.rank == 0:
                return strategy_.reduce("MEAN", v, axis=None)
            return original(v, strategy_, reduction)

        import keras

        return keras.tree.map_structure(one, values)

    object.__setattr__(model, "_maybe_symbolic_build", _maybe_symbolic_build)  # instance-level override
    tf_trainer.reduce_per_replica = reduce_per_replica
    try:
        yield
    finally:
        tf_trainer.reduce_per_replica = original
        object.__delattr__(model, "_maybe_symbolic_build")
