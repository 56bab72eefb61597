"""Shared helpers of the benchmark scripts: the benchmark setup (batch, ε, models, data),
side-by-side timing, environment capture, goals, summary rows and the report writer.

Nothing here imports TensorFlow at module level, so the memory child processes and the
argument parsing stay cheap. Only the public gloro_keras API is used.
"""
import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # this checkout's _gloro_keras_cli and gloro_keras, whatever is installed
from _gloro_keras_cli import environment_defaults, host_memory_defaults  # noqa: E402

environment_defaults()  # the console scripts' defaults (oneDNN on), before TensorFlow is imported
if Path(sys.argv[0]).resolve().parent == REPO / "bench":  # a bench script, not a test importing this
    host_memory_defaults()  # JAX on a CPU: restart with glibc's huge pages (gloro_keras/train/host_memory.py)
DATA = REPO.parent / "shared/data/cifar10-jpeg.npz"
RESULTS = REPO / "bench" / "results"

BATCH = 256
NUM_CLASSES = 10
INPUT_SHAPE = (32, 32, 3)
EPSILON = 36 / 255
# GloroModel's default `bound_gradient`: the GloRo step the bars time (tests/test_bench.py checks
# that it is the library's), and bench/torch_reference.py's step with the same bound gradient.
DEFAULT_GRADIENT = "last"
GLORO = f"gloro_{DEFAULT_GRADIENT}"
TORCH_GLORO = {"full": "gloro", "last": "gloro_last"}
POWER_ITERATIONS = 10

GOALS = {  # key: (op, goal, bar)
    "train_ratio": ("<=", 1.05, 1.10),  # GloRo ÷ plain step; #14's bar is 1.10 (an earlier issue's was 1.15)
    # against PyTorch timed side by side in the same session (bench/torch_reference.py) only
    "speedup_vs_pytorch": (">=", 1.5, None),
    # certify = one float32 forward pass plus the rounding-analysis pass of the certificates
    # (the rounding terms that make them hold for the network as it computes in float32), so
    # it costs ~1.4-1.5x predict by design; 1.6 leaves room for noise, not for a regression.
    "certify_ratio": ("<=", 1.6, None),
    "pipeline_ratio": (">=", 5.0, None),
    "memory_ratio": ("<=", 1.2, None),
    # ConvergeBounds before each validation (power convergence + float64 sound bound) ÷ a
    # CIFAR-10 epoch of training steps, L6W128 (#14)
    "epoch_bound_fraction": ("<=", 0.05, None),
    "jax_over_tf": ("<=", 1.3, None),
}


# -- arguments ----------------------------------------------------------------------------
def parse_config(s):
    """'L6W128' -> (6, 128)."""
    s = s.strip().upper()
    if not (s.startswith("L") and "W" in s):
        raise argparse.ArgumentTypeError(f"config must look like L6W128; got {s!r}")
    L, W = s[1:].split("W")
    return int(L), int(W)


def add_common_args(ap, configs="L6W64,L6W128,L12W128"):
    ap.add_argument("--configs", default=configs, help="comma-separated LxWy configs (default %(default)s)")
    ap.add_argument("--repeats", type=int, default=5, help="timed rounds of training steps")
    ap.add_argument("--steps", type=int, default=1, help="train steps per variant per round")
    ap.add_argument("--no-bf16", action="store_true", help="skip the mixed-bfloat16 variants")
    ap.add_argument("--quick", action="store_true",
                    help="a short run: L6W64, fewer repeats (explicit options still apply; see bench/README.md)")
    ap.add_argument("--name", default=None, help="output file stem")
    ap.add_argument("--out", default=str(RESULTS), help="output folder (default bench/results)")


def parse_args(ap, argv, quick):
    """Parse; with --quick, `quick` replaces the defaults (flags given explicitly still win)."""
    args = ap.parse_args(argv)
    if args.quick:
        ap.set_defaults(**quick)
        args = ap.parse_args(argv)
    return args


def config_list(args):
    configs = [c.strip().upper() for c in args.configs.split(",") if c.strip()]
    for c in configs:
        parse_config(c)
    return configs


