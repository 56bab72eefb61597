"""The original gloro's Lipschitz-computation strategies (`gloro.lc`).

A strategy says how a layer estimates its Lipschitz constant while training:
`PowerMethod(iterations, convergence_threshold)` (persistent power iteration) or `Eigh()`
(the exact spectral norm of a dense kernel). Unlike gloro, a strategy here is configuration
only: the power iterate lives in the layer, so one strategy object can serve many layers.
Certification never uses the strategy: it uses each layer's sound float64 bound.

    Dense(32, lc_strategy="eigh"); Conv2D(16, 3, lc_strategy=PowerMethod(100))
"""
import abc

import keras
from keras import ops

from gloro_keras.layers import BoundedLayer
from gloro_keras.models.bounded_network import bounded_twin, is_plain_linear
from gloro_keras.models.network_analysis import constant_lipschitz


class LipschitzComputationStrategy(abc.ABC):
    """Base of the strategies; `get` resolves `"power"`, `"eigh"`, an instance or None."""

    @staticmethod
    def get(strategy):
        if isinstance(strategy, LipschitzComputationStrategy):
            return strategy
        if strategy is None or strategy == "power":
            return PowerMethod()
        if strategy == "eigh":
            return Eigh()
        raise ValueError(f"unknown Lipschitz computation strategy: {strategy!r} "
                         "(use 'power', 'eigh', PowerMethod(...) or Eigh())")

    @staticmethod
    def for_layer(layer):
        """A zero-argument callable giving `layer`'s Lipschitz constant (gloro's `for_layer`):
        `layer.lipschitz` for gloro layers, the power estimate of a bounded layer, the sound
        bound of a native Keras Dense / Conv2D kernel (gloro: power iteration), the fixed
        constant of a parameter-free one. A layer with no known bound is an error (gloro
        silently used 1)."""
        if hasattr(layer, "lipschitz"):
            return layer.lipschitz
        if isinstance(layer, BoundedLayer):
            return lambda: layer.power_estimate(training=False)
        if isinstance(layer, keras.layers.InputLayer):
            return lambda: 1.0
        if is_plain_linear(layer):  # native Keras Dense / Conv2D: the sound bound of its kernel
            twin = bounded_twin(layer)
            twin.build(layer.input.shape)

            def bound():
                twin.kernel.assign(layer.kernel)
                return float(twin.sound_bound())

            return bound
        constant = constant_lipschitz(layer)
        if constant is None:
            raise ValueError(f"No Lipschitz bound is known for layer '{layer.name}' ({type(layer).__name__}).")
        return lambda: constant

    @abc.abstractmethod
    def estimate(self, layer, training=True):
        """The layer's Lipschitz estimate as a scalar tensor (differentiable in its weights)."""

    def get_config(self):
        return {}


class PowerMethod(LipschitzComputationStrategy):
    """Power iteration on AᵀA from the layer's persistent iterate: `iterations` steps per
    training call (gloro also stopped early once the iterate moved by less than
    `convergence_threshold`; the threshold is used when the iterates are converged)."""

    def __init__(self, iterations=10, convergence_threshold=1e-5):
        if int(iterations) < 1:
            raise ValueError(f"iterations must be >= 1. Received: iterations={iterations}")
        self.iterations = int(iterations)
        self.convergence_threshold = float(convergence_threshold)

    def estimate(self, layer, training=True):
        return layer.power_estimate(training=training)

    def get_config(self):
        return {"iterations": self.iterations, "convergence_threshold": self.convergence_threshold}

    def __repr__(self):
        return f"PowerMethod({self.iterations}, {self.convergence_threshold})"


class Eigh(LipschitzComputationStrategy):
    """The exact spectral norm of a dense kernel, √λ_max(WᵀW) (differentiable, stateless)."""

    def estimate(self, layer, training=True):
        kernel = layer.linear_kernel()
        if len(kernel.shape) != 2:
            raise ValueError("Eigh only supports 2D (dense) kernels; use PowerMethod for convolutions.")
        return ops.max(ops.svd(kernel, compute_uv=False))

    def __repr__(self):
        return "Eigh()"


def serialize(strategy):
    """`strategy` as JSON-ready data (for `get_config`)."""
    return {"class_name": type(strategy).__name__, "config": strategy.get_config()}


def deserialize(data):
    if data is None or isinstance(data, (str, LipschitzComputationStrategy)):
        return LipschitzComputationStrategy.get(data)
    cls = {"PowerMethod": PowerMethod, "Eigh": Eigh}[data["class_name"]]
    return cls(**data["config"])


__all__ = ["Eigh", "LipschitzComputationStrategy", "PowerMethod"]
