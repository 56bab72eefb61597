"""GloRo cross-entropy over the m + 1 outputs."""
import keras
from keras import ops

from gloro_keras.losses.gloro_loss import GloroLoss
from gloro_keras.ops.relaxations import outputs_with_bottom


def gloro_crossentropy_loss(labels, logits, margin_bounds, epsilon, relaxation=None):
    """CE over [y_1..y_m, y_⊥] with the label (⊥ is never the label), where
    y_⊥ = max_{i≠j} (y_i + ε·K_ji), j = argmax y (or the relaxed ⊥ of `relaxation`)."""
    outputs = outputs_with_bottom(logits, margin_bounds, epsilon, relaxation)
    return ops.sparse_categorical_crossentropy(labels, outputs, from_logits=True)


@keras.saving.register_keras_serializable(package="gloro_keras")
class GloroCrossentropy(GloroLoss):
    """Cross-entropy over the GloRo outputs (the m logits and ⊥), as in Leino et al. 2021.

    Example:
    >>> model.compile(optimizer="adam", loss="gloro_crossentropy", metrics=["vra"])
    """

    fn = staticmethod(gloro_crossentropy_loss)
    supports_relaxation = True

    def __init__(self, name="gloro_crossentropy", **kwargs):
        super().__init__(name=name, **kwargs)
