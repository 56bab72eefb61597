#!/usr/bin/env python
"""gloro-keras benchmark suite: GloRo overhead, throughput, certification, input pipeline,
memory, tracing / XLA, and a micro-profile of the bound computation.

    python bench/run.py                      # full run (~15-20 min on 2 CPU cores)
    python bench/run.py --quick              # L6W64 only, fewer repeats (< 2 min)
    python bench/run.py --configs L6W64,L6W128 --repeats 7

Writes bench/results/<name>.json and <name>.md (name: "latest", or "quick" with --quick).
Every ratio compares two variants run side by side in ONE process after warm-up, the
variants alternating round by round; the figure is the median of the per-round ratios
(with min-max). See bench/README.md for what each figure means.
"""
import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _util as U  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
DATA = Path(__file__).resolve().parents[1].parent / "shared/data/cifar10-jpeg.npz"
RESULTS = REPO / "bench" / "results"

BATCH = 256
NUM_CLASSES = 10
INPUT_SHAPE = (32, 32, 3)
EPSILON = 36 / 255
POWER_ITERATIONS = 10
# The authors' PyTorch code on this machine (2 threads), GloRo training images/s.
PYTORCH_REF = {"L6W64": 620.0, "L6W128": 160.0, "L12W128": 100.0}

GOALS = {  # key: (op, goal, bar)
    "train_ratio": ("<=", 1.05, 1.15),
    "speedup_vs_pytorch": (">=", 1.5, None),
    "certify_ratio": ("<=", 1.05, None),
    "pipeline_ratio": (">=", 5.0, None),
    "memory_ratio": ("<=", 1.2, None),
}


def parse_config(s):
    s = s.strip().upper()
    if not (s.startswith("L") and "W" in s):
        raise argparse.ArgumentTypeError(f"config must look like L6W128; got {s!r}")
    L, W = s[1:].split("W")
    return int(L), int(W)


# =======================================================================================
# model construction (TF imported lazily so that argparse / children stay light)
# =======================================================================================
def _tf():
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf
    import keras

    tf.get_logger().setLevel("ERROR")
    return tf, keras


def make_optimizer():
    _, keras = _tf()
    return keras.optimizers.AdamW(learning_rate=1e-3, weight_decay=1e-4, global_clipnorm=3.0)


def build(variant, L, W):
    """variant: plain | gloro_full | gloro_last, optionally suffixed _bf16 (mixed bfloat16
    training: the plain net under the mixed_bfloat16 policy, GloroLiResNet(train_dtype="bfloat16"))
    and/or _xla (jit_compile=True)."""
    _, keras = _tf()
    from gloro_keras.models.liresnet import GloroLiResNet, liresnet_network

    xla = variant.endswith("_xla")
    base = variant[:-4] if xla else variant
    bf16 = base.endswith("_bf16")
    base = base[:-5] if bf16 else base
    if base == "plain":
        keras.mixed_precision.set_global_policy("mixed_bfloat16" if bf16 else "float32")
        try:
            m = liresnet_network(L, W, NUM_CLASSES, INPUT_SHAPE, power_iterations=POWER_ITERATIONS)
        finally:
            keras.mixed_precision.set_global_policy("float32")
        m.compile(optimizer=make_optimizer(),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  jit_compile=xla)
    else:
        m = GloroLiResNet(L, W, NUM_CLASSES, INPUT_SHAPE, epsilon=EPSILON,
                          power_iterations=POWER_ITERATIONS, bound_gradient=base.split("_")[1],
                          train_dtype="bfloat16" if bf16 else "float32")
        m.compile(optimizer=make_optimizer(), loss="emma", jit_compile=xla)
    return m


def load_arrays():
    """(x_train_batch, y_train_batch, x_test, data_source) as float32 [0,1] / int32."""
    import numpy as np

    if DATA.is_file():
        with np.load(DATA) as d:
            xtr = d["x_train"][:BATCH].astype("float32") / 255.0
            ytr = d["y_train"][:BATCH].astype("int32").reshape(-1)
            xte = d["x_test"].astype("float32") / 255.0
        return xtr, ytr, xte, str(DATA)
    rng = np.random.default_rng(0)
    xtr = rng.random((BATCH,) + INPUT_SHAPE, dtype=np.float32)
    ytr = rng.integers(0, NUM_CLASSES, BATCH).astype("int32")
    xte = rng.random((10_000,) + INPUT_SHAPE, dtype=np.float32)
    return xtr, ytr, xte, "synthetic (cifar10-jpeg.npz not found)"