# -- models and data (TensorFlow imported lazily) ------------------------------------------
def tf_keras():
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import keras
    import tensorflow as tf

    tf.get_logger().setLevel("ERROR")
    return tf, keras


def make_optimizer():
    import keras  # any backend (bench/gpu_check.py builds these models on JAX too)

    return keras.optimizers.AdamW(learning_rate=1e-3, weight_decay=1e-4, global_clipnorm=3.0)


def network(L, W):
    """The LiResNet body + LLN head as a plain keras.Model (what GloroLiResNet wraps)."""
    import gloro_keras as gk

    return gk.liresnet_network(L, W, NUM_CLASSES, INPUT_SHAPE, power_iterations=POWER_ITERATIONS)


def build(variant, L, W, group="auto"):
    """variant: plain | gloro_full | gloro_last, optionally suffixed _bf16 (mixed bfloat16
    training) and/or _xla (jit_compile=True on TensorFlow too); `group`: the GloRo model's
    `group_power_iterations`.

    plain: the network alone (`gk.liresnet_network`, a plain keras.Model; under the
    mixed_bfloat16 policy for _bf16) with sparse categorical cross-entropy from logits.
    gloro_*: `GloroModel(<the same network>, bound_gradient=..., train_dtype=...)` with EMMA.
    Any Keras backend; both compiled as `GloroModel.compile` does by default: graph mode
    (jit_compile=False) on TensorFlow, XLA ("auto") on JAX, whose jit_compile=False would run
    the step eagerly, op by op (3.5x slower at L6W64).
    """
    import keras

    import gloro_keras as gk

    xla = variant.endswith("_xla")
    jit = True if xla else (False if keras.backend.backend() == "tensorflow" else "auto")
    base = variant[:-4] if xla else variant
    bf16 = base.endswith("_bf16")
    base = base[:-5] if bf16 else base
    if base == "plain":
        keras.mixed_precision.set_global_policy("mixed_bfloat16" if bf16 else "float32")
        try:
            m = network(L, W)
        finally:
            keras.mixed_precision.set_global_policy("float32")
        m.compile(optimizer=make_optimizer(),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True), jit_compile=jit)
    else:
        m = gk.GloroModel(network(L, W), epsilon=EPSILON, bound_gradient=base.split("_")[1],
                          train_dtype="bfloat16" if bf16 else "float32", group_power_iterations=group)
        m.compile(optimizer=make_optimizer(), loss="emma", jit_compile=jit)
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


def warm_models(variants, L, W, x, y, log):
    """Build each variant and run two training steps (tracing, then one-time costs).
    Returns (models, {variant: build_s / first_step_s}, {variant: error})."""
    models, first, errors = {}, {}, {}
    for v in variants:
        try:
            t_build, m = timed(lambda: build(v, L, W))
            t_first, _ = timed(lambda: m.train_on_batch(x, y))
            m.train_on_batch(x, y)
            models[v] = m
            first[v] = {"build_s": t_build, "first_step_s": t_first}
            log(f"  {v}: build {t_build:.1f}s, first step {t_first:.1f}s")
        except Exception as e:  # XLA may not support something on this CPU
            errors[v] = short_error(e)
            log(f"  {v}: FAILED {errors[v]}")
    return models, first, errors


def flop_floor(model):
    """Analytic multiply-accumulate count: bound (power iteration) vs. a training batch.

    Forward MACs per image of every layer with a kernel (the bound's iterate is one input
    example); backward ≈ 2× forward. 'full' back-propagates through all 2n+1 conv/adjoint
    applications, 'last' only through the final one.
    """
    import gloro_keras as gk

    bounded = {id(layer) for layer in model.bounded_layers}
    per_image, bounded_macs = 0, 0
    for layer in model.network.layers:
        if isinstance(layer, (gk.layers.LipschitzConv2D, gk.layers.LiResNetBlock)):
            k = layer.kernel if isinstance(layer, gk.layers.LipschitzConv2D) else layer.residual_kernel
            kh, kw, cin, cout = k.shape
            hw = layer.output.shape[1:3]
            macs = hw[0] * hw[1] * kh * kw * cin * cout
        elif hasattr(layer, "kernel"):
            macs = int(layer.kernel.shape[0]) * int(layer.kernel.shape[1])
        else:
            continue
        per_image += macs
        if id(layer) in bounded:
            bounded_macs += macs
    n = POWER_ITERATIONS
    train = 3 * BATCH * per_image
    full = 3 * (2 * n + 1) * bounded_macs
    last = (2 * n + 1) * bounded_macs + 2 * bounded_macs
    return {"train_macs": train, "bound_full_macs": full, "bound_last_macs": last,
            "floor_full": 1 + full / train, "floor_last": 1 + last / train}


