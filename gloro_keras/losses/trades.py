"""TRADES-style GloRo loss."""
import keras
from keras import ops

from gloro_keras.losses.gloro_loss import GloroLoss
from gloro_keras.ops.relaxations import outputs_with_bottom


ROBUST_TERMS = ("kl", "crossentropy")


def trades_loss(labels, logits, margin_bounds, epsilon, lam=1.0, robust="kl", relaxation=None):
    """CE(clean logits, t) + λ·R(p, q): p = softmax of the m clean logits (0 on ⊥),
    q = softmax of the m + 1 GloRo outputs [y, y_⊥]; R = KL(p ‖ q) (`robust="kl"`) or the
    cross-entropy −Σ p log q = KL(p ‖ q) + H(p) (`"crossentropy"`). With a `relaxation`,
    y_⊥ is the relaxed ⊥ (`gloro_keras.ops.relaxations`)."""
    if robust not in ROBUST_TERMS:
        raise ValueError(f"robust must be one of {ROBUST_TERMS}. Received: robust={robust!r}")
    ce = ops.sparse_categorical_crossentropy(labels, logits, from_logits=True)
    log_p = ops.log_softmax(logits, axis=-1)
    log_q = ops.log_softmax(outputs_with_bottom(logits, margin_bounds, epsilon, relaxation), axis=-1)[:, :-1]
    p = ops.exp(log_p)
    term = ops.sum(p * (log_p - log_q), axis=-1) if robust == "kl" else -ops.sum(p * log_q, axis=-1)
    return ce + ops.cast(lam, term.dtype) * term


@keras.saving.register_keras_serializable(package="gloro_keras")
class TRADES(GloroLoss):
    """TRADES for GloRo nets: clean cross-entropy plus λ times the KL divergence from the
    clean prediction to the prediction with ⊥.

    Since log p_i − log q_i = LSE(y_1..y_m, y_⊥) − LSE(y_1..y_m) for every class, the KL
    term is that log-sum-exp gap and TRADES(λ) = (1−λ)·CE(clean) + λ·GloroCrossentropy:
    at λ = 1 it is exactly GloRo cross-entropy (true of the original gloro's form too).

    Args:
        lam: λ, weight of the robust term (default 1). A variable: setting `loss.lam` after
            `compile` (e.g. from a callback) changes the next training steps without
            retracing on TensorFlow (on JAX the value is fixed when the step is traced).
        robust: "kl" (default) or "crossentropy", the robust term (see `trades_loss`).

    Example:
    >>> model.compile(optimizer="adam", loss=TRADES(lam=2.0), metrics=["vra"])
    """

    fn = staticmethod(trades_loss)
    supports_relaxation = True

    def __init__(self, lam=1.0, robust="kl", name="trades", **kwargs):
        super().__init__(name=name, **kwargs)
        if robust not in ROBUST_TERMS:
            raise ValueError(f"robust must be one of {ROBUST_TERMS}. Received: robust={robust!r}")
        self.robust = robust
        self._lam = keras.Variable(float(lam), trainable=False, dtype="float32", name="trades_lam")

    @property
    def lam(self):
        return float(ops.convert_to_numpy(self._lam))

    @lam.setter
    def lam(self, value):
        self._lam.assign(float(value))

    def fn_kwargs(self):
        return {"lam": self._lam, "robust": self.robust}

    def get_config(self):
        config = super().get_config()
        config.update(lam=self.lam, robust=self.robust)
        return config
