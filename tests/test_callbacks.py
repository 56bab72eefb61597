"""Training callbacks and schedules: ε schedule math, LR schedule, bound convergence before
evaluation, logging, the Figure-3 tracker and resuming an interrupted run."""
import csv
import json
import math
import os
import subprocess
import sys
import warnings

import keras
import numpy as np
import pytest

import gloro_keras as gk
from conftest import REPO
from gloro_keras.train import (
    ConvergeBounds,
    EpsilonSchedule,
    EpsilonScheduler,
    LearningRateLogger,
    ThreateningClassTracker,
    VRALogger,
    WarmupCosine,
    paper_epsilon,
    threatening_classes,
)

EPS = 0.5


# ----------------------------------------------------------------------------- helpers
def tiny_model(epsilon=EPS, seed=0):
    keras.utils.set_random_seed(seed)
    model = gk.GloroLiResNet(L=1, W=4, num_classes=3, input_shape=(8, 8, 1), epsilon=epsilon, dense_width=8)
    model.compile(optimizer=keras.optimizers.AdamW(1e-2), loss="emma", metrics=["clean_acc", "vra", "rejection_rate"])
    return model


def tiny_data(n=32, seed=0):
    rng = np.random.RandomState(seed)
    x = rng.uniform(size=(n, 8, 8, 1)).astype("float32")
    y = (x[:, :4].mean(axis=(1, 2, 3)) > x[:, 4:].mean(axis=(1, 2, 3))).astype("int32") + (x[:, 0, 0, 0] > 0.9)
    return x, y.astype("int32")


class Recorder(keras.callbacks.Callback):
    """Records model.epsilon_train seen by every training batch (after the scheduler ran)."""

    def __init__(self):
        super().__init__()
        self.seen = []

    def on_train_batch_begin(self, batch, logs=None):
        sync = getattr(self.model, "jax_state_sync", None)
        if sync is not None:
            sync()
        self.seen.append((self._epoch, batch, self.model.epsilon_train))

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch


# ----------------------------------------------------------------------------- ε schedules
def test_paper_formula_values():
    T = 800
    assert paper_epsilon(0, T) == pytest.approx(0.1)
    assert paper_epsilon(T / 4, T) == pytest.approx(0.8)
    assert paper_epsilon(T / 2, T) == pytest.approx(1.5)
    assert paper_epsilon(T, T) == pytest.approx(1.5)
    assert paper_epsilon(T / 4, T, epsilon=36 / 255) == pytest.approx(0.8 * 36 / 255)
    s = EpsilonSchedule("paper")
    for t in np.linspace(0, T, 41):
        assert s(t / T) == pytest.approx(paper_epsilon(t, T)), t


def test_named_and_numeric_schedules():
    assert EpsilonSchedule("constant")(0.0) == 1.0 == EpsilonSchedule("constant")(0.7)
    lin = EpsilonSchedule("linear")
    assert [lin(p) for p in (0, 0.25, 0.5, 1)] == pytest.approx([0.1, 0.55, 1.0, 1.0])
    log = EpsilonSchedule("log")
    assert [log(p) for p in (0, 0.25, 0.5, 0.9)] == pytest.approx([0.01, 0.1, 1.0, 1.0])
    assert EpsilonSchedule(1.25)(0.3) == 1.25
    assert EpsilonSchedule("0.7")(0.9) == 0.7
    assert EpsilonSchedule(lambda p: 2 * p)(0.25) == 0.5
    # progress is clipped to [0, 1]
    assert EpsilonSchedule("paper")(3.0) == pytest.approx(1.5)
    assert EpsilonSchedule("paper")(-1.0) == pytest.approx(0.1)


def test_gloro_schedule_strings():
    s = EpsilonSchedule("[0.01]-log-[50%:1.1]")
    assert s(0.0) == pytest.approx(0.01)
    assert s(0.25) == pytest.approx(math.sqrt(0.01 * 1.1))  # geometric midpoint
    assert s(0.5) == pytest.approx(1.1)
    assert s(0.8) == pytest.approx(1.1)
    # several segments, fractions or percentages, linear and step shapes
    s = EpsilonSchedule("[0]-linear-[0.25:1]-linear-[75%:1.5]")
    assert [s(p) for p in (0, 0.125, 0.25, 0.5, 0.75, 1)] == pytest.approx([0, 0.5, 1.0, 1.25, 1.5, 1.5])
    s = EpsilonSchedule("[0.5] - step - [40% : 1.0]")
    assert s(0.39) == 0.5 and s(0.4) == 1.0 and s(1.0) == 1.0
    # "paper" is the keypoint string it is documented to be
    a, b = EpsilonSchedule("paper"), EpsilonSchedule("[0.1]-linear-[50%:1.5]")
    assert all(a(p) == pytest.approx(b(p)) for p in np.linspace(0, 1, 11))


