#!/usr/bin/env python
"""gloro-keras benchmark suite: runs every section and writes one combined report.

    python bench/run.py                      # full run (~30 min on 2 CPU cores)
    python bench/run.py --quick              # L6W64 only, fewer repeats (~3 min)
    python bench/run.py --configs L6W64,L6W128 --repeats 7

Sections (each also runs alone, see bench/README.md):
  bench/memory.py         peak RSS of GloRo vs plain training, fresh processes (run first,
                          before this process imports TensorFlow)
  bench/training.py       GloRo ÷ plain step, images/s, first step, XLA, input pipeline,
                          PyTorch in the same session (bench/torch_reference.py)
  bench/bound_profile.py  micro-profile of the bound, MAC floor, attainable GFLOP/s
  bench/certification.py  certify ÷ predict, one-time bound costs
  backends                JAX ÷ TensorFlow step (bench/gpu_check.py's child per backend, float32,
                          a fresh process each, --backend-pairs pairs in alternating order:
                          TensorFlow then JAX, JAX then TensorFlow, ...) for --jax-configs

Machine-readable per config in <name>.json: configs.<cfg>.speedup_vs_torch (PyTorch reference
GloRo step time ÷ GloRo step time, both with GloroModel's default bound gradient ("last", as the
authors' code; speedup_vs_torch_full with "full"), float32, faster PyTorch memory format, median of
the per-round ratios: the PyTorch steps run in a child process and alternate with ours)
and configs.<cfg>.jax_over_tf (JAX GloRo step time ÷ TensorFlow's, median of the pairs' ratios,
jax_over_tf_range their min-max; jax_over_tf_cpu the same on process CPU time).

Writes bench/results/<name>.json and <name>.md (name: "latest", or "quick" with --quick).
Every ratio compares two variants run side by side in ONE process after warm-up, the
variants alternating round by round; the figure is the median of the per-round ratios
(with min-max).
"""
import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _util as U  # noqa: E402
import bound_profile  # noqa: E402
import certification  # noqa: E402
import gpu_check  # noqa: E402
import memory  # noqa: E402
import training  # noqa: E402

SECTIONS = (training, bound_profile, certification, memory)  # order of the summary rows
QUICK = {"configs": "L6W64", **training.QUICK, **bound_profile.QUICK, **certification.QUICK, **memory.QUICK}


def run_backends(cfg, args, log):
    """GloRo and plain float32 steps of each backend in fresh processes: `args.backend_pairs` pairs
    of processes run back to back, TensorFlow first in the first pair, JAX first in the second, and
    so on, so that neither backend always runs on a host that has warmed up or slowed down."""
    opts = argparse.Namespace(rounds=max(3, args.repeats), steps=args.steps, timeout=3600)
    pairs = []
    for i in range(args.backend_pairs):
        pair = {}
        for backend in ("tensorflow", "jax")[::1 if i % 2 == 0 else -1]:
            pair[backend] = gpu_check.run_child(backend, cfg, opts, dtypes="float32")
            v = pair[backend].get("variants", {}).get("gloro_float32")
            log(f"  {backend}: " + (f"GloRo {v['images_per_s']:.0f} img/s" if v else pair[backend].get("error", "")[-300:]))
        pairs.append(pair)
    return {"pairs": pairs}


def backend_ratios(backends, variant, key="step_s"):
    """JAX ÷ TensorFlow of `variant`'s median `key` (per-round seconds per step), one ratio per
    pair of processes (`run_backends`; a result without pairs is one pair); [] when not measured."""
    import statistics

    out = []
    for pair in backends.get("pairs") or [backends]:
        jax, tf = (pair.get(k, {}).get("variants", {}).get(variant, {}).get(key) for k in ("jax", "tensorflow"))
        if jax and tf:
            out.append(statistics.median(jax) / statistics.median(tf))
    return out


def speedup_key(g):
    """latest.json's key for PyTorch ÷ ours with bound gradient g: the default's is `speedup_vs_torch`."""
    return "speedup_vs_torch" + ("" if g == U.DEFAULT_GRADIENT else f"_{g}")


def machine_readable(cfg, r, results):
    """speedup_vs_torch and jax_over_tf of one config (absent when not measured)."""
    import statistics

    v = r.get("training", {}).get("variants", {})
    for g, tv in U.TORCH_GLORO.items():
        key = speedup_key(g)
        paired = r.get("training", {}).get("ratios", {}).get(f"torch_{tv}/gloro_{g}")
        best = training.torch_best(results, cfg, tv)
        if paired:  # the steps alternated: median of the per-round ratios
            r[key] = paired["median"]
            r[key + "_range"] = [paired["min"], paired["max"]]
        elif best and f"gloro_{g}" in v:
            r[key] = v[f"gloro_{g}"]["images_per_s"] / best[1][tv]["images_per_s"]
    b = r.get("backends", {})
    for name, variant, key in (("jax_over_tf", "gloro_float32", "step_s"), ("jax_over_tf_plain", "plain_float32", "step_s"),
                               ("jax_over_tf_cpu", "gloro_float32", "cpu_s"),
                               ("jax_over_tf_plain_cpu", "plain_float32", "cpu_s")):
        ratios = backend_ratios(b, variant, key)
        if ratios:
            r[name] = statistics.median(ratios)
            r[name + "_range"] = [min(ratios), max(ratios)]


def _range(lo_hi):
    """" [min–max]" of more than one ratio, else ""."""
    return f" [{U.fmt(lo_hi[0])}–{U.fmt(lo_hi[1])}]" if lo_hi and lo_hi[0] != lo_hi[1] else ""


