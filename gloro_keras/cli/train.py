"""`gloro-train`: train a GloRo LiResNet (or a ConvNet / ResNet ablation) with absl flags.

    gloro-train --preset=quickstart --model_dir=runs/quickstart          # offline, minutes
    gloro-train --preset=table1_cifar10_l6w128 --data_dir=~/tensorflow_datasets --model_dir=runs/c10
    gloro-train --dataset=path/to/data.npz --depth=12 --width=128 --epochs=200 --model_dir=runs/x
    python -m gloro_keras.cli.train --helpfull

Configuration = the paper's CIFAR-10 L6W128 recipe (defaults) ← `--preset` ← flags given
explicitly on the command line (`gloro_keras.cli.train_config`). Writes into `--model_dir`:

    model.keras      the trained GloroModel (bound cache: the final converged bound)
    metrics.csv      one row per epoch, numbered from 1 (train clean_acc, vra, rejection_rate
                     at ε_train; val_* at ε; loss, lipschitz_bound, epsilon_train, lr, ...)
    metrics.json     the same history (a resumed run's earlier epochs included) plus the
                     final test results
    flags.json       the resolved configuration (and which flags were explicit)
    backup/          keras BackupAndRestore state while training (deleted at the end):
                     re-running the same command after a crash resumes from the last
                     finished epoch
    .lock            while the run trains: a second run on the same folder is refused
    tensorboard/     with --tensorboard

A folder holding a finished run (model.keras, no backup/) is not trained over unless
--overwrite is given.

Exit status: 0 on success; 2 (one-line error) when the data is missing or the configuration
cannot run (e.g. batch larger than the data set, model_dir finished or in use); 3 when
training stopped on a non-finite loss or bound (nothing saved; backup/ keeps the last
finished epoch); 1 for bad flags (absl usage error).
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import sys
import time

import keras
import numpy as np
from absl import app, flags

from gloro_keras.cli.run_dir import RunDirectory
from gloro_keras.cli.runner import run_absl
from gloro_keras.cli.train_config import ConfigError, config_from_flags, define_flags, validate_config
from gloro_keras.models import GloroLiResNet
from gloro_keras.ops.precision import ReducedPrecisionError, check_float32_math
from gloro_keras.ops.relaxations import Relaxation
from gloro_keras.train import optimizers as gloro_optimizers
from gloro_keras.train import presets as presets_lib
from gloro_keras.train.callbacks import (
    ConvergeBounds,
    EpsilonScheduler,
    LearningRateLogger,
    MetricsLog,
    NonFiniteTrainingError,
    StopOnNonFinite,
    ThreateningClassTracker,
    VRALogger,
)
from gloro_keras.train.distribute import data_parallel, make_strategy, multi_worker_fit_fixes, task_info
from gloro_keras.train.mixed_precision import resolve_train_dtype
from gloro_keras.train.schedules import EpsilonSchedule, WarmupCosine

FLAGS = flags.FLAGS
IMAGENET_TRAIN_SIZE = 1_281_167


def build_model(cfg, num_classes, input_shape):
    """The GloRo model the configuration `cfg` describes."""
    if cfg.get("relaxation"):
        try:
            Relaxation.get(cfg["relaxation"], num_classes).check(num_classes)
        except ValueError as e:
            raise ConfigError(f"--relaxation: {e}") from None
    return GloroLiResNet(
        L=cfg["depth"], W=cfg["width"], num_classes=num_classes, input_shape=tuple(input_shape),
        epsilon=cfg["epsilon"], dense_width=cfg["dense_width"], power_iterations=cfg["power_iterations"],
        bound_gradient=cfg["bound_gradient"], block=cfg["arch"],
        train_dtype=resolve_train_dtype(cfg["train_dtype"])[0],  # "auto" resolved, if not yet
        relaxation=cfg.get("relaxation"), winograd=cfg.get("winograd", True),
    )


def make_optimizer(cfg, steps_per_epoch):
    """AdamW with the warm-up + cosine learning-rate schedule of `cfg`."""
    total = max(1, int(cfg["epochs"] * steps_per_epoch))
    warmup = int(round(cfg["warmup_epochs"] * steps_per_epoch))
    schedule = WarmupCosine(cfg["lr"], total_steps=total, warmup_steps=min(warmup, total))
    clip = cfg["clip_norm"] or None
    if cfg["strategy"] != "default" and clip and keras.backend.backend() == "tensorflow":
        # Keras clips per replica, before the all-reduce; this one clips the sum.
        adamw = gloro_optimizers.AdamW
    else:
        adamw = keras.optimizers.AdamW
    return adamw(learning_rate=schedule, weight_decay=cfg["weight_decay"], global_clipnorm=clip)


def compile_model(model, cfg, steps_per_epoch):
    metrics = ["clean_acc", "vra", "rejection_rate"] + (["relaxed_vra"] if cfg.get("relaxation") else [])
    model.compile(optimizer=make_optimizer(cfg, steps_per_epoch), loss=cfg["loss"], metrics=metrics)
    return model


def load_data(cfg):
    """(train_ds, test_ds, info, steps_per_epoch, (train_source, test_source)); raises
    DataNotFoundError, or ConfigError for data that cannot train (bad files, labels, ...)."""
    # Imported here: gloro_keras.data imports TensorFlow, which --help (and the JAX
    # backend) does not otherwise need.
    from gloro_keras import data

    try:
        train_raw, test_raw, info = data.load(
            cfg["dataset"], data_dir=cfg["data_dir"], subset_classes=cfg["subset_classes"],
            subset_seed=cfg["subset_seed"], num_classes=cfg["num_classes"], seed=cfg["seed"])
    except data.DataNotFoundError:
        raise
    except ValueError as e:  # unknown name, malformed .npz, impossible subset, ...
        raise ConfigError(str(e)) from None
    try:  # image folders: every file present and complete (and decodable, on request)
        checked = data.check_files(train_raw, test_raw, progress=cfg["verbose"] == 1)
        if checked and cfg["verify_images"]:
            data.decode_all(train_raw, test_raw, progress=cfg["verbose"] == 1)
    except data.ImageFileError as e:
        raise ConfigError(str(e)) from None
    bs = cfg["batch_size"]
    if cfg["shuffle"]:
        train = data.make_pipeline(train_raw, bs, training=True, augment=cfg["augment"], seed=cfg["seed"])
    elif cfg["augment"]:
        # augmentation without shuffling: the training pipeline with a 1-element buffer
        train = data.make_pipeline(train_raw, bs, training=True, augment=True, seed=cfg["seed"],
                                   shuffle_buffer=1)
    else:
        train = data.make_pipeline(train_raw, bs, training=False, drop_remainder=True)
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
    test = data.make_pipeline(test_raw_limited, min(bs, 1024), training=False)
    return train, test, info, int(steps), (train_raw, test_raw)


@contextlib.contextmanager
def _name_bad_images(*sources):
    """Turn an image-decoding failure inside `fit` into a ConfigError naming the files."""
    try:
        yield
    except Exception as e:
        from gloro_keras.data import verify

        paths = verify.file_paths(*sources)
        if not paths or type(e).__name__ != "InvalidArgumentError":
            raise
        print("gloro-train: an image failed to decode; finding which ...", file=sys.stderr, flush=True)
        bad = verify.undecodable(paths)
        if not bad:
            raise
        raise ConfigError(f"{len(bad)} image file(s) cannot be decoded: {', '.join(bad[:5])}"
                          + (" ..." if len(bad) > 5 else "") + " (remove or replace them; "
                          "--verify_images checks every image before training)") from None


def _peak_multiple(schedule):
    """The largest multiple of ε the training-ε schedule reaches."""
    s = EpsilonSchedule(schedule)
    return max(s(i / 400) for i in range(401))


def _sample_images(ds_raw, n):
    xs = [x for x, _ in ds_raw.dataset.take(n).batch(n).as_numpy_iterator()]
    return np.concatenate(xs) if xs else None


def eval_epochs(epochs, every):
    """1-based epochs after which to evaluate: every `every`-th and the last."""
    return [e for e in range(1, epochs + 1) if e % every == 0 or e == epochs]


def make_callbacks(cfg, model_dir, steps_per_epoch, train_raw=None, resuming=False):
    """The run's callbacks; the `MetricsLog` among them holds the whole history."""
    cbs = [
        EpsilonScheduler(cfg["epsilon"], total_epochs=cfg["epochs"], schedule=cfg["eps_schedule"],
                         steps_per_epoch=steps_per_epoch),
        ConvergeBounds(bound=cfg["bound"]),
    ]
    if cfg["threat_examples"] and train_raw is not None:
        cbs.append(ThreateningClassTracker(_sample_images(train_raw, cfg["threat_examples"])))
    cbs.append(LearningRateLogger())
    cbs.append(VRALogger())
    # a resumed run continues its CSV; a fresh run starts a new one
    cbs.append(MetricsLog(os.path.join(model_dir, "metrics.csv"), resume=resuming))
    cbs.append(StopOnNonFinite())  # before the backup: a nan epoch is never backed up
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
        if "relaxed_vra" in res:
            rows[-1]["relaxed_vra"] = float(res["relaxed_vra"])
    return rows


