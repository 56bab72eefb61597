#!/usr/bin/env python
"""A/B of MinMax's gradient: the layer's own (one mask, two selects) vs autodiff of maximum/minimum.

    python bench/ab_minmax.py --config L6W64 --rounds 6

Builds the same network twice in ONE process with the same weights: as shipped, and with every
MinMax replaced by a subclass whose `call` is `concat([maximum(a, b), minimum(a, b)])`
differentiated by autodiff (the previous implementation), rebuilt from the network's config by
public Keras deserialization (`keras.Model.from_config` inside `keras.saving.custom_object_scope`).
For the plain network (sparse cross-entropy) and the GloRo model (EMMA, bound_gradient="full"):
checks that the gradients agree (TensorFlow: in a graph, as in `fit`), then times training steps of
both twins in rotating rounds (`_util.round_robin`; median per-round ratio, wall and CPU time). Any
Keras backend.
"""
import argparse
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


def twins(kind, L, W):
    import keras

    import gloro_keras as gk

    keras.utils.set_random_seed(0)
    net = U.network(L, W)
    with keras.saving.custom_object_scope(autodiff_minmax()):
        old = keras.Model.from_config(net.get_config())
    old.set_weights(net.get_weights())
    out = {}
    for name, n in (("autodiff", old), ("layer", net)):
        if kind == "plain":
            m = n
            m.compile(optimizer=U.make_optimizer(),
                      loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        else:
            m = gk.GloroModel(n, epsilon=U.EPSILON, bound_gradient="full")
            m.compile(optimizer=U.make_optimizer(), loss="emma")
        out[name] = m
    return out


def gradient_difference(models, x):
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
               for a, b in zip(grads["autodiff"], grads["layer"]))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", default="L6W64")
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--kinds", default="plain,gloro")
    args = ap.parse_args()
    L, W = U.parse_config(args.config)

    import keras

    x, y, _, source = U.load_arrays()
    tensorflow = keras.backend.backend() == "tensorflow"
    if tensorflow:
        x, y = keras.ops.convert_to_tensor(x), keras.ops.convert_to_tensor(y)
    print(f"{args.config}, batch {len(y)} from {source}; "
          + (f"oneDNN {U.onednn_state()['onednn']}" if tensorflow
             else f"Keras backend {keras.backend.backend()} (no gradient check)"), flush=True)
    for kind in args.kinds.split(","):
        models = twins(kind, L, W)
        if tensorflow:
            print(f"{kind}: largest gradient difference (relative to the tensor's max) "
                  f"{gradient_difference(models, x):.2g}", flush=True)
        for m in models.values():
            m.train_on_batch(x, y)
            m.train_on_batch(x, y)
        times = U.round_robin({k: (lambda m=m: m.train_on_batch(x, y)) for k, m in models.items()},
                              args.rounds, calls=2)
        p = U.paired(times["layer"], times["autodiff"])
        print(f"{kind} step ms (median): "
              + ", ".join(f"{k} {1e3 * U.med(t['wall']):.0f}" for k, t in times.items()))
        print(f"{kind}: layer ÷ autodiff MinMax step time: wall {p['median']:.3f} [{p['min']:.3f}–{p['max']:.3f}], "
              f"CPU {p['cpu_median']:.3f} [{p['cpu_min']:.3f}–{p['cpu_max']:.3f}]", flush=True)


if __name__ == "__main__":
    main()
