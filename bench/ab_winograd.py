#!/usr/bin/env python
"""A/B of a LiResNet block's training convolution: as shipped (`LiResNetBlock.training_linear`)
vs a twin forced to one algorithm, `--baseline direct` (the convolution with the layer's
default gradient: autodiff on TensorFlow, `linear_by_hand` on JAX) or `--baseline winograd`
(`ops.winograd_conv3x3`, F(4×4, 3×3)).

    KERAS_BACKEND=jax python bench/ab_winograd.py --config L6W64 --rounds 6
    python bench/ab_winograd.py --config L6W128 --rounds 6 --baseline winograd
    python bench/ab_winograd.py --parts        # one block's forward + gradients alone, W = 64, 128
    python bench/ab_winograd.py --parts --widths 32,48,64

Builds each network twice in ONE process with the same weights (`_util.ab_twins`: every
LiResNetBlock of the twin replaced by a subclass with that `training_linear`, by public Keras
deserialization) and times plain and GloRo training steps of both in rotating rounds (median
per-round ratio, wall and CPU). `--parts` times the block's three training convolutions
(forward, input and kernel gradient of ⟨ḡ, A(K)x⟩, batch 256 of 16×16×W) by each algorithm
and prints their errors against the float64 convolution; "winograd_fused_adjoint" is Winograd
with the output transform's adjoint as it was before 2026-12-03 (36 fused sums of shifted
slices, XLA-compiled on TensorFlow) instead of the shipped transpose + one matmul. Any Keras backend.
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _util as U  # noqa: E402  (sets the oneDNN default before TensorFlow is imported)

BASELINES = ("direct", "winograd")


def forced_block(algorithm):
    import keras

    import gloro_keras as gk

    def training_linear(self, x, kernel):
        if algorithm == "winograd":
            return gk.ops.winograd_conv3x3(x, kernel)
        return gk.layers.LipschitzLayer.training_linear(self, x, kernel)

    base = gk.layers.LiResNetBlock
    cls = type(f"{algorithm.title()}LiResNetBlock", (base,), {"training_linear": training_linear})
    return {keras.saving.get_registered_name(base): cls}


def compiled(fn):
    """fn compiled as a training step is: tf.function on TensorFlow, jax.jit on JAX."""
    import keras

    if keras.backend.backend() == "jax":
        import jax

        return jax.jit(fn)
    import tensorflow as tf

    return tf.function(fn)


def value_and_grads(linear):
    """(y, x̄, K̄) of y = linear(x, K) for the upstream ḡ, by the backend's autodiff."""
    import keras

    if keras.backend.backend() == "jax":
        import jax

        def f(x, k, g):
            y, vjp = jax.vjp(linear, x, k)
            return (y, *vjp(g))
        return f
    import tensorflow as tf

    def f(x, k, g):
        with tf.GradientTape() as tape:
            tape.watch([x, k])
            y = linear(x, k)
        return (y, *tape.gradient(y, [x, k], output_gradients=g))
    return f


def reference(x, k, g):
    """(y, x̄, K̄) of the 'same' 3×3 correlation in float64 NumPy, tap by tap."""
    import numpy as np

    x, k, g = (a.astype("float64") for a in (x, k, g))
    n, h, w, c = x.shape
    xp = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    gp = np.pad(g, ((0, 0), (1, 1), (1, 1), (0, 0)))
    y = sum(xp[:, i:i + h, j:j + w] @ k[i, j] for i in range(3) for j in range(3))
    xbar = sum(gp[:, 2 - i:2 - i + h, 2 - j:2 - j + w] @ k[i, j].T for i in range(3) for j in range(3))
    kbar = np.stack([np.stack([np.einsum("nhwc,nhwd->cd", xp[:, i:i + h, j:j + w], g) for j in range(3)])
                     for i in range(3)])
    return y, xbar, kbar


