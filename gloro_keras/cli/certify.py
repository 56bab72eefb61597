"""`gloro-certify`: certify a saved GloRo model on a test set.

    gloro-certify --model=runs/quickstart/model.keras                # data set from flags.json
    python -m gloro_keras.cli.certify --helpfull
    gloro-certify --model=m.keras --dataset=cifar10 --data_dir=~/tensorflow_datasets \\
        --epsilon=0.1411 --bound=sound --output=cert.json

Computes the Lipschitz bound once (`--bound=sound`: the provable upper bound;
`power`: power iteration run to convergence, the estimate behind the published numbers),
the clean logits of every test example with their float32 rounding terms (`--arithmetic`),
and from them clean accuracy, VRA, rejection rate and the certified radius of each
prediction (the float32 network as it computes, TF32 off; docs/soundness.md). Prints a table and writes JSON
(default: `certify.json` beside the model, or `certify-2.json`, ... : earlier reports are
never overwritten; `--output=` to skip, `--output=-` to print the JSON instead).

`--attack` adds the PGD accuracy (ℓ2 PGD at ε on the clean logits, inputs kept in
[0, 1]) over the first `--attack_examples` test images; `--lower_bound` an empirical
lower bound on the margin Lipschitz constants and its ratio to the certified K_ij;
`--soundness_check` attacks every certified point among them at its certified radius
(any success is a certification bug and is reported loudly). With `--plots` (default)
`<report>_certified_accuracy.png` (the whole curve, from per-example radii) and
`<report>_radius_histogram.png` are written beside the JSON, titled with the model, the
data, ε and the bound.

A model trained with `gloro-train --relaxation=…` (a `RelaxedGloroModel`) also gets its relaxed
VRA (the label lies in a certified top-k' set), the histogram of the largest certified k' per
example, and `<report>_certified_k_histogram.png`; the figures above are then standard
robustness of the same network, for comparison.

When `--dataset` is not given, the data set (and `--data_dir`, class subset) recorded in
`flags.json` beside the model by `gloro-train` is used.

The figures come from `gloro_keras.evaluation.certification_report`; this script parses
the flags, loads the model and the data, and prints and writes the report.

Exit status: 0 on success; 2 (one-line error) when the model or the data is missing or does not
fit (not a .keras file, not a GloroModel, other image shape or class count); 1 for bad flags.
"""
from __future__ import annotations

import json
import os
import sys
import time
import zipfile

import keras
from absl import app, flags

import gloro_keras.compat  # noqa: F401  (registers GloroNet for load_model)
from gloro_keras.models import GloroModel
from gloro_keras.cli.runner import run_absl
from gloro_keras.evaluation.report import RADIUS_QUANTILES, certification_report
from gloro_keras.ops.epsilon import check_epsilon

FLAGS = flags.FLAGS
DEFAULT_SUBSET_SEED = 2023  # gloro_keras.data.DEFAULT_SUBSET_SEED (not imported: see load_test_set)


class CertifyError(ValueError):
    """A request that cannot run (reported in one line, exit status 2)."""


def define_flags(fv=FLAGS):
    """Register the gloro-certify flags on `fv` (a `flags.FlagValues`)."""
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
        cfg["subset_seed"] = DEFAULT_SUBSET_SEED
    if cfg.get("output") is None:
        folder = os.path.dirname(os.path.abspath(cfg["model"]))
        cfg["output"] = os.path.join(folder, free_name(folder) + ".json")
    return cfg


def free_name(folder, stem="certify"):
    """`stem`, or `stem-2`, `stem-3`, ...: the first name no earlier report in `folder` uses
    (its JSON or its plots), so that reports never overwrite each other."""
    n = 1
    while True:
        name = stem if n == 1 else f"{stem}-{n}"
        if not any(os.path.exists(os.path.join(folder, name + suffix))
                   for suffix in (".json", "_certified_accuracy.png", "_radius_histogram.png",
                                  "_certified_k_histogram.png")):
            return name
        n += 1


