#!/usr/bin/env python
"""Where a GloRo step's extra time goes: a micro-profile of the bound (each part in its own
tf.function, with and without gradient; a grouped-convolution prototype of the backbone's power
iterations), the analytic MAC floor of the bound, and this CPU's attainable GFLOP/s.

    python bench/bound_profile.py --profile-config L6W128
    python bench/bound_profile.py --quick

(Named bound_profile, not profile: a bench/profile.py would shadow the standard library's
`profile` module for every script in bench/.) Writes bench/results/bound_profile.{json,md}
(`--name`, `--out`); `bench/run.py` profiles its --profile-config with the models its training
section built and adds the train-step times as reference rows.
"""
import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _util as U  # noqa: E402

TINY = 1e-24  # as the layers' own normalisation: sqrt(max(Σx², TINY))
CONV = "conv 3×3 256×16×16×128"


def add_args(ap):
    ap.add_argument("--profile-config", default="L6W128")
    ap.add_argument("--profile-repeats", type=int, default=3)
    ap.add_argument("--profile-calls", type=int, default=2)
    ap.add_argument("--no-grouped", action="store_true", help="skip the grouped-conv prototype")
    ap.add_argument("--peak-repeats", type=int, default=7, help="timed runs of each peak-GFLOP/s kernel")


QUICK = {"profile_config": "L6W64", "profile_repeats": 3, "profile_calls": 1, "no_grouped": True}


# -- attainable GFLOP/s ----------------------------------------------------------------------
def run_peak(args, log):
    """This CPU's attainable GFLOP/s: a large matmul and the LiResNet block's own 3×3 convolution
    (batch 256, 16×16×128, forward), float32 and bfloat16, median of timed runs after warm-up."""
    tf, _ = U.tf_keras()
    import numpy as np

    rng = np.random.default_rng(0)
    cases = {
        "matmul 2048³": (lambda a, b: tf.linalg.matmul(a, b),
                         rng.standard_normal((2048, 2048), dtype=np.float32),
                         rng.standard_normal((2048, 2048), dtype=np.float32), 2 * 2048 ** 3),
        CONV: (lambda a, b: tf.nn.conv2d(a, b, 1, "SAME"),
               rng.standard_normal((256, 16, 16, 128), dtype=np.float32),
               rng.standard_normal((3, 3, 128, 128), dtype=np.float32), 2 * 256 * 16 * 16 * 9 * 128 * 128),
    }
    out = {}
    for name, (op, a, b, flops) in cases.items():
        for dtype in ("float32", "bfloat16"):
            ta, tb = tf.cast(a, dtype), tf.cast(b, dtype)
            f = tf.function(lambda: tf.reduce_sum(tf.cast(op(ta, tb), "float32")))
            f(), f()
            ts = []
            for _ in range(args.peak_repeats):
                t = time.perf_counter()
                f().numpy()
                ts.append(time.perf_counter() - t)
            out[f"{name} {dtype}"] = {"gflops": flops / U.med(ts) / 1e9, "gflops_best": flops / min(ts) / 1e9}
            log(f"  {name} {dtype}: {out[f'{name} {dtype}']['gflops']:.0f} GFLOP/s")
    return out


