"""The original gloro's training API (`gloro.training`)."""
from gloro_keras.compat.training import callbacks, losses, metrics

__all__ = ["callbacks", "losses", "metrics"]