def load_model(path):
    """The saved GloRo model at `path` (uncompiled).

    Raises:
        DataNotFoundError: no file at `path`.
        CertifyError: the file is not a `.keras` archive (truncated, corrupt, another
            format), cannot be loaded, or holds a model that is not a `GloroModel`.
    """
    from gloro_keras.data import DataNotFoundError  # TensorFlow: see load_test_set

    if not os.path.isfile(path):
        raise DataNotFoundError(f"model file not found: {path!r} (pass --model=path/to/model.keras)")
    if not zipfile.is_zipfile(path):
        raise CertifyError(f"{path} is not a .keras model file (not a zip archive: truncated, corrupt or "
                           "another format?)")
    try:
        model = keras.saving.load_model(path, compile=False)
    except Exception as e:  # Keras reports a damaged archive in many ways
        detail = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise CertifyError(f"cannot load {path}: {type(e).__name__}: {detail[:300]}") from None
    if not isinstance(model, GloroModel):
        raise CertifyError(f"{path} holds a {type(model).__name__}, not a GloroModel: certify a model saved by "
                           "gloro-train, or wrap the network as GloroModel(network, epsilon=...) and save that")
    return model


def load_test_set(cfg, model):
    """(batched test pipeline, DatasetInfo) for `cfg`; CertifyError if it does not fit `model`."""
    # Imported here: gloro_keras.data imports TensorFlow, which --help (and the JAX
    # backend) does not otherwise need.
    from gloro_keras import data

    try:
        _, test, info = data.load(cfg["dataset"], data_dir=cfg.get("data_dir"),
                                  subset_classes=cfg.get("subset_classes"), subset_seed=cfg["subset_seed"],
                                  num_classes=model.num_classes)
    except data.DataNotFoundError:
        raise
    except ValueError as e:
        raise CertifyError(str(e)) from None
    if info.num_classes != model.num_classes:
        raise CertifyError(f"{info.name} has {info.num_classes} classes but the model has {model.num_classes}")
    expected = tuple(model.network.input_shape[1:])
    if tuple(info.image_shape) != expected:
        raise CertifyError(f"{info.name} has images of shape {tuple(info.image_shape)} but the model expects "
                           f"{expected}")
    if cfg.get("test_examples"):
        test = test.take(cfg["test_examples"])
    return data.make_pipeline(test, cfg["batch_size"], training=False), info


def available_bound(model, bound):
    """`bound`, or "power" (with a warning) when the model has no sound bound."""
    if bound != "sound":
        return bound
    try:
        model.lipschitz_bound("sound")  # cached by weights: the report reuses it
    except (ImportError, NotImplementedError) as e:
        print(f"gloro-certify: warning: sound bound unavailable ({e}); using the converged power bound",
              file=sys.stderr)
        return "power"
    return bound


def _radius_summary(mean, median, maximum, quantiles):
    out = {"mean": mean, "median": median, "max": maximum}
    out.update({f"q{int(round(100 * q)):02d}": quantiles[str(q)] for q in RADIUS_QUANTILES})
    return out