# =======================================================================================
# sections
# =======================================================================================
def bench_training(L, W, x, y, args, log):
    """Train steps of all variants side by side. Returns (result dict, models)."""
    variants = ["plain", "gloro_full", "gloro_last"]
    if not args.no_bf16:
        variants += ["plain_bf16", "gloro_full_bf16"]
    if not args.no_xla and f"L{L}W{W}" in args.xla_configs.upper().split(","):
        variants += ["plain_xla", "gloro_full_xla"]
    models, first, errors = {}, {}, {}
    for v in variants:
        try:
            t_build, m = U.timed(lambda: build(v, L, W))
            t_first, _ = U.timed(lambda: m.train_on_batch(x, y))
            m.train_on_batch(x, y)  # second warm-up step (one-time costs after tracing)
            models[v] = m
            first[v] = {"build_s": t_build, "first_step_s": t_first}
            log(f"  {v}: build {t_build:.1f}s, first step {t_first:.1f}s")
        except Exception as e:  # XLA may not support something on this CPU
            errors[v] = f"{type(e).__name__}: {str(e)[:300]}"
            log(f"  {v}: FAILED {errors[v]}")
    fns = {v: (lambda m=m: m.train_on_batch(x, y)) for v, m in models.items()}
    times = U.round_robin(fns, args.repeats, calls=args.steps)
    res = {"variants": {}, "errors": errors, "rounds": args.repeats, "steps_per_round": args.steps}
    for v, ts in times.items():
        med = U.med(ts["wall"])
        res["variants"][v] = {
            **first[v],
            "step_s_median": med,
            "step_s_all": ts["wall"],
            "step_cpu_s_median": U.med(ts["cpu"]),
            "step_cpu_s_all": ts["cpu"],
            "images_per_s": BATCH / med,
            "images_per_s_fastest_run": BATCH / min(ts["wall"]),
            "tracing_overhead_s": first[v]["first_step_s"] - med,
        }
    r = {}
    for g in ("gloro_full", "gloro_last"):
        if g in times:
            r[f"{g}/plain"] = U.paired(times[g], times["plain"])
    if "gloro_full_bf16" in times:
        r["gloro_full_bf16/plain_bf16"] = U.paired(times["gloro_full_bf16"], times["plain_bf16"])
        r["gloro_full_bf16/gloro_full"] = U.paired(times["gloro_full_bf16"], times["gloro_full"])
        r["plain_bf16/plain"] = U.paired(times["plain_bf16"], times["plain"])
    if "plain_xla" in times:
        r["plain_xla/plain"] = U.paired(times["plain_xla"], times["plain"])
    if "gloro_full_xla" in times:
        r["gloro_full_xla/gloro_full"] = U.paired(times["gloro_full_xla"], times["gloro_full"])
        if "plain_xla" in times:
            r["gloro_full_xla/plain_xla"] = U.paired(times["gloro_full_xla"], times["plain_xla"])
    res["ratios"] = r
    if "gloro_full" in models:
        res["macs"] = flop_floor(models["gloro_full"])
    return res, models


def bench_certification(model, xte, args, log, power=True):
    """certify (sound bound pre-computed and cached) vs network.predict, side by side."""
    from gloro_keras.models.gloro_model import GloroModel

    x = xte[: args.cert_images]
    res = {"images": int(len(x))}
    # Count how often the sound bound and power convergence really run.
    counts = {"sound": 0, "converge": 0}
    patched = []
    for cls in {type(layer) for layer in model._plan.bounded}:
        orig = cls.sound_lipschitz_bound

        def counting(self, _orig=orig):
            counts["sound"] += 1
            return _orig(self)

        patched.append((cls, "sound_lipschitz_bound", orig))
        cls.sound_lipschitz_bound = counting
    orig_conv = GloroModel.converge_bounds

    def counting_conv(self, *a, **k):
        counts["converge"] += 1
        return orig_conv(self, *a, **k)

    patched.append((GloroModel, "converge_bounds", orig_conv))
    GloroModel.converge_bounds = counting_conv
    try:
        t_sound, k_sound = U.timed(lambda: model.lipschitz_bound("sound"))
        t_cached, _ = U.timed(lambda: model.lipschitz_bound("sound"))
        if power:
            t_power, k_power = U.timed(lambda: model.lipschitz_bound("power"))
        else:
            t_power, k_power = float("nan"), float("nan")
        t_cur, k_cur = U.timed(lambda: model.lipschitz_bound("current"))
        res["bound"] = {
            "sound_first_s": t_sound, "sound_cached_call_s": t_cached,
            "power_converge_s": t_power, "current_s": t_cur,
            "K_sound": k_sound, "K_power": k_power, "K_current": k_cur,
            "sound_over_power": k_sound / k_power,
        }
        log(f"  sound bound {t_sound:.2f}s (cached call {t_cached * 1e3:.1f} ms), "
            f"power convergence {t_power:.2f}s, K_sound/K_power={k_sound / k_power:.5f}")
        model.update_bound_cache("sound")  # for model.predict (⊥ output) below
        net = model.network
        # warm-up (traces the predict functions)
        net.predict(x[:BATCH], batch_size=BATCH, verbose=0)
        model.certify(x[:BATCH], batch_size=BATCH)
        model.predict(x[:BATCH], batch_size=BATCH, verbose=0)
        counts["sound"] = 0
        fns = {
            "network.predict": lambda: net.predict(x, batch_size=BATCH, verbose=0),
            "certify(sound, cached)": lambda: model.certify(x, bound="sound", batch_size=BATCH),
        }
        times = U.round_robin(fns, args.cert_repeats)
        res["sound_recomputed_in_timed_certify_calls"] = counts["sound"]
        res["ratios"] = {
            "certify/predict": U.paired(times["certify(sound, cached)"], times["network.predict"]),
        }
        res["images_per_s"] = {k: len(x) / U.med(v["wall"]) for k, v in times.items()}
        res["times_s"] = {k: {"median": U.med(v["wall"]), "all": v["wall"], "cpu_all": v["cpu"]}
                          for k, v in times.items()}
        if args.gloro_predict:
            # GloroModel.predict (m+1 outputs, cached bound) on a subset, its own side-by-side pair
            xs = x[: min(len(x), 10 * BATCH)]
            t2 = U.round_robin({
                "network.predict (subset)": lambda: net.predict(xs, batch_size=BATCH, verbose=0),
                "gloro_model.predict (subset)": lambda: model.predict(xs, batch_size=BATCH, verbose=0),
            }, args.cert_repeats)
            res["subset_images"] = int(len(xs))
            res["times_s"].update({k: {"median": U.med(v["wall"]), "all": v["wall"], "cpu_all": v["cpu"]}
                                   for k, v in t2.items()})
            res["ratios"]["gloro_predict/predict"] = U.paired(t2["gloro_model.predict (subset)"],
                                                              t2["network.predict (subset)"])
        if args.power_check:
            # certify(bound="power"): is the converged bound cached?
            counts["converge"] = 0
            t_pc, _ = U.timed(lambda: model.certify(x[:BATCH], bound="power", batch_size=BATCH))
            res["certify_power_small"] = {
                "images": BATCH, "seconds": t_pc, "converge_bounds_calls": counts["converge"],
            }
            log(f"  certify(power) on {BATCH} images: {t_pc:.2f}s, converge_bounds calls: {counts['converge']}")
    finally:
        for cls, name, orig in patched:
            setattr(cls, name, orig)
    return res


