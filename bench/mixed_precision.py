#!/usr/bin/env python
"""How much faster is a plain LiResNet training step in bfloat16 on this CPU?

    python bench/mixed_precision.py [--config L6W64] [--rounds 6]

A lead for the throughput goal, not a supported mode: GloroModel refuses non-float32
policies because bfloat16 logits and power iterates would make certificates unsound (a
sound mixed-precision design would train in bfloat16 and certify a float32 copy). Builds
`liresnet_network` (no bound) under the float32 and the mixed_bfloat16 policies in ONE process,
warms both up, then times `train_on_batch` (batch 256, 32×32×3, AdamW, cross-entropy) in
alternating rounds. Prints the per-round times and the median ratio, and writes
bench/results/mixed_precision.json.
"""
import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _util as U  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", default="L6W64", help="LxWy, e.g. L6W64")
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--steps", type=int, default=2, help="train steps per variant per round")
    args = ap.parse_args()
    depth, width = (int(v) for v in args.config[1:].split("W"))

    import keras
    import tensorflow as tf

    from gloro_keras.models.liresnet import liresnet_network

    rng = np.random.default_rng(0)
    x = rng.random((256, 32, 32, 3), dtype=np.float32)
    y = rng.integers(0, 10, 256)
    models = {}
    for policy in ("float32", "mixed_bfloat16"):
        keras.mixed_precision.set_global_policy(policy)
        m = liresnet_network(L=depth, W=width)
        m.compile(optimizer=keras.optimizers.AdamW(1e-3, weight_decay=1e-4, global_clipnorm=3.0),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True), jit_compile=False)
        for _ in range(2):
            m.train_on_batch(x, y)
        models[policy] = m
    keras.mixed_precision.set_global_policy("float32")

    times = {k: [] for k in models}
    for r in range(args.rounds):
        order = list(models) if r % 2 == 0 else list(models)[::-1]
        for k in order:
            t = time.perf_counter()
            for _ in range(args.steps):
                models[k].train_on_batch(x, y)
            times[k].append((time.perf_counter() - t) / args.steps)
    ratios = [b / f for f, b in zip(times["float32"], times["mixed_bfloat16"])]
    out = dict(config=args.config, times_s=times, ratio_median=float(np.median(ratios)),
               ratio_min=float(min(ratios)), ratio_max=float(max(ratios)),
               images_per_s={k: 256 / float(np.median(v)) for k, v in times.items()},
               environment=U.environment(tf, keras), load=U.loadavg(),
               threads=dict(intra=os.environ.get("TF_NUM_INTRAOP_THREADS", "default"),
                            cpus=sorted(os.sched_getaffinity(0))))
    for k, v in times.items():
        print(f"{k:15s} step s: {' '.join(f'{t:.3f}' for t in v)}  ({out['images_per_s'][k]:.0f} img/s)")
    print(f"bfloat16 ÷ float32 step time: {out['ratio_median']:.3f} [{out['ratio_min']:.3f}–{out['ratio_max']:.3f}]")
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "mixed_precision.json").write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
