"""The original gloro's callbacks (`gloro.training.callbacks`).

`EpsilonScheduler`, `LrScheduler` and `TradesScheduler` move a value along a gloro
`Schedule` string: epoch e starts at `schedule[e]`, and with `interpolate=True` each batch
of epoch e ramps linearly from `schedule[e − 1]` to `schedule[e]` (gloro's one-epoch lag).
`EpsilonScheduler` moves the training radius `model.epsilon_train`; the radius evaluation
and certification use is `model.epsilon` (its `test_value`, default unchanged).
"""
import abc

import keras
from keras import ops

from gloro_keras.compat.training.schedules import Schedule
from gloro_keras.losses import TRADES
from gloro_keras.train import ConvergeBounds


class VariableScheduler(keras.callbacks.Callback, metaclass=abc.ABCMeta):
    """gloro's `VariableScheduler(variable_name, schedule_string='fixed', test_value=None,
    base_value=None, interpolate=True, verbose=True)`: subclasses implement `get_var()`
    and `set_var(value)`."""

    def __init__(self, variable_name, schedule_string="fixed", test_value=None, base_value=None,
                 interpolate=True, verbose=True):
        super().__init__()
        self.variable_name = variable_name
        self.schedule_string = schedule_string
        self.test_value = test_value
        self.base_value = base_value
        self.interpolate = bool(interpolate)
        self.verbose = bool(verbose)
        Schedule(schedule_string, 1)  # a bad string fails here, not when training starts

    @abc.abstractmethod
    def get_var(self):
        """The controlled value."""

    @abc.abstractmethod
    def set_var(self, value):
        """Set the controlled value."""

    def on_train_begin(self, logs=None):
        current = self.get_var()
        self.schedule = Schedule(self.schedule_string, (self.params or {}).get("epochs") or 1,
                                 current if self.base_value is None else self.base_value)
        self.steps = (self.params or {}).get("steps")
        self.prev, self.current = None, self.schedule[0]

    def on_epoch_begin(self, epoch, logs=None):
        value = self.schedule[epoch]
        if self.verbose and value != self.get_var():
            print(f"---- setting {self.variable_name}={value:.5f} ----")
        self.set_var(value)
        self.prev, self.current = self.current, value

    def on_train_batch_begin(self, batch, logs=None):
        if self.interpolate and self.prev is not None and self.steps:
            self.set_var(self.prev + (self.current - self.prev) * batch / self.steps)


class EpsilonScheduler(VariableScheduler):
    """gloro's `EpsilonScheduler(schedule_string='fixed', test_value=None, ...)`."""

    def __init__(self, schedule_string="fixed", test_value=None, base_value=None, interpolate=True, verbose=True):
        super().__init__("epsilon", schedule_string, test_value, base_value, interpolate, verbose)

    def get_var(self):
        return float(self.model.epsilon_train)

    def set_var(self, value):
        self.model.epsilon_train = value

    def on_train_begin(self, logs=None):
        if self.test_value is not None:
            self.model.epsilon = self.test_value
        if self.base_value is None:
            self.base_value = float(self.model.epsilon)
        super().on_train_begin(logs)


class LrScheduler(VariableScheduler):
    """gloro's `LrScheduler(schedule_string='fixed', ...)`: the optimizer's learning rate
    (a plain value, not a `LearningRateSchedule`)."""

    def __init__(self, schedule_string="fixed", test_value=None, base_value=None, interpolate=True, verbose=True):
        super().__init__("lr", schedule_string, test_value, base_value, interpolate, verbose)

    def get_var(self):
        return float(ops.convert_to_numpy(self.model.optimizer.learning_rate))

    def set_var(self, value):
        try:
            self.model.optimizer.learning_rate = value
        except TypeError:  # Keras: a LearningRateSchedule is not settable
            raise ValueError("LrScheduler needs an optimizer with a fixed learning rate, not a "
                             "LearningRateSchedule") from None


class TradesScheduler(VariableScheduler):
    """gloro's `TradesScheduler(schedule_string='fixed', ...)`: λ of the compiled TRADES loss."""

    def __init__(self, schedule_string="fixed", test_value=None, base_value=None, interpolate=True, verbose=True):
        super().__init__("lam", schedule_string, test_value, base_value, interpolate, verbose)

    def _loss(self):
        loss = getattr(self.model, "gloro_loss", None)
        if not isinstance(loss, TRADES):
            raise ValueError(f"TradesScheduler needs a model compiled with a Trades loss; got {loss!r}")
        return loss

    def get_var(self):
        return self._loss().lam

    def set_var(self, value):
        self._loss().lam = value


class UpdatePowerIterates(ConvergeBounds):
    """gloro's `UpdatePowerIterates(convergence_threshold=1e-4, short_convergence_threshold=1e-2,
    max_convergence_attempts=100, do_initial_convergence=True, verbose=True)`: a bound cached
    before every evaluation and, with converged iterates, at the end of training
    (`gloro_keras.train.ConvergeBounds`, whose arguments it also takes)."""

    def __init__(self, convergence_threshold=1e-4, short_convergence_threshold=1e-2, max_convergence_attempts=100,
                 do_initial_convergence=True, verbose=True, **kwargs):
        kwargs.setdefault("tolerance", min(float(convergence_threshold), 1e-4))
        super().__init__(**kwargs)
        self.verbose = bool(verbose)

    def converge(self, force=False, iterates=False, kind=None):
        if self.verbose:
            print("---- converging iterates ----")
        return super().converge(force=force, iterates=iterates, kind=kind)


__all__ = ["EpsilonScheduler", "LrScheduler", "TradesScheduler", "UpdatePowerIterates", "VariableScheduler"]
