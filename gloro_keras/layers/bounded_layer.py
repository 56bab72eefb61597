"""The declared interface of a layer whose Lipschitz constant is learned and bounded."""
import abc

import keras

BOUND_GRADIENTS = ("full", "last")


class BoundedLayer(keras.layers.Layer, metaclass=abc.ABCMeta):
    """A layer with weights whose Lipschitz constant (ℓ2) a GloroModel bounds.

    A GloroModel multiplies, over its body, the bounds of its `BoundedLayer`s and the fixed
    constants of its parameter-free layers. Three bounds, one method each:

    - `power_estimate(training, gradient)`: the training-time estimate, a scalar tensor,
      differentiable with respect to the weights (power iteration with persistent iterates;
      it approaches the constant from below).
    - `converge_iterate(max_iterations, tolerance)`: run the estimate to convergence
      (no gradients) and return it as a float.
    - `sound_bound(on_device=False)`: a guaranteed upper bound (float64) computed from the
      weights, used to certify (`on_device`: on the GPU of Keras's backend where the layer can).

    Subclass this (or `LipschitzLayer`, for a linear map `A(x) + b`) to add a layer type.
    """

    @abc.abstractmethod
    def power_estimate(self, training=False, gradient="last"):
        """Estimate of the Lipschitz constant as a scalar tensor.

        training=True advances the persistent estimate (and stores it); gradients flow
        only through the last step (`gradient="last"`, the default) or through every step
        (`"full"`).
        """

    @abc.abstractmethod
    def converge_iterate(self, max_iterations=500, tolerance=1e-6):
        """Converge the estimate (no gradients), store it, and return it as a float."""

    @abc.abstractmethod
    def sound_bound(self, on_device=False):
        """Guaranteed upper bound on the Lipschitz constant (float64), from the weights.

        on_device: compute it on the default device of Keras's backend (`gloro_keras.bounds.device`) where the layer
        has such a computation (convolutions); others compute on the host either way."""


def check_gradient(gradient):
    if gradient not in BOUND_GRADIENTS:
        raise ValueError(f"gradient must be one of {BOUND_GRADIENTS}. Received: gradient={gradient!r}")
