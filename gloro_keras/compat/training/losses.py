"""The original gloro's losses (`gloro.training.losses`), with its arguments and names."""
import math
import re

import keras
from keras import ops

from gloro_keras import losses as gk_losses
from gloro_keras.losses import TRADES, GloroCrossentropy

PACKAGE = "gloro"


@keras.saving.register_keras_serializable(package=PACKAGE)
class Crossentropy(GloroCrossentropy):
    """gloro's `Crossentropy(sparse=False, temperature=1.)`: cross-entropy over the m + 1
    GloRo outputs divided by `temperature`. Labels may be integers or one-hot either way
    (`sparse` is kept for gloro's signature)."""

    def __init__(self, sparse=False, temperature=1.0, name="crossentropy", **kwargs):
        super().__init__(name=name, **kwargs)
        self.sparse = bool(sparse)
        self.temperature = float(temperature)
        if not self.temperature > 0:
            raise ValueError(f"temperature must be > 0. Received: temperature={temperature}")

    def call(self, y_true, y_pred):
        if self.temperature != 1.0 and isinstance(y_pred, dict):
            y_pred = dict(y_pred, logits=y_pred["logits"] / self.temperature,
                          margin_bounds=y_pred["margin_bounds"] / self.temperature)
        return super().call(y_true, y_pred)

    def get_config(self):
        return {**super().get_config(), "sparse": self.sparse, "temperature": self.temperature}


@keras.saving.register_keras_serializable(package=PACKAGE)
class Trades(TRADES):
    """gloro's `Trades(lam=1., sparse=False, robust_loss_string='kl_divergence',
    temperature=1.)`: clean cross-entropy + λ·(KL or cross-entropy) from the clean
    prediction to the one with ⊥. gloro divided the probabilities by `temperature`, which
    adds λ·log(temperature) to the loss (and nothing to its gradient); so does this."""

    _ROBUST = {"kl_divergence": "kl", "crossentropy": "crossentropy", None: "crossentropy"}

    def __init__(self, lam=1.0, sparse=False, robust_loss_string="kl_divergence", temperature=1.0,
                 name="trades", **kwargs):
        if robust_loss_string not in self._ROBUST:
            raise ValueError(f"robust_loss_string must be 'kl_divergence' or 'crossentropy'. "
                             f"Received: robust_loss_string={robust_loss_string!r}")
        kwargs.pop("robust", None)
        super().__init__(lam=lam, robust=self._ROBUST[robust_loss_string], name=name, **kwargs)
        self.sparse = bool(sparse)
        self.robust_loss_string = robust_loss_string
        self.temperature = float(temperature)
        if not self.temperature > 0:
            raise ValueError(f"temperature must be > 0. Received: temperature={temperature}")

    def call(self, y_true, y_pred):
        value = super().call(y_true, y_pred)
        if self.temperature != 1.0:
            value = value + ops.cast(self._lam, value.dtype) * math.log(self.temperature)
        return value

    def get_config(self):
        config = super().get_config()
        config.pop("robust", None)
        return {**config, "sparse": self.sparse, "robust_loss_string": self.robust_loss_string,
                "temperature": self.temperature}


_NAME = re.compile(r"^(?P<sparse>sparse_)?(?:(?P<ce>crossentropy)|trades_(?P<kind>ce|kl)(?:\.(?P<lam>[0-9.eE+-]+))?)$")


def get(identifier):
    """A loss from gloro's names — `"crossentropy"`, `"trades_ce[.λ]"`, `"trades_kl[.λ]"`,
    each with an optional `"sparse_"` prefix — or any of gloro-keras's (`"emma"`, ...)."""
    if not isinstance(identifier, str):
        return identifier
    match = _NAME.match(identifier.strip().lower())
    if match is None:
        return gk_losses.get(identifier)
    sparse = bool(match.group("sparse"))
    if match.group("ce"):
        return Crossentropy(sparse=sparse)
    lam = float(match.group("lam")) if match.group("lam") else 1.0
    robust = "crossentropy" if match.group("kind") == "ce" else "kl_divergence"
    return Trades(lam, sparse=sparse, robust_loss_string=robust)


__all__ = ["Crossentropy", "Trades", "get"]
