"""The callback that keeps a GloroModel's inference bound converged during `fit`.

It lives with the model because `GloroModel.fit` adds it by default; it is re-exported from
`gloro_keras.train` with the other callbacks.
"""
import time
import warnings

import keras


class ConvergeBounds(keras.callbacks.Callback):
    """Cache one bound before every evaluation and at the end of training.

    `on_test_begin` (validation inside `fit`, or `evaluate`) runs
    `model.update_bound_cache(bound)`, so the evaluated VRA uses one bound for the whole test
    set. `bound="sound"` (default) caches the provable float64 upper bound, which does not
    depend on the power iterates, so no power iteration runs before a validation (at L6W128
    that halved the per-epoch cost; bench/epoch_bound.py); if the sound bound is unavailable
    it falls back to "power" with a warning. "power" runs the iterates to convergence
    (`max_iterations`, `tolerance`). `on_train_end` also converges the iterates
    (`model.converge_bounds`), so a saved model holds converged iterates. The last bound is
    added to `logs["lipschitz_bound"]` at the end of each epoch.

    The sound bound is float64 work: on the host (`bounds.sound_bounds`' threads), or on the GPU
    where Keras's backend has one (`bounds.device`). On the host, next to a GPU's epochs, it took
    longer than the epoch it follows (one NVIDIA H200: 147 % of an L6W128 epoch, 216 % at
    L18W256; bench/results/gpu_check-2026-12-04-h200-epoch.md), so inside `fit` it warns, once,
    when a validation's bound took more than `warn_fraction` of that epoch's training time
    (None: never).
    """

    def __init__(self, bound="sound", max_iterations=500, tolerance=1e-6, at_train_end=True, warn_fraction=0.1):
        super().__init__()
        if bound not in ("sound", "power"):
            raise ValueError(f"bound must be 'sound' or 'power'; got {bound!r}")
        if warn_fraction is not None and not float(warn_fraction) >= 0:
            raise ValueError(f"warn_fraction must be None or >= 0. Received: warn_fraction={warn_fraction!r}")
        self.warn_fraction = None if warn_fraction is None else float(warn_fraction)
        self._epoch_start = None
        self._warned = False
        self.bound = bound
        self.max_iterations = max_iterations
        self.tolerance = tolerance
        self.at_train_end = at_train_end
        self.last_bound = None
        self.last_bound_kind = None
        self._fresh = False
        self._stale = True
        self._in_fit = False

    def _cache_is_current(self):
        if self._stale or self.last_bound is None:
            return False
        return self.model.bound_cache_valid

    def converge(self, force=False, iterates=False):
        """Cache the bound (skipped if nothing trained since the last time); returns K.
        `iterates=True` (or bound "power") also runs the power iterates to convergence."""
        if not force and self._cache_is_current() and not iterates:
            self._fresh = True
            return self.last_bound
        model = self.model
        if iterates or self.bound == "power":
            model.converge_bounds(max_iterations=self.max_iterations, tolerance=self.tolerance)
        kind = self.bound
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

    def on_train_batch_begin(self, batch, logs=None):
        self._stale = True

    def on_test_begin(self, logs=None):
        # Inside fit, "nothing trained since" is tracked reliably; a stand-alone evaluate
        # always converges (the weights may have been changed or loaded meanwhile).
        started, cached = time.perf_counter(), self._cache_is_current()
        self.converge(force=not self._in_fit)
        if self._in_fit and not cached and self._epoch_start is not None:
            self._maybe_warn(time.perf_counter() - started, started - self._epoch_start)

    def _maybe_warn(self, bound_s, train_s):
        if self._warned or self.warn_fraction is None or train_s <= 0 or bound_s <= self.warn_fraction * train_s:
            return
        self._warned = True
        warnings.warn(
            f"ConvergeBounds: the {self.last_bound_kind} bound before this validation took {bound_s:.1f} s, "
            f"{100 * bound_s / train_s:.0f} % of the epoch's training ({train_s:.1f} s); it is float64 work "
            "(gloro_keras.bounds). Validate less often (model.fit(validation_freq=N), gloro-train --eval_every=N); "
            "certificates are unaffected.", stacklevel=2)

    def on_epoch_begin(self, epoch, logs=None):
        self._fresh = False
        self._epoch_start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None and self._fresh and self.last_bound is not None:
            logs["lipschitz_bound"] = self.last_bound

    def on_train_end(self, logs=None):
        self._in_fit = False
        if self.at_train_end:
            self.converge(iterates=True)