@pytest.mark.parametrize("bad", [
    "nonsense", "[0.1]-cubic-[50%:1]", "[0.1]-linear-[150%:1]", "[0.1]-linear-[50%:1]-linear-[25%:2]",
    "[0]-log-[50%:1]", "[-1]", "[0.1]-linear-50%:1", "[0.1]-linear-[50%:1]junk",
])
def test_bad_schedule_strings_are_value_errors(bad):
    with pytest.raises(ValueError, match="epsilon schedule"):
        EpsilonSchedule(bad)


def test_scheduler_interpolates_per_batch_and_leaves_test_epsilon():
    model = tiny_model()
    x, y = tiny_data(32)
    rec = Recorder()
    sched = EpsilonScheduler(schedule="paper")  # ε and T taken from the model and fit()
    model.fit(x, y, batch_size=8, epochs=3, callbacks=[sched, rec], verbose=0, shuffle=False)
    steps, T = 4, 3
    assert len(rec.seen) == steps * T
    for epoch, batch, value in rec.seen:
        t = epoch + batch / steps
        assert value == pytest.approx(paper_epsilon(t, T, EPS), rel=1e-6), (epoch, batch)
    ramp = [v for e, b, v in rec.seen if e + b / steps < T / 2]
    assert len(ramp) == 6 and len(set(ramp)) == 6  # a new value every batch while ramping
    assert model.epsilon == pytest.approx(EPS)


def test_scheduler_explicit_total_and_epsilon_and_log_key():
    model = tiny_model()
    x, y = tiny_data(16)
    sched = EpsilonScheduler(epsilon=0.2, total_epochs=10, schedule="[0]-linear-[100%:1]")
    hist = model.fit(x, y, batch_size=8, epochs=2, callbacks=[sched], verbose=0)
    # last batch of epoch 1 began at t = 1.5 of T = 10
    assert hist.history["epsilon_train"][-1] == pytest.approx(0.2 * 1.5 / 10)
    assert model.epsilon_train == pytest.approx(0.03)
    assert model.epsilon == pytest.approx(EPS)


def test_scheduler_counts_steps_when_unknown():
    import tensorflow as tf

    model = tiny_model()
    x, y = tiny_data(32)
    ds = tf.data.Dataset.from_tensor_slices((x, y)).filter(lambda a, b: True).batch(8)  # unknown size
    rec = Recorder()
    model.fit(ds, epochs=2, callbacks=[EpsilonScheduler(total_epochs=8, schedule="paper"), rec], verbose=0)
    # epoch 0: no step count yet -> the epoch's start value; epoch 1: per batch with the counted 4 steps
    first = [v for e, b, v in rec.seen if e == 0 and b < 4]
    second = [v for e, b, v in rec.seen if e == 1 and b < 4]
    assert first == pytest.approx([paper_epsilon(0, 8, EPS)] * 4)
    assert second == pytest.approx([paper_epsilon(1 + b / 4, 8, EPS) for b in range(4)])


# ----------------------------------------------------------------------------- LR schedule
def test_warmup_cosine_values():
    s = WarmupCosine(1e-3, total_steps=1000, warmup_steps=100)
    v = lambda step: float(keras.ops.convert_to_numpy(s(step)))  # noqa: E731
    assert v(0) == pytest.approx(1e-5)
    assert v(49) == pytest.approx(0.5e-3)
    assert v(99) == pytest.approx(1e-3)
    assert v(100) == pytest.approx(1e-3)
    assert v(550) == pytest.approx(0.5e-3, rel=1e-5)
    assert v(1000) == pytest.approx(0.0, abs=1e-9)
    assert v(5000) == pytest.approx(0.0, abs=1e-9)
    # monotone: up during warm-up, down afterwards
    vals = [v(i) for i in range(0, 1001, 10)]
    assert all(a <= b for a, b in zip(vals[:10], vals[1:11]))
    assert all(a >= b - 1e-12 for a, b in zip(vals[10:], vals[11:]))
    # no warm-up, non-zero floor
    s2 = WarmupCosine(2.0, total_steps=10, final_lr=1.0)
    assert float(keras.ops.convert_to_numpy(s2(0))) == pytest.approx(2.0)
    assert float(keras.ops.convert_to_numpy(s2(5))) == pytest.approx(1.5)
    assert float(keras.ops.convert_to_numpy(s2(10))) == pytest.approx(1.0)
    with pytest.raises(ValueError):
        WarmupCosine(1e-3, total_steps=0)