def bench_pipeline(args, log):
    tf, _ = _tf()
    from gloro_keras import data

    src = str(DATA)
    tmp = None
    if not DATA.is_file():
        import tempfile

        import numpy as np

        rng = np.random.default_rng(0)
        tmp = tempfile.NamedTemporaryFile(suffix=".npz", delete=False)
        np.savez(tmp.name, x_train=rng.integers(0, 256, (50_000, 32, 32, 3), dtype=np.uint8),
                 y_train=rng.integers(0, 10, 50_000).astype(np.uint8),
                 x_test=rng.integers(0, 256, (1000, 32, 32, 3), dtype=np.uint8),
                 y_test=rng.integers(0, 10, 1000).astype(np.uint8))
        src = tmp.name
    try:
        train_ds, _, info = data.load(src)
        ds = data.make_pipeline(train_ds, BATCH, training=True, seed=0)
        rates = [data.pipeline_throughput(ds, num_batches=args.pipeline_batches, warmup=5)
                 for _ in range(3)]
    finally:
        if tmp is not None:
            os.unlink(tmp.name)
    res = {"source": src if tmp is None else "synthetic uint8 arrays (cifar10-jpeg.npz not found)",
           "augmentation": str(info.augmentation), "batches_per_run": args.pipeline_batches,
           "images_per_s_all": rates, "images_per_s": U.med(rates)}
    log(f"  pipeline: {res['images_per_s']:,.0f} img/s")
    return res


def memory_child(cfg, variant, steps):
    """Runs in a fresh process: peak RSS of `steps` training steps of one variant."""
    rss_start = U.vmrss_mb()
    tf, keras = _tf()
    import numpy as np

    rss_import = U.vmrss_mb()
    L, W = parse_config(cfg)
    m = build(variant, L, W)
    rng = np.random.default_rng(0)
    x = tf.constant(rng.random((BATCH,) + INPUT_SHAPE, dtype=np.float32))
    y = tf.constant(rng.integers(0, NUM_CLASSES, BATCH).astype("int32"))
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


MEMORY_PAIRS = (("gloro_full", "plain"), ("gloro_last", "plain"), ("gloro_full_bf16", "plain_bf16"))


def bench_memory(cfg, args, log):
    """Peak RSS of each variant: the median over --mem-repeats fresh processes, run in
    rotating order (the allocator makes single processes vary by up to ~10%)."""
    variants = [v for v in args.mem_variants.split(",") if v]
    runs = {v: [] for v in variants}
    errors = {}
    for r in range(args.mem_repeats):
        for v in variants[r % len(variants):] + variants[:r % len(variants)]:
            cmd = [sys.executable, str(Path(__file__).resolve()), "--_memory-child", cfg, v, str(args.mem_steps)]
            p = subprocess.run(cmd, capture_output=True, text=True, cwd=str(REPO))
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
    for g, b in MEMORY_PAIRS:
        if "peak_rss_mb" in res.get(g, {}) and "peak_rss_mb" in res.get(b, {}):
            out["ratios"][f"{g}/{b}"] = res[g]["peak_rss_mb"] / res[b]["peak_rss_mb"]
            inc_g = res[g]["peak_rss_mb"] - res[g]["rss_after_import_mb"]
            inc_b = res[b]["peak_rss_mb"] - res[b]["rss_after_import_mb"]
            out["ratios"][f"{g}/{b} (above import baseline)"] = inc_g / inc_b
    return out


# ---------------------------------------------------------------------------------------
def flop_floor(model):
    """Analytic multiply-accumulate count: bound (power iteration) vs. a training batch.

    Forward MACs per image of every bounded layer (the iterate is one input example);
    backward ≈ 2× forward. 'full' back-propagates through all 2n+1 conv/adjoint applications,
    'last' only through the final one.
    """
    from gloro_keras.layers import LipschitzConv2D, LipschitzDense, LiResNetBlock

    per_image, bounded_macs = 0, 0
    for layer in model.network.layers:
        if isinstance(layer, (LipschitzConv2D, LiResNetBlock)):
            k = layer.kernel if isinstance(layer, LipschitzConv2D) else layer.residual_kernel
            kh, kw, cin, cout = k.shape
            hw = layer.output_hw if isinstance(layer, LipschitzConv2D) else layer.iterate.shape[1:3]
            macs = hw[0] * hw[1] * kh * kw * cin * cout
        elif isinstance(layer, LipschitzDense) or hasattr(layer, "kernel"):
            macs = int(layer.kernel.shape[0]) * int(layer.kernel.shape[1])
        else:
            continue
        per_image += macs
        if hasattr(layer, "iterate"):
            bounded_macs += macs
    n = POWER_ITERATIONS
    train = 3 * BATCH * per_image
    full = 3 * (2 * n + 1) * bounded_macs
    last = (2 * n + 1) * bounded_macs + 2 * bounded_macs
    return {"train_macs": train, "bound_full_macs": full, "bound_last_macs": last,
            "floor_full": 1 + full / train, "floor_last": 1 + last / train}


