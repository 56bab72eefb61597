"""Backend switch for the empirical attacks.

Everything numerical in :mod:`gloro_keras.attacks` is written with ``keras.ops``;
the only backend-specific pieces are

* how a gradient is taken (``tf.GradientTape`` on TensorFlow,
  ``jax.value_and_grad`` on JAX), and
* how a step function is compiled (``tf.function`` without XLA on TensorFlow,
  ``jax.jit`` on JAX).

Every public attack runs under :func:`full_precision_kernels` (decorator
:func:`float32_kernels`; on JAX its compiled steps are traced inside it):
attacks evaluate the float32 network that certificates are about, not a TF32 one (the default of float32 convolutions and
matmuls on Ampere and newer NVIDIA GPUs in TensorFlow, and at JAX's default
precision), whose logits can differ by far more than float32 rounding.

A "logits model" is wrapped into a :class:`PureModel`: a function
``apply(state, x) -> logits`` plus the current ``state``.  On JAX the state is
the tuple of the model's variable values, handed to the compiled function as an
argument (so weights are never baked into a compiled program as constants and
a cached compiled step keeps working after the weights change).  On TensorFlow
the state is empty and the model's ``tf.Variable`` s are read directly.
"""

from __future__ import annotations

import functools
import weakref

import keras
import numpy as np

from gloro_keras.ops.precision import full_precision_kernels

__all__ = [
    "backend_name",
    "PureModel",
    "value_and_grad",
    "compile_fn",
    "cached",
    "to_numpy",
    "float32_kernels",
]

_SUPPORTED = ("tensorflow", "jax")


def backend_name() -> str:
    """The Keras backend, checked to be one the attacks support."""
    name = keras.backend.backend()
    if name not in _SUPPORTED:
        raise NotImplementedError(
            f"gloro_keras.attacks supports the {_SUPPORTED} backends, not {name!r}."
        )
    return name


def to_numpy(x) -> np.ndarray:
    return np.asarray(keras.ops.convert_to_numpy(x))


class PureModel:
    """A logits model seen as a pure function ``apply(state, x)``.

    ``model`` may be any :class:`keras.Layer` / :class:`keras.Model` (called with
    ``training=False``) or any other callable ``x -> (B, m)`` logits written
    with backend ops.
    """

    def __init__(self, model, example_x=None):
        # Hold the model weakly: compiled functions built from this object are
        # cached in a WeakKeyDictionary keyed on the model, and a strong
        # reference here would keep the model alive forever.
        try:
            self._ref = weakref.ref(model)
        except TypeError:
            self._ref = lambda: model
        self.backend = backend_name()
        self.is_layer = isinstance(model, keras.Layer)
        if self.is_layer and not model.built and example_x is not None:
            # Build the variables eagerly, outside any compiled function.
            model(keras.ops.convert_to_tensor(example_x[:1]), training=False)
        self._stateless = self.backend == "jax" and self.is_layer

    @property
    def model(self):
        m = self._ref()
        if m is None:
            raise ReferenceError("the logits model has been garbage collected")
        return m

    def state(self):
        """The values the compiled functions need (call again after weight updates)."""
        if not self._stateless:
            return ()
        m = self.model
        return (
            tuple(v.value for v in m.trainable_variables),
            tuple(v.value for v in m.non_trainable_variables),
        )

    def apply(self, state, x):
        if self._stateless:
            trainable, non_trainable = state
            out, _ = self.model.stateless_call(
                list(trainable), list(non_trainable), x, training=False
            )
            return out
        if self.is_layer:
            return self.model(x, training=False)
        return self.model(x)


def float32_kernels(fn):
    """Decorator: run `fn` inside `full_precision_kernels()` (TF32 off, JAX "highest")."""

    @functools.wraps(fn)
    def wrapped(*args, **kwargs):
        with full_precision_kernels():
            return fn(*args, **kwargs)

    return wrapped


def value_and_grad(fn, argnums=0):
    """``fn(*args) -> (scalar, aux)``  ==>  ``g(*args) -> ((scalar, aux), grads)``.

    ``grads`` is the gradient w.r.t. ``args[argnums]`` (a tuple of gradients when
    ``argnums`` is a tuple), exactly like ``jax.value_and_grad(..., has_aux=True)``.
    Must be called inside a function compiled with :func:`compile_fn` (or eagerly).
    """
    backend = backend_name()
    multi = isinstance(argnums, (tuple, list))
    nums = tuple(argnums) if multi else (argnums,)

    if backend == "jax":
        import jax

        return jax.value_and_grad(fn, argnums=argnums if not multi else nums, has_aux=True)

    import tensorflow as tf

    def wrapped(*args):
        watched = [args[i] for i in nums]
        with tf.GradientTape(watch_accessed_variables=False) as tape:
            for w in watched:
                tape.watch(w)
            value, aux = fn(*args)
        grads = tape.gradient(
            value, watched, unconnected_gradients=tf.UnconnectedGradients.ZERO
        )
        return (value, aux), (tuple(grads) if multi else grads[0])

    return wrapped


def compile_fn(fn):
    """Compile a step function: ``tf.function`` (no XLA) or ``jax.jit``."""
    backend = backend_name()
    if backend == "jax":
        import jax

        return jax.jit(fn)
    import tensorflow as tf

    return tf.function(fn, jit_compile=False, reduce_retracing=True)


# ---------------------------------------------------------------------------
# A small cache of compiled functions, keyed weakly on the model object, so that
# repeated attacks on the same model do not retrace / recompile.
_CACHE: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def cached(model, key, build):
    """Return ``build()`` cached under ``(model, key, backend)``.

    ``build`` must not keep a strong reference to ``model`` (use
    :class:`PureModel`, which holds it weakly), or the model is never freed.
    """
    full_key = (backend_name(),) + tuple(key)
    try:
        per_model = _CACHE.get(model)
        if per_model is None:
            per_model = {}
            _CACHE[model] = per_model
    except TypeError:  # not weak-referenceable / not hashable: no caching
        return build()
    fn = per_model.get(full_key)
    if fn is None:
        fn = build()
        per_model[full_key] = fn
    return fn
