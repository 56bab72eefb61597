#!/usr/bin/env python
"""A/B of the `full` bound gradient: hand-written batched backward vs autodiff through the steps.

    python bench/ab_full_gradient.py --config L6W64 --rounds 6

Builds the same GloroLiResNet twice in ONE process (same seed): one traced with the library's
`LipschitzLayer._full_gradient_bound` (adjoints by hand, one batched kernel gradient per
layer), one with that method replaced by plain autodiff through the unrolled steps (the
previous implementation). Reports the largest weight difference after two identical training
steps, then times both in alternating rounds (median per-round ratio, wall and CPU time).
"""
import argparse
import os
import time

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", default="L6W64")
    ap.add_argument("--rounds", type=int, default=6)
    args = ap.parse_args()
    depth, width = (int(v) for v in args.config.upper()[1:].split("W"))

    import keras
    import tensorflow as tf

    from gloro_keras.layers import lipschitz_layer
    from gloro_keras.layers._ops import safe_norm
    from gloro_keras.models.liresnet import GloroLiResNet

    batched = lipschitz_layer.LipschitzLayer._full_gradient_bound

    def autodiff(self, kernel, u):
        for _ in range(self.power_iterations):
            u = self._step(u, kernel)
        return safe_norm(self.apply_linear(u, kernel)), u

    rng = np.random.default_rng(0)
    x = tf.constant(rng.random((256, 32, 32, 3), dtype=np.float32))
    y = tf.constant(rng.integers(0, 10, 256).astype("int32"))
    models = {}
    for name, impl in (("autodiff", autodiff), ("batched", batched)):
        lipschitz_layer.LipschitzLayer._full_gradient_bound = impl  # read when the step is traced
        keras.utils.set_random_seed(0)
        m = GloroLiResNet(depth, width, 10, (32, 32, 3), epsilon=36 / 255)
        m.compile(optimizer=keras.optimizers.AdamW(1e-3, weight_decay=1e-4, global_clipnorm=3.0), loss="emma")
        t = time.perf_counter()
        m.train_on_batch(x, y)
        print(f"{name}: first step (tracing) {time.perf_counter() - t:.1f} s", flush=True)
        m.train_on_batch(x, y)
        models[name] = m
    lipschitz_layer.LipschitzLayer._full_gradient_bound = batched
    diff = max(float(np.abs(a.numpy() - b.numpy()).max())
               for a, b in zip(models["autodiff"].trainable_variables, models["batched"].trainable_variables))
    print(f"largest weight difference after 2 identical steps: {diff:.2g}")
    wall = {k: [] for k in models}
    cpu = {k: [] for k in models}
    for r in range(args.rounds):
        for k in list(models)[:: 1 if r % 2 == 0 else -1]:
            t, c = time.perf_counter(), time.process_time()
            for _ in range(2):
                models[k].train_on_batch(x, y)
            wall[k].append((time.perf_counter() - t) / 2)
            cpu[k].append((time.process_time() - c) / 2)
    ratio = [b / a for a, b in zip(wall["autodiff"], wall["batched"])]
    cratio = [b / a for a, b in zip(cpu["autodiff"], cpu["batched"])]
    print("step ms (median): " + ", ".join(f"{k} {1e3 * np.median(v):.0f}" for k, v in wall.items()))
    print(f"batched ÷ autodiff step time: wall {np.median(ratio):.3f} [{min(ratio):.3f}–{max(ratio):.3f}], "
          f"CPU {np.median(cratio):.3f}")


if __name__ == "__main__":
    main()
