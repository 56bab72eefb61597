"""GloRo network certifying relaxed robustness: relaxed top-K or affinity sets."""
import keras
from keras import ops

from gloro_keras import losses as gloro_losses
from gloro_keras import metrics as gloro_metrics
from gloro_keras.models.gloro_model import GloroModel
from gloro_keras.ops.epsilon import check_epsilon
from gloro_keras.ops.margins import strict_bottom_logit
from gloro_keras.ops.relaxations import (
    Relaxation,
    RelaxedCertificate,
    certified_k,
    relaxed_bottom_logit,
    relaxed_margins,
    relaxed_outputs,
    top_classes,
)


@keras.saving.register_keras_serializable(package="gloro_keras")
class RelaxedGloroModel(GloroModel):
    """A GloRo network whose ⊥ certifies *relaxed* robustness (Leino & Fredrikson, 2021).

    With S_k' the top-k' classes of an input, the input is certified at k' when every class of
    S_k' beats every class outside it throughout the ε-ball (so the top-k' set, and with it
    the prediction's set of candidates, cannot change), for some k' ≤ K (`"topk:K"`), or for
    some k' whose set lies inside one of the affinity sets (`"affinity:[0,2][1][3]"`):

        ⊥ = max y − max_k' min_{l ≤ k', i ∉ S_k'} (y_{j_l} − y_i − ε·K_{j_l,i}).

    argmax over [y, ⊥] is then the top class where some k' is certified, ⊥ elsewhere; inference
    calls and `certify` include the float32 rounding terms, as `GloroModel`'s.

    Outputs: `predict` gives the (N, m+1) [y, ⊥]; a call gives (N, m+2) [y, ⊥, k*], k* the
    largest certified k' (0 where none), which the metric "relaxed_vra" reads (other metrics
    see the first m+1 columns). Train with "gloro_crossentropy" or "trades" (their ⊥ is the
    relaxed one).

    Args:
        network, epsilon, ...: as `GloroModel`.
        relaxation: "topk:K", "affinity:[0,2][1][3]", or `gloro_keras.ops.relaxations.TopK(K)`
            / `Affinity(sets)` (sets as lists of class indices, a one-hot array or a string).

    Example:
    >>> model = RelaxedGloroModel(network, epsilon=0.3, relaxation="topk:2")
    >>> model.compile(optimizer="adam", loss="gloro_crossentropy", metrics=["vra", "relaxed_vra"])
    >>> model.certified_k(x_test)          # largest certified k' per input
    """

    def __init__(self, *args, relaxation=None, **kwargs):
        super().__init__(*args, **kwargs)
        if relaxation is None:
            raise ValueError("RelaxedGloroModel needs `relaxation`: 'topk:K' or 'affinity:[..][..]'.")
        relaxation = Relaxation.get(relaxation, self.num_classes)
        relaxation.check(self.num_classes)
        object.__setattr__(self, "relaxation", relaxation)

    # -- forward ---------------------------------------------------------------------
    def call(self, inputs, training=False):
        """Inference: (B, m+2) [y, ⊥, k*] (rounding-aware). Training: the dict of
        `GloroModel.call` with outputs [y, ⊥, k*] from this step's bound."""
        if not training and self._rounding is not None:
            return self._inference_call(inputs)
        logits, kmat, eps = self._exact_forward(inputs, training)
        out = relaxed_outputs(logits, kmat, eps, self.relaxation)
        if training:
            return {"outputs": out, "logits": logits, "margin_bounds": kmat, "epsilon": eps}
        m = self.num_classes
        guarded = self._guarded_outputs(logits, strict_bottom_logit(logits, out[:, m]))
        return self._with_certified_k(guarded, out[:, m + 1])

    def _inference_call(self, inputs):
        k = self.relaxation.k
        logits, thr, order = self._rounded_thresholds(inputs, lambda y: top_classes(y, k))
        margins = relaxed_margins(logits, order, thr, self.relaxation.set_mask(self.num_classes))
        y_bot = strict_bottom_logit(logits, relaxed_bottom_logit(logits, margins))
        return self._with_certified_k(self._guarded_outputs(logits, y_bot), certified_k(margins))

    def _with_certified_k(self, outputs, k_star):
        """[outputs, k*] with k* = 0 where argmax over the outputs is ⊥."""
        m = self.num_classes
        certified = ops.max(outputs[:, :m], axis=-1) > outputs[:, m]
        return ops.concatenate([outputs, ops.where(certified, k_star, 0.0)[:, None]], axis=-1)

    def compute_output_shape(self, input_shape):
        return (input_shape[0], self.num_classes + 2)

    def predict_step(self, *args, **kwargs):
        """`predict` returns [y, ⊥] (N, m+1), as `GloroModel.predict`."""
        out = super().predict_step(*args, **kwargs)
        width = self.num_classes + 1
        if isinstance(out, tuple):  # JAX: (outputs, state)
            return (out[0][:, :width], *out[1:])
        return out[:, :width]

    # -- training --------------------------------------------------------------------
    def compile(self, optimizer="rmsprop", loss=None, metrics=None, **kwargs):
        """`GloroModel.compile`; loss "gloro_crossentropy" or "trades" (EMMA's lift is for
        standard robustness and is refused); metrics that do not read the relaxed outputs
        ("clean_acc", "vra", ...) are applied to [y, ⊥]."""
        loss = gloro_losses.get(loss) if loss is not None else None
        if isinstance(loss, gloro_losses.GloroLoss):
            loss = loss.with_relaxation(self.relaxation)
        if metrics is not None:
            resolved = [gloro_metrics.get(m) for m in metrics]
            metrics = [m if gloro_metrics.needs_relaxed_outputs(m) or isinstance(m, gloro_metrics.OutputColumns)
                       else gloro_metrics.OutputColumns(m, self.num_classes + 1) for m in resolved]
        super().compile(optimizer=optimizer, loss=loss, metrics=metrics, **kwargs)

    def _outputs(self, y_pred):
        """[y, ⊥] for losses that are not GloRo losses."""
        out = y_pred["outputs"] if isinstance(y_pred, dict) else y_pred
        return out[:, : self.num_classes + 1]

    @staticmethod
    def _metric_outputs(y_pred):
        """[y, ⊥, k*] (see `compile` for what each metric sees)."""
        return y_pred["outputs"] if isinstance(y_pred, dict) else y_pred

    # -- certification ---------------------------------------------------------------
    def relaxed_certificate(self, x, bound="sound", arithmetic="float32", batch_size=256):
        """The `RelaxedCertificate` of a batch (see `GloroModel.margin_certificate` for
        `bound` and `arithmetic`)."""
        logits, kmat, error_terms = self._certificate_inputs(x, bound, arithmetic, batch_size)
        return RelaxedCertificate.build(logits, kmat, self.relaxation, error_terms if len(logits) else None)

    def certify(self, x, epsilon=None, bound="sound", batch_size=256, arithmetic="float32"):
        """The top class where some k' is certified at `epsilon` (default: self.epsilon), else
        `num_classes` (⊥)."""
        eps = self.epsilon if epsilon is None else check_epsilon(epsilon)
        return self.relaxed_certificate(x, bound, arithmetic, batch_size).certify(eps)

    def certified_k(self, x, epsilon=None, bound="sound", batch_size=256, arithmetic="float32"):
        """The largest certified k' per input (0 where none): within the ε-ball the top-k'
        classes stay the same set."""
        eps = self.epsilon if epsilon is None else check_epsilon(epsilon)
        return self.relaxed_certificate(x, bound, arithmetic, batch_size).certified_k(eps)

    def certified_radius(self, x, bound="sound", batch_size=256, arithmetic="float32"):
        """Per input, r such that some k' is certified for every ε < r (0 where none)."""
        return self.relaxed_certificate(x, bound, arithmetic, batch_size).radius()

    # -- serialization ---------------------------------------------------------------
    def get_config(self):
        return {**super().get_config(), "relaxation": self.relaxation.get_config()}


__all__ = ["RelaxedGloroModel"]
