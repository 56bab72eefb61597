"""Shared test helpers: real-data paths, explicit operator matrices, input gradients."""
import os
from pathlib import Path

# Under pytest-xdist each worker gets an equal share of the cores, set before TensorFlow starts
# its thread pools: workers whose thread pools each span every core wait on each other's
# preempted threads.
if os.environ.get("PYTEST_XDIST_WORKER_COUNT"):
    CORE_SHARE = str(max(1, (os.cpu_count() or 1) // int(os.environ["PYTEST_XDIST_WORKER_COUNT"])))
    os.environ.setdefault("TF_NUM_INTRAOP_THREADS", CORE_SHARE)
    os.environ.setdefault("TF_NUM_INTEROP_THREADS", CORE_SHARE)

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

import gloro_keras as gk  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
MNIST_EPS = 0.3
SAMPLE = Path(gk.__file__).parent / "data" / "mnist_sample.npz"  # shipped with the package


def shared_data(name):
    """Path of a file in ../shared/data; skips the test only when that folder is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip("../shared/data is not present on this machine")
    path = SHARED_DATA / name
    assert path.exists(), f"{path} missing although ../shared/data exists"
    return path


def explicit_matrix(linear_fn, input_shape, batch=256):
    """Matrix of a linear map by pushing basis vectors: (out_dim, in_dim), float64."""
    n = int(np.prod(input_shape))
    cols = []
    for start in range(0, n, batch):
        idx = np.arange(start, min(n, start + batch))
        basis = np.zeros((len(idx), n), dtype="float32")
        basis[np.arange(len(idx)), idx] = 1.0
        out = keras.ops.convert_to_numpy(linear_fn(basis.reshape((len(idx),) + tuple(input_shape))))
        cols.append(out.reshape(len(idx), -1).astype("float64"))
    return np.concatenate(cols, axis=0).T


def spectral_norm(matrix):
    return float(np.linalg.svd(matrix, compute_uv=False)[0])


def input_gradient(fn, x):
    """d(sum fn(x))/dx for a function of a batch, on the active backend."""
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        x = tf.convert_to_tensor(x)
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = tf.reduce_sum(fn(x))
        return tape.gradient(y, x).numpy()
    if backend == "jax":
        import jax
        import jax.numpy as jnp

        return np.asarray(jax.grad(lambda z: jnp.sum(fn(z)))(jnp.asarray(x)))
    pytest.skip(f"no gradient helper for backend {backend}")


class PrecisionSpy(keras.layers.Identity):
    """Identity that records whether float32 kernels run at full precision there: on TensorFlow
    when the op runs (TF32 is read then; a `tf.py_function`, so also inside compiled functions),
    on JAX when the call is traced ("highest" is baked into the trace)."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.seen = []

    def _record(self):
        self.seen.append(gk.ops.full_precision_active())
        return 0.0

    def call(self, x):
        if keras.backend.backend() == "tensorflow":
            import tensorflow as tf

            with tf.control_dependencies([tf.py_function(self._record, [], tf.float32)]):
                return tf.identity(x)
        self._record()
        return x


@pytest.fixture(autouse=True)
def _seed():
    keras.utils.set_random_seed(1234)
    yield


@pytest.fixture(scope="session")
def trained_mnist():
    """A GloRo LiResNet trained 316 steps with EMMA on real MNIST (ε = 0.3), and 1000 test images.

    Uses the MNIST sample shipped in the package (10 000 training and 2 000 test images), so it
    runs on a clean clone without ../shared/data."""
    keras.utils.set_random_seed(0)
    d = np.load(SAMPLE)
    x = (d["x_train"][:, :, :, None] / 255.0).astype("float32")
    y = d["y_train"].astype("int32")
    xt = (d["x_test"][:1000, :, :, None] / 255.0).astype("float32")
    yt = d["y_test"][:1000].astype("int32")
    model = gk.GloroLiResNet(L=2, W=32, num_classes=10, input_shape=(28, 28, 1), epsilon=MNIST_EPS, dense_width=128)
    model.compile(
        optimizer=keras.optimizers.AdamW(2e-3, weight_decay=1e-4, global_clipnorm=3.0),
        loss="emma",
        metrics=["clean_acc", "vra", "rejection_rate"],
    )
    model.fit(x, y, epochs=4, batch_size=128, verbose=0)  # 4 × 79 steps
    return model, xt, yt