def bench_peak(args, log):
    """This CPU's attainable GFLOP/s: a large matmul and the LiResNet block's own 3×3 convolution
    (batch 256, 16×16×128, forward), float32 and bfloat16, median of timed runs after warm-up."""
    tf, _ = _tf()
    import numpy as np

    rng = np.random.default_rng(0)
    cases = {
        "matmul 2048³": (lambda a, b: tf.linalg.matmul(a, b),
                         rng.standard_normal((2048, 2048), dtype=np.float32),
                         rng.standard_normal((2048, 2048), dtype=np.float32), 2 * 2048 ** 3),
        "conv 3×3 256×16×16×128": (lambda a, b: tf.nn.conv2d(a, b, 1, "SAME"),
                                   rng.standard_normal((256, 16, 16, 128), dtype=np.float32),
                                   rng.standard_normal((3, 3, 128, 128), dtype=np.float32),
                                   2 * 256 * 16 * 16 * 9 * 128 * 128),
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


def bench_profile(L, W, models, args, log):
    """Where the GloRo step's extra time goes: the bound alone, with / without gradient,
    backbone vs. other layers, and a grouped-convolution prototype of the backbone."""
    tf, keras = _tf()
    from keras import ops

    from gloro_keras.layers import LiResNetBlock
    from gloro_keras.layers._ops import TINY, l2_normalize

    g_full, g_last = models["gloro_full"], models["gloro_last"]
    bounded = g_full._plan.bounded
    blocks = [l for l in bounded if isinstance(l, LiResNetBlock)]
    others = [l for l in bounded if not isinstance(l, LiResNetBlock)]

    def bound_fn(model, layers, grad):
        variables = [v for l in layers for v in l.trainable_variables]

        def prod():
            k = ops.convert_to_tensor(1.0)
            for l in layers:
                k = k * l.lipschitz_bound(training=True, gradient=model.bound_gradient)
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
                                           POWER_ITERATIONS, conv)
                    gvar.assign(u)
                    return ops.prod(sig), []
                with tf.GradientTape() as tape:
                    sig, u = grouped_power(gvar, [b.linear_kernel() for b in blocks], POWER_ITERATIONS, conv)
                    k = ops.prod(sig)
                gvar.assign(tf.stop_gradient(u))
                return k, [gv for gv in tape.gradient(k, variables) if gv is not None]

            return f

        # correctness: same start iterates, same number of iterations, per-block sigma
        try:
            u0 = [l2_normalize(ops.convert_to_tensor(b.iterate)) for b in blocks]
            sep = []
            for b, u in zip(blocks, u0):
                kern = b.linear_kernel()
                for _ in range(POWER_ITERATIONS):
                    u = b._step(u, kern)
                sep.append(float(ops.sqrt(ops.sum(ops.square(b.apply_linear(u, kern))))))
            for cname, cf in (("keras.ops.conv", conv_keras), ("tf.nn.conv2d", conv_tf)):
                gs, _ = grouped_power(tf.concat(u0, -1), [b.linear_kernel() for b in blocks], POWER_ITERATIONS, cf)
                gs = [float(s) for s in ops.convert_to_numpy(gs)]
                grouped[f"max_rel_diff_vs_separate ({cname})"] = max(abs(a - b) / b for a, b in zip(gs, sep))
            grouped["grouped_conv_runs_on_tf_cpu"] = True
            grouped["note"] = ("keras.ops.conv routes grouped convs on TF through an inner "
                               "tf.function(jit_compile=True) (XLA); tf.nn.conv2d runs them natively")
        except Exception as e:
            grouped["grouped_conv_runs_on_tf_cpu"] = False
            grouped["error"] = f"{type(e).__name__}: {str(e)[:300]}"

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
        variants = []
        for cname, cf in (("keras.ops.conv", conv_keras), ("tf.nn.conv2d", conv_tf)):
            variants += [(f"{len(blocks)} blocks as ONE grouped {cname} + gradient (full)", True, cf),
                         (f"{len(blocks)} blocks as ONE grouped {cname}, no gradient", False, cf)]
        for label, grad, cf in variants:
            f = grouped_fn(grad, cf)
            try:
                f()
                fns[label] = f
            except Exception as e:
                grouped[f"error ({label})"] = f"{type(e).__name__}: {str(e)[:300]}"

    def sync(f):
        def run():
            k, _g = f()
            ops.convert_to_numpy(k)
            for gv in _g:
                ops.convert_to_numpy(gv)
        return run

    runs, first = {}, {}
    for name, f in fns.items():
        if name.startswith("model.body_bound"):
            run = lambda f=f: ops.convert_to_numpy(f())
        else:
            run = sync(f)
        first[name], _ = U.timed(run)
        run()
        runs[name] = run
    times = U.round_robin(runs, args.profile_repeats, calls=args.profile_calls)
    res = {"config": f"L{L}W{W}", "ms_median": {k: 1e3 * U.med(v["wall"]) for k, v in times.items()},
           "cpu_ms_median": {k: 1e3 * U.med(v["cpu"]) for k, v in times.items()},
           "ms_all": {k: [1e3 * t for t in v["wall"]] for k, v in times.items()},
           "first_call_s": first, "grouped": grouped, "flops": flop_floor(g_full)}
    log("  profile: " + ", ".join(f"{k}: {v:.0f} ms" for k, v in res["ms_median"].items()))
    return res


# =======================================================================================
# report
# =======================================================================================
SUMMARY_HEADER = ["config", "figure", "value (wall: median [min–max])", "fastest runs",
                  "CPU time: median [min–max]", "goal", "bar", "status", "status (robust)"]


