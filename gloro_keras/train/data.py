"""Input pipelines for GloRo LiResNet training and certification.

Every pipeline yields ``(image, label)`` pairs: ``image`` is float32 in ``[0, 1]``, laid
out HWC (batched: NHWC), ``label`` is int32. No mean/std normalisation is applied: the
model subtracts 0.5 itself, and any per-channel scaling would change the meaning of the
l2 radius epsilon.

Two calls cover everything::

    train_ds, test_ds, info = load("cifar10", data_dir="~/tensorflow_datasets")
    train = make_pipeline(train_ds, 256, training=True, seed=0)   # shuffled, augmented
    test = make_pipeline(test_ds, 256, training=False)              # ordered, not augmented

``load`` returns *unbatched* datasets; ``make_pipeline`` shuffles, augments, batches and
prefetches. When given a dataset exactly as ``load`` returned it, ``make_pipeline``
rebuilds the pipeline from the underlying storage (uint8 arrays, file paths or encoded
JPEGs) so that shuffling moves indices or paths rather than float images, crops and
flips run on whole uint8 batches, and ImageNet crops are decoded with
``decode_and_crop_jpeg``. Any other dataset of ``(float image, label)`` pairs (e.g. after
a user's own ``.take``/``.map``) goes through a generic path with the same semantics.

Data sources (``name`` argument of :func:`load`):

``"quickstart"``
    10 000 / 2 000 class-balanced MNIST images shipped inside the package
    (``gloro_keras/data/mnist_sample.npz``, see the README beside it). No data_dir.
``"mnist"``, ``"cifar10"``, ``"cifar100"``, ``"imagenet2012"``
    TensorFlow Datasets, read from ``data_dir`` with downloading disabled (``download=False``,
    ``try_gcs=False``): the data must already have been prepared there. As a convenience,
    if ``data_dir`` is itself an ``.npz`` file, or a folder holding ``<name>.npz``, that file
    is used instead (keras.datasets layout).
``"tiny_imagenet"``
    The official Tiny-ImageNet-200 folder (``data_dir`` = the folder holding ``wnids.txt``,
    or its parent holding ``tiny-imagenet-200/``): ``train/<wnid>/images/*.JPEG`` is the
    training split, the labelled ``val/images/*.JPEG`` + ``val/val_annotations.txt`` is the
    test split. **Labels are the index of the wnid in the sorted list of wnids** (the order
    a class-per-folder loader gives; ``wnids.txt`` itself is not sorted).
``"imagenet_folder"``
    A class-per-folder ImageNet copy: ``<data_dir>/train/<class>/*.JPEG`` and
    ``<data_dir>/val/<class>/*.JPEG``; labels are the index of the class folder in the sorted
    list of the ``train`` class folders (for the 1000 ILSVRC-2012 wnid folders this equals
    the tfds ``imagenet2012`` label order).
a path ending in ``.npz``, or ``"npz:<path>"``
    Arrays in the keras.datasets layout: ``x_train``, ``y_train``, ``x_test``, ``y_test``,
    uint8 images (N, H, W) or (N, H, W, C); grayscale images get a channel axis.

Missing data raises :class:`DataNotFoundError` (a ``FileNotFoundError``) whose message
says what to pass; nothing is ever downloaded.

Augmentation (training only, the paper's "random cropping and random horizontal flipping"):

* 28x28 MNIST-like grayscale: random crop after 2 px zero padding, **no flip** (digits are
  not mirror symmetric).
* 32x32 (CIFAR-10/100): random crop after 4 px zero padding + horizontal flip.
* 64x64 (Tiny-ImageNet): random crop after 8 px zero padding + horizontal flip.
* ImageNet: random-resized crop (area 8%-100%, aspect ratio 3/4-4/3) resized to 224x224 +
  horizontal flip for training; for evaluation the equivalent of "resize the shorter side
  to 256, centre crop 224x224" (implemented as a centre square crop of 224/256 of the shorter
  side, resized to 224, so only the needed part of the JPEG is decoded).
* Other ``.npz`` data: zero padding of ``H // 8`` px (2 for 28x28 grayscale), flip only
  for colour images.

Padding is with zeros in ``[0, 1]`` units (black). Pass an :class:`Augmentation` to
``make_pipeline(augment=...)`` to override.

ImageNet class subsets (paper, Table 7): ``load(..., subset_classes=100 * k,
subset_seed=2023)`` shuffles the class ids with ``np.random.RandomState(subset_seed)
.permutation(num_classes)`` (num_classes = 1000 for ImageNet), keeps the first
``subset_classes`` of them and relabels them ``0..subset_classes-1`` **in the shuffled
order**: new label ``i`` is original class ``info.class_ids[i]``. See :func:`class_subset`.
The same option works for every source.
"""

from __future__ import annotations

import dataclasses
import os
import time
import weakref
from typing import Callable, Optional, Sequence, Tuple, Union

import numpy as np
import tensorflow as tf

__all__ = [
    "AUTOTUNE",
    "DATASET_NAMES",
    "Augmentation",
    "DataNotFoundError",
    "DatasetInfo",
    "class_subset",
    "default_augmentation",
    "load",
    "make_pipeline",
    "pipeline_throughput",
]

AUTOTUNE = tf.data.AUTOTUNE

TFDS_NAMES = ("mnist", "cifar10", "cifar100", "imagenet2012")
FOLDER_NAMES = ("tiny_imagenet", "imagenet_folder")
DATASET_NAMES = TFDS_NAMES + FOLDER_NAMES + ("quickstart",)

