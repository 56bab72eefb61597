"""Print converged power-iteration and sound bounds against exact spectral norms (SVD of the
explicit operator matrix) for every bounded layer type at small shapes.

    python tools/bound_tightness.py
"""
import keras
import numpy as np

from gloro_keras.bounds import conv2d_operator_matrix
from gloro_keras.layers import LipschitzConv2D, LipschitzDense, LiResNetBlock

CASES = [
    ("conv 3x3 same, 8x8x4->6", lambda: LipschitzConv2D(6, 3, kernel_initializer="glorot_normal"), (8, 8, 4)),
    ("stem k5 s2 p2, 16x16x3->8", lambda: LipschitzConv2D(8, 5, strides=2, padding=2, kernel_initializer="glorot_normal"), (16, 16, 3)),
    ("stem k7 s4 p3, 16x16x3->8", lambda: LipschitzConv2D(8, 7, strides=4, padding=3, kernel_initializer="glorot_normal"), (16, 16, 3)),
    ("patchify k4 s4, 16x16x3->8", lambda: LipschitzConv2D(8, 4, strides=4, padding=0, kernel_initializer="glorot_normal"), (16, 16, 3)),
    ("neck k4 s4, 8x8x8->16", lambda: LipschitzConv2D(16, 4, strides=4, padding=0, kernel_initializer="glorot_normal"), (8, 8, 8)),
    ("LiResNet block L=6, 8x8x8", lambda: LiResNetBlock(num_blocks=6), (8, 8, 8)),
    ("LiResNet block L=1, V*30, 8x8x8", lambda: LiResNetBlock(num_blocks=1), (8, 8, 8)),
    ("dense 64->32", lambda: LipschitzDense(32, kernel_initializer="glorot_normal"), (64,)),
]


def main():
    keras.utils.set_random_seed(0)
    print(f"{'layer':34s} {'exact (SVD)':>12s} {'power/exact':>12s} {'sound/exact':>12s}")
    for name, make, shape in CASES:
        layer = make()
        layer(keras.Input(shape))
        if "V*30" in name:
            layer.residual_kernel.assign(layer.residual_kernel * 30.0)
        k = keras.ops.convert_to_numpy(layer.linear_kernel()).astype("float64")
        if len(shape) == 1:
            exact = np.linalg.norm(k, 2)
        else:
            pads = layer.pads if hasattr(layer, "pads") else ((1, 1), (1, 1))
            strides = layer.strides if hasattr(layer, "strides") else (1, 1)
            exact = np.linalg.svd(conv2d_operator_matrix(k, shape[:2], strides, pads), compute_uv=False)[0]
        power = layer.converge_iterate(max_iterations=5000, tolerance=1e-10)
        sound = layer.sound_bound()
        print(f"{name:34s} {exact:12.6f} {power / exact:12.8f} {sound / exact:12.8f}")


if __name__ == "__main__":
    main()
