"""GloRo network: m logits plus the ⊥ logit, certified at ℓ2 radius ε."""
import contextlib
import hashlib
import threading
import warnings

import keras
import numpy as np
from keras import ops

from gloro_keras._compat import flatten_layers
from gloro_keras import losses as gloro_losses
from gloro_keras import metrics as gloro_metrics
from gloro_keras.bounds import sound_bounds
from gloro_keras.layers.power_groups import check_grouping, power_estimates
from gloro_keras.models import rounding
from gloro_keras.models.bounded_network import with_bounded_layers
from gloro_keras.models.converge_bounds import ConvergeBounds
from gloro_keras.models.network_analysis import analyze, head_kernel, head_kernel_np
from gloro_keras.ops.certificate import MarginCertificate
from gloro_keras.ops.epsilon import check_epsilon
from gloro_keras.ops.labels import predicted_class, sparse_labels
from gloro_keras.ops.margins import (
    FLOAT64_SAFETY,
    bottom_logit,
    pairwise_distances,
    pairwise_distances_np,
    pairwise_distances_upper,
    strict_bottom_logit,
)
from gloro_keras.ops.precision import check_float32_math, full_precision_kernels, full_precision_trace

BOUNDS = ("sound", "power", "current")
# "float32": certify the network as it computes in float32 (rounding included; the default).
# "exact": the published convention, exact arithmetic (for comparison only).
# "float64": certify the float64 twin of the network (`float64_network()`), for deployments
# that can run inference in float64.
ARITHMETICS = ("float32", "float64", "exact")
_BIG = 1e30


TRAIN_DTYPES = ("float32", "bfloat16")
_POLICY_LOCK = threading.Lock()


def _network_layers(network):
    return [network, *flatten_layers(network)]


def _resolve_train_dtype(network, train_dtype):
    """Check the network's dtype policies; infer the training compute dtype if not given.

    float32 layers, or mixed_bfloat16 layers (float32 variables, bfloat16 compute: the Keras
    global policy), are accepted. 16-bit variables ("bfloat16", "float16" policies) and
    mixed_float16 (needs loss scaling) are refused.
    """
    policies = {layer.dtype_policy.name for layer in _network_layers(network)}
    bad = sorted(policies - {"float32", "mixed_bfloat16"})
    if bad:
        raise ValueError(
            f"GloroModel supports float32 networks, or mixed_bfloat16 training with float32 bounds "
            f"and certification; the network uses the dtype policies {bad}. Build it under "
            "keras.mixed_precision.set_global_policy('float32') (optionally with "
            "train_dtype='bfloat16'), or under 'mixed_bfloat16'."
        )
    if train_dtype is None:
        return "bfloat16" if "mixed_bfloat16" in policies else "float32"
    if train_dtype not in TRAIN_DTYPES:
        raise ValueError(f"train_dtype must be one of {TRAIN_DTYPES}; got {train_dtype!r}")
    return train_dtype




def _round_up_float32(value):
    v32 = np.float32(value)
    return np.nextafter(v32, np.float32(np.inf)) if float(v32) < value else v32


