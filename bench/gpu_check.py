"""GPU check: GloRo training steps on every visible GPU, each backend, against PyTorch.

    bash bench/gpu_check.sh                     # puts keras + this checkout on the path, runs this
    python bench/gpu_check.py [--config L18W256] [--rounds 5] [--steps 3] [--out bench/results]

For each Keras backend that imports (TensorFlow, JAX), in a child process of its own: the plain
network (`liresnet_network`, cross-entropy) and the GloRo model (`GloroModel`, EMMA,
the default `bound_gradient="last"`, 10 power iterations), each in float32 and in bfloat16
(`train_dtype="bfloat16"`; the plain net under `mixed_bfloat16`), batch 256 of 32×32×3; per
dtype, the two are timed side by side in rounds of `--steps` steps whose order alternates, after
two warm-up steps (on JAX, float32, also the GloRo step with the other `group_power_iterations`
setting than "auto" picks there: grouped ÷ separate). Reported: img/s, GloRo ÷ plain (median of per-round ratios), the first step,
peak device memory (the process's, all variants together), versions and float32 matmul precision
(TF32 or not), and the per-epoch bound (`epoch_bound`: what `ConvergeBounds` computes before each
validation, with the layers' sound bounds on the host and on the device side by side) as a fraction of a CIFAR-10 epoch at that GloRo step. On TensorFlow with several GPUs the float32 GloRo step also runs under
`MirroredStrategy` (global batch 256 per GPU). Before them, the PyTorch reference
(bench/torch_reference.py, same network) on the same device, float32 and bfloat16 autocast.
Results are written after each stage, so a run cut short (`--timeout` per child) keeps what finished.
On a GPU it then runs the certificate tests (`SOUNDNESS_TESTS`) under each backend on the GPU's
kernels (`--soundness`), logs in `--out`: a failure there makes the script exit 1.

Without a GPU it runs on the CPU at `--config L2W16` (the fallback that tests the script; a
CPU's figures belong to bench/training.py). Prints a table; writes gpu_check.json (`--out`).
"""
import argparse
import importlib.util
import json
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import _util as U  # noqa: E402  (also sets the scripts' TensorFlow environment defaults)
MARK = "GPU_CHECK_RESULT "
BATCH, CLASSES, SHAPE = U.BATCH, U.NUM_CLASSES, U.INPUT_SHAPE


def gpu_names():
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return []
    return [line.strip() for line in out.stdout.splitlines() if line.strip()] if out.returncode == 0 else []


# ---------------------------------------------------------------------------------- child
def _peak_mb(backend):
    try:
        if backend == "tensorflow":
            import tensorflow as tf

            if tf.config.list_physical_devices("GPU"):
                return tf.config.experimental.get_memory_info("GPU:0")["peak"] / 2 ** 20
        else:
            import jax

            stats = jax.devices()[0].memory_stats() or {}
            if "peak_bytes_in_use" in stats:
                return stats["peak_bytes_in_use"] / 2 ** 20
    except Exception:  # a backend without the statistic
        return None
    return None


def _say(backend, text):
    print(f"  [{backend}] {text}", flush=True)  # progress, streamed by the parent (run_child)


def _versions(backend):
    import keras

    out = {"keras": keras.__version__, "GLIBC_TUNABLES": os.environ.get("GLIBC_TUNABLES", "")}
    if backend == "jax":
        import jax

        out.update(jax=jax.__version__, jax_default_matmul_precision=str(jax.config.jax_default_matmul_precision))
    else:
        import tensorflow as tf

        out.update(tensorflow=tf.__version__,
                   tensor_float_32=bool(tf.config.experimental.tensor_float_32_execution_enabled()))
    return out


