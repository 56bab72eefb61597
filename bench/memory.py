#!/usr/bin/env python
"""Peak memory of GloRo vs plain training: peak RSS of fresh processes that build, compile and
run a few training steps of one variant each.

    python bench/memory.py --configs L6W64 --mem-repeats 2

Each process is started while the parent has not imported TensorFlow: Linux carries a parent's
peak RSS over into a child's ru_maxrss. VmHWM is recorded as a cross-check, and the RSS after
import / build / each step shows where the memory goes. Writes bench/results/memory.{json,md}
(`--name`, `--out`); `bench/run.py` runs this section first and puts it in the combined report.
"""
import json
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _util as U  # noqa: E402

PAIRS = (("gloro_full", "plain"), ("gloro_last", "plain"), ("gloro_full_bf16", "plain_bf16"))


def add_args(ap):
    ap.add_argument("--mem-steps", type=int, default=2, help="training steps per memory process")
    ap.add_argument("--mem-variants", default="plain,gloro_full,gloro_last,plain_bf16,gloro_full_bf16")
    ap.add_argument("--mem-repeats", type=int, default=2, help="fresh processes per memory variant (median)")


QUICK = {"mem_variants": "plain,gloro_full", "mem_steps": 1, "mem_repeats": 1}


def variants(args):
    vs = [v for v in args.mem_variants.split(",") if v]
    return [v for v in vs if not v.endswith("_bf16")] if args.no_bf16 else vs


def child(cfg, variant, steps):
    """Runs in a fresh process: peak RSS of `steps` training steps of one variant."""
    rss_start = U.vmrss_mb()
    tf, _ = U.tf_keras()
    import numpy as np

    rss_import = U.vmrss_mb()
    L, W = U.parse_config(cfg)
    m = U.build(variant, L, W)
    rng = np.random.default_rng(0)
    x = tf.constant(rng.random((U.BATCH,) + U.INPUT_SHAPE, dtype=np.float32))
    y = tf.constant(rng.integers(0, U.NUM_CLASSES, U.BATCH).astype("int32"))
    rss_built = U.vmrss_mb()
    per_step = []
    for _ in range(steps):
        m.train_on_batch(x, y)
        per_step.append(U.vmrss_mb())
    print(json.dumps({
        "config": cfg, "variant": variant, "steps": steps,
        "rss_start_mb": rss_start, "rss_after_import_mb": rss_import,
        "rss_after_build_mb": rss_built, "rss_after_each_step_mb": per_step,
        "peak_rss_mb": U.maxrss_mb(), "vm_hwm_mb": U.vmhwm_mb(),
    }))


def run(cfg, args, log):
    """Peak RSS of each variant: the median over --mem-repeats fresh processes, run in
    rotating order (the allocator makes single processes vary by up to ~10%)."""
    vs = variants(args)
    runs = {v: [] for v in vs}
    errors = {}
    for r in range(args.mem_repeats):
        for v in vs[r % len(vs):] + vs[:r % len(vs)]:
            cmd = [sys.executable, str(Path(__file__).resolve()), "--child", cfg, v, str(args.mem_steps)]
            p = subprocess.run(cmd, capture_output=True, text=True, cwd=str(U.REPO))
            line = [ln for ln in p.stdout.splitlines() if ln.startswith("{")]
            if p.returncode or not line:
                errors[v] = (p.stderr or p.stdout)[-500:]
                log(f"  memory {v}: FAILED")
                continue
            runs[v].append(json.loads(line[-1]))
            log(f"  memory {v}: peak {runs[v][-1]['peak_rss_mb']:.0f} MB")
    res = {}
    for v, rs in runs.items():
        if not rs:
            res[v] = {"error": errors.get(v, "no run")}
            continue
        peaks = [d["peak_rss_mb"] for d in rs]
        # the run whose peak is the median (upper median for an even count) stands for the variant
        res[v] = dict(sorted(rs, key=lambda d: d["peak_rss_mb"])[len(rs) // 2], peak_rss_mb_all=peaks,
                      peak_rss_mb=U.med(peaks))
    out = {"variants": res, "ratios": {}, "repeats": args.mem_repeats}
    for g, b in PAIRS:
        if "peak_rss_mb" in res.get(g, {}) and "peak_rss_mb" in res.get(b, {}):
            out["ratios"][f"{g}/{b}"] = res[g]["peak_rss_mb"] / res[b]["peak_rss_mb"]
            inc_g = res[g]["peak_rss_mb"] - res[g]["rss_after_import_mb"]
            inc_b = res[b]["peak_rss_mb"] - res[b]["rss_after_import_mb"]
            out["ratios"][f"{g}/{b} (above import baseline)"] = inc_g / inc_b
    return out


def summary_rows(cfg, results):
    r = results["configs"].get(cfg, {}).get("memory", {})
    m = r.get("ratios", {})
    return [U.value_row(cfg, f"peak RSS {g} ÷ {b} (separate processes, median of {r.get('repeats', 1)})",
                        m[f"{g}/{b}"], key="memory_ratio")
            for g, b in PAIRS if f"{g}/{b}" in m]


def details(results):
    rows = []
    for cfg, r in results["configs"].items():
        for v, d in r.get("memory", {}).get("variants", {}).items():
            if "peak_rss_mb" in d:
                rows.append([cfg, v, U.fmt(d["rss_after_import_mb"]), U.fmt(d["rss_after_build_mb"]),
                             U.fmt(d["peak_rss_mb"]), U.fmt(d.get("vm_hwm_mb")),
                             ", ".join(U.fmt(x) for x in d.get("rss_after_each_step_mb", []))])
    if not rows:
        return []
    return ["", "## Memory (one fresh process per row)", "",
            U.md_table(["config", "variant", "RSS after import MB", "RSS after build MB",
                        "peak RSS (ru_maxrss) MB", "VmHWM MB", "RSS after each step MB"], rows)]


def main(argv=None):
    if argv is None:
        argv = sys.argv[1:]
    if argv[:1] == ["--child"]:
        cfg, variant, steps = argv[1:4]
        child(cfg, variant, int(steps))
        return 0
    args, configs, s = U.start_section(__doc__, add_args, argv, dict(QUICK, configs="L6W64"))
    results = {"meta": s.meta, "configs": {}}
    for cfg in configs:  # all children before this process imports TensorFlow
        s.mark(f"{cfg} memory")
        results["configs"][cfg] = {"memory": run(cfg, args, s.log)}
    tf, keras = U.tf_keras()
    s.meta["environment"] = U.environment(tf, keras)
    return U.finish_section(s, results, [row for cfg in configs for row in summary_rows(cfg, results)],
                            [details(results)], args, "memory", "gloro-keras memory")


if __name__ == "__main__":
    sys.exit(main())
