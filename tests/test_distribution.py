"""`gloro-train --strategy=mirrored|multi_worker` on CPU: for the same global batch, seed and
data order, a few steps give the same losses and weights as one device."""
import json
import os
import socket
import subprocess
import sys

import keras
import numpy as np
import pytest

import gloro_keras.train  # noqa: F401  (registers gloro_keras>AdamW for loading the models)
from conftest import REPO

pytestmark = pytest.mark.skipif(keras.backend.backend() != "tensorflow", reason="tf.distribute needs TensorFlow")

# Small LiResNet, EMMA, no shuffling, no augmentation: runs are comparable step by step.
COMMON = ["--dataset=quickstart", "--depth=2", "--width=8", "--dense_width=16", "--batch_size=32",
          "--epochs=3", "--steps_per_epoch=2", "--noshuffle", "--noaugment", "--test_examples=64",
          "--lr=0.01", "--warmup_epochs=0", "--loss=emma", "--power_iterations=3", "--seed=7",
          "--noresume", "--verbose=0", "--bound=power", "--train_dtype=float32"]

# Splits the CPU into N logical devices before TensorFlow initializes them, then runs gloro-train.
LAUNCHER = r"""
import sys
import tensorflow as tf
n = int(sys.argv[1])
if n > 1:
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration() for _ in range(n)])
from gloro_keras.cli import train
train.run(["gloro-train"] + sys.argv[2:])
"""


def launch(n_devices, args, env=None):
    return subprocess.Popen([sys.executable, "-c", LAUNCHER, str(n_devices), *args], cwd=REPO,
                            env=dict(os.environ, **(env or {})), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def finish(proc, timeout=600):
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        pytest.fail(f"timed out:\n{err[-3000:]}")
    assert proc.returncode == 0, err[-4000:]
    return out


def load_run(model_dir):
    model = keras.saving.load_model(os.path.join(model_dir, "model.keras"), compile=False)
    metrics = json.loads(open(os.path.join(model_dir, "metrics.json")).read())
    return model, metrics


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    model_dir = str(tmp_path_factory.mktemp("dist") / "single")
    finish(launch(1, COMMON + [f"--model_dir={model_dir}"]))
    return load_run(model_dir)


def assert_same_run(run, reference):
    (model, metrics), (ref_model, ref_metrics) = run, reference
    np.testing.assert_allclose(metrics["history"]["loss"], ref_metrics["history"]["loss"], rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(metrics["history"]["val_loss"], ref_metrics["history"]["val_loss"],
                               rtol=1e-4, atol=1e-6)
    assert len(model.weights) == len(ref_model.weights)
    moved, worst = 0.0, 0.0
    for w, r in zip(model.weights, ref_model.weights):
        a, b = keras.ops.convert_to_numpy(w), keras.ops.convert_to_numpy(r)
        if "iterate" in w.path:
            # a power iterate is a direction in a nearly degenerate top singular subspace: float
            # noise (another summation order: oneDNN's kernels, a split batch) turns it while the
            # bound it gives moves only to second order (compared below, rel 1e-4)
            cos = float(np.vdot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b)))
            assert cos > 0.999, (w.path, cos)
            continue
        # Adam normalizes each coordinate, so float noise in near-zero gradients moves a
        # weight by up to a fraction of lr (0.01); 1e-4 is 1% of one step.
        np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-4, err_msg=w.path)
        worst = max(worst, float(np.abs(a - b).max()))
    for w in ref_model.trainable_weights:
        moved = max(moved, float(np.abs(keras.ops.convert_to_numpy(w)).max()))
    assert moved > 0
    print(f"max |weight difference| vs one device: {worst:.3g}; losses {metrics['history']['loss']} "
          f"vs {ref_metrics['history']['loss']}")
    for a, b in zip(metrics["final"], ref_metrics["final"]):
        assert a["vra"] == pytest.approx(b["vra"], abs=1e-6)
        assert a["lipschitz_bound"] == pytest.approx(b["lipschitz_bound"], rel=1e-4)


