#!/usr/bin/env python
"""A/B of MinMax: the layer as shipped vs a baseline implementation.

    python bench/ab_minmax.py --config L6W64 --rounds 6                     # vs autodiff
    python bench/ab_minmax.py --config L6W128 --rounds 6 --baseline split   # vs split/concat kernels

Baselines: `autodiff`, `concat([maximum(a, b), minimum(a, b)])` of `split(x, 2)` differentiated by
autodiff (the first implementation); `split`, the shipped mask gradient and XLA fusion written with
split/concatenate on the channel axis (shipped until the (n, 2, c/2) view replaced it).
Builds the same network twice in ONE process with the same weights: as shipped, and with every
MinMax replaced by a subclass running the baseline, rebuilt from the network's config by
public Keras deserialization (`keras.Model.from_config` inside `keras.saving.custom_object_scope`).
For the plain network (sparse cross-entropy) and the GloRo model (EMMA, bound_gradient="full"):
checks that the gradients agree (TensorFlow: in a graph, as in `fit`), then times training steps of
both twins in rotating rounds (`_util.round_robin`; median per-round ratio, wall and CPU time). Any
Keras backend.
"""
import os
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _util as U  # noqa: E402  (sets the oneDNN default before TensorFlow is imported)

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def autodiff_minmax():
    import keras
    from keras import ops

    import gloro_keras as gk

    def call(self, x):
        if self.pairing != "halves":
            return gk.layers.MinMax.call(self, x)
        a, b = ops.split(x, 2, axis=-1)
        return ops.concatenate([ops.maximum(a, b), ops.minimum(a, b)], axis=-1)

    cls = type("AutodiffMinMax", (gk.layers.MinMax,), {"call": call})
    return {keras.saving.get_registered_name(gk.layers.MinMax): cls}


def split_minmax():
    import functools

    import keras
    import tensorflow as tf
    from keras import ops

    import gloro_keras as gk

    def forward(x):
        a, b = ops.split(x, 2, axis=-1)
        return ops.concatenate([ops.maximum(a, b), ops.minimum(a, b)], axis=-1), ops.greater_equal(a, b)

    def backward(keep, g):
        ga, gb = ops.split(g, 2, axis=-1)
        return ops.concatenate([ops.where(keep, ga, gb), ops.where(keep, gb, ga)], axis=-1)

    @functools.cache
    def fused():
        return (tf.function(forward, jit_compile=True, autograph=False),
                tf.function(backward, jit_compile=True, autograph=False))

    @ops.custom_gradient
    def sort_halves(x):
        fwd, bwd = (forward, backward) if tf.executing_eagerly() else fused()
        y, keep = fwd(x)

        def grad(*args, upstream=None):
            return bwd(keep, args[0] if upstream is None else upstream)

        return y, grad

    def call(self, x):
        return gk.layers.MinMax.call(self, x) if self.pairing != "halves" else sort_halves(x)

    cls = type("SplitMinMax", (gk.layers.MinMax,), {"call": call})
    return {keras.saving.get_registered_name(gk.layers.MinMax): cls}


BASELINES = {"autodiff": autodiff_minmax, "split": split_minmax}


def gradient_difference(models, x, baseline):
    """Largest difference between the twins' network gradients (relative to each tensor's max),
    computed in a tf.function as in `fit`, where MinMax runs its XLA-fused kernels. TensorFlow only."""
    import tensorflow as tf

    grads = {}
    for name, m in models.items():
        net = getattr(m, "network", m)  # GloroModel: its network

        @tf.function
        def gradient(net=net):
            with tf.GradientTape() as tape:
                out = net(x, training=True)
                loss = tf.reduce_sum(out * tf.cast(tf.range(out.shape[-1]) % 3 - 1, out.dtype))
            return tape.gradient(loss, net.trainable_variables)

        grads[name] = [g.numpy() for g in gradient()]
    return max(float(np.abs(a - b).max() / (np.abs(b).max() + 1e-30))
               for a, b in zip(grads[baseline], grads["layer"]))


def main():
    args, L, W = U.ab_args(__doc__, baseline=("autodiff", tuple(BASELINES)))

    import keras

    x, y, _, source = U.load_arrays()
    tensorflow = keras.backend.backend() == "tensorflow"
    if tensorflow:
        x, y = keras.ops.convert_to_tensor(x), keras.ops.convert_to_tensor(y)
    print(f"{args.config}, batch {len(y)} from {source}; "
          + (f"oneDNN {U.onednn_state()['onednn']}" if tensorflow
             else f"Keras backend {keras.backend.backend()} (no gradient check)"), flush=True)
    U.ab_kinds(args, L, W, BASELINES[args.baseline](), args.baseline, "layer", f"layer ÷ {args.baseline} MinMax",
               x, y, difference=(lambda models: gradient_difference(models, x, args.baseline)) if tensorflow else None)


if __name__ == "__main__":
    main()
