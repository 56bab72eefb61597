"""A run's folder and history survive what goes wrong: a second run on the same folder, a
finished run started again, a crash and resume, a loss or bound that turns nan/inf."""
import csv
import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest

import gloro_keras as gk
from gloro_keras.cli import train_config
from gloro_keras.cli.run_dir import RunDirectory
from gloro_keras.train import MetricsLog, NonFiniteTrainingError, StopOnNonFinite, VRALogger


def tiny_model(seed=0):
    keras.utils.set_random_seed(seed)
    model = gk.GloroLiResNet(L=1, W=4, num_classes=3, input_shape=(8, 8, 1), epsilon=0.3, dense_width=8)
    model.compile(optimizer=keras.optimizers.AdamW(1e-2), loss="emma", metrics=["clean_acc", "vra"])
    return model


def tiny_data(n=32, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.uniform(size=(n, 8, 8, 1)).astype("float32")
    return x, (x.mean(axis=(1, 2, 3)) * 3).astype("int32").clip(0, 2)


# ----------------------------------------------------------------------------- model_dir
def test_a_finished_run_is_not_trained_over(tmp_path):
    run_dir = RunDirectory(tmp_path)
    assert run_dir.check_start() is None  # empty folder: a fresh run
    for name in ("model.keras", "metrics.csv", "metrics.json"):
        (tmp_path / name).write_text("old")
    with pytest.raises(train_config.ConfigError, match="finished run.*--overwrite"):
        run_dir.check_start()
    assert (tmp_path / "metrics.csv").read_text() == "old"  # untouched
    assert run_dir.check_start(overwrite=True) is None
    assert not any((tmp_path / n).exists() for n in ("model.keras", "metrics.csv", "metrics.json"))


def test_an_interrupted_run_resumes_from_its_backup(tmp_path):
    (tmp_path / "backup").mkdir()
    (tmp_path / "backup" / "training_metadata.json").write_text(json.dumps({"epoch": 4, "batch": 0}))
    (tmp_path / "model.keras").write_text("from an earlier run")
    run_dir = RunDirectory(tmp_path)
    assert not run_dir.finished and run_dir.check_start(resume=True) == 4
    with pytest.raises(train_config.ConfigError, match="interrupted run.*--noresume"):
        run_dir.check_start(resume=False)


def test_a_second_run_on_the_same_folder_is_refused(tmp_path):
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (tmp_path / ".lock").write_text(json.dumps({"pid": other.pid, "host": os.uname().nodename,
                                                    "started": "12:00"}))
        with pytest.raises(train_config.ConfigError, match=f"in use by another gloro-train \\(pid {other.pid}"):
            RunDirectory(tmp_path).check_start()
        with pytest.raises(train_config.ConfigError, match="in use"):
            RunDirectory(tmp_path).lock().__enter__()
    finally:
        other.kill()
        other.wait()
    # the holder is gone: its lock is stale and taken over, then released
    with RunDirectory(tmp_path).lock():
        assert json.loads((tmp_path / ".lock").read_text())["pid"] == os.getpid()
    assert not (tmp_path / ".lock").exists()


def test_warmup_longer_than_the_run_is_shortened_or_refused():
    fv = train_config.flags.FlagValues()
    train_config.define_flags(fv)
    fv(["gloro-train", "--epochs=5"])
    cfg = train_config.config_from_flags(fv)
    assert cfg["warmup_epochs"] == 0.5 and "warm-up" in cfg["notes"][0]
    fv = train_config.flags.FlagValues()
    train_config.define_flags(fv)
    fv(["gloro-train", "--epochs=5", "--warmup_epochs=5"])
    with pytest.raises(train_config.ConfigError, match="warmup_epochs=5 is not shorter than --epochs=5"):
        train_config.config_from_flags(fv)


# ----------------------------------------------------------------------------- history
def test_metrics_log_counts_from_one_and_continues_a_resumed_run(tmp_path):
    path = tmp_path / "metrics.csv"
    x, y = tiny_data()
    model = tiny_model()
    log = MetricsLog(path)
    model.fit(x, y, batch_size=8, epochs=2, validation_data=(x, y), validation_freq=[2],
              callbacks=[VRALogger(), log], verbose=0)
    with open(path) as f:
        rows = list(csv.DictReader(f))
    assert [r["epoch"] for r in rows] == ["1", "2"]
    assert rows[0]["val_vra"] == "" and rows[1]["val_vra"] != ""  # evaluated after epoch 2 only
    assert not any(c.startswith("val_") and c[4:] in ("lr", "epsilon", "epsilon_train", "lipschitz_bound")
                   for c in rows[0])  # no column that is never filled
    # a resumed run (epochs 2 and 3 again after epoch 1) keeps row 1 and replaces row 2
    resumed = MetricsLog(path, resume=True)
    model.fit(x, y, batch_size=8, initial_epoch=1, epochs=3, callbacks=[VRALogger(), resumed], verbose=0)
    assert resumed.history["epoch"] == [1, 2, 3]
    assert resumed.history["loss"][0] == pytest.approx(float(rows[0]["loss"]))
    with open(path) as f:
        assert [r["epoch"] for r in csv.DictReader(f)] == ["1", "2", "3"]


class PoisonWeights(keras.callbacks.Callback):
    """Sets one kernel entry to nan when `epoch` begins (what a diverged step leaves)."""

    def __init__(self, epoch):
        super().__init__()
        self.epoch = epoch

    def on_epoch_begin(self, epoch, logs=None):
        if epoch == self.epoch:
            kernel = self.model.network.layers[-1].kernel
            value = keras.ops.convert_to_numpy(kernel).copy()
            value[0, 0] = np.nan
            kernel.assign(value)


def test_a_nan_loss_stops_training_and_keeps_the_last_good_epoch(tmp_path):
    x, y = tiny_data()
    model = tiny_model()
    backup = tmp_path / "backup"
    callbacks = [PoisonWeights(epoch=1), VRALogger(), MetricsLog(tmp_path / "m.csv"), StopOnNonFinite(),
                 keras.callbacks.BackupAndRestore(str(backup))]
    with pytest.raises(NonFiniteTrainingError, match="epoch 2, batch 1: the training loss is nan"):
        model.fit(x, y, batch_size=8, epochs=3, callbacks=callbacks, verbose=0)
    meta = json.loads((backup / "training_metadata.json").read_text())
    assert meta["epoch"] == 1  # epoch 1 finished and backed up; the nan epoch never was
    restored = tiny_model(seed=5)
    restored.build((None, 8, 8, 1))
    restored.load_weights(str(backup / "latest.weights.h5"))
    assert all(np.isfinite(w).all() for w in restored.get_weights())


def test_an_infinite_bound_stops_training_at_the_end_of_the_epoch():
    guard = StopOnNonFinite()
    guard.on_epoch_end(0, {"loss": 1.0, "lipschitz_bound": 3.0})
    with pytest.raises(NonFiniteTrainingError, match="epoch 4: the training lipschitz_bound is inf"):
        guard.on_epoch_end(3, {"loss": 1.0, "lipschitz_bound": float("inf")})
