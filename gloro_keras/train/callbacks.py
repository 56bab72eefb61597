"""Keras callbacks for GloRo training (plain Python / keras.ops: TensorFlow and JAX).

Typical use (what `gloro-train` does)::

    callbacks = [
        EpsilonScheduler(epsilon=36 / 255, schedule="paper"),   # ε_train per batch
        ConvergeBounds(),                     # the sound bound before every evaluation
        VRALogger(),                          # bound, ε_train, ε into `logs`
        MetricsLog("metrics.csv"),            # one row per epoch, continued on resume
        StopOnNonFinite(),                    # a nan/inf loss or bound stops fit
        keras.callbacks.BackupAndRestore("backup"),            # resume a killed run
    ]
    model.fit(train, validation_data=test, epochs=800, callbacks=callbacks)

Put `VRALogger`/`ConvergeBounds`/`ThreateningClassTracker` *before* `MetricsLog` and
`TensorBoard`: Keras passes one `logs` dict through the callbacks in order, so the values
they add are then recorded.
"""
from __future__ import annotations

import csv
import os

import keras
import numpy as np

from gloro_keras.models.converge_bounds import ConvergeBounds
from gloro_keras.ops.epsilon import check_epsilon
from gloro_keras.train.schedules import EpsilonSchedule

__all__ = [
    "ConvergeBounds",
    "EpsilonScheduler",
    "LearningRateLogger",
    "MetricsLog",
    "NonFiniteTrainingError",
    "StopOnNonFinite",
    "ThreateningClassTracker",
    "VRALogger",
    "threatening_classes",
]


class EpsilonScheduler(keras.callbacks.Callback):
    """Move the model's training radius `epsilon_train` along a schedule, per batch.

    With t = epoch + batch/steps_per_epoch and T = `total_epochs`, sets
    `model.epsilon_train = schedule(t / T) · epsilon` before every training batch. The
    default "paper" schedule is `(min(2t/T, 1)·1.4 + 0.1)·ε` (0.1ε → 1.5ε at T/2, then
    flat). `model.epsilon` (the evaluation/certification radius) is never touched, so
    validation during `fit` is always at the test radius.

    Args:
        epsilon: the test radius ε the schedule multiplies; default: `model.epsilon` when
            training starts.
        total_epochs: T; default: the `epochs` given to `fit`.
        schedule: "paper", "constant", "linear", "log", a keypoint string such as
            "[0.01]-log-[50%:1.1]", a number, or a callable progress -> multiple (see
            `gloro_keras.train.schedules`).
        steps_per_epoch: batches per epoch; default: the one Keras knows (`params["steps"]`),
            else counted during the first epoch (per-epoch updates until then).
    """

    def __init__(self, epsilon=None, total_epochs=None, schedule="paper", steps_per_epoch=None):
        super().__init__()
        self.epsilon = None if epsilon is None else check_epsilon(epsilon)
        self.total_epochs = total_epochs
        self.schedule = schedule if isinstance(schedule, EpsilonSchedule) else EpsilonSchedule(schedule)
        self.steps_per_epoch = steps_per_epoch
        self._epoch = 0
        self._seen = 0
        self.current = None

    def value(self, t):
        """ε_train at fractional epoch t."""
        total = self._total()
        return self.schedule(t / total) * self._eps()

    def _eps(self):
        return self.model.epsilon if self.epsilon is None else self.epsilon

    def _total(self):
        total = self.total_epochs or (self.params or {}).get("epochs")
        if not total:
            raise ValueError("EpsilonScheduler needs total_epochs (or fit(epochs=...)).")
        return float(total)

    def _steps(self):
        return self.steps_per_epoch or (self.params or {}).get("steps")

    def _set(self, t):
        value = self.value(t)
        if value == self.current:
            return
        self.current = value
        sync = getattr(self.model, "jax_state_sync", None)
        if sync is not None:
            # JAX trainer: the step state lives outside the variables during an epoch;
            # write it back so the assignment is seen by the next step.
            sync()
        self.model.epsilon_train = value

    def on_train_begin(self, logs=None):
        if self.epsilon is None:
            self.epsilon = self.model.epsilon
        self.current = None

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch
        self._seen = 0
        self._set(epoch)

    def on_train_batch_begin(self, batch, logs=None):
        steps = self._steps()
        if steps:
            self._set(self._epoch + min(batch, steps) / steps)

    def on_train_batch_end(self, batch, logs=None):
        self._seen = batch + 1  # batches finished this epoch (steps_per_execution: the last one)

    def on_epoch_end(self, epoch, logs=None):
        if not self._steps() and self._seen:
            self.steps_per_epoch = self._seen
        if logs is not None:
            logs["epsilon_train"] = float(self.current)


