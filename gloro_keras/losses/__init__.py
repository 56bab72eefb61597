"""GloRo training losses (use through `GloroModel.compile`)."""
import re

import keras

from gloro_keras.losses.emma import EMMA, emma_loss
from gloro_keras.losses.gloro_crossentropy import GloroCrossentropy, gloro_crossentropy_loss
from gloro_keras.losses.gloro_loss import LOSS_INPUTS, GloroLoss, check_relaxation_support
from gloro_keras.losses.trades import TRADES, trades_loss

_TRADES_NAME = re.compile(r"^trades([._:](?P<lam>[0-9.eE+-]+))?$")


def get(identifier):
    """Resolve a loss: an object, or one of "emma", "gloro_crossentropy" ("gloro_ce"),
    "trades", "trades.<λ>"; anything else goes to `keras.losses.get`. (The original
    gloro's names: `gloro_keras.compat.training.losses.get`.)"""
    if not isinstance(identifier, str):
        return identifier
    name = identifier.strip().lower()
    if name == "emma":
        return EMMA()
    if name in ("gloro_crossentropy", "gloro_ce"):
        return GloroCrossentropy()
    match = _TRADES_NAME.match(name)
    if match:
        lam = match.group("lam")
        return TRADES(lam=float(lam) if lam else 1.0)
    return keras.losses.get(identifier)


__all__ = [
    "EMMA",
    "GloroCrossentropy",
    "GloroLoss",
    "LOSS_INPUTS",
    "TRADES",
    "check_relaxation_support",
    "emma_loss",
    "get",
    "gloro_crossentropy_loss",
    "trades_loss",
]
