"""gloro's `RtkGloroNet` and `AffinityGloroNet` (`gloro.relaxations.models`)."""
import keras
import numpy as np

from gloro_keras.compat.models import GloroNet
from gloro_keras.compat.relaxations.affinity_sets import AffinitySet
from gloro_keras.models import RelaxedGloroModel
from gloro_keras.ops.relaxations import Affinity, Relaxation, TopK


class _RelaxedGloroNet(GloroNet, RelaxedGloroModel):
    """gloro's relaxed models: `GloroNet`'s names on a `RelaxedGloroModel`."""

    def __init__(self, inputs, outputs, epsilon, relaxation, model, **kwargs):
        network = kwargs.pop("network", None) or model  # `network`: from a .keras file's config
        if network is None:
            kwargs.update(inputs=inputs, outputs=outputs)
        else:
            kwargs["network"] = network
        super().__init__(epsilon=epsilon, relaxation=relaxation, **kwargs)

    def _set_relaxation(self, relaxation):
        relaxation = Relaxation.get(relaxation, self.num_classes)
        relaxation.check(self.num_classes)
        object.__setattr__(self, "relaxation", relaxation)
        if self.gloro_loss is not None:
            self.gloro_loss.relaxation = relaxation
        # the compiled steps were traced with the old k: trace again
        self.train_function = self.test_function = self.predict_function = None

    def predict_with_guarantee(self, X, batch_size=256):
        """[[y, ⊥] (N, m+1), guarantee (N, k)]: column k'−1 is 1 where the top-k' set is certified."""
        cert = self.relaxed_certificate(X, batch_size=batch_size)
        return [self.predict(X, batch_size=batch_size, verbose=0), cert.guarantee(self.epsilon).astype(np.int32)]

    def predict_with_loosest_guarantee(self, X, batch_size=256):
        """[[y, ⊥], the largest certified k' (−1 where none)]."""
        pred, g = self.predict_with_guarantee(X, batch_size)
        ks = np.max(np.where(g > 0, np.arange(1, g.shape[1] + 1)[None, :], 0), axis=1)
        return [pred, np.where(ks > 0, ks, -1)]

    def predict_with_strictest_guarantee(self, X, batch_size=256):
        """[[y, ⊥], the smallest certified k' (−1 where none)]."""
        pred, g = self.predict_with_guarantee(X, batch_size)
        first = np.argmax(g > 0, axis=1) + 1
        return [pred, np.where(np.any(g > 0, axis=1), first, -1)]


@keras.saving.register_keras_serializable(package="gloro")
class RtkGloroNet(_RelaxedGloroNet):
    """gloro's relaxed top-k GloRo net: `RtkGloroNet(x, y, epsilon, k)` (or `model=f`).

    ⊥ wins where no k' ≤ k has a certified top-k' set (`RelaxedGloroModel`); metric
    "rtk_vra". `k` is settable (the next `fit`/`evaluate` traces again).
    """

    def __init__(self, inputs=None, outputs=None, epsilon=None, k=None, *, model=None, relaxation=None,
                 **kwargs):
        if relaxation is None:
            if k is None:
                raise ValueError("RtkGloroNet needs k, the largest top-k set to certify.")
            relaxation = TopK(k)
        super().__init__(inputs, outputs, epsilon, relaxation, model, **kwargs)

    @property
    def k(self):
        return self.relaxation.k

    @k.setter
    def k(self, value):
        self._set_relaxation(TopK(value))

    def _gloronet_config(self):
        return {"k": self.k}

    @classmethod
    def _from_gloronet_config(cls, config):
        return {"k": int(config["k"])}


@keras.saving.register_keras_serializable(package="gloro")
class AffinityGloroNet(_RelaxedGloroNet):
    """gloro's affinity GloRo net: `AffinityGloroNet(x, y, epsilon, affinity_sets)`, sets as
    lists of class indices, a one-hot array, a string `"[0,2][1][3]"` or an `AffinitySet`.
    Metric "affinity_vra". A class in no set is never certified."""

    def __init__(self, inputs=None, outputs=None, epsilon=None, affinity_sets=None, *, model=None,
                 relaxation=None, **kwargs):
        if relaxation is None:
            if affinity_sets is None:
                raise ValueError("AffinityGloroNet needs affinity_sets, e.g. [[0, 2], [1], [3]].")
            if isinstance(affinity_sets, AffinitySet):
                affinity_sets = affinity_sets.mask
            relaxation = Affinity(affinity_sets)
        super().__init__(inputs, outputs, epsilon, relaxation, model, **kwargs)

    @property
    def affinity_sets(self):
        return AffinitySet.from_class_indices(self.relaxation.sets, self.num_classes)

    @property
    def k(self):
        return self.relaxation.k

    @k.setter
    def k(self, value):
        raise ValueError("An AffinityGloroNet's k is its largest affinity set's size; set the sets instead.")

    def _gloronet_config(self):
        return {"affinity_sets": str(self.affinity_sets)}

    @classmethod
    def _from_gloronet_config(cls, config):
        return {"affinity_sets": config["affinity_sets"]}


__all__ = ["AffinityGloroNet", "RtkGloroNet"]
