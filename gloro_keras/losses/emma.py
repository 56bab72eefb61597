"""Efficient Margin MAXimization (EMMA) loss."""
import keras
from keras import ops

from gloro_keras.losses.gloro_loss import GloroLoss


def emma_loss(labels, logits, lift):
    """CE(y', t) with y'_i = y_i + ε·K_ti (i ≠ t), y'_t = y_t.

    labels: (B,) ints; logits: (B, m); lift: (B, m) = ε·K_t,: with 0 at t.
    """
    return ops.sparse_categorical_crossentropy(labels, logits + lift, from_logits=True)


@keras.saving.register_keras_serializable(package="gloro_keras")
class EMMA(GloroLoss):
    """EMMA (Hu et al., 2023): every non-label logit is raised by the most it could gain on
    the label within the ε-ball, `y_i + ε·K_ti`, and cross-entropy is taken on the result,
    so all threatening classes are pushed away at once. With ε = 0 it is cross-entropy.

    Example:
    >>> model.compile(optimizer="adam", loss="emma", metrics=["clean_acc", "vra"])
    """

    def __init__(self, name="emma", **kwargs):
        super().__init__(name=name, **kwargs)

    def gloro_loss(self, labels, outputs, lift):
        return emma_loss(labels, outputs[:, :-1], lift)
