"""Floating-point error of the network as it actually computes (derivation: docs/soundness.md).

A certificate of class j at x must hold for the *computed* network f̂ (float32, any summation
order or blocking, FMA or not), not only for the exact-arithmetic network f with the same
weights. Layer by layer, with d = â − a the deviation of the computed activation from the exact
one, this module bounds, for every x' with ‖x' − x‖₂ ≤ ε and every evaluation order,

    ‖d(x')‖₂ ≤ α + β·ε        (α, β ≥ 0 per input; L = Lipschitz bound of the layers so far)

A linear step z = A a + b computed in precision u has |fl(z) − z| ≤ g·(|A||â| + |b|) + η
componentwise, g = γ_{n+1} = (n+1)u / (1 − (n+1)u) for fan-in n (any order). With
c = ‖|A||â(x)| + |b|‖₂ at the centre and ‖|A|‖₂ ≤ ā:

    α' = ‖A‖·α + g·(c + 2·ā·α) + η,    β' = ‖A‖·β + g·ā·(L + β),    L' = ‖A‖·L.

At the head (class vectors w_i, reference kernel as the bounds read it) the certified
inequality for the predicted class j becomes

    ŷ_j − ŷ_i > ε·K_ji + a_ji + b_ji·ε,
    a_ji = 2α·‖w_j − w_i‖ + Σ_{k∈{i,j}} (2g·c_k + 2η + 4g·n_k·α),
    b_ji = β·‖w_j − w_i‖ + Σ_{k∈{i,j}} g·n_k·(L + β),

with c_k = (|W|ᵀ|â| + |b|)_k and n_k = ‖w_k‖₂. Everything is affine in ε, so the certified
radius is min_i (ŷ_j − ŷ_i − a_ji) / (K_ji + b_ji).

`RoundingAnalysis.terms(x)` computes the per-input centre terms c (keras.ops, float32, inflated
for their own rounding); `coefficients` runs the recursion on numpy float64 arrays (certify)
or on float32 tensors (the model's inference ⊥, then inflated by `graph_inflation`).
"""
import math

import keras
import numpy as np
from keras import ops

from gloro_keras.layers import (
    InvertibleDownsampling,
    LipschitzConv2D,
    LipschitzDense,
    LiResNetBlock,
    LLNDense,
    MinMax,
    ResNetBlock,
    Scaling,
)
from gloro_keras.models.network_analysis import pooling_overlap
from gloro_keras.ops.precision import accumulate_float64

U32 = 2.0 ** -24  # unit roundoff of float32, round to nearest
U64 = 2.0 ** -53
# Smallest normal float32: with flush-to-zero / denormals-are-zero (TensorFlow's CPU default),
# a product, a sum or an input flushed to 0 is off by less than this.
TINY32 = 2.0 ** -126
TINY64 = 2.0 ** -1022


def gamma(n, u):
    """γ_n = n·u / (1 − n·u): relative error bound of an n-term dot product, any order."""
    nu = n * u
    if nu >= 0.5:
        raise ValueError(f"a sum of {n} terms is too long for the error analysis at u={u}")
    return nu / (1.0 - nu)


class UnsupportedLayerError(ValueError):
    """A layer the rounding analysis has no model for."""


def _numel(shape):
    return int(np.prod([int(d) for d in shape[1:]]))


def _l2(t, n, u):
    """Per-example ℓ2 norm of a non-negative float tensor, inflated by its own rounding."""
    flat = ops.reshape(t, (ops.shape(t)[0], -1))
    return ops.sqrt(ops.sum(flat * flat, axis=-1)) * (1.0 + gamma(n + 4, u))