class VRALogger(keras.callbacks.Callback):
    """Add the GloRo quantities to the per-epoch `logs` (so CSVLogger/TensorBoard record them).

    Keras already puts the compiled metrics there: `clean_acc`, `vra`, `rejection_rate`
    for training (computed at ε_train with the per-step training bound) and `val_*` for
    the test set (at ε, with the bound `ConvergeBounds` cached). This adds
    `epsilon` (test radius), `epsilon_train` (current training radius) and, when no
    `ConvergeBounds` provided one this epoch, `lipschitz_bound` from the stored
    iterates. `history` keeps a copy of every epoch's logs; `print_summary=True` prints a
    one-line summary per epoch.
    """

    def __init__(self, print_summary=False):
        super().__init__()
        self.print_summary = print_summary
        self.history = []

    def on_epoch_end(self, epoch, logs=None):
        if logs is None:
            return
        model = self.model
        logs["epsilon"] = float(model.epsilon)
        logs["epsilon_train"] = float(model.epsilon_train)
        if "lipschitz_bound" not in logs:
            logs["lipschitz_bound"] = float(model.lipschitz_bound("current"))
        self.history.append({"epoch": epoch, **{k: _to_float(v) for k, v in logs.items()}})
        if self.print_summary:
            parts = [f"epoch {epoch + 1}"]
            for key in ("clean_acc", "vra", "val_clean_acc", "val_vra", "val_rejection_rate",
                        "lipschitz_bound", "epsilon_train"):
                if key in logs:
                    parts.append(f"{key}={_to_float(logs[key]):.4g}")
            print("  ".join(parts), flush=True)


def _to_float(v):
    try:
        return float(np.asarray(v))
    except (TypeError, ValueError):
        return v


def threatening_classes(logits):
    """Index of the second-highest logit per row (the "threatening" class)."""
    logits = np.asarray(logits)
    return np.argsort(-logits, axis=-1, kind="stable")[:, 1]


class ThreateningClassTracker(keras.callbacks.Callback):
    """Figure 3 of the paper: how often the threatening class changes between epochs.

    At the start of training and after every epoch, computes each example's threatening
    class (second-highest clean logit) on a fixed sample `x_sample` of training inputs,
    and logs `logs[name]` = the fraction whose threatening class differs from the
    previous epoch (the first epoch compares with the network at the start of training).

    Args:
        x_sample: array of training inputs (e.g. 1 000 images; the same every epoch).
        batch_size: prediction batch size.
        name: the log key (default "threat_change").
    """

    def __init__(self, x_sample, batch_size=256, name="threat_change"):
        super().__init__()
        self.x_sample = x_sample
        self.batch_size = batch_size
        self.name = name
        self.previous = None
        self.history = []

    def _classes(self):
        return threatening_classes(self.model.predict_logits(self.x_sample, batch_size=self.batch_size))

    def on_train_begin(self, logs=None):
        self.previous = self._classes()

    def on_epoch_end(self, epoch, logs=None):
        current = self._classes()
        frac = float(np.mean(current != self.previous)) if self.previous is not None else float("nan")
        self.previous = current
        self.history.append(frac)
        if logs is not None:
            logs[self.name] = frac


