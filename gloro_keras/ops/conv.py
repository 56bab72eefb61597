"""Kernel gradients of 2-D convolutions, batched (keras.ops)."""
from keras import ops


def conv_kernel_vjp(x, g, kernel_size, strides, pads):
    """∂⟨g, conv(pad(x), K, strides)⟩/∂K for a batch of pairs, as Σ over taps of xᵀg matmuls.

    x: (b, H, W, Cin), g: (b, Ho, Wo, Cout) → (kh, kw, Cin, Cout). Summing the batch here is
    what lets one call replace a separate kernel gradient per power-iteration step.
    """
    (kh, kw), (sh, sw) = kernel_size, strides
    (pt, pb), (pl, pr) = pads
    if pt or pb or pl or pr:
        x = ops.pad(x, ((0, 0), (pt, pb), (pl, pr), (0, 0)))
    ho, wo, cout = g.shape[1], g.shape[2], g.shape[3]
    cin = x.shape[-1]
    g2 = ops.reshape(g, (-1, cout))
    taps = []
    for i in range(kh):
        for j in range(kw):
            xs = x[:, i : i + sh * (ho - 1) + 1 : sh, j : j + sw * (wo - 1) + 1 : sw, :]
            taps.append(ops.matmul(ops.transpose(ops.reshape(xs, (-1, cin))), g2))
    return ops.reshape(ops.stack(taps, axis=0), (kh, kw, cin, cout))