def summary_rows(results):
    """Rows of the summary table. 'status' judges the wall-time median; 'status (robust)'
    judges the figure least disturbed by other processes: the CPU-time ratio for ratios, the
    fastest run for absolute throughput."""
    rows = []
    pipe = results.get("pipeline", {}).get("images_per_s")

    def ratio_row(cfg, label, p, key=None, verdict=False):
        if key is None:
            goal = bar = ""
            st = st_r = ""
            if verdict:
                goal = "< 1 = XLA helps"
                st, st_r = (("helps" if q[k + "max"] < 1 else "slower" if q[k + "min"] > 1 else "unclear")
                            for q, k in ((p, ""), (p, "cpu_")))
        else:
            op, g, b = GOALS[key]
            goal, bar = f"{op} {g}".replace("<=", "≤").replace(">=", "≥"), (f"≤ {b}" if b else "")
            st, st_r = U.status(p["median"], op, g, b), U.status(p["cpu_median"], op, g, b)
        rows.append([cfg, label, U.spread(p), U.fmt(p["fastest_ratio"]), U.spread(p, cpu=True),
                     goal, bar, st, st_r])

    def value_row(cfg, label, value, fastest="", key=None, fastest_value=None):
        goal = st = st_r = ""
        if key is not None:
            op, g, _ = GOALS[key]
            goal = f"{op} {g}".replace("<=", "≤").replace(">=", "≥")
            st = U.status(value, op, g)
            st_r = U.status(fastest_value if fastest_value is not None else value, op, g)
        rows.append([cfg, label, U.fmt(value) if not isinstance(value, str) else value, fastest, "",
                     goal, "", st, st_r])

    for cfg, r in results["configs"].items():
        tr = r.get("training", {})
        v = tr.get("variants", {})
        rat = tr.get("ratios", {})
        for g in ("full", "last"):
            if f"gloro_{g}/plain" in rat:
                ratio_row(cfg, f"train step GloRo ÷ plain, bound_gradient={g}", rat[f"gloro_{g}/plain"], "train_ratio")
        if "gloro_full_bf16/plain_bf16" in rat:
            ratio_row(cfg, "train step GloRo ÷ plain, both mixed bfloat16 (train_dtype=bfloat16, full)",
                      rat["gloro_full_bf16/plain_bf16"], "train_ratio")
            ratio_row(cfg, "GloRo (full) step, bfloat16 ÷ float32", rat["gloro_full_bf16/gloro_full"])
        if v:
            order = [k for k in ("plain", "gloro_full", "gloro_last") if k in v]
            rows.append([cfg, "train images/s (plain, GloRo full, GloRo last)",
                         ", ".join(U.fmt(v[k]["images_per_s"]) for k in order),
                         ", ".join(U.fmt(v[k]["images_per_s_fastest_run"]) for k in order),
                         "CPU s/step " + ", ".join(U.fmt(v[k]["step_cpu_s_median"]) for k in order),
                         "", "", "", ""])
            if "gloro_full_bf16" in v:
                rows.append([cfg, "train images/s bfloat16 (plain, GloRo full)",
                             ", ".join(U.fmt(v[k]["images_per_s"]) for k in ("plain_bf16", "gloro_full_bf16")),
                             ", ".join(U.fmt(v[k]["images_per_s_fastest_run"]) for k in ("plain_bf16", "gloro_full_bf16")),
                             "CPU s/step " + ", ".join(U.fmt(v[k]["step_cpu_s_median"])
                                                       for k in ("plain_bf16", "gloro_full_bf16")),
                             "", "", "", ""])
            ref = PYTORCH_REF.get(cfg)
            for g in ("gloro_full", "gloro_last", "gloro_full_bf16"):
                if ref and g in v:
                    a, b = v[g]["images_per_s"] / ref, v[g]["images_per_s_fastest_run"] / ref
                    value_row(cfg, f"{g} images/s ÷ PyTorch ({ref:.0f} img/s)", a, U.fmt(b),
                              "speedup_vs_pytorch", b)
            best = torch_best(results, cfg)
            if best:
                fmt, t = best
                tg = t["gloro"]
                for g in ("gloro_full", "gloro_last", "gloro_full_bf16"):
                    if g in v:
                        value_row(cfg, f"{g} images/s ÷ PyTorch in this session (same net, {fmt}, "
                                  f"{tg['images_per_s']:.0f} img/s)", v[g]["images_per_s"] / tg["images_per_s"],
                                  U.fmt(v[g]["images_per_s_fastest_run"] / tg["images_per_s_fastest_run"]),
                                  "speedup_vs_pytorch",
                                  v[g]["images_per_s_fastest_run"] / tg["images_per_s_fastest_run"])
                if "plain" in v:
                    value_row(cfg, f"plain images/s ÷ PyTorch plain in this session ({fmt}, "
                              f"{t['plain']['images_per_s']:.0f} img/s)",
                              v["plain"]["images_per_s"] / t["plain"]["images_per_s"])
            best16 = torch_best(results, cfg, "gloro_bf16")
            if best16 and "gloro_full_bf16" in v:
                fmt, t = best16
                tg = t["gloro_bf16"]
                value_row(cfg, f"gloro_full_bf16 images/s ÷ PyTorch GloRo with bfloat16 autocast in this session "
                          f"({fmt}, {tg['images_per_s']:.0f} img/s)",
                          v["gloro_full_bf16"]["images_per_s"] / tg["images_per_s"],
                          U.fmt(v["gloro_full_bf16"]["images_per_s_fastest_run"] / tg["images_per_s_fastest_run"]),
                          "speedup_vs_pytorch",
                          v["gloro_full_bf16"]["images_per_s_fastest_run"] / tg["images_per_s_fastest_run"])
            macs = tr.get("macs", {}).get("train_macs")
            peak = results.get("peak", {})
            if macs and peak:
                def gflops(k):
                    return 2 * macs / v[k]["step_s_median"] / 1e9
                p32 = peak.get("conv 3×3 256×16×16×128 float32", {}).get("gflops")
                p16 = peak.get("conv 3×3 256×16×16×128 bfloat16", {}).get("gflops")
                rows.append([cfg, "plain step GFLOP/s (forward + backward = 3× the forward MACs) ÷ the block "
                             "conv's forward GFLOP/s, float32" + (" · bfloat16" if "plain_bf16" in v else ""),
                             f"{gflops('plain'):.0f} ÷ {p32:.0f} = {gflops('plain') / p32:.2f}"
                             + (f" · {gflops('plain_bf16'):.0f} ÷ {p16:.0f} = {gflops('plain_bf16') / p16:.2f}"
                                if "plain_bf16" in v and p16 else ""), "", "", "", "", "", ""])
                if ref:
                    need = 2 * macs / BATCH * ref / 1e9
                    rows.append([cfg, f"GFLOP/s that training at the PyTorch anchor's {ref:.0f} img/s needs (plain-"
                                 "step FLOPs only: a lower bound) ÷ the block conv's float32 GFLOP/s", f"{need:.0f} ÷ {p32:.0f} = {need / p32:.2f}",
                                 "", "", "", "", "", ""])
            if pipe and "gloro_full" in v:
                a, b = pipe / v["gloro_full"]["images_per_s"], pipe / v["gloro_full"]["images_per_s_fastest_run"]
                value_row(cfg, "input pipeline img/s ÷ GloRo (full) train img/s", a, U.fmt(b), "pipeline_ratio", b)
        c = r.get("certification", {})
        if "ratios" in c:
            ratio_row(cfg, f"certify ({c['images']} imgs, sound bound cached) ÷ network.predict",
                      c["ratios"]["certify/predict"], "certify_ratio")
            if "gloro_predict/predict" in c["ratios"]:
                ratio_row(cfg, f"GloroModel.predict ({c['subset_images']} imgs, m+1 outputs, cached bound) "
                          "÷ network.predict", c["ratios"]["gloro_predict/predict"])
            b = c["bound"]
            value_row(cfg, "one-time bound: sound / power convergence (s)",
                      f"{U.fmt(b['sound_first_s'])} / {U.fmt(b['power_converge_s'])}")
        m = r.get("memory", {}).get("ratios", {})
        for g, b in MEMORY_PAIRS:
            if f"{g}/{b}" in m:
                value_row(cfg, f"peak RSS {g} ÷ {b} (separate processes, median of "
                          f"{r['memory'].get('repeats', 1)})", m[f"{g}/{b}"], key="memory_ratio")
        if v:
            value_row(cfg, "first train step incl. tracing (s)",
                      ", ".join(f"{k} {U.fmt(vv['first_step_s'])}" for k, vv in v.items()))
        for key, label in (("plain_xla/plain", "jit_compile=True ÷ False, plain step"),
                           ("gloro_full_xla/gloro_full", "jit_compile=True ÷ False, GloRo (full) step")):
            if key in rat:
                ratio_row(cfg, label, rat[key], verdict=True)
        for key, err in tr.get("errors", {}).items():
            value_row(cfg, f"{key} failed", err[:120])
    return rows


