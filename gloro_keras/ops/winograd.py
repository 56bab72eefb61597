"""A 3×3 'same' stride-1 convolution by Winograd's F(4×4, 3×3) algorithm, with its gradient.

With 6×6 input tiles d (stride 4, overlapping by 2) of the zero-padded input, the kernel g
(3×3 per channel pair) and the 4×4 output tiles y:

    V = Bᵀ d B,   U = G g Gᵀ,   M[a, b] = V[a, b] · U[a, b]  (a matmul over channels),   y = Aᵀ M A

which is the correlation `ops.conv(x, g, padding="same")` in exact arithmetic with 36 instead
of 144 multiplications per tile and channel pair (4× fewer multiply-adds). The transforms are
sums of shifted copies (memory passes); the 36 channel matmuls do the arithmetic. Rounding is
larger than a direct convolution's (≈ 1e-5 relative in float32, from Bᵀ's entries up to 5 and
Aᵀ's up to 8), so it serves training calls only: inference, bounds and certificates never use it.

The gradient is written out: x̄ = T_inᵀ(M̄ Uᵀ), ḡ = Gᵀ (Vᵀ M̄) G with M̄ = T_outᵀ(ȳ), V recomputed
from x rather than kept: between forward and backward it keeps what a convolution's autodiff keeps
(x), but its transients are 2.25× the input, so a training step peaks higher (+300–500 MB at
L6W64 / L6W128, bench/results/ab_winograd.md).
"""
import keras
import numpy as np
from keras import ops

from gloro_keras.ops.fused import xla_fused

# Lavin & Gray (2016), F(4, 3): Bᵀ (6×6), G (6×3), Aᵀ (4×6).
_BT = np.array([[4, 0, -5, 0, 1, 0], [0, -4, -4, 1, 1, 0], [0, 4, -4, -1, 1, 0],
                [0, -2, -1, 2, 1, 0], [0, 2, -1, -2, 1, 0], [0, 4, 0, -5, 0, 1]], "float64")
_G = np.array([[1 / 4, 0, 0], [-1 / 6, -1 / 6, -1 / 6], [-1 / 6, 1 / 6, -1 / 6],
               [1 / 24, 1 / 12, 1 / 6], [1 / 24, -1 / 12, 1 / 6], [0, 0, 1]], "float64")
_AT = np.array([[1, 1, 1, 1, 1, 0], [0, 1, -1, 2, -2, 0], [0, 1, 1, 4, 4, 0],
                [0, 1, -1, 8, -8, 1]], "float64")
TILE = 4


def winograd_applies(x_shape, kernel_shape):
    """Whether `winograd_conv3x3` takes these shapes: (n, H, W, C) with H, W, C static (n may
    be None), H and W multiples of 4, and a (3, 3, C, D) kernel."""
    return (len(x_shape) == 4 and all(d is not None for d in x_shape[1:])
            and x_shape[1] % TILE == 0 and x_shape[2] % TILE == 0
            and tuple(kernel_shape[:2]) == (3, 3))


MAX_DIRECT_CHANNELS = 32  # at this many channels or fewer the direct convolution is as fast or faster


def winograd_pays(channels=None):
    """Whether training calls should use it here: on CPU (XLA:CPU's and oneDNN's direct
    convolutions; GPU libraries choose their own algorithms, Winograd among them), on JAX outside a
    `keras.distribution` (not measured sharded), and for more than `MAX_DIRECT_CHANNELS` channels
    (`channels`: the smaller of the kernel's input and output channels; None skips that test).

    A block's three training convolutions, Winograd ÷ direct, batch 256 of 16×16×W
    (bench/results/ab_winograd.md): TensorFlow 1.90 / 1.35 / 1.14 at W = 16 / 24 / 32, 0.84 / 0.86 /
    0.93 / 0.66 at W = 40 / 48 / 64 / 128; JAX 1.10 / 0.93 at W = 16 / 32, 0.88 / 0.59 at W = 40 / 64.
    Where they are even, the direct convolution wins by its memory (Winograd's transients).
    """
    if channels is not None and channels <= MAX_DIRECT_CHANNELS:
        return False
    if keras.backend.backend() == "jax":
        import jax

        return jax.default_backend() == "cpu" and keras.distribution.distribution() is None
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        return not tf.config.list_logical_devices("GPU")
    return False