def certify(cfg):
    """Run the certification described by `cfg` (dict of the flag values); returns the report."""
    if cfg.get("epsilon") is not None:
        try:
            cfg = dict(cfg, epsilon=check_epsilon(cfg["epsilon"], "--epsilon"))
        except ValueError as e:
            raise CertifyError(str(e)) from None
    started = time.time()
    model = load_model(cfg["model"])  # first: a missing model is the error to report
    cfg = resolve(cfg)
    eps = model.epsilon if cfg.get("epsilon") is None else cfg["epsilon"]
    batches, info = load_test_set(cfg, model)
    t0 = time.time()
    bound = available_bound(model, cfg["bound"])
    t_check = time.time() - t0
    folder, prefix, out = None, "", cfg.get("output")
    if cfg.get("plots", True):
        if out and out != "-":  # the plots go beside the JSON, named after it
            folder = os.path.dirname(os.path.abspath(out))
            prefix = os.path.splitext(os.path.basename(out))[0] + "_"
        else:
            folder = os.path.dirname(os.path.abspath(cfg["model"]))
            prefix = free_name(folder) + "_"
    r = certification_report(
        model, batches, epsilon=eps, bound=bound, compare_bounds=False,
        attack=bool(cfg.get("attack")), attack_steps=cfg.get("attack_steps", 50),
        attack_restarts=cfg.get("attack_restarts", 1), lower_bound=bool(cfg.get("lower_bound")),
        lower_bound_points=64, soundness=bool(cfg.get("soundness_check")), soundness_points=None,
        attack_examples=cfg.get("attack_examples") or None, output_dir=folder, json_name=None,
        batch_size=cfg["batch_size"], arithmetic=cfg.get("arithmetic") or "float32",
        data_name=info.name, file_prefix=prefix,
    )
    report = dict(model=os.path.abspath(cfg["model"]), dataset=info.name, bound=r.bound,
                  lipschitz_bound=r.lipschitz_bound, arithmetic=r.arithmetic, num_examples=r.num_examples,
                  epsilon=float(r.epsilon), clean_acc=r.clean_accuracy, vra=r.vra, rejection_rate=r.rejection_rate,
                  certified_fraction=r.certified_fraction,
                  radius=_radius_summary(r.radius_mean, r.radius_median, r.radius_max, r.radius_quantiles),
                  correct_radius=_radius_summary(r.correct_radius_mean, r.correct_radius_median,
                                                 r.correct_radius_max, r.correct_radius_quantiles),
                  vra_at=r.vra_at)
    if r.relaxation is not None:
        report.update(relaxation=r.relaxation, relaxed_vra=r.relaxed_vra, certified_k_histogram=r.certified_k_histogram)
    if r.attack_examples is not None:
        report.update(attack_examples=r.attack_examples, vra_on_attack_examples=r.vra_on_attack_examples)
    for key in ("pgd_accuracy", "margin_lipschitz_lower_bound", "tightness", "soundness_checked",
                "soundness_violations"):
        if getattr(r, key) is not None:
            report[key] = getattr(r, key)
    report["files"] = dict(r.files)
    if out and out != "-":
        report["files"]["json"] = os.path.abspath(out)
    report["seconds"] = dict(logits=r.seconds[f"certify_{r.bound}"] + r.seconds["data"],
                             bound=t_check + r.seconds[f"bound_{r.bound}"], total=time.time() - started)
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
    if "relaxation" in r:
        lines.insert(6, f"relaxed VRA      {100 * r['relaxed_vra']:.2f}% ({r['relaxation']}: the label is in a "
                        "certified top-k' set)")
        lines.insert(7, "certified k'     " + "  ".join(
            f"{'none' if k == '0' else k}: {v}" for k, v in r["certified_k_histogram"].items()))
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
    from gloro_keras.data import DataNotFoundError  # TensorFlow: see load_test_set
    from gloro_keras.ops.precision import ReducedPrecisionError, check_float32_math

    try:
        check_float32_math()
    except ReducedPrecisionError as e:
        print(f"gloro-certify: error: {e}", file=sys.stderr)
        return 2
    cfg = {name: FLAGS[name].value for name in
           ("model", "dataset", "data_dir", "epsilon", "bound", "arithmetic", "output", "batch_size", "test_examples",
            "subset_classes", "subset_seed", "attack", "attack_steps", "attack_restarts",
            "attack_examples", "lower_bound", "soundness_check", "plots")}
    try:
        report = certify(cfg)
    except (DataNotFoundError, CertifyError) as e:
        print(f"gloro-certify: error: {e}", file=sys.stderr)
        return 2
    print(format_report(report), flush=True)
    out = report["files"].get("json")
    if cfg["output"] == "-":
        print(json.dumps(report, indent=2))
    elif out:
        with open(out, "w") as f:
            json.dump(report, f, indent=2)
    return 0


def run(argv=None):
    """Console-script entry point (`gloro-certify`)."""
    run_absl(main, define_flags, __doc__, argv)


if __name__ == "__main__":
    run()
