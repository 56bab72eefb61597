#!/usr/bin/env python
"""Training speed: GloRo ÷ plain step time (bound_gradient full / last, float32 and mixed
bfloat16), images/s, first step (tracing), jit_compile=True ÷ False, the input pipeline's
images/s against training, and GloRo against the same network in PyTorch timed in this session.

    python bench/training.py --configs L6W64 --repeats 5
    python bench/training.py --quick

Every ratio compares variants built in ONE process and timed side by side after warm-up, in
rounds whose order rotates; the figure is the median of the per-round ratios (with min-max).
Writes bench/results/training.{json,md} (`--name`, `--out`); `bench/run.py` runs this section
with the others and writes the combined report.
"""
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _util as U  # noqa: E402


def add_args(ap):
    ap.add_argument("--xla-configs", default="L6W64", help="configs whose jit_compile=True steps are also timed")
    ap.add_argument("--no-xla", action="store_true")
    ap.add_argument("--pipeline-batches", type=int, default=100)
    ap.add_argument("--no-pipeline", action="store_true", help="skip the input-pipeline throughput")
    ap.add_argument("--torch-python", default=None,
                    help="Python with torch for the in-session PyTorch reference (default: $TORCH_PYTHON, "
                         "else this interpreter if it has torch; 'none' skips it)")


QUICK = {"repeats": 3, "steps": 1, "pipeline_batches": 20, "no_xla": True}


# -- training steps ------------------------------------------------------------------------
def run(L, W, x, y, args, log, torch=None):
    """Train steps of all variants side by side; with `torch` (a `TorchChild`), the PyTorch
    reference's steps of the same config join the same rounds. Returns (result dict, models)."""
    variants = ["plain", "gloro_full", "gloro_last"]
    if not args.no_bf16:
        variants += ["plain_bf16", "gloro_full_bf16"]
    if not args.no_xla and f"L{L}W{W}" in args.xla_configs.upper().split(","):
        variants += ["plain_xla", "gloro_full_xla"]
    models, first, errors = U.warm_models(variants, L, W, x, y, log)
    fns = {v: (lambda m=m: m.train_on_batch(x, y)) for v, m in models.items()}
    cfg = f"L{L}W{W}"
    if torch is not None:
        fns.update(torch.join(cfg, not args.no_bf16))
    times = U.round_robin(fns, args.repeats, calls=args.steps)
    if torch is not None:
        torch.collect(cfg, {k: times.pop(k) for k in list(times) if k.startswith(TorchChild.PREFIX)})
    res = {"variants": {}, "errors": errors, "rounds": args.repeats, "steps_per_round": args.steps}
    for v, ts in times.items():
        med = U.med(ts["wall"])
        res["variants"][v] = {
            **first[v],
            "step_s_median": med,
            "step_s_all": ts["wall"],
            "step_cpu_s_median": U.med(ts["cpu"]),
            "step_cpu_s_all": ts["cpu"],
            "images_per_s": U.BATCH / med,
            "images_per_s_fastest_run": U.BATCH / min(ts["wall"]),
            "tracing_overhead_s": first[v]["first_step_s"] - med,
        }
    pairs = [("gloro_full", "plain"), ("gloro_last", "plain"), ("gloro_full_bf16", "plain_bf16"),
             ("gloro_full_bf16", "gloro_full"), ("plain_bf16", "plain"), ("plain_xla", "plain"),
             ("gloro_full_xla", "gloro_full"), ("gloro_full_xla", "plain_xla")]
    res["ratios"] = {f"{a}/{b}": U.paired(times[a], times[b]) for a, b in pairs if a in times and b in times}
    for g, tv in U.TORCH_GLORO.items():  # PyTorch GloRo step ÷ ours with the same bound gradient
        best = torch.best_gloro(cfg, tv) if torch is not None and f"gloro_{g}" in times else None
        if best:  # round by round
            res["ratios"][f"torch_{tv}/gloro_{g}"] = dict(U.paired(best[1], times[f"gloro_{g}"]),
                                                         torch_format=best[0])
    if "gloro_full" in models:
        res["macs"] = U.flop_floor(models["gloro_full"])
    for k, p in res["ratios"].items():
        log(f"  {k}: {U.spread(p)}")
    return res, models


