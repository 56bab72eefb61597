"""The original gloro's loss names (`gloro.training.losses`)."""
import re

from gloro_keras import losses as gk_losses
from gloro_keras.losses import TRADES, GloroCrossentropy

Crossentropy = GloroCrossentropy
Trades = TRADES

_GLORO_TRADES = re.compile(r"^(sparse_)?trades(_kl)?(?=$|[._:])")


def get(identifier):
    """Resolve a loss by gloro's names too: "crossentropy" / "sparse_crossentropy",
    "sparse_trades_kl.<λ>" / "trades_kl.<λ>"; anything else as `gloro_keras.losses.get`."""
    if not isinstance(identifier, str):
        return identifier
    name = identifier.strip().lower()
    if name in ("crossentropy", "sparse_crossentropy"):
        name = "gloro_crossentropy"
    return gk_losses.get(_GLORO_TRADES.sub("trades", name))


__all__ = ["Crossentropy", "Trades", "get"]