def test_warmup_cosine_serializes_with_the_optimizer():
    s = WarmupCosine(1e-3, total_steps=1000, warmup_steps=100, final_lr=1e-6)
    back = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(s))
    assert isinstance(back, WarmupCosine) and back.get_config() == s.get_config()
    opt = keras.optimizers.AdamW(learning_rate=s, weight_decay=1e-4, global_clipnorm=3.0)
    opt2 = keras.optimizers.AdamW.from_config(opt.get_config())
    config = opt2.get_config()["learning_rate"]
    assert config["class_name"] == "WarmupCosine" and config["config"] == s.get_config()
    opt2.build([keras.Variable(np.zeros(2, "float32"))])
    for step in (0, 50, 100, 600):  # the restored optimizer follows the schedule
        opt2.iterations.assign(step)
        assert float(opt2.learning_rate) == pytest.approx(float(s(step)), rel=1e-6)


# ----------------------------------------------------------------------------- bounds + logging
class TestCalls(keras.callbacks.Callback):
    """Checks that, whenever an evaluation runs, the model uses a valid cached bound."""

    __test__ = False

    def __init__(self):
        super().__init__()
        self.valid = []

    def on_test_batch_begin(self, batch, logs=None):
        self.valid.append(float(self.model.bound_cache_valid))


def test_converge_bounds_before_every_evaluation_and_logs(tmp_path):
    model = tiny_model()
    x, y = tiny_data(32)
    xt, yt = tiny_data(16, seed=1)
    conv, probe = ConvergeBounds(bound="sound"), TestCalls()
    csv_path = tmp_path / "m.csv"
    cbs = [EpsilonScheduler(), conv, probe, LearningRateLogger(), VRALogger(),
           keras.callbacks.CSVLogger(str(csv_path))]
    hist = model.fit(x, y, batch_size=8, epochs=2, validation_data=(xt, yt), callbacks=cbs, verbose=0)
    assert probe.valid and all(v == 1.0 for v in probe.valid)  # every val batch used the cache
    assert conv.last_bound_kind == "sound"
    # at the end of training the sound bound is cached, matching the model's own value
    assert model.bound_cache_valid
    assert conv.last_bound == pytest.approx(model.lipschitz_bound("sound"))
    k_fit = conv.last_bound
    certified = float(np.mean(model.certify(xt) == yt))  # the final weights, as in the last validation
    # evaluation outside fit converges too
    model.fit(x, y, batch_size=8, epochs=1, verbose=0)  # invalidates the cache
    model.evaluate(xt, yt, verbose=0, callbacks=[ConvergeBounds(bound="power"), probe])
    assert probe.valid[-1] == 1.0
    # logged columns
    for key in ("clean_acc", "vra", "rejection_rate", "val_clean_acc", "val_vra", "val_rejection_rate",
                "lipschitz_bound", "epsilon_train", "epsilon", "lr", "loss", "val_loss"):
        assert key in hist.history, key
    with open(csv_path) as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 2
    assert float(rows[-1]["epsilon"]) == pytest.approx(EPS)
    assert float(rows[-1]["epsilon_train"]) == pytest.approx(paper_epsilon(1.75, 2, EPS))
    assert float(rows[-1]["lipschitz_bound"]) == pytest.approx(k_fit)  # the bound validation used
    assert float(rows[-1]["val_vra"]) <= certified + 1e-6  # evaluate never certifies more than certify


def test_vra_logger_without_validation_logs_current_bound():
    model = tiny_model()
    x, y = tiny_data(16)
    logger = VRALogger()
    hist = model.fit(x, y, batch_size=8, epochs=1, callbacks=[logger], verbose=0, converge_bounds=False)
    assert hist.history["lipschitz_bound"][0] == pytest.approx(model.lipschitz_bound("current"), rel=1e-5)
    assert logger.history[0]["epoch"] == 0 and logger.history[0]["epsilon"] == pytest.approx(EPS)


# ----------------------------------------------------------------------------- Figure 3
def test_threatening_classes():
    logits = np.array([[3.0, 1.0, 2.0], [0.0, 5.0, 4.0], [1.0, 1.0, 0.0]])
    assert threatening_classes(logits).tolist() == [2, 2, 1]


class _FakeModel:
    def __init__(self, seq):
        self.seq = list(seq)

    def predict_logits(self, x, batch_size=256):
        return self.seq.pop(0)