class LearningRateLogger(keras.callbacks.Callback):
    """Add the optimizer's current learning rate to the epoch logs as `lr`."""

    def on_epoch_end(self, epoch, logs=None):
        if logs is None:
            return
        # `learning_rate` evaluates a schedule at the optimizer's current iteration
        logs["lr"] = float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate))


class NonFiniteTrainingError(RuntimeError):
    """Training produced a non-finite loss or Lipschitz bound."""


class StopOnNonFinite(keras.callbacks.Callback):
    """Stop `fit` at the first non-finite training loss (checked every batch) or Lipschitz
    bound (checked at the end of every epoch) by raising `NonFiniteTrainingError`.

    Raising, unlike `model.stop_training`, skips every later callback: `BackupAndRestore`
    (put it after this one) keeps the last finished epoch and deletes nothing, and no
    `on_train_end` saves the broken weights. Put it after `VRALogger`, which adds the bound
    to the epoch logs.

    Example:

    ```python
    callbacks = [VRALogger(), StopOnNonFinite(), keras.callbacks.BackupAndRestore("backup")]
    try:
        model.fit(x, y, epochs=10, callbacks=callbacks)
    except NonFiniteTrainingError as e:
        print(e)   # "epoch 3, batch 17: the training loss is nan"
    ```
    """

    def __init__(self):
        super().__init__()
        self._epoch = 0

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        loss = _to_float((logs or {}).get("loss"))
        if isinstance(loss, float) and not np.isfinite(loss):
            raise NonFiniteTrainingError(
                f"epoch {self._epoch + 1}, batch {batch + 1}: the training loss is {loss}")

    def on_epoch_end(self, epoch, logs=None):
        for key in ("loss", "lipschitz_bound"):
            value = _to_float((logs or {}).get(key))
            if isinstance(value, float) and not np.isfinite(value):
                raise NonFiniteTrainingError(f"epoch {epoch + 1}: the training {key} is {value}")


class MetricsLog(keras.callbacks.Callback):
    """The per-epoch logs as a CSV file that a resumed run continues.

    One row per epoch, numbered from 1 as the progress bar counts; the columns are every key
    logged so far (blank where an epoch has none, e.g. `val_*` between evaluations). The
    file is rewritten whole after each epoch through an atomic rename, so a crash never
    leaves it truncated. With `resume=True` the rows already in the file are kept, up to
    the epoch that training continues from. `history` is `{key: [value per epoch]}` over
    all rows, earlier runs' included (`None` where a row lacks the key).

    Args:
        path: the CSV file.
        resume: continue the rows already in `path` (for a run `BackupAndRestore` resumes).

    Put it after the callbacks that add to the logs (`VRALogger`, `LearningRateLogger`)
    and before `BackupAndRestore`.
    """

    def __init__(self, path, resume=False):
        super().__init__()
        self.path = str(path)
        self.resume = bool(resume)
        self.rows = []

    def on_train_begin(self, logs=None):
        self.rows = _read_csv_rows(self.path) if self.resume else []

    def on_epoch_end(self, epoch, logs=None):
        row = {"epoch": epoch + 1, **{k: _to_float(v) for k, v in (logs or {}).items()}}
        self.rows = [r for r in self.rows if r["epoch"] < row["epoch"]] + [row]
        columns = list(dict.fromkeys(k for r in self.rows for k in r))
        tmp = self.path + ".tmp"
        with open(tmp, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=columns, restval="")
            writer.writeheader()
            writer.writerows(self.rows)
        os.replace(tmp, self.path)

    @property
    def history(self):
        columns = list(dict.fromkeys(k for r in self.rows for k in r))
        return {k: [r.get(k) for r in self.rows] for k in columns}


def _read_csv_rows(path):
    if not os.path.exists(path):
        return []
    with open(path, newline="") as f:
        rows = [{k: _csv_value(v) for k, v in r.items() if v != ""} for r in csv.DictReader(f)]
    return [{**r, "epoch": int(r["epoch"])} for r in rows if isinstance(r.get("epoch"), float)]


def _csv_value(text):
    try:
        return float(text)
    except (TypeError, ValueError):
        return text
