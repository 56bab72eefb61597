"""Runs the core test modules again under KERAS_BACKEND=jax (from the TensorFlow run)."""
import os
import subprocess
import sys

import keras
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
