"""Kernel gradients of 2-D convolutions, batched (keras.ops)."""
import math

from keras import ops


PATCH_CHANNELS = 16  # below this many input channels, one im2col matmul beats a matmul per tap


def conv_kernel_vjp(x, g, kernel_size, strides, pads, im2col="auto"):
    """∂⟨g, conv(pad(x), K, strides)⟩/∂K for a batch of pairs: K̄[i, j] = Σ_{b,p,q}
    x_pad[b, p·sh + i, q·sw + j]ᵀ g[b, p, q].

    x: (b, H, W, Cin), g: (b, Ho, Wo, Cout) → (kh, kw, Cin, Cout). Summing the batch here is
    what lets one call replace a separate kernel gradient per power-iteration step. Computed as
    one matmul of the patches (b·Ho·Wo, kh·kw·Cin) with g when the patches are cheap to form (a
    reshape where the kernel tiles x, stride = kernel size; a concatenation of the taps when Cin
    is small), else as a sum over taps of one (Cin × b·Ho·Wo)·(b·Ho·Wo × Cout) matmul each;
    im2col="never" always sums over taps (bench/ab_kernel_vjp.py compares the two).
    """
    if im2col not in ("auto", "never"):
        raise ValueError(f"im2col must be 'auto' or 'never'. Received: im2col={im2col!r}")
    (kh, kw), (sh, sw) = kernel_size, strides
    (pt, pb), (pl, pr) = pads
    if pt or pb or pl or pr:
        x = ops.pad(x, ((0, 0), (pt, pb), (pl, pr), (0, 0)))
    ho, wo, cout = g.shape[1], g.shape[2], g.shape[3]
    cin = x.shape[-1]
    g2 = ops.reshape(g, (-1, cout))

    def tap(i, j):
        return x[:, i : i + sh * (ho - 1) + 1 : sh, j : j + sw * (wo - 1) + 1 : sw, :]

    if im2col == "auto" and (kh, kw) == (sh, sw):  # x[b, p·kh + i, q·kw + j] is x6[b, p, i, q, j]
        x6 = ops.reshape(x[:, : ho * kh, : wo * kw, :], (-1, ho, kh, wo, kw, cin))
        patches = ops.transpose(x6, (0, 1, 3, 2, 4, 5))
    elif im2col == "auto" and cin < PATCH_CHANNELS:
        patches = ops.concatenate([tap(i, j) for i in range(kh) for j in range(kw)], axis=-1)
    else:
        taps = [ops.matmul(ops.transpose(ops.reshape(tap(i, j), (-1, cin))), g2)
                for i in range(kh) for j in range(kw)]
        return ops.reshape(ops.stack(taps, axis=0), (kh, kw, cin, cout))
    patches = ops.reshape(patches, (-1, kh * kw * cin))  # rows (b, p, q), columns (i, j, Cin)
    return ops.reshape(ops.matmul(ops.transpose(patches), g2), (kh, kw, cin, cout))


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
