"""Efficient Margin MAXimization (EMMA) loss."""
import keras
from keras import ops

from gloro_keras.losses.gloro_loss import GloroLoss
from gloro_keras.ops.margins import label_lift


def emma_loss(labels, logits, margin_bounds, epsilon):
    """CE(y', t) with y'_i = y_i + ε·K_ti (i ≠ t), y'_t = y_t.

    labels: (B,) ints; logits: (B, m); margin_bounds: (m, m); epsilon: scalar.
    """
    lifted = logits + label_lift(labels, margin_bounds, epsilon)
    return ops.sparse_categorical_crossentropy(labels, lifted, from_logits=True)


@keras.saving.register_keras_serializable(package="gloro_keras")
class EMMA(GloroLoss):
    """EMMA (Hu et al., 2023): every non-label logit is raised by the most it could gain on
    the label within the ε-ball, `y_i + ε·K_ti`, and cross-entropy is taken on the result,
    so all threatening classes are pushed away at once. With ε = 0 it is cross-entropy.

    Example:
    >>> model.compile(optimizer="adam", loss="emma", metrics=["clean_acc", "vra"])
    """

    fn = staticmethod(emma_loss)

    def __init__(self, name="emma", **kwargs):
        super().__init__(name=name, **kwargs)