def write_report(results, name):
    RESULTS.mkdir(parents=True, exist_ok=True)
    jpath, mpath = RESULTS / f"{name}.json", RESULTS / f"{name}.md"
    with open(jpath, "w") as f:
        json.dump(results, f, indent=1, default=float)
    meta, env = results["meta"], results["meta"]["environment"]
    lines = [
        f"# gloro-keras benchmark ({name})",
        "",
        f"{meta['finished']} · {env['cpu_model']} · {env['cpu_count']} CPUs (usable {env['cpus_usable']}) · "
        f"TF {env['tensorflow']} · keras {env['keras']} ({env['keras_backend']}) · "
        f"batch {BATCH}, 32×32×3, {NUM_CLASSES} classes, {POWER_ITERATIONS} power iterations · "
        f"run took {meta['duration_s'] / 60:.1f} min",
        "",
        f"Load before: `{meta['uptime_before']}`  ",
        f"Load after: `{meta['uptime_after']}`  ",
        "1-min load average when each section started: "
        + ", ".join(f"{x['section']} {x['loadavg'][0]:.2f}" for x in meta["sections"]),
        "",
        "Ratios: median of per-round ratios of variants run side by side in one process "
        "[min–max over rounds]; 'fastest runs' = fastest run ÷ fastest run (throughput: images/s "
        "of the fastest run); 'CPU time' = the same ratios on process CPU time, which other "
        "processes do not inflate. Status: PASS = goal met; FAIL (bar ok) = goal missed, bar met; "
        "'status' judges the wall-time median, 'status (robust)' the CPU-time ratio (throughput: "
        "the fastest run).",
        "",
        U.md_table(SUMMARY_HEADER, summary_rows(results)),
    ]
    # detail: step times
    det = []
    for cfg, r in results["configs"].items():
        for v, d in r.get("training", {}).get("variants", {}).items():
            det.append([cfg, v, U.fmt(1e3 * d["step_s_median"]), U.fmt(1e3 * min(d["step_s_all"])),
                        U.fmt(1e3 * d["step_cpu_s_median"]), U.fmt(d["images_per_s"]),
                        U.fmt(d["images_per_s_fastest_run"]), U.fmt(d["first_step_s"]), U.fmt(d["build_s"])])
    if det:
        lines += ["", "## Training steps", "",
                  U.md_table(["config", "variant", "step ms (median)", "step ms (fastest)", "CPU ms/step (median)",
                              "img/s (median)", "img/s (fastest)", "first step s", "build s"], det)]
    cert = []
    for cfg, r in results["configs"].items():
        c = r.get("certification")
        if c and "bound" in c:
            b = c["bound"]
            cert.append([cfg, c["images"], ", ".join(f"{k} {U.fmt(v)}" for k, v in c["images_per_s"].items()),
                         U.fmt(b["sound_first_s"]), U.fmt(1e3 * b["sound_cached_call_s"]),
                         U.fmt(b["power_converge_s"]), U.fmt(b["sound_over_power"], 5),
                         c["sound_recomputed_in_timed_certify_calls"],
                         (f"{U.fmt(c['certify_power_small']['seconds'])} "
                          f"({c['certify_power_small']['converge_bounds_calls']} converge_bounds call)")
                         if "certify_power_small" in c else "—"])
    if cert:
        lines += ["", "## Certification", "",
                  U.md_table(["config", "images", "images/s", "sound bound s (once)", "cached call ms",
                              "power convergence s", "K_sound/K_power", "sound recomputed in timed certify",
                              f"certify(bound='power') on {BATCH} imgs s"], cert)]
    mem = []
    for cfg, r in results["configs"].items():
        for v, d in r.get("memory", {}).get("variants", {}).items():
            if "peak_rss_mb" in d:
                mem.append([cfg, v, U.fmt(d["rss_after_import_mb"]), U.fmt(d["rss_after_build_mb"]),
                            U.fmt(d["peak_rss_mb"]), U.fmt(d.get("vm_hwm_mb")),
                            ", ".join(U.fmt(v) for v in d.get("rss_after_each_step_mb", []))])
    if mem:
        lines += ["", "## Memory (one fresh process per row)", "",
                  U.md_table(["config", "variant", "RSS after import MB", "RSS after build MB",
                              "peak RSS (ru_maxrss) MB", "VmHWM MB", "RSS after each step MB"], mem)]
    tr = results.get("torch_reference")
    if tr and "configs" in tr:
        rows = [[cfg, fmt, v, U.fmt(r[v]["images_per_s"]), U.fmt(r[v]["images_per_s_fastest_run"]),
                 U.fmt(1e3 * r[v]["step_s_median"]), U.fmt(r[v]["first_step_s"]),
                 U.fmt(r.get(f"{v}/{v.replace('gloro', 'plain')}", "")) if v.startswith("gloro") else ""]
                for cfg, fmts in tr["configs"].items() for fmt, r in fmts.items()
                for v in ("plain", "gloro", "plain_bf16", "gloro_bf16") if v in r]
        lines += ["", f"## PyTorch reference in this session (torch {tr['torch']}, {tr['threads']} threads)", "",
                  "`bench/torch_reference.py`: the same network and steps written in PyTorch from the paper "
                  "(not the authors' code, which is not available offline); 'gloro' = EMMA + 10 power "
                  "iterations with autograd through all of them, like `bound_gradient=full`. Run in a child "
                  "process before TensorFlow is loaded, with alternating rounds like the rest.", "",
                  U.md_table(["config", "memory format", "variant", "img/s (median)", "img/s (fastest)",
                              "step ms (median)", "first step s", "GloRo ÷ plain (median of rounds)"],
                             rows)]
    elif tr:
        lines += ["", "## PyTorch reference in this session", "", f"failed: `{tr.get('error', '')[-300:]}`"]
    if results.get("peak"):
        lines += ["", "## Attainable GFLOP/s on this CPU", "",
                  "One kernel timed alone after warm-up (median / best of the timed runs); the block conv is "
                  "the forward 3×3 convolution of a LiResNet block at W128, batch 256.", "",
                  U.md_table(["kernel", "GFLOP/s (median)", "GFLOP/s (best)"],
                             [[k, U.fmt(d["gflops"]), U.fmt(d["gflops_best"])] for k, d in results["peak"].items()])]
    if "pipeline" in results:
        p = results["pipeline"]
        lines += ["", "## Input pipeline", "",
                  f"`make_pipeline(train, {BATCH}, training=True, seed=0)` on {p['source']} "
                  f"({p['augmentation']}): **{p['images_per_s']:,.0f} images/s** "
                  f"(runs: {', '.join(f'{x:,.0f}' for x in p['images_per_s_all'])})."]
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
        g = pr["grouped"]
        if g:
            lines.append("Grouped-conv prototype: " + ", ".join(f"{k} = {v}" for k, v in g.items()))
    with open(mpath, "w") as f:
        f.write("\n".join(lines) + "\n")
    return jpath, mpath


