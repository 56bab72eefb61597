"""Base class of the GloRo training losses."""
import keras

from gloro_keras.models.margins import sparse_labels


class GloroLoss(keras.losses.Loss):
    """A loss over a GloroModel's outputs and its margin bounds.

    Used through `GloroModel.compile`, which passes `y_pred` as a (B, 2, m+1) stack:
    row 0 = [y_1..y_m, y_⊥], row 1 = [ε·K_t1 .. ε·K_tm, 0] for the label t (0 at t).
    Being a `keras.losses.Loss`, the reduction is scaled correctly under tf.distribute.
    Subclasses implement `gloro_loss(labels, outputs, lift)`.
    """

    def call(self, y_true, y_pred):
        if len(y_pred.shape) != 3 or y_pred.shape[1] != 2:
            raise ValueError(
                f"{type(self).__name__} needs the margin bounds of a GloroModel: use it through "
                f"GloroModel.compile(loss=...), or call the functional form "
                f"gloro_keras.losses.{type(self).__name__.lower()}_loss(labels, ...). Got "
                f"y_pred of shape {tuple(y_pred.shape)}."
            )
        m = y_pred.shape[-1] - 1
        return self.gloro_loss(sparse_labels(y_true, m), y_pred[:, 0, :], y_pred[:, 1, :m])

    def gloro_loss(self, labels, outputs, lift):
        raise NotImplementedError
