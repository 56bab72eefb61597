#!/usr/bin/env python
"""Where a JAX training step's time goes on a CPU: the XLA:CPU thunks that `jax.profiler.trace`
records, summed per step by the layer, pass and JAX primitive they were compiled from.

    KERAS_BACKEND=jax python bench/jax_profile.py --config L6W64 --variant plain
    python bench/jax_profile.py --config L6W128 --variant gloro_full --steps 3

Builds the benchmark's model (`_util.build`: batch 256 of random 32×32×3 images), runs warm-up
steps, traces `--steps` steps and reads the trace's thunk events (one per fused kernel, matmul or
convolution, on XLA's worker threads). Each thunk is named after an instruction of the optimized
HLO, which this script dumps (`--xla_dump_to`, a temporary folder) to read the instruction's
`op_name` metadata, e.g. `jit(train_step)/transpose(jvp(block2))/dot_general`: layer `block*`
(numbered layers pooled), pass `backward` (`transpose(...)`), primitive `dot_general`. Thunks run on
several threads at once, so their times add up to CPU time, not to the wall time of a step.
Writes bench/results/jax_profile-<config>-<variant>.{md,json} (`--out`). JAX only (the backend is
set here).
"""
import argparse
import collections
import glob
import gzip
import json
import os
import re
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _util as U  # noqa: E402

INSTRUCTION = re.compile(r'^\s*(?:ROOT )?%?([\w.\-]+) = .*?metadata=\{[^}]*op_name="([^"]+)"')


def op_names(dump):
    """{HLO instruction name: op_name} of the optimized train-step modules in the dump folder."""
    names = {}
    for path in glob.glob(os.path.join(dump, "*train_step*cpu_after_optimizations.txt")):
        for line in open(path):
            m = INSTRUCTION.match(line)
            if m:
                names[m.group(1)] = m.group(2)
    return names


def classify(op_name):
    """(layer, pass, primitive) of an op_name such as `jit(train_step)/transpose(jvp(block2))/dot_general`."""
    parts = op_name.split("/")[1:] or ["?"]
    primitive = parts[-1]
    scope = "/".join(parts[:-1])
    phase = "backward" if "transpose(" in scope else "forward"
    layers = re.findall(r"(?:jvp|transpose)\(([\w.]+)\)", scope) or [w for w in parts[:-1] if "(" not in w]
    layer = re.sub(r"\d+", "*", layers[-1]) if layers else "(step)"
    return layer, phase, primitive