def test_reference_run_trains(reference):
    _, metrics = reference
    losses = metrics["history"]["loss"]
    assert len(losses) == 3 and all(np.isfinite(losses))


def test_mirrored_two_cpu_replicas_match_one_device(reference, tmp_path):
    model_dir = str(tmp_path / "mirrored")
    out = finish(launch(2, COMMON + ["--strategy=mirrored", f"--model_dir={model_dir}", "--verbose=2"]))
    assert "strategy mirrored (2 replicas)" in out
    assert_same_run(load_run(model_dir), reference)


# Adam hides a wrong gradient scale; plain SGD does not. Same model and batches, one device
# vs MirroredStrategy over two logical CPUs, for each GloRo loss (and a relaxed top-3 model), with and without active
# global-norm clipping (which must apply to the aggregated gradient: plain Keras clips each
# replica's part before the all-reduce, hence `ClipAfterAllReduce`).
SGD_SCRIPT = r"""
import json
import tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration() for _ in range(2)])
import keras, numpy as np
import gloro_keras as gk
from gloro_keras import data
from gloro_keras.train.optimizers import ClipAfterAllReduce


class FixedSGD(ClipAfterAllReduce, keras.optimizers.SGD):
    pass

train_raw, _, _ = data.load("quickstart")
ds = data.make_pipeline(train_raw, 32, training=False, drop_remainder=True).take(4)

def run(strategy, loss, clip, relaxation=None):
    keras.utils.set_random_seed(3)
    def build():
        m = gk.GloroLiResNet(L=2, W=8, num_classes=10, input_shape=(28, 28, 1), epsilon=0.3, dense_width=16,
                             power_iterations=3, relaxation=relaxation)
        m.compile(optimizer=FixedSGD(0.05, global_clipnorm=clip), loss=loss, metrics=["vra"])
        return m
    if strategy is None:
        m = build()
    else:
        with strategy.scope():
            m = build()
    init = [keras.ops.convert_to_numpy(w).copy() for w in m.trainable_weights]
    m.epsilon_train = 0.2
    h = m.fit(ds, epochs=1, verbose=0)
    final = [keras.ops.convert_to_numpy(w) for w in m.trainable_weights]
    return h.history["loss"][0], init, final

mirrored = tf.distribute.MirroredStrategy()
assert mirrored.num_replicas_in_sync == 2
out = {}
for loss, clip, relaxation in [("emma", None, None), ("emma", 0.05, None), ("trades.2", None, None),
                               ("gloro_crossentropy", 0.05, None), ("gloro_crossentropy", None, "topk:3")]:
    l1, i1, f1 = run(None, loss, clip, relaxation)
    l2, i2, f2 = run(mirrored, loss, clip, relaxation)
    out[f"{loss}/{clip}/{relaxation}"] = dict(
        loss=[l1, l2],
        init_diff=max(float(np.abs(a - b).max()) for a, b in zip(i1, i2)),
        diff=max(float(np.abs(a - b).max()) for a, b in zip(f1, f2)),
        moved=max(float(np.abs(a - b).max()) for a, b in zip(f1, i1)),
    )
print(json.dumps(out))
"""


def test_mirrored_sgd_updates_match_one_device_for_every_loss():
    r = subprocess.run([sys.executable, "-c", SGD_SCRIPT], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-4000:]
    results = json.loads(r.stdout.strip().splitlines()[-1])
    for name, res in results.items():
        assert res["init_diff"] == 0.0, name
        assert res["loss"][1] == pytest.approx(res["loss"][0], rel=1e-5), name
        assert res["moved"] > 1e-4, name
        assert res["diff"] <= 1e-3 * res["moved"] + 1e-6, (name, res)