@keras.saving.register_keras_serializable(package="gloro_keras")
class GloroModel(keras.Model):
    """A globally-robust (GloRo) network.

    Wraps a chain `network` (Lipschitz-bounded layers, 1-Lipschitz activations, and a
    linear head) and outputs its m logits plus the ⊥ logit

        y_⊥ = max_{i≠j} (y_i + ε·K_ji),   K_ji = K·‖w_j − w_i‖,   j = argmax y,

    where K is the product of the body's layer bounds and w the head's class vectors. A
    prediction j is certified at radius ε iff y_j > y_⊥, i.e. argmax over all m+1 outputs
    is not ⊥ (index m).

    Forms:
        GloroModel(network, epsilon=0.3)
        GloroModel(inputs=x, outputs=y, epsilon=0.3)   # original gloro style; also
        GloroModel(x, y, epsilon=0.3), GloroModel(model=f, epsilon=0.3)

    Plain Keras `Dense` / `Conv2D` layers in the body are accepted: `network` then holds a copy
    of the given network in which they are `LipschitzDense` / `LipschitzConv2D` with the same
    weights and function (`models.bounded_network`); train and save `model.network`, the
    given model is left as it was.

    During `fit` every bounded layer runs its power iterations (persistent iterates) and
    the bound is differentiated through; `compile(loss="emma" | "gloro_crossentropy" |
    "trades", metrics=["clean_acc", "vra", "rejection_rate"])`. `epsilon` is the
    certification radius; `epsilon_train` (defaults to epsilon) is the radius used while
    training, which `gloro_keras.train.EpsilonScheduler` moves without retracing.

    Certification (`certify`, `certified_radius`, `lipschitz_bound`) uses by default a
    *sound* float64 upper bound on every layer's spectral norm (`bound="sound"`);
    `bound="power"` uses converged power iteration (the published-numbers estimate, which
    approaches the norm from below), `bound="current"` the stored iterates as they are.

    Args:
        network: a functional or Sequential keras.Model (see above).
        epsilon: certification radius (ℓ2, input units), >= 0.
        bound_gradient: "last" (default) back-propagates only through the final ‖A u‖ of a
            training call's power iteration, the iterate u held constant (as the paper authors'
            released code and gloro's power method do); "full" through every step, 1.11-1.24x
            the CPU step time, and in paired runs 0.07-0.80 VRA points better
            (docs/results.md, finding 7). At a converged iterate both are ∇‖A‖₂ = u₁v₁ᵀ.
        train_dtype: compute dtype of the network's forward and backward pass in training
            calls: "float32", or "bfloat16" (mixed precision: float32 weights, bfloat16
            activations; faster where bfloat16 matmuls are, e.g. CPUs with AVX512-BF16). Power
            iteration, the bound, ⊥ and the loss stay float32, and the network is float32 at
            rest, so every inference call (`predict`, `evaluate`, `certify`, `network(x)`)
            computes in float32: certificates are about the float32 network. Default: inferred
            from the network's dtype policy ("bfloat16" if it was built under the
            `mixed_bfloat16` global policy).
        group_power_iterations: run the training-time power iterations of same-shaped layers
            (a LiResNet's blocks) as one vectorized computation, same values and gradients
            (`layers.power_groups`): True (JAX only), False, or "auto" (on JAX with a GPU or
            TPU, where the bound's many small kernels are launch-bound).
    """

    def __init__(
        self,
        *args,
        epsilon=None,
        network=None,
        inputs=None,
        outputs=None,
        bound_gradient="last",
        train_dtype=None,
        group_power_iterations="auto",
        name=None,
        model=None,
        **kwargs,
    ):
        if model is not None:  # original gloro keyword
            if network is not None:
                raise ValueError("Pass `network` or `model`, not both.")
            network = model
        args = list(args)
        if args and isinstance(args[0], keras.Model):
            network = args.pop(0)
        elif len(args) >= 2:
            inputs, outputs = args.pop(0), args.pop(0)
        if args:
            if epsilon is not None or len(args) > 1:
                raise TypeError("GloroModel got unexpected positional arguments.")
            epsilon = args.pop(0)
        if network is None:
            if inputs is None or outputs is None:
                raise ValueError("GloroModel needs `network=` or both `inputs=` and `outputs=`.")
            network = keras.Model(inputs=inputs, outputs=outputs)
        elif inputs is not None or outputs is not None:
            raise ValueError("Pass either `network` or `inputs`/`outputs`, not both.")
        if epsilon is None:
            raise ValueError("GloroModel needs `epsilon`, the certification radius.")
        epsilon = check_epsilon(epsilon)
        if bound_gradient not in ("full", "last"):
            raise ValueError(f"bound_gradient must be 'full' or 'last'; got {bound_gradient!r}")
        dtype = kwargs.pop("dtype", None)
        if dtype is not None and keras.dtype_policies.get(dtype).name != "float32":
            raise ValueError(f"GloroModel computes its bound and ⊥ in float32; got dtype={dtype!r}. "
                             "Use train_dtype='bfloat16' for mixed-precision training.")
        super().__init__(name=name, dtype="float32", **kwargs)
        network = with_bounded_layers(network)  # plain Keras Dense / Conv2D → bounded twins
        self.train_dtype = _resolve_train_dtype(network, train_dtype)
        self._train_policy = "mixed_bfloat16" if self.train_dtype == "bfloat16" else "float32"
        self._policy_users = 0
        self.network = network
        self._set_network_policy("float32")  # at rest (inference, certification): float32
        self._plan = analyze(network)
        self.num_classes = self._plan.num_classes
        self.bound_gradient = bound_gradient
        self.group_power_iterations = check_grouping(group_power_iterations)
        self._epsilon = self._scalar("epsilon", epsilon)
        self._epsilon_train = self._scalar("epsilon_train", epsilon)
        self._bound_cache = self._scalar("bound_cache", 0.0)
        self._bound_cache_valid = self._scalar("bound_cache_valid", 0.0)
        self.gloro_loss = None  # the GloroLoss given to compile, if any
        self._sound_cache = {}
        self._value_cache = {}
        try:
            analysis = rounding.RoundingAnalysis(
                self._plan.layers, self._plan.head, int(np.prod(network.input_shape[1:])))
            unsupported = None
        except rounding.UnsupportedLayerError as e:
            analysis, unsupported = None, str(e)
        # plain attributes, not tracked (and not saved) by Keras
        object.__setattr__(self, "_rounding", analysis)
        object.__setattr__(self, "_rounding_unsupported", unsupported)
        object.__setattr__(self, "_probe", None)
        object.__setattr__(self, "_twin", None)
        self._rounding_params = self.add_weight(
            name="rounding_params", shape=(max(analysis.num_params if analysis else 0, 1),),
            initializer="zeros", trainable=False, dtype="float32", autocast=False,
            aggregation="only_first_replica",
        )
        self.build(network.input_shape)

    def _scalar(self, name, value):
        return self.add_weight(
            name=name, shape=(), initializer=keras.initializers.Constant(value),
            trainable=False, dtype="float32", autocast=False, aggregation="only_first_replica",
        )

    def build(self, input_shape=None):
        self.built = True

    # -- radius ----------------------------------------------------------------------
    @property
    def epsilon(self):
        """Certification radius (ℓ2). Setting it validates the value."""
        return float(ops.convert_to_numpy(self._epsilon))

    @epsilon.setter
    def epsilon(self, value):
        self._epsilon.assign(check_epsilon(value))

    @property
    def epsilon_train(self):
        """Radius used by training calls (scheduled by callbacks)."""
        return float(ops.convert_to_numpy(self._epsilon_train))

    @epsilon_train.setter
    def epsilon_train(self, value):
        self._epsilon_train.assign(check_epsilon(value, "epsilon_train"))

    # -- precision -------------------------------------------------------------------
    def _set_network_policy(self, policy):
        for layer in _network_layers(self.network):
            layer.dtype_policy = policy

    @contextlib.contextmanager
    def _network_precision(self, training):
        """Trace the network in `train_dtype` for training calls; it is float32 otherwise.

        Policies are read when a call is traced, so a compiled train function keeps
        bfloat16 and every other function float32. Counted under a lock: MirroredStrategy
        traces its replicas in parallel threads.
        """
        if not training or self._train_policy == "float32":
            yield
            return
        with _POLICY_LOCK:
            if self._policy_users == 0:
                self._set_network_policy(self._train_policy)
            self._policy_users += 1
        try:
            yield
        finally:
            with _POLICY_LOCK:
                self._policy_users -= 1
                if self._policy_users == 0:
                    self._set_network_policy("float32")

    @property
    def bounded_layers(self):
        """The body's `BoundedLayer`s, in forward order (K is the product of their bounds
        and of the other body layers' fixed constants)."""
        return list(self._plan.bounded)

    # -- forward ---------------------------------------------------------------------
    def body_bound(self, training=False):
        """K, the product of the body's layer bounds, as a scalar tensor.

        training=True runs the layers' power iterations (and invalidates the cached bound);
        otherwise the cached bound from `update_bound_cache` is used when valid, else the
        stored iterates' estimate.
        """
        k = ops.convert_to_tensor(self._plan.constant, dtype="float32")
        for sigma in power_estimates(self._plan.bounded, training, self.bound_gradient, self.group_power_iterations):
            k = k * ops.cast(sigma, "float32")
        if training:
            self._bound_cache_valid.assign(0.0)
            return k
        valid = ops.convert_to_tensor(self._bound_cache_valid) > 0.5
        return ops.where(valid, ops.convert_to_tensor(self._bound_cache), k)

    def margin_bounds(self, training=False):
        """(m, m) tensor K_ij bounding the Lipschitz constant of y_i − y_j."""
        w = ops.cast(head_kernel(self._plan.head), "float32")
        return self.body_bound(training) * pairwise_distances(w)

    def _exact_forward(self, inputs, training):
        """(logits, K_ij, ε) of a training call (ε_train, this step's bound) or of an
        inference call in exact arithmetic."""
        with self._network_precision(training):
            logits = ops.cast(self.network(inputs, training=training), "float32")
        kmat = self.margin_bounds(training)
        return logits, kmat, ops.convert_to_tensor(self._epsilon_train if training else self._epsilon)

    def call(self, inputs, training=False):
        """Inference: the (B, m+1) outputs [y_1..y_m, y_⊥]. Training (`training=True`, as in
        `fit`): a dict with those `outputs` and what the loss needs, `logits`,
        `margin_bounds` (this step's K_ij, power iteration advanced once) and `epsilon`
        (ε_train); `compute_loss` and `compute_metrics` take it apart."""
        if not training:
            with full_precision_trace():  # the float32 network the certificates are about
                return self._inference_outputs(inputs)
        logits, kmat, eps = self._exact_forward(inputs, training)
        y_bot = bottom_logit(logits, kmat, eps)
        outputs = ops.concatenate([logits, y_bot[:, None]], axis=-1)
        return {"outputs": outputs, "logits": logits, "margin_bounds": kmat, "epsilon": eps}

    def __call__(self, *args, **kwargs):
        """Inference calls run with full-precision float32 kernels (TF32 off), as `predict` does;
        training calls as configured. (Keras also calls the model to build it, e.g. in `fit`, so
        a process whose oneDNN lowers float32 is refused by the certifying entry points, not here.)"""
        training = kwargs.get("training", args[1] if len(args) > 1 else None)
        if training:
            return super().__call__(*args, **kwargs)
        with full_precision_kernels(check=False):
            return super().__call__(*args, **kwargs)

    def _inference_outputs(self, inputs):
        if self._rounding is not None:
            return self._inference_call(inputs)
        logits, kmat, eps = self._exact_forward(inputs, False)
        y_bot = strict_bottom_logit(logits, bottom_logit(logits, kmat, eps))
        # A non-finite output is never certified: ⊥ wins the argmax.
        finite = ops.all(ops.isfinite(logits), axis=-1)
        y_bot = ops.where(finite, y_bot, _BIG)
        logits = ops.where(finite[:, None], logits, -_BIG)
        return ops.concatenate([logits, y_bot[:, None]], axis=-1)

    def _inference_call(self, inputs):
        """[logits, y_⊥] with the float32 rounding terms in y_⊥ (module `rounding`).

        y_⊥ = max_{i≠j} (y_i + ε·K_ji + a_ji + b_ji·ε), every term rounded upwards, and
        raised just above y_j where j is not certified (so a tie is never certified).
        With the bound cache of `update_bound_cache`, argmax over the outputs certifies a
        subset of what `certify` certifies with the same bound (a_ji is counted twice, to
        cover the float32 difference between this evaluation and certify's).
        """
        logits, thr, rows = self._rounded_thresholds(inputs, lambda y: ops.argmax(y, axis=-1)[:, None])
        onehot = ops.one_hot(rows[:, 0], self.num_classes)
        y_bot = ops.max(ops.where(onehot > 0, float("-inf"), thr[:, 0, :]), axis=-1)
        return self._guarded_outputs(logits, strict_bottom_logit(logits, y_bot))

    @staticmethod
    def _guarded_outputs(logits, y_bot):
        """[logits, y_⊥] where a non-finite row is never certified (⊥ wins the argmax)."""
        finite = ops.all(ops.isfinite(logits), axis=-1) & ops.isfinite(y_bot)
        y_bot = ops.where(finite, y_bot, _BIG)
        logits = ops.where(finite[:, None], logits, -_BIG)
        return ops.concatenate([logits, y_bot[:, None]], axis=-1)

    def _rounded_thresholds(self, inputs, rows_fn):
        """(logits (B, m), thresholds (B, R, m), rows (B, R)) of an inference call.

        rows = rows_fn(logits) are R classes j per input; thresholds[:, r, i] rounds upwards
        y_i + ε·K_ji + 2·a_ji + b_ji·ε (j = rows[:, r]) with the float32 rounding terms, so j
        beats i within the ε-ball for the network as it computes where y_j > threshold.
        """
        an = self._rounding
        self._check_input_shape(inputs.shape)
        logits, cs, ch = an.terms(inputs)
        logits = ops.cast(logits, "float32")
        rows = ops.cast(rows_fn(logits), "int32")
        w = ops.cast(head_kernel(self._plan.head), "float32")
        dist = pairwise_distances_upper(w)
        kmat = self.body_bound(False) * dist
        eps = ops.convert_to_tensor(self._epsilon)
        p = [self._rounding_params[k] for k in range(an.num_params)]
        alpha, beta, lip = an.coefficients(cs, p, ops.zeros_like(cs[0]))
        head = an.head
        n = ops.sqrt(ops.sum(ops.square(ops.abs(w)), axis=0)) * ((1.0 + head.tau) * (1.0 + rounding.gamma(head.fan_in + 4, rounding.U32)))
        eta = (2 * head.fan_in + 3 + head.fan_in * ops.max(ops.abs(w)) * (1.0 + head.tau)) * rounding.TINY32
        cj = ops.take_along_axis(ch, rows, axis=-1)[:, :, None]
        nj = ops.take(n, rows)[:, :, None]
        dj = ops.take(dist, rows, axis=0)
        kj = ops.take(kmat, rows, axis=0)
        al, be = alpha[:, None, None], beta[:, None, None]
        chi, ni = ch[:, None, :], n[None, None, :]
        a = 2.0 * al * dj + 2.0 * head.g * (chi + cj) + 4.0 * eta + 4.0 * head.g * al * (ni + nj)
        b = be * dj + head.g * (ni + nj) * (lip + be)
        u = rounding.U32
        c = (eps * kj + (2.0 * a + b * eps) * an.graph_inflation) * (1.0 + 8 * u)
        thr = logits[:, None, :] + c
        thr = thr + 4 * u * (ops.abs(logits[:, None, :]) + c) + 2.0 ** -120
        return logits, thr, rows

    def compute_output_shape(self, input_shape):
        return (input_shape[0], self.num_classes + 1)

    def _check_inputs(self, x):
        """`x` as an array of the network's input shape (a clear error otherwise)."""
        x = np.asarray(x)
        self._check_input_shape(x.shape)
        return x

    def _check_input_shape(self, shape):
        expected = tuple(self.network.input_shape[1:])
        got = tuple(shape[1:])
        if len(got) != len(expected) or any(e is not None and g is not None and e != g for e, g in zip(expected, got)):
            raise ValueError(f"{self.name} expects inputs of shape (batch, {', '.join(map(str, expected))}); "
                             f"received shape {tuple(shape)}.")

    # -- training --------------------------------------------------------------------
    def compile(self, optimizer="rmsprop", loss=None, metrics=None, jit_compile=None, **kwargs):
        """`keras.Model.compile`, plus GloRo names: loss "emma" | "gloro_crossentropy" |
        "trades" | "trades.<λ>", metrics "clean_acc" | "vra" | "rejection_rate". A `GloroLoss` is applied by
        `compute_loss` to `loss_inputs(y_pred)`; any other loss to the (B, m+1) outputs.
        jit_compile defaults to False on TensorFlow (graph mode is faster on CPU and XLA
        fails under tf.distribute on CPU) and "auto" elsewhere."""
        loss = gloro_losses.get(loss) if loss is not None else None
        if metrics is not None:
            metrics = [gloro_metrics.get(m) for m in metrics]
            relaxed = [getattr(m, "name", m) for m in metrics if gloro_metrics.needs_relaxed_outputs(m)]
            if relaxed and getattr(self, "relaxation", None) is None:
                raise ValueError(f"The metrics {relaxed} measure relaxed robustness; compile them on a "
                                 "RelaxedGloroModel (relaxation='topk:K' or 'affinity:...').")
        if jit_compile is None:
            jit_compile = False if keras.backend.backend() == "tensorflow" else "auto"
        gloro = isinstance(loss, gloro_losses.GloroLoss)
        super().compile(optimizer=optimizer, loss=None if gloro else loss, metrics=metrics,
                        jit_compile=jit_compile, **kwargs)
        self.gloro_loss = loss if gloro else None
        if gloro:
            self.loss = loss

    def get_compile_config(self):
        config = super().get_compile_config()
        if config is not None and self.gloro_loss is not None:
            config["loss"] = keras.saving.serialize_keras_object(self.gloro_loss)
        return config

    def compile_from_config(self, config):
        """Re-compile after `load_model` (the optimizer state is then restored)."""
        self.compile(**keras.saving.deserialize_keras_object(config))
        if getattr(self, "optimizer", None) is not None and self.built:
            self.optimizer.build(self.trainable_variables)

    def loss_inputs(self, y_pred):
        """What a `GloroLoss` needs, from the result of a call: {"logits": (B, m),
        "margin_bounds": (m, m) K_ij, "epsilon": ε}. A training call's own bound and ε_train;
        for an inference call's outputs, the cached (or stored-iterate) bound and ε."""
        if isinstance(y_pred, dict):
            return {k: y_pred[k] for k in gloro_losses.LOSS_INPUTS}
        logits = ops.cast(y_pred, "float32")[:, : self.num_classes]
        return {"logits": logits, "margin_bounds": self.margin_bounds(training=False),
                "epsilon": ops.convert_to_tensor(self._epsilon)}

    @staticmethod
    def _outputs(y_pred):
        return y_pred["outputs"] if isinstance(y_pred, dict) else y_pred

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        if self.gloro_loss is None or y is None or y_pred is None:
            y_pred = None if y_pred is None else self._outputs(y_pred)
            return super().compute_loss(x=x, y=y, y_pred=y_pred, sample_weight=sample_weight, training=training)
        loss = self.gloro_loss(y, self.loss_inputs(y_pred), sample_weight=sample_weight)
        if self.losses:  # regularization losses added by layers
            loss = loss + super().compute_loss(x=x, y=y, y_pred=self._outputs(y_pred),
                                               sample_weight=sample_weight, training=training)
        return loss

    _metric_outputs = _outputs

    def compute_metrics(self, x, y, y_pred, sample_weight=None):
        return super().compute_metrics(x, y, self._metric_outputs(y_pred), sample_weight=sample_weight)

    def _check_labels(self, y):
        if y is None or not hasattr(y, "shape") or not hasattr(y, "dtype"):
            return
        y = np.asarray(y)
        if y.dtype.kind in "iu" and (y.ndim == 1 or (y.ndim == 2 and y.shape[-1] == 1)) and y.size:
            lo, hi = int(y.min()), int(y.max())
            if lo < 0 or hi >= self.num_classes:
                raise ValueError(
                    f"Labels must be integers in [0, {self.num_classes}); got values in [{lo}, {hi}]."
                )

    def fit(self, x=None, y=None, *args, converge_bounds=True, **kwargs):
        """`keras.Model.fit`. With `converge_bounds=True` (default) a
        `ConvergeBounds()` callback is added unless one is given: the sound bound is cached
        before every validation (while it takes at most 5 % of the training time; after one
        that takes longer, the power iterates' estimate, see `ConvergeBounds`) and, with
        converged iterates, at the end of training, so later `evaluate`/`predict` calls
        certify with it (as the original gloro's `UpdatePowerIterates`)."""
        self._check_labels(y)
        vd = kwargs.get("validation_data")
        if isinstance(vd, (tuple, list)) and len(vd) >= 2:
            self._check_labels(vd[1])
        if vd is not None or kwargs.get("validation_split"):
            check_float32_math()  # validation certifies: fail now, not after the first epoch
        if converge_bounds and len(args) < 4:  # callbacks not given positionally
            callbacks = list(kwargs.get("callbacks") or [])
            if not any(isinstance(c, ConvergeBounds) for c in callbacks):
                callbacks.append(ConvergeBounds())
            kwargs["callbacks"] = callbacks
        self._build_optimizer()
        return super().fit(x, y, *args, **kwargs)

    def train_on_batch(self, x, y=None, *args, **kwargs):
        self._build_optimizer()
        return super().train_on_batch(x, y, *args, **kwargs)

    def _build_optimizer(self):
        """Create the optimizer's variables before the training step is traced. Without a
        distribution strategy, Keras's TensorFlow trainer leaves them to the step's first trace,
        and `tf.function` then traces the whole step a second time (it retraces a function that
        created variables). A GloRo step's trace (unrolled power iterations and their written-out
        gradients, 23 000 graph ops at L6W64) takes seconds: a first `fit` took 0.68× the time at the
        quickstart's size, 0.73–0.94× at L6W64 (bench/results/ab_first_fit.md). The variables are
        the ones Keras would create (it makes the same call under a distribution strategy)."""
        if (keras.backend.backend() != "tensorflow" or getattr(self, "optimizer", None) is None
                or self.optimizer.built or not self.built):
            return
        with self.distribute_strategy.scope():
            self.optimizer.build(self.trainable_variables)

    def evaluate(self, x=None, y=None, *args, **kwargs):
        self._check_labels(y)
        with full_precision_kernels():
            return super().evaluate(x, y, *args, **kwargs)

    def predict(self, x, *args, **kwargs):
        """`keras.Model.predict`: the m logits and y_⊥ (rounding-aware; see `_inference_call`)."""
        if isinstance(x, np.ndarray):
            self._check_input_shape(x.shape)
            if len(x) == 0:  # Keras fails on an empty array
                return np.zeros((0, self.num_classes + 1), np.float32)
        with full_precision_kernels():
            return super().predict(x, *args, **kwargs)

    def test_on_batch(self, x, y=None, *args, **kwargs):
        self._check_labels(y)
        with full_precision_kernels():
            return super().test_on_batch(x, y, *args, **kwargs)

    def predict_on_batch(self, x):
        with full_precision_kernels():
            return super().predict_on_batch(x)

    # -- bounds ----------------------------------------------------------------------
    def converge_bounds(self, max_iterations=500, tolerance=1e-6):
        """Run every layer's power iteration to convergence (no gradients); returns K."""
        k = self._plan.constant
        for layer in self._plan.bounded:
            k *= layer.converge_iterate(max_iterations=max_iterations, tolerance=tolerance)
        return float(k)

    def _fingerprint(self):
        h = hashlib.blake2b(digest_size=16)
        for layer in self._plan.bounded:
            for v in layer.weights:
                if v.trainable:
                    h.update(np.ascontiguousarray(ops.convert_to_numpy(v)).tobytes())
        return h.hexdigest()

    def lipschitz_bound(self, bound="sound"):
        """K, the product of the body's layer bounds (the sub-Lipschitz constant), as a float.

        bound: "sound" (guaranteed ≥ the true product of spectral norms; cached per weights),
            "power" (power iteration run to convergence), or "current" (stored iterates).
        """
        return self._bound_and_fingerprint(bound)[0]

    def _bound_and_fingerprint(self, bound):
        """(`lipschitz_bound(bound)`, the weights' fingerprint for "sound", else None): a caller
        that also needs `_layer_value_fn` hashes the weights once."""
        if bound not in BOUNDS:
            raise ValueError(f"bound must be one of {BOUNDS}; got {bound!r}")
        if bound == "power":
            return self.converge_bounds(), None
        if bound == "current":
            k = self._plan.constant
            for layer in self._plan.bounded:
                k *= float(ops.convert_to_numpy(layer.power_estimate(training=False)))
            return k, None
        fingerprint = self._fingerprint()
        if fingerprint not in self._sound_cache:
            value = self._layer_value_fn("sound", fingerprint)  # per-layer bounds shared with the rounding terms
            k = self._plan.constant * (1.0 + FLOAT64_SAFETY)
            for layer in self._plan.bounded:
                k *= value(layer)
            self._sound_cache = {fingerprint: k}
        return self._sound_cache[fingerprint], fingerprint

    def margin_bound_matrix(self, bound="sound"):
        """float64 (m, m) matrix K_ij bounding the Lipschitz constant of y_i − y_j."""
        return self._margin_bounds(self.lipschitz_bound(bound))

    def _margin_bounds(self, k):
        """K_ij = k·‖ŵ_i − ŵ_j‖ for the body's bound k."""
        return k * pairwise_distances_np(head_kernel_np(self._plan.head))

    def update_bound_cache(self, bound="sound"):
        """Compute K once (see `lipschitz_bound`) and use it for inference calls
        (`predict`, `evaluate`) until the next training step. Returns K."""
        k, fingerprint = self._bound_and_fingerprint(bound)
        self._bound_cache.assign(_round_up_float32(k) if bound == "sound" else np.float32(k))
        if self._rounding is not None:
            params = self._rounding.params(self._layer_value_fn(bound, fingerprint))
            self._rounding_params.assign(
                np.array([_round_up_float32(v) for v in params] or [0.0], dtype=np.float32))
        self._bound_cache_valid.assign(1.0)
        return k

    @property
    def bound_cache_valid(self):
        """Whether inference calls use the bound cached by `update_bound_cache` (True until
        the next training step changes the weights)."""
        return float(ops.convert_to_numpy(self._bound_cache_valid)) > 0.5

    @property
    def cached_bound(self):
        """K as cached by `update_bound_cache` (float32, rounded up), or None when the cache is
        not valid."""
        return float(ops.convert_to_numpy(self._bound_cache)) if self.bound_cache_valid else None

    def _layer_value_fn(self, bound, fingerprint=None):
        """value(layer): a bounded leaf layer's bound of kind `bound` (sound: cached for the
        weights whose `_fingerprint()` is `fingerprint`, hashed here when not given)."""
        if bound == "sound":
            key = ("sound", fingerprint if fingerprint is not None else self._fingerprint())
            for old in [k for k in self._value_cache if k != key]:  # entries of older weights
                del self._value_cache[old]
            _prefetch_sound_bounds(self._value_cache.setdefault(key, {}), self._plan.bounded)

            def value(layer):
                cache = self._value_cache.setdefault(key, {})
                if id(layer) not in cache:
                    cache[id(layer)] = float(layer.sound_bound())
                return cache[id(layer)]

            return value
        if bound == "power":
            self.lipschitz_bound("power")
        return lambda layer: float(ops.convert_to_numpy(layer.power_estimate(training=False)))

    # -- certification ---------------------------------------------------------------
    def predict_logits(self, x, batch_size=256, verbose=0):
        """The network's m clean logits as float64 numpy (no bound involved)."""
        x = self._check_inputs(x)
        if len(x) == 0:
            return np.zeros((0, self.num_classes))
        with full_precision_kernels():
            return np.asarray(self.network.predict(x, batch_size=batch_size, verbose=verbose), dtype=np.float64)

    def _probe_model(self):
        if self._probe is None:
            object.__setattr__(self, "_probe", _RoundingProbe(self.network, self._rounding))
        return self._probe

    def float64_network(self):
        """The network with the same weights computing in float64 (a new keras.Model, rebuilt
        when the weights change). `certify(..., arithmetic="float64")` certifies it: deploy it
        (its `predict`) to get predictions those certificates are about."""
        key = hashlib.blake2b(
            b"".join(np.ascontiguousarray(ops.convert_to_numpy(w)).tobytes() for w in self.network.weights),
            digest_size=16).hexdigest()
        if self._twin is None or self._twin[0] != key:
            if keras.backend.backend() == "jax":
                import jax

                if not jax.config.jax_enable_x64:
                    raise ValueError("float64 inference on JAX needs jax.config.update('jax_enable_x64', True).")
            config = _with_dtype(self.network.get_config(), "float64")
            twin = self.network.__class__.from_config(config)
            twin.set_weights([np.asarray(w, np.float64) for w in self.network.get_weights()])
            plan = analyze(twin)
            # inputs may reach it through float32 (Keras data adapters): round them as float32
            analysis = rounding.RoundingAnalysis(plan.layers, plan.head, int(np.prod(twin.input_shape[1:])),
                                                 unit_roundoff=rounding.U64, input_roundoff=rounding.U32)
            object.__setattr__(self, "_twin", (key, twin, plan, analysis, _RoundingProbe(twin, analysis), {}))
        return self._twin[1]

    def _float64_certificate_inputs(self, x, bound, batch_size):
        if bound != "sound":
            raise ValueError(f"arithmetic='float64' certifies with the sound bound only; got bound={bound!r}")
        self.float64_network()
        _, twin, plan, an, probe, cache = self._twin
        _prefetch_sound_bounds(cache, plan.bounded)

        def value(layer):
            if id(layer) not in cache:
                cache[id(layer)] = float(layer.sound_bound())
            return cache[id(layer)]

        params = an.params(value)
        k = plan.constant * (1.0 + FLOAT64_SAFETY)
        for layer in plan.bounded:
            k *= value(layer)
        out = np.asarray(probe.predict(np.asarray(x, np.float64), batch_size=batch_size, verbose=0), np.float64)
        m = self.num_classes
        logits, cs, ch = out[:, :m], out[:, m:-m], out[:, -m:]
        w_ref = head_kernel_np(plan.head)
        dist = pairwise_distances_np(w_ref)
        return logits, k * dist, lambda rows: rounding.error_terms_np(an, list(cs.T), ch, params, w_ref, dist, rows)

    def margin_certificate(self, x, bound="sound", arithmetic="float32", batch_size=256):
        """Everything `certify` and `certified_radius` need, as a `MarginCertificate`.

        arithmetic="float32" (default): the certificate is about the network as it computes
        in float32 (TF32 off), for any summation order and batch: the margins must exceed
        ε·K_ji plus the rounding terms of `gloro_keras.models.rounding`. "exact": the
        published convention (exact arithmetic, rounding ignored), for comparison only.
        """
        logits, kmat, error_terms = self._certificate_inputs(x, bound, arithmetic, batch_size)
        a, b = error_terms(predicted_class(logits)) if error_terms is not None and len(logits) else (None, None)
        return MarginCertificate.build(logits, kmat, a, b)

    def _certificate_inputs(self, x, bound, arithmetic, batch_size):
        """(logits (N, m) float64, margin bounds K (m, m), error_terms) of a certificate, where
        error_terms(rows) gives the rounding terms (a, b) (N, m) of class rows[n] against
        every class (None in exact arithmetic)."""
        if arithmetic not in ARITHMETICS:
            raise ValueError(f"arithmetic must be one of {ARITHMETICS}; got {arithmetic!r}")
        if bound not in BOUNDS:
            raise ValueError(f"bound must be one of {BOUNDS}; got {bound!r}")
        x = self._check_inputs(x)
        if len(x) == 0:
            return np.zeros((0, self.num_classes)), self.margin_bound_matrix(bound), None
        if arithmetic == "float64":
            return self._float64_certificate_inputs(x, bound, batch_size)
        check_float32_math()  # before the bound converges: a refused call changes nothing
        k, fingerprint = self._bound_and_fingerprint(bound)
        kmat = self._margin_bounds(k)
        if arithmetic == "exact":
            return self.predict_logits(x, batch_size), kmat, None
        an = self._rounding
        if an is None:
            raise ValueError(f"Cannot certify the float32 network: {self._rounding_unsupported}")
        params = an.params(self._layer_value_fn(bound, fingerprint))
        with full_precision_kernels():
            out = np.asarray(self._probe_model().predict(x, batch_size=batch_size, verbose=0), dtype=np.float64)
        m = self.num_classes
        logits, cs, ch = out[:, :m], out[:, m:-m], out[:, -m:]
        w_ref = head_kernel_np(self._plan.head)
        dist = pairwise_distances_np(w_ref)
        return logits, kmat, lambda rows: rounding.error_terms_np(an, list(cs.T), ch, params, w_ref, dist, rows)

    def certify(self, x, epsilon=None, bound="sound", batch_size=256, arithmetic="float32"):
        """Certified class per input, or `num_classes` (⊥) where robustness at `epsilon`
        (default: self.epsilon) cannot be certified for the float32 network as it computes
        (`arithmetic`, see `margin_certificate`). The bound is computed once per call.
        Inputs with non-finite values (or non-finite logits) and ties always get ⊥."""
        eps = self.epsilon if epsilon is None else check_epsilon(epsilon)
        return self.margin_certificate(x, bound, arithmetic, batch_size).certify(eps)

    def certified_radius(self, x, bound="sound", batch_size=256, arithmetic="float32"):
        """Per input, the radius r such that the prediction is certified for every ε < r
        (0 where it is not robust; 0 for non-finite inputs)."""
        return self.margin_certificate(x, bound, arithmetic, batch_size).radius()

    # -- serialization ---------------------------------------------------------------
    @property
    def f(self):
        """The network, under the attribute name `.keras` files store it by: Keras's saving
        walks a model's attributes in sorted order and files the network under the first
        name that reaches it, which has been `f` since gloro-keras 0.1 (without this
        property, files saved before could not be loaded). Use `network`."""
        return self.network

    def load_own_variables(self, store):
        """Also loads files saved before the rounding terms existed (0.1.0): their bound
        cache is then marked invalid, so inference recomputes nothing it cannot trust."""
        if len(store.keys()) == len(self._own_variables()) - 1:
            for i, v in enumerate(self._own_variables()[:-1]):
                v.assign(store[str(i)])
            self._bound_cache_valid.assign(0.0)
            return
        super().load_own_variables(store)

    def _own_variables(self):
        return [self._epsilon, self._epsilon_train, self._bound_cache, self._bound_cache_valid,
                self._rounding_params]

    def get_config(self):
        return {
            "name": self.name,
            "trainable": self.trainable,
            "network": keras.saving.serialize_keras_object(self.network),
            "epsilon": self.epsilon,
            "bound_gradient": self.bound_gradient,
            "train_dtype": self.train_dtype,
            "group_power_iterations": self.group_power_iterations,
        }

    @classmethod
    def from_config(cls, config, custom_objects=None):
        config = dict(config)
        if config.get("group_power_iterations") is True and keras.backend.backend() != "jax":
            warnings.warn("This model was saved with group_power_iterations=True, which needs the JAX "
                          f"backend; loaded on {keras.backend.backend()!r} with 'auto' instead.", stacklevel=2)
            config["group_power_iterations"] = "auto"
        network = keras.saving.deserialize_keras_object(config.pop("network"), custom_objects=custom_objects)
        return cls(network=network, **config)




