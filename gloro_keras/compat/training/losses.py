"""The original gloro's loss names (`gloro.training.losses`)."""
import re

from gloro_keras import losses as gk_losses
from gloro_keras.losses import TRADES, GloroCrossentropy

Crossentropy = GloroCrossentropy
Trades = TRADES

_TRADES_NAME = re.compile(r"^(sparse_)?trades(_kl)?([._:](?P<lam>[0-9.eE+-]+))?$")


def get(identifier):
    """Resolve a loss by gloro's names too: "crossentropy" / "sparse_crossentropy",
    "sparse_trades_kl.<λ>" / "trades_kl.<λ>"; anything else as `gloro_keras.losses.get`."""
    if not isinstance(identifier, str):
        return identifier
    name = identifier.strip().lower()
    if name in ("crossentropy", "sparse_crossentropy"):
        return GloroCrossentropy()
    match = _TRADES_NAME.match(name)
    if match:
        lam = match.group("lam")
        return TRADES(lam=float(lam) if lam else 1.0)
    return gk_losses.get(identifier)


__all__ = ["Crossentropy", "Trades", "get"]