def schur_bound_conv(kernel_abs, strides):
    """‖A‖₂ ≤ √(‖A‖₁·‖A‖∞) for the convolution A with the non-negative kernel (kh, kw, cin, cout).

    ‖A‖∞ ≤ max over output channels of the kernel's sum; ‖A‖₁ ≤ max over input channels and
    stride residues (r_h, r_w) of the sum over the taps i ≡ r_h, j ≡ r_w and the outputs (an
    input position meets at most one tap of each residue class). float64 sums rounded up."""
    k = np.asarray(kernel_abs, dtype=np.float64)
    sh, sw = strides
    rows = np.max(np.sum(k, axis=(0, 1, 2)), initial=0.0)
    cols = 0.0
    for rh in range(min(sh, k.shape[0])):
        for rw in range(min(sw, k.shape[1])):
            cols = max(cols, float(np.max(np.sum(k[rh::sh, rw::sw], axis=(0, 1, 3)), initial=0.0)))
    return math.sqrt(rows * cols) * (1.0 + 4 * k.size * U64)


def schur_bound_dense(kernel_abs):
    """‖A‖₂ ≤ √(‖A‖₁·‖A‖∞) for x ↦ x·W with W ≥ 0 (din, dout)."""
    w = np.asarray(kernel_abs, dtype=np.float64)
    rows = np.max(np.sum(w, axis=0), initial=0.0)
    cols = np.max(np.sum(w, axis=1), initial=0.0)
    return math.sqrt(rows * cols) * (1.0 + 4 * w.size * U64)


# ---- steps -------------------------------------------------------------------------------
class _Step:
    """One layer of the chain. `forward(h)` → (output, [per-input centre terms]);
    `params(value)` → floats; `propagate(state, cs, p)` → new state."""

    num_params = 0
    num_centre_terms = 0

    def params(self, value):
        return []


class _Exact(_Step):
    """Computed exactly (MinMax, ReLU, max pooling, reshapes): d' = P(d), ‖P‖ ≤ lip."""

    def __init__(self, layer, lip):
        self.layer, self.lip = layer, float(lip)

    def forward(self, h):
        return self.layer(h), []

    def propagate(self, s, cs, p):
        a, b, lip = s
        return a * self.lip, b * self.lip, lip * self.lip


def _linear_update(s, c, spec, absn, g, eta):
    a, b, lip = s
    a2 = a * spec + g * (c + 2.0 * absn * a) + eta
    b2 = b * spec + g * absn * (lip + b)
    return a2, b2, lip * spec


def _float64_accumulation(layer, u):
    """Relative error g of a float32 layer that accumulates in float64 at inference
    (`float64_inference`): float32 products are exact in float64, the float64 sum of n terms is
    within γ_n(2⁻⁵³), and the result is rounded to float32 once; None if it does not."""
    if u < U32 or not accumulate_float64(False, getattr(layer, "float64_inference", False), layer.compute_dtype):
        return None
    return lambda n: U32 * (1.0 + gamma(n, U64)) + gamma(n, U64)


class _Linear(_Step):
    """z = A a + b with |fl(z) − (A_ref a + b)| ≤ g·(A_abs|a| + |b|) + η componentwise.

    abs_fn(|h|) computes A_abs|h| + |b|; `norms(value)` gives (‖A_ref‖, ‖A_abs‖, max A_abs)."""

    num_params = 3
    num_centre_terms = 1

    def __init__(self, layer, fan_in, out_numel, u, tiny, tau=0.0, abs_fn=None, call=None, norms=None):
        self.layer = layer
        f64 = _float64_accumulation(layer, u)
        self.g = (f64(fan_in) if f64 else gamma(fan_in, u)) * (1.0 + tau) + tau
        self.fan_in, self.out_numel, self.u, self.tiny = fan_in, out_numel, u, tiny
        self.abs_fn, self.call, self._norms = abs_fn, call or layer, norms

    def forward(self, h):
        y = self.call(h)
        return y, [_l2(self.abs_fn(ops.abs(h)), self.out_numel, self.u) * (1.0 + gamma(self.fan_in + 2, self.u))]

    def params(self, value):
        spec, absn, amax = self._norms(value)
        # flushed products/partial sums (2n+2) and flushed inputs (≤ n·max|A|) per output
        eta = math.sqrt(self.out_numel) * (2 * self.fan_in + 3 + self.fan_in * amax) * self.tiny
        return [spec, absn, eta]

    def propagate(self, s, cs, p):
        return _linear_update(s, cs[0], p[0], p[1], self.g, p[2])