# -- micro-profile of the bound --------------------------------------------------------------
def run(L, W, models, args, log):
    """models: warmed-up "gloro_full" and "gloro_last" GloroModels of config LxWy."""
    tf, keras = U.tf_keras()
    from keras import ops

    from gloro_keras.layers import LiResNetBlock

    def l2_normalize(t):
        return t / ops.sqrt(ops.maximum(ops.sum(ops.square(t)), TINY))

    g_full, g_last = models["gloro_full"], models["gloro_last"]
    bounded = g_full.bounded_layers
    blocks = [l for l in bounded if isinstance(l, LiResNetBlock)]
    others = [l for l in bounded if not isinstance(l, LiResNetBlock)]

    def bound_fn(model, layers, grad):
        """The product of `layers`' training-call bounds (model.bound_gradient), ± its gradient."""
        variables = [v for l in layers for v in l.trainable_variables]

        def prod():
            k = ops.convert_to_tensor(1.0)
            for l in layers:
                k = k * l.power_estimate(training=True, gradient=model.bound_gradient)
            return k

        @tf.function
        def f():
            if not grad:
                return prod(), []
            with tf.GradientTape() as tape:
                k = prod()
            return k, [gv for gv in tape.gradient(k, variables) if gv is not None]

        return f

    @tf.function
    def model_bound_nograd():
        return g_full.body_bound(training=True)

    # -- grouped-convolution prototype of the L backbone power iterations -------------
    grouped = {}
    if blocks and not args.no_grouped:
        h, w, c = (int(d) for d in blocks[0].iterate.shape[1:])
        nb = len(blocks)
        gvar = tf.Variable(tf.concat([l2_normalize(ops.convert_to_tensor(b.iterate)) for b in blocks], -1),
                           trainable=False)

        def conv_keras(a, k):
            return ops.conv(a, k, padding="same")

        def conv_tf(a, k):
            return tf.nn.conv2d(a, k, strides=1, padding="SAME")

        def grouped_power(u, kernels, iters, conv=conv_keras):
            kf = ops.concatenate(kernels, axis=-1)  # (3, 3, W, L·W): groups = L
            kt = ops.concatenate([ops.transpose(ops.flip(k, (0, 1)), (0, 1, 3, 2)) for k in kernels], -1)

            def norms(t):
                t5 = ops.reshape(t, (1, h, w, nb, c))
                return ops.sqrt(ops.maximum(ops.sum(ops.square(t5), axis=(0, 1, 2, 4)), TINY))

            for _ in range(iters):
                v = conv(u, kf)
                u = conv(v, kt)  # adjoint = conv with flipped, transposed kernel
                n = norms(u)
                u = ops.reshape(ops.reshape(u, (1, h, w, nb, c)) / n[None, None, None, :, None],
                                (1, h, w, nb * c))
            return norms(conv(u, kf)), u

        def grouped_fn(grad, conv):
            variables = [v for b in blocks for v in b.trainable_variables]

            @tf.function
            def f():
                if not grad:
                    sig, u = grouped_power(gvar, [ops.stop_gradient(b.linear_kernel()) for b in blocks],
                                           U.POWER_ITERATIONS, conv)
                    gvar.assign(u)
                    return ops.prod(sig), []
                with tf.GradientTape() as tape:
                    sig, u = grouped_power(gvar, [b.linear_kernel() for b in blocks], U.POWER_ITERATIONS, conv)
                    k = ops.prod(sig)
                gvar.assign(tf.stop_gradient(u))
                return k, [gv for gv in tape.gradient(k, variables) if gv is not None]

            return f

        # correctness: from the same start iterates, the same number of iterations; the blocks'
        # own training-call bound (power_iterations steps from the stored iterate) per block
        try:
            u0 = [l2_normalize(ops.convert_to_tensor(b.iterate)) for b in blocks]
            kernels = [b.linear_kernel() for b in blocks]
            sep = [float(ops.convert_to_numpy(b.power_estimate(training=True, gradient="last"))) for b in blocks]
            for cname, cf in (("keras.ops.conv", conv_keras), ("tf.nn.conv2d", conv_tf)):
                gs, _ = grouped_power(tf.concat(u0, -1), kernels, U.POWER_ITERATIONS, cf)
                gs = [float(s) for s in ops.convert_to_numpy(gs)]
                grouped[f"max_rel_diff_vs_separate ({cname})"] = max(abs(a - b) / b for a, b in zip(gs, sep))
            grouped["grouped_conv_runs_on_tf_cpu"] = True
            grouped["note"] = ("keras.ops.conv routes grouped convs on TF through an inner "
                               "tf.function(jit_compile=True) (XLA); tf.nn.conv2d runs them natively")
        except Exception as e:
            grouped["grouped_conv_runs_on_tf_cpu"] = False
            grouped["error"] = U.short_error(e)

    fns = {
        "model.body_bound(training=True), no gradient": model_bound_nograd,
        "all bounds + gradient (full)": bound_fn(g_full, bounded, True),
        "all bounds + gradient (last)": bound_fn(g_last, bounded, True),
        f"{len(blocks)} backbone blocks + gradient (full)": bound_fn(g_full, blocks, True),
        f"{len(blocks)} backbone blocks, no gradient": bound_fn(g_full, blocks, False),
        "stem + neck + dense + gradient (full)": bound_fn(g_full, others, True),
    }
    for layer in others + blocks[:1]:
        fns[f"{layer.name} alone + gradient (full)"] = bound_fn(g_full, [layer], True)
        fns[f"{layer.name} alone, no gradient"] = bound_fn(g_full, [layer], False)
    if grouped.get("grouped_conv_runs_on_tf_cpu"):
        for cname, cf in (("keras.ops.conv", conv_keras), ("tf.nn.conv2d", conv_tf)):
            for label, grad in ((f"{len(blocks)} blocks as ONE grouped {cname} + gradient (full)", True),
                                (f"{len(blocks)} blocks as ONE grouped {cname}, no gradient", False)):
                f = grouped_fn(grad, cf)
                try:
                    f()
                    fns[label] = f
                except Exception as e:
                    grouped[f"error ({label})"] = U.short_error(e)

    def sync(f):
        def call():
            k, grads = f()
            ops.convert_to_numpy(k)
            for gv in grads:
                ops.convert_to_numpy(gv)
        return call

    runs, first = {}, {}
    for name, f in fns.items():
        call = (lambda f=f: ops.convert_to_numpy(f())) if name.startswith("model.body_bound") else sync(f)
        first[name], _ = U.timed(call)
        call()
        runs[name] = call
    times = U.round_robin(runs, args.profile_repeats, calls=args.profile_calls)
    res = {"config": f"L{L}W{W}", "ms_median": {k: 1e3 * U.med(v["wall"]) for k, v in times.items()},
           "cpu_ms_median": {k: 1e3 * U.med(v["cpu"]) for k, v in times.items()},
           "ms_all": {k: [1e3 * t for t in v["wall"]] for k, v in times.items()},
           "first_call_s": first, "grouped": grouped, "flops": U.flop_floor(g_full)}
    log("  profile: " + ", ".join(f"{k}: {v:.0f} ms" for k, v in res["ms_median"].items()))
    return res


