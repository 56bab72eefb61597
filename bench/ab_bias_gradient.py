#!/usr/bin/env python
"""A/B of the bias gradient of the training convolutions: `add_bias` (as shipped: on TensorFlow
the bias gradient of float32 images is one matmul 1ᵀ·ḡ) vs the broadcast addition `y + b`
(TensorFlow's gradient: `Sum` over the batch and spatial axes).

    python bench/ab_bias_gradient.py --config L6W128 --rounds 8
    python bench/ab_bias_gradient.py --parts          # the reductions alone, 256×16×16×W

Builds each network twice in ONE process with the same weights (`_util.ab_twins`: every
LiResNetBlock and LipschitzConv2D of the twin replaced by a subclass whose training call adds
its bias by broadcasting, by public Keras deserialization), checks that the gradients agree
and times plain and GloRo training steps of both in rotating rounds (median per-round ratio,
wall and CPU). TensorFlow (elsewhere `add_bias` is the broadcast addition).
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _util as U  # noqa: E402  (sets the oneDNN default before TensorFlow is imported)


def broadcast_bias():
    import keras

    import gloro_keras as gk

    def block_call(self, x, training=None):
        if not training:
            return gk.layers.LiResNetBlock.call(self, x, training=training)
        return self.training_linear(x, self.linear_kernel()) + self.bias

    def conv_call(self, x, training=None):
        if not training:
            return gk.layers.LipschitzConv2D.call(self, x, training=training)
        return self.training_linear(x, self.kernel) + self.bias

    out = {}
    for base, call in ((gk.layers.LiResNetBlock, block_call), (gk.layers.LipschitzConv2D, conv_call)):
        out[keras.saving.get_registered_name(base)] = type(f"Broadcast{base.__name__}", (base,), {"call": call})
    return out


def parts(rounds=30):
    """Σ over (b, h, w) of a (256, 16, 16, W) float32 tensor: TensorFlow's Sum (the broadcast's
    gradient), BiasAddGrad, and the matmul 1ᵀ·ḡ, each in its own tf.function, alternating."""
    import numpy as np
    import tensorflow as tf

    for w in (64, 128):
        g = tf.random.normal((256, 16, 16, w))
        ones = tf.ones((1, 256 * 16 * 16))
        fns = {"Sum": tf.function(lambda g: tf.reduce_sum(g, axis=[0, 1, 2])),
               "BiasAddGrad": tf.function(lambda g: tf.raw_ops.BiasAddGrad(out_backprop=g)),
               "matmul": tf.function(lambda g, w=w: tf.matmul(ones, tf.reshape(g, (-1, w)))[0])}
        ref = np.sum(g.numpy().astype("float64"), axis=(0, 1, 2))
        errs = {k: float(np.abs(f(g).numpy() - ref).max() / np.abs(ref).max()) for k, f in fns.items()}
        times = U.round_robin({k: (lambda f=f: f(g).numpy()) for k, f in fns.items()}, rounds)
        print(f"W{w}: " + ", ".join(f"{k} {1e3 * U.med(t['wall']):.2f} ms (error vs float64 {errs[k]:.1e})"
                                    for k, t in times.items()), flush=True)


def main():
    args, L, W = U.ab_args(__doc__)
    tf, _ = U.tf_keras()
    from ab_minmax import gradient_difference

    x, y, _, source = U.load_arrays()
    x, y = tf.convert_to_tensor(x), tf.convert_to_tensor(y)
    print(f"{args.config}, batch {len(y)} from {source}; oneDNN {U.onednn_state()['onednn']}", flush=True)
    U.ab_kinds(args, L, W, broadcast_bias(), "broadcast", "layer", "add_bias (matmul) ÷ broadcast bias gradient",
               x, y, difference=lambda models: gradient_difference(models, x, "broadcast"))


if __name__ == "__main__":
    if "--parts" in sys.argv:
        U.tf_keras()
        parts()
    else:
        main()