def test_threatening_class_tracker_fraction():
    a = np.array([[3.0, 2.0, 1.0]] * 4)  # threat class 1 for all
    b = a.copy()
    b[:1] = [3.0, 1.0, 2.0]  # one of four changes to class 2
    tracker = ThreateningClassTracker(np.zeros((4, 1)))
    tracker.set_model(_FakeModel([a, b, b, a]))
    tracker.on_train_begin()
    logs = [{}, {}, {}]
    for epoch, lg in enumerate(logs):
        tracker.on_epoch_end(epoch, lg)
    assert [lg["threat_change"] for lg in logs] == [0.25, 0.0, 0.25]
    assert tracker.history == [0.25, 0.0, 0.25]


def test_threatening_class_tracker_in_fit():
    model = tiny_model()
    x, y = tiny_data(32)
    hist = model.fit(x, y, batch_size=8, epochs=2, callbacks=[ThreateningClassTracker(x[:16])], verbose=0)
    assert len(hist.history["threat_change"]) == 2
    assert all(0.0 <= v <= 1.0 for v in hist.history["threat_change"])


# ----------------------------------------------------------------------------- resume
class Crash(keras.callbacks.Callback):
    def __init__(self, epoch, batch):
        super().__init__()
        self.at = (epoch, batch)

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        if (self._epoch, batch) == self.at:
            raise RuntimeError("simulated crash")


