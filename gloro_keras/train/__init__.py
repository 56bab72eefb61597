"""Training utilities: callbacks, schedules, presets (and, lazily, the data pipelines).

    from gloro_keras.train import EpsilonScheduler, ConvergeBounds, VRALogger, WarmupCosine

The command-line scripts live in `gloro_keras.train.train` (`gloro-train`,
`python -m gloro_keras.train`) and `gloro_keras.train.certify` (`gloro-certify`); they
are not imported here. `gloro_keras.train.data` (TensorFlow input pipelines) is imported
on first access.
"""
import importlib

from gloro_keras.train.callbacks import (
    ConvergeBounds,
    EpsilonScheduler,
    LearningRateLogger,
    ThreateningClassTracker,
    VRALogger,
    threatening_classes,
)
from gloro_keras.train.optimizers import AdamW, ClipAfterAllReduce
from gloro_keras.train.presets import PRESETS, get_preset, list_presets
from gloro_keras.train.schedules import EPSILON_SCHEDULES, EpsilonSchedule, WarmupCosine, paper_epsilon

__all__ = [
    "AdamW",
    "ClipAfterAllReduce",
    "ConvergeBounds",
    "EPSILON_SCHEDULES",
    "EpsilonSchedule",
    "EpsilonScheduler",
    "LearningRateLogger",
    "PRESETS",
    "ThreateningClassTracker",
    "VRALogger",
    "WarmupCosine",
    "get_preset",
    "list_presets",
    "paper_epsilon",
    "threatening_classes",
]


def __getattr__(name):
    if name == "data":
        return importlib.import_module("gloro_keras.train.data")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
