"""`GloroNet`: `GloroModel` under the original gloro's name, with its method names."""
import json
import os
import tarfile
import tempfile

import keras
import numpy as np
from keras import ops

from gloro_keras.compat.training import losses as gloro_losses
from gloro_keras.compat.training import metrics as gloro_metrics
from gloro_keras.models import GloroModel


@keras.saving.register_keras_serializable(package="gloro_keras")
class GloroNet(GloroModel):
    """`GloroModel` with the original gloro's names.

    Constructed as gloro's: `GloroNet(inputs, outputs, epsilon)`, `GloroNet(model=f,
    epsilon=ε)`; compiled with gloro's loss and metric names (`"sparse_crossentropy"`,
    `"sparse_trades_kl.1.5"`, `"vra_sparse"`, ...). Method names map to gloro-keras's:

    | gloro                           | gloro-keras                               |
    | ------------------------------- | ----------------------------------------- |
    | `f`                             | `network`                                 |
    | `predict_clean(x)`              | `predict_logits(x)`                       |
    | `refresh_iterates()`            | `converge_bounds()`                        |
    | `freeze_lipschitz_constant()`   | `update_bound_cache()`                    |
    | `lipschitz_constant()`          | `margin_bound_matrix()`, diagonal −1      |
    | `lipschitz_constant(X)`         | per input: K_ji for the predicted j, −1 at j |
    | `sub_lipschitz`                 | `lipschitz_bound("current")` (advanced)   |
    | `run_lc_to_convergence()`       | `converge_bounds()`                        |
    | `freeze_lc()` / `unfreeze_lc()` | `update_bound_cache()` / the next step     |
    | `fit(update_iterates=False)`    | `fit(converge_bounds=False)`               |
    | `save("m.gloronet")`, `GloroNet.load_model("m.gloronet")` | `.keras` inside a gloronet archive |

    Bounds that certify (`lipschitz_constant`, `freeze_lc`, `certified_radius`) are the sound
    float64 bounds by default, not the power-iteration estimate gloro used.

    Example:

        x = keras.Input((5,))
        y = Dense(3)(MinMax()(Dense(8)(x)))
        g = GloroNet(x, y, epsilon=0.5)
        g.compile(optimizer="adam", loss="sparse_crossentropy", metrics=["clean_acc", "vra"])
    """

    def __init__(self, *args, _lc_frozen=False, _hardcoded_lc=None, _skip_init=False, **kwargs):
        super().__init__(*args, **kwargs)  # gloro's private config keys are accepted and ignored:
        # a frozen bound is recomputed (soundly) from the weights, never trusted from a file

    def compile(self, optimizer="rmsprop", loss=None, metrics=None, **kwargs):
        """`GloroModel.compile` that also resolves gloro's loss and metric names."""
        if loss is not None:
            loss = gloro_losses.get(loss)
        if metrics is not None:
            metrics = [gloro_metrics.get(m) for m in metrics]
        super().compile(optimizer=optimizer, loss=loss, metrics=metrics, **kwargs)

    @property
    def f(self):
        """The logits network."""
        return self.network

    def lipschitz_constant(self, X=None, y=None, bound="sound"):
        """Margin bounds K_ji as gloro laid them out, as a float64 tensor (gloro returned tensors).

        Without X: the (m, m) matrix, row j the predicted class, −1 on the diagonal. With X
        (or logits y): (N, m), row n holding K_ji for the class j predicted for X[n], −1 where
        the logit equals the row's maximum."""
        kmat = self.margin_bound_matrix(bound)
        if X is None and y is None:
            np.fill_diagonal(kmat, -1.0)
            return ops.convert_to_tensor(kmat)
        logits = np.asarray(y if y is not None else self.predict_logits(X), np.float64)
        rows = kmat[np.argmax(logits, axis=-1)]
        rows[logits == logits.max(axis=-1, keepdims=True)] = -1.0
        return ops.convert_to_tensor(rows)

    @property
    def sub_lipschitz(self):
        """K, the product of the body's bounds: the cached bound when frozen, else the power
        estimate after one more training call's worth of iterations (as gloro read it)."""
        if self.lc_frozen:
            return ops.convert_to_tensor(self.cached_bound, "float32")
        for layer in self.bounded_layers:
            layer.power_estimate(training=True)
        return ops.convert_to_tensor(self.lipschitz_bound("current"), "float32")

    @property
    def lc_frozen(self):
        return self.bound_cache_valid

    def run_lc_to_convergence(self, threshold=1e-4, max_tries=100):
        """Converge every layer's power iteration; returns self."""
        self.converge_bounds(max_iterations=max(1, int(max_tries)) * 25, tolerance=threshold)
        return self

    def freeze_lc(self, threshold=1e-4, max_tries=100, bound="sound"):
        """Converge, then fix the (sound) bound inference uses until the next training step."""
        self.run_lc_to_convergence(threshold, max_tries)
        self.update_bound_cache(bound)
        return self

    def unfreeze_lc(self):
        """Inference computes the bound per call again (as after a training step)."""
        self._bound_cache_valid.assign(0.0)
        return self

    def predict_with_certified_radius(self, X, batch_size=256):
        """(the (N, m) logits, the certified radius of each prediction)."""
        cert = self.margin_certificate(X, batch_size=batch_size)
        return cert.logits, cert.radius()

    def fit(self, *args, update_iterates=True, **kwargs):
        """`GloroModel.fit`; `update_iterates=False` adds no `UpdatePowerIterates`."""
        kwargs.setdefault("converge_bounds", update_iterates)
        return super().fit(*args, **kwargs)

    # -- gloro's .gloronet files --------------------------------------------------------
    def save(self, filepath, *args, **kwargs):
        """`keras.Model.save`; a name ending in `.gloronet` writes gloro's archive layout (a
        gzipped tar of `config.json` and the network), with the network as a `.keras` file."""
        path = os.fspath(filepath)
        if not path.endswith(".gloronet"):
            return super().save(filepath, *args, **kwargs)
        with tempfile.TemporaryDirectory() as tmp:
            self.network.save(os.path.join(tmp, "f.keras"))
            with open(os.path.join(tmp, "config.json"), "w") as f:
                json.dump({"epsilon": float(self.epsilon), "_lc_frozen": self.lc_frozen,
                           "_hardcoded_lc": self.cached_bound, **self._gloronet_config()}, f)
            partial = path + ".partial"
            with tarfile.open(partial, "w:gz") as tar:
                for name in ("f.keras", "config.json"):
                    tar.add(os.path.join(tmp, name), arcname=name)
            os.replace(partial, path)

    @classmethod
    def load_model(cls, file_name, custom_objects=None, converge=True):
        """A model saved with `save("….gloronet")` (also gloro's own archives, whose `f.h5`
        Keras loads when its layers are known)."""
        path = os.fspath(file_name)
        if not path.endswith(".gloronet") and os.path.exists(path + ".gloronet"):
            path += ".gloronet"
        if not tarfile.is_tarfile(path):
            raise ValueError(f"{path} is not a .gloronet archive")
        with tempfile.TemporaryDirectory() as tmp:
            with tarfile.open(path, "r:gz") as tar:
                tar.extractall(tmp, filter="data")
            root = tmp
            entries = os.listdir(tmp)
            if len(entries) == 1 and os.path.isdir(os.path.join(tmp, entries[0])):
                root = os.path.join(tmp, entries[0])  # gloro's archives hold one folder
            with open(os.path.join(root, "config.json")) as f:
                config = json.load(f)
            net_file = next(os.path.join(root, n) for n in ("f.keras", "f.h5") if os.path.exists(os.path.join(root, n)))
            network = keras.models.load_model(net_file, custom_objects=custom_objects, compile=False)
        model = cls(model=network, epsilon=config["epsilon"], **cls._from_gloronet_config(config))
        if config.get("_lc_frozen"):
            model.freeze_lc()  # recomputed from the weights, never read from the file
        elif converge:
            model.run_lc_to_convergence()
        return model

    def _gloronet_config(self):
        """Keys a subclass adds to a `.gloronet` archive's config.json."""
        return {}

    @classmethod
    def _from_gloronet_config(cls, config):
        """Constructor keywords a subclass reads from a `.gloronet` config.json."""
        return {}

    def predict_clean(self, x, batch_size=256, verbose=0):
        """The m logits of the network (`predict_logits`)."""
        return self.predict_logits(x, batch_size=batch_size, verbose=verbose)

    def refresh_iterates(self, max_iterations=500, tolerance=1e-6):
        """Converge the power iterates (`converge_bounds`)."""
        return self.converge_bounds(max_iterations=max_iterations, tolerance=tolerance)

    def freeze_lipschitz_constant(self, bound="sound"):
        """Fix the bound inference uses until the next training step (`update_bound_cache`)."""
        return self.update_bound_cache(bound)


__all__ = ["GloroNet"]
