"""MinMax activation."""
import keras
from keras import ops

from gloro_keras.ops.pairs import sort_halves


@keras.saving.register_keras_serializable(package="gloro_keras")
class MinMax(keras.layers.Layer):
    """Sorts pairs of values; 1-Lipschitz and gradient-norm preserving (a permutation on
    each pair).

    - `pairing="halves"` (default; the paper's LiResNet): the last axis splits into halves
      a, b → [max(a, b), min(a, b)]. Needs an even number of channels.
    - `pairing="adjacent"` (the original gloro's `MinMax`): each example is flattened and
      consecutive values (2t, 2t+1) become (min, max). Needs an even number of values.

    Weights trained with one pairing compute another function under the other.

    Example:
    >>> MinMax()(np.array([[1., -2., 3., 0.]]))                     # pairs (1, 3), (-2, 0)
    [[3., 0., 1., -2.]]
    >>> MinMax(pairing="adjacent")(np.array([[1., -2., 3., 0.]]))   # pairs (1, -2), (3, 0)
    [[-2., 1., 0., 3.]]
    """

    PAIRINGS = ("halves", "adjacent")

    def __init__(self, pairing="halves", **kwargs):
        super().__init__(**kwargs)
        if pairing not in self.PAIRINGS:
            raise ValueError(f"pairing must be one of {self.PAIRINGS}. Received: pairing={pairing!r}")
        self.pairing = pairing

    def build(self, input_shape):
        if self.pairing == "adjacent":
            size = 1
            for d in input_shape[1:]:
                size = None if d is None or size is None else size * d
            if size is None or size % 2:
                raise ValueError(f"MinMax(pairing='adjacent') needs an even number of values per example; "
                                 f"got input shape {tuple(input_shape)}.")
            return
        c = input_shape[-1]
        if c is None or c % 2:
            raise ValueError(
                f"MinMax needs an even number of channels on the last axis; got {c} "
                f"(input shape {tuple(input_shape)})."
            )

    def call(self, x):
        if self.pairing == "adjacent":
            pairs = ops.reshape(x, (-1, 2))
            out = ops.stack([ops.min(pairs, axis=-1), ops.max(pairs, axis=-1)], axis=-1)
            return ops.reshape(out, ops.shape(x))
        return sort_halves(x)

    def get_config(self):
        return {**super().get_config(), "pairing": self.pairing}

    def compute_output_shape(self, input_shape):
        return input_shape
