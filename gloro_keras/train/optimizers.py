"""Optimizers whose gradient clipping is correct under `tf.distribute`.

Keras 3 (checked with 3.15, TensorFlow backend) clips gradients in
`BaseOptimizer.apply` *before* the TensorFlow optimizer all-reduces them across replicas
(`TFOptimizer._backend_update_step` -> `_all_reduce_sum_gradients`). Under
`MirroredStrategy` / `MultiWorkerMirroredStrategy` each replica's partial gradient (the
gradient of its share of the loss) is therefore clipped separately, so `global_clipnorm`
no longer bounds the norm of the applied gradient and training differs from one device
whenever clipping is active. The paper's recipe always clips (global norm 3).

`ClipAfterAllReduce` (in `gloro_keras._compat`: it overrides private optimizer methods) moves
clipping after the all-reduce when running in a replica context of a non-default strategy;
everywhere else (one device, JAX) it does exactly what the base optimizer does.
`gloro-train --strategy=...` uses `AdamW` from this module.
"""
from __future__ import annotations

import keras

from gloro_keras._compat import ClipAfterAllReduce

__all__ = ["AdamW", "ClipAfterAllReduce"]


@keras.saving.register_keras_serializable(package="gloro_keras")
class AdamW(ClipAfterAllReduce, keras.optimizers.AdamW):
    """`keras.optimizers.AdamW` whose `global_clipnorm` / `clipnorm` / `clipvalue` apply to
    the gradient aggregated over all replicas under tf.distribute (see the module docs)."""