def torch_python(arg):
    """Interpreter for bench/torch_reference.py: --torch-python, $TORCH_PYTHON, or this one if it has torch."""
    import importlib.util

    if arg == "none":
        return None
    if arg or os.environ.get("TORCH_PYTHON"):
        return arg or os.environ["TORCH_PYTHON"]
    return sys.executable if importlib.util.find_spec("torch") else None


def bench_torch(python, configs, args, log):
    """The same networks and steps in PyTorch (bench/torch_reference.py), in a child process."""
    cmd = [python, str(Path(__file__).resolve().parent / "torch_reference.py"), "--configs", ",".join(configs),
           "--repeats", str(args.repeats)] + ([] if args.no_bf16 else ["--bf16"])
    p = subprocess.run(cmd, capture_output=True, text=True, cwd=str(REPO))
    if p.returncode:
        log(f"  PyTorch reference FAILED: {p.stderr[-300:]}")
        return {"error": p.stderr[-1000:], "command": " ".join(cmd)}
    for line in p.stderr.splitlines():
        if line.startswith("L"):
            log(f"  {line}")
    return dict(json.loads(p.stdout), command=" ".join(cmd))


def torch_best(results, cfg, variant="gloro"):
    """(memory format, its result) of the fastest PyTorch `variant` step for cfg, or None."""
    fmts = results.get("torch_reference", {}).get("configs", {}).get(cfg)
    fmts = {f: r for f, r in (fmts or {}).items() if variant in r}
    if not fmts:
        return None
    return max(fmts.items(), key=lambda kv: kv[1][variant]["images_per_s"])