# -- report ----------------------------------------------------------------------------------
def summary_rows(cfg, results):
    """Plain step GFLOP/s against the block conv's attainable GFLOP/s (needs the training section)."""
    v = results["configs"].get(cfg, {}).get("training", {}).get("variants", {})
    macs = results["configs"].get(cfg, {}).get("training", {}).get("macs", {}).get("train_macs")
    peak = results.get("peak", {})
    p32 = peak.get(f"{CONV} float32", {}).get("gflops")
    p16 = peak.get(f"{CONV} bfloat16", {}).get("gflops")
    if not (macs and p32 and "plain" in v):
        return []

    def gflops(k):
        return 2 * macs / v[k]["step_s_median"] / 1e9

    value = f"{gflops('plain'):.0f} ÷ {p32:.0f} = {gflops('plain') / p32:.2f}"
    if "plain_bf16" in v and p16:
        value += f" · {gflops('plain_bf16'):.0f} ÷ {p16:.0f} = {gflops('plain_bf16') / p16:.2f}"
    return [U.text_row(cfg, "plain step GFLOP/s (forward + backward = 3× the forward MACs) ÷ the block "
                       "conv's forward GFLOP/s, float32" + (" · bfloat16" if "plain_bf16" in v else ""), value)]


def details(results):
    lines = []
    if results.get("peak"):
        lines += ["", "## Attainable GFLOP/s on this CPU", "",
                  "One kernel timed alone after warm-up (median / best of the timed runs); the block conv is "
                  "the forward 3×3 convolution of a LiResNet block at W128, batch 256.", "",
                  U.md_table(["kernel", "GFLOP/s (median)", "GFLOP/s (best)"],
                             [[k, U.fmt(d["gflops"]), U.fmt(d["gflops_best"])] for k, d in results["peak"].items()])]
    if "profile" in results:
        pr = results["profile"]
        base = results["configs"].get(pr["config"], {}).get("training", {}).get("variants", {})
        rows = [[k, U.fmt(v), U.fmt(pr["cpu_ms_median"][k])] for k, v in pr["ms_median"].items()]
        for v in ("plain", "gloro_full", "gloro_last"):
            if v in base:
                rows.append([f"(reference) {v} train step", U.fmt(1e3 * base[v]["step_s_median"]),
                             U.fmt(1e3 * base[v]["step_cpu_s_median"])])
        fl = pr["flops"]
        lines += ["", f"## Micro-profile of the bound ({pr['config']}, one call, ms, median)", "",
                  U.md_table(["part", "wall ms", "CPU ms"], rows), "",
                  f"Analytic MAC floor (bound MACs ÷ training-batch MACs, backward ≈ 2× forward): "
                  f"full {fl['floor_full']:.3f}, last {fl['floor_last']:.3f}.", ""]
        if pr["grouped"]:
            lines.append("Grouped-conv prototype: " + ", ".join(f"{k} = {v}" for k, v in pr["grouped"].items()))
    elif "profile_error" in results:
        lines += ["", "## Micro-profile of the bound", "", f"failed: `{results['profile_error']}`"]
    return lines


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    U.add_common_args(ap)
    add_args(ap)
    ap.add_argument("--no-peak", action="store_true", help="skip the attainable-GFLOP/s kernels")
    args = U.parse_args(ap, argv, QUICK)
    cfg = args.profile_config.upper()
    L, W = U.parse_config(cfg)
    s = U.Session(args)
    tf, keras = U.tf_keras()
    s.meta["environment"] = U.environment(tf, keras)
    xtr, ytr, _, s.meta["data"] = U.load_arrays()
    results = {"meta": s.meta, "configs": {cfg: {}}}
    s.mark(f"{cfg} profile")
    models, _, errors = U.warm_models(["gloro_full", "gloro_last"], L, W, tf.constant(xtr), tf.constant(ytr), s.log)
    if errors:
        results["profile_error"] = "; ".join(f"{k}: {e}" for k, e in errors.items())
    else:
        results["profile"] = run(L, W, models, args, s.log)
    if not args.no_peak:
        s.mark("peak")
        results["peak"] = run_peak(args, s.log)
    s.finish()
    name = args.name or ("bound_profile-quick" if args.quick else "bound_profile")
    jpath, mpath = U.write_report(results, name, args.out, [], [details(results)], "gloro-keras bound profile")
    s.log(f"wrote {jpath} and {mpath}")
    print(open(mpath).read())
    return 0


if __name__ == "__main__":
    sys.exit(main())
