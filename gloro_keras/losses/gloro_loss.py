"""Base class of the GloRo training losses."""
import copy

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
    # whether `fn` takes `relaxation=` (a `gloro_keras.ops.relaxations.Relaxation`): a
    # `RelaxedGloroModel` compiles a copy of the loss with `relaxation` set (`with_relaxation`)
    supports_relaxation = False
    relaxation = None

    def with_relaxation(self, relaxation):
        """A shallow copy (variables shared) whose ⊥ is the relaxed one of `relaxation`."""
        check_relaxation_support(self, relaxation)
        loss = copy.copy(self)
        loss.relaxation = relaxation
        return loss

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
        kwargs = self.fn_kwargs()
        if self.relaxation is not None:
            kwargs["relaxation"] = self.relaxation
        return type(self).fn(labels, logits, y_pred["margin_bounds"], y_pred["epsilon"], **kwargs)


def check_relaxation_support(loss, relaxation):
    """Raise if `loss` cannot train a model certifying `relaxation`."""
    if not getattr(loss, "supports_relaxation", False):
        raise ValueError(
            f"The loss {getattr(loss, 'name', loss)!r} trains standard robustness; a model certifying "
            f"{relaxation} trains with 'gloro_crossentropy' or 'trades' (their ⊥ is the relaxed one).")
