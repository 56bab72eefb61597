"""`gloro-train`: train a GloRo LiResNet (or a ConvNet / ResNet ablation) with absl flags.

    gloro-train --preset=quickstart --model_dir=runs/quickstart          # offline, minutes
    gloro-train --preset=table1_cifar10_l6w128 --data_dir=~/tensorflow_datasets --model_dir=runs/c10
    gloro-train --dataset=path/to/data.npz --depth=12 --width=128 --epochs=200 --model_dir=runs/x
    python -m gloro_keras.train --helpfull

Configuration = the paper's CIFAR-10 L6W128 recipe (defaults) ← `--preset` ← flags given
explicitly on the command line. Writes into `--model_dir`:

    model.keras      the trained GloroModel (bound cache: the final converged bound)
    metrics.csv      one row per epoch (keras CSVLogger; train + val clean_acc, vra,
                     rejection_rate, loss, lipschitz_bound, epsilon_train, lr, ...)
    metrics.json     the same history plus the final test results
    flags.json       the resolved configuration (and which flags were explicit)
    backup/          keras BackupAndRestore state while training (deleted at the end):
                     re-running the same command after a crash resumes from the last
                     finished epoch
    tensorboard/     with --tensorboard

Exit status: 0 on success, 2 (one-line error) when the data is missing or the configuration
cannot run (e.g. batch larger than the data set), 1 for bad flags (absl usage error).
"""
from __future__ import annotations

import json
import os
import re
import shutil
import sys
import time

from absl import app, flags

from gloro_keras.train import presets as presets_lib
from gloro_keras.train.distribute import make_strategy, multi_worker_fit_fixes, task_info

FLAGS = flags.FLAGS

ARCHS = ("liresnet", "resnet", "convnet")
STRATEGIES = ("default", "mirrored", "multi_worker")
_LOSS_RE = re.compile(r"^(emma|gloro_crossentropy|ce|trades([._:][0-9.eE+-]+)?)$")

# The paper's CIFAR-10 L6W128 recipe: what you get without --preset.
DEFAULTS = dict(
    presets_lib.RECIPE,
    dataset="cifar10",
    data_dir=None,
    depth=6,
    width=128,
    dense_width=None,
    epochs=800,
    steps_per_epoch=None,
    batch_size=256,
    epsilon=36 / 255,
    power_iterations=10,
    bound_gradient="full",
    train_dtype="float32",
    model_dir=None,
    strategy="default",
    seed=0,
    subset_classes=None,
    subset_seed=2023,
    shuffle=True,
    eval_every=1,
    test_examples=0,
    bound="sound",
    threat_examples=0,
    tensorboard=False,
    resume=True,
    verbose=1,
)
CONFIG_KEYS = tuple(DEFAULTS)
IMAGENET_TRAIN_SIZE = 1_281_167


class ConfigError(ValueError):
    """A configuration that cannot run (reported in one line, exit status 2)."""


