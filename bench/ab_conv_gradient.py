#!/usr/bin/env python
"""A/B of the training convolutions' gradient on JAX: written out (`LipschitzLayer.linear_by_hand`:
x̄ = Aᵀḡ, K̄ summed over chunks of the batch) vs XLA's own gradient of `conv`.

    KERAS_BACKEND=jax python bench/ab_conv_gradient.py --config L6W64 --rounds 6

Builds the network twice in ONE process with the same weights: as shipped, and rebuilt from its
config (`_util.ab_twins`) with subclasses of LiResNetBlock and LipschitzConv2D whose
`training_linear` is `apply_linear` (autodiff). For the plain network (sparse cross-entropy) and
the GloRo model (EMMA, bound_gradient="full"): checks that the gradients of the training call agree (jitted, as in `fit`), then times training steps of both twins in
rotating rounds (`_util.ab_steps`). On TensorFlow both twins run autodiff (the layers choose
`linear_by_hand` on JAX only), so the script is for the JAX backend.
"""
import os
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _util as U  # noqa: E402

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def autodiff_layers():
    """Subclasses of the conv layers whose training call is `apply_linear` (autodiff), by name."""
    import keras

    import gloro_keras as gk

    def training_linear(self, x, kernel):
        return self.apply_linear(x, kernel)

    return {keras.saving.get_registered_name(cls): type(f"Autodiff{cls.__name__}", (cls,),
                                                         {"training_linear": training_linear})
            for cls in (gk.layers.LiResNetBlock, gk.layers.LipschitzConv2D)}


def gradient_difference(models, x):
    """Largest difference between the twins' gradients of a fixed linear function of the network's
    training-call output (relative to each tensor's max), jitted. JAX only."""
    import jax
    import jax.numpy as jnp

    grads = {}
    for name, m in models.items():
        net = getattr(m, "network", m)
        fixed = [v.value for v in net.non_trainable_variables]

        def loss(trainable, net=net, fixed=fixed):
            out, _ = net.stateless_call(trainable, fixed, x, training=True)
            return jnp.sum(out * (jnp.arange(out.shape[-1]) % 3 - 1))

        grads[name] = jax.jit(jax.grad(loss))([v.value for v in net.trainable_variables])
    return max(float(np.abs(a - b).max() / (np.abs(b).max() + 1e-30))
               for a, b in zip(grads["by_hand"], grads["autodiff"]))


def main():
    args, L, W = U.ab_args(__doc__)

    import keras

    if keras.backend.backend() != "jax":
        sys.exit("ab_conv_gradient.py compares JAX's two gradients: run it with KERAS_BACKEND=jax.")
    x, y, _, source = U.load_arrays()
    print(f"{args.config}, batch {len(y)} from {source}; Keras backend jax", flush=True)
    U.ab_kinds(args, L, W, autodiff_layers(), "autodiff", "by_hand", "by hand ÷ autodiff conv gradient",
               x, y, difference=lambda models: gradient_difference(models, x))


if __name__ == "__main__":
    main()