def fused_output_adjoint(g):
    """M̄ = A ȳ Aᵀ per tile as 36 sums of shifted slices (the shipped one before 2026-12-03)."""
    from keras import ops

    from gloro_keras.ops import winograd as wg

    _, h, w, d = g.shape
    t = ops.reshape(g, (-1, h // wg.TILE, wg.TILE, w // wg.TILE, wg.TILE, d))
    rows = wg._combine(wg._AT.T, [t[:, :, i] for i in range(wg.TILE)])
    m = []
    for r in rows:
        m.extend(wg._combine(wg._AT.T, [r[:, :, :, j] for j in range(wg.TILE)]))
    return ops.reshape(ops.stack(m, 0), (36, -1, d))


def winograd_fused_adjoint(x, k):
    """`winograd_conv3x3` traced with `fused_output_adjoint` as its output transform's adjoint."""
    import keras

    from gloro_keras.ops import winograd as wg

    shipped, adjoint = wg._output_adjoint, fused_output_adjoint
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        adjoint = tf.function(fused_output_adjoint, jit_compile=True, autograph=False)
    wg._output_adjoint = adjoint
    try:
        return wg.winograd_conv3x3(x, k)
    finally:
        wg._output_adjoint = shipped


def parts(widths=(64, 128), rounds=15):
    import keras
    import numpy as np

    import gloro_keras as gk

    rng = np.random.default_rng(0)
    for w in widths:
        block = gk.layers.LiResNetBlock(num_blocks=6)
        block.build((256, 16, 16, w))
        x = rng.standard_normal((256, 16, 16, w)).astype("float32")
        g = rng.standard_normal((256, 16, 16, w)).astype("float32")
        k = (rng.standard_normal((3, 3, w, w)) / (9 * w)).astype("float32")
        k[1, 1] += np.eye(w, dtype="float32")  # a merged kernel Δ + R
        algorithms = {"direct": lambda x, k: gk.layers.LipschitzLayer.training_linear(block, x, k),
                      "winograd": gk.ops.winograd_conv3x3, "winograd_fused_adjoint": winograd_fused_adjoint}
        ref = reference(x, k, g)
        args = [keras.ops.convert_to_tensor(a) for a in (x, k, g)]
        fns, errors = {}, {}
        for name, linear in algorithms.items():
            f = compiled(value_and_grads(linear))
            out = [np.asarray(t) for t in f(*args)]
            errors[name] = [float(np.abs(o - r).max() / np.abs(r).max()) for o, r in zip(out, ref)]
            fns[name] = lambda f=f: [np.asarray(t) for t in f(*args)]
        times = U.round_robin(fns, rounds)
        ratios = [(a, b, U.paired(times[a], times[b])) for a, b in
                  (("winograd", "direct"), ("winograd", "winograd_fused_adjoint"))]
        print(f"W{w} ({keras.backend.backend()}): forward + both gradients, ms (median): "
              + ", ".join(f"{n} {1e3 * U.med(t['wall']):.1f}" for n, t in times.items())
              + "".join(f"; {a} ÷ {b} wall {p['median']:.3f} [{p['min']:.3f}–{p['max']:.3f}], CPU "
                        f"{p['cpu_median']:.3f}" for a, b, p in ratios)
              + "; error vs float64 (y, x̄, K̄; relative to the max): "
              + ", ".join(f"{n} " + "/".join(f"{e:.1e}" for e in errors[n]) for n in errors), flush=True)


def main():
    args, L, W = U.ab_args(__doc__, baseline=("direct", BASELINES))
    import keras

    if keras.backend.backend() == "tensorflow":
        U.tf_keras()
    x, y, _, source = U.load_arrays()
    print(f"{args.config}, batch {len(y)} from {source}; backend {keras.backend.backend()}", flush=True)
    U.ab_kinds(args, L, W, forced_block(args.baseline), args.baseline, "layer",
               f"shipped ÷ {args.baseline} training convolution", x, y)


if __name__ == "__main__":
    if "--parts" in sys.argv:
        import keras

        if keras.backend.backend() == "tensorflow":
            U.tf_keras()
        widths = sys.argv[sys.argv.index("--widths") + 1] if "--widths" in sys.argv else "64,128"
        parts(tuple(int(w) for w in widths.split(",")))
    else:
        main()
