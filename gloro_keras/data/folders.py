"""Image-folder data sets: Tiny-ImageNet-200 and class-per-folder ImageNet copies.

`"tiny_imagenet"`
    The official Tiny-ImageNet-200 folder (`data_dir` = the folder holding `wnids.txt`,
    or its parent holding `tiny-imagenet-200/`): `train/<wnid>/images/*.JPEG` is the
    training split, the labelled `val/images/*.JPEG` + `val/val_annotations.txt` is the
    test split. **Labels are the index of the wnid in the sorted list of wnids** (the order
    a class-per-folder loader gives; `wnids.txt` itself is not sorted).
`"imagenet_folder"`
    A class-per-folder ImageNet copy: `<data_dir>/train/<class>/*.JPEG` and
    `<data_dir>/val/<class>/*.JPEG`; labels are the index of the class folder in the sorted
    list of the `train` class folders (for the 1000 ILSVRC-2012 wnid folders this equals
    the tfds `imagenet2012` label order).

Only file paths are listed here; images are decoded by the pipeline.
"""

import os
from typing import Tuple

import numpy as np
import tensorflow as tf

from gloro_keras.data.augment import default_augmentation
from gloro_keras.data.data_source import DataNotFoundError, DataSource, DatasetInfo

FOLDER_NAMES = ("tiny_imagenet", "imagenet_folder")
TINY_IMAGENET_SHAPE = (64, 64, 3)
IMAGE_EXTENSIONS = (".jpeg", ".jpg", ".png")

_TINY_LAYOUT = (
    "the official Tiny-ImageNet-200 folder (wnids.txt, train/<wnid>/images/*.JPEG, "
    "val/images/*.JPEG, val/val_annotations.txt), or its parent holding tiny-imagenet-200/"
)
_IMAGENET_LAYOUT = "a class-per-folder ImageNet copy (<root>/train/<class>/*.JPEG and <root>/val/<class>/*.JPEG)"


def _is_image_file(fname: str) -> bool:
    return fname.lower().endswith(IMAGE_EXTENSIONS)


def _require_data_dir(name: str, data_dir, layout: str) -> str:
    if data_dir is None:
        raise DataNotFoundError(f"{name!r} needs --data_dir (data_dir=...) pointing to {layout}.")
    d = os.path.expanduser(os.fspath(data_dir))
    if not tf.io.gfile.isdir(d):
        raise DataNotFoundError(f"data_dir {d!r} does not exist; for {name!r} pass --data_dir pointing to {layout}.")
    return d


def _file_sources(info: DatasetInfo, train, test, decoded_shape) -> Tuple[DataSource, DataSource]:
    def one(split, paths, labels):
        return DataSource(info, split, len(paths), labels=np.asarray(labels, dtype=np.int32),
                          paths=np.asarray(paths, dtype=object).astype(str), decoded_shape=decoded_shape)

    return one("train", *train), one("test", *test)


def load_tiny_imagenet(data_dir) -> Tuple[DataSource, DataSource]:
    """The train and test `DataSource`s of a Tiny-ImageNet-200 folder (see the module doc)."""
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
    info = DatasetInfo("tiny_imagenet", len(wnids), TINY_IMAGENET_SHAPE, len(train_paths), len(val_paths),
                       aug, tuple(wnids), source=root)
    return _file_sources(info, (train_paths, train_labels), (val_paths, val_labels), TINY_IMAGENET_SHAPE)


def load_imagenet_folder(data_dir) -> Tuple[DataSource, DataSource]:
    """The train and test `DataSource`s of a class-per-folder ImageNet copy (see the module doc)."""
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
    train, test = scan("train"), scan("val")
    shape = (aug.image_size, aug.image_size, 3)
    info = DatasetInfo("imagenet_folder", len(classes), shape, len(train[0]), len(test[0]), aug,
                       tuple(classes), source=root)
    return _file_sources(info, train, test, None)
