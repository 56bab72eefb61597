"""Runs the core test modules again under KERAS_BACKEND=jax (from the TensorFlow run)."""
import os
import subprocess
import sys

import keras
import numpy as np
import pytest

from conftest import REPO

CORE = ["tests/test_layers.py", "tests/test_model.py", "tests/test_losses.py", "tests/test_attacks.py"]


@pytest.mark.skipif(keras.backend.backend() != "tensorflow", reason="the JAX run is launched from the TF run")
def test_core_suite_passes_on_jax():
    pytest.importorskip("jax")
    env = dict(os.environ, KERAS_BACKEND="jax")
    if os.environ.get("PYTEST_XDIST_WORKER_COUNT"):  # this worker's share of the cores (conftest)
        env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") + " --xla_cpu_multi_thread_eigen=false"
                            f" intra_op_parallelism_threads={os.environ['TF_NUM_INTRAOP_THREADS']}").strip()
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-n", "0", "-p", "no:cacheprovider", "-W", "ignore::DeprecationWarning", *CORE],
        env=env, cwd=REPO, capture_output=True, text=True, timeout=1800,
    )
    tail = "\n".join(result.stdout.splitlines()[-40:])
    print(tail)
    assert result.returncode == 0, f"core tests failed on JAX:\n{tail}\n{result.stderr[-3000:]}"
    assert " passed" in tail and " failed" not in tail


_JAX_FIT = r'''
import sys
import jax, keras, numpy as np
import gloro_keras as gk
from gloro_keras.data import sample_path

devices, out = int(sys.argv[1]), sys.argv[2]
assert jax.device_count() == devices, jax.devices()
if devices > 1:
    keras.distribution.set_distribution(keras.distribution.DataParallel(devices=jax.devices()))
keras.utils.set_random_seed(7)
with np.load(sample_path()) as d:
    x = d["x_train"][:128, ..., None].astype("float32") / 255.0
    y = d["y_train"][:128].astype("int32")
model = gk.GloroLiResNet(L=2, W=8, num_classes=10, input_shape=(28, 28, 1), epsilon=0.3, dense_width=16,
                         power_iterations=3)
model.compile(optimizer=keras.optimizers.SGD(0.05, momentum=0.9), loss="emma", metrics=["vra"])
h = model.fit(x, y, batch_size=32, epochs=2, shuffle=False, verbose=0)
placed = {len(w.value.sharding.device_set) for w in model.weights}
assert placed == {devices}, placed  # every variable lives on every device (replicated)
np.savez(out, loss=np.array(h.history["loss"]), vra=np.array(h.history["vra"]),
         paths=np.array([w.path for w in model.weights]),
         **{f"w{i}": keras.ops.convert_to_numpy(w) for i, w in enumerate(model.weights)})
'''


@pytest.mark.skipif(keras.backend.backend() != "tensorflow", reason="launched from the TF run")
def test_jax_data_parallel_on_two_host_devices_matches_one_device(tmp_path):
    # keras.distribution.DataParallel: each device trains on half of every batch, gradients averaged
    pytest.importorskip("jax")
    runs = {}
    for n in (1, 2):
        env = dict(os.environ, KERAS_BACKEND="jax",
                   XLA_FLAGS=f"--xla_force_host_platform_device_count={n} --xla_cpu_multi_thread_eigen=false")
        out = tmp_path / f"devices{n}.npz"
        r = subprocess.run([sys.executable, "-c", _JAX_FIT, str(n), str(out)], env=env, cwd=REPO,
                           capture_output=True, text=True, timeout=900)
        assert r.returncode == 0, r.stderr[-3000:]
        runs[n] = dict(np.load(out))
    one, two = runs[1], runs[2]
    # SGD, so float noise in the all-reduce stays noise (Adam would blow up the noise of near-zero
    # gradients to a fraction of its step); measured differences: ≤ 4e-6 in every variable
    np.testing.assert_allclose(two["loss"], one["loss"], rtol=1e-5)
    assert one["loss"][-1] < one["loss"][0]
    np.testing.assert_allclose(two["vra"], one["vra"], atol=1 / 128)  # one of the 128 examples at most
    for i, path in enumerate(one["paths"]):
        np.testing.assert_allclose(two[f"w{i}"], one[f"w{i}"], rtol=1e-4, atol=2e-5, err_msg=str(path))


@pytest.mark.skipif(keras.backend.backend() != "tensorflow", reason="launched from the TF run")
def test_gloro_train_mirrored_on_jax_is_keras_data_parallel(tmp_path):
    pytest.importorskip("jax")
    env = dict(os.environ, KERAS_BACKEND="jax",
               XLA_FLAGS="--xla_force_host_platform_device_count=2 --xla_cpu_multi_thread_eigen=false")
    r = subprocess.run([sys.executable, "-m", "gloro_keras.cli.train", "--preset=quickstart", "--strategy=mirrored",
                        "--depth=1", "--width=8", "--dense_width=16", "--batch_size=32", "--epochs=1",
                        "--steps_per_epoch=3", "--test_examples=64", "--power_iterations=2", "--verbose=2",
                        "--train_dtype=float32", f"--model_dir={tmp_path / 'run'}"],
                       env=env, cwd=REPO, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "strategy mirrored (keras.distribution.DataParallel over 2 devices)" in r.stdout
    assert (tmp_path / "run" / "model.keras").is_file()
    r = subprocess.run([sys.executable, "-m", "gloro_keras.cli.train", "--preset=quickstart", "--strategy=mirrored",
                        "--batch_size=33", f"--model_dir={tmp_path / 'odd'}"],
                       env=env, cwd=REPO, capture_output=True, text=True, timeout=900)
    assert r.returncode == 2 and "not divisible by the 2 devices" in r.stderr, r.stderr[-2000:]
