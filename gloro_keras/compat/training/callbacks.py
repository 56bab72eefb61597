"""The original gloro's callback names (`gloro.training.callbacks`)."""
from gloro_keras.train import ConvergeBounds

UpdatePowerIterates = ConvergeBounds

__all__ = ["UpdatePowerIterates"]
