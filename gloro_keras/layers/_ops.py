"""Small NaN-safe helpers shared by the layers (keras.ops only)."""
from keras import ops

# Floor under squared norms: sqrt(max(s, TINY)) keeps values and gradients finite at 0.
TINY = 1e-24


def safe_norm(x, axis=None, keepdims=False):
    """ℓ2 norm `sqrt(max(Σx², TINY))`; finite gradient even when x = 0."""
    return ops.sqrt(ops.maximum(ops.sum(ops.square(x), axis=axis, keepdims=keepdims), TINY))


def l2_normalize(x, axis=None):
    """`x / ‖x‖₂` over `axis` (all axes by default), NaN-safe at 0."""
    return x / safe_norm(x, axis=axis, keepdims=True)


def normalize_padding(padding, kernel_size, strides, spatial):
    """Resolve 'valid' | 'same' | int | ((t, b), (l, r)) to explicit zero padding.

    'same' follows TensorFlow/Keras: output = ceil(n / s), extra row/col at the end.
    """
    if isinstance(padding, str):
        p = padding.lower()
        if p == "valid":
            return ((0, 0), (0, 0))
        if p != "same":
            raise ValueError(f"padding must be 'valid', 'same', an int or ((t, b), (l, r)); got {padding!r}")
        pads = []
        for n, k, s in zip(spatial, kernel_size, strides):
            out = -(-n // s)
            total = max((out - 1) * s + k - n, 0)
            pads.append((total // 2, total - total // 2))
        return tuple(pads)
    if isinstance(padding, int):
        if padding < 0:
            raise ValueError(f"padding must be >= 0; got {padding}")
        return ((padding, padding), (padding, padding))
    try:
        (t, b), (l, r) = padding
    except (TypeError, ValueError):
        try:
            ph, pw = padding
            return ((int(ph), int(ph)), (int(pw), int(pw)))
        except (TypeError, ValueError):
            raise ValueError(f"cannot interpret padding={padding!r}") from None
    return ((int(t), int(b)), (int(l), int(r)))


def as_pair(v, name):
    if isinstance(v, int):
        return (v, v)
    v = tuple(int(a) for a in v)
    if len(v) != 2:
        raise ValueError(f"{name} must be an int or a pair; got {v}")
    return v


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


def float64_available():
    """Whether float64 arithmetic really runs in float64 (JAX needs `jax_enable_x64`)."""
    import keras

    if keras.backend.backend() == "jax":
        import jax

        return bool(jax.config.jax_enable_x64)
    return True


def accumulate_float64(training, enabled, compute_dtype):
    """Whether an inference call should accumulate its products in float64 (see layers'
    `float64_inference`): not when training, nor when float64 is not available."""
    return bool(enabled) and not training and compute_dtype == "float32" and float64_available()


def float64_affine(linear, x, kernel, bias, compute_dtype):
    """`linear(x, kernel) + bias` with float32 operands cast to float64 (products exact),
    summed in float64 and rounded to `compute_dtype` once."""
    y = linear(ops.cast(x, "float64"), ops.cast(kernel, "float64"))
    if bias is not None:
        y = y + ops.cast(bias, "float64")
    return ops.cast(y, compute_dtype)
