#!/usr/bin/env python
"""A/B of a first `fit`'s time (tracing included): the shipped `GloroModel`, whose optimizer is built
before the step is traced (`GloroModel._build_optimizer`), vs the same model with that step skipped,
where Keras's TensorFlow trainer builds the optimizer inside the first trace and `tf.function` traces
the whole step twice.

    python bench/ab_first_fit.py --configs L6W64,L4W32 --rounds 3

Each measurement is a fresh process (the trace caches live in the process): build
`GloroLiResNet(L, W)` (W ≥ 64: CIFAR-10's 32×32×3 and dense neck 512; else the quickstart's MNIST
28×28×1 and neck 128), compile with AdamW, EMMA and two metrics, and time `fit` of 2 steps of 256
random images (`converge_bounds=False`). Variants alternate round by round. TensorFlow only.
"""
import argparse
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _util as U  # noqa: E402  (sets the oneDNN default before TensorFlow is imported)

VARIANTS = ("shipped", "traced_twice")


def child(variant, L, W):
    import keras
    import numpy as np

    import gloro_keras as gk

    if variant == "traced_twice":
        gk.GloroModel._build_optimizer = lambda self: None
    shape, neck = ((32, 32, 3), 512) if W >= 64 else ((28, 28, 1), 128)
    model = gk.GloroLiResNet(L=L, W=W, num_classes=10, input_shape=shape, epsilon=0.1, dense_width=neck)
    model.compile(optimizer=keras.optimizers.AdamW(1e-3), loss="emma", metrics=["clean_acc", "vra"])
    x = np.random.default_rng(0).random((512,) + shape).astype("float32")
    y = np.arange(512) % 10
    start = time.perf_counter()
    model.fit(x, y, batch_size=256, epochs=1, verbose=0, converge_bounds=False)
    print(f"RESULT {time.perf_counter() - start:.3f}")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--configs", default="L6W64,L4W32")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        variant, L, W = args.child
        return child(variant, int(L), int(W))
    for cfg in args.configs.split(","):
        L, W = U.parse_config(cfg)
        times = {v: [] for v in VARIANTS}
        for _ in range(args.rounds):
            for v in VARIANTS:
                out = subprocess.run([sys.executable, __file__, "--child", v, str(L), str(W)],
                                     capture_output=True, text=True, check=True).stdout
                times[v].append(float(out.split("RESULT")[-1]))
        ratios = sorted(a / b for a, b in zip(times["shipped"], times["traced_twice"]))
        print(f"{cfg}: first fit of 2 steps, s: shipped {' / '.join(f'{t:.1f}' for t in times['shipped'])}, "
              f"traced twice {' / '.join(f'{t:.1f}' for t in times['traced_twice'])}; shipped ÷ traced twice "
              f"median {U.med(ratios):.3f} [{ratios[0]:.3f}–{ratios[-1]:.3f}]", flush=True)


if __name__ == "__main__":
    main()