DEFAULT_SUBSET_SEED = 2023
IMAGENET_IMAGE_SIZE = 224
IMAGENET_RESIZE_SIZE = 256
TINY_IMAGENET_SHAPE = (64, 64, 3)
_IMAGE_EXTENSIONS = (".jpeg", ".jpg", ".png")
_TFDS_DEFAULT_SPLITS = {
    "mnist": ("train", "test"),
    "cifar10": ("train", "test"),
    "cifar100": ("train", "test"),
    "imagenet2012": ("train", "validation"),
}
_GENERIC_SHUFFLE_BUFFER = 10_000
_ENCODED_SHUFFLE_BUFFER = 5_000


class DataNotFoundError(FileNotFoundError):
    """The requested data is not available locally (nothing is ever downloaded)."""


# --------------------------------------------------------------------------------------
# Public descriptions
# --------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Augmentation:
    """Training-time augmentation policy (also carries ImageNet eval resizing).

    kind:
        ``"none"``; ``"crop_flip"`` (zero-pad by ``pad`` px, random crop back to the input
        size, horizontal flip with probability 1/2 if ``flip``); or ``"imagenet"``
        (random-resized crop to ``image_size`` + flip for training; resize-``resize_size``
        / centre-crop-``image_size`` for evaluation).
    """

    kind: str = "none"
    pad: int = 0
    flip: bool = False
    image_size: int = IMAGENET_IMAGE_SIZE
    resize_size: int = IMAGENET_RESIZE_SIZE
    area_range: Tuple[float, float] = (0.08, 1.0)
    aspect_ratio_range: Tuple[float, float] = (3.0 / 4.0, 4.0 / 3.0)

    def __post_init__(self):
        if self.kind not in ("none", "crop_flip", "imagenet"):
            raise ValueError(f"unknown augmentation kind {self.kind!r}")
        if self.pad < 0:
            raise ValueError("pad must be >= 0")


@dataclasses.dataclass
class DatasetInfo:
    """What :func:`load` loaded.

    ``image_shape`` is the HWC shape of the images :func:`make_pipeline` yields (for
    ImageNet sources the unbatched images from :func:`load` keep their native size).
    ``train_size``/``test_size`` are ``None`` only for a class subset of tfds
    ``imagenet2012``, whose per-class counts are unknown without a full pass.
    ``class_ids``: for a class subset, the original class id of each new label.
    """

    name: str
    num_classes: int
    image_shape: Tuple[int, int, int]
    train_size: Optional[int]
    test_size: Optional[int]
    augmentation: Augmentation = dataclasses.field(default_factory=Augmentation)
    class_names: Optional[Tuple[str, ...]] = None
    class_ids: Optional[Tuple[int, ...]] = None
    source: str = ""