class _LinearResidual(_Step):
    """LiResNet block at inference: y = x̂ + fl(R̃ ∗ x̂) + b (two additions).

    |y − ((Δ + R̂)x̂ + b)| ≤ g_R·|R|∗|x̂| + g₂·(|x̂| + |R|∗|x̂| + |b|), with g_R covering the
    n-term convolution and the re-evaluation of R = V·β/√L (τ = 2γ₃ relative to |V||β|/√L),
    g₂ = γ₂·(1 + g_R) the two additions. Centre terms: ‖|R|∗|x̂|‖ and ‖|x̂| + |b|‖."""

    num_params = 3
    num_centre_terms = 2

    def __init__(self, layer, u, tiny):
        k, c = layer.kernel_size, layer.width
        self.layer, self.u, self.tiny = layer, u, tiny
        self.fan_in, self.out_numel = k * k * c, _numel(layer.output.shape)
        tau = 2 * gamma(3, u)
        self.g_r = gamma(self.fan_in, u) * (1.0 + tau) + tau
        self.g_2 = gamma(2, u) * (1.0 + self.g_r)
        self.scale = abs(layer.scale)

    def _r_abs(self):
        return ops.abs(self.layer.residual_kernel) * (ops.abs(self.layer.beta) * self.scale) * (1.0 + gamma(4, self.u))

    def _r_abs_np(self):
        v = np.abs(ops.convert_to_numpy(self.layer.residual_kernel).astype("float64"))
        beta = np.abs(ops.convert_to_numpy(self.layer.beta).astype("float64"))
        return v * beta * self.scale * (1.0 + 4 * U64)

    def forward(self, h):
        y = self.layer(h)
        ha = ops.abs(h)
        c_r = _l2(self.layer.apply_linear(ha, self._r_abs()), self.out_numel, self.u) * (1.0 + gamma(self.fan_in + 2, self.u))
        if self.layer.bias is not None:
            ha = ha + ops.abs(self.layer.bias)
        return y, [c_r, _l2(ha, self.out_numel, self.u)]

    def params(self, value):
        layer = self.layer
        r = self._r_abs_np()
        absn = schur_bound_conv(r, (1, 1))
        eta = math.sqrt(self.out_numel) * (2 * self.fan_in + 6 + self.fan_in * float(np.max(r, initial=0.0))) * self.tiny
        return [value(layer), absn, eta]

    def propagate(self, s, cs, p):
        a, b, lip = s
        spec, absn, eta = p[0], p[1], p[2]
        g_rr = self.g_r + self.g_2
        a2 = a * spec + g_rr * (cs[0] + 2.0 * absn * a) + self.g_2 * (cs[1] + 2.0 * a) + eta
        b2 = b * spec + (g_rr * absn + self.g_2) * (lip + b)
        return a2, b2, lip * spec


class _Residual(_Step):
    """ResNetBlock: x + β ⊙ Conv₂(MinMax(Conv₁(x))), each operation bounded in turn."""

    num_params = 9
    num_centre_terms = 4

    def __init__(self, block, conv1, conv2, u, tiny):
        self.block, self.conv1, self.conv2, self.u, self.tiny = block, conv1, conv2, u, tiny
        self.n = _numel(block.output.shape) if hasattr(block, "output") else None

    def forward(self, h):
        blk = self.block
        h1, c1 = self.conv1.forward(h)
        h2, c2 = self.conv2.forward(blk.activation(h1))
        q = blk.beta * h2
        n = self.conv2.out_numel
        c3 = _l2(ops.abs(blk.beta) * ops.abs(h2), n, self.u) * (1.0 + 2 * self.u)
        y = h + q
        c4 = _l2(ops.abs(h) + ops.abs(q), n, self.u) * (1.0 + 2 * self.u)
        return y, c1 + c2 + [c3, c4]

    def params(self, value):
        bmax = float(np.max(np.abs(ops.convert_to_numpy(self.block.beta).astype("float64"))))
        n = self.conv2.out_numel
        eta = math.sqrt(n) * 4 * self.tiny
        return self.conv1.params(value) + self.conv2.params(value) + [bmax, eta, eta]

    def propagate(self, s, cs, p):
        s1 = self.conv1.propagate(s, cs[0:1], p[0:3])
        s2 = self.conv2.propagate(s1, cs[1:2], p[3:6])
        s3 = _linear_update(s2, cs[2], p[6], p[6], self.u, p[7])
        a0, b0, l0 = s
        a3, b3, l3 = s3
        # y = x̂ + q̂: one rounding, |fl(x + q) − (x + q)| ≤ u·(|x̂| + |q̂|)
        a = a0 + a3
        b = b0 + b3
        lip = l0 + l3
        return a + self.u * (cs[3] + 2.0 * a) + p[8], b + self.u * (lip + b), lip