def child(backend, L, W, rounds, steps, dtypes=("float32", "bfloat16")):
    """Print one MARK line per dtype (its plain and GloRo steps, timed side by side), then one
    with the devices, versions and peak memory: a dtype that finished is kept if a later one
    fails or runs out of time."""
    import keras
    import numpy as np

    rng = np.random.default_rng(0)
    x = keras.ops.convert_to_tensor(rng.random((BATCH,) + SHAPE, dtype=np.float32))
    y = keras.ops.convert_to_tensor(rng.integers(0, CLASSES, BATCH).astype("int32"))
    med = lambda xs: sorted(xs)[len(xs) // 2]  # noqa: E731

    def build(kind, dtype):  # the benchmark's own model variants (bench/_util.py)
        group = {"gloro-grouped": True, "gloro-separate": False}.get(kind, "auto")
        return U.build(("plain" if kind == "plain" else U.GLORO) + ("_bf16" if dtype == "bfloat16" else ""), L, W,
                       group=group)

    # JAX, float32: also the other `group_power_iterations` setting than "auto" picks here
    from gloro_keras.layers.power_groups import grouping_pays

    other = ("gloro-separate" if grouping_pays() else "gloro-grouped") if backend == "jax" else None
    gloro_float32 = None
    for d in dtypes:
        variants = [f"plain_{d}", f"gloro_{d}"] + ([f"{other}_{d}"] if other and d == "float32" else [])
        models, first = {}, {}
        for v in variants:
            m = build(*v.split("_"))
            t = time.perf_counter()
            m.train_on_batch(x, y)  # returns numpy: the step has finished on the device
            first[v] = time.perf_counter() - t
            m.train_on_batch(x, y)
            models[v] = m
            _say(backend, f"{v}: first step {first[v]:.1f} s (tracing and compiling)")
        times, cpu = {v: [] for v in variants}, {v: [] for v in variants}
        for r in range(rounds):
            for v in (variants if r % 2 == 0 else variants[::-1]):
                t, c = time.perf_counter(), time.process_time()
                for _ in range(steps):
                    models[v].train_on_batch(x, y)
                times[v].append((time.perf_counter() - t) / steps)
                cpu[v].append((time.process_time() - c) / steps)  # all threads; other processes don't inflate it
        out = {"variants": {v: {"step_s": times[v], "cpu_s": cpu[v], "images_per_s": BATCH / med(times[v]),
                                "first_step_s": first[v],
                                "jit_compile": bool(models[v].jit_compile)}  # XLA (JAX) or graph mode (TF)
                            for v in variants},
               f"gloro_over_plain_{d}": med([g / p for g, p in zip(times[f"gloro_{d}"], times[f"plain_{d}"])])}
        if len(variants) > 2:  # GloRo step with the blocks' power iterations grouped ÷ each block alone
            grouped, separate = (times[f"gloro_{d}"], times[variants[2]])[::1 if other == "gloro-separate" else -1]
            out[f"grouped_over_separate_{d}"] = med([g / s for g, s in zip(grouped, separate)])
            out["auto_groups"] = other == "gloro-separate"
            _say(backend, f"{d}: GloRo step, power iterations grouped / separate {out[f'grouped_over_separate_{d}']:.3f}")
        _say(backend, f"{d}: plain {out['variants'][variants[0]]['images_per_s']:.0f} img/s, GloRo "
                      f"{out['variants'][variants[1]]['images_per_s']:.0f} img/s, GloRo / plain {out[f'gloro_over_plain_{d}']:.3f}")
        print(MARK + json.dumps(out), flush=True)
        if d == "float32":
            gloro_float32 = out["variants"]["gloro_float32"]["images_per_s"]
            print(MARK + json.dumps({"epoch_bound": epoch_bound(models["gloro_float32"], x, y, med(times["gloro_float32"]), backend)}),
                  flush=True)
        del models
    out = {"backend": backend, "config": f"L{L}W{W}", "peak_memory_mb": _peak_mb(backend), "versions": _versions(backend)}
    if backend == "tensorflow":
        import tensorflow as tf

        gpus = tf.config.list_logical_devices("GPU")
        out["devices"] = [d.name for d in gpus] or ["CPU"]
        if len(gpus) > 1 and gloro_float32:
            strategy = tf.distribute.MirroredStrategy()
            n = strategy.num_replicas_in_sync
            xs, ys = keras.ops.tile(x, (n, 1, 1, 1)), keras.ops.tile(y, (n,))
            with strategy.scope():
                m = build("gloro", "float32")
            m.train_on_batch(xs, ys)
            m.train_on_batch(xs, ys)
            ts = []
            for _ in range(rounds):
                t = time.perf_counter()
                for _ in range(steps):
                    m.train_on_batch(xs, ys)
                ts.append((time.perf_counter() - t) / steps)
            out["mirrored"] = {"replicas": n, "global_batch": BATCH * n, "images_per_s": BATCH * n / med(ts),
                               "scaling_vs_one_gpu": (BATCH * n / med(ts)) / gloro_float32}
    else:
        import jax

        out["devices"] = [str(d) for d in jax.devices()]
    print(MARK + json.dumps(out), flush=True)


def epoch_bound(model, x, y, step_s, backend, repeats=3):
    """What `ConvergeBounds` makes a CIFAR-10 epoch (196 steps of `step_s`) wait for before each
    validation (`converge()`: the float64 sound bounds, on the device where `sound_bounds`' "auto"
    puts them there, and the rounding terms), after a training step each time (the first
    includes compiling the device programs); then, on the same weights, the layers' sound bounds
    side by side: in the host's parallel threads and on the device (`bounds.device`, in this
    backend), with their values' largest relative differences."""
    from gloro_keras.bounds import sound_bounds, usable_cpus
    from gloro_keras.bounds.device import gpu_available
    from gloro_keras.train import ConvergeBounds

    cb = ConvergeBounds()
    cb.set_model(model)
    layers = model.bounded_layers
    rows = []
    for _ in range(repeats):
        model.train_on_batch(x, y)  # as after an epoch: the weights moved
        t = time.perf_counter()
        cb.converge()
        rows.append(time.perf_counter() - t)
    epoch = 196 * step_s
    warm = sorted(rows[1:] or rows)[len(rows[1:] or rows) // 2]
    out = {"rows": rows, "cpus": usable_cpus(), "epoch_s": epoch, "converge_first_s": rows[0], "converge_s": warm,
           "fraction_of_epoch": warm / epoch, "on_device": gpu_available()}
    out.update(U.auto_bound_cost(model, x, y, cb, warm, epoch, repeats))
    t_host, host = U.timed(lambda: sound_bounds(layers, on_device=False))
    out.update(host_parallel_s=t_host, host_fraction_of_epoch=t_host / epoch)
    # the device path in this backend (without a GPU: on its CPU device)
    t_dev, dev = U.timed(lambda: sound_bounds(layers, on_device=True))
    rel = [d / h - 1.0 for d, h in zip(dev, host)]
    out.update(device_s=t_dev, device_over_host=t_dev / t_host, device_rel_diff=[min(rel), max(rel)])
    return out


# --------------------------------------------------------------------------------- parent
def run_child(backend, config, args, dtypes="float32,bfloat16", stream=False):
    """One backend's steps in a fresh process (KERAS_BACKEND=backend): its result dict, with what
    finished kept when the child fails or passes `args.timeout` seconds (then also "error").
    `stream` echoes the child's progress lines."""
    parts, error = U.backend_child(__file__, backend, ["--config", config, "--rounds", str(args.rounds),
                                                       "--steps", str(args.steps), "--dtypes", dtypes],
                                   MARK, args.timeout, echo="  [" if stream else None)
    result, variants = {"backend": backend}, {}
    for part in parts:
        variants.update(part.pop("variants", {}))
        result.update(part)
    if error or "devices" not in result:
        result["error"] = error or "the child printed no final result"
    if variants:
        result["variants"] = variants
    return result


def run_torch(config, args, device):
    python = args.torch_python or sys.executable
    probe = subprocess.run([python, "-c", "import torch"], capture_output=True)
    if probe.returncode != 0:
        return {"skipped": f"no torch in {python}"}
    cmd = [python, str(HERE / "torch_reference.py"), "--configs", config, "--formats", "channels_last",
           "--repeats", str(args.rounds), "--bf16", "--device", device]
    # torch_reference.py needs only the standard library and torch: keep keras' wheels (built for
    # this interpreter, on the PYTHONPATH by gpu_check.sh) away from another interpreter
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout, env=env)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {args.timeout} s"}
    if p.returncode != 0:
        return {"error": p.stderr[-1500:]}
    return json.loads(p.stdout)


SOUNDNESS_TESTS = ("tests/test_rounding.py", "tests/test_attacks.py", "tests/test_device_bounds.py")


def run_soundness(backend, args, out):
    """The certificate tests (`SOUNDNESS_TESTS`) on this machine's default device under `backend`:
    float64 re-evaluation, ties, batches and attacks at the float32 boundary, here against the
    GPU's kernels. JAX runs with x64 on (the tests' float64 reference; the network stays float32).
    Returns {"summary": pytest's last line, "passed": bool}; the log goes to `out`."""
    env = dict(os.environ, KERAS_BACKEND=backend, XLA_PYTHON_CLIENT_PREALLOCATE="false",
               PYTHONPATH=os.pathsep.join(filter(None, [str(U.REPO), os.environ.get("PYTHONPATH")])))
    if backend == "jax":
        env["JAX_ENABLE_X64"] = "1"
    cmd = [sys.executable, "-m", "pytest", "-o", "addopts=", "-q", "-p", "no:cacheprovider",
           "-W", "ignore::DeprecationWarning", *SOUNDNESS_TESTS]
    log = out / f"soundness-{backend}.log"
    try:
        p = subprocess.run(cmd, cwd=U.REPO, env=env, capture_output=True, text=True, timeout=args.timeout)
    except subprocess.TimeoutExpired as e:
        log.write_text(str(e.stdout or ""))
        return {"summary": f"timed out after {args.timeout} s", "passed": False}
    log.write_text(p.stdout + p.stderr[-5000:])
    lines = [line for line in p.stdout.splitlines() if line.strip()]
    return {"summary": lines[-1].strip("= ") if lines else p.stderr[-300:], "passed": p.returncode == 0}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default=None, help="LxWy (default L18W256 on a GPU, L2W16 on the CPU fallback)")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--steps", type=int, default=3, help="steps per variant per round")
    ap.add_argument("--backends", default="tensorflow,jax")
    ap.add_argument("--torch-python", default=None, help="interpreter with torch (default: this one)")
    ap.add_argument("--no-torch", action="store_true", help="skip the PyTorch reference")
    ap.add_argument("--timeout", type=int, default=1200, help="seconds per child process")
    ap.add_argument("--out", default=str(HERE / "results"))
    ap.add_argument("--dtypes", default="float32,bfloat16")
    ap.add_argument("--soundness", choices=("auto", "yes", "no"), default="auto",
                    help="also run the certificate tests per backend on the device (auto: on a GPU)")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        L, W = (int(v) for v in args.config.upper().lstrip("L").split("W"))
        child(args.child, L, W, args.rounds, args.steps, tuple(args.dtypes.split(",")))
        return 0
    gpus = gpu_names()
    config = (args.config or ("L18W256" if gpus else "L2W16")).upper()
    started = time.strftime("%Y-%m-%d %H:%M:%S")
    print(f"gpu_check {started}: {config}, GPUs: {gpus or 'none (CPU fallback)'}", flush=True)
    results = {"started": started, "config": config, "gpus": gpus, "backends": {}, "torch": {"skipped": "not run yet"}}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    def save():  # after every stage, so a run cut short keeps what finished
        results["finished"] = time.strftime("%Y-%m-%d %H:%M:%S")
        table = report(results, config)
        (out / "gpu_check.json").write_text(json.dumps(results, indent=1))
        (out / "gpu_check.md").write_text(table + "\n")
        return table

    t = time.time()  # the reference first: it is the quickest, and every ratio needs it
    results["torch"] = {"skipped": "--no-torch"} if args.no_torch else run_torch(config, args, "cuda" if gpus else "cpu")
    state = "error" if "error" in results["torch"] else ("skipped" if "skipped" in results["torch"] else "done")
    print(f"  torch: {state} in {time.time() - t:.0f} s", flush=True)
    save()
    for backend in args.backends.split(","):
        if importlib.util.find_spec(backend) is None:
            results["backends"][backend] = {"skipped": f"{backend} is not installed"}
            print(f"  {backend}: not installed, skipped", flush=True)
            continue
        t = time.time()
        r = run_child(backend, config, args, args.dtypes, stream=True)
        results["backends"][backend] = r
        print(f"  {backend}: {'error' if 'error' in r else 'done'} in {time.time() - t:.0f} s", flush=True)
        save()
    if args.soundness == "yes" or (args.soundness == "auto" and gpus):
        results["soundness"] = {}
        for backend in args.backends.split(","):
            if importlib.util.find_spec(backend) is None or importlib.util.find_spec("pytest") is None:
                continue
            t = time.time()
            results["soundness"][backend] = run_soundness(backend, args, out)
            print(f"  certificate tests on {backend}: {results['soundness'][backend]['summary']} "
                  f"({time.time() - t:.0f} s)", flush=True)
            save()
    table = save()
    print(table)
    print(f"wrote {out / 'gpu_check.json'} and gpu_check.md")
    failed = [b for b, r in results["backends"].items() if "error" in r]
    failed += [b for b, r in results.get("soundness", {}).items() if not r["passed"]]
    return 1 if failed else 0


