"""Named training configurations: every configuration of the paper's tables, plus `quickstart`.

A preset is a dict of `gloro-train` flag values; flags given explicitly on the command
line override it (`gloro-train --preset=table1_cifar10_l6w128 --epochs=10`).

Shared recipe (paper appendix A and the authors' released configuration): AdamW, lr 1e-3,
weight decay 1e-4, global-norm clipping 3, linear warm-up over 20 epochs then per-step
cosine decay, the ε schedule `(min(2t/T,1)·1.4 + 0.1)·ε` ("paper"), random crop + flip.
CIFAR-10/100 and Tiny-ImageNet: 800 epochs, batch 256, ε = 36/255, dense neck 512.
ImageNet: 400 epochs, batch 1024, ε = 1.0, dense neck 2048, L18W588.

Names (`list_presets()` gives them all):

* Table 1 (LiResNet + EMMA): ``table1_{cifar10,cifar100,tiny_imagenet}_{l6w128,l18w256}``,
  ``table1_imagenet_l18w588``.
* Table 2 / 4 (L6W128, loss × architecture):
  ``table2_{cifar10,cifar100,tiny_imagenet}_{convnet,liresnet}_{ce,trades,emma}``
  (ce = GloRo cross-entropy, trades with λ = 1).
* Table 3 / 5 (W128, EMMA): ``table3_{cifar10,cifar100}_{convnet,resnet,liresnet}_l{6,12,18}``.
* Table 6 (LiResNet W128, EMMA): ``table6_{cifar10,cifar100,tiny_imagenet}_l{6,12,18,24,30,36}``.
* Table 7 (ImageNet class subsets, L18W588): ``table7_imagenet{100,200,...,1000}_seed{2023,2022}``
  (classes = the first 100·k of the class ids shuffled with that seed).
* Table 8 (LiResNet L18, EMMA): ``table8_{cifar10,cifar100}_w{64,128,256}``.
* ``quickstart``: a small LiResNet + EMMA on the MNIST sample shipped with the package,
  ε = 0.3, minutes on a laptop CPU, no data needed.
"""
from __future__ import annotations

__all__ = ["RECIPE", "PRESETS", "describe_preset", "format_presets", "get_preset", "list_presets", "PRESET_TABLES"]

EPS_CIFAR = 36 / 255

# The paper's training recipe (appendix A); also gloro-train's defaults.
RECIPE = dict(
    arch="liresnet",
    loss="emma",
    lr=1e-3,
    weight_decay=1e-4,
    clip_norm=3.0,
    warmup_epochs=20,
    eps_schedule="paper",
    augment=True,
)

_SMALL = dict(RECIPE, epochs=800, batch_size=256, epsilon=EPS_CIFAR, dense_width=512)
_IMAGENET = dict(RECIPE, dataset="imagenet2012", epochs=400, batch_size=1024, epsilon=1.0,
                 dense_width=2048, depth=18, width=588)

SMALL_DATASETS = ("cifar10", "cifar100", "tiny_imagenet")
_LOSS_NAMES = {"ce": "gloro_crossentropy", "trades": "trades", "emma": "emma"}

PRESETS = {}
PRESET_TABLES = {}


def _add(name, table, **kw):
    if name in PRESETS:
        raise KeyError(f"duplicate preset {name}")
    PRESETS[name] = kw
    PRESET_TABLES[name] = table


def _small(dataset, depth, width, **kw):
    return dict(_SMALL, dataset=dataset, depth=depth, width=width, **kw)


# Table 1
for ds in SMALL_DATASETS:
    _add(f"table1_{ds}_l6w128", "Table 1", **_small(ds, 6, 128))
    _add(f"table1_{ds}_l18w256", "Table 1", **_small(ds, 18, 256))
_add("table1_imagenet_l18w588", "Table 1", **_IMAGENET)

# Table 2 (detailed: Table 4)
for ds in SMALL_DATASETS:
    for arch in ("convnet", "liresnet"):
        for short, loss in _LOSS_NAMES.items():
            _add(f"table2_{ds}_{arch}_{short}", "Table 2", **_small(ds, 6, 128, **{"arch": arch, "loss": loss}))

# Table 3 (detailed: Table 5)
for ds in ("cifar10", "cifar100"):
    for arch in ("convnet", "resnet", "liresnet"):
        for depth in (6, 12, 18):
            _add(f"table3_{ds}_{arch}_l{depth}", "Table 3", **_small(ds, depth, 128, arch=arch))

# Table 6 (Figure 1)
for ds in SMALL_DATASETS:
    for depth in (6, 12, 18, 24, 30, 36):
        _add(f"table6_{ds}_l{depth}", "Table 6", **_small(ds, depth, 128))

# Table 7 (Figure 5): ImageNet class subsets
for seed in (2023, 2022):
    for k in range(1, 11):
        _add(f"table7_imagenet{100 * k}_seed{seed}", "Table 7",
             **dict(_IMAGENET, subset_classes=(100 * k if k < 10 else None), subset_seed=seed))

# Table 8 (width)
for ds in ("cifar10", "cifar100"):
    for width in (64, 128, 256):
        _add(f"table8_{ds}_w{width}", "Table 8", **_small(ds, 18, width))

# Quickstart: shipped MNIST sample (10k train / 2k test), ε = 0.3, a few CPU minutes.
# Chosen on a split of the *training* sample; see README / gloro-train --preset=quickstart.
_add(
    "quickstart",
    "quickstart",
    **dict(
        RECIPE,
        dataset="quickstart",
        depth=4,
        width=32,
        dense_width=128,
        epochs=10,
        eval_every=5,
        batch_size=128,
        epsilon=0.3,
        lr=2e-3,
        warmup_epochs=1,
    ),
)


def get_preset(name):
    """A copy of the preset's flag values (KeyError with the close names if unknown)."""
    try:
        return dict(PRESETS[name])
    except KeyError:
        import difflib

        close = difflib.get_close_matches(str(name), PRESETS, n=5, cutoff=0.5)
        hint = f" Did you mean: {', '.join(close)}?" if close else ""
        raise KeyError(f"unknown preset {name!r}.{hint} (`gloro-train --list_presets` lists all)") from None


def describe_preset(name):
    """One line saying what preset `name` trains, e.g. ``Table 1  cifar10  liresnet L6W128
    emma  eps 0.1412  800 epochs x 256``."""
    p = PRESETS[name]
    data = p["dataset"] + (f"[{p['subset_classes']} classes]" if p.get("subset_classes") else "")
    size = f"L{p['depth']}W{p['width']}"
    return (f"{PRESET_TABLES[name]:<10} {data:<24} {p['arch']:<8} {size:<8} "
            f"{p['loss']:<18} eps {p['epsilon']:.4g}  {p['epochs']} epochs x {p['batch_size']}")


def list_presets(table=None):
    """Preset names, optionally of one table ("Table 1", ..., "quickstart")."""
    return [n for n in PRESETS if table is None or PRESET_TABLES[n] == table]


def format_presets():
    """`gloro-train --list_presets`'s text: one line per preset, name then `describe_preset`."""
    width = max(map(len, PRESETS))
    return "\n".join(f"{name:<{width}}  {describe_preset(name)}" for name in PRESETS)