def _prefetch_sound_bounds(cache, layers):
    """Fill `cache` (id(layer) → sound bound) for `layers`, those missing computed in parallel."""
    missing = [layer for layer in layers if id(layer) not in cache]
    for layer, value in zip(missing, sound_bounds(missing)):
        cache[id(layer)] = value


def _with_dtype(config, dtype):
    """A copy of a (nested) model config with every layer's dtype set to `dtype`."""
    if isinstance(config, dict):
        out = {k: _with_dtype(v, dtype) for k, v in config.items()}
        if "dtype" in out and "name" in out:
            out["dtype"] = dtype
        return out
    if isinstance(config, list):
        return [_with_dtype(v, dtype) for v in config]
    return config


class _RoundingProbe(keras.Model):
    """Batched per-input terms of the rounding analysis: [logits, centre terms, head terms]."""

    def __init__(self, network, analysis):
        dtype = network.dtype_policy.compute_dtype
        super().__init__(name=f"{network.name}_rounding_probe", dtype=dtype)
        self.network = network
        object.__setattr__(self, "_analysis", analysis)
        object.__setattr__(self, "_dtype", dtype)
        self.built = True

    def call(self, x):
        logits, cs, ch = self._analysis.terms(ops.cast(x, self._dtype))
        return ops.concatenate([ops.cast(logits, self._dtype), ops.stack(cs, axis=-1), ch], axis=-1)