def format_table(rows, title=None):
    cols = ("bound", "lipschitz_bound", "epsilon", "clean_acc", "vra", "rejection_rate")
    heads = ("bound", "K", "epsilon", "clean acc", "VRA", "rejected")
    if any("relaxed_vra" in r for r in rows):
        cols, heads = cols + ("relaxed_vra",), heads + ("relaxed VRA",)
    lines = [title] if title else []
    lines.append("  ".join(f"{h:>10}" for h in heads))
    for r in rows:
        cells = []
        for c in cols:
            v = r.get(c)
            if isinstance(v, float):
                cells.append(f"{100 * v:>9.2f}%" if c in ("clean_acc", "vra", "rejection_rate", "relaxed_vra")
                             else f"{v:>10.4g}")
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
    devices = data_parallel(cfg["strategy"])  # JAX: keras.distribution.DataParallel
    if devices and cfg["batch_size"] % devices:
        raise ConfigError(f"batch_size {cfg['batch_size']} is not divisible by the {devices} devices")
    cfg = dict(cfg, data_parallel_devices=devices)
    keras.utils.set_random_seed(cfg["seed"])
    _, task_index, chief = task_info()
    model_dir = cfg["model_dir"]
    out_dir = model_dir if chief else os.path.join(model_dir, f".worker{task_index}")
    run_dir = RunDirectory(out_dir)
    resumed_after = run_dir.check_start(resume=cfg["resume"], overwrite=cfg["overwrite"])
    with run_dir.lock():
        return _train(cfg, strategy, run_dir, resumed_after, chief, started)