# -- environment ------------------------------------------------------------------------
def uptime():
    """`uptime` output (falls back to os.getloadavg())."""
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True, timeout=5).stdout.strip()
    except Exception:  # pragma: no cover - uptime missing
        return "load average: " + ", ".join(f"{x:.2f}" for x in os.getloadavg())


def loadavg():
    return [round(x, 2) for x in os.getloadavg()]


def _status_mb(key):
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return float("nan")


def vmrss_mb():
    """Current resident set size (MB) from /proc/self/status."""
    return _status_mb("VmRSS")


def vmhwm_mb():
    """Peak resident set size of this address space (MB), /proc/self/status VmHWM."""
    return _status_mb("VmHWM")


def maxrss_mb():
    """Peak resident set size of this process so far (MB; ru_maxrss is KB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


ONEDNN_NOTICE = "oneDNN custom operations are on"


def onednn_state():
    """Whether TensorFlow runs its oneDNN custom operations, from public signals only:
    TF_ENABLE_ONEDNN_OPTS if set, and the notice TF logs at import when they are on (read from
    a child `import tensorflow` with INFO logging, same environment)."""
    env = os.environ.get("TF_ENABLE_ONEDNN_OPTS")
    src = f"TF_ENABLE_ONEDNN_OPTS={env}" if env is not None else "TF default, TF_ENABLE_ONEDNN_OPTS unset"
    try:
        p = subprocess.run([sys.executable, "-c", "import tensorflow"], capture_output=True, text=True,
                           timeout=300, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="0"))
        state = "on" if ONEDNN_NOTICE in p.stderr else "off"
        how = f"TF's import log {'has' if state == 'on' else 'lacks'} the notice {ONEDNN_NOTICE!r}"
    except Exception as e:  # pragma: no cover
        state, how = "unknown", f"import probe failed: {type(e).__name__}"
    return {"onednn": f"{state} ({src})", "onednn_evidence": how, "tf_enable_onednn_opts": env}


def sound_bounds_side_by_side(layers):
    """The layers' sound bounds one after another and in parallel threads (`bounds.sound_bounds`,
    what `ConvergeBounds` runs): {"sound_sequential_s", "sound_parallel_s", "parallel_rel_diff"}
    (≈ 0: the rounding of the Gram products, and of a large eigenproblem on more BLAS threads;
    all sound)."""
    from gloro_keras.bounds import sound_bounds

    t_seq, one = timed(lambda: [float(layer.sound_bound()) for layer in layers])
    t_par, many = timed(lambda: sound_bounds(layers))
    return {"sound_sequential_s": t_seq, "sound_parallel_s": t_par,
            "parallel_rel_diff": max((abs(p / q - 1.0) for p, q in zip(many, one)), default=0.0)}


def auto_bound_cost(model, x, y, cb, sound_s, epoch_s, repeats):
    """What the default `ConvergeBounds()` ("auto") costs per validation once its sound bound
    (`sound_s`) took more than `cb.max_fraction` of an epoch (`epoch_s`): the iterates' estimate
    (`cb.converge(kind="current")`), timed after a training step `repeats` times.
    {"current_s" (median), "auto_switches", "auto_fraction_of_epoch"}."""
    times = []
    for _ in range(repeats):
        model.train_on_batch(x, y)  # as after an epoch: the weights moved
        times.append(timed(lambda: cb.converge(kind="current"))[0])
    current = med(times)
    switches = sound_s > cb.max_fraction * epoch_s
    return {"current_s": current, "auto_switches": switches,
            "auto_fraction_of_epoch": (current if switches else sound_s) / epoch_s}


def environment(tf, keras):
    from gloro_keras.bounds import usable_cpus

    affinity = usable_cpus()
    return {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "cpu_model": cpu_model(),
        "cpu_count": os.cpu_count(),
        "cpus_usable": affinity,
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
        "keras_backend": keras.backend.backend(),
        "tf_intra_op_threads": tf.config.threading.get_intra_op_parallelism_threads(),
        "tf_inter_op_threads": tf.config.threading.get_inter_op_parallelism_threads(),
        "GLIBC_TUNABLES": os.environ.get("GLIBC_TUNABLES", ""),  # glibc.malloc.hugetlb=1: JAX on a CPU
        **onednn_state(),
    }


class Session:
    """Log lines with elapsed time, and record when each section started at which load."""

    def __init__(self, args):
        self.t0 = time.time()
        self.meta = {"started": time.strftime("%Y-%m-%d %H:%M:%S"), "uptime_before": uptime(),
                     "loadavg_before": loadavg(), "sections": [],
                     "args": {k: v for k, v in vars(args).items() if not k.startswith("_")}}

    def log(self, s):
        print(f"[{time.time() - self.t0:6.0f}s] {s}", flush=True)

    def mark(self, section):
        self.meta["sections"].append({"section": section, "start_s": round(time.time() - self.t0, 1),
                                      "loadavg": loadavg()})
        self.log(section)

    def finish(self):
        self.meta.update(uptime_after=uptime(), loadavg_after=loadavg(),
                         finished=time.strftime("%Y-%m-%d %H:%M:%S"), duration_s=time.time() - self.t0)


def short_error(e, n=300):
    """'Type: message' on one line, at most n characters of the message."""
    return f"{type(e).__name__}: {' '.join(str(e).split())[:n]}"


def backend_child(script, backend, argv, mark, timeout, echo=None):
    """Run `python <script> --child <backend> <argv...>` with KERAS_BACKEND=backend (and this
    process's environment defaults). Returns (parts, error): the JSON dicts it printed after
    `mark`, in order (kept when it fails later or is killed), and "" or why it failed: the tail of
    its stderr, or "timed out after `timeout` s" (then it is killed). Lines of its stdout that
    start with `echo` are printed as they come."""
    import tempfile
    import threading

    cmd = [sys.executable, str(Path(script).resolve()), "--child", backend, *argv]
    parts, timed_out = [], []
    with tempfile.TemporaryFile("w+") as err:
        p = subprocess.Popen(cmd, env=dict(os.environ, KERAS_BACKEND=backend), stdout=subprocess.PIPE,
                             stderr=err, text=True)
        timer = threading.Timer(timeout, lambda: (timed_out.append(True), p.kill()))
        timer.start()
        try:
            for line in p.stdout:
                if line.startswith(mark):
                    parts.append(json.loads(line[len(mark):]))
                elif echo and line.startswith(echo):
                    print(line.rstrip(), flush=True)
            p.wait()
        finally:
            timer.cancel()
        err.seek(0)
        tail = err.read()[-1500:]
    if timed_out:
        return parts, f"timed out after {timeout} s"
    return parts, (tail or f"exit status {p.returncode}") if p.returncode else ""


# -- timing -----------------------------------------------------------------------------
def timed(fn):
    t = time.perf_counter()
    out = fn()
    return time.perf_counter() - t, out


def round_robin(fns, repeats, calls=1):
    """Time every callable `calls` times per round for `repeats` rounds, in the given order and
    reversed by turns, rotated every two rounds: so no variant always runs first, and no variant
    always runs right after the same neighbour (a rotation alone keeps the cyclic order: with
    PyTorch's steps in the rounds, `plain` followed a PyTorch step in every round but the first).

    Returns {name: {"wall": [s per call, one per round], "cpu": [process CPU s per call]}}.
    Process CPU time (all threads) is insensitive to other processes taking cores away,
    which makes it the robust cross-check on a shared machine. A callable that runs its work
    elsewhere (a child process) returns {"wall": s, "cpu": s} as measured there; those are
    used instead of this process's clocks.
    """
    names = list(fns)
    times = {n: {"wall": [], "cpu": []} for n in names}
    for r in range(repeats):
        base, k = (names if r % 2 == 0 else names[::-1]), (r // 2) % len(names)
        for n in base[k:] + base[:k]:
            wall = cpu = 0.0
            for _ in range(calls):
                c, t = time.process_time(), time.perf_counter()
                out = fns[n]()
                remote = isinstance(out, dict) and "wall" in out and "cpu" in out
                wall += out["wall"] if remote else time.perf_counter() - t
                cpu += out["cpu"] if remote else time.process_time() - c
            times[n]["wall"].append(wall / calls)
            times[n]["cpu"].append(cpu / calls)
    return times


def med(xs):
    return statistics.median(xs) if xs else float("nan")


def paired(num, den):
    """Ratio num ÷ den of two round_robin entries timed side by side.

    median/min/max: of the per-round wall-time ratios; ratio_of_medians; fastest_ratio:
    fastest num run ÷ fastest den run (contention only ever adds time); cpu_*: the same
    per-round statistics on process CPU time.
    """
    rs = [a / b for a, b in zip(num["wall"], den["wall"])]
    cs = [a / b for a, b in zip(num["cpu"], den["cpu"])]
    return {"median": med(rs), "min": min(rs), "max": max(rs),
            "ratio_of_medians": med(num["wall"]) / med(den["wall"]),
            "fastest_ratio": min(num["wall"]) / min(den["wall"]),
            "cpu_median": med(cs), "cpu_min": min(cs), "cpu_max": max(cs)}


def step_statistics(wall, first, cpu=None, batch=BATCH):
    """{variant: statistics of its step times} for step times timed side by side (lists, one
    entry per round), plus "gloro/plain" and "gloro_bf16/plain_bf16": medians of the per-round
    ratios. `first`: {variant: first step s}; `cpu`: {variant: CPU s per step}, when measured.
    The PyTorch reference's report shape (bench/torch_reference.py and training.TorchChild)."""
    out = {}
    for v, t in wall.items():
        out[v] = {"step_s": t, "step_s_median": med(t), "images_per_s": batch / med(t),
                  "images_per_s_fastest_run": batch / min(t), "first_step_s": first[v]}
        if cpu is not None:
            out[v]["step_cpu_s_median"] = med(cpu[v])
    for g, p in (("gloro", "plain"), ("gloro_bf16", "plain_bf16")):
        if g in wall and p in wall:
            out[f"{g}/{p}"] = med([a / b for a, b in zip(wall[g], wall[p])])
    return out


def ab_args(doc, baseline=None):
    """--config, --rounds, --kinds of the A/B scripts (and --baseline when given as (default,
    choices)); returns (args, L, W)."""
    ap = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    ap.add_argument("--config", default="L6W64")
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--kinds", default="plain,gloro")
    if baseline is not None:
        ap.add_argument("--baseline", default=baseline[0], choices=baseline[1])
    args = ap.parse_args()
    return (args, *parse_config(args.config))


def ab_twins(kind, L, W, custom_objects, old, new):
    """The benchmark network as shipped (`new`) and rebuilt from its config with `custom_objects`
    (`old`, via public `keras.Model.from_config` in a `custom_object_scope`), same weights, each
    compiled as `kind`: "plain" (sparse cross-entropy from logits) or "gloro" (GloroModel, EMMA,
    bound_gradient="full"). Returns {old: model, new: model}."""
    import keras

    import gloro_keras as gk

    keras.utils.set_random_seed(0)
    net = network(L, W)
    with keras.saving.custom_object_scope(custom_objects):
        twin = keras.Model.from_config(net.get_config())
    twin.set_weights(net.get_weights())
    out = {}
    for name, n in ((old, twin), (new, net)):
        if kind == "plain":
            n.compile(optimizer=make_optimizer(), loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
            out[name] = n
        else:
            out[name] = gk.GloroModel(n, epsilon=EPSILON, bound_gradient="full")
            out[name].compile(optimizer=make_optimizer(), loss="emma")
    return out


def ab_steps(kind, models, x, y, rounds, new, old, what):
    """Warm both twins (two `train_on_batch` each), time their steps in rotating rounds and print
    the medians and the paired ratio `new ÷ old` (wall and CPU, with the rounds' range)."""
    for m in models.values():
        m.train_on_batch(x, y)
        m.train_on_batch(x, y)
    times = round_robin({k: (lambda m=m: m.train_on_batch(x, y)) for k, m in models.items()}, rounds, calls=2)
    p = paired(times[new], times[old])
    print(f"{kind} step ms (median): " + ", ".join(f"{k} {1e3 * med(t['wall']):.0f}" for k, t in times.items()))
    print(f"{kind}: {what} step time: wall {p['median']:.3f} [{p['min']:.3f}–{p['max']:.3f}], "
          f"CPU {p['cpu_median']:.3f} [{p['cpu_min']:.3f}–{p['cpu_max']:.3f}]", flush=True)
    return p


def ab_kinds(args, L, W, custom_objects, old, new, what, x, y, difference=None):
    """The A/B scripts' loop over --kinds: the twins (`ab_twins`), the largest difference of their
    gradients (`difference(models)`, when given) and their steps side by side (`ab_steps`)."""
    for kind in args.kinds.split(","):
        models = ab_twins(kind, L, W, custom_objects, old, new)
        if difference is not None:
            print(f"{kind}: largest gradient difference (relative to the tensor's max) "
                  f"{difference(models):.2g}", flush=True)
        ab_steps(kind, models, x, y, args.rounds, new, old, what)


def bound_gradient_difference(models):
    """Largest difference between the twins' gradients of the bound K (`body_bound(training=True)`,
    from the same iterates), relative to each tensor's largest entry. TensorFlow only (else NaN)."""
    import keras
    import numpy as np

    if keras.backend.backend() != "tensorflow":
        return float("nan")
    import tensorflow as tf

    grads = []
    for m in models.values():
        saved = [np.asarray(v) for v in m.non_trainable_variables]
        with tf.GradientTape() as tape:
            k = m.body_bound(training=True)
        grads.append([g for g in tape.gradient(k, m.trainable_variables) if g is not None])
        for v, a in zip(m.non_trainable_variables, saved):  # the power iterates, as they were
            v.assign(a)
    return max(float(np.abs(a - b).max() / (np.abs(b).max() + 1e-30)) for a, b in zip(*grads))


def ab_bound(doc, custom_objects, old, new, what):
    """The bound A/B scripts' main: GloRo twins (`ab_twins`), the difference of their bound
    gradients, then their training steps side by side (`ab_steps`)."""
    args, L, W = ab_args(doc)
    tf_keras()
    xtr, ytr, _, _ = load_arrays()
    models = ab_twins("gloro", L, W, custom_objects, old, new)
    print(f"largest difference of the bound's gradient (relative): {bound_gradient_difference(models):.2g}")
    return ab_steps("gloro", models, xtr, ytr, args.rounds, new, old, what)


class count_calls:
    """Count calls of the given Python functions while the block runs, by observing call
    events (sys.setprofile / threading.setprofile): nothing is patched. The hook slows every
    Python call down, so never time a block that counts.

        with count_calls({"sound": [f, g]}) as counts: ...   # counts["sound"]
    """

    def __init__(self, groups):
        self.codes = {fn.__code__: name for name, fns in groups.items() for fn in fns}
        self.counts = {name: 0 for name in groups}

    def on_event(self, frame, event, arg):
        if event == "call":
            name = self.codes.get(frame.f_code)
            if name is not None:
                self.counts[name] += 1

    def __enter__(self):
        import threading

        threading.setprofile(self.on_event)
        sys.setprofile(self.on_event)
        return self.counts

    def __exit__(self, *exc):
        import threading

        sys.setprofile(None)
        threading.setprofile(None)
        return False


# -- goals, formatting, report ------------------------------------------------------------
def status(value, op, goal, bar=None):
    if value is None or value != value:
        return "n/a"
    ok = value <= goal if op == "<=" else value >= goal
    if ok:
        return "PASS"
    if bar is not None and (value <= bar if op == "<=" else value >= bar):
        return "FAIL (bar ok)"
    return "FAIL"


def fmt(x, nd=3):
    if x is None:
        return "—"
    if isinstance(x, str):
        return x
    if x != x:
        return "n/a"
    if abs(x) >= 1000:
        return f"{x:,.0f}"
    if abs(x) >= 100:
        return f"{x:.0f}"
    if abs(x) >= 10:
        return f"{x:.1f}"
    return f"{x:.{nd}f}"


def spread(p, cpu=False):
    """'1.07 [1.03–1.12]' for a paired() result (wall time, or CPU time)."""
    k = "cpu_" if cpu else ""
    return f"{fmt(p[k + 'median'])} [{fmt(p[k + 'min'])}–{fmt(p[k + 'max'])}]"


def md_table(header, rows):
    out = ["| " + " | ".join(header) + " |", "| " + " | ".join("---" for _ in header) + " |"]
    out += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(out)


SUMMARY_HEADER = ["config", "figure", "value (wall: median [min–max])", "fastest runs",
                  "CPU time: median [min–max]", "goal", "bar", "status", "status (robust)"]


def _goal(key):
    op, g, b = GOALS[key]
    return op, g, b, f"{op} {g}".replace("<=", "≤").replace(">=", "≥")


def ratio_row(cfg, label, p, key=None, verdict=False):
    """A summary row for a paired() ratio. 'status' judges the wall-time median, 'status
    (robust)' the CPU-time ratio; verdict=True (XLA) says helps / slower / unclear."""
    goal = bar = st = st_r = ""
    if key is not None:
        op, g, b, goal = _goal(key)
        bar = f"≤ {b}" if b else ""
        st, st_r = status(p["median"], op, g, b), status(p["cpu_median"], op, g, b)
    elif verdict:
        goal = "< 1 = XLA helps"
        st, st_r = (("helps" if p[k + "max"] < 1 else "slower" if p[k + "min"] > 1 else "unclear")
                    for k in ("", "cpu_"))
    return [cfg, label, spread(p), fmt(p["fastest_ratio"]), spread(p, cpu=True), goal, bar, st, st_r]


def value_row(cfg, label, value, fastest="", key=None, fastest_value=None):
    """A summary row for a single value; with a goal key, 'status (robust)' judges
    fastest_value (the fastest run) when given."""
    goal = st = st_r = ""
    if key is not None:
        op, g, _, goal = _goal(key)
        st = status(value, op, g)
        st_r = status(fastest_value if fastest_value is not None else value, op, g)
    return [cfg, label, fmt(value), fastest, "", goal, "", st, st_r]


def text_row(cfg, label, value, fastest="", cpu=""):
    return [cfg, label, value, fastest, cpu, "", "", "", ""]


def start_section(doc, add_args, argv, quick):
    """Parse a section script's flags (common ones, its own, --quick defaults); returns
    (args, configs, Session)."""
    ap = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_args(ap)
    add_args(ap)
    args = parse_args(ap, argv, quick)
    return args, config_list(args), Session(args)


def finish_section(session, results, rows, details, args, name, title):
    """End a section script: write results/<name>[-quick].json/.md, print the report; exit code 0."""
    session.finish()
    name = args.name or (f"{name}-quick" if args.quick else name)
    jpath, mpath = write_report(results, name, args.out, rows, details, title)
    session.log(f"wrote {jpath} and {mpath}")
    print(open(mpath).read())
    return 0


def write_report(results, name, out_dir, summary, details, title="gloro-keras benchmark"):
    """results -> <out_dir>/<name>.json and .md: a header (environment, load), the summary
    table (rows), then the detail sections (lists of markdown lines)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    results["summary"] = summary
    jpath, mpath = out / f"{name}.json", out / f"{name}.md"
    with open(jpath, "w") as f:
        json.dump(results, f, indent=1, default=float)
    meta, env = results["meta"], results["meta"]["environment"]
    lines = [
        f"# {title} ({name})",
        "",
        f"{meta['finished']} · {env['cpu_model']} · {env['cpu_count']} CPUs (usable {env['cpus_usable']}) · "
        f"TF {env['tensorflow']} · keras {env['keras']} ({env['keras_backend']}) · oneDNN {env['onednn']} · "
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
        md_table(SUMMARY_HEADER, summary),
    ]
    for d in details:
        lines += d
    with open(mpath, "w") as f:
        f.write("\n".join(lines) + "\n")
    return jpath, mpath
