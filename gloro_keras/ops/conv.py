"""Kernel gradients of 2-D convolutions, batched (keras.ops)."""
import math

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


CHUNK_ROWS = 2048  # output positions per chunk in `chunked_kernel_vjp` (4-8 images at 16×16 were fastest)


def examples_per_chunk(batch, rows_per_example, rows=CHUNK_ROWS):
    """The largest divisor of `batch` whose chunk has at most `rows` output rows (≥ 1)."""
    limit = max(1, rows // max(1, int(rows_per_example)))
    return max(d for d in range(1, min(batch, limit) + 1) if batch % d == 0)


def chunked_kernel_vjp(kernel_vjp, x, g, kernel, rows=CHUNK_ROWS):
    """`kernel_vjp(x, g)` (∂⟨g, A(K)x⟩/∂K, a sum over the batch) as a sum over chunks of the
    batch, accumulated in float32 by `ops.scan`; a chunk has at most `rows` output positions
    (g's batch × spatial). Returns the gradient in `kernel`'s dtype.

    On XLA:CPU (JAX) a chunk's patches stay in cache: the whole batch at once, or XLA's own
    gradient of `conv`, runs 2.3–2.6× slower at LiResNet's shapes (bench/results/ab_conv_gradient.md).
    """
    batch = x.shape[0]
    per = examples_per_chunk(batch, math.prod(g.shape[1:-1]), rows)
    if per >= batch:
        return ops.cast(kernel_vjp(x, g), kernel.dtype)
    n = batch // per
    xs = ops.reshape(x, (n, per) + tuple(x.shape[1:]))
    gs = ops.reshape(g, (n, per) + tuple(g.shape[1:]))

    def add(total, pair):
        return total + ops.cast(kernel_vjp(*pair), "float32"), None

    total, _ = ops.scan(add, ops.zeros(kernel.shape, "float32"), (xs, gs))
    return ops.cast(total, kernel.dtype)
