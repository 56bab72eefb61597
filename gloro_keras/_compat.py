"""Every use of a private Keras or TensorFlow name, in one place.

Checked against Keras 3.15.1 and TensorFlow 2.21.0 (`CHECKED_WITH`). `private_names()` lists
each private name this module relies on and `missing_private_names()` which of them the
installed versions lack; `tests/test_compat.py` fails, naming them, when one disappears.
Nothing else in gloro_keras may touch a private Keras/TF name (tests/test_architecture.py).

What each workaround is for:

* `flatten_layers`: every layer nested in a model, custom layers' sub-layers included
  (`Layer._flatten_layers`; `Model.layers` lists only the top level). Used to set the dtype
  policy of every layer for mixed-precision training.
* `producer(tensor)`: the layer and inbound node that produced a symbolic tensor
  (`KerasTensor._keras_history`, `Operation._inbound_nodes`), to read a functional network
  as a chain of layers.
* `ClipAfterAllReduce`: Keras clips gradients in `BaseOptimizer.apply` *before* the TF
  optimizer all-reduces them across replicas (`TFOptimizer._backend_update_step` ->
  `_all_reduce_sum_gradients`), so under MirroredStrategy each replica's partial gradient is
  clipped separately and `global_clipnorm` no longer bounds the applied gradient. The mixin
  moves clipping after the all-reduce in a replica context of a non-default strategy.
* `multi_worker_fit_fixes`: `fit`/`evaluate` under MultiWorkerMirroredStrategy with Keras 3
  (keras-team/keras#20585): build from the dataset's element spec instead of reducing a
  distributed batch (`Trainer._maybe_symbolic_build`), and reduce rank-0 logs with
  `axis=None` (`keras.src.backend.tensorflow.trainer.reduce_per_replica`).
* `onednn_enabled()`: whether TensorFlow runs its oneDNN CPU kernels (`IsMklEnabled` in
  `tensorflow.python.util._pywrap_util_port`): decided at import from `TF_ENABLE_ONEDNN_OPTS` and
  the CPU, and it changes the summation order of every float32 convolution (results differ in
  the last bits) and whether bfloat16 runs fast on a CPU.
"""
import contextlib
import importlib

import keras

CHECKED_WITH = {"keras": "3.15.1", "tensorflow": "2.21.0"}


def private_names():
    """[(owner, attribute)] of every private name used here; owner is an object or a module
    path (imported on demand; TensorFlow-only ones only on the TensorFlow backend)."""
    names = [(keras.layers.Layer, "_flatten_layers"), (keras.KerasTensor, "_keras_history"),
             (keras.Operation, "_inbound_nodes"), (keras.Model, "_symbolic_build")]
    if keras.backend.backend() == "tensorflow":
        names += [
            ("keras.src.backend.tensorflow.optimizer:TFOptimizer", "_backend_update_step"),
            ("keras.src.backend.tensorflow.optimizer:TFOptimizer", "_all_reduce_sum_gradients"),
            ("keras.src.backend.tensorflow.optimizer:TFOptimizer", "_distributed_tf_update_step"),
            ("keras.src.optimizers.base_optimizer:BaseOptimizer", "_clip_gradients"),
            ("keras.src.backend.tensorflow.trainer:TensorFlowTrainer", "_maybe_symbolic_build"),
            ("keras.src.backend.tensorflow.trainer", "reduce_per_replica"),
            ("keras.src.backend.tensorflow.trainer", "_is_per_replica_instance"),
            ("tensorflow:__internal__", "distribute"),
            ("tensorflow.python.util._pywrap_util_port", "IsMklEnabled"),
        ]
    return names


def _resolve(owner):
    if not isinstance(owner, str):
        return owner
    module, _, attr = owner.partition(":")
    obj = importlib.import_module(module)
    return getattr(obj, attr) if attr else obj


def missing_private_names():
    """The entries of `private_names()` the installed Keras/TensorFlow no longer have."""
    missing = []
    for owner, attr in private_names():
        try:
            obj = _resolve(owner)
        except (ImportError, AttributeError):
            missing.append(f"{owner} (module or class)")
            continue
        if attr == "_keras_history":  # an instance attribute of every symbolic tensor
            ok = hasattr(keras.Input((1,)), attr)
        elif attr == "_inbound_nodes":
            ok = hasattr(keras.layers.Identity(), attr)
        else:
            ok = hasattr(obj, attr)
        if not ok:
            name = owner if isinstance(owner, str) else f"{owner.__module__}.{owner.__qualname__}"
            missing.append(f"{name}.{attr}")
    return missing


def onednn_enabled():
    """True/False: TensorFlow's oneDNN CPU kernels are on; None off the TensorFlow backend."""
    if keras.backend.backend() != "tensorflow":
        return None
    from tensorflow.python.util import _pywrap_util_port

    return bool(_pywrap_util_port.IsMklEnabled())


# ---- layers and graphs -------------------------------------------------------------------------
def flatten_layers(layer):
    """Every layer nested in `layer` (recursively), not including `layer` itself."""
    return list(layer._flatten_layers(include_self=False))


def producer(tensor):
    """(layer, input tensors) of the call that produced a symbolic tensor of a functional model."""
    op, node_index, _ = tensor._keras_history
    if isinstance(op, keras.layers.InputLayer):
        return op, []
    return op, list(op._inbound_nodes[node_index].input_tensors)


# ---- optimizers under tf.distribute --------------------------------------------------------------
def _in_distributed_replica_context():
    if keras.backend.backend() != "tensorflow":
        return False
    import tensorflow as tf

    return tf.distribute.has_strategy() and not tf.distribute.in_cross_replica_context()


class ClipAfterAllReduce:
    """Mixin for a Keras optimizer: under tf.distribute, clip the all-reduced gradient;
    everywhere else (one device, JAX) do exactly what the base optimizer does."""

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


# ---- fit under MultiWorkerMirroredStrategy -------------------------------------------------------
@contextlib.contextmanager
def multi_worker_fit_fixes(model, element_spec, strategy):
    """Inside it, `model.fit`/`evaluate` work under MultiWorkerMirroredStrategy (a no-op for
    any other strategy or None)."""
    import tensorflow as tf

    if strategy is None or not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        yield
        return
    from keras.src.backend.tensorflow import trainer as tf_trainer

    def _maybe_symbolic_build(iterator=None, data_batch=None):
        with strategy.scope():
            model._symbolic_build(data_batch=element_spec)

    original = tf_trainer.reduce_per_replica

    def reduce_per_replica(values, strategy_, reduction):
        if reduction not in ("auto", "mean") or not isinstance(strategy_, tf.distribute.MultiWorkerMirroredStrategy):
            return original(values, strategy_, reduction)

        def one(v):
            local = strategy_.experimental_local_results(v) if tf_trainer._is_per_replica_instance(v) else [v]
            if local and getattr(local[0], "shape", None) is not None and local[0].shape.rank == 0:
                return strategy_.reduce("MEAN", v, axis=None)
            return original(v, strategy_, reduction)

        return keras.tree.map_structure(one, values)

    object.__setattr__(model, "_maybe_symbolic_build", _maybe_symbolic_build)  # instance-level override
    tf_trainer.reduce_per_replica = reduce_per_replica
    try:
        yield
    finally:
        tf_trainer.reduce_per_replica = original
        object.__delattr__(model, "_maybe_symbolic_build")
