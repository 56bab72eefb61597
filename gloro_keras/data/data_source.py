"""What `load` returns: one `DataSource` per split and the data set's `DatasetInfo`."""

import dataclasses
import functools
from typing import Optional, Tuple

import numpy as np
import tensorflow as tf

from gloro_keras.data import images
from gloro_keras.data.augment import Augmentation


class DataNotFoundError(FileNotFoundError):
    """The requested data is not available locally (nothing is ever downloaded)."""


@dataclasses.dataclass
class DatasetInfo:
    """What `load` loaded.

    Args:
        name: the data set's name (`"cifar10"`, the `.npz` file's stem, ...).
        num_classes: number of classes (after a class subset, the subset's).
        image_shape: HWC shape of the images `make_pipeline` yields (for ImageNet
            sources the unbatched images of `DataSource.dataset` keep their native size).
        train_size, test_size: examples per split; `None` only for a class subset of
            tfds `imagenet2012`, whose per-class counts are unknown without a full pass.
        augmentation: the training augmentation policy (`default_augmentation`).
        class_names: class names (wnids for the ImageNet folders), if known.
        class_ids: for a class subset, the original class id of each new label.
        source: where the data was read from.
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


@dataclasses.dataclass(frozen=True, eq=False, repr=False)
class DataSource:
    """One split of a data set as `load` returns it: its storage plus its metadata.

    `make_pipeline` reads the storage directly (shuffling indices or file paths rather
    than decoded images, cropping whole uint8 batches, decoding only the crop of a JPEG),
    so its result depends only on its arguments, never on which dataset object it got.
    `dataset` is the plain unbatched view; `take(n)` keeps the first `n` examples and
    stays a `DataSource`.

    Exactly one storage is set: `images` (in memory: a uint8 `(N, H, W, C)` tensor whose
    first `size` rows are used, with int32 `labels`), `paths` (image files, with int32
    `labels`) or `stream` (tfds: `(uint8 image | encoded bytes, int32 label)` pairs).

    Args:
        info: the data set's `DatasetInfo`.
        split: `"train"` or `"test"`.
        size: number of examples (`None`: unknown, tfds ImageNet class subsets).
        images, labels, paths, stream: the storage, see above.
        encoded: tfds only: the stream holds encoded image bytes.
        decoded_shape: HWC shape of every decoded image; `None` for variable sizes
            (ImageNet, cropped and resized by `make_pipeline`).

    Example:

    ```python
    train, test, info = load("quickstart")
    test.size, test.num_classes, test.image_shape   # 2000, 10, (28, 28, 1)
    x, y = next(iter(test.dataset))                 # one float32 (28, 28, 1) image in [0, 1]
    first = make_pipeline(test.take(256), 128, training=False)
    ```
    """

    info: DatasetInfo
    split: str
    size: Optional[int]
    images: Optional[tf.Tensor] = None
    labels: Optional[np.ndarray] = None
    paths: Optional[np.ndarray] = None
    stream: Optional[tf.data.Dataset] = None
    encoded: bool = False
    decoded_shape: Optional[Tuple[int, int, int]] = None

    def __post_init__(self):
        given = [k for k in ("images", "paths", "stream") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError(f"A DataSource needs exactly one of images, paths or stream. Received: {given}")
        if self.stream is None and (self.labels is None or self.size is None):
            raise ValueError("An in-memory or file DataSource needs labels and a size. "
                             f"Received: labels={self.labels is not None}, size={self.size}")

    @property
    def kind(self) -> str:
        """`"array"` (in memory), `"files"` or `"tfds"`."""
        if self.images is not None:
            return "array"
        return "files" if self.paths is not None else "tfds"

    @property
    def name(self) -> str:
        return self.info.name

    @property
    def num_classes(self) -> int:
        return self.info.num_classes

    @property
    def image_shape(self) -> Tuple[int, int, int]:
        """HWC shape of the images `make_pipeline` yields."""
        return self.info.image_shape

    @property
    def augmentation(self) -> Augmentation:
        return self.info.augmentation

    @functools.cached_property
    def dataset(self) -> tf.data.Dataset:
        """The unbatched `(float32 image in [0, 1] HWC, int32 label)` dataset."""
        autotune = tf.data.AUTOTUNE
        if self.kind == "array":
            pixels, labels = self.images, tf.constant(self.labels)
            ds = tf.data.Dataset.range(self.size).map(
                lambda i: (images.to_unit_float(tf.gather(pixels, i)), tf.gather(labels, i)),
                num_parallel_calls=autotune)
        elif self.kind == "files":
            ds = tf.data.Dataset.from_tensor_slices((self.paths, self.labels))
            if self.decoded_shape is not None:
                shape = self.decoded_shape
                fn = lambda p, y: (images.to_unit_float(images.decode_fixed(tf.io.read_file(p), shape)), y)
            else:
                fn = lambda p, y: (images.to_unit_float(images.decode_any(tf.io.read_file(p))), y)
            ds = ds.map(fn, num_parallel_calls=autotune)
        else:
            if self.encoded:
                fn = lambda b, y: (images.to_unit_float(images.decode_any(b)), y)
            else:
                fn = lambda x, y: (images.to_unit_float(x), y)
            ds = self.stream.map(fn, num_parallel_calls=autotune)
        if self.size is not None:
            ds = ds.apply(tf.data.experimental.assert_cardinality(self.size))
        return ds

    def take(self, count: int) -> "DataSource":
        """The first `count` examples, as a `DataSource`.

        Args:
            count: number of examples to keep (all of them if the split is smaller).
        """
        count = int(count)
        if count < 0:
            raise ValueError(f"count must be >= 0. Received: count={count}")
        if self.kind == "tfds":
            size = None if self.size is None else min(count, self.size)
            return dataclasses.replace(self, stream=self.stream.take(count), size=size)
        size = min(count, self.size)
        if self.kind == "array":
            return dataclasses.replace(self, size=size, labels=self.labels[:size])
        return dataclasses.replace(self, size=size, labels=self.labels[:size], paths=self.paths[:size])

    def __repr__(self):
        return f"DataSource(name={self.name!r}, split={self.split!r}, size={self.size}, kind={self.kind!r})"