def test_backup_and_restore_resumes_after_a_crash(tmp_path):
    x, y = tiny_data(32)
    backup = str(tmp_path / "backup")
    steps = 4

    def callbacks():
        return [EpsilonScheduler(), keras.callbacks.BackupAndRestore(backup)]

    # uninterrupted reference run
    ref = tiny_model(seed=3)
    ref.fit(x, y, batch_size=8, epochs=3, callbacks=[EpsilonScheduler()], verbose=0, shuffle=False)

    model = tiny_model(seed=3)
    with pytest.raises(RuntimeError, match="simulated crash"):
        model.fit(x, y, batch_size=8, epochs=3, callbacks=callbacks() + [Crash(1, 2)], verbose=0, shuffle=False)
    assert os.path.exists(os.path.join(backup, "latest.weights.h5"))
    with open(os.path.join(backup, "training_metadata.json")) as f:
        assert json.load(f)["epoch"] == 1  # epoch 0 finished, epoch 1 interrupted

    # "restart the process": a fresh model (different init), same command
    resumed = tiny_model(seed=99)
    hist = resumed.fit(x, y, batch_size=8, epochs=3, callbacks=callbacks(), verbose=0, shuffle=False)
    assert hist.epoch == [1, 2]  # continues with the interrupted epoch
    assert int(keras.ops.convert_to_numpy(resumed.optimizer.iterations)) == 3 * steps
    assert not os.path.exists(backup)  # removed after a finished run
    # the resumed run ends where the uninterrupted one does (same data order, no randomness)
    for a, b in zip(ref.get_weights(), resumed.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


# ----------------------------------------------------------------------------- JAX
_JAX_SCRIPT = r"""
import json, keras, numpy as np
import gloro_keras as gk
from gloro_keras.train import EpsilonScheduler, ConvergeBounds, VRALogger, paper_epsilon
assert keras.backend.backend() == "jax"
keras.utils.set_random_seed(0)
m = gk.GloroLiResNet(L=1, W=4, num_classes=3, input_shape=(8, 8, 1), epsilon=0.5, dense_width=8)
m.compile(optimizer="adam", loss="emma", metrics=["clean_acc", "vra", "rejection_rate"])
seen = []
class Rec(keras.callbacks.Callback):
    def on_epoch_begin(self, epoch, logs=None): self.e = epoch
    def on_train_batch_begin(self, batch, logs=None):
        self.model.jax_state_sync(); seen.append(self.model.epsilon_train)
x = np.random.RandomState(0).uniform(size=(32, 8, 8, 1)).astype("float32"); y = np.arange(32) % 3
h = m.fit(x, y, batch_size=8, epochs=2, validation_data=(x[:8], y[:8]),
          callbacks=[EpsilonScheduler(), Rec(), ConvergeBounds(bound="power"), VRALogger()], verbose=0)
want = [paper_epsilon(e + b / 4, 2, 0.5) for e in range(2) for b in range(4)]
print(json.dumps({"seen": seen, "want": want, "keys": sorted(h.history), "eps": m.epsilon}))
"""


@pytest.mark.skipif(keras.backend.backend() != "tensorflow", reason="launched from the TensorFlow run")
def test_callbacks_on_jax():
    pytest.importorskip("jax")
    env = dict(os.environ, KERAS_BACKEND="jax")
    r = subprocess.run([sys.executable, "-c", _JAX_SCRIPT], env=env, cwd=REPO, capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out["seen"] == pytest.approx(out["want"], rel=1e-6)
    assert out["eps"] == pytest.approx(0.5)
    for key in ("val_vra", "lipschitz_bound", "epsilon_train", "epsilon"):
        assert key in out["keys"]


def test_converge_bounds_auto_leaves_the_sound_bound_once_it_outlasts_its_share_of_training(monkeypatch):
    """"auto" (the default): the sound bound at validations until one takes more than
    `max_fraction` of the training since the previous one (here 0: the first), then the iterates'
    estimate, with one warning naming the switch; the end of training caches the sound bound
    again, and the switch leaves the training itself untouched (the same weights). Where several
    processes train, each timing its own bound, it keeps the sound bound."""
    x, y = tiny_data(32)
    xt, yt = tiny_data(16, seed=1)
    trained = {}
    for fraction in (0.0, None):
        model = tiny_model()
        conv, probe = ConvergeBounds(max_fraction=fraction), TestCalls()
        with warnings.catch_warnings(record=True) as record:
            warnings.simplefilter("always")
            hist = model.fit(x, y, batch_size=8, epochs=3, validation_data=(xt, yt), verbose=0,
                             callbacks=[conv, probe])
        switches = [w for w in record if "Later validations in this fit use the 'current' bound" in str(w.message)]
        if fraction == 0.0:
            assert conv.validation_kinds == ["sound", "current", "current"]
            assert len(switches) == 1 and "max_fraction=0" in str(switches[0].message)
        else:
            assert conv.validation_kinds == ["sound"] * 3 and not switches
        assert probe.valid and all(v == 1.0 for v in probe.valid)  # every val batch used a cached bound
        assert conv.last_bound_kind == "sound" and model.bound_cache_valid
        assert model.cached_bound >= model.lipschitz_bound("sound") * (1 - 1e-7)  # float32 rounded up
        logged = hist.history["lipschitz_bound"][-1]  # the last validation's bound
        if fraction == 0.0:
            assert logged < conv.last_bound  # the iterates' estimate, below the sound bound
        else:
            assert logged == pytest.approx(conv.last_bound)
        trained[fraction] = [keras.ops.convert_to_numpy(w) for w in model.trainable_weights]
    for a, b in zip(trained[0.0], trained[None]):
        np.testing.assert_array_equal(a, b)
    # several processes (a multi-worker TF_CONFIG) would each time their own bound: "auto" keeps "sound"
    monkeypatch.setenv("TF_CONFIG", json.dumps({"cluster": {"worker": ["localhost:1", "localhost:2"]},
                                                "task": {"type": "worker", "index": 0}}))
    conv = ConvergeBounds(max_fraction=0.0)
    with pytest.warns(UserWarning, match="Validate less often"):
        model.fit(x, y, batch_size=8, epochs=2, validation_data=(xt, yt), verbose=0, callbacks=[conv])
    assert conv.validation_kinds == ["sound", "sound"]
    monkeypatch.delenv("TF_CONFIG")
    # outside fit "auto" caches the sound bound
    model.fit(x, y, batch_size=8, epochs=1, verbose=0, converge_bounds=False)
    conv = ConvergeBounds(max_fraction=0.0)
    model.evaluate(xt, yt, verbose=0, callbacks=[conv])
    assert conv.last_bound_kind == "sound"


def test_converge_bounds_sound_warns_once_when_the_bound_outlasts_its_share_of_training():
    """bound="sound" keeps the sound bound at every validation and reports, once per fit, one that
    took more than `max_fraction` of the training (here 0: any), naming the remedies; None never
    warns; bad values are refused."""
    model = tiny_model()
    x, y = tiny_data(32)
    xt, yt = tiny_data(16, seed=1)
    conv = ConvergeBounds(bound="sound", max_fraction=0.0)
    with pytest.warns(UserWarning, match=r"sound bound before this validation took .*validation_freq") as record:
        model.fit(x, y, batch_size=8, epochs=3, validation_data=(xt, yt), verbose=0, callbacks=[conv])
    assert sum("before this validation took" in str(w.message) for w in record) == 1
    assert conv.validation_kinds == ["sound"] * 3
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        model.fit(x, y, batch_size=8, epochs=2, validation_data=(xt, yt), verbose=0,
                  callbacks=[ConvergeBounds(bound="sound", max_fraction=None)])
    assert not any("before this validation took" in str(w.message) for w in record)
    with pytest.raises(ValueError, match="Received: max_fraction=-1"):
        ConvergeBounds(max_fraction=-1)
    with pytest.raises(ValueError, match="Received: bound='exact'"):
        ConvergeBounds(bound="exact")
