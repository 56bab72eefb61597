"""`gloro-certify`: certify a saved GloRo model on a test set.

    gloro-certify --model=runs/quickstart/model.keras                # data set from flags.json
    gloro-certify --model=m.keras --dataset=cifar10 --data_dir=~/tensorflow_datasets \\
        --epsilon=0.1411 --bound=sound --output=cert.json

Computes the Lipschitz bound once (`--bound=sound`: the provable upper bound;
`power`: power iteration run to convergence, the estimate behind the published numbers),
the clean logits of every test example with their float32 rounding terms (`--arithmetic`),
and from them clean accuracy, VRA, rejection rate and the certified radius of each
prediction (the float32 network as it computes, TF32 off; docs/soundness.md). Prints a table and writes JSON
(default: `certify.json` beside the model; `--output=` to skip, `--output=-` to print
the JSON instead).

`--attack` adds the PGD accuracy (ℓ2 PGD at ε on the clean logits, inputs kept in
[0, 1]) over the first `--attack_examples` test images; `--lower_bound` an empirical
lower bound on the margin Lipschitz constants and its ratio to the certified K_ij;
`--soundness_check` attacks every certified point among them at its certified radius
(any success is a certification bug and is reported loudly). With `--plots` (default)
`certified_accuracy.png` (the whole curve, from per-example radii) and
`radius_histogram.png` are written beside the JSON.

When `--dataset` is not given, the data set (and `--data_dir`, class subset) recorded in
`flags.json` beside the model by `gloro-train` is used.

Exit status: 0 on success, 2 when the model or the data is missing, 1 for bad flags.
"""
from __future__ import annotations

import json
import os
import sys
import time

from absl import app, flags

FLAGS = flags.FLAGS

QUANTILES = (0.1, 0.25, 0.5, 0.75, 0.9)


class CertifyError(ValueError):
    """A request that cannot run (reported in one line, exit status 2)."""
CURVE = (0.25, 0.5, 1.0, 1.5, 2.0)


def define_flags(fv=FLAGS):
    d = dict(flag_values=fv)
    flags.DEFINE_string("model", None, "Path of the saved model (.keras).", **d)
    flags.DEFINE_string("dataset", None, "Data set (as for gloro-train); default: the one in flags.json "
                        "beside the model.", **d)
    flags.DEFINE_string("data_dir", None, "Data folder (as for gloro-train).", **d)
    flags.DEFINE_float("epsilon", None, "Certification radius; default: the model's epsilon.", lower_bound=0.0, **d)
    flags.DEFINE_enum("bound", "sound", ("sound", "power"), "Lipschitz bound: sound (provable upper "
                      "bound) or power (converged power iteration).", **d)
    flags.DEFINE_enum("arithmetic", "float32", ("float32", "float64", "exact"), "float32: certify the "
                      "network as it computes in float32, rounding included (sound); float64: its "
                      "float64 twin (for float64 deployments); exact: the published exact-arithmetic "
                      "convention, for comparison only.", **d)
    flags.DEFINE_string("output", None, "JSON output path (default: certify.json beside the model; "
                        "'' = none; '-' = print the JSON).", **d)
    flags.DEFINE_integer("batch_size", 256, "Inference batch size.", lower_bound=1, **d)
    flags.DEFINE_integer("test_examples", 0, "Certify only the first N test examples (0 = all).", lower_bound=0, **d)
    flags.DEFINE_integer("subset_classes", None, "Class subset (default: from flags.json).", lower_bound=1, **d)
    flags.DEFINE_integer("subset_seed", None, "Class-subset seed (default: from flags.json, else 2023).", **d)
    flags.DEFINE_boolean("attack", False, "Also report PGD accuracy (l2 PGD at epsilon).", **d)
    flags.DEFINE_integer("attack_steps", 50, "PGD steps.", lower_bound=1, **d)
    flags.DEFINE_integer("attack_restarts", 1, "PGD restarts (random starts after the first).", lower_bound=1, **d)
    flags.DEFINE_integer("attack_examples", 1000, "Test examples used by --attack/--lower_bound/"
                         "--soundness_check (0 = all).", lower_bound=0, **d)
    flags.DEFINE_boolean("lower_bound", False, "Also search an empirical margin-Lipschitz lower bound.", **d)
    flags.DEFINE_boolean("soundness_check", False, "Attack every certified point at its certified radius.", **d)
    flags.DEFINE_boolean("plots", True, "Write certified_accuracy.png and radius_histogram.png.", **d)
    flags.mark_flag_as_required("model", flag_values=fv)


