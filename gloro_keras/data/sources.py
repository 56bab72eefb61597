"""`load`: every data source by name, and the shipped MNIST sample.

Data sources (`name` argument of `load`):

`"quickstart"`
    10 000 / 2 000 class-balanced MNIST images shipped inside the package
    (`gloro_keras/data/mnist_sample.npz`, see the README beside it). No data_dir.
`"mnist"`, `"cifar10"`, `"cifar100"`, `"imagenet2012"`
    TensorFlow Datasets, read from `data_dir` with downloading disabled (`download=False`,
    `try_gcs=False`): the data must already have been prepared there. As a convenience,
    if `data_dir` is itself an `.npz` file, or a folder holding `<name>.npz`, that file
    is used instead (keras.datasets layout).
`"tiny_imagenet"`, `"imagenet_folder"`
    Image folders, see `gloro_keras.data.folders`.
a path ending in `.npz`, or `"npz:<path>"`
    Arrays in the keras.datasets layout: `x_train`, `y_train`, `x_test`, `y_test`,
    uint8 images (N, H, W) or (N, H, W, C) (or floats in [0, 1]; floats in 0..255 are
    scaled with a warning, non-finite pixels are an error); grayscale images get a channel
    axis. Labels are 0-based integers; every class below the largest label must have a
    training example unless `num_classes` is given.

Missing data raises `DataNotFoundError` (a `FileNotFoundError`) whose message says what
to pass; nothing is ever downloaded.
"""

import importlib.resources as resources
import os
import warnings
import zipfile
from typing import Optional, Tuple, Union

import numpy as np
import tensorflow as tf

from gloro_keras.data import folders
from gloro_keras.data.augment import default_augmentation
from gloro_keras.data.data_source import DataNotFoundError, DataSource, DatasetInfo
from gloro_keras.data.subsets import DEFAULT_SUBSET_SEED, class_subset, relabel_table, subset_sources

TFDS_NAMES = ("mnist", "cifar10", "cifar100", "imagenet2012")
DATASET_NAMES = TFDS_NAMES + folders.FOLDER_NAMES + ("quickstart",)

_SAMPLE = "gloro_keras/data/mnist_sample.npz"
_TFDS_DEFAULT_SPLITS = {
    "mnist": ("train", "test"),
    "cifar10": ("train", "test"),
    "cifar100": ("train", "test"),
    "imagenet2012": ("train", "validation"),
}


def load(
    name: Union[str, os.PathLike],
    data_dir: Optional[Union[str, os.PathLike]] = None,
    split: Optional[Tuple[str, str]] = None,
    *,
    subset_classes: Optional[int] = None,
    subset_seed: int = DEFAULT_SUBSET_SEED,
    num_classes: Optional[int] = None,
    seed: Optional[int] = None,
) -> Tuple[DataSource, DataSource, DatasetInfo]:
    """Load a data set: a `DataSource` per split, each yielding unbatched
    `(float32 image in [0, 1] HWC, int32 label)` pairs, and its `DatasetInfo`.

    No mean/std normalisation is applied: the model subtracts 0.5 itself, and any
    per-channel scaling would change the meaning of the l2 radius epsilon.

    Args:
        name: one of `DATASET_NAMES`, a path ending in `.npz`, or `"npz:<path>"`
            (see the module doc).
        data_dir: tfds data directory (tfds names), the Tiny-ImageNet folder, or the
            ImageNet class-per-folder root. Ignored for `quickstart` and `.npz` names.
        split: tfds only: `(train_split, test_split)`, e.g. `("train[:90%]",
            "train[90%:]")`. Defaults to `("train", "test")` (`"validation"` for
            imagenet2012). The other sources have exactly one train and one test split.
        subset_classes: keep only this many classes (the paper's ImageNet subsets use
            `100 * k`), chosen and relabelled as described by `class_subset`.
        subset_seed: permutation seed for `subset_classes` (paper: 2023 or 2022).
        num_classes: `.npz` only: the number of classes if not `max(label) + 1`.
        seed: tfds only: seed of the file-order shuffle of the training split.

    Returns:
        `(train, test, info)`; feed `train` and `test` to `make_pipeline`.

    Raises:
        DataNotFoundError: the data is not available locally.

    Example:

    ```python
    train, test, info = load("quickstart")
    info.num_classes, info.image_shape, test.size   # 10, (28, 28, 1), 2000
    ```
    """
    name_str = os.fspath(name)
    if name_str == "quickstart":
        train, test = _load_quickstart()
    elif name_str.startswith("npz:") or name_str.lower().endswith(".npz"):
        path = name_str[4:] if name_str.startswith("npz:") else name_str
        train, test = _load_npz(path, num_classes=num_classes)
    elif name_str in TFDS_NAMES:
        npz = _npz_in_data_dir(name_str, data_dir)
        if npz is not None:
            train, test = _load_npz(npz, num_classes=num_classes, name=name_str)
        else:
            train, test = _load_tfds(name_str, data_dir, split, subset_classes, subset_seed, seed)
            return train, test, train.info
    elif name_str == "tiny_imagenet":
        train, test = folders.load_tiny_imagenet(data_dir)
    elif name_str == "imagenet_folder":
        train, test = folders.load_imagenet_folder(data_dir)
    else:
        raise ValueError(
            f"unknown data set {name_str!r}: use one of {', '.join(DATASET_NAMES)}, "
            "a path ending in .npz, or 'npz:<path>'"
        )
    if split is not None:
        raise ValueError(f"split= is only supported for tfds data sets, not {name_str!r}")
    if subset_classes is not None:
        train, test = subset_sources(train, test, subset_classes, subset_seed)
    return train, test, train.info


