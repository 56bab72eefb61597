"""Base class for linear layers whose spectral norm is tracked by power iteration."""
import abc

import keras
from keras import ops

from gloro_keras.layers.bounded_layer import BoundedLayer, check_gradient
from gloro_keras.ops.conv import CHUNK_ROWS, chunked_kernel_vjp
from gloro_keras.ops.norms import TINY, l2_normalize, safe_norm


class LipschitzLayer(BoundedLayer):
    """A layer `y = A(x) + b` with A linear; bounds ‖A‖₂ by persistent power iteration.

    The iterate `u` (shaped like one input example) is a non-trainable variable carried
    across training steps. Each training call runs `power_iterations` steps of
    `u ← AᵀAu / ‖AᵀAu‖` and the estimate is `σ = ‖A u‖` (≤ ‖A‖₂; it converges from
    below, so certification uses `sound_bound()`).

    Subclasses implement `linear_kernel()` (the tensor defining A), `apply_linear(u, k)`
    (A), `apply_adjoint(v, k)` (Aᵀ) and `sound_bound()`, and call `build_iterate(shape)` in
    `build`; those that also implement `kernel_vjp(x, g)` (∂⟨g, A x⟩/∂K) and set
    `has_kernel_vjp = True` get the full gradient batched (see `_full_gradient_bound`) and,
    on JAX, a training call whose gradient is written out (`training_linear`).

    Args:
        power_iterations: power-iteration steps per training call (default 10).
    """

    def __init__(self, power_iterations=10, **kwargs):
        super().__init__(**kwargs)
        power_iterations = int(power_iterations)
        if power_iterations < 0:
            raise ValueError(f"power_iterations must be >= 0; got {power_iterations}")
        self.power_iterations = power_iterations

    # -- subclass hooks -------------------------------------------------------------
    has_kernel_vjp = False  # True where `kernel_vjp` is implemented

    @abc.abstractmethod
    def linear_kernel(self):
        """The tensor K defining A."""

    @abc.abstractmethod
    def apply_linear(self, u, kernel):
        """A(K) u for a batch u."""

    @abc.abstractmethod
    def apply_adjoint(self, v, kernel):
        """A(K)ᵀ v for a batch v."""

    def kernel_vjp(self, x, g):
        """∂⟨g, A(K) x⟩/∂K summed over the batch axis of x and g (A is linear in K).
        Optional: without it, `gradient="full"` differentiates the unrolled steps by autodiff."""
        raise NotImplementedError(f"{type(self).__name__} has no kernel_vjp")

    # -- the training call's linear map ---------------------------------------------
    kernel_gradient_rows = CHUNK_ROWS  # output positions per chunk of the batch in `linear_by_hand`

    def training_linear(self, x, kernel):
        """A(K) x in a training call: `linear_by_hand` on JAX for a float32 batch of images
        (XLA:CPU's own kernel gradient of a convolution is 2.3–2.6× slower,
        bench/results/ab_conv_gradient.md), `apply_linear` elsewhere."""
        if (keras.backend.backend() == "jax" and self.has_kernel_vjp and len(x.shape) == 4
                and x.shape[0] is not None and x.shape[0] > 1 and x.dtype == "float32"
                and keras.distribution.distribution() is None):
            return self.linear_by_hand(x, kernel)
        return self.apply_linear(x, kernel)

    def linear_by_hand(self, x, kernel):
        """A(K) x with its gradient written out: x̄ = Aᵀ ḡ (`apply_adjoint`) and K̄ =
        `kernel_vjp(x, ḡ)` summed over chunks of the batch (`chunked_kernel_vjp`). Same values
        as autodiff of `apply_linear` up to float32 summation order."""
        kernel = ops.cast(kernel, kernel.dtype)  # a tensor read from it, when given the variable

        @ops.custom_gradient
        def linear(x, kernel):
            def grad(*args, upstream=None):
                g = args[0] if upstream is None else upstream
                return (self.apply_adjoint(g, kernel),
                        chunked_kernel_vjp(self.kernel_vjp, x, g, kernel, self.kernel_gradient_rows))

            return self.apply_linear(x, kernel), grad

        return linear(ops.convert_to_tensor(x), kernel)

    # -- power iteration --------------------------------------------------------------
    def build_iterate(self, shape):
        self.iterate = self.add_weight(
            name="power_iterate",
            shape=tuple(shape),
            initializer=keras.initializers.RandomNormal(),
            trainable=False,
            autocast=False,
            aggregation="only_first_replica",
        )

    @staticmethod
    def _restart(u):
        """The all-ones direction: where an iterate in the null space (which would stay 0 forever
        and under-estimate ‖A‖ once the weights move) restarts. Built once per chain of steps."""
        return l2_normalize(ops.ones_like(u))

    def _step(self, u, kernel, restart, trace=None):
        """u ← AᵀAu / ‖AᵀAu‖ (`restart` where AᵀAu = 0); appends (Au, ‖AᵀAu‖²) to `trace`."""
        v = self.apply_linear(u, kernel)
        w = self.apply_adjoint(v, kernel)
        sq = ops.sum(ops.square(w))
        if trace is not None:
            trace.append((v, sq))
        return ops.where(sq > TINY, w / ops.sqrt(ops.maximum(sq, TINY)), restart)

    def _full_gradient_bound(self, kernel, u):
        """σ = ‖A uₙ‖ after n steps from u, differentiated through every step w.r.t. K.

        Same value and gradient as autodiff through the unrolled steps, but the backward
        pass runs the steps' adjoints by hand (v̄ = A w̄, ū = Aᵀ v̄, normalization VJPs) and
        sums the 2n+1 kernel-gradient terms B(x, g) = ∂⟨g, A(K)x⟩/∂K with ONE batched
        `kernel_vjp`, instead of autodiff's 2n+1 batch-1 kernel gradients and their sum.
        Returns (σ, uₙ).
        """
        n = self.power_iterations
        kernel = ops.cast(kernel, kernel.dtype)  # a tensor read from it, when linear_kernel() is the variable
        frozen = ops.stop_gradient(kernel)
        us, trace, restart = [u], [], self._restart(u)
        for _ in range(n):
            us.append(self._step(us[-1], frozen, restart, trace))
        U = ops.stop_gradient(ops.concatenate(us, axis=0))  # u₀ … uₙ
        V = ops.stop_gradient(ops.concatenate([v for v, _ in trace], axis=0))  # vᵢ = A uᵢ₋₁
        SQ = ops.stop_gradient(ops.stack([sq for _, sq in trace]))  # ‖Aᵀvᵢ‖²

        @ops.custom_gradient
        def bound(kernel, U, V, SQ):
            z = self.apply_linear(U[n:], kernel)
            zsq = ops.sum(ops.square(z))
            sigma = ops.sqrt(ops.maximum(zsq, TINY))

            def grad(*args, upstream=None):
                up = args[0] if upstream is None else upstream
                zbar = ops.where(zsq > TINY, up / sigma, 0.0) * z
                # split once (one op each) rather than slicing per step (a StridedSlice and 3 constants)
                u_at, v_at, sq_at = ops.split(U, n + 1, axis=0), ops.split(V, n, axis=0), ops.unstack(SQ, n)
                xs, gs = [u_at[n]], [zbar]
                ubar = self.apply_adjoint(zbar, kernel)
                for i in range(n, 0, -1):
                    ui, sq = u_at[i], sq_at[i - 1]
                    wbar = (ubar - ui * ops.sum(ui * ubar)) / ops.sqrt(ops.maximum(sq, TINY))
                    wbar = ops.where(sq > TINY, wbar, 0.0)  # a restart is constant
                    vbar = self.apply_linear(wbar, kernel)
                    xs += [wbar, u_at[i - 1]]  # w = Aᵀv: B(w̄, v);  v = A u: B(u, v̄)
                    gs += [v_at[i - 1], vbar]
                    if i > 1:
                        ubar = self.apply_adjoint(vbar, kernel)
                kbar = self.kernel_vjp(ops.concatenate(xs, axis=0), ops.concatenate(gs, axis=0))
                return kbar, ops.zeros_like(U), ops.zeros_like(V), ops.zeros_like(SQ)

            return sigma, grad

        return bound(kernel, U, V, SQ), us[-1]

    def advance(self, kernel, u, gradient="last"):
        """`power_iterations` steps from the unit iterate u with the kernel K: (σ = ‖A uₙ‖, uₙ),
        σ differentiable w.r.t. K through every step (`"full"`) or only the last (`"last"`).
        A pure function of (K, u), so `layers.power_groups` can vectorize it over same-shaped
        layers (`power_group_key`)."""
        if gradient == "full" and self.has_kernel_vjp:
            return self._full_gradient_bound(kernel, u)
        loop_kernel = kernel if gradient == "full" else ops.stop_gradient(kernel)  # autodiff
        restart = self._restart(u)
        for _ in range(self.power_iterations):
            u = self._step(u, loop_kernel, restart)
        return safe_norm(self.apply_linear(u, kernel)), u

    def power_group_key(self):
        """Layers with equal keys compute `advance` with the same code on same-shaped tensors, so
        their power iterations can run as one vectorized computation; None (the default) opts out.
        Subclasses whose `apply_linear` depends only on the kernel's and iterate's shapes return
        a hashable key of those (and `power_iterations`)."""
        return None

    def power_estimate(self, training=False, gradient="last"):
        """Power-iteration estimate of ‖A‖₂ as a scalar tensor.

        training=True runs `power_iterations` steps from the stored iterate (`advance`), stores
        the result, and lets gradients flow only through the final `‖A u‖` (`gradient="last"`,
        the default) or through all steps (`gradient="full"`). training=False reuses the stored
        iterate without updating it.
        """
        check_gradient(gradient)
        kernel = self.linear_kernel()
        u = l2_normalize(ops.convert_to_tensor(self.iterate))
        if training and self.power_iterations > 0:
            sigma, u = self.advance(kernel, u, gradient)
            self.iterate.assign(ops.stop_gradient(u))
            return sigma
        return safe_norm(self.apply_linear(u, kernel))

    def converge_iterate(self, max_iterations=500, tolerance=1e-6, check_every=25):
        """Run power iteration (no gradients) until the estimate changes by less than
        `tolerance` (relative) between checks, or `max_iterations`; store the iterate.

        Returns the converged estimate as a Python float.
        """
        kernel = ops.stop_gradient(self.linear_kernel())
        u = l2_normalize(ops.convert_to_tensor(self.iterate))
        prev, done = None, 0
        sigma = float(ops.convert_to_numpy(safe_norm(self.apply_linear(u, kernel))))
        restart = self._restart(u)
        while done < max_iterations:
            n = min(check_every, max_iterations - done)
            for _ in range(n):
                u = self._step(u, kernel, restart)
            done += n
            sigma = float(ops.convert_to_numpy(safe_norm(self.apply_linear(u, kernel))))
            if prev is not None and abs(sigma - prev) <= tolerance * max(sigma, 1e-30):
                break
            prev = sigma
        self.iterate.assign(u)
        return sigma

    def get_config(self):
        config = super().get_config()
        config.update({"power_iterations": self.power_iterations})
        return config