def _epoch_bound_note(backend, e):
    where = "on the device (`bounds.device`)" if e.get("on_device") else f"on the host's {e['cpus']} CPUs, in parallel"
    line = (f"- {backend}: per-epoch bound (`ConvergeBounds` before each validation: float64 sound bounds {where}, "
            f"rounding terms) {e['converge_s']:.2f} s = {100 * e['fraction_of_epoch']:.1f} % of a CIFAR-10 epoch at "
            f"the float32 GloRo step ({e['epoch_s']:.1f} s); first {e['converge_first_s']:.2f} s (compiling). "
            f"Sound bounds alone on the host's {e['cpus']} CPUs: {e['host_parallel_s']:.2f} s "
            f"({100 * e['host_fraction_of_epoch']:.1f} %)")
    if "current_s" in e:
        line += (f". `ConvergeBounds()` (\"auto\"): " + (
            f"over 5 %, so later validations read the iterates instead: {e['current_s'] * 1e3:.1f} ms = "
            f"{100 * e['auto_fraction_of_epoch']:.2f} % of the epoch" if e["auto_switches"] else "within 5 %: sound at every validation"))
    if "device_s" in e:
        lo, hi = e["device_rel_diff"]
        line += (f"; on the device {e['device_s']:.2f} s (device ÷ host {e['device_over_host']:.3f}; values "
                 f"÷ host's − 1 in [{lo:.1e}, {hi:.1e}])")
    return line


