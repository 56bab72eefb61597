"""`GloroNet`: `GloroModel` under the original gloro's name, with its method names."""
import keras
import numpy as np

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

    Example:

        x = keras.Input((5,))
        y = Dense(3)(MinMax()(Dense(8)(x)))
        g = GloroNet(x, y, epsilon=0.5)
        g.compile(optimizer="adam", loss="sparse_crossentropy", metrics=["clean_acc", "vra"])
    """

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

    def lipschitz_constant(self, bound="sound"):
        """Pairwise margin bounds K_ij, with −1 on the diagonal (gloro's layout)."""
        kmat = self.margin_bound_matrix(bound)
        np.fill_diagonal(kmat, -1.0)
        return kmat

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
