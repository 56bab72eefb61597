#!/usr/bin/env python
"""A/B of a strided LipschitzConv2D's power iteration (the stem, k5 s2, and the neck, k4 s4):
A and Aᵀ on the one-example iterate as a gather of its patches and a matmul (`example_conv`,
as shipped) vs TensorFlow's / XLA's convolution kernels (`conv` and `conv_transpose`, before).

    python bench/ab_example_conv.py --config L6W64 --rounds 8
    python bench/ab_example_conv.py --parts                       # each layer's bound alone

Builds the GloRo model twice in ONE process with the same weights (`_util.ab_twins`: every
LipschitzConv2D of the twin replaced by a subclass whose `apply_linear`/`apply_adjoint` always
convolve, by public Keras deserialization), reports the difference of their bound gradients and
times training steps of both in rotating rounds (median per-round ratio, wall and CPU).
`--parts` instead times one layer's bound with its `full` gradient alone, in a `tf.function`
(stem and neck at W = 64 and 128; TensorFlow only). Any Keras backend for the steps.
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _util as U  # noqa: E402  (sets the oneDNN default before TensorFlow is imported)


def convolving_layer():
    """LipschitzConv2D whose A and Aᵀ always run `ops.conv` / `ops.conv_transpose` (the code
    shipped before `example_conv`)."""
    import keras
    from keras import ops

    import gloro_keras as gk

    base = gk.layers.LipschitzConv2D

    def apply_linear(self, x, kernel):
        (pt, pb), (pl, pr) = self.pads
        if self.strides == (1, 1):
            return base.apply_linear(self, x, kernel)
        x = ops.pad(x, ((0, 0), (pt, pb), (pl, pr), (0, 0)))
        return ops.conv(x, kernel, strides=self.strides, padding="valid")

    def apply_adjoint(self, v, kernel):
        if self.strides == (1, 1):
            return base.apply_adjoint(self, v, kernel)
        (kh, kw), (sh, sw), (ho, wo) = self.kernel_size, self.strides, self.output_hw
        out_pad = (self.padded_hw[0] - ((ho - 1) * sh + kh), self.padded_hw[1] - ((wo - 1) * sw + kw))
        x = ops.conv_transpose(v, kernel, strides=self.strides, padding="valid",
                               output_padding=out_pad if any(out_pad) else None)
        (pt, pb), (pl, pr) = self.pads
        h, w = self.input_hw
        return x[:, pt : pt + h, pl : pl + w, :]

    cls = type("ConvolvingLipschitzConv2D", (base,), {"apply_linear": apply_linear, "apply_adjoint": apply_adjoint})
    return {keras.saving.get_registered_name(base): cls}


def parts(rounds=15):
    """Each strided layer's bound + `full` gradient alone: shipped ÷ convolving, same weights."""
    import numpy as np
    import tensorflow as tf

    import gloro_keras as gk

    (conv_cls,) = convolving_layer().values()
    geometries = {"stem": (dict(kernel_size=5, strides=2, padding=2), (None, 32, 32, 3), 1),
                  "neck": (dict(kernel_size=4, strides=4, padding=0), (None, 16, 16, None), 2)}
    for W in (64, 128):
        for name, (geo, shape, mult) in geometries.items():
            shape = shape[:3] + (shape[3] or W,)
            layers = [cls(mult * W, **geo) for cls in (gk.layers.LipschitzConv2D, conv_cls)]
            for layer in layers:
                layer.build(shape)
            for a, b in zip(layers[0].weights, layers[1].weights):
                b.assign(a)
            start = layers[0].iterate.numpy()

            def bound(layer):
                @tf.function
                def f():
                    with tf.GradientTape() as tape:
                        s = layer.power_estimate(training=True)
                    return s, tape.gradient(s, layer.kernel)
                return f

            fns = [bound(layer) for layer in layers]
            out = []
            for layer, f in zip(layers, fns):
                layer.iterate.assign(start)
                out.append([t.numpy() for t in f()])
            diff = float(np.abs(out[0][1] - out[1][1]).max() / np.abs(out[1][1]).max())
            times = U.round_robin({"shipped": fns[0], "conv": fns[1]}, rounds)
            p = U.paired(times["shipped"], times["conv"])
            print(f"W{W} {name} bound + full gradient, ms (median): shipped {1e3 * U.med(times['shipped']['wall']):.2f}, "
                  f"conv {1e3 * U.med(times['conv']['wall']):.2f}; shipped ÷ conv wall {p['median']:.3f} "
                  f"[{p['min']:.3f}–{p['max']:.3f}], CPU {p['cpu_median']:.3f}; σ {out[0][0]:.6f} vs {out[1][0]:.6f}, "
                  f"gradient difference (relative) {diff:.1e}", flush=True)


if __name__ == "__main__":
    if "--parts" in sys.argv:
        U.tf_keras()
        parts()
    else:
        U.ab_bound(__doc__, convolving_layer(), "conv", "example_conv", "gather + matmul ÷ convolution (strided layers' iterate)")
