#!/usr/bin/env python
"""A/B of the batched kernel gradient `conv_kernel_vjp`: one im2col matmul where the patches are
cheap (the stem's 3 input channels; the neck's stride-4 4×4 kernel, whose patches tile its input)
vs a matmul per kernel tap for every layer (`im2col="never"`, the previous implementation).

    python bench/ab_kernel_vjp.py --config L6W64 --rounds 8

In the full bound gradient, the stem's 25 taps and the neck's 16 each ran a strided slice, a
transpose and a matmul of batch-1 power-iteration terms; at L6W128 the stem's and neck's bound
took 18 and 24 ms of the bound's 241 ms. This builds the GloRo model twice in ONE process with
the same weights (`_util.ab_twins`: the twin's LipschitzConv2D layers use `im2col="never"`, by
public Keras deserialization), reports the difference of their bound gradients, and
times training steps of both in rotating rounds (median per-round ratio, wall and CPU). The
LiResNet blocks (64+ input channels) sum over taps in both. Any Keras backend.
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _util as U  # noqa: E402  (sets the oneDNN default before TensorFlow is imported)


def per_tap_conv():
    import keras

    import gloro_keras as gk
    from gloro_keras.ops.conv import conv_kernel_vjp

    def kernel_vjp(self, x, g):
        return conv_kernel_vjp(x, g, self.kernel_size, self.strides, self.pads, im2col="never")

    cls = type("PerTapLipschitzConv2D", (gk.layers.LipschitzConv2D,), {"kernel_vjp": kernel_vjp})
    return {keras.saving.get_registered_name(gk.layers.LipschitzConv2D): cls}


if __name__ == "__main__":
    U.ab_bound(__doc__, per_tap_conv(), "per_tap", "im2col", "im2col ÷ per-tap kernel gradient")