def _free_ports(n):
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def test_multi_worker_two_local_workers_match_one_device(reference, tmp_path):
    model_dir = str(tmp_path / "multi")
    workers = [f"127.0.0.1:{p}" for p in _free_ports(2)]
    procs = []
    for i in range(2):
        tf_config = json.dumps({"cluster": {"worker": workers}, "task": {"type": "worker", "index": i}})
        procs.append(launch(1, COMMON + ["--strategy=multi_worker", f"--model_dir={model_dir}", "--verbose=2"],
                            env={"TF_CONFIG": tf_config}))
    outs = [finish(p) for p in procs]
    assert "strategy multi_worker (2 replicas)" in outs[0]
    assert not os.path.exists(os.path.join(model_dir, ".worker1"))  # the non-chief cleaned up
    assert_same_run(load_run(model_dir), reference)


def test_multi_worker_without_tf_config_is_an_error(tmp_path):
    r = subprocess.run([sys.executable, "-m", "gloro_keras.cli.train", "--strategy=multi_worker",
                        "--dataset=quickstart", f"--model_dir={tmp_path}"], cwd=REPO, capture_output=True,
                       text=True, timeout=300, env={k: v for k, v in os.environ.items() if k != "TF_CONFIG"})
    assert r.returncode != 0 and "TF_CONFIG" in r.stderr


# Mixed precision under MirroredStrategy: the replicas' training calls are traced in parallel
# threads; every one of them must trace the network in bfloat16, and evaluation in float32.
BF16_SCRIPT = r"""
import json, threading
import tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration() for _ in range(2)])
import keras, numpy as np
import gloro_keras as gk
from gloro_keras.layers import MinMax

seen = []
orig = MinMax.call
def spy(self, z):
    if not isinstance(z, keras.KerasTensor):  # not Keras's symbolic shape inference
        seen.append((threading.get_ident(), keras.backend.standardize_dtype(z.dtype)))
    return orig(self, z)
MinMax.call = spy

rng = np.random.default_rng(0)
x = rng.random((128, 28, 28, 1)).astype("float32")
y = rng.integers(0, 10, 128)

def run(strategy):
    keras.utils.set_random_seed(5)
    def build():
        m = gk.GloroLiResNet(L=2, W=8, num_classes=10, input_shape=(28, 28, 1), epsilon=0.3, dense_width=16,
                             power_iterations=3, train_dtype="bfloat16")
        m.compile(optimizer=keras.optimizers.SGD(0.05), loss="emma", metrics=["vra"])
        return m
    with (strategy.scope() if strategy else tf.name_scope("one")):
        m = build()
    seen.clear()
    h = m.fit(x, y, batch_size=32, epochs=2, shuffle=False, verbose=0)
    fit_seen = list(seen)
    seen.clear()
    m.evaluate(x, y, batch_size=32, verbose=0)
    policies = sorted({l.dtype_policy.name for l in m.network.layers})
    main = threading.main_thread().ident
    # (the main thread also runs Keras's symbolic build, a float32 shape inference, not executed)
    return dict(loss=h.history["loss"], fit=sorted({d for t, d in fit_seen if t != main or strategy is None}),
                replica_threads=len({t for t, _ in fit_seen if t != main}),
                eval=sorted({d for _, d in seen}), policies=policies)

mirrored = tf.distribute.MirroredStrategy()
assert mirrored.num_replicas_in_sync == 2
print(json.dumps(dict(one=run(None), mirrored=run(mirrored))))
"""


def test_mirrored_bfloat16_training_traces_every_replica_in_bfloat16():
    r = subprocess.run([sys.executable, "-c", BF16_SCRIPT], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-4000:]
    res = json.loads(r.stdout.strip().splitlines()[-1])
    one, mir = res["one"], res["mirrored"]
    assert "bfloat16" in one["fit"] and one["eval"] == ["float32"] and one["policies"] == ["float32"], one
    # both replica threads traced the training step, in bfloat16 only
    assert mir["replica_threads"] == 2 and mir["fit"] == ["bfloat16"], mir
    assert mir["eval"] == ["float32"] and mir["policies"] == ["float32"], mir
    assert all(np.isfinite(mir["loss"]))
    # bfloat16 rounding differs with the per-replica batch split; the runs still agree closely
    np.testing.assert_allclose(mir["loss"], one["loss"], rtol=2e-2)
