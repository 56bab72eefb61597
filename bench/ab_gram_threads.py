#!/usr/bin/env python
"""Why `bounds.sound_bounds`' threads form Gram matrices with numpy's matmul, not scipy's zherk.

    python bench/ab_gram_threads.py [--config L6W128] [--rounds 3]

1. Each kernel of the host sound bound (`spectral._gram_sigma_upper`: zherk, matmul, eigvalsh on
   40 random 256×256 complex matrices, one BLAS thread) run twice one after another and twice in
   two threads: threads ÷ serial ≈ 1.0 means the call holds the GIL (two threads cannot overlap),
   ≈ 0.5 that it releases it.
2. The blocks of `--config` (a GloRo LiResNet as `bench/_util.build` makes it): their sound bounds
   in `sound_bounds`' threads with the Gram matrices by zherk and by matmul, in alternating rounds,
   and the values' largest relative difference.
"""
import argparse
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _util as U  # noqa: E402


def gil_check(batch=40, n=256, repeats=7):
    import numpy as np
    from scipy.linalg.blas import zherk
    from threadpoolctl import threadpool_limits

    rng = np.random.default_rng(0)
    m = rng.standard_normal((batch, n, n)) + 1j * rng.standard_normal((batch, n, n))
    g = np.matmul(m, np.conj(np.swapaxes(m, 1, 2)))
    kernels = {
        "zherk": lambda: [zherk(1.0, m[i], trans=0, lower=1) for i in range(batch)],
        "matmul": lambda: np.matmul(m, np.conj(np.swapaxes(m, 1, 2))),
        "eigvalsh": lambda: np.linalg.eigvalsh(g, UPLO="L"),
    }
    out = {}
    with threadpool_limits(1, "blas"), ThreadPoolExecutor(2) as pool:
        for name, f in kernels.items():
            ratios = []
            for _ in range(repeats):
                t0 = time.perf_counter()
                f()
                f()
                t1 = time.perf_counter()
                list(pool.map(lambda _: f(), range(2)))
                ratios.append((time.perf_counter() - t1) / (t1 - t0))
            out[name] = statistics.median(ratios)
            print(f"{name}: two threads ÷ two calls one after another {out[name]:.2f} (median of {repeats})", flush=True)
    return out


def model_ab(config, rounds):
    import contextlib

    import gloro_keras.bounds.parallel as par

    L, W = (int(v) for v in config.upper().lstrip("L").split("W"))
    layers = [layer for layer in U.build("gloro_full", L, W).bounded_layers if type(layer).__name__ == "LiResNetBlock"]
    gil_free, times, values = par.gil_free_grams, {"zherk": [], "matmul": []}, {}
    try:
        for r in range(rounds):
            for name in (("zherk", "matmul") if r % 2 == 0 else ("matmul", "zherk")):
                # the threads enter gil_free_grams (matmul); a no-op in its place keeps zherk
                par.gil_free_grams = gil_free if name == "matmul" else contextlib.nullcontext
                t, values[name] = U.timed(lambda: par.sound_bounds(layers, on_device=False))
                times[name].append(t)
    finally:
        par.gil_free_grams = gil_free
    worst = max(abs(a / b - 1.0) for a, b in zip(values["matmul"], values["zherk"]))
    ratio = statistics.median(m / z for m, z in zip(times["matmul"], times["zherk"]))
    print(f"{config} blocks' sound bounds in threads: matmul {', '.join(f'{t:.2f}' for t in times['matmul'])} s, "
          f"zherk {', '.join(f'{t:.2f}' for t in times['zherk'])} s; matmul ÷ zherk {ratio:.3f} (median of "
          f"per-round ratios); values' largest relative difference {worst:.1e}", flush=True)
    return {"matmul_s": times["matmul"], "zherk_s": times["zherk"], "matmul_over_zherk": ratio, "rel_diff": worst}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="L6W128")
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args(argv)
    gil_check()
    model_ab(args.config, args.rounds)


if __name__ == "__main__":
    main()
