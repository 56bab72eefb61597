"""The callback that keeps a GloroModel's inference bound converged during `fit`.

It lives with the model because `GloroModel.fit` adds it by default; it is re-exported from
`gloro_keras.train` with the other callbacks.
"""
import json
import os
import time
import warnings

import keras


# What each `bound` caches before the validations inside `fit`, in order: "auto" moves to the
# next kind after a validation whose bound took more than `max_fraction` of the training since
# the previous one. "current" reads the stored iterates (one product per layer) and leaves them
# as they are, so the weights trained are the same whichever kind validations use.
_VALIDATION_KINDS = {"auto": ("sound", "current"), "sound": ("sound",), "power": ("power",)}


def _several_processes():
    """Whether training runs in several processes (`TF_CONFIG` naming more than one task, or JAX's
    `process_count() > 1`), each timing its own bound: "auto" then keeps the sound bound, so that
    every process evaluates with the same kind."""
    if keras.backend.backend() == "jax":
        import jax

        return jax.process_count() > 1
    try:
        cluster = json.loads(os.environ.get("TF_CONFIG") or "{}").get("cluster") or {}
    except (ValueError, AttributeError):
        return False
    return sum(len(tasks) for tasks in cluster.values()) > 1


class ConvergeBounds(keras.callbacks.Callback):
    """Cache one bound before every evaluation and at the end of training.

    `on_test_begin` (validation inside `fit`, or `evaluate`) runs
    `model.update_bound_cache(kind)`, so the evaluated VRA uses one bound for the whole test
    set, and `on_train_end` caches the final one (`model.converge_bounds` also converges the
    iterates, so a saved model holds converged iterates). The last bound is added to
    `logs["lipschitz_bound"]` at the end of each epoch; `last_bound_kind` says which it was.

    Kinds: "sound" is the provable float64 upper bound (independent of the power iterates, so no
    power iteration runs before it); "power" runs the iterates to convergence (`max_iterations`,
    `tolerance`); "current" reads the iterates training left (no extra work). If the sound bound
    is unavailable, "power" is used instead, with a warning.

    The sound bound is float64 work: on the host (`bounds.sound_bounds`' threads, 1.9 % of an
    L6W128 CIFAR-10 epoch on a 2-core CPU, bench/epoch_bound.py) or on the GPU where Keras's
    backend has one (`bounds.device`). Next to a GPU's epochs it can outlast the epoch (on the host:
    147 % of an L6W128 epoch on one NVIDIA H200), hence, with `t` the validation's bound time and
    `T` the training time since the previous validation:

    - `bound="auto"` (default): "sound" at validations until one has `t > max_fraction · T`; later
      validations of that `fit` use "current" (an estimate, as in the original gloro: `val_vra` is
      then not a certificate), with a warning; the end of training caches "sound". Outside `fit`
      (`evaluate`), and where training runs in several processes (multi-worker `TF_CONFIG`, JAX
      multi-process: each would time its own bound), it is "sound", warning as below.
    - `bound="sound"`: "sound" always; warns once per `fit` when `t > max_fraction · T`.
    - `bound="power"`: "power" always.

    Args:
        bound: "auto", "sound" or "power".
        max_fraction: the share of the training time a validation's bound may take (see above);
            None: no limit and no warning.
        max_iterations, tolerance: for "power" and the iterates' convergence at the end.
        at_train_end: cache the final bound (and converge the iterates) in `on_train_end`.

    Example:

    ```python
    model.fit(x, y, validation_data=(xt, yt), epochs=10,
              callbacks=[gk.ConvergeBounds(bound="sound")])   # a certified val_vra every epoch
    ```
    """

    def __init__(self, bound="auto", max_iterations=500, tolerance=1e-6, at_train_end=True, max_fraction=0.05):
        super().__init__()
        if bound not in _VALIDATION_KINDS:
            raise ValueError(f"bound must be one of {tuple(_VALIDATION_KINDS)}. Received: bound={bound!r}")
        if max_fraction is not None and not float(max_fraction) >= 0:
            raise ValueError(f"max_fraction must be None or >= 0. Received: max_fraction={max_fraction!r}")
        self.max_fraction = None if max_fraction is None else float(max_fraction)
        self.bound = bound
        self.max_iterations = max_iterations
        self.tolerance = tolerance
        self.at_train_end = at_train_end
        self.last_bound = None
        self.last_bound_kind = None
        self._requested = None  # the kind asked for last (last_bound_kind differs where "sound" fell back)
        self.validation_kinds = []  # the kind each validation of the last `fit` used
        self._level = 0  # index into _VALIDATION_KINDS[bound] for this fit's validations
        self._warned = False
        self._epoch_start = None
        self._train_s = 0.0  # training time since the previous validation
        self._validated = False
        self._fresh = False
        self._stale = True
        self._in_fit = False

    @property
    def final_kind(self):
        """The kind cached at the end of training and by stand-alone evaluations."""
        return "power" if self.bound == "power" else "sound"

    def _cache_is_current(self):
        if self._stale or self.last_bound is None:
            return False
        return self.model.bound_cache_valid

    def converge(self, force=False, iterates=False, kind=None):
        """Cache the bound of `kind` (default `final_kind`; skipped if nothing trained since the
        last time); returns K. `iterates=True` (or kind "power") also runs the power iterates to
        convergence."""
        kind = kind or self.final_kind
        if not force and self._cache_is_current() and not iterates and kind == self._requested:
            self._fresh = True
            return self.last_bound
        model, self._requested = self.model, kind
        if iterates or kind == "power":
            model.converge_bounds(max_iterations=self.max_iterations, tolerance=self.tolerance)
        try:
            k = model.update_bound_cache(kind)
        except (ImportError, NotImplementedError) as e:
            if kind != "sound":
                raise
            warnings.warn(f"sound bound unavailable ({e}); caching the converged power bound instead.")
            kind = "power"
            model.converge_bounds(max_iterations=self.max_iterations, tolerance=self.tolerance)
            k = model.update_bound_cache(kind)
        self.last_bound, self.last_bound_kind = float(k), kind
        self._fresh = True
        self._stale = False
        return k

    def on_train_begin(self, logs=None):
        self._stale = True
        self._in_fit = True
        self._warned = False
        self._level = 0
        self._train_s = 0.0
        self.validation_kinds = []

    def on_train_batch_begin(self, batch, logs=None):
        self._stale = True

    def on_epoch_begin(self, epoch, logs=None):
        self._fresh = False
        self._validated = False
        self._epoch_start = time.perf_counter()

    def on_test_begin(self, logs=None):
        if not self._in_fit:  # stand-alone evaluate: the weights may have been changed or loaded
            self.converge(force=True)
            return
        started = time.perf_counter()
        if self._epoch_start is not None and not self._validated:
            self._train_s += started - self._epoch_start
        self._validated = True
        kinds = _VALIDATION_KINDS[self.bound]
        cached = self._cache_is_current()
        self.converge(kind=kinds[self._level])
        self.validation_kinds.append(self.last_bound_kind)
        if not cached:
            self._check_time(time.perf_counter() - started, self._train_s, kinds)
        self._train_s = 0.0

    def _check_time(self, bound_s, train_s, kinds):
        if self.max_fraction is None or train_s <= 0 or bound_s <= self.max_fraction * train_s:
            return
        share = (f"the {self.last_bound_kind} bound before this validation took {bound_s:.1f} s, "
                 f"{100 * bound_s / train_s:.0f} % of the training since the previous one ({train_s:.1f} s; "
                 f"max_fraction={self.max_fraction:g}); it is float64 work (gloro_keras.bounds).")
        if self._level + 1 < len(kinds) and not _several_processes():
            self._level += 1
            warnings.warn(
                f"ConvergeBounds: {share} Later validations in this fit use the {kinds[self._level]!r} bound "
                "(the iterates training keeps: an estimate, so val_vra is no longer a certificate); the sound "
                "bound is cached at the end of training. ConvergeBounds(bound='sound') keeps it at every "
                "validation.", stacklevel=2)
        elif not self._warned and self.last_bound_kind == "sound":
            self._warned = True
            warnings.warn(
                f"ConvergeBounds: {share} Validate less often (model.fit(validation_freq=N), gloro-train "
                "--eval_every=N) or use ConvergeBounds(bound='auto'); certificates are unaffected.", stacklevel=2)

    def on_epoch_end(self, epoch, logs=None):
        if not self._validated and self._epoch_start is not None:
            self._train_s += time.perf_counter() - self._epoch_start
        if logs is not None and self._fresh and self.last_bound is not None:
            logs["lipschitz_bound"] = self.last_bound

    def on_train_end(self, logs=None):
        self._in_fit = False
        if self.at_train_end:
            self.converge(iterates=True)