class _Head:
    """Linear head y = Wᵀa + b: |r_k| ≤ g·((|W|ᵀ|â|)_k + |b_k|) + η per class."""

    def __init__(self, layer, kernel_fn, fan_in, u, tiny, tau=0.0):
        self.layer, self.kernel_fn = layer, kernel_fn
        f64 = _float64_accumulation(layer, u)
        self.g = (f64(fan_in + 1) if f64 else gamma(fan_in + 1, u)) * (1.0 + tau) + tau
        self.fan_in, self.u, self.tiny, self.tau = fan_in, u, tiny, tau

    def forward(self, h):
        y = self.layer(h)
        w = ops.abs(self.kernel_fn())
        c = ops.matmul(ops.abs(h), w)
        if getattr(self.layer, "bias", None) is not None:
            c = c + ops.abs(self.layer.bias)
        return y, c * (1.0 + gamma(self.fan_in + 3, self.u))

    def params(self, w_ref):
        """Per-class (n_k, η) from the reference kernel (features, classes), float64."""
        w = np.abs(np.asarray(w_ref, dtype=np.float64)) * (1.0 + self.tau)
        n = np.sqrt(np.sum(w * w, axis=0)) * (1.0 + 4 * U64 * w.shape[0])
        eta = (2 * self.fan_in + 3 + self.fan_in * float(np.max(w, initial=0.0))) * self.tiny
        return n, eta


# ---- building the chain --------------------------------------------------------------------
def _conv_abs(layer, kernel_abs):
    def fn(h_abs):
        y = layer.apply_linear(h_abs, kernel_abs())
        if layer.bias is not None:
            y = y + ops.abs(layer.bias)
        return y

    return fn


def _conv_norms(layer, kernel_ref_abs, hw, strides, pads):
    def norms(value):
        k = kernel_ref_abs()
        return value(layer), schur_bound_conv(k, strides), float(np.max(k, initial=0.0))

    return norms


