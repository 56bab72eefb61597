"""A LiResNet block's three training convolutions on each Keras backend, timed alone.

    python bench/conv_kernels.py [--widths 64,128] [--repeats 9] [--out bench/results]

For each backend (TensorFlow, then JAX, each in a fresh process with the scripts' environment
defaults) and width W: a `LiResNetBlock(W)` at its training shape, a batch of 256 16×16×W
activations, and one compiled call (tf.function / jax.jit) per convolution, median of
`--repeats` calls after a warm-up:

* forward: `apply_linear(x, K)`, the merged 3×3 convolution;
* input gradient: `apply_adjoint(g, K)` (Aᵀg, what both backends' backward pass computes);
* kernel gradient as each backend's training step computes it: TensorFlow's autodiff
  (`Conv2DBackpropFilter`, oneDNN's kernel when it is on), JAX's shipped
  `chunked_kernel_vjp` (`LipschitzLayer.linear_by_hand`), and, for reference, XLA's own
  kernel gradient of the convolution (what autodiff would run).

Each figure is also given in GFLOP/s (2·256·16·16·9·W² per call). The block's convolutions
are ≈ 3/4 of a plain training step's arithmetic, so their JAX ÷ TensorFlow time is the floor of
the whole step's `jax_over_tf` (bench/run.py) unless XLA's convolutions get faster.
Writes conv_kernels.json and conv_kernels.md under --out.
"""
import argparse
import json
import os
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import _util as U  # noqa: E402  (sets the scripts' environment defaults before TensorFlow loads)

MARK = "CONV_KERNELS_RESULT "
SPATIAL = 16


def _timer(backend):
    """(compile, wait): compile a function of tensors; wait until a result is computed."""
    if backend == "jax":
        import jax

        return jax.jit, jax.block_until_ready
    import tensorflow as tf

    return (lambda f: tf.function(f, autograph=False)), (lambda r: r)  # TF's CPU calls are synchronous


def child(backend, widths, repeats):
    import keras
    import numpy as np

    import gloro_keras as gk
    from gloro_keras.ops.conv import chunked_kernel_vjp

    compile_fn, wait = _timer(backend)
    rng = np.random.default_rng(0)
    out = {"backend": backend, "widths": {}, "versions": {"keras": keras.__version__,
                                                          backend: __import__(backend).__version__}}
    for w in widths:
        block = gk.layers.LiResNetBlock()
        block.build((U.BATCH, SPATIAL, SPATIAL, w))
        k = keras.ops.convert_to_tensor(block.linear_kernel())
        x = keras.ops.convert_to_tensor(rng.standard_normal((U.BATCH, SPATIAL, SPATIAL, w), dtype=np.float32))
        g = keras.ops.convert_to_tensor(rng.standard_normal((U.BATCH, SPATIAL, SPATIAL, w), dtype=np.float32))
        fns = {"forward": (block.apply_linear, (x, k)), "input gradient": (block.apply_adjoint, (g, k))}
        if backend == "jax":
            import jax

            fns["kernel gradient"] = (lambda x, g, k: chunked_kernel_vjp(block.kernel_vjp, x, g, k,
                                                                        block.kernel_gradient_rows), (x, g, k))
            fns["kernel gradient, XLA's autodiff"] = (
                lambda x, g, k: jax.vjp(lambda kk: block.apply_linear(x, kk), k)[1](g)[0], (x, g, k))
        else:
            import tensorflow as tf

            shape = tuple(k.shape)
            fns["kernel gradient"] = (lambda x, g: tf.raw_ops.Conv2DBackpropFilter(
                input=x, filter_sizes=shape, out_backprop=g, strides=[1, 1, 1, 1], padding="SAME"), (x, g))
        flop = 2 * U.BATCH * SPATIAL * SPATIAL * 9 * w * w
        row = {}
        for name, (f, args) in fns.items():
            f = compile_fn(f)
            wait(f(*args))
            ts = []
            for _ in range(repeats):
                t = time.perf_counter()
                wait(f(*args))
                ts.append(time.perf_counter() - t)
            s = U.med(ts)
            row[name] = {"ms": 1e3 * s, "gflops": flop / s / 1e9, "all_ms": [1e3 * t for t in ts]}
        out["widths"][str(w)] = row
    print(MARK + json.dumps(out), flush=True)


def report(results):
    env = results["environment"]
    lines = ["# A LiResNet block's training convolutions per backend (bench/conv_kernels.py)", "",
             f"{results['started']} · {env['cpu']} · {env['cpus']} CPUs · " + ", ".join(
                 f"{k} {v}" for k, v in {**results["tensorflow"]["versions"], **results["jax"]["versions"]}.items()), "",
             f"Command: `{results['command']}`", "",
             "Batch 256 of 16×16×W, 3×3 merged kernel, one compiled call each, median of "
             f"{results['repeats']} calls (ms, GFLOP/s).", "",
             "| W | convolution | TensorFlow ms | GFLOP/s | JAX ms | GFLOP/s | JAX ÷ TF |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    tf_r, jax_r = results["tensorflow"]["widths"], results["jax"]["widths"]
    for w in tf_r:
        names = list(dict.fromkeys(list(tf_r[w]) + list(jax_r[w])))
        tot = {"tensorflow": 0.0, "jax": 0.0}
        for n in names:
            t, j = tf_r[w].get(n), jax_r[w].get(n)
            cell = lambda r: (f"{r['ms']:.1f} | {r['gflops']:.0f}" if r else "— | —")  # noqa: E731
            ratio = f"{j['ms'] / t['ms']:.2f}" if t and j else "—"
            lines.append(f"| {w} | {n} | {cell(t)} | {cell(j)} | {ratio} |")
            if "XLA's autodiff" not in n:
                tot["tensorflow"] += t["ms"] if t else 0
                tot["jax"] += j["ms"] if j else 0
        lines.append(f"| {w} | **the three, as trained** | {tot['tensorflow']:.1f} | | {tot['jax']:.1f} | | "
                     f"**{tot['jax'] / tot['tensorflow']:.2f}** |")
    return "\n".join(lines)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--widths", default="64,128")
    ap.add_argument("--repeats", type=int, default=9)
    ap.add_argument("--out", default=str(U.RESULTS))
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    widths = [int(w) for w in args.widths.split(",")]
    if args.child:
        child(args.child, widths, args.repeats)
        return 0
    results = {"started": time.strftime("%Y-%m-%d %H:%M"), "repeats": args.repeats,
               "command": "python bench/conv_kernels.py " + " ".join(argv if argv is not None else sys.argv[1:]),
               "environment": {"cpu": U.cpu_model(), "cpus": os.cpu_count(),
                               "TF_ENABLE_ONEDNN_OPTS": os.environ.get("TF_ENABLE_ONEDNN_OPTS")}}
    for backend in ("tensorflow", "jax"):
        parts, error = U.backend_child(__file__, backend, ["--widths", args.widths, "--repeats", str(args.repeats)],
                                       MARK, 1800)
        results[backend] = parts[0] if parts else None
        if results[backend] is None:
            sys.exit(f"the {backend} child failed:\n{error}")
    table = report(results)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "conv_kernels.json").write_text(json.dumps(results, indent=1))
    (out / "conv_kernels.md").write_text(table + "\n")
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
