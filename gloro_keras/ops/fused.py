"""XLA-fused twins of small elementwise functions for TensorFlow graphs."""
import functools

import keras


@functools.cache
def _compiled(functions):
    import tensorflow as tf

    return tuple(tf.function(f, jit_compile=True, autograph=False) for f in functions)


def xla_fused(functions):
    """`functions` (a tuple) as XLA-compiled `tf.function`s while TensorFlow traces a graph (a
    `fit`/`predict` step), else as given. A TensorFlow graph runs each op of a chain of shifts,
    sums and selects as its own memory pass; XLA fuses the chain into a few loops. JAX compiles
    the whole step anyway, and eager calls stay plain. The compiled twins are made once per tuple.
    """
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        if not tf.executing_eagerly():
            return _compiled(tuple(functions))
    return tuple(functions)
