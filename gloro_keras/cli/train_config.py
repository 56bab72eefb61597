"""`gloro-train`'s configuration: its flags, the defaults, and their resolution.

The configuration is a dict: `DEFAULTS` (the paper's CIFAR-10 L6W128 recipe) ← `--preset`
← flags given explicitly on the command line, checked by `validate_config`.

```python
fv = flags.FlagValues()
define_flags(fv)
fv(["gloro-train", "--preset=quickstart", "--epochs=2"])
cfg = config_from_flags(fv)   # cfg["dataset"] == "quickstart", cfg["epochs"] == 2
```
"""
from __future__ import annotations

import os
import re

from absl import flags

from gloro_keras.models.liresnet import BLOCKS
from gloro_keras.ops.epsilon import check_epsilon
from gloro_keras.ops.relaxations import Relaxation
from gloro_keras.train import presets as presets_lib
from gloro_keras.train.schedules import EpsilonSchedule

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
    bound_gradient="last",
    train_dtype="auto",
    winograd=True,
    relaxation=None,
    model_dir=None,
    strategy="default",
    seed=0,
    subset_classes=None,
    subset_seed=2023,
    num_classes=None,
    verify_images=False,
    shuffle=True,
    eval_every=1,
    test_examples=0,
    bound="auto",
    threat_examples=0,
    tensorboard=False,
    resume=True,
    overwrite=False,
    verbose=1,
)
CONFIG_KEYS = tuple(DEFAULTS)


class ConfigError(ValueError):
    """A configuration that cannot run (reported in one line, exit status 2)."""


def define_flags(fv=flags.FLAGS):
    """Register the gloro-train flags on `fv` (a `flags.FlagValues`)."""
    d = dict(flag_values=fv)
    flags.DEFINE_string("preset", None, "Named configuration (`--list_presets`); explicit flags override it.", **d)
    flags.DEFINE_bool("list_presets", False, "Print every preset (name, table, data, model, loss, ε, epochs) and exit.", **d)
    flags.DEFINE_string("dataset", None, "quickstart | mnist | cifar10 | cifar100 | tiny_imagenet | "
                        "imagenet2012 | imagenet_folder | path/to/data.npz. Default: cifar10.", **d)
    flags.DEFINE_string("data_dir", None, "Where the data set is (tfds dir, Tiny-ImageNet folder, ...).", **d)
    flags.DEFINE_enum("arch", None, list(BLOCKS), "Block type. Default: liresnet.", **d)
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
    flags.DEFINE_float("warmup_epochs", None, "Linear LR warm-up epochs, then cosine decay. Default: 20 "
                       "(a tenth of --epochs when that is 20 or fewer).",
                       lower_bound=0.0, **d)
    flags.DEFINE_integer("power_iterations", None, "Power iterations per training step. Default: 10.",
                         lower_bound=1, **d)
    flags.DEFINE_enum("bound_gradient", None, ("full", "last"), "Back-propagate only through the final "
                      "||A u|| of a step's power iteration (last, as the paper's code) or through every "
                      "iteration (full: slower, slightly higher VRA in paired runs). Default: last.", **d)
    flags.DEFINE_bool("winograd", None, "Train the LiResNet blocks' 3x3 convolutions by Winograd F(4x4, 3x3) on a "
                      "CPU (same function up to ~1e-5 relative rounding, 4x fewer multiply-adds; inference, bounds "
                      "and certificates keep the direct convolution). --nowinograd keeps the direct convolution "
                      "in training too: slower, but a training step needs 300-500 MB less at L6W64/L6W128. "
                      "Default: true.", **d)
    flags.DEFINE_enum("train_dtype", None, ("auto", "float32", "bfloat16"), "Compute dtype of the training "
                      "forward/backward pass (bfloat16 = mixed precision); bounds, evaluation and certification "
                      "stay float32. auto = bfloat16 where the hardware has bfloat16 arithmetic (NVIDIA GPU of "
                      "compute capability >= 8.0; CPU with amx_bf16/avx512_bf16 and TensorFlow's oneDNN on), "
                      "else float32. Default: auto.", **d)
    flags.DEFINE_string("relaxation", None, "Certify relaxed robustness: topk:K (the top-k' classes, for some "
                        "k' <= K, cannot change within ε) or affinity:[0,2][1][3] (a top-k' set inside one of "
                        "these class sets). Trains with gloro_crossentropy unless --loss=trades. Default: none "
                        "(standard robustness).", **d)
    flags.DEFINE_string("model_dir", None, "Output folder. Default: runs/<preset or dataset>_<arch>_L<d>W<w>.", **d)
    flags.DEFINE_enum("strategy", None, STRATEGIES, "Distribution: default | mirrored (all local devices: "
                      "tf.distribute.MirroredStrategy on TensorFlow, keras.distribution.DataParallel on JAX) | "
                      "multi_worker (MultiWorkerMirroredStrategy from TF_CONFIG; TensorFlow).", **d)
    flags.DEFINE_integer("seed", None, "Random seed (weights, shuffling, augmentation). Default: 0.", **d)
    flags.DEFINE_integer("subset_classes", None, "Keep this many classes (ImageNet subsets, Table 7).",
                         lower_bound=1, **d)
    flags.DEFINE_bool("verify_images", None, "Decode every image of an image-folder data set before training "
                      "(one pass; files are always checked for presence and truncation). Default: false.", **d)
    flags.DEFINE_integer("num_classes", None, "Classes of an .npz data set when not max(label) + 1 (also "
                         "allows classes without a training example).", lower_bound=1, **d)
    flags.DEFINE_integer("subset_seed", None, "Class-shuffle seed for --subset_classes. Default: 2023.", **d)
    flags.DEFINE_bool("augment", None, "Random crop (+ flip for colour images). Default: true.", **d)
    flags.DEFINE_bool("shuffle", None, "Shuffle the training data. Default: true.", **d)
    flags.DEFINE_integer("eval_every", None, "Evaluate on the test split every N epochs (and after the last). "
                         "Default: 1.",
                         lower_bound=1, **d)
    flags.DEFINE_integer("test_examples", None, "Evaluate on the first N test examples only (0 = all).",
                         lower_bound=0, **d)
    flags.DEFINE_enum("bound", None, ("auto", "sound", "power"), "Bound cached for each validation: sound "
                      "(provable upper bound), power (converged power iteration), or auto: sound until one takes "
                      "over 5% of the training since the previous validation, then the training's power "
                      "iterates (ConvergeBounds). The final evaluation reports power and, unless power, sound. "
                      "Default: auto.", **d)
    flags.DEFINE_integer("threat_examples", None, "Track how often the threatening class changes (Figure 3) "
                         "on this many training examples (0 = off).", lower_bound=0, **d)
    flags.DEFINE_bool("tensorboard", None, "Write TensorBoard logs to <model_dir>/tensorboard.", **d)
    flags.DEFINE_bool("resume", None, "Back up every epoch and resume an interrupted run. Default: true.", **d)
    flags.DEFINE_bool("overwrite", None, "Train over a --model_dir that holds a finished (or interrupted) run, "
                      "deleting its model, metrics and backup. Default: false.", **d)
    flags.DEFINE_integer("verbose", None, "Keras fit verbosity (0 silent, 1 progress bar, 2 one line/epoch).",
                         lower_bound=0, upper_bound=2, **d)

    def _check_loss(v):
        return v is None or bool(_LOSS_RE.match(v.strip().lower()))

    def _check_preset(v):
        return v is None or v in presets_lib.PRESETS

    def _check_schedule(v):
        if v is None:
            return True
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