def _train_flags(model_path):
    path = os.path.join(os.path.dirname(os.path.abspath(model_path)), "flags.json")
    if os.path.isfile(path):
        with open(path) as f:
            return json.load(f)
    return {}


def resolve(cfg):
    """Fill dataset/data_dir/subset from flags.json beside the model when not given."""
    cfg = dict(cfg)
    recorded = _train_flags(cfg["model"])
    if cfg.get("dataset") is None:
        if "dataset" not in recorded:
            raise CertifyError("--dataset is required (no flags.json beside the model to take it from)")
        cfg["dataset"] = recorded["dataset"]
        for key in ("data_dir", "subset_classes", "subset_seed"):
            if cfg.get(key) is None:
                cfg[key] = recorded.get(key)
    if cfg.get("subset_seed") is None:
        cfg["subset_seed"] = 2023
    if cfg.get("output") is None:
        cfg["output"] = os.path.join(os.path.dirname(os.path.abspath(cfg["model"])), "certify.json")
    return cfg


def load_model(path):
    import keras

    import gloro_keras  # noqa: F401  (registers the custom objects)
    from gloro_keras.data import DataNotFoundError

    if not os.path.isfile(path):
        raise DataNotFoundError(f"model file not found: {path!r} (pass --model=path/to/model.keras)")
    return keras.saving.load_model(path, compile=False)


def test_certificate(model, cfg, bound, arithmetic="float32"):
    """(margins.MarginCertificate, labels int (N,), info) over the test split."""
    import numpy as np

    from gloro_keras import data

    try:
        _, test, info = data.load(cfg["dataset"], data_dir=cfg.get("data_dir"),
                                  subset_classes=cfg.get("subset_classes"), subset_seed=cfg["subset_seed"])
    except data.DataNotFoundError:
        raise
    except ValueError as e:
        raise CertifyError(str(e)) from None
    if info.num_classes != model.num_classes:
        raise CertifyError(f"{info.name} has {info.num_classes} classes but the model has {model.num_classes}")
    if cfg.get("test_examples"):
        test = test.take(cfg["test_examples"])
    ds = data.make_pipeline(test, cfg["batch_size"], training=False, info=info)
    from gloro_keras.models.margins import MarginCertificate

    parts, labels = [], []
    for x, y in ds.as_numpy_iterator():
        parts.append(model.margin_certificate(x, bound, arithmetic, batch_size=cfg["batch_size"]))
        labels.append(np.asarray(y).reshape(-1))
    return MarginCertificate.concatenate(parts), np.concatenate(labels).astype(np.int64), info


def _stats(values):
    import numpy as np

    v = np.asarray(values, dtype=np.float64)
    out = {"mean": float(v.mean()), "median": float(np.median(v)), "max": float(v.max())}
    for q in QUANTILES:
        out[f"q{int(round(100 * q)):02d}"] = float(np.quantile(v, q))
    return out


def certify_logits(cert, labels, epsilon):
    """Certification statistics from a margins.MarginCertificate and the labels."""
    import numpy as np

    m = cert.num_classes
    pred = cert.predicted
    certified = cert.certify(epsilon)
    radius = cert.radius()
    correct = (pred == labels) & cert.valid
    robust_radius = np.where(correct, radius, 0.0)
    return dict(
        num_examples=int(len(labels)),
        epsilon=float(epsilon),
        clean_acc=float(np.mean(correct)),
        vra=float(np.mean(certified == labels)),
        rejection_rate=float(np.mean(certified == m)),
        certified_fraction=float(np.mean(certified != m)),
        radius=_stats(radius),
        correct_radius=_stats(robust_radius),
        vra_at={f"{c:g}x": float(np.mean(robust_radius > c * epsilon)) for c in CURVE},
    )