def define_flags(fv=FLAGS):
    """Register the gloro-train flags on `fv` (a `flags.FlagValues`)."""
    d = dict(flag_values=fv)
    flags.DEFINE_string("preset", None, "Named configuration (`--list_presets`); explicit flags override it.", **d)
    flags.DEFINE_bool("list_presets", False, "Print the preset names and exit.", **d)
    flags.DEFINE_string("dataset", None, "quickstart | mnist | cifar10 | cifar100 | tiny_imagenet | "
                        "imagenet2012 | imagenet_folder | path/to/data.npz. Default: cifar10.", **d)
    flags.DEFINE_string("data_dir", None, "Where the data set is (tfds dir, Tiny-ImageNet folder, ...).", **d)
    flags.DEFINE_enum("arch", None, ARCHS, "Block type. Default: liresnet.", **d)
    flags.DEFINE_integer("depth", None, "L, the number of blocks. Default: 6.", lower_bound=0, **d)
    flags.DEFINE_integer("width", None, "W, the backbone width (even). Default: 128.", lower_bound=2, **d)
    flags.DEFINE_integer("dense_width", None, "Width of the dense neck (default 512; 2048 for >128 px).",
                         lower_bound=2, **d)
    flags.DEFINE_integer("epochs", None, "Training epochs T. Default: 800.", lower_bound=1, **d)
    flags.DEFINE_integer("steps_per_epoch", None, "Batches per epoch (default: one pass over the data); "
                         "set it for quick runs.", lower_bound=1, **d)
    flags.DEFINE_integer("batch_size", None, "Global batch size. Default: 256.", lower_bound=1, **d)
    flags.DEFINE_float("epsilon", None, "Test l2 radius ε (input units in [0,1]). Default: 36/255.",
                       lower_bound=0.0, **d)
    flags.DEFINE_string("eps_schedule", None, "Training-ε schedule: paper | constant | linear | log | "
                        "'[0.01]-log-[50%:1.1]' (multiples of ε). Default: paper.", **d)
    flags.DEFINE_string("loss", None, "emma | gloro_crossentropy (alias ce) | trades | trades.<λ>. "
                        "Default: emma.", **d)
    flags.DEFINE_float("lr", None, "Peak learning rate of AdamW. Default: 1e-3.", lower_bound=0.0, **d)
    flags.DEFINE_float("weight_decay", None, "AdamW weight decay. Default: 1e-4.", lower_bound=0.0, **d)
    flags.DEFINE_float("clip_norm", None, "Global gradient-norm clipping (0 = off). Default: 3.",
                       lower_bound=0.0, **d)
    flags.DEFINE_float("warmup_epochs", None, "Linear LR warm-up epochs, then cosine decay. Default: 20.",
                       lower_bound=0.0, **d)
    flags.DEFINE_integer("power_iterations", None, "Power iterations per training step. Default: 10.",
                         lower_bound=1, **d)
    flags.DEFINE_enum("bound_gradient", None, ("full", "last"), "Back-propagate through every power "
                      "iteration of a step (full) or only the final ||A u|| (last). Default: full.", **d)
    flags.DEFINE_enum("train_dtype", None, ("float32", "bfloat16"), "Compute dtype of the training forward/"
                      "backward pass (bfloat16 = mixed precision); bounds, evaluation and certification stay "
                      "float32. Default: float32.", **d)
    flags.DEFINE_string("model_dir", None, "Output folder. Default: runs/<preset or dataset>_<arch>_L<d>W<w>.", **d)
    flags.DEFINE_enum("strategy", None, STRATEGIES, "tf.distribute strategy: default | mirrored (all local "
                      "devices) | multi_worker (MultiWorkerMirroredStrategy, from TF_CONFIG).", **d)
    flags.DEFINE_integer("seed", None, "Random seed (weights, shuffling, augmentation). Default: 0.", **d)
    flags.DEFINE_integer("subset_classes", None, "Keep this many classes (ImageNet subsets, Table 7).",
                         lower_bound=1, **d)
    flags.DEFINE_integer("subset_seed", None, "Class-shuffle seed for --subset_classes. Default: 2023.", **d)
    flags.DEFINE_bool("augment", None, "Random crop (+ flip for colour images). Default: true.", **d)
    flags.DEFINE_bool("shuffle", None, "Shuffle the training data. Default: true.", **d)
    flags.DEFINE_integer("eval_every", None, "Evaluate on the test split every N epochs (and after the last). "
                         "Default: 1.",
                         lower_bound=1, **d)
    flags.DEFINE_integer("test_examples", None, "Evaluate on the first N test examples only (0 = all).",
                         lower_bound=0, **d)
    flags.DEFINE_enum("bound", None, ("sound", "power"), "Bound cached for evaluation: sound (provable "
                      "upper bound) or power (converged power iteration). Default: sound.", **d)
    flags.DEFINE_integer("threat_examples", None, "Track how often the threatening class changes (Figure 3) "
                         "on this many training examples (0 = off).", lower_bound=0, **d)
    flags.DEFINE_bool("tensorboard", None, "Write TensorBoard logs to <model_dir>/tensorboard.", **d)
    flags.DEFINE_bool("resume", None, "Back up every epoch and resume an interrupted run. Default: true.", **d)
    flags.DEFINE_integer("verbose", None, "Keras fit verbosity (0 silent, 1 progress bar, 2 one line/epoch).",
                         lower_bound=0, upper_bound=2, **d)

    def _check_loss(v):
        return v is None or bool(_LOSS_RE.match(v.strip().lower()))

    def _check_preset(v):
        return v is None or v in presets_lib.PRESETS

    def _check_schedule(v):
        if v is None:
            return True
        from gloro_keras.train.schedules import EpsilonSchedule

        try:
            EpsilonSchedule(v)
        except (ValueError, TypeError) as e:
            raise flags.ValidationError(str(e))
        return True

    flags.register_validator("loss", _check_loss, "must be emma, gloro_crossentropy (ce), trades or trades.<λ>",
                             flag_values=fv)
    flags.register_validator("preset", _check_preset, "unknown preset; `--list_presets` prints the names",
                             flag_values=fv)
    flags.register_validator("eps_schedule", _check_schedule, flag_values=fv)
    flags.register_validator("width", lambda w: w is None or w % 2 == 0,
                             "must be even (MinMax pairs channels)", flag_values=fv)