def _train(cfg, strategy, run_dir, resumed_after, chief, started):
    model_dir, out_dir = cfg["model_dir"], run_dir.path
    for note in cfg.get("notes", ()):
        print(f"gloro-train: note: {note}", flush=True)
    if resumed_after is not None:
        print(f"gloro-train: resuming {out_dir} after epoch {resumed_after} of {cfg['epochs']} "
              "(backup/); --overwrite starts over", flush=True)
    train_ds, test_ds, info, steps, (train_raw, test_raw) = load_data(cfg)
    train_dtype, why = resolve_train_dtype(cfg["train_dtype"])
    if chief:
        _write_json(os.path.join(out_dir, "flags.json"), {
            **cfg, "train_dtype_resolved": train_dtype, "num_classes": info.num_classes, "image_shape": list(info.image_shape),
            "train_size": info.train_size, "test_size": info.test_size, "steps_per_epoch_resolved": steps,
            "backend": keras.backend.backend(), "argv": sys.argv,
        })
    cfg = dict(cfg, train_dtype=train_dtype)  # resolved once: the model is built with it

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
              f"eps {cfg['epsilon']:.6g}, {cfg['epochs']} epochs x {steps} steps of {cfg['batch_size']}, "
              f"training in {train_dtype} ({why})"
              + (f", strategy {cfg['strategy']} ({strategy.num_replicas_in_sync} replicas)" if strategy else "")
              + (f", strategy {cfg['strategy']} (keras.distribution.DataParallel over {cfg['data_parallel_devices']} "
                 "devices)" if cfg.get("data_parallel_devices") else ""),
              flush=True)
        print("gloro-train: training clean_acc / vra / rejection_rate are at the training radius epsilon_train "
              f"(the schedule's, up to {_peak_multiple(cfg['eps_schedule']):.3g} eps) with the "
              "training bound; val_* are at eps with the bound ConvergeBounds caches (--bound)", flush=True)

    callbacks = make_callbacks(cfg, out_dir, steps, train_raw, resuming=resumed_after is not None)
    metrics_log = next(cb for cb in callbacks if isinstance(cb, MetricsLog))
    bounds = ("power",) if cfg["bound"] == "power" else ("power", "sound")
    with multi_worker_fit_fixes(model, train_ds.element_spec, strategy), _name_bad_images(train_raw, test_raw):
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
        history=metrics_log.history,  # every epoch, a resumed run's earlier ones included
        epochs_run=len(history.epoch),
        resumed_after_epoch=resumed_after,
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
        print(presets_lib.format_presets())
        return 0
    try:
        check_float32_math()  # the validation passes certify
        cfg = config_from_flags(FLAGS)
    except (ConfigError, ReducedPrecisionError) as e:
        print(f"gloro-train: error: {e}", file=sys.stderr)
        return 2
    if cfg["strategy"] != "default":
        if keras.backend.backend() != "tensorflow" and not (
                cfg["strategy"] == "mirrored" and keras.backend.backend() == "jax"):
            raise app.UsageError(f"--strategy={cfg['strategy']} needs the TensorFlow backend (KERAS_BACKEND=tensorflow)")
        if cfg["strategy"] == "multi_worker" and not os.environ.get("TF_CONFIG"):
            raise app.UsageError("--strategy=multi_worker needs TF_CONFIG (cluster + task) in the environment")
    from gloro_keras.data import DataNotFoundError  # TensorFlow: see load_data

    try:
        train(cfg)
    except (DataNotFoundError, ConfigError) as e:
        print(f"gloro-train: error: {e}", file=sys.stderr)
        return 2
    except NonFiniteTrainingError as e:
        print(f"gloro-train: error: training stopped, {e} (a too-high --lr, or non-finite data); "
              "nothing was saved; backup/ in --model_dir keeps the last finished epoch", file=sys.stderr)
        return 3
    return 0


def run(argv=None):
    """Console-script entry point (`gloro-train`)."""
    run_absl(main, define_flags, __doc__, argv)


if __name__ == "__main__":
    run()