def _step_for(layer, u, tiny):
    L = keras.layers
    out_numel = _numel(layer.output.shape)
    if isinstance(layer, LiResNetBlock):
        return _LinearResidual(layer, u, tiny)
    if isinstance(layer, LipschitzConv2D):
        kh, kw = layer.kernel_size
        cin = int(layer.kernel.shape[2])

        def k_abs_np():
            return np.abs(ops.convert_to_numpy(layer.kernel).astype("float64"))

        return _Linear(layer, kh * kw * cin + int(layer.use_bias), out_numel, u, tiny,
                       abs_fn=_conv_abs(layer, lambda: ops.abs(layer.kernel)),
                       norms=_conv_norms(layer, k_abs_np, layer.input_hw, layer.strides, layer.pads))
    if isinstance(layer, LipschitzDense):
        din = int(layer.kernel.shape[0])

        def abs_fn(h_abs):
            y = ops.matmul(h_abs, ops.abs(layer.kernel))
            return y + ops.abs(layer.bias) if layer.bias is not None else y

        def norms(value):
            k = np.abs(ops.convert_to_numpy(layer.kernel).astype("float64"))
            return value(layer), schur_bound_dense(k), float(np.max(k, initial=0.0))

        return _Linear(layer, din + int(layer.use_bias), out_numel, u, tiny, abs_fn=abs_fn, norms=norms)
    if isinstance(layer, ResNetBlock):
        c1 = _step_for_sublayer(layer.conv1, layer.input.shape, u, tiny)
        c2 = _step_for_sublayer(layer.conv2, layer.input.shape, u, tiny)
        return _Residual(layer, c1, c2, u, tiny)
    if isinstance(layer, L.Rescaling):
        s = np.abs(np.asarray(layer.scale, dtype="float64"))
        o = np.abs(np.asarray(layer.offset, dtype="float64"))
        smax = float(np.max(s))

        def abs_fn(h_abs):  # (|s||x| + |o|)·(1 + u) covers the float32 rounding of s and o
            return (h_abs * s.astype("float32") + o.astype("float32")) * (1.0 + 2 * u)

        # x·fl(s) + fl(o): two roundings of the constants, a product and a sum
        return _Linear(layer, 3, out_numel, u, tiny, abs_fn=abs_fn,
                       norms=lambda value: (smax, smax, smax))
    if isinstance(layer, (L.AveragePooling2D, L.GlobalAveragePooling2D)):
        if isinstance(layer, L.AveragePooling2D):
            if pooling_overlap(layer) is None:
                raise UnsupportedLayerError(f"Layer '{layer.name}': padded average pooling has no rounding model.")
            pool = int(np.prod(layer.pool_size))
            lip = math.sqrt(pooling_overlap(layer) / pool)
        else:
            pool = int(np.prod(layer.input.shape[1:3]))
            lip = 1.0 / math.sqrt(pool)
        # a sum of `pool` terms, then one division (or a product with a rounded 1/pool)
        return _Linear(layer, pool + 2, out_numel, u, tiny, abs_fn=lambda h_abs: layer(h_abs),
                       norms=lambda value: (lip, lip, 1.0 / pool))
    if isinstance(layer, Scaling):
        def scaled_abs(h_abs):
            return h_abs * ops.abs(layer.alpha)

        # one product per value; ‖α‖ from the layer's bound
        return _Linear(layer, 1, out_numel, u, tiny, abs_fn=scaled_abs,
                       norms=lambda value: (value(layer), value(layer), value(layer)))
    if isinstance(layer, (MinMax, InvertibleDownsampling, L.Flatten, L.Reshape, L.Permute, L.Identity, L.ZeroPadding2D, L.Cropping2D)):
        return _Exact(layer, 1.0)
    if isinstance(layer, L.MaxPooling2D):
        if pooling_overlap(layer) is None:
            raise UnsupportedLayerError(f"Layer '{layer.name}': padded max pooling is not supported.")
        return _Exact(layer, math.sqrt(pooling_overlap(layer)))
    if isinstance(layer, L.ReLU):
        if (layer.max_value is None or np.isinf(float(layer.max_value))) and not float(layer.negative_slope) and not float(layer.threshold):
            return _Exact(layer, 1.0)
    if isinstance(layer, L.Activation):
        name = getattr(layer.activation, "__name__", "")
        if name in ("linear", "relu"):
            return _Exact(layer, 1.0)
    raise UnsupportedLayerError(
        f"Layer '{layer.name}' ({type(layer).__name__}) has no floating-point error model, so its "
        "rounding cannot be bounded; certify with arithmetic='exact' (exact-arithmetic "
        "certificates) or replace the layer."
    )


def _step_for_sublayer(conv, input_shape, u, tiny):
    kh, kw = conv.kernel_size
    cin = int(conv.kernel.shape[2])
    ho, wo = conv.output_hw
    out_numel = ho * wo * conv.filters

    def k_abs_np():
        return np.abs(ops.convert_to_numpy(conv.kernel).astype("float64"))

    return _Linear(conv, kh * kw * cin + int(conv.use_bias), out_numel, u, tiny,
                   abs_fn=_conv_abs(conv, lambda: ops.abs(conv.kernel)),
                   norms=_conv_norms(conv, k_abs_np, conv.input_hw, conv.strides, conv.pads))


