#!/usr/bin/env python
"""A/B of a LiResNet block's adjoint Aᵀ in power iteration: `conv_transpose` (as shipped) vs a
forward convolution with the flipped, transposed kernel (the same map for stride 1 and an odd,
'same'-padded kernel).

    python bench/ab_adjoint.py --config L6W128 --rounds 6

In the TensorFlow profile of the bound's forward and backward pass (L6W128), the batch-1
`Conv2DBackpropInput` ops of `conv_transpose` averaged 0.93 ms against 0.70 ms for the forward
convolutions, which suggested running Aᵀ as a forward convolution. This builds the GloRo model
twice in ONE process with the same weights (`_util.ab_twins`: every LiResNetBlock of the twin
replaced by a subclass with that `apply_adjoint`, by public Keras deserialization), reports
the difference of their bound gradients, and times training steps of both in
rotating rounds (median per-round ratio, wall and CPU). Any Keras backend.
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _util as U  # noqa: E402  (sets the oneDNN default before TensorFlow is imported)


def flipped_block():
    import keras
    from keras import ops

    import gloro_keras as gk

    def apply_adjoint(self, v, kernel):
        if self.kernel_size % 2 == 0:  # asymmetric 'same' padding: not the same map
            return gk.layers.LiResNetBlock.apply_adjoint(self, v, kernel)
        flipped = ops.transpose(ops.flip(kernel, axis=(0, 1)), (0, 1, 3, 2))
        return ops.conv(v, flipped, strides=1, padding="same")

    cls = type("FlippedAdjointLiResNetBlock", (gk.layers.LiResNetBlock,), {"apply_adjoint": apply_adjoint})
    return {keras.saving.get_registered_name(gk.layers.LiResNetBlock): cls}


if __name__ == "__main__":
    U.ab_bound(__doc__, flipped_block(), "conv_transpose", "flipped", "flipped-kernel conv ÷ conv_transpose adjoint")
