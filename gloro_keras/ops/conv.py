"""2-D convolutions as matmuls: batched kernel gradients, one-example maps (keras.ops)."""
import math

import numpy as np
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


def patch_index(padded_hw, kernel_size, strides):
    """Flat positions in a padded (Hp, Wp) image of every kernel tap at every output position.

    Returns an int32 vector of length Ho·Wo·kh·kw, ordered (p, q, i, j): entry
    `(p·sh + i)·Wp + (q·sw + j)`, so gathering an example's rows `(Hp·Wp, C)` by it and
    reshaping to `(Ho·Wo, kh·kw·C)` gives the patches whose product with the kernel reshaped
    to `(kh·kw·C, Cout)` is the 'valid' strided convolution.

    Example:
    >>> patch_index((4, 4), (2, 2), (2, 2))[:4]   # output (0, 0): taps (0,0) (0,1) (1,0) (1,1)
    array([0, 1, 4, 5], dtype=int32)
    """
    (hp, wp), (kh, kw), (sh, sw) = padded_hw, kernel_size, strides
    ho, wo = (hp - kh) // sh + 1, (wp - kw) // sw + 1
    rows = np.arange(ho)[:, None, None, None] * sh + np.arange(kh)[None, None, :, None]
    cols = np.arange(wo)[None, :, None, None] * sw + np.arange(kw)[None, None, None, :]
    return (rows * wp + cols).reshape(-1).astype("int32")


def _kernel_matrix(kernel):
    return ops.reshape(kernel, (-1, kernel.shape[-1]))  # rows (i, j, Cin), columns Cout


def example_conv(x, kernel, index, pads, output_hw):
    """conv(zero_pad(x), K, strides) of ONE example x (1, H, W, Cin) as a gather of its patches
    (`patch_index`) and one matmul → (1, Ho, Wo, Cout). The same linear map as `ops.conv`
    (float32 sums in another order); for a strided convolution on one example (a power-iteration
    iterate) it is cheaper than TensorFlow's convolution kernels."""
    (pt, pb), (pl, pr) = pads
    cin = x.shape[-1]
    x = ops.reshape(ops.pad(x, ((0, 0), (pt, pb), (pl, pr), (0, 0))), (-1, cin))
    patches = ops.reshape(ops.take(x, index, axis=0), (output_hw[0] * output_hw[1], -1))
    return ops.reshape(ops.matmul(patches, _kernel_matrix(kernel)), (1, *output_hw, kernel.shape[-1]))


def example_conv_transpose(v, kernel, index, pads, input_hw):
    """The adjoint of `example_conv`: v (1, Ho, Wo, Cout) → (1, H, W, Cin), by one matmul with
    Kᵀ and a scatter-add of the patches' rows back to their positions (`ops.segment_sum`),
    then the crop of the padding."""
    (pt, pb), (pl, pr) = pads
    h, w = input_hw
    hp, wp = h + pt + pb, w + pl + pr
    cin = kernel.shape[-2]
    cols = ops.matmul(ops.reshape(v, (-1, kernel.shape[-1])), ops.transpose(_kernel_matrix(kernel)))
    x = ops.segment_sum(ops.reshape(cols, (-1, cin)), index, num_segments=hp * wp)
    return ops.reshape(x, (1, hp, wp, cin))[:, pt : pt + h, pl : pl + w, :]