def config_from_flags(fv=flags.FLAGS):
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
    """A checked copy of `cfg`: `ce` spelled out, ε checked, a default `model_dir`.

    Raises:
        ConfigError: the configuration cannot run.
    """
    cfg = dict(cfg)
    if cfg["loss"] == "ce":
        cfg["loss"] = "gloro_crossentropy"
    notes = list(cfg.get("notes", ()))
    if cfg["warmup_epochs"] >= cfg["epochs"]:
        if "warmup_epochs" in cfg.get("explicit_flags", ()):
            raise ConfigError(f"--warmup_epochs={cfg['warmup_epochs']:g} is not shorter than --epochs="
                              f"{cfg['epochs']}: the whole run would be learning-rate warm-up")
        notes.append(f"{cfg['warmup_epochs']:g} warm-up epochs do not fit in {cfg['epochs']}; "
                     f"warming up for {cfg['epochs'] / 10:g} (--warmup_epochs sets it)")
        cfg["warmup_epochs"] = cfg["epochs"] / 10
    cfg["notes"] = notes
    if cfg.get("relaxation"):
        try:
            cfg["relaxation"] = str(Relaxation.get(cfg["relaxation"]))
        except ValueError as e:
            raise ConfigError(f"--relaxation: {e}") from None
        if cfg["loss"] == "emma":
            if "loss" in cfg.get("explicit_flags", ()):
                raise ConfigError("--loss=emma trains standard robustness; with --relaxation use "
                                  "--loss=gloro_crossentropy or --loss=trades")
            cfg["loss"] = "gloro_crossentropy"
            notes.append("--relaxation: training with gloro_crossentropy (EMMA's lift is for standard robustness)")
    if cfg["width"] % 2:
        raise ConfigError(f"width must be even; got {cfg['width']}")
    try:
        cfg["epsilon"] = check_epsilon(cfg["epsilon"], "--epsilon")
    except ValueError as e:
        raise ConfigError(str(e)) from None
    if cfg["model_dir"] is None:
        stem = cfg.get("preset") or os.path.splitext(os.path.basename(str(cfg["dataset"])))[0]
        cfg["model_dir"] = os.path.join("runs", f"{stem}_{cfg['arch']}_L{cfg['depth']}W{cfg['width']}")
    return cfg