# -- input pipeline ------------------------------------------------------------------------
def run_pipeline(args, log):
    """images/s of make_pipeline(load(cifar10-jpeg.npz)[0], 256, training=True) alone."""
    from gloro_keras import data

    src, tmp = str(U.DATA), None
    if not U.DATA.is_file():
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
        ds = data.make_pipeline(train_ds, U.BATCH, training=True, seed=0)
        rates = [data.pipeline_throughput(ds, num_batches=args.pipeline_batches, warmup=5) for _ in range(3)]
    finally:
        if tmp is not None:
            os.unlink(tmp.name)
    res = {"source": src if tmp is None else "synthetic uint8 arrays (cifar10-jpeg.npz not found)",
           "augmentation": str(info.augmentation), "batches_per_run": args.pipeline_batches,
           "images_per_s_all": rates, "images_per_s": U.med(rates)}
    log(f"  pipeline: {res['images_per_s']:,.0f} img/s")
    return res


# -- PyTorch in the same session -------------------------------------------------------------
def torch_python(arg):
    """Interpreter for bench/torch_reference.py: --torch-python, $TORCH_PYTHON, or this one if it
    has torch; None when there is none (or 'none')."""
    if arg == "none":
        return None
    if arg or os.environ.get("TORCH_PYTHON"):
        return arg or os.environ["TORCH_PYTHON"]
    return sys.executable if importlib.util.find_spec("torch") else None


class TorchChild:
    """`bench/torch_reference.py --serve` in a child process, whose steps join this process's
    rotating rounds (`run`), so load on the shared host weighs on both frameworks alike.

    Each step is timed in the child (its wall and CPU time of the step alone, not the pipe).
    `results` has the shape of `torch_reference.py`'s JSON: {"torch", "threads", "configs":
    {cfg: {format: {variant: statistics}, "gloro/plain": …}}, "command"}.
    """

    PREFIX = "torch/"
    FORMATS = ("nchw", "channels_last")

    def __init__(self, python, log):
        import tempfile

        self.command = [python, str(Path(__file__).resolve().parent / "torch_reference.py"), "--serve"]
        self.log = log
        self._stderr = tempfile.TemporaryFile(mode="w+")
        self.proc = subprocess.Popen(self.command, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=self._stderr, text=True, cwd=str(U.REPO))
        self.results = {"command": " ".join(self.command), "alternated": True, "configs": {}}
        self._first, self._times, self.failed = {}, {}, None

    def request(self, **req):
        try:
            self.proc.stdin.write(json.dumps(req) + "\n")
            self.proc.stdin.flush()
            line = self.proc.stdout.readline()
        except OSError:  # the child is gone
            line = ""
        if not line:
            self._stderr.seek(0)
            raise RuntimeError(f"{' '.join(self.command)} exited ({self.proc.wait()}): {self._stderr.read()[-600:]}")
        reply = json.loads(line)
        if "error" in reply:
            raise RuntimeError(f"PyTorch reference: {reply['error']}")
        return reply

    def _step(self, key):
        """One PyTorch step as {"wall", "cpu"}; after a failure NaN, and `failed` says why, so
        the rounds of this process's own steps carry on."""
        if self.failed is None:
            try:
                return self.request(op="step", step=key)
            except RuntimeError as e:
                self.failed = str(e)
                self.log(f"  PyTorch reference FAILED: {e}")
        return {"wall": float("nan"), "cpu": float("nan")}

    def join(self, cfg, bf16):
        """Build and warm cfg's PyTorch steps; returns {name: step} for `U.round_robin`."""
        try:
            r = self.request(op="setup", config=cfg, formats=list(self.FORMATS), bf16=bf16)
        except RuntimeError as e:
            self.failed = self.failed or str(e)
            self.log(f"  PyTorch reference FAILED: {e}")
            self.results["configs"][cfg] = {"error": self.failed}
            return {}
        self.results.update(torch=r["torch"], threads=r["threads"], device=r["device"])
        self._first[cfg] = r["first_step_s"]
        self.log(f"  PyTorch reference: {', '.join(r['steps'])} (first step " +
            ", ".join(f"{U.fmt(t)}s" for t in r["first_step_s"].values()) + ")")
        return {self.PREFIX + k: (lambda k=k: self._step(k)) for k in r["steps"]}

    def collect(self, cfg, times):
        """Statistics of cfg's PyTorch steps from `round_robin` times keyed PREFIX + format/variant."""
        if self.failed is not None:
            self.results["configs"][cfg] = {"error": self.failed}
            return
        by_format = {}  # {format: {variant: round_robin times}}
        for key, t in times.items():
            fmt, variant = key[len(self.PREFIX):].split("/")
            by_format.setdefault(fmt, {})[variant] = t
            self._times.setdefault(cfg, {})[f"{fmt}/{variant}"] = t
        out = {fmt: U.step_statistics({v: t["wall"] for v, t in ts.items()},
                                      {v: self._first[cfg][f"{fmt}/{v}"] for v in ts},
                                      {v: t["cpu"] for v, t in ts.items()})
               for fmt, ts in by_format.items()}
        self.results["configs"][cfg] = out
        line = ", ".join(f"{fmt} " + " / ".join(f"{v} {d['images_per_s']:.0f}" for v, d in r.items()
                                                  if isinstance(d, dict)) + " img/s" for fmt, r in out.items())
        self.log(f"  PyTorch reference {cfg}: {line}")

    def best_gloro(self, cfg, variant="gloro"):
        """(format, round_robin times) of the faster PyTorch GloRo step `variant` ("gloro": bound
        gradient through every step, "gloro_last": the final one) of cfg, or None."""
        fmts = {f: r[variant] for f, r in self.results["configs"].get(cfg, {}).items()
                if isinstance(r, dict) and variant in r}
        if not fmts:
            return None
        f = max(fmts, key=lambda k: fmts[k]["images_per_s"])
        return f, self._times[cfg][f"{f}/{variant}"]

    def close(self):
        """Stop the child; returns `results`."""
        try:
            self.proc.stdin.write(json.dumps({"op": "quit"}) + "\n")
            self.proc.stdin.close()
        except OSError:  # already gone
            pass
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self._stderr.close()
        return self.results