def config_from_flags(fv=FLAGS):
    """The resolved configuration: DEFAULTS ← preset ← explicitly given flags."""
    cfg = dict(DEFAULTS)
    preset = fv["preset"].value
    if preset:
        cfg.update(presets_lib.get_preset(preset))
    explicit = []
    for key in CONFIG_KEYS:
        flag = fv[key]
        if flag.present or flag.value is not None:
            cfg[key] = flag.value
            explicit.append(key)
    cfg["preset"] = preset
    cfg["explicit_flags"] = explicit
    return validate_config(cfg)


def validate_config(cfg):
    cfg = dict(cfg)
    if cfg["loss"] == "ce":
        cfg["loss"] = "gloro_crossentropy"
    if cfg["width"] % 2:
        raise ConfigError(f"width must be even; got {cfg['width']}")
    from gloro_keras.models.margins import check_epsilon

    try:
        cfg["epsilon"] = check_epsilon(cfg["epsilon"], "--epsilon")
    except ValueError as e:
        raise ConfigError(str(e)) from None
    if cfg["model_dir"] is None:
        stem = cfg.get("preset") or os.path.splitext(os.path.basename(str(cfg["dataset"])))[0]
        cfg["model_dir"] = os.path.join("runs", f"{stem}_{cfg['arch']}_L{cfg['depth']}W{cfg['width']}")
    return cfg


# --------------------------------------------------------------------------------------


def build_model(cfg, num_classes, input_shape):
    import gloro_keras as gk

    return gk.GloroLiResNet(
        L=cfg["depth"], W=cfg["width"], num_classes=num_classes, input_shape=tuple(input_shape),
        epsilon=cfg["epsilon"], dense_width=cfg["dense_width"], power_iterations=cfg["power_iterations"],
        bound_gradient=cfg["bound_gradient"], block=cfg["arch"], train_dtype=cfg["train_dtype"],
    )


def make_optimizer(cfg, steps_per_epoch):
    import keras

    from gloro_keras.train.schedules import WarmupCosine

    total = max(1, int(cfg["epochs"] * steps_per_epoch))
    warmup = int(round(cfg["warmup_epochs"] * steps_per_epoch))
    schedule = WarmupCosine(cfg["lr"], total_steps=total, warmup_steps=min(warmup, total))
    clip = cfg["clip_norm"] or None
    if cfg["strategy"] != "default" and clip:
        # Keras clips per replica, before the all-reduce; this one clips the sum.
        from gloro_keras.train.optimizers import AdamW
    else:
        AdamW = keras.optimizers.AdamW  # noqa: N806
    return AdamW(learning_rate=schedule, weight_decay=cfg["weight_decay"], global_clipnorm=clip)


def compile_model(model, cfg, steps_per_epoch):
    model.compile(optimizer=make_optimizer(cfg, steps_per_epoch), loss=cfg["loss"],
                  metrics=["clean_acc", "vra", "rejection_rate"])
    return model