def _test_images(cfg, n):
    """The first n test images and labels as numpy (n = 0: all)."""
    import numpy as np

    from gloro_keras import data

    _, test, info = data.load(cfg["dataset"], data_dir=cfg.get("data_dir"),
                              subset_classes=cfg.get("subset_classes"), subset_seed=cfg["subset_seed"])
    if n:
        test = test.take(n)
    xs, ys = [], []
    for x, y in data.make_pipeline(test, cfg["batch_size"], training=False, info=info).as_numpy_iterator():
        xs.append(x)
        ys.append(np.asarray(y).reshape(-1))
    return np.concatenate(xs), np.concatenate(ys).astype(np.int64)


def extra_evaluations(model, cert, labels, cfg, kmat, eps):
    """PGD accuracy, margin-Lipschitz lower bound and soundness self-check (by flags)."""
    import numpy as np

    from gloro_keras.models import margins

    if not (cfg.get("attack") or cfg.get("lower_bound") or cfg.get("soundness_check")):
        return {}
    n = cfg.get("attack_examples") or 0
    x, y = _test_images(cfg, n)
    out = {"attack_examples": int(len(y))}
    radius = cert.radius()[: len(y)]
    cert = cert.certify(eps)[: len(y)]
    out["vra_on_attack_examples"] = float(np.mean(cert == y))
    if cfg.get("attack"):
        from gloro_keras.attacks import pgd_l2

        res = pgd_l2(model.network, x, y, eps, steps=cfg.get("attack_steps", 50),
                     restarts=cfg.get("attack_restarts", 1), clip=(0.0, 1.0), batch_size=cfg["batch_size"])
        out["pgd_accuracy"] = float(res.robust_accuracy)
    if cfg.get("lower_bound"):
        from gloro_keras.attacks import margin_lipschitz_lower_bound

        lb = margin_lipschitz_lower_bound(model.network, x[:64], class_pairs="top2", batch_size=cfg["batch_size"])
        out["margin_lipschitz_lower_bound"] = float(lb.value)
        out["tightness"] = float(np.nanmax(lb.matrix / np.where(kmat > 0, kmat, np.inf)))
    if cfg.get("soundness_check"):
        from gloro_keras.attacks import soundness_check

        idx = np.flatnonzero(cert < model.num_classes)
        rep = soundness_check(model.network, x[idx], cert[idx], radius[idx], batch_size=cfg["batch_size"])
        out["soundness_checked"] = int(rep.num_checked)
        out["soundness_violations"] = int(rep.num_violations)
    return out


def write_plots(cert, labels, eps, folder):
    """certified_accuracy.png and radius_histogram.png in `folder`; returns their paths."""
    import numpy as np

    from gloro_keras.evaluation import plots
    from gloro_keras.models import margins

    os.makedirs(folder, exist_ok=True)
    radius = cert.radius()
    correct = (cert.predicted == labels) & cert.valid
    return {
        "certified_accuracy_png": plots.plot_certified_accuracy(
            radius, correct, os.path.join(folder, "certified_accuracy.png"), epsilon=eps),
        "radius_histogram_png": plots.plot_radius_histogram(
            radius, correct, os.path.join(folder, "radius_histogram.png"), epsilon=eps),
    }


