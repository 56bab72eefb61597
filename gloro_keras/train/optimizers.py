"""Optimizers whose gradient clipping is correct under `tf.distribute`.

Keras 3 (checked with 3.15, TensorFlow backend) clips gradients in
`BaseOptimizer.apply` *before* the TensorFlow optimizer all-reduces them across replicas
(`TFOptimizer._backend_update_step` -> `_all_reduce_sum_gradients`). Under
`MirroredStrategy` / `MultiWorkerMirroredStrategy` each replica's partial gradient (the
gradient of its share of the loss) is therefore clipped separately, so `global_clipnorm`
no longer bounds the norm of the applied gradient and training differs from one device
whenever clipping is active. The paper's recipe always clips (global norm 3).

`ClipAfterAllReduce` moves clipping after the all-reduce when running in a replica
context of a non-default strategy; everywhere else (one device, JAX) it does exactly what
the base optimizer does. `gloro-train --strategy=...` uses `AdamW` from this module.
"""
from __future__ import annotations

import keras

__all__ = ["AdamW", "ClipAfterAllReduce"]


def _in_distributed_replica_context():
    if keras.backend.backend() != "tensorflow":
        return False
    import tensorflow as tf

    return tf.distribute.has_strategy() and not tf.distribute.in_cross_replica_context()


class ClipAfterAllReduce:
    """Mixin for a Keras optimizer: under tf.distribute, clip the all-reduced gradient."""

    def _defer_clipping(self):
        clipping = bool(self.clipnorm or self.global_clipnorm or self.clipvalue)
        return clipping and _in_distributed_replica_context()

    def _clip_gradients(self, grads):
        if self._defer_clipping():
            return grads  # clipped in _backend_update_step, after the all-reduce
        return super()._clip_gradients(grads)

    def _backend_update_step(self, grads, trainable_variables, learning_rate):
        if not self._defer_clipping():
            return super()._backend_update_step(grads, trainable_variables, learning_rate)
        import tensorflow as tf

        variables = [v.value if isinstance(v, keras.Variable) else v for v in trainable_variables]
        reduced = self._all_reduce_sum_gradients(list(zip(grads, variables)))
        present = [i for i, (g, _) in enumerate(reduced) if g is not None]
        clipped = super()._clip_gradients([reduced[i][0] for i in present])
        grads_and_vars = [(g, reduced[i][1]) for g, i in zip(clipped, present)]
        tf.__internal__.distribute.interim.maybe_merge_call(
            self._distributed_tf_update_step, self._distribution_strategy, grads_and_vars, learning_rate
        )


@keras.saving.register_keras_serializable(package="gloro_keras")
class AdamW(ClipAfterAllReduce, keras.optimizers.AdamW):
    """`keras.optimizers.AdamW` whose `global_clipnorm` / `clipnorm` / `clipvalue` apply to
    the gradient aggregated over all replicas under tf.distribute (see the module docs)."""