def load_data(cfg):
    """(train_ds, test_ds, info, steps_per_epoch); raises DataNotFoundError."""
    from gloro_keras import data

    try:
        train_raw, test_raw, info = data.load(
            cfg["dataset"], data_dir=cfg["data_dir"], subset_classes=cfg["subset_classes"],
            subset_seed=cfg["subset_seed"], seed=cfg["seed"])
    except data.DataNotFoundError:
        raise
    except ValueError as e:  # unknown name, malformed .npz, impossible subset, ...
        raise ConfigError(str(e)) from None
    bs = cfg["batch_size"]
    if cfg["shuffle"]:
        train = data.make_pipeline(train_raw, bs, training=True, augment=cfg["augment"], seed=cfg["seed"], info=info)
    elif cfg["augment"]:
        # augmentation without shuffling: the training pipeline with a 1-element buffer
        train = data.make_pipeline(train_raw, bs, training=True, augment=True, seed=cfg["seed"],
                                   shuffle_buffer=1, info=info)
    else:
        train = data.make_pipeline(train_raw, bs, training=False, drop_remainder=True, info=info)
    steps = cfg["steps_per_epoch"]
    if steps is None and info.train_size is None and cfg["subset_classes"] and cfg["dataset"] == "imagenet2012":
        # tfds ImageNet class subsets do not know their size without a full pass: use the
        # average class size (1 281 167 / 1000 training images) and repeat the data.
        steps = max(1, int(IMAGENET_TRAIN_SIZE * cfg["subset_classes"] / 1000) // bs)
        print(f"gloro-train: {cfg['subset_classes']}-class ImageNet subset: ~{steps} steps per epoch "
              "(estimated; set --steps_per_epoch to override)", flush=True)
        train = train.repeat()
    elif steps is None:
        if info.train_size is None:
            raise ConfigError(f"the size of {info.name} is unknown: pass --steps_per_epoch")
        steps = info.train_size // bs
        if steps < 1:
            raise ConfigError(f"batch_size {bs} is larger than the training set ({info.train_size})")
    else:
        train = train.repeat()
    test_raw_limited = test_raw.take(cfg["test_examples"]) if cfg["test_examples"] else test_raw
    test = data.make_pipeline(test_raw_limited, min(bs, 1024), training=False, info=info)
    return train, test, info, int(steps), train_raw


def _sample_images(ds_raw, n):
    import numpy as np

    xs = [x for x, _ in ds_raw.dataset.take(n).batch(n).as_numpy_iterator()]
    return np.concatenate(xs) if xs else None


def eval_epochs(epochs, every):
    """1-based epochs after which to evaluate: every `every`-th and the last."""
    return [e for e in range(1, epochs + 1) if e % every == 0 or e == epochs]


def make_callbacks(cfg, model_dir, steps_per_epoch, train_raw=None):
    import keras

    from gloro_keras.train.callbacks import (
        ConvergeBounds,
        EpsilonScheduler,
        LearningRateLogger,
        ThreateningClassTracker,
        VRALogger,
    )

    cbs = [
        EpsilonScheduler(cfg["epsilon"], total_epochs=cfg["epochs"], schedule=cfg["eps_schedule"],
                         steps_per_epoch=steps_per_epoch),
        ConvergeBounds(bound=cfg["bound"]),
    ]
    if cfg["threat_examples"] and train_raw is not None:
        cbs.append(ThreateningClassTracker(_sample_images(train_raw, cfg["threat_examples"])))
    cbs.append(LearningRateLogger())
    cbs.append(VRALogger())
    # a resumed run (backup present) appends to its CSV; a fresh run starts a new one
    resuming = cfg["resume"] and os.path.exists(os.path.join(model_dir, "backup", "training_metadata.json"))
    cbs.append(keras.callbacks.CSVLogger(os.path.join(model_dir, "metrics.csv"), append=resuming))
    if cfg["tensorboard"]:
        cbs.append(keras.callbacks.TensorBoard(os.path.join(model_dir, "tensorboard")))
    if cfg["resume"]:
        cbs.append(keras.callbacks.BackupAndRestore(os.path.join(model_dir, "backup")))
    return cbs


def final_evaluation(model, test, bounds=("power", "sound"), verbose=0):
    """Test clean accuracy / VRA / rejection rate with each converged bound."""
    rows = []
    for bound in bounds:  # "power" converges the iterates itself
        try:
            k = model.update_bound_cache(bound)
        except (ImportError, NotImplementedError) as e:  # sound bound unavailable
            print(f"warning: {bound} bound unavailable: {e}", file=sys.stderr)
            continue
        res = model.evaluate(test, verbose=verbose, return_dict=True)
        rows.append(dict(bound=bound, lipschitz_bound=float(k), epsilon=model.epsilon,
                         clean_acc=float(res["clean_acc"]), vra=float(res["vra"]),
                         rejection_rate=float(res["rejection_rate"]), loss=float(res["loss"])))
    return rows


def format_table(rows, title=None):
    cols = ("bound", "lipschitz_bound", "epsilon", "clean_acc", "vra", "rejection_rate")
    heads = ("bound", "K", "epsilon", "clean acc", "VRA", "rejected")
    lines = [title] if title else []
    lines.append("  ".join(f"{h:>10}" for h in heads))
    for r in rows:
        cells = []
        for c in cols:
            v = r.get(c)
            if isinstance(v, float):
                cells.append(f"{100 * v:>9.2f}%" if c in ("clean_acc", "vra", "rejection_rate") else f"{v:>10.4g}")
            else:
                cells.append(f"{str(v):>10}")
        lines.append("  ".join(cells))
    return "\n".join(lines)


def _json_default(o):
    try:
        return float(o)
    except (TypeError, ValueError):
        return str(o)


def _write_json(path, obj):
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=2, default=_json_default)
    os.replace(tmp, path)