def certify(cfg):
    """Run the certification described by `cfg` (dict of the flag values); returns the report."""
    from gloro_keras.models.margins import check_epsilon

    if cfg.get("epsilon") is not None:
        try:
            cfg = dict(cfg, epsilon=check_epsilon(cfg["epsilon"], "--epsilon"))
        except ValueError as e:
            raise CertifyError(str(e)) from None
    cfg = resolve(cfg)
    started = time.time()
    model = load_model(cfg["model"])
    eps = model.epsilon if cfg.get("epsilon") is None else cfg["epsilon"]
    t0 = time.time()
    bound = cfg["bound"]
    try:
        k = model.lipschitz_bound(bound)
    except (ImportError, NotImplementedError) as e:
        if bound != "sound":
            raise
        print(f"gloro-certify: warning: sound bound unavailable ({e}); using the converged power bound",
              file=sys.stderr)
        bound = "power"
        k = model.lipschitz_bound(bound)
    kmat = model.margin_bound_matrix(bound)
    t_bound = time.time() - t0
    t0 = time.time()
    cert, labels, info = test_certificate(model, cfg, bound, cfg.get("arithmetic") or "float32")
    t_logits = time.time() - t0
    report = dict(model=os.path.abspath(cfg["model"]), dataset=info.name, bound=bound, lipschitz_bound=float(k),
                  arithmetic=cfg.get("arithmetic") or "float32")
    report.update(certify_logits(cert, labels, eps))
    report.update(extra_evaluations(model, cert, labels, cfg, kmat, eps))
    if cfg.get("plots", True):
        out = cfg.get("output")
        folder = os.path.dirname(os.path.abspath(out)) if out and out != "-" else os.path.dirname(os.path.abspath(cfg["model"]))
        report["files"] = write_plots(cert, labels, eps, folder)
    report["seconds"] = dict(logits=t_logits, bound=t_bound, total=time.time() - started)
    return report


def format_report(r):
    lines = [
        f"model            {r['model']}",
        f"data             {r['dataset']} ({r['num_examples']} test examples)",
        f"epsilon          {r['epsilon']:.6g}",
        f"bound            {r['bound']}: K = {r['lipschitz_bound']:.6g} ({r.get('arithmetic', 'float32')} arithmetic)",
        f"clean accuracy   {100 * r['clean_acc']:.2f}%",
        f"VRA              {100 * r['vra']:.2f}%",
        f"rejection rate   {100 * r['rejection_rate']:.2f}%",
        "certified radius " + "  ".join(f"{k} {v:.4g}" for k, v in r["radius"].items()),
        "  (0 if wrong)   " + "  ".join(f"{k} {v:.4g}" for k, v in r["correct_radius"].items()),
        "VRA at eps x     " + "  ".join(f"{k}: {100 * v:.2f}%" for k, v in r["vra_at"].items()),
    ]
    if "attack_examples" in r:
        lines.append(f"on the first {r['attack_examples']} examples: VRA {100 * r['vra_on_attack_examples']:.2f}%")
    if "pgd_accuracy" in r:
        lines.append(f"PGD accuracy     {100 * r['pgd_accuracy']:.2f}%")
    if "margin_lipschitz_lower_bound" in r:
        lines.append(f"Lipschitz lower  {r['margin_lipschitz_lower_bound']:.4g} (max lower/certified K_ij {r['tightness']:.4f})")
    if "soundness_violations" in r:
        flag = "  <-- CERTIFICATION BUG" if r["soundness_violations"] else ""
        lines.append(f"soundness check  {r['soundness_violations']} violations / {r['soundness_checked']} certified points{flag}")
    for name, path in r.get("files", {}).items():
        lines.append(f"wrote {path}")
    return "\n".join(lines)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    from gloro_keras.data import DataNotFoundError

    cfg = {name: FLAGS[name].value for name in
           ("model", "dataset", "data_dir", "epsilon", "bound", "arithmetic", "output", "batch_size", "test_examples",
            "subset_classes", "subset_seed", "attack", "attack_steps", "attack_restarts",
            "attack_examples", "lower_bound", "soundness_check", "plots")}
    try:
        report = certify(cfg)
    except (DataNotFoundError, CertifyError) as e:
        print(f"gloro-certify: error: {e}", file=sys.stderr)
        return 2
    out = resolve(cfg)["output"]
    print(format_report(report), flush=True)
    if out == "-":
        print(json.dumps(report, indent=2))
    elif out:
        with open(out, "w") as f:
            json.dump(report, f, indent=2)
        print(f"wrote {out}")
    return 0


def run(argv=None):
    """Console-script entry point (`gloro-certify`)."""
    from gloro_keras.train._cli import run_absl

    run_absl(main, define_flags, __doc__, argv)


if __name__ == "__main__":
    run()