def _head_for(layer, u, tiny):
    din = int(layer.kernel.shape[0])
    if isinstance(layer, LLNDense):
        # reference ŵ = w/‖w‖ in float64 (`margin_kernel_np`, what the bounds read); an
        # evaluation of the normalization (a d-term sum of squares, √, division) in the
        # precision it runs in is within γ_{d+5} of it, relatively
        run_u = U64 if _float64_accumulation(layer, u) else u
        return _Head(layer, layer.margin_kernel, din, u, tiny, tau=gamma(din + 5, run_u))
    return _Head(layer, lambda: layer.kernel, din, u, tiny)


class RoundingAnalysis:
    """The per-layer floating-point error recursion of a chain (see the module docstring).

    Args:
        body: the body layers in forward order (BoundPlan.layers).
        head: the linear head.
        input_numel: number of input components.
        unit_roundoff: u of the arithmetic the network runs in (2⁻²⁴ for float32).
    """

    def __init__(self, body, head, input_numel, unit_roundoff=U32, input_roundoff=None):
        u = float(unit_roundoff)
        tiny = TINY32 if u >= U32 else TINY64
        self.u, self.tiny, self.input_numel = u, tiny, int(input_numel)
        self.input_u = u if input_roundoff is None else float(input_roundoff)
        self.input_tiny = TINY32 if self.input_u >= U32 else tiny
        self.steps = [_step_for(layer, u, tiny) for layer in body]
        self.head = _head_for(head, u, tiny)
        self.num_params = sum(s.num_params for s in self.steps)
        # float32 recursion (inference ⊥): ≤ 8 roundings of non-negative terms per step
        self.graph_inflation = 1.0 + gamma(8 * (len(self.steps) + 4), U32)

    # -- per input (keras.ops) --------------------------------------------------------------
    def terms(self, x):
        """(logits, [per-input centre terms, input first], per-class head terms)."""
        x = ops.convert_to_tensor(x)
        cs = [_l2(ops.abs(x), self.input_numel, self.u)]
        h = x
        for step in self.steps:
            h, c = step.forward(h)
            cs.extend(c)
        logits, ch = self.head.forward(h)
        return logits, cs, ch

    # -- layer constants (numpy float64) ---------------------------------------------------------
    def params(self, value):
        """Flat list of every step's constants. value(layer): the layer's bound (sound, power
        or current); ‖|A|‖₂ is bounded by the Schur test."""
        out = []
        for step in self.steps:
            out.extend(step.params(value))
        return out

    # -- recursion (numpy float64 or float32 tensors) ---------------------------------------
    def coefficients(self, cs, p, zeros):
        """α, β (per input) and L after the body; cs as from `terms`, p as from `params`."""
        state = (self.input_u * cs[0] + math.sqrt(self.input_numel) * self.input_tiny, zeros + self.input_u, 1.0)
        i, j = 1, 0  # cs[0] is the input's norm
        for step in self.steps:
            nc = step.num_centre_terms
            state = step.propagate(state, cs[i : i + nc], p[j : j + step.num_params])
            i += nc
            j += step.num_params
        return state


def error_terms_np(analysis, cs, ch, params, w_ref, dist, pred):
    """a_ji, b_ji (N, m) for the predicted class j of each row, float64 (see module docstring)."""
    cs = [np.asarray(c, dtype=np.float64) for c in cs]
    zeros = np.zeros_like(cs[0])
    alpha, beta, lip = analysis.coefficients(cs, params, zeros)
    n, eta = analysis.head.params(w_ref)
    g = analysis.head.g
    ch = np.asarray(ch, dtype=np.float64)
    rows = np.arange(len(pred))
    cj, nj = ch[rows, pred][:, None], n[pred][:, None]
    dj = dist[pred]
    al, be = alpha[:, None], beta[:, None]
    a = 2.0 * al * dj + 2.0 * g * (ch + cj) + 4.0 * eta + 4.0 * g * al * (n[None, :] + nj)
    b = be * dj + g * (n[None, :] + nj) * (lip + be)
    return a, b
