"""Training utilities: callbacks, schedules, optimizers, distribution, presets.

    from gloro_keras.train import EpsilonScheduler, ConvergeBounds, VRALogger, WarmupCosine

The command-line scripts live in `gloro_keras.cli` (`gloro-train` =
`python -m gloro_keras.cli.train`, `gloro-certify` = `python -m gloro_keras.cli.certify`). The input pipelines are `gloro_keras.data`.
"""

from gloro_keras.train.callbacks import (
    ConvergeBounds,
    EpsilonScheduler,
    LearningRateLogger,
    MetricsLog,
    NonFiniteTrainingError,
    StopOnNonFinite,
    ThreateningClassTracker,
    VRALogger,
    threatening_classes,
)
from gloro_keras.train.host_memory import huge_page_environment
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
    "MetricsLog",
    "NonFiniteTrainingError",
    "PRESETS",
    "StopOnNonFinite",
    "ThreateningClassTracker",
    "VRALogger",
    "WarmupCosine",
    "get_preset",
    "huge_page_environment",
    "list_presets",
    "paper_epsilon",
    "threatening_classes",
]