def train(cfg):
    """Train per the resolved configuration `cfg` (see DEFAULTS). Returns a results dict.

    Raises `gloro_keras.data.DataNotFoundError` when the data is missing.
    """
    cfg = validate_config(cfg)
    started = time.time()
    # The strategy must exist before TensorFlow runs anything else (multi-worker).
    strategy = make_strategy(cfg["strategy"])

    import keras

    keras.utils.set_random_seed(cfg["seed"])
    _, task_index, chief = task_info()
    model_dir = cfg["model_dir"]
    out_dir = model_dir if chief else os.path.join(model_dir, f".worker{task_index}")
    os.makedirs(out_dir, exist_ok=True)

    train_ds, test_ds, info, steps, train_raw = load_data(cfg)
    if chief:
        _write_json(os.path.join(out_dir, "flags.json"), {
            **cfg, "num_classes": info.num_classes, "image_shape": list(info.image_shape),
            "train_size": info.train_size, "test_size": info.test_size, "steps_per_epoch_resolved": steps,
            "backend": keras.backend.backend(), "argv": sys.argv,
        })

    def _build():
        model = build_model(cfg, info.num_classes, info.image_shape)
        return compile_model(model, cfg, steps)

    if strategy is not None:
        with strategy.scope():
            model = _build()
        replicas = strategy.num_replicas_in_sync
        if cfg["batch_size"] % replicas:
            raise ConfigError(f"batch_size {cfg['batch_size']} is not divisible by the {replicas} replicas")
    else:
        model = _build()

    if cfg["verbose"]:
        print(f"gloro-train: {info.name} ({info.train_size} train / {info.test_size} test, "
              f"{info.num_classes} classes, {tuple(info.image_shape)}), {cfg['arch']} "
              f"L{cfg['depth']}W{cfg['width']}, {model.count_params():,} parameters, loss {cfg['loss']}, "
              f"eps {cfg['epsilon']:.6g}, {cfg['epochs']} epochs x {steps} steps of {cfg['batch_size']}"
              + (f", strategy {cfg['strategy']} ({strategy.num_replicas_in_sync} replicas)" if strategy else ""),
              flush=True)

    callbacks = make_callbacks(cfg, out_dir, steps, train_raw)
    bounds = ("power", "sound") if cfg["bound"] == "sound" else ("power",)
    with multi_worker_fit_fixes(model, train_ds.element_spec, strategy):
        history = model.fit(
            train_ds,
            epochs=cfg["epochs"],
            steps_per_epoch=steps,
            validation_data=test_ds,
            validation_freq=eval_epochs(cfg["epochs"], cfg["eval_every"]),
            callbacks=callbacks,
            verbose=cfg["verbose"],
            shuffle=False,  # the pipeline shuffles (or not, with --noshuffle)
        )
        train_seconds = time.time() - started
        rows = final_evaluation(model, test_ds, bounds=bounds)  # the last one stays cached

    results = dict(
        final=rows,
        history=history.history,
        epochs_run=len(history.epoch),
        first_epoch=(history.epoch[0] if history.epoch else None),
        train_seconds=train_seconds,
        total_seconds=time.time() - started,
        model_path=os.path.join(model_dir, "model.keras"),
    )
    if chief:
        model.save(os.path.join(out_dir, "model.keras"))
        _write_json(os.path.join(out_dir, "metrics.json"), results)
        print(format_table(rows, title=f"\nTest set ({info.name}, eps = {model.epsilon:.6g}):"), flush=True)
        print(f"saved {os.path.join(out_dir, 'model.keras')} ({results['total_seconds']:.0f} s)", flush=True)
    else:
        shutil.rmtree(out_dir, ignore_errors=True)
    return results


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    if FLAGS.list_presets:
        for name in presets_lib.list_presets():
            print(name)
        return 0
    try:
        cfg = config_from_flags(FLAGS)
    except ConfigError as e:
        print(f"gloro-train: error: {e}", file=sys.stderr)
        return 2
    if cfg["strategy"] != "default":
        import keras

        if keras.backend.backend() != "tensorflow":
            raise app.UsageError(f"--strategy={cfg['strategy']} needs the TensorFlow backend (KERAS_BACKEND=tensorflow)")
        if cfg["strategy"] == "multi_worker" and not os.environ.get("TF_CONFIG"):
            raise app.UsageError("--strategy=multi_worker needs TF_CONFIG (cluster + task) in the environment")
    from gloro_keras.data import DataNotFoundError

    try:
        train(cfg)
    except (DataNotFoundError, ConfigError) as e:
        print(f"gloro-train: error: {e}", file=sys.stderr)
        return 2
    return 0


def run(argv=None):
    """Console-script entry point (`gloro-train`)."""
    from gloro_keras.train._cli import run_absl

    run_absl(main, define_flags, __doc__, argv)


if __name__ == "__main__":
    run()