def start_torch(args, log):
    """(a running `TorchChild`, its `results`), or (None, {"skipped": why}) when there is no
    interpreter with torch."""
    python = torch_python(args.torch_python)
    if python is None:
        why = ("skipped: no interpreter with torch (--torch-python none, or torch not installed here and "
               "neither --torch-python nor $TORCH_PYTHON given); no PyTorch comparison in this report")
        log(f"  PyTorch reference {why}")
        return None, {"skipped": why}
    log(f"  PyTorch reference ({python}, alternating with this process's steps)")
    child = TorchChild(python, log)
    return child, child.results


def torch_best(results, cfg, variant="gloro"):
    """(memory format, its result) of the fastest PyTorch `variant` step for cfg, or None."""
    fmts = results.get("torch_reference", {}).get("configs", {}).get(cfg)
    fmts = {f: r for f, r in (fmts or {}).items() if isinstance(r, dict) and variant in r}
    if not fmts:
        return None
    return max(fmts.items(), key=lambda kv: kv[1][variant]["images_per_s"])


# -- report ----------------------------------------------------------------------------------
def summary_rows(cfg, results):
    rows = []
    tr = results["configs"].get(cfg, {}).get("training", {})
    v, rat = tr.get("variants", {}), tr.get("ratios", {})
    for g in ("full", "last"):
        if f"gloro_{g}/plain" in rat:
            default = g == U.DEFAULT_GRADIENT  # the bar is on the default; the other is an option
            rows.append(U.ratio_row(cfg, f"train step GloRo ÷ plain, bound_gradient={g}" + (" (default)" if default else ""),
                                    rat[f"gloro_{g}/plain"], "train_ratio" if default else None))
    if "gloro_full_bf16/plain_bf16" in rat:
        rows.append(U.ratio_row(cfg, "train step GloRo ÷ plain, both mixed bfloat16 (train_dtype=bfloat16, full)",
                                rat["gloro_full_bf16/plain_bf16"], "train_ratio"))
        rows.append(U.ratio_row(cfg, "GloRo (full) step, bfloat16 ÷ float32", rat["gloro_full_bf16/gloro_full"]))
    for label, keys in (("train images/s (plain, GloRo full, GloRo last)", ("plain", "gloro_full", "gloro_last")),
                        ("train images/s bfloat16 (plain, GloRo full)", ("plain_bf16", "gloro_full_bf16"))):
        keys = [k for k in keys if k in v]
        if keys:
            rows.append(U.text_row(cfg, label, ", ".join(U.fmt(v[k]["images_per_s"]) for k in keys),
                                   ", ".join(U.fmt(v[k]["images_per_s_fastest_run"]) for k in keys),
                                   "CPU s/step " + ", ".join(U.fmt(v[k]["step_cpu_s_median"]) for k in keys)))
    for g, tv in U.TORCH_GLORO.items():
        if f"torch_{tv}/gloro_{g}" in rat:
            p = rat[f"torch_{tv}/gloro_{g}"]
            rows.append(U.ratio_row(cfg, f"PyTorch GloRo step ÷ GloRo step, both bound_gradient={g}, float32, per "
                                         f"round ({p['torch_format']}; the steps alternate)", p,
                                    "speedup_vs_pytorch" if g == U.DEFAULT_GRADIENT else None))
    best = torch_best(results, cfg)
    for g, tv in (("gloro_full", "gloro"), ("gloro_last", "gloro_last"), ("gloro_full_bf16", "gloro")):
        tbest = torch_best(results, cfg, tv)
        if tbest and g in v:
            fmt, tg = tbest[0], tbest[1][tv]
            fast = v[g]["images_per_s_fastest_run"] / tg["images_per_s_fastest_run"]
            rows.append(U.value_row(cfg, f"{g} images/s ÷ PyTorch {tv} in this session (same net, {fmt}, "
                                    f"{tg['images_per_s']:.0f} img/s)", v[g]["images_per_s"] / tg["images_per_s"],
                                    U.fmt(fast), "speedup_vs_pytorch" if g == U.GLORO else None, fast))
    if best:
        fmt, t = best
        if "plain" in v:
            rows.append(U.value_row(cfg, f"plain images/s ÷ PyTorch plain in this session ({fmt}, "
                                    f"{t['plain']['images_per_s']:.0f} img/s)",
                                    v["plain"]["images_per_s"] / t["plain"]["images_per_s"]))
    skipped = results.get("torch_reference", {}).get("skipped")
    if skipped and v:
        rows.append(U.text_row(cfg, "images/s ÷ PyTorch in this session", "not measured: no torch (see the "
                               "PyTorch section)"))
    best16 = torch_best(results, cfg, "gloro_bf16")
    if best16 and "gloro_full_bf16" in v:
        fmt, t = best16
        tg, g = t["gloro_bf16"], v["gloro_full_bf16"]
        fast = g["images_per_s_fastest_run"] / tg["images_per_s_fastest_run"]
        rows.append(U.value_row(cfg, f"gloro_full_bf16 images/s ÷ PyTorch GloRo with bfloat16 autocast in this "
                                f"session ({fmt}, {tg['images_per_s']:.0f} img/s)",
                                g["images_per_s"] / tg["images_per_s"], U.fmt(fast), "speedup_vs_pytorch", fast))
    pipe = results.get("pipeline", {}).get("images_per_s")
    if pipe and "gloro_full" in v:
        a, b = pipe / v["gloro_full"]["images_per_s"], pipe / v["gloro_full"]["images_per_s_fastest_run"]
        rows.append(U.value_row(cfg, "input pipeline img/s ÷ GloRo (full) train img/s", a, U.fmt(b),
                                "pipeline_ratio", b))
    if v:
        rows.append(U.text_row(cfg, "first train step incl. tracing (s)",
                               ", ".join(f"{k} {U.fmt(d['first_step_s'])}" for k, d in v.items())))
    for key, label in (("plain_xla/plain", "jit_compile=True ÷ False, plain step"),
                       ("gloro_full_xla/gloro_full", "jit_compile=True ÷ False, GloRo (full) step")):
        if key in rat:
            rows.append(U.ratio_row(cfg, label, rat[key], verdict=True))
    for key, err in tr.get("errors", {}).items():
        rows.append(U.text_row(cfg, f"{key} failed", err[:120]))
    return rows