def sample_path() -> str:
    """Filesystem path of the shipped MNIST sample (`.npz`, keras.datasets layout:
    10 000 train + 2 000 test 28×28 uint8 images).

    Example:

    ```python
    d = np.load(sample_path())
    x, y = d["x_train"][..., None] / 255.0, d["y_train"]
    ```
    """
    res = _sample_resource()
    if res is None:
        raise DataNotFoundError(f"the shipped sample {_SAMPLE} is missing; reinstall gloro-keras.")
    return str(res)


def _sample_resource():
    try:
        res = resources.files("gloro_keras") / "data" / "mnist_sample.npz"
        return res if res.is_file() else None
    except (ModuleNotFoundError, FileNotFoundError, TypeError):
        return None


# ---- arrays (.npz, the shipped sample) ------------------------------------------------


def _prepare_npz_arrays(d, path: str):
    missing = [k for k in ("x_train", "y_train", "x_test", "y_test") if k not in d]
    if missing:
        raise ValueError(
            f"{path} is not in the keras.datasets layout: missing {missing} "
            "(expected x_train, y_train, x_test, y_test)"
        )
    out = []
    for split in ("train", "test"):
        x, y = _npz_images(d[f"x_{split}"], f"{path}: x_{split}"), np.asarray(d[f"y_{split}"]).reshape(-1)
        if x.ndim == 3:
            x = x[..., None]
        if x.ndim != 4 or x.shape[-1] not in (1, 3):
            raise ValueError(f"{path}: x_{split} must be (N,H,W) or (N,H,W,C), got {x.shape}")
        if len(x) != len(y):
            raise ValueError(f"{path}: {len(x)} images but {len(y)} labels in the {split} split")
        if y.dtype.kind not in "iu" and not (y.dtype.kind == "f" and np.all(np.isfinite(y)) and np.all(y == np.round(y))):
            raise ValueError(f"{path}: y_{split} must hold integer class labels, got {y.dtype}")
        if y.size and (y.min() < 0):
            raise ValueError(f"{path}: negative labels in y_{split} (first at y_{split}[{int(np.argmax(y < 0))}])")
        out.append((np.ascontiguousarray(x), y.astype(np.int32)))
    (x_train, y_train), (x_test, y_test) = out
    if x_train.shape[1:] != x_test.shape[1:]:
        raise ValueError(f"{path}: train images {x_train.shape[1:]} != test images {x_test.shape[1:]}")
    return x_train, y_train, x_test, y_test


def _npz_images(x, where):
    """uint8 images as they are; float images in [0, 1] as float32 (0..255 floats scaled, with
    a warning); anything else (non-finite pixels, other ranges or dtypes) a ValueError."""
    x = np.asarray(x)
    if x.dtype == np.uint8:
        return x
    if x.dtype.kind != "f":
        raise ValueError(f"{where} must be uint8 pixels (0..255) or floats in [0, 1], got {x.dtype}")
    bad = ~np.isfinite(x)
    if bad.any():
        first = np.unravel_index(int(np.argmax(bad)), x.shape)
        raise ValueError(f"{where} has {int(bad.sum())} non-finite pixel values (nan/inf), the first in "
                         f"image {first[0]}")
    lo, hi = float(x.min(initial=0.0)), float(x.max(initial=0.0))
    if lo >= 0.0 and hi <= 1.0:
        return x.astype(np.float32)
    if lo >= 0.0 and hi <= 255.0:
        warnings.warn(f"{where} holds floats in [{lo:g}, {hi:g}]: read as 0..255 pixels and scaled to [0, 1] "
                      "(store uint8 pixels or floats in [0, 1] to silence this)", stacklevel=3)
        return (x / 255.0).astype(np.float32)
    raise ValueError(f"{where} holds values in [{lo:g}, {hi:g}]: expected floats in [0, 1] or uint8 pixels")