def backend_rows(cfg, results):
    r = results["configs"].get(cfg, {})
    rows = []
    if "jax_over_tf" in r:
        # CPU time (all threads) is the robust figure here: each pair's two processes run a minute apart
        n = len(backend_ratios(r.get("backends", {}), "gloro_float32"))
        gloro = U.value_row(cfg, f"GloRo step JAX ÷ TensorFlow (float32, fresh processes, {n} pair{'s' * (n > 1)})",
                            r["jax_over_tf"],
                            key="jax_over_tf", fastest_value=r.get("jax_over_tf_cpu"))
        rows.append(gloro)
        if "jax_over_tf_plain" in r:
            rows.append(U.value_row(cfg, "plain step JAX ÷ TensorFlow (float32)", r["jax_over_tf_plain"]))
        for row, k in zip(rows, ("jax_over_tf", "jax_over_tf_plain")):
            row[2] += _range(r.get(k + "_range"))
            row[4] = U.fmt(r[k + "_cpu"]) + _range(r.get(k + "_cpu_range")) if k + "_cpu" in r else ""
    for g in sorted(U.TORCH_GLORO, key=lambda g: g != U.DEFAULT_GRADIENT):  # the default's row first
        key = speedup_key(g)
        if key in r:
            rows.append(U.value_row(cfg, f"{key}: PyTorch GloRo step ÷ GloRo step, both bound_gradient={g}"
                                    + (" (the default)" if g == U.DEFAULT_GRADIENT else "") + ", float32",
                                    r[key], key="speedup_vs_pytorch" if g == U.DEFAULT_GRADIENT else None))
    return rows


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    U.add_common_args(ap)
    for section in (training, certification, memory, bound_profile):
        section.add_args(ap)
    ap.add_argument("--no-memory", action="store_true")
    ap.add_argument("--no-cert", action="store_true")
    ap.add_argument("--no-profile", action="store_true")
    ap.add_argument("--no-peak", action="store_true", help="skip the attainable-GFLOP/s kernels")
    ap.add_argument("--jax-configs", default="L6W64", help="configs whose JAX ÷ TensorFlow step is timed ('none')")
    ap.add_argument("--backend-pairs", type=int, default=2,
                    help="pairs of fresh TensorFlow and JAX processes per --jax-configs config, alternating "
                         "which runs first (default %(default)s)")
    args = U.parse_args(ap, argv, QUICK)
    name = args.name or ("quick" if args.quick else "latest")
    configs = U.config_list(args)
    profile_cfg = args.profile_config.upper()
    if profile_cfg not in configs:
        profile_cfg = configs[0]

    s = U.Session(args)
    s.log(s.meta["uptime_before"])
    mem = {}
    if not args.no_memory:
        # First, while this process is still small: a child's ru_maxrss starts from its
        # parent's peak RSS (Linux keeps it across fork/exec), so the parent must not have
        # loaded TensorFlow yet. VmHWM (per address space) is recorded as a cross-check.
        for cfg in configs:
            s.mark(f"{cfg} memory")
            mem[cfg] = memory.run(cfg, args, s.log)
    child, torch_ref = training.start_torch(args, s.log)  # its steps alternate with ours in training.run
    s.meta["parent_peak_rss_mb_before_tf"] = U.maxrss_mb()
    tf, keras = U.tf_keras()
    s.meta["environment"] = U.environment(tf, keras)
    xtr, ytr, xte, s.meta["data"] = U.load_arrays()
    x, y = tf.constant(xtr), tf.constant(ytr)
    results = {"meta": s.meta, "configs": {}, "torch_reference": torch_ref}

    for i, cfg in enumerate(configs):
        L, W = U.parse_config(cfg)
        r = results["configs"][cfg] = {}
        if cfg in mem:
            r["memory"] = mem[cfg]
        s.mark(f"{cfg} training")
        r["training"], models = training.run(L, W, x, y, args, s.log, child)
        if not args.no_profile and cfg == profile_cfg:
            s.mark(f"{cfg} profile")
            try:
                results["profile"] = bound_profile.run(L, W, models, args, s.log)
            except Exception as e:
                results["profile_error"] = f"{type(e).__name__}: {e}"
                s.log(f"  profile FAILED: {e}")
        if not args.no_cert and "gloro_full" in models:
            s.mark(f"{cfg} certification")
            r["certification"] = certification.run(models["gloro_full"], xte, args, s.log,
                                                   gloro_predict=i == 0, power_check=i == 0)
        del models
        keras.backend.clear_session()
    if child:
        child.close()
    if not args.no_peak:
        s.mark("peak")
        results["peak"] = bound_profile.run_peak(args, s.log)
    if not args.no_pipeline:
        s.mark("pipeline")
        results["pipeline"] = training.run_pipeline(args, s.log)
    jax_configs = [] if args.jax_configs.lower() == "none" else U.config_list(argparse.Namespace(configs=args.jax_configs))
    for cfg in jax_configs:
        s.mark(f"{cfg} JAX vs TensorFlow")
        results["configs"].setdefault(cfg, {})["backends"] = run_backends(cfg, args, s.log)
    for cfg, r in results["configs"].items():
        machine_readable(cfg, r, results)
    s.finish()
    rows = [row for cfg in configs for section in SECTIONS for row in section.summary_rows(cfg, results)]
    rows += [row for cfg in results["configs"] for row in backend_rows(cfg, results)]
    details = [training.details(results), certification.details(results), memory.details(results),
               bound_profile.details(results)]
    jpath, mpath = U.write_report(results, name, args.out, rows, details)
    s.log(s.meta["uptime_after"])
    s.log(f"wrote {jpath} and {mpath}")
    print(open(mpath).read())
    return 0


if __name__ == "__main__":
    sys.exit(main())