def details(results):
    lines, det = [], []
    for cfg, r in results["configs"].items():
        for v, d in r.get("training", {}).get("variants", {}).items():
            det.append([cfg, v, U.fmt(1e3 * d["step_s_median"]), U.fmt(1e3 * min(d["step_s_all"])),
                        U.fmt(1e3 * d["step_cpu_s_median"]), U.fmt(d["images_per_s"]),
                        U.fmt(d["images_per_s_fastest_run"]), U.fmt(d["first_step_s"]), U.fmt(d["build_s"])])
    if det:
        lines += ["", "## Training steps", "",
                  U.md_table(["config", "variant", "step ms (median)", "step ms (fastest)", "CPU ms/step (median)",
                              "img/s (median)", "img/s (fastest)", "first step s", "build s"], det)]
    tr = results.get("torch_reference")
    if tr and "configs" in tr:
        rows = [[cfg, fmt, v, U.fmt(r[v]["images_per_s"]), U.fmt(r[v]["images_per_s_fastest_run"]),
                 U.fmt(1e3 * r[v]["step_s_median"]), U.fmt(r[v]["first_step_s"]),
                 U.fmt(r.get(f"{v}/{v.replace('gloro', 'plain')}", "")) if v.startswith("gloro") else ""]
                for cfg, fmts in tr["configs"].items() for fmt, r in fmts.items() if isinstance(r, dict)
                for v in ("plain", "gloro", "plain_bf16", "gloro_bf16") if v in r]
        lines += ["", f"## PyTorch reference in this session (torch {tr.get('torch')}, {tr.get('threads')} threads)", "",
                  "`bench/torch_reference.py`: the same network and steps written in PyTorch from the paper "
                  "(not the authors' code, which is not available offline); 'gloro' = EMMA + 10 power "
                  "iterations with autograd through all of them, like `bound_gradient=full`; 'gloro_last' = the "
                  "same with the iterations run without autograd and the gradient through the final ‖A u‖ "
                  "only, like `bound_gradient=last` and the authors' released code (which detaches the "
                  "iterate after the loop). " + (
                  "Run in a child process (`--serve`) whose steps join the same rotating rounds as this "
                  "process's." if tr.get("alternated") else "Run in a child process, before this process's steps."), "",
                  U.md_table(["config", "memory format", "variant", "img/s (median)", "img/s (fastest)",
                              "step ms (median)", "first step s", "GloRo ÷ plain (median of rounds)"], rows)]
    elif tr and "skipped" in tr:
        lines += ["", "## PyTorch reference in this session", "", f"PyTorch reference {tr['skipped']}."]
    elif tr:
        lines += ["", "## PyTorch reference in this session", "", f"failed: `{tr.get('error', '')[-300:]}`"]
    if "pipeline" in results:
        p = results["pipeline"]
        lines += ["", "## Input pipeline", "",
                  f"`make_pipeline(train, {U.BATCH}, training=True, seed=0)` on {p['source']} "
                  f"({p['augmentation']}): **{p['images_per_s']:,.0f} images/s** "
                  f"(runs: {', '.join(f'{x:,.0f}' for x in p['images_per_s_all'])})."]
    return lines


def main(argv=None):
    args, configs, s = U.start_section(__doc__, add_args, argv, dict(QUICK, configs="L6W64"))
    results = {"meta": s.meta, "configs": {}}
    child, results["torch_reference"] = start_torch(args, s.log)
    tf, keras = U.tf_keras()
    s.meta["environment"] = U.environment(tf, keras)
    xtr, ytr, _, s.meta["data"] = U.load_arrays()
    x, y = tf.constant(xtr), tf.constant(ytr)
    for cfg in configs:
        s.mark(f"{cfg} training")
        results["configs"][cfg] = {"training": run(*U.parse_config(cfg), x, y, args, s.log, child)[0]}
        keras.backend.clear_session()
    if child:
        child.close()
    if not args.no_pipeline:
        s.mark("pipeline")
        results["pipeline"] = run_pipeline(args, s.log)
    return U.finish_section(s, results, [row for cfg in configs for row in summary_rows(cfg, results)],
                            [details(results)], args, "training", "gloro-keras training")


if __name__ == "__main__":
    sys.exit(main())
