#!/usr/bin/env python
"""Why the stem's exact (explicit-Gram) bound certifies its top eigenvalue by a Cholesky
factorization instead of computing it by eigvalsh.

    python bench/ab_explicit_bound.py [--configs L6W64,L6W128] [--rounds 4] [--steps 3]

Per config (a GloRo LiResNet as `bench/_util.build` makes it, after `--steps` training steps on
random images, so its weights have left the initializer): in alternating rounds, with
`spectral._CHOLESKY_MIN_DIM` at its value (Lanczos target + Cholesky certificate) and out of
reach (eigvalsh, as before), (1) the stem's sound bound alone on one BLAS thread and (2) all the
layers' sound bounds as `ConvergeBounds` computes them before each validation
(`bounds.sound_bounds` on the host: one thread per layer); the values' largest relative difference
and the stem Gram matrix's top eigenvalues' spacing. With `--device`, also (3) the stem's bound
by `bounds.device` (`on_device=True`, in Keras's backend's framework, on its default device: a
GPU where there is one; the target by the device's Lanczos against its eigensolver). Prints one
line per config; `--log` appends them to a file.
"""
import argparse
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _util as U  # noqa: E402


def measure(config, rounds, steps, on_device=False):
    import numpy as np
    from keras import ops
    from threadpoolctl import threadpool_limits

    from gloro_keras.bounds import sound_bounds
    from gloro_keras.bounds import spectral as sp

    L, W = U.parse_config(config)
    model = U.build("gloro_last", L, W)
    rng = np.random.default_rng(0)
    x, y = rng.random((U.BATCH,) + U.INPUT_SHAPE, dtype=np.float32), rng.integers(0, U.NUM_CLASSES, U.BATCH)
    for _ in range(steps):
        model.train_on_batch(x, y)
    layers = model.bounded_layers
    stem = layers[0]
    kernel = ops.convert_to_numpy(stem.linear_kernel()).astype("float64")
    scale = sp._pow2_scale(kernel)
    gram, _ = sp.explicit_gram(kernel * scale, stem.input_hw, stem.strides, stem.pads)
    top = np.linalg.eigvalsh(gram)[-2:]
    modes = {"cholesky": sp._CHOLESKY_MIN_DIM, "eigvalsh": 10 ** 12}
    parts = ("stem", "all", "device") if on_device else ("stem", "all")
    times = {m: {k: [] for k in parts} for m in modes}
    values = {}
    try:
        for r in range(rounds):
            for mode in (tuple(modes) if r % 2 == 0 else tuple(reversed(modes))):
                sp._CHOLESKY_MIN_DIM = modes[mode]
                with threadpool_limits(1, "blas"):
                    t, _ = U.timed(stem.sound_bound)
                times[mode]["stem"].append(t)
                t, values[mode] = U.timed(lambda: sound_bounds(layers, on_device=False))
                times[mode]["all"].append(t)
                if on_device:
                    t, dev = U.timed(lambda: stem.sound_bound(on_device=True))
                    times[mode]["device"].append(t)
                    values[mode + "_device"] = [dev]
    finally:
        sp._CHOLESKY_MIN_DIM = modes["cholesky"]
    ratio = {k: statistics.median(c / e for c, e in zip(times["cholesky"][k], times["eigvalsh"][k])) for k in parts}
    worst = max(abs(a / b - 1.0) for a, b in zip(values["cholesky"], values["eigvalsh"]))
    med = {m: {k: statistics.median(v) for k, v in times[m].items()} for m in modes}
    line = (f"{config} (stem Gram order {gram.shape[0]}, top two eigenvalues {1 - top[0] / top[1]:.1e} apart): "
            f"stem alone on one thread {med['cholesky']['stem']:.2f} s by Cholesky, {med['eigvalsh']['stem']:.2f} s by "
            f"eigvalsh ({ratio['stem']:.2f}); all layers' sound bounds in threads {med['cholesky']['all']:.2f} against "
            f"{med['eigvalsh']['all']:.2f} s ({ratio['all']:.2f}); medians of {rounds} alternating rounds; values' "
            f"largest relative difference {worst:.1e}")
    if on_device:
        import keras

        from gloro_keras.bounds.device import framework

        dev_worst = abs(values["cholesky_device"][0] / values["eigvalsh_device"][0] - 1.0)
        line += (f"; the stem by bounds.device ({framework()}, {keras.backend.backend()} backend's default device) "
                 f"{med['cholesky']['device']:.2f} s with the Lanczos target, {med['eigvalsh']['device']:.2f} s with "
                 f"the eigensolver's ({ratio['device']:.2f}), values {dev_worst:.1e} apart")
    print(line, flush=True)
    return line


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--configs", default="L6W64,L6W128")
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--steps", type=int, default=3, help="training steps before the bounds")
    ap.add_argument("--device", action="store_true", help="also the stem's bound by bounds.device")
    ap.add_argument("--log", default=None, help="append the lines to this file")
    args = ap.parse_args(argv)
    lines = [measure(c, args.rounds, args.steps, args.device) for c in args.configs.split(",")]
    if args.log:
        with open(args.log, "a") as f:
            f.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