# =======================================================================================
def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--configs", default="L6W64,L6W128,L12W128")
    ap.add_argument("--repeats", type=int, default=5, help="timed rounds of training steps")
    ap.add_argument("--steps", type=int, default=1, help="train steps per variant per round")
    ap.add_argument("--cert-images", type=int, default=10_000)
    ap.add_argument("--cert-repeats", type=int, default=2)
    ap.add_argument("--mem-steps", type=int, default=2)
    ap.add_argument("--mem-variants", default="plain,gloro_full,gloro_last,plain_bf16,gloro_full_bf16")
    ap.add_argument("--mem-repeats", type=int, default=2, help="fresh processes per memory variant (median)")
    ap.add_argument("--no-bf16", action="store_true", help="skip the mixed-bfloat16 variants")
    ap.add_argument("--peak-repeats", type=int, default=7, help="timed runs of each peak-GFLOP/s kernel")
    ap.add_argument("--pipeline-batches", type=int, default=100)
    ap.add_argument("--profile-config", default="L6W128")
    ap.add_argument("--profile-repeats", type=int, default=3)
    ap.add_argument("--profile-calls", type=int, default=2)
    ap.add_argument("--xla-configs", default="L6W64",
                    help="configs whose jit_compile=True steps are also timed")
    ap.add_argument("--no-xla", action="store_true")
    ap.add_argument("--no-power", action="store_true", help="skip the power-iteration convergence timing")
    ap.add_argument("--no-grouped", action="store_true", help="skip the grouped-conv prototype")
    ap.add_argument("--no-memory", action="store_true")
    ap.add_argument("--torch-python", default=None,
                    help="Python with torch for the in-session PyTorch reference (default: $TORCH_PYTHON, "
                         "else this interpreter if it has torch; 'none' skips it)")
    ap.add_argument("--no-cert", action="store_true")
    ap.add_argument("--no-profile", action="store_true")
    ap.add_argument("--quick", action="store_true",
                    help="L6W64 only, 3 rounds, 1 280 certification images, no XLA / power "
                         "convergence / grouped prototype (< 2 min on an idle machine)")
    ap.add_argument("--name", default=None, help="output file stem (default latest, or quick)")
    ap.add_argument("--_memory-child", nargs=3, metavar=("CONFIG", "VARIANT", "STEPS"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args._memory_child:
        cfg, variant, steps = args._memory_child
        memory_child(cfg, variant, int(steps))
        return 0
    if args.quick:
        args.configs, args.repeats, args.steps = "L6W64", 3, 1
        args.cert_images, args.cert_repeats, args.mem_steps = 1280, 2, 2
        args.pipeline_batches, args.profile_config = 20, "L6W64"
        args.profile_repeats, args.profile_calls = 3, 1
        args.no_xla, args.mem_variants, args.mem_steps, args.mem_repeats = True, "plain,gloro_full", 1, 1
        args.no_power, args.no_grouped = True, True
    if args.no_bf16:
        args.mem_variants = ",".join(v for v in args.mem_variants.split(",") if not v.endswith("_bf16"))
    name = args.name or ("quick" if args.quick else "latest")
    configs = [c.strip().upper() for c in args.configs.split(",") if c.strip()]
    for c in configs:
        parse_config(c)
    profile_cfg = args.profile_config.upper()
    if profile_cfg not in configs:
        profile_cfg = configs[0]

    t_start = time.time()
    log = lambda s: print(f"[{time.time() - t_start:6.0f}s] {s}", flush=True)
    meta = {"started": time.strftime("%Y-%m-%d %H:%M:%S"), "uptime_before": U.uptime(),
            "loadavg_before": U.loadavg(), "args": {k: v for k, v in vars(args).items() if not k.startswith("_")},
            "sections": []}

    def mark(section):
        """Record when each section starts and the load average at that moment."""
        meta["sections"].append({"section": section, "start_s": round(time.time() - t_start, 1),
                                 "loadavg": U.loadavg()})
    log(meta["uptime_before"])
    memory = {}
    if not args.no_memory:
        # First, while this process is still small: a child's ru_maxrss starts from its
        # parent's peak RSS (Linux keeps it across fork/exec), so the parent must not have
        # loaded TensorFlow yet. VmHWM (per address space) is recorded as a cross-check.
        for cfg in configs:
            mark(f"{cfg} memory")
            log(f"{cfg}: memory (separate processes)")
            memory[cfg] = bench_memory(cfg, args, log)
    tpy = torch_python(args.torch_python)
    torch_ref = None
    if tpy:
        mark("PyTorch reference")
        log(f"PyTorch reference ({tpy})")
        torch_ref = bench_torch(tpy, configs, args, log)
    meta["parent_peak_rss_mb_before_tf"] = U.maxrss_mb()
    tf, keras = _tf()
    meta["environment"] = U.environment(tf, keras)
    xtr, ytr, xte, src = load_arrays()
    meta["data"] = src
    x, y = tf.constant(xtr), tf.constant(ytr)
    results = {"meta": meta, "configs": {}}
    if torch_ref is not None:
        results["torch_reference"] = torch_ref

    for cfg in configs:
        L, W = parse_config(cfg)
        r = results["configs"][cfg] = {}
        if cfg in memory:
            r["memory"] = memory[cfg]
        mark(f"{cfg} training")
        log(f"{cfg}: training steps")
        r["training"], models = bench_training(L, W, x, y, args, log)
        for k, p in r["training"]["ratios"].items():
            log(f"  {k}: {U.spread(p)}")
        if not args.no_profile and cfg == profile_cfg:
            mark(f"{cfg} profile")
            log(f"{cfg}: micro-profile")
            try:
                results["profile"] = bench_profile(L, W, models, args, log)
            except Exception as e:
                results["profile_error"] = f"{type(e).__name__}: {e}"
                log(f"  profile FAILED: {e}")
        if not args.no_cert:
            mark(f"{cfg} certification")
            log(f"{cfg}: certification")
            args.power_check = not args.no_power and cfg == configs[0]
            args.gloro_predict = cfg == configs[0]
            r["certification"] = bench_certification(models["gloro_full"], xte, args, log, power=not args.no_power)
            log(f"  certify/predict: {U.spread(r['certification']['ratios']['certify/predict'])}")
        del models
        keras.backend.clear_session()
    mark("peak")
    log("attainable GFLOP/s")
    results["peak"] = bench_peak(args, log)
    mark("pipeline")
    log("input pipeline")
    results["pipeline"] = bench_pipeline(args, log)
    meta["uptime_after"] = U.uptime()
    meta["loadavg_after"] = U.loadavg()
    meta["finished"] = time.strftime("%Y-%m-%d %H:%M:%S")
    meta["duration_s"] = time.time() - t_start
    results["summary"] = summary_rows(results)
    jpath, mpath = write_report(results, name)
    log(f"{meta['uptime_after']}")
    log(f"wrote {jpath.relative_to(REPO)} and {mpath.relative_to(REPO)}")
    print(open(mpath).read())
    return 0


if __name__ == "__main__":
    sys.exit(main())
