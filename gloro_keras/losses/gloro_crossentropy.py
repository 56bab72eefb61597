"""GloRo cross-entropy over the m + 1 outputs."""
import keras
from keras import ops

from gloro_keras.losses.gloro_loss import GloroLoss


def gloro_crossentropy_loss(labels, outputs):
    """CE over [y_1..y_m, y_⊥] with the label (⊥ is never the label)."""
    return ops.sparse_categorical_crossentropy(labels, outputs, from_logits=True)


@keras.saving.register_keras_serializable(package="gloro_keras")
class GloroCrossentropy(GloroLoss):
    """Cross-entropy over the GloRo outputs (the m logits and ⊥), as in Leino et al. 2021."""

    def __init__(self, name="gloro_crossentropy", **kwargs):
        super().__init__(name=name, **kwargs)

    def gloro_loss(self, labels, outputs, lift):
        return gloro_crossentropy_loss(labels, outputs)
