"""Base class of the GloRo training losses."""
import keras

from gloro_keras.ops.labels import sparse_labels

LOSS_INPUTS = ("logits", "margin_bounds", "epsilon")


class GloroLoss(keras.losses.Loss):
    """A loss of the labels, the m logits, the margin bounds K (m, m) and the radius ε.

    Subclasses set `fn`, a pure function `fn(labels, logits, margin_bounds, epsilon, **kw)`
    returning one value per example, and return `kw` from `fn_kwargs()`.

    `GloroModel.compile(loss=...)` hands it `y_pred = model.loss_inputs(outputs)`, a dict with
    the keys `LOSS_INPUTS`; being a `keras.losses.Loss`, sample weights, the reduction and
    its scaling under tf.distribute are Keras's own. Called directly:

    >>> loss = gloro_keras.losses.EMMA()
    >>> loss(labels, {"logits": logits, "margin_bounds": kmat, "epsilon": 0.1})
    """

    fn = None

    def fn_kwargs(self):
        return {}

    def call(self, y_true, y_pred):
        if not isinstance(y_pred, dict) or not set(LOSS_INPUTS) <= set(y_pred):
            got = sorted(y_pred) if isinstance(y_pred, dict) else f"a {type(y_pred).__name__}"
            raise ValueError(
                f"{type(self).__name__} needs the logits, margin bounds and ε of a GloroModel: use "
                f"it through GloroModel.compile(loss=...), or pass y_pred as a dict with the keys "
                f"{LOSS_INPUTS} (GloroModel.loss_inputs). Received: {got}."
            )
        logits = y_pred["logits"]
        labels = sparse_labels(y_true, logits.shape[-1])
        return type(self).fn(labels, logits, y_pred["margin_bounds"], y_pred["epsilon"], **self.fn_kwargs())