def _combine(matrix, parts):
    """[Σ_j matrix[i, j]·parts[j] for each row i], skipping zero coefficients."""
    out = []
    for row in matrix:
        acc = None
        for c, t in zip(row, parts):
            if c == 0:
                continue
            term = t if c == 1 else -t if c == -1 else t * float(c)
            acc = term if acc is None else acc + term
        out.append(acc)
    return out


def _axis_slice(t, axis, start, stop, step=1):
    index = [slice(None)] * len(t.shape)
    index[axis] = slice(start, stop, step)
    return t[tuple(index)]


def _windows(t, axis):
    """The 6 entries of every 6-wide window (stride 4) along `axis` (length 4T) of t zero-padded by 1
    on both ends, as 6 tensors with T on `axis`: entries 1-4 are the tile's own 4 (a reshape, no
    copy), entry 0 the previous tile's last and entry 5 the next tile's first (0 at the ends). The
    padded tensor is never built: XLA ran the pad as its own memory pass, and without it the input
    transform takes 0.70-0.88x the time (bench/README.md)."""
    shape = [-1 if d is None else d for d in t.shape]  # the batch axis may be dynamic
    tiles = shape[axis] // TILE
    r = ops.reshape(t, shape[:axis] + [tiles, TILE] + shape[axis + 1:])
    own = [r[(slice(None),) * (axis + 1) + (k,)] for k in range(TILE)]
    zero = ops.zeros_like(_axis_slice(own[0], axis, 0, 1))
    before = ops.concatenate([zero, _axis_slice(own[TILE - 1], axis, 0, tiles - 1)], axis)
    after = ops.concatenate([_axis_slice(own[0], axis, 1, tiles), zero], axis)
    return [before] + own + [after]


def _input_rows(x):
    """Bᵀ along H: x (n, H, W, c) → (6, n, H/4, W, c)."""
    return ops.stack(_combine(_BT, _windows(x, 1)), 0)


def _input_cols(rows):
    """Bᵀ along W: (6, n, th, W, c) → V as (36, n·th·tw, c)."""
    return ops.reshape(ops.stack(_combine(_BT, _windows(rows, 3)), 1), (36, -1, rows.shape[4]))


def _output(m, size):
    """y = Aᵀ M A: (36, n·th·tw, d) → (n, H, W, d), size = (H, W)."""
    h, w = size
    th, tw, d = h // TILE, w // TILE, m.shape[-1]
    m = ops.reshape(m, (6, 6, -1, th, tw, d))
    rows = _combine(_AT, [m[a] for a in range(6)])
    tiles = [ops.stack(_combine(_AT, [t[b] for b in range(6)]), 3) for t in rows]
    return ops.reshape(ops.stack(tiles, 2), (-1, h, w, d))