def default_augmentation(name: str, image_shape: Sequence[Optional[int]]) -> Augmentation:
    """The augmentation :func:`load` attaches for data set ``name`` with ``image_shape``."""
    if name in ("imagenet2012", "imagenet_folder"):
        return Augmentation("imagenet", flip=True)
    h, w, c = (tuple(image_shape) + (None, None, None))[:3]
    if h is None or w is None:
        return Augmentation("imagenet", flip=True)
    if name in ("mnist", "quickstart") or (h, w, c) == (28, 28, 1):
        return Augmentation("crop_flip", pad=2, flip=False)
    return Augmentation("crop_flip", pad=max(1, h // 8), flip=(c == 3))


def class_subset(num_keep: int, seed: int = DEFAULT_SUBSET_SEED, total: int = 1000) -> np.ndarray:
    """Original class ids kept by a class subset, in their new-label order.

    ``np.random.RandomState(seed).permutation(total)[:num_keep]``: new label ``i`` is the
    original class ``class_subset(...)[i]``. The paper uses ``total=1000`` (ImageNet),
    ``num_keep = 100 * k`` and seeds 2023 and 2022.
    """
    if not 1 <= num_keep <= total:
        raise ValueError(f"subset of {num_keep} classes out of {total} is not possible")
    return np.random.RandomState(seed).permutation(total)[:num_keep].astype(np.int64)


# --------------------------------------------------------------------------------------
# Internal storage description (what make_pipeline's fast path rebuilds from)
# --------------------------------------------------------------------------------------


@dataclasses.dataclass
class _Source:
    kind: str  # "array" | "files" | "tfds"
    fixed_shape: Optional[Tuple[int, int, int]]  # decoded shape; None = variable (ImageNet)
    augmentation: Augmentation
    size: Optional[int] = None
    images: Optional[np.ndarray] = None  # "array": uint8 (N, H, W, C)
    labels: Optional[np.ndarray] = None  # "array"/"files": int32 (N,)
    tensors: Optional[Tuple[tf.Tensor, tf.Tensor]] = None  # "array": the one in-memory copy
    paths: Optional[np.ndarray] = None  # "files": str (N,)
    stream: Optional[tf.data.Dataset] = None  # "tfds": (uint8 image | encoded bytes, int32)
    encoded: bool = False  # "tfds": elements are encoded image bytes


_SOURCES: "weakref.WeakKeyDictionary[tf.data.Dataset, _Source]" = weakref.WeakKeyDictionary()


def _to_unit_float(image: tf.Tensor) -> tf.Tensor:
    if image.dtype == tf.uint8:
        return tf.cast(image, tf.float32) * (1.0 / 255.0)
    return tf.cast(image, tf.float32)


def _decode_fixed(data: tf.Tensor, shape: Tuple[int, int, int]) -> tf.Tensor:
    """Decode an encoded image to uint8 ``shape`` (resizing only if it differs)."""
    h, w, c = shape
    img = tf.io.decode_image(data, channels=c, expand_animations=False)
    hw = tf.shape(img)[:2]

    def _resize():
        r = tf.image.resize(img, [h, w], antialias=True)
        return tf.cast(tf.clip_by_value(tf.round(r), 0.0, 255.0), tf.uint8)

    img = tf.cond(tf.reduce_all(tf.equal(hw, [h, w])), lambda: img, _resize)
    return tf.ensure_shape(img, shape)


def _decode_any(data: tf.Tensor) -> tf.Tensor:
    return tf.io.decode_image(data, channels=3, expand_animations=False)


def _public_dataset(src: _Source) -> tf.data.Dataset:
    """The unbatched float32 dataset :func:`load` returns for ``src``."""
    if src.kind == "array":
        # One TF copy of the arrays, shared by this dataset and make_pipeline's fast path.
        src.tensors = (tf.constant(src.images), tf.constant(src.labels))
        src.images = src.labels = None
        images, labels = src.tensors
        ds = tf.data.Dataset.range(src.size).map(
            lambda i: (_to_unit_float(tf.gather(images, i)), tf.gather(labels, i)),
            num_parallel_calls=AUTOTUNE)
    elif src.kind == "files":
        ds = tf.data.Dataset.from_tensor_slices((src.paths, src.labels))
        if src.fixed_shape is not None:
            shape = src.fixed_shape
            fn = lambda p, y: (_to_unit_float(_decode_fixed(tf.io.read_file(p), shape)), y)
        else:
            fn = lambda p, y: (_to_unit_float(_decode_any(tf.io.read_file(p))), y)
        ds = ds.map(fn, num_parallel_calls=AUTOTUNE)
    else:
        if src.encoded:
            fn = lambda b, y: (_to_unit_float(_decode_any(b)), y)
        else:
            fn = lambda x, y: (_to_unit_float(x), y)
        ds = src.stream.map(fn, num_parallel_calls=AUTOTUNE)
    if src.size is not None:
        ds = ds.apply(tf.data.experimental.assert_cardinality(src.size))
    _SOURCES[ds] = src
    return ds


# --------------------------------------------------------------------------------------
# Loaders
# --------------------------------------------------------------------------------------


def load(
    name: Union[str, os.PathLike],
    data_dir: Optional[Union[str, os.PathLike]] = None,
    split: Optional[Tuple[str, str]] = None,
    *,
    subset_classes: Optional[int] = None,
    subset_seed: int = DEFAULT_SUBSET_SEED,
    num_classes: Optional[int] = None,
    seed: Optional[int] = None,
) -> Tuple[tf.data.Dataset, tf.data.Dataset, DatasetInfo]:
    """Load a data set as unbatched ``(float32 image in [0,1] HWC, int32 label)`` datasets.

    Args:
      name: one of :data:`DATASET_NAMES`, a path ending in ``.npz``, or ``"npz:<path>"``.
      data_dir: tfds data directory (tfds names), the Tiny-ImageNet folder, or the
        ImageNet class-per-folder root. Ignored for ``quickstart`` and ``.npz`` names.
      split: tfds only: ``(train_split, test_split)``, e.g. ``("train[:90%]",
        "train[90%:]")``. Defaults to ``("train", "test")`` (``"validation"`` for
        imagenet2012). The other sources have exactly one train and one test split.
      subset_classes: keep only this many classes (the paper's ImageNet subsets use
        ``100 * k``), chosen and relabelled as described by :func:`class_subset`.
      subset_seed: permutation seed for ``subset_classes`` (paper: 2023 or 2022).
      num_classes: ``.npz`` only: the number of classes if not ``max(label) + 1``.
      seed: tfds only: seed of the file-order shuffle of the training split.

    Returns:
      ``(train_ds, test_ds, info)``; feed the datasets to :func:`make_pipeline`.

    Raises:
      DataNotFoundError: the data is not available locally.
    """
    name_str = os.fspath(name)
    if name_str == "quickstart":
        train, test, info = _load_quickstart()
    elif name_str.startswith("npz:") or name_str.lower().endswith(".npz"):
        path = name_str[4:] if name_str.startswith("npz:") else name_str
        train, test, info = _load_npz(path, num_classes=num_classes)
    elif name_str in TFDS_NAMES:
        npz = _npz_in_data_dir(name_str, data_dir)
        if npz is not None:
            train, test, info = _load_npz(npz, num_classes=num_classes, name=name_str)
        else:
            return _load_tfds(name_str, data_dir, split, subset_classes, subset_seed, seed)
    elif name_str == "tiny_imagenet":
        train, test, info = _load_tiny_imagenet(data_dir)
    elif name_str == "imagenet_folder":
        train, test, info = _load_imagenet_folder(data_dir)
    else:
        raise ValueError(
            f"unknown data set {name_str!r}: use one of {', '.join(DATASET_NAMES)}, "
            "a path ending in .npz, or 'npz:<path>'"
        )
    if split is not None:
        raise ValueError(f"split= is only supported for tfds data sets, not {name_str!r}")
    if subset_classes is not None:
        train, test, info = _subset_sources(train, test, info, subset_classes, subset_seed)
    return _public_dataset(train), _public_dataset(test), info


def _array_sources(x_train, y_train, x_test, y_test, aug) -> Tuple[_Source, _Source]:
    def one(x, y):
        return _Source("array", tuple(x.shape[1:]), aug, size=len(x), images=x, labels=y)

    return one(x_train, y_train), one(x_test, y_test)


def _prepare_npz_arrays(d, path: str):
    missing = [k for k in ("x_train", "y_train", "x_test", "y_test") if k not in d]
    if missing:
        raise ValueError(
            f"{path} is not in the keras.datasets layout: missing {missing} "
            "(expected x_train, y_train, x_test, y_test)"
        )
    out = []
    for split in ("train", "test"):
        x, y = np.asarray(d[f"x_{split}"]), np.asarray(d[f"y_{split}"]).reshape(-1)
        if x.dtype != np.uint8:
            raise ValueError(f"{path}: x_{split} must be uint8 images in 0..255, got {x.dtype}")
        if x.ndim == 3:
            x = x[..., None]
        if x.ndim != 4 or x.shape[-1] not in (1, 3):
            raise ValueError(f"{path}: x_{split} must be (N,H,W) or (N,H,W,C), got {x.shape}")
        if len(x) != len(y):
            raise ValueError(f"{path}: {len(x)} images but {len(y)} labels in the {split} split")
        if y.size and (y.min() < 0):
            raise ValueError(f"{path}: negative labels in y_{split}")
        out.append((np.ascontiguousarray(x), y.astype(np.int32)))
    (x_train, y_train), (x_test, y_test) = out
    if x_train.shape[1:] != x_test.shape[1:]:
        raise ValueError(f"{path}: train images {x_train.shape[1:]} != test images {x_test.shape[1:]}")
    return x_train, y_train, x_test, y_test


def _from_arrays(name, source, arrays, num_classes=None):
    x_train, y_train, x_test, y_test = arrays
    n = int(max(y_train.max(initial=-1), y_test.max(initial=-1)) + 1)
    if num_classes is None:
        num_classes = n
    elif n > num_classes:
        raise ValueError(f"{source}: labels go up to {n - 1} but num_classes={num_classes}")
    shape = tuple(int(s) for s in x_train.shape[1:])
    aug = default_augmentation(name, shape)
    train, test = _array_sources(x_train, y_train, x_test, y_test, aug)
    info = DatasetInfo(name, int(num_classes), shape, len(x_train), len(x_test), aug, source=source)
    return train, test, info


def _load_npz(path, num_classes=None, name=None):
    path = os.path.expanduser(os.fspath(path))
    if not os.path.isfile(path):
        raise DataNotFoundError(
            f"npz file not found: {path!r}. Pass an existing .npz in the keras.datasets layout "
            "(x_train, y_train, x_test, y_test; uint8 images), e.g. name='path/to/data.npz' or "
            "'npz:path/to/data', or use a built-in data set name with --data_dir."
        )
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


def sample_path() -> str:
    """Filesystem path of the shipped MNIST sample (`.npz`, keras.datasets layout:
    10 000 train + 2 000 test 28×28 uint8 images)."""
    import importlib.resources as resources

    res = resources.files("gloro_keras") / "data" / "mnist_sample.npz"
    if not res.is_file():
        raise DataNotFoundError("the shipped sample gloro_keras/data/mnist_sample.npz is missing; reinstall gloro-keras.")
    return str(res)


def _load_quickstart():
    import importlib.resources as resources

    try:
        res = resources.files("gloro_keras") / "data" / "mnist_sample.npz"
        ok = res.is_file()
    except (ModuleNotFoundError, FileNotFoundError, TypeError):
        ok = False
    if not ok:
        raise DataNotFoundError(
            "the quickstart sample gloro_keras/data/mnist_sample.npz is missing from the "
            "installed package. Reinstall gloro-keras (the wheel ships it as package data) or "
            "regenerate it with tools/make_quickstart_sample.py from a checkout; or pass an "
            "MNIST .npz path instead of 'quickstart'."
        )
    with resources.as_file(res) as p, np.load(p, allow_pickle=False) as d:
        arrays = _prepare_npz_arrays(d, "gloro_keras/data/mnist_sample.npz")
    return _from_arrays("quickstart", "gloro_keras/data/mnist_sample.npz", arrays, 10)


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


def _load_tfds(name, data_dir, split, subset_classes, subset_seed, seed):
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
        return ds.map(lambda x, y: (x, tf.cast(y, tf.int32)), num_parallel_calls=AUTOTUNE)

    label_feature = builder.info.features["label"]
    n_classes = int(label_feature.num_classes)
    class_names = tuple(label_feature.names) if getattr(label_feature, "names", None) else None
    img_shape = tuple(builder.info.features["image"].shape)
    aug = default_augmentation(name, img_shape)
    if encoded or None in img_shape:
        fixed_shape = None
        out_shape = (aug.image_size, aug.image_size, 3)
    else:
        fixed_shape = out_shape = tuple(int(s) for s in img_shape)

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
        table = np.full(n_classes, -1, np.int32)
        table[keep] = np.arange(len(keep), dtype=np.int32)
        table_t = tf.constant(table)
        streams = [
            s.filter(lambda x, y: tf.gather(table_t, y) >= 0).map(
                lambda x, y: (x, tf.gather(table_t, y)), num_parallel_calls=AUTOTUNE
            )
            for s in streams
        ]
        sizes = [None, None]
        if class_names is not None:
            class_names = tuple(class_names[k] for k in keep)
        n_classes = len(keep)
    srcs = [
        _Source("tfds", fixed_shape, aug, size=sz, stream=s, encoded=encoded)
        for s, sz in zip(streams, sizes)
    ]
    info = DatasetInfo(
        name, n_classes, out_shape, sizes[0], sizes[1], aug, class_names, class_ids,
        source=f"tfds:{name} ({builder.data_dir})",
    )
    return _public_dataset(srcs[0]), _public_dataset(srcs[1]), info


# ---- image folders -------------------------------------------------------------------


def _is_image_file(fname: str) -> bool:
    return fname.lower().endswith(_IMAGE_EXTENSIONS)


def _require_data_dir(name: str, data_dir, layout: str) -> str:
    if data_dir is None:
        raise DataNotFoundError(f"{name!r} needs --data_dir (data_dir=...) pointing to {layout}.")
    d = os.path.expanduser(os.fspath(data_dir))
    if not tf.io.gfile.isdir(d):
        raise DataNotFoundError(f"data_dir {d!r} does not exist; for {name!r} pass --data_dir pointing to {layout}.")
    return d


_TINY_LAYOUT = (
    "the official Tiny-ImageNet-200 folder (wnids.txt, train/<wnid>/images/*.JPEG, "
    "val/images/*.JPEG, val/val_annotations.txt), or its parent holding tiny-imagenet-200/"
)


def _load_tiny_imagenet(data_dir):
    root = _require_data_dir("tiny_imagenet", data_dir, _TINY_LAYOUT)
    if not tf.io.gfile.exists(os.path.join(root, "wnids.txt")):
        nested = os.path.join(root, "tiny-imagenet-200")
        if tf.io.gfile.exists(os.path.join(nested, "wnids.txt")):
            root = nested
        else:
            raise DataNotFoundError(
                f"no wnids.txt in {root!r}: pass --data_dir pointing to {_TINY_LAYOUT}."
            )
    with tf.io.gfile.GFile(os.path.join(root, "wnids.txt")) as f:
        wnids = sorted({line.strip() for line in f if line.strip()})
    index = {w: i for i, w in enumerate(wnids)}

    train_paths, train_labels = [], []
    for w in wnids:
        d = os.path.join(root, "train", w, "images")
        if not tf.io.gfile.isdir(d):
            raise DataNotFoundError(
                f"Tiny-ImageNet training folder {d!r} is missing (listed in wnids.txt); "
                f"--data_dir must point to {_TINY_LAYOUT}."
            )
        files = sorted(f for f in tf.io.gfile.listdir(d) if _is_image_file(f))
        train_paths += [os.path.join(d, f) for f in files]
        train_labels += [index[w]] * len(files)

    ann = os.path.join(root, "val", "val_annotations.txt")
    if not tf.io.gfile.exists(ann):
        raise DataNotFoundError(
            f"Tiny-ImageNet validation annotations {ann!r} are missing; --data_dir must point "
            f"to {_TINY_LAYOUT}."
        )
    val_paths, val_labels = [], []
    with tf.io.gfile.GFile(ann) as f:
        for lineno, line in enumerate(f, 1):
            parts = line.rstrip("\r\n").split("\t")
            if len(parts) < 2 or not parts[0]:
                continue
            fname, w = parts[0], parts[1]
            if w not in index:
                raise ValueError(f"{ann}:{lineno}: wnid {w!r} is not in wnids.txt")
            val_paths.append(os.path.join(root, "val", "images", fname))
            val_labels.append(index[w])
    if not train_paths or not val_paths:
        raise DataNotFoundError(f"no images found under {root!r}; expected {_TINY_LAYOUT}.")
    missing = [p for p in val_paths[:1] if not tf.io.gfile.exists(p)]
    if missing:
        raise DataNotFoundError(f"Tiny-ImageNet validation image {missing[0]!r} listed in {ann} is missing.")

    aug = default_augmentation("tiny_imagenet", TINY_IMAGENET_SHAPE)
    train = _files_source(train_paths, train_labels, TINY_IMAGENET_SHAPE, aug)
    test = _files_source(val_paths, val_labels, TINY_IMAGENET_SHAPE, aug)
    info = DatasetInfo("tiny_imagenet", len(wnids), TINY_IMAGENET_SHAPE, train.size, test.size,
                       aug, tuple(wnids), source=root)
    return train, test, info


def _files_source(paths, labels, fixed_shape, aug) -> _Source:
    return _Source("files", fixed_shape, aug, size=len(paths),
                   paths=np.asarray(paths, dtype=object).astype(str),
                   labels=np.asarray(labels, dtype=np.int32))


_IMAGENET_LAYOUT = "a class-per-folder ImageNet copy (<root>/train/<class>/*.JPEG and <root>/val/<class>/*.JPEG)"


def _load_imagenet_folder(data_dir):
    root = _require_data_dir("imagenet_folder", data_dir, _IMAGENET_LAYOUT)
    split_dirs = {s: os.path.join(root, s) for s in ("train", "val")}
    for s, d in split_dirs.items():
        if not tf.io.gfile.isdir(d):
            raise DataNotFoundError(
                f"ImageNet {s} folder {d!r} is missing; --data_dir must point to {_IMAGENET_LAYOUT}."
            )
    classes = sorted(c.rstrip("/") for c in tf.io.gfile.listdir(split_dirs["train"])
                     if tf.io.gfile.isdir(os.path.join(split_dirs["train"], c)))
    if not classes:
        raise DataNotFoundError(f"no class folders in {split_dirs['train']!r}; expected {_IMAGENET_LAYOUT}.")
    index = {c: i for i, c in enumerate(classes)}

    def scan(split):
        paths, labels = [], []
        d = split_dirs[split]
        for c in sorted(x.rstrip("/") for x in tf.io.gfile.listdir(d)):
            cd = os.path.join(d, c)
            if not tf.io.gfile.isdir(cd):
                continue
            if c not in index:
                raise ValueError(f"class folder {cd!r} has no counterpart in {split_dirs['train']!r}")
            files = sorted(f for f in tf.io.gfile.listdir(cd) if _is_image_file(f))
            paths += [os.path.join(cd, f) for f in files]
            labels += [index[c]] * len(files)
        if not paths:
            raise DataNotFoundError(f"no images (.JPEG/.jpg/.png) under {d!r}; expected {_IMAGENET_LAYOUT}.")
        return paths, labels

    aug = default_augmentation("imagenet_folder", (None, None, 3))
    train = _files_source(*scan("train"), None, aug)
    test = _files_source(*scan("val"), None, aug)
    shape = (aug.image_size, aug.image_size, 3)
    info = DatasetInfo("imagenet_folder", len(classes), shape, train.size, test.size, aug,
                       tuple(classes), source=root)
    return train, test, info


def _subset_sources(train: _Source, test: _Source, info: DatasetInfo, k: int, seed: int):
    keep = class_subset(k, seed, info.num_classes)
    table = np.full(info.num_classes, -1, np.int64)
    table[keep] = np.arange(len(keep))

    def apply(src: _Source) -> _Source:
        new = table[src.labels]
        mask = new >= 0
        kw = dict(labels=new[mask].astype(np.int32), size=int(mask.sum()))
        if src.kind == "array":
            kw["images"] = src.images[mask]
        else:
            kw["paths"] = src.paths[mask]
        return dataclasses.replace(src, **kw)

    train, test = apply(train), apply(test)
    names = tuple(info.class_names[i] for i in keep) if info.class_names else None
    info = dataclasses.replace(info, num_classes=len(keep), train_size=train.size,
                               test_size=test.size, class_names=names,
                               class_ids=tuple(int(i) for i in keep))
    return train, test, info


# --------------------------------------------------------------------------------------
# Augmentation ops
# --------------------------------------------------------------------------------------


def _seed_pair(r: tf.Tensor) -> tf.Tensor:
    """A stateless-op seed from one int64 drawn by ``Dataset.random``."""
    return tf.stack([r, tf.bitwise.right_shift(r, 32) + 0x5DEECE66D])


def _batch_crop_flip(x: tf.Tensor, seed: tf.Tensor, pad: int, flip: bool) -> tf.Tensor:
    """Per-image random crop (after ``pad`` px of zeros) and flip of a NHWC batch.

    Crop offsets and the flip are folded into one pixel gather, so a batch costs one
    pass over its pixels whatever the augmentation.
    """
    if pad <= 0 and not flip:
        return x
    s_y, s_x, s_f = tf.unstack(tf.random.experimental.stateless_split(seed, 3))
    static_shape = x.shape
    b = tf.shape(x)[0]
    h, w, c = tf.shape(x)[1], tf.shape(x)[2], tf.shape(x)[3]
    hp, wp = h + 2 * pad, w + 2 * pad
    rows = tf.range(h)[None, :]
    cols = tf.range(w)[None, :]
    if flip:
        mirror = tf.random.stateless_uniform([b], s_f) < 0.5
        cols = tf.where(mirror[:, None], w - 1 - cols, cols)
    if pad > 0:
        x = tf.pad(x, [[0, 0], [pad, pad], [pad, pad], [0, 0]])
        rows = rows + tf.random.stateless_uniform([b], s_y, 0, 2 * pad + 1, dtype=tf.int32)[:, None]
        cols = cols + tf.random.stateless_uniform([b], s_x, 0, 2 * pad + 1, dtype=tf.int32)[:, None]
    rows = tf.broadcast_to(rows, [b, h])
    cols = tf.broadcast_to(cols, [b, w])
    flat = (tf.range(b)[:, None, None] * (hp * wp) + rows[:, :, None] * wp + cols[:, None, :])
    out = tf.gather(tf.reshape(x, [-1, c]), flat)
    return tf.ensure_shape(out, static_shape)


def _rrc_window(shape: tf.Tensor, seed: tf.Tensor, aug: Augmentation) -> tf.Tensor:
    """Random-resized-crop window ``[y, x, h, w]`` for an image of ``shape`` (HWC)."""
    begin, size, _ = tf.image.stateless_sample_distorted_bounding_box(
        tf.cast(shape, tf.int32),
        bounding_boxes=tf.zeros([1, 0, 4], tf.float32),
        seed=seed,
        min_object_covered=0.0,
        aspect_ratio_range=aug.aspect_ratio_range,
        area_range=aug.area_range,
        max_attempts=10,
        use_image_if_no_bounding_boxes=True,
    )
    return tf.stack([begin[0], begin[1], size[0], size[1]])


def _center_window(shape: tf.Tensor, aug: Augmentation) -> tf.Tensor:
    """Square window equal to resize-shorter-side-to-resize_size + centre-crop image_size."""
    h, w = tf.cast(shape[0], tf.float32), tf.cast(shape[1], tf.float32)
    c = tf.round(tf.minimum(h, w) * (aug.image_size / aug.resize_size))
    c = tf.cast(tf.maximum(c, 1.0), tf.int32)
    oy = (tf.cast(h, tf.int32) - c) // 2
    ox = (tf.cast(w, tf.int32) - c) // 2
    return tf.stack([oy, ox, c, c])


def _crop_window(image: tf.Tensor, window: tf.Tensor) -> tf.Tensor:
    return image[window[0]:window[0] + window[2], window[1]:window[1] + window[3]]


def _decode_window(data: tf.Tensor, window_fn: Callable[[tf.Tensor], tf.Tensor]) -> tf.Tensor:
    """Decode only ``window_fn(shape)`` of an encoded image (fast path for JPEG)."""

    def jpeg():
        win = window_fn(tf.image.extract_jpeg_shape(data))
        return tf.image.decode_and_crop_jpeg(data, win, channels=3)

    def other():
        img = _decode_any(data)
        return _crop_window(img, window_fn(tf.shape(img)))

    return tf.cond(tf.io.is_jpeg(data), jpeg, other)


def _finish_imagenet(img: tf.Tensor, aug: Augmentation, flip_seed=None) -> tf.Tensor:
    size = aug.image_size
    if img.dtype == tf.uint8:
        img = tf.cast(img, tf.float32) * (1.0 / 255.0)
    img = tf.image.resize(img, [size, size], method="bilinear", antialias=True)
    img = tf.clip_by_value(img, 0.0, 1.0)
    if flip_seed is not None and aug.flip:
        img = tf.cond(tf.random.stateless_uniform([], flip_seed) < 0.5,
                      lambda: tf.reverse(img, axis=[1]), lambda: img)
    return tf.ensure_shape(img, (size, size, 3))


def _imagenet_train_from_encoded(data, label, r, aug):
    s_crop, s_flip = tf.unstack(tf.random.experimental.stateless_split(_seed_pair(r), 2))
    img = _decode_window(data, lambda shape: _rrc_window(shape, s_crop, aug))
    return _finish_imagenet(img, aug, s_flip), label


def _imagenet_eval_from_encoded(data, label, aug):
    img = _decode_window(data, lambda shape: _center_window(shape, aug))
    return _finish_imagenet(img, aug), label


def _imagenet_train_from_image(img, label, r, aug):
    s_crop, s_flip = tf.unstack(tf.random.experimental.stateless_split(_seed_pair(r), 2))
    img = _crop_window(img, _rrc_window(tf.shape(img), s_crop, aug))
    return _finish_imagenet(img, aug, s_flip), label


def _imagenet_eval_from_image(img, label, aug):
    img = _crop_window(img, _center_window(tf.shape(img), aug))
    return _finish_imagenet(img, aug), label


# --------------------------------------------------------------------------------------
# Pipelines
# --------------------------------------------------------------------------------------


def _resolve_augmentation(augment, ds, src: Optional[_Source], info: Optional[DatasetInfo]):
    if isinstance(augment, Augmentation):
        return augment, True
    if src is not None:
        policy = src.augmentation
    elif info is not None:
        policy = info.augmentation
    else:
        spec = ds.element_spec[0]
        policy = default_augmentation("", tuple(spec.shape))
    return policy, bool(augment)


def make_pipeline(
    ds: tf.data.Dataset,
    batch_size: int,
    training: bool,
    augment: Union[bool, Augmentation] = True,
    seed: Optional[int] = None,
    shuffle_buffer: Optional[int] = None,
    drop_remainder: Optional[bool] = None,
    info: Optional[DatasetInfo] = None,
) -> tf.data.Dataset:
    """Batch a dataset from :func:`load` for training or evaluation.

    Training (``training=True``): shuffle (reshuffled every epoch), random augmentation
    (``augment=True`` uses the data set's policy, ``False`` disables it, an
    :class:`Augmentation` overrides it), batch, prefetch. Evaluation: keep the order, no
    random augmentation (ImageNet images still get resize-256/centre-crop-224), batch,
    prefetch.

    Args:
      ds: an unbatched dataset of ``(image, int32 label)``, normally from :func:`load`.
      batch_size: examples per batch.
      training: training or evaluation pipeline.
      augment: see above; ignored when ``training`` is false.
      seed: makes shuffling and augmentation reproducible (each epoch still differs).
        ``None``: nondeterministic.
      shuffle_buffer: defaults to the whole data set for array/file sources (only indices
        or paths are shuffled), 50 000 decoded images for tfds MNIST/CIFAR, 5 000 encoded
        images for tfds ImageNet, and 10 000 for other datasets.
      drop_remainder: defaults to ``training``.
      info: the :class:`DatasetInfo`, used for the augmentation policy of datasets not
        returned by :func:`load` (otherwise it is inferred from the image shape).

    Returns:
      a batched, prefetched dataset of ``(float32 NHWC in [0,1], int32 labels)``.
    """
    if batch_size < 1:
        raise ValueError("batch_size must be >= 1")
    drop = training if drop_remainder is None else bool(drop_remainder)
    src = _SOURCES.get(ds)
    policy, do_aug = _resolve_augmentation(augment, ds, src, info)
    do_aug = do_aug and training and policy.kind != "none"
    det = True if (seed is not None or not training) else False
    aug_seed = None if seed is None else seed + 1

    def randoms():
        return tf.data.Dataset.random(seed=aug_seed, rerandomize_each_iteration=True)

    def decoded_variable(stream):
        """Crop/resize decoded variable-size images: random-resized + flip, or centre."""
        if do_aug:
            return tf.data.Dataset.zip((stream, randoms())).map(
                lambda xy, r: _imagenet_train_from_image(xy[0], xy[1], r, policy),
                num_parallel_calls=AUTOTUNE, deterministic=det)
        return stream.map(lambda x, y: _imagenet_eval_from_image(x, y, policy),
                          num_parallel_calls=AUTOTUNE, deterministic=det)

    def finish_batches(b: tf.data.Dataset) -> tf.data.Dataset:
        """uint8/float NHWC batches -> crop/flip (if any) -> float32 [0,1]."""
        if do_aug and policy.kind == "crop_flip":
            def crop_flip(xy, r):
                x = _batch_crop_flip(xy[0], _seed_pair(r), policy.pad, policy.flip)
                return _to_unit_float(x), xy[1]

            return tf.data.Dataset.zip((b, randoms())).map(
                crop_flip, num_parallel_calls=AUTOTUNE, deterministic=det)
        return b.map(lambda x, y: (_to_unit_float(x), y),
                     num_parallel_calls=AUTOTUNE, deterministic=det)

    variable = (src.fixed_shape is None) if src is not None else (
        not ds.element_spec[0].shape.is_fully_defined() or policy.kind == "imagenet")
    if variable and policy.kind != "imagenet":
        policy = dataclasses.replace(policy, kind="imagenet")
        do_aug = False

    if src is not None and src.kind == "array":
        n = src.size
        images, labels = src.tensors
        idx = tf.data.Dataset.range(n)
        if training:
            idx = idx.shuffle(min(shuffle_buffer or n, n), seed=seed, reshuffle_each_iteration=True)
        b = idx.batch(batch_size, drop_remainder=drop).map(
            lambda i: (tf.gather(images, i), tf.gather(labels, i)), num_parallel_calls=AUTOTUNE)
        return finish_batches(b).prefetch(AUTOTUNE)

    if src is not None:
        # Streams of raw elements: (path | encoded bytes | uint8 image, label).
        if src.kind == "files":
            stream = tf.data.Dataset.from_tensor_slices((src.paths, src.labels))
            default_buffer = src.size
            read = lambda p: tf.io.read_file(p)
        else:
            stream = src.stream
            default_buffer = _ENCODED_SHUFFLE_BUFFER if src.encoded else 50_000
            read = None
        if training:
            buf = shuffle_buffer or default_buffer
            if src.size is not None:
                buf = min(buf, src.size)
            stream = stream.shuffle(max(1, buf), seed=seed, reshuffle_each_iteration=True)
        if not variable:
            if read is not None:
                shape = src.fixed_shape
                stream = stream.map(lambda p, y: (_decode_fixed(read(p), shape), y),
                                    num_parallel_calls=AUTOTUNE, deterministic=det)
            b = stream.batch(batch_size, drop_remainder=drop)
            return finish_batches(b).prefetch(AUTOTUNE)
        # Variable-size (ImageNet): decode only the crop window, per element.
        to_bytes = (lambda p: tf.io.read_file(p)) if read is not None else (lambda b: b)
        if src.kind == "tfds" and not src.encoded:
            # decoded variable-size images from tfds (not produced by load, kept for safety)
            stream = decoded_variable(stream)
        elif do_aug:
            stream = tf.data.Dataset.zip((stream, randoms())).map(
                lambda xy, r: _imagenet_train_from_encoded(to_bytes(xy[0]), xy[1], r, policy),
                num_parallel_calls=AUTOTUNE, deterministic=det)
        else:
            stream = stream.map(lambda p, y: _imagenet_eval_from_encoded(to_bytes(p), y, policy),
                                num_parallel_calls=AUTOTUNE, deterministic=det)
        return stream.batch(batch_size, drop_remainder=drop).prefetch(AUTOTUNE)

    # Generic path: any dataset of (image, label) pairs.
    ds = ds.map(lambda x, y: (x, tf.cast(y, tf.int32)))
    if training:
        ds = ds.shuffle(shuffle_buffer or _GENERIC_SHUFFLE_BUFFER, seed=seed, reshuffle_each_iteration=True)
    if variable:
        return decoded_variable(ds).batch(batch_size, drop_remainder=drop).prefetch(AUTOTUNE)
    return finish_batches(ds.batch(batch_size, drop_remainder=drop)).prefetch(AUTOTUNE)


def pipeline_throughput(ds: tf.data.Dataset, num_batches: int = 50, warmup: int = 2) -> float:
    """Images per second delivered by a batched pipeline alone (no model).

    Skips ``warmup`` batches (shuffle-buffer fill, tracing), then times ``num_batches``
    batches; the dataset is repeated so short datasets do not run out.
    """
    if num_batches < 1:
        raise ValueError("num_batches must be >= 1")
    it = iter(ds.repeat())
    for _ in range(warmup):
        next(it)
    count = 0
    start = time.perf_counter()
    for _ in range(num_batches):
        x = next(it)[0]
        count += int(x.shape[0])
    elapsed = time.perf_counter() - start
    return count / max(elapsed, 1e-9)


def _main(argv=None) -> int:
    """``python -m gloro_keras.train.data NAME``: images/s of the input pipeline alone."""
    import argparse
    import sys

    p = argparse.ArgumentParser(description=_main.__doc__)
    p.add_argument("name", help="data set name or .npz path (see load())")
    p.add_argument("--data_dir", default=None)
    p.add_argument("--batch_size", type=int, default=256)
    p.add_argument("--num_batches", type=int, default=100)
    p.add_argument("--eval", action="store_true", help="time the test pipeline instead")
    p.add_argument("--no_augment", action="store_true")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    try:
        train, test, info = load(args.name, data_dir=args.data_dir)
    except DataNotFoundError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    ds = make_pipeline(test if args.eval else train, args.batch_size, training=not args.eval,
                       augment=not args.no_augment, seed=args.seed)
    rate = pipeline_throughput(ds, args.num_batches)
    print(f"{info.name}: {'test' if args.eval else 'train'} pipeline, batch {args.batch_size}, "
          f"augment={not args.no_augment and not args.eval}: {rate:,.0f} images/s")
    return 0


if __name__ == "__main__":
    raise SystemExit(_main())