def _from_arrays(name, source, arrays, num_classes=None) -> Tuple[DataSource, DataSource]:
    x_train, y_train, x_test, y_test = arrays
    num_classes = check_labels(source, y_train, y_test, num_classes)
    shape = tuple(int(s) for s in x_train.shape[1:])
    info = DatasetInfo(name, int(num_classes), shape, len(x_train), len(x_test),
                       default_augmentation(name, shape), source=source)

    def one(split, x, y):
        # The one TF copy of the images, shared by `dataset` and make_pipeline.
        return DataSource(info, split, len(x), images=tf.constant(x), labels=y, decoded_shape=shape)

    return one("train", x_train, y_train), one("test", x_test, y_test)


def check_labels(source, y_train, y_test, num_classes=None) -> int:
    """The class count of integer labels `y_train`, `y_test` (0-based).

    Without `num_classes` it is max(label) + 1, and every class must have a training
    example and every test label must occur in training: a gap (a stray label 200 among
    10 classes, a test-only class) is an error naming the label and where it is, not a
    silently larger model. With `num_classes`, labels must be below it.
    """
    if num_classes is not None:
        for split, y in (("train", y_train), ("test", y_test)):
            if y.size and y.max() >= num_classes:
                i = int(np.argmax(y >= num_classes))
                raise ValueError(f"{source}: y_{split}[{i}] = {int(y[i])} is not below num_classes={num_classes}")
        return int(num_classes)
    counts = np.bincount(y_train, minlength=1)
    empty = np.flatnonzero(counts == 0)
    if empty.size:
        top = int(y_train.max())
        raise ValueError(
            f"{source}: the training labels go up to {top} but {empty.size} of the classes below it "
            f"({_ranges(empty)}) have no training example (label {top} first at y_train[{int(np.argmax(y_train == top))}],"
            f" {int(counts[top])} time(s)): a wrong label? Fix the data, or pass --num_classes "
            "(num_classes=) to train that many classes anyway")
    unseen = y_test >= counts.size
    if unseen.any():
        i = int(np.argmax(unseen))
        raise ValueError(
            f"{source}: y_test[{i}] = {int(y_test[i])} is a class with no training example (training labels are "
            f"0..{counts.size - 1}); fix the data, or pass --num_classes (num_classes=) to allow it")
    return int(counts.size)


def _ranges(values, most=4):
    """[3, 4, 5, 9] -> '3..5, 9' (the first `most` runs)."""
    runs, start = [], values[0]
    for a, b in zip(values, list(values[1:]) + [None]):
        if b != a + 1:
            runs.append(f"{start}..{a}" if a != start else f"{a}")
            start = b
    return ", ".join(runs[:most]) + (", ..." if len(runs) > most else "")


def _load_npz(path, num_classes=None, name=None):
    path = os.path.expanduser(os.fspath(path))
    if not os.path.isfile(path):
        raise DataNotFoundError(
            f"npz file not found: {path!r}. Pass an existing .npz in the keras.datasets layout "
            "(x_train, y_train, x_test, y_test; uint8 images), e.g. name='path/to/data.npz' or "
            "'npz:path/to/data', or use a built-in data set name with --data_dir."
        )
    if not zipfile.is_zipfile(path):
        raise ValueError(f"{path} is not an .npz archive (numpy.savez output, a zip of .npy arrays); "
                         "truncated, or another format under an .npz name?")
    with np.load(path, allow_pickle=False) as d:
        arrays = _prepare_npz_arrays(d, path)
    if name is None:
        name = os.path.splitext(os.path.basename(path))[0]
    return _from_arrays(name, path, arrays, num_classes)


def _npz_in_data_dir(name, data_dir) -> Optional[str]:
    if data_dir is None:
        return None
    d = os.path.expanduser(os.fspath(data_dir))
    if d.lower().endswith(".npz"):
        if not os.path.isfile(d):
            raise DataNotFoundError(
                f"data_dir {d!r} names an .npz file that does not exist. Pass an existing "
                f".npz (keras.datasets layout) or a tfds data directory holding '{name}'."
            )
        return d
    candidate = os.path.join(d, f"{name}.npz")
    return candidate if os.path.isfile(candidate) else None


def _load_quickstart():
    res = _sample_resource()
    if res is None:
        raise DataNotFoundError(
            f"the quickstart sample {_SAMPLE} is missing from the "
            "installed package. Reinstall gloro-keras (the wheel ships it as package data) or "
            "regenerate it with tools/make_quickstart_sample.py from a checkout; or pass an "
            "MNIST .npz path instead of 'quickstart'."
        )
    with resources.as_file(res) as p, np.load(p, allow_pickle=False) as d:
        arrays = _prepare_npz_arrays(d, _SAMPLE)
    return _from_arrays("quickstart", _SAMPLE, arrays, 10)


# ---- tfds ----------------------------------------------------------------------------


