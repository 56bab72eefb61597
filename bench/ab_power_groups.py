#!/usr/bin/env python
"""A/B of `group_power_iterations`: the LiResNet blocks' training-time power iterations run as one
vectorized computation (`keras.ops.vectorized_map` over the stacked kernels and iterates) ÷ each
block alone, in the GloRo training step.

    python bench/ab_power_groups.py --config L6W128 --rounds 6          # KERAS_BACKEND=jax
    KERAS_BACKEND=tensorflow python bench/ab_power_groups.py --check-only

First, on any backend, the check: the blocks' estimates σ and ∂(Σ log σ)/∂K of one training call,
grouped by `ops.vectorized_map` (called directly: on TensorFlow the library refuses
`group_power_iterations=True`) against separate, from the same iterates; printed as the largest
relative differences. Then, on JAX, the two GloRo models (same weights) timed side by side in
rotating rounds (median per-round ratio, wall and CPU). On a GPU the same comparison is part of
`bench/gpu_check.sh`.
"""
import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _util as U  # noqa: E402  (sets the oneDNN default before TensorFlow is imported)


def check(L, W):
    """Largest relative differences (σ, gradient) of grouped against separate power iterations."""
    import keras
    import numpy as np
    from keras import ops

    import gloro_keras as gk
    from gloro_keras.ops import l2_normalize

    keras.utils.set_random_seed(0)
    blocks = [layer for layer in U.network(L, W).layers if isinstance(layer, gk.layers.LiResNetBlock)]
    kernels = [ops.convert_to_tensor(b.linear_kernel()) for b in blocks]
    iterates = [l2_normalize(ops.convert_to_tensor(b.iterate)) for b in blocks]

    def separate(ks):
        return ops.stack([b.advance(k, u)[0] for b, k, u in zip(blocks, ks, iterates)])

    def grouped(ks):
        return ops.vectorized_map(lambda ku: blocks[0].advance(ku[0], ku[1])[0], (ops.stack(ks), ops.stack(iterates)))

    def value_and_grad(fn):
        if keras.backend.backend() == "jax":
            import jax
            import jax.numpy as jnp

            grads = jax.grad(lambda ks: jnp.sum(jnp.log(fn(ks))))(kernels)
            return np.asarray(fn(kernels)), [np.asarray(g) for g in grads]
        import tensorflow as tf

        with tf.GradientTape() as tape:
            tape.watch(kernels)
            sigma = fn(kernels)
            total = tf.reduce_sum(tf.math.log(sigma))
        return sigma.numpy(), [g.numpy() for g in tape.gradient(total, kernels)]

    s0, g0 = value_and_grad(separate)
    s1, g1 = value_and_grad(grouped)
    return {"sigma_rel_diff": float(np.max(np.abs(s1 - s0) / np.abs(s0))),
            "grad_rel_diff": max(float(np.max(np.abs(a - b)) / np.max(np.abs(b))) for a, b in zip(g1, g0)),
            "blocks": len(blocks)}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="L6W128")
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--steps", type=int, default=2, help="train steps per variant per round")
    ap.add_argument("--check-only", action="store_true")
    args = ap.parse_args(argv)
    import keras

    L, W = U.parse_config(args.config)
    diff = check(L, W)
    print(f"{keras.backend.backend()} {args.config}: grouped vs separate over {diff['blocks']} blocks: σ rel. diff "
          f"{diff['sigma_rel_diff']:.2e}, gradient rel. diff {diff['grad_rel_diff']:.2e}", flush=True)
    if args.check_only or keras.backend.backend() != "jax":
        return 0
    x, y, _, _ = U.load_arrays()
    models = {}
    for name, group in (("separate", False), ("grouped", True)):
        keras.utils.set_random_seed(0)
        models[name] = U.build("gloro_full", L, W, group=group)
        models[name].train_on_batch(x, y)
        models[name].train_on_batch(x, y)
    times = U.round_robin({n: (lambda m=m: [m.train_on_batch(x, y) for _ in range(args.steps)])
                           for n, m in models.items()}, args.rounds)
    for clock in ("wall", "cpu"):
        ratios = [g / s for g, s in zip(times["grouped"][clock], times["separate"][clock])]
        print(f"  GloRo step grouped ÷ separate ({clock}): median {U.med(ratios):.3f} "
              f"[{min(ratios):.3f}–{max(ratios):.3f}] over {args.rounds} rounds; separate "
              f"{U.med(times['separate'][clock]) / args.steps * 1000:.0f} ms per step", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
