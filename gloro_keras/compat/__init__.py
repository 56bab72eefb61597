"""The original gloro's API (TF/Keras 2, klasleino/gloro) on gloro-keras.

Port gloro code by replacing `gloro` with `gloro_keras.compat` in its imports:

    from gloro_keras.compat.models import GloroNet            # was: from gloro.models import GloroNet
    from gloro_keras.compat.layers import Dense, MinMax       # was: from gloro.layers import ...
    from gloro_keras.compat.training import losses, callbacks, metrics

Every name of the original API lives here and only here; gloro-keras's own API
(`gloro_keras.GloroModel`, `gloro_keras.layers.LipschitzDense`, ...) has one name per
meaning. Where this package deliberately differs from gloro (because gloro's behaviour was
unsafe), the README's "Porting from gloro" section says so.
"""
from gloro_keras.compat import layers, lc, models, relaxations, training
from gloro_keras.compat.models import GloroNet
from gloro_keras.compat.relaxations import AffinityGloroNet, RtkGloroNet

__all__ = ["AffinityGloroNet", "GloroNet", "RtkGloroNet", "layers", "lc", "models", "relaxations", "training"]