def _output_adjoint(g):
    """M̄ = A ȳ Aᵀ per tile: (n, H, W, d) → (36, n·th·tw, d), as ONE matmul: the tiles' 16 entries
    moved to the front (a transpose), then (A ⊗ A) (36×16) times that (16, n·th·tw·d) matrix.
    Twice as fast as 36 fused sums of shifted slices on both backends (bench/results/ab_winograd.md)."""
    _, h, w, d = g.shape
    t = ops.reshape(g, (-1, h // TILE, TILE, w // TILE, TILE, d))
    t = ops.reshape(ops.transpose(t, (2, 4, 0, 1, 3, 5)), (TILE * TILE, -1))
    kron = ops.convert_to_tensor(np.kron(_AT, _AT).T.astype(keras.backend.standardize_dtype(g.dtype)))
    return ops.reshape(ops.matmul(kron, t), (36, -1, d))


def _overlap_add(parts, axis):
    """Tile j's entry s of parts[s] lands at 4j + s; the 2-wide overlaps add. parts: 6 tensors
    with T tiles on `axis` → that axis as 4T + 2 positions."""
    def pad(t, before, after):
        widths = [(0, 0)] * len(t.shape)
        widths[axis] = (before, after)
        return ops.pad(t, widths)

    lanes = [pad(parts[0], 0, 1) + pad(parts[4], 1, 0), pad(parts[1], 0, 1) + pad(parts[5], 1, 0),
             pad(parts[2], 0, 1), pad(parts[3], 0, 1)]
    y = ops.stack(lanes, axis + 1)
    shape = [-1 if d is None else d for d in y.shape]  # the batch axis may be dynamic
    shape[axis:axis + 2] = [TILE * shape[axis]]
    return _axis_slice(ops.reshape(y, shape), axis, 0, shape[axis] - 2)


def _input_cols_adjoint(v_bar, size):
    """Transpose of `_input_cols`: (36, n·th·tw, c) → (6, n, th, W, c), size = (H, W)."""
    h, w = size
    vb = ops.reshape(v_bar, (6, 6, -1, h // TILE, w // TILE, v_bar.shape[-1]))
    return _axis_slice(_overlap_add(_combine(_BT.T, [vb[:, b] for b in range(6)]), 3), 3, 1, w + 1)


def _input_rows_adjoint(rows_bar):
    """Transpose of `_input_rows`: (6, n, th, W, c) → (n, H, W, c)."""
    return _overlap_add(_combine(_BT.T, [rows_bar[a] for a in range(6)]), 1)[:, 1:-1]


def _kernel(g):
    """U = G g Gᵀ: (3, 3, c, d) → (36, c, d)."""
    gm = ops.convert_to_tensor(_G.astype(keras.backend.standardize_dtype(g.dtype)))
    return ops.reshape(ops.einsum("ai,bj,ijcd->abcd", gm, gm, g), (36,) + tuple(g.shape[2:]))


def _kernel_adjoint(u_bar):
    """ḡ = Gᵀ Ū G: (36, c, d) → (3, 3, c, d)."""
    gm = ops.convert_to_tensor(_G.astype(keras.backend.standardize_dtype(u_bar.dtype)))
    u = ops.reshape(u_bar, (6, 6) + tuple(u_bar.shape[1:]))
    return ops.einsum("ai,bj,abcd->ijcd", gm, gm, u)


_FUSED = (_input_rows, _input_cols, _output, _input_cols_adjoint, _input_rows_adjoint)


def _transforms():
    """(rows, cols, output, output_adjoint, cols_adjoint, rows_adjoint): the sums of shifted slices
    XLA-fused in a TensorFlow graph (`xla_fused`); `_output_adjoint` (a transpose and a matmul)
    runs as TensorFlow's own ops."""
    rows, cols, output, cols_adj, rows_adj = xla_fused(_FUSED)
    return rows, cols, output, _output_adjoint, cols_adj, rows_adj


def winograd_conv3x3(x, kernel):
    """`ops.conv(x, kernel, strides=1, padding="same")` for a 3×3 kernel by Winograd F(4×4, 3×3),
    with its gradient written out (module docstring).

    Args:
        x: (n, H, W, c), H, W and c static, H and W multiples of 4.
        kernel: (3, 3, c, d).

    Returns:
        (n, H, W, d); equal to the direct convolution up to float rounding (≈ 1e-5 relative in
        float32): for training calls, not for values a certificate relies on.
    """
    x = ops.convert_to_tensor(x)
    kernel = ops.convert_to_tensor(kernel)
    if not winograd_applies(tuple(x.shape), tuple(kernel.shape)):
        raise ValueError(
            "winograd_conv3x3 needs an (n, H, W, c) input with static H, W, c, H and W multiples of 4, and "
            f"a (3, 3, c, d) kernel. Received: x.shape={tuple(x.shape)}, kernel.shape={tuple(kernel.shape)}"
        )
    rows, cols, output, output_adj, cols_adj, rows_adj = _transforms()
    size = tuple(x.shape[1:3])

    @ops.custom_gradient
    def conv(x, kernel):
        u = _kernel(kernel)
        y = output(ops.matmul(cols(rows(x)), u), size)

        def grad(*args, upstream=None):
            m_bar = output_adj(args[0] if upstream is None else upstream)
            x_bar = rows_adj(cols_adj(ops.matmul(m_bar, ops.transpose(u, (0, 2, 1))), size))
            u_bar = ops.matmul(ops.transpose(cols(rows(x)), (0, 2, 1)), m_bar)
            return x_bar, _kernel_adjoint(u_bar)

        return y, grad

    return conv(x, kernel)
