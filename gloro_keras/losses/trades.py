"""TRADES-style GloRo loss."""
import keras
from keras import ops

from gloro_keras.losses.gloro_loss import GloroLoss
from gloro_keras.ops.margins import gloro_outputs


def trades_loss(labels, logits, margin_bounds, epsilon, lam=1.0):
    """CE(clean logits, t) + λ·KL(p ‖ q): p = softmax of the m clean logits (0 on ⊥),
    q = softmax of the m + 1 GloRo outputs [y, y_⊥]."""
    ce = ops.sparse_categorical_crossentropy(labels, logits, from_logits=True)
    log_p = ops.log_softmax(logits, axis=-1)
    log_q = ops.log_softmax(gloro_outputs(logits, margin_bounds, epsilon), axis=-1)[:, :-1]
    kl = ops.sum(ops.exp(log_p) * (log_p - log_q), axis=-1)
    return ce + lam * kl


@keras.saving.register_keras_serializable(package="gloro_keras")
class TRADES(GloroLoss):
    """TRADES for GloRo nets: clean cross-entropy plus λ times the KL divergence from the
    clean prediction to the prediction with ⊥.

    Since log p_i − log q_i = LSE(y_1..y_m, y_⊥) − LSE(y_1..y_m) for every class, the KL
    term is that log-sum-exp gap and TRADES(λ) = (1−λ)·CE(clean) + λ·GloroCrossentropy:
    at λ = 1 it is exactly GloRo cross-entropy (true of the original gloro's form too).

    Args:
        lam: λ, weight of the KL term (default 1).

    Example:
    >>> model.compile(optimizer="adam", loss=TRADES(lam=2.0), metrics=["vra"])
    """

    fn = staticmethod(trades_loss)

    def __init__(self, lam=1.0, name="trades", **kwargs):
        super().__init__(name=name, **kwargs)
        self.lam = float(lam)

    def fn_kwargs(self):
        return {"lam": self.lam}

    def get_config(self):
        config = super().get_config()
        config["lam"] = self.lam
        return config