def thunk_times(trace_dir):
    """{thunk name: [count, µs]} of the thunk events in the trace (worker threads, executors excluded)."""
    path = glob.glob(os.path.join(trace_dir, "plugins", "profile", "*", "*.trace.json.gz"))[0]
    events = json.load(gzip.open(path))["traceEvents"]
    threads = {(e["pid"], e["tid"]): e["args"]["name"] for e in events
               if e.get("ph") == "M" and e.get("name") == "thread_name"}
    out = collections.defaultdict(lambda: [0, 0.0])
    for e in events:
        thread = threads.get((e.get("pid"), e.get("tid")), "")
        if e.get("ph") == "X" and "XLAEigen" in thread and not e["name"].startswith(("ThunkExecutor", "end:")):
            out[e["name"]][0] += 1
            out[e["name"]][1] += e.get("dur", 0.0)
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="L6W64")
    ap.add_argument("--variant", default="plain", help="plain | gloro_full | gloro_last (bench/_util.build)")
    ap.add_argument("--steps", type=int, default=3, help="traced steps")
    ap.add_argument("--top", type=int, default=25, help="rows of the per-instruction table")
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent / "results"))
    args = ap.parse_args(argv)
    L, W = U.parse_config(args.config)
    dump = tempfile.mkdtemp(prefix="gloro_jax_profile_")  # read at JAX's first compilation: set before it
    os.environ["KERAS_BACKEND"] = "jax"
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                               f" --xla_dump_to={dump} --xla_dump_hlo_as_text --xla_dump_hlo_pass_re=^$").strip()

    import jax
    import keras
    import numpy as np

    rng = np.random.default_rng(0)
    x = keras.ops.convert_to_tensor(rng.random((U.BATCH,) + U.INPUT_SHAPE, dtype=np.float32))
    y = keras.ops.convert_to_tensor(rng.integers(0, U.NUM_CLASSES, U.BATCH).astype("int32"))
    model = U.build(args.variant, L, W)
    for _ in range(3):
        model.train_on_batch(x, y)
    t = time.perf_counter()
    for _ in range(args.steps):
        model.train_on_batch(x, y)
    step_ms = (time.perf_counter() - t) / args.steps * 1e3
    trace_dir = tempfile.mkdtemp(prefix="gloro_jax_trace_")
    with jax.profiler.trace(trace_dir):
        for _ in range(args.steps):
            model.train_on_batch(x, y)

    names, thunks = op_names(dump), thunk_times(trace_dir)
    per_step = lambda us: us / 1e3 / args.steps  # noqa: E731  (ms per step)
    groups = collections.defaultdict(float)
    rows = []
    for name, (count, us) in thunks.items():
        op_name = names.get(name, "")
        layer, phase, primitive = classify(op_name) if op_name else ("?", "?", re.sub(r"\.\d+$", "", name))
        groups[(layer, phase, primitive)] += us
        rows.append((per_step(us), count / args.steps, name, op_name))
    total = sum(groups.values())
    result = {"config": args.config, "variant": args.variant, "steps": args.steps, "step_ms": step_ms,
              "thunk_cpu_ms_per_step": per_step(total), "cpu_model": U.cpu_model(),
              "jax": jax.__version__, "keras": keras.__version__,
              "groups": [{"layer": k[0], "pass": k[1], "primitive": k[2], "ms_per_step": per_step(v)}
                         for k, v in sorted(groups.items(), key=lambda kv: -kv[1])],
              "instructions": [{"ms_per_step": ms, "per_step": c, "name": n, "op_name": o}
                               for ms, c, n, o in sorted(rows, reverse=True)]}
    lines = [f"# JAX training step profile: {args.config} {args.variant}", "",
             f"{time.strftime('%Y-%m-%d %H:%M')} · {result['cpu_model']} · JAX {jax.__version__} · Keras "
             f"{keras.__version__} · batch {U.BATCH} · step {step_ms:.0f} ms (mean of {args.steps}, "
             f"untraced) · thunks {result['thunk_cpu_ms_per_step']:.0f} CPU ms per step", "",
             f"`KERAS_BACKEND=jax python bench/jax_profile.py --config {args.config} --variant {args.variant} "
             f"--steps {args.steps}`. Thunks run on several threads at once: their times are CPU time.", "",
             "| layer | pass | primitive | CPU ms / step | share |", "| --- | --- | --- | --- | --- |"]
    for g in result["groups"]:
        if g["ms_per_step"] >= 0.5:
            lines.append(f"| {g['layer']} | {g['pass']} | {g['primitive']} | {g['ms_per_step']:.1f} | "
                         f"{g['ms_per_step'] / result['thunk_cpu_ms_per_step']:.1%} |")
    lines += ["", f"Largest {args.top} instructions:", "", "| CPU ms / step | per step | HLO instruction | op_name |",
              "| --- | --- | --- | --- |"]
    for r in result["instructions"][:args.top]:
        lines.append(f"| {r['ms_per_step']:.1f} | {r['per_step']:.0f} | `{r['name']}` | `{r['op_name']}` |")
    os.makedirs(args.out, exist_ok=True)
    stem = os.path.join(args.out, f"jax_profile-{args.config}-{args.variant}")
    json.dump(result, open(stem + ".json", "w"), indent=1)
    open(stem + ".md", "w").write("\n".join(lines) + "\n")
    print("\n".join(lines[:40]))
    print(f"wrote {stem}.md and .json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