def report(results, config):
    torch_cfg = results["torch"].get("configs", {}).get(config, {}).get("channels_last", {})
    tgv = U.TORCH_GLORO[U.DEFAULT_GRADIENT]  # PyTorch's GloRo step with our default's bound gradient
    tg = {d: torch_cfg.get(v, {}).get("images_per_s") for d, v in (("float32", tgv), ("bfloat16", tgv + "_bf16"))}
    lines = [f"# GPU check ({config}, batch {BATCH}) {results['finished']}", "",
             f"GPUs: {', '.join(results['gpus']) or 'none: CPU fallback'}", "",
             "| backend | dtype | plain img/s | GloRo img/s | GloRo ÷ plain (step) | GloRo ÷ PyTorch GloRo (img/s) | "
             "first GloRo step s | peak device MB |", "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for backend, r in results["backends"].items():
        if "variants" not in r or "error" in r:
            lines.append(f"| {backend} | — | {r.get('skipped') or 'error: ' + ' '.join(r['error'].split())[-200:]} "
                         "| | | | | |")
        if "variants" not in r:
            continue
        for d in ("float32", "bfloat16"):
            if f"gloro_{d}" not in r["variants"]:
                continue
            p, g = r["variants"][f"plain_{d}"], r["variants"][f"gloro_{d}"]
            vs = f"{g['images_per_s'] / tg[d]:.2f}" if tg.get(d) else "—"
            peak = f"{r['peak_memory_mb']:.0f}" if r.get("peak_memory_mb") else "—"
            lines.append(f"| {backend} | {d} | {p['images_per_s']:.0f} | {g['images_per_s']:.0f} | "
                         f"{r[f'gloro_over_plain_{d}']:.3f} | {vs} | {g['first_step_s']:.1f} | {peak} |")
        if "mirrored" in r:
            mm = r["mirrored"]
            lines.append(f"| {backend} MirroredStrategy × {mm['replicas']} | float32 | | {mm['images_per_s']:.0f} | | | | "
                         f"scaling {mm['scaling_vs_one_gpu']:.2f}× one GPU |")
    t = results["torch"]
    if torch_cfg:
        peak = torch_cfg.get("peak_gpu_memory_mb")
        for d, (pv, gv) in (("float32", ("plain", tgv)), ("bfloat16", ("plain_bf16", tgv + "_bf16"))):
            if gv not in torch_cfg:  # a result from before torch_reference.py timed `gloro_last`
                continue
            p, g = torch_cfg[pv]["images_per_s"], torch_cfg[gv]["images_per_s"]
            lines.append(f"| PyTorch {t['torch']} ({t['device']}) | {d} | {p:.0f} | {g:.0f} | {p / g:.3f} (img/s) | 1 | "
                         f"{torch_cfg[gv]['first_step_s']:.1f} | {f'{peak:.0f}' if peak else '—'} |")
    else:
        lines.append(f"| PyTorch | — | {t.get('skipped') or 'error: ' + ' '.join(str(t.get('error')).split())[-200:]} | | | | | |")
    notes = [f"- {backend}: " + ", ".join(f"{k} {v}" for k, v in r["versions"].items())
             for backend, r in results["backends"].items() if r.get("versions")]
    notes += [_epoch_bound_note(backend, r["epoch_bound"]) for backend, r in results["backends"].items()
              if "epoch_bound" in r]
    notes += [f"- {backend}, float32: GloRo step with the blocks' power iterations grouped (one vectorized "
              f"computation) ÷ each block alone: {r['grouped_over_separate_float32']:.3f} (`group_power_iterations`"
              f" \"auto\" {'groups' if r['auto_groups'] else 'does not group'} here; the table's GloRo is \"auto\")"
              for backend, r in results["backends"].items() if "grouped_over_separate_float32" in r]
    notes += [f"- certificate tests ({', '.join(SOUNDNESS_TESTS)}) on {backend}: {r['summary']}"
              f"{'' if r['passed'] else ' — FAILED, see soundness-' + backend + '.log'}"
              for backend, r in results.get("soundness", {}).items()]
    if "cudnn_allow_tf32" in t:
        notes.append(f"- PyTorch: {t.get('gpu', '')}, cudnn.allow_tf32 {t['cudnn_allow_tf32']}, "
                     f"matmul.allow_tf32 {t['matmul_allow_tf32']}")
    return "\n".join(lines + ([""] + notes if notes else []))


if __name__ == "__main__":
    sys.exit(main())