def _tfds_missing_message(name: str, data_dir: Optional[str]) -> str:
    where = repr(data_dir) if data_dir else "the default tfds directory (~/tensorflow_datasets or $TFDS_DATA_DIR)"
    lines = [
        f"TFDS data for {name!r} was not found in {where}; gloro-keras never downloads data.",
        "Fix one of these ways:",
        f"  * pass --data_dir (data_dir=...) pointing to a tfds data directory that already "
        f"contains a prepared '{name}/<version>/' folder;",
        f"  * pass an .npz in the keras.datasets layout instead (name='path/to/{name}.npz' or "
        f"'npz:<path>', or a data_dir holding '{name}.npz');",
    ]
    if name == "imagenet2012":
        lines.append(
            "  * prepare it offline: put ILSVRC2012_img_train.tar and ILSVRC2012_img_val.tar in "
            "MANUAL_DIR, then run `tfds build imagenet2012 --data_dir DIR --manual_dir MANUAL_DIR` "
            "and pass --data_dir DIR; or use name='imagenet_folder' with a class-per-folder copy "
            "(<root>/train/<class>/*.JPEG, <root>/val/<class>/*.JPEG)."
        )
    else:
        lines.append(
            f"  * prepare it on a machine with internet access with `tfds build {name} "
            "--data_dir DIR` and copy DIR here (or place the source archives in "
            f"DIR/downloads/manual and run `tfds build {name} --data_dir DIR --manual_dir "
            "DIR/downloads/manual`), then pass --data_dir DIR."
        )
    return "\n".join(lines)


def _load_tfds(name, data_dir, split, subset_classes, subset_seed, seed) -> Tuple[DataSource, DataSource]:
    # Imported here, not at the top: tensorflow_datasets takes seconds to import and only
    # the tfds names need it.
    import tensorflow_datasets as tfds

    data_dir = os.path.expanduser(os.fspath(data_dir)) if data_dir is not None else None
    train_split, test_split = split if split is not None else _TFDS_DEFAULT_SPLITS[name]
    reason = ""
    try:
        builder = tfds.builder(name, data_dir=data_dir, try_gcs=False)
        prepared = builder.is_prepared()
    except Exception as e:  # unreadable directory, corrupt metadata, unknown version, ...
        prepared = False
        reason = f"\n(tfds reported {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})"
    if not prepared:
        raise DataNotFoundError(_tfds_missing_message(name, data_dir) + reason) from None

    encoded = name == "imagenet2012"
    decoders = {"image": tfds.decode.SkipDecoding()} if encoded else None

    def read(split_name, shuffle_files):
        try:
            ds = builder.as_dataset(
                split=split_name,
                as_supervised=True,
                decoders=decoders,
                shuffle_files=shuffle_files,
                read_config=tfds.ReadConfig(shuffle_seed=seed, try_autocache=False),
            )
        except AssertionError:
            raise DataNotFoundError(_tfds_missing_message(name, data_dir)) from None
        return ds.map(lambda x, y: (x, tf.cast(y, tf.int32)), num_parallel_calls=tf.data.AUTOTUNE)

    label_feature = builder.info.features["label"]
    n_classes = int(label_feature.num_classes)
    class_names = tuple(label_feature.names) if getattr(label_feature, "names", None) else None
    img_shape = tuple(builder.info.features["image"].shape)
    aug = default_augmentation(name, img_shape)
    if encoded or None in img_shape:
        decoded_shape = None
        out_shape = (aug.image_size, aug.image_size, 3)
    else:
        decoded_shape = out_shape = tuple(int(s) for s in img_shape)

    def split_size(split_name):
        try:
            return int(builder.info.splits[split_name].num_examples)
        except (KeyError, ValueError, TypeError):  # metadata without split statistics
            return None

    sizes = [split_size(s) for s in (train_split, test_split)]
    streams = [read(train_split, True), read(test_split, False)]
    class_ids = None
    if subset_classes is not None:
        keep = class_subset(subset_classes, subset_seed, n_classes)
        class_ids = tuple(int(k) for k in keep)
        table = tf.constant(relabel_table(keep, n_classes))
        streams = [
            s.filter(lambda x, y: tf.gather(table, y) >= 0).map(
                lambda x, y: (x, tf.gather(table, y)), num_parallel_calls=tf.data.AUTOTUNE
            )
            for s in streams
        ]
        sizes = [None, None]
        if class_names is not None:
            class_names = tuple(class_names[k] for k in keep)
        n_classes = len(keep)
    info = DatasetInfo(
        name, n_classes, out_shape, sizes[0], sizes[1], aug, class_names, class_ids,
        source=f"tfds:{name} ({builder.data_dir})",
    )
    train, test = (DataSource(info, split_name, size, stream=stream, encoded=encoded, decoded_shape=decoded_shape)
                   for split_name, size, stream in zip(("train", "test"), sizes, streams))
    return train, test
